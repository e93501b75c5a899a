//! "Fleet and GPUs": hosts (node_exporter's names) and GPUs (DCGM exporter's names),
//! with who holds each GPU.

use super::model::{Item, Panel, q, var};
use super::{Dashboard, DashboardsConfig, FLEET_UID, build};

/// Filesystems worth watching: not the in-memory and image layers.
const REAL_FS: &str = r#"fstype!~"tmpfs|ramfs|overlay|squashfs|nsfs|fuse.lxcfs""#;
/// Physical-ish interfaces: not loopback, bridges and container veths.
const REAL_NIC: &str = r#"device!~"lo|veth.*|docker.*|br-.*|cali.*|cni.*|flannel.*|vxlan.*""#;

pub(super) fn dashboard(config: &DashboardsConfig) -> Dashboard {
    let host = r#"instance=~"$instance""#;
    let gpu = r#"Hostname=~"$gpu_host""#;
    let gpu_legend = "{{Hostname}} GPU {{gpu}}";
    let variables = [
        var("instance", "Host", "label_values(node_load1, instance)"),
        var(
            "gpu_host",
            "GPU host",
            "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)",
        ),
        var(
            "tenant",
            "Tenant",
            "label_values(DCGM_FI_DEV_GPU_UTIL, tenant)",
        ),
    ];
    let items = vec![
        Item::Row("Hosts"),
        Item::Panel(
            Panel::stat(
                "Hosts reporting",
                "short",
                q(format!("count(node_load1{{{host}}})"), ""),
            )
            .describe("Hosts whose load average was scraped."),
        ),
        Item::Panel(
            Panel::stat(
                "Fleet CPU busy",
                "percent",
                q(
                    format!(
                        r#"100 * (1 - avg(rate(node_cpu_seconds_total{{mode="idle", {host}}}[$__rate_interval])))"#
                    ),
                    "",
                ),
            )
            .range(0.0, 100.0)
            .thresholds(&[(80.0, "orange"), (95.0, "red")])
            .describe("Share of all CPU time of the selected hosts not spent idle."),
        ),
        Item::Panel(
            Panel::stat(
                "Fleet memory available",
                "percent",
                q(
                    format!(
                        "100 * sum(node_memory_MemAvailable_bytes{{{host}}}) / sum(node_memory_MemTotal_bytes{{{host}}})"
                    ),
                    "",
                ),
            )
            .range(0.0, 100.0)
            .describe("Memory available for new work, as a share of all memory."),
        ),
        Item::Panel(
            Panel::stat(
                "GPUs",
                "short",
                q(format!("count(DCGM_FI_DEV_GPU_UTIL{{{gpu}}}) or vector(0)"), ""),
            )
            .describe("GPUs reporting."),
        ),
        Item::Panel(
            Panel::stat(
                "GPUs held",
                "short",
                q(
                    format!(r#"count(DCGM_FI_DEV_GPU_UTIL{{tenant!="", {gpu}}}) or vector(0)"#),
                    "",
                ),
            )
            .describe("GPUs a task holds (their tenant label is set)."),
        ),
        Item::Panel(
            Panel::stat(
                "GPU collectors down",
                "short",
                q("count(ops_gpu_collector_up == 0) or vector(0)", ""),
            )
            .thresholds(&[(1.0, "red")])
            .describe("Ops exporters whose GPU collector could not read NVML (the reason is in their log)."),
        ),
        Item::Panel(
            Panel::timeseries(
                "CPU busy",
                "percent",
                vec![q(
                    format!(
                        r#"100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle", {host}}}[$__rate_interval])))"#
                    ),
                    "{{instance}}",
                )],
            )
            .range(0.0, 100.0)
            .describe("Share of CPU time not spent idle, per host."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Load",
                "short",
                vec![
                    q(format!("node_load1{{{host}}}"), "{{instance}} 1m"),
                    q(format!("node_load5{{{host}}}"), "{{instance}} 5m"),
                    q(format!("node_load15{{{host}}}"), "{{instance}} 15m"),
                ],
            )
            .min(0.0)
            .describe("Load averages: runnable and uninterruptible tasks."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Memory available",
                "bytes",
                vec![q(
                    format!("node_memory_MemAvailable_bytes{{{host}}}"),
                    "{{instance}}",
                )],
            )
            .min(0.0)
            .describe("Memory available for new work without swapping, per host."),
        ),
        Item::Panel(
            Panel::bargauge(
                "Filesystem use",
                "percent",
                vec![q(
                    format!(
                        "100 * (1 - node_filesystem_avail_bytes{{{host}, {REAL_FS}}} / node_filesystem_size_bytes{{{host}, {REAL_FS}}})"
                    ),
                    "{{instance}} {{mountpoint}}",
                )],
            )
            .range(0.0, 100.0)
            .thresholds(&[(80.0, "orange"), (90.0, "red")])
            .describe("Share of each filesystem not available to unprivileged users."),
        ),
        Item::Panel(
            Panel::timeseries(
                "Network",
                "Bps",
                vec![
                    q(
                        format!(
                            "rate(node_network_receive_bytes_total{{{host}, {REAL_NIC}}}[$__rate_interval])"
                        ),
                        "{{instance}} {{device}} received",
                    ),
                    q(
                        format!(
                            "-rate(node_network_transmit_bytes_total{{{host}, {REAL_NIC}}}[$__rate_interval])"
                        ),
                        "{{instance}} {{device}} sent",
                    ),
                ],
            )
            .describe("Bytes received (up) and sent (down) per second, per interface."),
        ),
        Item::Panel(
            Panel::table(
                "Uptime",
                "s",
                vec![q(
                    format!("node_time_seconds{{{host}}} - node_boot_time_seconds{{{host}}}"),
                    "",
                )],
            )
            .rename(&[("instance", "Host"), ("Value", "Up for")])
            .describe("Time since each host booted."),
        ),
        Item::Row("GPUs"),
        Item::Panel(
            Panel::timeseries(
                "GPU utilisation",
                "percent",
                vec![q(format!("DCGM_FI_DEV_GPU_UTIL{{{gpu}}}"), gpu_legend)],
            )
            .range(0.0, 100.0)
            .describe("Share of time a kernel was running on the GPU."),
        ),
        Item::Panel(
            Panel::timeseries(
                "GPU memory used",
                "mbytes",
                vec![q(format!("DCGM_FI_DEV_FB_USED{{{gpu}}}"), gpu_legend)],
            )
            .min(0.0)
            .describe("Frame buffer memory in use."),
        ),
        Item::Panel(
            Panel::timeseries(
                "GPU memory free",
                "mbytes",
                vec![q(format!("DCGM_FI_DEV_FB_FREE{{{gpu}}}"), gpu_legend)],
            )
            .min(0.0)
            .describe("Frame buffer memory free."),
        ),
        Item::Panel(
            Panel::timeseries(
                "GPU temperature",
                "celsius",
                vec![q(format!("DCGM_FI_DEV_GPU_TEMP{{{gpu}}}"), gpu_legend)],
            )
            .thresholds(&[(80.0, "orange"), (90.0, "red")])
            .describe("GPU core temperature."),
        ),
        Item::Panel(
            Panel::timeseries(
                "GPU power",
                "watt",
                vec![q(format!("DCGM_FI_DEV_POWER_USAGE{{{gpu}}}"), gpu_legend)],
            )
            .min(0.0)
            .describe("Power drawn, as the driver reports it."),
        ),
        Item::Panel(
            Panel::timeseries(
                "GPU energy rate",
                "watt",
                vec![q(
                    format!(
                        "rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{gpu}}}[$__rate_interval]) / 1000"
                    ),
                    gpu_legend,
                )],
            )
            .min(0.0)
            .describe("Energy used per second, from the energy counter (mJ): the average power over each interval."),
        ),
        Item::Panel(
            Panel::table(
                "Last XID error",
                "none",
                vec![q(
                    format!("max by (Hostname, gpu, UUID) (DCGM_FI_DEV_XID_ERRORS{{{gpu}}})"),
                    "",
                )],
            )
            .thresholds(&[(1.0, "red")])
            .mappings(&[("0", "none", "green")])
            .rename(&[("Value", "Last XID")])
            .describe("The last XID error code each GPU reported (0: none). Look codes up in NVIDIA's XID catalogue."),
        ),
        Item::Panel(
            Panel::table(
                "Row remapping",
                "short",
                vec![
                    q(
                        format!(
                            "max by (Hostname, gpu, UUID) (DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS{{{gpu}}})"
                        ),
                        "",
                    ),
                    q(
                        format!(
                            "max by (Hostname, gpu, UUID) (DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{gpu}}})"
                        ),
                        "",
                    ),
                    q(
                        format!(
                            "max by (Hostname, gpu, UUID) (DCGM_FI_DEV_ROW_REMAP_FAILURE{{{gpu}}})"
                        ),
                        "",
                    ),
                ],
            )
            .rename(&[
                ("Value #A", "Correctable rows"),
                ("Value #B", "Uncorrectable rows"),
                ("Value #C", "Remap failed"),
            ])
            .describe("Memory rows remapped after errors. A failed remap means the GPU needs a reset or replacement."),
        ),
        Item::Panel(
            Panel::table(
                "Who holds which GPU",
                "percent",
                vec![q(
                    format!(
                        r#"max by (Hostname, gpu, modelName, tenant, task_id) (DCGM_FI_DEV_GPU_UTIL{{{gpu}, tenant=~"$tenant"}})"#
                    ),
                    "",
                )],
            )
            .size(24, 8)
            .rename(&[
                ("Hostname", "Host"),
                ("gpu", "GPU"),
                ("modelName", "Model"),
                ("tenant", "Tenant"),
                ("task_id", "Task"),
                ("Value", "Utilisation"),
            ])
            .describe("Every GPU with the tenant and task holding it (empty when free) and its utilisation now."),
        ),
        Item::Panel(
            Panel::table(
                "GPUs allocated but idle",
                "percent",
                vec![q(
                    format!(
                        r#"max by (Hostname, gpu, tenant, task_id) (max_over_time(DCGM_FI_DEV_GPU_UTIL{{tenant!="", {gpu}, tenant=~"$tenant"}}[15m])) < 5"#
                    ),
                    "",
                )],
            )
            .size(24, 6)
            .rename(&[
                ("Hostname", "Host"),
                ("gpu", "GPU"),
                ("tenant", "Tenant"),
                ("task_id", "Task"),
                ("Value", "Peak utilisation (15m)"),
            ])
            .describe("GPUs a task holds whose utilisation stayed under 5% for the last 15 minutes."),
        ),
    ];
    build(
        config,
        FLEET_UID,
        "Fleet and GPUs",
        "Hosts (CPU, load, memory, filesystems, network) and GPUs (utilisation, memory, temperature, power, errors), with the tenant and task holding each GPU.",
        &variables,
        &items,
    )
}
