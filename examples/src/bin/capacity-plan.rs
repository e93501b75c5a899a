//! Capacity planning with the admission simulator: "what if we add 50 GPU nodes?"
//!
//! Runs a scenario (nodes, quotas, a workload) through the same admission algorithm the
//! coordinators use, in virtual time, once on the cluster as it is and once with more
//! nodes, and compares waits, makespan and utilisation.
//!
//! ```text
//! # 1,000 nodes of 8 GPUs, 10 tenants, 100,000 tasks over a day; what do 50 more buy?
//! cargo run --release -p ops-examples --bin capacity-plan -- \
//!     --nodes 1000 --gpus-per-node 8 --tenants 10 --tasks 100000 --add-nodes 50
//!
//! # A scenario file (an `ops::tasks::sim::Scenario` in TOML: nodes, admission, workload)
//! cargo run --release -p ops-examples --bin capacity-plan -- --scenario plan.toml --add-nodes 20
//! ```
//!
//! The added nodes copy the first node group with GPUs (or the first group). `--json`
//! prints both reports as JSON instead of text.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ops::core::Resources;
use ops::tasks::NodeGroup;
use ops::tasks::duration::parse_duration;
use ops::tasks::sim::{
    Scenario, SimReport, Simulation, Workload, WorkloadTemplate, WorkloadTenant, human_duration,
};

/// Compares admission on a cluster as it is and with more nodes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A scenario in TOML (nodes, admission, tasks, workload); the flags below that
    /// describe the cluster and workload are then ignored.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// CPU cores per node.
    #[arg(long, default_value_t = 64)]
    cpus_per_node: u64,
    /// Memory per node, in GiB.
    #[arg(long, default_value_t = 512)]
    memory_per_node: u64,
    /// GPUs per node (0: CPU nodes).
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// GPU model of the nodes.
    #[arg(long, default_value = "H100")]
    gpu_model: String,
    /// Tenants submitting (equal weights, no quotas).
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Tasks in the generated workload.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Virtual time over which the tasks arrive.
    #[arg(long, default_value = "24h", value_parser = duration)]
    span: Duration,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes added in the what-if run.
    #[arg(long, default_value_t = 50)]
    add_nodes: u32,
    /// Virtual time between admission passes.
    #[arg(long, value_parser = duration)]
    pass_interval: Option<Duration>,
    /// Check the admission invariants after every pass (slow on big scenarios).
    #[arg(long)]
    audit: bool,
    /// Print both reports as JSON.
    #[arg(long)]
    json: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// The scenario the flags describe: one node group, and a mix of CPU jobs, GPU
/// training and GPU scavenger (backfill) work from equal tenants.
fn from_flags(args: &Args) -> Scenario {
    let gib = 1u64 << 30;
    let model = (args.gpus_per_node > 0).then(|| args.gpu_model.clone());
    let node = Resources::new(args.cpus_per_node * 1000, args.memory_per_node * gib)
        .with_gpus(args.gpus_per_node, model);
    let mut workload = Workload::new(args.seed, args.tasks, args.span);
    for t in 0..args.tenants.max(1) {
        workload = workload.tenant(WorkloadTenant::new(format!("tenant-{t:02}")));
    }
    workload = workload.template(
        WorkloadTemplate::new(
            "etl",
            Resources::new(4000, 16 * gib),
            Duration::from_secs(20 * 60),
        )
        .weight(3.0)
        .jitter(0.8),
    );
    if args.gpus_per_node > 0 {
        workload = workload
            .template(
                WorkloadTemplate::new(
                    "train",
                    Resources::new(16_000, 128 * gib).with_gpus(args.gpus_per_node.min(4), None),
                    Duration::from_secs(3 * 3600),
                )
                .jitter(0.9),
            )
            .template(
                WorkloadTemplate::new(
                    "finetune",
                    Resources::new(8000, 64 * gib).with_gpus(1, None),
                    Duration::from_secs(45 * 60),
                )
                .weight(2.0)
                .jitter(0.5),
            )
            .template(
                WorkloadTemplate::new(
                    "backfill",
                    Resources::new(4000, 32 * gib).with_gpus(1, None),
                    Duration::from_secs(2 * 3600),
                )
                .weight(0.5)
                .scavenger(true),
            );
    }
    Scenario::new(vec![NodeGroup::new(args.nodes, node)]).workload(workload)
}

/// The scenario with `n` more nodes shaped like its first GPU group (or first group).
fn with_more_nodes(base: &Scenario, n: u32) -> (Scenario, String) {
    let mut s = base.clone();
    let template = base
        .nodes
        .iter()
        .find(|g| g.resources.gpus.count > 0)
        .or(base.nodes.first())
        .cloned();
    let Some(mut group) = template else {
        return (s, "nothing".to_owned());
    };
    group.count = n;
    let what = describe(n, &group.resources);
    s.nodes.push(group);
    (s, what)
}

fn describe(n: u32, r: &Resources) -> String {
    let mut shape = format!(
        "{} cores, {} GiB",
        r.cpu_millis as f64 / 1000.0,
        r.memory_bytes >> 30
    );
    if r.gpus.count > 0 {
        shape.push_str(&format!(
            ", {} × {}",
            r.gpus.count,
            r.gpus.model.as_deref().unwrap_or("GPU")
        ));
    }
    format!("{n} nodes ({shape})")
}

fn run(name: &str, scenario: Scenario) -> anyhow::Result<SimReport> {
    let sim = Simulation::new(scenario).with_context(|| format!("{name} scenario"))?;
    tracing::info!(
        run = name,
        tasks = sim.scenario().all_tasks().len(),
        "simulating"
    );
    let report = sim.run();
    tracing::info!(run = name, wall = %human_duration(report.wall_time), "done");
    Ok(report)
}

fn change(what: &str, before: Duration, after: Duration) -> String {
    let verb = if after < before {
        "cuts"
    } else if after > before {
        "raises"
    } else {
        "leaves"
    };
    format!(
        "{verb} {what} from {} to {}",
        human_duration(before),
        human_duration(after)
    )
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut base = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<Scenario>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => from_flags(&args),
    };
    if let Some(p) = args.pass_interval {
        base.pass_interval = p;
    }
    base.audit |= args.audit;
    let (what_if, added) = with_more_nodes(&base, args.add_nodes);

    // Both runs at once: each is single-threaded.
    let (now, then) = std::thread::scope(|s| {
        let a = s.spawn(|| run("current", base.clone()));
        let b = s.spawn(|| run("what-if", what_if));
        (a.join(), b.join())
    });
    let now = now.map_err(|_| anyhow::anyhow!("the current run panicked"))??;
    let then = then.map_err(|_| anyhow::anyhow!("the what-if run panicked"))??;

    if args.json {
        let out = serde_json::json!({ "current": now, "what_if": then, "added": added });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("== current cluster\n{now}");
    println!("== with {added} more\n{then}");
    println!(
        "Adding {added} {}, {} and {}; GPU utilisation {:.1}% -> {:.1}%, CPU {:.1}% -> {:.1}%.",
        change("p95 wait", now.wait.p95, then.wait.p95),
        change("mean wait", now.wait.mean, then.wait.mean),
        change("makespan", now.makespan, then.makespan),
        now.utilisation.gpus * 100.0,
        then.utilisation.gpus * 100.0,
        now.utilisation.cpu * 100.0,
        then.utilisation.cpu * 100.0,
    );
    Ok(())
}
