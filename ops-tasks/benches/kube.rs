//! The Kubernetes executor against the API-server simulator (ops-kubesim), which runs in
//! a child process so that the memory figures are the coordinator's alone.
//!
//! ```text
//! cargo bench -p ops-tasks --features kube --bench kube
//! cargo bench -p ops-tasks --features kube --bench kube -- --quick
//! cargo bench -p ops-tasks --features kube --bench kube -- --tasks 10000 --nodes 100 --max-requests 64
//! ```
//!
//! - **Lifecycles**: N tasks launched through `Executor::launch` (256 at a time, as the
//!   coordinator launches a round), each a pod that runs for 10 ms and exits 0, until
//!   every `Finished` arrived; once without and once with each pod's log streamed into
//!   its task directory. Baseline in the same run: the bare kube client creating the
//!   same pod objects (`KubeExecutor::pod_for`, without the finalizer) with the same
//!   concurrency, and one watch counting them to `Succeeded`.
//! - **Memory**: growth of this process's resident memory per running pod the executor
//!   watches (from its first launch round to all N running), against a kube-runtime
//!   reflector (the usual informer cache) holding the same pods in the same process.
//!
//! Prints markdown tables. The API server here is a simulator on the same 2 cores: the
//! figures measure the client side and are bounded by the simulator's own cost.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use ops_core::{Resources, Tenant};
use ops_kubesim::{KubeSim, Runtime, SimConfig, SimNode};
use ops_tasks::kube::{KubeExecutor, KubeExecutorConfig};
use ops_tasks::{Executor, ExecutorUpdate, LaunchSpec};
use tokio::sync::mpsc;

/// Throughput of one run and the CPU it took, per pod.
struct Rates {
    created: f64,
    lifecycles: f64,
    client_ms: f64,
    server_ms: f64,
}

/// Launches in flight at once (one coordinator round).
const ROUND: usize = 256;

struct Options {
    tasks: usize,
    nodes: usize,
    /// The executor's `max_concurrent_requests` (its client-side limit).
    max_requests: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let mut o = Options {
        tasks: 10_000,
        nodes: 100,
        max_requests: KubeExecutorConfig::default().max_concurrent_requests,
    };
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => o.tasks = 1000,
            "--tasks" => {
                i += 1;
                o.tasks = args[i].parse().expect("--tasks N");
            }
            "--nodes" => {
                i += 1;
                o.nodes = args[i].parse().expect("--nodes N");
            }
            "--max-requests" => {
                i += 1;
                o.max_requests = args[i].parse().expect("--max-requests N");
            }
            _ => {}
        }
        i += 1;
    }
    o
}

/// Child mode: serve a simulator, print its URL, exit when stdin closes.
fn serve_sim(nodes: usize, run_for_ms: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let nodes = (0..nodes)
            .map(|i| SimNode::new(&format!("node-{i}"), 64_000, 256 << 30).max_pods(200))
            .collect();
        let sim = KubeSim::start(
            SimConfig::default()
                .with_nodes(nodes)
                .with_runtime(Runtime::Instant {
                    run_for: Duration::from_millis(run_for_ms),
                    exit_code: 0,
                })
                .with_watch_window(1_000_000),
        )
        .await
        .unwrap();
        println!("{}", sim.url());
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .unwrap();
        sim.stop().await;
    });
}

/// A simulator in a child process.
struct Child {
    child: std::process::Child,
    url: String,
}

impl Child {
    fn start(nodes: usize, run_for_ms: u64) -> Child {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("OPS_KUBE_BENCH_SIM", format!("{nodes},{run_for_ms}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Child {
            child,
            url: line.trim().to_owned(),
        }
    }

    fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }

