//! [`Platform`]: the parts wired together — history and outbox by URL, the event bus
//! and its relay, storage with its catalog in the same database, the executor (with
//! staging when storage is configured), the task service, functions and webhooks with
//! durable dead letters — and one [`shutdown`](Platform::shutdown).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ops_core::Tenant;
use ops_events::{
    DeadLetters, Dispatcher, EventBus, Function, InMemoryDeadLetters, RunningDispatcher, Trigger,
};
use ops_storage::Storage;
use ops_tasks::admission::BudgetGate;
use ops_tasks::staging::StagingExecutor;
use ops_tasks::template::Catalogue;
use ops_tasks::{Admin, Executor, Tasks, TasksConfig, TenantTasks};

use crate::backends::{self, Backends};
use crate::config::{DeadLetterStore, PlatformConfig, WebhookEntry};
use crate::staging::StorageStaging;
use crate::{Error, Result};

/// How often storage retention rules are applied while the platform runs.
pub const STORAGE_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// How often granted credit is checked for expiry while the platform runs (each
/// reservation also expires the grants this process knows are due).
pub const GRANT_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// A running platform: the task service, storage, the event spine and functions,
/// built from a [`PlatformConfig`] and code. See the [crate documentation](crate).
pub struct Platform {
    tasks: Tasks,
    storage: Option<Storage>,
    billing: Option<ops_billing::Budgets>,
    cost_book: Option<Arc<ops_billing::CostBook>>,
    payments: Option<Arc<dyn ops_billing::PaymentProvider>>,
    backends: Backends,
    dead_letters: Arc<dyn DeadLetters>,
    dispatcher: Option<(Dispatcher, RunningDispatcher)>,
    retention: Option<tokio::task::JoinHandle<()>>,
    grant_expiry: Option<tokio::task::JoinHandle<()>>,
    #[cfg(feature = "monitor")]
    monitoring: Option<crate::monitoring::Monitoring>,
    #[cfg(feature = "provision")]
    fleets: Option<ops_provision::config::Fleets>,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("history", &self.backends.history_url)
            .field("events", &self.backends.events_url)
            .field(
                "storage",
                &self.storage.as_ref().map(|s| s.url().to_owned()),
            )
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// Starts building a platform (everything embedded by default).
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::default()
    }

    /// Starts the platform a configuration describes.
    pub async fn from_config(config: PlatformConfig) -> Result<Platform> {
        Self::builder().config(config).start().await
    }

    /// Loads a configuration file ([`PlatformConfig::load`]: every problem at once,
    /// paths relative to the file) and starts the platform it describes.
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Platform> {
        Self::from_config(PlatformConfig::load(path)?).await
    }

    /// The task service.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// One tenant's handle on the task service (see [`Tasks::tenant`]).
    pub fn tenant(&self, tenant: &Tenant) -> TenantTasks {
        self.tasks.tenant(tenant)
    }

    /// The operator's handle on the task service (see [`Tasks::admin`]).
    pub fn admin(&self) -> Admin {
        self.tasks.admin()
    }

    /// Object storage, when configured.
    pub fn storage(&self) -> Option<&Storage> {
        self.storage.as_ref()
    }

    /// Prepaid credit, holds and settlement, when `[billing]` is configured.
    pub fn billing(&self) -> Option<&ops_billing::Budgets> {
        self.billing.as_ref()
    }

    /// Where finalized invoices are kept (in the history database), when `[billing]`
    /// is configured: keep each one once its grace window has ended, and what was sent
    /// stays as it was.
    pub fn invoices(&self) -> Option<&Arc<dyn ops_billing::InvoiceStore>> {
        self.billing.as_ref().map(|_| &self.backends.invoices)
    }

    /// The payment provider of `[billing.payments]` (`none` when it names none), when
    /// `[billing]` is configured.
    pub fn payments(&self) -> Option<&Arc<dyn ops_billing::PaymentProvider>> {
        self.payments.as_ref()
    }

    /// The seller's cost book (`[billing] costs`), for cost reports and margins.
    pub fn cost_book(&self) -> Option<&Arc<ops_billing::CostBook>> {
        self.cost_book.as_ref()
    }

    /// The usage records billing meters (in the history database), for invoices and
    /// cost reports, when `[billing]` is configured.
    pub fn usage(&self) -> Option<&Arc<dyn ops_billing::UsageStore>> {
        self.billing.as_ref().map(|_| &self.backends.usage)
    }

    /// The bus functions subscribe to: the history's outbox, or the external bus it
    /// is relayed to.
    pub fn events(&self) -> &Arc<dyn EventBus> {
        &self.backends.events
    }

    /// Where functions' dead letters are kept.
    pub fn dead_letters(&self) -> &Arc<dyn DeadLetters> {
        &self.dead_letters
    }

    /// The dispatcher calling functions and webhooks (statistics, replay of dead
    /// letters); `None` when none is registered.
    pub fn dispatcher(&self) -> Option<&Dispatcher> {
        self.dispatcher.as_ref().map(|(d, _)| d)
    }

    /// The monitor (metrics, collectors, health checks), when `[monitor]` is
    /// configured: mount [`ops_monitor::http::router`] on it, or scrape it directly.
    #[cfg(feature = "monitor")]
    pub fn monitor(&self) -> Option<&ops_monitor::Monitor> {
        self.monitoring.as_ref().map(|m| &m.monitor)
    }

    /// The fleets of `[provision]` (feature `provision`): their providers, specs and
    /// records (in the history database, each change written with its events), when
    /// the section is configured.
    #[cfg(feature = "provision")]
    pub fn fleets(&self) -> Option<&ops_provision::config::Fleets> {
        self.fleets.as_ref()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (`[monitor] listen`, the
    /// port the system picked when it was 0).
    #[cfg(feature = "monitor")]
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.monitoring.as_ref().and_then(|m| m.addr)
    }

    /// The history URL, password redacted.
    pub fn history_url(&self) -> &str {
        &self.backends.history_url
    }

    /// The external event bus URL, password redacted (`None`: the outbox).
    pub fn events_url(&self) -> Option<&str> {
        self.backends.events_url.as_deref()
    }

    /// Stops everything, in order: the task service (running tasks are left to be
    /// re-attached by the next start; queued ones are handed back); then the functions,
    /// after up to `shutdown_grace` for them to handle every event committed so far
    /// (what is left is delivered after the next start); then the relay to the external
    /// bus (after forwarding what it fetched); then storage retention.
    pub async fn shutdown(self) {
        #[cfg(feature = "monitor")]
        if let Some(monitoring) = self.monitoring {
            monitoring.shutdown();
        }
        self.tasks.shutdown().await;
        if let Some((dispatcher, running)) = self.dispatcher {
            if let Err(e) = dispatcher.drain(self.shutdown_grace).await {
                tracing::warn!(error = %e, "could not wait for functions to catch up");
            }
            running.shutdown().await;
        }
        self.backends.shutdown().await;
        if let Some(retention) = self.retention {
            retention.abort();
        }
        if let Some(expiry) = self.grant_expiry {
            expiry.abort();
        }
        tracing::debug!("platform stopped");
    }
}

