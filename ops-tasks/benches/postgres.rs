//! The PostgreSQL history store at scale, each figure against a baseline measured in
//! the same run.
//!
//! ```text
//! source /tmp/ops-dev-services.env   # or any OPS_TEST_POSTGRES_URL
//! cargo bench -p ops-tasks --all-features --bench postgres
//! cargo bench -p ops-tasks --all-features --bench postgres -- --quick
//! cargo bench -p ops-tasks --all-features --bench postgres -- --only list --rows 1000000
//! ```
//!
//! 1. `submit`: durable submission through `HistoryStore::commit`, 1000 tasks per
//!    commit, each a realistic record with its `submitted` and `queued` events (as
//!    `Tasks::submit_many` builds them); one committer, then two at once. Baseline: raw
//!    multi-row `INSERT`s of one row per task (the task's JSON) into a table with a
//!    primary key only.
//! 2. `list`: a tenant's latest 100 tasks among `--rows` rows (default 10 million,
//!    `--quick` 200,000) over 1000 tenants, loaded server-side with `generate_series`,
//!    then `ANALYZE`d; p50/p99 of `list()` for random tenants, by status and by label.
//!    Baseline: the bare index query (`SELECT id … ORDER BY id DESC LIMIT 100`).
//! 3. `prune`: finished tasks (each with 3 events) deleted per second by
//!    `HistoryStore::prune` while a writer commits batches of 10 tasks; the writer's
//!    commit latency with pruning vs without (the baseline).
//!
//! Options: `--quick`, `--only submit|list|prune`, `--tasks N`, `--rows N`,
//! `--prune N` (tasks to prune), `--prune-batch N`, `--samples N` (queries per list
//! figure), `--keep` (keep the list database, and reuse it when it has `--rows` rows).
//! Each benchmark uses a database of its own (`ops_bench_*`), dropped at the end.
// A benchmark's output is its table.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_core::{Event, Labels, TaskId, TaskStatus, event_types};
use ops_tasks::history::{ChangeBatch, PostgresHistory};
use ops_tasks::{HistoryReader, HistoryWriter, TaskQuery, TaskRecord, testkit};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, QueryBuilder};

const TENANTS: usize = 1000;
const COMMIT: usize = 1000;
const WRITER_BATCH: usize = 10;

struct Args {
    quick: bool,
    only: Option<String>,
    tasks: usize,
    rows: usize,
    prune: usize,
    prune_batch: u32,
    samples: usize,
    keep: bool,
}

fn args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let num = |name: &str| value(name).and_then(|v| v.parse::<usize>().ok());
    let quick = args.iter().any(|a| a == "--quick");
    let (tasks, rows, prune, samples) = if quick {
        (10_000, 200_000, 50_000, 200)
    } else {
        (50_000, 10_000_000, 500_000, 1000)
    };
    Args {
        quick,
        only: value("--only").cloned(),
        tasks: num("--tasks").unwrap_or(tasks),
        rows: num("--rows").unwrap_or(rows),
        prune: num("--prune").unwrap_or(prune),
        prune_batch: num("--prune-batch").unwrap_or(10_000) as u32,
        samples: num("--samples").unwrap_or(samples),
        keep: args.iter().any(|a| a == "--keep"),
    }
}

/// CPU seconds (user + system) used so far by this process (the client side; the
/// server's work is not in it).
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A deterministic pseudo-random sequence (no dependency for a benchmark).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

// ------------------------------------------------------------------ databases

/// Databases on the server of `$OPS_TEST_POSTGRES_URL`.
struct Server {
    admin: PgPool,
    base: String,
}

impl Server {
    async fn connect(url: &str) -> Server {
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .expect("connect to OPS_TEST_POSTGRES_URL");
        let base = url
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .expect("a URL with a database");
        Server { admin, base }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    async fn exists(&self, name: &str) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(&self.admin)
        .await
        .expect("pg_database")
    }

    async fn create(&self, name: &str) -> String {
        self.drop(name).await;
        self.admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create database");
        self.url(name)
    }

    async fn drop(&self, name: &str) {
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await
            .expect("drop database");
    }
}

