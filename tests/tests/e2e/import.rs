use crm_e2e::{binary, serve_crm};

/// `crm seed` writes customers and a mapping; `crm import` streams them into
/// `crm serve`; importing the same file again skips every row.
#[test]
fn seeded_customers_import_and_reimport_idempotently() {
    let data = tempfile::tempdir().unwrap();
    let (_server, target) = serve_crm(&data.path().join("db"));

    let file = data.path().join("customers.csv");
    let seed = std::process::Command::new(binary("crm"))
        .args(["seed", "--customers", "300", "--duplicates", "0.1", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(seed.status.success(), "{}", String::from_utf8_lossy(&seed.stderr));
    let mapping = data.path().join("customers.mapping.toml");
    assert!(mapping.exists());

    let import = || {
        let out = std::process::Command::new(binary("crm"))
            .arg("import")
            .arg(&file)
            .arg("--mapping")
            .arg(&mapping)
            .args(["--target", &target, "--batch", "64"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = import();
    assert!(first.contains("importJobs/import-customers-"), "{first}");
    assert!(first.contains(": 300 rows"), "{first}");
    assert!(first.contains(", 0 rejected, 0 skipped"), "{first}");
    let merged: u32 = first
        .split(", ")
        .find_map(|part| part.strip_suffix(" merged"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no merged count in {first}"));
    assert!(merged > 0, "the seeded duplicates are found: {first}");
    let second = import();
    assert!(second.contains("600 rows"), "{second}");
    assert!(second.contains("300 skipped"), "{second}");
}
