//! The `Tasks` facade end to end: real processes through the local executor, SQLite
//! history and outbox, and the event dispatcher.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ops_core::{Reason, Resources, TaskStatus, Tenant, event_types};
use ops_events::{Dispatcher, Trigger, function_fn};
use ops_tasks::local::{LocalExecutor, LocalExecutorConfig};
use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{
    Error, HistoryReader, LogStream, SqliteHistory, SubmitRequest, TaskQuery, Tasks, TasksConfig,
};

const TEMPLATES: &[&str] = &[
    r#"
name = "echo"
command = ["/bin/echo", "{{ text }}"]
[parameters]
required = ["text"]
[parameters.properties.text]
type = "string"
"#,
    r#"
name = "frames"
command = ["/bin/sh", "-c", "mkdir -p frames && for i in $(seq 1 \"$1\"); do echo $i > frames/f$i.png; done", "frames", "{{ n }}"]
outputs = ["frames/*.png"]
[parameters.properties.n]
type = "integer"
minimum = 1
maximum = 50
default = 3
"#,
    r#"
name = "flaky"
command = ["/bin/sh", "-c", "echo attempt >&2; exit 3"]
[retries]
max_attempts = 2
backoff = "100ms"
"#,
    r#"
name = "sleepy"
command = ["sleep", "{{ secs }}"]
timeout = "{{ timeout }}"
[parameters.properties.secs]
type = "number"
default = 30
"#,
    r#"
name = "missing"
command = ["ops-no-such-program-4711", "--help"]
"#,
    r#"
name = "hog"
command = ["/bin/sh", "-c", "head -c 400M /dev/zero | tail > /dev/null"]
[resources]
memory = "48Mi"
"#,
    r#"
name = "huge"
command = ["true"]
[resources]
cpu = 4096
"#,
    r#"
name = "ticker"
command = ["/bin/sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.2; done"]
"#,
    r#"
name = "busy"
command = ["sleep", "0.4"]
[resources]
cpu = 1
"#,
];

fn catalogue() -> Catalogue {
    let mut c = Catalogue::new();
    for (i, text) in TEMPLATES.iter().enumerate() {
        // The `sleepy` template uses a fixed timeout; placeholders are not allowed there.
        let text = text.replace("timeout = \"{{ timeout }}\"", "timeout = \"1s\"");
        let t = TaskTemplate::from_str(&text, Format::Toml, format!("test-{i}.toml"))
            .unwrap_or_else(|e| panic!("template {i}: {e}"));
        c.insert(t);
    }
    c
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .with_thread_names(true)
        .try_init();
}

async fn start(
    dir: &Path,
    capacity: Option<Resources>,
) -> (Tasks, SqliteHistory, Arc<LocalExecutor>) {
    init_tracing();
    let history = SqliteHistory::open(dir.join("ops.db").to_str().unwrap())
        .await
        .unwrap();
    let mut exec_config = LocalExecutorConfig::default();
    exec_config.capacity = capacity;
    let executor = Arc::new(LocalExecutor::new(exec_config).unwrap());
    let mut config = TasksConfig::default();
    config.root = dir.join("tasks");
    let tasks = Tasks::builder()
        .catalogue(catalogue())
        .history(history.clone())
        .executor(executor.clone())
        .config(config)
        .start()
        .await
        .unwrap();
    (tasks, history, executor)
}

fn acme() -> Tenant {
    Tenant::parse("acme").unwrap()
}

/// Submits `req` as acme and waits for the task's end.
async fn run(tasks: &Tasks, req: SubmitRequest) -> ops_tasks::TaskRecord {
    let acme = tasks.tenant(&acme());
    let id = acme.submit(req).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), acme.wait(id))
        .await
        .expect("task did not finish in time")
        .unwrap()
}

fn types(events: &[ops_core::Event]) -> Vec<&str> {
    events.iter().map(|e| e.ty.as_str()).collect()
}

