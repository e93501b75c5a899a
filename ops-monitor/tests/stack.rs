//! The monitoring stack's manifests: every object deserializes strictly into its
//! k8s-openapi type (nothing unknown or misspelled is dropped), prometheus.yml has the
//! expected jobs and passes `promtool check config`, and the YAML stream round-trips.
//!
//! promtool (Prometheus 2.x) must be on the PATH, or named by `PROMTOOL`; without it
//! the promtool checks are skipped, or fail with `OPS_REQUIRE_SERVICES=1`.

use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use ops_monitor::dashboards;
use ops_monitor::stack::{self, StackConfig, StackInputs};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const RULES: &str = r#"groups:
  - name: ops-test
    rules:
      - alert: OpsCollectorDown
        expr: ops_collector_up == 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "Collector {{ $labels.collector }} on {{ $labels.instance }} is down"
"#;

/// A configuration that switches every optional part on.
fn full_config() -> StackConfig {
    let mut c = StackConfig::default();
    c.ops_exporters.targets = vec![
        "coordinator.ops.internal:9464".into(),
        "10.0.0.7:9464".into(),
    ];
    c.ops_exporters.namespaces = vec!["ops".into(), "ops-tasks".into()];
    c.gpu_tolerations = vec![
        "nvidia.com/gpu:NoSchedule".into(),
        "ops.dev/pool=gpu".into(),
    ];
    c.gpu_runtime_class = Some("nvidia".into());
    c.storage_class = Some("fast-ssd".into());
    c
}

fn rendered() -> Vec<Value> {
    stack::render(&full_config(), &StackInputs::default().with_rules(RULES)).expect("renders")
}

/// Deserializes `object` into `T` and serializes it back: equal only when every field
/// is one the type knows, spelt right, with a value of the right shape.
fn strict<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if &back == object {
        Ok(())
    } else {
        Err(format!(
            "not kept as is by {}:\n--- rendered\n{}\n--- typed\n{}",
            std::any::type_name::<T>(),
            serde_json::to_string_pretty(object).unwrap_or_default(),
            serde_json::to_string_pretty(&back).unwrap_or_default()
        ))
    }
}

fn check_typed(object: &Value) -> Result<(), String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => strict::<Namespace>(object),
        ("v1", "ServiceAccount") => strict::<ServiceAccount>(object),
        ("v1", "ConfigMap") => strict::<ConfigMap>(object),
        ("v1", "Service") => strict::<Service>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => strict::<ClusterRole>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            strict::<ClusterRoleBinding>(object)
        }
        ("apps/v1", "StatefulSet") => strict::<StatefulSet>(object),
        ("apps/v1", "DaemonSet") => strict::<DaemonSet>(object),
        ("apps/v1", "Deployment") => strict::<Deployment>(object),
        _ => Err(format!(
            "{api_version} {kind} is not a kind this test knows"
        )),
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn promtool() -> Option<String> {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let available = Command::new(&promtool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if available {
        Some(promtool)
    } else {
        ops_testbed::missing::<()>(&format!(
            "promtool ({promtool}: Prometheus 2.x, e.g. `apt-get install prometheus`, or set PROMTOOL)"
        ))
        .map(|()| promtool)
    }
}

fn run(promtool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool)
        .args(args)
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Says that Kubernetes discovery went unchecked: this promtool cannot parse it.
#[allow(clippy::print_stderr)]
fn without_kubernetes_sd_note(said: &str) {
    eprintln!(
        "note: this promtool has no Kubernetes discovery ({}): the kubernetes_sd_configs blocks are checked by this test's key list only, the rest of prometheus.yml by promtool with static stand-ins",
        said.lines()
            .find(|l| l.contains("kubernetes_sd_configs"))
            .unwrap_or_default()
            .trim()
    );
}

#[test]
fn every_object_is_a_strict_k8s_openapi_object() {
    for (config, what) in [(StackConfig::default(), "default"), (full_config(), "full")] {
        let objects =
            stack::render(&config, &StackInputs::default().with_rules(RULES)).expect("renders");
        let problems: Vec<String> = objects
            .iter()
            .filter_map(|o| {
                check_typed(o)
                    .err()
                    .map(|e| format!("{what}: {} {}: {e}", o["kind"], o["metadata"]["name"]))
            })
            .collect();
        assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    }
}

#[test]
fn unknown_or_misspelt_fields_are_caught() {
    let objects = rendered();
    let mut misspelt = find(&objects, "DaemonSet", "node-exporter").clone();
    misspelt["spec"]["template"]["spec"]["hostPid"] = Value::Bool(true);
    assert!(check_typed(&misspelt).is_err());
    let unknown =
        serde_json::json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "x" } });
    assert!(check_typed(&unknown).is_err());
}

