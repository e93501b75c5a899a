//! [`Simulation`]: the admission algorithm alone, driven in virtual time over simulated
//! nodes, for capacity planning and as the scale benchmark.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use ops_core::{Environment, Resources, TaskId, Tenant};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::cluster::{Amount, Placement, SimCluster, Utilisation};
use super::workload::Workload;
use crate::NodeGroup;
use crate::admission::{
    Admission, AdmissionConfig, AdmissionPolicy, GpuQuota, Quantity, QuotaSpec, Request, WaitReason,
};
use crate::{Error, Result};

/// One task of a [`Scenario`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SimTask {
    /// When it is submitted, from the start of the simulation.
    #[serde(default, with = "crate::duration::serde_duration")]
    pub arrival: Duration,
    /// Its owner.
    pub tenant: Tenant,
    /// Its environment (default `default`).
    #[serde(default)]
    pub environment: Environment,
    /// Its priority (default 0).
    #[serde(default)]
    pub priority: i32,
    /// What it asks for.
    pub resources: Resources,
    /// Scavenger work (default false).
    #[serde(default)]
    pub scavenger: bool,
    /// How long it runs once started (a preempted task starts over).
    #[serde(with = "crate::duration::serde_duration")]
    pub duration: Duration,
}

impl SimTask {
    /// A task of `tenant` in the `default` environment, arriving at 0, priority 0.
    pub fn new(tenant: Tenant, resources: Resources, duration: Duration) -> Self {
        Self {
            arrival: Duration::ZERO,
            tenant,
            environment: Environment::default(),
            priority: 0,
            resources,
            scavenger: false,
            duration,
        }
    }

    /// Sets [`arrival`](Self::arrival).
    pub fn arrival(mut self, arrival: Duration) -> Self {
        self.arrival = arrival;
        self
    }

    /// Sets [`environment`](Self::environment).
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// Sets [`priority`](Self::priority).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets [`scavenger`](Self::scavenger).
    pub fn scavenger(mut self, scavenger: bool) -> Self {
        self.scavenger = scavenger;
        self
    }
}

/// What to simulate: nodes, the admission configuration and the tasks. Reads from TOML
/// (every field but `nodes` has a default):
///
/// ```
/// use ops_tasks::sim::{Scenario, Simulation};
///
/// let scenario: Scenario = toml::from_str(r#"
///     pass_interval = "1s"
///     audit = true
///
///     [[nodes]]
///     count = 4
///     resources = { cpu = 8, memory = "32Gi", gpus = { count = 2, model = "L4" } }
///
///     [admission.tenants.acme]
///     quota.default = { gpus = 4 }
///     [admission.tenants.globex]
///
///     [[tasks]]
///     tenant = "acme"
///     resources = { cpu = 1, memory = "1Gi", gpus = 1 }
///     duration = "10m"
///
///     [workload]
///     seed = 1
///     tasks = 200
///     span = "1h"
///     tenants = [{ name = "acme" }, { name = "globex" }]
///     templates = [{ name = "cpu", resources = { cpu = 2, memory = "4Gi" }, duration = "5m", jitter = 0.5 }]
/// "#)?;
/// let report = Simulation::new(scenario)?.run();
/// assert_eq!(report.finished, 201);
/// assert!(report.violations.is_empty(), "{:?}", report.violations);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Scenario {
    /// The simulated nodes.
    pub nodes: Vec<NodeGroup>,
    /// Quotas, environments, fair share, scavenger grace.
    pub admission: AdmissionConfig,
    /// Tasks given one by one.
    pub tasks: Vec<SimTask>,
    /// More tasks, generated.
    pub workload: Option<Workload>,
    /// Virtual time between admission passes (default 1 s). Passes in which nothing
    /// could change (no arrival, no task ended, no decision since the last) are
    /// skipped.
    #[serde(with = "crate::duration::serde_duration")]
    pub pass_interval: Duration,
    /// At most this many admissions per pass (default 10 000).
    pub max_admit_per_pass: usize,
    /// Check the admission invariants after every pass (see [`ViolationKind`]); costs
    /// time, for tests and small scenarios.
    pub audit: bool,
    /// Record every tenant's usage after every pass ([`SimReport::samples`]).
    pub samples: bool,
    /// Stop at this virtual time even if tasks remain.
    #[serde(with = "opt_duration")]
    pub horizon: Option<Duration>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            admission: AdmissionConfig::default(),
            tasks: Vec::new(),
            workload: None,
            pass_interval: Duration::from_secs(1),
            max_admit_per_pass: 10_000,
            audit: false,
            samples: false,
            horizon: None,
        }
    }
}

impl Scenario {
    /// A scenario over `nodes` with the default admission configuration and no tasks.
    pub fn new(nodes: Vec<NodeGroup>) -> Self {
        Self {
            nodes,
            ..Self::default()
        }
    }

    /// Sets [`admission`](Self::admission).
    pub fn admission(mut self, admission: AdmissionConfig) -> Self {
        self.admission = admission;
        self
    }

    /// Adds tasks.
    pub fn tasks(mut self, tasks: impl IntoIterator<Item = SimTask>) -> Self {
        self.tasks.extend(tasks);
        self
    }

    /// Sets [`workload`](Self::workload).
    pub fn workload(mut self, workload: Workload) -> Self {
        self.workload = Some(workload);
        self
    }

    /// Sets [`pass_interval`](Self::pass_interval).
    pub fn pass_interval(mut self, interval: Duration) -> Self {
        self.pass_interval = interval;
        self
    }

    /// Sets [`max_admit_per_pass`](Self::max_admit_per_pass).
    pub fn max_admit_per_pass(mut self, max: usize) -> Self {
        self.max_admit_per_pass = max;
        self
    }

    /// Sets [`audit`](Self::audit).
    pub fn audit(mut self, audit: bool) -> Self {
        self.audit = audit;
        self
    }

    /// Sets [`samples`](Self::samples).
    pub fn samples(mut self, samples: bool) -> Self {
        self.samples = samples;
        self
    }

    /// Sets [`horizon`](Self::horizon).
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.horizon = Some(horizon);
        self
    }

    /// Every task (given and generated), in arrival order (ties keep their order:
    /// given tasks first).
    pub fn all_tasks(&self) -> Vec<SimTask> {
        let mut all = self.tasks.clone();
        if let Some(w) = &self.workload {
            all.extend(w.generate());
        }
        all.sort_by_key(|t| t.arrival);
        all
    }
}

