//! The main example runs on Postgres and NATS by configuration alone (command-line
//! URLs), with the same outcome as on its embedded defaults.

use std::process::Command;

#[test]
fn local_platform_runs_on_postgres_and_nats_by_config_alone() {
    let Some(db) = ops_testbed::postgres_database() else {
        return;
    };
    let Some(nats) = ops_testbed::nats_url() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_local-platform"))
        .args([
            "--fresh",
            "--renders",
            "2",
            "--history",
            &db,
            "--events",
            &nats,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run local-platform");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "local-platform failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("History store: postgres://"), "{stdout}");
    assert!(stdout.contains(&format!("events: {nats}")), "{stdout}");
    assert!(stdout.contains("ended as expected"), "{stdout}");
}
