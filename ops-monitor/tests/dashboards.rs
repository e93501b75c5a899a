//! The generated dashboards: every query parses as PromQL (`promtool check rules`),
//! names only metrics ops-monitor exports, refers only to defined variables, and the
//! panels have unique ids and a grid without overlaps.
//!
//! promtool (Prometheus 2.x) must be on the PATH, or named by `PROMTOOL`; without it
//! the PromQL check is skipped, or fails with `OPS_REQUIRE_SERVICES=1`.

use std::collections::{BTreeSet, HashSet};
use std::process::Command;

use ops_monitor::dashboards::{self, Dashboard, DashboardsConfig};
use serde_json::{Value, json};

/// The metric catalogue of ops-monitor (host, GPU, tasks, spine, the monitor itself).
const CATALOGUE: &[&str] = &[
    "node_cpu_seconds_total",
    "node_load1",
    "node_load5",
    "node_load15",
    "node_memory_MemTotal_bytes",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemFree_bytes",
    "node_memory_Buffers_bytes",
    "node_memory_Cached_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_SwapFree_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_free_bytes",
    "node_filesystem_readonly",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_boot_time_seconds",
    "node_time_seconds",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "ops_gpu_collector_up",
    "ops_tasks",
    "ops_tasks_finished_total",
    "ops_task_attempts_total",
    "ops_task_preemptions_total",
    "ops_queue_depth",
    "ops_queue_oldest_wait_seconds",
    "ops_quota_used",
    "ops_quota_nominal",
    "ops_capacity",
    "ops_capacity_used",
    "ops_events_total",
    "ops_storage_bytes",
    "ops_storage_objects",
    "ops_billing_budget_threshold_percent",
    "ops_billing_budget_exhausted_total",
    "ops_function_events_total",
    "ops_dead_letters",
    "ops_subscription_backlog",
    "ops_outbox_lag_seconds",
    "ops_collector_up",
    "ops_collector_duration_seconds",
];
/// Histograms of the catalogue: queried as `<name>_bucket`, `_sum`, `_count`.
const HISTOGRAMS: &[&str] = &["ops_queue_wait_seconds", "ops_task_run_seconds"];

fn catalogue() -> HashSet<String> {
    let mut names: HashSet<String> = CATALOGUE.iter().map(|s| (*s).to_owned()).collect();
    for h in HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{h}{suffix}"));
        }
    }
    names
}

fn all() -> Vec<Dashboard> {
    dashboards::all(&DashboardsConfig::default())
}

/// Every panel, rows included (and panels inside collapsed rows).
fn panels(d: &Dashboard) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d.json["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// `(where, expr)` of every query: panel targets, and the selector of every
/// `label_values(selector, label)` variable.
fn queries(d: &Dashboard) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr").to_owned();
            out.push((
                format!("{} / panel {:?} {}", d.uid, p["title"], t["refId"]),
                expr,
            ));
        }
    }
    for v in d.json["templating"]["list"].as_array().expect("variables") {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().expect("variable query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.rsplit_once(','))
                .map(|(selector, _label)| selector.trim().to_owned())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: variable {} is not label_values(selector, label): {q}",
                        d.uid, v["name"]
                    )
                });
            out.push((format!("{} / variable {}", d.uid, v["name"]), inner));
        }
    }
    out
}

/// Grafana's variables replaced by values PromQL accepts, as Grafana would.
fn substitute(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut name = String::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
        }
        out.push_str(match name.as_str() {
            "__rate_interval" => "5m",
            "__interval" => "1m",
            "__range" => "1h",
            _ => "x",
        });
    }
    out
}

