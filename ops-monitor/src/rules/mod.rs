//! Prometheus alert rules for Ops, generated from [`AlertsConfig`].
//!
//! One source, two renderings: [`generate`] turns a config into [`RuleGroups`] (the
//! data of a Prometheus rule file), which [`RuleGroups::to_yaml`] writes as a plain
//! rule file (`rule_files:` of `prometheus.yml`, `promtool check rules`) and
//! [`RuleGroups::to_prometheus_rule`] as a `monitoring.coreos.com/v1` `PrometheusRule`
//! for the Prometheus Operator.
//!
//! The alerts, their expressions, keys and runbooks are described in
//! `docs/monitoring-alerts.md`; each alert's `runbook_url` points at its section.
//!
//! ```
//! use ops_monitor::rules::{self, AlertsConfig};
//!
//! # fn main() -> ops_monitor::Result<()> {
//! let mut config = AlertsConfig::default();
//! config.labels.insert("team".into(), "platform".into());
//! config.gpu_too_hot.celsius = 80.0;
//! config.watchdog.enabled = false;
//!
//! let groups = rules::generate(&config)?;
//! let file = groups.to_yaml()?;
//! assert!(file.contains("alert: OpsGpuTooHot"));
//! assert!(file.contains("DCGM_FI_DEV_GPU_TEMP > 80"));
//! assert!(!file.contains("Watchdog"));
//!
//! let manifest = groups.to_prometheus_rule("ops-alerts", "monitoring", &Default::default())?;
//! assert!(manifest.contains("kind: PrometheusRule"));
//! # Ok(()) }
//! ```

mod alerts;
mod config;
mod duration;
mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use config::{
    AlertsConfig, BudgetBurnAlert, BudgetExhaustedAlert, DeadLettersGrowingAlert, DiskFillingAlert,
    DiskFillingTier, GpuAllocatedIdleAlert, GpuRowRemapFailureAlert, GpuTooHotAlert,
    GpuXidErrorAlert, HostDownAlert, MemoryPressureAlert, OutboxLagAlert, PreemptionStormAlert,
    QueueStuckAlert, Severity, TaskFailureRatioAlert, WatchdogAlert,
};
pub use duration::parse_duration;

use crate::Result;

/// A Prometheus rule file: its groups of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleGroups {
    /// The groups, each evaluated on its own.
    pub groups: Vec<RuleGroup>,
}

/// A group of rules, evaluated together at one interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleGroup {
    /// The group's name, unique in the file.
    pub name: String,
    /// How often the group is evaluated (a Prometheus duration); unset: Prometheus'
    /// `evaluation_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// The group's rules.
    pub rules: Vec<Rule>,
}

/// An alerting rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The alert's name (`alertname`).
    pub alert: String,
    /// The PromQL expression: every series it returns is an alert.
    pub expr: String,
    /// How long the expression must hold before the alert fires; unset: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#for: Option<String>,
    /// Labels added to the alert (`severity`, and the config's shared labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description` (Go templates over `$labels` and `$value`) and
    /// `runbook_url`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The alert rules `config` asks for (disabled alerts left out), after checking it:
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) lists every problem.
pub fn generate(config: &AlertsConfig) -> Result<RuleGroups> {
    config.validate()?;
    Ok(RuleGroups {
        groups: alerts::groups(config),
    })
}