#[test]
fn namespaced_objects_are_in_the_namespace_and_nothing_holds_a_password() {
    let objects = rendered();
    for o in &objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let namespaced = !matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        assert_eq!(
            o["metadata"]["namespace"].as_str().is_some(),
            namespaced,
            "{kind} {}",
            o["metadata"]["name"]
        );
        if namespaced {
            assert_eq!(o["metadata"]["namespace"], "ops-monitoring");
        }
        assert_ne!(kind, "Secret");
    }
    let grafana = find(&objects, "Deployment", "grafana");
    let env = grafana["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    for name in ["GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD"] {
        let var = env.iter().find(|e| e["name"] == name).expect(name);
        assert!(
            var.get("value").is_none(),
            "{name} has a value in the manifest"
        );
        assert_eq!(var["valueFrom"]["secretKeyRef"]["name"], "grafana-admin");
    }
}

#[test]
fn node_exporter_reads_the_host_read_only() {
    let objects = rendered();
    let ds = find(&objects, "DaemonSet", "node-exporter");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "--path.procfs=/host/proc",
        "--path.sysfs=/host/sys",
        "--path.rootfs=/host/root",
    ] {
        assert!(args.contains(&arg), "{arg}");
    }
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 3);
    assert!(mounts.iter().all(|m| m["readOnly"] == true));
    let paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(paths, ["/proc", "/sys", "/"]);
}

#[test]
fn dcgm_exporter_runs_on_gpu_nodes_only() {
    let objects = rendered();
    let ds = find(&objects, "DaemonSet", "dcgm-exporter");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["nodeSelector"],
        serde_json::json!({ "nvidia.com/gpu.present": "true" })
    );
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([
            { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
            { "key": "ops.dev/pool", "operator": "Equal", "value": "gpu" },
        ])
    );
    assert_eq!(pod["runtimeClassName"], "nvidia");
    let image = pod["containers"][0]["image"].as_str().expect("image");
    assert!(
        image.starts_with("nvcr.io/nvidia/k8s/dcgm-exporter:"),
        "{image}"
    );
    let counters = find(&objects, "ConfigMap", "dcgm-exporter-counters")["data"]["counters.csv"]
        .as_str()
        .expect("counters");
    for field in [
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    ] {
        assert!(counters.contains(field), "{field}");
    }
}

#[test]
fn prometheus_yml_has_the_scrape_jobs_and_passes_promtool() {
    let objects = rendered();
    let text = find(&objects, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"]
        .as_str()
        .expect("prometheus.yml")
        .to_owned();
    let parsed: Value = serde_saphyr::from_str(&text).expect("prometheus.yml is YAML");
    let jobs: Vec<&str> = parsed["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert_eq!(
        jobs,
        [
            "prometheus",
            "node-exporter",
            "dcgm-exporter",
            "ops",
            "ops-pods"
        ]
    );
    assert_eq!(parsed["global"]["scrape_interval"], "30s");
    assert_eq!(
        parsed["scrape_configs"][3]["static_configs"][0]["targets"][1],
        "10.0.0.7:9464"
    );
    let rule_file = "/etc/prometheus/rules/ops-rules.yaml";
    assert_eq!(parsed["rule_files"], serde_json::json!([rule_file]));
    let rules = find(&objects, "ConfigMap", "prometheus-rules")["data"]["ops-rules.yaml"]
        .as_str()
        .expect("rules");
    assert_eq!(rules, RULES);

    // The StatefulSet mounts both where prometheus.yml says.
    let sts = find(&objects, "StatefulSet", "prometheus");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--config.file=/etc/prometheus/config/prometheus.yml"));
    assert!(args.contains(&"--storage.tsdb.retention.time=15d"));
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        mounts.contains(&"/etc/prometheus/config") && mounts.contains(&"/etc/prometheus/rules")
    );

    // Kubernetes discovery blocks use only what Prometheus's kubernetes_sd_config has
    // (a promtool built without it cannot say).
    for job in parsed["scrape_configs"].as_array().expect("jobs") {
        for sd in job["kubernetes_sd_configs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let sd = sd.as_object().expect("a mapping");
            for key in sd.keys() {
                assert!(
                    [
                        "role",
                        "namespaces",
                        "selectors",
                        "api_server",
                        "kubeconfig_file",
                        "attach_metadata"
                    ]
                    .contains(&key.as_str()),
                    "{}: kubernetes_sd_configs has no {key}",
                    job["job_name"]
                );
            }
            let role = sd["role"].as_str().expect("role");
            assert!(
                [
                    "node",
                    "service",
                    "pod",
                    "endpoints",
                    "endpointslice",
                    "ingress"
                ]
                .contains(&role)
            );
            if let Some(ns) = sd.get("namespaces") {
                let ns = ns.as_object().expect("namespaces is a mapping");
                assert!(
                    ns.keys().all(|k| k == "names" || k == "own_namespace"),
                    "{ns:?}"
                );
                assert!(
                    ns["names"]
                        .as_array()
                        .is_some_and(|n| n.iter().all(Value::is_string))
                );
            }
        }
    }

    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let rules_path = dir.path().join("ops-rules.yaml");
    std::fs::write(&rules_path, rules).expect("rules");
    let config_path = dir.path().join("prometheus.yml");
    let rules_str = rules_path.to_str().expect("utf-8 temp path");
    std::fs::write(&config_path, text.replace(rule_file, rules_str)).expect("config");
    let (mut ok, mut said) = run(
        &promtool,
        &["check", "config", config_path.to_str().expect("path")],
    );
    if !ok && said.contains("field kubernetes_sd_configs not found") {
        // Debian's promtool is built without Kubernetes discovery: check the rest of the
        // file (relabelling included) with each discovery block in place of a static one.
        without_kubernetes_sd_note(&said);
        let mut stand_in = parsed.clone();
        for job in stand_in["scrape_configs"].as_array_mut().expect("jobs") {
            if let Some(job) = job.as_object_mut()
                && job.remove("kubernetes_sd_configs").is_some()
            {
                job.insert(
                    "static_configs".into(),
                    serde_json::json!([{ "targets": ["kubernetes-sd-stand-in:80"] }]),
                );
            }
        }
        stand_in["rule_files"] = serde_json::json!([rules_str]);
        let stand_in = serde_saphyr::to_string(&stand_in).expect("yaml");
        std::fs::write(&config_path, &stand_in).expect("config");
        (ok, said) = run(
            &promtool,
            &["check", "config", config_path.to_str().expect("path")],
        );
    }
    assert!(
        ok,
        "promtool check config failed:\n{said}\n--- prometheus.yml:\n{text}"
    );
    assert!(said.contains("1 rules found"), "{said}");

    // The file mounted when no rules are handed in is a valid, empty one.
    let objects = stack::render(&StackConfig::default(), &StackInputs::default()).expect("renders");
    let empty = find(&objects, "ConfigMap", "prometheus-rules")["data"]["ops-rules.yaml"]
        .as_str()
        .expect("rules");
    std::fs::write(&rules_path, empty).expect("rules");
    let (ok, said) = run(&promtool, &["check", "rules", rules_str]);
    assert!(ok, "promtool check rules on the empty file failed:\n{said}");
}

