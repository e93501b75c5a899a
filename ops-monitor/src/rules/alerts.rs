//! The alerts: one function per alert, each turning its part of [`AlertsConfig`] into
//! rules (none when it is disabled). Called on a validated config only.

use std::collections::BTreeMap;

use super::{AlertsConfig, Rule, RuleGroup, Severity, parse_duration};

/// The groups of rules for `config`, empty groups left out.
pub(super) fn groups(config: &AlertsConfig) -> Vec<RuleGroup> {
    let groups = [
        (
            "ops-hosts",
            [
                host_down(config),
                disk_filling(config),
                memory_pressure(config),
            ]
            .concat(),
        ),
        (
            "ops-tasks",
            [
                task_failure_ratio(config),
                queue_stuck(config),
                preemption_storm(config),
            ]
            .concat(),
        ),
        (
            "ops-spine",
            [dead_letters_growing(config), outbox_lag(config)].concat(),
        ),
        (
            "ops-gpus",
            [
                gpu_xid_error(config),
                gpu_row_remap_failure(config),
                gpu_too_hot(config),
                gpu_allocated_idle(config),
            ]
            .concat(),
        ),
        (
            "ops-billing",
            [budget_burn(config), budget_exhausted(config)].concat(),
        ),
        ("ops-watchdog", watchdog(config)),
    ];
    groups
        .into_iter()
        .filter(|(_, rules)| !rules.is_empty())
        .map(|(name, rules)| RuleGroup {
            name: name.to_owned(),
            interval: config.interval.clone(),
            rules,
        })
        .collect()
}

/// An alert before the shared labels and the runbook link are added.
struct Alert<'a> {
    name: &'static str,
    expr: String,
    r#for: &'a str,
    severity: Severity,
    summary: String,
    description: String,
}

impl Alert<'_> {
    fn rule(self, config: &AlertsConfig) -> Rule {
        let mut labels = config.labels.clone();
        labels.insert("severity".to_owned(), self.severity.as_str().to_owned());
        let annotations = BTreeMap::from([
            ("summary".to_owned(), self.summary),
            ("description".to_owned(), self.description),
            (
                "runbook_url".to_owned(),
                format!(
                    "{}#{}",
                    config.runbook_base_url,
                    self.name.to_ascii_lowercase()
                ),
            ),
        ]);
        // `for: 0s` is Prometheus' default: left out.
        let r#for = parse_duration(self.r#for)
            .is_some_and(|d| !d.is_zero())
            .then(|| self.r#for.to_owned());
        Rule {
            alert: self.name.to_owned(),
            expr: self.expr,
            r#for,
            labels,
            annotations,
        }
    }
}

/// `text` with each `<key>` replaced by its value: alert texts hold Go template
/// braces, which `format!` would need doubled.
fn fill(text: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(text.to_owned(), |text, (key, value)| {
        text.replace(&format!("<{key}>"), value)
    })
}

