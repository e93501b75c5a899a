//! Admission at scale: decisions per second with 10,000 simulated nodes, 1,000,000
//! queued tasks and 100 tenants, the time of one full pass, and memory — against the
//! admission loop the coordinator had before quotas and fair share (priority then
//! FIFO, first fit on the aggregate capacity), run on the same workload in the same
//! process.
//!
//! ```text
//! cargo bench -p ops-tasks --bench admission
//! cargo bench -p ops-tasks --bench admission -- --quick
//! cargo bench -p ops-tasks --bench admission -- --nodes 10000 --tasks 1000000 --tenants 100
//! ```
//!
//! Workload: 80% CPU nodes (32 cores, 128 GiB), 20% GPU nodes (32 cores, 256 GiB,
//! 8 A100s); tasks of 1 core/2 GiB (60%), 4 cores/16 GiB (28%), 8 cores/32 GiB with one
//! GPU (7%) and scavenger tasks of 1 GPU (5%); priorities 0 (90%) and 10; every tenant
//! has a nominal quota of 1/50 of the cluster (so quotas are twice over-committed)
//! and may borrow. Deterministic (seeded).
//!
//! Phases:
//! - `enqueue`: queue the tasks (memory measured as resident-set growth);
//! - `fill`: one pass over the empty cluster, admitting until it is full;
//! - `churn`: rounds of "1,000 running tasks end, 1,000 new tasks arrive, one pass",
//!   with the queue kept at its size — the steady state of a busy platform;
//! - `blocked pass`: a pass when nothing fits (every queued task waits);
//! - `explain`: why-and-where for random queued tasks.
// A benchmark's output is its table.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ops_core::{Resources, TaskId};
use ops_tasks::NodeGroup;
use ops_tasks::admission::{Admission, AdmissionConfig, AdmissionPolicy, QuotaSpec, Request};

const GI: u64 = 1 << 30;
const CHURN: usize = 1000;

struct Args {
    nodes: u32,
    tasks: usize,
    tenants: usize,
    churn_rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 10_000,
        tasks: 1_000_000,
        tenants: 100,
        churn_rounds: 200,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = |i: usize| -> usize {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", argv[i]))
        };
        match argv[i].as_str() {
            "--quick" => {
                a.nodes = 1_000;
                a.tasks = 100_000;
                a.churn_rounds = 50;
            }
            "--nodes" => {
                a.nodes = value(i) as u32;
                i += 1;
            }
            "--tasks" => {
                a.tasks = value(i);
                i += 1;
            }
            "--tenants" => {
                a.tenants = value(i);
                i += 1;
            }
            "--rounds" => {
                a.churn_rounds = value(i);
                i += 1;
            }
            // cargo bench passes --bench.
            _ => {}
        }
        i += 1;
    }
    a
}

/// splitmix64: small, fast, deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn nodes(n: u32) -> Vec<NodeGroup> {
    let gpu = n / 5;
    vec![
        NodeGroup::new(n - gpu, Resources::new(32_000, 128 * GI)),
        NodeGroup::new(
            gpu,
            Resources::new(32_000, 256 * GI).with_gpus(8, Some("A100".into())),
        ),
    ]
}

