//! Fleets: plan from what exists, apply with failover and partial failures, apply again
//! to resume, scale down, records written with their events (in memory, SQLite and
//! PostgreSQL), refresh, the orphan sweep by policy, destroy, and a spec with mistakes
//! named field by field.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ops_core::{ErrorKind, Event};
use ops_events::{EventBus, SubscribeOptions};
use ops_provision::fleet::{self, Fleet, FleetSpec, OrphanPolicy};
use ops_provision::memory::{Faults, InMemoryProvider};
use ops_provision::state::{Change, FleetStore, MemoryFleetStore, NodeRecord, NodeState};
use ops_provision::{Offering, Provider, ServerSpec};
use rust_decimal::Decimal;

fn cloud() -> Arc<InMemoryProvider> {
    Arc::new(InMemoryProvider::new(
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
    ))
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

/// Every event in `bus` since the last call, in order.
async fn drain(bus: &dyn EventBus) -> Vec<Event> {
    let sub = "drain";
    bus.subscribe(sub, SubscribeOptions::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let got = bus
            .fetch(sub, 1000, Duration::from_millis(50))
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        out.extend(got.into_iter().map(|d| (*d.event).clone()));
        bus.ack(sub, &tags).await.unwrap();
    }
}

fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.ty.as_str()).collect()
}

fn fleet_of(cloud: &Arc<InMemoryProvider>, spec: FleetSpec, store: Arc<dyn FleetStore>) -> Fleet {
    Fleet::new(spec, vec![cloud.clone() as Arc<dyn Provider>], store).concurrency(4)
}

