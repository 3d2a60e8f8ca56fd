//! gRPC handlers: decode the request, authorize, call the use case, encode the answer.

pub mod activity;
pub mod consent;
pub mod convert;
mod erasure;
mod export;
mod feed;
pub mod redact;
mod view360;

use crm_platform::{
    Error,
    auth::{self, Principal},
    authz::{Authz, Resource},
    error::Validation,
    feed::Feed,
    idempotency,
    paging::{self, PageTokens},
};
use crm_proto::crm::{
    customer::v1::{
        self as pb, CreateCustomerRequest, DeleteCustomerRequest, GetCustomerRequest, ListCustomersRequest,
        ListCustomersResponse, UpdateCustomerRequest, customer_profile_service_server::CustomerProfileService,
        find_duplicates_request::Probe, import_customers_request::Content,
    },
    events::v1::{StreamEventsRequest, StreamEventsResponse},
};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    domain::{
        Customer, CustomerId,
        customer::COLLECTION,
        definitions::Definitions,
        filter::{Filter, OrderBy},
        import::{Mapping, Row},
        update,
    },
    service::{
        Customers,
        ingest::{Outcome, check_external_id},
    },
    store::{
        ListQuery, Position,
        records::{CandidatePosition, CandidateState},
    },
};

/// Rows per `ImportRows` message at most.
const MAX_IMPORT_ROWS: usize = 1000;

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Api {
    customers: Customers,
    authz: Authz,
    page_tokens: PageTokens,
    sections: crate::sections::Sections,
    behaviour_window_days: i32,
}

/// How a response came about, for the read audit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The caller reads customers: sensitive fields shown in clear are audited.
    Read,
    /// The response echoes the caller's own write (already audited as a change).
    Write,
}

impl Api {
    pub fn new(
        customers: Customers,
        authz: Authz,
        page_tokens: PageTokens,
        sections: crate::sections::Sections,
        behaviour_window_days: i32,
    ) -> Self {
        Self {
            customers,
            authz,
            page_tokens,
            sections,
            behaviour_window_days,
        }
    }

    fn feed(&self) -> &Feed {
        self.customers.feed()
    }

    /// `permission` on a collection or an unowned resource.
    async fn check(&self, p: &Principal, permission: &str, name: &str) -> Result<(), Error> {
        self.authz.check(p, permission, Resource::named(name)).await
    }

    /// `permission` on a stored customer, whose owner and team decide the scope.
    async fn check_customer(&self, p: &Principal, permission: &str, c: &Customer) -> Result<(), Error> {
        let name = c.name();
        self.authz
            .check(
                p,
                permission,
                Resource::record(&name, &c.profile.owner_user_id, &c.profile.team_id),
            )
            .await
    }

    /// Loads a customer the caller may act on: a caller who may read no customer
    /// at all learns nothing (not even whether it exists).
    async fn load_for(&self, p: &Principal, permission: &str, id: CustomerId) -> Result<Customer, Error> {
        // A self-service token reaches its own record only, never the collection.
        if p.customer_id.is_none() {
            self.check(p, "customer.read", COLLECTION).await?;
        }
        let c = self.customers.get(id).await?;
        self.check_customer(p, permission, &c).await?;
        Ok(c)
    }

    async fn field_policy(
        &self,
        p: &Principal,
    ) -> Result<(crm_platform::authz::FieldPolicy, std::sync::Arc<Definitions>), Error> {
        let defs = self.customers.definitions().await?;
        let fields: Vec<_> = defs
            .iter()
            .map(|d| (d.path.clone(), redact::level(d.classification)))
            .collect();
        Ok((self.authz.field_policy(p, "customer.read", &fields).await?, defs))
    }

