//! Task submission, launch latency and throughput, each against a baseline measured in
//! the same run.
//!
//! ```text
//! cargo bench -p ops-tasks --bench tasks
//! cargo bench -p ops-tasks --bench tasks -- --quick
//! cargo bench -p ops-tasks --bench tasks -- --only launch --launches 1000
//! ```
//!
//! Options: `--quick` (small counts), `--only submit|launch|throughput`, and the counts
//! `--tasks N` (batched submission), `--single N` (one task per transaction),
//! `--launches N` (latency samples) and `--concurrent N` (throughput tasks).
//!
//! Prints markdown tables. Baselines: raw multi-row SQLite `INSERT`s of rows the size of
//! a stored task, on a database opened with the same settings (for submission); spawning
//! `true` directly (for launch latency and throughput). On a shared machine only the
//! ratios carry meaning. Databases and task directories live under `$TMPDIR`; they are
//! all removed at the end, not between benchmarks, because on some file systems (ext4
//! without a journal) freshly deleted inodes make the next file creations slower.
// A benchmark's output is its table.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ops_core::{Resources, TaskId, TaskStatus, Tenant, event_types};
use ops_events::sqlite::{SqliteOutbox, SqliteOutboxConfig, Synchronous};
use ops_tasks::local::{CgroupMode, LocalExecutor, LocalExecutorConfig};
use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{SqliteHistory, SubmitRequest, Tasks, TasksConfig};
use tokio::sync::broadcast::error::RecvError;

/// Requests per `submit_many` call (one transaction each).
const SUBMIT_BATCH: usize = 1000;
/// Rows per multi-row INSERT in the raw baseline (as the history store does).
const INSERT_CHUNK: usize = 500;
/// Tasks running at once in the throughput benchmark (capacity 64 CPUs, 1 CPU each).
const CONCURRENCY: usize = 64;
const TENANT: &str = "bench";

/// A realistic template: schema-checked parameters, placeholders, labels, outputs,
/// resources, retries. Only submitted (admission is paused), never run.
const RENDER: &str = r#"
name = "render"
command = ["blender", "-b", "{{ scene }}", "-o", "frames/", "-s", "{{ start }}", "-e", "{{ end }}", "{{ extra }}"]
outputs = ["frames/*.png"]
timeout = "1h"
[labels]
kind = "render"
[parameters]
required = ["scene"]
[parameters.properties.scene]
type = "string"
pattern = "^[A-Za-z0-9_./-]+\\.blend$"
[parameters.properties.start]
type = "integer"
minimum = 1
default = 1
[parameters.properties.end]
type = "integer"
minimum = 1
default = 250
[parameters.properties.extra]
type = "array"
items = { type = "string" }
default = []
[resources]
cpu = 4
memory = "8Gi"
[retries]
max_attempts = 3
backoff = "10s"
"#;

/// The cheapest possible task, run for real.
const NOOP: &str = r#"
name = "noop"
command = ["true"]
[resources]
cpu = 1
memory = "64Mi"
"#;

/// The script the local executor wraps every program in, minus joining cgroups: run the
/// program as a child and record its status and CPU times.
const WRAPPER: &str = r#"exit_file=$1
shift
"$@"
s=$?
{ echo "$s"; times; } > "$exit_file"
exit "$s"
"#;

// ------------------------------------------------------------------------- setup

struct Args {
    quick: bool,
    only: Option<String>,
    submit: usize,
    single: usize,
    launches: usize,
    concurrent: usize,
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
    let (submit, single, launches, concurrent) = if quick {
        (10_000, 300, 60, 300)
    } else {
        (100_000, 2_000, 300, 2_000)
    };
    Args {
        quick,
        only: value("--only").cloned(),
        submit: num("--tasks").unwrap_or(submit),
        single: num("--single").unwrap_or(single),
        launches: num("--launches").unwrap_or(launches),
        concurrent: num("--concurrent").unwrap_or(concurrent),
    }
}

