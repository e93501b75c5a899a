//! Admission: which queued task may run next, identical for every executor.
//!
//! Ops decides *what* runs; the engine underneath (the local executor, kube-scheduler,
//! the simulator) decides *where*. Admission works on capacity **segments**: an
//! environment with capacity of its own (a configured `capacity`, or the executor's
//! node pool of that name) is a segment; the other environments share the rest. It
//! never admits more than a segment holds, and never more than a tenant's quota
//! unless the tenant borrows idle capacity.
//!
//! One [`pass`](Admission::pass) goes, per segment:
//! 1. through the priorities, highest first; at each priority the tenants with queued
//!    work in **dominant-resource fair-share** order (the tenant whose largest share of
//!    any resource, divided by its weight, is smallest goes next), each tenant's tasks
//!    in submission (FIFO) order, admitting what fits within its nominal quota;
//! 2. then what needs borrowing: quota beyond the nominal, or idle capacity of the
//!    environments this one may borrow from;
//! 3. then, for tasks still blocked by capacity, **preemption**: scavenger tasks
//!    holding the room are stopped (signal, grace, kill), and, where the segment says
//!    `reclaim = "preempt"`, borrowed work too — never other work;
//! 4. last, **scavenger** tasks, in idle capacity only, and only while no other task of
//!    the segment waits for capacity. They use no quota.
//!
//! A tenant whose first queued task is blocked lets up to `lookahead` later tasks try
//! (best-effort FIFO). Tasks refused by the budget gate wait, with that reason, until
//! asked again. [`explain`](Admission::explain) says why any queued task waits and
//! where it stands.
//!
//! ```
//! use chrono::Utc;
//! use ops_core::{Environment, Resources, TaskId, Tenant};
//! use ops_tasks::NodeGroup;
//! use ops_tasks::admission::{Admission, AdmissionPolicy, Request, WaitReason};
//! use std::sync::Arc;
//!
//! let nodes = [NodeGroup::new(1, Resources::new(4_000, 8 << 30))];
//! let mut admission = Admission::new(Arc::new(AdmissionPolicy::open(&nodes)));
//! let (a, b) = (TaskId::new(), TaskId::new());
//! let request = Request::new(Tenant::parse("acme")?, Environment::default(), Resources::new(3_000, 1 << 30));
//! admission.enqueue(a, &request)?;
//! admission.enqueue(b, &request)?;
//! let pass = admission.pass(Utc::now(), 100);
//! assert_eq!(pass.admitted.len(), 1);
//! let why = admission.explain(b, Utc::now()).unwrap();
//! assert_eq!(why.reason, WaitReason::Capacity);
//! admission.release(a);
//! assert_eq!(admission.pass(Utc::now(), 100).admitted[0].id, b);
//! # Ok::<(), ops_tasks::Error>(())
//! ```

mod budget;
mod config;
mod policy;
mod resvec;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ops_core::{Environment, Resources, TaskId, Tenant};
use serde::{Deserialize, Serialize};

pub use budget::{BudgetDecision, BudgetGate, BudgetRequest};
pub use config::{
    AdmissionConfig, EnvironmentConfig, GpuQuota, Quantity, QuotaSpec, Reclaim, ScavengerConfig,
    TenantConfig,
};
pub use policy::AdmissionPolicy;

/// The name of the capacity segment shared by environments without their own.
pub const SHARED_SEGMENT: &str = policy::SHARED;

use crate::Result;
use policy::base_vec;
use resvec::{CPU, GPU, MEM, ResVec};

/// What admission needs to know about a task.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Request {
    /// Its owner.
    pub tenant: Tenant,
    /// Its environment.
    pub environment: Environment,
    /// Higher first.
    pub priority: i32,
    /// What it needs.
    pub resources: Resources,
    /// Backfill work: idle capacity only, no quota, preempted by other work.
    pub scavenger: bool,
}

impl Request {
    /// A priority-0, non-scavenger request.
    pub fn new(tenant: Tenant, environment: Environment, resources: Resources) -> Self {
        Self {
            tenant,
            environment,
            priority: 0,
            resources,
            scavenger: false,
        }
    }
    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Marks it as scavenger work.
    pub fn scavenger(mut self, scavenger: bool) -> Self {
        self.scavenger = scavenger;
        self
    }
}

/// The decisions of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Pass {
    /// Tasks to launch now; they hold their resources until [`Admission::release`].
    pub admitted: Vec<Admitted>,
    /// Running tasks to stop (with the policy's grace) to make room. Each keeps its
    /// resources until released; requeue it with [`Admission::requeue`].
    pub preempt: Vec<Preemption>,
}

