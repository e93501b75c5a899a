//! Staging of task inputs and outputs through ops-storage, as the facade wires it: a
//! platform with `[storage]` runs real processes on the local executor wrapped in
//! staging, with SQLite history and the storage catalog writing into the history's
//! outbox.

use std::path::Path;
use std::time::Duration;

use ops::core::{Environment, Event, Reason, TaskId, TaskStatus, Tenant, event_types};
use ops::events::sqlite::SqliteOutbox;
use ops::storage::{ObjectEntry, ObjectEventData, Scoped};
use ops::tasks::template::{Catalogue, Format, TaskTemplate};
use ops::tasks::{SubmitRequest, TaskRecord};
use ops::{Platform, PlatformConfig};
use sha2::{Digest, Sha256};

const TEMPLATES: &[&str] = &[
    // Reads its staged scene and writes two outputs; `ran` shows that it ran.
    r#"
name = "render"
command = ["/bin/sh", "-c", "touch ran && mkdir -p out && cat in/scene.txt > out/result.txt && printf 'frame one' > out/frame1.png"]
inputs = [{ from = "scenes/{{ scene }}", to = "in/scene.txt" }]
outputs = ["out/*", "in/*"]
[parameters]
required = ["scene"]
[parameters.properties.scene]
type = "string"
"#,
    r#"
name = "big"
command = ["/bin/sh", "-c", "mkdir -p out && head -c 1000 /dev/zero > out/big.bin"]
outputs = ["out/*"]
"#,
    r#"
name = "slow"
command = ["/bin/sh", "-c", "mkdir -p out && echo partial > out/partial.txt && sleep 30"]
outputs = ["out/*"]
"#,
];

fn catalogue() -> Catalogue {
    let mut c = Catalogue::new();
    for (i, text) in TEMPLATES.iter().enumerate() {
        let t = TaskTemplate::from_str(text, Format::Toml, format!("staging-{i}.toml"))
            .unwrap_or_else(|e| panic!("template {i}: {e}"));
        c.insert(t);
    }
    c
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A platform whose storage (in `dir/storage`) keeps its catalog in the history
/// database, so that storage events go into the same outbox as the task events. Tenant
/// `tiny` may store 64 bytes.
async fn start(dir: &Path) -> Platform {
    init_tracing();
    let config = PlatformConfig::parse(&format!(
        r#"
        history = "sqlite://{dir}/ops.db"
        [tasks]
        root = "{dir}/tasks"
        default_environment = "production"
        [storage]
        url = "file://{dir}/storage"
        [storage.tenants.tiny.quota]
        bytes = 64
        "#,
        dir = dir.display()
    ))
    .unwrap();
    Platform::builder()
        .config(config)
        .catalogue(catalogue())
        .start()
        .await
        .unwrap()
}

fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).unwrap()
}

fn scope(p: &Platform, name: &str) -> Scoped {
    let storage = p.storage().expect("storage is configured");
    storage.scope(&tenant(name), &Environment::parse("production").unwrap())
}

async fn run(p: &Platform, name: &str, req: SubmitRequest) -> TaskRecord {
    let tasks = p.tenant(&tenant(name));
    let id = tasks.submit(req).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), tasks.wait(id))
        .await
        .expect("task did not finish in time")
        .unwrap()
}

/// Every event of the outbox about task `id` (task events and storage events naming
/// it), in the order they were committed.
async fn outbox_events(dir: &Path, id: TaskId) -> Vec<Event> {
    let outbox = SqliteOutbox::open(dir.join("ops.db").to_str().unwrap())
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT payload FROM ops_events ORDER BY seq")
        .fetch_all(outbox.pool())
        .await
        .unwrap();
    let id = id.to_string();
    rows.into_iter()
        .map(|(json,)| serde_json::from_str::<Event>(&json).unwrap())
        .filter(|e| e.subject.as_deref() == Some(id.as_str()) || e.extension("taskid") == Some(&id))
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn inputs_are_staged_and_outputs_stored_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let acme = scope(&p, "acme");
    acme.put("scenes/shot1.txt", "a teapot, lit from the left\n".into())
        .await
        .unwrap();

    let record = run(
        &p,
        "acme",
        SubmitRequest::new("render").parameters(serde_json::json!({ "scene": "shot1.txt" })),
    )
    .await;
    assert_eq!(record.status, TaskStatus::Succeeded, "{record:?}");
    assert_eq!(
        record.spec.inputs,
        [ops::tasks::StagedInput::new(
            "scenes/shot1.txt",
            "in/scene.txt"
        )]
    );
    let id = record.id;

    // The task saw the input, and its outputs are in storage with their checksums.
    let result = std::fs::read(record.spec.task_dir.join("out/result.txt")).unwrap();
    assert_eq!(result, b"a teapot, lit from the left\n");
    let prefix = format!("tasks/{id}/");
    let stored = acme.list(Some(&prefix)).await.unwrap();
    let paths: Vec<&str> = stored.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("{prefix}out/frame1.png"),
            format!("{prefix}out/result.txt")
        ],
        "the staged input is not stored again"
    );
    assert_eq!(
        acme.get(&format!("{prefix}out/result.txt")).await.unwrap(),
        result
    );
    let entry = p
        .storage()
        .unwrap()
        .catalog()
        .get("acme", "production", &format!("{prefix}out/result.txt"))
        .await
        .unwrap()
        .expect("recorded in the catalog");
    assert_eq!(entry.size, result.len() as u64);
    assert_eq!(entry.sha256, sha256(&result));
    assert_eq!(entry.task_id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(entry.attempt, Some(1));

    // One `object.created` event per output, between `started` and `succeeded`.
    let events = outbox_events(dir.path(), id).await;
    let lifecycle: Vec<&str> = events
        .iter()
        .map(|e| e.ty.as_str())
        .filter(|t| {
            [
                event_types::TASK_STARTED,
                event_types::STORAGE_OBJECT_CREATED,
                event_types::TASK_SUCCEEDED,
            ]
            .contains(t)
        })
        .collect();
    assert_eq!(
        lifecycle,
        [
            event_types::TASK_STARTED,
            event_types::STORAGE_OBJECT_CREATED,
            event_types::STORAGE_OBJECT_CREATED,
            event_types::TASK_SUCCEEDED
        ],
        "{events:#?}"
    );
    let created: Vec<ObjectEntry> = events
        .iter()
        .filter(|e| e.ty == event_types::STORAGE_OBJECT_CREATED)
        .map(|e| e.data_as::<ObjectEventData>().unwrap().object)
        .collect();
    let frame = std::fs::read(record.spec.task_dir.join("out/frame1.png")).unwrap();
    for (data, (path, bytes)) in created.iter().zip([
        ("out/frame1.png", &frame[..]),
        ("out/result.txt", &result[..]),
    ]) {
        assert_eq!(data.path, format!("{prefix}{path}"));
        assert_eq!(data.size, bytes.len() as u64);
        assert_eq!(data.sha256, sha256(bytes));
        assert_eq!(data.tenant, "acme");
        assert_eq!(data.environment, "production");
        assert_eq!(data.task_id.as_deref(), Some(id.to_string().as_str()));
        assert_eq!(data.attempt, Some(1));
    }
    let usage = p.storage().unwrap().usage(&tenant("acme")).await.unwrap();
    assert_eq!(usage.objects, 3, "the scene and two outputs");
    p.shutdown().await;
}