/// Statistics of waiting times (time queued or waiting for a node, summed over a task's
/// attempts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WaitStats {
    /// Mean.
    pub mean: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// Longest.
    pub max: Duration,
}

impl WaitStats {
    fn of(waits_ms: &mut [u64]) -> Self {
        if waits_ms.is_empty() {
            return Self::default();
        }
        let n = waits_ms.len();
        let sum: u128 = waits_ms.iter().map(|w| u128::from(*w)).sum();
        let k = (n * 95).div_ceil(100).saturating_sub(1).min(n - 1);
        let (_, p95, _) = waits_ms.select_nth_unstable(k);
        let p95 = *p95;
        let max = waits_ms.iter().copied().max().unwrap_or(0);
        Self {
            mean: Duration::from_millis((sum / n as u128) as u64),
            p95: Duration::from_millis(p95),
            max: Duration::from_millis(max),
        }
    }
}

/// One tenant's results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TenantReport {
    /// Tasks submitted.
    pub tasks: usize,
    /// Tasks that ran to the end.
    pub finished: usize,
    /// Waits of its finished tasks.
    pub wait: WaitStats,
    /// CPU cores × seconds held by its tasks (preempted runs included).
    pub cpu_core_seconds: f64,
    /// Memory GiB × seconds held.
    pub memory_gib_seconds: f64,
    /// GPUs × seconds held.
    pub gpu_seconds: f64,
    /// Times its tasks were preempted.
    pub preempted: u64,
}

/// A tenant's usage at one moment (non-scavenger work; see [`Scenario::samples`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TenantSample {
    /// The tenant.
    pub tenant: Tenant,
    /// Held by its admitted non-scavenger tasks.
    pub used: Resources,
    /// Its admitted non-scavenger tasks.
    pub running: u32,
    /// Its queued tasks (scavenger included).
    pub queued: u32,
}

/// Every tenant's usage right after a pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageSample {
    /// Virtual time of the pass.
    pub at: Duration,
    /// Per tenant, in the order tenants first appear in the tasks.
    pub tenants: Vec<TenantSample>,
}

/// Which invariant an audit found broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ViolationKind {
    /// A segment holds more admitted work than its capacity.
    OverCapacity,
    /// A tenant uses more than its nominal quota in an environment with tasks that were
    /// not admitted as borrowed (or borrows while not allowed to, or past its limit).
    OverQuota,
    /// A non-scavenger task that scavenger work stood in the way of waited longer than
    /// the grace period plus two passes.
    ScavengerBlocking,
    /// A task never ended (still queued, waiting for a node or running at the end).
    Unfinished,
    /// A task was admitted to a segment none of whose nodes can hold it.
    Unplaceable,
    /// A preemption named a task that was not running, or a preempted task could not be
    /// requeued.
    BadPreemption,
}

/// A broken invariant, when it was seen and the details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Violation {
    /// Virtual time.
    pub at: Duration,
    /// Which invariant.
    pub kind: ViolationKind,
    /// What was seen.
    pub message: String,
}

/// What a [`Simulation`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SimReport {
    /// Tasks in the scenario.
    pub tasks: usize,
    /// Tasks that ran to the end.
    pub finished: usize,
    /// Tasks admission refused at submission (can never run).
    pub rejected: usize,
    /// The first few refusals' reasons.
    pub rejections: Vec<String>,
    /// Tasks admitted where no node could hold them.
    pub unplaceable: usize,
    /// Tasks not ended when the simulation stopped (horizon, or nothing could move).
    pub unfinished: usize,
    /// Virtual time from the start to the last task's end.
    pub makespan: Duration,
    /// Waits of every finished task.
    pub wait: WaitStats,
    /// Per tenant.
    pub tenants: BTreeMap<String, TenantReport>,
    /// Mean utilisation of the nodes over the makespan.
    pub utilisation: Utilisation,
    /// Admissions (a requeued task is admitted again).
    pub admissions: u64,
    /// Preemptions carried out.
    pub preemptions: u64,
    /// Preempted tasks queued again.
    pub requeues: u64,
    /// Admitted tasks that found no node with room and waited (fragmentation).
    pub placement_waits: u64,
    /// Admission passes run.
    pub passes: u64,
    /// Real time spent inside [`Admission::pass`].
    pub pass_time: Duration,
    /// Real time the whole simulation took.
    pub wall_time: Duration,
    /// Broken invariants (only with [`Scenario::audit`]).
    pub violations: Vec<Violation>,
    /// Usage after every pass (only with [`Scenario::samples`]).
    pub samples: Vec<UsageSample>,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tasks {} (finished {}, rejected {}, unplaceable {}, unfinished {}), makespan {}",
            self.tasks,
            self.finished,
            self.rejected,
            self.unplaceable,
            self.unfinished,
            human_duration(self.makespan)
        )?;
        writeln!(
            f,
            "wait: mean {}, p95 {}, max {}",
            human_duration(self.wait.mean),
            human_duration(self.wait.p95),
            human_duration(self.wait.max)
        )?;
        writeln!(
            f,
            "utilisation: cpu {:.1}%, memory {:.1}%, gpus {:.1}%",
            self.utilisation.cpu * 100.0,
            self.utilisation.memory * 100.0,
            self.utilisation.gpus * 100.0
        )?;
        writeln!(
            f,
            "admissions {}, preemptions {}, requeues {}, placement waits {}, passes {} ({} in admission, {} in all)",
            self.admissions,
            self.preemptions,
            self.requeues,
            self.placement_waits,
            self.passes,
            human_duration(self.pass_time),
            human_duration(self.wall_time)
        )?;
        writeln!(
            f,
            "{:<16} {:>8} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}",
            "tenant", "tasks", "wait", "p95", "max", "cpu core-h", "gpu-h", "preempted"
        )?;
        for (name, t) in &self.tenants {
            writeln!(
                f,
                "{:<16} {:>8} {:>9} {:>9} {:>9} {:>11.1} {:>9.1} {:>9}",
                name,
                t.tasks,
                human_duration(t.wait.mean),
                human_duration(t.wait.p95),
                human_duration(t.wait.max),
                t.cpu_core_seconds / 3600.0,
                t.gpu_seconds / 3600.0,
                t.preempted
            )?;
        }
        if !self.violations.is_empty() {
            writeln!(f, "{} invariant violations:", self.violations.len())?;
            for v in self.violations.iter().take(20) {
                writeln!(
                    f,
                    "  at {}: {:?}: {}",
                    human_duration(v.at),
                    v.kind,
                    v.message
                )?;
            }
        }
        Ok(())
    }
}

