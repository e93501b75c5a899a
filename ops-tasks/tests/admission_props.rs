//! Property tests of admission, run through the deterministic simulator with its audit
//! on: never over capacity, never over a nominal quota (except borrowed work),
//! scavenger work never blocks other work past the grace period, every preempted task
//! is requeued and ends, and fair shares converge under contention.

use std::collections::BTreeMap;
use std::time::Duration;

use ops_core::{Environment, Resources, Tenant};
use ops_tasks::NodeGroup;
use ops_tasks::admission::{
    AdmissionConfig, EnvironmentConfig, Quantity, QuotaSpec, Reclaim, TenantConfig,
};
use ops_tasks::sim::{Scenario, SimReport, SimTask, Simulation};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

#[derive(Clone, Debug)]
struct TaskCase {
    tenant: usize,
    half_cores: u64,
    gpus: u32,
    priority: i32,
    scavenger: bool,
    duration_s: u64,
    arrival_s: u64,
    second_env: bool,
}

#[derive(Clone, Debug)]
struct Case {
    /// (count, cores, gpus) per node group.
    groups: Vec<(u32, u64, u32)>,
    /// (weight, cpu quota in cores, may borrow) per tenant.
    tenants: Vec<(u32, Option<u64>, bool)>,
    tasks: Vec<TaskCase>,
    grace_s: u64,
    lookahead: usize,
    /// The first node group is the pool of environment `prod`, with reclaim by
    /// preemption; `dev` uses the rest and may borrow from `prod`.
    pools: bool,
}

fn task_case() -> impl Strategy<Value = TaskCase> {
    (
        0usize..5,
        1u64..=8,
        0u32..=2,
        0i32..=2,
        prop::bool::weighted(0.3),
        10u64..=600,
        0u64..=600,
        any::<bool>(),
    )
        .prop_map(
            |(tenant, half_cores, gpus, priority, scavenger, duration_s, arrival_s, second_env)| {
                TaskCase {
                    tenant,
                    half_cores,
                    gpus,
                    priority,
                    scavenger,
                    duration_s,
                    arrival_s,
                    second_env,
                }
            },
        )
}

/// Random small cases; with `pools`, some have a `prod` node pool and a `dev`
/// environment borrowing from it.
fn case(pools: bool) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(
            (1u32..=4, 1u64..=8, prop_oneof![Just(0u32), Just(2u32)]),
            1..=3,
        ),
        prop::collection::vec(
            (1u32..=3, prop::option::of(1u64..=16), any::<bool>()),
            2..=5,
        ),
        prop::collection::vec(task_case(), 1..40),
        1u64..=60,
        prop_oneof![Just(1usize), Just(16usize)],
        any::<bool>(),
    )
        .prop_map(
            move |(groups, tenants, tasks, grace_s, lookahead, with_pools)| Case {
                pools: pools && with_pools && groups.len() >= 2,
                groups,
                tenants,
                tasks,
                grace_s,
                lookahead,
            },
        )
}

fn cores(n: u64) -> Quantity {
    Quantity::Int(n)
}

fn scenario(c: &Case) -> Scenario {
    let mut nodes: Vec<NodeGroup> = c
        .groups
        .iter()
        .map(|(count, cores, gpus)| {
            NodeGroup::new(
                *count,
                Resources::new(cores * 1000, 16 * GIB).with_gpus(*gpus, None),
            )
        })
        .collect();
    let (prod, dev) = ("prod", "dev");
    let mut config = AdmissionConfig::default();
    config.scavenger.grace = Duration::from_secs(c.grace_s);
    config.lookahead = c.lookahead;
    if c.pools {
        nodes[0] = nodes[0].clone().pool(Environment::parse(prod).unwrap());
        let mut p = EnvironmentConfig::default();
        p.reclaim = Reclaim::Preempt;
        let mut d = EnvironmentConfig::default();
        d.borrow_from = vec![prod.to_owned()];
        config.environments.insert(prod.to_owned(), p);
        config.environments.insert(dev.to_owned(), d);
    }
    let envs: Vec<&str> = if c.pools {
        vec![prod, dev]
    } else {
        vec!["default"]
    };
    for (i, (weight, quota, borrowing)) in c.tenants.iter().enumerate() {
        let mut t = TenantConfig::default();
        t.weight = f64::from(*weight);
        t.borrowing = *borrowing;
        if let Some(q) = quota {
            for env in &envs {
                let mut spec = QuotaSpec::default();
                spec.cpu = Some(cores(*q));
                t.quota.insert((*env).to_owned(), spec);
            }
        }
        config.tenants.insert(format!("t{i}"), t);
    }
    // Requests that fit some node (the rest would only be refused at submission).
    let max_cores = c.groups.iter().map(|g| g.1).min().unwrap_or(1);
    let max_gpus = c.groups.iter().map(|g| g.2).max().unwrap_or(0);
    let tasks = c.tasks.iter().map(|t| {
        let cpu = (t.half_cores * 500).min(max_cores * 1000);
        let gpus = t.gpus.min(max_gpus);
        let env = if c.pools && t.second_env {
            dev
        } else {
            envs[0]
        };
        SimTask::new(
            Tenant::parse(format!("t{}", t.tenant % c.tenants.len())).unwrap(),
            Resources::new(cpu, GIB).with_gpus(gpus, None),
            Duration::from_secs(t.duration_s),
        )
        .arrival(Duration::from_secs(t.arrival_s))
        .priority(t.priority)
        .scavenger(t.scavenger)
        .environment(Environment::parse(env).unwrap())
    });
    Scenario::new(nodes)
        .admission(config)
        .tasks(tasks)
        .pass_interval(Duration::from_secs(1))
        .audit(true)
}

