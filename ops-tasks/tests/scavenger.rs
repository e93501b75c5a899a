//! The scavenger tier end to end with the local executor: a long scavenger task is
//! preempted by a production task (SIGTERM, a checkpoint, exit), requeued, and later
//! completes from its checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ops_core::{Event, Reason, Resources, TaskEventData, TaskId, TaskStatus, Tenant, event_types};
use ops_tasks::local::{LocalExecutor, LocalExecutorConfig};
use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{SqliteHistory, SubmitRequest, Tasks, TasksConfig};

/// Time the scavenger gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// 30 steps of 0.1 s (about 3 s of work), resumed from `checkpoint` when there is one;
/// on SIGTERM the progress is saved and the task exits as a signalled process would.
const SCAVENGER: &str = r#"
name = "backfill"
scavenger = true
command = ["/bin/sh", "-c", """
done=0
if [ -f checkpoint ]; then done=$(cat checkpoint); echo "$done" > resumed; fi
trap 'echo "$done" > checkpoint; exit 143' TERM
while [ "$done" -lt 30 ]; do
  sleep 0.1
  done=$((done + 1))
  echo "$done" > progress
done
"""]
[resources]
cpu = 1
"#;

const PRODUCTION: &str = r#"
name = "render"
command = ["sleep", "1"]
[resources]
cpu = 1
"#;

fn catalogue() -> Catalogue {
    let mut c = Catalogue::new();
    for (i, text) in [SCAVENGER, PRODUCTION].into_iter().enumerate() {
        let t = TaskTemplate::from_str(text, Format::Toml, format!("test-{i}.toml"))
            .unwrap_or_else(|e| panic!("template {i}: {e}"));
        c.insert(t);
    }
    c
}

async fn start(dir: &Path) -> Tasks {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let history = SqliteHistory::open(dir.join("ops.db").to_str().unwrap())
        .await
        .unwrap();
    // Room for one 1-CPU task at a time.
    let mut exec_config = LocalExecutorConfig::default();
    exec_config.capacity = Some(Resources::new(1000, 8 << 30));
    exec_config.kill_grace = Duration::from_secs(1);
    let executor = Arc::new(LocalExecutor::new(exec_config).unwrap());
    let mut config = TasksConfig::default();
    config.root = dir.join("tasks");
    config.admission.scavenger.grace = GRACE;
    Tasks::builder()
        .catalogue(catalogue())
        .history(history)
        .executor(executor)
        .config(config)
        .start()
        .await
        .unwrap()
}

fn acme() -> Tenant {
    Tenant::parse("acme").unwrap()
}

fn data(e: &Event) -> TaskEventData {
    e.data_as().unwrap_or_else(|err| panic!("{}: {err}", e.ty))
}

/// The events of a task once one of type `ty` is among them (at most 20 s).
async fn events_once(tasks: &Tasks, id: TaskId, ty: &str) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = tasks.tenant(&acme()).events(id).await.unwrap();
        if events.iter().any(|e| e.ty == ty) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {ty} for task {id}: {:?}",
            types(&events)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the file holds a number of at least `min` (at most 20 s).
async fn progress_at_least(path: &Path, min: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if n.is_some_and(|n| n >= min) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} stayed at {n:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The task once it is final (at most 30 s).
async fn finished(tasks: &Tasks, id: TaskId) -> ops_tasks::TaskRecord {
    tokio::time::timeout(Duration::from_secs(30), tasks.tenant(&acme()).wait(id))
        .await
        .expect("task did not finish in time")
        .unwrap()
}

fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.ty.as_str()).collect()
}

/// The time of the first event of type `ty`.
fn time_of(events: &[Event], ty: &str) -> DateTime<Utc> {
    events
        .iter()
        .find(|e| e.ty == ty)
        .unwrap_or_else(|| panic!("no {ty} in {:?}", types(events)))
        .time
}

/// Whether `wanted` appears in `events`, in order (other events may come between).
fn in_order(events: &[Event], wanted: &[&str]) -> bool {
    let mut rest = events.iter();
    wanted.iter().all(|w| rest.any(|e| e.ty == *w))
}