/// A duration for people: `350ms`, `4.2s`, `12m05s`, `3h07m`, `2d04h`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A deterministic discrete-event run of [`Admission`] over a [`SimCluster`] in
/// virtual time: no tokio, no history, no executor.
///
/// The loop: tasks are queued as they arrive; every [`Scenario::pass_interval`] (when
/// something changed) one [`Admission::pass`] runs; admitted tasks are placed on a node
/// of their segment (waiting for one when fragmentation leaves no room) and run for
/// their duration; preempted tasks end after the scavenger grace and are requeued
/// ([`Admission::requeue`]) to start over; ended tasks are released. The same scenario
/// always gives the same report (apart from the real times in it).
///
/// Task ids are made from the task's place in arrival order, so admission's FIFO order
/// is the arrival order.
#[derive(Debug)]
pub struct Simulation {
    scenario: Scenario,
    policy: Arc<AdmissionPolicy>,
}

impl Simulation {
    /// Checks the scenario (admission configuration against the nodes, pass interval,
    /// workload), listing every problem in one [`Error::InvalidConfig`].
    pub fn new(scenario: Scenario) -> Result<Self> {
        let mut problems = Vec::new();
        if scenario.nodes.iter().all(|g| g.count == 0) {
            problems.push("nodes: at least one node is needed".to_owned());
        }
        if scenario.pass_interval < Duration::from_millis(1) {
            problems.push("pass_interval must be at least 1ms".to_owned());
        }
        if scenario.max_admit_per_pass == 0 {
            problems.push("max_admit_per_pass must be at least 1".to_owned());
        }
        if let Some(w) = &scenario.workload {
            problems.extend(w.problems());
        }
        let policy = match AdmissionPolicy::new(scenario.admission.clone(), &scenario.nodes) {
            Ok(p) => Some(p),
            Err(Error::InvalidConfig { problems: found }) => {
                problems.extend(found);
                None
            }
            Err(e) => {
                problems.push(format!("admission: {e}"));
                None
            }
        };
        match policy {
            Some(policy) if problems.is_empty() => Ok(Self {
                scenario,
                policy: Arc::new(policy),
            }),
            _ => Err(Error::InvalidConfig {
                problems: problems
                    .into_iter()
                    .map(|p| format!("scenario: {p}"))
                    .collect(),
            }),
        }
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The admission policy built from it.
    pub fn policy(&self) -> &Arc<AdmissionPolicy> {
        &self.policy
    }

    /// Runs the scenario to its end (every task ended, the horizon, or nothing left that
    /// could move).
    pub fn run(&self) -> SimReport {
        Run::new(self).run()
    }
}

/// High half of the simulated task ids (UUID version 7 bits set).
const ID_HIGH: u64 = 0x0000_0000_0000_7000;
/// Variant bits of the low half.
const ID_VARIANT: u64 = 0x8000_0000_0000_0000;

fn task_id(ix: usize) -> TaskId {
    TaskId::from_uuid(Uuid::from_u64_pair(ID_HIGH, ID_VARIANT | ix as u64))
}

fn task_ix(id: TaskId) -> usize {
    (id.as_uuid().as_u64_pair().1 & !ID_VARIANT) as usize
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Not arrived yet.
    Future,
    Queued,
    /// Admitted, waiting for a node.
    Pending,
    Running,
    Done,
    /// Refused at submission, or unplaceable.
    Failed,
}

#[derive(Debug)]
struct T {
    tenant: u16,
    env: u16,
    state: St,
    queued_since: u64,
    wait: u64,
    start: u64,
    natural_end: u64,
    node: u32,
    generation: u32,
    preempting: bool,
    preempted: u32,
    segment: u16,
    borrowed: bool,
    gpu_model: Option<u8>,
    blocked_since: Option<u64>,
}

/// A quota as limits per dimension (`None`: unlimited).
#[derive(Debug, Default, Clone)]
struct Limit {
    cpu: Option<u64>,
    mem: Option<u64>,
    gpus: Option<u64>,
    /// Per GPU model (index into `Run::models`).
    models: Vec<(u8, u64)>,
}

#[derive(Debug, Default, Clone)]
struct Use {
    a: Amount,
    models: Vec<u64>,
}

impl Use {
    fn add(&mut self, r: &Resources, model: Option<u8>) {
        let x = Amount::of(r);
        self.a.cpu += x.cpu;
        self.a.mem += x.mem;
        self.a.gpus += x.gpus;
        if let Some(m) = model {
            let m = m as usize;
            if self.models.len() <= m {
                self.models.resize(m + 1, 0);
            }
            self.models[m] += u64::from(x.gpus);
        }
    }

    fn sub(&mut self, r: &Resources, model: Option<u8>) {
        let x = Amount::of(r);
        self.a.cpu = self.a.cpu.saturating_sub(x.cpu);
        self.a.mem = self.a.mem.saturating_sub(x.mem);
        self.a.gpus = self.a.gpus.saturating_sub(x.gpus);
        if let Some(m) = model
            && let Some(v) = self.models.get_mut(m as usize)
        {
            *v = v.saturating_sub(u64::from(x.gpus));
        }
    }