    /// Customers as this caller may see them; a read that shows sensitive fields in
    /// clear is audited.
    async fn present(&self, p: &Principal, customers: &[Customer], purpose: Purpose) -> Result<Vec<pb::Customer>, Error> {
        let (policy, defs) = self.field_policy(p).await?;
        let mut out = Vec::with_capacity(customers.len());
        let mut fields = std::collections::BTreeSet::new();
        let mut exposed = Vec::new();
        for c in customers {
            let mut shown = convert::customer_to_proto(c);
            let record = policy.for_record(Resource::record(&shown.name, &c.profile.owner_user_id, &c.profile.team_id));
            // A customer sees its own record without the company's internal fields.
            let customer_view = p.customer_id.is_some();
            let s = redact::apply(
                &mut shown,
                &|path| {
                    if customer_view && defs.get(path).is_some_and(|d| !d.visible_to_customer()) {
                        crm_platform::authz::Visibility::Hidden
                    } else {
                        record.visibility(path)
                    }
                },
                &defs,
            );
            if !s.sensitive.is_empty() {
                exposed.push(shown.name.clone());
                fields.extend(s.sensitive);
            }
            out.push(shown);
        }
        if purpose == Purpose::Read && !exposed.is_empty() {
            let resource = if exposed.len() == 1 {
                exposed[0].clone()
            } else {
                COLLECTION.to_owned()
            };
            let mut entry = self.authz.audit().entry(
                p,
                "customer.read",
                &resource,
                crm_proto::crm::permissions::v1::audit_entry::Outcome::Success,
            );
            entry.fields = fields.into_iter().collect();
            if exposed.len() > 1 {
                entry.related_resources = exposed;
            }
            self.authz.audit().record_now(vec![entry]).await?;
        }
        Ok(out)
    }

    async fn present_one(&self, p: &Principal, c: &Customer, purpose: Purpose) -> Result<pb::Customer, Error> {
        Ok(self.present(p, std::slice::from_ref(c), purpose).await?.remove(0))
    }

    /// Writing a field means seeing it on that record: a masked value sent back
    /// would overwrite the real one.
    async fn check_writable(&self, p: &Principal, paths: &[update::Path], record: Resource<'_>) -> Result<(), Error> {
        self.check_fields_visible(p, "customer.update", paths, record).await
    }

