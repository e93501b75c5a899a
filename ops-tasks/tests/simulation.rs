//! The task core at scale on simulated nodes: `Tasks` with SQLite history over a
//! `SimExecutor` of 1,000 nodes, thousands of tasks, and every task's events checked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ops_core::{Event, Reason, Resources, TaskEventData, TaskStatus, Tenant, event_types};
use ops_tasks::sim::{SimExecutor, SimExecutorConfig};
use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{Executor, NodeGroup, SqliteHistory, SubmitRequest, Tasks, TasksConfig};
use serde_json::json;

const TEMPLATES: &[&str] = &[
    r#"
name = "sim"
command = ["simulate"]
env = { OPS_SIM_DURATION = "{{ d }}", OPS_SIM_EXIT_CODE = "{{ code }}" }
timeout = "1h"
[resources]
cpu = 2
memory = "4Gi"
[parameters.properties.d]
type = "string"
default = "60s"
[parameters.properties.code]
type = "integer"
default = 0
"#,
    r#"
name = "scav"
command = ["backfill"]
env = { OPS_SIM_DURATION = "{{ d }}" }
scavenger = true
[resources]
cpu = 2
memory = "4Gi"
[parameters.properties.d]
type = "string"
default = "24h"
"#,
    r#"
name = "gpu"
command = ["train"]
env = { OPS_SIM_DURATION = "{{ d }}" }
[resources]
cpu = 4
memory = "16Gi"
gpus = 1
[parameters.properties.d]
type = "string"
default = "10m"
"#,
];

