//! Billing at volume: rating task usage into the ledger, invoices for many tenants,
//! reservations at admission, and admission throughput with the budget gate — each
//! against a baseline run in the same process.
//!
//! ```text
//! cargo bench -p ops --all-features --bench billing              # 1,000,000 events
//! cargo bench -p ops --all-features --bench billing -- --quick   # 100,000 events
//! cargo bench -p ops --all-features --bench billing -- --only rating,reservation
//! ```
//!
//! - `rating`: task final events (1 core, 1 GiB, 30 s CPU, 60 s wall) through
//!   `BillingFunction::handle_many` in batches of 5,000 into a SQLite ledger on disk:
//!   usage records stored once, each task settled (revenue and the tenant's credit).
//!   Baseline: a raw multi-row INSERT of one row per event in batches of the same size.
//!   On PostgreSQL too when `OPS_TEST_POSTGRES_URL` is set (scripts/bench sets it).
//! - `invoices`: an invoice for every tenant of the rated ledger (10,000 tenants of 100
//!   tasks in the full run), read from the ledger's usage records, with
//!   `invoice::invoices` four tenants at a time; baseline: one tenant at a time.
//! - `reservation`: `Budgets::reserve` one at a time on SQLite, p50 and p99; and
//!   `reserve_many` for admission passes of 100.
//! - `admission`: tasks submitted to a platform on the simulation executor, from submit
//!   to all succeeded, with billing (a hold at admission, settlement on the bus) and
//!   without; after a warm-up, each twice, interleaved, the faster run counting.
// A benchmark's output is its table.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use ops::billing::ledger::{Ledger, SqliteLedger};
use ops::billing::{
    BillingFunction, Budgets, HoldRequest, Metering, Money, PriceBook, Reservation, UsageStore,
};
use ops::core::{Event, Resources, TaskEventData, TaskId, TaskStatus, Tenant, Usage, event_types};

const BOOK: &str = r#"
currency = "EUR"
[[prices]]
meter = "cpu_core_seconds"
unit_price = "0.0002"
[[prices]]
meter = "memory_gib_seconds"
unit_price = "0.000002"
[[prices]]
meter = "tasks"
unit_price = "0.01"
"#;

const BATCH: usize = 5000;

struct Args {
    events: usize,
    tenants: usize,
    quick: bool,
    /// Only these parts (`--only rating,reservation`): rating (with invoices),
    /// postgres, reservation, admission.
    only: Option<String>,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|p| p == part))
    }
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let events = value("--events").unwrap_or(if quick { 100_000 } else { 1_000_000 });
    Args {
        events,
        tenants: value("--tenants").unwrap_or(events / 100).max(1),
        quick,
        only: argv
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| argv.get(i + 1))
            .cloned(),
    }
}

fn period() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
    )
}

fn tenant_name(i: usize) -> String {
    format!("tenant-{i:05}")
}

/// The `n`-th task's final event: tenants in turn, spread over November.
fn final_event(n: usize, tenants: usize) -> Event {
    let tenant = tenant_name(n % tenants);
    let mut data = TaskEventData::new(
        TaskId::new(),
        &tenant,
        "production",
        "render",
        TaskStatus::Succeeded,
        1,
    );
    data.usage = Some(Usage::new(
        Duration::from_secs(60),
        Duration::from_secs(30),
        1 << 30,
        0,
    ));
    data.resources = Some(Resources::new(1000, 1 << 30));
    let mut event = Event::builder(event_types::TASK_SUCCEEDED, "/tasks")
        .tenant(&tenant)
        .data(&data)
        .expect("event data")
        .build();
    event.time = period().0 + chrono::Duration::seconds((n % (29 * 86_400)) as i64);
    event
}

fn per_sec(n: usize, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64()
}