#[test]
fn grafana_provisions_the_datasource_and_the_dashboards() {
    let config = full_config();
    let objects = rendered();
    let ds = find(&objects, "ConfigMap", "grafana-datasources")["data"]["datasources.yaml"]
        .as_str()
        .expect("datasources.yaml");
    let ds: Value = serde_saphyr::from_str(ds).expect("YAML");
    assert_eq!(
        ds["datasources"][0]["uid"],
        config.dashboards.datasource.as_str()
    );
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert_eq!(
        ds["datasources"][0]["url"],
        "http://prometheus.ops-monitoring.svc:9090"
    );
    let provider =
        find(&objects, "ConfigMap", "grafana-dashboard-provider")["data"]["dashboards.yaml"]
            .as_str()
            .expect("dashboards.yaml");
    let provider: Value = serde_saphyr::from_str(provider).expect("YAML");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    let deployment = find(&objects, "Deployment", "grafana");
    let mounted = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["name"] == "dashboards" && m["mountPath"] == path);
    assert!(
        mounted,
        "the provider's path {path} is not where the dashboards are mounted"
    );

    let files = &find(&objects, "ConfigMap", "grafana-dashboards")["data"];
    let expected = dashboards::all(&config.dashboards);
    assert_eq!(files.as_object().map(|m| m.len()), Some(expected.len()));
    for d in expected {
        let text = files[d.file_name()].as_str().expect("dashboard file");
        let json: Value = serde_json::from_str(text).expect("dashboard JSON");
        assert_eq!(json, d.json);
    }
    // A ConfigMap holds at most 1 MiB.
    for o in &objects {
        if o["kind"] == "ConfigMap" {
            let size = serde_json::to_string(&o["data"]).expect("json").len();
            assert!(
                size < 900 * 1024,
                "{} is {size} bytes",
                o["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_yaml_stream_round_trips() {
    for objects in [
        rendered(),
        stack::render(&StackConfig::default(), &StackInputs::default()).expect("renders"),
    ] {
        let yaml = stack::to_yaml(&objects).expect("yaml");
        assert_eq!(yaml.matches("\n---\n").count(), objects.len() - 1);
        let back: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("parses");
        assert_eq!(back.len(), objects.len());
        for (a, b) in back.iter().zip(&objects) {
            assert_eq!(
                a, b,
                "{} {} changed through YAML",
                b["kind"], b["metadata"]["name"]
            );
        }
    }
}

#[test]
fn a_bad_config_is_refused_with_every_problem() {
    let mut config = StackConfig::default();
    config.namespace = "Ops_Mon".into();
    config.images.grafana = "grafana".into();
    config.retention = "0d".into();
    match stack::render(&config, &StackInputs::default()) {
        Err(ops_monitor::Error::InvalidConfig { problems }) => {
            assert_eq!(problems.len(), 3, "{problems:#?}");
            assert!(
                problems[0].starts_with(r#"stack.namespace: "Ops_Mon" is not a DNS-1123 label"#)
            );
            assert!(problems[1].starts_with("stack.images.grafana:"));
            assert!(problems[2].starts_with("stack.retention:"));
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}
