//! [`AlertsConfig`]: which alerts to generate, their thresholds, durations and
//! severities, and the labels and runbook links they all carry.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse_duration;
use crate::{Error, Result};

/// How urgent an alert is: its `severity` label, which Alertmanager routes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Severity {
    /// Someone must act now (pages).
    Critical,
    /// Someone should look during working hours.
    Warning,
    /// Not for people: the always-firing `Watchdog` that proves the pipeline works.
    None,
}

impl Severity {
    /// The label value: `critical`, `warning` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::None => "none",
        }
    }
}

/// The alert rules to generate (the `[alerts]` section of a monitoring config):
/// one table per alert with `enabled`, its thresholds, durations (Prometheus duration
/// strings such as `5m` or `1h30m`) and `severity`, plus what every alert shares.
///
/// Every key has a default in line with node-mixin and kube-prometheus; see
/// `docs/monitoring-alerts.md` for each alert. [`problems`](Self::problems) lists every
/// invalid value at once.
///
/// ```
/// use ops_monitor::rules::AlertsConfig;
///
/// let mut config = AlertsConfig::default();
/// config.gpu_too_hot.celsius = -5.0;
/// config.disk_filling.warning.r#for = "5x".into();
/// assert_eq!(
///     config.problems(),
///     [
///         r#"alerts.disk_filling.warning.for: "5x" is not a Prometheus duration (e.g. 30s, 5m, 1h)"#,
///         "alerts.gpu_too_hot.celsius: -5 is not a temperature above 0",
///     ]
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AlertsConfig {
    /// Labels added to every alert (`team = "platform"`, `cluster = "eu-1"`), for
    /// Alertmanager to route on. `severity` is set per alert and cannot be set here.
    pub labels: BTreeMap<String, String>,
    /// Regex of the Prometheus `job`s that scrape Ops exporters and node_exporter, for
    /// [`host_down`](Self::host_down). Default `ops|node`.
    pub jobs: String,
    /// Where the runbooks are: each alert's `runbook_url` annotation is this, `#` and
    /// the alert's name in lower case. Default: this repository's
    /// `docs/monitoring-alerts.md`.
    pub runbook_base_url: String,
    /// How often Prometheus evaluates the groups (`interval` of each group); unset:
    /// Prometheus' `evaluation_interval`.
    pub interval: Option<String>,
    /// `OpsHostDown`: a scrape target of [`jobs`](Self::jobs) is down.
    pub host_down: HostDownAlert,
    /// `OpsHostDiskFilling`: a filesystem will be full soon (two tiers).
    pub disk_filling: DiskFillingAlert,
    /// `OpsHostMemoryPressure`: little memory available on a host.
    pub memory_pressure: MemoryPressureAlert,
    /// `OpsTaskFailureRatioHigh`: many tasks of a template fail.
    pub task_failure_ratio: TaskFailureRatioAlert,
    /// `OpsQueueStuck`: tasks wait long while capacity is free.
    pub queue_stuck: QueueStuckAlert,
    /// `OpsDeadLettersGrowing`: a function dead-letters events.
    pub dead_letters_growing: DeadLettersGrowingAlert,
    /// `OpsOutboxLagHigh`: a subscription falls behind.
    pub outbox_lag: OutboxLagAlert,
    /// `OpsGpuXidError`: a GPU reported an XID error.
    pub gpu_xid_error: GpuXidErrorAlert,
    /// `OpsGpuRowRemapFailure`: a GPU's memory is failing.
    pub gpu_row_remap_failure: GpuRowRemapFailureAlert,
    /// `OpsGpuTooHot`: a GPU runs hot.
    pub gpu_too_hot: GpuTooHotAlert,
    /// `OpsGpuAllocatedIdle`: a task holds a GPU it does not use.
    pub gpu_allocated_idle: GpuAllocatedIdleAlert,
    /// `OpsPreemptionStorm`: many preemptions in an environment.
    pub preemption_storm: PreemptionStormAlert,
    /// `OpsBudgetBurn`: a tenant used most of its prepaid credit.
    pub budget_burn: BudgetBurnAlert,
    /// `OpsBudgetExhausted`: a tenant ran out of prepaid credit.
    pub budget_exhausted: BudgetExhaustedAlert,
    /// `Watchdog`: always firing, to prove the alerting pipeline works.
    pub watchdog: WatchdogAlert,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            labels: BTreeMap::new(),
            jobs: "ops|node".to_owned(),
            runbook_base_url: "https://example.invalid/ops/docs/monitoring-alerts.md".to_owned(),
            interval: None,
            host_down: HostDownAlert::default(),
            disk_filling: DiskFillingAlert::default(),
            memory_pressure: MemoryPressureAlert::default(),
            task_failure_ratio: TaskFailureRatioAlert::default(),
            queue_stuck: QueueStuckAlert::default(),
            dead_letters_growing: DeadLettersGrowingAlert::default(),
            outbox_lag: OutboxLagAlert::default(),
            gpu_xid_error: GpuXidErrorAlert::default(),
            gpu_row_remap_failure: GpuRowRemapFailureAlert::default(),
            gpu_too_hot: GpuTooHotAlert::default(),
            gpu_allocated_idle: GpuAllocatedIdleAlert::default(),
            preemption_storm: PreemptionStormAlert::default(),
            budget_burn: BudgetBurnAlert::default(),
            budget_exhausted: BudgetExhaustedAlert::default(),
            watchdog: WatchdogAlert::default(),
        }
    }
}

