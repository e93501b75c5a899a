//! The local executor against real processes.
//!
//! Tests that need cgroups skip (saying why) when none is usable, and fail instead when
//! `OPS_REQUIRE_SERVICES=1`: run them as root on a host with a writable cgroup v1
//! `memory` hierarchy or a cgroup v2 hierarchy whose memory controller can be delegated.
//! `OPS_TEST_CGROUPS=none` runs everything through the fallback without cgroups.
#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ops_core::{Reason, TaskId};
use ops_tasks::local::{CgroupMode, GpuDevice, LocalExecutor, LocalExecutorConfig};
use ops_tasks::taskdir::follow_log;
use ops_tasks::{
    Error, Executor, ExecutorUpdate, LaunchSpec, LogStream, Outcome, Reattached, RunHandle,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// `OPS_TEST_CGROUPS=none|v1|v2|auto` forces a cgroup mode (default `auto`).
fn config() -> LocalExecutorConfig {
    let mut c = LocalExecutorConfig::default();
    if let Ok(mode) = std::env::var("OPS_TEST_CGROUPS") {
        c.cgroups =
            serde_json::from_value(json!(mode)).expect("OPS_TEST_CGROUPS: none, v1, v2 or auto");
    }
    c.kill_grace = Duration::from_secs(1);
    c.poll_interval = Duration::from_millis(50);
    c
}

fn executor() -> LocalExecutor {
    LocalExecutor::new(config()).expect("local executor")
}

/// A spec for `argv` in `dir`; `extra` overrides fields (`resources`, `timeout`…).
fn spec(dir: &Path, argv: &[&str], extra: Value) -> LaunchSpec {
    let mut v = json!({
        "task_id": TaskId::new(),
        "attempt": 1,
        "tenant": "acme",
        "argv": argv,
        "env": {},
        "task_dir": dir,
        "workdir": null,
        "resources": {},
        "timeout": null,
        "output_globs": [],
    });
    if let (Some(base), Value::Object(extra)) = (v.as_object_mut(), extra) {
        base.extend(extra);
    }
    serde_json::from_value(v).expect("launch spec")
}

fn secs(s: f64) -> Value {
    let d = Duration::from_secs_f64(s);
    json!({ "secs": d.as_secs(), "nanos": d.subsec_nanos() })
}

/// Whether cgroups are in use; otherwise skips (or fails under OPS_REQUIRE_SERVICES=1).
fn cgroups_or_skip(ex: &LocalExecutor, test: &str) -> bool {
    if ex.cgroup_mode() != CgroupMode::None {
        return true;
    }
    let why = "no usable cgroups (needs root and a writable cgroup v1 memory hierarchy, or cgroup v2 with a delegable memory controller)";
    if std::env::var("OPS_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: {why}; OPS_REQUIRE_SERVICES=1 forbids skipping");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// Collects updates until `Finished`; returns them all and the outcome.
async fn until_finished(
    rx: &mut mpsc::UnboundedReceiver<ExecutorUpdate>,
) -> (Vec<ExecutorUpdate>, Outcome) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let update = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no Finished within 30 s")
            .expect("channel closed before Finished");
        if let ExecutorUpdate::Finished { outcome, .. } = &update {
            let outcome = outcome.clone();
            seen.push(update);
            // Nothing may follow Finished.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(rx.try_recv().is_err(), "update after Finished");
            return (seen, outcome);
        }
        seen.push(update);
    }
}

async fn run(ex: &LocalExecutor, spec: LaunchSpec) -> (Vec<ExecutorUpdate>, Outcome) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    ex.launch(spec, tx).await.expect("launch");
    until_finished(&mut rx).await
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// Whether the process is gone (zombies count: PID 1 may not reap here).
fn is_dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            state == "Z" || state == "X"
        }
    }
}

