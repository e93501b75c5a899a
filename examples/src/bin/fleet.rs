//! Fleets from a spec: see what is offered, plan (what would be created and deleted, at
//! what cost), apply with progress, refresh, sweep orphans, destroy.
//!
//! ```text
//! # Owned machines from an inventory, no account needed:
//! cargo run -p ops-examples --bin fleet -- offers --spec examples/fleet/fleet.toml
//! cargo run -p ops-examples --bin fleet -- plan   --spec examples/fleet/fleet.toml
//! cargo run -p ops-examples --bin fleet -- apply  --spec examples/fleet/fleet.toml
//! cargo run -p ops-examples --bin fleet -- status --spec examples/fleet/fleet.toml
//! cargo run -p ops-examples --bin fleet -- destroy --spec examples/fleet/fleet.toml
//!
//! # Clouds too, when their tokens are in the environment:
//! HCLOUD_TOKEN=… DIGITALOCEAN_TOKEN=… cargo run -p ops-examples --bin fleet -- plan --spec my-fleet.toml
//! ```
//!
//! Providers: the inventory (`--inventory`, default `machines.toml` beside the spec, when
//! it exists), this host with `--local`, Hetzner Cloud when `HCLOUD_TOKEN` is set and
//! DigitalOcean when `DIGITALOCEAN_TOKEN` is set. Records (and their events) go to
//! `--state` (default `sqlite://fleet-data/fleet.db` beside the spec).
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ops::provision::choice::{self, ResourceRequest};
use ops::provision::config::{CloudAccount, Fleets, ProvisionConfig};
use ops::provision::fleet::{ApplyReport, FleetSpec, OrphanPolicy, Progress};
use ops::provision::state::FleetStore;
use ops::provision::{HOURS_PER_MONTH, Offering};
use rust_decimal::Decimal;