/// CPU seconds (user + system) used so far by this process and the children it reaped.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name: utime, stime, cutime, cstime are 12th..15th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..15)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// Temporary directories, removed together at the end of the run.
static DIRS: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

fn temp_dir() -> PathBuf {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    DIRS.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
    path
}

fn catalogue() -> Catalogue {
    let mut c = Catalogue::new();
    for (name, text) in [("render.toml", RENDER), ("noop.toml", NOOP)] {
        c.insert(TaskTemplate::from_str(text, Format::Toml, name).expect("template"));
    }
    c
}

fn executor(cgroups: CgroupMode) -> LocalExecutor {
    let mut config = LocalExecutorConfig::default();
    config.cgroups = cgroups;
    config.capacity = Some(Resources::new(CONCURRENCY as u64 * 1000, 256 << 30));
    LocalExecutor::new(config).expect("executor")
}

async fn open_outbox(path: &Path, synchronous: Synchronous) -> SqliteOutbox {
    let config = SqliteOutboxConfig::default().synchronous(synchronous);
    SqliteOutbox::open_with(path.to_str().expect("path"), &config)
        .await
        .expect("open outbox")
}

/// A Tasks service of its own, in a temporary directory.
struct Scratch {
    tasks: Tasks,
    outbox: SqliteOutbox,
    db: PathBuf,
}

async fn scratch(synchronous: Synchronous, cgroups: CgroupMode) -> Scratch {
    let dir = temp_dir();
    let db = dir.join("ops.db");
    let outbox = open_outbox(&db, synchronous).await;
    let history = SqliteHistory::from_outbox(outbox.clone())
        .await
        .expect("history");
    let mut config = TasksConfig::default();
    config.root = dir.join("tasks");
    let tasks = Tasks::builder()
        .catalogue(catalogue())
        .history(history)
        .executor(Arc::new(executor(cgroups)))
        .config(config)
        .start()
        .await
        .expect("start tasks");
    Scratch { tasks, outbox, db }
}

async fn status_counts(tasks: &Tasks) -> Vec<(TaskStatus, u64)> {
    tasks
        .admin()
        .history()
        .count_by_status(None)
        .await
        .expect("count")
}

/// The tenant every bench task belongs to.
fn tenant() -> ops_core::Tenant {
    ops_core::Tenant::parse(TENANT).expect("a valid tenant")
}

// ------------------------------------------------------------------ 1. submission

fn render_requests(n: usize) -> Vec<SubmitRequest> {
    (0..n)
        .map(|i| {
            SubmitRequest::new("render")
                .parameters(serde_json::json!({
                    "scene": format!("projects/p{}/shot-{i}.blend", i % 100),
                    "end": 1 + i % 500,
                }))
                .label("project", format!("p{}", i % 100))
        })
        .collect()
}

/// What one submitted task stores, in bytes.
struct Footprint {
    task_row: usize,
    event: usize,
}

/// Submits a few batches to a scratch service (also a warm-up) and measures what a task
/// stores.
async fn footprint() -> Footprint {
    let s = scratch(Synchronous::Normal, CgroupMode::None).await;
    s.tasks.admin().pause().expect("pause");
    for chunk in render_requests(2 * SUBMIT_BATCH).chunks(SUBMIT_BATCH) {
        s.tasks
            .tenant(&tenant())
            .submit_many(chunk.to_vec())
            .await
            .expect("submit");
    }
    // Text columns plus ten numeric ones at 8 bytes.
    let (task_row,): (f64,) = sqlx::query_as(
        "SELECT avg(length(id) + length(tenant) + length(environment) + length(template) \
         + length(status) + length(labels) + length(parameters) + length(spec) \
         + length(retry) + 80) FROM ops_tasks",
    )
    .fetch_one(s.outbox.pool())
    .await
    .expect("size");
    let (event,): (f64,) = sqlx::query_as("SELECT avg(length(payload)) FROM ops_events")
        .fetch_one(s.outbox.pool())
        .await
        .expect("size");
    s.tasks.shutdown().await;
    Footprint {
        task_row: task_row as usize,
        event: event as usize,
    }
}