fn human(rate: f64) -> String {
    let r = rate.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn book() -> Arc<PriceBook> {
    Arc::new(PriceBook::parse(BOOK).expect("price book"))
}

/// Rates `events` task events through `function`, in batches; returns the time spent
/// in `handle_many` (making the events is not counted).
async fn rate(function: &BillingFunction, events: usize, tenants: usize) -> Duration {
    timed_batches(events, tenants, async |done, batch| {
        let results = function.handle_many(&batch).await.expect("rating");
        assert!(results.iter().all(|r| r.is_ok()), "every event rated");
        if done == 0 {
            let revenue = ops::billing::ledger::Account::platform("revenue").expect("account");
            let eur = "EUR".parse().expect("EUR");
            let earned = function
                .budgets()
                .ledger()
                .balance(&revenue, eur)
                .await
                .expect("balance");
            assert!(earned.amount > 0, "tasks are charged: {earned}");
        }
        if (done + batch.len()) % 200_000 == 0 {
            eprintln!("  rated {} events", done + batch.len());
        }
    })
    .await
}

/// Makes `events` task events in batches and times `write` on each (making them is not
/// timed); `write` gets the index of the batch's first event.
async fn timed_batches(
    events: usize,
    tenants: usize,
    mut write: impl AsyncFnMut(usize, Vec<Event>),
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut done = 0;
    while done < events {
        let n = BATCH.min(events - done);
        let batch: Vec<Event> = (done..done + n).map(|i| final_event(i, tenants)).collect();
        let t = Instant::now();
        write(done, batch).await;
        spent += t.elapsed();
        done += n;
    }
    spent
}

/// The baseline's table, and one batch of it: one row per event, multi-row INSERTs in
/// one transaction.
const RAW_TABLE: &str = "CREATE TABLE raw (event_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, \
     quantity TEXT NOT NULL, at BIGINT NOT NULL)";

async fn raw_batch<DB>(pool: &sqlx::Pool<DB>, batch: &[Event])
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    let mut tx = pool.begin().await.expect("begin");
    for chunk in batch.chunks(1000) {
        let mut q: sqlx::QueryBuilder<DB> =
            sqlx::QueryBuilder::new("INSERT INTO raw (event_id, tenant, quantity, at) ");
        q.push_values(chunk, |mut row, e| {
            row.push_bind(e.id.to_string())
                .push_bind(e.extension("tenant").unwrap_or_default().to_owned())
                .push_bind("30")
                .push_bind(e.time.timestamp_millis());
        });
        q.build().execute(&mut *tx).await.expect("insert");
    }
    tx.commit().await.expect("commit");
}

/// The baseline on SQLite.
async fn raw_sqlite(path: &str, events: usize, tenants: usize) -> Duration {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            path.parse::<sqlx::sqlite::SqliteConnectOptions>()
                .expect("url")
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal),
        )
        .await
        .expect("sqlite");
    sqlx::query(RAW_TABLE).execute(&pool).await.expect("table");
    timed_batches(events, tenants, async |_, batch| {
        raw_batch(&pool, &batch).await
    })
    .await
}

/// The baseline on PostgreSQL.
#[cfg(feature = "postgres")]
async fn raw_postgres(url: &str, events: usize, tenants: usize) -> Duration {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("postgres");
    sqlx::query(RAW_TABLE).execute(&pool).await.expect("table");
    timed_batches(events, tenants, async |_, batch| {
        raw_batch(&pool, &batch).await
    })
    .await
}

fn function_on<L: Ledger + UsageStore + Clone>(ledger: L) -> BillingFunction {
    let book = book();
    BillingFunction::new(
        Metering::new((*book).clone()),
        Arc::new(ledger.clone()),
        Budgets::new(Arc::new(ledger), book),
    )
}

struct Row {
    name: String,
    figure: String,
    baseline: String,
    ratio: String,
    target: String,
}

fn print(rows: &[Row]) {
    println!("| measure | figure | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.figure, r.baseline, r.ratio, r.target
        );
    }
    println!();
}