fn run(s: Scenario) -> SimReport {
    Simulation::new(s).expect("valid scenario").run()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Capacity, quotas, scavenger blocking, and every task ending (preempted ones
    /// requeued), on random small clusters and workloads with one shared segment.
    #[test]
    fn admission_invariants_hold(c in case(false)) {
        check_invariants(&c)?;
    }

    /// The same with node pools and borrowing between environments.
    #[test]

    fn admission_invariants_hold_with_pools(c in case(true)) {
        check_invariants(&c)?;
    }


    /// Tenants of equal weight with equal saturating demand of identical tasks hold
    /// the same number of tasks, within one, after every pass while all of them wait.
    #[test]
    fn equal_weights_share_equally(
        tenants in 2usize..=4,
        nodes in 1u32..=4,
        cores in 2u64..=8,
        durations in prop::collection::vec(10u64..=120, 64),
    ) {
        let slots = u64::from(nodes) * cores;
        let per_tenant = slots as usize * 3;
        let report = run(fair_scenario(&vec![1; tenants], nodes, cores, per_tenant, &durations));
        prop_assert!(report.violations.is_empty(), "{:?}", report.violations);
        let mut checked = 0;
        for s in contended(&report) {
            let counts: Vec<u32> = s.tenants.iter().map(|t| t.running).collect();
            let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
            prop_assert!(spread <= 1, "at {:?}: {counts:?}", s.at);
            checked += 1;
        }
        prop_assert!(checked > 0);
    }

    /// Weights 2:1: the heavier tenant holds twice the tasks, within one task.
    #[test]
    fn weights_set_the_ratio(
        nodes in 1u32..=4,
        cores in 3u64..=8,
        durations in prop::collection::vec(10u64..=120, 64),
    ) {
        let slots = u64::from(nodes) * cores;
        let report = run(fair_scenario(&[2, 1], nodes, cores, slots as usize * 4, &durations));
        prop_assert!(report.violations.is_empty(), "{:?}", report.violations);
        let mut checked = 0;
        for s in contended(&report) {
            let (a, b) = (i64::from(s.tenants[0].running), i64::from(s.tenants[1].running));
            // Weighted shares a/2 and b differ by at most one task: |a - 2b| <= 2.
            prop_assert!((a - 2 * b).abs() <= 2, "at {:?}: {a} vs {b}", s.at);
            checked += 1;
        }
        prop_assert!(checked > 0);
    }
}

fn check_invariants(c: &Case) -> Result<(), TestCaseError> {
    let report = run(scenario(c));
    prop_assert!(
        report.violations.is_empty(),
        "{report}\n{:#?}",
        report.violations
    );
    prop_assert_eq!(report.unfinished, 0, "{}", report);
    prop_assert_eq!(report.unplaceable, 0, "{}", report);
    prop_assert_eq!(
        report.finished + report.rejected,
        report.tasks,
        "{}",
        report
    );
    // A preempted task is requeued unless it ended by itself within its grace.
    prop_assert!(report.requeues <= report.preemptions, "{}", report);
    // Deterministic: the same scenario gives the same decisions.
    let again = run(scenario(c));
    prop_assert_eq!(again.makespan, report.makespan);
    prop_assert_eq!(again.preemptions, report.preemptions);
    prop_assert_eq!(again.wait, report.wait);
    Ok(())
}

/// Tenants `t0…` with `weights`, each submitting `per_tenant` one-core tasks at 0.
fn fair_scenario(
    weights: &[u32],
    nodes: u32,
    cores: u64,
    per_tenant: usize,
    durations: &[u64],
) -> Scenario {
    let mut config = AdmissionConfig::default();
    let mut tasks = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let mut t = TenantConfig::default();
        t.weight = f64::from(*w);
        config.tenants.insert(format!("t{i}"), t);
    }
    // Interleave submissions so that no tenant is first in FIFO order by much.
    for k in 0..per_tenant {
        for i in 0..weights.len() {
            let d = durations[(k * weights.len() + i) % durations.len()];
            tasks.push(SimTask::new(
                Tenant::parse(format!("t{i}")).unwrap(),
                Resources::new(1000, GIB),
                Duration::from_secs(d),
            ));
        }
    }
    Scenario::new(vec![NodeGroup::new(
        nodes,
        Resources::new(cores * 1000, 64 * GIB),
    )])
    .admission(config)
    .tasks(tasks)
    .audit(true)
    .samples(true)
}

