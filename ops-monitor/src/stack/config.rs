//! [`StackConfig`]: what the monitoring stack's manifests are rendered from, and every
//! problem with it named by key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::dashboards::DashboardsConfig;

/// The monitoring stack of one cluster: where it runs, which images, how long
/// Prometheus keeps data, what it scrapes, and where the GPU exporter runs.
///
/// Every field has a default; `StackConfig::default()` renders a working stack for a
/// cluster whose GPU nodes carry the NVIDIA GPU operator's `nvidia.com/gpu.present`
/// label. [`problems`](Self::problems) names every invalid field at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StackConfig {
    /// The namespace every namespaced object goes to; the render creates it. A DNS-1123
    /// label. Default `ops-monitoring`.
    pub namespace: String,
    /// The container images, each with a tag (or digest).
    pub images: StackImages,
    /// How long Prometheus keeps samples, as a Prometheus duration (`15d`, `12h`,
    /// `1y`). Default `15d`.
    pub retention: String,
    /// How often Prometheus scrapes every target and evaluates rules, as a Prometheus
    /// duration. Default `30s`.
    pub scrape_interval: String,
    /// Where Prometheus finds the Ops exporters (`ops_monitor::http::router` served by
    /// the platform's processes).
    pub ops_exporters: OpsExporters,
    /// Whether to run NVIDIA's DCGM exporter on the GPU nodes (default true). Turn it
    /// off where the Ops exporters' own GPU collector runs on those nodes (it exports
    /// the same names plus `tenant` and `task_id`), so that each GPU is reported once.
    pub dcgm_exporter: bool,
    /// The node labels the DCGM exporter's DaemonSet selects (default
    /// `nvidia.com/gpu.present: "true"`, set by the GPU operator's feature discovery).
    pub gpu_node_selector: BTreeMap<String, String>,
    /// Taints of the GPU nodes the DCGM exporter tolerates, each `key=value:Effect`,
    /// `key:Effect` or `key=value` (any effect), as elsewhere in Ops. Default
    /// `["nvidia.com/gpu:NoSchedule"]`.
    pub gpu_tolerations: Vec<String>,
    /// The RuntimeClass the DCGM exporter's pods run with (`nvidia`), where the NVIDIA
    /// container runtime is not the nodes' default. Default: none.
    pub gpu_runtime_class: Option<String>,
    /// The size of Prometheus's volume, a Kubernetes quantity (default `50Gi`).
    pub storage_size: String,
    /// The StorageClass of that volume (default: the cluster's default class).
    pub storage_class: Option<String>,
    /// The Secret holding Grafana's admin login under the keys `admin-user` and
    /// `admin-password`, created by the operator before applying (default
    /// `grafana-admin`). The manifests only refer to it: no password is ever in them.
    pub grafana_admin_secret: String,
    /// How the provisioned dashboards are generated; their `datasource` is the uid the
    /// provisioned Prometheus data source gets.
    pub dashboards: DashboardsConfig,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            namespace: "ops-monitoring".to_owned(),
            images: StackImages::default(),
            retention: "15d".to_owned(),
            scrape_interval: "30s".to_owned(),
            ops_exporters: OpsExporters::default(),
            dcgm_exporter: true,
            gpu_node_selector: BTreeMap::from([(
                "nvidia.com/gpu.present".to_owned(),
                "true".to_owned(),
            )]),
            gpu_tolerations: vec!["nvidia.com/gpu:NoSchedule".to_owned()],
            gpu_runtime_class: None,
            storage_size: "50Gi".to_owned(),
            storage_class: None,
            grafana_admin_secret: "grafana-admin".to_owned(),
            dashboards: DashboardsConfig::default(),
        }
    }
}

/// The container images of the stack, each `registry/repository:tag` or
/// `…@sha256:<digest>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StackImages {
    /// Prometheus (default `quay.io/prometheus/prometheus:v2.55.1`).
    pub prometheus: String,
    /// node_exporter (default `quay.io/prometheus/node-exporter:v1.8.2`).
    pub node_exporter: String,
    /// NVIDIA's DCGM exporter (default
    /// `nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04`).
    pub dcgm_exporter: String,
    /// Grafana (default `docker.io/grafana/grafana:11.3.0`).
    pub grafana: String,
}