impl RuleGroups {
    /// Every rule of every group.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.groups.iter().flat_map(|g| &g.rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn alert_names(groups: &RuleGroups) -> Vec<&str> {
        groups.rules().map(|r| r.alert.as_str()).collect()
    }

    #[test]
    fn defaults_generate_every_alert() {
        let groups = generate(&AlertsConfig::default()).unwrap();
        assert_eq!(
            alert_names(&groups),
            [
                "OpsHostDown",
                "OpsHostDiskFilling",
                "OpsHostDiskFilling",
                "OpsHostMemoryPressure",
                "OpsTaskFailureRatioHigh",
                "OpsQueueStuck",
                "OpsPreemptionStorm",
                "OpsDeadLettersGrowing",
                "OpsOutboxLagHigh",
                "OpsGpuXidError",
                "OpsGpuRowRemapFailure",
                "OpsGpuTooHot",
                "OpsGpuAllocatedIdle",
                "OpsBudgetBurn",
                "OpsBudgetExhausted",
                "Watchdog",
            ]
        );
        for rule in groups.rules() {
            let severity = &rule.labels["severity"];
            assert!(["critical", "warning", "none"].contains(&severity.as_str()));
            for annotation in ["summary", "description", "runbook_url"] {
                assert!(rule.annotations.contains_key(annotation), "{}", rule.alert);
            }
            assert_eq!(
                rule.annotations["runbook_url"],
                format!(
                    "https://example.invalid/ops/docs/monitoring-alerts.md#{}",
                    rule.alert.to_ascii_lowercase()
                )
            );
        }
        let down = groups.rules().next().unwrap();
        assert_eq!(down.expr, r#"up{job=~"ops|node"} == 0"#);
        assert_eq!(down.r#for.as_deref(), Some("5m"));
        assert_eq!(down.labels["severity"], "critical");
    }

    #[test]
    fn disabled_alerts_and_empty_groups_are_left_out() {
        let mut config = AlertsConfig::default();
        config.disk_filling.critical.enabled = false;
        config.budget_burn.enabled = false;
        config.budget_exhausted.enabled = false;
        config.watchdog.enabled = false;
        let groups = generate(&config).unwrap();
        let names = alert_names(&groups);
        assert_eq!(
            names.iter().filter(|n| **n == "OpsHostDiskFilling").count(),
            1
        );
        assert!(!names.contains(&"OpsBudgetBurn"));
        assert!(!names.contains(&"Watchdog"));
        let group_names: Vec<_> = groups.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            group_names,
            ["ops-hosts", "ops-tasks", "ops-spine", "ops-gpus"]
        );
    }

    #[test]
    fn shared_labels_interval_and_ignored_xids_reach_the_rules() {
        let mut config = AlertsConfig::default();
        config.labels.insert("team".into(), "platform".into());
        config.interval = Some("30s".into());
        config.gpu_xid_error.ignored_codes = vec![13, 43];
        config.jobs = r#"ops-.*|node"#.into();
        let groups = generate(&config).unwrap();
        assert!(
            groups
                .groups
                .iter()
                .all(|g| g.interval.as_deref() == Some("30s"))
        );
        assert!(groups.rules().all(|r| r.labels["team"] == "platform"));
        let xid = groups
            .rules()
            .find(|r| r.alert == "OpsGpuXidError")
            .unwrap();
        assert_eq!(
            xid.expr,
            "DCGM_FI_DEV_XID_ERRORS != 0\nunless\n(DCGM_FI_DEV_XID_ERRORS == 13 or DCGM_FI_DEV_XID_ERRORS == 43)"
        );
        assert!(xid.r#for.is_none(), "for: 0s is left out");
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let mut config = AlertsConfig::default();
        config.gpu_too_hot.celsius = -5.0;
        config.disk_filling.warning.r#for = "5x".into();
        config.disk_filling.critical.available_percent = 120.0;
        config.task_failure_ratio.ratio = 0.0;
        config.task_failure_ratio.min_finished = 0;
        config.queue_stuck.quantile = 1.5;
        config.queue_stuck.wait_seconds = f64::NAN;
        config.memory_pressure.available_ratio = -0.1;
        config.outbox_lag.seconds = -1.0;
        config.preemption_storm.window = "0s".into();
        config.preemption_storm.count = 0;
        config.budget_burn.percent = 0.0;
        config.gpu_allocated_idle.window = "30 m".into();
        config.dead_letters_growing.window = "1h1h".into();
        config.interval = Some("".into());
        config.labels.insert("severity".into(), "page".into());
        config.labels.insert("bad-name".into(), "x".into());
        config.jobs = String::new();
        // Disabled alerts are checked too.
        config.gpu_row_remap_failure.enabled = false;
        config.gpu_row_remap_failure.window = "1.5h".into();
        let problems = config.problems();
        let expected = [
            r#"alerts.labels.bad-name: "bad-name" is not a Prometheus label name"#,
            "alerts.labels.severity: is set per alert (alerts.<alert>.severity)",
            "alerts.jobs: must not be empty",
            r#"alerts.interval: "" is not a Prometheus duration (e.g. 30s, 5m, 1h)"#,
            r#"alerts.disk_filling.warning.for: "5x" is not a Prometheus duration (e.g. 30s, 5m, 1h)"#,
            "alerts.disk_filling.critical.available_percent: 120 is not a percent in (0, 100]",
            "alerts.memory_pressure.available_ratio: -0.1 is not a ratio in (0, 1]",
            "alerts.task_failure_ratio.ratio: 0 is not a ratio in (0, 1]",
            "alerts.task_failure_ratio.min_finished: 0 is not a count above 0",
            "alerts.queue_stuck.quantile: 1.5 is not a ratio in (0, 1]",
            "alerts.queue_stuck.wait_seconds: NaN is not a number of seconds above 0",
            r#"alerts.dead_letters_growing.window: "1h1h" is not a Prometheus duration (e.g. 30s, 5m, 1h)"#,
            "alerts.outbox_lag.seconds: -1 is not a number of seconds above 0",
            r#"alerts.gpu_row_remap_failure.window: "1.5h" is not a Prometheus duration (e.g. 30s, 5m, 1h)"#,
            "alerts.gpu_too_hot.celsius: -5 is not a temperature above 0",
            r#"alerts.gpu_allocated_idle.window: "30 m" is not a Prometheus duration (e.g. 30s, 5m, 1h)"#,
            "alerts.preemption_storm.count: 0 is not a count above 0",
            r#"alerts.preemption_storm.window: "0s" is not a duration above 0"#,
            "alerts.budget_burn.percent: 0 is not a percent in (0, 100]",
        ];
        assert_eq!(problems, expected);
        match generate(&config) {
            Err(Error::InvalidConfig { problems }) => assert_eq!(problems, expected),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
        assert!(AlertsConfig::default().validate().is_ok());
    }

    #[test]
    fn config_reads_from_yaml_and_refuses_unknown_keys() {
        let config: AlertsConfig = serde_saphyr::from_str(
            "labels: { team: platform }\ngpu_too_hot: { celsius: 80, for: 10m }\ndisk_filling:\n  critical: { enabled: false }\nwatchdog: { severity: warning }\n",
        )
        .unwrap();
        assert_eq!(config.gpu_too_hot.celsius, 80.0);
        assert_eq!(config.gpu_too_hot.r#for, "10m");
        assert_eq!(config.gpu_too_hot.severity, Severity::Warning);
        assert!(!config.disk_filling.critical.enabled);
        assert_eq!(config.disk_filling.critical.available_percent, 20.0);
        assert_eq!(config.disk_filling.critical.severity, Severity::Critical);
        assert_eq!(
            config.disk_filling.warning,
            AlertsConfig::default().disk_filling.warning
        );
        assert_eq!(config.watchdog.severity, Severity::Warning);

        for (yaml, key) in [
            ("gpu_too_hot: { celcius: 80 }\n", "celcius"),
            ("disk_filling: { critical: { percent: 10 } }\n", "percent"),
            ("disk_filling: { fstypes: tmpfs }\n", "fstypes"),
            ("gpu_too_hot: { severity: page }\n", "page"),
        ] {
            let error = serde_saphyr::from_str::<AlertsConfig>(yaml)
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{yaml}: {error}");
        }
    }
}