/// Samples in which every tenant still has queued work.
fn contended(report: &SimReport) -> impl Iterator<Item = &ops_tasks::sim::UsageSample> {
    report
        .samples
        .iter()
        .filter(|s| s.tenants.iter().all(|t| t.queued > 0))
}

#[test]
fn borrowed_work_is_reclaimed_and_ends() {
    // prod owns one node; dev borrows it while prod is idle, and gives it back by
    // preemption when prod work arrives.
    let mut config = AdmissionConfig::default();
    config.scavenger.grace = Duration::from_secs(10);
    let mut prod = EnvironmentConfig::default();
    prod.reclaim = Reclaim::Preempt;
    let mut dev = EnvironmentConfig::default();
    dev.borrow_from = vec!["prod".to_owned()];
    config.environments = BTreeMap::from([("prod".to_owned(), prod), ("dev".to_owned(), dev)]);
    let nodes = vec![
        NodeGroup::new(1, Resources::new(4000, 16 * GIB))
            .pool(ops_core::Environment::parse("prod").unwrap()),
        NodeGroup::new(1, Resources::new(4000, 16 * GIB)),
    ];
    let dev_tasks = (0..2).map(|_| {
        SimTask::new(
            Tenant::parse("d").unwrap(),
            Resources::new(4000, GIB),
            Duration::from_secs(3600),
        )
        .environment(Environment::parse("dev").unwrap())
    });
    let prod_task = SimTask::new(
        Tenant::parse("p").unwrap(),
        Resources::new(4000, GIB),
        Duration::from_secs(60),
    )
    .environment(Environment::parse("prod").unwrap())
    .arrival(Duration::from_secs(120));
    let s = Scenario::new(nodes)
        .admission(config)
        .tasks(dev_tasks)
        .tasks([prod_task])
        .audit(true);
    let report = run(s);
    assert!(report.violations.is_empty(), "{report}");
    assert_eq!(report.finished, 3, "{report}");
    assert_eq!(report.preemptions, 1, "{report}");
    assert_eq!(report.requeues, 1, "{report}");
    assert!(
        report.tenants["p"].wait.max <= Duration::from_secs(12),
        "{report}"
    );
}

fn pooled(groups: Vec<(u32, u64, u32)>, task: TaskCase) -> Case {
    Case {
        groups,
        tenants: vec![(1, None, false), (1, None, false)],
        tasks: vec![task],
        grace_s: 1,
        lookahead: 16,
        pools: true,
    }
}

/// `dev` (shared nodes of 2 cores) borrows from `prod` (one node of 3 cores): a
/// 2.5-core `dev` task fits only the `prod` node, so it must be admitted there (as
/// borrowed), not to the shared segment whose aggregate (4 cores) hides that no node
/// holds it.
#[test]
fn borrowed_segment_must_fit_a_node() {
    let c = pooled(
        vec![(1, 3, 0), (2, 2, 0)],
        TaskCase {
            tenant: 0,
            half_cores: 5,
            gpus: 0,
            priority: 0,
            scavenger: false,
            duration_s: 10,
            arrival_s: 0,
            second_env: true,
        },
    );
    let report = run(scenario(&c));
    assert!(report.violations.is_empty(), "{report}");
    assert_eq!(report.finished, 1, "{report}");
}

/// A `dev` scavenger asking for a GPU: only `prod` (which `dev` may borrow from) has
/// GPUs. Admission accepts it at submission, so it must run when `prod` is idle (or be
/// refused at submission).
#[test]

fn borrowed_segment_scavenger_runs_or_is_refused() {
    let c = pooled(
        vec![(1, 1, 2), (1, 1, 0)],
        TaskCase {
            tenant: 0,
            half_cores: 1,
            gpus: 1,
            priority: 0,
            scavenger: true,
            duration_s: 10,
            arrival_s: 0,
            second_env: true,
        },
    );
    let report = run(scenario(&c));
    assert!(report.violations.is_empty(), "{report}");
    assert_eq!(report.finished + report.rejected, 1, "{report}");
}
