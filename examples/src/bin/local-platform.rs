//! The main job: a small compute platform on this machine, with embedded defaults.
//!
//! Loads `examples/local-platform/config.toml` (an `ops::PlatformConfig`) and starts the
//! platform it describes through the `ops` facade — SQLite history and event outbox,
//! the local executor with cgroup limits, task inputs and outputs staged through
//! ops-storage with its catalog in the same database — with two functions on the event
//! stream; submits a demo workload for three tenants, shows progress and where outputs
//! are stored, and prints a summary. Billing is on (`[billing]`, `prices.toml`): each
//! tenant gets prepaid credit, except `thrifty`, whose task waits for credit until it
//! tops up; the run ends with each tenant's invoice and credit, and the seller's view
//! from `costs.toml`. Exits non-zero if any task ended differently from what the demo
//! expects, so CI can run it as a smoke test.
//!
//! What it still does by hand is what a builder would: make the executor (to show what
//! it found on this machine), write the functions, submit the work and print it.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Datelike, Utc};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ops::billing::{
    Budgets, CostBook, CostReport, Decimal, HoldRequest, Metering, Money, UsageRecord, UsageStore,
    invoice,
};
use ops::core::{Reason, TaskEventData, TaskId, TaskStatus, Tenant, Usage, event_types};
use ops::events::{FunctionError, Trigger, function_fn};
use ops::storage::Storage;
use ops::tasks::local::LocalExecutor;
use ops::tasks::{SubmitRequest, TaskRecord, Tasks};
use ops::{Platform, PlatformConfig};

/// Runs a demo platform on this machine.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The platform's configuration file.
    #[arg(long, default_value_os_t = default_config())]
    config: PathBuf,
    /// Delete the state directory (database and task directories) first.
    #[arg(long)]
    fresh: bool,
    /// Render tasks to submit per tenant.
    #[arg(long, default_value_t = 3)]
    renders: u32,
    /// History store URL, overriding the config (e.g. postgres://ops@db/ops).
    #[arg(long, env = "OPS_HISTORY_URL")]
    history: Option<String>,
    /// Event bus URL, overriding the config (e.g. nats://127.0.0.1:4222).
    #[arg(long, env = "OPS_EVENTS_URL")]
    events: Option<String>,
    /// Serve /metrics (Prometheus and OpenMetrics), /healthz and /readyz on this
    /// address while the platform runs (e.g. 127.0.0.1:9464; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// Keep serving this many seconds after the summary (for a scrape or a look).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    linger: u64,
    /// Write the alert rules, the PrometheusRule, the Grafana dashboards and the
    /// cluster's monitoring stack made from `[monitor]` into this directory, then exit.
    #[arg(long, value_name = "DIR")]
    write_monitoring: Option<PathBuf>,
}

