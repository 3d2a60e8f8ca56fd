//! gRPC handlers: decode the request, authorize, call the use case, encode the answer.

pub mod convert;

use std::sync::Arc;

use crm_platform::{
    Error,
    auth::{self, Authorizer},
    error::Validation,
    feed::Feed,
    idempotency,
    paging::{self, PageTokens},
};
use crm_proto::crm::{
    customer::v1::{
        self as pb, CreateCustomerRequest, DeleteCustomerRequest, GetCustomerRequest, ListCustomersRequest,
        ListCustomersResponse, UpdateCustomerRequest, customer_profile_service_server::CustomerProfileService,
    },
    events::v1::{StreamEventsRequest, StreamEventsResponse},
};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        CustomerId,
        customer::COLLECTION,
        filter::{Filter, OrderBy},
        update,
    },
    service::Customers,
    store::{ListQuery, Position},
};

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Api {
    customers: Customers,
    authorizer: Arc<dyn Authorizer>,
    page_tokens: PageTokens,
}

impl Api {
    pub fn new(customers: Customers, authorizer: Arc<dyn Authorizer>, page_tokens: PageTokens) -> Self {
        Self {
            customers,
            authorizer,
            page_tokens,
        }
    }

    fn feed(&self) -> &Feed {
        self.customers.feed()
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
        self.authorizer.check(&principal, "customer.create", COLLECTION).await?;
        let key = idempotency::Key::new("CreateCustomer", &principal.user_id, &req.request_id, &req.encode_to_vec())?;
        let customer = required(req.customer, "customer")?;
        let channel = convert::channel_from_proto(customer.source_channel).map_err(|e| e.in_field("customer"))?;
        let profile = convert::profile_from_proto(customer).map_err(|e| e.in_field("customer"))?;
        let created = self.customers.create(&principal.user_id, profile, channel, key).await?;
        Ok(Response::new(convert::customer_to_proto(&created)))
    }

    async fn get_customer(&self, req: Request<GetCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.name, "name")?;
        self.authorizer.check(&principal, "customer.read", &req.name).await?;
        let customer = self.customers.get(id).await?;
        Ok(Response::new(convert::customer_to_proto(&customer)))
    }

    async fn update_customer(&self, req: Request<UpdateCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let patch = required(req.customer, "customer")?;
        let id = CustomerId::parse_name(&patch.name, "customer.name")?;
        self.authorizer.check(&principal, "customer.update", &patch.name).await?;
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
        let updated = self.customers.update(&principal.user_id, id, &patch, &paths, &etag).await?;
        Ok(Response::new(convert::customer_to_proto(&updated)))
    }

    async fn delete_customer(&self, req: Request<DeleteCustomerRequest>) -> Result<Response<pb::Customer>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.name, "name")?;
        self.authorizer.check(&principal, "customer.delete", &req.name).await?;
        let deleted = self.customers.delete(&principal.user_id, id, &req.etag).await?;
        Ok(Response::new(convert::customer_to_proto(&deleted)))
    }

    async fn list_customers(&self, req: Request<ListCustomersRequest>) -> Result<Response<ListCustomersResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.authorizer.check(&principal, "customer.read", COLLECTION).await?;
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
        };
        let mut customers = self.customers.list(&query).await?;
        let next_page_token = if customers.len() > page_size as usize {
            customers.truncate(page_size as usize);
            match customers.last() {
                Some(last) => self.page_tokens.encode(&fingerprint, &Position::after(last, order))?,
                None => String::new(),
            }
        } else {
            String::new()
        };
        Ok(Response::new(ListCustomersResponse {
            customers: customers.iter().map(convert::customer_to_proto).collect(),
            next_page_token,
        }))
    }

    type StreamEventsStream = ReceiverStream<Result<StreamEventsResponse, Status>>;

    async fn stream_events(&self, req: Request<StreamEventsRequest>) -> Result<Response<Self::StreamEventsStream>, Status> {
        let principal = auth::principal(&req)?;
        self.authorizer.check(&principal, "customer.events", COLLECTION).await?;
        let stream = self.feed().stream(&req.get_ref().after_cursor, principal.expires_at).await?;
        Ok(Response::new(stream))
    }
}
