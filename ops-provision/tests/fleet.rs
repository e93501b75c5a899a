//! Fleets: plan from what exists, apply with failover and partial failures, apply again
//! to resume, scale down, and a spec with mistakes named field by field.

use ops_core::ErrorKind;
use ops_provision::fleet::{self, FleetSpec};
use ops_provision::memory::{Faults, InMemoryProvider};
use ops_provision::{Offering, Provider};
use rust_decimal::Decimal;

fn cloud() -> InMemoryProvider {
    InMemoryProvider::new(
        "cloud",
        vec![
            Offering::new(
                "",
                "cpu-4",
                "fsn1",
                4000,
                16 << 30,
                Decimal::new(5, 2),
                "EUR",
            ),
            Offering::new(
                "",
                "gpu-l4",
                "fsn1",
                8000,
                32 << 30,
                Decimal::new(80, 2),
                "EUR",
            )
            .with_gpus(1, "NVIDIA L4"),
            Offering::new(
                "",
                "gpu-l4",
                "nbg1",
                8000,
                32 << 30,
                Decimal::new(90, 2),
                "EUR",
            )
            .with_gpus(1, "NVIDIA L4"),
        ],
    )
}

fn spec(web: u32, gpu: u32) -> FleetSpec {
    FleetSpec::parse(&format!(
        r#"
        name = "farm"
        [[pools]]
        name = "web"
        count = {web}
        offering = {{ provider = "cloud", instance_type = "cpu-4", region = "fsn1" }}
        labels = {{ role = "web" }}
        [[pools]]
        name = "gpu"
        count = {gpu}
        environment = "production"
        request = {{ gpus = 1, gpu_model = "L4" }}
        "#
    ))
    .unwrap()
}

#[tokio::test]
async fn plan_apply_resume_and_scale_down() {
    let cloud = cloud();
    let providers: [&dyn Provider; 1] = [&cloud];
    let plan = fleet::plan(&spec(2, 3), &providers).await.unwrap();
    assert_eq!(plan.create.len(), 5);
    assert!(plan.delete.is_empty());
    assert_eq!(plan.hourly_before, Decimal::ZERO);
    assert_eq!(plan.hourly_after, Decimal::new(250, 2)); // 2 × 0.05 + 3 × 0.80
    let table = plan.table();
    assert!(
        table.contains("+ gpu/0") && table.contains("cloud/gpu-l4@fsn1"),
        "{table}"
    );
    assert!(
        table.contains("Cost: 0 → 2.5 EUR/h (0 → 1825 EUR/month)"),
        "{table}"
    );

    // One create loses its answer (the server was made): that slot fails in this run.
    cloud.set_faults(Faults::none().lost_create_answers(1));
    let report = fleet::apply(&plan, &providers, 4).await;
    assert_eq!(report.created.len() + report.failed.len(), 5, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(report.failed[0].1.is_retryable());
    assert!(report.events.iter().any(|e| e.ty == fleet::NODE_FAILED));
    assert_eq!(report.events.last().unwrap().ty, fleet::FLEET_PLAN_APPLIED);

    // Applying again resumes: the lost create's server is found by its token, nothing
    // is made twice.
    let again = fleet::plan(&spec(2, 3), &providers).await.unwrap();
    assert_eq!(again.create.len(), 0, "{}", again.table());
    assert_eq!(again.keep.len(), 5);
    assert_eq!(cloud.all_servers().len(), 5);
    assert_eq!(again.hourly_before, again.hourly_after);

    // Capacity gone in fsn1: new GPU slots fail over to nbg1, each step an event.
    cloud.set_faults(Faults::none().no_capacity_in("fsn1"));
    let grow = fleet::plan(&spec(2, 5), &providers).await.unwrap();
    assert_eq!(grow.create.len(), 2);
    let report = fleet::apply(&grow, &providers, 4).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(report.created.iter().all(|s| s.region == "nbg1"));
    assert_eq!(report.failovers.len(), 2);
    assert_eq!(
        report
            .events
            .iter()
            .filter(|e| e.ty == ops_provision::choice::PROVISION_FAILOVER)
            .count(),
        2
    );

    // Scale down: slots beyond the count are deleted, once the provider confirms; a
    // delete that times out is reported and planned again next time.
    cloud.set_faults(Faults::none().delete_timeouts(1));
    let shrink = fleet::plan(&spec(1, 2), &providers).await.unwrap();
    assert_eq!(shrink.delete.len(), 4, "{}", shrink.table());
    assert!(
        shrink
            .delete
            .iter()
            .all(|d| d.reason.contains("not one of them"))
    );
    let report = fleet::apply(&shrink, &providers, 4).await;
    assert_eq!(report.deleted.len(), 3);
    assert_eq!(report.failed.len(), 1);
    let rest = fleet::plan(&spec(1, 2), &providers).await.unwrap();
    assert_eq!(rest.delete.len(), 1);
    let report = fleet::apply(&rest, &providers, 4).await;
    assert_eq!(report.deleted.len(), 1);
    assert_eq!(cloud.all_servers().len(), 3);

    // A hand-made server in the account is never touched.
    cloud.insert_foreign("db", "fsn1");
    let empty = fleet::plan(&spec(1, 2), &providers).await.unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn a_spec_with_mistakes_is_refused_naming_each() {
    let err = FleetSpec::parse(
        r#"
        name = "farm!"
        [[pools]]
        name = "a"
        count = 1
        [[pools]]
        name = "a"
        count = 1
        offering = { provider = "cloud", instance_type = "cpu-4", region = "fsn1" }
        request = { gpus = 1 }
        labels = { "ops.fleet" = "x" }
        "#,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let text = err.to_string();
    for needle in [
        "name: \"farm!\" is not a label value",
        "pools[0] (\"a\"): give an offering or a request",
        "pools[1] (\"a\"): a second pool named \"a\"",
        "pools[1] (\"a\"): give offering or request, not both",
        "pools[1] (\"a\").labels.ops.fleet",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }

    let cloud = cloud();
    let providers: [&dyn Provider; 1] = [&cloud];
    let bad = FleetSpec::parse(
        r#"
        name = "farm"
        [[pools]]
        name = "web"
        count = 1
        offering = { provider = "cloud", instance_type = "cpu-4", region = "mars1" }
        [[pools]]
        name = "big"
        count = 1
        offering = { provider = "cloud", instance_type = "cpu-64", region = "fsn1" }
        [[pools]]
        name = "h100"
        count = 1
        request = { gpus = 1, gpu_model = "H100" }
        [[pools]]
        name = "elsewhere"
        count = 1
        offering = { provider = "hetzner", instance_type = "cx22", region = "fsn1" }
        "#,
    )
    .unwrap();
    let err = fleet::plan(&bad, &providers).await.unwrap_err();
    let text = err.to_string();
    for needle in [
        "pools[0] (\"web\").offering.region: cloud offers cpu-4 only in fsn1",
        "pools[1] (\"big\").offering.instance_type: cloud offers no \"cpu-64\"",
        "pools[2] (\"h100\"): no offering fits",
        "pools[3] (\"elsewhere\").offering.provider: \"hetzner\" is not configured",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
}
