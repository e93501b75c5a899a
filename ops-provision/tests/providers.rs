//! The providers through the conformance suite; offer choice and failover; the faults
//! real providers have (lost answers, 429 storms, capacity and quota refusals).

use ops_core::ErrorKind;
use ops_provision::choice::{self, ResourceRequest};
use ops_provision::inventory::{Inventory, StaticProvider};
use ops_provision::local::LocalProvider;
use ops_provision::memory::{Faults, InMemoryProvider};
use ops_provision::{Error, Labels, MANAGED_BY, MANAGED_BY_OPS, Offering, Provider, ServerSpec};
use rust_decimal::Decimal;

fn eur(cents_per_hour: i64) -> Decimal {
    Decimal::new(cents_per_hour, 2)
}

fn cloud() -> InMemoryProvider {
    InMemoryProvider::new(
        "cloud",
        vec![
            Offering::new("", "cpu-4", "fsn1", 4000, 16 << 30, eur(5), "EUR"),
            Offering::new("", "cpu-4", "nbg1", 4000, 16 << 30, eur(6), "EUR"),
            Offering::new("", "gpu-h100", "fsn1", 16000, 128 << 30, eur(250), "EUR")
                .with_gpus(1, "NVIDIA H100 80GB HBM3")
                .with_spot(eur(120)),
            Offering::new("", "gpu-h100", "nbg1", 16000, 128 << 30, eur(260), "EUR")
                .with_gpus(1, "NVIDIA H100 80GB HBM3"),
        ],
    )
}

fn inventory(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(dir.join("ops_ed25519"), "not a real key").unwrap();
    let file = dir.join("inventory.toml");
    std::fs::write(
        &file,
        r#"
        currency = "EUR"
        [[hosts]]
        name = "rig-1"
        address = "192.168.10.21"
        user = "ops"
        key = "ops_ed25519"
        region = "home-lab"
        cpu = 32
        memory = "128Gi"
        gpus = { count = 2, model = "NVIDIA RTX 4090" }
        cost = { monthly = 146.0 }
        [[hosts]]
        name = "box-2"
        address = "box-2.lab.example"
        key = "ops_ed25519"
        cpu = 8
        memory = 34359738368
        cost = { hourly = 0.03 }
        "#,
    )
    .unwrap();
    file
}

#[tokio::test]
async fn every_provider_conforms() {
    let memory = cloud();
    ops_provision::testkit::run_all(&memory, "cpu-4", "fsn1").await;
    let dir = tempfile::tempdir().unwrap();
    let owned = StaticProvider::new(Inventory::load(inventory(dir.path())).unwrap()).unwrap();
    ops_provision::testkit::run_all(&owned, "box-2", "owned").await;
    let local = LocalProvider::detect(Decimal::ZERO, "EUR");
    ops_provision::testkit::run_all(&local, "this-host", "local").await;
}

#[tokio::test]
async fn the_cheapest_fit_wins_across_clouds_and_owned_machines_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let owned = StaticProvider::new(Inventory::load(inventory(dir.path())).unwrap()).unwrap();
    let usd = InMemoryProvider::new(
        "usd-cloud",
        vec![Offering::new(
            "",
            "c-4",
            "fra1",
            4000,
            8 << 30,
            eur(4),
            "USD",
        )],
    );
    let mut offerings = cloud().offerings().await.unwrap();
    offerings.extend(owned.offerings().await.unwrap());
    offerings.extend(usd.offerings().await.unwrap());

    // 4 CPU and 16 GiB: the owned 8-core box at 0.03/h beats the cloud's 0.05/h.
    let request = ResourceRequest::new()
        .cpu_millis(4000)
        .memory_bytes(16 << 30);
    let ranking = choice::rank(&offerings, &request).unwrap();
    let best = ranking.best().unwrap();
    assert_eq!(best.offering.key(), "static/box-2@owned");
    assert!(best.offering.owned);
    let text = ranking.explain();
    assert!(text.contains("chosen: cheapest"), "{text}");
    assert!(
        text.contains("cloud/cpu-4@fsn1") && text.contains("0.02 more an hour"),
        "{text}"
    );
    assert!(
        text.contains("priced in USD with no rate into EUR (set rates.USD)"),
        "{text}"
    );
    assert!(text.contains("8.0 GiB < 16.0 GiB asked"), "{text}");

    // With a rate the USD offering is weighed (and too small anyway).
    let with_rate = request.clone().rate("USD", Decimal::new(92, 2));
    let ranking = choice::rank(&offerings, &with_rate).unwrap();
    let usd = ranking
        .rejected
        .iter()
        .find(|r| r.offering.provider == "usd-cloud")
        .unwrap();
    assert_eq!(usd.reasons, vec!["8.0 GiB < 16.0 GiB asked".to_owned()]);

    // An H100: spot when allowed; the 4090 rig loses on the model.
    let h100 = ResourceRequest::new().gpus(1, Some("h100")).spot(true);
    let ranking = choice::rank(&offerings, &h100).unwrap();
    let best = ranking.best().unwrap();
    assert!(best.spot && best.hourly == eur(120), "{best:?}");
    let rig = ranking
        .rejected
        .iter()
        .find(|r| r.offering.instance_type == "rig-1")
        .unwrap();
    assert!(
        rig.reasons[0].contains("GPU model NVIDIA RTX 4090 is not h100"),
        "{rig:?}"
    );

    // A model nobody has: a clear error naming the nearest misses.
    let a100 = ResourceRequest::new()
        .gpus(1, Some("A100"))
        .max_hourly(eur(100));
    let err = choice::rank(&offerings, &a100).unwrap().best().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let text = err.to_string();
    assert!(
        text.contains("no offering fits") && text.contains("is not A100"),
        "{text}"
    );

    // A bad request names each field.
    let bad = ResourceRequest::new()
        .currency("euro")
        .max_hourly(Decimal::ZERO)
        .gpus(0, Some("H100"));
    let err = choice::rank(&offerings, &bad).unwrap_err();
    let text = err.to_string();
    for needle in [
        "currency: \"euro\"",
        "max_hourly: 0",
        "gpu_model: set without gpus",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
}

