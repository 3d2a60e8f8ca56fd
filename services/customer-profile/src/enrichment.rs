//! The enrichment endpoint: one HTTP/1.1 `POST` of a JSON [`Query`] per lookup,
//! with a deadline over the whole exchange, and its answer read as firmographics,
//! "nothing known", or a failure that is worth retrying or not.

use std::time::Duration;

use crm_platform::http::HttpClient;

use crate::domain::enrichment::{Firmographics, Query, parse};

/// Answers larger than this are refused (an endpoint answers a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Found(Box<Firmographics>),
    /// The endpoint knows nothing of the organisation (404, 204, or an empty answer).
    NoData,
}

pub use crm_platform::http::{Failure, check_url};

/// A configured endpoint.
#[derive(Clone)]
pub struct Endpoint {
    uri: http::Uri,
    timeout: Duration,
    authorization: String,
    client: HttpClient,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn new(url: &str, timeout: Duration, bearer_token: &str) -> Result<Self, String> {
        Ok(Self {
            uri: check_url(url)?,
            timeout,
            authorization: if bearer_token.is_empty() {
                String::new()
            } else {
                format!("Bearer {bearer_token}")
            },
            client: HttpClient::new(),
        })
    }

    /// Looks an organisation up, within the configured timeout.
    pub async fn lookup(&self, query: &Query) -> Result<Answer, Failure> {
        let body = serde_json::to_vec(query).map_err(|e| Failure::permanent(format!("query not encodable: {e}")))?;
        let mut headers = Vec::new();
        if !self.authorization.is_empty() {
            headers.push(("authorization", self.authorization.as_str()));
        }
        let (status, bytes) = self
            .client
            .post_json(&self.uri, &headers, body, self.timeout, MAX_ANSWER_BYTES)
            .await?;
        classify(status, &bytes)
    }
}

/// The meaning of an answer with `status` and `body`: 2xx carries firmographics
/// (or nothing), 404 means nothing known, 408/429/5xx are worth retrying, any other
/// 4xx (and redirects, which are not followed) will not get better by retrying.
pub fn classify(status: u16, body: &[u8]) -> Result<Answer, Failure> {
    match status {
        204 | 404 => Ok(Answer::NoData),
        200..=299 => match parse(body) {
            Ok(Some(found)) => Ok(Answer::Found(Box::new(found))),
            Ok(None) => Ok(Answer::NoData),
            Err(why) => Err(Failure::retry(why)),
        },
        408 | 429 | 500..=599 => Err(Failure::retry(format!("the endpoint answered {status}"))),
        _ => Err(Failure::permanent(format!(
            "the endpoint answered {status}: {}",
            excerpt(body)
        ))),
    }
}

/// The start of an error body, for the log.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(200).filter(|c| !c.is_control()).collect();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let found = br#"{"industry": "Software"}"#;
        assert!(matches!(classify(200, found), Ok(Answer::Found(f)) if f.industry == "Software"));
        assert_eq!(classify(200, b"{}"), Ok(Answer::NoData));
        assert_eq!(classify(404, b"not found"), Ok(Answer::NoData));
        assert_eq!(classify(204, b""), Ok(Answer::NoData));
        for retried in [408, 429, 500, 502, 503] {
            assert!(!classify(retried, b"").unwrap_err().permanent, "{retried}");
        }
        let malformed = classify(200, b"<html>").unwrap_err();
        assert!(!malformed.permanent && malformed.message.contains("malformed"));
        for permanent in [301, 400, 401, 403, 422] {
            assert!(classify(permanent, b"bad key").unwrap_err().permanent, "{permanent}");
        }
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(check_url("http://enrich.internal:8080/v1/lookup").is_ok());
        assert!(check_url("http://[::1]:9/x").is_ok());
        assert!(check_url("https://api.example.com").unwrap_err().contains("https"));
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("enrich.internal").is_err());
        let e = Endpoint::new("http://[::1]:9/x", Duration::from_secs(1), "s3cr3t-token").unwrap();
        assert_eq!(e.uri.port_u16(), Some(9));
        assert!(!format!("{e:?}").contains("s3cr3t"), "the token never prints");
    }
}
