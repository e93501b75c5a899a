//! Several coordinator processes on one Postgres, with faults: one is SIGKILLed
//! midway; the database restarts under load. Real processes (the `coordinator`
//! binary), a real PostgreSQL, real tasks.

#![allow(clippy::print_stderr)] // test progress notes, shown with --nocapture

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ops::core::{TaskId, TaskStatus, Tenant, event_types};
use ops::tasks::{HistoryStore, SubmitRequest, TaskQuery, Tasks};

struct Coordinator {
    id: String,
    child: Child,
    log: PathBuf,
}

impl Coordinator {
    fn spawn(db: &str, dir: &Path, templates: &Path, id: &str, ttl: &str, hb: &str) -> Self {
        let log = dir.join(format!("{id}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .args(["--history", db, "--templates"])
            .arg(templates)
            .arg("--root")
            .arg(dir.join(id))
            .args(["--id", id, "--max-running", "8", "--lease-ttl", ttl])
            .args(["--heartbeat", hb, "--poll", "100ms", "--audit"])
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn coordinator");
        // Wait for its ready line.
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.contains("ready"),
            "coordinator {id} did not start: {line:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self {
            id: id.to_owned(),
            child,
            log,
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn templates(dir: &Path, command: &str) -> PathBuf {
    let t = dir.join("templates");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("quick.toml"),
        format!("name = \"quick\"\ncommand = {command}\n[resources]\ncpu = \"100m\"\nmemory = \"16Mi\"\n"),
    )
    .unwrap();
    t
}

/// A submit-only front end on the shared database, as an API process would run it.
async fn client(db: &str, templates: &Path) -> (Tasks, Arc<dyn HistoryStore>) {
    let platform = ops::Platform::builder()
        .history(db)
        .templates(templates)
        .submit_only()
        .start()
        .await
        .unwrap();
    let history = platform.admin().history().clone();
    (platform.tasks().clone(), history)
}

fn acme() -> Tenant {
    Tenant::parse("acme").unwrap()
}

async fn submit(tasks: &Tasks, n: usize) -> Vec<TaskId> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(500) {
        let k = 500.min(n - chunk * 500);
        let requests = (0..k).map(|_| SubmitRequest::new("quick")).collect();
        ids.extend(tasks.tenant(&acme()).submit_many(requests).await.unwrap());
    }
    ids
}

async fn finished(history: &dyn HistoryStore) -> u64 {
    match history.count_by_status(None).await {
        Ok(counts) => counts
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| n)
            .sum(),
        Err(_) => 0, // the database may be restarting
    }
}

async fn wait_finished(
    history: &dyn HistoryStore,
    n: u64,
    within: Duration,
    logs: &[&Coordinator],
) {
    let deadline = Instant::now() + within;
    loop {
        let done = finished(history).await;
        if done >= n {
            return;
        }
        if Instant::now() > deadline {
            let mut text = String::new();
            for c in logs {
                let log = std::fs::read_to_string(&c.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                text += &format!(
                    "--- {} ---\n{}\n",
                    c.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!("only {done} of {n} tasks finished in {within:?}\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every task ended exactly once, with a complete and consistent chain of
/// transitions, nothing left leased; returns every event id.
async fn check_tasks(history: &dyn HistoryStore, ids: &[TaskId]) -> HashSet<String> {
    let tenant = acme();
    let mut listed = 0;
    let mut cursor = None;
    loop {
        let page = history
            .list(&tenant, &TaskQuery::new().limit(1000).after(cursor))
            .await
            .unwrap();
        for t in &page.tasks {
            listed += 1;
            assert_eq!(
                t.status,
                TaskStatus::Succeeded,
                "task {} ended {:?}: {:?}",
                t.id,
                t.status,
                t.message
            );
            assert_eq!(t.owner, None, "task {} is still leased", t.id);
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(listed, ids.len());
    let mut all_events = HashSet::new();
    let mut restarted = 0;
    for id in ids {
        let events = history.events(*id).await.unwrap();
        let count = |ty: &str| events.iter().filter(|e| e.ty == ty).count();
        let finals = events
            .iter()
            .filter(|e| {
                matches!(
                    e.ty.as_str(),
                    event_types::TASK_SUCCEEDED
                        | event_types::TASK_FAILED
                        | event_types::TASK_CANCELLED
                        | event_types::TASK_TIMED_OUT
                )
            })
            .count();
        assert_eq!(finals, 1, "task {id}: {finals} final events");
        assert_eq!(count(event_types::TASK_SUBMITTED), 1, "task {id}");
        let started = count(event_types::TASK_STARTED);
        assert!(started >= 1, "task {id} never started");
        if started > 1 {
            // Only a lost coordinator's attempt may be followed by another one.
            restarted += 1;
            assert_eq!(
                count(event_types::TASK_RETRYING),
                started - 1,
                "task {id}: {events:?}"
            );
        }
        let transitions = history.transitions(*id).await.unwrap();
        assert_eq!(transitions[0].from, None);
        for pair in transitions.windows(2) {
            assert_eq!(
                pair[1].from,
                Some(pair[0].to),
                "task {id}: broken chain {transitions:?}"
            );
        }
        for e in events {
            assert!(
                all_events.insert(e.id.to_string()),
                "duplicate event {}",
                e.id
            );
        }
    }
    eprintln!(
        "{} tasks checked; {restarted} needed a second attempt",
        ids.len()
    );
    all_events
}

/// The audit function saw every event (at least once), recorded each exactly once,
/// and nothing else.
async fn check_audit(db: &str, events: &HashSet<String>) {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM ops_event_audit")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows as usize >= events.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT event_id, deliveries FROM ops_event_audit")
            .fetch_all(&pool)
            .await
            .unwrap();
    let seen: HashSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    let missing = events.difference(&seen).count();
    let invented = seen.difference(events).count();
    assert_eq!(
        (missing, invented),
        (0, 0),
        "audit: {missing} events missing, {invented} unknown"
    );
    assert!(rows.iter().all(|(_, d)| *d >= 1));
    let redelivered = rows.iter().filter(|(_, d)| *d > 1).count();
    eprintln!(
        "audit: {} events recorded once each; {redelivered} were delivered more than once",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_one_killed_midway() {
    let Some(db) = ops_testbed::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let templates = templates(dir.path(), r#"["true"]"#);
    let (tasks, history) = client(&db, &templates).await;
    // Start the first coordinator alone so the schema is created once.
    let mut c1 = Coordinator::spawn(&db, dir.path(), &templates, "c1", "2s", "500ms");
    let mut c2 = Coordinator::spawn(&db, dir.path(), &templates, "c2", "2s", "500ms");
    let mut c3 = Coordinator::spawn(&db, dir.path(), &templates, "c3", "2s", "500ms");

    let ids = submit(&tasks, 2000).await;
    // Midway: kill c2 while it owns work.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut owned_at_kill = 0;
    while Instant::now() < deadline {
        let done = finished(history.as_ref()).await;
        owned_at_kill = history.owned("c2").await.unwrap().len();
        if done >= 600 && owned_at_kill > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(owned_at_kill > 0, "c2 never owned work");
    c2.kill();
    eprintln!("killed c2 while it owned {owned_at_kill} tasks");

    wait_finished(
        history.as_ref(),
        2000,
        Duration::from_secs(240),
        &[&c1, &c2, &c3],
    )
    .await;
    assert!(
        history.owned("c2").await.unwrap().is_empty(),
        "c2's tasks were not taken over"
    );
    let events = check_tasks(history.as_ref(), &ids).await;
    // submitted, queued, started, succeeded — at least — for every task.
    assert!(events.len() >= ids.len() * 4);
    check_audit(&db, &events).await;
    c1.stop();
    c3.stop();
    tasks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_load() {
    let Some(mut server) = ops_testbed::PostgresServer::start() else {
        return;
    };
    let db = server.database();
    let dir = tempfile::tempdir().unwrap();
    let templates = templates(dir.path(), r#"["sleep", "0.05"]"#);
    let (tasks, history) = client(&db, &templates).await;
    let mut c1 = Coordinator::spawn(&db, dir.path(), &templates, "r1", "10s", "1s");
    let mut c2 = Coordinator::spawn(&db, dir.path(), &templates, "r2", "10s", "1s");

    let ids = submit(&tasks, 400).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished(history.as_ref()).await < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = finished(history.as_ref()).await;
    assert!(
        before < 400,
        "all tasks finished before the restart ({before})"
    );
    server.restart();
    eprintln!("restarted Postgres with {before} of 400 tasks finished");

    wait_finished(history.as_ref(), 400, Duration::from_secs(240), &[&c1, &c2]).await;
    let events = check_tasks(history.as_ref(), &ids).await;
    check_audit(&db, &events).await;
    c1.stop();
    c2.stop();
    tasks.shutdown().await;
}