impl Default for StackImages {
    fn default() -> Self {
        Self {
            prometheus: "quay.io/prometheus/prometheus:v2.55.1".to_owned(),
            node_exporter: "quay.io/prometheus/node-exporter:v1.8.2".to_owned(),
            dcgm_exporter: "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04".to_owned(),
            grafana: "docker.io/grafana/grafana:11.3.0".to_owned(),
        }
    }
}

/// Where the Ops exporters are: a static list, pods found by annotation, or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OpsExporters {
    /// `host:port` of exporters outside the cluster or without pods (scrape job
    /// `ops`). Default: none.
    pub targets: Vec<String>,
    /// Whether to scrape pods annotated `ops.dev/scrape: "true"` (scrape job
    /// `ops-pods`), at the port in `ops.dev/port` (else the pod's declared port) and the
    /// path in `ops.dev/path` (else `/metrics`). Default true.
    pub discover_pods: bool,
    /// The namespaces searched for such pods (default: all).
    pub namespaces: Vec<String>,
}

impl Default for OpsExporters {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            discover_pods: true,
            namespaces: Vec::new(),
        }
    }
}

impl StackConfig {
    /// Every invalid field, each naming its key (`stack.namespace: "Ops_Mon" is not a
    /// DNS-1123 label …`). Empty when the configuration renders.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = dns_label(&self.namespace) {
            out.push(format!("stack.namespace: {e}"));
        }
        for (key, image) in [
            ("prometheus", &self.images.prometheus),
            ("node_exporter", &self.images.node_exporter),
            ("dcgm_exporter", &self.images.dcgm_exporter),
            ("grafana", &self.images.grafana),
        ] {
            if let Err(e) = image_ref(image) {
                out.push(format!("stack.images.{key}: {e}"));
            }
        }
        for (key, value) in [
            ("retention", &self.retention),
            ("scrape_interval", &self.scrape_interval),
        ] {
            if let Err(e) = prometheus_duration(value) {
                out.push(format!("stack.{key}: {e}"));
            }
        }
        for (i, target) in self.ops_exporters.targets.iter().enumerate() {
            if let Err(e) = host_port(target) {
                out.push(format!("stack.ops_exporters.targets[{i}]: {e}"));
            }
        }
        for (i, ns) in self.ops_exporters.namespaces.iter().enumerate() {
            if let Err(e) = dns_label(ns) {
                out.push(format!("stack.ops_exporters.namespaces[{i}]: {e}"));
            }
        }
        for (key, value) in &self.gpu_node_selector {
            if let Err(e) = label_key(key) {
                out.push(format!("stack.gpu_node_selector: key {e}"));
            }
            if let Err(e) = label_value(value) {
                out.push(format!("stack.gpu_node_selector.{key:?}: {e}"));
            }
        }
        for (i, t) in self.gpu_tolerations.iter().enumerate() {
            if let Err(e) = toleration(t) {
                out.push(format!("stack.gpu_tolerations[{i}]: {e}"));
            }
        }
        if let Some(class) = &self.gpu_runtime_class
            && let Err(e) = dns_subdomain(class)
        {
            out.push(format!("stack.gpu_runtime_class: {e}"));
        }
        if let Err(e) = quantity(&self.storage_size) {
            out.push(format!("stack.storage_size: {e}"));
        }
        if let Some(class) = &self.storage_class
            && let Err(e) = dns_subdomain(class)
        {
            out.push(format!("stack.storage_class: {e}"));
        }
        if let Err(e) = dns_subdomain(&self.grafana_admin_secret) {
            out.push(format!("stack.grafana_admin_secret: {e}"));
        }
        out.extend(self.dashboards.problems("stack.dashboards"));
        out
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63)"
        ))
    }
}

/// DNS-1123 labels joined by dots, at most 253 characters.
fn dns_subdomain(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS-1123 subdomain (lower-case labels joined by '.')"
        ))
    }
}

/// A label name or value body: alphanumerics, '-', '_', '.', starting and ending
/// alphanumeric, at most 63.
fn label_name(s: &str) -> bool {
    let first_last_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && first_last_ok(s.chars().next())
        && first_last_ok(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `[prefix/]name`: a DNS subdomain prefix and a label name.
fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_none_or(|p| dns_subdomain(p).is_ok()) && label_name(name) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a label key ([dns-subdomain/]name)"))
    }
}

fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || label_name(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a label value (at most 63 alphanumerics, '-', '_', '.')"
        ))
    }
}

/// `[registry[:port]/]path[:tag][@digest]`, with a tag or a digest.
fn image_ref(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{s:?} is not an image reference with a tag: {why}"));
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("empty or has spaces");
    }
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("the digest is not sha256:<64 hex digits>");
        }
    }
    // A tag follows the last ':' after the last '/' (a ':' before it is a port).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    match tag {
        Some(t) => {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return bad("bad tag");
            }
        }
        None if digest.is_none() => return bad("no tag or digest"),
        None => {}
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    // The first part is a registry when it looks like a host.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let host_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !host_ok {
            return bad("bad registry host");
        }
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if parts.iter().all(|c| component_ok(c)) {
        Ok(())
    } else {
        bad("the repository must be lower-case components joined by '/'")
    }
}

/// A Prometheus duration (`15d`, `1h30m`, `500ms`): units from largest to smallest,
/// each once, and more than zero in total.
pub(crate) fn prometheus_duration(s: &str) -> Result<(), String> {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    let bad = || {
        Err(format!(
            "{s:?} is not a Prometheus duration above zero (e.g. 30s, 15d, 1h30m)"
        ))
    };
    let mut rest = s;
    let mut next_unit = 0;
    let mut total = 0u64;
    if rest.is_empty() {
        return bad();
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return bad();
        }
        let Ok(n) = rest[..digits].parse::<u64>() else {
            return bad();
        };
        rest = &rest[digits..];
        // "ms" before "m": the longest unit that matches.
        let Some(unit) = UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, u)| rest.starts_with(*u))
            .max_by_key(|(_, u)| u.len())
            .map(|(i, u)| (i, u.len()))
        else {
            return bad();
        };
        rest = &rest[unit.1..];
        next_unit = unit.0 + 1;
        total = total.saturating_add(n);
    }
    if total == 0 { bad() } else { Ok(()) }
}

/// `host:port` with a port above zero (`[v6]:port` too).
fn host_port(s: &str) -> Result<(), String> {
    let bad = || Err(format!("{s:?} is not host:port"));
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad();
    };
    let host_ok = !host.is_empty()
        && !host.contains(['/', ' ', '\t', '@', '?', '#'])
        && (host.starts_with('[') == host.ends_with(']'));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => bad(),
    }
}

/// A Kubernetes quantity above zero (`50Gi`, `500M`, `1T`).
fn quantity(s: &str) -> Result<(), String> {
    const SUFFIXES: [&str; 13] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[number.len()..];
    let value = number.parse::<f64>().ok().filter(|v| v.is_finite());
    let digits_only = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match value {
        Some(v) if v > 0.0 && digits_only && SUFFIXES.contains(&suffix) => Ok(()),
        _ => Err(format!("{s:?} is not a size above zero (e.g. 50Gi, 500Mi)")),
    }
}

