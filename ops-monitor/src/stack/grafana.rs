//! Grafana: the provisioned Prometheus data source and Ops dashboards, the Deployment
//! and the Service.

use serde_json::{Map, Value, json};

use super::{StackConfig, checksum, config_map, meta, selector, service, yaml};
use crate::{Result, dashboards};

const COMPONENT: &str = "grafana";
const PORT: u16 = 3000;
/// Grafana's image runs as user and group 472.
const GRAFANA_UID: u32 = 472;
const DASHBOARDS_DIR: &str = "/etc/grafana/dashboards/ops";

pub(super) fn objects(config: &StackConfig) -> Result<Vec<Value>> {
    let datasources = yaml(
        "grafana datasources",
        &json!({
            "apiVersion": 1,
            "datasources": [{
                "name": "Prometheus",
                "uid": config.dashboards.datasource,
                "type": "prometheus",
                "access": "proxy",
                "url": format!("http://prometheus.{}.svc:9090", config.namespace),
                "isDefault": true,
                "editable": false,
                "jsonData": { "timeInterval": config.scrape_interval },
            }],
        }),
    )?;
    let provider = yaml(
        "grafana dashboard provider",
        &json!({
            "apiVersion": 1,
            "providers": [{
                "name": "ops",
                "folder": "Ops",
                "type": "file",
                "disableDeletion": true,
                "allowUiUpdates": false,
                "updateIntervalSeconds": 60,
                "options": { "path": DASHBOARDS_DIR, "foldersFromFilesStructure": false },
            }],
        }),
    )?;
    let mut files = Map::new();
    for dashboard in dashboards::all(&config.dashboards) {
        files.insert(
            dashboard.file_name(),
            Value::String(dashboard.to_string_pretty()?),
        );
    }
    let sum = checksum(
        &[datasources.as_str(), provider.as_str()]
            .into_iter()
            .chain(files.values().filter_map(Value::as_str))
            .collect::<Vec<_>>(),
    );
    Ok(vec![
        config_map(
            config,
            "grafana-datasources",
            COMPONENT,
            json!({ "datasources.yaml": datasources }),
        ),
        config_map(
            config,
            "grafana-dashboard-provider",
            COMPONENT,
            json!({ "dashboards.yaml": provider }),
        ),
        config_map(
            config,
            "grafana-dashboards",
            COMPONENT,
            Value::Object(files),
        ),
        deployment(config, &sum),
        service(config, COMPONENT, "http", PORT, false),
    ])
}

fn deployment(config: &StackConfig, checksum: &str) -> Value {
    let secret = |name: &str, key: &str| {
        json!({
            "name": name,
            "valueFrom": { "secretKeyRef": { "name": config.grafana_admin_secret, "key": key } },
        })
    };
    let plain = |name: &str, value: &str| json!({ "name": name, "value": value });
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(config, COMPONENT, COMPONENT),
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": selector(COMPONENT) },
            "template": {
                "metadata": {
                    "labels": selector(COMPONENT),
                    "annotations": { "ops.dev/config-checksum": checksum },
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsUser": GRAFANA_UID,
                        "runAsGroup": GRAFANA_UID,
                        "runAsNonRoot": true,
                        "fsGroup": GRAFANA_UID,
                    },
                    "containers": [{
                        "name": COMPONENT,
                        "image": config.images.grafana,
                        "env": [
                            secret("GF_SECURITY_ADMIN_USER", "admin-user"),
                            secret("GF_SECURITY_ADMIN_PASSWORD", "admin-password"),
                            plain("GF_AUTH_ANONYMOUS_ENABLED", "false"),
                            plain("GF_USERS_ALLOW_SIGN_UP", "false"),
                            plain("GF_ANALYTICS_REPORTING_ENABLED", "false"),
                            plain("GF_ANALYTICS_CHECK_FOR_UPDATES", "false"),
                        ],
                        "ports": [{ "name": "http", "containerPort": PORT, "protocol": "TCP" }],
                        "readinessProbe": {
                            "httpGet": { "path": "/api/health", "port": "http" },
                            "initialDelaySeconds": 5,
                            "periodSeconds": 10,
                        },
                        "livenessProbe": {
                            "httpGet": { "path": "/api/health", "port": "http" },
                            "initialDelaySeconds": 60,
                            "periodSeconds": 30,
                        },
                        "resources": { "requests": { "cpu": "100m", "memory": "256Mi" } },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            {
                                "name": "datasources",
                                "mountPath": "/etc/grafana/provisioning/datasources",
                                "readOnly": true,
                            },
                            {
                                "name": "dashboard-provider",
                                "mountPath": "/etc/grafana/provisioning/dashboards",
                                "readOnly": true,
                            },
                            { "name": "dashboards", "mountPath": DASHBOARDS_DIR, "readOnly": true },
                            { "name": "data", "mountPath": "/var/lib/grafana" },
                        ],
                    }],
                    "volumes": [
                        { "name": "datasources", "configMap": { "name": "grafana-datasources" } },
                        {
                            "name": "dashboard-provider",
                            "configMap": { "name": "grafana-dashboard-provider" },
                        },
                        { "name": "dashboards", "configMap": { "name": "grafana-dashboards" } },
                        { "name": "data", "emptyDir": {} },
                    ],
                },
            },
        },
    })
}
