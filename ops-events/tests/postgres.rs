//! The PostgreSQL outbox against a real server: the bus conformance suite, delivery
//! order under concurrent writers, concurrent fetchers in several processes,
//! LISTEN/NOTIFY wake-ups, migrations and connection errors.
//!
//! Needs `OPS_TEST_POSTGRES_URL` (see `ops-testbed`); skipped without it unless
//! `OPS_REQUIRE_SERVICES=1`.
#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ops_core::{Event, EventId};
use ops_events::postgres::{Migrations, PostgresOutbox, PostgresOutboxConfig};
use ops_events::{Error, EventBus, StartFrom, SubscribeOptions, testkit};
use sqlx::migrate::Migrator;

/// A fresh, empty database on the shared server, or `None` (test skipped).
fn database() -> Option<String> {
    ops_testbed::postgres_database()
}

async fn outbox(url: &str) -> PostgresOutbox {
    PostgresOutbox::connect(url).await.expect("connect")
}

/// An outbox whose idle fetches never recheck on their own: only wake-ups (notify,
/// LISTEN/NOTIFY) can end their wait early.
async fn quiet_outbox(url: &str) -> PostgresOutbox {
    PostgresOutbox::connect_with(
        url,
        PostgresOutboxConfig::default().recheck_interval(Duration::from_secs(60)),
    )
    .await
    .expect("connect")
}

fn ids(deliveries: &[ops_events::Delivery]) -> Vec<EventId> {
    deliveries.iter().map(|d| d.event.id).collect()
}