#[tokio::test]
async fn a_missing_input_fails_the_task_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let record = run(
        &p,
        "acme",
        SubmitRequest::new("render").parameters(serde_json::json!({ "scene": "nope.txt" })),
    )
    .await;
    assert_eq!(record.status, TaskStatus::Failed, "{record:?}");
    assert_eq!(record.reason, Some(Reason::StagingFailed));
    let message = record.message.clone().unwrap_or_default();
    assert!(
        message.contains("\"scenes/nope.txt\"") && message.contains("not found"),
        "{message}"
    );
    assert!(
        !record.spec.task_dir.join("ran").exists(),
        "the command must not run"
    );
    let events = outbox_events(dir.path(), record.id).await;
    let failed = events
        .iter()
        .find(|e| e.ty == event_types::TASK_FAILED)
        .expect("a task.failed event");
    let data: ops::core::TaskEventData = failed.data_as().unwrap();
    assert_eq!(data.reason, Some(Reason::StagingFailed));
    // The tenant's other tasks are not affected.
    let acme = scope(&p, "acme");
    acme.put("scenes/ok.txt", "ok".into()).await.unwrap();
    let ok = run(
        &p,
        "acme",
        SubmitRequest::new("render").parameters(serde_json::json!({ "scene": "ok.txt" })),
    )
    .await;
    assert_eq!(ok.status, TaskStatus::Succeeded, "{ok:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn an_output_over_the_quota_fails_the_task_and_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let record = run(&p, "tiny", SubmitRequest::new("big")).await;
    assert_eq!(record.status, TaskStatus::Failed, "{record:?}");
    assert_eq!(record.reason, Some(Reason::StagingFailed));
    assert_eq!(record.exit_code, Some(0), "the program itself succeeded");
    let message = record.message.clone().unwrap_or_default();
    assert!(
        message.contains("out/big.bin") && message.contains("quota"),
        "{message}"
    );
    let tiny = scope(&p, "tiny");
    assert!(tiny.list(None).await.unwrap().is_empty());
    let path = format!("tasks/{}/out/big.bin", record.id);
    assert!(tiny.head(&path).await.is_err());
    assert!(
        p.storage()
            .unwrap()
            .catalog()
            .get("tiny", "production", &path)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        p.storage()
            .unwrap()
            .usage(&tenant("tiny"))
            .await
            .unwrap()
            .objects,
        0
    );
    let events = outbox_events(dir.path(), record.id).await;
    assert!(
        !events
            .iter()
            .any(|e| e.ty == event_types::STORAGE_OBJECT_CREATED),
        "{events:#?}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_attempt_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path()).await;
    let acme = p.tenant(&tenant("acme"));
    let id = acme.submit(SubmitRequest::new("slow")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let record = acme.get(id).await.unwrap();
        if record.spec.task_dir.join("out/partial.txt").exists() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acme.cancel(id).await.unwrap();
    let record = tokio::time::timeout(Duration::from_secs(20), acme.wait(id))
        .await
        .expect("cancelled in time")
        .unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled, "{record:?}");
    assert!(
        scope(&p, "acme")
            .list(Some(&format!("tasks/{id}/")))
            .await
            .unwrap()
            .is_empty()
    );
    let events = outbox_events(dir.path(), id).await;
    assert!(
        !events
            .iter()
            .any(|e| e.ty == event_types::STORAGE_OBJECT_CREATED),
        "{events:#?}"
    );
    p.shutdown().await;
}