async fn history(url: &str, connections: u32) -> PostgresHistory {
    PostgresHistory::connect_with(
        url,
        ops_tasks::history::PostgresHistoryConfig::default().max_connections(connections),
    )
    .await
    .expect("open history")
}

// ------------------------------------------------------------------ records

/// A task as `Tasks::submit_many` stores it: rendered spec, labels, parameters, and
/// its `submitted` and `queued` events carrying the task's event data.
fn submission(i: usize) -> (TaskRecord, Vec<Event>) {
    let tenant = format!("tenant-{:04}", i % TENANTS);
    let mut r = testkit::history::record(&tenant, TaskStatus::Queued);
    r.template = "render".into();
    r.labels = Labels::from([
        ("kind".to_owned(), "render".to_owned()),
        ("project".to_owned(), format!("p{}", i % 50)),
    ]);
    r.parameters = serde_json::json!({ "scene": "shots/sq010/sh0420.blend", "start": 1, "end": 250, "extra": [] });
    r.priority = (i % 3) as i32;
    let events = [event_types::TASK_SUBMITTED, event_types::TASK_QUEUED]
        .into_iter()
        .map(|ty| {
            Event::builder(ty, "ops://bench/tasks")
                .subject(r.id.to_string())
                .tenant(r.tenant.as_str())
                .json(serde_json::json!({
                    "task_id": r.id, "tenant": r.tenant.as_str(), "environment": "default",
                    "template": r.template, "status": if ty == event_types::TASK_SUBMITTED { "submitted" } else { "queued" },
                    "attempt": 1,
                }))
                .build()
        })
        .collect();
    (r, events)
}

fn batches(from: usize, n: usize) -> Vec<ChangeBatch> {
    (from..from + n)
        .collect::<Vec<_>>()
        .chunks(COMMIT)
        .map(|chunk| {
            let mut batch = ChangeBatch::default();
            batch.inserts = chunk.iter().map(|&i| submission(i)).collect();
            batch
        })
        .collect()
}

// ------------------------------------------------------------------ 1. submit