async fn rating_and_invoices(a: &Args, dir: &std::path::Path, rows: &mut Vec<Row>) {
    eprintln!("rating {} events into SQLite", a.events);
    let ledger = SqliteLedger::open(&format!("sqlite://{}/ledger.db", dir.display()))
        .await
        .expect("ledger");
    let function = function_on(ledger.clone());
    let rated = rate(&function, a.events, a.tenants).await;
    let raw = raw_sqlite(
        &format!("sqlite://{}/raw.db", dir.display()),
        a.events,
        a.tenants,
    )
    .await;
    let rate_s = per_sec(a.events, rated);
    let raw_s = per_sec(a.events, raw);
    rows.push(Row {
        name: format!("rating into the SQLite ledger ({} events)", a.events),
        figure: format!("{} events/s", human(rate_s)),
        baseline: format!("{} rows/s (raw INSERT)", human(raw_s)),
        ratio: format!("{:.2}×", rate_s / raw_s),
        target: format!(
            "≥ 100,000 events/s: {}",
            if rate_s >= 100_000.0 { "met" } else { "missed" }
        ),
    });
    let audit = ledger.audit().await.expect("audit");
    assert!(audit.is_empty(), "{audit:?}");

    eprintln!("invoicing {} tenants, one at a time", a.tenants);
    let metering = Metering::new((*book()).clone());
    let (from, to) = period();
    let (now, grace) = (to + chrono::Duration::days(2), chrono::Duration::days(1));
    let t = Instant::now();
    let mut reading = Duration::ZERO;
    for i in 0..a.tenants {
        let tenant = tenant_name(i);
        let r = Instant::now();
        let records = ledger.records(&tenant, from, to).await.expect("records");
        reading += r.elapsed();
        ops::billing::invoice::invoice(&metering, &tenant, &records, from, to, now, grace)
            .expect("invoice");
    }
    let one_at_a_time = t.elapsed();
    eprintln!(
        "  {:.2} s reading usage records, {:.2} s building invoices",
        reading.as_secs_f64(),
        (one_at_a_time - reading).as_secs_f64()
    );
    let concurrency = 4;
    eprintln!("invoicing {} tenants, {concurrency} at a time", a.tenants);
    let t = Instant::now();
    let all = ops::billing::invoice::invoices(
        Arc::new(metering),
        Arc::new(ledger.clone()),
        (0..a.tenants).map(tenant_name).collect(),
        (from, to),
        now,
        grace,
        concurrency,
    )
    .await
    .expect("invoices");
    let invoices = t.elapsed();
    let lines: usize = all.iter().map(|i| i.lines.len()).sum();
    rows.push(Row {
        name: format!(
            "invoices: {} tenants × {} tasks ({lines} lines)",
            a.tenants,
            a.events / a.tenants
        ),
        figure: format!(
            "{:.2} s ({concurrency} tenants at a time, `invoice::invoices`)",
            invoices.as_secs_f64()
        ),
        baseline: format!("{:.2} s one at a time", one_at_a_time.as_secs_f64()),
        ratio: format!(
            "{:.2}×",
            one_at_a_time.as_secs_f64() / invoices.as_secs_f64()
        ),
        target: format!(
            "< 10 s: {}",
            if invoices < Duration::from_secs(10) {
                "met"
            } else {
                "missed"
            }
        ),
    });
}

#[cfg(feature = "postgres")]
async fn rating_postgres(a: &Args, rows: &mut Vec<Row>) {
    let Some(url) = ops_testbed::postgres_database() else {
        eprintln!("skipping PostgreSQL: OPS_TEST_POSTGRES_URL is not set");
        return;
    };
    let events = a.events / 5;
    eprintln!("rating {events} events into PostgreSQL");
    let ledger = ops::billing::ledger::PostgresLedger::connect(&url)
        .await
        .expect("ledger");
    let function = function_on(ledger.clone());
    let rated = rate(&function, events, a.tenants).await;
    let raw = raw_postgres(&url, events, a.tenants).await;
    let rate_s = per_sec(events, rated);
    let raw_s = per_sec(events, raw);
    rows.push(Row {
        name: format!("rating into the PostgreSQL ledger ({events} events)"),
        figure: format!("{} events/s", human(rate_s)),
        baseline: format!("{} rows/s (raw INSERT)", human(raw_s)),
        ratio: format!("{:.2}×", rate_s / raw_s),
        target: format!(
            "≥ 20,000 events/s: {}",
            if rate_s >= 20_000.0 { "met" } else { "missed" }
        ),
    });
}

