//! The main example: on its embedded defaults (a copy of its configuration in a
//! temporary directory) it bills its tenants — one waits for credit until it tops up —
//! and prints their invoices and the seller's view; and it runs on Postgres and NATS by
//! configuration alone (command-line URLs), with the same outcome.

use std::path::Path;
use std::process::Command;

/// Runs local-platform with `args` and returns its stdout, failing on a non-zero exit.
fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_local-platform"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run local-platform");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "local-platform failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// What every run prints about billing: thrifty's task waiting for credit and starting
/// after its top-up, each tenant's invoice and credit, and the seller's view.
fn assert_billed(stdout: &str) {
    for needle in [
        "prepaid credit: acme ",
        "(thrifty) waits: budget: needs 0.02 EUR, 0.01 EUR available (asked again at ",
        "thrifty tops up 0.01 EUR",
        "▶ render (thrifty) started",
        "Invoice for acme from ",
        "Invoice for globex from ",
        "Invoice for thrifty from ",
        "tasks               template=render",
        "credit left: ",
        "The seller's view of this run",
        "fleet cost ",
        "ended as expected",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}

/// A copy of `examples/local-platform`'s configuration (its state goes there too).
fn copy_config(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("local-platform");
    for file in ["config.toml", "prices.toml", "costs.toml"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    std::fs::create_dir(to.join("templates")).unwrap();
    for entry in std::fs::read_dir(from.join("templates")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join("templates").join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn local_platform_bills_its_tenants_and_reruns_on_its_state() {
    let dir = tempfile::tempdir().unwrap();
    copy_config(dir.path());
    let config = dir.path().join("config.toml");
    let config = config.to_str().unwrap();
    let first = run(&["--config", config, "--renders", "2"]);
    assert_billed(&first);
    // globex has a welcome grant on top of its top-up, shown with its invoice.
    assert!(
        first.contains("acme 20.00 EUR, globex 25.00 EUR, thrifty 0.01 EUR"),
        "{first}"
    );
    assert!(first.contains("of which granted \"welcome-"), "{first}");
    // Invoices are written into the state directory.
    let invoices = dir.path().join("state/invoices");
    let run_dir = std::fs::read_dir(&invoices)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    for file in ["acme.html", "acme.json", "thrifty.json", "costs.html"] {
        assert!(run_dir.path().join(file).is_file(), "{file} not written");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.path().join("thrifty.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["total"]["amount"], 1, "{json}");

    // Again on the same state: the welcome credit is not added twice, and thrifty, left
    // with what its hold did not cost, waits again.
    let second = run(&["--config", config, "--renders", "2"]);
    assert_billed(&second);
    assert!(!second.contains("acme 20.00 EUR"), "{second}");
}

#[test]
fn local_platform_runs_on_postgres_and_nats_by_config_alone() {
    let Some(db) = ops_testbed::postgres_database() else {
        return;
    };
    let Some(nats) = ops_testbed::nats_url() else {
        return;
    };
    let stdout = run(&[
        "--fresh",
        "--renders",
        "2",
        "--history",
        &db,
        "--events",
        &nats,
    ]);
    assert!(stdout.contains("History store: postgres://"), "{stdout}");
    assert!(stdout.contains(&format!("events: {nats}")), "{stdout}");
    assert_billed(&stdout);
}