/// `OpsHostDown`: `up{job=~"<jobs>"} == 0` for `for`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HostDownAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// How long the target must stay down. Default `5m`.
    pub r#for: String,
    /// Default critical.
    pub severity: Severity,
}

impl Default for HostDownAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            r#for: "5m".to_owned(),
            severity: Severity::Critical,
        }
    }
}

/// `OpsHostDiskFilling`: a filesystem with little space left that, at the rate it
/// filled over [`lookback`](Self::lookback), will be full within a tier's
/// `full_within` (node-mixin's `NodeFilesystemSpaceFillingUp`). Read-only
/// filesystems and [`ignored_fstypes`](Self::ignored_fstypes) are left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "DiskFillingPatch")]
#[non_exhaustive]
pub struct DiskFillingAlert {
    /// Whether the alert (both tiers) is generated. Default true.
    pub enabled: bool,
    /// Regex of the `fstype`s never alerted on. Default `tmpfs|ramfs|overlay|squashfs`.
    pub ignored_fstypes: String,
    /// The window the fill rate is read over (`predict_linear`). Default `6h`.
    pub lookback: String,
    /// Default: under 40 % left, full within 24 h, for 1 h, warning.
    pub warning: DiskFillingTier,
    /// Default: under 20 % left, full within 4 h, for 1 h, critical.
    pub critical: DiskFillingTier,
}

impl Default for DiskFillingAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            ignored_fstypes: "tmpfs|ramfs|overlay|squashfs".to_owned(),
            lookback: "6h".to_owned(),
            warning: DiskFillingTier {
                enabled: true,
                available_percent: 40.0,
                full_within: "24h".to_owned(),
                r#for: "1h".to_owned(),
                severity: Severity::Warning,
            },
            critical: DiskFillingTier {
                enabled: true,
                available_percent: 20.0,
                full_within: "4h".to_owned(),
                r#for: "1h".to_owned(),
                severity: Severity::Critical,
            },
        }
    }
}

/// What a config says of [`DiskFillingAlert`]: each tier's missing keys take *that
/// tier's* defaults (a plain `#[serde(default)]` would give the critical tier the
/// warning tier's).
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DiskFillingPatch {
    enabled: Option<bool>,
    ignored_fstypes: Option<String>,
    lookback: Option<String>,
    warning: Option<TierPatch>,
    critical: Option<TierPatch>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TierPatch {
    enabled: Option<bool>,
    available_percent: Option<f64>,
    full_within: Option<String>,
    r#for: Option<String>,
    severity: Option<Severity>,
}

impl TierPatch {
    fn over(self, tier: DiskFillingTier) -> DiskFillingTier {
        DiskFillingTier {
            enabled: self.enabled.unwrap_or(tier.enabled),
            available_percent: self.available_percent.unwrap_or(tier.available_percent),
            full_within: self.full_within.unwrap_or(tier.full_within),
            r#for: self.r#for.unwrap_or(tier.r#for),
            severity: self.severity.unwrap_or(tier.severity),
        }
    }
}

impl From<DiskFillingPatch> for DiskFillingAlert {
    fn from(patch: DiskFillingPatch) -> Self {
        let defaults = DiskFillingAlert::default();
        let tier = |patch: Option<TierPatch>, default: DiskFillingTier| match patch {
            Some(patch) => patch.over(default),
            None => default,
        };
        Self {
            enabled: patch.enabled.unwrap_or(defaults.enabled),
            ignored_fstypes: patch.ignored_fstypes.unwrap_or(defaults.ignored_fstypes),
            lookback: patch.lookback.unwrap_or(defaults.lookback),
            warning: tier(patch.warning, defaults.warning),
            critical: tier(patch.critical, defaults.critical),
        }
    }
}

/// One tier of [`DiskFillingAlert`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DiskFillingTier {
    /// Whether this tier is generated. Default true.
    pub enabled: bool,
    /// Fires only below this share of the filesystem available, in percent.
    pub available_percent: f64,
    /// Fires only when the filesystem will be full within this.
    pub full_within: String,
    /// How long both must hold.
    pub r#for: String,
    /// The tier's severity.
    pub severity: Severity,
}