async fn bench_submit(server: &Server, a: &Args) {
    let n = a.tasks;
    println!("### Durable submission: {n} tasks, {COMMIT} per commit (record + 2 events + outbox)");
    println!();
    let url = server.create("ops_bench_submit").await;
    let store = Arc::new(history(&url, 4).await);

    // Baseline: one row per task, the task's JSON, multi-row INSERTs.
    store
        .outbox()
        .pool()
        .execute(
            "CREATE TABLE ops_bench_raw (id uuid PRIMARY KEY, tenant text NOT NULL, record text NOT NULL)",
        )
        .await
        .expect("baseline table");
    let raw: Vec<(uuid::Uuid, String, String)> = (0..n)
        .map(|i| {
            let (r, _) = submission(i);
            let json = serde_json::to_string(&r).expect("json");
            (r.id.as_uuid(), r.tenant.to_string(), json)
        })
        .collect();
    let began = Instant::now();
    let cpu = cpu_secs();
    for chunk in raw.chunks(COMMIT) {
        let mut tx = store.outbox().pool().begin().await.expect("begin");
        // 3 binds per row: well under the 65,535 bind limit.
        let mut qb = QueryBuilder::new("INSERT INTO ops_bench_raw (id, tenant, record) ");
        qb.push_values(chunk, |mut b, (id, tenant, json)| {
            b.push_bind(id).push_bind(tenant).push_bind(json);
        });
        qb.build().execute(&mut *tx).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    let baseline = began.elapsed();
    let baseline_cpu = cpu_secs() - cpu;

    let one = batches(0, n);
    let began = Instant::now();
    let cpu = cpu_secs();
    for batch in &one {
        store.commit(batch).await.expect("commit");
    }
    let single = began.elapsed();
    let single_cpu = cpu_secs() - cpu;

    let two: Vec<Vec<ChangeBatch>> = vec![batches(n, n / 2), batches(n + n / 2, n / 2)];
    let began = Instant::now();
    let cpu = cpu_secs();
    let handles: Vec<_> = two
        .into_iter()
        .map(|batches| {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in &batches {
                    store.commit(batch).await.expect("commit");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("committer");
    }
    let concurrent = began.elapsed();
    let concurrent_cpu = cpu_secs() - cpu;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_tasks")
        .fetch_one(store.outbox().pool())
        .await
        .expect("count");
    assert_eq!(stored as usize, n + n / 2 * 2);

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("| name | tasks | seconds | tasks/s | vs baseline | client CPU µs/task |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, d, cpu) in [
        (
            "baseline: raw multi-row INSERT, 1 row/task",
            baseline,
            baseline_cpu,
        ),
        ("HistoryStore::commit, 1 committer", single, single_cpu),
        (
            "HistoryStore::commit, 2 committers",
            concurrent,
            concurrent_cpu,
        ),
    ] {
        println!(
            "| {name} | {n} | {:.2} | {:.0} | {:.2}x | {:.0} |",
            d.as_secs_f64(),
            rate(d),
            rate(d) / rate(baseline),
            cpu * 1e6 / n as f64
        );
    }
    println!();
    println!(
        "Target: >= 10,000 tasks/s through HistoryStore::commit: {}",
        if rate(single) >= 10_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!();
    drop(store);
    server.drop("ops_bench_submit").await;
}

// ------------------------------------------------------------------ 2. list

/// JSON of the parts of a generated row that do not vary, with `__ID__` and
/// `__TENANT__` placeholders (spec) — from a real record, so that rows decode.
fn templates() -> (String, String, String) {
    let (mut r, _) = submission(0);
    r.spec.task_id = TaskId::from_uuid(uuid::Uuid::nil());
    let spec = serde_json::to_string(&r.spec)
        .expect("spec")
        .replace(&uuid::Uuid::nil().to_string(), "__ID__")
        .replace("tenant-0000", "__TENANT__");
    let retry = serde_json::to_string(&r.retry).expect("retry");
    let parameters = serde_json::to_string(&r.parameters).expect("parameters");
    (spec, retry, parameters)
}

/// Inserts rows `[from, to)` of a synthetic history: ids are UUIDv7 over the last 90
/// days (by row number), tenants pseudo-random, 85% succeeded, 10% failed, 3%
/// cancelled, 1% running, 1% queued; labels `kind` and `project` (50 values).
async fn generate(pool: &PgPool, from: usize, to: usize, total: usize, finished_days_ago: i64) {
    let (spec, retry, parameters) = templates();
    let now_ms = chrono::Utc::now().timestamp_millis() - finished_days_ago * 86_400_000;
    let span_ms: i64 = 90 * 86_400_000;
    let step = (span_ms / total.max(1) as i64).max(1);
    sqlx::query(
        "INSERT INTO ops_tasks (id, tenant, environment, template, status, reason, message, \
             exit_code, priority, attempt, max_attempts, labels, parameters, spec, retry, \
             run_handle, wall_secs, cpu_secs, peak_memory, gpu_secs, submitted_at, started_at, \
             finished_at, not_before, updated_at, owner, task_dir) \
         SELECT id, tenant, 'default', tmpl, status, \
             CASE status WHEN 'succeeded' THEN 'Completed' WHEN 'failed' THEN 'NonZeroExit' \
                 WHEN 'cancelled' THEN 'Cancelled' END, \
             NULL, CASE status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END, \
             (i % 3)::int, 1, 3, \
             jsonb_build_object('kind', tmpl, 'project', 'p' || (i % 50)), $3::json, \
             replace(replace($2, '__ID__', id::text), '__TENANT__', tenant)::json, $4::json, \
             NULL, 60, 55, 1073741824, 0, at, at + interval '1 second', \
             CASE WHEN status IN ('running', 'queued') THEN NULL \
                  ELSE at + interval '61 seconds' END, \
             NULL, at + interval '61 seconds', \
             CASE WHEN status = 'running' THEN 'coordinator-1' END, \
             '/var/lib/ops/tasks/' || tenant || '/' || id \
         FROM ( \
             SELECT i, \
                 (lpad(to_hex($5 + i * $6), 12, '0') || '7' || substr(h, 1, 3) || '8' \
                     || substr(h, 4, 15))::uuid AS id, \
                 'tenant-' || lpad((abs(hashint4(i::int)::bigint) % 1000)::text, 4, '0') AS tenant, \
                 CASE WHEN i % 4 = 0 THEN 'train' ELSE 'render' END AS tmpl, \
                 CASE WHEN i % 100 < 85 THEN 'succeeded' WHEN i % 100 < 95 THEN 'failed' \
                      WHEN i % 100 < 98 THEN 'cancelled' WHEN i % 100 = 98 THEN 'running' \
                      ELSE 'queued' END AS status, \
                 to_timestamp(($5 + i * $6) / 1000.0) AS at \
             FROM (SELECT i, md5(i::text) AS h FROM generate_series($7::bigint, $1::bigint - 1) i) g \
         ) s",
    )
    .bind(to as i64)
    .bind(spec)
    .bind(parameters)
    .bind(retry)
    .bind(now_ms - span_ms)
    .bind(step)
    .bind(from as i64)
    .execute(pool)
    .await
    .expect("generate rows");
}

/// Loads `rows` synthetic tasks: indexes dropped, rows inserted in chunks, indexes
/// rebuilt (as their migration defines them), `VACUUM ANALYZE`.
async fn load(pool: &PgPool, rows: usize, finished_days_ago: i64) {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ops_tasks' \
         AND indexname <> 'ops_tasks_pkey'",
    )
    .fetch_all(pool)
    .await
    .expect("indexes");
    for (name, _) in &indexes {
        pool.execute(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .await
            .expect("drop index");
    }
    let chunk = 1_000_000;
    let mut from = 0;
    while from < rows {
        let to = (from + chunk).min(rows);
        generate(pool, from, to, rows, finished_days_ago).await;
        from = to;
        eprint!("\r  loaded {from} / {rows} rows");
    }
    eprintln!();
    let mut conn = pool.acquire().await.expect("connection");
    conn.execute("SET maintenance_work_mem = '1GB'")
        .await
        .expect("set");
    for (_, def) in &indexes {
        conn.execute(sqlx::AssertSqlSafe(def.clone()))
            .await
            .expect("create index");
    }
    conn.execute("VACUUM ANALYZE ops_tasks")
        .await
        .expect("vacuum");
}

async fn time_queries(
    store: &PostgresHistory,
    samples: usize,
    seed: u64,
    query: impl Fn(String) -> TaskQuery,
) -> (Vec<Duration>, usize) {
    let mut rng = Lcg(seed);
    let mut times = Vec::with_capacity(samples);
    let mut found = 0;
    for _ in 0..samples {
        let tenant = format!("tenant-{:04}", rng.next() as usize % TENANTS);
        let q = query(tenant.clone());
        let tenant = ops_core::Tenant::parse(tenant).expect("a valid tenant");
        let began = Instant::now();
        let page = store.list(&tenant, &q).await.expect("list");
        times.push(began.elapsed());
        found += page.tasks.len();
    }
    times.sort();
    (times, found)
}

async fn bench_list(server: &Server, a: &Args) {
    let rows = a.rows;
    let name = format!("ops_bench_list_{rows}");
    println!(
        "### A tenant's latest 100 tasks among {rows} rows, {TENANTS} tenants ({} queries each)",
        a.samples
    );
    println!();
    let url = server.url(&name);
    let reuse = a.keep && server.exists(&name).await && {
        let pool = PgPool::connect(&url).await.expect("connect");
        let n: Option<i64> = sqlx::query_scalar("SELECT rows FROM ops_bench_loaded")
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten();
        n == Some(rows as i64)
    };
    let store = if reuse {
        println!("(reusing database {name}, kept by an earlier --keep run)");
        println!();
        history(&url, 4).await
    } else {
        let url = server.create(&name).await;
        let store = history(&url, 4).await;
        let began = Instant::now();
        load(store.outbox().pool(), rows, 0).await;
        store
            .outbox()
            .pool()
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE ops_bench_loaded AS SELECT {rows}::bigint AS rows"
            )))
            .await
            .expect("marker");
        println!(
            "Loaded in {:.0} s (generate_series, indexes rebuilt, VACUUM ANALYZE).",
            began.elapsed().as_secs_f64()
        );
        println!();
        store
    };
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_total_relation_size('ops_tasks'))")
            .fetch_one(store.outbox().pool())
            .await
            .expect("size");

    // Warm the cache and the pool.
    let _ = time_queries(&store, 50, 1, |_| TaskQuery::new().limit(100)).await;

    // Baseline: the bare index query, ids only.
    let mut rng = Lcg(7);
    let mut base = Vec::with_capacity(a.samples);
    for _ in 0..a.samples {
        let tenant = format!("tenant-{:04}", rng.next() as usize % TENANTS);
        let began = Instant::now();
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM ops_tasks WHERE tenant = $1 ORDER BY id DESC LIMIT 100",
        )
        .bind(tenant)
        .fetch_all(store.outbox().pool())
        .await
        .expect("baseline query");
        base.push(began.elapsed());
        assert!(!ids.is_empty());
    }
    base.sort();

    let mut results = vec![(
        "baseline: SELECT id … ORDER BY id DESC LIMIT 100".to_owned(),
        base,
        0,
    )];
    let (t, f) = time_queries(&store, a.samples, 7, |_| TaskQuery::new().limit(100)).await;
    results.push(("list(tenant).limit(100)".into(), t, f));
    let (t, f) = time_queries(&store, a.samples, 8, |_| {
        TaskQuery::new().status(TaskStatus::Failed).limit(100)
    })
    .await;
    results.push(("… .status(failed) (10% of rows)".into(), t, f));
    let (t, f) = time_queries(&store, a.samples, 9, |_| {
        TaskQuery::new().status(TaskStatus::Running).limit(100)
    })
    .await;
    results.push(("… .status(running) (1% of rows)".into(), t, f));
    let (t, f) = time_queries(&store, a.samples, 10, |_| {
        TaskQuery::new().label("kind", "train").limit(100)
    })
    .await;
    results.push(("… .label(kind=train) (25% of rows)".into(), t, f));
    let (t, f) = time_queries(&store, a.samples, 11, |_| {
        TaskQuery::new().label("project", "p7").limit(100)
    })
    .await;
    results.push(("… .label(project=p7) (2% of rows)".into(), t, f));
    let (t, f) = time_queries(&store, a.samples, 12, |_| {
        let now = chrono::Utc::now();
        TaskQuery::new()
            .submitted_between(
                Some(now - chrono::Duration::days(30)),
                Some(now - chrono::Duration::days(29)),
            )
            .limit(100)
    })
    .await;
    results.push(("… .submitted_between(one day, a month ago)".into(), t, f));

    let base_p50 = percentile(&results[0].1, 0.5);
    println!("Table size with indexes: {size}.");
    println!();
    println!("| query | p50 ms | p99 ms | max ms | tasks per page | p50 vs baseline |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, times, found) in &results {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2}x |",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            *found as f64 / times.len().max(1) as f64,
            ms(percentile(times, 0.5)) / ms(base_p50).max(1e-9)
        );
    }
    println!();
    let p99 = percentile(&results[1].1, 0.99);
    println!(
        "Target: p99 of list(tenant).limit(100) < 10 ms: {}",
        if p99 < Duration::from_millis(10) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!();
    drop(store);
    if !a.keep {
        server.drop(&name).await;
    }
}