/// Raw multi-row INSERTs of `n` rows of about `payload` bytes into a bare table,
/// `per_tx` rows per transaction, on a database opened like the history's.
async fn raw_inserts(synchronous: Synchronous, n: usize, payload: usize, per_tx: usize) -> f64 {
    let outbox = open_outbox(&temp_dir().join("raw.db"), synchronous).await;
    let pool = outbox.pool();
    sqlx::query("CREATE TABLE raw (id TEXT PRIMARY KEY NOT NULL, payload TEXT NOT NULL)")
        .execute(pool)
        .await
        .expect("create");
    let rows: Vec<(String, String)> = (0..n)
        .map(|i| {
            let mut p = format!("{{\"i\":{i},\"pad\":\"");
            p.extend(std::iter::repeat_n(
                'x',
                payload.saturating_sub(p.len() + 2),
            ));
            p.push_str("\"}");
            (TaskId::new().to_string(), p)
        })
        .collect();
    let start = Instant::now();
    for txn in rows.chunks(per_tx) {
        let mut tx = pool.begin().await.expect("begin");
        for chunk in txn.chunks(INSERT_CHUNK) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO raw (id, payload) ");
            qb.push_values(chunk, |mut b, (id, p)| {
                b.push_bind(id.as_str()).push_bind(p.as_str());
            });
            qb.build().execute(&mut *tx).await.expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    start.elapsed().as_secs_f64()
}

/// Submits `n` tasks with admission paused, `batch` per call (`submit` when 1,
/// `submit_many` otherwise; one transaction per call), from `callers` concurrent
/// callers. Returns the seconds taken and the database.
async fn submit(
    synchronous: Synchronous,
    n: usize,
    batch: usize,
    callers: usize,
) -> (f64, PathBuf) {
    let s = scratch(synchronous, CgroupMode::None).await;
    s.tasks.admin().pause().expect("pause");
    let batches: Vec<Vec<SubmitRequest>> = render_requests(n)
        .chunks(batch)
        .map(<[_]>::to_vec)
        .collect();
    let mut queues: Vec<Vec<Vec<SubmitRequest>>> = vec![Vec::new(); callers];
    for (i, b) in batches.into_iter().enumerate() {
        queues[i % callers].push(b);
    }
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for queue in queues {
        let tasks = s.tasks.tenant(&tenant());
        set.spawn(async move {
            for requests in queue {
                if requests.len() == 1 {
                    let request = requests.into_iter().next().expect("one request");
                    tasks.submit(request).await.expect("submit");
                } else {
                    tasks.submit_many(requests).await.expect("submit");
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("caller");
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        status_counts(&s.tasks).await,
        vec![(TaskStatus::Queued, n as u64)],
        "all stored"
    );
    s.tasks.shutdown().await;
    (secs, s.db)
}

/// The rows a submission stored, copied into a fresh database inside SQLite
/// (`INSERT … SELECT`, one transaction): the storage engine's share, without Rust,
/// serialization or binding.
async fn engine_copy(synchronous: Synchronous, source: &Path) -> f64 {
    let outbox = open_outbox(&temp_dir().join("copy.db"), synchronous).await;
    SqliteHistory::from_outbox(outbox.clone())
        .await
        .expect("schema");
    let mut conn = outbox.pool().acquire().await.expect("connection");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ATTACH DATABASE '{}' AS src",
        source.display()
    )))
    .execute(&mut *conn)
    .await
    .expect("attach");
    let start = Instant::now();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .expect("begin");
    for table in [
        "ops_tasks",
        "ops_task_labels",
        "ops_task_events",
        "ops_events",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO main.{table} SELECT * FROM src.{table}"
        )))
        .execute(&mut *conn)
        .await
        .expect("copy");
    }
    sqlx::query("COMMIT")
        .execute(&mut *conn)
        .await
        .expect("commit");
    let secs = start.elapsed().as_secs_f64();
    sqlx::query("DETACH DATABASE src")
        .execute(&mut *conn)
        .await
        .expect("detach");
    secs
}

