//! Prometheus: its account and discovery rights, `prometheus.yml`, the rules file, the
//! StatefulSet and the Service.

use serde_json::{Value, json};

use super::{
    METRICS_PORT, StackConfig, StackInputs, checksum, config_map, meta, selector, service, yaml,
};
use crate::Result;

const COMPONENT: &str = "prometheus";
/// Prometheus's port, named `web` as upstream names it.
const PORT: u16 = 9090;
const CONFIG_DIR: &str = "/etc/prometheus/config";
const RULES_DIR: &str = "/etc/prometheus/rules";
/// The rules file's name in the `prometheus-rules` ConfigMap and its mount.
pub(super) const RULES_FILE: &str = "ops-rules.yaml";
/// Prometheus's image runs as `nobody`.
const NOBODY: u32 = 65534;

pub(super) fn objects(config: &StackConfig, inputs: &StackInputs) -> Result<Vec<Value>> {
    let cluster_name = format!("{}-prometheus", config.namespace);
    let prometheus_yml = yaml("prometheus.yml", &prometheus_yml(config))?;
    let rules = inputs
        .rules
        .clone()
        .unwrap_or_else(|| "groups: []\n".to_owned());
    Ok(vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(config, COMPONENT, COMPONENT),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": cluster_meta(&cluster_name),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["nodes", "nodes/metrics", "services", "endpoints", "pods"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
                { "nonResourceURLs": ["/metrics"], "verbs": ["get"] },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": cluster_meta(&cluster_name),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_name,
            },
            "subjects": [{
                "kind": "ServiceAccount",
                "name": COMPONENT,
                "namespace": config.namespace,
            }],
        }),
        config_map(
            config,
            "prometheus-config",
            COMPONENT,
            json!({ "prometheus.yml": prometheus_yml }),
        ),
        config_map(
            config,
            "prometheus-rules",
            COMPONENT,
            json!({ RULES_FILE: rules }),
        ),
        stateful_set(config, &checksum(&[&prometheus_yml, &rules])),
        service(config, COMPONENT, "web", PORT, false),
    ])
}

/// Metadata of a cluster-scoped object (named after the namespace, so that two stacks
/// in one cluster do not collide).
fn cluster_meta(name: &str) -> Value {
    json!({
        "name": name,
        "labels": {
            super::NAME: COMPONENT,
            super::PART_OF: super::STACK,
            "app.kubernetes.io/managed-by": "ops-monitor",
        },
    })
}

/// `prometheus.yml`: Prometheus itself, node_exporter and DCGM exporter pods found
/// through their Services' endpoints, and the Ops exporters (static and annotated pods).
pub(super) fn prometheus_yml(config: &StackConfig) -> Value {
    let mut jobs = vec![json!({
        "job_name": "prometheus",
        "static_configs": [{ "targets": [format!("localhost:{PORT}")] }],
    })];
    jobs.push(endpoints_job(config, "node-exporter"));
    if config.dcgm_exporter {
        jobs.push(endpoints_job(config, "dcgm-exporter"));
    }
    let ops = &config.ops_exporters;
    if !ops.targets.is_empty() {
        jobs.push(json!({
            "job_name": "ops",
            "static_configs": [{ "targets": ops.targets }],
        }));
    }
    if ops.discover_pods {
        let mut sd = json!({ "role": "pod" });
        if !ops.namespaces.is_empty() {
            sd["namespaces"] = json!({ "names": ops.namespaces });
        }
        jobs.push(json!({
            "job_name": "ops-pods",
            "kubernetes_sd_configs": [sd],
            "relabel_configs": [
                {
                    "source_labels": ["__meta_kubernetes_pod_annotation_ops_dev_scrape"],
                    "regex": "true",
                    "action": "keep",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_phase"],
                    "regex": "Pending|Succeeded|Failed",
                    "action": "drop",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_annotation_ops_dev_path"],
                    "regex": "(.+)",
                    "target_label": "__metrics_path__",
                },
                {
                    "source_labels": ["__address__", "__meta_kubernetes_pod_annotation_ops_dev_port"],
                    "regex": "([^:]+)(?::\\d+)?;(\\d+)",
                    "replacement": "$1:$2",
                    "target_label": "__address__",
                },
                { "source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace" },
                { "source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod" },
                { "source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node" },
            ],
        }));
    }
    json!({
        "global": {
            "scrape_interval": config.scrape_interval,
            "evaluation_interval": config.scrape_interval,
        },
        "rule_files": [format!("{RULES_DIR}/{RULES_FILE}")],
        "scrape_configs": jobs,
    })
}

/// A job scraping every pod behind the stack's Service `component` (a DaemonSet's),
/// named by its node: `instance` is the node name, which host and GPU panels show.
fn endpoints_job(config: &StackConfig, component: &str) -> Value {
    json!({
        "job_name": component,
        "kubernetes_sd_configs": [{
            "role": "endpoints",
            "namespaces": { "names": [config.namespace] },
        }],
        "relabel_configs": [
            {
                "source_labels": [
                    "__meta_kubernetes_service_name",
                    "__meta_kubernetes_endpoint_port_name",
                ],
                "regex": format!("{component};{METRICS_PORT}"),
                "action": "keep",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_node_name"],
                "target_label": "instance",
            },
        ],
    })
}

fn stateful_set(config: &StackConfig, checksum: &str) -> Value {
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": config.storage_size } },
    });
    if let Some(class) = &config.storage_class {
        claim_spec["storageClassName"] = json!(class);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(config, COMPONENT, COMPONENT),
        "spec": {
            "replicas": 1,
            "serviceName": COMPONENT,
            "selector": { "matchLabels": selector(COMPONENT) },
            "template": {
                "metadata": {
                    "labels": selector(COMPONENT),
                    "annotations": { "ops.dev/config-checksum": checksum },
                },
                "spec": {
                    "serviceAccountName": COMPONENT,
                    "securityContext": {
                        "runAsUser": NOBODY,
                        "runAsGroup": NOBODY,
                        "runAsNonRoot": true,
                        "fsGroup": NOBODY,
                    },
                    "containers": [{
                        "name": COMPONENT,
                        "image": config.images.prometheus,
                        "args": [
                            format!("--config.file={CONFIG_DIR}/prometheus.yml"),
                            "--storage.tsdb.path=/prometheus",
                            format!("--storage.tsdb.retention.time={}", config.retention),
                            "--web.enable-lifecycle",
                        ],
                        "ports": [{ "name": "web", "containerPort": PORT, "protocol": "TCP" }],
                        "readinessProbe": {
                            "httpGet": { "path": "/-/ready", "port": "web" },
                            "initialDelaySeconds": 5,
                            "periodSeconds": 10,
                        },
                        "livenessProbe": {
                            "httpGet": { "path": "/-/healthy", "port": "web" },
                            "initialDelaySeconds": 30,
                            "periodSeconds": 15,
                        },
                        "resources": { "requests": { "cpu": "250m", "memory": "1Gi" } },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            { "name": "config", "mountPath": CONFIG_DIR, "readOnly": true },
                            { "name": "rules", "mountPath": RULES_DIR, "readOnly": true },
                            { "name": "data", "mountPath": "/prometheus" },
                        ],
                    }],
                    "volumes": [
                        { "name": "config", "configMap": { "name": "prometheus-config" } },
                        { "name": "rules", "configMap": { "name": "prometheus-rules" } },
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": { "name": "data" },
                "spec": claim_spec,
            }],
        },
    })
}