#[tokio::test]
async fn success_records_transitions_events_usage_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, history, _) = start(dir.path(), None).await;
    let req = SubmitRequest::new("echo")
        .parameters(serde_json::json!({ "text": "hello ops" }))
        .label("project", "demo");
    let record = run(&tasks, req).await;
    assert_eq!(record.status, TaskStatus::Succeeded);
    assert_eq!(record.reason, Some(Reason::Completed));
    assert_eq!(record.exit_code, Some(0));
    assert_eq!(record.attempt, 1);
    assert!(record.usage.wall_time > Duration::ZERO);
    let events = tasks.tenant(&acme()).events(record.id).await.unwrap();
    assert_eq!(
        types(&events),
        [
            event_types::TASK_SUBMITTED,
            event_types::TASK_QUEUED,
            event_types::TASK_STARTED,
            event_types::TASK_SUCCEEDED
        ]
    );
    let last: ops_core::TaskEventData = events[3].data_as().unwrap();
    assert!(last.usage.is_some());
    assert_eq!(last.labels.get("project").map(String::as_str), Some("demo"));
    assert_eq!(events[3].tenant(), Some("acme"));
    let transitions = history.transitions(record.id).await.unwrap();
    let path: Vec<_> = transitions.iter().map(|t| t.to).collect();
    assert_eq!(
        path,
        [
            TaskStatus::Submitted,
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Succeeded
        ]
    );
    // Each transition's event is the one stored in the outbox (same transaction).
    for (t, e) in transitions.iter().zip(&events) {
        assert_eq!(t.event_id, e.id);
    }
    let out = tasks
        .tenant(&acme())
        .logs(record.id, LogStream::Stdout)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out).trim(), "hello ops");
    tasks.shutdown().await;
}

#[tokio::test]
async fn outputs_produce_events_and_are_tenant_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;
    let record = run(
        &tasks,
        SubmitRequest::new("frames").parameters(serde_json::json!({ "n": 4 })),
    )
    .await;
    assert_eq!(record.status, TaskStatus::Succeeded, "{record:?}");
    let outputs = tasks.tenant(&acme()).outputs(record.id).await.unwrap();
    let mut paths: Vec<_> = outputs.iter().map(|o| o.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "frames/f1.png",
            "frames/f2.png",
            "frames/f3.png",
            "frames/f4.png"
        ]
    );
    let events = tasks.tenant(&acme()).events(record.id).await.unwrap();
    let created = events
        .iter()
        .filter(|e| e.ty == event_types::TASK_OUTPUT_CREATED)
        .count();
    assert_eq!(created, 4);
    let file = tasks
        .tenant(&acme())
        .output_path(record.id, "frames/f2.png")
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(file).unwrap().trim(), "2");
    assert!(matches!(
        tasks
            .tenant(&acme())
            .output_path(record.id, "../../x")
            .await,
        Err(Error::PathEscape { .. })
    ));

    // Another tenant sees nothing of it, through any door.
    let globex = Tenant::parse("globex").unwrap();
    assert!(matches!(
        tasks.tenant(&globex).get(record.id).await,
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        tasks.tenant(&globex).events(record.id).await,
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        tasks.tenant(&globex).outputs(record.id).await,
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        tasks
            .tenant(&globex)
            .logs(record.id, LogStream::Stdout)
            .await,
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        tasks.tenant(&globex).cancel(record.id).await,
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        tasks.tenant(&globex).watch(record.id).await,
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        tasks
            .tenant(&globex)
            .output_path(record.id, "frames/f2.png")
            .await,
        Err(Error::TaskNotFound(_))
    ));
    let globex_tasks = tasks.tenant(&globex);
    let not_found = |what: &str, err: Option<Error>| match err {
        Some(Error::TaskNotFound(id)) => assert_eq!(id, record.id, "{what}"),
        Some(other) => panic!("{what}: expected TaskNotFound, got {other}"),
        None => panic!("{what}: another tenant's task was answered"),
    };
    not_found(
        "transitions",
        globex_tasks.transitions(record.id).await.err(),
    );
    not_found("wait", globex_tasks.wait(record.id).await.err());
    not_found("explain", globex_tasks.explain(record.id).await.err());
    not_found(
        "follow_logs",
        globex_tasks
            .follow_logs(record.id, LogStream::Stderr)
            .await
            .err(),
    );
    let err = globex_tasks.get(record.id).await.unwrap_err();
    assert_eq!(err.kind(), ops_core::ErrorKind::NotFound);
    assert_eq!(err.kind().http_status(), 404);
    let page = globex_tasks.list(&TaskQuery::new()).await.unwrap();
    assert!(page.tasks.is_empty());
    // The owner still sees every door open.
    let own = tasks.tenant(&acme());
    assert_eq!(
        own.transitions(record.id)
            .await
            .unwrap()
            .last()
            .map(|t| t.to),
        Some(TaskStatus::Succeeded)
    );
    assert!(own.explain(record.id).await.unwrap().is_none());
    tasks.shutdown().await;
}