async fn reservations(a: &Args, dir: &std::path::Path, rows: &mut Vec<Row>) {
    let n = if a.quick { 2_000 } else { 10_000 };
    eprintln!("{n} reservations on SQLite");
    let ledger = SqliteLedger::open(&format!("sqlite://{}/holds.db", dir.display()))
        .await
        .expect("ledger");
    let budgets = Budgets::new(Arc::new(ledger), book());
    let eur = "EUR".parse().expect("EUR");
    let tenants: Vec<Tenant> = (0..100)
        .map(|i| Tenant::parse(tenant_name(i)).expect("tenant"))
        .collect();
    for t in &tenants {
        budgets
            .top_up(t, Money::new(100_000_000, eur), &format!("bench:{t}"))
            .await
            .expect("top up");
    }
    let resources = Resources::new(2000, 4 << 30);
    fn hold<'a>(tenant: &'a Tenant, resources: &'a Resources) -> HoldRequest<'a> {
        HoldRequest {
            task_id: TaskId::new(),
            attempt: 1,
            tenant,
            environment: "production",
            template: "render",
            resources,
            timeout: Some(Duration::from_secs(3600)),
            scavenger: false,
        }
    }
    // What the gate costs against what it guards: a balance read alone.
    let mut reads = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        budgets.available(&tenants[i % 100]).await.expect("read");
        reads.push(t.elapsed());
    }
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let request = hold(&tenants[i % 100], &resources);
        let t = Instant::now();
        let r = budgets.reserve(&request).await.expect("reserve");
        latencies.push(t.elapsed());
        assert!(matches!(r, Reservation::Held { .. }), "{r:?}");
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let p50 = pct(&mut latencies, 0.50);
    let p99 = pct(&mut latencies, 0.99);
    let read99 = pct(&mut reads, 0.99);
    rows.push(Row {
        name: format!("reservation (`reserve`, {n} one at a time): p50 / p99"),
        figure: format!(
            "{:.3} ms / {:.3} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        baseline: format!("{:.3} ms p99 (a balance read)", read99.as_secs_f64() * 1e3),
        ratio: format!("{:.1}×", p99.as_secs_f64() / read99.as_secs_f64()),
        target: format!(
            "p99 < 1 ms: {}",
            if p99 < Duration::from_millis(1) {
                "met"
            } else {
                "missed"
            }
        ),
    });
    let passes = n / 100;
    let t = Instant::now();
    for p in 0..passes {
        let requests: Vec<HoldRequest<'_>> = (0..100)
            .map(|i| hold(&tenants[(p + i) % 100], &resources))
            .collect();
        let answers = budgets.reserve_many(&requests).await.expect("reserve_many");
        assert!(
            answers
                .iter()
                .all(|r| matches!(r, Ok(Reservation::Held { .. })))
        );
    }
    let batched = t.elapsed();
    rows.push(Row {
        name: format!("reservations in admission passes of 100 (`reserve_many`, {passes} passes)"),
        figure: format!(
            "{:.3} ms per pass, {} holds/s",
            batched.as_secs_f64() * 1e3 / passes as f64,
            human(per_sec(n, batched))
        ),
        baseline: format!(
            "{} holds/s one at a time",
            human(n as f64 / latencies.iter().sum::<Duration>().as_secs_f64())
        ),
        ratio: format!(
            "{:.1}×",
            latencies.iter().sum::<Duration>().as_secs_f64() / batched.as_secs_f64()
        ),
        target: "—".to_owned(),
    });
}

const TEMPLATE: &str = r#"
name = "step"
command = ["step"]
timeout = "10m"
[resources]
cpu = 1
memory = "1Gi"
"#;