#[tokio::test]
async fn success_captures_output_and_cleans_environment() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    assert_ne!(ex.cgroup_mode(), CgroupMode::Auto);
    assert!(ex.capacity().cpu_millis >= 1000, "{:?}", ex.capacity());
    assert!(ex.capacity().memory_bytes > 0, "{:?}", ex.capacity());
    let s = spec(
        dir.path(),
        &["sh", "-c", "echo hello; echo oops >&2; env | sort; pwd"],
        json!({ "env": { "GREETING": "hi" }, "workdir": "work/here" }),
    );
    let task_id = s.task_id;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = ex.launch(s, tx).await.unwrap();
    assert_eq!(handle.executor, "local");
    assert_eq!(handle.task_id, task_id);
    let stdout = ex.log_path(dir.path(), LogStream::Stdout);
    let (updates, outcome) = until_finished(&mut rx).await;
    assert!(
        matches!(updates.first(), Some(ExecutorUpdate::Started { gpus, .. }) if gpus.is_empty()),
        "{updates:?}"
    );
    assert_eq!(outcome.reason, Reason::Completed, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(0));
    assert!(outcome.usage.wall_time > Duration::ZERO);

    let out = read(&stdout);
    let root = dir.path().canonicalize().unwrap();
    assert!(out.starts_with("hello\n"), "{out}");
    assert!(out.contains(&format!("HOME={}\n", root.display())), "{out}");
    assert!(out.contains("LANG=C.UTF-8\n"), "{out}");
    assert!(out.contains("GREETING=hi\n"), "{out}");
    assert!(out.contains(&format!("OPS_TASK_ID={task_id}\n")), "{out}");
    assert!(out.contains("OPS_ATTEMPT=1\n"), "{out}");
    assert!(
        !out.contains("CARGO_MANIFEST_DIR"),
        "the coordinator's environment leaked: {out}"
    );
    assert!(
        out.trim_end()
            .ends_with(&root.join("work/here").display().to_string()),
        "{out}"
    );
    assert_eq!(read(ex.log_path(dir.path(), LogStream::Stderr)), "oops\n");

    // A second attempt appends to the same logs; follow_log streams it live.
    let mut s2 = spec(
        dir.path(),
        &["sh", "-c", "echo second; sleep 0.3; echo end"],
        json!({ "attempt": 2 }),
    );
    s2.task_id = task_id;
    let offset = std::fs::metadata(&stdout).unwrap().len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = ex.launch(s2, tx).await.unwrap();
    assert_eq!(LocalExecutor::log_offsets(&handle), Some((offset, 5)));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let follower = tokio::spawn(
        follow_log(stdout.clone(), offset, async move {
            let _ = done_rx.await;
        })
        .map(|chunk| chunk.unwrap())
        .concat(),
    );
    let (_, outcome) = until_finished(&mut rx).await;
    assert!(outcome.succeeded());
    done_tx.send(()).unwrap();
    assert_eq!(follower.await.unwrap(), b"second\nend\n");
    assert!(read(&stdout).starts_with("hello\n"));
}

#[tokio::test]
async fn non_zero_exit_and_signal() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    let (_, o) = run(&ex, spec(dir.path(), &["sh", "-c", "exit 3"], json!({}))).await;
    assert_eq!(
        (o.reason, o.exit_code, o.signal),
        (Reason::NonZeroExit, Some(3), None),
        "{o:?}"
    );
    assert!(o.message.unwrap().contains('3'));

    let (_, o) = run(
        &ex,
        spec(
            dir.path(),
            &["sh", "-c", "kill -USR1 $$"],
            json!({ "attempt": 2 }),
        ),
    )
    .await;
    assert_eq!(
        (o.reason, o.exit_code, o.signal),
        (Reason::Signaled, None, Some(10)),
        "{o:?}"
    );
    assert!(o.message.unwrap().contains("SIGUSR1"));
}

