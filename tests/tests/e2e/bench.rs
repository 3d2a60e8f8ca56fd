use crm_e2e::{binary, serve_crm};

/// `crm bench` against `crm serve`: a JSON report whose phases all ran without errors.
#[test]
fn bench_reports_every_phase_without_errors() {
    let data = tempfile::tempdir().unwrap();
    let (_server, target) = serve_crm(data.path());

    let out = std::process::Command::new(binary("crm"))
        .args(["bench", "--target", &target, "--concurrency", "4", "--duration-secs", "1"])
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