fn catalogue() -> Catalogue {
    let mut c = Catalogue::new();
    for (i, text) in TEMPLATES.iter().enumerate() {
        c.insert(
            TaskTemplate::from_str(text, Format::Toml, format!("sim-{i}.toml"))
                .unwrap_or_else(|e| panic!("template {i}: {e}")),
        );
    }
    c
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// 1,000 simulated nodes: 900 CPU nodes and 100 with 4 GPUs.
fn nodes() -> Vec<NodeGroup> {
    vec![
        NodeGroup::new(900, Resources::new(8_000, 32 << 30)),
        NodeGroup::new(
            100,
            Resources::new(32_000, 256 << 30).with_gpus(4, Some("NVIDIA H100".into())),
        ),
    ]
}

async fn start(dir: &std::path::Path, executor: Arc<SimExecutor>) -> Tasks {
    start_with(dir, executor, TasksConfig::default()).await
}

async fn start_with(
    dir: &std::path::Path,
    executor: Arc<SimExecutor>,
    mut config: TasksConfig,
) -> Tasks {
    init_tracing();
    let history = SqliteHistory::open(dir.join("ops.db").to_str().unwrap())
        .await
        .unwrap();
    config.root = dir.join("tasks");
    Tasks::builder()
        .catalogue(catalogue())
        .history(history)
        .executor(executor)
        .config(config)
        .start()
        .await
        .unwrap()
}

/// What each task should end as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Succeeded,
    Failed,
    TimedOut,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tasks_on_a_thousand_simulated_nodes() {
    let dir = tempfile::tempdir().unwrap();
    // An hour of virtual time per real second.
    let executor =
        Arc::new(SimExecutor::new(SimExecutorConfig::new(nodes()).speedup(3600.0)).unwrap());
    assert_eq!(executor.nodes(), nodes());
    assert_eq!(executor.capacity().gpus.count, 400);
    let tasks = start(dir.path(), executor.clone()).await;

    // 3,000 tasks of 10 tenants: 5,400 CPU slots of 2 cores and 400 GPUs, so the GPU
    // tasks queue; some fail, some run past their timeout.
    let n = 3_000usize;
    let mut expected = Vec::with_capacity(n);
    let mut ids = vec![None; n];
    let mut batch: Vec<(usize, SubmitRequest)> = Vec::new();
    for i in 0..n {
        let (request, expect) = match i % 10 {
            0..=5 => (
                SubmitRequest::new("sim")
                    .parameters(json!({ "d": format!("{}s", 30 + (i * 37) % 900) })),
                Expect::Succeeded,
            ),
            6 => (
                SubmitRequest::new("sim").parameters(json!({ "d": "2m", "code": 3 })),
                Expect::Failed,
            ),
            7 => (
                SubmitRequest::new("sim").parameters(json!({ "d": "3h" })),
                Expect::TimedOut,
            ),
            _ => (
                SubmitRequest::new("gpu").parameters(json!({ "d": format!("{}m", 5 + i % 20) })),
                Expect::Succeeded,
            ),
        };
        batch.push((i, request));
        expected.push(expect);
        if batch.len() == 500 {
            // One transaction per tenant of the batch.
            for t in 0..10 {
                let (index, requests): (Vec<usize>, Vec<SubmitRequest>) =
                    batch.iter().filter(|(i, _)| i % 10 == t).cloned().unzip();
                let tenant = Tenant::parse(format!("tenant-{t}")).unwrap();
                let got = tasks.tenant(&tenant).submit_many(requests).await.unwrap();
                for (i, id) in index.into_iter().zip(got) {
                    ids[i] = Some(id);
                }
            }
            batch.clear();
        }
    }
    let ids: Vec<ops_core::TaskId> = ids.into_iter().map(|id| id.expect("submitted")).collect();
    assert_eq!(ids.len(), n);

    let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let tenant = Tenant::parse(format!("tenant-{}", i % 10)).unwrap();
        let record =
            tokio::time::timeout(Duration::from_secs(120), tasks.tenant(&tenant).wait(*id))
                .await
                .unwrap_or_else(|_| panic!("task {i} did not end in time"))
                .unwrap();
        let events = tasks.tenant(&tenant).events(*id).await.unwrap();
        let types: Vec<&str> = events.iter().map(|e| e.ty.as_str()).collect();
        let count = |ty: &str| types.iter().filter(|t| **t == ty).count();
        let (status, final_type) = match expected[i] {
            Expect::Succeeded => (TaskStatus::Succeeded, event_types::TASK_SUCCEEDED),
            Expect::Failed => (TaskStatus::Failed, event_types::TASK_FAILED),
            Expect::TimedOut => (TaskStatus::TimedOut, event_types::TASK_TIMED_OUT),
        };
        assert_eq!(record.status, status, "task {i}: {record:?}");
        assert_eq!(
            types.first(),
            Some(&event_types::TASK_SUBMITTED),
            "task {i}: {types:?}"
        );
        assert_eq!(count(event_types::TASK_SUBMITTED), 1, "task {i}: {types:?}");
        assert_eq!(count(event_types::TASK_STARTED), 1, "task {i}: {types:?}");
        assert_eq!(types.last(), Some(&final_type), "task {i}: {types:?}");
        let finals = [
            event_types::TASK_SUCCEEDED,
            event_types::TASK_FAILED,
            event_types::TASK_CANCELLED,
            event_types::TASK_TIMED_OUT,
        ];
        assert_eq!(
            types.iter().filter(|t| finals.contains(t)).count(),
            1,
            "task {i} ended more than once: {types:?}"
        );
        let started = types.iter().position(|t| *t == event_types::TASK_STARTED);
        let queued = types.iter().position(|t| *t == event_types::TASK_QUEUED);
        assert!(queued < started, "task {i}: {types:?}");
        match expected[i] {
            Expect::Succeeded => assert_eq!(record.reason, Some(Reason::Completed)),
            Expect::Failed => {
                assert_eq!(record.reason, Some(Reason::NonZeroExit));
                assert_eq!(record.exit_code, Some(3));
            }
            Expect::TimedOut => {
                assert_eq!(record.reason, Some(Reason::TimedOut));
                // Usage is virtual time: the timeout, not the real milliseconds.
                assert_eq!(record.usage.wall_time, Duration::from_secs(3600));
            }
        }
        *ends.entry(final_type).or_default() += 1;
    }
    assert_eq!(ends[event_types::TASK_SUCCEEDED], n * 8 / 10);
    assert_eq!(ends[event_types::TASK_FAILED], n / 10);
    assert_eq!(ends[event_types::TASK_TIMED_OUT], n / 10);
    assert_eq!(executor.attempts(), (0, 0));
    tasks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_simulated_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(
        SimExecutor::new(
            SimExecutorConfig::new(vec![NodeGroup::new(1, Resources::new(2_000, 8 << 30))])
                .speedup(60.0),
        )
        .unwrap(),
    );
    let tasks = start(dir.path(), executor.clone()).await;
    let acme = Tenant::parse("acme").unwrap();
    // One node of 2 cores: the first runs for a (virtual) day, the second waits.
    let long = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("sim").parameters(json!({ "d": "24h" })))
        .await
        .unwrap();
    let waiting = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("sim").parameters(json!({ "d": "1m" })))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tasks.tenant(&acme).get(long).await.unwrap().status != TaskStatus::Running {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tasks.tenant(&acme).get(waiting).await.unwrap().status,
        TaskStatus::Queued
    );
    tasks.tenant(&acme).cancel(long).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&acme).wait(long))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled);
    // The freed node runs the second (a virtual minute is a real second).
    let second = tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&acme).wait(waiting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.status, TaskStatus::Succeeded);
    assert_eq!(second.usage.wall_time, Duration::from_secs(60));
    tasks.shutdown().await;
}