// ---------------------------------------------------------------- 2. launch latency

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn tokio_true() {
    let status = tokio::process::Command::new("true")
        .status()
        .await
        .expect("spawn true");
    assert!(status.success());
}

/// `true` under the executor's wrapper script (no cgroups): the two processes and the
/// exit record every attempt costs.
async fn tokio_wrapped_true(exit_file: &Path) {
    let status = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(WRAPPER)
        .arg("ops-task")
        .arg(exit_file)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .expect("spawn sh");
    assert!(status.success());
}

/// Waits for `id`'s final event on `live`; panics unless it succeeded.
async fn await_success(
    tasks: &Tasks,
    live: &mut tokio::sync::broadcast::Receiver<ops_core::Event>,
    id: TaskId,
) {
    let subject = id.to_string();
    loop {
        match live.recv().await {
            Ok(e) if e.subject.as_deref() == Some(subject.as_str()) => match e.ty.as_str() {
                event_types::TASK_SUCCEEDED => return,
                event_types::TASK_FAILED
                | event_types::TASK_CANCELLED
                | event_types::TASK_TIMED_OUT => {
                    panic!("task {id} ended with {}: {}", e.ty, e.data)
                }
                _ => {}
            },
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                let record = tasks
                    .tenant(&Tenant::parse(TENANT).unwrap())
                    .get(id)
                    .await
                    .expect("get");
                if record.status.is_final() {
                    assert_eq!(record.status, TaskStatus::Succeeded, "{record:?}");
                    return;
                }
            }
            Err(RecvError::Closed) => panic!("the task service stopped"),
        }
    }
}

/// Submit → `ops.task.succeeded`, one task at a time, after 10 untimed ones.
async fn task_latency(cgroups: CgroupMode, n: usize) -> Vec<Duration> {
    let s = scratch(Synchronous::Normal, cgroups).await;
    let mut live = s.tasks.admin().subscribe_all();
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let start = Instant::now();
        let id = s
            .tasks
            .tenant(&ops_core::Tenant::parse(TENANT).unwrap())
            .submit(SubmitRequest::new("noop"))
            .await
            .expect("submit");
        await_success(&s.tasks, &mut live, id).await;
        if i >= 10 {
            out.push(start.elapsed());
        }
    }
    s.tasks.shutdown().await;
    out
}

// -------------------------------------------------------------------- 3. throughput

/// `n` processes of `true` (under the wrapper script when `wrapped`), at most
/// [`CONCURRENCY`] at a time.
async fn spawn_concurrently(n: usize, wrapped: bool) -> f64 {
    let dir = Arc::new(temp_dir());
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        while set.len() >= CONCURRENCY {
            set.join_next()
                .await
                .expect("a running spawn")
                .expect("join");
        }
        let dir = dir.clone();
        set.spawn(async move {
            if wrapped {
                tokio_wrapped_true(&dir.join(format!("exit-{i}"))).await;
            } else {
                tokio_true().await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("join");
    }
    start.elapsed().as_secs_f64()
}

/// Submits `n` `noop` tasks in one call and waits until all have succeeded (at most
/// [`CONCURRENCY`] run at once: capacity 64 CPUs, 1 CPU each).
async fn task_throughput(cgroups: CgroupMode, n: usize) -> f64 {
    let s = scratch(Synchronous::Normal, cgroups).await;
    // Warm-up: one task (cgroup parents, first spawn).
    let mut live = s.tasks.admin().subscribe_all();
    let id = s
        .tasks
        .tenant(&ops_core::Tenant::parse(TENANT).unwrap())
        .submit(SubmitRequest::new("noop"))
        .await
        .expect("submit");
    await_success(&s.tasks, &mut live, id).await;

    let counter = {
        let tasks = s.tasks.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < n {
                match live.recv().await {
                    Ok(e) if e.ty == event_types::TASK_SUCCEEDED => seen += 1,
                    Ok(e) if e.ty == event_types::TASK_FAILED => {
                        panic!("a task failed: {}", e.data)
                    }
                    Ok(_) => {}
                    // Fell behind the broadcast: count in history instead.
                    Err(RecvError::Lagged(_)) => {
                        seen = status_counts(&tasks)
                            .await
                            .iter()
                            .find(|(st, _)| *st == TaskStatus::Succeeded)
                            .map_or(0, |(_, c)| *c as usize)
                            .saturating_sub(1);
                    }
                    Err(RecvError::Closed) => panic!("the task service stopped"),
                }
            }
        })
    };
    let requests = vec![SubmitRequest::new("noop"); n];
    let start = Instant::now();
    s.tasks
        .tenant(&tenant())
        .submit_many(requests)
        .await
        .expect("submit");
    counter.await.expect("counter");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        status_counts(&s.tasks).await,
        vec![(TaskStatus::Succeeded, n as u64 + 1)]
    );
    s.tasks.shutdown().await;
    secs
}

