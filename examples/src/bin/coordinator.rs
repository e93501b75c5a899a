//! A coordinator process for a platform that outgrew one machine.
//!
//! Run one per machine (or several on one machine, each with its own `--root`), all
//! pointing at the same history store: they claim queued tasks, run them with the local
//! executor, renew their leases, and take over the tasks of a coordinator that died.
//! Work submitted by API front ends (`Tasks::builder().submit_only()`) is shared among
//! them.
//!
//! ```text
//! cargo run --release -p ops-examples --bin coordinator -- \
//!     --history postgres://ops@db/ops --templates examples/local-platform/templates \
//!     --root /var/lib/ops/tasks --id worker-1
//! ```
//!
//! `--kube kube.toml` runs the tasks as pods on a Kubernetes cluster instead (the file is
//! a `KubeExecutorConfig`; see docs/kubernetes.md); `--root` must then be the task
//! volume's path on this machine.
//!
//! `--audit` also runs an audit function: every event, delivered through the outbox
//! subscription that all coordinators share, is recorded once (by event id) in the
//! table `ops_event_audit` of the same Postgres database, with a count of deliveries.
//! Stops gracefully on SIGTERM or Ctrl-C (queued tasks are handed back; running ones
//! are left to be re-attached).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ops::events::{Function, FunctionError, Trigger, function_fn};
use ops::tasks::kube::{KubeExecutor, KubeExecutorConfig};
use ops::tasks::template::Catalogue;
use ops::{Platform, PlatformConfig};

/// Runs tasks from a shared history store on this machine.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// History store URL: postgres://… or sqlite://….
    #[arg(long, env = "OPS_HISTORY_URL")]
    history: String,
    /// Event bus URL (nats://…); the history store's outbox when left out.
    #[arg(long, env = "OPS_EVENTS_URL")]
    events: Option<String>,
    /// Directory of task templates.
    #[arg(long)]
    templates: PathBuf,
    /// Where task directories live (one root per coordinator process).
    #[arg(long)]
    root: PathBuf,
    /// Coordinator id, unique among the store's coordinators (default: host:root).
    #[arg(long)]
    id: Option<String>,
    /// At most this many tasks at once (0: limited by capacity only).
    #[arg(long, default_value_t = 0)]
    max_running: usize,
    /// Lease lifetime without renewal, e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = ops::tasks::duration::parse_duration)]
    lease_ttl: Duration,
    /// Lease renewal and take-over interval.
    #[arg(long, default_value = "3s", value_parser = ops::tasks::duration::parse_duration)]
    heartbeat: Duration,
    /// How often unowned queued tasks are claimed.
    #[arg(long, default_value = "500ms", value_parser = ops::tasks::duration::parse_duration)]
    poll: Duration,
    /// Record every event once in `ops_event_audit` (Postgres only).
    #[arg(long)]
    audit: bool,
    /// Run tasks on Kubernetes, configured by this TOML file (a `KubeExecutorConfig`).
    #[arg(long)]
    kube: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    // What a builder sets by hand here, a config file could say as well.
    let mut config = PlatformConfig::default();
    config.history = args.history.clone();
    config.events = args.events.clone();
    config.tasks.root = args.root.clone();
    config.tasks.max_running = args.max_running;
    config.tasks.coordinator.id = args.id.clone();
    config.tasks.coordinator.lease_ttl = args.lease_ttl;
    config.tasks.coordinator.heartbeat = args.heartbeat;
    config.tasks.coordinator.poll = args.poll;
    // The audit function acknowledges within seconds; a crashed coordinator's
    // unacknowledged deliveries go to another one soon.
    config.dispatcher = ops::events::DispatcherConfig::default().ack_wait(Duration::from_secs(5));
    let mut builder = Platform::builder()
        .config(config)
        .catalogue(Catalogue::load_dir(&args.templates)?);
    // The Kubernetes executor is connected by hand (a `[kube]` section of a platform
    // file would do the same) so that its API server can be reported.
    if let Some(path) = &args.kube {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let kube: KubeExecutorConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let executor = KubeExecutor::connect(kube).await?;
        println!("running tasks on Kubernetes at {}", executor.server());
        builder = builder.executor(executor);
    }
    if args.audit {
        builder = builder.function(Trigger::on("*"), audit_function(&args.history).await?);
    }
    let platform = builder.start().await?;
    println!(
        "coordinator {} ready: history {}, events {}",
        platform.admin().coordinator_id().unwrap_or("?"),
        platform.history_url(),
        platform.events_url().unwrap_or("outbox")
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    platform.shutdown().await;
    Ok(())
}

/// The audit function: one row per event id, however often it is delivered.
async fn audit_function(url: &str) -> anyhow::Result<impl Function> {
    if !url.starts_with("postgres") {
        bail!("--audit needs a postgres:// history store");
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "connecting to {} for the audit table",
                ops::events::redact_url(url)
            )
        })?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS ops_event_audit (
             event_id   TEXT PRIMARY KEY,
             type       TEXT NOT NULL,
             subject    TEXT,
             deliveries INTEGER NOT NULL,
             first_seen TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .execute(&pool)
    .await
    // Two coordinators starting at once may race on CREATE TABLE; the table exists.
    .or_else(|e| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => Ok(Default::default()),
        _ => Err(e),
    })?;
    let audit = function_fn("audit", move |event| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO ops_event_audit (event_id, type, subject, deliveries) \
                 VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (event_id) DO UPDATE SET deliveries = ops_event_audit.deliveries + 1",
            )
            .bind(event.id.to_string())
            .bind(&event.ty)
            .bind(event.subject.as_deref())
            .execute(&pool)
            .await
            .map_err(|e| FunctionError::retryable(format!("audit insert: {e}")))?;
            Ok(())
        }
    });
    Ok(audit)
}
