//! The history conformance suite (`ops_tasks::testkit`) on every backend: SQLite in a
//! temporary directory, and PostgreSQL on the shared test server
//! (`$OPS_TEST_POSTGRES_URL`, see `ops-testbed`; skipped when it is not set, unless
//! `OPS_REQUIRE_SERVICES=1`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ops_tasks::{HistoryStore, SqliteHistory, testkit};

#[tokio::test]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    testkit::run_all(|| {
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
    testkit::events_reach_the_outbox(&history, history.outbox()).await;
}

#[tokio::test]
async fn sqlite_history_upgrades_in_place() {
    // A database written before leases existed keeps its tasks, unowned.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let url = path.to_string_lossy().to_string();
    let history = SqliteHistory::open(&url).await.unwrap();
    let task = testkit::record("acme", ops_core::TaskStatus::Queued);
    testkit::insert(&history, std::slice::from_ref(&task), None).await;
    drop(history);
    let history = SqliteHistory::open(&url).await.unwrap();
    assert_eq!(history.get(task.id).await.unwrap(), Some(task));
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use ops_events::postgres::Migrations;
    use ops_tasks::history::{PostgresHistory, PostgresHistoryConfig};
    use ops_tasks::{Error, HistoryStore, testkit};

    async fn open() -> Option<PostgresHistory> {
        let url = ops_testbed::postgres_database()?;
        Some(PostgresHistory::connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn postgres_conformance() {
        if open().await.is_none() {
            return;
        }
        testkit::run_all(|| async {
            let url = ops_testbed::postgres_database().expect("postgres");
            Arc::new(PostgresHistory::connect(&url).await.unwrap()) as Arc<dyn HistoryStore>
        })
        .await;
    }

    #[tokio::test]
    async fn postgres_events_reach_the_outbox() {
        let Some(history) = open().await else { return };
        testkit::events_reach_the_outbox(&history, history.outbox()).await;
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
        let task = testkit::record("acme", ops_core::TaskStatus::Queued);
        testkit::insert(&a, std::slice::from_ref(&task), None).await;
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