/// The whole life of a fleet on one store: apply (with a lost answer), resume,
/// failover, scale down with a delete that times out, refresh after a server vanished,
/// destroy. Run on each store; `bus` is where the store's events go.
async fn lifecycle(store: Arc<dyn FleetStore>, bus: &dyn EventBus) {
    let cloud = cloud();
    drain(bus).await;
    let fleet = fleet_of(&cloud, spec(2, 3), store.clone());
    let plan = fleet.plan().await.unwrap();
    assert_eq!(plan.create.len(), 5);
    assert!(plan.delete.is_empty() && plan.unrecorded.is_empty() && plan.gone.is_empty());
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

    // While someone else changes the fleet, apply, refresh and sweep fail at once
    // (Busy, a conflict) and touch nothing.
    let held = store.lock("farm").await.unwrap();
    let report = fleet.apply(&plan).await;
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].1.kind(), ErrorKind::Conflict);
    assert!(report.created.is_empty() && cloud.all_servers().is_empty());
    assert!(matches!(
        fleet.refresh().await,
        Err(ops_provision::Error::Busy { .. })
    ));
    assert!(matches!(
        fleet.sweep().await,
        Err(ops_provision::Error::Busy { .. })
    ));
    held.release().await;
    // Released at once (and a dropped lock is released too: PostgreSQL a moment later,
    // when its connection has closed).
    store.lock("farm").await.unwrap().release().await;
    let dropped = store.lock("farm").await.unwrap();
    drop(dropped);
    let mut tries = 0;
    loop {
        match store.lock("farm").await {
            Ok(lock) => break lock.release().await,
            Err(e) if tries < 40 => {
                assert_eq!(e.kind(), ErrorKind::Conflict);
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a dropped lock was not released: {e}"),
        }
    }

    // One create loses its answer (the server was made): that slot fails in this run.
    cloud.set_faults(Faults::none().lost_create_answers(1));
    let report = fleet.apply(&plan).await;
    assert_eq!(report.created.len(), 4, "{report:?}");
    assert_eq!(report.ready.len(), 4);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(report.failed[0].1.is_retryable());
    let events = drain(bus).await;
    let sorted = |events: &[Event]| {
        let mut ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        sorted(&events),
        sorted(&report.events),
        "the report lists what was written"
    );
    let count = |ty: &str| events.iter().filter(|e| e.ty == ty).count();
    assert_eq!(count(fleet::NODE_PROVISIONED), 4);
    assert_eq!(count(fleet::NODE_READY), 4);
    assert_eq!(count(fleet::NODE_FAILED), 1);
    assert_eq!(events.last().unwrap().ty, fleet::FLEET_PLAN_APPLIED);
    // Each server's provisioned event comes before its ready event.
    for ready in events.iter().filter(|e| e.ty == fleet::NODE_READY) {
        let at = |ty: &str| {
            events
                .iter()
                .position(|e| e.ty == ty && e.subject == ready.subject)
        };
        assert!(at(fleet::NODE_PROVISIONED) < at(fleet::NODE_READY));
    }
    let nodes = fleet.nodes().await.unwrap();
    assert_eq!(nodes.len(), 4);
    assert!(nodes.iter().all(|n| n.state == NodeState::Ready));
    assert_eq!(nodes[0].pool, "gpu");
    assert_eq!(nodes[0].hourly, Decimal::new(80, 2));

    // Applying again resumes: the lost create's server is found by its token, and the
    // server it made without a record is an orphan, adopted into its slot.
    let again = fleet.plan().await.unwrap();
    assert_eq!(again.create.len(), 0, "{}", again.table());
    assert_eq!(again.keep.len(), 5);
    assert_eq!(again.unrecorded.len(), 1);
    assert!(
        again.table().contains("not in its records (orphan)"),
        "{}",
        again.table()
    );
    let report = fleet.apply(&again).await;
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(report.adopted.len(), 1);
    assert_eq!(
        types(&drain(bus).await),
        [fleet::NODE_ADOPTED, fleet::FLEET_PLAN_APPLIED]
    );
    assert_eq!(fleet.nodes().await.unwrap().len(), 5);
    assert_eq!(cloud.all_servers().len(), 5);

    // Capacity gone in fsn1: new GPU slots fail over to nbg1, each step an event
    // written with the server's record.
    cloud.set_faults(Faults::none().no_capacity_in("fsn1"));
    let fleet = fleet_of(&cloud, spec(2, 5), store.clone());
    let grow = fleet.plan().await.unwrap();
    assert_eq!(grow.create.len(), 2);
    let report = fleet.apply(&grow).await;
    assert!(report.is_complete(), "{:?}", report.failed);
    assert!(report.created.iter().all(|s| s.region == "nbg1"));
    assert_eq!(report.failovers.len(), 2);
    let events = drain(bus).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.ty == ops_provision::choice::PROVISION_FAILOVER)
            .count(),
        2
    );

    // Scale down: slots beyond the count are deleted, once the provider confirms; a
    // delete that times out keeps its record (deleting) and is planned again.
    cloud.set_faults(Faults::none().delete_timeouts(1));
    let fleet = fleet_of(&cloud, spec(1, 2), store.clone());
    let shrink = fleet.plan().await.unwrap();
    assert_eq!(shrink.delete.len(), 4, "{}", shrink.table());
    assert!(
        shrink
            .delete
            .iter()
            .all(|d| d.reason.contains("not one of them"))
    );
    let report = fleet.apply(&shrink).await;
    assert_eq!(report.deleted.len(), 3);
    assert_eq!(report.failed.len(), 1);
    let nodes = fleet.nodes().await.unwrap();
    assert_eq!(nodes.len(), 4, "the undeleted server keeps its record");
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n.state == NodeState::Deleting)
            .count(),
        1
    );
    let events = drain(bus).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.ty == fleet::NODE_DELETED)
            .count(),
        3
    );
    let failed = events.iter().find(|e| e.ty == fleet::NODE_FAILED).unwrap();
    assert_eq!(failed.data["operation"], "delete");
    let rest = fleet.plan().await.unwrap();
    assert_eq!(rest.delete.len(), 1);
    assert_eq!(fleet.apply(&rest).await.deleted.len(), 1);
    assert_eq!(cloud.all_servers().len(), 3);
    assert_eq!(fleet.nodes().await.unwrap().len(), 3);

    // A server deleted outside Ops: refresh removes its record with an event.
    let victim = fleet.nodes().await.unwrap().remove(0);
    cloud.delete(&victim.server.id).await.unwrap();
    drain(bus).await;
    let refreshed = fleet.refresh().await.unwrap();
    assert_eq!(refreshed.gone.len(), 1);
    assert!(refreshed.orphans.is_empty());
    let events = drain(bus).await;
    assert_eq!(types(&events), [fleet::NODE_DELETED]);
    assert_eq!(events[0].data["reason"], "the provider no longer has it");
    assert_eq!(fleet.nodes().await.unwrap().len(), 2);

    // A hand-made server in the account is never touched.
    cloud.insert_foreign("db", "fsn1");
    let plan = fleet.plan().await.unwrap();
    assert_eq!(plan.create.len(), 1, "the vanished slot is made again");

    // Destroy: everything of the fleet goes, records last.
    let report = fleet.destroy().await.unwrap();
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(report.deleted.len(), 2);
    assert!(fleet.nodes().await.unwrap().is_empty());
    assert_eq!(
        cloud.all_servers().len(),
        1,
        "only the foreign server is left"
    );
}