/// Fetches (and acknowledges) until `want` deliveries arrived or 10 s passed.
async fn drain(bus: &PostgresOutbox, sub: &str, want: usize) -> Vec<EventId> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        let batch = bus
            .fetch(sub, want - got.len(), Duration::from_secs(1))
            .await
            .unwrap();
        bus.ack(sub, &batch.iter().map(|d| d.tag).collect::<Vec<_>>())
            .await
            .unwrap();
        got.extend(ids(&batch));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_conforms() {
    if database().is_none() {
        return;
    }
    testkit::bus::run_all(|| async { outbox(&database().unwrap()).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_is_durable() {
    let Some(url) = database() else { return };
    testkit::bus::run_durable(|| async { outbox(&url).await }).await;
}

#[tokio::test]
async fn postgres_dead_letters_conform() {
    let Some(url) = database() else { return };
    testkit::dead_letters::run_all(&outbox(&url).await.dead_letters()).await;
}

/// Two writer transactions commit in the opposite order of their sequence numbers.
/// A cursor on `seq` would hand out the later one and then skip the earlier one; the
/// outbox holds the later one back until the earlier transaction has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_skip_nothing() {
    let Some(url) = database() else { return };
    let bus = outbox(&url).await;
    bus.subscribe("reader", SubscribeOptions::default())
        .await
        .unwrap();
    let first = testkit::events("first", 1);
    let second = testkit::events("second", 1);

    let mut slow = bus.pool().begin().await.unwrap();
    PostgresOutbox::append(&mut slow, &first).await.unwrap(); // seq 1
    let mut fast = bus.pool().begin().await.unwrap();
    PostgresOutbox::append(&mut fast, &second).await.unwrap(); // seq 2
    fast.commit().await.unwrap();
    bus.notify();

    let early = bus
        .fetch("reader", 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        early.is_empty(),
        "seq 2 was handed out while seq 1 could still commit: {early:?}"
    );
    slow.commit().await.unwrap();
    let got = drain(&bus, "reader", 2).await;
    assert_eq!(
        got,
        vec![first[0].id, second[0].id],
        "both delivered, in transaction order"
    );
    let more = bus.fetch("reader", 10, Duration::ZERO).await.unwrap();
    assert!(more.is_empty());
}

/// Many writers with transactions of different lengths, one reader acknowledging as
/// it goes: every event is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_nothing() {
    let Some(url) = database() else { return };
    let bus = outbox(&url).await;
    bus.subscribe("reader", SubscribeOptions::default())
        .await
        .unwrap();
    const WRITERS: usize = 6;
    const TXS: usize = 25;
    const PER_TX: usize = 4;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let bus = bus.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for t in 0..TXS {
                let evs = testkit::events(&format!("w{w}"), PER_TX);
                let mut tx = bus.pool().begin().await.unwrap();
                PostgresOutbox::append(&mut tx, &evs[..PER_TX / 2])
                    .await
                    .unwrap();
                // Stay open a little, longer for some: commits interleave.
                tokio::time::sleep(Duration::from_millis(((w * 7 + t * 3) % 11) as u64)).await;
                PostgresOutbox::append(&mut tx, &evs[PER_TX / 2..])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                mine.extend(evs.iter().map(|e| e.id));
            }
            mine
        }));
    }
    let total = WRITERS * TXS * PER_TX;
    let got = drain(&bus, "reader", total).await;
    let mut per_writer = Vec::new();
    for w in writers {
        per_writer.push(w.await.unwrap());
    }
    let unique: HashSet<_> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "an event was delivered twice");
    let written: HashSet<_> = per_writer.iter().flatten().copied().collect();
    assert_eq!(unique, written, "every committed event delivered");
    // Each writer's events come in the order it committed them.
    let position: std::collections::HashMap<EventId, usize> =
        got.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for mine in &per_writer {
        assert!(
            mine.windows(2).all(|w| position[&w[0]] < position[&w[1]]),
            "a writer's events out of order"
        );
    }
    assert!(
        bus.fetch("reader", 1, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Fetchers in two "processes" (two pools) on one subscription, never
/// acknowledging: within `ack_wait`, no event is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchers_in_two_processes_never_share_an_event() {
    let Some(url) = database() else { return };
    let a = outbox(&url).await;
    let b = outbox(&url).await;
    let opts = SubscribeOptions::default().ack_wait(Duration::from_secs(60));
    a.subscribe("shared", opts.clone()).await.unwrap();
    b.subscribe("shared", opts).await.unwrap();
    const N: usize = 2000;
    let evs = testkit::events("shared", N);
    let taken = Arc::new(AtomicUsize::new(0));
    let mut fetchers = Vec::new();
    for (i, bus) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let taken = taken.clone();
        fetchers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while taken.load(Ordering::SeqCst) < N && Instant::now() < deadline {
                let batch = bus
                    .fetch("shared", 37 + i, Duration::from_millis(200))
                    .await
                    .unwrap();
                taken.fetch_add(batch.len(), Ordering::SeqCst);
                mine.extend(ids(&batch));
            }
            mine
        }));
    }
    // Publish while they fetch, from both sides.
    for (i, chunk) in evs.chunks(100).enumerate() {
        let publisher = if i % 2 == 0 { &a } else { &b };
        publisher.publish(chunk).await.unwrap();
    }
    let mut all = Vec::new();
    let mut per_fetcher = Vec::new();
    for f in fetchers {
        let mine = f.await.unwrap();
        per_fetcher.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "an event was handed out twice within ack_wait"
    );
    assert_eq!(unique.len(), N, "every event handed out");
    assert_eq!(a.pending("shared").await.unwrap(), N as u64);
    assert!(
        per_fetcher.iter().filter(|&&n| n > 0).count() >= 2,
        "the work was shared: {per_fetcher:?}"
    );
}

/// A fetch waiting in one process wakes when another process commits, through
/// LISTEN/NOTIFY, long before its recheck interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_fetch_in_another_process() {
    let Some(url) = database() else { return };
    let writer = outbox(&url).await;
    let reader = quiet_outbox(&url).await;
    reader
        .subscribe("wake", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = testkit::events("wake", 1);
    let started = Instant::now();
    let (got, _) = tokio::join!(reader.fetch("wake", 10, Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // As another process would: a transaction of its own, no notify() here.
        let mut tx = writer.pool().begin().await.unwrap();
        PostgresOutbox::append(&mut tx, &evs).await.unwrap();
        tx.commit().await.unwrap();
    });
    assert_eq!(ids(&got.unwrap()), vec![evs[0].id]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken after {:?}",
        started.elapsed()
    );
}