impl Default for DiskFillingTier {
    fn default() -> Self {
        DiskFillingAlert::default().warning
    }
}

/// `OpsHostMemoryPressure`: `MemAvailable / MemTotal` under a ratio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryPressureAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Fires below this share of memory available, as a ratio. Default 0.10.
    pub available_ratio: f64,
    /// Default `15m`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for MemoryPressureAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            available_ratio: 0.10,
            r#for: "15m".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsTaskFailureRatioHigh`: per template and environment, the share of tasks that
/// finished `failed` or `timed_out` over [`window`](Self::window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TaskFailureRatioAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Fires above this share of finished tasks, as a ratio. Default 0.25.
    pub ratio: f64,
    /// Fires only when at least this many tasks finished in the window, so that one
    /// failure out of two is no alert. Default 10.
    pub min_finished: u64,
    /// The window tasks are counted over. Default `30m`.
    pub window: String,
    /// Default `15m`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for TaskFailureRatioAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            ratio: 0.25,
            min_finished: 10,
            window: "30m".to_owned(),
            r#for: "15m".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsQueueStuck`: per environment, the wait of queued tasks (a quantile of
/// `ops_queue_wait_seconds` over [`window`](Self::window), or the oldest queued task's
/// wait) above [`wait_seconds`](Self::wait_seconds) while CPU capacity is free.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueStuckAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// The quantile of the wait compared, as a ratio. Default 0.95.
    pub quantile: f64,
    /// Fires above this wait, in seconds. Default 600.
    pub wait_seconds: f64,
    /// The window the wait histogram is read over. Default `15m`.
    pub window: String,
    /// Default `10m`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for QueueStuckAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            quantile: 0.95,
            wait_seconds: 600.0,
            window: "15m".to_owned(),
            r#for: "10m".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsDeadLettersGrowing`: a function's dead letters grew over
/// [`window`](Self::window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DeadLettersGrowingAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Default `15m`.
    pub window: String,
    /// Default `0s`: fires on the first evaluation that sees the growth.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for DeadLettersGrowingAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            window: "15m".to_owned(),
            r#for: "0s".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsOutboxLagHigh`: a subscription's oldest unacknowledged event is older than
/// [`seconds`](Self::seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutboxLagAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Fires above this lag, in seconds. Default 300.
    pub seconds: f64,
    /// Default `5m`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for OutboxLagAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            seconds: 300.0,
            r#for: "5m".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsGpuXidError`: `DCGM_FI_DEV_XID_ERRORS != 0`, save
/// [`ignored_codes`](Self::ignored_codes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GpuXidErrorAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// XID codes never alerted on (say 13 and 43, usually an application's own
    /// fault). Default none.
    pub ignored_codes: Vec<u32>,
    /// Default `0s`.
    pub r#for: String,
    /// Default critical.
    pub severity: Severity,
}

impl Default for GpuXidErrorAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            ignored_codes: Vec::new(),
            r#for: "0s".to_owned(),
            severity: Severity::Critical,
        }
    }
}

/// `OpsGpuRowRemapFailure`: a row remap failed, or uncorrectable remapped rows
/// grew over [`window`](Self::window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GpuRowRemapFailureAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// The window uncorrectable remapped rows are counted over. Default `1h`.
    pub window: String,
    /// Default `0s`.
    pub r#for: String,
    /// Default critical.
    pub severity: Severity,
}

impl Default for GpuRowRemapFailureAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            window: "1h".to_owned(),
            r#for: "0s".to_owned(),
            severity: Severity::Critical,
        }
    }
}