#[tokio::test]
async fn lifecycle_in_memory() {
    let bus = Arc::new(ops_events::memory::InMemoryBus::new());
    let store = Arc::new(MemoryFleetStore::new(bus.clone()));
    lifecycle(store, &*bus).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn lifecycle_in_sqlite_and_records_survive_a_reopen() {
    use ops_provision::state::SqliteFleetStore;
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("ops.db").display().to_string();
    let store = SqliteFleetStore::open(&url).await.unwrap();
    lifecycle(Arc::new(store.clone()), store.outbox()).await;

    let cloud = cloud();
    let fleet = fleet_of(&cloud, spec(1, 1), Arc::new(store.clone()));
    assert!(
        fleet
            .apply(&fleet.plan().await.unwrap())
            .await
            .is_complete()
    );
    drop(fleet);
    drop(store);
    let reopened = SqliteFleetStore::open(&url).await.unwrap();
    // Two stores on one file (two processes) exclude each other through the lock file.
    let other = SqliteFleetStore::open(&url).await.unwrap();
    let held = reopened.lock("farm").await.unwrap();
    let err = other.lock("farm").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("ops.db.fleet-farm.lock"), "{err}");
    other.lock("elsewhere").await.unwrap().release().await;
    held.release().await;
    other.lock("farm").await.unwrap().release().await;
    let nodes = reopened.nodes("farm").await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n.state == NodeState::Ready));
    assert_eq!(reopened.fleets().await.unwrap(), ["farm"]);
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn lifecycle_in_postgres() {
    use ops_provision::state::PostgresFleetStore;
    let Some(url) = ops_testbed::postgres_database() else {
        return;
    };
    let store = PostgresFleetStore::connect(&url).await.unwrap();
    lifecycle(Arc::new(store.clone()), store.outbox()).await;
}

/// A store whose commits fail on demand (a crash, or a database gone, between a create
/// and its record).
struct Flaky {
    inner: MemoryFleetStore,
    fail_next: AtomicUsize,
}

#[async_trait]
impl FleetStore for Flaky {
    async fn nodes(&self, fleet: &str) -> ops_provision::Result<Vec<NodeRecord>> {
        self.inner.nodes(fleet).await
    }
    async fn fleets(&self) -> ops_provision::Result<Vec<String>> {
        self.inner.fleets().await
    }
    async fn commit(&self, changes: &[Change], events: &[Event]) -> ops_provision::Result<()> {
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ops_provision::Error::Store {
                source: ops_events::StoreError::new("flaky", "injected failure"),
            });
        }
        self.inner.commit(changes, events).await
    }
}

#[tokio::test]
async fn a_server_created_but_not_recorded_is_named_and_then_swept_by_policy() {
    let cloud = cloud();
    let bus = Arc::new(ops_events::memory::InMemoryBus::new());
    let flaky = Arc::new(Flaky {
        inner: MemoryFleetStore::new(bus.clone()),
        fail_next: AtomicUsize::new(1),
    });
    let fleet = fleet_of(&cloud, spec(1, 0), flaky.clone()).concurrency(1);
    let report = fleet.apply(&fleet.plan().await.unwrap()).await;
    assert_eq!(report.failed.len(), 1);
    let (what, _) = &report.failed[0];
    let server = &cloud.all_servers()[0];
    assert!(
        what.contains(&server.id) && what.contains("not recorded"),
        "{what}"
    );
    assert!(fleet.nodes().await.unwrap().is_empty());

    // Report: the orphan is listed and left alone.
    let sweep = fleet
        .clone()
        .orphans(OrphanPolicy::Report)
        .sweep()
        .await
        .unwrap();
    assert_eq!(sweep.reported.len(), 1);
    assert_eq!(cloud.all_servers().len(), 1);
    // Refresh lists it too.
    assert_eq!(fleet.refresh().await.unwrap().orphans.len(), 1);

    // Delete: the orphan goes, and the next apply makes its slot afresh.
    let deleting = fleet.clone().orphans(OrphanPolicy::Delete);
    let plan = deleting.plan().await.unwrap();
    assert_eq!(plan.delete.len(), 1);
    assert!(plan.delete[0].replaced && plan.delete[0].reason.contains("orphan"));
    assert_eq!(
        plan.create.len(),
        1,
        "the slot is made again after the delete"
    );
    let report = deleting.apply(&plan).await;
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(report.deleted.len(), 1);
    assert_eq!(report.created.len(), 1);
    assert_ne!(report.created[0].id, server.id);
    assert_eq!(cloud.all_servers().len(), 1);
    assert_eq!(fleet.nodes().await.unwrap().len(), 1);

    // Adopt: a server made by hand with the slot's labels (as a crashed run would) is
    // recorded by sweep; one in a slot the spec does not want is deleted.
    let spec2 = spec(2, 0);
    let fleet2 = fleet_of(&cloud, spec2, flaky.clone());
    let mut slot1 = ServerSpec::new("farm-web-1", "cpu-4", "fsn1", "farm", "web", 1);
    slot1.labels.insert("role".into(), "web".into());
    cloud.create(&slot1).await.unwrap();
    let stray = ServerSpec::new("farm-web-7", "cpu-4", "fsn1", "farm", "web", 7);
    cloud.create(&stray).await.unwrap();
    let sweep = fleet2.sweep().await.unwrap();
    assert_eq!(sweep.adopted.len(), 1, "{sweep:?}");
    assert_eq!(sweep.adopted[0].name, "farm-web-1");
    assert_eq!(sweep.deleted.len(), 1);
    assert_eq!(sweep.deleted[0].name, "farm-web-7");
    let nodes = fleet2.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(
        nodes
            .iter()
            .find(|n| n.server.name == "farm-web-1")
            .unwrap()
            .slot,
        Some(1)
    );
    assert!(fleet2.plan().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_429_storm_fails_slots_with_records_of_what_exists_and_resumes() {
    let cloud = cloud();
    let store = Arc::new(MemoryFleetStore::default());
    let fleet = fleet_of(&cloud, spec(4, 0), store.clone());
    let plan = fleet.plan().await.unwrap();
    cloud.set_faults(Faults::none().rate_limited(2));
    let report = fleet.apply(&plan).await;
    assert!(!report.failed.is_empty());
    for (what, e) in &report.failed {
        assert!(e.is_retryable(), "{what}: {e}");
    }
    // Everything that exists is recorded; nothing is recorded that does not exist.
    let nodes = fleet.nodes().await.unwrap();
    assert_eq!(nodes.len(), cloud.all_servers().len());
    cloud.set_faults(Faults::none());
    let report = fleet.apply(&fleet.plan().await.unwrap()).await;
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(fleet.nodes().await.unwrap().len(), 4);
    assert_eq!(cloud.all_servers().len(), 4);
}

#[tokio::test]
async fn a_server_that_never_runs_is_kept_on_record_as_not_ready() {
    let cloud = cloud();
    let store = Arc::new(MemoryFleetStore::default());
    cloud.set_faults(Faults::none().ready_after_polls(1_000));
    let fleet = fleet_of(&cloud, spec(1, 0), store).ready_timeout(Duration::from_millis(50));
    let report = fleet.apply(&fleet.plan().await.unwrap()).await;
    assert_eq!(report.created.len(), 1);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].1.kind(), ErrorKind::Unavailable);
    let nodes = fleet.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state, NodeState::NotReady);
    // Once it runs, refresh says so.
    cloud.set_faults(Faults::none().ready_after_polls(0));
    let refreshed = fleet.refresh().await.unwrap();
    assert_eq!(refreshed.ready.len(), 1);
    assert_eq!(fleet.nodes().await.unwrap()[0].state, NodeState::Ready);
}

