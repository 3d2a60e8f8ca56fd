//! Handlers of orders and interactions: integrators write with `customer.ingest`;
//! reading needs `customer.read` on the customer (a self-service token reads its own).

use crm_platform::{
    Error, FieldViolation,
    auth::{self, Principal},
    error::Validation,
    paging,
};
use crm_proto::crm::customer::v1::{self as pb, customer_reference::Reference};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, COLLECTION, MAX_PAGE_SIZE};
use crate::{
    domain::CustomerId,
    service::{
        activity::{CustomerRef, Recorded, order_name, validate_order},
        ingest::{check_external_id, check_source},
    },
    store::activity::{InteractionQuery, OrderQuery},
};

/// Interactions per batch at most.
const MAX_BATCH: usize = 1000;

/// A customer reference from the request, or every problem with it under `field`.
pub fn customer_ref(r: Option<pb::CustomerReference>, field: &str) -> Result<CustomerRef, Error> {
    match r.and_then(|r| r.reference) {
        Some(Reference::Customer(name)) => Ok(CustomerRef::Id(CustomerId::parse_name(&name, &format!("{field}.customer"))?)),
        Some(Reference::ExternalId(e)) => {
            let mut bad = Vec::new();
            if let Err(why) = check_source(&e.source) {
                bad.push(FieldViolation::new(format!("{field}.external_id.source"), why));
            }
            if let Err(why) = check_external_id(&e.external_id) {
                bad.push(FieldViolation::new(format!("{field}.external_id.external_id"), why));
            }
            if bad.is_empty() {
                Ok(CustomerRef::External {
                    source: e.source,
                    external_id: e.external_id,
                })
            } else {
                Err(Error::InvalidArgument(bad))
            }
        }
        None => Err(Error::invalid(field, "required: a customer or its external id")),
    }
}

fn micros(t: Option<&prost_types::Timestamp>, field: &str) -> Result<Option<i64>, Error> {
    t.map(|t| {
        crm_platform::feed::datetime(t)
            .map(|t| t.timestamp_micros())
            .ok_or_else(|| Error::invalid(field, "out of range"))
    })
    .transpose()
}