/// Plans and applies a fleet of servers across clouds and owned machines.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The fleet spec (TOML: name, currency, pools).
    #[arg(long, global = true, default_value = "fleet.toml")]
    spec: PathBuf,
    /// An inventory of owned machines (default: `machines.toml` beside the spec, if any).
    #[arg(long, global = true)]
    inventory: Option<PathBuf>,
    /// Offer this host too.
    #[arg(long, global = true)]
    local: bool,
    /// Where records and their events are kept (`sqlite://PATH` or `postgres://…`);
    /// default `sqlite://fleet-data/fleet.db` beside the spec.
    #[arg(long, global = true)]
    state: Option<String>,
    /// What to do with servers labelled as the fleet's that no record knows.
    #[arg(long, global = true, value_enum, default_value = "adopt")]
    orphans: Orphans,
    /// Creates and deletes in flight at a time.
    #[arg(long, global = true, default_value_t = 16)]
    concurrency: usize,
    /// How long a created server may take to run, in seconds.
    #[arg(long, global = true, default_value_t = 600)]
    ready_timeout: u64,
    /// Hetzner's API address (tests point it at a mock); the token is `HCLOUD_TOKEN`.
    #[arg(long, global = true, env = "HCLOUD_ENDPOINT", hide_env_values = true)]
    hetzner_url: Option<String>,
    /// DigitalOcean's API address; the token is `DIGITALOCEAN_TOKEN`.
    #[arg(
        long,
        global = true,
        env = "DIGITALOCEAN_ENDPOINT",
        hide_env_values = true
    )]
    digitalocean_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Orphans {
    Adopt,
    Delete,
    Report,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// What the providers offer, cheapest first; with a request, ranked with the reason
    /// each alternative lost.
    Offers {
        /// CPU cores needed.
        #[arg(long)]
        cpu: Option<f64>,
        /// Memory needed, in GiB.
        #[arg(long)]
        memory_gib: Option<u64>,
        /// GPUs needed.
        #[arg(long)]
        gpus: Option<u32>,
        /// GPU model (a substring: `H100`, `4090`).
        #[arg(long)]
        gpu_model: Option<String>,
        /// Allowed region (repeat for several).
        #[arg(long)]
        region: Vec<String>,
        /// Spot capacity allowed.
        #[arg(long)]
        spot: bool,
        /// The most an hour may cost.
        #[arg(long)]
        max_hourly: Option<Decimal>,
    },
    /// What applying the spec would create and delete, and the cost before and after.
    Plan,
    /// Plans, then creates and deletes, showing progress.
    Apply,
    /// Reconciles the records with what the providers have.
    Refresh,
    /// Handles orphans by the `--orphans` policy.
    Sweep,
    /// The fleet's records.
    Status,
    /// Deletes every server of the fleet.
    Destroy,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let spec = FleetSpec::load(&args.spec)?;
    let base = args
        .spec
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let fleets = fleets(&args, &base).await?;
    if fleets.providers().is_empty() {
        anyhow::bail!(
            "no providers: give --inventory (or put machines.toml beside the spec), --local, \
             or set HCLOUD_TOKEN / DIGITALOCEAN_TOKEN"
        );
    }
    let fleet = fleets.fleet(&spec.name)?;
    match args.command {
        Command::Offers {
            cpu,
            memory_gib,
            gpus,
            gpu_model,
            region,
            spot,
            max_hourly,
        } => {
            let mut offerings: Vec<Offering> = Vec::new();
            for p in fleets.providers() {
                offerings.extend(
                    p.offerings()
                        .await
                        .with_context(|| format!("offerings of {}", p.name()))?,
                );
            }
            let mut request = ResourceRequest::new()
                .currency(spec.currency.clone())
                .spot(spot);
            for (code, rate) in &spec.rates {
                request = request.rate(code.clone(), *rate);
            }
            if let Some(cpu) = cpu {
                request = request.cpu_millis((cpu * 1000.0).round() as u64);
            }
            if let Some(gib) = memory_gib {
                request = request.memory_bytes(gib << 30);
            }
            if gpus.is_some() || gpu_model.is_some() {
                request = request.gpus(gpus.unwrap_or(1), gpu_model.as_deref());
            }
            for r in region {
                request = request.region(r);
            }
            if let Some(max) = max_hourly {
                request = request.max_hourly(max);
            }
            let ranking = choice::rank(&offerings, &request)?;
            print!("{}", ranking.explain());
        }
        Command::Plan => {
            let plan = fleet.plan().await?;
            print!("{}", plan.table());
            if plan.is_empty() {
                println!("Nothing to do.");
            }
        }
        Command::Apply => {
            let plan = fleet.plan().await?;
            print!("{}", plan.table());
            if plan.is_empty() && plan.unrecorded.is_empty() && plan.gone.is_empty() {
                println!("Nothing to do.");
                return Ok(());
            }
            let steps = (plan.create.len() * 2 + plan.delete.len()) as u64;
            let bar = ProgressBar::new(steps.max(1));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            let shown = bar.clone();
            let fleet = fleet.on_progress(move |step| show(&shown, step));
            let report = fleet.apply(&plan).await;
            bar.finish_and_clear();
            summary(&report);
            if !report.is_complete() {
                anyhow::bail!(
                    "{} slot(s) or server(s) failed; what exists is recorded — run apply again to resume",
                    report.failed.len()
                );
            }
        }
        Command::Refresh => {
            let report = fleet.refresh().await?;
            println!(
                "{} record(s) removed (gone at the provider), {} now ready, {} orphan(s)",
                report.gone.len(),
                report.ready.len(),
                report.orphans.len()
            );
            for s in &report.orphans {
                println!("  orphan: {} ({}/{})", s.name, s.provider, s.id);
            }
        }
        Command::Sweep => {
            let report = fleet.sweep().await?;
            println!(
                "orphans: {} adopted, {} deleted, {} reported, {} failed",
                report.adopted.len(),
                report.deleted.len(),
                report.reported.len(),
                report.failed.len()
            );
            for (what, e) in &report.failed {
                println!("  failed: {what}: {e}");
            }
        }
        Command::Status => {
            let nodes = fleet.nodes().await?;
            println!(
                "{:<28} {:<10} {:<36} {:<10} {:>10}",
                "server", "state", "offering", "address", "per hour"
            );
            let mut total = Decimal::ZERO;
            for n in &nodes {
                total += n.hourly;
                println!(
                    "{:<28} {:<10} {:<36} {:<10} {:>10} {}",
                    n.server.name,
                    n.state.as_str(),
                    format!(
                        "{}/{}@{}",
                        n.server.provider, n.server.instance_type, n.server.region
                    ),
                    n.server
                        .address
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.hourly.round_dp(4).normalize(),
                    n.currency
                );
            }
            println!(
                "{} server(s), {} {}/h ({} {}/month)",
                nodes.len(),
                total.round_dp(4).normalize(),
                spec.currency,
                (total * Decimal::from(HOURS_PER_MONTH))
                    .round_dp(2)
                    .normalize(),
                spec.currency
            );
        }
        Command::Destroy => {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            let shown = bar.clone();
            let fleet = fleet.on_progress(move |step| show(&shown, step));
            let report = fleet.destroy().await?;
            bar.finish_and_clear();
            summary(&report);
            if !report.is_complete() {
                anyhow::bail!(
                    "{} server(s) could not be deleted and keep their records — run destroy again",
                    report.failed.len()
                );
            }
        }
    }
    Ok(())
}