/// `OpsGpuTooHot`: `DCGM_FI_DEV_GPU_TEMP` above [`celsius`](Self::celsius).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GpuTooHotAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Fires above this temperature, in °C. Default 85.
    pub celsius: f64,
    /// Default `5m`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for GpuTooHotAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            celsius: 85.0,
            r#for: "5m".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsGpuAllocatedIdle`: a GPU held by a task whose utilisation stayed under
/// [`utilisation_percent`](Self::utilisation_percent) for all of
/// [`window`](Self::window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GpuAllocatedIdleAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Fires when utilisation stayed under this, in percent. Default 5.
    pub utilisation_percent: f64,
    /// How long utilisation must have stayed under it. Default `30m`.
    pub window: String,
    /// Default `0s` (the window already is the wait).
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for GpuAllocatedIdleAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            utilisation_percent: 5.0,
            window: "30m".to_owned(),
            r#for: "0s".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsPreemptionStorm`: more than [`count`](Self::count) preemptions in an
/// environment over [`window`](Self::window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PreemptionStormAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Fires above this many preemptions. Default 20.
    pub count: u64,
    /// Default `10m`.
    pub window: String,
    /// Default `0s`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for PreemptionStormAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            count: 20,
            window: "10m".to_owned(),
            r#for: "0s".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsBudgetBurn`: a tenant crossed [`percent`](Self::percent) of its prepaid
/// credit (`ops_billing_budget_threshold_percent`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetBurnAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Fires at or above this share of credit used, in percent. Default 90.
    pub percent: f64,
    /// Default `0s`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for BudgetBurnAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            percent: 90.0,
            r#for: "0s".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `OpsBudgetExhausted`: a tenant ran out of prepaid credit within
/// [`window`](Self::window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetExhaustedAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// How long the alert keeps firing after the event. Default `1h`.
    pub window: String,
    /// Default `0s`.
    pub r#for: String,
    /// Default warning.
    pub severity: Severity,
}

impl Default for BudgetExhaustedAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            window: "1h".to_owned(),
            r#for: "0s".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// `Watchdog`: `vector(1)`, always firing, so that a receiver can page when it
/// *stops* arriving (kube-prometheus' Watchdog, a dead man's switch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WatchdogAlert {
    /// Whether the alert is generated. Default true.
    pub enabled: bool,
    /// Default none.
    pub severity: Severity,
}

impl Default for WatchdogAlert {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: Severity::None,
        }
    }
}

impl AlertsConfig {
    /// Every invalid value, each naming its key (`alerts.gpu_too_hot.celsius: -5 is
    /// not a temperature above 0`); empty when the config is valid. Disabled alerts
    /// are checked too, so that enabling one later cannot break a config.
    pub fn problems(&self) -> Vec<String> {
        let mut c = Checks::default();
        for (name, value) in &self.labels {
            let key = format!("labels.{name}");
            if !is_label_name(name) {
                c.push(&key, format!("{name:?} is not a Prometheus label name"));
            } else if name == "severity" {
                c.push(
                    &key,
                    "is set per alert (alerts.<alert>.severity)".to_owned(),
                );
            } else if value.is_empty() {
                c.push(&key, "an empty value is no label".to_owned());
            }
        }
        c.not_empty("jobs", &self.jobs);
        c.not_empty("runbook_base_url", &self.runbook_base_url);
        if let Some(interval) = &self.interval {
            c.window("interval", interval);
        }

        c.r#for("host_down.for", &self.host_down.r#for);

        let d = &self.disk_filling;
        c.window("disk_filling.lookback", &d.lookback);
        for (tier, t) in [("warning", &d.warning), ("critical", &d.critical)] {
            c.percent(
                &format!("disk_filling.{tier}.available_percent"),
                t.available_percent,
            );
            c.window(&format!("disk_filling.{tier}.full_within"), &t.full_within);
            c.r#for(&format!("disk_filling.{tier}.for"), &t.r#for);
        }

        let m = &self.memory_pressure;
        c.ratio("memory_pressure.available_ratio", m.available_ratio);
        c.r#for("memory_pressure.for", &m.r#for);

        let t = &self.task_failure_ratio;
        c.ratio("task_failure_ratio.ratio", t.ratio);
        c.count("task_failure_ratio.min_finished", t.min_finished);
        c.window("task_failure_ratio.window", &t.window);
        c.r#for("task_failure_ratio.for", &t.r#for);

        let q = &self.queue_stuck;
        c.ratio("queue_stuck.quantile", q.quantile);
        c.seconds("queue_stuck.wait_seconds", q.wait_seconds);
        c.window("queue_stuck.window", &q.window);
        c.r#for("queue_stuck.for", &q.r#for);

        let l = &self.dead_letters_growing;
        c.window("dead_letters_growing.window", &l.window);
        c.r#for("dead_letters_growing.for", &l.r#for);

        c.seconds("outbox_lag.seconds", self.outbox_lag.seconds);
        c.r#for("outbox_lag.for", &self.outbox_lag.r#for);

        c.r#for("gpu_xid_error.for", &self.gpu_xid_error.r#for);
        if self.gpu_xid_error.ignored_codes.contains(&0) {
            c.push(
                "gpu_xid_error.ignored_codes",
                "0 means no error and cannot be ignored".to_owned(),
            );
        }

        c.window(
            "gpu_row_remap_failure.window",
            &self.gpu_row_remap_failure.window,
        );
        c.r#for(
            "gpu_row_remap_failure.for",
            &self.gpu_row_remap_failure.r#for,
        );

