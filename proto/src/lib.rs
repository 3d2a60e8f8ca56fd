//! The CRM platform's gRPC contracts, generated from `proto/crm/**` at build time.
//!
//! Module paths follow the proto packages: `crm_proto::crm::customer::v1`, and so on.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod crm {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("crm.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("crm.events.v1");
        }
    }
    pub mod customer {
        pub mod v1 {
            tonic::include_proto!("crm.customer.v1");
        }
    }
    pub mod permissions {
        pub mod v1 {
            tonic::include_proto!("crm.permissions.v1");
        }
    }
    pub mod ticketing {
        pub mod v1 {
            tonic::include_proto!("crm.ticketing.v1");
        }
    }
    pub mod segmentation {
        pub mod v1 {
            tonic::include_proto!("crm.segmentation.v1");
        }
    }
    pub mod analytics {
        pub mod v1 {
            tonic::include_proto!("crm.analytics.v1");
        }
    }
}

/// Every CRM contract (and the well-known types they import) as an encoded
/// `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("crm_descriptor");