    /// Every field under `paths` is visible to the caller on `record`, or
    /// PERMISSION_DENIED naming `action` and the field.
    async fn check_fields_visible(
        &self,
        p: &Principal,
        action: &str,
        paths: &[update::Path],
        record: Resource<'_>,
    ) -> Result<(), Error> {
        let (policy, defs) = self.field_policy(p).await?;
        let policy = policy.for_record(record);
        for path in paths {
            for field in update::definition_paths(path) {
                let covered: Vec<&str> = if field == "custom_attributes" {
                    defs.iter()
                        .filter(|d| d.custom_key().is_some())
                        .map(|d| d.path.as_str())
                        .collect()
                } else {
                    vec![field.as_str()]
                };
                for f in covered {
                    if policy.visibility(f) != crm_platform::authz::Visibility::Visible {
                        return Err(Error::PermissionDenied {
                            permission: format!("{action} ({f}: classified above your clearance)"),
                            resource: COLLECTION.into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl Api {
    /// A customer changes only the fields the definitions mark self-editable (and
    /// custom attributes one key at a time).
    async fn check_self_editable(&self, paths: &[update::Path], name: &str) -> Result<(), Error> {
        let defs = self.customers.definitions().await?;
        for path in paths {
            let fields = match path {
                update::Path::Kind | update::Path::CustomAttributes => vec![format!("{path:?}")],
                other => update::definition_paths(other),
            };
            for field in fields {
                if !defs.get(&field).is_some_and(|d| d.self_editable) {
                    return Err(Error::PermissionDenied {
                        permission: format!("customer.update (`{field}` is not self-editable)"),
                        resource: name.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::invalid(field, "required"))
}

#[tonic::async_trait]
impl CustomerProfileService for Api {
    async fn create_customer(&self, req: Request<CreateCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.create", COLLECTION).await?;
        let key = idempotency::Key::new("CreateCustomer", &principal.user_id, &req.request_id, &req.encode_to_vec())?;
        let customer = required(req.customer, "customer")?;
        let channel = convert::channel_from_proto(customer.source_channel).map_err(|e| e.in_field("customer"))?;
        let profile = convert::profile_from_proto(customer).map_err(|e| e.in_field("customer"))?;
        let created = self.customers.create(&principal.user_id, profile, channel, key).await?;
        Ok(Response::new(self.present_one(&principal, &created, Purpose::Write).await?))
    }

    async fn get_customer(&self, req: Request<GetCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.name, "name")?;
        let customer = self.load_for(&principal, "customer.read", id).await?;
        Ok(Response::new(self.present_one(&principal, &customer, Purpose::Read).await?))
    }

    async fn update_customer(&self, req: Request<UpdateCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let patch = required(req.customer, "customer")?;
        let id = CustomerId::parse_name(&patch.name, "customer.name")?;
        let current = self.load_for(&principal, "customer.update", id).await?;
        let etag = patch.etag.clone();
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut v = Validation::default();
        let patch = v.check(convert::profile_from_proto(patch).map_err(|e| e.in_field("customer")));
        let paths = v.check(if mask.is_empty() {
            Ok(None)
        } else {
            update::parse_mask(&mask).map(Some)
        });
        let (patch, paths) = v.finish(patch.zip(paths))?;
        let paths = paths.unwrap_or_else(|| update::populated_paths(&patch));
        if paths
            .iter()
            .any(|p| matches!(p, update::Path::OwnerUserId | update::Path::TeamId))
        {
            self.check_customer(&principal, "customer.assign", &current).await?;
        }
        let name = current.name();
        let record = Resource::record(&name, &current.profile.owner_user_id, &current.profile.team_id);
        self.check_writable(&principal, &paths, record).await?;
        let updated = if principal.customer_id.is_some() {
            self.check_self_editable(&paths, &name).await?;
            self.customers
                .update_from(&name, "self_service", id, &patch, &paths, &etag)
                .await?
        } else {
            self.customers.update(&principal.user_id, id, &patch, &paths, &etag).await?
        };
        Ok(Response::new(self.present_one(&principal, &updated, Purpose::Write).await?))
    }

    async fn delete_customer(&self, req: Request<DeleteCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.name, "name")?;
        self.load_for(&principal, "customer.delete", id).await?;
        let deleted = self.customers.delete(&principal.user_id, id, &req.etag).await?;
        Ok(Response::new(self.present_one(&principal, &deleted, Purpose::Write).await?))
    }

    async fn list_customers(&self, req: Request<ListCustomersRequest>) -> Result<Response<ListCustomersResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.read", COLLECTION).await?;
        let scope = self.authz.read_scope(&principal, "customer.read").await?;
        let fingerprint = paging::fingerprint(&[&req.filter, &req.order_by, if req.show_deleted { "deleted" } else { "" }]);
        let mut v = Validation::default();
        let page_size = v.check(paging::page_size(req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE));
        let filter = v.check(Filter::parse(&req.filter));
        let order = v.check(OrderBy::parse(&req.order_by));
        let after = v.check(if req.page_token.is_empty() {
            Ok(None)
        } else {
            self.page_tokens.decode::<Position>(&fingerprint, &req.page_token).map(Some)
        });
        let (((page_size, filter), order), after) = v.finish(page_size.zip(filter).zip(order).zip(after))?;
        let query = ListQuery {
            filter,
            order,
            show_deleted: req.show_deleted,
            after,
            limit: u64::from(page_size) + 1,
            scope,
        };
        let mut customers = if query.scope.is_empty() {
            Vec::new()
        } else {
            self.customers.list(&query).await?
        };
        let next_page_token = self
            .page_tokens
            .cut(&fingerprint, &mut customers, page_size, |last| Position::after(last, order))?;
        Ok(Response::new(ListCustomersResponse {
            customers: self.present(&principal, &customers, Purpose::Read).await?,
            next_page_token,
        }))
    }

    async fn list_field_definitions(
        &self,
        req: Request<pb::ListFieldDefinitionsRequest>,
    ) -> Result<Response<pb::ListFieldDefinitionsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.read", "fieldDefinitions").await?;
        let mut v = Validation::default();
        let page_size = v.check(paging::page_size(req.page_size, 100, MAX_PAGE_SIZE));
        let after = v.check(if req.page_token.is_empty() {
            Ok(String::new())
        } else {
            self.page_tokens.decode::<String>("fieldDefinitions", &req.page_token)
        });
        let (page_size, after) = v.finish(page_size.zip(after))?;
        let defs = self.customers.list_definitions().await?;
        let mut page: Vec<_> = defs
            .into_iter()
            .filter(|d| d.path > after)
            .take(page_size as usize + 1)
            .collect();
        let next_page_token = self
            .page_tokens
            .cut("fieldDefinitions", &mut page, page_size, |last| last.path.clone())?;
        Ok(Response::new(pb::ListFieldDefinitionsResponse {
            field_definitions: page.iter().map(convert::definition_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_field_definition(
        &self,
        req: Request<pb::GetFieldDefinitionRequest>,
    ) -> Result<Response<pb::FieldDefinition>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.read", "fieldDefinitions").await?;
        let path = req
            .name
            .strip_prefix("fieldDefinitions/")
            .ok_or_else(|| Error::invalid("name", "must be a resource name `fieldDefinitions/{field}`"))?;
        let def = self.customers.get_definition(path).await?;
        Ok(Response::new(convert::definition_to_proto(&def)))
    }

    async fn update_field_definition(
        &self,
        req: Request<pb::UpdateFieldDefinitionRequest>,
    ) -> Result<Response<pb::FieldDefinition>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let def = required(req.field_definition, "field_definition")?;
        self.check(&principal, "customer.define_fields", "fieldDefinitions").await?;
        let etag = def.etag.clone();
        let patch = convert::definition_from_proto(def).map_err(|e| e.in_field("field_definition"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let saved = self
            .customers
            .update_definition(&principal.user_id, patch, &mask, &etag, req.allow_missing)
            .await
            .map_err(|e| e.in_field("field_definition"))?;
        Ok(Response::new(convert::definition_to_proto(&saved)))
    }

    async fn ingest_customer(
        &self,
        req: Request<pb::IngestCustomerRequest>,
    ) -> Result<Response<pb::IngestCustomerResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.ingest", COLLECTION).await?;
        let mut v = Validation::default();
        let source = v.check(convert::source_from_proto(req.source, "source"));
        let external_id = v.check(check_external_id(&req.external_id).map_err(|why| Error::invalid("external_id", why)));
        let profile =
            v.check(convert::profile_from_proto(required(req.customer, "customer")?).map_err(|e| e.in_field("customer")));
        let profile = match profile {
            Some(p) => v.check(self.customers.validate_partial(p).await),
            None => None,
        };
        let observed = v.check(match req.source_update_time {
            None => Ok(None),
            Some(t) => chrono::DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
                .map(|t| Some(chrono::SubsecRound::trunc_subsecs(t, 6)))
                .ok_or_else(|| Error::invalid("source_update_time", "out of range")),
        });
        let (((source, ()), profile), observed) = v.finish(source.zip(external_id).zip(profile).zip(observed))?;
        // The matched customer is not known yet: only clearance over every record counts.
        self.check_writable(
            &principal,
            &update::populated_paths(profile.profile()),
            Resource::named(COLLECTION),
        )
        .await?;
        let done = self
            .customers
            .ingest(&principal.user_id, &source, &req.external_id, profile, observed)
            .await?;
        Ok(Response::new(pb::IngestCustomerResponse {
            customer: Some(self.present_one(&principal, &done.customer, Purpose::Write).await?),
            outcome: convert::outcome_to_proto(done.outcome) as i32,
            match_probability: done.probability,
        }))
    }

    async fn import_customers(
        &self,
        req: Request<Streaming<pb::ImportCustomersRequest>>,
    ) -> Result<Response<pb::ImportJob>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "customer.import", COLLECTION).await?;
        let mut stream = req.into_inner();
        let spec = match stream.message().await? {
            Some(pb::ImportCustomersRequest {
                content: Some(Content::Spec(spec)),
            }) => spec,
            _ => return Err(Error::invalid("spec", "the first message must carry the import spec").into()),
        };
        let mut v = Validation::default();
        let id_ok = {
            let id = &spec.import_job_id;
            let ok = (1..=63).contains(&id.len())
                && id.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            v.check(if ok {
                Ok(())
            } else {
                Err(Error::invalid(
                    "spec.import_job_id",
                    "1 to 63 of [a-z0-9-], starting with a letter",
                ))
            })
        };
        let source = v.check(convert::source_from_proto(spec.source, "spec.source"));
        let mapping = v.check(
            Mapping::validated(spec.mapping.into_iter().map(|m| (m.column, m.field)).collect()).map_err(|e| e.in_field("spec")),
        );
        let ((source, mapping), ()) = v.finish(source.zip(mapping).zip(id_ok))?;
        let mut job = self.customers.open_import(&spec.import_job_id, source, mapping).await?;
        // A client that resets the stream drops this handler without a word: the guard
        // then marks the job interrupted.
        let mut guard = InterruptOnDrop {
            customers: self.customers.clone(),
            job: job.id.clone(),
            armed: true,
        };
        let mut complete = false;
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(status) => {
                    // The client went away mid-stream: what was processed is committed.
                    self.customers.close_import(&mut job, false).await?;
                    return Err(status);
                }
            };
            if complete {
                self.customers.close_import(&mut job, false).await?;
                return Err(Error::invalid("complete", "must be the last message").into());
            }
            let rows = match message.content {
                Some(Content::Rows(rows)) => rows.rows,
                Some(Content::Complete(true)) => {
                    complete = true;
                    continue;
                }
                _ => {
                    self.customers.close_import(&mut job, false).await?;
                    return Err(Error::invalid(
                        "rows",
                        "only the first message carries a spec; later ones carry rows, the last `complete`",
                    )
                    .into());
                }
            };
            if rows.len() > MAX_IMPORT_ROWS {
                self.customers.close_import(&mut job, false).await?;
                return Err(Error::invalid("rows.rows", format!("at most {MAX_IMPORT_ROWS} rows per message")).into());
            }
            let mut bad = Vec::new();
            for (i, r) in rows.iter().enumerate() {
                if r.row_key.is_empty() || r.row_key.len() > 128 || r.row_key.chars().any(char::is_control) {
                    bad.push(crm_platform::FieldViolation::new(
                        format!("rows.rows[{i}].row_key"),
                        "1 to 128 characters, no control characters",
                    ));
                }
            }
            if !bad.is_empty() {
                self.customers.close_import(&mut job, false).await?;
                return Err(Error::InvalidArgument(bad).into());
            }
            let rows = rows
                .into_iter()
                .map(|r| Row {
                    key: r.row_key,
                    values: r.values.into_iter().collect(),
                })
                .collect();
            if let Err(e) = self.customers.import_batch(&principal.user_id, &mut job, rows).await {
                self.customers.close_import(&mut job, false).await?;
                return Err(e.into());
            }
        }
        self.customers.close_import(&mut job, complete).await?;
        guard.armed = false;
        Ok(Response::new(convert::job_to_proto(&job)))
    }

    async fn get_import_job(&self, req: Request<pb::GetImportJobRequest>) -> Result<Response<pb::ImportJob>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = import_job_id(&req.name, "name")?;
        self.check(&principal, "customer.import", "importJobs").await?;
        Ok(Response::new(convert::job_to_proto(&self.customers.get_import(id).await?)))
    }

    async fn list_import_row_results(
        &self,
        req: Request<pb::ListImportRowResultsRequest>,
    ) -> Result<Response<pb::ListImportRowResultsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let fingerprint = paging::fingerprint(&[&req.parent, &req.outcome.to_string()]);
        let mut v = Validation::default();
        let id = v.check(import_job_id(&req.parent, "parent"));
        let page_size = v.check(paging::page_size(req.page_size, 100, MAX_PAGE_SIZE));
        let outcome = v.check(match pb::IngestOutcome::try_from(req.outcome) {
            Ok(pb::IngestOutcome::Unspecified) => Ok(None),
            Ok(o) => Ok(Outcome::parse(
                &o.as_str_name().trim_start_matches("INGEST_OUTCOME_").to_lowercase(),
            )),
            Err(_) => Err(Error::invalid("outcome", format!("{} is not a known value", req.outcome))),
        });
        let after = v.check(if req.page_token.is_empty() {
            Ok(0)
        } else {
            self.page_tokens.decode::<i64>(&fingerprint, &req.page_token)
        });
        let (((id, page_size), outcome), after) = v.finish(id.zip(page_size).zip(outcome).zip(after))?;
        self.check(&principal, "customer.import", "importJobs").await?;
        let mut rows = self
            .customers
            .list_import_rows(id, outcome, after, u64::from(page_size) + 1)
            .await?;
        let next_page_token = self.page_tokens.cut(&fingerprint, &mut rows, page_size, |(seq, _)| *seq)?;
        Ok(Response::new(pb::ListImportRowResultsResponse {
            results: rows.iter().map(|(_, r)| convert::row_to_proto(r)).collect(),
            next_page_token,
        }))
    }

    async fn find_duplicates(
        &self,
        req: Request<pb::FindDuplicatesRequest>,
    ) -> Result<Response<pb::FindDuplicatesResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let max = match req.max_matches {
            0 => 10,
            n @ 1..=100 => n as usize,
            _ => return Err(Error::invalid("max_matches", "between 0 and 100").into()),
        };
        let found = match req.probe {
            Some(Probe::Name(name)) => {
                let id = CustomerId::parse_name(&name, "name")?;
                self.load_for(&principal, "customer.read", id).await?;
                self.customers.find_duplicates_of(id, max).await?
            }
            Some(Probe::Customer(c)) => {
                self.check(&principal, "customer.read", COLLECTION).await?;
                let profile = convert::profile_from_proto(c).map_err(|e| e.in_field("customer"))?;
                // A probe of a field one cannot see would reveal who has that value.
                self.check_fields_visible(
                    &principal,
                    "customer.read",
                    &update::populated_paths(&profile),
                    Resource::named(COLLECTION),
                )
                .await?;
                self.customers.find_duplicates_of_probe(profile, max).await?
            }
            None => return Err(Error::invalid("probe", "set `name` or `customer`").into()),
        };
        // The answer names other customers and compares their fields: only those
        // the caller may read.
        let scope = self.authz.read_scope(&principal, "customer.read").await?;
        let found: Vec<_> = found
            .into_iter()
            .filter(|m| {
                let c = &m.customer;
                scope.allows(&c.name(), &c.profile.owner_user_id, &c.profile.team_id)
            })
            .collect();
        let cfg = &self.customers.settings().matching;
        let (policy, _) = self.field_policy(&principal).await?;
        Ok(Response::new(pb::FindDuplicatesResponse {
            matches: found
                .iter()
                .map(|m| pb::DuplicateMatch {
                    customer: m.customer.name(),
                    match_probability: m.score.probability,
                    comparisons: {
                        // Only comparisons of fields the caller sees on that customer.
                        let name = m.customer.name();
                        let p = &m.customer.profile;
                        let record = policy.for_record(Resource::record(&name, &p.owner_user_id, &p.team_id));
                        convert::comparisons_to_proto(&m.score.comparisons)
                            .into_iter()
                            .filter(|c| {
                                redact::compared_paths(&c.field)
                                    .iter()
                                    .all(|f| record.visibility(f) == crm_platform::authz::Visibility::Visible)
                            })
                            .collect()
                    },
                    decision: match cfg.decide(m.score.probability) {
                        crate::domain::matching::Decision::Distinct => pb::MatchDecision::Distinct,
                        crate::domain::matching::Decision::Review => pb::MatchDecision::Review,
                        crate::domain::matching::Decision::Match => pb::MatchDecision::Match,
                    } as i32,
                })
                .collect(),
        }))
    }

    async fn list_duplicate_candidates(
        &self,
        req: Request<pb::ListDuplicateCandidatesRequest>,
    ) -> Result<Response<pb::ListDuplicateCandidatesResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.read", "duplicateCandidates").await?;
        // The queue spans every customer: stewards read it with scope ALL.
        if !self.authz.read_scope(&principal, "customer.read").await?.all {
            return Err(Error::PermissionDenied {
                permission: "customer.read (scope ALL)".into(),
                resource: "duplicateCandidates".into(),
            }
            .into());
        }
        let fingerprint = paging::fingerprint(&[&req.state.to_string(), &req.customer]);
        let mut v = Validation::default();
        let page_size = v.check(paging::page_size(req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE));
        let state = v.check(match pb::DuplicateState::try_from(req.state) {
            Ok(pb::DuplicateState::Unspecified | pb::DuplicateState::Open) => Ok(CandidateState::Open),
            Ok(pb::DuplicateState::Merged) => Ok(CandidateState::Merged),
            Ok(pb::DuplicateState::Dismissed) => Ok(CandidateState::Dismissed),
            Err(_) => Err(Error::invalid("state", format!("{} is not a known value", req.state))),
        });
        let customer = v.check(if req.customer.is_empty() {
            Ok(None)
        } else {
            CustomerId::parse_name(&req.customer, "customer").map(Some)
        });
        let after = v.check(if req.page_token.is_empty() {
            Ok(None)
        } else {
            self.page_tokens
                .decode::<CandidatePosition>(&fingerprint, &req.page_token)
                .map(Some)
        });
        let (((page_size, state), customer), after) = v.finish(page_size.zip(state).zip(customer).zip(after))?;
        let mut found = self
            .customers
            .list_candidates(state, customer, after.as_ref(), u64::from(page_size) + 1)
            .await?;
        let next_page_token = self
            .page_tokens
            .cut(&fingerprint, &mut found, page_size, |last| CandidatePosition {
                probability: last.probability,
                id: last.id.to_string(),
            })?;
        Ok(Response::new(pb::ListDuplicateCandidatesResponse {
            duplicate_candidates: found.iter().map(convert::candidate_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn dismiss_duplicate_candidate(
        &self,
        req: Request<pb::DismissDuplicateCandidateRequest>,
    ) -> Result<Response<pb::DuplicateCandidate>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.merge", "duplicateCandidates").await?;
        let id = req
            .name
            .strip_prefix("duplicateCandidates/")
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .ok_or_else(|| Error::invalid("name", "must be a resource name `duplicateCandidates/{candidate}`"))?;
        let candidate = self.customers.dismiss_candidate(id).await?;
        Ok(Response::new(convert::candidate_to_proto(&candidate)))
    }

    async fn merge_customers(&self, req: Request<pb::MergeCustomersRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let mut v = Validation::default();
        let survivor = v.check(CustomerId::parse_name(&req.survivor, "survivor"));
        let mut merged = Vec::with_capacity(req.merged.len());
        for (i, name) in req.merged.iter().enumerate() {
            if let Some(id) = v.check(CustomerId::parse_name(name, &format!("merged[{i}]"))) {
                merged.push(id);
            }
        }
        let survivor = v.finish(survivor)?;
        self.load_for(&principal, "customer.merge", survivor).await?;
        for id in &merged {
            self.load_for(&principal, "customer.merge", *id).await?;
        }
        let customer = self
            .customers
            .merge(&principal.user_id, survivor, &req.survivor_etag, &merged)
            .await?;
        Ok(Response::new(self.present_one(&principal, &customer, Purpose::Write).await?))
    }

    async fn unmerge_customer(&self, req: Request<pb::UnmergeCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.name, "name")?;
        // Undoing a merge rewrites the survivor too (Get of a merged id answers with it).
        self.load_for(&principal, "customer.merge", id).await?;
        let customer = self.customers.unmerge(&principal.user_id, id).await?;
        Ok(Response::new(self.present_one(&principal, &customer, Purpose::Write).await?))
    }

    async fn get_data_quality_report(
        &self,
        req: Request<pb::GetDataQualityReportRequest>,
    ) -> Result<Response<pb::DataQualityReport>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "customer.read", "dataQualityReport").await?;
        let r = self.customers.cached_quality_report().await?;
        Ok(Response::new(convert::quality_to_proto(&r)))
    }

    async fn upsert_order(&self, req: Request<pb::UpsertOrderRequest>) -> Result<Response<pb::UpsertOrderResponse>, Status> {
        self.upsert_order_call(req).await
    }

    async fn get_order(&self, req: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        self.get_order_call(req).await
    }

    async fn list_orders(&self, req: Request<pb::ListOrdersRequest>) -> Result<Response<pb::ListOrdersResponse>, Status> {
        self.list_orders_call(req).await
    }

    type RecordInteractionsStream = ReceiverStream<Result<pb::RecordInteractionsResponse, Status>>;

    async fn record_interactions(
        &self,
        req: Request<Streaming<pb::RecordInteractionsRequest>>,
    ) -> Result<Response<Self::RecordInteractionsStream>, Status> {
        self.record_interactions_call(req).await
    }

    async fn list_interactions(
        &self,
        req: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        self.list_interactions_call(req).await
    }

    async fn get_consent(&self, req: Request<pb::GetConsentRequest>) -> Result<Response<pb::Consent>, Status> {
        self.get_consent_call(req).await
    }

    async fn update_consent(&self, req: Request<pb::UpdateConsentRequest>) -> Result<Response<pb::Consent>, Status> {
        self.update_consent_call(req).await
    }

    async fn list_consent_history(
        &self,
        req: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        self.list_consent_history_call(req).await
    }

    async fn get_customer360(&self, req: Request<pb::GetCustomer360Request>) -> Result<Response<pb::Customer360>, Status> {
        self.get_customer360_call(req).await
    }

    async fn list_timeline(&self, req: Request<pb::ListTimelineRequest>) -> Result<Response<pb::ListTimelineResponse>, Status> {
        self.list_timeline_call(req).await
    }

    async fn purge_expired_data(
        &self,
        req: Request<pb::PurgeExpiredDataRequest>,
    ) -> Result<Response<pb::RetentionReport>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "customer.retention", COLLECTION).await?;
        let report = self
            .customers
            .purge_expired(&principal.user_id, req.get_ref().dry_run, chrono::Utc::now())
            .await?;
        Ok(Response::new(report))
    }

    async fn export_customer_data(&self, req: Request<pb::ExportCustomerDataRequest>) -> Result<Response<pb::ExportJob>, Status> {
        self.export_customer_data_call(req).await
    }

    async fn get_export_job(&self, req: Request<pb::GetExportJobRequest>) -> Result<Response<pb::ExportJob>, Status> {
        self.get_export_job_call(req).await
    }

    async fn erase_customer(&self, req: Request<pb::EraseCustomerRequest>) -> Result<Response<pb::Erasure>, Status> {
        self.erase_customer_call(req).await
    }

    async fn get_erasure(&self, req: Request<pb::GetErasureRequest>) -> Result<Response<pb::Erasure>, Status> {
        self.get_erasure_call(req).await
    }

    type DownloadExportStream = ReceiverStream<Result<pb::ExportChunk, Status>>;

    async fn download_export(
        &self,
        req: Request<pb::DownloadExportRequest>,
    ) -> Result<Response<Self::DownloadExportStream>, Status> {
        self.download_export_call(req).await
    }

    type StreamEventsStream = ReceiverStream<Result<StreamEventsResponse, Status>>;

    async fn stream_events(&self, req: Request<StreamEventsRequest>) -> Result<Response<Self::StreamEventsStream>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "customer.events", COLLECTION).await?;
        let types = &req.get_ref().event_types;
        let (policy, defs) = self.field_policy(&principal).await?;
        let everywhere = policy.for_record(Resource::named(COLLECTION));
        let cleared = defs
            .iter()
            .all(|d| everywhere.visibility(&d.path) == crm_platform::authz::Visibility::Visible);
        let stream = self
            .feed()
            .stream(&req.get_ref().after_cursor, types, principal.expires_at)
            .await?;
        // Events carry whole records: as stored for a caller cleared for every field,
        // else masked record by record like a read.
        if cleared {
            Ok(Response::new(stream))
        } else {
            Ok(Response::new(feed::masked(stream, policy, defs)))
        }
    }
}

fn import_job_id<'a>(name: &'a str, field: &str) -> Result<&'a str, Error> {
    name.strip_prefix("importJobs/")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Error::invalid(field, "must be a resource name `importJobs/{import_job}`"))
}

struct InterruptOnDrop {
    customers: Customers,
    job: String,
    armed: bool,
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let customers = self.customers.clone();
            let job = std::mem::take(&mut self.job);
            tokio::spawn(async move {
                if let Err(err) = customers.interrupt_import(&job).await {
                    tracing::warn!(%err, job, "could not mark the import job interrupted");
                }
            });
        }
    }
}
