//! Grafana dashboards for the metrics ops-monitor exports: the fleet and its GPUs,
//! tasks and queues, tenants.
//!
//! The dashboards are generated from one small panel model, so that every panel has
//! the same data source, units and layout rules, and their queries use only the metric
//! names ops-monitor (and node_exporter and DCGM exporter, whose names it shares)
//! exports. Each has a stable uid, so links and provisioned copies survive updates.
//!
//! ```
//! use ops_monitor::dashboards::{self, DashboardsConfig};
//!
//! let all = dashboards::all(&DashboardsConfig::default());
//! assert_eq!(all.len(), 3);
//! assert_eq!(all[0].uid, dashboards::FLEET_UID);
//! assert_eq!(all[0].title, "Ops / Fleet and GPUs");
//! let text = all[0].to_string_pretty()?;
//! assert!(text.contains("DCGM_FI_DEV_GPU_UTIL"));
//! # Ok::<(), ops_monitor::Error>(())
//! ```
//!
//! Import a file by hand (Dashboards → New → Import) or let Grafana's file provisioning
//! load the directory [`write_dir`] fills; `stack::render` does the latter in a
//! cluster.

mod fleet;
mod model;
mod tasks;
mod tenants;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The uid of "Fleet and GPUs".
pub const FLEET_UID: &str = "ops-fleet-gpus";
/// The uid of "Tasks and queues".
pub const TASKS_UID: &str = "ops-tasks-queues";
/// The uid of "Tenants".
pub const TENANTS_UID: &str = "ops-tenants";

/// How the dashboards are generated: the data source they query by default, the
/// refresh interval, the time range shown and how titles begin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DashboardsConfig {
    /// The uid (or name) of the Prometheus data source the `datasource` variable
    /// selects when a dashboard opens (default `prometheus`, the uid `stack::render`
    /// provisions). Any other Prometheus data source can be picked in the dashboard.
    pub datasource: String,
    /// How often an open dashboard refreshes, as Grafana writes it (`30s`, `1m`; empty
    /// for never). Default `30s`.
    pub refresh: String,
    /// The start of the time range shown when a dashboard opens (default `now-6h`).
    pub time_from: String,
    /// The end of that range (default `now`).
    pub time_to: String,
    /// What each title begins with (default `Ops / `).
    pub title_prefix: String,
    /// Tags on every dashboard; the dashboards link to each other through them
    /// (default `["ops"]`).
    pub tags: Vec<String>,
}

impl Default for DashboardsConfig {
    fn default() -> Self {
        Self {
            datasource: "prometheus".to_owned(),
            refresh: "30s".to_owned(),
            time_from: "now-6h".to_owned(),
            time_to: "now".to_owned(),
            title_prefix: "Ops / ".to_owned(),
            tags: vec!["ops".to_owned()],
        }
    }
}

impl DashboardsConfig {
    /// Every invalid field, each naming its key under `prefix` (`dashboards` gives
    /// `dashboards.refresh: …`). Empty when the configuration is usable.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.datasource.trim().is_empty() {
            out.push(format!("{prefix}.datasource: must name a data source"));
        }
        if !self.refresh.is_empty() && !is_grafana_interval(&self.refresh) {
            out.push(format!(
                "{prefix}.refresh: {:?} is not an interval like 30s or 1m (or empty for never)",
                self.refresh
            ));
        }
        for (key, value) in [("time_from", &self.time_from), ("time_to", &self.time_to)] {
            if value.trim().is_empty() {
                out.push(format!(
                    "{prefix}.{key}: must not be empty (e.g. now-6h, now)"
                ));
            }
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.trim().is_empty() {
                out.push(format!("{prefix}.tags[{i}]: must not be empty"));
            }
        }
        out
    }
}

/// `30s`, `5m`, `1h`, `1d`: one positive number and one unit.
fn is_grafana_interval(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    matches!(unit, "ms" | "s" | "m" | "h" | "d" | "w" | "M" | "y")
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

/// A generated Grafana dashboard.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Dashboard {
    /// Its stable uid ([`FLEET_UID`], [`TASKS_UID`], [`TENANTS_UID`]).
    pub uid: String,
    /// Its title, with the configured prefix.
    pub title: String,
    /// The dashboard JSON (schemaVersion 39), as Grafana imports and provisions it.
    pub json: Value,
}