    /// The first dimension over `limit`, described.
    fn over(&self, limit: &Limit, models: &[String]) -> Option<String> {
        let check = |what: &str, used: u64, lim: Option<u64>| {
            lim.filter(|l| used > *l)
                .map(|l| format!("{what} {used} > {l}"))
        };
        check("cpu millis", self.a.cpu, limit.cpu)
            .or_else(|| check("memory bytes", self.a.mem, limit.mem))
            .or_else(|| check("gpus", u64::from(self.a.gpus), limit.gpus))
            .or_else(|| {
                limit.models.iter().find_map(|(m, l)| {
                    let used = self.models.get(*m as usize).copied().unwrap_or(0);
                    (used > *l).then(|| format!("{} gpus {used} > {l}", models[*m as usize]))
                })
            })
    }
}

#[derive(Debug, Default)]
struct TenantAcc {
    tasks: usize,
    finished: usize,
    waits: Vec<u64>,
    cpu_ms: f64,
    mem_ms: f64,
    gpu_ms: f64,
    preempted: u64,
    running: u32,
    queued: u32,
    used: Use,
}

struct Run<'a> {
    sim: &'a Simulation,
    epoch: DateTime<Utc>,
    specs: Vec<SimTask>,
    tasks: Vec<T>,
    admission: Admission,
    cluster: SimCluster,
    heap: BinaryHeap<Reverse<(u64, u64, u32, u32)>>,
    seq: u64,
    now: u64,
    grace: u64,
    dirty: bool,
    tenant_names: Vec<Tenant>,
    env_names: Vec<Environment>,
    seg_names: Vec<String>,
    seg_envs: Vec<Option<Environment>>,
    seg_cap: Vec<Amount>,
    seg_used: Vec<Amount>,
    seg_used_real: Vec<Amount>,
    models: Vec<String>,
    /// Non-borrowed, non-scavenger usage per (tenant, env) (audit only).
    quota_use: HashMap<(u16, u16), Use>,
    /// Nominal quota per (tenant, env), and whether borrowing is allowed per tenant.
    limits: HashMap<(u16, u16), Limit>,
    borrowing: Vec<bool>,
    /// The segment of each environment's own capacity.
    own_segment: Vec<u16>,
    scav_running: u64,
    /// Scavenger tasks holding resources per segment.
    seg_scav: Vec<u32>,
    /// Segments where the current pass admitted non-scavenger work.
    seg_admitted_real: Vec<bool>,
    acc: Vec<TenantAcc>,
    report: SimReport,
    reported: HashSet<String>,
    end: u64,
    util_ms: (f64, f64, f64),
}

impl<'a> Run<'a> {
    fn new(sim: &'a Simulation) -> Self {
        let specs = sim.scenario.all_tasks();
        let policy = &sim.policy;
        let mut tenant_ix: HashMap<Tenant, u16> = HashMap::new();
        let mut env_ix: HashMap<Environment, u16> = HashMap::new();
        let mut tenant_names = Vec::new();
        let mut env_names = Vec::new();
        let mut tasks = Vec::with_capacity(specs.len());
        for s in &specs {
            let tenant = *tenant_ix.entry(s.tenant.clone()).or_insert_with(|| {
                tenant_names.push(s.tenant.clone());
                (tenant_names.len() - 1) as u16
            });
            let env = *env_ix.entry(s.environment.clone()).or_insert_with(|| {
                env_names.push(s.environment.clone());
                (env_names.len() - 1) as u16
            });
            tasks.push(T {
                tenant,
                env,
                state: St::Future,
                queued_since: 0,
                wait: 0,
                start: 0,
                natural_end: 0,
                node: 0,
                generation: 0,
                preempting: false,
                preempted: 0,
                segment: 0,
                borrowed: false,
                gpu_model: None,
                blocked_since: None,
            });
        }
        let segments = policy.segments();
        let seg_names: Vec<String> = segments.iter().map(|(n, _)| n.clone()).collect();
        let seg_envs = seg_names
            .iter()
            .map(|n| {
                (n != "*")
                    .then(|| Environment::parse(n.as_str()).ok())
                    .flatten()
            })
            .collect();
        let seg_cap = segments.iter().map(|(_, r)| Amount::of(r)).collect();
        let models = policy.gpu_models().to_vec();
        let config = policy.config();
        let mut limits = HashMap::new();
        let mut borrowing = Vec::new();
        for (ti, t) in tenant_names.iter().enumerate() {
            let tc = config
                .tenants
                .get(t.as_str())
                .or(config.default_tenant.as_ref());
            borrowing.push(tc.is_none_or(|c| c.borrowing));
            let Some(tc) = tc else { continue };
            for (ei, e) in env_names.iter().enumerate() {
                if let Some(q) = tc.quota.get(e.as_str()) {
                    limits.insert((ti as u16, ei as u16), limit_of(q, &models));
                }
            }
        }
        let nseg = seg_names.len();
        let shared = seg_names.iter().position(|n| n == "*").unwrap_or(0);
        let own_segment = env_names
            .iter()
            .map(|e| {
                seg_names
                    .iter()
                    .position(|n| n == e.as_str())
                    .unwrap_or(shared) as u16
            })
            .collect();
        let mut acc: Vec<TenantAcc> = tenant_names.iter().map(|_| TenantAcc::default()).collect();
        for t in &tasks {
            acc[t.tenant as usize].tasks += 1;
        }
        Self {
            sim,
            epoch: Utc
                .timestamp_opt(1_767_225_600, 0)
                .single()
                .unwrap_or_default(),
            tasks,
            specs,
            admission: Admission::new(policy.clone()),
            cluster: SimCluster::new(&sim.scenario.nodes),
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            grace: ms(policy.grace()),
            dirty: false,
            tenant_names,
            env_names,
            seg_names,
            seg_envs,
            seg_cap,
            seg_used: vec![Amount::default(); nseg],
            seg_used_real: vec![Amount::default(); nseg],
            models,
            quota_use: HashMap::new(),
            limits,
            borrowing,
            own_segment,
            scav_running: 0,
            seg_scav: vec![0; nseg],
            seg_admitted_real: vec![false; nseg],
            acc,
            report: SimReport::default(),
            reported: HashSet::new(),
            end: 0,
            util_ms: (0.0, 0.0, 0.0),
        }
    }