/// Builds a [`Platform`]; see [`Platform::builder`]. What code sets (a catalogue, an
/// executor, functions) is added to or replaces what the configuration says.
#[derive(Default)]
pub struct PlatformBuilder {
    config: PlatformConfig,
    catalogue: Option<Catalogue>,
    executor: Option<Arc<dyn Executor>>,
    functions: Vec<(Trigger, Arc<dyn Function>)>,
    budget: Option<Arc<dyn BudgetGate>>,
    submit_only: bool,
    gpu_assignments: Option<GpuAssignments>,
}

impl std::fmt::Debug for PlatformBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformBuilder")
            .field("config", &self.config)
            .field("functions", &self.functions.len())
            .finish_non_exhaustive()
    }
}

impl PlatformBuilder {
    /// Everything a configuration says (replacing what was set before).
    pub fn config(mut self, config: PlatformConfig) -> Self {
        self.config = config;
        self
    }

    /// The history store's URL (`sqlite://PATH`, `postgres://…`).
    pub fn history(mut self, url: impl Into<String>) -> Self {
        self.config.history = url.into();
        self
    }

    /// The event bus URL functions subscribe to (`nats://…`).
    pub fn events(mut self, url: impl Into<String>) -> Self {
        self.config.events = Some(url.into());
        self
    }

