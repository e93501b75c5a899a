//! The [`Tasks`] service: a [`TenantTasks`] handle per tenant (submit, get, list,
//! cancel, logs, watch — everything a platform's API layer needs, each call scoped to
//! that tenant) and an [`Admin`] handle for operators.

mod config;
mod coordinator;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{Stream, StreamExt};
use ops_core::{
    Environment, Event, Labels, Reason, TaskEventData, TaskId, TaskStatus, Tenant, Usage,
    event_types,
};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use config::{CoordinatorConfig, RetentionPolicy, TasksConfig};

use crate::admission::{AdmissionPolicy, BudgetGate, QueueInfo, Request, TenantUsage, WaitReason};
use crate::history::{
    ChangeBatch, HistoryStore, Lease, OutputRecord, TaskPage, TaskQuery, TaskRecord, Transition,
    TransitionRecord,
};
use crate::history::{StatsQuery, TemplateStats};
use crate::template::Catalogue;
use crate::{Error, Executor, LaunchSpec, LogStream, Result};
use coordinator::{Command, Coordinator};

/// A request to run a task from a template. Who submits is not part of it: a request
/// is submitted through the submitting tenant's handle ([`Tasks::tenant`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SubmitRequest {
    /// Template name in the catalogue.
    pub template: String,
    /// Parameters, checked against the template's JSON Schema.
    #[serde(default)]
    pub parameters: serde_json::Value,
    /// Environment; the configured default when `None`.
    #[serde(default)]
    pub environment: Option<Environment>,
    /// Labels, merged over the template's.
    #[serde(default)]
    pub labels: Labels,
    /// Overrides the template's priority.
    #[serde(default)]
    pub priority: Option<i32>,
}

impl SubmitRequest {
    /// A request for `template`, with no parameters.
    pub fn new(template: impl Into<String>) -> Self {
        Self {
            template: template.into(),
            parameters: serde_json::Value::Object(Default::default()),
            environment: None,
            labels: Labels::new(),
            priority: None,
        }
    }
    /// Sets the parameters.
    pub fn parameters(mut self, parameters: serde_json::Value) -> Self {
        self.parameters = parameters;
        self
    }
    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    /// Sets the environment.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }
    /// Overrides the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
}

/// A boxed stream, as returned by [`TenantTasks::watch`] and [`TenantTasks::follow_logs`].
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// Mean run time by template, per tenant, with when it was read.
type RunMeans = HashMap<Tenant, (std::time::Instant, HashMap<String, Duration>)>;

struct Inner {
    catalogue: Catalogue,
    history: Arc<dyn HistoryStore>,
    /// `None` for a submit-only service (no coordinator in this process).
    executor: Option<Arc<dyn Executor>>,
    config: TasksConfig,
    /// Admission settings over the executor's nodes (without nodes when submit-only).
    policy: Arc<AdmissionPolicy>,
    /// This process's coordinator id (owner of the tasks it submits and runs).
    owner: Option<String>,
    commands: Option<mpsc::UnboundedSender<Command>>,
    live: broadcast::Sender<Event>,
    coordinator: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pruner: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The locked `<root>/.coordinator.lock` (unlocked when dropped).
    root_lock: std::sync::Mutex<Option<std::fs::File>>,
    /// Mean run time per template, by tenant, from history (refreshed each minute).
    run_means: std::sync::Mutex<RunMeans>,
}

/// The task service: one per platform process. Cheap to clone.
///
/// What a tenant may do goes through its handle, [`Tasks::tenant`] (like
/// `Storage::scope` in ops-storage and kube's `Api::namespaced`): every method of a
/// [`TenantTasks`] is scoped to that tenant and answers [`Error::TaskNotFound`] for
/// another tenant's task, so an API layer cannot leak tasks across tenants by mistake.
/// Operator-wide calls (every tenant's events, usage, pause, retention) are on
/// [`Tasks::admin`].
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("executor", &self.inner.executor.as_ref().map(|e| e.name()))
            .field("coordinator", &self.inner.owner)
            .field("templates", &self.inner.catalogue.len())
            .finish()
    }
}