/// p50 time to create one empty file on the task root's file system (what each attempt
/// pays several times: its directories, logs and exit record).
fn file_create_p50(n: usize) -> Duration {
    let dir = temp_dir();
    let mut samples: Vec<Duration> = (0..n)
        .map(|i| {
            let start = Instant::now();
            std::fs::File::create(dir.join(format!("f{i}"))).expect("create");
            start.elapsed()
        })
        .collect();
    samples.sort();
    percentile(&samples, 0.5)
}

// ------------------------------------------------------------------------ output

struct Row {
    name: String,
    count: usize,
    secs: f64,
    /// CPU seconds of this process and its reaped children during the measurement.
    cpu: f64,
    /// Index of the baseline row; `None` for a baseline.
    baseline: Option<usize>,
}

/// Runs `f`, measuring wall and CPU time.
async fn measure<F: Future<Output = f64>>(
    name: impl Into<String>,
    count: usize,
    baseline: Option<usize>,
    f: F,
) -> Row {
    let cpu = cpu_secs();
    let secs = f.await;
    Row {
        name: name.into(),
        count,
        secs,
        cpu: cpu_secs() - cpu,
        baseline,
    }
}

fn rate(row: &Row) -> f64 {
    row.count as f64 / row.secs
}

fn rate_table(unit: &str, rows: &[Row]) {
    println!("| name | {unit} | seconds | {unit}/s | vs baseline | CPU ms per task |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let ratio = match row.baseline {
            Some(b) => format!("{:.2}x", rate(row) / rate(&rows[b])),
            None => "1.00x (baseline)".to_owned(),
        };
        println!(
            "| {} | {} | {:.3} | {:.0} | {} | {:.3} |",
            row.name,
            row.count,
            row.secs,
            rate(row),
            ratio,
            row.cpu * 1000.0 / row.count as f64
        );
    }
}

struct LatencyRow {
    name: String,
    sorted: Vec<Duration>,
    baseline: Option<usize>,
}

