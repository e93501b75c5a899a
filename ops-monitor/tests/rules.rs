//! The generated alert rules, checked and unit-tested by the real `promtool`
//! (Debian package `prometheus`).
//!
//! The `promtool test rules` cases are fixtures in `tests/fixtures/rules/`: each is
//! copied into a temporary directory beside the rules generated from its config
//! (`custom.yml`: [`CHANGED`]; the others: the defaults), written as `rules.yml`.
//! Without promtool the tests are skipped, or fail with `OPS_REQUIRE_SERVICES=1`.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ops_monitor::rules::{self, AlertsConfig, RuleGroups, Severity};

/// A config with every alert's keys changed (and the watchdog disabled).
const CHANGED: &str = r#"
labels: { team: platform, cluster: eu-1 }
jobs: "ops-.*"
runbook_base_url: https://runbooks.example.invalid/ops
interval: 30s
host_down: { for: 2m, severity: warning }
disk_filling:
  ignored_fstypes: "tmpfs|nfs4?"
  lookback: 3h
  warning: { available_percent: 30, full_within: 12h, for: 30m, severity: warning }
  critical: { available_percent: 10, full_within: 2h, for: 15m, severity: critical }
memory_pressure: { available_ratio: 0.2, for: 5m, severity: critical }
task_failure_ratio: { ratio: 0.5, min_finished: 20, window: 1h, for: 5m, severity: critical }
queue_stuck: { quantile: 0.99, wait_seconds: 1200, window: 30m, for: 20m, severity: critical }
dead_letters_growing: { window: 30m, for: 5m, severity: critical }
outbox_lag: { seconds: 60, for: 1m, severity: critical }
gpu_xid_error: { ignored_codes: [13, 43], for: 1m, severity: warning }
gpu_row_remap_failure: { window: 2h, for: 1m, severity: warning }
gpu_too_hot: { celsius: 80, for: 2m, severity: critical }
gpu_allocated_idle: { utilisation_percent: 10, window: 1h, for: 10m, severity: critical }
preemption_storm: { count: 5, window: 5m, for: 2m, severity: critical }
budget_burn: { percent: 80, for: 5m, severity: critical }
budget_exhausted: { window: 2h, for: 1m, severity: critical }
watchdog: { enabled: false }
"#;

fn changed() -> AlertsConfig {
    serde_saphyr::from_str(CHANGED).expect("CHANGED is a valid config")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules")
}

/// The fixture files, sorted.
fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures/rules")
        .map(|e| e.expect("a fixture").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", fixtures().display());
    files
}

/// The config a fixture's rules are generated from.
fn config_of(fixture: &Path) -> AlertsConfig {
    match fixture.file_name().and_then(|n| n.to_str()) {
        Some("custom.yml") => changed(),
        _ => AlertsConfig::default(),
    }
}

/// promtool, or `None` (the test is skipped) when it is missing and
/// `OPS_REQUIRE_SERVICES` is not `1`; with it, the test fails.
fn promtool() -> Option<PathBuf> {
    let path =
        std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => Some(path),
        _ => {
            ops_testbed::missing::<()>(
                "promtool (install the Debian package `prometheus`: apt-get install prometheus; or set PROMTOOL to its path)",
            );
            None
        }
    }
}

fn run(promtool: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `promtool check rules` on `yaml`, written as `name` in a temporary directory.
fn check_rules(promtool: &Path, name: &str, yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join(name), yaml).expect("rules written");
    let out = run(promtool, &["check", "rules", name], dir.path());
    assert!(
        out.status.success(),
        "promtool check rules {name} failed:\n{}\n--- {name} ---\n{yaml}",
        text(&out)
    );
    text(&out)
}

/// `promtool test rules` on `fixture_text`, beside the rules of `config`.
fn test_rules(
    promtool: &Path,
    config: &AlertsConfig,
    fixture_name: &str,
    fixture_text: &str,
) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rules = rules::generate(config)
        .expect("valid config")
        .to_yaml()
        .expect("yaml");
    std::fs::write(dir.path().join("rules.yml"), rules).expect("rules written");
    std::fs::write(dir.path().join(fixture_name), fixture_text).expect("fixture written");
    run(promtool, &["test", "rules", fixture_name], dir.path())
}

fn alert_names(groups: &RuleGroups) -> BTreeSet<String> {
    groups.rules().map(|r| r.alert.clone()).collect()
}

#[test]
fn promtool_checks_the_rules_at_defaults() {
    let Some(promtool) = promtool() else { return };
    let groups = rules::generate(&AlertsConfig::default()).unwrap();
    let out = check_rules(&promtool, "rules.yml", &groups.to_yaml().unwrap());
    assert!(out.contains("SUCCESS: 16 rules found"), "{out}");
}

#[test]
fn promtool_checks_the_rules_with_every_alert_changed() {
    let Some(promtool) = promtool() else { return };
    let mut config = changed();
    let groups = rules::generate(&config).unwrap();
    assert!(groups.rules().all(|r| r.labels["team"] == "platform"));
    let out = check_rules(&promtool, "rules.yml", &groups.to_yaml().unwrap());
    assert!(out.contains("SUCCESS: 15 rules found"), "{out}");

    config.watchdog.enabled = true;
    config.watchdog.severity = Severity::Warning;
    let out = check_rules(
        &promtool,
        "rules.yml",
        &rules::generate(&config).unwrap().to_yaml().unwrap(),
    );
    assert!(out.contains("SUCCESS: 16 rules found"), "{out}");
}