#[tokio::test]
async fn submit_many_is_all_or_nothing_and_names_the_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;
    let acme_tasks = tasks.tenant(&acme());
    let err = acme_tasks
        .submit_many(vec![
            SubmitRequest::new("echo").parameters(serde_json::json!({ "text": "a" })),
            SubmitRequest::new("frames").parameters(serde_json::json!({ "n": 0 })),
            SubmitRequest::new("echo").parameters(serde_json::json!({ "text": "c" })),
        ])
        .await
        .unwrap_err();
    match &err {
        Error::InvalidRequest { index, source } => {
            assert_eq!(*index, 1, "{err}");
            assert!(
                matches!(**source, Error::InvalidParameters { .. }),
                "{source}"
            );
        }
        other => panic!("expected InvalidRequest, got {other}"),
    }
    assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("request #1"), "{err}");
    // Nothing of the batch was stored: the good requests were not half-submitted.
    let page = acme_tasks.list(&TaskQuery::new()).await.unwrap();
    assert!(page.tasks.is_empty(), "{:?}", page.tasks);

    let ids = acme_tasks
        .submit_many(vec![
            SubmitRequest::new("echo").parameters(serde_json::json!({ "text": "a" })),
            SubmitRequest::new("echo").parameters(serde_json::json!({ "text": "b" })),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let record = tokio::time::timeout(Duration::from_secs(20), acme_tasks.wait(id))
            .await
            .expect("task did not finish in time")
            .unwrap();
        assert_eq!(record.status, TaskStatus::Succeeded, "{record:?}");
    }
    assert!(acme_tasks.submit_many(Vec::new()).await.unwrap().is_empty());
    tasks.shutdown().await;
}

#[tokio::test]
async fn failures_map_to_reasons_and_retries_follow_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;

    let flaky = run(&tasks, SubmitRequest::new("flaky")).await;
    assert_eq!(flaky.status, TaskStatus::Failed);
    assert_eq!(flaky.reason, Some(Reason::NonZeroExit));
    assert_eq!(flaky.exit_code, Some(3));
    assert_eq!(flaky.attempt, 2);
    let events = tasks.tenant(&acme()).events(flaky.id).await.unwrap();
    assert_eq!(
        types(&events),
        [
            event_types::TASK_SUBMITTED,
            event_types::TASK_QUEUED,
            event_types::TASK_STARTED,
            event_types::TASK_RETRYING,
            event_types::TASK_QUEUED,
            event_types::TASK_STARTED,
            event_types::TASK_FAILED
        ]
    );
    let stderr = tasks
        .tenant(&acme())
        .logs(flaky.id, LogStream::Stderr)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stderr).matches("attempt").count(),
        2
    );

    let missing = run(&tasks, SubmitRequest::new("missing")).await;
    assert_eq!(missing.status, TaskStatus::Failed);
    assert_eq!(missing.reason, Some(Reason::CommandNotFound));
    assert!(
        missing
            .message
            .as_deref()
            .unwrap_or("")
            .contains("ops-no-such-program-4711"),
        "{missing:?}"
    );

    let slow = run(&tasks, SubmitRequest::new("sleepy")).await;
    assert_eq!(slow.status, TaskStatus::TimedOut);
    assert_eq!(slow.reason, Some(Reason::TimedOut));
    let events = tasks.tenant(&acme()).events(slow.id).await.unwrap();
    assert_eq!(events.last().unwrap().ty, event_types::TASK_TIMED_OUT);
    tasks.shutdown().await;
}

#[tokio::test]
async fn memory_limit_kill_is_reported_as_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, executor) = start(dir.path(), None).await;
    if executor.cgroup_mode() == ops_tasks::local::CgroupMode::None {
        assert!(
            std::env::var("OPS_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "cgroups are not writable here, but OPS_REQUIRE_SERVICES=1: run as root on a host with cgroup v1 or v2 memory controllers"
        );
        tracing::warn!("no writable cgroups: the memory watchdog fallback is used");
    }
    let hog = run(&tasks, SubmitRequest::new("hog")).await;
    assert_eq!(hog.status, TaskStatus::Failed, "{hog:?}");
    assert_eq!(hog.reason, Some(Reason::OutOfMemory), "{hog:?}");
    tasks.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_rejected_at_submit_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;

    let err = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("ech"))
        .await
        .unwrap_err();
    match &err {
        Error::TemplateNotFound { close_matches, .. } => {
            assert_eq!(close_matches.first().map(String::as_str), Some("echo"))
        }
        other => panic!("unexpected {other}"),
    }

    let err = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("frames").parameters(serde_json::json!({ "n": 0, "x": 1 })))
        .await;
    // `n: 0` violates the minimum; additional properties are allowed by this schema.
    assert!(
        matches!(err, Err(Error::InvalidParameters { .. })),
        "{err:?}"
    );

    let err = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("echo").parameters(serde_json::json!({ "text": 5 })))
        .await
        .unwrap_err();
    match &err {
        Error::InvalidParameters { violations, .. } => {
            assert_eq!(violations[0].path, "/text", "{err}")
        }
        other => panic!("unexpected {other}"),
    }

    let err = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("huge"))
        .await
        .unwrap_err();
    match &err {
        Error::ExceedsCapacity { shortfalls } => {
            assert!(shortfalls[0].starts_with("cpu"), "{err}")
        }
        other => panic!("unexpected {other}"),
    }

    // A tenant name that breaks the rule cannot even be made: the error names the rule.
    let err = ops_core::Tenant::parse("../evil").unwrap_err();
    assert!(err.to_string().contains("invalid tenant"), "{err}");
    assert!(err.to_string().contains(ops_core::NAME_RULE), "{err}");
    assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);

    // Nothing was stored for the rejected requests.
    tracing::info!("listing");
    let page = tasks.tenant(&acme()).list(&TaskQuery::new()).await.unwrap();
    tracing::info!("listed");
    assert!(page.tasks.is_empty());
    tasks.shutdown().await;
}