/// A task admitted to run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Admitted {
    /// The task.
    pub id: TaskId,
    /// The capacity segment (node pool) it was placed in: its environment's, or a
    /// lender's when it borrowed; `*` is the shared segment.
    pub segment: String,
    /// The GPU model it was counted against, when it asked for GPUs.
    pub gpu_model: Option<String>,
    /// Whether it runs on borrowed quota or another environment's capacity (and may be
    /// reclaimed where the policy says so).
    pub borrowed: bool,
}

/// A running task to stop so that another can start.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Preemption {
    /// The task to stop.
    pub victim: TaskId,
    /// The task waiting for its room.
    pub for_task: TaskId,
    /// Why it may be stopped.
    pub cause: PreemptCause,
}

/// Why a running task may be preempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PreemptCause {
    /// It is scavenger work.
    Scavenger,
    /// It runs on borrowed quota or capacity, and its lender reclaims it.
    Reclaim,
}

/// Why a queued task is not running yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WaitReason {
    /// Its tenant's quota in its environment is used up.
    Quota,
    /// Its segment (and any it may borrow from) has no room.
    Capacity,
    /// It fits, but other tasks come first (higher priority, fair share, FIFO) or the
    /// next pass has not run yet.
    Priority,
    /// The budget gate refused it; asked again later.
    Budget,
    /// Scavenger work waiting for idle capacity.
    IdleCapacity,
    /// Scavenger or borrowed work is being preempted to make its room.
    Preempting,
}

impl WaitReason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Quota => "quota",
            WaitReason::Capacity => "capacity",
            WaitReason::Priority => "priority",
            WaitReason::Budget => "budget",
            WaitReason::IdleCapacity => "idle_capacity",
            WaitReason::Preempting => "preempting",
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a queued task stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The main reason it waits.
    pub reason: WaitReason,
    /// The detail: which quota, which resource, the budget gate's words.
    pub message: String,
    /// 1-based place in its segment's queue in priority-then-submission order (fair
    /// share may let other tenants' tasks in between).
    pub position: u64,
    /// Tasks before it in that order.
    pub ahead: u64,
    /// Its capacity segment.
    pub segment: String,
    /// Tasks running in that segment now.
    pub running_in_segment: u64,
}

/// A tenant's standing in one environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TenantUsage {
    /// The tenant.
    pub tenant: Tenant,
    /// The environment.
    pub environment: Environment,
    /// In use now (scavenger work not counted).
    pub used: Resources,
    /// Running tasks (scavenger tasks not counted).
    pub running: u64,
    /// Running scavenger tasks.
    pub scavenger_running: u64,
    /// Queued tasks.
    pub queued: u64,
    /// Running tasks admitted on borrowed quota or capacity.
    pub borrowed_running: u64,
    /// Largest share of any resource of its segment, divided by the tenant's weight.
    pub dominant_share: f64,
}

#[derive(Clone, Debug)]
struct Hold {
    until: DateTime<Utc>,
    reason: String,
}

#[derive(Clone, Debug)]
struct QTask {
    tenant: u32,
    env: u32,
    priority: i32,
    base: ResVec,
    /// GPU models the task may use (bit i = model i), 0 when it asks for none.
    models: u8,
    scavenger: bool,
    hold: Option<Box<Hold>>,
}

#[derive(Clone, Debug)]
struct Slot {
    task: QTask,
    segment: usize,
    charge: ResVec,
    borrowed: bool,
    seq: u64,
    draining: bool,
}

#[derive(Debug)]
struct TenantState {
    name: Tenant,
    weight: f64,
    /// Non-scavenger usage per segment (for fair share).
    seg_used: Vec<ResVec>,
    /// Scavenger usage per segment (fair share among scavengers).
    scav_used: Vec<ResVec>,
}

#[derive(Debug)]
struct EnvState {
    name: Environment,
    segment: usize,
    lenders: Vec<usize>,
}

#[derive(Debug, Default)]
struct Acct {
    used: ResVec,
    nominal: ResVec,
    ceiling: ResVec,
    running: u64,
    borrowed: u64,
}

/// Queued tasks of one segment at one priority, per tenant in FIFO order.
#[derive(Debug, Default)]
struct Level {
    tenants: BTreeMap<u32, BTreeSet<TaskId>>,
}

#[derive(Debug, Default)]
struct SegState {
    used: ResVec,
    draining: ResVec,
    real: BTreeMap<Reverse<i32>, Level>,
    scav: BTreeMap<Reverse<i32>, Level>,
    /// Running scavengers, cheapest to preempt first.
    scav_running: BTreeSet<(i32, Reverse<u64>, TaskId)>,
    /// Running borrowed work, newest first.
    borrowed_running: BTreeSet<(Reverse<u64>, TaskId)>,
    running: u64,
    /// Non-scavenger tasks left waiting for capacity by the last pass.
    blocked: Vec<TaskId>,
}