/// A PromQL string literal holding `s`.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A number for people: no float noise (`0.1 * 100` is `10`, not `10.000000000000002`).
fn human(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Whole seconds of a validated duration, for PromQL arithmetic.
fn seconds(duration: &str) -> String {
    parse_duration(duration)
        .map_or(0.0, |d| d.as_secs_f64())
        .to_string()
}

fn host_down(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.host_down;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "OpsHostDown",
            expr: format!("up{{job=~{}}} == 0", quoted(&config.jobs)),
            r#for: &a.r#for,
            severity: a.severity,
            summary: "{{ $labels.instance }} of job {{ $labels.job }} is down.".to_owned(),
            description: fill(
                "Prometheus could not scrape {{ $labels.instance }} (job {{ $labels.job }}) for <for>: the host, or its exporter, is down.",
                &[("for", &a.r#for)],
            ),
        }
        .rule(config),
    ]
}

fn disk_filling(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.disk_filling;
    if !a.enabled {
        return Vec::new();
    }
    let selector = format!("{{fstype!~{}}}", quoted(&a.ignored_fstypes));
    [&a.warning, &a.critical]
        .into_iter()
        .filter(|tier| tier.enabled)
        .map(|tier| {
            let expr = format!(
                "(\n  node_filesystem_avail_bytes{selector} / node_filesystem_size_bytes{selector} * 100 < {percent}\nand\n  predict_linear(node_filesystem_avail_bytes{selector}[{lookback}], {within}) < 0\nand\n  node_filesystem_readonly{selector} == 0\n)",
                percent = tier.available_percent,
                lookback = a.lookback,
                within = seconds(&tier.full_within),
            );
            Alert {
                name: "OpsHostDiskFilling",
                expr,
                r#for: &tier.r#for,
                severity: tier.severity,
                summary: fill(
                    "Filesystem {{ $labels.mountpoint }} on {{ $labels.instance }} will be full within <within>.",
                    &[("within", &tier.full_within)],
                ),
                description: fill(
                    "Filesystem {{ $labels.mountpoint }} ({{ $labels.device }}, {{ $labels.fstype }}) on {{ $labels.instance }} has {{ printf \"%.2f\" $value }}% of its space left (under <percent>%) and, at the rate it filled over the last <lookback>, will be full within <within>.",
                    &[
                        ("percent", &human(tier.available_percent)),
                        ("lookback", &a.lookback),
                        ("within", &tier.full_within),
                    ],
                ),
            }
            .rule(config)
        })
        .collect()
}

fn memory_pressure(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.memory_pressure;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "OpsHostMemoryPressure",
            expr: format!(
                "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < {}",
                a.available_ratio
            ),
            r#for: &a.r#for,
            severity: a.severity,
            summary: "{{ $labels.instance }} is running out of memory.".to_owned(),
            description: fill(
                "Only {{ $value | humanizePercentage }} of the memory of {{ $labels.instance }} is available (under <percent>% for <for>): tasks on it may be killed for lack of memory.",
                &[
                    ("percent", &human(a.available_ratio * 100.0)),
                    ("for", &a.r#for),
                ],
            ),
        }
        .rule(config),
    ]
}

fn task_failure_ratio(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.task_failure_ratio;
    if !a.enabled {
        return Vec::new();
    }
    let finished = format!(
        "sum by (template, environment) (increase(ops_tasks_finished_total[{}]))",
        a.window
    );
    let expr = format!(
        "(\n  sum by (template, environment) (increase(ops_tasks_finished_total{{state=~\"failed|timed_out\"}}[{window}]))\n/\n  {finished}\n) > {ratio}\nand\n{finished} >= {min}",
        window = a.window,
        ratio = a.ratio,
        min = a.min_finished,
    );
    vec![
        Alert {
            name: "OpsTaskFailureRatioHigh",
            expr,
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Tasks of template {{ $labels.template }} in {{ $labels.environment }} fail often.".to_owned(),
            description: fill(
                "{{ $value | humanizePercentage }} of the tasks of template {{ $labels.template }} in environment {{ $labels.environment }} that finished in the last <window> failed or timed out (alerting above <percent>% of at least <min> tasks).",
                &[
                    ("window", &a.window),
                    ("percent", &human(a.ratio * 100.0)),
                    ("min", &a.min_finished.to_string()),
                ],
            ),
        }
        .rule(config),
    ]
}

