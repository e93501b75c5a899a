//! [`TaskMetrics`]: task, queue, quota, tenant, storage and billing metrics fed by
//! events.
//!
//! The metrics are kept by a function on the event bus ([`Function`]), not by the
//! executor: they are the same on every executor, and every process that runs one sees
//! the whole platform's work (several coordinators over one Postgres included). What a
//! task's events say — submitted, queued, started, retrying, preempted, finished, with
//! their times, reasons and requested resources — becomes:
//!
//! | family | labels |
//! |---|---|
//! | `ops_tasks` (gauge: tasks not finished) | `tenant`, `template`, `environment`, `state` |
//! | `ops_tasks_finished_total` | `tenant`, `template`, `environment`, `state` |
//! | `ops_task_attempts_total` (ended attempts) | `tenant`, `template`, `environment`, `reason` |
//! | `ops_task_preemptions_total` | `tenant`, `environment` |
//! | `ops_queue_depth`, `ops_queue_oldest_wait_seconds` | `environment`, `tier` |
//! | `ops_queue_wait_seconds` (histogram: queued → started) | `tenant`, `environment`, `tier` |
//! | `ops_task_run_seconds` (histogram: started → attempt end) | `tenant`, `template`, `environment` |
//! | `ops_quota_used`, `ops_quota_nominal` | `tenant`, `environment`, `resource` |
//! | `ops_capacity`, `ops_capacity_used` | `resource` |
//! | `ops_events_total` | `type` |
//! | `ops_storage_bytes`, `ops_storage_objects` | `tenant` |
//! | `ops_billing_budget_threshold_percent`, `ops_billing_budget_exhausted_total` | `tenant` |
//!
//! `tier` is `regular` or `scavenger`; `resource` is `cpu` (cores), `memory` (bytes)
//! or `gpu`. Label cardinality is bounded: the first [`max_tenants`] tenants and
//! [`max_templates`] templates seen keep their names, later ones are counted under
//! `other`.
//!
//! Delivery is at least once: a redelivered event (same id) is skipped. The state is
//! in memory: after a restart, counters start from zero (Prometheus' `rate` handles
//! resets) and a task that was live before is counted again from its next event on.
//!
//! [`max_tenants`]: TaskMetricsConfig::max_tenants
//! [`max_templates`]: TaskMetricsConfig::max_templates

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Event, Reason, Resources, TaskStatus, event_types};
use ops_events::{Function, FunctionError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family as PcFamily, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{CollectError, Collector, Descriptor, Family, MetricKind, MonitorBuilder};

/// The label value that tenants and templates beyond the caps are counted under.
pub const OTHER: &str = "other";

/// Settings of [`TaskMetrics`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TaskMetricsConfig {
    /// Tenants that keep their own label value; later ones are `other` (default 100).
    pub max_tenants: usize,
    /// Templates that keep their own label value; later ones are `other` (default 100).
    pub max_templates: usize,
    /// Bucket bounds of `ops_queue_wait_seconds`, in seconds, increasing.
    pub wait_buckets: Vec<f64>,
    /// Bucket bounds of `ops_task_run_seconds`, in seconds, increasing.
    pub run_buckets: Vec<f64>,
}

impl Default for TaskMetricsConfig {
    fn default() -> Self {
        Self {
            max_tenants: 100,
            max_templates: 100,
            wait_buckets: vec![
                0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                21600.0,
            ],
            run_buckets: vec![
                1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
                86400.0,
            ],
        }
    }
}