#[tokio::test]
async fn capacity_and_quota_refusals_fail_over_and_say_why() {
    let provider = cloud();
    let request = ResourceRequest::new().gpus(1, None);
    let ranking = choice::rank(&provider.offerings().await.unwrap(), &request).unwrap();
    provider.set_faults(Faults::none().no_capacity_in("fsn1"));
    let spec = ServerSpec::new("train-0", "", "", "f", "gpu", 0);
    let mut steps = Vec::new();
    let (server, chosen) = choice::create_with_failover(&[&provider], &ranking, &spec, &mut steps)
        .await
        .unwrap();
    assert_eq!(chosen.offering.key(), "cloud/gpu-h100@nbg1");
    assert_eq!(server.region, "nbg1");
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].from, "cloud/gpu-h100@fsn1");
    assert_eq!(steps[0].to.as_deref(), Some("cloud/gpu-h100@nbg1"));
    assert_eq!(
        steps[0].reason,
        "cloud: no capacity for gpu-h100 in fsn1: resource_unavailable"
    );
    let event = steps[0].event("ops://provision");
    assert_eq!(event.ty, choice::PROVISION_FAILOVER);
    assert_eq!(event.data["to"], "cloud/gpu-h100@nbg1");

    // Nowhere left: every attempt named, each step recorded.
    provider.set_faults(Faults::none().no_capacity_in("fsn1").quota(1));
    let mut steps = Vec::new();
    let other = ServerSpec::new("train-1", "", "", "f", "gpu", 1);
    let err = choice::create_with_failover(&[&provider], &ranking, &other, &mut steps)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Exhausted { ref attempts } if attempts.len() == 2),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1].to, None);
    assert!(steps[1].reason.contains("quota reached"), "{steps:?}");
}

#[tokio::test]
async fn a_lost_create_answer_and_a_retry_make_one_server() {
    let provider = cloud();
    provider.set_faults(Faults::none().lost_create_answers(1).rate_limited(2));
    let spec = ServerSpec::new("web-0", "cpu-4", "fsn1", "f", "web", 0);
    // Two 429s, then the create whose answer is lost, then the retry.
    let mut tries = 0;
    let server = loop {
        tries += 1;
        match provider.create(&spec).await {
            Ok(server) => break server,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert_eq!(e.kind(), ErrorKind::Unavailable);
            }
        }
    };
    assert_eq!(tries, 4);
    let ours: Labels = [(MANAGED_BY.to_owned(), MANAGED_BY_OPS.to_owned())].into();
    assert_eq!(provider.list(&ours).await.unwrap(), vec![server]);
    // Ops never lists what it did not make.
    provider.insert_foreign("someones-db", "fsn1");
    assert_eq!(provider.list(&ours).await.unwrap().len(), 1);
    assert_eq!(provider.all_servers().len(), 2);
}

#[test]
fn an_inventory_with_a_missing_key_names_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inventory.toml");
    std::fs::write(
        &file,
        r#"
        [[hosts]]
        name = "rig-9"
        address = "10.1.2.3"
        key = "nowhere/id_ed25519"
        cpu = 4
        memory = "8Gi"
        cost = { hourly = 0.01 }
        "#,
    )
    .unwrap();
    let err = Inventory::load(&file).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let text = err.to_string();
    assert!(
        text.contains("host \"rig-9\".key") && text.contains("nowhere/id_ed25519"),
        "{text}"
    );
    let err = Inventory::load(dir.path().join("missing.toml")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// Claims in a claims file are seen by the next provider over the same file (the next
/// process), survive nothing else, and a claims file that cannot be written refuses the
/// claim rather than keep it only in memory.
#[tokio::test]
async fn owned_machine_claims_outlive_the_process_that_made_them() {
    use ops_provision::fleet::{Fleet, FleetSpec};
    use ops_provision::state::MemoryFleetStore;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let file = inventory(dir.path());
    let claims = dir.path().join("state/claims.json");
    let open = || {
        StaticProvider::new(Inventory::load(&file).unwrap())
            .unwrap()
            .with_claims_file(&claims)
            .unwrap()
    };
    let spec = FleetSpec::parse(
        r#"
        name = "lab"
        [[pools]]
        name = "gpu"
        count = 1
        request = { gpus = 2 }
        "#,
    )
    .unwrap();
    let store = Arc::new(MemoryFleetStore::default());
    let fleet = Fleet::new(spec.clone(), vec![Arc::new(open())], store.clone());
    assert!(
        fleet
            .apply(&fleet.plan().await.unwrap())
            .await
            .is_complete()
    );
    assert!(claims.is_file());

    // A new provider over the same file: the claim is there, nothing more to do.
    let again = Fleet::new(spec, vec![Arc::new(open())], store);
    let plan = again.plan().await.unwrap();
    assert!(plan.is_empty(), "{}", plan.table());
    assert_eq!(plan.keep[0].instance_type, "rig-1");
    assert!(again.destroy().await.unwrap().is_complete());
    assert!(open().list(&Default::default()).await.unwrap().is_empty());

    // A claims file that is not ours is refused, naming it.
    std::fs::write(&claims, "[1, 2]").unwrap();
    let err = StaticProvider::new(Inventory::load(&file).unwrap())
        .unwrap()
        .with_claims_file(&claims)
        .unwrap_err()
        .to_string();
    assert!(err.contains("claims.json"), "{err}");
}