/// Builds a [`Tasks`] service; see [`Tasks::builder`].
#[derive(Default)]
pub struct TasksBuilder {
    catalogue: Option<Catalogue>,
    history: Option<Arc<dyn HistoryStore>>,
    executor: Option<Arc<dyn Executor>>,
    config: TasksConfig,
    submit_only: bool,
    budget: Option<Arc<dyn BudgetGate>>,
}

impl TasksBuilder {
    /// The templates tasks are made from (required).
    pub fn catalogue(mut self, catalogue: Catalogue) -> Self {
        self.catalogue = Some(catalogue);
        self
    }
    /// Where tasks and their events are stored (required).
    pub fn history(mut self, history: impl HistoryStore) -> Self {
        self.history = Some(Arc::new(history));
        self
    }
    /// What runs the tasks (required).
    pub fn executor(mut self, executor: impl Executor) -> Self {
        self.executor = Some(Arc::new(executor));
        self
    }
    /// The budget hook: asked before each admitted task starts; a refusal keeps the
    /// task queued with the gate's reason (see [`TenantTasks::explain`]).
    pub fn budget_gate(mut self, gate: impl BudgetGate) -> Self {
        self.budget = Some(Arc::new(gate));
        self
    }
    /// Settings.
    pub fn config(mut self, config: TasksConfig) -> Self {
        self.config = config;
        self
    }
    /// No coordinator in this process: the service submits, reads, watches and
    /// cancels, while coordinators elsewhere (sharing the history store) claim and run
    /// the work — the shape of an API front end. No executor is needed; requests are
    /// not checked against a machine's capacity here.
    pub fn submit_only(mut self) -> Self {
        self.submit_only = true;
        self
    }

    /// Starts the service: takes this coordinator's lease, recovers the tasks it owns
    /// (re-attaching to running ones or failing them with a reason), then starts
    /// scheduling.
    pub async fn start(self) -> Result<Tasks> {
        let missing = |what| Error::MissingPart { what };
        let catalogue = self.catalogue.ok_or_else(|| missing("a catalogue"))?;
        let history = self.history.ok_or_else(|| missing("a history store"))?;
        let problems = self.config.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidConfig { problems });
        }
        let (live, _) = broadcast::channel(4096);
        if self.submit_only {
            if !history.shared() {
                return Err(Error::Unsupported {
                    what: "a submit-only service on a history store without leases: no \
                           coordinator would claim its tasks (use SqliteHistory, \
                           PostgresHistory or a store that implements Leases)"
                        .into(),
                });
            }
            let policy = Arc::new(AdmissionPolicy::new(self.config.admission.clone(), &[])?);
            check_default_environment(&policy, &self.config)?;
            let tasks = Tasks {
                inner: Arc::new(Inner {
                    catalogue,
                    history,
                    executor: None,
                    config: self.config,
                    policy,
                    owner: None,
                    commands: None,
                    live,
                    coordinator: std::sync::Mutex::new(None),
                    pruner: std::sync::Mutex::new(None),
                    root_lock: std::sync::Mutex::new(None),
                    run_means: Default::default(),
                }),
            };
            tasks.start_pruner();
            return Ok(tasks);
        }
        let executor = self
            .executor
            .ok_or_else(|| missing("an executor (or .submit_only())"))?;
        let policy = Arc::new(AdmissionPolicy::new(
            self.config.admission.clone(),
            &executor.nodes(),
        )?);
        check_default_environment(&policy, &self.config)?;
        let root = &self.config.root;
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let root_lock = lock_root(root)?;
        // The default id belongs to this machine and root, whose lock we hold: any
        // earlier holder of that id is dead, so its lease may be taken at once.
        let (owner, force) = match &self.config.coordinator.id {
            Some(id) => (id.clone(), false),
            None => (default_coordinator_id(root), true),
        };
        let lease = Lease::new(owner.clone(), self.config.coordinator.lease_ttl);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let mut coordinator = Coordinator::new(
            history.clone(),
            executor.clone(),
            self.config.clone(),
            live.clone(),
            command_rx,
            lease,
            coordinator::AdmissionGate {
                policy: policy.clone(),
                budget: self.budget,
            },
        );
        coordinator.acquire(force).await?;
        coordinator.resync().await?;
        let handle = tokio::spawn(coordinator.run());
        let tasks = Tasks {
            inner: Arc::new(Inner {
                catalogue,
                history,
                executor: Some(executor),
                config: self.config,
                policy,
                owner: Some(owner),
                commands: Some(commands),
                live,
                coordinator: std::sync::Mutex::new(Some(handle)),
                pruner: std::sync::Mutex::new(None),
                root_lock: std::sync::Mutex::new(Some(root_lock)),
                run_means: Default::default(),
            }),
        };
        tasks.start_pruner();
        Ok(tasks)
    }
}