#[tokio::test]
async fn an_unknown_image_is_refused_at_plan_time_or_avoided() {
    let only_ubuntu = Arc::new(
        InMemoryProvider::new(
            "cloud",
            vec![Offering::new(
                "",
                "cpu-4",
                "fsn1",
                4000,
                16 << 30,
                Decimal::new(5, 2),
                "EUR",
            )],
        )
        .images(["ubuntu-24.04"]),
    );
    let any_image = Arc::new(InMemoryProvider::new(
        "other",
        vec![Offering::new(
            "",
            "c4",
            "ams3",
            4000,
            16 << 30,
            Decimal::new(9, 2),
            "EUR",
        )],
    ));
    let spec = |image: &str, pin: bool| {
        let what = if pin {
            r#"offering = { provider = "cloud", instance_type = "cpu-4", region = "fsn1" }"#
        } else {
            "request = { cpu_millis = 2000 }"
        };
        FleetSpec::parse(&format!(
            "name = \"f\"\n[[pools]]\nname = \"web\"\ncount = 1\nimage = \"{image}\"\n{what}\n"
        ))
        .unwrap()
    };
    let providers = || -> Vec<Arc<dyn Provider>> { vec![only_ubuntu.clone(), any_image.clone()] };
    let store = || Arc::new(MemoryFleetStore::default());

    // Pinned to a provider without the image: an error naming pool, field and provider.
    let err = Fleet::new(spec("debian-99", true), providers(), store())
        .plan()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .contains("pools[0] (\"web\").image: cloud has no image \"debian-99\""),
        "{err}"
    );
    // A request: the cheaper provider lacks the image, so the other is chosen.
    let plan = Fleet::new(spec("debian-99", false), providers(), store())
        .plan()
        .await
        .unwrap();
    assert_eq!(plan.create[0].spec.instance_type, "c4");
    // With the image both are candidates, the cheaper first.
    let plan = Fleet::new(spec("ubuntu-24.04", false), providers(), store())
        .plan()
        .await
        .unwrap();
    assert_eq!(plan.create[0].spec.instance_type, "cpu-4");
    assert_eq!(only_ubuntu.calls().images.load(Ordering::Relaxed), 3);
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
    let providers: [&dyn Provider; 1] = [&*cloud];
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
