//! The `crm` operator commands, run as a real process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use crm_platform::{auth::TokenVerifier, config::AuthConfig};

fn crm(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crm"));
    cmd.env("CRM__DATABASE__DATA_DIR", data_dir).env_remove("CRM__DATABASE__URL");
    cmd
}

#[test]
fn token_prints_a_verifiable_token_on_its_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = crm(dir.path())
        .args(["token", "--user", "u-42", "--customer", "c-9"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    let verifier = TokenVerifier::from_config(&AuthConfig {
        jwt_secret: "crm-dev-secret-not-for-production-use".into(),
        public_key_path: String::new(),
        algorithm: "HS256".into(),
        issuer: String::new(),
        audience: String::new(),
    })
    .unwrap();
    let principal = verifier.verify(token).unwrap();
    assert_eq!(principal.user_id, "u-42");
    assert_eq!(principal.customer_id.as_deref(), Some("c-9"));
}

#[test]
fn migrate_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = crm(dir.path()).arg("migrate").output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let every: Vec<String> = crm_customer_profile::store::MIGRATIONS
        .iter()
        .map(|m| m.version.to_string())
        .collect();
    let applied = format!("applied migrations [{}]", every.join(", "));
    assert!(String::from_utf8_lossy(&first.stdout).contains(&applied), "{applied}");
    assert!(dir.path().join("customer-profile.db").exists());
    let second = crm(dir.path()).arg("migrate").output().unwrap();
    assert!(String::from_utf8_lossy(&second.stdout).contains("applied migrations []"));
}