/// A toleration written `key=value:Effect`, `key:Effect` or `key=value`, as JSON.
pub(crate) fn toleration(s: &str) -> Result<Value, String> {
    let (kv, effect) = match s.rsplit_once(':') {
        Some((kv, effect)) => (kv, Some(effect)),
        None => (s, None),
    };
    if let Some(effect) = effect
        && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
    {
        return Err(format!(
            "{s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    if let Err(e) = label_key(key) {
        return Err(format!("{s:?}: taint key {e}"));
    }
    let mut out = json!({
        "key": key,
        "operator": if value.is_some() { "Equal" } else { "Exists" },
    });
    if let Some(v) = value {
        out["value"] = json!(v);
    }
    if let Some(e) = effect {
        out["effect"] = json!(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_has_no_problems() {
        assert_eq!(StackConfig::default().problems(), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_listed_at_once_with_its_key() {
        let mut c = StackConfig {
            namespace: "Ops_Mon".into(),
            retention: "0d".into(),
            scrape_interval: "30 seconds".into(),
            storage_size: "0Gi".into(),
            storage_class: Some("Fast SSD".into()),
            grafana_admin_secret: String::new(),
            gpu_runtime_class: Some("NVIDIA".into()),
            ..StackConfig::default()
        };
        c.images.prometheus = "quay.io/prometheus/prometheus".into();
        c.images.grafana = "Grafana/Grafana:11".into();
        c.images.dcgm_exporter = "nvcr.io/nvidia/k8s/dcgm-exporter:".into();
        c.ops_exporters.targets = vec![
            "10.0.0.5:9464".into(),
            "http://ops:9464".into(),
            "ops:0".into(),
        ];
        c.ops_exporters.namespaces = vec!["Tasks".into()];
        c.gpu_node_selector.insert("bad key!".into(), "ok".into());
        c.gpu_tolerations = vec!["gpu:Sometimes".into()];
        c.dashboards.refresh = "soon".into();
        let problems = c.problems();
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split_once(':').map_or(p.as_str(), |(k, _)| k))
            .collect();
        assert_eq!(
            keys,
            [
                "stack.namespace",
                "stack.images.prometheus",
                "stack.images.dcgm_exporter",
                "stack.images.grafana",
                "stack.retention",
                "stack.scrape_interval",
                "stack.ops_exporters.targets[1]",
                "stack.ops_exporters.targets[2]",
                "stack.ops_exporters.namespaces[0]",
                "stack.gpu_node_selector",
                "stack.gpu_tolerations[0]",
                "stack.gpu_runtime_class",
                "stack.storage_size",
                "stack.storage_class",
                "stack.grafana_admin_secret",
                "stack.dashboards.refresh",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[0].starts_with(r#"stack.namespace: "Ops_Mon" is not a DNS-1123 label"#),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn render_refuses_a_bad_config_with_all_its_problems() {
        let c = StackConfig {
            namespace: "Ops_Mon".into(),
            retention: "0s".into(),
            ..StackConfig::default()
        };
        match super::super::render(&c, &super::super::StackInputs::default()) {
            Err(crate::Error::InvalidConfig { problems }) => {
                assert_eq!(problems.len(), 2, "{problems:#?}");
                assert!(problems[0].starts_with("stack.namespace:"));
                assert!(problems[1].starts_with("stack.retention:"));
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn reads_from_a_file_with_defaults_for_what_is_left_out() {
        let yaml = "namespace: mon\nops_exporters:\n  targets: [\"ops:9464\"]\ndashboards:\n  refresh: 1m\n";
        let c: StackConfig = serde_saphyr::from_str(yaml).expect("parses");
        assert_eq!(c.namespace, "mon");
        assert_eq!(c.ops_exporters.targets, ["ops:9464"]);
        assert!(c.ops_exporters.discover_pods);
        assert_eq!(c.dashboards.refresh, "1m");
        assert_eq!(c.dashboards.datasource, "prometheus");
        assert_eq!(c.retention, "15d");
        assert!(serde_saphyr::from_str::<StackConfig>("retension: 30d\n").is_err());
    }

    #[test]
    fn durations() {
        for ok in ["30s", "15d", "1h30m", "500ms", "1y", "2w3d"] {
            assert!(prometheus_duration(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "0s", "0d0h", "30", "s", "30sec", "1m1h", "1.5h", "-1s", "1s1s",
        ] {
            assert!(prometheus_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images() {
        for ok in [
            "quay.io/prometheus/prometheus:v2.55.1",
            "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04",
            "grafana/grafana:11.3.0",
            "localhost:5000/grafana:dev",
            "registry.example:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "grafana/grafana",
            "localhost:5000/grafana",
            "grafana:",
            "Grafana/grafana:1",
            "grafana/grafana:1 ",
            "a/b@sha256:abc",
        ] {
            assert!(image_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_targets_and_tolerations() {
        assert!(quantity("50Gi").is_ok() && quantity("1.5Ti").is_ok() && quantity("100").is_ok());
        assert!(quantity("0Gi").is_err() && quantity("50GB").is_err() && quantity("Gi").is_err());
        assert!(host_port("ops.tasks.svc:9464").is_ok() && host_port("[::1]:9464").is_ok());
        assert!(
            host_port("ops").is_err()
                && host_port(":9464").is_err()
                && host_port("ops:99999").is_err()
        );
        assert_eq!(
            toleration("nvidia.com/gpu:NoSchedule"),
            Ok(json!({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}))
        );
        assert_eq!(
            toleration("pool=gpu"),
            Ok(json!({"key": "pool", "operator": "Equal", "value": "gpu"}))
        );
        assert!(toleration("=x:NoSchedule").is_err());
    }
}