#[tokio::test]
async fn command_not_found_is_reported_not_raised() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    let (updates, o) = run(
        &ex,
        spec(dir.path(), &["no-such-program-xyz", "arg"], json!({})),
    )
    .await;
    assert_eq!(updates.len(), 1, "only Finished: {updates:?}");
    assert_eq!(o.reason, Reason::CommandNotFound);
    assert!(
        o.message
            .as_deref()
            .unwrap()
            .contains("no-such-program-xyz"),
        "{o:?}"
    );

    std::fs::write(dir.path().join("data.txt"), "not a program").unwrap();
    let (_, o) = run(
        &ex,
        spec(dir.path(), &["./data.txt"], json!({ "attempt": 2 })),
    )
    .await;
    assert_eq!(o.reason, Reason::CommandNotFound);
    assert!(o.message.as_deref().unwrap().contains("data.txt"), "{o:?}");
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    let script =
        "sleep 1000 & echo $! > bg.pid; setsid sleep 1000 & echo $! > escaped.pid; sleep 1000";
    let started = Instant::now();
    let (_, o) = run(
        &ex,
        spec(
            dir.path(),
            &["sh", "-c", script],
            json!({ "timeout": secs(0.5) }),
        ),
    )
    .await;
    assert_eq!(o.reason, Reason::TimedOut, "{o:?}");
    assert!(o.message.as_deref().unwrap().contains("timed out"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(o.usage.wall_time >= Duration::from_millis(450), "{o:?}");
    assert!(
        is_dead(&read(dir.path().join("bg.pid"))),
        "background child survived"
    );
    if ex.cgroup_mode() != CgroupMode::None {
        assert!(
            is_dead(&read(dir.path().join("escaped.pid"))),
            "setsid child survived the cgroup kill"
        );
    } else {
        // Without cgroups a process that left the group escapes: clean it up ourselves.
        let _ = std::process::Command::new("kill")
            .arg(read(dir.path().join("escaped.pid")).trim())
            .status();
    }
}

#[tokio::test]
async fn cancel_kills_and_reports_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    // The task ignores SIGTERM: SIGKILL follows after the grace period.
    let s = spec(
        dir.path(),
        &[
            "sh",
            "-c",
            "trap '' TERM; sleep 1000 & echo $! > bg.pid; while :; do sleep 1; done",
        ],
        json!({}),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = ex.launch(s, tx).await.unwrap();
    assert!(matches!(
        rx.recv().await,
        Some(ExecutorUpdate::Started { .. })
    ));
    for _ in 0..100 {
        if dir.path().join("bg.pid").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ex.cancel(&handle).await.unwrap();
    let (_, o) = until_finished(&mut rx).await;
    assert_eq!(o.reason, Reason::Cancelled, "{o:?}");
    assert!(is_dead(&read(dir.path().join("bg.pid"))));
    // Cancelling again is fine.
    ex.cancel(&handle).await.unwrap();

    // shutdown() cancels everything still running.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = spec(dir.path(), &["sleep", "1000"], json!({ "attempt": 2 }));
    ex.launch(s, tx).await.unwrap();
    ex.shutdown().await;
    let (_, o) = until_finished(&mut rx).await;
    assert_eq!(o.reason, Reason::Cancelled, "{o:?}");
}

/// Waits until `path` exists (the task got going), at most 10 s.
async fn wait_for_file(path: &Path) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} did not appear", path.display());
}