impl Dashboard {
    /// The JSON, indented, as a file holds it.
    pub fn to_string_pretty(&self) -> Result<String> {
        serde_json::to_string_pretty(&self.json).map_err(|e| Error::Serialize {
            what: format!("dashboard {}", self.uid),
            message: e.to_string(),
        })
    }

    /// The file name provisioning expects it under: `<uid>.json`.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.uid)
    }
}

/// The three dashboards: "Fleet and GPUs", "Tasks and queues", "Tenants", in that
/// order.
pub fn all(config: &DashboardsConfig) -> Vec<Dashboard> {
    vec![
        fleet::dashboard(config),
        tasks::dashboard(config),
        tenants::dashboard(config),
    ]
}

/// Writes each dashboard to `<dir>/<uid>.json` (creating `dir`), for Grafana's file
/// provisioning (a dashboards provider whose `options.path` is `dir`). Returns the
/// files written.
pub fn write_dir(dir: impl AsRef<Path>, dashboards: &[Dashboard]) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let io = |path: &Path, source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::with_capacity(dashboards.len());
    for dashboard in dashboards {
        let path = dir.join(dashboard.file_name());
        let mut text = dashboard.to_string_pretty()?;
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

/// Builds one dashboard from its parts.
fn build(
    config: &DashboardsConfig,
    uid: &str,
    title: &str,
    description: &str,
    variables: &[model::Variable],
    items: &[model::Item],
) -> Dashboard {
    let title = format!("{}{title}", config.title_prefix);
    Dashboard {
        uid: uid.to_owned(),
        json: model::dashboard_json(config, uid, &title, description, variables, items),
        title,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_and_titles_are_stable() {
        let all = all(&DashboardsConfig::default());
        let got: Vec<(&str, &str)> = all
            .iter()
            .map(|d| (d.uid.as_str(), d.title.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (FLEET_UID, "Ops / Fleet and GPUs"),
                (TASKS_UID, "Ops / Tasks and queues"),
                (TENANTS_UID, "Ops / Tenants"),
            ]
        );
        for d in &all {
            assert_eq!(d.json["uid"], d.uid.as_str());
            assert_eq!(d.json["title"], d.title.as_str());
            assert_eq!(d.json["schemaVersion"], 39);
        }
    }

    #[test]
    fn config_reaches_the_json() {
        let config = DashboardsConfig {
            datasource: "metrics".into(),
            refresh: "1m".into(),
            title_prefix: "Acme / ".into(),
            ..DashboardsConfig::default()
        };
        let d = &all(&config)[2];
        assert_eq!(d.title, "Acme / Tenants");
        assert_eq!(d.json["refresh"], "1m");
        assert_eq!(
            d.json["templating"]["list"][0]["current"]["value"],
            "metrics"
        );
        assert_eq!(d.json["templating"]["list"][0]["query"], "prometheus");
    }

    #[test]
    fn bad_config_lists_every_problem() {
        let config = DashboardsConfig {
            datasource: " ".into(),
            refresh: "0s".into(),
            time_from: String::new(),
            tags: vec![String::new()],
            ..DashboardsConfig::default()
        };
        let problems = config.problems("dashboards");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("dashboards.datasource:"));
        assert!(problems[1].starts_with("dashboards.refresh:"));
        assert!(problems[2].starts_with("dashboards.time_from:"));
        assert!(problems[3].starts_with("dashboards.tags[0]:"));
        assert!(
            DashboardsConfig::default()
                .problems("dashboards")
                .is_empty()
        );
        assert!(
            is_grafana_interval("30s") && is_grafana_interval("1m") && !is_grafana_interval("m")
        );
    }

    #[test]
    fn write_dir_writes_one_file_per_uid() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("provisioned");
        let all = all(&DashboardsConfig::default());
        let files = write_dir(&dir, &all).expect("written");
        assert_eq!(files.len(), 3);
        for (file, d) in files.iter().zip(&all) {
            assert_eq!(
                file.file_name().and_then(|f| f.to_str()),
                Some(d.file_name().as_str())
            );
            let back: Value =
                serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
            assert_eq!(back, d.json);
        }
    }
}
