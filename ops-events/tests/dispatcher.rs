//! The dispatcher over both buses: delivery, filtering, retries, dead letters,
//! replay, shutdown and restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_core::{Event, EventId};
use ops_events::memory::InMemoryBus;
use ops_events::sqlite::SqliteOutbox;
use ops_events::{
    DeadLetters, Dispatcher, DispatcherConfig, Error, EventBus, FunctionError, InMemoryDeadLetters,
    RetryPolicy, Trigger, function_fn,
};

/// Waits (generously) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn fast_config() -> DispatcherConfig {
    DispatcherConfig::default()
        .fetch_wait(Duration::from_millis(200))
        .retry(
            RetryPolicy::default()
                .initial(Duration::from_millis(10))
                .multiplier(2.0)
                .max(Duration::from_millis(40))
                .max_attempts(3),
        )
}

fn task_event(ty: &str, subject: &str, tenant: &str) -> Event {
    Event::builder(ty, "ops://test")
        .subject(subject)
        .tenant(tenant)
        .build()
}

async fn sqlite_bus(dir: &tempfile::TempDir, name: &str) -> SqliteOutbox {
    SqliteOutbox::open(dir.path().join(name).to_str().unwrap())
        .await
        .unwrap()
}

/// Records which events a function saw, and how often.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<EventId, usize>>>);

impl Seen {
    fn add(&self, id: EventId) {
        *self.0.lock().unwrap().entry(id).or_default() += 1;
    }
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn count(&self, id: EventId) -> usize {
        self.0.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

async fn delivers_and_filters(bus: impl EventBus + Clone) {
    let seen = Seen::default();
    let s = seen.clone();
    let dispatcher = Dispatcher::builder(bus.clone())
        .config(fast_config())
        .route(
            Trigger::on("ops.task.*").tenant(&ops_core::Tenant::parse("acme").unwrap()),
            function_fn("acme-tasks", move |e| {
                let s = s.clone();
                async move {
                    s.add(e.id);
                    Ok(())
                }
            }),
        )
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    let wanted = [
        task_event("ops.task.started", "t1", "acme"),
        task_event("ops.task.output.created", "t1", "acme"),
    ];
    let others = [
        task_event("ops.task.started", "t2", "globex"),
        task_event("ops.storage.object.created", "o1", "acme"),
    ];
    bus.publish(&[
        wanted[0].clone(),
        others[0].clone(),
        others[1].clone(),
        wanted[1].clone(),
    ])
    .await
    .unwrap();
    eventually("delivery", || {
        let s = dispatcher.stats();
        s.delivered == 2 && s.skipped == 2
    })
    .await;
    running.shutdown().await;
    assert_eq!(seen.distinct(), 2);
    assert!(wanted.iter().all(|e| seen.count(e.id) == 1));
    assert_eq!(
        bus.pending("acme-tasks").await.unwrap(),
        0,
        "everything acknowledged"
    );
    let stats = dispatcher.function_stats("acme-tasks").unwrap();
    assert_eq!(
        (stats.failed, stats.retried, stats.dead_lettered),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn memory_delivers_and_filters() {
    delivers_and_filters(InMemoryBus::new()).await;
}

#[tokio::test]
async fn sqlite_delivers_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    delivers_and_filters(sqlite_bus(&dir, "filters.db").await).await;
}

async fn retries_then_succeeds(bus: impl EventBus + Clone) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let dispatcher = Dispatcher::builder(bus.clone())
        .config(fast_config())
        .route(
            Trigger::any(),
            function_fn("flaky", move |_| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(FunctionError::retryable("not yet"))
                    } else {
                        Ok(())
                    }
                }
            }),
        )
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    bus.publish(&[task_event("ops.task.started", "t1", "acme")])
        .await
        .unwrap();
    eventually("success after retries", || {
        dispatcher.stats().delivered == 1
    })
    .await;
    running.shutdown().await;
    let s = dispatcher.stats();
    assert_eq!((s.failed, s.retried, s.dead_lettered), (2, 2, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(dispatcher.dead_letters().count(None).await.unwrap(), 0);
}

#[tokio::test]
async fn memory_retries_then_succeeds() {
    retries_then_succeeds(InMemoryBus::new()).await;
}

#[tokio::test]
async fn sqlite_retries_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    retries_then_succeeds(sqlite_bus(&dir, "retries.db").await).await;
}

