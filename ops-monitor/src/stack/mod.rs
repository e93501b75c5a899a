//! The monitoring stack of a Kubernetes cluster as manifests: Prometheus,
//! node_exporter, NVIDIA's DCGM exporter and Grafana with the Ops dashboards.
//!
//! [`render`] turns a [`StackConfig`] (and the alert rules, made elsewhere) into
//! Kubernetes objects as JSON values; [`to_yaml`] writes them as one multi-document
//! YAML stream for `kubectl apply -f -`. Nothing here talks to a cluster.
//!
//! ```
//! use ops_monitor::stack::{self, StackConfig, StackInputs};
//!
//! let config = StackConfig::default();
//! let objects = stack::render(&config, &StackInputs::default())?;
//! let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
//! assert_eq!(kinds[0], "Namespace");
//! assert!(kinds.contains(&"DaemonSet"));
//! let yaml = stack::to_yaml(&objects)?;
//! assert!(yaml.contains("\n---\n"));
//! # Ok::<(), ops_monitor::Error>(())
//! ```
//!
//! The objects, in order:
//!
//! | object | what it is |
//! |---|---|
//! | Namespace | `config.namespace` |
//! | ServiceAccount, ClusterRole, ClusterRoleBinding `prometheus` | read access to nodes, pods, services and endpoints for service discovery |
//! | ConfigMap `prometheus-config` | `prometheus.yml`: scrape jobs `prometheus`, `node-exporter`, `dcgm-exporter`, `ops`, `ops-pods` |
//! | ConfigMap `prometheus-rules` | the rules file handed in ([`StackInputs::rules`]) |
//! | StatefulSet, Service `prometheus` | Prometheus with a volume of `storage_size` |
//! | DaemonSet, Service `node-exporter` | host metrics on every node (host network and PID namespace, `/`, `/proc`, `/sys` read-only) |
//! | ConfigMap `dcgm-exporter-counters`, DaemonSet, Service `dcgm-exporter` | GPU metrics on the GPU nodes (when `dcgm_exporter`) |
//! | ConfigMaps `grafana-datasources`, `grafana-dashboard-provider`, `grafana-dashboards` | the Prometheus data source and the dashboards of [`crate::dashboards`] |
//! | Deployment, Service `grafana` | Grafana, its admin login read from the Secret `grafana_admin_secret` |

mod config;
mod exporters;
mod grafana;
mod prometheus;

use serde_json::{Value, json};

pub use config::{OpsExporters, StackConfig, StackImages};

use crate::{Error, Result};

/// What the stack is rendered with besides its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StackInputs {
    /// The Prometheus rules file (YAML with `groups:`), mounted as
    /// `/etc/prometheus/rules/ops-rules.yaml`. `None` mounts a file with no groups.
    pub rules: Option<String>,
}

impl StackInputs {
    /// Inputs with the given rules file.
    pub fn with_rules(mut self, rules: impl Into<String>) -> Self {
        self.rules = Some(rules.into());
        self
    }
}

/// The Kubernetes objects of the stack, in the order they can be applied (the
/// namespace first). Every problem of `config` (and a rules file that is not YAML) is
/// reported at once as [`Error::InvalidConfig`].
pub fn render(config: &StackConfig, inputs: &StackInputs) -> Result<Vec<Value>> {
    let mut problems = config.problems();
    if let Some(rules) = &inputs.rules
        && let Err(e) = serde_saphyr::from_str::<Value>(rules)
    {
        problems.push(format!("inputs.rules: not YAML: {e}"));
    }
    if !problems.is_empty() {
        return Err(Error::InvalidConfig { problems });
    }
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": config.namespace, "labels": { PART_OF: STACK } },
    })];
    out.extend(prometheus::objects(config, inputs)?);
    out.extend(exporters::node_exporter(config));
    if config.dcgm_exporter {
        out.extend(exporters::dcgm_exporter(config)?);
    }
    out.extend(grafana::objects(config)?);
    Ok(out)
}