async fn wait_status(tasks: &Tasks, tenant: &Tenant, id: ops_core::TaskId, status: TaskStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = tasks.tenant(tenant).get(id).await.unwrap().status;
        if now == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never became {status:?} (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scavengers_make_room_and_are_requeued() {
    let dir = tempfile::tempdir().unwrap();
    // Two nodes of 2 cores, a virtual minute per real second, 30 s of grace.
    let executor = Arc::new(
        SimExecutor::new(
            SimExecutorConfig::new(vec![NodeGroup::new(2, Resources::new(2_000, 8 << 30))])
                .speedup(60.0),
        )
        .unwrap(),
    );
    let mut config = TasksConfig::default();
    config.admission.scavenger.grace = Duration::from_secs(30);
    let tasks = start_with(dir.path(), executor.clone(), config).await;
    let batch = Tenant::parse("batch").unwrap();
    let acme = Tenant::parse("acme").unwrap();
    let mut scavs = Vec::new();
    for _ in 0..2 {
        scavs.push(
            tasks
                .tenant(&ops_core::Tenant::parse("batch").unwrap())
                .submit(SubmitRequest::new("scav"))
                .await
                .unwrap(),
        );
    }
    for id in &scavs {
        wait_status(&tasks, &batch, *id, TaskStatus::Running).await;
    }
    let real = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("sim").parameters(json!({ "d": "1m" })))
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&acme).wait(real))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    // Exactly one scavenger made room; it went back to the queue and runs again.
    let mut preempted = Vec::new();
    for id in &scavs {
        let events = tasks.tenant(&batch).events(*id).await.unwrap();
        let n = events
            .iter()
            .filter(|e| e.ty == event_types::TASK_PREEMPTED)
            .count();
        if n > 0 {
            preempted.push(*id);
        }
    }
    assert_eq!(preempted.len(), 1, "one scavenger preempted");
    wait_status(&tasks, &batch, preempted[0], TaskStatus::Running).await;
    for id in &scavs {
        tasks.tenant(&batch).cancel(*id).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&batch).wait(*id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end.status, TaskStatus::Cancelled);
        let events = tasks.tenant(&batch).events(*id).await.unwrap();
        let types: Vec<&str> = events.iter().map(|e| e.ty.as_str()).collect();
        let starts = types
            .iter()
            .filter(|t| **t == event_types::TASK_STARTED)
            .count();
        assert_eq!(starts, if *id == preempted[0] { 2 } else { 1 }, "{types:?}");
        assert_eq!(
            types.last(),
            Some(&event_types::TASK_CANCELLED),
            "{types:?}"
        );
    }
    tasks.shutdown().await;
}