#[tokio::test]
async fn injection_attempts_arrive_as_literal_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;
    for attack in [
        "; rm -rf ~; touch pwned",
        "$(touch pwned)",
        "`touch pwned`",
        "a\ntouch pwned",
        "' ; touch pwned ; '",
    ] {
        let record = run(
            &tasks,
            SubmitRequest::new("echo").parameters(serde_json::json!({ "text": attack })),
        )
        .await;
        assert_eq!(record.status, TaskStatus::Succeeded);
        let out = tasks
            .tenant(&acme())
            .logs(record.id, LogStream::Stdout)
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out), format!("{attack}\n"));
        assert!(!record.spec.task_dir.join("pwned").exists());
    }
    tasks.shutdown().await;
}

#[tokio::test]
async fn cancel_queued_and_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;

    tasks.admin().pause().unwrap();
    let queued = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("echo").parameters(serde_json::json!({"text": "x"})))
        .await
        .unwrap();
    let record = tasks.tenant(&acme()).cancel(queued).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled);
    tasks.admin().resume().unwrap();

    let running = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("sleepy").parameters(serde_json::json!({"secs": 0.9})))
        .await
        .unwrap();
    let mut events = tasks.tenant(&acme()).watch(running).await.unwrap();
    while let Some(e) = events.next().await {
        if e.ty == event_types::TASK_STARTED {
            break;
        }
    }
    tasks.tenant(&acme()).cancel(running).await.unwrap();
    let done = tasks.tenant(&acme()).wait(running).await.unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert_eq!(done.reason, Some(Reason::Cancelled));
    // Cancelling a finished task changes nothing.
    assert_eq!(
        tasks.tenant(&acme()).cancel(running).await.unwrap().status,
        TaskStatus::Cancelled
    );
    tasks.shutdown().await;
}

#[tokio::test]
async fn admission_never_overcommits_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = Resources::new(2000, 8 << 30);
    let (tasks, _, _) = start(dir.path(), Some(capacity)).await;
    let ids = tasks
        .tenant(&acme())
        .submit_many((0..6).map(|_| SubmitRequest::new("busy")).collect())
        .await
        .unwrap();
    let mut spans = Vec::new();
    for id in ids {
        let r = tasks.tenant(&acme()).wait(id).await.unwrap();
        assert_eq!(r.status, TaskStatus::Succeeded);
        let events = tasks.tenant(&acme()).events(id).await.unwrap();
        let started = events
            .iter()
            .find(|e| e.ty == event_types::TASK_STARTED)
            .unwrap()
            .time;
        let ended = events.last().unwrap().time;
        spans.push((started, ended));
    }
    // At every start, at most two tasks (2 × 1 CPU on a 2-CPU capacity) are running.
    for (start, _) in &spans {
        let overlapping = spans
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} tasks ran at once: {spans:?}"
        );
    }
    tasks.shutdown().await;
}