/// Submits `n` tasks to a platform on the simulation executor and waits until all
/// succeeded; returns the time from the first submit.
async fn admission_run(dir: &std::path::Path, n: usize, billed: bool) -> Duration {
    use ops::prelude::*;
    use ops::tasks::NodeGroup;
    use ops::tasks::sim::{SimExecutor, SimExecutorConfig};
    std::fs::create_dir_all(dir.join("templates")).expect("dir");
    std::fs::write(dir.join("templates/step.toml"), TEMPLATE).expect("template");
    std::fs::write(dir.join("prices.toml"), BOOK).expect("prices");
    let mut config = PlatformConfig::default();
    config.history = format!("sqlite://{}/ops.db", dir.display());
    config.templates = Some(dir.join("templates"));
    config.tasks.root = dir.join("tasks");
    if billed {
        config.billing = Some(ops::BillingConfig::new(dir.join("prices.toml")));
    }
    let executor = SimExecutor::new(
        SimExecutorConfig::new(vec![NodeGroup::new(100, Resources::new(64_000, 256 << 30))])
            .speedup(3600.0)
            .default_duration(Duration::from_secs(1)),
    )
    .expect("sim executor");
    let platform = ops::Platform::builder()
        .config(config)
        .executor(executor)
        .start()
        .await
        .expect("platform");
    let tenant = Tenant::parse("acme").expect("tenant");
    if let Some(budgets) = platform.billing() {
        let eur = "EUR".parse().expect("EUR");
        budgets
            .top_up(&tenant, Money::new(100_000_000, eur), "bench")
            .await
            .expect("top up");
    }
    let acme = platform.tenant(&tenant);
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(500) {
        let k = 500.min(n - chunk * 500);
        ids.extend(
            acme.submit_many((0..k).map(|_| SubmitRequest::new("step")).collect())
                .await
                .expect("submit"),
        );
    }
    for id in &ids {
        let task = acme.wait(*id).await.expect("wait");
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    }
    let spent = t.elapsed();
    platform.shutdown().await;
    spent
}

async fn admission(a: &Args, dir: &std::path::Path, rows: &mut Vec<Row>) {
    let n = if a.quick { 1_000 } else { 5_000 };
    eprintln!("admission: {n} tasks with and without the budget gate");
    // A small warm-up run, then each twice, interleaved; the faster of each counts.
    admission_run(&dir.join("warm-up"), n / 10, true).await;
    let mut plain = Duration::MAX;
    let mut billed = Duration::MAX;
    for round in 0..2 {
        plain = plain.min(admission_run(&dir.join(format!("plain-{round}")), n, false).await);
        billed = billed.min(admission_run(&dir.join(format!("billed-{round}")), n, true).await);
    }
    let ratio = plain.as_secs_f64() / billed.as_secs_f64();
    rows.push(Row {
        name: format!("admission throughput, {n} tasks submit → succeeded (sim executor)"),
        figure: format!("{} tasks/s with the budget gate", human(per_sec(n, billed))),
        baseline: format!("{} tasks/s without", human(per_sec(n, plain))),
        ratio: format!("{ratio:.2}×"),
        target: format!("≥ 0.5×: {}", if ratio >= 0.5 { "met" } else { "missed" }),
    });
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    rt.block_on(async {
        println!(
            "## ops billing benchmarks{}",
            if a.quick { " (quick)" } else { "" }
        );
        println!();
        println!("Machine: {}.", ops_testbed::machine());
        println!();
        let mut rows = Vec::new();
        if a.runs("rating") {
            rating_and_invoices(&a, dir.path(), &mut rows).await;
        }
        #[cfg(feature = "postgres")]
        if a.runs("postgres") {
            rating_postgres(&a, &mut rows).await;
        }
        if a.runs("reservation") {
            reservations(&a, dir.path(), &mut rows).await;
        }
        if a.runs("admission") {
            admission(&a, dir.path(), &mut rows).await;
        }
        print(&rows);
    });
}