#[tokio::test]
async fn preempt_signals_then_kills_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();

    // A task that checkpoints on SIGTERM and exits: the signal reaches it at once.
    let checkpointing = dir.path().join("checkpointing");
    let script = "trap 'echo saved > checkpoint; exit 143' TERM; touch ready; \
                  while :; do sleep 0.1; done";
    let s = spec(&checkpointing, &["sh", "-c", script], json!({}));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = ex.launch(s, tx).await.unwrap();
    wait_for_file(&checkpointing.join("ready")).await;
    let asked = Instant::now();
    ex.preempt(&handle, Duration::from_secs(20)).await.unwrap();
    let (_, o) = until_finished(&mut rx).await;
    assert_eq!(o.reason, Reason::Preempted, "{o:?}");
    assert_eq!(read(checkpointing.join("checkpoint")).trim(), "saved");
    // It exited on its own, long before the grace ran out.
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "took {:?}",
        asked.elapsed()
    );
    // Preempting an attempt that ended is fine.
    ex.preempt(&handle, Duration::from_secs(1)).await.unwrap();

    // A task that ignores SIGTERM is killed once the grace (not kill_grace) is over.
    let stubborn = dir.path().join("stubborn");
    let script = "trap '' TERM; sleep 1000 & echo $! > bg.pid; touch ready; \
                  while :; do sleep 0.1; done";
    let s = spec(&stubborn, &["sh", "-c", script], json!({}));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = ex.launch(s, tx).await.unwrap();
    wait_for_file(&stubborn.join("ready")).await;
    let grace = Duration::from_millis(2500);
    assert!(grace > ex.config().kill_grace);
    let asked = Instant::now();
    ex.preempt(&handle, grace).await.unwrap();
    let (_, o) = until_finished(&mut rx).await;
    let elapsed = asked.elapsed();
    assert_eq!(o.reason, Reason::Preempted, "{o:?}");
    assert!(o.message.as_deref().unwrap().contains("preempted"), "{o:?}");
    assert!(
        elapsed >= grace,
        "killed after {elapsed:?}, grace {grace:?}"
    );
    assert!(
        elapsed < grace + Duration::from_secs(15),
        "took {elapsed:?}"
    );
    assert!(is_dead(&read(stubborn.join("bg.pid"))));

    // A cancel during a long preemption grace brings the kill forward.
    let s = spec(&stubborn, &["sh", "-c", script], json!({ "attempt": 2 }));
    let _ = std::fs::remove_file(stubborn.join("ready"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = ex.launch(s, tx).await.unwrap();
    wait_for_file(&stubborn.join("ready")).await;
    let asked = Instant::now();
    ex.preempt(&handle, Duration::from_secs(600)).await.unwrap();
    ex.cancel(&handle).await.unwrap();
    let (_, o) = until_finished(&mut rx).await;
    assert_eq!(o.reason, Reason::Preempted, "the first reason stays: {o:?}");
    assert!(asked.elapsed() >= ex.config().kill_grace);
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "took {:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn memory_limit_kills_with_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    if !cgroups_or_skip(&ex, "memory_limit_kills_with_out_of_memory") {
        return;
    }
    let s = spec(
        dir.path(),
        &["sh", "-c", "head -c 200M /dev/zero | tail"],
        json!({ "resources": { "memory": "50Mi" } }),
    );
    let (_, o) = run(&ex, s).await;
    assert_eq!(o.reason, Reason::OutOfMemory, "{o:?}");
    assert!(o.usage.peak_memory_bytes > 10 << 20, "{o:?}");
    assert!(o.usage.peak_memory_bytes <= 51 << 20, "{o:?}");
}

#[tokio::test]
async fn memory_is_watched_without_cgroups() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.cgroups = CgroupMode::None;
    let ex = LocalExecutor::new(c).unwrap();
    assert_eq!(ex.cgroup_mode(), CgroupMode::None);
    let s = spec(
        dir.path(),
        &[
            "python3",
            "-c",
            "import time\nb = b'x' * (200 << 20)\ntime.sleep(20)",
        ],
        json!({ "resources": { "memory": "50Mi" } }),
    );
    let started = Instant::now();
    let (_, o) = run(&ex, s).await;
    assert_eq!(o.reason, Reason::OutOfMemory, "{o:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(o.usage.peak_memory_bytes > 50 << 20, "{o:?}");
    assert!(o.usage.cpu_time > Duration::ZERO, "{o:?}");
}