fn read_number(path: PathBuf) -> u32 {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

#[tokio::test]
async fn scavenger_is_preempted_requeued_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = start(dir.path()).await;

    let scavenger = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("backfill"))
        .await
        .unwrap();
    events_once(&tasks, scavenger, event_types::TASK_STARTED).await;
    let task_dir = tasks
        .tenant(&acme())
        .get(scavenger)
        .await
        .unwrap()
        .spec
        .task_dir;
    // Some work done, so the checkpoint has something in it.
    progress_at_least(&task_dir.join("progress"), 3).await;

    let production = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("render"))
        .await
        .unwrap();
    let prod_record = finished(&tasks, production).await;
    let scav_record = finished(&tasks, scavenger).await;
    assert_eq!(prod_record.status, TaskStatus::Succeeded, "{prod_record:?}");
    assert_eq!(scav_record.status, TaskStatus::Succeeded, "{scav_record:?}");
    assert_eq!(scav_record.attempt, 2, "{scav_record:?}");

    // The scavenger: started, preempted, started again, succeeded.
    let scav_events = tasks.tenant(&acme()).events(scavenger).await.unwrap();
    let wanted = [
        event_types::TASK_SUBMITTED,
        event_types::TASK_QUEUED,
        event_types::TASK_STARTED,
        event_types::TASK_PREEMPTED,
        event_types::TASK_STARTED,
        event_types::TASK_SUCCEEDED,
    ];
    assert!(
        in_order(&scav_events, &wanted),
        "scavenger events {:?}, wanted {wanted:?} in order",
        types(&scav_events)
    );
    let started: Vec<u32> = scav_events
        .iter()
        .filter(|e| e.ty == event_types::TASK_STARTED)
        .map(|e| data(e).attempt)
        .collect();
    assert_eq!(started, [1, 2], "attempts started");
    assert!(
        !scav_events.iter().any(|e| e.ty == event_types::TASK_FAILED
            || e.ty == event_types::TASK_CANCELLED
            || e.ty == event_types::TASK_RETRYING),
        "preemption is neither a failure nor a retry: {:?}",
        types(&scav_events)
    );
    let preempted = scav_events
        .iter()
        .find(|e| e.ty == event_types::TASK_PREEMPTED)
        .unwrap();
    let preempted_data = data(preempted);
    assert_eq!(
        preempted_data.reason,
        Some(Reason::Preempted),
        "{preempted_data:?}"
    );
    assert_eq!(preempted_data.attempt, 1, "{preempted_data:?}");

    // The production task took the room the scavenger gave up, within the grace.
    let prod_events = tasks.tenant(&acme()).events(production).await.unwrap();
    let prod_submitted = time_of(&prod_events, event_types::TASK_SUBMITTED);
    let prod_started = time_of(&prod_events, event_types::TASK_STARTED);
    assert!(
        prod_started >= preempted.time,
        "production started at {prod_started} before the scavenger was preempted at {}",
        preempted.time
    );
    let waited = (prod_started - prod_submitted).to_std().unwrap_or_default();
    assert!(
        waited <= GRACE + Duration::from_secs(2),
        "production waited {waited:?} (grace {GRACE:?})"
    );
    // The scavenger only came back once the production task was done with the CPU.
    let second_start = scav_events
        .iter()
        .filter(|e| e.ty == event_types::TASK_STARTED)
        .nth(1)
        .unwrap()
        .time;
    let prod_ended = time_of(&prod_events, event_types::TASK_SUCCEEDED);
    assert!(
        second_start >= prod_ended,
        "scavenger restarted at {second_start}, production ended at {prod_ended}"
    );

    // Attempt 2 resumed from attempt 1's checkpoint and finished the work.
    let saved = read_number(task_dir.join("checkpoint"));
    assert!(saved >= 3, "checkpoint {saved}");
    assert_eq!(read_number(task_dir.join("resumed")), saved);
    assert_eq!(read_number(task_dir.join("progress")), 30);

    tasks.shutdown().await;
}