fn queue_stuck(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.queue_stuck;
    if !a.enabled {
        return Vec::new();
    }
    // The quantile sees tasks that started; the oldest wait sees those that cannot.
    let expr = format!(
        "(\n  histogram_quantile({q}, sum by (environment, le) (rate(ops_queue_wait_seconds_bucket[{window}]))) > {wait}\nor\n  max by (environment) (ops_queue_oldest_wait_seconds) > {wait}\n)\nand on ()\n(\n  sum(ops_capacity{{resource=\"cpu\"}}) - (sum(ops_capacity_used{{resource=\"cpu\"}}) or vector(0)) > 0\n)",
        q = a.quantile,
        window = a.window,
        wait = a.wait_seconds,
    );
    vec![
        Alert {
            name: "OpsQueueStuck",
            expr,
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Tasks in {{ $labels.environment }} wait long although CPU capacity is free.".to_owned(),
            description: fill(
                "Queued tasks in environment {{ $labels.environment }} have waited {{ $value | humanizeDuration }} (the p<q> over <window>, or the oldest queued task; alerting above <wait>s) for <for> while CPU capacity is free: the scheduler may be stuck, or the tasks fit nowhere.",
                &[
                    ("q", &human(a.quantile * 100.0)),
                    ("window", &a.window),
                    ("wait", &human(a.wait_seconds)),
                    ("for", &a.r#for),
                ],
            ),
        }
        .rule(config),
    ]
}

fn dead_letters_growing(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.dead_letters_growing;
    if !a.enabled {
        return Vec::new();
    }
    // The counter sees dead letters even when they are replayed at once; the gauge
    // sees them when the counter's series is new (`increase` needs two samples).
    let expr = format!(
        "sum by (function) (increase(ops_function_events_total{{outcome=\"dead_lettered\"}}[{w}])) > 0\nor\nsum by (function) (delta(ops_dead_letters[{w}])) > 0",
        w = a.window
    );
    vec![
        Alert {
            name: "OpsDeadLettersGrowing",
            expr,
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Function {{ $labels.function }} dead-letters events.".to_owned(),
            description: fill(
                "Function {{ $labels.function }} dead-lettered events in the last <window> (about {{ printf \"%.0f\" $value }}): they are not retried until replayed.",
                &[("window", &a.window)],
            ),
        }
        .rule(config),
    ]
}

fn outbox_lag(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.outbox_lag;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "OpsOutboxLagHigh",
            expr: format!(
                "max by (subscription) (ops_outbox_lag_seconds) > {}",
                a.seconds
            ),
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Subscription {{ $labels.subscription }} is falling behind.".to_owned(),
            description: fill(
                "The oldest event subscription {{ $labels.subscription }} has not acknowledged is {{ $value | humanizeDuration }} old (over <seconds>s for <for>).",
                &[("seconds", &human(a.seconds)), ("for", &a.r#for)],
            ),
        }
        .rule(config),
    ]
}

/// `GPU 0 (model, UUID) on host`, for the GPU alerts' descriptions.
const GPU: &str =
    "GPU {{ $labels.gpu }} ({{ $labels.modelName }}, {{ $labels.UUID }}) on {{ $labels.Hostname }}";

fn gpu_xid_error(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.gpu_xid_error;
    if !a.enabled {
        return Vec::new();
    }
    let mut expr = "DCGM_FI_DEV_XID_ERRORS != 0".to_owned();
    if !a.ignored_codes.is_empty() {
        let ignored: Vec<String> = a
            .ignored_codes
            .iter()
            .map(|code| format!("DCGM_FI_DEV_XID_ERRORS == {code}"))
            .collect();
        expr = format!("{expr}\nunless\n({})", ignored.join(" or "));
    }
    vec![
        Alert {
            name: "OpsGpuXidError",
            expr,
            r#for: &a.r#for,
            severity: a.severity,
            summary: "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} reported XID error {{ $value }}.".to_owned(),
            description: fill(
                "<gpu> reported XID error {{ $value }}{{ if $labels.task_id }} while held by task {{ $labels.task_id }} of tenant {{ $labels.tenant }}{{ end }}. Look the code up in NVIDIA's XID catalogue: many need the GPU drained and reset.",
                &[("gpu", GPU)],
            ),
        }
        .rule(config),
    ]
}

fn gpu_row_remap_failure(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.gpu_row_remap_failure;
    if !a.enabled {
        return Vec::new();
    }
    // `max_over_time` drops the metric name, as `increase` does: the two sides of
    // `or` then name one GPU alike, and one alert fires, not two with equal labels.
    let expr = format!(
        "max_over_time(DCGM_FI_DEV_ROW_REMAP_FAILURE[5m]) > 0\nor\nincrease(DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS[{}]) > 0",
        a.window
    );
    vec![
        Alert {
            name: "OpsGpuRowRemapFailure",
            expr,
            r#for: &a.r#for,
            severity: a.severity,
            summary: "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} has failing memory.".to_owned(),
            description: fill(
                "<gpu> failed to remap a memory row, or remapped rows after uncorrectable errors in the last <window>: drain it and reset it; a failed remap means the GPU must be replaced.",
                &[("gpu", GPU), ("window", &a.window)],
            ),
        }
        .rule(config),
    ]
}

fn gpu_too_hot(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.gpu_too_hot;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "OpsGpuTooHot",
            expr: format!("DCGM_FI_DEV_GPU_TEMP > {}", a.celsius),
            r#for: &a.r#for,
            severity: a.severity,
            summary: "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} is too hot.".to_owned(),
            description: fill(
                "<gpu> has been above <celsius> °C for <for> ({{ $value }} °C now): it throttles, and may shut down.",
                &[
                    ("gpu", GPU),
                    ("celsius", &human(a.celsius)),
                    ("for", &a.r#for),
                ],
            ),
        }
        .rule(config),
    ]
}

