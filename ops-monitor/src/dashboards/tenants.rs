//! "Tenants": what each tenant runs, waits for, holds, stores and spends.

use super::model::{Item, Panel, q, var};
use super::{Dashboard, DashboardsConfig, TENANTS_UID, build};

pub(super) fn dashboard(config: &DashboardsConfig) -> Dashboard {
    let te = r#"tenant=~"$tenant", environment=~"$environment""#;
    let t = r#"tenant=~"$tenant""#;
    let variables = [
        var("tenant", "Tenant", "label_values(ops_tasks, tenant)"),
        var(
            "environment",
            "Environment",
            "label_values(ops_tasks, environment)",
        ),
    ];
    let quota = |resource: &str, unit: &'static str, what: &str| {
        Panel::timeseries(
            &format!("Quota: {resource}"),
            unit,
            vec![
                q(
                    format!(r#"sum by (tenant) (ops_quota_used{{resource="{resource}", {te}}})"#),
                    "{{tenant}} used",
                ),
                q(
                    format!(r#"sum by (tenant) (ops_quota_nominal{{resource="{resource}", {te}}})"#),
                    "{{tenant}} nominal",
                ),
            ],
        )
        .size(8, 8)
        .min(0.0)
        .describe(&format!(
            "{what} held by each tenant's running regular tasks, against its configured quota (where one is set)."
        ))
    };
    let items = vec![
        Item::Row("Tasks"),
        Item::Panel(
            Panel::table(
                "Tenants at a glance",
                "short",
                vec![
                    q(format!(r#"sum by (tenant) (ops_tasks{{state="running", {te}}})"#), ""),
                    q(format!(r#"sum by (tenant) (ops_tasks{{state="queued", {te}}})"#), ""),
                    q(
                        format!(r#"count by (tenant) (DCGM_FI_DEV_GPU_UTIL{{tenant!="", {t}}})"#),
                        "",
                    ),
                    q(format!("max by (tenant) (ops_billing_budget_threshold_percent{{{t}}})"), ""),
                ],
            )
            .size(24, 8)
            .rename(&[
                ("tenant", "Tenant"),
                ("Value #A", "Running"),
                ("Value #B", "Queued"),
                ("Value #C", "GPUs held"),
                ("Value #D", "Budget used (%)"),
            ])
            .describe("Per tenant: tasks running and queued, GPUs held now, and the last budget threshold crossed."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Running tasks",
                "short",
                vec![q(
                    format!(r#"sum by (tenant) (ops_tasks{{state="running", {te}}})"#),
                    "{{tenant}}",
                )],
            )
            .stacked()
            .min(0.0)
            .describe("Tasks running now, per tenant."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Queued tasks",
                "short",
                vec![q(
                    format!(r#"sum by (tenant) (ops_tasks{{state="queued", {te}}})"#),
                    "{{tenant}}",
                )],
            )
            .stacked()
            .min(0.0)
            .describe("Tasks waiting, per tenant."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Finished by state",
                "ops",
                vec![q(
                    format!(
                        "sum by (tenant, state) (rate(ops_tasks_finished_total{{{te}}}[$__rate_interval]))"
                    ),
                    "{{tenant}} {{state}}",
                )],
            )
            .min(0.0)
            .describe("Tasks finishing per second, per tenant and final state."),
        ),
        Item::Panel(
            Panel::timeseries(
                "GPUs held",
                "short",
                vec![q(
                    format!(r#"count by (tenant) (DCGM_FI_DEV_GPU_UTIL{{tenant!="", {t}}})"#),
                    "{{tenant}}",
                )],
            )
            .stacked()
            .min(0.0)
            .describe("GPUs held by each tenant's tasks (from the GPU series' tenant label)."),
        ),
        Item::Row("Quotas"),
        Item::Panel(quota("cpu", "short", "CPU cores")),
        Item::Panel(quota("memory", "bytes", "Memory")),
        Item::Panel(quota("gpu", "short", "GPUs")),
        Item::Panel(
            Panel::bargauge(
                "Quota use",
                "percentunit",
                vec![q(
                    format!(
                        "sum by (tenant, environment, resource) (ops_quota_used{{{te}}}) / sum by (tenant, environment, resource) (ops_quota_nominal{{{te}}})"
                    ),
                    "{{tenant}} {{environment}} {{resource}}",
                )],
            )
            .size(24, 8)
            .range(0.0, 1.0)
            .thresholds(&[(0.8, "orange"), (1.0, "red")])
            .describe("Share of each quota in use, per tenant, environment and resource."),
        ),
        Item::Row("Storage and billing"),
        Item::Panel(
            Panel::timeseries(
                "Storage",
                "bytes",
                vec![q(format!("sum by (tenant) (ops_storage_bytes{{{t}}})"), "{{tenant}}")],
            )
            .size(8, 8)
            .min(0.0)
            .describe("Bytes each tenant stores."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Stored objects",
                "short",
                vec![q(format!("sum by (tenant) (ops_storage_objects{{{t}}})"), "{{tenant}}")],
            )
            .size(8, 8)
            .min(0.0)
            .describe("Objects each tenant stores."),
        ),
        Item::Panel(
            Panel::bargauge(
                "Budget used",
                "percent",
                vec![q(
                    format!("max by (tenant) (ops_billing_budget_threshold_percent{{{t}}})"),
                    "{{tenant}}",
                )],
            )
            .size(8, 8)
            .range(0.0, 100.0)
            .thresholds(&[(80.0, "orange"), (100.0, "red")])
            .describe("The last share of prepaid credit each tenant crossed (budget threshold events)."),
        ),
        Item::Panel(
            Panel::table(
                "Budget exhausted",
                "short",
                vec![q(
                    format!(
                        "sum by (tenant) (increase(ops_billing_budget_exhausted_total{{{t}}}[$__range])) > 0"
                    ),
                    "",
                )],
            )
            .size(24, 6)
            .rename(&[("tenant", "Tenant"), ("Value", "Budget exhausted (events in range)")])
            .describe("Tenants whose prepaid credit ran out in the time range shown, and how often."),
        ),
    ];
    build(
        config,
        TENANTS_UID,
        "Tenants",
        "Per tenant: tasks running, queued and finished, quota used against nominal, GPUs held, storage and budget.",
        &variables,
        &items,
    )
}
