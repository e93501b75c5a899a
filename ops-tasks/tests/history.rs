//! The history conformance suite (`ops_tasks::testkit::history`) on every backend:
//! SQLite in a temporary directory, PostgreSQL on the shared test server
//! (`$OPS_TEST_POSTGRES_URL`, see `ops-testbed`; skipped when it is not set, unless
//! `OPS_REQUIRE_SERVICES=1`), and a single-node store that keeps the provided lease
//! methods, which also runs the task service end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Event, TaskId, TaskStatus, Tenant};
use ops_tasks::history::{
    ChangeBatch, OutputRecord, PrunedTask, StatsQuery, TaskPage, TaskQuery, TemplateStats,
    TransitionRecord,
};
use ops_tasks::local::{LocalExecutor, LocalExecutorConfig};
use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{
    HistoryReader, HistoryStore, HistoryWriter, Leases, Result, SqliteHistory, SubmitRequest,
    TaskRecord, Tasks, TasksConfig, testkit,
};

/// A store written without leases: reads and writes delegate to SQLite, the lease
/// methods are the provided single-node ones.
struct SingleNode(SqliteHistory);

#[async_trait]
impl HistoryReader for SingleNode {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        self.0.get(id).await
    }
    async fn list(&self, tenant: &Tenant, query: &TaskQuery) -> Result<TaskPage> {
        self.0.list(tenant, query).await
    }
    async fn events(&self, id: TaskId) -> Result<Vec<Event>> {
        self.0.events(id).await
    }
    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionRecord>> {
        self.0.transitions(id).await
    }
    async fn outputs(&self, id: TaskId) -> Result<Vec<OutputRecord>> {
        self.0.outputs(id).await
    }
    async fn unfinished(&self) -> Result<Vec<TaskRecord>> {
        self.0.unfinished().await
    }
    async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>> {
        self.0.count_by_status(tenant).await
    }
    async fn stats(&self, tenant: &Tenant, query: &StatsQuery) -> Result<Vec<TemplateStats>> {
        self.0.stats(tenant, query).await
    }
}

#[async_trait]
impl HistoryWriter for SingleNode {
    async fn commit(&self, batch: &ChangeBatch) -> Result<Vec<bool>> {
        self.0.commit(batch).await
    }
    async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Vec<PrunedTask>> {
        self.0.prune(cutoff, batch).await
    }
}

impl Leases for SingleNode {}

#[tokio::test]
async fn single_node_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    testkit::history::run_single_node(|| {
        let path = dir
            .path()
            .join(format!("s{}.db", n.fetch_add(1, Ordering::SeqCst)));
        async move {
            let sqlite = SqliteHistory::open(&path.to_string_lossy()).await.unwrap();
            Arc::new(SingleNode(sqlite)) as Arc<dyn HistoryStore>
        }
    })
    .await;
}

