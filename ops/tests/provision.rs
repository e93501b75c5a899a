//! `[provision]` end to end: a platform with owned machines and a fleet spec plans and
//! applies the fleet; records live in the history database and their events in its
//! outbox (so functions see `ops.node.*`), and a new platform on the same files sees
//! what the first one did. Also: a bad section names every problem at once.
#![cfg(all(feature = "provision", feature = "sqlite"))]

use std::path::Path;
use std::time::Duration;

use ops::events::{EventBus, SubscribeOptions};
use ops::prelude::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn setup(dir: &Path, provision: &str) -> std::path::PathBuf {
    write(&dir.join("keys/ops_ed25519"), "placeholder");
    write(
        &dir.join("machines.toml"),
        r#"
        [[hosts]]
        name = "rig-1"
        address = "10.0.0.1"
        key = "keys/ops_ed25519"
        cpu = 16
        memory = "64Gi"
        gpus = { count = 1, model = "NVIDIA RTX 4090" }
        cost = { monthly = 100.0 }
        [[hosts]]
        name = "rig-2"
        address = "10.0.0.2"
        key = "keys/ops_ed25519"
        cpu = 16
        memory = "64Gi"
        gpus = { count = 1, model = "NVIDIA RTX 4090" }
        cost = { monthly = 120.0 }
        "#,
    );
    write(
        &dir.join("fleet.toml"),
        r#"
        name = "lab"
        [[pools]]
        name = "gpu"
        count = 1
        request = { gpus = 1 }
        "#,
    );
    let file = dir.join("platform.toml");
    write(
        &file,
        &format!(
            "history = \"sqlite://state/ops.db\"\n[tasks]\nroot = \"tasks\"\n[provision]\n{provision}\n"
        ),
    );
    file
}

#[tokio::test]
async fn a_platform_applies_a_fleet_with_records_and_events_in_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = setup(
        dir.path(),
        "inventory = \"machines.toml\"\nfleets = [\"fleet.toml\"]",
    );
    let platform = Platform::from_file(&file).await.unwrap();
    let fleets = platform.fleets().expect("[provision] configured");
    assert_eq!(fleets.providers()[0].name(), "static");
    let fleet = fleets.fleet("lab").unwrap();
    let plan = fleet.plan().await.unwrap();
    assert_eq!(plan.create.len(), 1);
    // The cheaper machine: 100/730 EUR an hour.
    assert_eq!(
        plan.create[0]
            .ranking
            .best()
            .unwrap()
            .offering
            .instance_type,
        "rig-1"
    );
    let report = fleet.apply(&plan).await;
    assert!(report.is_complete(), "{:?}", report.failed);

    let bus = platform.events().clone();
    bus.subscribe("test", SubscribeOptions::default())
        .await
        .unwrap();
    let mut types = Vec::new();
    loop {
        let got = bus
            .fetch("test", 100, Duration::from_millis(100))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        types.extend(got.iter().map(|d| d.event.ty.clone()));
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        bus.ack("test", &tags).await.unwrap();
    }
    for ty in [
        "ops.node.provisioned",
        "ops.node.ready",
        "ops.fleet.plan.applied",
    ] {
        assert!(types.iter().any(|t| t == ty), "{ty} missing from {types:?}");
    }
    assert!(
        fleets
            .fleet("nope")
            .unwrap_err()
            .to_string()
            .contains("configured: lab")
    );
    platform.shutdown().await;

    // A new process: the claim (beside the inventory) and the record (in the history
    // database) are both there, so there is nothing to do.
    assert!(dir.path().join("machines.claims.json").is_file());
    let platform = Platform::from_file(&file).await.unwrap();
    let fleet = platform.fleets().unwrap().fleet("lab").unwrap();
    assert_eq!(fleet.nodes().await.unwrap().len(), 1);
    let plan = fleet.plan().await.unwrap();
    assert!(
        plan.is_empty() && plan.unrecorded.is_empty(),
        "{}",
        plan.table()
    );
    assert!(fleet.destroy().await.unwrap().is_complete());
    assert!(fleet.nodes().await.unwrap().is_empty());
    platform.shutdown().await;
}

#[tokio::test]
async fn a_bad_provision_section_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("bad.toml"), "name = \"x!\"\n");
    let file = setup(
        dir.path(),
        "inventory = \"missing.toml\"\nfleets = [\"bad.toml\"]\nconcurrency = 0",
    );
    let err = Platform::from_file(&file).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let text = err.to_string();
    for needle in [
        "provision.concurrency: must be at least 1",
        "missing.toml",
        "bad.toml",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}