fn known(values: &[i32], field: &str, ok: impl Fn(i32) -> bool) -> Result<Vec<i32>, Error> {
    let bad: Vec<_> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v == 0 || !ok(**v))
        .map(|(i, _)| FieldViolation::new(format!("{field}[{i}]"), "unknown value"))
        .collect();
    if bad.is_empty() {
        Ok(values.to_vec())
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

impl Api {
    pub(super) async fn upsert_order_call(
        &self,
        req: Request<pb::UpsertOrderRequest>,
    ) -> Result<Response<pb::UpsertOrderResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.check(&principal, "customer.ingest", COLLECTION).await?;
        let mut v = Validation::default();
        let customer = v.check(customer_ref(req.customer, "customer"));
        let order = v.check(
            req.order
                .ok_or_else(|| Error::invalid("order", "required"))
                .and_then(|mut o| {
                    validate_order(&mut o).map_err(|bad| Error::InvalidArgument(bad).in_field("order"))?;
                    Ok(o)
                }),
        );
        let (customer, order) = v.finish(customer.zip(order))?;
        let done = self.customers.upsert_order(&principal.user_id, &customer, order).await?;
        Ok(Response::new(pb::UpsertOrderResponse {
            order: Some(done.order),
            created: done.created,
            stale: done.stale,
            lead_created: done.lead_created,
        }))
    }

    /// Ends a page of `(time, resource)` items: the token is `(time, id)` of the last.
    fn next_token<T>(
        &self,
        fingerprint: &str,
        found: &mut Vec<(i64, T)>,
        size: u32,
        name: impl Fn(&T) -> &str,
    ) -> Result<String, Error> {
        self.page_tokens.cut(fingerprint, found, size, |(us, item)| {
            (*us, name(item).rsplit('/').next().unwrap_or_default().to_owned())
        })
    }

    /// The customer (and those merged into it) if the caller may read it.
    async fn readable(&self, p: &Principal, customer: CustomerId) -> Result<Vec<CustomerId>, Error> {
        let c = self.load_for(p, "customer.read", customer).await?;
        self.customers.merged_family(&c).await
    }

    pub(super) async fn get_order_call(&self, req: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let principal = auth::principal(&req)?;
        let name = &req.get_ref().name;
        let (customer, _) = order_name(name).ok_or_else(|| Error::invalid("name", "customers/{customer}/orders/{order}"))?;
        self.readable(&principal, customer).await?;
        Ok(Response::new(self.customers.get_order(name).await?))
    }

    pub(super) async fn list_orders_call(
        &self,
        req: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let customer = CustomerId::parse_name(&req.parent, "parent")?;
        let family = self.readable(&principal, customer).await?;
        let statuses_key = req.statuses.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let range = format!("{:?}/{:?}", req.start_time, req.end_time);
        let fingerprint = paging::fingerprint(&["orders", &req.parent, &statuses_key, &range]);
        let mut v = Validation::default();
        let size = v.check(paging::page_size(req.page_size, 50, MAX_PAGE_SIZE));
        let after = v.check(if req.page_token.is_empty() {
            Ok(None)
        } else {
            self.page_tokens
                .decode::<(i64, String)>(&fingerprint, &req.page_token)
                .map(Some)
        });
        let statuses = v.check(known(&req.statuses, "statuses", |s| pb::OrderStatus::try_from(s).is_ok()));
        let from = v.check(micros(req.start_time.as_ref(), "start_time"));
        let to = v.check(micros(req.end_time.as_ref(), "end_time"));
        let ((((size, after), statuses), from), to) = v.finish(size.zip(after).zip(statuses).zip(from).zip(to))?;
        let q = OrderQuery {
            statuses,
            from_us: from,
            to_us: to,
            after,
            limit: u64::from(size) + 1,
        };
        let mut found = self.customers.list_orders(&family, &q).await?;
        let next_page_token = self.next_token(&fingerprint, &mut found, size, |o| &o.name)?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: found.into_iter().map(|(_, o)| o).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn list_interactions_call(
        &self,
        req: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let customer = CustomerId::parse_name(&req.parent, "parent")?;
        let family = self.readable(&principal, customer).await?;
        let kinds_key = req.kinds.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let channels_key = req.channels.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let range = format!("{:?}/{:?}", req.start_time, req.end_time);
        let fingerprint = paging::fingerprint(&["interactions", &req.parent, &kinds_key, &channels_key, &range]);
        let mut v = Validation::default();
        let size = v.check(paging::page_size(req.page_size, 100, MAX_PAGE_SIZE));
        let after = v.check(if req.page_token.is_empty() {
            Ok(None)
        } else {
            self.page_tokens
                .decode::<(i64, String)>(&fingerprint, &req.page_token)
                .map(Some)
        });
        let kinds = v.check(known(&req.kinds, "kinds", |k| pb::InteractionKind::try_from(k).is_ok()));
        let channels = v.check(known(&req.channels, "channels", |c| {
            crm_proto::crm::common::v1::Channel::try_from(c).is_ok()
        }));
        let from = v.check(micros(req.start_time.as_ref(), "start_time"));
        let to = v.check(micros(req.end_time.as_ref(), "end_time"));
        let (((((size, after), kinds), channels), from), to) =
            v.finish(size.zip(after).zip(kinds).zip(channels).zip(from).zip(to))?;
        let q = InteractionQuery {
            kinds,
            channels,
            from_us: from,
            to_us: to,
            after,
            limit: u64::from(size) + 1,
        };
        let mut found = self.customers.list_interactions(&family, &q).await?;
        let next_page_token = self.next_token(&fingerprint, &mut found, size, |i| &i.name)?;
        Ok(Response::new(pb::ListInteractionsResponse {
            interactions: found.into_iter().map(|(_, i)| i).collect(),
            next_page_token,
        }))
    }

    /// Acknowledges each batch of the stream once it is committed; a batch that
    /// cannot be stored ends the stream with its error (earlier batches stay stored).
    pub(super) async fn record_interactions_call(
        &self,
        req: Request<Streaming<pb::RecordInteractionsRequest>>,
    ) -> Result<Response<ReceiverStream<Result<pb::RecordInteractionsResponse, Status>>>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "customer.ingest", COLLECTION).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let customers = self.customers.clone();
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    let batch = match inbound.message().await {
                        Ok(Some(b)) => b,
                        Ok(None) => return,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    let answer = record_batch(&customers, &principal.user_id, batch).await;
                    let failed = answer.is_err();
                    if tx.send(answer.map_err(Status::from)).await.is_err() || failed {
                        return;
                    }
                }
            },
            span,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn record_batch(
    customers: &crate::service::Customers,
    actor: &str,
    batch: pb::RecordInteractionsRequest,
) -> Result<pb::RecordInteractionsResponse, Error> {
    if batch.interactions.is_empty() || batch.interactions.len() > MAX_BATCH {
        return Err(Error::invalid("interactions", format!("1 to {MAX_BATCH} per batch")));
    }
    let mut items = Vec::with_capacity(batch.interactions.len());
    let mut early: Vec<Option<Vec<FieldViolation>>> = Vec::with_capacity(batch.interactions.len());
    for input in batch.interactions {
        match customer_ref(input.customer, "customer") {
            Ok(r) => {
                items.push((Some(r), input.interaction.unwrap_or_default()));
                early.push(None);
            }
            Err(Error::InvalidArgument(v)) => {
                items.push((None, input.interaction.unwrap_or_default()));
                early.push(Some(v));
            }
            Err(e) => return Err(e),
        }
    }
    let outcomes = customers.record_interactions(actor, items).await?;
    let mut recorded = 0;
    let results = outcomes
        .into_iter()
        .zip(early)
        .enumerate()
        .map(|(i, (outcome, early))| {
            let index = i32::try_from(i).unwrap_or(i32::MAX);
            let field_errors = |v: Vec<FieldViolation>| {
                v.into_iter()
                    .map(|f| pb::FieldError {
                        field: f.field,
                        description: f.description,
                    })
                    .collect()
            };
            match (early, outcome) {
                (Some(v), _) => pb::InteractionResult {
                    index,
                    errors: field_errors(v),
                    ..Default::default()
                },
                (None, Recorded::Stored(name)) => {
                    recorded += 1;
                    pb::InteractionResult {
                        index,
                        interaction: name,
                        ..Default::default()
                    }
                }
                (None, Recorded::Duplicate(name)) => pb::InteractionResult {
                    index,
                    interaction: name,
                    duplicate: true,
                    ..Default::default()
                },
                (None, Recorded::Rejected(v)) => pb::InteractionResult {
                    index,
                    errors: field_errors(v),
                    ..Default::default()
                },
            }
        })
        .collect();
    Ok(pb::RecordInteractionsResponse {
        batch_id: batch.batch_id,
        results,
        recorded,
    })
}