fn request(rng: &mut Rng, tenants: usize) -> Request {
    let tenant = format!("tenant-{:03}", rng.below(tenants));
    let roll = rng.below(100);
    let (resources, scavenger) = match roll {
        0..60 => (Resources::new(1_000, 2 * GI), false),
        60..88 => (Resources::new(4_000, 16 * GI), false),
        88..95 => (
            Resources::new(8_000, 32 * GI).with_gpus(1, Some("a100".into())),
            false,
        ),
        _ => (
            Resources::new(2_000, 8 * GI).with_gpus(1, Some("a100".into())),
            true,
        ),
    };
    let priority = if rng.below(10) == 0 { 10 } else { 0 };
    let tenant = ops_core::Tenant::parse(tenant).expect("a valid tenant");
    Request::new(tenant, ops_core::Environment::default(), resources)
        .priority(priority)
        .scavenger(scavenger)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn policy(a: &Args) -> AdmissionPolicy {
    let groups = nodes(a.nodes);
    let cores = u64::from(a.nodes) * 32;
    let mem = u64::from(a.nodes - a.nodes / 5) * 128 + u64::from(a.nodes / 5) * 256;
    let mut config = AdmissionConfig::default();
    for t in 0..a.tenants {
        let quota: QuotaSpec = toml::from_str(&format!(
            "cpu = {}\nmemory = \"{}Gi\"\ngpus = {}\n",
            cores / 50,
            mem / 50,
            u64::from(a.nodes / 5) * 8 / 50
        ))
        .expect("quota");
        let mut tenant = ops_tasks::admission::TenantConfig::default();
        tenant.quota.insert("default".into(), quota);
        config.tenants.insert(format!("tenant-{t:03}"), tenant);
    }
    AdmissionPolicy::new(config, &groups).expect("valid policy")
}

struct Row {
    name: &'static str,
    admission: String,
    baseline: String,
    ratio: String,
}

fn main() {
    let a = args();
    eprintln!(
        "admission bench: {} nodes, {} tasks, {} tenants",
        a.nodes, a.tasks, a.tenants
    );
    let mut rows = Vec::new();
    let mut rng = Rng(42);
    let requests: Vec<(TaskId, Request)> = (0..a.tasks)
        .map(|_| (TaskId::new(), request(&mut rng, a.tenants)))
        .collect();
    let policy = Arc::new(policy(&a));

    // Enqueue.
    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut adm = Admission::new(policy.clone());
    for (id, req) in &requests {
        adm.enqueue(*id, req).expect("admissible");
    }
    let enqueue = t.elapsed();
    let queue_bytes = rss_bytes().saturating_sub(rss0);
    let t = Instant::now();
    let mut base = Baseline::new(&policy);
    for (id, req) in &requests {
        base.enqueue(*id, req);
    }
    let base_enqueue = t.elapsed();
    rows.push(Row {
        name: "enqueue (tasks/s)",
        admission: per_sec(a.tasks, enqueue),
        baseline: per_sec(a.tasks, base_enqueue),
        ratio: ratio(base_enqueue, enqueue),
    });

    // Fill: one pass over the empty cluster.
    let now = Utc::now();
    let t = Instant::now();
    let fill = adm.pass(now, usize::MAX);
    let fill_time = t.elapsed();
    let t = Instant::now();
    let base_fill = base.pass();
    let base_fill_time = t.elapsed();
    rows.push(Row {
        name: "fill pass: time",
        admission: format!("{:.1} ms ({} admitted)", ms(fill_time), fill.admitted.len()),
        baseline: format!(
            "{:.1} ms ({} admitted)",
            ms(base_fill_time),
            base_fill.len()
        ),
        ratio: ratio(base_fill_time, fill_time),
    });
    rows.push(Row {
        name: "fill pass: admissions/s",
        admission: per_sec(fill.admitted.len(), fill_time),
        baseline: per_sec(base_fill.len(), base_fill_time),
        ratio: ratio_rate(
            fill.admitted.len(),
            fill_time,
            base_fill.len(),
            base_fill_time,
        ),
    });

    // Churn: tasks end, new ones arrive, one pass.
    let mut running: Vec<TaskId> = fill.admitted.iter().map(|x| x.id).collect();
    let mut base_running: Vec<TaskId> = base_fill.clone();
    let mut admitted = 0usize;
    let mut pass_time = Duration::ZERO;
    let t_all = Instant::now();
    let mut arrivals = Rng(7);
    let mut ends = Rng(9);
    let mut fresh: Vec<(TaskId, Request)> = Vec::with_capacity(CHURN * a.churn_rounds);
    for _ in 0..CHURN * a.churn_rounds {
        fresh.push((TaskId::new(), request(&mut arrivals, a.tenants)));
    }
    for round in 0..a.churn_rounds {
        for _ in 0..CHURN.min(running.len()) {
            let i = ends.below(running.len());
            let id = running.swap_remove(i);
            adm.release(id);
        }
        for (id, req) in &fresh[round * CHURN..(round + 1) * CHURN] {
            adm.enqueue(*id, req).expect("admissible");
        }
        let t = Instant::now();
        let pass = adm.pass(now, usize::MAX);
        pass_time += t.elapsed();
        admitted += pass.admitted.len();
        running.extend(pass.admitted.iter().map(|x| x.id));
        // Preempted scavengers end at once here and are queued again.
        for p in &pass.preempt {
            adm.requeue(p.victim);
            running.retain(|r| *r != p.victim);
        }
    }
    let churn_all = t_all.elapsed();
    let mut base_admitted = 0usize;
    let mut base_pass_time = Duration::ZERO;
    let t_all = Instant::now();
    let mut ends = Rng(9);
    for round in 0..a.churn_rounds {
        for _ in 0..CHURN.min(base_running.len()) {
            let i = ends.below(base_running.len());
            let id = base_running.swap_remove(i);
            base.release(id);
        }
        for (id, req) in &fresh[round * CHURN..(round + 1) * CHURN] {
            base.enqueue(*id, req);
        }
        let t = Instant::now();
        let got = base.pass();
        base_pass_time += t.elapsed();
        base_admitted += got.len();
        base_running.extend(got);
    }
    let base_churn_all = t_all.elapsed();
    rows.push(Row {
        name: "churn: admissions/s (pass only)",
        admission: per_sec(admitted, pass_time),
        baseline: per_sec(base_admitted, base_pass_time),
        ratio: ratio_rate(admitted, pass_time, base_admitted, base_pass_time),
    });
    rows.push(Row {
        name: "churn: admissions/s (with release and enqueue)",
        admission: per_sec(admitted, churn_all),
        baseline: per_sec(base_admitted, base_churn_all),
        ratio: ratio_rate(admitted, churn_all, base_admitted, base_churn_all),
    });
    rows.push(Row {
        name: "churn: mean pass",
        admission: format!(
            "{:.2} ms ({} per pass)",
            ms(pass_time) / a.churn_rounds as f64,
            admitted / a.churn_rounds.max(1)
        ),
        baseline: format!(
            "{:.2} ms ({} per pass)",
            ms(base_pass_time) / a.churn_rounds as f64,
            base_admitted / a.churn_rounds.max(1)
        ),
        ratio: ratio(base_pass_time, pass_time),
    });

    // A pass when nothing fits.
    let mut blocked = Duration::ZERO;
    let reps = 20;
    for _ in 0..reps {
        let t = Instant::now();
        let pass = adm.pass(now, usize::MAX);
        blocked += t.elapsed();
        for p in &pass.preempt {
            adm.requeue(p.victim);
        }
        for x in &pass.admitted {
            adm.release(x.id);
        }
    }
    let t = Instant::now();
    for _ in 0..reps {
        base.pass();
    }
    let base_blocked = t.elapsed();
    rows.push(Row {
        name: "pass over a full cluster (nothing fits)",
        admission: format!("{:.3} ms", ms(blocked) / reps as f64),
        baseline: format!("{:.3} ms", ms(base_blocked) / reps as f64),
        ratio: ratio(base_blocked, blocked),
    });

    // Explain random queued tasks.
    let mut pick = Rng(11);
    let queued: Vec<TaskId> = requests
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| adm.is_queued(*id))
        .take(200_000)
        .collect();
    let n = 1000.min(queued.len());
    let t = Instant::now();
    let mut found = 0;
    for _ in 0..n {
        let id = queued[pick.below(queued.len())];
        if adm.explain(id, now).is_some() {
            found += 1;
        }
    }
    let explain = t.elapsed();
    assert_eq!(found, n);
    rows.push(Row {
        name: "explain one queued task",
        admission: format!("{:.3} ms", ms(explain) / n.max(1) as f64),
        baseline: "—".into(),
        ratio: "—".into(),
    });
    rows.push(Row {
        name: "memory: queue of all tasks (RSS growth)",
        admission: format!(
            "{:.0} MiB ({} bytes/task)",
            queue_bytes as f64 / (1 << 20) as f64,
            queue_bytes / a.tasks.max(1) as u64
        ),
        baseline: "—".into(),
        ratio: "—".into(),
    });

    println!(
        "\n### Admission: {} nodes, {} queued tasks, {} tenants\n",
        a.nodes, a.tasks, a.tenants
    );
    println!(
        "| measure | admission | baseline (pre-quota loop) | ratio (higher is better for admission) |"
    );
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.name, r.admission, r.baseline, r.ratio
        );
    }
    println!(
        "\nqueued at the end: {}, running: {}",
        adm.queued_len(),
        adm.running_len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_sec(n: usize, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64().max(1e-9))
}