impl TaskMetricsConfig {
    /// Every problem, each naming its key under `prefix` (e.g. `monitor.tasks`).
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_tenants == 0 {
            out.push(format!("{prefix}.max_tenants: must be at least 1"));
        }
        if self.max_templates == 0 {
            out.push(format!("{prefix}.max_templates: must be at least 1"));
        }
        for (key, buckets) in [
            ("wait_buckets", &self.wait_buckets),
            ("run_buckets", &self.run_buckets),
        ] {
            if buckets.is_empty() {
                out.push(format!("{prefix}.{key}: needs at least one bound"));
            }
            if let Some(b) = buckets.iter().find(|b| !b.is_finite() || **b <= 0.0) {
                out.push(format!(
                    "{prefix}.{key}: {b} is not a positive number of seconds"
                ));
            }
            if buckets.windows(2).any(|w| w[0] >= w[1]) {
                out.push(format!(
                    "{prefix}.{key}: bounds must increase ({buckets:?})"
                ));
            }
        }
        out
    }
}

type Value = Arc<String>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    tenant: Value,
    template: Value,
    environment: Value,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    tenant: Value,
    template: Value,
    environment: Value,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    tenant: Value,
    template: Value,
    environment: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantEnvLabels {
    tenant: Value,
    environment: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    environment: Value,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    tenant: Value,
    environment: Value,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    tenant: Value,
    environment: Value,
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: Value,
}

/// Histograms with configured bounds.
#[derive(Clone, Debug)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What a task event says, read from its JSON without copying strings and without
/// parsing what this event does not need (a task's resources, on its start only).
struct View<'a> {
    tenant: &'a str,
    environment: &'a str,
    template: &'a str,
    status: TaskStatus,
    attempt: u32,
    reason: Option<Reason>,
    resources: Option<&'a serde_json::Value>,
    scavenger: bool,
}

