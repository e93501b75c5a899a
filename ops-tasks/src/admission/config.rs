//! The admission configuration as written in a config file (`[admission]` of the
//! tasks config). Structure errors come from serde; meaning is checked by
//! [`AdmissionPolicy::new`](super::AdmissionPolicy::new), which lists every problem.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Quotas, environments, fair share and the scavenger tier.
///
/// The default admits in priority, fair-share and FIFO order within the executor's
/// capacity, with no quotas: every tenant and environment shares all of it.
///
/// ```
/// use ops_tasks::admission::AdmissionConfig;
///
/// let config: AdmissionConfig = toml::from_str(r#"
///     [scavenger]
///     grace = "30s"
///
///     [environments.production]
///     capacity = { cpu = 48, memory = "192Gi", gpus = { a100 = 8 } }
///     reclaim = "preempt"
///
///     [environments.staging]
///     capacity = { cpu = 16, memory = "64Gi" }
///     borrow_from = ["production"]
///
///     [tenants.acme]
///     weight = 2
///     quota.production = { cpu = 16, memory = "64Gi", gpus = { a100 = 4 } }
///     quota.staging = { cpu = 8 }
///
///     [default_tenant]
///     quota.production = { cpu = 4, gpus = 0 }
///     quota.staging = { cpu = 4 }
/// "#)?;
/// assert_eq!(config.tenants["acme"].weight, 2.0);
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdmissionConfig {
    /// Queued tasks looked at per tenant and priority in one pass after its head
    /// cannot be admitted (best-effort FIFO: a smaller task behind a blocked one may
    /// start). 1 makes FIFO strict. Default 16.
    pub lookahead: usize,
    /// How long a task refused by the budget gate waits before it is asked about
    /// again. Default 30 s.
    #[serde(with = "crate::duration::serde_duration")]
    pub budget_recheck: Duration,
    /// The scavenger (backfill) tier.
    pub scavenger: ScavengerConfig,
    /// Capacity segments by environment name. Empty: one segment for everything.
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// Tenants by name: fair-share weight and quotas.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Applies to tenants not listed in `tenants`. When `tenants` is not empty and
    /// this is unset, tasks of unlisted tenants are refused at submission.
    pub default_tenant: Option<TenantConfig>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            lookahead: 16,
            budget_recheck: Duration::from_secs(30),
            scavenger: ScavengerConfig::default(),
            environments: BTreeMap::new(),
            tenants: BTreeMap::new(),
            default_tenant: None,
        }
    }
}

/// How scavenger work gets out of the way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ScavengerConfig {
    /// Time between the preemption signal (SIGTERM) and the kill, for a checkpoint.
    /// Default 30 s.
    #[serde(with = "crate::duration::serde_duration")]
    pub grace: Duration,
}

impl Default for ScavengerConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
        }
    }
}

/// One environment: its own segment of capacity, and whom it may borrow from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EnvironmentConfig {
    /// The capacity reserved for this environment, carved out of the executor's shared
    /// nodes. Unset: the nodes of its own node pool if the executor has one, else the
    /// capacity shared by every environment without a segment.
    pub capacity: Option<QuotaSpec>,
    /// Environments whose idle capacity this one may use when its own is full.
    pub borrow_from: Vec<String>,
    /// What happens to borrowed work in this segment when its owners need the room.
    pub reclaim: Reclaim,
}

/// What happens to work running on borrowed capacity or quota when the owner needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reclaim {
    /// The borrowers finish; the owner gets the room as they end (no preemption).
    #[default]
    Wait,
    /// The newest borrowed tasks are preempted (signal, grace, kill) and requeued.
    Preempt,
}

/// A tenant's weight and quotas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TenantConfig {
    /// Fair-share weight: at equal priority, tenants get capacity in proportion to
    /// their weights (dominant resource fairness). Default 1.
    pub weight: f64,
    /// Whether the tenant may go over its quota into idle capacity. Default true.
    pub borrowing: bool,
    /// Nominal quota per environment. An environment that is not listed is not limited
    /// for this tenant; a resource left out of a quota is not limited either.
    pub quota: BTreeMap<String, QuotaSpec>,
    /// At most this much above the quota when borrowing, per environment. Unset: any
    /// idle capacity.
    pub borrowing_limit: BTreeMap<String, QuotaSpec>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            borrowing: true,
            quota: BTreeMap::new(),
            borrowing_limit: BTreeMap::new(),
        }
    }
}

/// An amount of CPU, memory and GPUs; a left-out resource is not limited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QuotaSpec {
    /// Cores (`8`, `0.5`) or millicores (`"500m"`).
    pub cpu: Option<Quantity>,
    /// Bytes, or a string such as `"64Gi"`.
    pub memory: Option<Quantity>,
    /// GPUs of any model (`8`), or per model (`{ a100 = 4, h100 = 2 }`).
    pub gpus: Option<GpuQuota>,
}

/// A number, or a string with a unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    /// A whole number.
    Int(u64),
    /// A fractional number.
    Float(f64),
    /// A string such as `"500m"` or `"64Gi"`.
    Text(String),
}

/// A GPU limit: a count of any model, or counts by model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuQuota {
    /// GPUs of any model.
    Count(u32),
    /// GPUs by model name (matched against the nodes' GPU models).
    Models(BTreeMap<String, u32>),
}

impl From<&ops_core::Resources> for QuotaSpec {
    fn from(r: &ops_core::Resources) -> Self {
        Self {
            cpu: Some(Quantity::Text(format!("{}m", r.cpu_millis))),
            memory: Some(Quantity::Int(r.memory_bytes)),
            gpus: Some(match &r.gpus.model {
                Some(model) => GpuQuota::Models(BTreeMap::from([(model.clone(), r.gpus.count)])),
                None => GpuQuota::Count(r.gpus.count),
            }),
        }
    }
}