async fn fleets(args: &Args, base: &Path) -> anyhow::Result<Fleets> {
    let mut config = ProvisionConfig::default();
    config.inventory = args.inventory.clone().or_else(|| {
        let beside = base.join("machines.toml");
        beside.is_file().then_some(beside)
    });
    config.local = args.local;
    config.orphans = match args.orphans {
        Orphans::Adopt => OrphanPolicy::Adopt,
        Orphans::Delete => OrphanPolicy::Delete,
        Orphans::Report => OrphanPolicy::Report,
    };
    config.concurrency = args.concurrency;
    config.ready_timeout = Duration::from_secs(args.ready_timeout);
    if std::env::var_os("HCLOUD_TOKEN").is_some() {
        let mut account = CloudAccount::from_env("HCLOUD_TOKEN");
        account.base_url.clone_from(&args.hetzner_url);
        config.hetzner = Some(account);
    }
    if std::env::var_os("DIGITALOCEAN_TOKEN").is_some() {
        let mut account = CloudAccount::from_env("DIGITALOCEAN_TOKEN");
        account.base_url.clone_from(&args.digitalocean_url);
        config.digitalocean = Some(account);
    }
    let state = match &args.state {
        Some(url) => url.clone(),
        None => {
            let dir = base.join("fleet-data");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            format!("sqlite://{}", dir.join("fleet.db").display())
        }
    };
    config.fleets = vec![args.spec.clone()];
    let store = open_store(&state).await?;
    Ok(Fleets::from_config(&config, store)?)
}

async fn open_store(url: &str) -> anyhow::Result<Arc<dyn FleetStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            ops::provision::state::PostgresFleetStore::connect(url).await?,
        ))
    } else {
        Ok(Arc::new(
            ops::provision::state::SqliteFleetStore::open(url).await?,
        ))
    }
}

fn show(bar: &ProgressBar, step: Progress) {
    match step {
        Progress::Created { slot, server } => {
            bar.inc(1);
            bar.set_message(format!(
                "created {slot} ({} {})",
                server.provider, server.id
            ));
        }
        Progress::Ready { slot, .. } => {
            bar.inc(1);
            bar.set_message(format!("{slot} ready"));
        }
        Progress::Deleted { server } => {
            bar.inc(1);
            bar.set_message(format!("deleted {}", server.name));
        }
        Progress::Adopted { server } => {
            bar.println(format!(
                "adopted orphan {} ({}/{})",
                server.name, server.provider, server.id
            ));
        }
        Progress::Failover(f) => {
            bar.println(format!(
                "failover: {} → {}: {}",
                f.from,
                f.to.as_deref().unwrap_or("nothing left"),
                f.reason
            ));
        }
        Progress::Failed { what, error } => {
            bar.inc(1);
            bar.println(format!("failed: {what}: {error}"));
        }
        _ => {}
    }
}

fn summary(report: &ApplyReport) {
    println!(
        "Done: {} created ({} ready), {} deleted, {} adopted, {} stale record(s) removed, {} failed.",
        report.created.len(),
        report.ready.len(),
        report.deleted.len(),
        report.adopted.len(),
        report.gone.len(),
        report.failed.len()
    );
    for (what, e) in &report.failed {
        println!("  failed: {what}: {e} [{}]", e.kind().as_str());
    }
}