/// The objects as one YAML stream, documents separated by `---`, for
/// `kubectl apply -f`.
pub fn to_yaml(objects: &[Value]) -> Result<String> {
    serde_saphyr::to_string_multiple(objects).map_err(|e| Error::Serialize {
        what: "manifests".to_owned(),
        message: e.to_string(),
    })
}

const PART_OF: &str = "app.kubernetes.io/part-of";
const STACK: &str = "ops-monitoring";
const NAME: &str = "app.kubernetes.io/name";

/// The labels selecting a component's pods.
fn selector(component: &str) -> Value {
    json!({ NAME: component, PART_OF: STACK })
}

/// Metadata of a namespaced object of `component`.
fn meta(config: &StackConfig, name: &str, component: &str) -> Value {
    json!({
        "name": name,
        "namespace": config.namespace,
        "labels": {
            NAME: component,
            PART_OF: STACK,
            "app.kubernetes.io/managed-by": "ops-monitor",
        },
    })
}

/// A ConfigMap with the given files.
fn config_map(config: &StackConfig, name: &str, component: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(config, name, component),
        "data": data,
    })
}

/// A ClusterIP Service for one named port of `component` (headless for DaemonSets:
/// Prometheus scrapes every pod through its endpoints).
fn service(
    config: &StackConfig,
    component: &str,
    port_name: &str,
    port: u16,
    headless: bool,
) -> Value {
    let mut spec = json!({
        "selector": selector(component),
        "ports": [{ "name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP" }],
    });
    if headless {
        spec["clusterIP"] = json!("None");
    } else {
        spec["type"] = json!("ClusterIP");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(config, component, component),
        "spec": spec,
    })
}

/// The name of the exporters' ports, container and Service alike: the scrape jobs keep
/// endpoints by it.
const METRICS_PORT: &str = "metrics";

/// YAML of a JSON value (prometheus.yml, Grafana's provisioning files).
fn yaml(what: &str, value: &Value) -> Result<String> {
    serde_saphyr::to_string(value).map_err(|e| Error::Serialize {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

/// FNV-1a of the files a pod reads, as a pod annotation: a changed file rolls the pods.
fn checksum(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_component_in_order() {
        let objects = render(&StackConfig::default(), &StackInputs::default()).expect("renders");
        let names: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "Namespace/ops-monitoring",
                "ServiceAccount/prometheus",
                "ClusterRole/ops-monitoring-prometheus",
                "ClusterRoleBinding/ops-monitoring-prometheus",
                "ConfigMap/prometheus-config",
                "ConfigMap/prometheus-rules",
                "StatefulSet/prometheus",
                "Service/prometheus",
                "DaemonSet/node-exporter",
                "Service/node-exporter",
                "ConfigMap/dcgm-exporter-counters",
                "DaemonSet/dcgm-exporter",
                "Service/dcgm-exporter",
                "ConfigMap/grafana-datasources",
                "ConfigMap/grafana-dashboard-provider",
                "ConfigMap/grafana-dashboards",
                "Deployment/grafana",
                "Service/grafana",
            ]
        );
        let without_gpu = StackConfig {
            dcgm_exporter: false,
            ..StackConfig::default()
        };
        let objects = render(&without_gpu, &StackInputs::default()).expect("renders");
        assert!(
            !objects
                .iter()
                .any(|o| o["metadata"]["name"] == "dcgm-exporter")
        );
    }

    #[test]
    fn rules_that_are_not_yaml_are_a_problem() {
        let inputs = StackInputs::default().with_rules("groups: [unclosed");
        match render(&StackConfig::default(), &inputs) {
            Err(Error::InvalidConfig { problems }) => {
                assert_eq!(problems.len(), 1);
                assert!(problems[0].starts_with("inputs.rules:"), "{problems:?}");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn checksum_changes_with_content() {
        assert_eq!(checksum(&["a", "b"]), checksum(&["a", "b"]));
        assert_ne!(checksum(&["a", "b"]), checksum(&["ab", ""]));
    }
}