    fn run(mut self) -> SimReport {
        let wall = Instant::now();
        let interval = ms(self.sim.scenario.pass_interval).max(1);
        let max = self.sim.scenario.max_admit_per_pass.max(1);
        let horizon = self.sim.scenario.horizon.map(ms);
        let mut next_arrival = 0usize;
        let mut next_pass = 0u64;
        let mut more = false;
        let mut last_progress = std::time::Instant::now();
        loop {
            let t_arr = self.specs.get(next_arrival).map(|t| ms(t.arrival));
            let t_ev = self.heap.peek().map(|e| e.0.0);
            let t_next = match (t_arr, t_ev) {
                (Some(a), Some(e)) => Some(a.min(e)),
                (a, e) => a.or(e),
            };
            let pass_due = (self.dirty || more) && t_next.is_none_or(|t| t > next_pass);
            let at = if pass_due { Some(next_pass) } else { t_next };
            let Some(at) = at else { break };
            if horizon.is_some_and(|h| at > h) {
                self.now = horizon.unwrap_or(at);
                break;
            }
            if pass_due {
                self.now = next_pass;
                more = self.pass(max);
                next_pass += interval;
                if last_progress.elapsed() > Duration::from_secs(5) {
                    last_progress = std::time::Instant::now();
                    tracing::info!(
                        virtual_time = %human_duration(Duration::from_millis(self.now)),
                        finished = self.report.finished,
                        queued = self.admission.queued_len(),
                        running = self.admission.running_len(),
                        "simulation progress"
                    );
                }
                continue;
            }
            self.now = at;
            if !(self.dirty || more) {
                // The next pass is the first slot at or after now.
                next_pass = at.div_ceil(interval) * interval;
            }
            if t_arr == Some(at) {
                let ix = next_arrival;
                next_arrival += 1;
                self.arrive(ix);
            } else if let Some(Reverse((_, _, ix, generation))) = self.heap.pop() {
                self.end_of_run(ix as usize, generation);
            }
        }
        self.finish(wall)
    }

    fn arrive(&mut self, ix: usize) {
        let s = &self.specs[ix];
        tracing::trace!(at_ms = self.now, task = ix, tenant = %s.tenant, scavenger = s.scavenger, cpu = s.resources.cpu_millis, priority = s.priority, "arrival");
        let req = Request::new(s.tenant.clone(), s.environment.clone(), s.resources.clone())
            .priority(s.priority)
            .scavenger(s.scavenger);
        match self.admission.enqueue(task_id(ix), &req) {
            Ok(()) => {
                let t = &mut self.tasks[ix];
                t.state = St::Queued;
                t.queued_since = self.now;
                self.acc[t.tenant as usize].queued += 1;
                self.dirty = true;
            }
            Err(e) => {
                self.tasks[ix].state = St::Failed;
                self.report.rejected += 1;
                if self.report.rejections.len() < 10 {
                    self.report.rejections.push(format!("task {ix}: {e}"));
                }
            }
        }
    }

    /// Runs one pass; true when it admitted as many as it may (more may be waiting).
    fn pass(&mut self, max: usize) -> bool {
        let t0 = Instant::now();
        let pass = self.admission.pass(
            self.epoch + chrono::Duration::milliseconds(self.now as i64),
            max,
        );
        self.report.pass_time += t0.elapsed();
        self.report.passes += 1;
        // A pass that decided something changed the state the next one sees (it may
        // decide more, e.g. preempt for a task it could not place behind those it
        // admitted); only a pass that decided nothing can be skipped until an event.
        self.dirty = !pass.admitted.is_empty() || !pass.preempt.is_empty();
        let full = pass.admitted.len() >= max;
        self.seg_admitted_real.iter_mut().for_each(|a| *a = false);
        if !pass.admitted.is_empty() || !pass.preempt.is_empty() {
            tracing::trace!(
                at_ms = self.now,
                admitted = ?pass.admitted.iter().map(|a| task_ix(a.id)).collect::<Vec<_>>(),
                preempt = ?pass.preempt.iter().map(|p| (task_ix(p.victim), task_ix(p.for_task))).collect::<Vec<_>>(),
                "pass"
            );
        }
        for a in &pass.admitted {
            let ix = task_ix(a.id);
            let segment = self
                .seg_names
                .iter()
                .position(|n| *n == a.segment)
                .unwrap_or(0);
            let gpu_model =
                a.gpu_model
                    .as_ref()
                    .map(|m| match self.models.iter().position(|x| x == m) {
                        Some(i) => i as u8,
                        None => {
                            self.models.push(m.clone());
                            (self.models.len() - 1) as u8
                        }
                    });
            self.admit(ix, segment, a.borrowed, gpu_model);
        }
        for p in &pass.preempt {
            self.preempt(task_ix(p.victim), p.victim);
        }
        if self.sim.scenario.audit {
            self.audit();
        }
        if self.sim.scenario.samples {
            let sample = UsageSample {
                at: Duration::from_millis(self.now),
                tenants: self
                    .acc
                    .iter()
                    .zip(&self.tenant_names)
                    .map(|(a, name)| TenantSample {
                        tenant: name.clone(),
                        used: Resources::new(a.used.a.cpu, a.used.a.mem)
                            .with_gpus(a.used.a.gpus, None),
                        running: a.running,
                        queued: a.queued,
                    })
                    .collect(),
            };
            self.report.samples.push(sample);
        }
        full
    }

    fn admit(&mut self, ix: usize, segment: usize, borrowed: bool, gpu_model: Option<u8>) {
        self.report.admissions += 1;
        let bound = self.grace + 2 * ms(self.sim.scenario.pass_interval);
        let now = self.now;
        let res = self.specs[ix].resources.clone();
        let scavenger = self.specs[ix].scavenger;
        let t = &mut self.tasks[ix];
        if let Some(since) = t.blocked_since.take()
            && now.saturating_sub(since) > bound
        {
            let key = format!("block {ix}");
            let message = format!(
                "task {ix} waited {} behind scavenger work (bound {})",
                human_duration(Duration::from_millis(now - since)),
                human_duration(Duration::from_millis(bound))
            );
            self.violation(key, ViolationKind::ScavengerBlocking, message);
        }
        if !scavenger {
            self.seg_admitted_real[segment] = true;
        }
        let t = &mut self.tasks[ix];
        t.segment = segment as u16;
        t.borrowed = borrowed;
        t.gpu_model = gpu_model;
        let (tenant, env) = (t.tenant, t.env);
        let acc = &mut self.acc[tenant as usize];
        acc.queued = acc.queued.saturating_sub(1);
        let model_name = gpu_model.map(|m| self.models[m as usize].clone());
        match self.cluster.place_or_wait(
            task_id(ix),
            self.seg_envs[segment].as_ref(),
            &res,
            model_name.as_deref(),
        ) {
            Placement::Impossible => {
                self.admission.release(task_id(ix));
                self.tasks[ix].state = St::Failed;
                self.report.unplaceable += 1;
                if self.sim.scenario.audit {
                    let message = format!(
                        "task {ix} admitted to segment {:?} where no node can hold it",
                        self.seg_names[segment]
                    );
                    self.violation(format!("place {ix}"), ViolationKind::Unplaceable, message);
                }
                return;
            }
            Placement::Placed(node) => self.start(ix, node.0),
            Placement::Pending => {
                self.report.placement_waits += 1;
                self.tasks[ix].state = St::Pending;
            }
        }
        self.hold(ix, &res, scavenger, tenant, env, borrowed, gpu_model, true);
    }

