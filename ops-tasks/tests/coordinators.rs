//! Several coordinators (and submit-only front ends) sharing one history store, in one
//! process on SQLite: claiming, hand-over, cancellation through the store, and the
//! guards against two live coordinators with one identity. The multi-process fault
//! tests on Postgres are in `examples/tests/coordinators.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_core::{TaskStatus, Tenant, event_types};
use ops_tasks::local::{LocalExecutor, LocalExecutorConfig};
use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{Error, HistoryReader, Leases, SqliteHistory, SubmitRequest, Tasks, TasksConfig};

fn catalogue() -> Catalogue {
    let mut c = Catalogue::new();
    c.insert(
        TaskTemplate::from_str(
            r#"
name = "nap"
command = ["sleep", "{{ secs }}"]
[parameters.properties.secs]
type = "number"
default = 0.1
[resources]
cpu = "100m"
memory = "16Mi"
"#,
            Format::Toml,
            "nap.toml",
        )
        .unwrap(),
    );
    c
}

fn config(root: &Path, id: Option<&str>) -> TasksConfig {
    let mut config = TasksConfig::default();
    config.root = root.to_path_buf();
    config.max_running = 2;
    config.coordinator.id = id.map(str::to_owned);
    config.coordinator.lease_ttl = Duration::from_millis(1000);
    config.coordinator.heartbeat = Duration::from_millis(100);
    config.coordinator.poll = Duration::from_millis(50);
    config
}

async fn coordinator(history: &SqliteHistory, root: &Path, id: Option<&str>) -> Tasks {
    let mut executor = LocalExecutorConfig::default();
    executor.poll_interval = Duration::from_millis(20);
    Tasks::builder()
        .catalogue(catalogue())
        .history(history.clone())
        .executor(LocalExecutor::new(executor).unwrap())
        .config(config(root, id))
        .start()
        .await
        .unwrap()
}

async fn client(history: &SqliteHistory, root: &Path) -> Tasks {
    Tasks::builder()
        .catalogue(catalogue())
        .history(history.clone())
        .config(config(root, None))
        .submit_only()
        .start()
        .await
        .unwrap()
}

async fn open(dir: &Path) -> SqliteHistory {
    SqliteHistory::open(&dir.join("ops.db").to_string_lossy())
        .await
        .unwrap()
}

fn nap(secs: f64) -> SubmitRequest {
    SubmitRequest::new("nap").parameters(serde_json::json!({ "secs": secs }))
}