    /// The directory the template catalogue is loaded from.
    pub fn templates(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.templates = Some(dir.into());
        self
    }

    /// The template catalogue, built in code (instead of `templates`).
    pub fn catalogue(mut self, catalogue: Catalogue) -> Self {
        self.catalogue = Some(catalogue);
        self
    }

    /// Where task directories live (`tasks.root`).
    pub fn root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.tasks.root = dir.into();
        self
    }

    /// The task service's settings.
    pub fn tasks_config(mut self, config: TasksConfig) -> Self {
        self.config.tasks = config;
        self
    }

    /// Object storage for task inputs and outputs at `url` (a directory, `file://`,
    /// `s3://…`), with its catalog in the history database.
    pub fn storage(mut self, url: impl Into<String>) -> Self {
        let mut storage = self.config.storage.take().unwrap_or_default();
        storage.url = url.into();
        self.config.storage = Some(storage);
        self
    }

    /// The executor, instead of the configured one.
    pub fn executor(mut self, executor: impl Executor) -> Self {
        self.executor = Some(Arc::new(executor));
        self
    }

    /// The local executor, instead of the configured one, shared with the caller (who
    /// may ask it about GPUs and cgroups); monitoring labels each GPU with the task
    /// this executor gave it to.
    #[cfg(all(unix, feature = "local"))]
    pub fn local_executor(mut self, executor: Arc<ops_tasks::local::LocalExecutor>) -> Self {
        self.gpu_assignments = Some(local_gpus(executor.clone()));
        self.executor = Some(executor);
        self
    }

    /// A function called on every event `trigger` selects (at least once, with
    /// retries, then dead letters).
    pub fn function(mut self, trigger: Trigger, function: impl Function) -> Self {
        self.functions.push((trigger, Arc::new(function)));
        self
    }

    /// A webhook function.
    pub fn webhook(mut self, webhook: WebhookEntry) -> Self {
        self.config.webhooks.push(webhook);
        self
    }

    /// The budget gate asked before admitted tasks start.
    pub fn budget_gate(mut self, gate: impl BudgetGate) -> Self {
        self.budget = Some(Arc::new(gate));
        self
    }

    /// No coordinator in this process (an API front end): tasks are submitted and read
    /// here, and run by coordinators sharing the history store.
    pub fn submit_only(mut self) -> Self {
        self.submit_only = true;
        self
    }

    /// Checks the configuration (every problem at once), opens the backends and starts
    /// the task service and the functions.
    pub async fn start(self) -> Result<Platform> {
        let config = self.config;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(Error::config(problems));
        }
        let catalogue = match (self.catalogue, &config.templates) {
            (Some(catalogue), _) => catalogue,
            (None, Some(dir)) => Catalogue::load_dir(dir)?,
            (None, None) => {
                tracing::warn!("no templates configured: the catalogue is empty");
                Catalogue::new()
            }
        };
        let backends = backends::open(&config.history, config.events.as_deref()).await?;
        tracing::info!(
            history = %backends.history_url,
            events = backends.events_url.as_deref().unwrap_or("outbox"),
            "backends open"
        );
        // Fleets: providers and specs checked now, so that a bad inventory or a missing
        // token stops the start with every problem named.
        #[cfg(feature = "provision")]
        let fleets = match &config.provision {
            Some(provision) => Some(ops_provision::config::Fleets::from_config(
                provision,
                backends.fleet_store.clone(),
            )?),
            None => None,
        };
        let storage = match &config.storage {
            Some(storage) => Some(Storage::from_config(
                storage,
                backends.storage_catalog.clone(),
            )?),
            None => None,
        };
        let mut tasks = Tasks::builder()
            .catalogue(catalogue)
            .history(backends.history.clone())
            .config(config.tasks.clone());
        let mut routes = self.functions;
        #[cfg(feature = "monitor")]
        let task_metrics = config.monitor.as_ref().map(crate::monitoring::task_metrics);
        #[cfg(feature = "monitor")]
        if let Some(metrics) = &task_metrics {
            routes.push((
                Trigger::on("*"),
                Arc::new(metrics.clone()) as Arc<dyn Function>,
            ));
        }
        let mut gpu_assignments: Option<GpuAssignments> = self.gpu_assignments;
        // Set once the task service has started, for functions that act on tasks.
        let started: Arc<std::sync::OnceLock<Tasks>> = Arc::default();
        let cost_book = match config.billing.as_ref().and_then(|b| b.costs.as_ref()) {
            Some(path) => Some(Arc::new(ops_billing::CostBook::load(path)?)),
            None => None,
        };
        let payments = match &config.billing {
            Some(b) => Some(crate::billing::payment_provider(b.payments.as_ref())?),
            None => None,
        };
        let billing = match &config.billing {
            Some(billing) => {
                let book = Arc::new(ops_billing::PriceBook::load(&billing.prices)?);
                let budgets = ops_billing::Budgets::new(backends.ledger.clone(), book.clone())
                    .default_hold(billing.default_hold)
                    .limits(billing.limits.clone())?;
                routes.push((
                    Trigger::on("*"),
                    Arc::new(ops_billing::BillingFunction::new(
                        ops_billing::Metering::new((*book).clone()),
                        backends.usage.clone(),
                        budgets.clone(),
                    )) as Arc<dyn Function>,
                ));
                if billing.on_exhausted == crate::config::OnExhausted::Cancel {
                    routes.push((
                        Trigger::on(ops_core::event_types::BILLING_BUDGET_EXHAUSTED),
                        Arc::new(crate::billing::CancelOnExhausted::new(started.clone()))
                            as Arc<dyn Function>,
                    ));
                }
                Some(budgets)
            }
            None => None,
        };
        match (self.budget, &billing) {
            (Some(gate), billing) => {
                if billing.is_some() {
                    tracing::warn!("a budget gate was given: it replaces [billing]'s credit check");
                }
                tasks = tasks.budget_gate(gate);
            }
            (None, Some(budgets)) => {
                tasks = tasks.budget_gate(crate::billing::BillingGate(budgets.clone()));
            }
            (None, None) => {}
        }
        if self.submit_only {
            tasks = tasks.submit_only();
        } else {
            let executor = match self.executor {
                Some(executor) => executor,
                None => {
                    let (executor, gpus) = configured_executor(&config).await?;
                    gpu_assignments = gpus;
                    executor
                }
            };
            tasks = match &storage {
                Some(storage) => tasks.executor(StagingExecutor::new(
                    executor,
                    StorageStaging(storage.clone()),
                )),
                None => tasks.executor(executor),
            };
        }
        let tasks = tasks.start().await?;
        let _ = started.set(tasks.clone());
        let retention = storage
            .as_ref()
            .filter(|_| {
                config
                    .storage
                    .as_ref()
                    .is_some_and(|s| !s.retention.is_empty())
            })
            .map(|s| s.spawn_retention(STORAGE_RETENTION_INTERVAL));

        let dead_letters: Arc<dyn DeadLetters> = match config.dead_letters {
            DeadLetterStore::Durable => backends.dead_letters.clone(),
            DeadLetterStore::Memory => Arc::new(InMemoryDeadLetters::new()),
        };
        for hook in &config.webhooks {
            routes.push((hook.trigger(), webhook_function(hook)?));
        }
        let dispatcher = if routes.is_empty() {
            None
        } else {
            let mut builder = Dispatcher::builder(backends.events.clone())
                .config(config.dispatcher.clone())
                .dead_letters(dead_letters.clone());
            for (trigger, function) in routes {
                builder = builder.route(trigger, function);
            }
            let dispatcher = builder.build()?;
            let running = dispatcher.start().await?;
            Some((dispatcher, running))
        };
        #[cfg(feature = "monitor")]
        let monitoring = match (&task_metrics, &config.monitor) {
            (Some(metrics), Some(monitor)) => {
                let started = crate::monitoring::start(
                    monitor,
                    metrics,
                    &tasks,
                    dispatcher.as_ref().map(|(d, _)| d),
                    backends
                        .events_url
                        .is_some()
                        .then(|| (backends.outbox.clone(), crate::backends::RELAY_SUBSCRIPTION)),
                    gpu_assignments.take(),
                )
                .await;
                match started {
                    Ok(monitoring) => Some(monitoring),
                    Err(e) => {
                        tasks.shutdown().await;
                        if let Some((_, running)) = dispatcher {
                            running.shutdown().await;
                        }
                        backends.shutdown().await;
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        drop(gpu_assignments);
        let grant_expiry = billing
            .as_ref()
            .map(|b| crate::billing::spawn_grant_expiry(b.clone(), GRANT_EXPIRY_INTERVAL));
        Ok(Platform {
            tasks,
            storage,
            billing,
            cost_book,
            payments,
            backends,
            dead_letters,
            dispatcher,
            retention,
            grant_expiry,
            #[cfg(feature = "monitor")]
            monitoring,
            #[cfg(feature = "provision")]
            fleets,
            shutdown_grace: config.shutdown_grace,
        })
    }
}

#[cfg(feature = "webhook")]
fn webhook_function(hook: &WebhookEntry) -> Result<Arc<dyn Function>> {
    let secret = hook
        .resolved_secret()
        .map_err(|e| Error::config(vec![format!("webhooks ({}): {e}", hook.name)]))?;
    let mut builder =
        ops_events::webhook::WebhookFunction::builder(&hook.name, &hook.url).timeout(hook.timeout);
    if let Some(secret) = secret {
        builder = builder.secret(secret);
    }
    for (name, value) in &hook.headers {
        builder = builder.header(name, value);
    }
    Ok(Arc::new(builder.build()?))
}

#[cfg(not(feature = "webhook"))]
fn webhook_function(hook: &WebhookEntry) -> Result<Arc<dyn Function>> {
    Err(Error::config(vec![format!(
        "webhooks ({}): this build has no webhook support (enable the `webhook` feature of ops)",
        hook.name
    )]))
}

/// Who holds which GPU now (GPU id as the executor names it, task).
pub(crate) type GpuAssignments = Arc<dyn Fn() -> Vec<(String, ops_core::TaskId)> + Send + Sync>;

/// Who holds which of `executor`'s GPUs.
#[cfg(all(unix, feature = "local"))]
fn local_gpus(executor: Arc<ops_tasks::local::LocalExecutor>) -> GpuAssignments {
    Arc::new(move || {
        executor
            .gpu_holders()
            .into_iter()
            .map(|(device, task, _)| (device.id(), task))
            .collect()
    })
}

/// The executor the configuration asks for: Kubernetes when `[kube]` is set, else the
/// local executor (with its GPU assignment, for monitoring).
#[allow(clippy::unused_async)]
async fn configured_executor(
    config: &PlatformConfig,
) -> Result<(Arc<dyn Executor>, Option<GpuAssignments>)> {
    #[cfg(feature = "kube")]
    if let Some(kube) = &config.kube {
        let executor = ops_tasks::kube::KubeExecutor::connect(kube.clone()).await?;
        tracing::info!(server = %executor.server(), "running tasks on Kubernetes");
        return Ok((Arc::new(executor), None));
    }
    #[cfg(all(unix, feature = "local"))]
    {
        let executor = Arc::new(ops_tasks::local::LocalExecutor::new(
            config.executor.clone(),
        )?);
        tracing::info!(
            cgroups = executor.cgroup_mode().as_str(),
            "running tasks on this machine"
        );
        let gpus = local_gpus(executor.clone());
        Ok((executor, Some(gpus)))
    }
    #[cfg(not(all(unix, feature = "local")))]
    {
        let _ = config;
        Err(Error::config(vec![
            "executor: this build has no executor (enable the `local` or `kube` feature of ops, \
             or give one with PlatformBuilder::executor)"
                .to_owned(),
        ]))
    }
}