fn data(e: &Event) -> TaskEventData {
    e.data_as().unwrap_or_else(|err| panic!("{}: {err}", e.ty))
}

/// Seconds of a duration, to compare sums of durations that went through JSON.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_attempt_reports_its_usage_apart() {
    let dir = tempfile::tempdir().unwrap();
    // One node of 2 cores, ten virtual minutes per real second, 30 s of grace.
    let executor = Arc::new(
        SimExecutor::new(
            SimExecutorConfig::new(vec![NodeGroup::new(1, Resources::new(2_000, 8 << 30))])
                .speedup(600.0),
        )
        .unwrap(),
    );
    let mut config = TasksConfig::default();
    config.admission.scavenger.grace = Duration::from_secs(30);
    let tasks = start_with(dir.path(), executor, config).await;
    let batch = Tenant::parse("batch").unwrap();
    let acme = Tenant::parse("acme").unwrap();
    let scav = tasks
        .tenant(&batch)
        .submit(SubmitRequest::new("scav").parameters(json!({ "d": "10m" })))
        .await
        .unwrap();
    wait_status(&tasks, &batch, scav, TaskStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let real = tasks
        .tenant(&acme)
        .submit(SubmitRequest::new("sim").parameters(json!({ "d": "1m" })))
        .await
        .unwrap();
    let wait = |tenant: Tenant, id| {
        let tasks = tasks.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&tenant).wait(id))
                .await
                .expect("task did not finish in time")
                .unwrap()
        }
    };
    assert_eq!(wait(acme, real).await.status, TaskStatus::Succeeded);
    let record = wait(batch.clone(), scav).await;
    assert_eq!(record.status, TaskStatus::Succeeded, "{record:?}");
    assert_eq!(record.attempt, 2, "{record:?}");

    let events = tasks.tenant(&batch).events(scav).await.unwrap();
    let one = |ty: &str| {
        let mut of_type = events.iter().filter(|e| e.ty == ty);
        let first = of_type.next().unwrap_or_else(|| panic!("no {ty}"));
        assert!(of_type.next().is_none(), "one {ty}");
        data(first)
    };
    let preempted = one(event_types::TASK_PREEMPTED);
    assert_eq!(preempted.attempt, 1, "{preempted:?}");
    assert_eq!(preempted.usage, None, "not final: {preempted:?}");
    assert_eq!(
        preempted.resources.as_ref().map(|r| r.cpu_millis),
        Some(2000),
        "billing prices the attempt by what it held: {preempted:?}"
    );
    let first = preempted
        .attempt_usage
        .expect("the preempted attempt's usage");
    assert!(first.wall_time >= Duration::from_secs(30), "{first:?}");
    assert!(first.wall_time < Duration::from_secs(600), "{first:?}");

    let done = one(event_types::TASK_SUCCEEDED);
    assert_eq!(done.attempt, 2, "{done:?}");
    let second = done.attempt_usage.expect("the last attempt's usage");
    assert_eq!(second.wall_time, Duration::from_secs(600));
    assert_eq!(done.preempted_usage, Some(first), "{done:?}");
    let total = done.usage.expect("the total");
    assert!(
        (secs(total.wall_time) - secs(first.wall_time) - 600.0).abs() < 1e-6,
        "total {total:?} = preempted {first:?} + last {second:?}"
    );

    // History keeps the preempted part apart, as the final event says.
    assert_eq!(record.preempted_usage, first);
    assert_eq!(record.usage, total);
    tasks.shutdown().await;
}