/// baseline time / admission time (above 1: admission is faster).
fn ratio(base: Duration, ours: Duration) -> String {
    format!("{:.2}x", base.as_secs_f64() / ours.as_secs_f64().max(1e-9))
}

fn ratio_rate(n: usize, d: Duration, bn: usize, bd: Duration) -> String {
    let ours = n as f64 / d.as_secs_f64().max(1e-9);
    let theirs = bn as f64 / bd.as_secs_f64().max(1e-9);
    format!("{:.2}x", ours / theirs.max(1e-9))
}

/// The coordinator's admission before this issue: one queue in priority then
/// submission order, first fit on the aggregate capacity, no quotas, no fair share.
struct Baseline {
    queue: BTreeMap<(Reverse<i32>, TaskId), Resources>,
    running: std::collections::HashMap<TaskId, Resources>,
    used: Resources,
    capacity: Resources,
}

impl Baseline {
    fn new(policy: &AdmissionPolicy) -> Self {
        let capacity = policy
            .segments()
            .into_iter()
            .fold(Resources::default(), |acc, (_, r)| acc.saturating_add(&r));
        Self {
            queue: BTreeMap::new(),
            running: Default::default(),
            used: Resources::default(),
            capacity,
        }
    }
    fn enqueue(&mut self, id: TaskId, req: &Request) {
        self.queue
            .insert((Reverse(req.priority), id), req.resources.clone());
    }
    fn release(&mut self, id: TaskId) {
        if let Some(r) = self.running.remove(&id) {
            self.used = self.used.saturating_sub(&r);
        }
    }
    fn pass(&mut self) -> Vec<TaskId> {
        let mut admitted = Vec::new();
        let mut free = self.capacity.saturating_sub(&self.used);
        for (key, r) in &self.queue {
            if r.fits_in(&free) {
                free = free.saturating_sub(r);
                admitted.push(*key);
            }
            if free.cpu_millis == 0 && free.memory_bytes == 0 {
                break;
            }
        }
        admitted
            .into_iter()
            .filter_map(|key| {
                let r = self.queue.remove(&key)?;
                self.used = self.used.saturating_add(&r);
                self.running.insert(key.1, r);
                Some(key.1)
            })
            .collect()
    }
}