async fn dead_letters_and_replay(bus: impl EventBus + Clone, store: impl DeadLetters) {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let dispatcher = Dispatcher::builder(bus.clone())
        .config(fast_config())
        .dead_letters(store)
        .route(
            Trigger::on("ops.task.failed"),
            function_fn("pager", move |e| {
                let h = h.clone();
                async move {
                    if e.subject.as_deref() == Some("bad-input") {
                        return Err(FunctionError::permanent("cannot page about bad input"));
                    }
                    if h.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err(FunctionError::retryable("pager service down"))
                    }
                }
            }),
        )
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    let down = task_event("ops.task.failed", "t1", "acme");
    let bad = task_event("ops.task.failed", "bad-input", "acme");
    bus.publish(&[down.clone(), bad.clone()]).await.unwrap();
    eventually("dead letters", || dispatcher.stats().dead_lettered == 2).await;
    let s = dispatcher.stats();
    assert_eq!(s.failed, 4, "3 attempts + 1 permanent failure");
    assert_eq!(s.retried, 2);
    // The counter moves when the letter is kept; its acknowledgement follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bus.pending("pager").await.unwrap() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters are acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let letters = dispatcher.dead_letters();
    let l = letters.get("pager", down.id).await.unwrap().expect("kept");
    assert_eq!(l.event, down, "event kept whole");
    assert_eq!((l.attempts, l.permanent), (3, false));
    assert!(l.error.contains("pager service down"), "{}", l.error);
    let p = letters.get("pager", bad.id).await.unwrap().expect("kept");
    assert_eq!((p.attempts, p.permanent), (1, true));

    // Still down: replay fails, the letter stays with one more attempt.
    let err = dispatcher.replay("pager", down.id).await.unwrap_err();
    assert!(matches!(err, Error::Function { .. }), "{err}");
    assert!(err.is_retryable());
    let l = letters.get("pager", down.id).await.unwrap().unwrap();
    assert_eq!(l.attempts, 4);

    // Fixed: replay everything; the permanent one still fails.
    healthy.store(true, Ordering::SeqCst);
    let report = dispatcher.replay_all(Some("pager")).await.unwrap();
    assert_eq!((report.replayed, report.failed), (1, 1));
    assert!(letters.get("pager", down.id).await.unwrap().is_none());
    assert_eq!(letters.count(None).await.unwrap(), 1);
    assert_eq!(dispatcher.stats().replayed, 1);

    let missing = dispatcher.replay("pager", down.id).await.unwrap_err();
    assert!(
        matches!(missing, Error::UnknownDeadLetter { .. }),
        "{missing}"
    );
    let unknown = dispatcher.replay("nobody", down.id).await.unwrap_err();
    assert!(
        matches!(unknown, Error::UnknownFunction { .. }),
        "{unknown}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn memory_dead_letters_and_replay() {
    dead_letters_and_replay(InMemoryBus::new(), InMemoryDeadLetters::new()).await;
}

#[tokio::test]
async fn sqlite_dead_letters_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = sqlite_bus(&dir, "dead.db").await;
    let store = outbox.dead_letters();
    dead_letters_and_replay(outbox, store).await;
}

