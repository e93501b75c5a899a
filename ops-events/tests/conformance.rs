//! The bus conformance suite against every backend.

use std::sync::atomic::{AtomicUsize, Ordering};

use ops_events::memory::InMemoryBus;
use ops_events::sqlite::SqliteOutbox;
use ops_events::{InMemoryDeadLetters, testkit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_bus_conforms() {
    testkit::bus::run_all(|| async { InMemoryBus::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    testkit::bus::run_all(|| async {
        let path = dir
            .path()
            .join(format!("bus-{}.db", n.fetch_add(1, Ordering::SeqCst)));
        SqliteOutbox::open(path.to_str().unwrap()).await.unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durable.db");
    testkit::bus::run_durable(|| async {
        SqliteOutbox::open(path.to_str().unwrap()).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn sqlite_memory_database_conforms() {
    // One connection: the whole suite must work on `sqlite::memory:` too.
    testkit::bus::run_all(|| async { SqliteOutbox::open("sqlite::memory:").await.unwrap() }).await;
}

#[tokio::test]
async fn dead_letter_stores_conform() {
    testkit::dead_letters::run_all(&InMemoryDeadLetters::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = SqliteOutbox::open(dir.path().join("dl.db").to_str().unwrap())
        .await
        .unwrap();
    testkit::dead_letters::run_all(&outbox.dead_letters()).await;
}