    fn rss(&self) -> u64 {
        rss_of(&format!("/proc/{}/statm", self.child.id()))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn rss_of(statm: &str) -> u64 {
    let text = std::fs::read_to_string(statm).unwrap_or_default();
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_of(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of this process and of the simulator.
fn cpu(child: &Child) -> (f64, f64) {
    (
        cpu_of("/proc/self/stat"),
        cpu_of(&format!("/proc/{}/stat", child.child.id())),
    )
}

fn rss() -> u64 {
    rss_of("/proc/self/statm")
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn spec(root: &std::path::Path, i: usize) -> LaunchSpec {
    let mut s = LaunchSpec::new(
        Tenant::parse("bench").unwrap(),
        vec!["render".into(), format!("--frame={i}")],
        root.join("bench").join(format!("t{i}")),
    );
    s.image = Some("ghcr.io/acme/render:1".into());
    s.resources = Resources::new(100, 64 << 20);
    s.timeout = Some(Duration::from_secs(3600));
    s
}

static MAX_REQUESTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(64);

fn executor_config(root: &std::path::Path) -> KubeExecutorConfig {
    let mut c = KubeExecutorConfig::default();
    c.max_concurrent_requests = MAX_REQUESTS.load(std::sync::atomic::Ordering::Relaxed);
    c.volume = ops_tasks::kube::TaskVolume::HostPath {
        path: root.to_owned(),
    };
    c.follow_logs = false;
    c.finished_ttl = Duration::from_secs(3600);
    c
}

/// Baseline: the bare client creates the same `n` pods the executor would (its own pod
/// objects, without finalizers) and one watch sees them succeed.
async fn raw_lifecycles(child: &Child, n: usize) -> Rates {
    let client = child.client();
    let root = tempfile::tempdir().unwrap();
    let preview = KubeExecutor::with_client(
        executor_config(root.path()),
        client.clone(),
        child.url.clone(),
    )
    .await
    .unwrap();
    let pods: Vec<Pod> = (0..n)
        .map(|i| {
            let mut pod = preview.pod_for(&spec(root.path(), i)).unwrap();
            pod.metadata.namespace = Some("raw".into());
            pod.metadata.finalizers = None;
            pod
        })
        .collect();
    drop(preview);
    let ns = "raw";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let done = Arc::new(tokio::sync::Notify::new());
    let watch_api = api.clone();
    let notify = done.clone();
    let counter = tokio::spawn(async move {
        let mut finished = HashSet::new();
        let mut stream = watcher::watcher(watch_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(Ok(event)) = stream.next().await {
            if let Event::Apply(p) | Event::InitApply(p) = event
                && p.status.and_then(|s| s.phase).as_deref() == Some("Succeeded")
            {
                finished.insert(p.metadata.name.unwrap_or_default());
                if finished.len() == n {
                    notify.notify_one();
                    return;
                }
            }
        }
    });
    let cpu_start = cpu(child);
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + ROUND).min(n);
        let creates = pods[i..end].iter().map(|pod| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), pod).await.unwrap();
            }
        });
        futures::future::join_all(creates).await;
        i = end;
    }
    let created = start.elapsed();
    tokio::time::timeout(Duration::from_secs(600), done.notified())
        .await
        .expect("raw pods finish");
    let all = start.elapsed();
    counter.abort();
    rates(child, cpu_start, n, created, all)
}

fn rates(
    child: &Child,
    cpu_start: (f64, f64),
    n: usize,
    created: Duration,
    all: Duration,
) -> Rates {
    let (client, server) = cpu(child);
    Rates {
        created: n as f64 / created.as_secs_f64(),
        lifecycles: n as f64 / all.as_secs_f64(),
        client_ms: (client - cpu_start.0) * 1000.0 / n as f64,
        server_ms: (server - cpu_start.1) * 1000.0 / n as f64,
    }
}

/// The executor: `n` launches in rounds, until every `Finished`.
async fn executor_lifecycles(child: &Child, n: usize, logs: bool) -> Rates {
    let root = tempfile::tempdir().unwrap();
    let mut config = executor_config(root.path());
    config.follow_logs = logs;
    let exec = KubeExecutor::with_client(config, child.client(), child.url.clone())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cpu_start = cpu(child);
    let start = Instant::now();
    launch_rounds(&exec, root.path(), 0..n, &tx).await;
    let launched = start.elapsed();
    let mut finished = 0;
    while finished < n {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(ExecutorUpdate::Finished { outcome, .. })) => {
                assert!(outcome.succeeded(), "{outcome:?}");
                finished += 1;
            }
            Ok(Some(_)) => {}
            _ => panic!("only {finished} of {n} finished"),
        }
    }
    let all = start.elapsed();
    rates(child, cpu_start, n, launched, all)
}

/// Launches the tasks `range` through `exec`, `ROUND` at a time.
async fn launch_rounds(
    exec: &KubeExecutor,
    root: &std::path::Path,
    range: std::ops::Range<usize>,
    tx: &mpsc::UnboundedSender<ExecutorUpdate>,
) {
    let mut i = range.start;
    while i < range.end {
        let end = (i + ROUND).min(range.end);
        let launches = (i..end).map(|j| exec.launch(spec(root, j), tx.clone()));
        for r in futures::future::join_all(launches).await {
            r.unwrap();
        }
        i = end;
    }
}