/// The default environment must exist when environments are configured.
fn check_default_environment(policy: &AdmissionPolicy, config: &TasksConfig) -> Result<()> {
    let envs = &policy.config().environments;
    if !envs.is_empty() && !envs.contains_key(config.default_environment.as_str()) {
        return Err(Error::config(
            "default_environment",
            format!(
                "{:?} is not among admission.environments ({})",
                config.default_environment.as_str(),
                envs.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(())
}

/// What admission needs to know about a task.
pub(crate) fn request_of(record: &TaskRecord) -> Request {
    Request::new(
        record.tenant.clone(),
        record.environment.clone(),
        record.spec.resources.clone(),
    )
    .priority(record.priority)
    .scavenger(record.spec.scavenger)
}

/// Holds `<root>/.coordinator.lock` so that two live processes never coordinate the
/// same root (and so that a restart knows its predecessor is dead).
fn lock_root(root: &std::path::Path) -> Result<std::fs::File> {
    let path = root.join(".coordinator.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(e) => Err(Error::RootInUse {
            root: root.to_path_buf(),
            lock: path,
            message: e.to_string(),
        }),
    }
}

/// This machine's name: the kernel's (Linux), `$HOSTNAME`, or `localhost`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `<hostname>:<absolute root>`.
fn default_coordinator_id(root: &std::path::Path) -> String {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    format!("{}:{}", hostname(), root.display())
}

/// The payload of a task's events, from its record: on final events its usage, and the
/// part of it preempted attempts consumed when there is one.
pub(crate) fn task_data(record: &TaskRecord) -> TaskEventData {
    let mut data = TaskEventData::new(
        record.id,
        record.tenant.as_str(),
        record.environment.as_str(),
        record.template.as_str(),
        record.status,
        record.attempt,
    );
    data.labels = record.labels.clone();
    data.reason = record.reason;
    data.message = record.message.clone();
    data.exit_code = record.exit_code;
    if record.status.is_final() {
        data.usage = Some(record.usage);
        data.preempted_usage =
            (!record.preempted_usage.is_zero()).then_some(record.preempted_usage);
    }
    if record.status.is_final() || record.status == TaskStatus::Running {
        data.resources = Some(record.spec.resources.clone());
    }
    data.scavenger = record.spec.scavenger;
    data
}

pub(crate) fn task_event(source: &str, ty: &str, record: &TaskRecord) -> Event {
    event_with(source, ty, record, &task_data(record))
}

/// The event of a change that ends an attempt (preempted, retrying or final): the
/// task's payload with the usage of that attempt, which `record.usage` already counts,
/// and the resources it held (what billing prices the attempt by).
pub(crate) fn attempt_event(
    source: &str,
    ty: &str,
    record: &TaskRecord,
    attempt_usage: Usage,
) -> Event {
    let mut data = task_data(record);
    data.attempt_usage = Some(attempt_usage);
    data.resources = Some(record.spec.resources.clone());
    event_with(source, ty, record, &data)
}

pub(crate) fn event_with(
    source: &str,
    ty: &str,
    record: &TaskRecord,
    data: &TaskEventData,
) -> Event {
    let builder = Event::builder(ty, source)
        .subject(record.id.to_string())
        .tenant(record.tenant.as_str());
    match serde_json::to_value(data) {
        Ok(json) => builder.json(json),
        // TaskEventData always serializes; keep the event rather than lose it.
        Err(e) => {
            tracing::error!(task_id = %record.id, error = %e, "task event data did not serialize");
            builder
        }
    }
    .build()
}

impl Tasks {
    fn start_pruner(&self) {
        let Some(policy) = self.inner.config.retention.clone() else {
            return;
        };
        let pruner = self.admin();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(policy.interval);
            loop {
                tick.tick().await;
                if let Err(e) = pruner.prune(policy.max_age).await {
                    tracing::warn!(error = %e, "retention pruning failed; will retry");
                }
            }
        });
        *self.inner.pruner.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    /// Starts building a service.
    pub fn builder() -> TasksBuilder {
        TasksBuilder::default()
    }

    /// The handle of one tenant: every call through it sees and touches only that
    /// tenant's tasks (another tenant's task is [`Error::TaskNotFound`]).
    pub fn tenant(&self, tenant: &Tenant) -> TenantTasks {
        TenantTasks {
            tasks: self.clone(),
            tenant: tenant.clone(),
        }
    }

    /// The operator's handle: every tenant's events, usage, pause and resume,
    /// retention, the history store.
    pub fn admin(&self) -> Admin {
        Admin {
            tasks: self.clone(),
        }
    }

    /// The template catalogue (what every tenant may submit).
    pub fn catalogue(&self) -> &Catalogue {
        &self.inner.catalogue
    }

    /// Validates and renders `requests` of `tenant` and stores them in one
    /// transaction, each with its `submitted` and `queued` events; hands them to this
    /// process's coordinator.
    async fn submit_all(
        &self,
        tenant: &Tenant,
        requests: Vec<SubmitRequest>,
    ) -> Result<Vec<TaskId>> {
        let capacity = self.inner.executor.as_ref().map(|e| e.capacity());
        // Tasks submitted here are owned (and run) by this process's coordinator; a
        // submit-only service leaves them for any coordinator to claim.
        let mut batch = ChangeBatch {
            owner: self.inner.owner.clone(),
            ..ChangeBatch::default()
        };
        let single = requests.len() == 1;
        for (index, request) in requests.into_iter().enumerate() {
            let mut record = match self.prepare(tenant, request, capacity.as_ref()) {
                Ok(record) => record,
                Err(e) if single => return Err(e),
                Err(e) => {
                    return Err(Error::InvalidRequest {
                        index,
                        source: Box::new(e),
                    });
                }
            };
            let submitted = {
                let mut data = task_data(&record);
                data.status = TaskStatus::Submitted;
                event_with(
                    &self.inner.config.source,
                    event_types::TASK_SUBMITTED,
                    &record,
                    &data,
                )
            };
            let queued = task_event(&self.inner.config.source, event_types::TASK_QUEUED, &record);
            record.owner = self.inner.owner.clone();
            batch.inserts.push((record, vec![submitted, queued]));
        }
        self.inner.history.commit(&batch).await?;
        let ids = batch.inserts.iter().map(|(r, _)| r.id).collect();
        for event in batch.events() {
            let _ = self.inner.live.send(event.clone());
        }
        if self.inner.commands.is_some() {
            let records = batch.inserts.into_iter().map(|(r, _)| r).collect();
            self.send("submit tasks", Command::Enqueue(records))?;
        }
        Ok(ids)
    }

    fn prepare(
        &self,
        tenant: &Tenant,
        request: SubmitRequest,
        capacity: Option<&ops_core::Resources>,
    ) -> Result<TaskRecord> {
        let template = self.inner.catalogue.get(&request.template)?;
        let rendered = template.render(&request.parameters)?;
        if let Some(capacity) = capacity {
            let shortfalls = template.resources().shortfalls(capacity);
            if !shortfalls.is_empty() {
                return Err(Error::ExceedsCapacity { shortfalls });
            }
        }
        let id = TaskId::new();
        let task_dir = self
            .inner
            .config
            .root
            .join(tenant.as_str())
            .join(id.to_string());
        let mut labels = template.labels().clone();
        labels.extend(request.labels);
        let spec = LaunchSpec {
            task_id: id,
            attempt: 0,
            tenant: tenant.clone(),
            argv: rendered.argv,
            env: rendered.env,
            task_dir,
            workdir: rendered.workdir,
            resources: template.resources().clone(),
            timeout: template.timeout(),
            output_globs: rendered.output_globs,
            inputs: rendered.inputs,
            environment: Environment::default(),
            image: template.image().map(str::to_owned),
            scavenger: template.scavenger(),
            run_as_root: template.run_as_root(),
            node_pool: None,
        };
        let environment = request
            .environment
            .unwrap_or_else(|| self.inner.config.default_environment.clone());
        let spec = LaunchSpec {
            environment: environment.clone(),
            ..spec
        };
        let priority = request.priority.unwrap_or(template.priority());
        let record = TaskRecord {
            id,
            tenant: tenant.clone(),
            environment,
            template: template.name().to_owned(),
            status: TaskStatus::Queued,
            reason: None,
            message: None,
            exit_code: None,
            priority,
            attempt: 0,
            max_attempts: template.retries().max_attempts.max(1),
            labels,
            parameters: rendered.parameters,
            spec,
            retry: template.retries().clone(),
            run_handle: None,
            usage: Usage::default(),
            preempted_usage: Usage::default(),
            submitted_at: Utc::now(),
            started_at: None,
            finished_at: None,
            not_before: None,
            owner: None,
        };
        self.inner.policy.check(&request_of(&record))?;
        Ok(record)
    }

    fn send(&self, operation: &'static str, command: Command) -> Result<()> {
        let commands = self
            .inner
            .commands
            .as_ref()
            .ok_or(Error::NotCoordinator { operation })?;
        commands.send(command).map_err(|_| Error::ShutDown)
    }

    /// Sends a command that carries a reply channel, and waits for the reply.
    async fn ask<T>(
        &self,
        operation: &'static str,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(operation, command(reply))?;
        rx.await.map_err(|_| Error::ShutDown)
    }

    fn log_path(&self, record: &TaskRecord, stream: LogStream) -> PathBuf {
        match &self.inner.executor {
            Some(executor) => executor.log_path(&record.spec.task_dir, stream),
            None => crate::taskdir::log_path(&record.spec.task_dir, stream),
        }
    }

    async fn estimate_start(
        &self,
        record: &TaskRecord,
        info: &QueueInfo,
    ) -> Option<chrono::DateTime<Utc>> {
        let now = Utc::now();
        let waves = match info.reason {
            WaitReason::Quota | WaitReason::Budget => return None,
            WaitReason::Preempting => {
                let grace = self.inner.policy.grace() + Duration::from_secs(1);
                return Some(now + chrono::Duration::from_std(grace).ok()?);
            }
            WaitReason::Priority => 0,
            WaitReason::Capacity | WaitReason::IdleCapacity => 1,
        } + info.ahead / info.running_in_segment.max(1);
        let mean = self.mean_run_time(&record.tenant, &record.template).await?;
        let wait = mean.checked_mul(u32::try_from(waves).unwrap_or(u32::MAX))?;
        Some(now + chrono::Duration::from_std(wait).ok()?)
    }

    /// The mean run time of `template`'s tasks of `tenant` over the last week.
    async fn mean_run_time(&self, tenant: &Tenant, template: &str) -> Option<Duration> {
        const FRESH: Duration = Duration::from_secs(60);
        let cached = {
            let means = self
                .inner
                .run_means
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            means
                .get(tenant)
                .filter(|(at, _)| at.elapsed() < FRESH)
                .map(|(_, m)| m.get(template).copied())
        };
        if let Some(mean) = cached {
            return mean;
        }
        let since = Utc::now() - chrono::Duration::days(7);
        let stats = match self
            .inner
            .history
            .stats(tenant, &StatsQuery::new().since(since))
            .await
        {
            Ok(stats) => stats,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "no run-time statistics for the start estimate");
                return None;
            }
        };
        let means: HashMap<String, Duration> = stats
            .into_iter()
            .filter(|s| s.tasks > 0 && !s.run_mean.is_zero())
            .map(|s| (s.template, s.run_mean))
            .collect();
        let mean = means.get(template).copied();
        self.inner
            .run_means
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.clone(), (std::time::Instant::now(), means));
        mean
    }

    /// Stops scheduling. Running tasks are left running; a later start re-attaches.
    /// Queued tasks are handed back to the store for any coordinator to claim.
    pub async fn shutdown(&self) {
        tracing::trace!("shutdown requested");
        if let Some(commands) = &self.inner.commands {
            let _ = commands.send(Command::Shutdown);
        }
        let handle = self
            .inner
            .coordinator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        tracing::trace!("coordinator joined");
        if let Some(p) = self
            .inner
            .pruner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            p.abort();
        }
        self.inner
            .root_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// One tenant's view of the [`Tasks`] service, from [`Tasks::tenant`]: every method