enum Try {
    Admit {
        segment: usize,
        charge: ResVec,
        borrowed: bool,
    },
    /// It could go beyond its quota or into a lender's segment; `capacity`: its own
    /// segment lacked the room.
    NeedsBorrow {
        capacity: bool,
    },
    Capacity,
    Quota,
}

/// The admission queue and the resources admitted tasks hold. Deterministic: the
/// same calls give the same decisions.
#[derive(Debug)]
pub struct Admission {
    policy: Arc<AdmissionPolicy>,
    queued: HashMap<TaskId, QTask>,
    running: HashMap<TaskId, Slot>,
    tenants: Vec<TenantState>,
    tenant_ix: HashMap<Tenant, u32>,
    envs: Vec<EnvState>,
    env_ix: HashMap<Environment, u32>,
    accts: HashMap<(u32, u32), Acct>,
    segs: Vec<SegState>,
    seq: u64,
}

impl Admission {
    /// An empty queue under `policy`.
    pub fn new(policy: Arc<AdmissionPolicy>) -> Self {
        let segs = policy
            .segments
            .iter()
            .map(|_| SegState::default())
            .collect();
        Self {
            policy,
            queued: HashMap::new(),
            running: HashMap::new(),
            tenants: Vec::new(),
            tenant_ix: HashMap::new(),
            envs: Vec::new(),
            env_ix: HashMap::new(),
            accts: HashMap::new(),
            segs,
            seq: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<AdmissionPolicy> {
        &self.policy
    }

    /// Queued tasks.
    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// Admitted tasks holding resources (running or being preempted).
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Whether `id` is queued here.
    pub fn is_queued(&self, id: TaskId) -> bool {
        self.queued.contains_key(&id)
    }

    /// Whether `id` holds resources here.
    pub fn is_running(&self, id: TaskId) -> bool {
        self.running.contains_key(&id)
    }

    /// Whether any segment has room left for at least something (used to decide
    /// whether to claim more work).
    pub fn has_room(&self) -> bool {
        (0..self.segs.len()).any(|seg| {
            let free = self.free(seg);
            free.0[CPU] > 0 && free.0[MEM] > 0
        })
    }

    /// Queues a task (again, after a preemption or a refusal: it keeps its place by
    /// id). Fails, changing nothing, when it can never be admitted.
    pub fn enqueue(&mut self, id: TaskId, req: &Request) -> Result<()> {
        self.policy.check(req)?;
        if self.queued.contains_key(&id) || self.running.contains_key(&id) {
            return Ok(());
        }
        let task = self.new_task(req);
        self.insert_queued(id, task);
        Ok(())
    }

    fn new_task(&mut self, req: &Request) -> QTask {
        let tenant = self.intern_tenant(&req.tenant);
        let env = self.intern_env(&req.environment);
        self.acct(tenant, env);
        QTask {
            tenant,
            env,
            priority: req.priority,
            base: base_vec(&req.resources),
            models: model_mask(&self.policy.gpu_candidates(&req.resources)),
            scavenger: req.scavenger,
            hold: None,
        }
    }

    /// Records a task that already runs (adopted after a restart): it holds its
    /// resources in its own segment, counted as borrowed beyond its tenant's quota,
    /// even if that over-commits (the configuration may have changed meanwhile).
    pub fn occupy(&mut self, id: TaskId, req: &Request) {
        if self.running.contains_key(&id) {
            return;
        }
        self.remove(id);
        let task = self.new_task(req);
        let (tenant, env) = (task.tenant, task.env);
        let segment = self.envs[env as usize].segment;
        let charge = self.charges(&task).next().unwrap_or(task.base);
        let borrowed = !task.scavenger
            && self
                .accts
                .get(&(tenant, env))
                .is_some_and(|a| !a.used.fits_with(&charge, &a.nominal));
        self.queued.insert(id, task);
        self.admit(id, segment, charge, borrowed);
    }

    fn insert_queued(&mut self, id: TaskId, task: QTask) {
        let seg = self.envs[task.env as usize].segment;
        let levels = if task.scavenger {
            &mut self.segs[seg].scav
        } else {
            &mut self.segs[seg].real
        };
        levels
            .entry(Reverse(task.priority))
            .or_default()
            .tenants
            .entry(task.tenant)
            .or_default()
            .insert(id);
        self.queued.insert(id, task);
    }

    /// Drops a queued task (cancelled). False when it is not queued here.
    pub fn remove(&mut self, id: TaskId) -> bool {
        self.take_queued(id).is_some()
    }

    fn take_queued(&mut self, id: TaskId) -> Option<QTask> {
        let task = self.queued.remove(&id)?;
        let seg = self.envs[task.env as usize].segment;
        let levels = if task.scavenger {
            &mut self.segs[seg].scav
        } else {
            &mut self.segs[seg].real
        };
        if let Some(level) = levels.get_mut(&Reverse(task.priority)) {
            if let Some(set) = level.tenants.get_mut(&task.tenant) {
                set.remove(&id);
                if set.is_empty() {
                    level.tenants.remove(&task.tenant);
                }
            }
            if level.tenants.is_empty() {
                levels.remove(&Reverse(task.priority));
            }
        }
        Some(task)
    }

    /// An admitted task ended (or was preempted): its resources are free again.
    /// False when it holds none here.
    pub fn release(&mut self, id: TaskId) -> bool {
        self.take_running(id).is_some()
    }

    /// Releases a preempted task and queues it again in its old place.
    pub fn requeue(&mut self, id: TaskId) -> bool {
        match self.take_running(id) {
            Some(slot) => {
                self.insert_queued(id, slot.task);
                true
            }
            None => false,
        }
    }

    /// An admitted task the budget gate refused: its resources are freed and it waits,
    /// queued with `reason`, until `until`.
    pub fn refuse(&mut self, id: TaskId, reason: String, until: DateTime<Utc>) -> bool {
        match self.take_running(id) {
            Some(mut slot) => {
                slot.task.hold = Some(Box::new(Hold { until, reason }));
                self.insert_queued(id, slot.task);
                true
            }
            None => false,
        }
    }

    fn take_running(&mut self, id: TaskId) -> Option<Slot> {
        let slot = self.running.remove(&id)?;
        let seg = &mut self.segs[slot.segment];
        seg.used.sub(&slot.charge);
        seg.running = seg.running.saturating_sub(1);
        if slot.draining {
            seg.draining.sub(&slot.charge);
        }
        let t = &mut self.tenants[slot.task.tenant as usize];
        if slot.task.scavenger {
            t.scav_used[slot.segment].sub(&slot.charge);
            seg.scav_running
                .remove(&(slot.task.priority, Reverse(slot.seq), id));
        } else {
            t.seg_used[slot.segment].sub(&slot.charge);
            if slot.borrowed {
                seg.borrowed_running.remove(&(Reverse(slot.seq), id));
            }
            let acct = self.acct(slot.task.tenant, slot.task.env);
            acct.used.sub(&slot.charge);
            acct.running = acct.running.saturating_sub(1);
            if slot.borrowed {
                acct.borrowed = acct.borrowed.saturating_sub(1);
            }
        }
        Some(slot)
    }

    fn intern_tenant(&mut self, tenant: &Tenant) -> u32 {
        if let Some(i) = self.tenant_ix.get(tenant) {
            return *i;
        }
        let weight = self.policy.tenant(tenant).map_or(1.0, |t| t.weight);
        let n = self.policy.segments.len();
        let i = self.tenants.len() as u32;
        self.tenants.push(TenantState {
            name: tenant.clone(),
            weight,
            seg_used: vec![ResVec::ZERO; n],
            scav_used: vec![ResVec::ZERO; n],
        });
        self.tenant_ix.insert(tenant.clone(), i);
        i
    }

    fn intern_env(&mut self, env: &Environment) -> u32 {
        if let Some(i) = self.env_ix.get(env) {
            return *i;
        }
        // enqueue checked the route exists.
        let route = self.policy.route(env.as_str()).unwrap_or(policy::EnvRoute {
            segment: self.policy.segments.len() - 1,
            lenders: Vec::new(),
        });
        let i = self.envs.len() as u32;
        self.envs.push(EnvState {
            name: env.clone(),
            segment: route.segment,
            lenders: route.lenders,
        });
        self.env_ix.insert(env.clone(), i);
        i
    }

    fn acct(&mut self, tenant: u32, env: u32) -> &mut Acct {
        let policy = &self.policy;
        let tenants = &self.tenants;
        let envs = &self.envs;
        self.accts.entry((tenant, env)).or_insert_with(|| {
            let quota = policy
                .tenant(&tenants[tenant as usize].name)
                .and_then(|t| t.quota.get(envs[env as usize].name.as_str()));
            match quota {
                Some((nominal, ceiling)) => Acct {
                    nominal: *nominal,
                    ceiling: *ceiling,
                    ..Acct::default()
                },
                None => Acct {
                    nominal: ResVec::UNLIMITED,
                    ceiling: ResVec::UNLIMITED,
                    ..Acct::default()
                },
            }
        })
    }

    fn share(&self, tenant: u32, seg: usize, scavenger: bool) -> u64 {
        let t = &self.tenants[tenant as usize];
        let used = if scavenger {
            &t.scav_used[seg]
        } else {
            &t.seg_used[seg]
        };
        let cap = &self.policy.segments[seg].capacity;
        let mut share = 0f64;
        for d in [CPU, MEM, GPU] {
            if cap.0[d] > 0 && cap.0[d] != u64::MAX {
                share = share.max(used.0[d] as f64 / cap.0[d] as f64);
            }
        }
        // Non-negative floats order like their bits.
        (share / t.weight).to_bits()
    }

    fn free(&self, seg: usize) -> ResVec {
        self.policy.segments[seg]
            .capacity
            .minus(&self.segs[seg].used)
    }

    /// Tries to place `task`: within its nominal quota in its own segment, or (when
    /// `borrow`) beyond it, or in a lender's segment.
    fn try_place(&self, task: &QTask, borrow: bool) -> Try {
        let env = &self.envs[task.env as usize];
        let acct = self.accts.get(&(task.tenant, task.env));
        let (nominal, ceiling, used) = match acct {
            Some(a) => (a.nominal, a.ceiling, a.used),
            None => (ResVec::UNLIMITED, ResVec::UNLIMITED, ResVec::ZERO),
        };
        let mut quota_ok = false;
        let mut needs_borrow = false;
        let mut home_full = false;
        for charge in self.charges(task) {
            let within = task.scavenger || used.fits_with(&charge, &nominal);
            let within_ceiling = task.scavenger || used.fits_with(&charge, &ceiling);
            if !within_ceiling {
                continue;
            }
            quota_ok = true;
            let home_fits = ResVec::ZERO.fits_with(&charge, &self.free(env.segment));
            if within && home_fits {
                return Try::Admit {
                    segment: env.segment,
                    charge,
                    borrowed: false,
                };
            }
            if !within {
                needs_borrow = true;
            }
            if !home_fits {
                home_full = true;
            }
            if borrow {
                if home_fits {
                    return Try::Admit {
                        segment: env.segment,
                        charge,
                        borrowed: !within,
                    };
                }
                for lender in &env.lenders {
                    // Scavenger work never takes room other work waits for.
                    if task.scavenger && !self.segs[*lender].blocked.is_empty() {
                        continue;
                    }
                    if ResVec::ZERO.fits_with(&charge, &self.free(*lender)) {
                        return Try::Admit {
                            segment: *lender,
                            charge,
                            borrowed: true,
                        };
                    }
                }
            } else if !env.lenders.is_empty() && within {
                needs_borrow = true;
            }
        }
        if !quota_ok {
            Try::Quota
        } else if needs_borrow && !borrow {
            Try::NeedsBorrow {
                capacity: home_full,
            }
        } else {
            Try::Capacity
        }
    }

    fn charges<'a>(&'a self, task: &'a QTask) -> impl Iterator<Item = ResVec> + 'a {
        let none = (task.models == 0).then_some(task.base);
        none.into_iter().chain(
            (0..resvec::MAX_MODELS)
                .filter(move |m| task.models & (1 << m) != 0)
                .map(move |m| {
                    let mut v = task.base;
                    v.0[ResVec::model(m)] = task.base.0[GPU];
                    v
                }),
        )
    }

    fn admit(&mut self, id: TaskId, segment: usize, charge: ResVec, borrowed: bool) -> Admitted {
        let Some(mut task) = self.take_queued(id) else {
            // Not reachable: ids come from the queue.
            return Admitted {
                id,
                segment: String::new(),
                gpu_model: None,
                borrowed,
            };
        };
        task.hold = None;
        self.seq += 1;
        let seq = self.seq;
        let seg = &mut self.segs[segment];
        seg.used.add(&charge);
        seg.running += 1;
        let tenant = task.tenant;
        if task.scavenger {
            seg.scav_running.insert((task.priority, Reverse(seq), id));
            self.tenants[tenant as usize].scav_used[segment].add(&charge);
        } else {
            if borrowed {
                seg.borrowed_running.insert((Reverse(seq), id));
            }
            self.tenants[tenant as usize].seg_used[segment].add(&charge);
            let acct = self.acct(tenant, task.env);
            acct.used.add(&charge);
            acct.running += 1;
            if borrowed {
                acct.borrowed += 1;
            }
        }
        let gpu_model = (0..self.policy.models.len())
            .find(|m| charge.0[ResVec::model(*m)] > 0)
            .map(|m| self.policy.models[m].clone());
        self.running.insert(
            id,
            Slot {
                task,
                segment,
                charge,
                borrowed,
                seq,
                draining: false,
            },
        );
        Admitted {
            id,
            segment: self.policy.segments[segment].name.clone(),
            gpu_model,
            borrowed,
        }
    }

    /// Decides what to start (at most `max_admit` tasks) and what to preempt. Tasks
    /// held by the budget gate until after `now` are skipped.
    pub fn pass(&mut self, now: DateTime<Utc>, max_admit: usize) -> Pass {
        let mut pass = Pass::default();
        let nsegs = self.segs.len();
        let mut borrow: Vec<(u64, TaskId)> = Vec::new();
        let mut blocked: Vec<Vec<TaskId>> = vec![Vec::new(); nsegs];
        // 1. Within nominal quota, own segment.
        for (seg, waiting) in blocked.iter_mut().enumerate() {
            let prios: Vec<Reverse<i32>> = self.segs[seg].real.keys().copied().collect();
            for prio in prios {
                self.level_pass(
                    seg,
                    prio,
                    false,
                    now,
                    max_admit,
                    &mut pass,
                    &mut borrow,
                    waiting,
                );
            }
        }
        // 2. Borrowing, lowest share first.
        borrow.sort_unstable();
        for (_, id) in borrow {
            if pass.admitted.len() >= max_admit {
                break;
            }
            let Some(task) = self.queued.get(&id) else {
                continue;
            };
            if let Try::Admit {
                segment,
                charge,
                borrowed,
            } = self.try_place(task, true)
            {
                let home = self.envs[task.env as usize].segment;
                blocked[home].retain(|b| *b != id);
                pass.admitted
                    .push(self.admit(id, segment, charge, borrowed));
            }
        }
        // 3. Preemption for work blocked by capacity.
        for (seg, waiting) in blocked.iter_mut().enumerate() {
            waiting.retain(|id| self.queued.contains_key(id));
            self.plan_preemption(seg, waiting, &mut pass);
        }
        for (seg, waiting) in blocked.into_iter().enumerate() {
            self.segs[seg].blocked = waiting;
        }
        // 4. Scavengers, in idle capacity of segments where nothing else waits (their
        //    own, or one they may borrow from).
        for seg in 0..nsegs {
            if !self.segs[seg].blocked.is_empty() {
                continue;
            }
            let prios: Vec<Reverse<i32>> = self.segs[seg].scav.keys().copied().collect();
            let mut ignored = Vec::new();
            let mut ignored_blocked = Vec::new();
            for prio in prios {
                self.level_pass(
                    seg,
                    prio,
                    true,
                    now,
                    max_admit,
                    &mut pass,
                    &mut ignored,
                    &mut ignored_blocked,
                );
            }
        }
        pass
    }

    /// One priority level of one segment in fair-share order.
    #[allow(clippy::too_many_arguments)]
    fn level_pass(
        &mut self,
        seg: usize,
        prio: Reverse<i32>,
        scavenger: bool,
        now: DateTime<Utc>,
        max_admit: usize,
        pass: &mut Pass,
        borrow: &mut Vec<(u64, TaskId)>,
        blocked: &mut Vec<TaskId>,
    ) {
        let lookahead = self.policy.config.lookahead;
        let tenants: Vec<u32> = {
            let levels = if scavenger {
                &self.segs[seg].scav
            } else {
                &self.segs[seg].real
            };
            match levels.get(&prio) {
                Some(level) => level.tenants.keys().copied().collect(),
                None => return,
            }
        };
        let mut heap: BinaryHeap<Reverse<(u64, u32)>> = tenants
            .iter()
            .map(|t| Reverse((self.share(*t, seg, scavenger), *t)))
            .collect();
        // Per tenant: the last task looked at, and how many were blocked.
        let mut cursor: HashMap<u32, (Option<TaskId>, usize)> = HashMap::new();
        while let Some(Reverse((_, tenant))) = heap.pop() {
            if pass.admitted.len() >= max_admit {
                return;
            }
            let (mut after, mut misses) = cursor.get(&tenant).copied().unwrap_or((None, 0));
            let mut admitted = None;
            loop {
                if misses >= lookahead {
                    break;
                }
                let next = {
                    let levels = if scavenger {
                        &self.segs[seg].scav
                    } else {
                        &self.segs[seg].real
                    };
                    let Some(set) = levels.get(&prio).and_then(|l| l.tenants.get(&tenant)) else {
                        break;
                    };
                    let lower = match after {
                        Some(a) => Bound::Excluded(a),
                        None => Bound::Unbounded,
                    };
                    set.range((lower, Bound::Unbounded)).next().copied()
                };
                let Some(id) = next else { break };
                after = Some(id);
                let Some(task) = self.queued.get(&id) else {
                    break;
                };
                if task.hold.as_ref().is_some_and(|h| h.until > now) {
                    misses += 1;
                    continue;
                }
                match self.try_place(task, scavenger) {
                    Try::Admit {
                        segment,
                        charge,
                        borrowed,
                    } => {
                        admitted = Some((id, segment, charge, borrowed));
                        break;
                    }
                    Try::NeedsBorrow { capacity } => {
                        borrow.push((self.share(tenant, seg, false), id));
                        if capacity && blocked.len() < 64 {
                            blocked.push(id);
                        }
                        misses += 1;
                    }
                    Try::Capacity => {
                        if blocked.len() < 64 {
                            blocked.push(id);
                        }
                        misses += 1;
                    }
                    Try::Quota => misses += 1,
                }
            }
            cursor.insert(tenant, (after, misses));
            if let Some((id, segment, charge, borrowed)) = admitted {
                pass.admitted
                    .push(self.admit(id, segment, charge, borrowed));
                heap.push(Reverse((self.share(tenant, seg, scavenger), tenant)));
            }
        }
    }

    /// Picks victims so that blocked tasks get their room: scavengers first, then
    /// borrowed work where the segment reclaims. Room already being freed counts.
    fn plan_preemption(&mut self, seg: usize, waiting: &[TaskId], pass: &mut Pass) {
        if waiting.is_empty() {
            return;
        }
        let reclaim = self.policy.segments[seg].reclaim == Reclaim::Preempt;
        let mut pledged = ResVec::ZERO;
        let mut chosen: Vec<TaskId> = Vec::new();
        for id in waiting {
            let Some(task) = self.queued.get(id) else {
                continue;
            };
            let Some(need) = self.charges(task).next() else {
                continue;
            };
            let coming = self.free(seg).plus(&self.segs[seg].draining);
            let avail = coming.minus(&pledged);
            if ResVec::ZERO.fits_with(&need, &avail) {
                pledged.add(&need);
                continue;
            }
            let within_nominal = self
                .accts
                .get(&(task.tenant, task.env))
                .is_none_or(|a| a.used.fits_with(&need, &a.nominal));
            let shortfall = need.minus(&avail);
            let mut gain = ResVec::ZERO;
            let mut victims = Vec::new();
            let mut candidates: Vec<(TaskId, PreemptCause)> = self.segs[seg]
                .scav_running
                .iter()
                .map(|(_, _, v)| (*v, PreemptCause::Scavenger))
                .collect();
            if reclaim && within_nominal && !task.scavenger {
                candidates.extend(
                    self.segs[seg]
                        .borrowed_running
                        .iter()
                        .map(|(_, v)| (*v, PreemptCause::Reclaim)),
                );
            }
            for (victim, cause) in candidates {
                if ResVec::ZERO.fits_with(&shortfall, &gain) {
                    break;
                }
                let Some(slot) = self.running.get(&victim) else {
                    continue;
                };
                if slot.draining || chosen.contains(&victim) {
                    continue;
                }
                if !slot.charge.overlaps(&shortfall) {
                    continue;
                }
                gain.add(&slot.charge);
                victims.push((victim, cause));
            }
            if !ResVec::ZERO.fits_with(&shortfall, &gain) {
                // Preempting everything it may preempt would not make room.
                continue;
            }
            pledged.add(&need);
            for (victim, cause) in victims {
                chosen.push(victim);
                if let Some(slot) = self.running.get_mut(&victim) {
                    slot.draining = true;
                    self.segs[seg].draining.add(&slot.charge);
                }
                pass.preempt.push(Preemption {
                    victim,
                    for_task: *id,
                    cause,
                });
            }
        }
    }

    /// Why a queued task waits, and where it stands. `None` when it is not queued here.
    pub fn explain(&self, id: TaskId, now: DateTime<Utc>) -> Option<QueueInfo> {
        let task = self.queued.get(&id)?;
        let env = &self.envs[task.env as usize];
        let seg = env.segment;
        let models = &self.policy.models;
        let (reason, message) = if let Some(h) = task.hold.as_ref().filter(|h| h.until > now) {
            (
                WaitReason::Budget,
                format!("{} (asked again at {})", h.reason, h.until.to_rfc3339()),
            )
        } else {
            match self.try_place(task, true) {
                Try::Quota => {
                    let acct = self.accts.get(&(task.tenant, task.env));
                    let detail = match (acct, self.charges(task).next()) {
                        (Some(a), Some(c)) => a.used.excess(&c, &a.ceiling, models),
                        _ => String::new(),
                    };
                    (
                        WaitReason::Quota,
                        format!(
                            "tenant {:?} is at its quota in {:?}: {detail}",
                            self.tenants[task.tenant as usize].name.as_str(),
                            env.name.as_str()
                        ),
                    )
                }
                Try::Admit { .. } if task.scavenger && !self.segs[seg].blocked.is_empty() => (
                    WaitReason::IdleCapacity,
                    format!(
                        "scavenger work waits while {} other task(s) wait for capacity in segment {:?}",
                        self.segs[seg].blocked.len(),
                        self.policy.segments[seg].name
                    ),
                ),
                Try::Admit { .. } | Try::NeedsBorrow { .. } => (
                    WaitReason::Priority,
                    "it fits; waiting for the next admission pass behind the tasks ahead of it"
                        .to_owned(),
                ),
                Try::Capacity => {
                    let c = self.charges(task).next().unwrap_or(task.base);
                    let detail =
                        self.segs[seg]
                            .used
                            .excess(&c, &self.policy.segments[seg].capacity, models);
                    if task.scavenger {
                        (
                            WaitReason::IdleCapacity,
                            format!(
                                "scavenger work waits for idle capacity in segment {:?}: {detail}",
                                self.policy.segments[seg].name
                            ),
                        )
                    } else if !self.segs[seg].draining.is_zero()
                        && self.segs[seg].blocked.contains(&id)
                    {
                        (
                            WaitReason::Preempting,
                            format!(
                                "room is being freed by preempting scavenger or borrowed work (grace {:?})",
                                self.policy.grace()
                            ),
                        )
                    } else {
                        (
                            WaitReason::Capacity,
                            format!(
                                "segment {:?} is full: {detail}",
                                self.policy.segments[seg].name
                            ),
                        )
                    }
                }
            }
        };
        let ahead = self.ahead(id, task, seg);
        Some(QueueInfo {
            reason,
            message,
            position: ahead + 1,
            ahead,
            segment: self.policy.segments[seg].name.clone(),
            running_in_segment: self.segs[seg].running,
        })
    }

    /// Queued tasks before `id` in its segment: higher priorities, then earlier ids at
    /// its priority; scavengers come after all other work.
    fn ahead(&self, id: TaskId, task: &QTask, seg: usize) -> u64 {
        let count = |levels: &BTreeMap<Reverse<i32>, Level>, all: bool| -> u64 {
            let mut n = 0u64;
            for (prio, level) in levels {
                if !all && prio.0 < task.priority {
                    break;
                }
                for set in level.tenants.values() {
                    if all || prio.0 > task.priority {
                        n += set.len() as u64;
                    } else {
                        n += set.range(..id).count() as u64;
                    }
                }
            }
            n
        };
        let s = &self.segs[seg];
        if task.scavenger {
            count(&s.real, true) + count(&s.scav, false)
        } else {
            count(&s.real, false)
        }
    }

    /// Every tenant's standing per environment.
    pub fn usage(&self) -> Vec<TenantUsage> {
        let mut queued: HashMap<(u32, u32), u64> = HashMap::new();
        for t in self.queued.values() {
            *queued.entry((t.tenant, t.env)).or_default() += 1;
        }
        let mut scav: HashMap<(u32, u32), u64> = HashMap::new();
        for s in self.running.values().filter(|s| s.task.scavenger) {
            *scav.entry((s.task.tenant, s.task.env)).or_default() += 1;
        }
        let mut out: Vec<TenantUsage> = self
            .accts
            .iter()
            .map(|((t, e), a)| {
                let seg = self.envs[*e as usize].segment;
                TenantUsage {
                    tenant: self.tenants[*t as usize].name.clone(),
                    environment: self.envs[*e as usize].name.clone(),
                    used: a.used.to_resources(),
                    running: a.running,
                    scavenger_running: scav.get(&(*t, *e)).copied().unwrap_or(0),
                    queued: queued.get(&(*t, *e)).copied().unwrap_or(0),
                    borrowed_running: a.borrowed,
                    dominant_share: f64::from_bits(self.share(*t, seg, false)),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (a.tenant.as_str(), a.environment.as_str())
                .cmp(&(b.tenant.as_str(), b.environment.as_str()))
        });
        out
    }
}

fn model_mask(models: &[usize]) -> u8 {
    models.iter().fold(0u8, |mask, m| mask | (1u8 << m))
}

#[cfg(test)]
mod tests;