#[tokio::test]
async fn panics_and_timeouts_are_retried_then_dead_lettered() {
    let bus = InMemoryBus::new();
    let dispatcher = Dispatcher::builder(bus.clone())
        .config(fast_config().call_timeout(Some(Duration::from_millis(50))))
        .route(
            Trigger::on("panic"),
            function_fn("panics", |_| async { panic!("handler bug") }),
        )
        .route(
            Trigger::on("slow"),
            function_fn("sleeps", |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    let p = Event::builder("panic", "ops://test").build();
    let s = Event::builder("slow", "ops://test").build();
    bus.publish(&[p.clone(), s.clone()]).await.unwrap();
    eventually("both dead-lettered", || {
        dispatcher.stats().dead_lettered == 2
    })
    .await;
    let letters = dispatcher.dead_letters();
    let lp = letters.get("panics", p.id).await.unwrap().unwrap();
    assert!(lp.error.contains("panicked: handler bug"), "{}", lp.error);
    assert_eq!(lp.attempts, 3);
    let ls = letters.get("sleeps", s.id).await.unwrap().unwrap();
    assert!(ls.error.contains("timed out"), "{}", ls.error);
    // The worker survived the panics.
    bus.publish(&[Event::builder("panic", "ops://test").build()])
        .await
        .unwrap();
    eventually("third dead letter", || {
        dispatcher.stats().dead_lettered == 3
    })
    .await;
    running.shutdown().await;
}

#[tokio::test]
async fn builder_rejects_bad_setup() {
    let ok = || function_fn("f", |_| async { Ok(()) });
    let dup = Dispatcher::builder(InMemoryBus::new())
        .route(Trigger::any(), ok())
        .route(Trigger::on("x"), ok())
        .build()
        .unwrap_err();
    assert!(matches!(dup, Error::DuplicateFunction { .. }), "{dup}");
    let pattern = Dispatcher::builder(InMemoryBus::new())
        .route(Trigger::on("ops.*.failed"), ok())
        .build()
        .unwrap_err();
    assert!(matches!(pattern, Error::Invalid { .. }), "{pattern}");
    let name = Dispatcher::builder(InMemoryBus::new())
        .route(
            Trigger::any(),
            function_fn("has space", |_| async { Ok(()) }),
        )
        .build()
        .unwrap_err();
    assert!(
        matches!(
            name,
            Error::Invalid {
                what: "function name",
                ..
            }
        ),
        "{name}"
    );
    let none = Dispatcher::builder(InMemoryBus::new())
        .route_all([], ok())
        .build()
        .unwrap_err();
    assert!(none.to_string().contains("at least one trigger"), "{none}");
    let retry = Dispatcher::builder(InMemoryBus::new())
        .retry(RetryPolicy::default().max_attempts(0))
        .build()
        .unwrap_err();
    assert!(matches!(retry, Error::Invalid { .. }));

    let d = Dispatcher::builder(InMemoryBus::new())
        .route(Trigger::any(), ok())
        .build()
        .unwrap();
    let running = d.start().await.unwrap();
    assert!(matches!(d.start().await, Err(Error::AlreadyRunning)));
    assert!(d.function_stats("nope").is_err());
    running.shutdown().await;
}

#[tokio::test]
async fn concurrent_calls_per_function() {
    let bus = InMemoryBus::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (i, p) = (in_flight.clone(), peak.clone());
    let dispatcher = Dispatcher::builder(bus.clone())
        .config(fast_config().concurrency(8))
        .route(
            Trigger::any(),
            function_fn("parallel", move |_| {
                let (i, p) = (i.clone(), p.clone());
                async move {
                    let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    i.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    bus.publish(&testkit_events(32)).await.unwrap();
    eventually("all delivered", || dispatcher.stats().delivered == 32).await;
    running.shutdown().await;
    assert!(peak.load(Ordering::SeqCst) > 1, "calls overlapped");
    assert!(peak.load(Ordering::SeqCst) <= 8, "concurrency respected");
}

fn testkit_events(n: usize) -> Vec<Event> {
    ops_events::testkit::events("dispatch", n)
}

/// Shutdown mid-batch gives the rest back; a restarted dispatcher (on a reopened
/// database) handles them; nothing is lost and acknowledged events are not redone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_shutdown_and_restart_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let make = |seen: Seen| {
        function_fn("slow-consumer", move |e| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                seen.add(e.id);
                Ok(())
            }
        })
    };
    let evs = testkit_events(60);
    {
        let outbox = sqlite_bus(&dir, "restart.db").await;
        let dispatcher = Dispatcher::builder(outbox.clone())
            .config(fast_config().batch_size(50))
            .dead_letters(outbox.dead_letters())
            .route(Trigger::any(), make(seen.clone()))
            .build()
            .unwrap();
        let running = dispatcher.start().await.unwrap();
        outbox.publish(&evs).await.unwrap();
        eventually("some handled", || seen.distinct() >= 10).await;
        running.shutdown().await;
        let handled = seen.distinct();
        assert!(
            handled < 60,
            "shutdown came too late to test anything ({handled})"
        );
    }
    let outbox = sqlite_bus(&dir, "restart.db").await;
    let dispatcher = Dispatcher::builder(outbox.clone())
        .config(fast_config().batch_size(50))
        .route(Trigger::any(), make(seen.clone()))
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    // Released deliveries are due at once; no ack_wait to sit out.
    eventually("all handled after restart", || seen.distinct() == 60).await;
    running.shutdown().await;
    for e in &evs {
        assert_eq!(
            seen.count(e.id),
            1,
            "event handled exactly once across a graceful restart"
        );
    }
    assert_eq!(outbox.pending("slow-consumer").await.unwrap(), 0);
}

/// The outbox pattern end to end: state and events in one transaction; a rollback
/// publishes nothing; a commit + notify is dispatched.
#[tokio::test]
async fn sqlite_transactional_append_is_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = sqlite_bus(&dir, "tx.db").await;
    sqlx::query("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL)")
        .execute(outbox.pool())
        .await
        .unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let dispatcher = Dispatcher::builder(outbox.clone())
        .config(fast_config().fetch_wait(Duration::from_secs(30)))
        .route(
            Trigger::on("acme.job.*"),
            function_fn("jobs", move |e| {
                let s = s.clone();
                async move {
                    s.add(e.id);
                    Ok(())
                }
            }),
        )
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();

    let rolled_back = Event::builder("acme.job.done", "ops://t")
        .subject("j0")
        .build();
    let mut tx = outbox.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO jobs VALUES ('j0', 'done')")
        .execute(&mut *tx)
        .await
        .unwrap();
    SqliteOutbox::append(&mut tx, std::slice::from_ref(&rolled_back))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let committed = Event::builder("acme.job.done", "ops://t")
        .subject("j1")
        .build();
    let mut tx = outbox.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO jobs VALUES ('j1', 'done')")
        .execute(&mut *tx)
        .await
        .unwrap();
    SqliteOutbox::append(&mut tx, std::slice::from_ref(&committed))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    outbox.notify();

    eventually("committed event dispatched", || {
        seen.count(committed.id) == 1
    })
    .await;
    running.shutdown().await;
    assert_eq!(
        seen.count(rolled_back.id),
        0,
        "rolled back event never seen"
    );
    assert_eq!(outbox.head().await.unwrap(), 1);
}

/// The same dispatcher checks on the PostgreSQL outbox (needs `OPS_TEST_POSTGRES_URL`).
#[cfg(feature = "postgres")]
mod postgres {
    use ops_events::postgres::PostgresOutbox;

    use super::*;

    async fn postgres_bus() -> Option<PostgresOutbox> {
        let url = ops_testbed::postgres_database()?;
        Some(PostgresOutbox::connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn postgres_delivers_and_filters() {
        let Some(bus) = postgres_bus().await else {
            return;
        };
        delivers_and_filters(bus).await;
    }

    #[tokio::test]
    async fn postgres_retries_then_succeeds() {
        let Some(bus) = postgres_bus().await else {
            return;
        };
        retries_then_succeeds(bus).await;
    }

    #[tokio::test]
    async fn postgres_dead_letters_and_replay() {
        let Some(outbox) = postgres_bus().await else {
            return;
        };
        let store = outbox.dead_letters();
        dead_letters_and_replay(outbox, store).await;
    }

    /// Dead letters outlive the process: a new connection sees and replays them.
    #[tokio::test]
    async fn postgres_dead_letters_survive_a_restart() {
        let Some(url) = ops_testbed::postgres_database() else {
            return;
        };
        let event = task_event("ops.task.failed", "t1", "acme");
        {
            let outbox = PostgresOutbox::connect(&url).await.unwrap();
            let dispatcher = Dispatcher::builder(outbox.clone())
                .config(fast_config())
                .dead_letters(outbox.dead_letters())
                .route(
                    Trigger::any(),
                    function_fn("pager", |_| async {
                        Err(FunctionError::permanent("no pager"))
                    }),
                )
                .build()
                .unwrap();
            let running = dispatcher.start().await.unwrap();
            outbox.publish(std::slice::from_ref(&event)).await.unwrap();
            eventually("dead letter", || dispatcher.stats().dead_lettered == 1).await;
            running.shutdown().await;
        }
        let outbox = PostgresOutbox::connect(&url).await.unwrap();
        let seen = Seen::default();
        let s = seen.clone();
        let dispatcher = Dispatcher::builder(outbox.clone())
            .config(fast_config())
            .dead_letters(outbox.dead_letters())
            .route(
                Trigger::any(),
                function_fn("pager", move |e| {
                    let s = s.clone();
                    async move {
                        s.add(e.id);
                        Ok(())
                    }
                }),
            )
            .build()
            .unwrap();
        let letter = outbox
            .dead_letters()
            .get("pager", event.id)
            .await
            .unwrap()
            .expect("kept across the restart");
        assert!(letter.permanent && letter.event == event);
        dispatcher.replay("pager", event.id).await.unwrap();
        assert_eq!(seen.count(event.id), 1);
        assert_eq!(outbox.dead_letters().count(None).await.unwrap(), 0);
    }
}
