//! Event dispatch throughput to one trivially cheap function, with baselines.
//!
//! ```text
//! cargo bench -p ops-events --bench dispatch
//! cargo bench -p ops-events --bench dispatch -- --events 500000 --sqlite-events 200000
//! ```
//!
//! Prints a markdown table. Baselines: a plain Tokio mpsc channel carrying the same
//! events to the same function (for the in-memory bus), and raw batched SQLite
//! inserts of the same JSON (for the outbox).
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

fn main() {
    let mem_n = arg("--events").unwrap_or(200_000);
    let sql_n = arg("--sqlite-events")
        .or(arg("--events").map(|n| n / 2))
        .unwrap_or(100_000);
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