/// `examples/local-platform/config.toml` of the checkout the command runs in (the
/// README runs it from the repository's root), else of the checkout it was built in.
/// The current directory comes first: a binary built in one clone and run from another
/// (a shared target directory) must not read the first clone's files.
fn default_config() -> PathBuf {
    const IN_CHECKOUT: &str = "examples/local-platform/config.toml";
    if Path::new(IN_CHECKOUT).is_file() {
        return PathBuf::from(IN_CHECKOUT);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("local-platform/config.toml")
}

/// The directory of a `file://` storage URL.
fn storage_dir(url: &str) -> Option<PathBuf> {
    url.strip_prefix("file://").map(PathBuf::from)
}

/// Waits until a task runs.
async fn wait_started(tasks: &Tasks, tenant: &Tenant, id: TaskId) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tasks.tenant(tenant).get(id).await?.status != TaskStatus::Running {
        if Instant::now() > deadline {
            bail!("task {id} did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until a task is kept queued by the budget gate, and says why.
async fn wait_for_budget(
    tasks: &Tasks,
    tenant: &Tenant,
    id: TaskId,
) -> anyhow::Result<ops::tasks::Waiting> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tasks.tenant(tenant).explain(id).await? {
            Some(w) if w.info.reason == ops::tasks::admission::WaitReason::Budget => return Ok(w),
            Some(_) => {}
            None => bail!("task {id} of {tenant} did not wait for credit"),
        }
        if Instant::now() > deadline {
            bail!("task {id} of {tenant} was not refused by billing within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the demo expects of each template's tasks.
fn expected(template: &str) -> (TaskStatus, Reason) {
    match template {
        "flaky-upload" => (TaskStatus::Failed, Reason::NonZeroExit),
        "memory-hog" => (TaskStatus::Failed, Reason::OutOfMemory),
        "slow-encode" => (TaskStatus::TimedOut, Reason::TimedOut),
        "custom-tool" => (TaskStatus::Failed, Reason::CommandNotFound),
        _ => (TaskStatus::Succeeded, Reason::Completed),
    }
}

/// Event id → (subject, type), as the counter function saw them.
type SeenEvents = BTreeMap<ops::core::EventId, (Option<String>, String)>;

#[derive(Default)]
struct Meter {
    by_tenant: BTreeMap<String, (u32, Usage)>,
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
    // One file describes the platform; every problem in it is reported at once.
    let mut config = PlatformConfig::load(&args.config)?;
    if let Some(url) = &args.history {
        config.history = url.clone();
    }
    if args.events.is_some() {
        config.events = args.events.clone();
    }
    if let Some(dir) = &args.write_monitoring {
        let monitor = config.monitor.clone().unwrap_or_default();
        for file in monitor.write_files(dir)? {
            println!("wrote {}", file.display());
        }
        return Ok(());
    }
    if let Some(addr) = &args.serve {
        let monitor = config.monitor.get_or_insert_with(Default::default);
        monitor.listen = Some(addr.clone());
        let problems = monitor.problems();
        if !problems.is_empty() {
            bail!("--serve: {}", problems.join("; "));
        }
    }
    // Invoices and cost reports are written beside the task directories.
    let invoices_dir = config
        .tasks
        .root
        .parent()
        .unwrap_or(Path::new("."))
        .join("invoices");
    if args.fresh {
        let _ = std::fs::remove_dir_all(&config.tasks.root);
        let _ = std::fs::remove_dir_all(&invoices_dir);
        match ops::config::sqlite_file(&config.history) {
            Some(db) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = db.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
                // The storage catalog is in that database: its objects go with it.
                if let Some(dir) = config.storage.as_ref().and_then(|s| storage_dir(&s.url)) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            None => println!(
                "--fresh leaves a shared database alone; only the task directories and invoices were removed"
            ),
        }
    }

    // 1. The executor, made by hand to show what it found on this machine; the
    //    platform wires the rest (history and outbox, storage with staging, functions).
    let executor = Arc::new(LocalExecutor::new(config.executor.clone())?);
    let capacity = ops::tasks::Executor::capacity(executor.as_ref());
    println!(
        "Local executor: {} CPU, {} MiB, {} GPU(s); limits through cgroups: {}",
        capacity.cpu_millis as f64 / 1000.0,
        capacity.memory_bytes >> 20,
        capacity.gpus.count,
        executor.cgroup_mode().as_str()
    );

    // 2. Functions react to events from the durable outbox (at least once, deduped).
    let meter = Arc::new(Mutex::new(Meter::default()));
    let usage_fn = {
        let meter = meter.clone();
        function_fn("usage-meter", move |event| {
            let meter = meter.clone();
            async move {
                let data: TaskEventData = event
                    .data_as()
                    .map_err(|e| FunctionError::permanent(format!("not a task event: {e}")))?;
                if let Some(usage) = data.usage {
                    let mut m = meter.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = m.by_tenant.entry(data.tenant).or_default();
                    entry.0 += 1;
                    entry.1.accumulate(&usage);
                }
                Ok(())
            }
        })
    };
    // Every event the counter saw, once per event id (delivery is at least once); the
    // summary counts those about this run's tasks (a shared database or NATS stream may
    // carry other runs' events too).
    let seen: Arc<Mutex<SeenEvents>> = Arc::default();
    let count_fn = {
        let seen = seen.clone();
        function_fn("event-counter", move |event| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(event.id)
                    .or_insert_with(|| (event.subject.clone(), event.ty.clone()));
                Ok(())
            }
        })
    };
    let final_types = [
        event_types::TASK_SUCCEEDED,
        event_types::TASK_FAILED,
        event_types::TASK_TIMED_OUT,
        event_types::TASK_CANCELLED,
    ];
    let mut usage_trigger = Trigger::on(final_types[0]);
    for t in &final_types[1..] {
        usage_trigger = usage_trigger.or_on(*t);
    }
    let templates = config.templates.clone();
    let prices = config.billing.as_ref().map(|b| b.prices.clone());
    // The invoices' period: this run.
    let period_start = Utc::now();
    let environment = config.tasks.default_environment.clone();
    let storage_config = config.storage.clone().unwrap_or_default();
    let platform = Platform::builder()
        .config(config)
        .local_executor(executor)
        .function(usage_trigger, usage_fn)
        .function(Trigger::on("ops.task.*").or_on("ops.storage.*"), count_fn)
        .start()
        .await?;
    let tasks = platform.tasks().clone();
    if let Some(addr) = platform.metrics_addr() {
        println!(
            "Metrics: http://{addr}/metrics (also /healthz and /readyz) while the platform runs"
        );
    }
    println!(
        "Loaded {} templates from {}: {}",
        tasks.catalogue().len(),
        templates.as_deref().unwrap_or(Path::new("-")).display(),
        tasks.catalogue().names().collect::<Vec<_>>().join(", ")
    );
    println!(
        "History store: {}; events: {}",
        platform.history_url(),
        platform
            .events_url()
            .unwrap_or("the history store's outbox")
    );
    let Some(storage) = platform.storage().cloned() else {
        bail!("the demo needs [storage] in {}", args.config.display());
    };
    let quota = storage.quota(&Tenant::parse("acme")?);
    println!(
        "Storage: {} (quota per tenant: {}, {} objects; {})",
        storage.url(),
        quota
            .bytes
            .map_or("unlimited".to_owned(), |b| format!("{} MiB", b >> 20)),
        quota
            .objects
            .map_or("unlimited".to_owned(), |n| n.to_string()),
        storage_config
            .retention
            .iter()
            .map(|r| format!("{}* kept {} days", r.prefix, r.days))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // 3. The demo workload: tenants with good and bad tasks, and refused requests.
    let (acme, globex, folding, thrifty) = (
        Tenant::parse("acme")?,
        Tenant::parse("globex")?,
        Tenant::parse("folding")?,
        Tenant::parse("thrifty")?,
    );
    // Prepaid credit, as payments would add it. Keys make top-ups idempotent: a rerun
    // on the same database adds nothing, unless a tenant's credit ran low.
    let billing = platform.billing().cloned();
    if let Some(budgets) = &billing {
        let currency = budgets.book().currency;
        let money = |amount: &str| -> anyhow::Result<Money> {
            Ok(Money::from_decimal(amount.parse::<Decimal>()?, currency)?)
        };
        for tenant in [&acme, &globex] {
            let key = format!("local-platform:{tenant}:welcome");
            budgets.top_up(tenant, money("20")?, &key).await?;
            if budgets
                .available(tenant)
                .await?
                .checked_sub(money("5")?)?
                .is_negative()
            {
                let key = format!(
                    "local-platform:{tenant}:refill:{}",
                    period_start.to_rfc3339()
                );
                budgets.top_up(tenant, money("20")?, &key).await?;
            }
        }
        // Granted credit, used before paid credit: a welcome grant to globex that
        // expires at the start of the month after next (one grant per month, so that
        // a rerun grants nothing more).
        let month = chrono::NaiveDate::from_ymd_opt(period_start.year(), period_start.month(), 1)
            .and_then(|d| d.checked_add_months(chrono::Months::new(2)))
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc());
        if let Some(expires) = month {
            let id = format!("welcome-{}", period_start.format("%Y-%m"));
            let grant = ops::billing::Grant::new(id, money("5")?)
                .priority(10)
                .expires_at(expires);
            budgets.grant(&globex, &grant).await?;
        }
        // A cent: not enough for a render's worst case.
        budgets
            .top_up(&thrifty, money("0.01")?, "local-platform:thrifty:welcome")
            .await?;
        let mut credit = Vec::new();
        for tenant in [&acme, &globex, &thrifty] {
            credit.push(format!("{tenant} {}", budgets.available(tenant).await?));
        }
        println!(
            "Billing: prices from {}; prepaid credit: {}; {folding}: none (scavenger work is free)",
            prices.as_deref().unwrap_or(Path::new("-")).display(),
            credit.join(", ")
        );
    }
    let mut requests = Vec::new();
    for tenant in [&acme, &globex] {
        for i in 0..args.renders {
            requests.push((
                tenant.clone(),
                SubmitRequest::new("render")
                    .parameters(serde_json::json!({
                        "scene": format!("{tenant}-shot-{}", i + 1),
                        "frames": 4 + 2 * i,
                    }))
                    .label("project", "trailer"),
            ));
        }
    }
    // End users control parameters; they reach the program as plain arguments.
    requests.push((
        globex.clone(),
        SubmitRequest::new("render").parameters(
            serde_json::json!({ "scene": "x; rm -rf ~ $(reboot) `halt`", "frames": 2 }),
        ),
    ));
    requests.push((acme.clone(), SubmitRequest::new("flaky-upload")));
    requests.push((acme.clone(), SubmitRequest::new("memory-hog")));
    requests.push((globex.clone(), SubmitRequest::new("slow-encode")));
    requests.push((globex.clone(), SubmitRequest::new("custom-tool")));

    let refused = vec![
        ("unknown template", &acme, SubmitRequest::new("rendr")),
        (
            "invalid parameters",
            &acme,
            SubmitRequest::new("render")
                .parameters(serde_json::json!({ "frames": 0, "colour": "red" })),
        ),
        (
            "larger than the machine",
            &acme,
            SubmitRequest::new("gpu-train"),
        ),
        (
            "over the tenant's quota (scavenger work only)",
            &folding,
            SubmitRequest::new("render").parameters(serde_json::json!({ "scene": "s" })),
        ),
    ];

    // thrifty renders too, on one cent of credit (when billing is on).
    let thrifty_request = billing.as_ref().map(|_| {
        SubmitRequest::new("render")
            .parameters(serde_json::json!({ "scene": "thrifty-teaser", "frames": 6 }))
    });

    // Each render reads its scene description from the tenant's storage (its
    // `inputs`); the platform's API would have taken these as uploads.
    for (tenant, req) in requests
        .iter()
        .map(|(t, r)| (t, r))
        .chain(thrifty_request.iter().map(|r| (&thrifty, r)))
    {
        if req.template == "render"
            && let Some(scene) = req.parameters.get("scene").and_then(|s| s.as_str())
        {
            storage
                .scope(tenant, &environment)
                .put(
                    &format!("scenes/{scene}.txt"),
                    format!("scene {scene:?}: a teapot on a checkered floor, lit from the left")
                        .into(),
                )
                .await?;
        }
    }

    let mut live = tasks.admin().subscribe_all();
    let started = Instant::now();
    let mut ids: Vec<(TaskId, Tenant)> = Vec::new();
    // Scavenger work first: it starts on the idle machine, and is preempted (SIGTERM,
    // grace, kill), requeued and resumed from its checkpoint around the real work.
    let scavenger = tasks
        .tenant(&folding)
        .submit(SubmitRequest::new("folding"))
        .await?;
    ids.push((scavenger, folding.clone()));
    wait_started(&tasks, &folding, scavenger).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("\nScavenger task {scavenger} (folding) started on idle capacity.");
    // thrifty's render: admitted, but its credit cannot hold its worst case.
    let thrifty_task = match thrifty_request {
        Some(req) => {
            // (A configuration without `[tasks.admission.tenants.thrifty]` refuses it.)
            let id = tasks
                .tenant(&thrifty)
                .submit(req)
                .await
                .with_context(|| format!("submitting {thrifty}'s render"))?;
            ids.push((id, thrifty.clone()));
            let waiting = wait_for_budget(&tasks, &thrifty, id).await?;
            println!(
                "\nWhy task {id} ({thrifty}) waits: {}",
                waiting.info.message
            );
            Some(id)
        }
        None => None,
    };
    for (tenant, req) in requests {
        ids.push((tasks.tenant(&tenant).submit(req).await?, tenant));
    }
    println!("\nSubmitted {} tasks; refused at submission:", ids.len());
    for (what, tenant, req) in refused {
        match tasks.tenant(tenant).submit(req).await {
            Ok(id) => bail!("expected the {what} request to be refused, but it became task {id}"),
            Err(e) => println!("  - {what}: {e}"),
        }
    }
    // Why is a task waiting? (One held back by capacity if there is one.)
    let mut shown = None;
    for (id, tenant) in ids.iter().rev() {
        if Some(*id) == thrifty_task {
            continue;
        }
        if let Some(w) = tasks.tenant(tenant).explain(*id).await? {
            let blocked = w.info.reason != ops::tasks::admission::WaitReason::Priority;
            if shown.is_none() || blocked {
                shown = Some((*id, w));
            }
            if blocked {
                break;
            }
        }
    }
    if let Some((id, w)) = shown {
        println!(
            "\nWhy task {id} waits: {} — {} (position {} in segment {:?}{})",
            w.info.reason,
            w.info.message,
            w.info.position,
            w.info.segment,
            w.estimated_start
                .map(|t| format!(", estimated start {}", t.format("%H:%M:%S")))
                .unwrap_or_default()
        );
    }
    // thrifty pays what its task's hold misses; the task starts at the next budget check.
    if let (Some(budgets), Some(id)) = (&billing, thrifty_task) {
        let record = tasks.tenant(&thrifty).get(id).await?;
        let worst = budgets.worst_case(&HoldRequest {
            task_id: id,
            attempt: record.attempt + 1,
            tenant: &thrifty,
            environment: record.environment.as_str(),
            template: &record.template,
            resources: &record.spec.resources,
            timeout: record.spec.timeout,
            scavenger: record.spec.scavenger,
        })?;
        let available = budgets.available(&thrifty).await?;
        let missing = worst.checked_sub(available)?;
        if missing.amount > 0 {
            let key = format!("local-platform:{thrifty}:{id}");
            budgets.top_up(&thrifty, missing, &key).await?;
        }
        println!(
            "\n{thrifty} tops up {missing}, what its credit of {available} lacks for the task's hold of {worst}; task {id} starts at the next budget check"
        );
    }
    println!();

    // 4. Progress until every task is final.
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Line output goes above the bar on a terminal, plainly elsewhere (CI logs).
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while done < ids.len() {
        let event = tokio::select! {
            e = live.recv() => e,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                bar.tick();
                if Instant::now() > deadline { bail!("tasks did not finish within two minutes"); }
                continue;
            }
        };
        let Ok(event) = event else {
            // Lagged: recount from history.
            done = count_final(&tasks, &ids).await?;
            bar.set_position(done as u64);
            continue;
        };
        let Ok(data) = event.data_as::<TaskEventData>() else {
            continue;
        };
        match event.ty.as_str() {
            event_types::TASK_STARTED if Some(data.task_id) == thrifty_task => say(format!(
                "  ▶ {} ({}) started: the top-up covers its hold",
                data.template, data.tenant
            )),
            event_types::TASK_STARTED => bar.set_message(format!("{} started", data.template)),
            event_types::TASK_PREEMPTED => say(format!(
                "  ⏸ {} ({}) attempt {} preempted to make room; queued again",
                data.template, data.tenant, data.attempt
            )),
            event_types::TASK_RETRYING => say(format!(
                "  ↻ {} ({}) attempt {} failed ({}), retrying",
                data.template,
                data.tenant,
                data.attempt,
                data.reason.map(|r| r.as_str()).unwrap_or("?")
            )),
            t if final_types.contains(&t) => {
                done += 1;
                bar.inc(1);
                if data.status == TaskStatus::Succeeded
                    && let Some(line) = stored_outputs(&storage, &data).await?
                {
                    say(line);
                }
                say(format!(
                    "  {} {:<13} {:<7} {}{}",
                    if data.status == TaskStatus::Succeeded {
                        "✓"
                    } else {
                        "✗"
                    },
                    data.template,
                    data.tenant,
                    data.status.as_str(),
                    data.reason
                        .filter(|r| *r != Reason::Completed)
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    // 5. Let the functions catch up with every stored event.
    let mut total_events = 0;
    for (id, tenant) in &ids {
        total_events += tasks.tenant(tenant).events(*id).await?.len() as u64;
    }
    let ours: std::collections::HashSet<String> =
        ids.iter().map(|(id, _)| id.to_string()).collect();
    let counts = || {
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        for (subject, ty) in seen.lock().unwrap_or_else(|e| e.into_inner()).values() {
            if subject.as_ref().is_some_and(|s| ours.contains(s)) {
                *by_type.entry(ty.clone()).or_default() += 1;
            }
        }
        by_type
    };
    // Outputs stored by this run's tasks, and the `ops.storage.object.created` events
    // the function saw about them (their subject is `<environment>/tasks/<task id>/…`).
    let mut stored_outputs = 0u64;
    for (id, tenant) in &ids {
        let env = tasks.tenant(tenant).get(*id).await?.environment;
        stored_outputs += storage
            .scope(tenant, &env)
            .list(Some(&format!("tasks/{id}/")))
            .await?
            .len() as u64;
    }
    let storage_events = || {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(subject, ty)| {
                ty == event_types::STORAGE_OBJECT_CREATED
                    && subject
                        .as_deref()
                        .is_some_and(|s| s.split('/').nth(2).is_some_and(|id| ours.contains(id)))
            })
            .count() as u64
    };
    let caught_up = Instant::now() + Duration::from_secs(30);
    while (counts().values().sum::<u64>() < total_events || storage_events() < stored_outputs)
        && Instant::now() < caught_up
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 6. Summary.
    let mut records = Vec::new();
    for (id, tenant) in &ids {
        records.push(tasks.tenant(tenant).get(*id).await?);
    }
    print_summary(&tasks, &records, elapsed).await?;
    print_storage(&storage, &records).await?;
    println!(
        "\nEvents delivered to the `event-counter` function (from {}):",
        platform.events_url().unwrap_or("the outbox")
    );
    for (ty, n) in counts().iter() {
        println!("  {ty:<26} {n:>4}");
    }
    println!(
        "  {:<26} {:>4}",
        event_types::STORAGE_OBJECT_CREATED,
        storage_events()
    );
    println!("\nUsage metered by the `usage-meter` function (from final events):");
    println!(
        "  {:<8} {:>5} {:>10} {:>10} {:>12} {:>8}",
        "tenant", "tasks", "wall s", "cpu s", "peak MiB", "gpu s"
    );
    for (tenant, (n, u)) in &meter.lock().unwrap_or_else(|e| e.into_inner()).by_tenant {
        println!(
            "  {:<8} {:>5} {:>10.2} {:>10.2} {:>12.1} {:>8.1}",
            tenant,
            n,
            u.wall_time.as_secs_f64(),
            u.cpu_time.as_secs_f64(),
            u.peak_memory_bytes as f64 / (1 << 20) as f64,
            u.gpu_seconds
        );
    }
    let stats = platform.dispatcher().map(|d| d.stats()).unwrap_or_default();
    println!(
        "  dispatcher: {} delivered, {} retried, {} dead letters",
        stats.delivered, stats.retried, stats.dead_lettered
    );

    // 7. Billing: every final event settled, each tenant's invoice, the seller's view.
    if let (Some(budgets), Some(usage)) = (platform.billing(), platform.usage()) {
        if let Some(dispatcher) = platform.dispatcher()
            && !dispatcher.drain(Duration::from_secs(30)).await?
        {
            println!("(billing has not caught up with every event within 30 s)");
        }
        let mut tenants: Vec<&Tenant> = records.iter().map(|r| &r.tenant).collect();
        tenants.sort();
        tenants.dedup();
        print_billing(
            budgets,
            usage.as_ref(),
            &tenants,
            (period_start, Utc::now()),
            &invoices_dir,
            platform.cost_book().map(|b| b.as_ref()),
        )
        .await?;
    }

    if let Some(monitor) = platform.monitor() {
        print_monitoring(monitor, platform.metrics_addr()).await?;
        if let Some(addr) = platform.metrics_addr()
            && args.linger > 0
        {
            println!("  serving http://{addr}/metrics for {} s more", args.linger);
            tokio::time::sleep(Duration::from_secs(args.linger)).await;
        }
    }
    platform.shutdown().await;

    let mut wrong = Vec::new();
    for r in &records {
        let (status, reason) = expected(&r.template);
        if r.status != status || r.reason != Some(reason) {
            wrong.push(format!(
                "{} {} ended {} ({:?}), expected {} ({})",
                r.template, r.id, r.status, r.reason, status, reason
            ));
        }
    }
    if storage_events() != stored_outputs {
        wrong.push(format!(
            "the function saw {} ops.storage.object.created events, storage holds {stored_outputs} outputs of this run",
            storage_events()
        ));
    }
    let counted: u64 = counts().values().sum();
    if counted != total_events {
        wrong.push(format!(
            "the function saw {counted} distinct events, history holds {total_events}"
        ));
    }
    if !wrong.is_empty() {
        bail!("unexpected results:\n  {}", wrong.join("\n  "));
    }
    println!("\nAll {} tasks ended as expected.", records.len());
    Ok(())
}

/// Each tenant's invoice for the run's period `[from, to)` as a table, with its credit
/// left, written as HTML and JSON into `invoices_dir`; then the seller's view of the
/// period from the cost book `costs` (`[billing] costs`), when there is one.
async fn print_billing(
    budgets: &Budgets,
    usage: &dyn UsageStore,
    tenants: &[&Tenant],
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    invoices_dir: &Path,
    costs: Option<&CostBook>,
) -> anyhow::Result<()> {
    let metering = Metering::new(budgets.book().clone());
    let dir = invoices_dir.join(from.format("%Y%m%dT%H%M%SZ").to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "\nInvoices for this run (drafts for an hour after it, the window for late events; \
         task charges are already settled from credit):"
    );
    let mut all: Vec<UsageRecord> = Vec::new();
    for tenant in tenants {
        // From the start: storage is priced on the level reached before the period too.
        let records = usage
            .records(tenant.as_str(), DateTime::<Utc>::UNIX_EPOCH, to)
            .await?;
        let bill = invoice::invoice(
            &metering,
            tenant.as_str(),
            &records,
            from,
            to,
            Utc::now(),
            chrono::Duration::hours(1),
        )?;
        println!();
        for line in bill.to_text(budgets.book()).lines() {
            println!("  {line}");
        }
        println!("    credit left: {}", budgets.available(tenant).await?);
        for g in budgets.grants(tenant).await? {
            println!(
                "      of which granted {:?}: {} left of {}{}",
                g.grant.id,
                g.remaining,
                g.grant.amount,
                g.grant
                    .expires_at
                    .map(|t| format!(", expires {}", t.format("%Y-%m-%d")))
                    .unwrap_or_default()
            );
        }
        let (html, json) = (
            dir.join(format!("{tenant}.html")),
            dir.join(format!("{tenant}.json")),
        );
        std::fs::write(&html, bill.to_html())
            .with_context(|| format!("writing {}", html.display()))?;
        std::fs::write(&json, serde_json::to_string_pretty(&bill)?)
            .with_context(|| format!("writing {}", json.display()))?;
        println!("    written to {} and {}", html.display(), json.display());
        all.extend(records);
    }

    let Some(book) = costs else {
        println!("\nNo cost book ([billing] costs): no seller's view.");
        return Ok(());
    };
    let report = CostReport::build(book, &metering, &all, from, to)?;
    let html = dir.join("costs.html");
    std::fs::write(&html, report.to_html())
        .with_context(|| format!("writing {}", html.display()))?;
    println!(
        "\nThe seller's view of this run ({:.1} s; cost book from [billing] costs):",
        (to - from).as_seconds_f64(),
    );
    for (name, node) in &report.nodes {
        println!(
            "  node {name}: {} × {} {}/h",
            node.count,
            node.hourly.round_dp(4).normalize(),
            report.currency
        );
    }
    println!(
        "  fleet cost {} = allocated {} + idle {}",
        report.fleet_cost, report.allocated_cost, report.idle_cost
    );
    let percent = |p: Option<Decimal>| p.map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
    println!(
        "  revenue {}, margin on what was sold {} ({}), net of the fleet's cost {}",
        report.revenue,
        report.margin,
        percent(report.margin_percent),
        report.net
    );
    println!(
        "  {:<8} {:>5} {:>10} {:>10} {:>10} {:>8}",
        "tenant", "tasks", "revenue", "cost", "margin", "margin %"
    );
    for (tenant, m) in &report.by_tenant {
        println!(
            "  {:<8} {:>5} {:>10} {:>10} {:>10} {:>8}",
            tenant,
            m.tasks,
            m.revenue.to_string(),
            m.cost.to_string(),
            m.margin.to_string(),
            percent(m.margin_percent)
        );
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
    println!("  full report (per task and template): {}", html.display());
    Ok(())
}

/// `📦 stored …` for a task whose outputs are in storage.
async fn stored_outputs(storage: &Storage, data: &TaskEventData) -> anyhow::Result<Option<String>> {
    let environment = data.environment.as_str();
    let prefix = format!("tasks/{}/", data.task_id);
    let objects = storage
        .scope(&Tenant::parse(data.tenant.as_str())?, &environment.parse()?)
        .list(Some(&prefix))
        .await?;
    if objects.is_empty() {
        return Ok(None);
    }
    let bytes: u64 = objects.iter().map(|o| o.size).sum();
    Ok(Some(format!(
        "  📦 stored {} outputs ({}) of task {} in {}/tenants/{}/{}/{}",
        objects.len(),
        human_bytes(bytes),
        data.task_id,
        storage.url().trim_end_matches("?…"),
        data.tenant,
        environment,
        prefix
    )))
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / (1 << 10) as f64),
        b => format!("{b} B"),
    }
}

/// Storage used per tenant, against its quota.
async fn print_storage(storage: &Storage, records: &[TaskRecord]) -> anyhow::Result<()> {
    println!("\nStorage per tenant ({}):", storage.url());
    println!(
        "  {:<8} {:>8} {:>10} {:>12}",
        "tenant", "objects", "bytes", "quota"
    );
    let mut tenants: Vec<&Tenant> = records.iter().map(|r| &r.tenant).collect();
    tenants.sort();
    tenants.dedup();
    for tenant in tenants {
        let usage = storage.usage(tenant).await?;
        let quota = storage.quota(tenant);
        println!(
            "  {:<8} {:>8} {:>10} {:>12}",
            tenant.as_str(),
            usage.objects,
            human_bytes(usage.bytes),
            quota.bytes.map_or("unlimited".to_owned(), human_bytes)
        );
    }
    // Retention as a periodic job would run it (`Storage::spawn_retention`): nothing
    // of this run is old enough yet, so it only shows the rules are applied.
    let report = storage.apply_retention(chrono::Utc::now()).await?;
    println!(
        "  retention: {} objects ({}) past their rules removed, {} failed",
        report.removed.len(),
        human_bytes(report.bytes),
        report.failed.len()
    );
    Ok(())
}

async fn count_final(tasks: &Tasks, ids: &[(TaskId, Tenant)]) -> anyhow::Result<usize> {
    let mut n = 0;
    for (id, tenant) in ids {
        if tasks.tenant(tenant).get(*id).await?.status.is_final() {
            n += 1;
        }
    }
    Ok(n)
}

/// What the monitor exports now: a few of its series, and where it is served.
async fn print_monitoring(
    monitor: &ops::monitor::Monitor,
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let text = monitor.scrape(ops::monitor::Format::Prometheus).await?;
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!("\nMonitoring ([monitor]): {series} series in one scrape");
    for line in text.lines().filter(|l| {
        l.starts_with("ops_tasks_finished_total{") && !l.ends_with(" 0")
            || l.starts_with("ops_collector_up{")
            || l.starts_with("ops_gpu_collector_up")
            || l.starts_with("ops_outbox_lag_seconds{")
    }) {
        println!("  {line}");
    }
    match addr {
        Some(addr) => println!("  served at http://{addr}/metrics, /healthz, /readyz"),
        None => println!("  not served: pass --serve 127.0.0.1:9464 (or set [monitor] listen)"),
    }
    Ok(())
}

async fn print_summary(
    tasks: &Tasks,
    records: &[TaskRecord],
    elapsed: Duration,
) -> anyhow::Result<()> {
    let mut by_state: BTreeMap<String, u32> = BTreeMap::new();
    for r in records {
        let key = match r.reason {
            Some(reason) if reason != Reason::Completed => format!("{} ({reason})", r.status),
            _ => r.status.to_string(),
        };
        *by_state.entry(key).or_default() += 1;
    }
    println!(
        "\nFinished {} tasks in {:.1}s.",
        records.len(),
        elapsed.as_secs_f64()
    );
    println!("\nTasks by state:");
    for (state, n) in &by_state {
        println!("  {state:<32} {n:>3}");
    }
    println!(
        "\n  {:<13} {:<7} {:<10} {:<16} {:>4} {:>7} {:>8}  detail",
        "template", "tenant", "status", "reason", "try", "wall s", "outputs"
    );
    for r in records {
        let outputs = tasks.tenant(&r.tenant).outputs(r.id).await?;
        println!(
            "  {:<13} {:<7} {:<10} {:<16} {:>4} {:>7.2} {:>8}  {}",
            r.template,
            r.tenant.as_str(),
            r.status.as_str(),
            r.reason.map(|x| x.as_str()).unwrap_or("-"),
            r.attempt,
            r.usage.wall_time.as_secs_f64(),
            outputs.len(),
            r.message.as_deref().unwrap_or("")
        );
    }
    if let Some(r) = records
        .iter()
        .find(|r| r.template == "render" && r.status == TaskStatus::Succeeded)
    {
        let outputs = tasks.tenant(&r.tenant).outputs(r.id).await?;
        println!(
            "\nOutputs of render {} ({}): {}",
            r.id,
            r.tenant,
            r.spec.task_dir.display()
        );
        for o in outputs.iter().take(4) {
            println!("  {} ({} bytes)", o.path, o.size);
        }
        if outputs.len() > 4 {
            println!("  … and {} more", outputs.len() - 4);
        }
    }
    println!("\nWait and run times from history (this run's tenants, last hour):");
    println!(
        "  {:<8} {:<13} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "tenant", "template", "tasks", "wait p50", "wait p95", "wait max", "run mean"
    );
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut tenants: Vec<&Tenant> = records.iter().map(|r| &r.tenant).collect();
    tenants.sort();
    tenants.dedup();
    for tenant in tenants {
        let query = ops::tasks::StatsQuery::new().since(since);
        for s in tasks.tenant(tenant).stats(&query).await? {
            println!(
                "  {:<8} {:<13} {:>5} {:>8.2}s {:>8.2}s {:>8.2}s {:>8.2}s",
                s.tenant.as_str(),
                s.template,
                s.tasks,
                s.wait_p50.as_secs_f64(),
                s.wait_p95.as_secs_f64(),
                s.wait_max.as_secs_f64(),
                s.run_mean.as_secs_f64()
            );
        }
    }
    let counts = tasks.admin().count_by_status(None).await?;
    println!(
        "\nHistory (all runs): {}",
        counts
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