        let h = &self.gpu_too_hot;
        if !(h.celsius > 0.0 && h.celsius.is_finite()) {
            c.push(
                "gpu_too_hot.celsius",
                format!("{} is not a temperature above 0", h.celsius),
            );
        }
        c.r#for("gpu_too_hot.for", &h.r#for);

        let i = &self.gpu_allocated_idle;
        c.percent(
            "gpu_allocated_idle.utilisation_percent",
            i.utilisation_percent,
        );
        c.window("gpu_allocated_idle.window", &i.window);
        c.r#for("gpu_allocated_idle.for", &i.r#for);

        let p = &self.preemption_storm;
        c.count("preemption_storm.count", p.count);
        c.window("preemption_storm.window", &p.window);
        c.r#for("preemption_storm.for", &p.r#for);

        c.percent("budget_burn.percent", self.budget_burn.percent);
        c.r#for("budget_burn.for", &self.budget_burn.r#for);

        c.window("budget_exhausted.window", &self.budget_exhausted.window);
        c.r#for("budget_exhausted.for", &self.budget_exhausted.r#for);

        c.problems
    }

    /// `Ok` when [`problems`](Self::problems) finds none, else
    /// [`Error::InvalidConfig`] listing them all.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { problems })
        }
    }
}

/// Whether `name` is a label name Prometheus accepts for a rule's labels.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Collects problems, each under `alerts.<key>`.
#[derive(Default)]
struct Checks {
    problems: Vec<String>,
}

impl Checks {
    fn push(&mut self, key: &str, problem: String) {
        self.problems.push(format!("alerts.{key}: {problem}"));
    }

    fn duration(&mut self, key: &str, value: &str) -> Option<Duration> {
        let parsed = parse_duration(value);
        if parsed.is_none() {
            self.push(
                key,
                format!("{value:?} is not a Prometheus duration (e.g. 30s, 5m, 1h)"),
            );
        }
        parsed
    }

    /// A window (a range, a horizon): longer than 0.
    fn window(&mut self, key: &str, value: &str) {
        if self.duration(key, value).is_some_and(|d| d.is_zero()) {
            self.push(key, format!("{value:?} is not a duration above 0"));
        }
    }

    /// A rule's `for`: 0 is allowed, and means firing on the first evaluation.
    fn r#for(&mut self, key: &str, value: &str) {
        self.duration(key, value);
    }

    fn ratio(&mut self, key: &str, value: f64) {
        if !(value > 0.0 && value <= 1.0) {
            self.push(key, format!("{value} is not a ratio in (0, 1]"));
        }
    }

    fn percent(&mut self, key: &str, value: f64) {
        if !(value > 0.0 && value <= 100.0) {
            self.push(key, format!("{value} is not a percent in (0, 100]"));
        }
    }

    fn count(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.push(key, "0 is not a count above 0".to_owned());
        }
    }

    fn seconds(&mut self, key: &str, value: f64) {
        if !(value > 0.0 && value.is_finite()) {
            self.push(key, format!("{value} is not a number of seconds above 0"));
        }
    }

    fn not_empty(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(key, "must not be empty".to_owned());
        }
    }
}