#[tokio::test]
async fn process_count_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.pids_max = 5;
    let ex = LocalExecutor::new(c).unwrap();
    if !cgroups_or_skip(&ex, "process_count_is_limited") {
        return;
    }
    let script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 3 & done; echo spawned all";
    let (_, o) = run(&ex, spec(dir.path(), &["sh", "-c", script], json!({}))).await;
    assert_eq!(o.reason, Reason::NonZeroExit, "{o:?}");
    assert!(read(dir.path().join(".ops/stderr.log")).contains("fork"));
    assert!(!read(dir.path().join(".ops/stdout.log")).contains("spawned all"));
}

#[tokio::test]
async fn cpu_time_and_peak_memory_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    let busy = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
    let (_, o) = run(&ex, spec(dir.path(), &["sh", "-c", busy], json!({}))).await;
    assert!(o.succeeded(), "{o:?}");
    assert!(o.usage.cpu_time > Duration::from_millis(100), "{o:?}");
    assert!(o.usage.peak_memory_bytes > 0, "{o:?}");
    assert_eq!(o.usage.gpu_seconds, 0.0);

    if cgroups_or_skip(&ex, "cpu quota") {
        // Half a core: the same work takes about twice its CPU time.
        let s = spec(
            dir.path(),
            &["sh", "-c", busy],
            json!({ "attempt": 2, "resources": { "cpu": "500m" } }),
        );
        let (_, o) = run(&ex, s).await;
        assert!(o.succeeded(), "{o:?}");
        assert!(
            o.usage.wall_time.as_secs_f64() >= o.usage.cpu_time.as_secs_f64() * 1.5,
            "{o:?}"
        );
    }
}

#[tokio::test]
async fn outputs_are_reported_once_and_never_outside() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    let script = "mkdir -p out sub; echo a > out/a.txt; sleep 0.4; echo b > sub/b.png; echo c > out/c.log; \
                  ln -s /etc/passwd out/x.txt; ln -s a.txt out/y.txt; ln -s /etc out/etc; \
                  echo hidden > .ops/z.png; sleep 0.3; echo more >> out/a.txt";
    let s = spec(
        dir.path(),
        &["sh", "-c", script],
        json!({ "output_globs": ["out/*.txt", "**/*.png", "out/etc/*"] }),
    );
    let (updates, o) = run(&ex, s).await;
    assert!(o.succeeded(), "{o:?}");
    let outputs: Vec<(String, u64)> = updates
        .iter()
        .filter_map(|u| match u {
            ExecutorUpdate::OutputCreated { path, size, .. } => Some((path.clone(), *size)),
            _ => None,
        })
        .collect();
    let paths: BTreeSet<&str> = outputs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["out/a.txt", "out/y.txt", "sub/b.png"]),
        "{outputs:?}"
    );
    assert_eq!(outputs.len(), 3, "each path once: {outputs:?}");
    assert!(matches!(
        updates.last(),
        Some(ExecutorUpdate::Finished { .. })
    ));

    // Globs that leave the task directory are refused before anything starts.
    let (tx, _rx) = mpsc::unbounded_channel();
    let bad = spec(
        dir.path(),
        &["true"],
        json!({ "attempt": 2, "output_globs": ["../*"] }),
    );
    assert!(matches!(
        ex.launch(bad, tx.clone()).await,
        Err(Error::PathEscape { .. })
    ));
    let bad = spec(
        dir.path(),
        &["true"],
        json!({ "attempt": 3, "workdir": "../elsewhere" }),
    );
    assert!(matches!(
        ex.launch(bad, tx).await,
        Err(Error::PathEscape { .. })
    ));
}