impl<'a> View<'a> {
    fn read(data: &'a serde_json::Value) -> Result<Self, String> {
        let text = |key: &str| {
            data.get(key)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("no {key:?} string"))
        };
        let status = text("status")?
            .parse::<TaskStatus>()
            .map_err(|e| e.to_string())?;
        let reason = match data.get("reason").and_then(serde_json::Value::as_str) {
            Some(r) => Some(r.parse::<Reason>().map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Self {
            tenant: text("tenant")?,
            environment: text("environment")?,
            template: text("template")?,
            status,
            attempt: data
                .get("attempt")
                .and_then(serde_json::Value::as_u64)
                .map_or(0, |a| u32::try_from(a).unwrap_or(u32::MAX)),
            reason,
            resources: data.get("resources").filter(|r| !r.is_null()),
            scavenger: data
                .get("scavenger")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// The series of one (tenant, template, environment), made once (at zero) and kept,
/// so that an event updates them without looking them up.
#[derive(Debug)]
struct Handles {
    /// `ops_tasks` by [`live_index`], made when first entered.
    tasks: [OnceLock<Gauge>; 4],
    /// `ops_task_attempts_total` by [`REASONS`] index, made when first counted.
    attempts: [OnceLock<Counter>; REASONS.len()],
    /// `ops_tasks_finished_total` by [`final_index`].
    finished: [Counter; 4],
    /// Histograms are made at their first observation (each is 16 series or more).
    run: OnceLock<Histogram>,
    /// `ops_queue_wait_seconds` and `ops_queue_depth`: regular, scavenger.
    wait: [OnceLock<Histogram>; 2],
    queue: [Gauge; 2],
    preemptions: Counter,
    /// `ops_quota_used`: cpu, memory, gpu.
    quota: [FloatGauge; 3],
}

const LIVE_STATES: [TaskStatus; 4] = [
    TaskStatus::Submitted,
    TaskStatus::Queued,
    TaskStatus::Running,
    TaskStatus::Retrying,
];
const FINAL_STATES: [TaskStatus; 4] = [
    TaskStatus::Succeeded,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
    TaskStatus::TimedOut,
];
const RESOURCES: [&str; 3] = ["cpu", "memory", "gpu"];
const REASONS: [Reason; 14] = [
    Reason::Completed,
    Reason::NonZeroExit,
    Reason::Signaled,
    Reason::OutOfMemory,
    Reason::TimedOut,
    Reason::Cancelled,
    Reason::CommandNotFound,
    Reason::LaunchFailed,
    Reason::CoordinatorLost,
    Reason::Preempted,
    Reason::QuotaExceeded,
    Reason::ImageUnavailable,
    Reason::Evicted,
    Reason::StagingFailed,
];

fn live_index(s: TaskStatus) -> Option<usize> {
    LIVE_STATES.iter().position(|x| *x == s)
}

fn final_index(s: TaskStatus) -> Option<usize> {
    FINAL_STATES.iter().position(|x| *x == s)
}

/// A task the metrics follow until it finishes.
#[derive(Debug)]
struct Live {
    labels: RunLabels,
    series: Arc<Handles>,
    state: TaskStatus,
    attempt: u32,
    scavenger: bool,
    queued_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    /// What it holds while running.
    held: Option<Resources>,
}

#[derive(Debug, Default)]
struct State {
    live: HashMap<String, Live>,
    tenants: HashMap<String, Value>,
    templates: HashMap<String, Value>,
    environments: HashMap<String, Value>,
    types: HashMap<String, Counter>,
    /// Object sizes per (tenant, environment/path), to count replaced objects once.
    objects: HashMap<(Value, String), u64>,
    /// Recently handled event ids, to skip redeliveries (oldest first).
    recent: std::collections::HashSet<ops_core::EventId>,
    recent_order: std::collections::VecDeque<ops_core::EventId>,
    /// The series of each label set seen.
    series: HashMap<RunLabels, Arc<Handles>>,
}

/// Task, queue, quota, tenant, storage and billing metrics fed by events; see the
/// [module documentation](self). Cheap to clone.
///
/// ```
/// use ops_core::{event_types, Event, TaskEventData, TaskId, TaskStatus};
/// use ops_events::Function;
/// use ops_monitor::tasks::TaskMetrics;
/// use ops_monitor::{Format, Monitor};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = TaskMetrics::default();
/// let monitor = metrics.register(Monitor::builder()).build()?;
/// let id = TaskId::new();
/// for (ty, status) in [
///     (event_types::TASK_SUBMITTED, TaskStatus::Submitted),
///     (event_types::TASK_QUEUED, TaskStatus::Queued),
///     (event_types::TASK_STARTED, TaskStatus::Running),
///     (event_types::TASK_SUCCEEDED, TaskStatus::Succeeded),
/// ] {
///     let data = TaskEventData::new(id, "acme", "default", "render", status, 1);
///     let event = Event::builder(ty, "ops://local").subject(id.to_string()).tenant("acme").json(serde_json::to_value(&data)?).build();
///     metrics.call(&event).await?;
/// }
/// let text = monitor.scrape(Format::Prometheus).await?;
/// assert!(text.contains(r#"ops_tasks_finished_total{tenant="acme",template="render",environment="default",state="succeeded"} 1"#));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TaskMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: TaskMetricsConfig,
    other: Value,
    tasks: PcFamily<TaskLabels, Gauge>,
    finished: PcFamily<TaskLabels, Counter>,
    attempts: PcFamily<AttemptLabels, Counter>,
    preemptions: PcFamily<TenantEnvLabels, Counter>,
    queue_depth: PcFamily<QueueLabels, Gauge>,
    wait: PcFamily<WaitLabels, Histogram, Buckets>,
    run: PcFamily<RunLabels, Histogram, Buckets>,
    quota_used: PcFamily<QuotaLabels, FloatGauge>,
    quota_nominal: PcFamily<QuotaLabels, FloatGauge>,
    capacity: PcFamily<ResourceLabels, FloatGauge>,
    capacity_used: PcFamily<ResourceLabels, FloatGauge>,
    events: PcFamily<TypeLabels, Counter>,
    storage_bytes: PcFamily<TenantLabels, Gauge>,
    storage_objects: PcFamily<TenantLabels, Gauge>,
    budget_percent: PcFamily<TenantLabels, FloatGauge>,
    budget_exhausted: PcFamily<TenantLabels, Counter>,
    /// `ops_capacity_used`: cpu, memory, gpu.
    capacity_held: [FloatGauge; 3],
    state: Mutex<State>,
}

impl std::fmt::Debug for TaskMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskMetrics")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Default for TaskMetrics {
    fn default() -> Self {
        Self::new(TaskMetricsConfig::default())
    }
}

fn tier(scavenger: bool) -> &'static str {
    if scavenger { "scavenger" } else { "regular" }
}

/// The parts of `r` a quota counts, in Prometheus' base units.
fn amounts(r: &Resources) -> [(&'static str, f64); 3] {
    [
        ("cpu", r.cpu_millis as f64 / 1000.0),
        ("memory", r.memory_bytes as f64),
        ("gpu", f64::from(r.gpus.count)),
    ]
}

impl TaskMetrics {
    /// Metrics with `config`, consuming events as the function `ops-monitor`.
    pub fn new(config: TaskMetricsConfig) -> Self {
        let wait = Buckets(config.wait_buckets.clone().into());
        let run = Buckets(config.run_buckets.clone().into());
        let capacity_used: PcFamily<ResourceLabels, FloatGauge> = PcFamily::default();
        let capacity_held = RESOURCES.map(|resource| {
            capacity_used
                .get_or_create(&ResourceLabels { resource })
                .clone()
        });
        Self {
            inner: Arc::new(Inner {
                name: "ops-monitor".to_owned(),
                other: Arc::new(OTHER.to_owned()),
                tasks: PcFamily::default(),
                finished: PcFamily::default(),
                attempts: PcFamily::default(),
                preemptions: PcFamily::default(),
                queue_depth: PcFamily::default(),
                wait: PcFamily::new_with_constructor(wait),
                run: PcFamily::new_with_constructor(run),
                quota_used: PcFamily::default(),
                quota_nominal: PcFamily::default(),
                capacity: PcFamily::default(),
                capacity_used,
                capacity_held,
                events: PcFamily::default(),
                storage_bytes: PcFamily::default(),
                storage_objects: PcFamily::default(),
                budget_percent: PcFamily::default(),
                budget_exhausted: PcFamily::default(),
                state: Mutex::default(),
                config,
            }),
        }
    }

    /// The same metrics consuming events as the function `name` (its durable
    /// subscription): give each process its own name (e.g. `ops-monitor.<host>`) so
    /// that each sees every event. Call before the metrics are shared.
    pub fn named(self, name: impl Into<String>) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => {
                tracing::warn!("TaskMetrics::named on shared metrics: a new set is made");
                return Self::new(shared.config.clone()).named(name);
            }
        };
        inner.name = name.into();
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Registers the families with `builder`, and the collector of
    /// `ops_queue_oldest_wait_seconds`.
    pub fn register(&self, builder: MonitorBuilder) -> MonitorBuilder {
        let i = &self.inner;
        builder
            .register(
                "ops_tasks",
                "Tasks not finished, by state.",
                i.tasks.clone(),
            )
            .register(
                "ops_tasks_finished",
                "Tasks that reached a final state.",
                i.finished.clone(),
            )
            .register(
                "ops_task_attempts",
                "Attempts that ended, by the reason they ended.",
                i.attempts.clone(),
            )
            .register(
                "ops_task_preemptions",
                "Attempts preempted to make room for other work.",
                i.preemptions.clone(),
            )
            .register(
                "ops_queue_depth",
                "Tasks waiting in the queue.",
                i.queue_depth.clone(),
            )
            .register(
                "ops_queue_wait_seconds",
                "Time from entering the queue to starting.",
                i.wait.clone(),
            )
            .register(
                "ops_task_run_seconds",
                "Time from an attempt's start to its end.",
                i.run.clone(),
            )
            .register(
                "ops_quota_used",
                "Resources held by running tasks (scavengers not counted).",
                i.quota_used.clone(),
            )
            .register(
                "ops_quota_nominal",
                "Configured quota per tenant and environment.",
                i.quota_nominal.clone(),
            )
            .register(
                "ops_capacity",
                "Resources the executors offer.",
                i.capacity.clone(),
            )
            .register(
                "ops_capacity_used",
                "Resources held by running tasks, scavengers included.",
                i.capacity_used.clone(),
            )
            .register(
                "ops_events",
                "Events seen on the spine, by type.",
                i.events.clone(),
            )
            .register(
                "ops_storage_bytes",
                "Bytes stored per tenant.",
                i.storage_bytes.clone(),
            )
            .register(
                "ops_storage_objects",
                "Objects stored per tenant.",
                i.storage_objects.clone(),
            )
            .register(
                "ops_billing_budget_threshold_percent",
                "The last share of prepaid credit used that the tenant crossed.",
                i.budget_percent.clone(),
            )
            .register(
                "ops_billing_budget_exhausted",
                "Times a tenant's credit could not hold a task's worst case.",
                i.budget_exhausted.clone(),
            )
            .collector(QueueAges(self.clone()))
    }

    /// Sets what the executors offer (`ops_capacity`).
    pub fn set_capacity(&self, capacity: &Resources) {
        for (resource, v) in amounts(capacity) {
            self.inner
                .capacity
                .get_or_create(&ResourceLabels { resource })
                .set(v);
        }
    }

    /// Sets a tenant's configured quota in an environment (`ops_quota_nominal`).
    pub fn set_quota(&self, tenant: &str, environment: &str, quota: &Resources) {
        let (tenant, environment) = {
            let mut s = self.lock();
            (
                self.tenant(&mut s, tenant),
                intern(&mut s.environments, environment),
            )
        };
        for (resource, v) in amounts(quota) {
            self.inner
                .quota_nominal
                .get_or_create(&QuotaLabels {
                    tenant: tenant.clone(),
                    environment: environment.clone(),
                    resource,
                })
                .set(v);
        }
    }

    /// The tenant and task holding a live task's id, for the GPU collector's labels.
    pub fn tenant_of(&self, task_id: &str) -> Option<String> {
        self.lock()
            .live
            .get(task_id)
            .map(|l| l.labels.tenant.as_ref().clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tenant(&self, s: &mut State, tenant: &str) -> Value {
        fold(
            &mut s.tenants,
            tenant,
            self.inner.config.max_tenants,
            &self.inner.other,
        )
    }

    /// Applies one event.
    fn apply(&self, event: &Event) -> Result<(), FunctionError> {
        let i = &self.inner;
        let ty = event.ty.as_str();
        let mut s = self.lock();
        if !first_time(&mut s, event.id) {
            return Ok(());
        }
        self.count_type(&mut s, ty);
        if ty.starts_with("ops.task.") && ty != event_types::TASK_OUTPUT_CREATED {
            return self.task_event(&mut s, event);
        }
        drop(s);
        match ty {
            event_types::STORAGE_OBJECT_CREATED | event_types::STORAGE_OBJECT_DELETED => {
                self.storage_event(event, ty == event_types::STORAGE_OBJECT_CREATED);
            }
            event_types::BILLING_BUDGET_THRESHOLD | event_types::BILLING_BUDGET_EXHAUSTED => {
                let Some(tenant) = event
                    .extensions
                    .get("tenant")
                    .map(String::as_str)
                    .or_else(|| event.data.get("tenant").and_then(|t| t.as_str()))
                else {
                    return Ok(());
                };
                let tenant = {
                    let mut s = self.lock();
                    self.tenant(&mut s, tenant)
                };
                if ty == event_types::BILLING_BUDGET_EXHAUSTED {
                    i.budget_exhausted
                        .get_or_create(&TenantLabels { tenant })
                        .inc();
                } else if let Some(p) = event
                    .data
                    .get("percent")
                    .and_then(serde_json::Value::as_f64)
                {
                    i.budget_percent
                        .get_or_create(&TenantLabels { tenant })
                        .set(p);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `ops_events_total` for `ty` (at most 256 types; later ones are `other`).
    fn count_type(&self, s: &mut State, ty: &str) {
        if let Some(c) = s.types.get(ty) {
            c.inc();
            return;
        }
        let label = if s.types.len() >= 256 {
            self.inner.other.clone()
        } else {
            Arc::new(ty.to_owned())
        };
        let counter = self
            .inner
            .events
            .get_or_create(&TypeLabels {
                r#type: label.clone(),
            })
            .clone();
        counter.inc();
        if !Arc::ptr_eq(&label, &self.inner.other) {
            s.types.insert(ty.to_owned(), counter);
        }
    }

    /// The series of `labels`, made (at zero) the first time: a counter that first
    /// appears at 1 shows no `increase` in Prometheus.
    fn series(&self, s: &mut State, labels: &RunLabels) -> Arc<Handles> {
        if let Some(h) = s.series.get(labels) {
            return h.clone();
        }
        let i = &self.inner;
        let task = |state: TaskStatus| TaskLabels {
            tenant: labels.tenant.clone(),
            template: labels.template.clone(),
            environment: labels.environment.clone(),
            state: state.as_str(),
        };
        let queue = |scavenger: bool| QueueLabels {
            environment: labels.environment.clone(),
            tier: tier(scavenger),
        };
        let quota = |resource: &'static str| QuotaLabels {
            tenant: labels.tenant.clone(),
            environment: labels.environment.clone(),
            resource,
        };
        let handles = Arc::new(Handles {
            tasks: Default::default(),
            attempts: Default::default(),
            finished: FINAL_STATES.map(|st| i.finished.get_or_create(&task(st)).clone()),
            run: OnceLock::new(),
            wait: [OnceLock::new(), OnceLock::new()],
            queue: [false, true].map(|sc| i.queue_depth.get_or_create(&queue(sc)).clone()),
            preemptions: i
                .preemptions
                .get_or_create(&TenantEnvLabels {
                    tenant: labels.tenant.clone(),
                    environment: labels.environment.clone(),
                })
                .clone(),
            quota: RESOURCES.map(|r| i.quota_used.get_or_create(&quota(r)).clone()),
        });
        s.series.insert(labels.clone(), handles.clone());
        handles
    }

    fn storage_event(&self, event: &Event, created: bool) {
        let object = event.data.get("object");
        let field = |k: &str| object.and_then(|o| o.get(k));
        let (Some(tenant), Some(path)) = (
            field("tenant").and_then(|v| v.as_str()),
            field("path").and_then(|v| v.as_str()),
        ) else {
            return;
        };
        let environment = field("environment")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let size = field("size")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let mut s = self.lock();
        let tenant = self.tenant(&mut s, tenant);
        let key = (tenant.clone(), format!("{environment}/{path}"));
        let before = if created {
            s.objects.insert(key, size)
        } else {
            s.objects.remove(&key)
        };
        drop(s);
        let labels = TenantLabels { tenant };
        let bytes = self.inner.storage_bytes.get_or_create(&labels);
        let objects = self.inner.storage_objects.get_or_create(&labels);
        if let Some(before) = before {
            bytes.dec_by(before as i64);
            objects.dec();
        }
        if created {
            bytes.inc_by(size as i64);
            objects.inc();
        }
    }

    fn task_event(&self, s: &mut State, event: &Event) -> Result<(), FunctionError> {
        let i = &self.inner;
        let view = match View::read(&event.data) {
            Ok(view) => view,
            Err(e) => {
                // Not retryable: the same event fails the same way. Logged, not
                // dead-lettered, so that one bad producer cannot fill the dead letters.
                tracing::warn!(event_id = %event.id, r#type = %event.ty, error = %e, "task event without task data: not counted");
                return Ok(());
            }
        };
        let Some(task_id) = event.subject.as_deref() else {
            tracing::warn!(event_id = %event.id, "task event without a subject: not counted");
            return Ok(());
        };
        let now = event.time;
        let known = s.live.contains_key(task_id);
        if !known {
            let tenant = self.tenant(s, view.tenant);
            let template = fold(
                &mut s.templates,
                view.template,
                i.config.max_templates,
                &i.other,
            );
            let environment = intern(&mut s.environments, view.environment);
            let labels = RunLabels {
                tenant,
                template,
                environment,
            };
            let series = self.series(s, &labels);
            s.live.insert(
                task_id.to_owned(),
                Live {
                    labels,
                    series,
                    state: TaskStatus::Submitted,
                    attempt: view.attempt,
                    scavenger: view.scavenger,
                    queued_at: None,
                    started_at: None,
                    held: None,
                },
            );
        }
        let Some(live) = s.live.get_mut(task_id) else {
            return Ok(());
        };
        let previous = known.then_some(live.state);
        // A stale event (redelivered out of order after a later one) changes nothing.
        if let Some(prev) = previous
            && (prev.is_final()
                || view.attempt < live.attempt
                || (prev == view.status && view.attempt == live.attempt))
        {
            return Ok(());
        }
        live.attempt = view.attempt.max(live.attempt);
        live.scavenger = view.scavenger;
        let series = live.series.clone();
        let tier_index = usize::from(live.scavenger);

        // Leave the previous state.
        if let Some(prev) = previous {
            if let Some(gauge) = live_index(prev).and_then(|k| series.tasks[k].get()) {
                gauge.dec();
            }
            if prev == TaskStatus::Queued {
                series.queue[tier_index].dec();
            }
        }
        // An attempt ended: count it, its run time, and give back what it held.
        if previous == Some(TaskStatus::Running) && view.status != TaskStatus::Running {
            let reason = match event.ty.as_str() {
                event_types::TASK_PREEMPTED => Reason::Preempted,
                _ => view.reason.unwrap_or(match view.status {
                    TaskStatus::Succeeded => Reason::Completed,
                    TaskStatus::TimedOut => Reason::TimedOut,
                    TaskStatus::Cancelled => Reason::Cancelled,
                    _ => Reason::NonZeroExit,
                }),
            };
            let labels = || AttemptLabels {
                tenant: live.labels.tenant.clone(),
                template: live.labels.template.clone(),
                environment: live.labels.environment.clone(),
                reason: reason.as_str(),
            };
            match REASONS.iter().position(|r| *r == reason) {
                Some(k) => series.attempts[k]
                    .get_or_init(|| i.attempts.get_or_create(&labels()).clone())
                    .inc(),
                None => i.attempts.get_or_create(&labels()).inc(),
            };
            if let Some(started) = live.started_at.take() {
                series
                    .run
                    .get_or_init(|| i.run.get_or_create(&live.labels).clone())
                    .observe(seconds(now - started));
            }
            if let Some(held) = live.held.take() {
                self.adjust(&series, live.scavenger, &held, -1.0);
            }
        }
        if event.ty == event_types::TASK_PREEMPTED {
            series.preemptions.inc();
        }

        // Enter the new one.
        let status = view.status;
        if let Some(k) = final_index(status) {
            series.finished[k].inc();
            s.live.remove(task_id);
            return Ok(());
        }
        if let Some(k) = live_index(status) {
            series.tasks[k]
                .get_or_init(|| {
                    i.tasks
                        .get_or_create(&TaskLabels {
                            tenant: live.labels.tenant.clone(),
                            template: live.labels.template.clone(),
                            environment: live.labels.environment.clone(),
                            state: status.as_str(),
                        })
                        .clone()
                })
                .inc();
        }
        match status {
            TaskStatus::Queued => {
                live.queued_at = Some(now);
                series.queue[tier_index].inc();
            }
            TaskStatus::Running => {
                if let Some(queued) = live.queued_at.take() {
                    let labels = WaitLabels {
                        tenant: live.labels.tenant.clone(),
                        environment: live.labels.environment.clone(),
                        tier: tier(live.scavenger),
                    };
                    series.wait[tier_index]
                        .get_or_init(|| i.wait.get_or_create(&labels).clone())
                        .observe(seconds(now - queued));
                }
                live.started_at = Some(now);
                match view.resources.map(Resources::deserialize) {
                    Some(Ok(r)) => {
                        self.adjust(&series, live.scavenger, &r, 1.0);
                        live.held = Some(r);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(event_id = %event.id, error = %e, "task resources unreadable: not counted in quota use");
                    }
                    None => {}
                }
            }
            _ => {}
        }
        live.state = status;
        Ok(())
    }

    /// Adds (`sign` 1) or gives back (-1) what a running task holds.
    fn adjust(&self, series: &Handles, scavenger: bool, r: &Resources, sign: f64) {
        for (k, (_, v)) in amounts(r).into_iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            self.inner.capacity_held[k].inc_by(sign * v);
            if !scavenger {
                series.quota[k].inc_by(sign * v);
            }
        }
    }

    /// `ops_queue_oldest_wait_seconds` now.
    fn queue_ages(&self, now: DateTime<Utc>) -> Family {
        let mut oldest: HashMap<(Value, &'static str), DateTime<Utc>> = HashMap::new();
        let s = self.lock();
        for live in s.live.values() {
            if live.state != TaskStatus::Queued {
                continue;
            }
            if let Some(at) = live.queued_at {
                let key = (live.labels.environment.clone(), tier(live.scavenger));
                let e = oldest.entry(key).or_insert(at);
                if at < *e {
                    *e = at;
                }
            }
        }
        // Environments seen with nothing queued report 0, so an alert resolves.
        let envs: Vec<Value> = s.environments.values().cloned().collect();
        drop(s);
        let mut family = Family::new(queue_age_descriptor());
        for env in envs {
            for t in ["regular", "scavenger"] {
                let age = oldest.get(&(env.clone(), t)).map_or(0.0, |at| {
                    (now - *at).num_milliseconds().max(0) as f64 / 1000.0
                });
                family.sample(
                    [
                        ("environment", env.as_ref().clone()),
                        ("tier", t.to_owned()),
                    ],
                    age,
                );
            }
        }
        family
    }
}

fn queue_age_descriptor() -> Descriptor {
    Descriptor::new(
        "ops_queue_oldest_wait_seconds",
        "How long the oldest queued task has waited (0 when none waits).",
        MetricKind::Gauge,
    )
}

/// How many event ids are remembered to skip redeliveries.
const RECENT: usize = 100_000;

/// Records `id`; `true` the first time it is seen among the last [`RECENT`].
fn first_time(s: &mut State, id: ops_core::EventId) -> bool {
    if !s.recent.insert(id) {
        return false;
    }
    s.recent_order.push_back(id);
    if s.recent_order.len() > RECENT
        && let Some(old) = s.recent_order.pop_front()
    {
        s.recent.remove(&old);
    }
    true
}

/// A duration in seconds, never negative.
fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds().max(0) as f64 / 1000.0
}

/// The label value for `name`: its own while fewer than `cap` are known, else
/// `other`.
fn fold(known: &mut HashMap<String, Value>, name: &str, cap: usize, other: &Value) -> Value {
    if let Some(v) = known.get(name) {
        return v.clone();
    }
    if known.len() >= cap {
        return other.clone();
    }
    let v = Arc::new(name.to_owned());
    known.insert(name.to_owned(), v.clone());
    v
}

fn intern(known: &mut HashMap<String, Value>, name: &str) -> Value {
    fold(known, name, usize::MAX, &Arc::default())
}

#[async_trait]
impl Function for TaskMetrics {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn call(&self, event: &Event) -> Result<(), FunctionError> {
        self.apply(event)
    }
}

/// The collector of `ops_queue_oldest_wait_seconds` (ages change between events).
struct QueueAges(TaskMetrics);

#[async_trait]
impl Collector for QueueAges {
    fn name(&self) -> &str {
        "queue"
    }

    fn describe(&self) -> Vec<Descriptor> {
        vec![queue_age_descriptor()]
    }

    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        Ok(vec![self.0.queue_ages(Utc::now())])
    }
}