// ------------------------------------------------------------------ 3. prune

/// Commits batches of [`WRITER_BATCH`] new tasks until `stop`; returns each commit's
/// latency.
async fn writer(
    store: Arc<PostgresHistory>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    offset: usize,
) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut i = offset;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut batch = ChangeBatch::default();
        batch.inserts = (i..i + WRITER_BATCH).map(submission).collect();
        i += WRITER_BATCH;
        let began = Instant::now();
        store.commit(&batch).await.expect("writer commit");
        times.push(began.elapsed());
    }
    times.sort();
    times
}

async fn bench_prune(server: &Server, a: &Args) {
    let n = a.prune;
    println!(
        "### Retention: pruning {n} finished tasks (3 events each), {} per call, while a writer commits {WRITER_BATCH} tasks at a time",
        a.prune_batch
    );
    println!();
    let url = server.create("ops_bench_prune").await;
    let store = Arc::new(history(&url, 4).await);
    let pool = store.outbox().pool().clone();
    load(&pool, n, 100).await;
    pool.execute(
        "INSERT INTO ops_task_events (task_id, event_id, type, from_status, to_status, reason, at, event) \
         SELECT t.id, gen_random_uuid()::text, e.type, e.from_status, e.to_status, NULL, t.submitted_at, \
             '{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"ops://bench\",\"type\":\"' || e.type || '\",\"subject\":\"' || t.id || '\",\"time\":\"2026-01-01T00:00:00Z\",\"datacontenttype\":\"application/json\",\"data\":{}}' \
         FROM ops_tasks t, (VALUES ('ops.task.submitted', NULL, 'submitted'), ('ops.task.queued', 'submitted', 'queued'), \
             ('ops.task.succeeded', 'running', 'succeeded')) AS e(type, from_status, to_status)",
    )
    .await
    .expect("events");
    pool.execute("VACUUM ANALYZE ops_task_events")
        .await
        .expect("vacuum");
    let finished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ops_tasks WHERE finished_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .expect("count");

    // Baseline: the writer alone.
    let phase = if a.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = tokio::spawn(writer(store.clone(), stop.clone(), 10_000_000));
    tokio::time::sleep(phase).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let alone = w.await.expect("writer");

    // Pruning, with the writer.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = tokio::spawn(writer(store.clone(), stop.clone(), 20_000_000));
    let cutoff = chrono::Utc::now() - chrono::Duration::days(1);
    let began = Instant::now();
    let mut pruned = 0usize;
    let mut calls = 0usize;
    loop {
        let got = store.prune(cutoff, a.prune_batch).await.expect("prune");
        if got.is_empty() {
            break;
        }
        pruned += got.len();
        calls += 1;
    }
    let took = began.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = w.await.expect("writer");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_task_events e WHERE NOT EXISTS (SELECT 1 FROM ops_tasks t WHERE t.id = e.task_id)")
        .fetch_one(&pool)
        .await
        .expect("orphans");
    assert_eq!(left, 0, "events of pruned tasks remain");

    let rate = pruned as f64 / took.as_secs_f64();
    println!("| name | count | seconds | per s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| prune ({calls} calls) | {pruned} of {finished} finished | {:.2} | {rate:.0} |",
        took.as_secs_f64()
    );
    println!();
    println!(
        "| writer commits ({WRITER_BATCH} tasks each) | commits | p50 ms | p99 ms | max ms | p99 vs baseline |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, times) in [
        ("baseline: without pruning", &alone),
        ("during pruning", &during),
    ] {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2}x |",
            times.len(),
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            ms(percentile(times, 0.99)) / ms(percentile(&alone, 0.99)).max(1e-9)
        );
    }
    println!();
    println!(
        "Target: >= 100,000 tasks pruned/s: {}",
        if rate >= 100_000.0 { "met" } else { "MISSED" }
    );
    println!();
    drop(store);
    drop(pool);
    server.drop("ops_bench_prune").await;
}

