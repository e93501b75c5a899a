//! "Tasks and queues": task states and outcomes, queues and their waits, the event
//! spine, and whether the collectors read.

use super::model::{Item, Panel, q, var};
use super::{Dashboard, DashboardsConfig, TASKS_UID, build};

pub(super) fn dashboard(config: &DashboardsConfig) -> Dashboard {
    // Series with tenant, template and environment labels.
    let tte = r#"tenant=~"$tenant", template=~"$template", environment=~"$environment""#;
    // Series with tenant and environment labels.
    let te = r#"tenant=~"$tenant", environment=~"$environment""#;
    let env = r#"environment=~"$environment""#;
    let variables = [
        var("tenant", "Tenant", "label_values(ops_tasks, tenant)"),
        var(
            "environment",
            "Environment",
            "label_values(ops_tasks, environment)",
        ),
        var(
            "template",
            "Template",
            r#"label_values(ops_tasks{tenant=~"$tenant", environment=~"$environment"}, template)"#,
        ),
    ];
    let rate = |metric: &str, selector: &str, by: &str| {
        let selector = if selector.is_empty() {
            String::new()
        } else {
            format!("{{{selector}}}")
        };
        format!("sum by ({by}) (rate({metric}{selector}[$__rate_interval]))")
    };
    let p = |quantile: &str, metric: &str, selector: &str, by: &str| {
        format!(
            "histogram_quantile({quantile}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))"
        )
    };
    let state = |s: &str| format!(r#"sum(ops_tasks{{state="{s}", {tte}}}) or vector(0)"#);
    let items = vec![
        Item::Row("Tasks"),
        Item::Panel(Panel::stat("Running", "short", q(state("running"), "")).describe("Tasks running now.")),
        Item::Panel(
            Panel::stat("Queued", "short", q(state("queued"), "")).describe("Tasks waiting for capacity or quota."),
        ),
        Item::Panel(
            Panel::stat("Retrying", "short", q(state("retrying"), ""))
                .describe("Tasks between a failed attempt and the next."),
        ),
        Item::Panel(
            Panel::stat(
                "Failure ratio",
                "percentunit",
                q(
                    format!(
                        r#"sum(rate(ops_tasks_finished_total{{state=~"failed|timed_out", {tte}}}[$__rate_interval])) / sum(rate(ops_tasks_finished_total{{{tte}}}[$__rate_interval]))"#
                    ),
                    "",
                ),
            )
            .range(0.0, 1.0)
            .thresholds(&[(0.05, "orange"), (0.2, "red")])
            .describe("Share of finished tasks that failed or timed out."),
        ),
        Item::Panel(
            Panel::stat(
                "Oldest wait",
                "s",
                q(format!("max(ops_queue_oldest_wait_seconds{{{env}}}) or vector(0)"), ""),
            )
            .thresholds(&[(600.0, "orange"), (3600.0, "red")])
            .describe("How long the oldest queued task has waited, over all queues."),
        ),
        Item::Panel(
            Panel::stat(
                "Collectors down",
                "short",
                q("count(ops_collector_up == 0) or vector(0)", ""),
            )
            .thresholds(&[(1.0, "red")])
            .describe("Collectors whose last read failed (see the Collectors table below)."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Tasks by state",
                "short",
                vec![q(format!("sum by (state) (ops_tasks{{{tte}}})"), "{{state}}")],
            )
            .stacked()
            .min(0.0)
            .describe("Tasks not finished, by state."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Finished by state",
                "ops",
                vec![q(rate("ops_tasks_finished_total", tte, "state"), "{{state}}")],
            )
            .stacked()
            .min(0.0)
            .describe("Tasks finishing per second, by final state."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Failure ratio per template",
                "percentunit",
                vec![q(
                    format!(
                        r#"{} / {}"#,
                        rate(
                            "ops_tasks_finished_total",
                            &format!(r#"state=~"failed|timed_out", {tte}"#),
                            "template"
                        ),
                        rate("ops_tasks_finished_total", tte, "template"),
                    ),
                    "{{template}}",
                )],
            )
            .range(0.0, 1.0)
            .describe("Share of each template's finished tasks that failed or timed out."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Run time p95 per template",
                "s",
                vec![q(p("0.95", "ops_task_run_seconds", tte, "template"), "{{template}}")],
            )
            .min(0.0)
            .describe("95th percentile of attempt run time (start to end), per template."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Attempts ended by reason",
                "ops",
                vec![q(rate("ops_task_attempts_total", tte, "reason"), "{{reason}}")],
            )
            .stacked()
            .min(0.0)
            .describe("Attempts ending per second, by reason (Completed, NonZeroExit, OutOfMemory, Preempted…)."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Preemptions",
                "short",
                vec![q(
                    format!(
                        "sum by (tenant) (increase(ops_task_preemptions_total{{{te}}}[$__rate_interval]))"
                    ),
                    "{{tenant}}",
                )],
            )
            .min(0.0)
            .describe("Tasks preempted per interval, by tenant."),
        ),
        Item::Row("Queues"),
        Item::Panel(
            Panel::timeseries(
                "Queue depth",
                "short",
                vec![q(
                    format!("sum by (environment, tier) (ops_queue_depth{{{env}}})"),
                    "{{environment}} {{tier}}",
                )],
            )
            .min(0.0)
            .describe("Queued tasks per environment and tier (regular, scavenger)."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Oldest wait",
                "s",
                vec![q(
                    format!("max by (environment, tier) (ops_queue_oldest_wait_seconds{{{env}}})"),
                    "{{environment}} {{tier}}",
                )],
            )
            .min(0.0)
            .describe("How long the oldest queued task has waited, per environment and tier."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Queue wait p50 and p95",
                "s",
                vec![
                    q(
                        p("0.5", "ops_queue_wait_seconds", te, "environment, tier"),
                        "p50 {{environment}} {{tier}}",
                    ),
                    q(
                        p("0.95", "ops_queue_wait_seconds", te, "environment, tier"),
                        "p95 {{environment}} {{tier}}",
                    ),
                ],
            )
            .min(0.0)
            .describe("Time from queued to started, from the histogram."),
        ),
        Item::Panel(
            Panel::bargauge(
                "Capacity used",
                "percentunit",
                vec![q(
                    "sum by (resource) (ops_capacity_used) / sum by (resource) (ops_capacity)",
                    "{{resource}}",
                )],
            )
            .range(0.0, 1.0)
            .thresholds(&[(0.8, "orange"), (0.95, "red")])
            .describe("Share of what the executor offers that running tasks (scavengers included) hold."),
        ),
        Item::Row("Event spine"),
        Item::Panel(
            Panel::timeseries(
                "Events per type",
                "ops",
                vec![q(rate("ops_events_total", "", "type"), "{{type}}")],
            )
            .min(0.0)
            .describe("Events seen on the spine per second, by CloudEvent type."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Function outcomes",
                "ops",
                vec![q(
                    rate("ops_function_events_total", "", "function, outcome"),
                    "{{function}} {{outcome}}",
                )],
            )
            .min(0.0)
            .describe("What the dispatcher did with events per function: delivered, skipped, failed, retried, dead-lettered, replayed."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Dead letters",
                "short",
                vec![q("sum by (function) (ops_dead_letters)", "{{function}}")],
            )
            .min(0.0)
            .thresholds(&[(1.0, "red")])
            .describe("Dead letters kept now, per function."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Subscription backlog",
                "short",
                vec![q("sum by (subscription) (ops_subscription_backlog)", "{{subscription}}")],
            )
            .min(0.0)
            .describe("Events a function has not acknowledged yet."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Outbox lag",
                "s",
                vec![q("max by (subscription) (ops_outbox_lag_seconds)", "{{subscription}}")],
            )
            .min(0.0)
            .describe("Age of the oldest event a subscription has not acknowledged (0 when caught up)."),
        ),
        Item::Panel(
            Panel::table(
                "Collectors",
                "none",
                vec![q("min by (instance, collector) (ops_collector_up)", "")],
            )
            .mappings(&[("0", "down", "red"), ("1", "up", "green")])
            .rename(&[("instance", "Exporter"), ("collector", "Collector"), ("Value", "Last read")])
            .describe("Whether each collector's last read succeeded (a failed one's reason is in the exporter's log)."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Collector read time",
                "s",
                vec![q(
                    "max by (instance, collector) (ops_collector_duration_seconds)",
                    "{{instance}} {{collector}}",
                )],
            )
            .min(0.0)
            .describe("How long each collector's last read took."),
        ),
    ];
    build(
        config,
        TASKS_UID,
        "Tasks and queues",
        "Task states and outcomes, queue depth and waits, attempts and preemptions, and the event spine's deliveries, dead letters and lag.",
        &variables,
        &items,
    )
}
