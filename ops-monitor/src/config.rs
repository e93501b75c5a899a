//! [`MonitorConfig`]: what the `[monitor]` section of a platform's configuration
//! says.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
    /// Task, queue and tenant metrics: cardinality caps and histogram buckets.
    pub tasks: TaskMetricsConfig,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            listen: None,
            subscription: None,
            host: true,
            gpu: true,
            tasks: TaskMetricsConfig::default(),
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
        out.extend(self.tasks.problems("monitor.tasks"));
        out
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
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
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
        let problems = config.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("monitor.listen: \"localhost\""));
        assert!(problems[1].contains("monitor.subscription"));
        assert!(problems[2].starts_with("monitor.tasks.max_tenants"));
        assert!(problems[3].starts_with("monitor.tasks.wait_buckets"));
        assert!(matches!(config.validate(), Err(Error::InvalidConfig { .. })));
        assert!(MonitorConfig::default().subscription_name().starts_with("ops-monitor."));
    }
}