impl LatencyRow {
    fn new(name: impl Into<String>, mut samples: Vec<Duration>, baseline: Option<usize>) -> Self {
        samples.sort();
        Self {
            name: name.into(),
            sorted: samples,
            baseline,
        }
    }
    fn p(&self, q: f64) -> Duration {
        percentile(&self.sorted, q)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn latency_table(rows: &[LatencyRow]) {
    println!("| name | count | seconds | per s | p50 ms | p90 ms | p99 ms | p50 vs baseline |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let total: f64 = row.sorted.iter().map(Duration::as_secs_f64).sum();
        let ratio = match row.baseline {
            Some(b) => format!(
                "{:.2}x",
                row.p(0.5).as_secs_f64() / rows[b].p(0.5).as_secs_f64()
            ),
            None => "1.00x (baseline)".to_owned(),
        };
        println!(
            "| {} | {} | {:.3} | {:.0} | {} | {} | {} | {} |",
            row.name,
            row.sorted.len(),
            total,
            row.sorted.len() as f64 / total,
            ms(row.p(0.5)),
            ms(row.p(0.9)),
            ms(row.p(0.99)),
            ratio
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

// -------------------------------------------------------------------------- main

/// 1. Durable submission.
fn submission(runtime: &tokio::runtime::Runtime, args: &Args) {
    let fp = runtime.block_on(footprint());
    println!(
        "### Durable submission (admission paused; per task: a ~{} B task row, a label \
         row, and two events of ~{} B stored twice: history and outbox)",
        fp.task_row, fp.event
    );
    println!();
    let n = args.submit;
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        let batch = SUBMIT_BATCH;
        let mut normal_db = None;
        for (label, sync) in [("NORMAL", Synchronous::Normal), ("FULL", Synchronous::Full)] {
            let b = rows.len();
            rows.push(
                measure(
                    format!("raw INSERT, 1 row/task, {batch}/tx, synchronous={label} (baseline)"),
                    n,
                    None,
                    raw_inserts(sync, n, fp.task_row, batch),
                )
                .await,
            );
            let mut db = None;
            rows.push(
                measure(
                    format!("Tasks::submit_many, {batch}/tx, synchronous={label}"),
                    n,
                    Some(b),
                    async {
                        let (secs, path) = submit(sync, n, batch, 1).await;
                        db = Some(path);
                        secs
                    },
                )
                .await,
            );
            if sync == Synchronous::Normal {
                normal_db = db;
                rows.push(
                    measure(
                        format!(
                            "Tasks::submit_many, {batch}/tx, synchronous={label}, 2 concurrent callers"
                        ),
                        n,
                        Some(b),
                        async { submit(sync, n, batch, 2).await.0 },
                    )
                    .await,
                );
            }
        }
        if let Some(db) = normal_db {
            rows.push(
                measure(
                    "same rows copied inside SQLite (INSERT…SELECT, 1 tx, NORMAL): engine only",
                    n,
                    Some(0),
                    engine_copy(Synchronous::Normal, &db),
                )
                .await,
            );
        }
        let single = args.single;
        for (label, sync) in [("NORMAL", Synchronous::Normal), ("FULL", Synchronous::Full)] {
            let b = rows.len();
            rows.push(
                measure(
                    format!("raw INSERT, 1 row/tx, synchronous={label} (baseline)"),
                    single,
                    None,
                    raw_inserts(sync, single, fp.task_row, 1),
                )
                .await,
            );
            rows.push(
                measure(
                    format!("Tasks::submit, 1 task/tx, synchronous={label}"),
                    single,
                    Some(b),
                    async { submit(sync, single, 1, 1).await.0 },
                )
                .await,
            );
        }
        rows
    });
    rate_table("tasks", &rows);
    println!();
    println!(
        "Target: submit_many at synchronous=NORMAL >= 20,000 tasks/s: {} ({:.0}/s)",
        verdict(rate(&rows[1]) >= 20_000.0),
        rate(&rows[1])
    );
    println!();
}

/// 2. Launch overhead.
fn launch(runtime: &tokio::runtime::Runtime, args: &Args, mode: CgroupMode) {
    let n = args.launches;
    println!("### Launch overhead: one `true` at a time, submit -> `ops.task.succeeded`");
    println!();
    let bare: Vec<Duration> = (0..n + 10)
        .map(|_| {
            let start = Instant::now();
            let status = std::process::Command::new("true")
                .status()
                .expect("spawn true");
            assert!(status.success());
            start.elapsed()
        })
        .skip(10)
        .collect();
    let mut rows = vec![LatencyRow::new(
        "std::process::Command `true` .status() (baseline)",
        bare,
        None,
    )];
    runtime.block_on(async {
        let exit_file = temp_dir().join("exit");
        let (mut plain, mut wrapped) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n + 10 {
            let start = Instant::now();
            tokio_true().await;
            let p = start.elapsed();
            let start = Instant::now();
            tokio_wrapped_true(&exit_file).await;
            if i >= 10 {
                plain.push(p);
                wrapped.push(start.elapsed());
            }
        }
        rows.push(LatencyRow::new(
            "tokio::process::Command `true`",
            plain,
            Some(0),
        ));
        rows.push(LatencyRow::new(
            "tokio: /bin/sh wrapper script + `true` (no cgroups)",
            wrapped,
            Some(0),
        ));
        rows.push(LatencyRow::new(
            format!("Tasks: submit -> succeeded, cgroups={mode}"),
            task_latency(CgroupMode::Auto, n).await,
            Some(0),
        ));
        if mode != CgroupMode::None {
            rows.push(LatencyRow::new(
                "Tasks: submit -> succeeded, cgroups=none",
                task_latency(CgroupMode::None, n).await,
                Some(0),
            ));
        }
    });
    latency_table(&rows);
    let ratio = rows[3].p(0.5).as_secs_f64() / rows[0].p(0.5).as_secs_f64();
    println!();
    println!(
        "Target: Tasks p50 (cgroups={mode}) within 3x of the bare spawn p50: {} ({ratio:.2}x)",
        verdict(ratio <= 3.0)
    );
    println!();
}

/// 3. Throughput with concurrency.
fn throughput(runtime: &tokio::runtime::Runtime, args: &Args, mode: CgroupMode) {
    let n = args.concurrent;
    println!("### Throughput: {n} `true` tasks submitted at once, at most {CONCURRENCY} running");
    println!();
    println!(
        "Creating an empty file in $TMPDIR takes {} µs (p50 of 1000); every attempt \
         creates five (two directories, two logs, the exit record).",
        (file_create_p50(1000).as_secs_f64() * 1e6).round()
    );
    println!();
    let rows = runtime.block_on(async {
        let mut rows = vec![
            measure(
                format!("tokio::process `true`, {CONCURRENCY} at a time (baseline)"),
                n,
                None,
                spawn_concurrently(n, false),
            )
            .await,
        ];
        rows.push(
            measure(
                format!("tokio: /bin/sh wrapper + `true`, {CONCURRENCY} at a time (no cgroups)"),
                n,
                Some(0),
                spawn_concurrently(n, true),
            )
            .await,
        );
        rows.push(
            measure(
                format!("Tasks: submit_many -> all succeeded, cgroups={mode}"),
                n,
                Some(0),
                task_throughput(CgroupMode::Auto, n),
            )
            .await,
        );
        if mode != CgroupMode::None {
            rows.push(
                measure(
                    "Tasks: submit_many -> all succeeded, cgroups=none",
                    n,
                    Some(0),
                    task_throughput(CgroupMode::None, n),
                )
                .await,
            );
        }
        rows
    });
    rate_table("tasks", &rows);
    println!();
    println!(
        "Target: >= 500 completed tasks/s (cgroups={mode}): {} ({:.0}/s)",
        verdict(rate(&rows[2]) >= 500.0),
        rate(&rows[2])
    );
    println!();
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let began = Instant::now();
    let mode = executor(CgroupMode::Auto).cgroup_mode();
    println!(
        "Machine: {}; tokio: 2 worker threads; local executor cgroups: auto -> {mode}{}",
        ops_testbed::machine(),
        if args.quick { "; --quick" } else { "" }
    );
    println!();
    let run = |name: &str| args.only.as_deref().is_none_or(|o| o == name);
    if run("submit") {
        submission(&runtime, &args);
    }
    if run("launch") {
        launch(&runtime, &args, mode);
    }
    if run("throughput") {
        throughput(&runtime, &args, mode);
    }
    println!("Total bench time: {:.1} s", began.elapsed().as_secs_f64());
    drop(runtime);
    DIRS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
