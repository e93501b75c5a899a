//! Event dispatch throughput to one trivially cheap function, with baselines.
//!
//! ```text
//! cargo bench -p ops-events --bench dispatch
//! cargo bench -p ops-events --bench dispatch -- --events 500000 --sqlite-events 200000
//! OPS_TEST_POSTGRES_URL=postgres://... cargo bench -p ops-events --all-features --bench dispatch
//! cargo bench -p ops-events --bench dispatch -- --quick
//! ```
//!
//! Prints a markdown table. Baselines: a plain Tokio mpsc channel carrying the same
//! events to the same function (for the in-memory bus), and raw batched SQLite
//! inserts of the same JSON (for the outbox). With the `postgres` feature and
//! `OPS_TEST_POSTGRES_URL` set, the same for the PostgreSQL outbox (`--pg-events`,
//! default 50,000) in a fresh database on that server, against raw batched
//! `INSERT … UNNEST` of the same JSON into a plain table there. With the `nats`
//! feature and `OPS_TEST_NATS_URL` set, `NatsBus` publish and dispatch (`--nats-events`,
//! default 100,000) against raw async-nats JetStream publish (acks awaited) and pull
//! consume (each message acked) of the same JSON. `--quick` divides every default size
//! by ten.
// A benchmark's output is its table.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ops_core::Event;
use ops_events::memory::InMemoryBus;
use ops_events::sqlite::SqliteOutbox;
use ops_events::{Dispatcher, DispatcherConfig, EventBus, Function, FunctionError, Trigger};
use tokio::sync::Notify;

/// Events per publish call / per transaction.
const PUBLISH_BATCH: usize = 1000;

/// Counts calls and signals when `target` is reached.
struct Count {
    calls: AtomicU64,
    target: u64,
    done: Notify,
}

impl Count {
    fn new(target: usize) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicU64::new(0),
            target: target as u64,
            done: Notify::new(),
        })
    }
}

#[async_trait]
impl Function for Count {
    fn name(&self) -> &str {
        "count"
    }

    async fn call(&self, event: &Event) -> Result<(), FunctionError> {
        std::hint::black_box(&event.id);
        if self.calls.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

struct Row {
    name: &'static str,
    events: usize,
    secs: f64,
    baseline: Option<usize>,
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::builder("ops.task.succeeded", "ops://bench")
                .subject(format!("task-{i}"))
                .tenant("acme")
                .json(serde_json::json!({ "exit_code": 0, "attempt": 1 }))
                .build()
        })
        .collect()
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn config() -> DispatcherConfig {
    DispatcherConfig::default()
        .batch_size(1024)
        .fetch_wait(Duration::from_millis(100))
}

async fn mpsc_baseline(evs: Vec<Event>) -> f64 {
    let n = evs.len();
    let count = Count::new(n);
    let f: Arc<dyn Function> = count.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(PUBLISH_BATCH);
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let _ = f.call(&e).await;
        }
    });
    for e in evs {
        if tx.send(e).await.is_err() {
            break;
        }
    }
    count.done.notified().await;
    let secs = start.elapsed().as_secs_f64();
    drop(tx);
    let _ = consumer.await;
    secs
}

async fn memory_dispatch(evs: &[Event]) -> f64 {
    let bus = InMemoryBus::new();
    let count = Count::new(evs.len());
    let dispatcher = Dispatcher::builder(bus.clone())
        .config(config())
        .route(Trigger::on("ops.task.*"), count.clone())
        .build()
        .expect("dispatcher");
    let running = dispatcher.start().await.expect("start");
    let start = Instant::now();
    for chunk in evs.chunks(PUBLISH_BATCH) {
        bus.publish(chunk).await.expect("publish");
    }
    count.done.notified().await;
    let secs = start.elapsed().as_secs_f64();
    running.shutdown().await;
    assert_eq!(dispatcher.stats().delivered, evs.len() as u64);
    secs
}