#[test]
fn promtool_checks_the_prometheus_rule_spec_groups() {
    let Some(promtool) = promtool() else { return };
    for config in [AlertsConfig::default(), changed()] {
        let groups = rules::generate(&config).unwrap();
        let labels = BTreeMap::from([("release".to_owned(), "prometheus".to_owned())]);
        let manifest = groups
            .to_prometheus_rule("ops-alerts", "monitoring", &labels)
            .unwrap();
        // Read as plain YAML, not through ops-monitor's types: spec is what the
        // operator hands Prometheus.
        let value: serde_json::Value = serde_saphyr::from_str(&manifest).unwrap();
        assert_eq!(value["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(value["kind"], "PrometheusRule");
        assert_eq!(value["metadata"]["labels"]["release"], "prometheus");
        let spec = serde_saphyr::to_string(&value["spec"]).unwrap();
        let out = check_rules(&promtool, "spec.yml", &spec);
        let count = groups.rules().count();
        assert!(
            out.contains(&format!("SUCCESS: {count} rules found")),
            "{out}"
        );
    }
}

#[test]
fn promtool_test_rules_passes_every_fixture() {
    let Some(promtool) = promtool() else { return };
    let mut failures = Vec::new();
    for fixture in fixture_files() {
        let name = fixture.file_name().unwrap().to_str().unwrap().to_owned();
        let fixture_text = std::fs::read_to_string(&fixture).unwrap();
        let out = test_rules(&promtool, &config_of(&fixture), &name, &fixture_text);
        if !out.status.success() {
            failures.push(format!("{name}:\n{}", text(&out)));
        }
    }
    assert!(
        failures.is_empty(),
        "promtool test rules failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn promtool_test_rules_fails_on_a_wrong_expectation() {
    let Some(promtool) = promtool() else { return };
    let fixture_text = std::fs::read_to_string(fixtures().join("hosts.yml")).unwrap();
    for (right, wrong) in [
        (
            "              severity: critical\n",
            "              severity: warning\n",
        ),
        ("(job ops) for 5m:", "(job ops) for 6m:"),
        (
            "has 35.00% of its space left",
            "has 36.00% of its space left",
        ),
        (
            "        eval_time: 5m # down for 3m: pending",
            "        eval_time: 7m",
        ),
    ] {
        assert!(fixture_text.contains(right), "hosts.yml holds {right:?}");
        let broken = fixture_text.replacen(right, wrong, 1);
        let out = test_rules(&promtool, &AlertsConfig::default(), "hosts.yml", &broken);
        assert!(
            !out.status.success(),
            "promtool passed with {wrong:?} instead of {right:?}:\n{}",
            text(&out)
        );
        assert!(text(&out).contains("FAILED"), "{}", text(&out));
    }
}

/// Every alert has a firing case (`exp_alerts` not empty) and a non-firing one
/// (`exp_alerts: []`) in the fixtures.
#[test]
fn fixtures_cover_every_alert_firing_and_not() {
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for fixture in fixture_files() {
        let value: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
        assert_eq!(value["rule_files"][0], "rules.yml", "{}", fixture.display());
        for test in value["tests"].as_array().expect("tests") {
            for case in test["alert_rule_test"].as_array().expect("alert_rule_test") {
                let name = case["alertname"].as_str().expect("alertname").to_owned();
                match case["exp_alerts"].as_array() {
                    Some(alerts) if !alerts.is_empty() => firing.insert(name),
                    _ => silent.insert(name),
                };
            }
        }
    }
    let all = alert_names(&rules::generate(&AlertsConfig::default()).unwrap());
    let missing_firing: Vec<_> = all.difference(&firing).collect();
    let missing_silent: Vec<_> = all.difference(&silent).collect();
    assert!(
        missing_firing.is_empty(),
        "no firing case for {missing_firing:?}"
    );
    assert!(
        missing_silent.is_empty(),
        "no non-firing case for {missing_silent:?}"
    );
}

/// Each alert's `runbook_url` anchor is a section of docs/monitoring-alerts.md.
#[test]
fn the_docs_have_a_section_per_alert() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring-alerts.md");
    let docs = std::fs::read_to_string(&docs).expect("docs/monitoring-alerts.md");
    let headings: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for rule in rules::generate(&AlertsConfig::default()).unwrap().rules() {
        let url = &rule.annotations["runbook_url"];
        let anchor = url.rsplit_once('#').expect("an anchor").1;
        assert!(
            headings.contains(anchor),
            "no section `### {}` for {url}",
            rule.alert
        );
    }
}

#[test]
fn bad_values_are_named_at_once() {
    let config: AlertsConfig = serde_saphyr::from_str(
        "gpu_too_hot: { celsius: -5 }\ndisk_filling: { warning: { for: 5x } }\ntask_failure_ratio: { ratio: 2 }\n",
    )
    .unwrap();
    let Err(ops_monitor::Error::InvalidConfig { problems }) = rules::generate(&config) else {
        panic!("expected InvalidConfig");
    };
    assert_eq!(
        problems,
        [
            r#"alerts.disk_filling.warning.for: "5x" is not a Prometheus duration (e.g. 30s, 5m, 1h)"#,
            "alerts.task_failure_ratio.ratio: 2 is not a ratio in (0, 1]",
            "alerts.gpu_too_hot.celsius: -5 is not a temperature above 0",
        ]
    );
}