/// The task service on a store without leases: tasks run, a running one is cancelled
/// (through the coordinator, not the store), a restart recovers an unfinished task,
/// and a submit-only front end is refused.
#[tokio::test]
async fn tasks_run_on_a_single_node_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ops.db");
    let mut catalogue = Catalogue::new();
    catalogue.insert(
        TaskTemplate::from_str(
            "name = \"nap\"\ncommand = [\"sleep\", \"{{ secs }}\"]\n[parameters.properties.secs]\ntype = \"number\"\n",
            Format::Toml,
            "nap.toml",
        )
        .unwrap(),
    );
    let mut config = TasksConfig::default();
    config.root = dir.path().join("tasks");
    let start = |config: TasksConfig, catalogue: Catalogue| {
        let db = db.clone();
        async move {
            let store = SingleNode(SqliteHistory::open(&db.to_string_lossy()).await.unwrap());
            Tasks::builder()
                .catalogue(catalogue)
                .history(store)
                .executor(LocalExecutor::new(LocalExecutorConfig::default()).unwrap())
                .config(config)
                .start()
                .await
                .unwrap()
        }
    };
    let acme = Tenant::parse("acme").unwrap();
    let nap = |secs: f64| SubmitRequest::new("nap").parameters(serde_json::json!({ "secs": secs }));

    let tasks = start(config.clone(), catalogue.clone()).await;
    let quick = tasks.tenant(&acme).submit(nap(0.05)).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&acme).wait(quick))
        .await
        .expect("the task ends")
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);

    let long = tasks.tenant(&acme).submit(nap(30.0)).await.unwrap();
    while tasks.tenant(&acme).get(long).await.unwrap().status != TaskStatus::Running {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tasks.tenant(&acme).cancel(long).await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&acme).wait(long))
        .await
        .expect("the cancelled task ends")
        .unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled, "{cancelled:?}");

    // A task queued at shutdown runs after a restart.
    tasks.admin().pause().unwrap();
    let later = tasks.tenant(&acme).submit(nap(0.05)).await.unwrap();
    tasks.shutdown().await;
    let tasks = start(config.clone(), catalogue.clone()).await;
    let done = tokio::time::timeout(Duration::from_secs(20), tasks.tenant(&acme).wait(later))
        .await
        .expect("the recovered task ends")
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    tasks.shutdown().await;

    // Nothing would claim a front end's tasks on this store.
    let store = SingleNode(SqliteHistory::open(&db.to_string_lossy()).await.unwrap());
    let err = Tasks::builder()
        .catalogue(catalogue)
        .history(store)
        .config(config)
        .submit_only()
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ops_core::ErrorKind::Unsupported, "{err}");
}

#[tokio::test]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    testkit::history::run_all(|| {
        let path = dir
            .path()
            .join(format!("h{}.db", n.fetch_add(1, Ordering::SeqCst)));
        async move {
            Arc::new(SqliteHistory::open(&path.to_string_lossy()).await.unwrap())
                as Arc<dyn HistoryStore>
        }
    })
    .await;
}

#[tokio::test]
async fn sqlite_events_reach_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let history = SqliteHistory::open(&dir.path().join("h.db").to_string_lossy())
        .await
        .unwrap();
    testkit::history::events_reach_the_outbox(&history, history.outbox()).await;
}

#[tokio::test]
async fn sqlite_history_upgrades_in_place() {
    // A database written before leases existed keeps its tasks, unowned.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let url = path.to_string_lossy().to_string();
    let history = SqliteHistory::open(&url).await.unwrap();
    let task = testkit::history::record("acme", ops_core::TaskStatus::Queued);
    testkit::history::insert(&history, std::slice::from_ref(&task), None).await;
    drop(history);
    let history = SqliteHistory::open(&url).await.unwrap();
    assert_eq!(history.get(task.id).await.unwrap(), Some(task));
}