async fn sqlite_raw_inserts(path: &str, evs: &[Event]) -> f64 {
    let outbox = SqliteOutbox::open(path).await.expect("open");
    let pool = outbox.pool();
    sqlx::query("CREATE TABLE raw (id TEXT PRIMARY KEY NOT NULL, payload TEXT NOT NULL)")
        .execute(pool)
        .await
        .expect("create");
    let start = Instant::now();
    for chunk in evs.chunks(PUBLISH_BATCH) {
        let mut tx = pool.begin().await.expect("begin");
        for rows in chunk.chunks(200) {
            let mut sql = String::from("INSERT INTO raw (id, payload) VALUES ");
            sql.push_str(&vec!["(?,?)"; rows.len()].join(","));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in rows {
                q = q
                    .bind(e.id.to_string())
                    .bind(serde_json::to_string(e).expect("json"));
            }
            q.execute(&mut *tx).await.expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    start.elapsed().as_secs_f64()
}

async fn sqlite_append(outbox: &SqliteOutbox, evs: &[Event]) -> f64 {
    let start = Instant::now();
    for chunk in evs.chunks(PUBLISH_BATCH) {
        let mut tx = outbox.pool().begin().await.expect("begin");
        SqliteOutbox::append(&mut tx, chunk).await.expect("append");
        tx.commit().await.expect("commit");
    }
    outbox.notify();
    start.elapsed().as_secs_f64()
}

async fn sqlite_dispatch(outbox: &SqliteOutbox, n: usize) -> f64 {
    let count = Count::new(n);
    let dispatcher = Dispatcher::builder(outbox.clone())
        .config(config())
        .dead_letters(outbox.dead_letters())
        .route(Trigger::on("ops.task.*"), count.clone())
        .build()
        .expect("dispatcher");
    let start = Instant::now();
    let running = dispatcher.start().await.expect("start");
    count.done.notified().await;
    let secs = start.elapsed().as_secs_f64();
    running.shutdown().await;
    assert_eq!(dispatcher.stats().delivered, n as u64);
    secs
}

#[cfg(feature = "postgres")]
mod pg {
    //! The PostgreSQL outbox rows.
    use super::*;
    use ops_events::postgres::PostgresOutbox;

    /// A fresh database on the server of `admin_url`: (its URL, its name).
    fn database(admin_url: &str) -> (String, String) {
        let url = ops_testbed::create_database(admin_url);
        let name = url.rsplit('/').next().unwrap_or_default().to_owned();
        (url, name)
    }

    async fn raw_inserts(pool: &sqlx::PgPool, evs: &[Event]) -> f64 {
        sqlx::query("CREATE TABLE raw (id TEXT PRIMARY KEY NOT NULL, payload TEXT NOT NULL)")
            .execute(pool)
            .await
            .expect("create");
        let start = Instant::now();
        for chunk in evs.chunks(PUBLISH_BATCH) {
            let ids: Vec<String> = chunk.iter().map(|e| e.id.to_string()).collect();
            let payloads: Vec<String> = chunk
                .iter()
                .map(|e| serde_json::to_string(e).expect("json"))
                .collect();
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query(
                "INSERT INTO raw (id, payload) SELECT * FROM UNNEST($1::text[], $2::text[])",
            )
            .bind(ids)
            .bind(payloads)
            .execute(&mut *tx)
            .await
            .expect("insert");
            tx.commit().await.expect("commit");
        }
        start.elapsed().as_secs_f64()
    }

    async fn append(outbox: &PostgresOutbox, evs: &[Event]) -> f64 {
        let start = Instant::now();
        for chunk in evs.chunks(PUBLISH_BATCH) {
            let mut tx = outbox.pool().begin().await.expect("begin");
            PostgresOutbox::append(&mut tx, chunk)
                .await
                .expect("append");
            tx.commit().await.expect("commit");
        }
        outbox.notify();
        start.elapsed().as_secs_f64()
    }

    async fn dispatch(outbox: &PostgresOutbox, n: usize) -> f64 {
        let count = Count::new(n);
        let dispatcher = Dispatcher::builder(outbox.clone())
            .config(config())
            .dead_letters(outbox.dead_letters())
            .route(Trigger::on("ops.task.*"), count.clone())
            .build()
            .expect("dispatcher");
        let start = Instant::now();
        let running = dispatcher.start().await.expect("start");
        count.done.notified().await;
        let secs = start.elapsed().as_secs_f64();
        running.shutdown().await;
        assert_eq!(dispatcher.stats().delivered, n as u64);
        secs
    }

    /// Appends the PostgreSQL rows to `rows`, or says why not.
    pub(super) async fn rows(n: usize, rows: &mut Vec<Row>) {
        let Ok(admin) = std::env::var("OPS_TEST_POSTGRES_URL") else {
            eprintln!("skipping the PostgreSQL outbox: OPS_TEST_POSTGRES_URL is not set");
            return;
        };
        let evs = events(n);
        let (raw_url, raw_db) = database(&admin);
        let pool = sqlx::PgPool::connect(&raw_url).await.expect("connect");
        let secs = raw_inserts(&pool, &evs).await;
        pool.close().await;
        let base = rows.len();
        rows.push(Row {
            name: "Postgres raw batched INSERT (baseline)",
            events: n,
            secs,
            baseline: None,
        });
        let (url, db) = database(&admin);
        let outbox = PostgresOutbox::connect(&url).await.expect("connect");
        let secs = append(&outbox, &evs).await;
        rows.push(Row {
            name: "PostgresOutbox::append (1000/tx)",
            events: n,
            secs,
            baseline: Some(base),
        });
        let secs = dispatch(&outbox, n).await;
        rows.push(Row {
            name: "PostgresOutbox: dispatch (fetch+call+ack)",
            events: n,
            secs,
            baseline: Some(base),
        });
        outbox.pool().close().await;
        drop(outbox);
        let admin_pool = sqlx::PgPool::connect(&admin).await.expect("connect");
        for name in [raw_db, db] {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&admin_pool)
                .await
            {
                eprintln!("could not drop bench database {name}: {e}");
            }
        }
    }
}

#[cfg(feature = "nats")]
mod nats {
    //! The NATS JetStream rows.
    use async_nats::jetstream::{self, consumer, message::PublishMessage};
    use futures::StreamExt;
    use ops_events::nats::{NatsBus, NatsBusConfig};

    use super::*;

    /// Publishes in flight at once in the raw baseline (as `NatsBus` does).
    const WINDOW: usize = 4096;

    /// Raw async-nats: publish every event (acks awaited), then pull them with one
    /// durable consumer, acking each. Returns (publish, consume) seconds.
    async fn raw(js: &jetstream::Context, stream: &str, evs: &[Event]) -> (f64, f64) {
        let prefix = stream.to_lowercase();
        js.create_stream(jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create stream");
        let messages: Vec<(String, bytes::Bytes, String)> = evs
            .iter()
            .map(|e| {
                (
                    format!("{prefix}.{}", e.ty),
                    serde_json::to_vec(e).expect("json").into(),
                    e.id.to_string(),
                )
            })
            .collect();

        let start = Instant::now();
        let mut acks = futures::stream::FuturesUnordered::new();
        for (subject, payload, id) in &messages {
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(id);
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .expect("publish");
            acks.push(ack.into_future());
            if acks.len() >= WINDOW {
                acks.next().await.expect("ack").expect("ack");
            }
        }
        while let Some(ack) = acks.next().await {
            ack.expect("ack");
        }
        let publish = start.elapsed().as_secs_f64();

        let consumer: consumer::PullConsumer = js
            .get_stream(stream)
            .await
            .expect("stream")
            .create_consumer(consumer::pull::Config {
                durable_name: Some("raw".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let start = Instant::now();
        let mut stream = consumer
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await
            .expect("messages");
        for _ in 0..evs.len() {
            let message = stream.next().await.expect("message").expect("message");
            std::hint::black_box(&message.payload);
            message.ack().await.expect("ack");
        }
        (publish, start.elapsed().as_secs_f64())
    }

    /// NatsBus: publish every event (1000 per call), then run a Dispatcher to one
    /// counting function until all are handled. Returns (publish, dispatch) seconds.
    async fn bus(url: &str, stream: &str, evs: &[Event]) -> (f64, f64) {
        let settings = NatsBusConfig::default()
            .stream(stream)
            .subject_prefix(stream.to_lowercase());
        let bus = NatsBus::connect_with(url, settings).await.expect("connect");
        let start = Instant::now();
        for chunk in evs.chunks(PUBLISH_BATCH) {
            bus.publish(chunk).await.expect("publish");
        }
        let publish = start.elapsed().as_secs_f64();

        let count = Count::new(evs.len());
        let dispatcher = Dispatcher::builder(bus.clone())
            .config(config())
            .route(Trigger::on("ops.task.*"), count.clone())
            .build()
            .expect("dispatcher");
        let start = Instant::now();
        let running = dispatcher.start().await.expect("start");
        count.done.notified().await;
        let dispatch = start.elapsed().as_secs_f64();
        running.shutdown().await;
        assert_eq!(dispatcher.stats().delivered, evs.len() as u64);
        (publish, dispatch)
    }

    /// Appends the NATS rows to `rows`, or says why not.
    pub(super) async fn rows(n: usize, rows: &mut Vec<Row>) {
        let Some(url) = std::env::var("OPS_TEST_NATS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipping NATS: OPS_TEST_NATS_URL is not set");
            return;
        };
        let evs = events(n);
        let client = async_nats::connect(url.as_str()).await.expect("connect");
        let js = jetstream::new(client);
        let tag = ops_testbed::unique_name("BENCH");
        let (raw_stream, bus_stream) = (format!("{tag}_RAW"), format!("{tag}_BUS"));

        let (publish, consume) = raw(&js, &raw_stream, &evs).await;
        let base = rows.len();
        rows.push(Row {
            name: "NATS raw JetStream publish, acks awaited (baseline)",
            events: n,
            secs: publish,
            baseline: None,
        });
        rows.push(Row {
            name: "NATS raw pull consume + ack (baseline)",
            events: n,
            secs: consume,
            baseline: None,
        });
        let (publish, dispatch) = bus(&url, &bus_stream, &evs).await;
        rows.push(Row {
            name: "NatsBus::publish (1000/call)",
            events: n,
            secs: publish,
            baseline: Some(base),
        });
        rows.push(Row {
            name: "NatsBus: dispatch (fetch+call+ack)",
            events: n,
            secs: dispatch,
            baseline: Some(base + 1),
        });
        for stream in [raw_stream, bus_stream] {
            if let Err(e) = js.delete_stream(&stream).await {
                eprintln!("could not delete bench stream {stream}: {e}");
            }
        }
    }
}

fn main() {
    let quick = flag("--quick");
    let scale = |n: usize| if quick { n / 10 } else { n };
    let mem_n = arg("--events").unwrap_or(scale(200_000));
    let sql_n = arg("--sqlite-events")
        .or(arg("--events").map(|n| n / 2))
        .unwrap_or(scale(100_000));
    let pg_n = arg("--pg-events").unwrap_or(scale(50_000));
    let nats_n = arg("--nats-events").unwrap_or(scale(100_000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        let mem_events = events(mem_n);
        let secs = mpsc_baseline(mem_events.clone()).await;
        rows.push(Row {
            name: "tokio mpsc channel (baseline)",
            events: mem_n,
            secs,
            baseline: None,
        });
        let secs = memory_dispatch(&mem_events).await;
        rows.push(Row {
            name: "InMemoryBus: publish + dispatch",
            events: mem_n,
            secs,
            baseline: Some(0),
        });
        drop(mem_events);

        let sql_events = events(sql_n);
        let raw = dir.path().join("raw.db");
        let secs = sqlite_raw_inserts(raw.to_str().expect("path"), &sql_events).await;
        rows.push(Row {
            name: "SQLite raw batched INSERT (baseline)",
            events: sql_n,
            secs,
            baseline: None,
        });
        let path = dir.path().join("outbox.db");
        let outbox = SqliteOutbox::open(path.to_str().expect("path"))
            .await
            .expect("open");
        let secs = sqlite_append(&outbox, &sql_events).await;
        rows.push(Row {
            name: "SqliteOutbox::append (1000/tx)",
            events: sql_n,
            secs,
            baseline: Some(2),
        });
        let secs = sqlite_dispatch(&outbox, sql_n).await;
        rows.push(Row {
            name: "SqliteOutbox: dispatch (fetch+call+ack)",
            events: sql_n,
            secs,
            baseline: Some(2),
        });
        drop(sql_events);

        #[cfg(feature = "postgres")]
        pg::rows(pg_n, &mut rows).await;
        #[cfg(not(feature = "postgres"))]
        {
            let _ = pg_n;
            eprintln!("skipping the PostgreSQL outbox: built without the `postgres` feature");
        }
        #[cfg(feature = "nats")]
        nats::rows(nats_n, &mut rows).await;
        #[cfg(not(feature = "nats"))]
        {
            let _ = nats_n;
            eprintln!("skipping NATS: built without the `nats` feature");
        }
        rows
    });

    println!("| name | events | seconds | events/s | vs baseline |");
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        let rate = row.events as f64 / row.secs;
        let ratio = match row.baseline {
            Some(b) => {
                let base = rows[b].events as f64 / rows[b].secs;
                format!("{:.2}x", rate / base)
            }
            None => "1.00x".to_owned(),
        };
        println!(
            "| {} | {} | {:.3} | {:.0} | {} |",
            row.name, row.events, row.secs, rate, ratio
        );
    }
}
