//! Compiles `crm/**/*.proto` with protox (pure Rust, no system `protoc`) and writes the
//! file descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const FILES: &[&str] = &[
    "crm/common/v1/common.proto",
    "crm/events/v1/events.proto",
    "crm/customer/v1/activity.proto",
    "crm/customer/v1/consent.proto",
    "crm/customer/v1/customer.proto",
    "crm/customer/v1/customer360.proto",
    "crm/customer/v1/erasure.proto",
    "crm/customer/v1/export.proto",
    "crm/customer/v1/retention.proto",
    "crm/customer/v1/customer_service.proto",
    "crm/customer/v1/customer_events.proto",
    "crm/permissions/v1/permissions.proto",
    "crm/permissions/v1/permissions_service.proto",
    "crm/permissions/v1/permissions_events.proto",
    "crm/ticketing/v1/ticketing.proto",
    "crm/ticketing/v1/ticketing_service.proto",
    "crm/ticketing/v1/ticketing_events.proto",
    "crm/ticketing/v1/knowledge_base_service.proto",
    "crm/segmentation/v1/segmentation_service.proto",
    "crm/segmentation/v1/campaigns.proto",
    "crm/segmentation/v1/journeys.proto",
    "crm/segmentation/v1/segmentation_events.proto",
    "crm/analytics/v1/analytics_service.proto",
    "crm/analytics/v1/analytics_events.proto",
];

/// Not imported by our contracts: served by reflection only, so clients can decode
/// the google.rpc error details every error carries.
const REFLECTION_ONLY: &[&str] = &["google/rpc/error_details.proto", "google/rpc/status.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=crm");
    println!("cargo:rerun-if-changed=third_party");
    let fds = protox::compile(FILES, ["."])?;
    let mut served = fds.clone();
    for file in protox::compile(REFLECTION_ONLY, ["third_party"])?.file {
        if !served.file.iter().any(|f| f.name == file.name) {
            served.file.push(file);
        }
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("crm_descriptor.bin"), served.encode_to_vec())?;
    tonic_prost_build::configure()
        // BTreeMap keeps map encoding deterministic, so an encoded request can be
        // hashed (request_id idempotency compares hashes).
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