#[tokio::test]
async fn sqlite_tasks_written_before_preempted_usage_read_it_as_zero() {
    // The schema as it was before the preempted-usage migration, with a task in it.
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("h.db").to_string_lossy().to_string();
    let old = dir.path().join("migrations");
    std::fs::create_dir(&old).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for file in std::fs::read_dir(&all).unwrap() {
        let file = file.unwrap();
        if file.file_name().to_string_lossy().as_ref() < "20261204100001" {
            std::fs::copy(file.path(), old.join(file.file_name())).unwrap();
        }
    }
    let outbox = ops_events::sqlite::SqliteOutbox::open(&url).await.unwrap();
    let mut before = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    before.set_ignore_missing(true);
    before.run(outbox.pool()).await.unwrap();
    let mut task = testkit::history::record("acme", TaskStatus::Succeeded);
    task.usage = ops_core::Usage::new(Duration::from_secs(60), Duration::from_secs(30), 1 << 20, 1);
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    sqlx::query(
        "INSERT INTO ops_tasks (id, tenant, environment, template, status, priority, attempt, \
             max_attempts, labels, parameters, spec, retry, wall_secs, cpu_secs, peak_memory, \
             gpu_secs, submitted_at, finished_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, 0, 1, 3, '{}', ?, ?, ?, 60, 30, ?, 60, ?, ?, ?)",
    )
    .bind(task.id.to_string())
    .bind(task.tenant.as_str())
    .bind(task.environment.to_string())
    .bind(&task.template)
    .bind(task.status.as_str())
    .bind(task.parameters.to_string())
    .bind(serde_json::to_string(&task.spec).unwrap())
    .bind(serde_json::to_string(&task.retry).unwrap())
    .bind(1_i64 << 20)
    .bind(micros(task.submitted_at))
    .bind(task.finished_at.map(micros))
    .bind(micros(task.submitted_at))
    .execute(outbox.pool())
    .await
    .unwrap();
    drop(outbox);

    let history = SqliteHistory::open(&url).await.unwrap();
    let read = history.get(task.id).await.unwrap().unwrap();
    assert!(read.preempted_usage.is_zero(), "{read:?}");
    assert_eq!(read, task);
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use ops_events::postgres::Migrations;
    use ops_tasks::history::{PostgresHistory, PostgresHistoryConfig};
    use ops_tasks::{Error, HistoryReader, HistoryStore, testkit};

    async fn open() -> Option<PostgresHistory> {
        let url = ops_testbed::postgres_database()?;
        Some(PostgresHistory::connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn postgres_conformance() {
        if open().await.is_none() {
            return;
        }
        testkit::history::run_all(|| async {
            let url = ops_testbed::postgres_database().expect("postgres");
            Arc::new(PostgresHistory::connect(&url).await.unwrap()) as Arc<dyn HistoryStore>
        })
        .await;
    }

    #[tokio::test]
    async fn postgres_events_reach_the_outbox() {
        let Some(history) = open().await else { return };
        testkit::history::events_reach_the_outbox(&history, history.outbox()).await;
    }

    #[tokio::test]
    async fn reopening_keeps_history_and_concurrent_opens_migrate_once() {
        let Some(url) = ops_testbed::postgres_database() else {
            return;
        };
        let (a, b) = tokio::join!(
            PostgresHistory::connect(&url),
            PostgresHistory::connect(&url)
        );
        let (a, _b) = (a.unwrap(), b.unwrap());
        let task = testkit::history::record("acme", ops_core::TaskStatus::Queued);
        testkit::history::insert(&a, std::slice::from_ref(&task), None).await;
        drop(a);
        let again = PostgresHistory::connect_with(
            &url,
            PostgresHistoryConfig::default().migrations(Migrations::Require),
        )
        .await
        .unwrap();
        assert_eq!(again.get(task.id).await.unwrap(), Some(task));
    }

    #[tokio::test]
    async fn require_on_an_empty_database_lists_missing_migrations() {
        let Some(url) = ops_testbed::postgres_database() else {
            return;
        };
        let err = PostgresHistory::connect_with(
            &url,
            PostgresHistoryConfig::default().migrations(Migrations::Require),
        )
        .await
        .unwrap_err();
        match &err {
            Error::SchemaOutdated { missing, .. } => {
                assert!(
                    missing.iter().any(|m| m.ends_with("_outbox")),
                    "{missing:?}"
                );
                assert!(
                    missing.iter().any(|m| m == "20261125100001_history"),
                    "{missing:?}"
                );
                assert!(
                    missing.iter().any(|m| m == "20261126100001_leases"),
                    "{missing:?}"
                );
            }
            other => panic!("expected SchemaOutdated, got {other:?}"),
        }
        // Nothing was created.
        PostgresHistory::connect(&url).await.unwrap();
    }

    #[tokio::test]
    async fn unreachable_server_names_the_url_without_password() {
        let port = ops_testbed::free_port();
        let url = format!("postgres://ops:hunter2@127.0.0.1:{port}/ops");
        let err = PostgresHistory::connect_with(
            &url,
            PostgresHistoryConfig::default().connect_timeout(std::time::Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Connect { .. }), "{text}");
        assert!(
            text.contains(&format!("postgres://ops:***@127.0.0.1:{port}/ops")),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");

        let err = PostgresHistory::connect("mysql://root:hunter2@db/ops")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
