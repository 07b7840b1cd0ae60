//! Invalid config is rejected with precise messages.
//!
//! Each `testdata/invalid/NAME.yaml` is loaded alone; the errors pilot
//! reports must equal `testdata/invalid/NAME.expected` line for line (file,
//! document, `Kind namespace/name`, field path, reason), and the file must be
//! rejected. `UPDATE_EXPECTED=1 cargo test -p keel-pilot --test validation`
//! rewrites the expectations (review the diff).

use std::path::Path;

use keel_pilot::model::store::ConfigStore;

#[test]
fn every_invalid_config_is_rejected_with_its_exact_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/invalid");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/invalid exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "want 20+ invalid cases, have {}",
        cases.len()
    );
    let update = std::env::var_os("UPDATE_EXPECTED").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(case).expect("readable");
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert(&name, &text);
        let snapshot = store.snapshot();
        let status = store.status();
        assert!(!status[0].accepted, "{name} was accepted");
        assert_eq!(
            snapshot.config.virtual_services.len() + snapshot.config.destination_rules.len(),
            0,
            "{name}: nothing from a rejected file may serve"
        );
        let got: Vec<String> = store.errors().iter().map(ToString::to_string).collect();
        assert!(!got.is_empty(), "{name}: no error reported");
        let expected_path = case.with_extension("expected");
        if update {
            std::fs::write(&expected_path, got.join("\n") + "\n").expect("write expectation");
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run with UPDATE_EXPECTED=1",
                expected_path.display()
            )
        });
        let want: Vec<&str> = want.lines().collect();
        if got != want {
            failures.push(format!("{name}:\n  got:  {got:#?}\n  want: {want:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