/// When the LISTEN connection is killed, waiting fetches still wake promptly (short
/// polling, then the restored connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_wakes_after_the_listen_connection_is_killed() {
    let Some(url) = database() else { return };
    let writer = outbox(&url).await;
    let reader = quiet_outbox(&url).await;
    reader
        .subscribe("wake", SubscribeOptions::default())
        .await
        .unwrap();
    for round in 0..2 {
        let killed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%') t",
        )
        .fetch_one(writer.pool())
        .await
        .unwrap();
        assert!(killed >= 1, "round {round}: no LISTEN connection found");
        let evs = testkit::events("wake", 1);
        let started = Instant::now();
        let (got, _) = tokio::join!(reader.fetch("wake", 10, Duration::from_secs(30)), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut conn = writer.pool().acquire().await.unwrap();
            PostgresOutbox::append(&mut conn, &evs).await.unwrap();
        });
        let got = got.unwrap();
        assert_eq!(ids(&got), vec![evs[0].id], "round {round}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: woken after {:?}",
            started.elapsed()
        );
        reader.ack("wake", &[got[0].tag]).await.unwrap();
        // Let the listener come back before killing it again.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The caller's transaction: duplicates (in one batch, in the same transaction, or
/// from a concurrent transaction) never fail it; a rollback publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_in_the_callers_transaction() {
    let Some(url) = database() else { return };
    let bus = outbox(&url).await;
    sqlx::query("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL)")
        .execute(bus.pool())
        .await
        .unwrap();
    bus.subscribe("reader", SubscribeOptions::default())
        .await
        .unwrap();

    // More than one INSERT chunk, then the same ids again, then the caller's own work.
    let evs = testkit::events("big", 12_345);
    let mut tx = bus.pool().begin().await.unwrap();
    PostgresOutbox::append(&mut tx, &evs).await.unwrap();
    PostgresOutbox::append(&mut tx, &[evs[0].clone(), evs[0].clone(), evs[1].clone()])
        .await
        .unwrap();
    sqlx::query("INSERT INTO jobs VALUES ('j1', 'done')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(bus.head().await.unwrap(), 12_345);

    let mut got = Vec::new();
    while got.len() < evs.len() {
        let batch = bus
            .fetch("reader", 5000, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!batch.is_empty());
        bus.ack("reader", &batch.iter().map(|d| d.tag).collect::<Vec<_>>())
            .await
            .unwrap();
        got.extend(batch.into_iter().map(|d| Event::clone(&d.event)));
    }
    assert_eq!(got, evs, "every event back, in order, unchanged");

    // The same id from two transactions at once: the second waits, then skips it.
    let dup = testkit::events("dup", 1);
    let mut first = bus.pool().begin().await.unwrap();
    PostgresOutbox::append(&mut first, &dup).await.unwrap();
    let second = {
        let pool = bus.pool().clone();
        let dup = dup.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            PostgresOutbox::append(&mut tx, &dup).await.unwrap();
            sqlx::query("INSERT INTO jobs VALUES ('j2', 'done')")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.commit().await.unwrap();
    second.await.unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(bus.pool())
        .await
        .unwrap();
    assert_eq!(jobs, 2, "the second transaction committed");

    // A rollback takes its events with it.
    let rolled_back = testkit::events("rollback", 1);
    let mut tx = bus.pool().begin().await.unwrap();
    PostgresOutbox::append(&mut tx, &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(drain(&bus, "reader", 1).await, vec![dup[0].id]);
    let more = bus
        .fetch("reader", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(more.is_empty(), "rolled back or duplicate event delivered");
}

#[tokio::test]
async fn prune_keeps_what_a_subscription_still_needs() {
    let Some(url) = database() else { return };
    let bus = outbox(&url).await;
    bus.subscribe("slow", SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(&testkit::events("p", 5)).await.unwrap();
    assert_eq!(bus.prune(Duration::ZERO).await.unwrap(), 0);
    let got = bus.fetch("slow", 3, Duration::ZERO).await.unwrap();
    bus.ack("slow", &[got[0].tag, got[1].tag]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The first two are acknowledged; the third is in flight, the rest not delivered.
    assert_eq!(bus.prune(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(
        bus.prune(Duration::from_secs(3600)).await.unwrap(),
        0,
        "too recent"
    );
    // A subscription that starts now needs none of the old ones.
    bus.subscribe("late", SubscribeOptions::default().start(StartFrom::New))
        .await
        .unwrap();
    bus.publish(&testkit::events("p", 1)).await.unwrap();
    assert_eq!(bus.head().await.unwrap(), 6, "sequence never reused");
    let rest = bus.fetch("slow", 10, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 3, "undelivered events survived the prune");
    assert_eq!(
        bus.fetch("late", 10, Duration::ZERO).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn require_reports_missing_migrations() {
    let Some(url) = database() else { return };
    let require = PostgresOutboxConfig::default().migrations(Migrations::Require);
    let err = PostgresOutbox::connect_with(&url, require.clone())
        .await
        .unwrap_err();
    match &err {
        Error::SchemaOutdated { missing, .. } => {
            assert_eq!(missing, &vec!["20261125000001_outbox".to_owned()]);
        }
        other => panic!("expected SchemaOutdated, got {other:?}"),
    }
    assert!(err.to_string().contains("20261125000001_outbox"), "{err}");
    assert!(!err.is_retryable());
    // Migrated by someone else: Require is satisfied.
    drop(outbox(&url).await);
    let bus = PostgresOutbox::connect_with(&url, require).await.unwrap();
    assert_eq!(bus.head().await.unwrap(), 0);
}

#[tokio::test]
async fn shares_a_database_with_another_crates_migrations() {
    let Some(url) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("20261125100001_tasks.sql"),
        "CREATE TABLE ops_tasks (id TEXT PRIMARY KEY NOT NULL, state TEXT NOT NULL);",
    )
    .unwrap();
    let mut tasks = Migrator::new(dir.path()).await.unwrap();
    tasks.set_ignore_missing(true);

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    tasks.run(&pool).await.unwrap();
    let bus = PostgresOutbox::from_pool(pool.clone()).await.unwrap();
    tasks.run(&pool).await.unwrap();
    drop(bus);
    let bus = outbox(&url).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(bus.pool())
            .await
            .unwrap();
    assert_eq!(versions, vec![20261125000001, 20261125100001]);
    bus.publish(&testkit::events("x", 1)).await.unwrap();
    assert_eq!(bus.head().await.unwrap(), 1);
}

/// No server needed: the URL in the error, never the password.
#[tokio::test]
async fn connect_errors_name_the_url_without_its_password() {
    let config = PostgresOutboxConfig::default().connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let err =
        PostgresOutbox::connect_with("postgres://ops:hunter2@127.0.0.1:1/ops", config.clone())
            .await
            .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match &err {
        Error::Connect { url, .. } => assert_eq!(url, "postgres://ops:***@127.0.0.1:1/ops"),
        other => panic!("expected Connect, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("postgres://ops:***@127.0.0.1:1/ops"),
        "{text}"
    );
    assert!(!text.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    assert!(err.is_retryable(), "the server may come up");

    let err = PostgresOutbox::connect_with("mysql://ops:hunter2@db.internal/ops", config)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("mysql://ops:***@db.internal/ops"), "{text}");
    assert!(
        text.contains("postgres://"),
        "says what is expected: {text}"
    );
    assert!(!text.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    assert!(!err.is_retryable());
}