#[tokio::test]
async fn submit_only_front_ends_feed_every_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let history = open(dir.path()).await;
    let a = coordinator(&history, &dir.path().join("a"), Some("a")).await;
    let b = coordinator(&history, &dir.path().join("b"), Some("b")).await;
    let front = client(&history, &dir.path().join("front")).await;
    assert_eq!(front.admin().coordinator_id(), None);
    assert!(
        front.admin().pause().is_err(),
        "a front end has no coordinator to pause"
    );

    let acme = Tenant::parse("acme").unwrap();
    let ids = front
        .tenant(&acme)
        .submit_many((0..16).map(|_| nap(0.1)).collect())
        .await
        .unwrap();
    let (mut on_a, mut on_b) = (0, 0);
    for id in &ids {
        let done = front.tenant(&acme).wait(*id).await.unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
        assert_eq!(done.owner, None, "a final task is not leased");
        // Each ran under the root of the coordinator that claimed it.
        if done.spec.task_dir.starts_with(dir.path().join("a")) {
            on_a += 1;
        } else if done.spec.task_dir.starts_with(dir.path().join("b")) {
            on_b += 1;
        } else {
            panic!("task ran outside both roots: {:?}", done.spec.task_dir);
        }
        let events = front.tenant(&acme).events(*id).await.unwrap();
        let started = events
            .iter()
            .filter(|e| e.ty == event_types::TASK_STARTED)
            .count();
        assert_eq!(started, 1, "task {id} started {started} times");
    }
    assert!(
        on_a > 0 && on_b > 0,
        "work was not shared: a {on_a}, b {on_b}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_stopped_coordinators_work_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let history = open(dir.path()).await;
    let a = coordinator(&history, &dir.path().join("a"), Some("a")).await;
    // One long task running on `a`, more queued behind it (max_running = 2).
    let acme = Tenant::parse("acme").unwrap();
    let long = a.tenant(&acme).submit(nap(1.5)).await.unwrap();
    let queued = a
        .tenant(&acme)
        .submit_many((0..4).map(|_| nap(0.1)).collect())
        .await
        .unwrap();
    let acme = Tenant::parse("acme").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.tenant(&acme).get(long).await.unwrap().status != TaskStatus::Running {
        assert!(Instant::now() < deadline, "long task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await;

    // `b` takes over: re-attaches to the running task (same machine) and runs the rest.
    let b = coordinator(&history, &dir.path().join("b"), Some("b")).await;
    for id in std::iter::once(&long).chain(&queued) {
        let done = tokio::time::timeout(Duration::from_secs(20), b.tenant(&acme).wait(*id))
            .await
            .expect("task did not finish after the hand-over")
            .unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
        let started = b
            .tenant(&acme)
            .events(*id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.ty == event_types::TASK_STARTED)
            .count();
        assert_eq!(
            started, 1,
            "task {id} was started again instead of re-attached"
        );
    }
    assert!(history.owned("a").await.unwrap().is_empty());
    b.shutdown().await;
}

#[tokio::test]
async fn cancellation_reaches_the_owner_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let history = open(dir.path()).await;
    let a = coordinator(&history, &dir.path().join("a"), Some("a")).await;
    let front = client(&history, &dir.path().join("front")).await;
    let acme = Tenant::parse("acme").unwrap();

    let id = a.tenant(&acme).submit(nap(30.0)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while front.tenant(&acme).get(id).await.unwrap().status != TaskStatus::Running {
        assert!(Instant::now() < deadline, "task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    front.tenant(&acme).cancel(id).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), front.tenant(&acme).wait(id))
        .await
        .expect("cancel requested through the store was not carried out")
        .unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(10));

    // An unowned queued task (no coordinator has claimed it) is cancelled at once.
    a.admin().pause().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = front.tenant(&acme).submit(nap(0.1)).await.unwrap();
    let record = front.tenant(&acme).cancel(waiting).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled);
    a.shutdown().await;
}

#[tokio::test]
async fn one_identity_one_live_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let history = open(dir.path()).await;
    let root = dir.path().join("a");
    let a = coordinator(&history, &root, None).await;

    // The same root in a second live service is refused, naming the lock.
    let mut executor = LocalExecutorConfig::default();
    executor.poll_interval = Duration::from_millis(20);
    let err = Tasks::builder()
        .catalogue(catalogue())
        .history(history.clone())
        .executor(LocalExecutor::new(executor.clone()).unwrap())
        .config(config(&root, None))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RootInUse { lock, .. } if lock.ends_with(".coordinator.lock"))
            && err.kind() == ops_core::ErrorKind::Conflict,
        "{err}"
    );

    // The same explicit id on another root, while the first renews its lease: refused.
    let x = coordinator(&history, &dir.path().join("x1"), Some("x")).await;
    let err = Tasks::builder()
        .catalogue(catalogue())
        .history(Arc::new(history.clone()))
        .executor(LocalExecutor::new(executor).unwrap())
        .config(config(&dir.path().join("x2"), Some("x")))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::LeaseHeld { owner, .. } if owner == "x"),
        "{err}"
    );
    assert!(
        err.to_string().contains("in use by a live coordinator"),
        "{err}"
    );

    // After a graceful stop the root (and its default id) are free again at once.
    a.shutdown().await;
    let again = coordinator(&history, &root, None).await;
    assert_eq!(again.admin().coordinator_id(), a.admin().coordinator_id());
    again.shutdown().await;
    x.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_that_lost_its_lease_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let history = open(dir.path()).await;
    let a = coordinator(&history, &dir.path().join("a"), Some("a")).await;
    let acme = Tenant::parse("acme").unwrap();
    let id = a.tenant(&acme).submit(nap(30.0)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.tenant(&acme).get(id).await.unwrap().status != TaskStatus::Running {
        assert!(Instant::now() < deadline, "task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `a` stalls, as far as the store can tell: another incarnation of "a" takes its
    // lease with a short life and lets it expire, so `b` takes the task over while
    // `a` is still alive.
    let mut fast = config(&dir.path().join("b"), Some("b"));
    fast.coordinator.heartbeat = Duration::from_millis(50);
    let b = Tasks::builder()
        .catalogue(catalogue())
        .history(history.clone())
        .executor(LocalExecutor::new(LocalExecutorConfig::default()).unwrap())
        .config(fast)
        .start()
        .await
        .unwrap();
    let impostor = ops_tasks::Lease::new("a", Duration::from_millis(150));
    history.acquire_lease(&impostor, true).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while history.get(id).await.unwrap().unwrap().owner.as_deref() != Some("b") {
        assert!(Instant::now() < deadline, "b did not take the task over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `a` learns it lost the lease, re-acquires it, and stops the process it no
    // longer owns; `b` (which re-attached to it) records how the attempt ended.
    let done = tokio::time::timeout(Duration::from_secs(15), b.tenant(&acme).wait(id))
        .await
        .expect("the taken-over task never ended")
        .unwrap();
    assert!(done.status.is_final(), "{done:?}");
    let events = b.tenant(&acme).events(id).await.unwrap();
    let started = events
        .iter()
        .filter(|e| e.ty == event_types::TASK_STARTED)
        .count();
    assert_eq!(
        started, 1,
        "no coordinator started the task again: {events:?}"
    );

    // `a` carries on with new work under its renewed lease.
    let next = a.tenant(&acme).submit(nap(0.05)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), a.tenant(&acme).wait(next))
        .await
        .expect("a did not recover")
        .unwrap();
    assert_eq!(next.status, TaskStatus::Succeeded);
    a.shutdown().await;
    b.shutdown().await;
}
