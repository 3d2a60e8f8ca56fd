//! The one error type every service returns, and its single, exhaustive mapping to
//! `tonic::Status` with `google.rpc` details (AIP-193): every status carries exactly
//! one `ErrorInfo` with a stable UPPER_SNAKE reason, plus the detail its code calls for.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every CRM error.
pub const ERROR_DOMAIN: &str = "crm";

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem with one request field (`google.rpc.BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `customer.email_addresses[1].address`.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; all problems found are listed.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{resource_type} `{name}` not found")]
    NotFound { resource_type: &'static str, name: String },
    #[error("{resource_type} `{name}` already exists")]
    AlreadyExists { resource_type: &'static str, name: String },
    /// Optimistic concurrency: the caller's etag is not the stored one.
    #[error("etag mismatch on `{name}`: the resource changed since it was read")]
    EtagMismatch { name: String },
    /// The system is not in a state the call requires (stable `reason`).
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        subject: String,
        message: String,
    },
    #[error("unauthenticated: {reason_text}")]
    Unauthenticated { reason: &'static str, reason_text: String },
    #[error("permission `{permission}` denied on `{resource}`")]
    PermissionDenied { permission: String, resource: String },
    /// A dependency (database) is down or overloaded; the caller may retry.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. Details are logged, never returned.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

/// Field violations returned at most; the rest are summarised.
const MAX_VIOLATIONS: usize = 50;

/// The status message: short, because it travels in a header (the details list them all).
fn describe(violations: &[FieldViolation]) -> String {
    let shown = violations.iter().take(3).map(|v| {
        let mut d = format!("{}: {}", v.field, v.description);
        if d.len() > 200 {
            let cut = (0..=200).rev().find(|i| d.is_char_boundary(*i)).unwrap_or(0);
            d.truncate(cut);
            d.push('…');
        }
        d
    });
    let mut text = shown.collect::<Vec<_>>().join("; ");
    if violations.len() > 3 {
        text.push_str(&format!(" (and {} more, see details)", violations.len() - 3));
    }
    text
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// Prefixes every field path with `prefix.` (a domain rule reports `display_name`,
    /// the handler knows it is `customer.display_name`).
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            Self::InvalidArgument(v) => Self::InvalidArgument(
                v.into_iter()
                    .map(|f| FieldViolation::new(format!("{prefix}.{}", f.field), f.description))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Runs independent checks and reports all their field violations at once:
/// `let a = v.check(parse_a()); let b = v.check(parse_b()); let (a, b) = v.finish(a.zip(b))?;`
#[derive(Debug, Default)]
pub struct Validation {
    violations: Vec<FieldViolation>,
    other: Option<Error>,
}

impl Validation {
    /// The value, or `None` after recording why not.
    pub fn check<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(Error::InvalidArgument(v)) => {
                self.violations.extend(v);
                None
            }
            Err(other) => {
                self.other.get_or_insert(other);
                None
            }
        }
    }

    /// The checked values, or every violation recorded.
    pub fn finish<T>(self, values: Option<T>) -> Result<T> {
        if let Some(other) = self.other {
            return Err(other);
        }
        if !self.violations.is_empty() {
            return Err(Error::InvalidArgument(self.violations));
        }
        values.ok_or_else(|| Error::internal(anyhow::anyhow!("a check failed without a violation")))
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        match err {
            sea_orm::DbErr::ConnectionAcquire(e) => Self::Unavailable(format!("database: {e}")),
            sea_orm::DbErr::Conn(e) => Self::Unavailable(format!("database: {e}")),
            other if transient(&other) => Self::Unavailable(format!("database: {other}")),
            other => Self::Internal(other.into()),
        }
    }
}

/// Database failures a retry can cure: contention, cancellation, a lost connection.
/// Clients see UNAVAILABLE with RetryInfo instead of INTERNAL.
fn transient(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err else {
        return false;
    };
    match &**e {
        Sqlx::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL SQLSTATEs: serialization failure, deadlock, lock timeout, query
            // cancelled, too many connections, admin shutdown, cannot connect now.
            let postgres = matches!(
                code.as_ref(),
                "40001" | "40P01" | "55P03" | "57014" | "53300" | "57P01" | "57P03"
            );
            // SQLite result codes (extended codes keep the primary one in the low byte):
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6).
            let sqlite = code.len() < 5 && code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            postgres || sqlite
        }
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
        _ => false,
    }
}

fn info(details: &mut ErrorDetails, reason: &str, metadata: HashMap<String, String>) {
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let mut details = ErrorDetails::new();
        let message = err.to_string();
        let code = match err {
            Error::InvalidArgument(violations) => {
                info(&mut details, "INVALID_ARGUMENT", HashMap::new());
                for v in violations.into_iter().take(MAX_VIOLATIONS) {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Code::InvalidArgument
            }
            Error::NotFound { resource_type, name } => {
                info(&mut details, "RESOURCE_NOT_FOUND", HashMap::new());
                details.set_resource_info(resource_type, name, "", "not found");
                Code::NotFound
            }
            Error::AlreadyExists { resource_type, name } => {
                info(&mut details, "RESOURCE_ALREADY_EXISTS", HashMap::new());
                details.set_resource_info(resource_type, name, "", "already exists");
                Code::AlreadyExists
            }
            Error::EtagMismatch { name } => {
                info(&mut details, "ETAG_MISMATCH", HashMap::new());
                details.add_precondition_failure_violation(
                    "ETAG",
                    name,
                    "the etag does not match the stored resource; read it again and retry",
                );
                Code::Aborted
            }
            Error::FailedPrecondition {
                reason,
                subject,
                message,
            } => {
                info(&mut details, reason, HashMap::new());
                details.add_precondition_failure_violation(reason, subject, message);
                Code::FailedPrecondition
            }
            Error::Unauthenticated { reason, .. } => {
                info(&mut details, reason, HashMap::new());
                Code::Unauthenticated
            }
            Error::PermissionDenied { permission, resource } => {
                let metadata = HashMap::from([("permission".to_owned(), permission), ("resource".to_owned(), resource)]);
                info(&mut details, "PERMISSION_DENIED", metadata);
                Code::PermissionDenied
            }
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "dependency unavailable");
                info(&mut details, "BACKEND_UNAVAILABLE", HashMap::new());
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                return Status::with_error_details(Code::Unavailable, "service temporarily unavailable, retry", details);
            }
            Error::Internal(cause) => {
                let reference = uuid::Uuid::new_v4();
                tracing::error!(%reference, error = format!("{cause:#}"), "internal error");
                info(
                    &mut details,
                    "INTERNAL",
                    HashMap::from([("reference".to_owned(), reference.to_string())]),
                );
                return Status::with_error_details(Code::Internal, format!("internal error (reference {reference})"), details);
            }
        };
        Status::with_error_details(code, message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_violation_and_error_info() {
        let err = Error::InvalidArgument(vec![
            FieldViolation::new("display_name", "required"),
            FieldViolation::new("email_addresses[0].address", "not an e-mail address"),
        ])
        .in_field("customer");
        let status = Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[1].field, "customer.email_addresses[0].address");
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
        assert_eq!(details.error_info().unwrap().domain, ERROR_DOMAIN);
    }

    #[test]
    fn validation_collects_every_violation() {
        let mut v = Validation::default();
        let a = v.check(Err::<u8, _>(Error::invalid("a", "bad")));
        let b = v.check(Ok::<_, Error>(2));
        let c = v.check(Err::<u8, _>(Error::invalid("c", "bad")));
        match v.finish(a.zip(b).zip(c)) {
            Err(Error::InvalidArgument(found)) => {
                assert_eq!(found.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(), ["a", "c"])
            }
            other => panic!("{other:?}"),
        }
        let mut v = Validation::default();
        let a = v.check(Ok::<_, Error>(1));
        assert_eq!(v.finish(a).unwrap(), 1);
    }

    #[test]
    fn many_violations_stay_small() {
        let many: Vec<_> = (0..10_000)
            .map(|i| FieldViolation::new(format!("f[{i}]"), "x".repeat(500)))
            .collect();
        let status = Status::from(Error::InvalidArgument(many));
        assert!(status.message().len() < 1000, "{}", status.message().len());
        assert!(status.message().contains("and 9997 more"));
        assert_eq!(
            status.get_error_details().bad_request().unwrap().field_violations.len(),
            MAX_VIOLATIONS
        );
    }

    #[test]
    fn etag_mismatch_is_aborted_with_precondition_failure() {
        let status = Status::from(Error::EtagMismatch {
            name: "customers/1".into(),
        });
        assert_eq!(status.code(), Code::Aborted);
        let details = status.get_error_details();
        assert_eq!(details.precondition_failure().unwrap().violations[0].subject, "customers/1");
        assert_eq!(details.error_info().unwrap().reason, "ETAG_MISMATCH");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let status = Status::from(Error::internal(anyhow::anyhow!(
            "password=hunter2 leaked in a driver message"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
        assert!(
            status
                .get_error_details()
                .error_info()
                .unwrap()
                .metadata
                .contains_key("reference")
        );
    }

    #[test]
    fn not_found_names_the_resource() {
        let status = Status::from(Error::NotFound {
            resource_type: "crm.customer.v1.Customer",
            name: "customers/x".into(),
        });
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.get_error_details().resource_info().unwrap().resource_name,
            "customers/x"
        );
    }
}