fn main() {
    let a = args();
    let Ok(url) = std::env::var("OPS_TEST_POSTGRES_URL") else {
        eprintln!(
            "skipping: set OPS_TEST_POSTGRES_URL to a PostgreSQL URL whose user may create databases \
             (e.g. `source /tmp/ops-dev-services.env`, or scripts/services)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let began = Instant::now();
        let server = Server::connect(&url).await;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&server.admin)
            .await
            .expect("version");
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting FROM pg_settings WHERE name IN \
             ('shared_buffers', 'fsync', 'synchronous_commit') ORDER BY name",
        )
        .fetch_all(&server.admin)
        .await
        .expect("settings");
        println!(
            "## ops-tasks PostgreSQL history benchmarks{}",
            if a.quick { " (quick)" } else { "" }
        );
        println!();
        println!(
            "Machine: {}. PostgreSQL {version} on the same machine ({}).",
            ops_testbed::machine(),
            settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!();
        let run = |name: &str| a.only.as_deref().is_none_or(|o| o == name);
        if run("submit") {
            bench_submit(&server, &a).await;
        }
        if run("list") {
            bench_list(&server, &a).await;
        }
        if run("prune") {
            bench_prune(&server, &a).await;
        }
        println!("Total bench time: {:.1} s", began.elapsed().as_secs_f64());
    });
}