#[tokio::test]
async fn gpus_are_assigned_exclusively() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.gpus = Some(vec![
        GpuDevice::new(Some(0), Some("GPU-aaaa".into()), "NVIDIA A100-SXM4-80GB"),
        GpuDevice::new(Some(1), Some("GPU-bbbb".into()), "NVIDIA A100-SXM4-80GB"),
    ]);
    let ex = LocalExecutor::new(c).unwrap();
    assert_eq!(ex.capacity().gpus.count, 2);
    let one_gpu = json!({ "resources": { "gpus": { "count": 1, "model": "a100" } } });
    let script = "echo \"$CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES\"; sleep 0.5";
    let mut rxs = Vec::new();
    let mut assigned = Vec::new();
    for i in 0..2 {
        let sub = dir.path().join(format!("t{i}"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        ex.launch(spec(&sub, &["sh", "-c", script], one_gpu.clone()), tx)
            .await
            .unwrap();
        match rx.recv().await {
            Some(ExecutorUpdate::Started { gpus, .. }) => assigned.push(gpus),
            other => panic!("{other:?}"),
        }
        rxs.push((sub, rx));
    }
    assert_eq!(assigned[0].len(), 1);
    assert_ne!(assigned[0], assigned[1], "the same GPU twice");
    // Monitoring asks who holds which GPU: both are held, each by one task.
    let mut holders: Vec<(String, TaskId)> = ex
        .gpu_holders()
        .into_iter()
        .map(|(device, task, attempt)| {
            assert_eq!(attempt, 1);
            (device.id(), task)
        })
        .collect();
    holders.sort();
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert_ne!(holders[0].1, holders[1].1, "{holders:?}");
    let mut ids: Vec<String> = assigned.iter().map(|g| g[0].clone()).collect();
    ids.sort();
    assert_eq!(
        holders.iter().map(|(g, _)| g.clone()).collect::<Vec<_>>(),
        ids
    );

    // A third does not fit until one ends; a model that is not there never does.
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = ex
        .launch(
            spec(&dir.path().join("t2"), &["true"], one_gpu.clone()),
            tx.clone(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Executor { .. }), "{err}");
    let h100 = json!({ "resources": { "gpus": { "count": 1, "model": "H100" } } });
    assert!(
        ex.launch(spec(&dir.path().join("t3"), &["true"], h100), tx)
            .await
            .is_err()
    );

    for (i, (sub, mut rx)) in rxs.into_iter().enumerate() {
        let (_, o) = until_finished(&mut rx).await;
        assert!(o.succeeded(), "{o:?}");
        assert!(o.usage.gpu_seconds >= 0.4, "{o:?}");
        let id = &assigned[i][0];
        assert_eq!(read(sub.join(".ops/stdout.log")), format!("{id} {id}\n"));
    }
    let (_, o) = run(
        &ex,
        spec(
            &dir.path().join("t4"),
            &["sh", "-c", "echo \"[$CUDA_VISIBLE_DEVICES]\""],
            one_gpu,
        ),
    )
    .await;
    assert!(o.succeeded(), "GPUs were not freed: {o:?}");
    assert!(ex.gpu_holders().is_empty(), "released GPUs have no holder");
    let (_, o) = run(
        &ex,
        spec(
            &dir.path().join("t5"),
            &["sh", "-c", "echo \"[$CUDA_VISIBLE_DEVICES]\""],
            json!({}),
        ),
    )
    .await;
    assert!(o.succeeded());
    assert_eq!(
        read(dir.path().join("t5/.ops/stdout.log")),
        "[]\n",
        "a task without GPUs sees none"
    );
}

#[tokio::test]
async fn reattach_after_restart() {
    let dir = tempfile::tempdir().unwrap();

    // Still running when the new executor arrives: it keeps watching and reports.
    let first = executor();
    let s = spec(
        &dir.path().join("a"),
        &["sh", "-c", "sleep 0.8; echo done > out.txt; exit 7"],
        json!({ "output_globs": ["*.txt"] }),
    );
    let (tx, mut old_rx) = mpsc::unbounded_channel();
    let handle = first.launch(s.clone(), tx).await.unwrap();
    let handle: RunHandle = serde_json::from_str(&serde_json::to_string(&handle).unwrap()).unwrap();
    drop(first); // like a crash: the process keeps running
    let second = executor();
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert_eq!(
        second.reattach(&handle, &s, tx).await.unwrap(),
        Reattached::Running
    );
    let (updates, o) = until_finished(&mut rx).await;
    assert_eq!(
        (o.reason, o.exit_code),
        (Reason::NonZeroExit, Some(7)),
        "{o:?}"
    );
    assert!(o.usage.wall_time >= Duration::from_millis(700), "{o:?}");
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, ExecutorUpdate::OutputCreated { path, .. } if path == "out.txt")),
        "{updates:?}"
    );
    assert!(matches!(
        old_rx.recv().await,
        Some(ExecutorUpdate::Started { .. })
    ));
    assert!(
        old_rx.try_recv().is_err(),
        "the dropped executor kept reporting"
    );

    // Ended while nobody watched: the recorded status.
    let first = executor();
    let s = spec(&dir.path().join("b"), &["sh", "-c", "exit 4"], json!({}));
    let (tx, _rx) = mpsc::unbounded_channel();
    let handle = first.launch(s.clone(), tx).await.unwrap();
    first.detach();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    match second.reattach(&handle, &s, tx).await.unwrap() {
        Reattached::Gone(o) => assert_eq!(
            (o.reason, o.exit_code),
            (Reason::NonZeroExit, Some(4)),
            "{o:?}"
        ),
        other => panic!("{other:?}"),
    }

    // The timeout still holds after a restart.
    let s = spec(
        &dir.path().join("c"),
        &["sleep", "1000"],
        json!({ "timeout": secs(0.8) }),
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    let handle = first.launch(s.clone(), tx).await.unwrap();
    drop(first);
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert_eq!(
        second.reattach(&handle, &s, tx).await.unwrap(),
        Reattached::Running
    );
    let (_, o) = until_finished(&mut rx).await;
    assert_eq!(o.reason, Reason::TimedOut, "{o:?}");

    // No record and a reused pid: lost.
    let mut forged = handle.clone();
    forged.detail["pid"] = json!(std::process::id());
    forged.detail["start_ticks"] = json!(1);
    forged.attempt = 9;
    let _ = std::fs::remove_file(dir.path().join("c/.ops/exit-9"));
    let (tx, _rx) = mpsc::unbounded_channel();
    match second.reattach(&forged, &s, tx).await.unwrap() {
        Reattached::Gone(o) => assert_eq!(o.reason, Reason::CoordinatorLost, "{o:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn parameters_arrive_literally() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor();
    let nasty = [
        "; rm -rf pwned-dir",
        "$(touch pwned)",
        "`touch pwned2`",
        "line1\nline2",
        "' \" \\ && touch pwned3 | cat",
        "--help",
        "*",
    ];
    std::fs::create_dir_all(dir.path().join("pwned-dir")).unwrap();
    let mut argv = vec!["printf", "%s\\0"];
    argv.extend(nasty);
    let s = spec(
        dir.path(),
        &argv,
        json!({ "env": { "X": "$(touch pwned4)" } }),
    );
    let (_, o) = run(&ex, s).await;
    assert!(o.succeeded(), "{o:?}");
    let out = read(dir.path().join(".ops/stdout.log"));
    let got: Vec<&str> = out.split('\0').filter(|s| !s.is_empty()).collect();
    assert_eq!(got, nasty);
    for f in ["pwned", "pwned2", "pwned3", "pwned4"] {
        assert!(!dir.path().join(f).exists(), "{f} was created");
    }
    assert!(dir.path().join("pwned-dir").exists());

    let (_, o) = run(
        &ex,
        spec(
            dir.path(),
            &["printenv", "X"],
            json!({ "attempt": 2, "env": { "X": "$(touch pwned4)" } }),
        ),
    )
    .await;
    assert!(o.succeeded());
    assert!(read(dir.path().join(".ops/stdout.log")).ends_with("$(touch pwned4)\n"));
    assert!(!dir.path().join("pwned4").exists());
}