    /// Adds (or removes) an admitted task's resources to the accounts.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        ix: usize,
        res: &Resources,
        scavenger: bool,
        tenant: u16,
        env: u16,
        borrowed: bool,
        gpu_model: Option<u8>,
        add: bool,
    ) {
        let seg = self.tasks[ix].segment as usize;
        let a = Amount::of(res);
        let apply = |x: &mut Amount| {
            if add {
                x.cpu += a.cpu;
                x.mem += a.mem;
                x.gpus += a.gpus;
            } else {
                x.cpu = x.cpu.saturating_sub(a.cpu);
                x.mem = x.mem.saturating_sub(a.mem);
                x.gpus = x.gpus.saturating_sub(a.gpus);
            }
        };
        apply(&mut self.seg_used[seg]);
        if scavenger {
            if add {
                self.scav_running += 1;
                self.seg_scav[seg] += 1;
            } else {
                self.scav_running = self.scav_running.saturating_sub(1);
                self.seg_scav[seg] = self.seg_scav[seg].saturating_sub(1);
            }
            return;
        }
        apply(&mut self.seg_used_real[seg]);
        let acc = &mut self.acc[tenant as usize];
        if add {
            acc.running += 1;
            acc.used.add(res, gpu_model);
        } else {
            acc.running = acc.running.saturating_sub(1);
            acc.used.sub(res, gpu_model);
        }
        if self.sim.scenario.audit && !borrowed {
            let u = self.quota_use.entry((tenant, env)).or_default();
            if add {
                u.add(res, gpu_model);
            } else {
                u.sub(res, gpu_model);
            }
        }
    }

    fn start(&mut self, ix: usize, node: u32) {
        let now = self.now;
        let dur = ms(self.specs[ix].duration);
        let t = &mut self.tasks[ix];
        t.state = St::Running;
        t.wait += now.saturating_sub(t.queued_since);
        t.start = now;
        t.natural_end = now.saturating_add(dur);
        t.node = node;
        t.generation = t.generation.wrapping_add(1);
        self.seq += 1;
        self.heap
            .push(Reverse((t.natural_end, self.seq, ix as u32, t.generation)));
    }

    fn preempt(&mut self, ix: usize, id: TaskId) {
        let now = self.now;
        let Some(t) = self.tasks.get_mut(ix) else {
            return;
        };
        match t.state {
            St::Running if !t.preempting => {
                t.preempting = true;
                t.preempted += 1;
                let end = now.saturating_add(self.grace);
                if end < t.natural_end {
                    t.generation = t.generation.wrapping_add(1);
                    self.seq += 1;
                    self.heap
                        .push(Reverse((end, self.seq, ix as u32, t.generation)));
                }
                let tenant = t.tenant as usize;
                self.acc[tenant].preempted += 1;
                self.report.preemptions += 1;
            }
            St::Running => {}
            St::Pending => {
                // Admitted but never placed: nothing to stop, back to the queue.
                self.cluster.cancel_pending(id);
                t.preempted += 1;
                t.state = St::Queued;
                let (tenant, env, borrowed, model) = (t.tenant, t.env, t.borrowed, t.gpu_model);
                let res = self.specs[ix].resources.clone();
                let scav = self.specs[ix].scavenger;
                self.hold(ix, &res, scav, tenant, env, borrowed, model, false);
                self.requeue(ix, id);
                self.acc[tenant as usize].preempted += 1;
                self.report.preemptions += 1;
            }
            _ => {
                if self.sim.scenario.audit {
                    let message = format!("task {ix} preempted while {:?}", t.state);
                    self.violation(format!("pre {ix}"), ViolationKind::BadPreemption, message);
                }
            }
        }
    }

    fn requeue(&mut self, ix: usize, id: TaskId) {
        if self.admission.requeue(id) {
            self.report.requeues += 1;
            let t = &mut self.tasks[ix];
            t.state = St::Queued;
            self.acc[t.tenant as usize].queued += 1;
        } else {
            self.tasks[ix].state = St::Failed;
            let message = format!("task {ix} could not be requeued after its preemption");
            self.violation(
                format!("requeue {ix}"),
                ViolationKind::BadPreemption,
                message,
            );
        }
        self.dirty = true;
    }

    /// A running task's time is up: it finished, or its preemption grace ended.
    fn end_of_run(&mut self, ix: usize, generation: u32) {
        let now = self.now;
        let t = &self.tasks[ix];
        if t.generation != generation || t.state != St::Running {
            return;
        }
        tracing::trace!(
            at_ms = now,
            task = ix,
            preempted = t.preempting && now < t.natural_end,
            "run ended"
        );
        let (tenant, env, borrowed, model, node) =
            (t.tenant, t.env, t.borrowed, t.gpu_model, t.node);
        let ran = now.saturating_sub(t.start) as f64;
        let preempted = t.preempting && now < t.natural_end;
        let res = self.specs[ix].resources.clone();
        let scav = self.specs[ix].scavenger;
        let acc = &mut self.acc[tenant as usize];
        let (c, m, g) = (
            res.cpu_millis as f64 / 1000.0 * ran,
            res.memory_bytes as f64 / f64::from(1u32 << 30) * ran,
            f64::from(res.gpus.count) * ran,
        );
        acc.cpu_ms += c;
        acc.mem_ms += m;
        acc.gpu_ms += g;
        self.util_ms.0 += res.cpu_millis as f64 * ran;
        self.util_ms.1 += res.memory_bytes as f64 * ran;
        self.util_ms.2 += f64::from(res.gpus.count) * ran;
        self.hold(ix, &res, scav, tenant, env, borrowed, model, false);
        let id = task_id(ix);
        self.tasks[ix].preempting = false;
        if preempted {
            self.tasks[ix].queued_since = now;
            self.requeue(ix, id);
        } else {
            self.admission.release(id);
            let t = &mut self.tasks[ix];
            t.state = St::Done;
            let wait = t.wait;
            let acc = &mut self.acc[tenant as usize];
            acc.finished += 1;
            acc.waits.push(wait);
            self.report.finished += 1;
            self.end = self.end.max(now);
            self.dirty = true;
        }
        let freed = self.cluster.free(super::NodeId(node), &res);
        for (id, node) in freed {
            self.start(task_ix(id), node.0);
        }
    }

    fn violation(&mut self, key: String, kind: ViolationKind, message: String) {
        if self.reported.insert(key) && self.report.violations.len() < 1000 {
            self.report.violations.push(Violation {
                at: Duration::from_millis(self.now),
                kind,
                message,
            });
        }
    }

    fn audit(&mut self) {
        // Capacity per segment.
        let over: Vec<(usize, String)> = self
            .seg_used
            .iter()
            .zip(&self.seg_cap)
            .zip(&self.seg_names)
            .enumerate()
            .filter(|(_, ((u, c), _))| !u.fits(c))
            .map(|(s, ((u, c), name))| {
                (
                    s,
                    format!(
                        "segment {name:?} holds cpu {}m, memory {}, {} GPUs; capacity cpu {}m, memory {}, {} GPUs",
                        u.cpu, u.mem, u.gpus, c.cpu, c.mem, c.gpus
                    ),
                )
            })
            .collect();
        for (s, message) in over {
            self.violation(format!("cap {s}"), ViolationKind::OverCapacity, message);
        }
        // Nominal quotas (work admitted as borrowed is not counted).
        let mut found = Vec::new();
        for (key, limit) in &self.limits {
            if let Some(u) = self.quota_use.get(key)
                && let Some(what) = u.over(limit, &self.models)
            {
                found.push((
                    format!("quota {key:?}"),
                    format!(
                        "tenant {} in {} without borrowing: {what}",
                        self.tenant_names[key.0 as usize], self.env_names[key.1 as usize]
                    ),
                ));
            }
        }
        // A tenant that may not borrow never goes over its quota in its own segment
        // (borrowing another environment's capacity is the environment's choice).
        for (ix, t) in self.tasks.iter().enumerate() {
            if t.borrowed
                && matches!(t.state, St::Running | St::Pending)
                && !self.borrowing[t.tenant as usize]
                && t.segment == self.own_segment[t.env as usize]
            {
                found.push((
                    format!("borrow {ix}"),
                    format!(
                        "task {ix} of tenant {} was admitted as borrowed, but the tenant may not borrow",
                        self.tenant_names[t.tenant as usize]
                    ),
                ));
            }
        }
        found.sort();
        for (key, message) in found {
            self.violation(key, ViolationKind::OverQuota, message);
        }
        // Scavenger blocking: tasks waiting for capacity in a segment where, without
        // the scavengers, every waiting non-scavenger task would fit (so nothing but
        // scavenger work stands in their way).
        let bound = self.grace + 2 * ms(self.sim.scenario.pass_interval);
        let now_utc = self.epoch + chrono::Duration::milliseconds(self.now as i64);
        let nseg = self.seg_names.len();
        let mut demand = vec![Amount::default(); nseg];
        if self.scav_running == 0 {
            for t in &mut self.tasks {
                t.blocked_since = None;
            }
            return;
        }
        let mut waiting: Vec<(usize, usize, bool)> = Vec::new();
        let lookahead = self.sim.policy.config().lookahead.max(1);
        let mut ranks: HashMap<(u16, usize, i32), usize> = HashMap::new();
        for (ix, (t, spec)) in self.tasks.iter().zip(&self.specs).enumerate() {
            if t.state != St::Queued || spec.scavenger {
                continue;
            }
            let Some(q) = self.admission.explain(task_id(ix), now_utc) else {
                continue;
            };
            let Some(seg) = self.seg_names.iter().position(|n| *n == q.segment) else {
                continue;
            };
            let competing = matches!(
                q.reason,
                WaitReason::Capacity | WaitReason::Preempting | WaitReason::Priority
            );
            if competing {
                let r = Amount::of(&spec.resources);
                let d = &mut demand[seg];
                d.cpu += r.cpu;
                d.mem += r.mem;
                d.gpus += r.gpus;
            }
            // Behind `lookahead` earlier tasks of its tenant at its priority, it is
            // not looked at: FIFO, not scavenger work, holds it.
            let rank = ranks
                .entry((t.tenant, seg, spec.priority))
                .or_insert(0usize);
            let looked_at = *rank < lookahead;
            *rank += 1;
            let for_capacity =
                looked_at && matches!(q.reason, WaitReason::Capacity | WaitReason::Preempting);
            waiting.push((ix, seg, for_capacity));
        }
        let mut late = Vec::new();
        for (ix, seg, for_capacity) in waiting {
            let cap = self.seg_cap[seg];
            let real = self.seg_used_real[seg];
            let room = Amount {
                cpu: cap.cpu.saturating_sub(real.cpu),
                mem: cap.mem.saturating_sub(real.mem),
                gpus: cap.gpus.saturating_sub(real.gpus),
            };
            let blocked = for_capacity && self.seg_scav[seg] > 0 && demand[seg].fits(&room);
            let now = self.now;
            let t = &mut self.tasks[ix];
            if blocked {
                tracing::trace!(at_ms = now, task = ix, since = ?t.blocked_since, "blocked by scavengers");
                if self.seg_admitted_real[seg] {
                    // Other non-scavenger work took room this pass (priority, fair
                    // share): what blocks it now is not (only) scavenger work.
                    t.blocked_since = Some(now);
                }
                let since = *t.blocked_since.get_or_insert(now);
                if now.saturating_sub(since) > bound {
                    late.push((ix, now - since));
                }
            } else {
                t.blocked_since = None;
            }
        }
        for (ix, waited) in late {
            let message = format!(
                "task {ix} has waited {} behind scavenger work (bound {})",
                human_duration(Duration::from_millis(waited)),
                human_duration(Duration::from_millis(bound))
            );
            self.violation(
                format!("block {ix}"),
                ViolationKind::ScavengerBlocking,
                message,
            );
        }
    }

    fn finish(mut self, wall: Instant) -> SimReport {
        let mut unfinished = 0;
        let mut lost = Vec::new();
        for (ix, t) in self.tasks.iter().enumerate() {
            if matches!(t.state, St::Queued | St::Pending | St::Running | St::Future) {
                unfinished += 1;
                if self.sim.scenario.audit && self.sim.scenario.horizon.is_none() {
                    lost.push(format!(
                        "task {ix} ({}) never finished: {:?}{}",
                        self.tenant_names[t.tenant as usize],
                        t.state,
                        if t.preempted > 0 {
                            format!(" after {} preemption(s)", t.preempted)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
        for (i, message) in lost.into_iter().enumerate() {
            self.violation(format!("lost {i}"), ViolationKind::Unfinished, message);
        }
        let mut report = std::mem::take(&mut self.report);
        report.tasks = self.tasks.len();
        report.unfinished = unfinished;
        report.makespan = Duration::from_millis(self.end);
        let mut all: Vec<u64> = Vec::with_capacity(report.finished);
        for (acc, name) in self.acc.iter_mut().zip(&self.tenant_names) {
            all.extend_from_slice(&acc.waits);
            report.tenants.insert(
                name.as_str().to_owned(),
                TenantReport {
                    tasks: acc.tasks,
                    finished: acc.finished,
                    wait: WaitStats::of(&mut acc.waits),
                    cpu_core_seconds: acc.cpu_ms / 1000.0,
                    memory_gib_seconds: acc.mem_ms / 1000.0,
                    gpu_seconds: acc.gpu_ms / 1000.0,
                    preempted: acc.preempted,
                },
            );
        }
        report.wait = WaitStats::of(&mut all);
        let cap = Amount::of(&self.cluster.capacity());
        let span = self.end as f64;
        let ratio = |used: f64, cap: f64| {
            if cap > 0.0 && span > 0.0 {
                used / (cap * span)
            } else {
                0.0
            }
        };
        report.utilisation = Utilisation {
            cpu: ratio(self.util_ms.0, cap.cpu as f64),
            memory: ratio(self.util_ms.1, cap.mem as f64),
            gpus: ratio(self.util_ms.2, f64::from(cap.gpus)),
        };
        report.wall_time = wall.elapsed();
        report
    }
}

fn limit_of(q: &QuotaSpec, models: &[String]) -> Limit {
    let qty = |q: &Quantity, cpu: bool| -> Option<u64> {
        match (q, cpu) {
            (Quantity::Int(n), true) => n.checked_mul(1000),
            (Quantity::Int(n), false) => Some(*n),
            (Quantity::Float(f), true) => Some((f * 1000.0).round() as u64),
            (Quantity::Float(f), false) => Some(f.round() as u64),
            (Quantity::Text(s), true) => Resources::parse_cpu(s).ok(),
            (Quantity::Text(s), false) => Resources::parse_memory(s).ok(),
        }
    };
    let mut limit = Limit {
        cpu: q.cpu.as_ref().and_then(|c| qty(c, true)),
        mem: q.memory.as_ref().and_then(|m| qty(m, false)),
        ..Limit::default()
    };
    match &q.gpus {
        None => {}
        Some(GpuQuota::Count(n)) => limit.gpus = Some(u64::from(*n)),
        Some(GpuQuota::Models(by_model)) => {
            for (name, n) in by_model {
                let want = name.to_ascii_lowercase();
                let ix = models
                    .iter()
                    .position(|m| m.to_ascii_lowercase() == want)
                    .or_else(|| {
                        models
                            .iter()
                            .position(|m| m.to_ascii_lowercase().contains(&want))
                    });
                if let Some(i) = ix {
                    limit.models.push((i as u8, u64::from(*n)));
                }
            }
        }
    }
    limit
}

/// `Option<Duration>` as `"30s"` or absent.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::duration::serde_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "crate::duration::serde_duration")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u32) -> Vec<NodeGroup> {
        vec![NodeGroup::new(n, Resources::new(4000, 16 << 30))]
    }

    #[test]
    fn ids_keep_arrival_order() {
        assert!(task_id(1) < task_id(2));
        assert!(task_id(9) < task_id(10_000));
        assert_eq!(task_ix(task_id(123_456)), 123_456);
    }

    #[test]
    fn runs_to_the_end_and_waits_are_counted() {
        // Two nodes, four one-node tasks of 10 minutes: two wait 10 minutes.
        let tasks = (0..4).map(|_| {
            SimTask::new(
                Tenant::parse("acme").unwrap(),
                Resources::new(4000, 1 << 30),
                Duration::from_secs(600),
            )
        });
        let s = Scenario::new(nodes(2)).tasks(tasks).audit(true);
        let r = Simulation::new(s).unwrap().run();
        assert_eq!(r.finished, 4);
        assert_eq!(r.makespan, Duration::from_secs(1200));
        assert_eq!(r.wait.max, Duration::from_secs(600));
        assert!(
            (r.utilisation.cpu - 1.0).abs() < 1e-9,
            "{}",
            r.utilisation.cpu
        );
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.tenants["acme"].cpu_core_seconds, 4.0 * 4.0 * 600.0);
    }

    #[test]
    fn scavengers_are_preempted_and_requeued() {
        let grace = Duration::from_secs(30);
        let mut config = AdmissionConfig::default();
        config.scavenger.grace = grace;
        let scav = (0..2).map(|_| {
            SimTask::new(
                Tenant::parse("batch").unwrap(),
                Resources::new(4000, 1 << 30),
                Duration::from_secs(3600),
            )
            .scavenger(true)
        });
        let real = SimTask::new(
            Tenant::parse("acme").unwrap(),
            Resources::new(4000, 1 << 30),
            Duration::from_secs(60),
        )
        .arrival(Duration::from_secs(100));
        let s = Scenario::new(nodes(2))
            .admission(config)
            .tasks(scav)
            .tasks([real])
            .audit(true);
        let r = Simulation::new(s).unwrap().run();
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.finished, 3);
        assert_eq!(r.preemptions, 1);
        assert_eq!(r.requeues, 1);
        // The real task waited the grace (plus at most a pass).
        assert!(r.tenants["acme"].wait.max <= grace + Duration::from_secs(1));
        assert!(r.tenants["acme"].wait.max >= grace);
    }

    #[test]
    fn bad_scenarios_list_every_problem() {
        let s = Scenario::new(vec![])
            .pass_interval(Duration::ZERO)
            .max_admit_per_pass(0);
        let err = Simulation::new(s).unwrap_err().to_string();
        for want in ["at least one node", "pass_interval", "max_admit_per_pass"] {
            assert!(err.contains(want), "{err}");
        }
    }
}