/// is scoped to that tenant. A task of another tenant is [`Error::TaskNotFound`]
/// through every method, exactly as a task that does not exist. Cheap to clone.
#[derive(Clone)]
pub struct TenantTasks {
    tasks: Tasks,
    tenant: Tenant,
}

impl std::fmt::Debug for TenantTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTasks")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TenantTasks {
    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// Validates, renders and stores one task; returns its id. The task is stored with
    /// its `submitted` and `queued` events in one transaction.
    pub async fn submit(&self, request: SubmitRequest) -> Result<TaskId> {
        let ids = self.tasks.submit_all(&self.tenant, vec![request]).await?;
        // One request stored gives one id.
        ids.first().copied().ok_or(Error::ShutDown)
    }

    /// Submits many tasks in one transaction (all or none). An invalid request fails
    /// the batch with [`Error::InvalidRequest`], which carries the request's index and
    /// its own typed error (when there are several requests).
    pub async fn submit_many(&self, requests: Vec<SubmitRequest>) -> Result<Vec<TaskId>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        self.tasks.submit_all(&self.tenant, requests).await
    }

    /// A task of the tenant.
    pub async fn get(&self, id: TaskId) -> Result<TaskRecord> {
        match self.tasks.inner.history.get(id).await? {
            Some(r) if r.tenant == self.tenant => Ok(r),
            _ => Err(Error::TaskNotFound(id)),
        }
    }

    /// A page of the tenant's tasks, newest first.
    pub async fn list(&self, query: &TaskQuery) -> Result<TaskPage> {
        self.tasks.inner.history.list(&self.tenant, query).await
    }

    /// A task's events so far.
    pub async fn events(&self, id: TaskId) -> Result<Vec<Event>> {
        self.get(id).await?;
        self.tasks.inner.history.events(id).await
    }

    /// A task's transitions so far.
    pub async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionRecord>> {
        self.get(id).await?;
        self.tasks.inner.history.transitions(id).await
    }

    /// A task's outputs so far.
    pub async fn outputs(&self, id: TaskId) -> Result<Vec<OutputRecord>> {
        self.get(id).await?;
        self.tasks.inner.history.outputs(id).await
    }

    /// Absolute path of an output (checked to stay inside the task's directory).
    pub async fn output_path(&self, id: TaskId, path: &str) -> Result<PathBuf> {
        let record = self.get(id).await?;
        crate::taskdir::resolve_within(&record.spec.task_dir, std::path::Path::new(path))
    }

    /// Cancels a task: a queued or retrying one at once, a running one by killing it
    /// (its final `cancelled` event follows). Cancelling a finished task is a no-op.
    ///
    /// A task owned by another coordinator (sharing the store) is cancelled by that
    /// coordinator at its next lease renewal; an unowned queued one at once, here.
    pub async fn cancel(&self, id: TaskId) -> Result<TaskRecord> {
        let record = self.get(id).await?;
        if record.status.is_final() {
            return Ok(record);
        }
        // A store without leases serves one coordinator: every task is its own.
        let ours = record.owner.is_some() && record.owner == self.tasks.inner.owner
            || (self.tasks.inner.commands.is_some() && !self.tasks.inner.history.shared());
        if ours {
            self.tasks
                .ask("cancel a task", |reply| Command::Cancel(id, reply))
                .await??;
            return self.get(id).await;
        }
        // Recorded first, so that a coordinator claiming the task meanwhile still sees it.
        self.tasks.inner.history.request_cancel(id).await?;
        if record.owner.is_none()
            && matches!(record.status, TaskStatus::Submitted | TaskStatus::Queued)
        {
            let from = record.status;
            let mut next = record.clone();
            next.status = TaskStatus::Cancelled;
            next.reason = Some(Reason::Cancelled);
            next.message = Some("cancelled by user".into());
            next.finished_at = Some(Utc::now());
            let event = task_event(
                &self.tasks.inner.config.source,
                event_types::TASK_CANCELLED,
                &next,
            );
            let mut batch = ChangeBatch::default();
            batch
                .transitions
                .push(Transition::new(from, next, event.clone()));
            // Applies only if the task is still unowned and queued; otherwise its new
            // owner sees the request.
            if self.tasks.inner.history.commit(&batch).await?.first() == Some(&true) {
                let _ = self.tasks.inner.live.send(event);
            }
        }
        self.get(id).await
    }

    /// Everything a stream of a task has written so far.
    pub async fn logs(&self, id: TaskId, stream: LogStream) -> Result<Vec<u8>> {
        let record = self.get(id).await?;
        let path = self.tasks.log_path(&record, stream);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// A stream's output as it is written, until the task is final and all is read.
    pub async fn follow_logs(
        &self,
        id: TaskId,
        stream: LogStream,
    ) -> Result<BoxStream<Result<Vec<u8>>>> {
        let record = self.get(id).await?;
        let path = self.tasks.log_path(&record, stream);
        let this = self.clone();
        let finished = async move {
            if let Err(e) = this.wait(id).await {
                tracing::warn!(task_id = %id, error = %e, "follow_logs: could not watch the task");
            }
        };
        let chunks = crate::taskdir::follow_log(path.clone(), 0, finished);
        Ok(Box::pin(chunks.map(move |chunk| {
            chunk.map_err(|e| Error::io(path.clone(), e))
        })))
    }

    /// The task's events: those already recorded, then new ones as they are committed,
    /// ending after its final event.
    pub async fn watch(&self, id: TaskId) -> Result<BoxStream<Event>> {
        // Subscribe before reading history so that nothing falls in between.
        let mut live = self.tasks.inner.live.subscribe();
        let record = self.get(id).await?;
        let past = self.tasks.inner.history.events(id).await?;
        let history = self.tasks.inner.history.clone();
        let poll = self.tasks.inner.config.coordinator.poll;
        let (tx, rx) = mpsc::channel(64);
        let subject = id.to_string();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let mut seen = HashSet::new();
            // The task may have ended between reading its record and its events.
            let mut ended = record.status.is_final();
            for event in past {
                seen.insert(event.id);
                ended |= is_final_event(&event.ty);
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if ended {
                return;
            }
            loop {
                // Live events come from this process; events committed by other
                // coordinators sharing the store are found by polling history.
                let catch_up = tokio::select! {
                    received = live.recv() => match received {
                        Ok(e) => Some(vec![e]),
                        // Fell behind: catch up from history, which has everything.
                        Err(broadcast::error::RecvError::Lagged(_)) => None,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = ticker.tick() => None,
                };
                let batch = match catch_up {
                    Some(batch) => batch,
                    None => match history.events(id).await {
                        Ok(all) => all,
                        Err(e) => {
                            tracing::warn!(task_id = %id, error = %e, "watch: history read failed; retrying");
                            continue;
                        }
                    },
                };
                for event in batch {
                    if event.subject.as_deref() != Some(subject.as_str()) || !seen.insert(event.id)
                    {
                        continue;
                    }
                    let last = is_final_event(&event.ty);
                    if tx.send(event).await.is_err() || last {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Waits until a task is final and returns it.
    pub async fn wait(&self, id: TaskId) -> Result<TaskRecord> {
        use futures::StreamExt;
        let mut events = self.watch(id).await?;
        while events.next().await.is_some() {}
        self.get(id).await
    }

    /// Why a queued task of `tenant` waits: quota, capacity, priority, budget or (for
    /// scavenger work) idle capacity; its place in the queue; and an estimated start
    /// from the run times history records for its template. `None` when the task is
    /// not waiting in this process's queue (running, finished, retrying, or queued at
    /// another coordinator).
    pub async fn explain(&self, id: TaskId) -> Result<Option<Waiting>> {
        let record = self.get(id).await?;
        let Some(info) = self
            .tasks
            .ask("explain a queued task", |reply| Command::Explain(id, reply))
            .await?
        else {
            return Ok(None);
        };
        let estimated_start = self.tasks.estimate_start(&record, &info).await;
        Ok(Some(Waiting {
            info,
            estimated_start,
        }))
    }

    /// Wait-time, run-time, outcome and usage statistics per template of the tenant's
    /// tasks submitted in the query's time range, from history.
    pub async fn stats(&self, query: &StatsQuery) -> Result<Vec<TemplateStats>> {
        self.tasks.inner.history.stats(&self.tenant, query).await
    }
}

/// The operator's view of the [`Tasks`] service, from [`Tasks::admin`]: every tenant's
/// events and standing, pause and resume, retention, the history store. Not for
/// tenants. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    tasks: Tasks,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Any task by id, whatever its tenant.
    pub async fn get(&self, id: TaskId) -> Result<TaskRecord> {
        self.tasks
            .inner
            .history
            .get(id)
            .await?
            .ok_or(Error::TaskNotFound(id))
    }

    /// The history store.
    pub fn history(&self) -> &Arc<dyn HistoryStore> {
        &self.tasks.inner.history
    }

    /// This process's coordinator id (`None` for a submit-only service).
    pub fn coordinator_id(&self) -> Option<&str> {
        self.tasks.inner.owner.as_deref()
    }

    /// The executor's capacity (what admission will never exceed); zero for a
    /// submit-only service.
    pub fn capacity(&self) -> ops_core::Resources {
        self.tasks
            .inner
            .executor
            .as_ref()
            .map(|e| e.capacity())
            .unwrap_or_default()
    }

    /// The admission policy in force.
    pub fn admission_policy(&self) -> &Arc<AdmissionPolicy> {
        &self.tasks.inner.policy
    }

    /// Every event committed from now on by this process, for all tenants (progress
    /// displays, metrics).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Event> {
        self.tasks.inner.live.subscribe()
    }

    /// Number of tasks per status, for one tenant or all of them.
    pub async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>> {
        self.tasks.inner.history.count_by_status(tenant).await
    }

    /// Every tenant's standing per environment: resources in use, running, borrowed
    /// and queued tasks, dominant share.
    pub async fn usage(&self) -> Result<Vec<TenantUsage>> {
        self.tasks.ask("report usage", Command::Usage).await
    }

    /// Stops admitting queued tasks (submissions are still accepted and stored; running
    /// tasks go on). For maintenance, or to fill a queue before opening it.
    pub fn pause(&self) -> Result<()> {
        self.tasks.send("pause admission", Command::Pause(true))
    }

    /// Resumes admission after [`Admin::pause`].
    pub fn resume(&self) -> Result<()> {
        self.tasks.send("resume admission", Command::Pause(false))
    }

    /// Deletes tasks that finished more than `max_age` ago, with their directories.
    /// Returns how many were deleted.
    pub async fn prune(&self, max_age: Duration) -> Result<usize> {
        let cutoff = Utc::now()
            - chrono::Duration::from_std(max_age)
                .map_err(|e| Error::config("retention.max_age", e))?;
        let batch = self
            .tasks
            .inner
            .config
            .retention
            .as_ref()
            .map_or(1000, |r| r.batch);
        let mut total = 0;
        loop {
            let pruned = self.tasks.inner.history.prune(cutoff, batch).await?;
            if pruned.is_empty() {
                break;
            }
            total += pruned.len();
            for record in pruned {
                let dir = &record.task_dir;
                if let Err(e) = tokio::fs::remove_dir_all(dir).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(task_id = %record.id, dir = %dir.display(), error = %e, "could not remove task directory");
                }
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(deleted = total, "retention pruned finished tasks");
        }
        Ok(total)
    }
}

/// A queued task's standing, from [`TenantTasks::explain`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Waiting {
    /// Why it waits and where it stands.
    #[serde(flatten)]
    pub info: QueueInfo,
    /// When it may start, from the mean run time of its template's finished tasks and
    /// the tasks ahead of it; `None` without history to go on or while it waits for
    /// quota or budget (which no queue position predicts).
    pub estimated_start: Option<chrono::DateTime<Utc>>,
}

fn is_final_event(ty: &str) -> bool {
    matches!(
        ty,
        event_types::TASK_SUCCEEDED
            | event_types::TASK_FAILED
            | event_types::TASK_CANCELLED
            | event_types::TASK_TIMED_OUT
    )
}

pub(crate) fn reason_status(reason: Reason) -> TaskStatus {
    match reason {
        Reason::Completed => TaskStatus::Succeeded,
        Reason::TimedOut => TaskStatus::TimedOut,
        Reason::Cancelled => TaskStatus::Cancelled,
        _ => TaskStatus::Failed,
    }
}
