//! The SQLite outbox as other crates use it: shared database, shared migrations
//! table, caller transactions, big batches.

use std::time::Duration;

use ops_core::Event;
use ops_events::sqlite::SqliteOutbox;
use ops_events::{EventBus, SubscribeOptions, testkit};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// A migrator like the one `ops-tasks` runs on the same database.
async fn other_crates_migrator(dir: &std::path::Path) -> Migrator {
    let migrations = dir.join("tasks-migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("20261125100001_tasks.sql"),
        "CREATE TABLE ops_tasks (id TEXT PRIMARY KEY NOT NULL, state TEXT NOT NULL);",
    )
    .unwrap();
    let mut m = Migrator::new(migrations).await.unwrap();
    m.set_ignore_missing(true);
    m
}

#[tokio::test]
async fn shares_a_database_with_another_crates_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let url = path.to_str().unwrap();
    let tasks = other_crates_migrator(dir.path()).await;

    // Outbox first, then the other crate, then the outbox again (a restart).
    let outbox = SqliteOutbox::open(url).await.unwrap();
    tasks.run(outbox.pool()).await.unwrap();
    drop(outbox);
    let outbox = SqliteOutbox::open(url).await.unwrap();
    tasks.run(outbox.pool()).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(outbox.pool())
            .await
            .unwrap();
    assert_eq!(versions, vec![20261125000001, 20261125100001]);

    // The other order, on a pool the caller built: from_pool.
    let path2 = dir.path().join("shared2.db");
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path2)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    tasks.run(&pool).await.unwrap();
    let outbox = SqliteOutbox::from_pool(pool.clone()).await.unwrap();
    let tasks_table: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ops_tasks")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(
        tasks_table, 0,
        "the caller's tables are visible through pool()"
    );
    outbox.publish(&testkit::events("x", 1)).await.unwrap();
    assert_eq!(outbox.head().await.unwrap(), 1);
}

#[tokio::test]
async fn large_batches_append_in_chunks_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = SqliteOutbox::open(dir.path().join("big.db").to_str().unwrap())
        .await
        .unwrap();
    let evs = testkit::events("big", 1234);
    let mut tx = outbox.pool().begin().await.unwrap();
    SqliteOutbox::append(&mut tx, &evs).await.unwrap();
    // Appending the same ids again in the same transaction is a no-op.
    SqliteOutbox::append(&mut tx, &evs[..500]).await.unwrap();
    tx.commit().await.unwrap();
    outbox.notify();
    assert_eq!(outbox.head().await.unwrap(), 1234);

    outbox
        .subscribe("reader", SubscribeOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < evs.len() {
        let batch = outbox
            .fetch("reader", 500, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!batch.is_empty());
        outbox
            .ack("reader", &batch.iter().map(|d| d.tag).collect::<Vec<_>>())
            .await
            .unwrap();
        got.extend(batch.into_iter().map(|d| Event::clone(&d.event)));
    }
    assert_eq!(got, evs, "every event back, in order, unchanged");
    assert_eq!(outbox.pending("reader").await.unwrap(), 0);
}

#[tokio::test]
async fn events_appended_without_notify_are_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = SqliteOutbox::open_with(
        dir.path().join("recheck.db").to_str().unwrap(),
        &ops_events::sqlite::SqliteOutboxConfig::default()
            .recheck_interval(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    outbox
        .subscribe("s", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = testkit::events("quiet", 1);
    let writer = {
        let pool = outbox.pool().clone();
        let evs = evs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // As another process would: no notify().
            let mut conn = pool.acquire().await.unwrap();
            SqliteOutbox::append(&mut conn, &evs).await.unwrap();
        })
    };
    let got = outbox
        .fetch("s", 10, Duration::from_secs(10))
        .await
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.id, evs[0].id);
}

#[tokio::test]
async fn prune_keeps_what_a_subscription_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = SqliteOutbox::open(dir.path().join("prune.db").to_str().unwrap())
        .await
        .unwrap();
    outbox
        .subscribe("slow", SubscribeOptions::default())
        .await
        .unwrap();
    outbox.publish(&testkit::events("p", 5)).await.unwrap();
    // Nothing acknowledged yet: nothing may go.
    assert_eq!(outbox.prune(Duration::ZERO).await.unwrap(), 0);
    let got = outbox.fetch("slow", 3, Duration::ZERO).await.unwrap();
    outbox.ack("slow", &[got[0].tag, got[1].tag]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The first two are acknowledged; the third is in flight, the rest not delivered.
    assert_eq!(outbox.prune(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(
        outbox.prune(Duration::from_secs(3600)).await.unwrap(),
        0,
        "too recent"
    );
    outbox.publish(&testkit::events("p", 1)).await.unwrap();
    assert_eq!(outbox.head().await.unwrap(), 6, "sequence never reused");
    let rest = outbox.fetch("slow", 10, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 3, "undelivered events survived the prune");
}