fn gpu_allocated_idle(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.gpu_allocated_idle;
    if !a.enabled {
        return Vec::new();
    }
    // A task's GPU series is new when the task starts: `offset` asks that it existed
    // a whole window ago, so that a task is not idle after one quiet minute.
    let expr = format!(
        "max_over_time(DCGM_FI_DEV_GPU_UTIL{{task_id!=\"\"}}[{w}]) < {p}\nand\nDCGM_FI_DEV_GPU_UTIL{{task_id!=\"\"}} offset {w}",
        w = a.window,
        p = a.utilisation_percent,
    );
    vec![
        Alert {
            name: "OpsGpuAllocatedIdle",
            expr,
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Task {{ $labels.task_id }} of tenant {{ $labels.tenant }} holds an idle GPU.".to_owned(),
            description: fill(
                "<gpu> is held by task {{ $labels.task_id }} of tenant {{ $labels.tenant }}, but its utilisation stayed under <percent>% for <window> (at most {{ $value }}%).",
                &[
                    ("gpu", GPU),
                    ("percent", &human(a.utilisation_percent)),
                    ("window", &a.window),
                ],
            ),
        }
        .rule(config),
    ]
}

fn preemption_storm(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.preemption_storm;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "OpsPreemptionStorm",
            expr: format!(
                "sum by (environment) (increase(ops_task_preemptions_total[{}])) > {}",
                a.window, a.count
            ),
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Many tasks in {{ $labels.environment }} are preempted.".to_owned(),
            description: fill(
                "About {{ printf \"%.0f\" $value }} tasks were preempted in environment {{ $labels.environment }} in the last <window> (alerting above <count>): their work since the last checkpoint is lost.",
                &[("window", &a.window), ("count", &a.count.to_string())],
            ),
        }
        .rule(config),
    ]
}

fn budget_burn(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.budget_burn;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "OpsBudgetBurn",
            expr: format!(
                "max by (tenant) (ops_billing_budget_threshold_percent) >= {}",
                a.percent
            ),
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Tenant {{ $labels.tenant }} has used {{ $value }}% of its prepaid credit.".to_owned(),
            description: fill(
                "Tenant {{ $labels.tenant }} crossed {{ $value }}% of its prepaid credit (alerting from <percent>%): its tasks wait, or are cancelled, when the credit runs out.",
                &[("percent", &human(a.percent))],
            ),
        }
        .rule(config),
    ]
}

fn budget_exhausted(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.budget_exhausted;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "OpsBudgetExhausted",
            expr: format!(
                "sum by (tenant) (increase(ops_billing_budget_exhausted_total[{}])) > 0",
                a.window
            ),
            r#for: &a.r#for,
            severity: a.severity,
            summary: "Tenant {{ $labels.tenant }} ran out of prepaid credit.".to_owned(),
            description: fill(
                "Tenant {{ $labels.tenant }} ran out of prepaid credit in the last <window>: its tasks wait (or are cancelled, with [billing] on_exhausted = \"cancel\") until it tops up.",
                &[("window", &a.window)],
            ),
        }
        .rule(config),
    ]
}

fn watchdog(config: &AlertsConfig) -> Vec<Rule> {
    let a = &config.watchdog;
    if !a.enabled {
        return Vec::new();
    }
    vec![
        Alert {
            name: "Watchdog",
            expr: "vector(1)".to_owned(),
            r#for: "0s",
            severity: a.severity,
            summary: "An alert that should always be firing to certify that Alertmanager is working properly.".to_owned(),
            description: "This alert is always firing, to show that the whole alerting pipeline works. Route it to a dead man's switch that pages when it stops arriving.".to_owned(),
        }
        .rule(config),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_promql_strings() {
        assert_eq!(quoted("ops|node"), r#""ops|node""#);
        assert_eq!(quoted(r#"a"b\d"#), r#""a\"b\\d""#);
    }

    #[test]
    fn numbers_for_people_have_no_float_noise() {
        assert_eq!(human(0.1 * 100.0), "10");
        assert_eq!(human(0.07 * 100.0), "7");
        assert_eq!(human(12.5), "12.5");
        assert_eq!(human(600.0), "600");
    }

    #[test]
    fn fill_replaces_every_key() {
        assert_eq!(
            fill(
                "{{ $value }} <a> and <b> and <a>",
                &[("a", "1"), ("b", "2")]
            ),
            "{{ $value }} 1 and 2 and 1"
        );
    }
}
