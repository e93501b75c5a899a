//! The exporters on the nodes: node_exporter on every node, NVIDIA's DCGM exporter on
//! the GPU nodes.

use serde_json::{Value, json};

use super::config::toleration;
use super::{METRICS_PORT, StackConfig, checksum, config_map, meta, selector, service};
use crate::{Error, Result};

const NODE_EXPORTER: &str = "node-exporter";
const NODE_EXPORTER_PORT: u16 = 9100;
const DCGM_EXPORTER: &str = "dcgm-exporter";
const DCGM_EXPORTER_PORT: u16 = 9400;
const COUNTERS_DIR: &str = "/etc/ops-dcgm";

/// The DCGM fields exported: exactly those the Ops GPU collector exports and the
/// dashboards read (the exporter's CSV format: field, Prometheus type, help).
const DCGM_COUNTERS: &str = "\
# DCGM field, Prometheus type, help. The names the Ops dashboards and alerts read.
DCGM_FI_DEV_GPU_UTIL, gauge, GPU utilization (in %).
DCGM_FI_DEV_FB_USED, gauge, Framebuffer memory used (in MiB).
DCGM_FI_DEV_FB_FREE, gauge, Framebuffer memory free (in MiB).
DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).
DCGM_FI_DEV_POWER_USAGE, gauge, Power draw (in W).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Total energy consumption since boot (in mJ).
DCGM_FI_DEV_XID_ERRORS, gauge, Value of the last XID error encountered.
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS, counter, Number of remapped rows for correctable errors.
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS, counter, Number of remapped rows for uncorrectable errors.
DCGM_FI_DEV_ROW_REMAP_FAILURE, gauge, Whether remapping of rows has failed.
";

/// node_exporter on every node (tainted ones too): the host's network and PID
/// namespaces, and `/proc`, `/sys` and `/` read-only under `/host`.
pub(super) fn node_exporter(config: &StackConfig) -> Vec<Value> {
    let host_path = |name: &str, path: &str| json!({ "name": name, "hostPath": { "path": path } });
    let daemon_set = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta(config, NODE_EXPORTER, NODE_EXPORTER),
        "spec": {
            "selector": { "matchLabels": selector(NODE_EXPORTER) },
            "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "10%" } },
            "template": {
                "metadata": { "labels": selector(NODE_EXPORTER) },
                "spec": {
                    "hostNetwork": true,
                    "hostPID": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "automountServiceAccountToken": false,
                    "tolerations": [{ "operator": "Exists" }],
                    "securityContext": {
                        "runAsUser": 65534,
                        "runAsGroup": 65534,
                        "runAsNonRoot": true,
                    },
                    "containers": [{
                        "name": NODE_EXPORTER,
                        "image": config.images.node_exporter,
                        "args": [
                            "--path.procfs=/host/proc",
                            "--path.sysfs=/host/sys",
                            "--path.rootfs=/host/root",
                            format!("--web.listen-address=:{NODE_EXPORTER_PORT}"),
                            "--collector.filesystem.mount-points-exclude=^/(dev|proc|sys|run/containerd/.+|var/lib/docker/.+|var/lib/kubelet/pods/.+)($|/)",
                        ],
                        "ports": [{
                            "name": METRICS_PORT,
                            "containerPort": NODE_EXPORTER_PORT,
                            "hostPort": NODE_EXPORTER_PORT,
                            "protocol": "TCP",
                        }],
                        "readinessProbe": {
                            "httpGet": { "path": "/", "port": METRICS_PORT },
                            "periodSeconds": 15,
                        },
                        "resources": {
                            "requests": { "cpu": "50m", "memory": "64Mi" },
                            "limits": { "memory": "180Mi" },
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            { "name": "proc", "mountPath": "/host/proc", "readOnly": true },
                            { "name": "sys", "mountPath": "/host/sys", "readOnly": true },
                            {
                                "name": "root",
                                "mountPath": "/host/root",
                                "readOnly": true,
                                "mountPropagation": "HostToContainer",
                            },
                        ],
                    }],
                    "volumes": [
                        host_path("proc", "/proc"),
                        host_path("sys", "/sys"),
                        host_path("root", "/"),
                    ],
                },
            },
        },
    });
    vec![
        daemon_set,
        service(
            config,
            NODE_EXPORTER,
            METRICS_PORT,
            NODE_EXPORTER_PORT,
            true,
        ),
    ]
}