/// Waits for `n` `Started` updates.
async fn await_started(rx: &mut mpsc::UnboundedReceiver<ExecutorUpdate>, n: usize) {
    let mut started = 0;
    while started < n {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(ExecutorUpdate::Started { .. })) => started += 1,
            Ok(Some(_)) => {}
            _ => panic!("only {started} of {n} started"),
        }
    }
}

/// Memory of watching `n` running pods: the executor's resident growth from its first
/// launch round (connections, buffers and runtime warmed up) to all `n` running, per
/// pod added; then a reflector of the same pods, per pod, in the same process.
async fn memory(child: &Child, n: usize) -> (f64, f64, f64) {
    let root = tempfile::tempdir().unwrap();
    let exec = KubeExecutor::with_client(
        executor_config(root.path()),
        child.client(),
        child.url.clone(),
    )
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The first round warms connections, buffers and the runtime up.
    let first = ROUND.min(n);
    launch_rounds(&exec, root.path(), 0..first, &tx).await;
    await_started(&mut rx, first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    launch_rounds(&exec, root.path(), first..n, &tx).await;
    await_started(&mut rx, n - first).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let added = n.saturating_sub(ROUND).max(1);
    let watching = rss().saturating_sub(before) as f64 / added as f64;
    assert_eq!(exec.active(), n);
    let sim_rss = child.rss();

    // A reflector (informer cache) of the same pods, in the same process.
    let before = rss();
    let (reader, writer) = reflector::store::<Pod>();
    let api: Api<Pod> = Api::all(child.client());
    let stream = reflector::reflector(
        writer,
        watcher::watcher(
            api,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=ops"),
        ),
    )
    .applied_objects()
    .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    while reader.len() < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cached = rss().saturating_sub(before) as f64 / n as f64;
    task.abort();
    drop(exec);
    (watching, cached, mib(sim_rss))
}

fn main() {
    if let Ok(spec) = std::env::var("OPS_KUBE_BENCH_SIM") {
        let (nodes, run_for) = spec.split_once(',').unwrap();
        serve_sim(nodes.parse().unwrap(), run_for.parse().unwrap());
        return;
    }
    let o = options();
    MAX_REQUESTS.store(o.max_requests, std::sync::atomic::Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        println!(
            "### Kubernetes executor on the simulator ({} tasks, {} nodes, launch rounds of {ROUND}, max_concurrent_requests {})",
            o.tasks, o.nodes, o.max_requests
        );
        println!();
        // Memory first, while this process's heap is fresh.
        let child = Child::start(o.nodes, 3_600_000);
        let (watching, cached, sim) = memory(&child, o.tasks).await;
        drop(child);
        let child = Child::start(o.nodes, 10);
        let raw = raw_lifecycles(&child, o.tasks).await;
        drop(child);
        let child = Child::start(o.nodes, 10);
        let plain = executor_lifecycles(&child, o.tasks, false).await;
        drop(child);
        let child = Child::start(o.nodes, 10);
        let logs = executor_lifecycles(&child, o.tasks, true).await;
        drop(child);
        println!("| measure | executor | executor, streaming logs | bare kube client (baseline) | ratios |");
        println!("|---|---|---|---|---|");
        let row = |name: &str, f: fn(&Rates) -> f64, unit: &str, digits: usize| {
            let (p, l, r) = (f(&plain), f(&logs), f(&raw));
            println!(
                "| {name} | {p:.digits$}{unit} | {l:.digits$}{unit} | {r:.digits$}{unit} | {:.2}x, {:.2}x |",
                p / r,
                l / r
            );
        };
        row("pods created per second", |r| r.created, "", 0);
        row("lifecycles observed per second (create to Finished)", |r| r.lifecycles, "", 0);
        row("client CPU per pod (this process)", |r| r.client_ms, " ms", 2);
        row("API server CPU per pod (the simulator)", |r| r.server_ms, " ms", 2);
        println!();
        println!(
            "| memory while watching {} running pods | per pod | for {} pods |",
            o.tasks, o.tasks
        );
        println!("|---|---|---|");
        println!(
            "| executor (per-attempt state, no pod cache) | {watching:.0} bytes | {:.1} MiB |",
            watching * o.tasks as f64 / (1 << 20) as f64
        );
        println!(
            "| kube-runtime reflector of the same pods (baseline) | {cached:.0} bytes | {:.1} MiB |",
            cached * o.tasks as f64 / (1 << 20) as f64
        );
        println!("| (the simulator process, resident, for scale) | | {sim:.1} MiB |");
    });
}
