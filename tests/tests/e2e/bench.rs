use std::time::Duration;

use crm_e2e::{Running, binary, free_port};

/// `crm bench` against `crm serve`: a JSON report whose phases all ran without errors.
#[test]
fn bench_reports_every_phase_without_errors() {
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut serve = std::process::Command::new(binary("crm"));
    serve
        .args(["serve", "--listen", &listen])
        .env("CRM__DATABASE__DATA_DIR", data.path())
        .env_remove("CRM__DATABASE__URL");
    let server = Running::start(serve);
    server.wait_for_line("serving", Duration::from_secs(60));

    let out = std::process::Command::new(binary("crm"))
        .args([
            "bench",
            "--target",
            &format!("http://{listen}"),
            "--concurrency",
            "4",
            "--duration-secs",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["customers_created"].as_u64().unwrap() > 0);
    let phases = report["phases"].as_array().unwrap();
    let ops: Vec<_> = phases.iter().map(|p| p["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["CreateCustomer", "GetCustomer", "ListCustomers"]);
    for p in phases {
        assert_eq!(p["errors"], 0, "{p}");
        assert!(p["requests"].as_u64().unwrap() > 0, "{p}");
        let lat = &p["latency_us"];
        assert!(
            lat["p50"].as_u64() <= lat["p99"].as_u64() && lat["p99"].as_u64() <= lat["max"].as_u64(),
            "{p}"
        );
    }
}