/// DCGM exporter on the nodes `gpu_node_selector` selects, tolerating their taints,
/// exporting the fields in [`DCGM_COUNTERS`]. `Hostname` is the node's name.
pub(super) fn dcgm_exporter(config: &StackConfig) -> Result<Vec<Value>> {
    let tolerations = config
        .gpu_tolerations
        .iter()
        .map(|t| toleration(t))
        .collect::<std::result::Result<Vec<Value>, String>>()
        .map_err(|e| Error::InvalidConfig {
            problems: vec![format!("stack.gpu_tolerations: {e}")],
        })?;
    let mut pod_spec = json!({
        "nodeSelector": config.gpu_node_selector,
        "automountServiceAccountToken": false,
        "containers": [{
            "name": DCGM_EXPORTER,
            "image": config.images.dcgm_exporter,
            "args": ["-f", format!("{COUNTERS_DIR}/counters.csv")],
            "env": [
                { "name": "DCGM_EXPORTER_LISTEN", "value": format!(":{DCGM_EXPORTER_PORT}") },
                // Adds the pod, namespace and container holding each GPU.
                { "name": "DCGM_EXPORTER_KUBERNETES", "value": "true" },
                // The exporter's `Hostname` label: the node, not the pod.
                {
                    "name": "NODE_NAME",
                    "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } },
                },
            ],
            "ports": [{ "name": METRICS_PORT, "containerPort": DCGM_EXPORTER_PORT, "protocol": "TCP" }],
            "readinessProbe": {
                "httpGet": { "path": "/health", "port": METRICS_PORT },
                "initialDelaySeconds": 15,
                "periodSeconds": 15,
            },
            "resources": {
                "requests": { "cpu": "100m", "memory": "128Mi" },
                "limits": { "memory": "512Mi" },
            },
            // DCGM reads profiling counters through the driver.
            "securityContext": {
                "runAsNonRoot": false,
                "runAsUser": 0,
                "capabilities": { "add": ["SYS_ADMIN"] },
            },
            "volumeMounts": [
                { "name": "counters", "mountPath": COUNTERS_DIR, "readOnly": true },
                {
                    "name": "pod-resources",
                    "mountPath": "/var/lib/kubelet/pod-resources",
                    "readOnly": true,
                },
            ],
        }],
        "volumes": [
            { "name": "counters", "configMap": { "name": "dcgm-exporter-counters" } },
            { "name": "pod-resources", "hostPath": { "path": "/var/lib/kubelet/pod-resources" } },
        ],
    });
    if !tolerations.is_empty() {
        pod_spec["tolerations"] = Value::Array(tolerations);
    }
    if let Some(class) = &config.gpu_runtime_class {
        pod_spec["runtimeClassName"] = json!(class);
    }
    Ok(vec![
        config_map(
            config,
            "dcgm-exporter-counters",
            DCGM_EXPORTER,
            json!({ "counters.csv": DCGM_COUNTERS }),
        ),
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": meta(config, DCGM_EXPORTER, DCGM_EXPORTER),
            "spec": {
                "selector": { "matchLabels": selector(DCGM_EXPORTER) },
                "updateStrategy": { "type": "RollingUpdate" },
                "template": {
                    "metadata": {
                        "labels": selector(DCGM_EXPORTER),
                        "annotations": { "ops.dev/config-checksum": checksum(&[DCGM_COUNTERS]) },
                    },
                    "spec": pod_spec,
                },
            },
        }),
        service(
            config,
            DCGM_EXPORTER,
            METRICS_PORT,
            DCGM_EXPORTER_PORT,
            true,
        ),
    ])
}
