//! [`MonitorConfig`]: what the `[monitor]` section of a platform's configuration
//! says.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dashboards::DashboardsConfig;
use crate::rules::{AlertsConfig, parse_duration};
use crate::stack::{StackConfig, StackInputs};
use crate::tasks::TaskMetricsConfig;
use crate::{Error, Result};

/// The monitoring settings (`[monitor]` in the `ops` facade's configuration).
///
/// ```
/// let config: ops_monitor::MonitorConfig = toml::from_str(r#"
///     listen = "127.0.0.1:9464"
///     gpu = false
///     [tasks]
///     max_tenants = 500
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// assert_eq!(config.tasks.max_tenants, 500);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MonitorConfig {
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`HOST:PORT`). `None`: not
    /// served; mount `http::router` in your own server.
    pub listen: Option<String>,
    /// The name of the metrics' event subscription. Each process needs its own to see
    /// every event (default `ops-monitor.<hostname>`).
    pub subscription: Option<String>,
    /// Export this host's metrics under node_exporter's names (default true).
    pub host: bool,
    /// Export GPU metrics under DCGM's names (default true; needs the `nvml` feature
    /// and the NVIDIA driver, else `ops_gpu_collector_up 0`).
    pub gpu: bool,
    /// How long a scrape waits for one collector before marking it down (a
    /// Prometheus duration, default `5s`).
    pub collect_timeout: String,
    /// Task, queue and tenant metrics: cardinality caps and histogram buckets.
    pub tasks: TaskMetricsConfig,
    /// The alert rules: thresholds, durations, severities, which are on.
    pub alerts: AlertsConfig,
    /// The Grafana dashboards: data source, refresh, time range.
    pub dashboards: DashboardsConfig,
    /// A cluster's monitoring stack (Prometheus, node-exporter, DCGM exporter,
    /// Grafana), for [`write_files`](Self::write_files).
    pub stack: StackConfig,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            listen: None,
            subscription: None,
            host: true,
            gpu: true,
            collect_timeout: "5s".to_owned(),
            tasks: TaskMetricsConfig::default(),
            alerts: AlertsConfig::default(),
            dashboards: DashboardsConfig::default(),
            stack: StackConfig::default(),
        }
    }
}

impl MonitorConfig {
    /// Every problem, each naming its key (`monitor.listen: …`).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(listen) = &self.listen
            && listen.parse::<SocketAddr>().is_err()
        {
            out.push(format!(
                "monitor.listen: {listen:?} is not an address (HOST:PORT, e.g. 127.0.0.1:9464)"
            ));
        }
        if let Some(name) = &self.subscription
            && let Err(e) = ops_events::validate_name("monitor.subscription", name)
        {
            out.push(e.to_string());
        }
        match parse_duration(&self.collect_timeout) {
            Some(d) if !d.is_zero() => {}
            _ => out.push(format!(
                "monitor.collect_timeout: {:?} is not a Prometheus duration above 0 (e.g. 5s)",
                self.collect_timeout
            )),
        }
        out.extend(self.tasks.problems("monitor.tasks"));
        out.extend(
            self.alerts
                .problems()
                .into_iter()
                .map(|p| format!("monitor.{p}")),
        );
        out.extend(self.dashboards.problems("monitor.dashboards"));
        out.extend(
            self.stack
                .problems()
                .into_iter()
                .map(|p| format!("monitor.{p}")),
        );
        out
    }

    /// The collect timeout (5 s when it does not parse; [`problems`](Self::problems)
    /// says so).
    pub fn collect_timeout(&self) -> Duration {
        parse_duration(&self.collect_timeout)
            .filter(|d| !d.is_zero())
            .unwrap_or(crate::DEFAULT_COLLECT_TIMEOUT)
    }

    /// Writes what an operator loads into their tools, all from this one configuration,
    /// under `dir`: `prometheus/ops-rules.yaml` (a Prometheus rules file),
    /// `kubernetes/ops-prometheus-rule.yaml` (the same rules as a `PrometheusRule` for
    /// the Prometheus Operator), `grafana/<uid>.json` (the dashboards) and
    /// `kubernetes/monitoring-stack.yaml` (the cluster's monitoring stack with those
    /// rules and dashboards). Gives the files written.
    pub fn write_files(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.validate()?;
        let rules = crate::rules::generate(&self.alerts)?;
        let rules_yaml = rules.to_yaml()?;
        let mut written = Vec::new();
        let mut write = |path: PathBuf, text: &str| -> Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            std::fs::write(&path, text).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
            written.push(path);
            Ok(())
        };
        write(dir.join("prometheus/ops-rules.yaml"), &rules_yaml)?;
        let manifest = rules.to_prometheus_rule(
            "ops-alerts",
            &self.stack.namespace,
            &std::collections::BTreeMap::new(),
        )?;
        write(dir.join("kubernetes/ops-prometheus-rule.yaml"), &manifest)?;
        let objects =
            crate::stack::render(&self.stack, &StackInputs::default().with_rules(rules_yaml))?;
        write(
            dir.join("kubernetes/monitoring-stack.yaml"),
            &crate::stack::to_yaml(&objects)?,
        )?;
        written.extend(crate::dashboards::write_dir(
            dir.join("grafana"),
            &crate::dashboards::all(&self.dashboards),
        )?);
        Ok(written)
    }

    /// `Ok` when there is no problem, else [`Error::InvalidConfig`] with all of them.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { problems })
        }
    }

    /// The listen address, when set and valid.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.as_deref().and_then(|l| l.parse().ok())
    }

    /// The subscription name: the configured one or `ops-monitor.<hostname>`.
    pub fn subscription_name(&self) -> String {
        self.subscription.clone().unwrap_or_else(|| {
            let host: String = crate::gpu::hostname()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(100)
                .collect();
            format!("ops-monitor.{host}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named_at_once() {
        let mut config = MonitorConfig {
            listen: Some("localhost".into()),
            subscription: Some("no spaces allowed".into()),
            ..MonitorConfig::default()
        };
        config.tasks.max_tenants = 0;
        config.tasks.wait_buckets = vec![5.0, 1.0];
        config.collect_timeout = "soon".into();
        config.alerts.gpu_too_hot.celsius = -5.0;
        let problems = config.problems();
        let starts = [
            "monitor.listen: \"localhost\"",
            "invalid monitor.subscription",
            "monitor.collect_timeout: \"soon\"",
            "monitor.tasks.max_tenants",
            "monitor.tasks.wait_buckets",
            "monitor.alerts.gpu_too_hot.celsius",
        ];
        assert_eq!(problems.len(), starts.len(), "{problems:?}");
        for (p, start) in problems.iter().zip(starts) {
            assert!(p.starts_with(start), "{p:?} should start with {start:?}");
        }
        assert!(matches!(
            config.validate(),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(
            MonitorConfig::default()
                .subscription_name()
                .starts_with("ops-monitor.")
        );
    }
}