#[tokio::test]
async fn queries_filter_paginate_and_retention_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let req = SubmitRequest::new("echo")
            .parameters(serde_json::json!({ "text": i.to_string() }))
            .label("batch", if i % 2 == 0 { "even" } else { "odd" });
        ids.push(tasks.tenant(&acme()).submit(req).await.unwrap());
    }
    ids.push(
        tasks
            .tenant(&ops_core::Tenant::parse("acme").unwrap())
            .submit(SubmitRequest::new("flaky"))
            .await
            .unwrap(),
    );
    for id in &ids {
        tasks.tenant(&acme()).wait(*id).await.unwrap();
    }
    let even = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .list(&TaskQuery::new().label("batch", "even"))
        .await
        .unwrap();
    assert_eq!(even.tasks.len(), 3);
    let failed = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .list(&TaskQuery::new().status(TaskStatus::Failed))
        .await
        .unwrap();
    assert_eq!(failed.tasks.len(), 1);
    assert_eq!(failed.tasks[0].template, "flaky");
    let echo = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .list(&TaskQuery::new().template("echo"))
        .await
        .unwrap();
    assert_eq!(echo.tasks.len(), 5);

    // Pages of two, newest first, cover everything exactly once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = tasks
            .tenant(&ops_core::Tenant::parse("acme").unwrap())
            .list(&TaskQuery::new().limit(2).after(cursor))
            .await
            .unwrap();
        seen.extend(page.tasks.iter().map(|t| t.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let none = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .list(&TaskQuery::new().submitted_between(Some(future), None))
        .await
        .unwrap();
    assert!(none.tasks.is_empty());

    let bad = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .list(&TaskQuery::new().after(Some("nope".into())))
        .await;
    assert!(bad.unwrap_err().to_string().contains("cursor"));

    let dir_of_first = tasks
        .tenant(&acme())
        .get(ids[0])
        .await
        .unwrap()
        .spec
        .task_dir;
    assert!(dir_of_first.exists());
    assert_eq!(
        tasks
            .admin()
            .prune(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        tasks.admin().prune(Duration::from_millis(1)).await.unwrap(),
        6
    );
    assert!(!dir_of_first.exists());
    assert!(
        tasks
            .tenant(&ops_core::Tenant::parse("acme").unwrap())
            .list(&TaskQuery::new())
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    tasks.shutdown().await;
}

#[tokio::test]
async fn events_reach_functions_through_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, history, _) = start(dir.path(), None).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let function = function_fn("collect", move |event| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(event.ty.clone());
            Ok(())
        }
    });
    let dispatcher = Dispatcher::builder(history.outbox().clone())
        .route(Trigger::on("ops.task.*"), function)
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    let record = run(
        &tasks,
        SubmitRequest::new("echo").parameters(serde_json::json!({ "text": "hi" })),
    )
    .await;
    let stored = tasks.tenant(&acme()).events(record.id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < stored.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*seen.lock().unwrap(), types(&stored));
    running.shutdown().await;
    tasks.shutdown().await;
}

#[tokio::test]
async fn restart_reattaches_to_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (tasks, _, executor) = start(dir.path(), None).await;
        let id = tasks
            .tenant(&ops_core::Tenant::parse("acme").unwrap())
            .submit(SubmitRequest::new("sleepy").parameters(serde_json::json!({ "secs": 0.8 })))
            .await
            .unwrap();
        let mut events = tasks.tenant(&acme()).watch(id).await.unwrap();
        while let Some(e) = events.next().await {
            if e.ty == event_types::TASK_STARTED {
                break;
            }
        }
        // The coordinator goes away without killing its task.
        tasks.shutdown().await;
        executor.detach();
        id
    };
    let (tasks, _, _) = start(dir.path(), None).await;
    let record = tokio::time::timeout(Duration::from_secs(10), tasks.tenant(&acme()).wait(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, TaskStatus::Succeeded, "{record:?}");
    assert_eq!(record.attempt, 1, "re-attached, not re-run");
    let events = tasks.tenant(&acme()).events(id).await.unwrap();
    let started = events
        .iter()
        .filter(|e| e.ty == event_types::TASK_STARTED)
        .count();
    assert_eq!(started, 1);
    tasks.shutdown().await;
}

#[tokio::test]
async fn logs_stream_live_until_the_task_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, _, _) = start(dir.path(), None).await;
    let id = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("ticker"))
        .await
        .unwrap();
    let mut stream = tasks
        .tenant(&acme())
        .follow_logs(id, LogStream::Stdout)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("log stream stalled")
    {
        seen.extend(chunk.unwrap());
        chunks += 1;
    }
    assert_eq!(String::from_utf8_lossy(&seen), "tick 1\ntick 2\ntick 3\n");
    assert!(chunks >= 2, "output arrived in {chunks} chunk(s), not live");
    assert!(
        tasks
            .tenant(&acme())
            .get(id)
            .await
            .unwrap()
            .status
            .is_final()
    );
    assert!(matches!(
        tasks
            .tenant(&Tenant::parse("globex").unwrap())
            .follow_logs(id, LogStream::Stdout)
            .await,
        Err(Error::TaskNotFound(_))
    ));
    tasks.shutdown().await;
}