/// The variables (`$name`, `${name}`) an expression uses, Grafana's own (`$__…`) left out.
fn variables_used(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let body = rest.strip_prefix('{').unwrap_or(rest);
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.starts_with("__") && !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects, read loosely: identifiers outside strings,
/// label matchers, ranges and label lists that are not functions, aggregations or
/// keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let quote = b[*i];
        *i += 1;
        while *i < b.len() && b[*i] != quote {
            if b[*i] == b'\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    let skip_group = |i: &mut usize, open: u8, close: u8| {
        let mut depth = 0;
        while *i < b.len() {
            match b[*i] {
                b'"' | b'\'' | b'`' => {
                    skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        *i += 1;
                        return;
                    }
                }
                _ => {}
            }
            *i += 1;
        }
    };
    let next_non_space = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => skip_string(&mut i),
            b'{' => skip_group(&mut i, b'{', b'}'),
            b'[' => skip_group(&mut i, b'[', b']'),
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = next_non_space(i);
                if LABEL_LISTS.contains(&word) {
                    if next < b.len() && b[next] == b'(' {
                        i = next;
                        skip_group(&mut i, b'(', b')');
                    }
                } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                    || AGGREGATIONS.contains(&word)
                    || (next < b.len() && b[next] == b'(')
                {
                    // A keyword, an aggregation or a function call.
                } else {
                    out.insert(word.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn metric_names_are_read_loosely_but_right() {
    let names = metric_names(&substitute(
        r#"histogram_quantile(0.95, sum by (template, le) (rate(ops_task_run_seconds_bucket{tenant=~"$tenant", x="a{b}"}[$__rate_interval]))) / on (le) group_left (a) ops_tasks offset 5m or vector(0) > bool 1e3"#,
    ));
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ops_task_run_seconds_bucket", "ops_tasks"]
    );
}

#[test]
fn every_query_names_only_catalogue_metrics_and_defined_variables() {
    let catalogue = catalogue();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for d in all() {
        let defined: BTreeSet<String> = d.json["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        for (at, expr) in queries(&d) {
            let names = metric_names(&substitute(&expr));
            if names.is_empty() {
                problems.push(format!("{at}: selects no metric: {expr}"));
            }
            for name in names {
                if !catalogue.contains(&name) {
                    problems.push(format!("{at}: {name} is not in the catalogue: {expr}"));
                }
                used.insert(name);
            }
            for var in variables_used(&expr) {
                if !defined.contains(&var) {
                    problems.push(format!("{at}: ${var} is not a variable of the dashboard"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // What the brief of each dashboard asks for is there.
    for name in [
        "node_cpu_seconds_total",
        "node_filesystem_avail_bytes",
        "node_network_receive_bytes_total",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "ops_queue_wait_seconds_bucket",
        "ops_task_run_seconds_bucket",
        "ops_task_attempts_total",
        "ops_function_events_total",
        "ops_outbox_lag_seconds",
        "ops_quota_nominal",
        "ops_storage_bytes",
        "ops_billing_budget_exhausted_total",
        "ops_collector_up",
    ] {
        assert!(used.contains(name), "no dashboard queries {name}");
    }
}

#[test]
fn every_query_parses_as_promql() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let available = Command::new(&promtool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        let hint = format!(
            "promtool ({promtool}: Prometheus 2.x, e.g. `apt-get install prometheus`, or set PROMTOOL)"
        );
        let Some(()) = ops_testbed::missing::<()>(&hint) else {
            return;
        };
    }
    let mut groups = Vec::new();
    let mut count = 0;
    for d in all() {
        let rules: Vec<Value> = queries(&d)
            .into_iter()
            .enumerate()
            .map(|(i, (_, expr))| {
                json!({ "record": format!("dashboard:{}:q{i}", d.uid.replace('-', "_")), "expr": substitute(&expr) })
            })
            .collect();
        count += rules.len();
        groups.push(json!({ "name": d.uid, "rules": rules }));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboards.rules.yaml");
    let text = serde_saphyr::to_string(&json!({ "groups": groups })).expect("yaml");
    std::fs::write(&file, &text).expect("rules file");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{said}\n--- the file:\n{text}"
    );
    assert!(
        said.contains(&format!("SUCCESS: {count} rules found")),
        "promtool did not check all {count} expressions:\n{said}"
    );
}

#[test]
fn panels_have_unique_ids_and_a_grid_without_overlaps() {
    for d in all() {
        let panels = panels(&d);
        assert!(panels.len() > 10, "{}: only {} panels", d.uid, panels.len());
        let mut ids = HashSet::new();
        let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
        for p in &panels {
            let id = p["id"].as_u64().expect("numeric id");
            assert!(ids.insert(id), "{}: panel id {id} twice", d.uid);
            let g = &p["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
                g[k].as_u64().unwrap_or_else(|| {
                    panic!("{}: panel {id} gridPos.{k} is not a whole number", d.uid)
                })
            });
            assert!(
                (1..=24).contains(&w) && h >= 1 && x + w <= 24,
                "{}: panel {id} at {g}",
                d.uid
            );
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            for (other, ox, oy, ow, oh) in &boxes {
                let apart = x + w <= *ox || *ox + *ow <= x || y + h <= *oy || *oy + *oh <= y;
                assert!(apart, "{}: {title:?} overlaps {other:?}", d.uid);
            }
            boxes.push((title, x, y, w, h));
        }
    }
}

#[test]
fn panels_query_the_datasource_variable_with_their_units() {
    for d in all() {
        let list = d.json["templating"]["list"].as_array().expect("variables");
        assert_eq!(list[0]["name"], "datasource");
        assert_eq!(list[0]["type"], "datasource");
        assert_eq!(list[0]["query"], "prometheus");
        for v in &list[1..] {
            assert_eq!(v["type"], "query", "{}", d.uid);
            assert_eq!(v["datasource"]["uid"], "${datasource}");
        }
        for p in panels(&d) {
            let kind = p["type"].as_str().expect("type");
            if kind == "row" {
                continue;
            }
            assert!(
                ["timeseries", "stat", "table", "bargauge"].contains(&kind),
                "{}: {kind}",
                d.uid
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}");
            assert!(p["fieldConfig"]["defaults"]["unit"].is_string());
            assert!(!p["title"].as_str().unwrap_or_default().is_empty());
            let targets = p["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{}: {} has no query",
                d.uid,
                p["title"]
            );
            let refs: HashSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
            assert_eq!(
                refs.len(),
                targets.len(),
                "{}: {} refIds",
                d.uid,
                p["title"]
            );
            for t in targets {
                assert!(t["legendFormat"].is_string());
            }
        }
    }
}
