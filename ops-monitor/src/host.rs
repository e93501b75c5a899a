//! [`HostCollector`]: this host's CPU, load, memory, filesystems, network and boot
//! time under node_exporter's metric names and labels, so the node-mixin's dashboards
//! and alerts (and anything else written for node_exporter) work unchanged.
//!
//! Read from /proc with `procfs` and from `statvfs(3)` (through `nix`) on each scrape,
//! off the async runtime (a hung network mount cannot stall the scrape beyond the
//! collect timeout). Covered:
//!
//! | family | labels |
//! |---|---|
//! | `node_cpu_seconds_total` | `cpu`, `mode` (user, nice, system, idle, iowait, irq, softirq, steal) |
//! | `node_load1`, `node_load5`, `node_load15` | |
//! | `node_memory_{MemTotal,MemFree,MemAvailable,Buffers,Cached,SwapTotal,SwapFree}_bytes` | |
//! | `node_filesystem_{size,free,avail}_bytes`, `node_filesystem_readonly` | `device`, `fstype`, `mountpoint` |
//! | `node_network_{receive,transmit}_bytes_total` | `device` |
//! | `node_boot_time_seconds`, `node_time_seconds` | |
//!
//! Filesystems are filtered as node_exporter does by default: pseudo filesystems
//! (proc, sysfs, cgroup, overlay…) and mount points under /dev, /proc, /sys and the
//! container runtimes' directories are left out.

use std::borrow::Cow;

use async_trait::async_trait;

use crate::{CollectError, Collector, Descriptor, Family, MetricKind};

/// Filesystem types node_exporter leaves out by default.
const IGNORED_FSTYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// Mount point prefixes node_exporter leaves out by default.
const IGNORED_MOUNT_PREFIXES: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run/credentials/",
    "/var/lib/docker/",
    "/var/lib/containers/storage/",
];

/// The host collector; see the [module documentation](self).
#[derive(Clone, Debug, Default)]
pub struct HostCollector {
    _private: (),
}

impl HostCollector {
    /// A collector of this host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads everything now (blocking: a few small files and one `statvfs` per
    /// filesystem).
    pub fn read(&self) -> Result<Vec<Family>, CollectError> {
        read()
    }
}

fn d(name: &'static str, help: &'static str, kind: MetricKind) -> Descriptor {
    Descriptor::new(name, help, kind)
}

const MEMORY: &[(&str, &str)] = &[
    (
        "node_memory_MemTotal_bytes",
        "Memory information field MemTotal_bytes.",
    ),
    (
        "node_memory_MemFree_bytes",
        "Memory information field MemFree_bytes.",
    ),
    (
        "node_memory_MemAvailable_bytes",
        "Memory information field MemAvailable_bytes.",
    ),
    (
        "node_memory_Buffers_bytes",
        "Memory information field Buffers_bytes.",
    ),
    (
        "node_memory_Cached_bytes",
        "Memory information field Cached_bytes.",
    ),
    (
        "node_memory_SwapTotal_bytes",
        "Memory information field SwapTotal_bytes.",
    ),
    (
        "node_memory_SwapFree_bytes",
        "Memory information field SwapFree_bytes.",
    ),
];

/// The families, made once: each read takes its descriptors from here.
static DESCRIPTORS: std::sync::LazyLock<Vec<Descriptor>> = std::sync::LazyLock::new(|| {
    let mut out = vec![
        d(
            "node_cpu_seconds",
            "Seconds the CPUs spent in each mode.",
            MetricKind::Counter,
        ),
        d("node_load1", "1m load average.", MetricKind::Gauge),
        d("node_load5", "5m load average.", MetricKind::Gauge),
        d("node_load15", "15m load average.", MetricKind::Gauge),
        d(
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            MetricKind::Gauge,
        ),
        d(
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            MetricKind::Gauge,
        ),
        d(
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            MetricKind::Gauge,
        ),
        d(
            "node_filesystem_readonly",
            "Filesystem read-only status.",
            MetricKind::Gauge,
        ),
        d(
            "node_network_receive_bytes",
            "Network device statistic receive_bytes.",
            MetricKind::Counter,
        ),
        d(
            "node_network_transmit_bytes",
            "Network device statistic transmit_bytes.",
            MetricKind::Counter,
        ),
        d(
            "node_boot_time_seconds",
            "Node boot time, in unixtime.",
            MetricKind::Gauge,
        ),
        d(
            "node_time_seconds",
            "System time in seconds since epoch (1970).",
            MetricKind::Gauge,
        ),
    ];
    out.extend(
        MEMORY
            .iter()
            .map(|(name, help)| d(name, help, MetricKind::Gauge)),
    );
    out
});

#[async_trait]
impl Collector for HostCollector {
    fn name(&self) -> &str {
        "host"
    }

    fn describe(&self) -> Vec<Descriptor> {
        DESCRIPTORS.clone()
    }

    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| CollectError::new(format!("host collector task failed: {e}")))?
    }
}

fn family(name: &'static str) -> Family {
    let desc = DESCRIPTORS
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .unwrap_or_else(|| Descriptor::new(name, name, MetricKind::Gauge));
    Family::new(desc)
}

#[cfg(target_os = "linux")]
fn read() -> Result<Vec<Family>, CollectError> {
    use procfs::{Current, CurrentSI, KernelStats, LoadAverage, Meminfo};

    let fail =
        |what: &str, e: &dyn std::fmt::Display| CollectError::new(format!("reading {what}: {e}"));
    let mut out = Vec::with_capacity(24);

    let stat = KernelStats::current().map_err(|e| fail("/proc/stat", &e))?;
    let tps = procfs::ticks_per_second() as f64;
    let mut cpu = family("node_cpu_seconds");
    for (i, t) in stat.cpu_time.iter().enumerate() {
        let modes = [
            ("user", Some(t.user)),
            ("nice", Some(t.nice)),
            ("system", Some(t.system)),
            ("idle", Some(t.idle)),
            ("iowait", t.iowait),
            ("irq", t.irq),
            ("softirq", t.softirq),
            ("steal", t.steal),
        ];
        for (mode, ticks) in modes {
            if let Some(ticks) = ticks {
                cpu.sample(
                    [("cpu", i.to_string()), ("mode", mode.to_owned())],
                    ticks as f64 / tps,
                );
            }
        }
    }
    out.push(cpu);
    let mut boot = family("node_boot_time_seconds");
    boot.sample([], stat.btime as f64);
    out.push(boot);
    let mut now = family("node_time_seconds");
    now.sample(
        [],
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    out.push(now);

    let load = LoadAverage::current().map_err(|e| fail("/proc/loadavg", &e))?;
    for (name, v) in [
        ("node_load1", load.one),
        ("node_load5", load.five),
        ("node_load15", load.fifteen),
    ] {
        let mut f = family(name);
        f.sample([], f64::from(v));
        out.push(f);
    }

    let mem = Meminfo::current().map_err(|e| fail("/proc/meminfo", &e))?;
    let values = [
        Some(mem.mem_total),
        Some(mem.mem_free),
        mem.mem_available,
        Some(mem.buffers),
        Some(mem.cached),
        Some(mem.swap_total),
        Some(mem.swap_free),
    ];
    for ((name, _), v) in MEMORY.iter().zip(values) {
        if let Some(v) = v {
            let mut f = family(name);
            f.sample([], v as f64);
            out.push(f);
        }
    }

    out.extend(filesystems()?);

    let devices = procfs::net::dev_status().map_err(|e| fail("/proc/net/dev", &e))?;
    let mut devices: Vec<_> = devices.into_values().collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rx = family("node_network_receive_bytes");
    let mut tx = family("node_network_transmit_bytes");
    for dev in devices {
        rx.sample([("device", dev.name.clone())], dev.recv_bytes as f64);
        tx.sample([("device", dev.name)], dev.sent_bytes as f64);
    }
    out.push(rx);
    out.push(tx);
    Ok(out)
}

/// Size, free and available bytes and the read-only flag of every real filesystem.
#[cfg(target_os = "linux")]
fn filesystems() -> Result<Vec<Family>, CollectError> {
    let mounts =
        procfs::mounts().map_err(|e| CollectError::new(format!("reading /proc/mounts: {e}")))?;
    let mut size = family("node_filesystem_size_bytes");
    let mut free = family("node_filesystem_free_bytes");
    let mut avail = family("node_filesystem_avail_bytes");
    let mut readonly = family("node_filesystem_readonly");
    let mut seen = std::collections::HashSet::new();
    for m in mounts {
        if IGNORED_FSTYPES.contains(&m.fs_vfstype.as_str())
            || IGNORED_MOUNT_PREFIXES
                .iter()
                .any(|p| m.fs_file == p.trim_end_matches('/') || m.fs_file.starts_with(p))
            || !seen.insert((m.fs_spec.clone(), m.fs_file.clone()))
        {
            continue;
        }
        let stat = match nix::sys::statvfs::statvfs(m.fs_file.as_str()) {
            Ok(stat) => stat,
            Err(e) => {
                // node_exporter reports such a filesystem as a device error and goes on.
                tracing::debug!(mountpoint = %m.fs_file, error = %e, "statvfs failed: filesystem left out");
                continue;
            }
        };
        let block = stat.fragment_size() as f64;
        let labels = || -> crate::Labels {
            vec![
                (Cow::Borrowed("device"), m.fs_spec.clone()),
                (Cow::Borrowed("fstype"), m.fs_vfstype.clone()),
                (Cow::Borrowed("mountpoint"), m.fs_file.clone()),
            ]
        };
        size.push(labels(), stat.blocks() as f64 * block);
        free.push(labels(), stat.blocks_free() as f64 * block);
        avail.push(labels(), stat.blocks_available() as f64 * block);
        let ro = stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY);
        readonly.push(labels(), if ro { 1.0 } else { 0.0 });
    }
    Ok(vec![size, free, avail, readonly])
}

#[cfg(not(target_os = "linux"))]
fn read() -> Result<Vec<Family>, CollectError> {
    Err(CollectError::new(
        "the host collector reads /proc and runs on Linux only",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host_with_node_exporter_names() {
        let families = HostCollector::new().read().unwrap();
        let names: Vec<&str> = families
            .iter()
            .map(|f| f.descriptor.name.as_ref())
            .collect();
        for want in [
            "node_cpu_seconds",
            "node_load1",
            "node_memory_MemTotal_bytes",
            "node_memory_MemAvailable_bytes",
            "node_filesystem_size_bytes",
            "node_network_receive_bytes",
            "node_boot_time_seconds",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let cpu = families
            .iter()
            .find(|f| f.descriptor.name == "node_cpu_seconds")
            .unwrap();
        assert!(
            cpu.samples
                .iter()
                .any(|s| s.labels.iter().any(|(k, v)| k == "mode" && v == "idle"))
        );
        let total = families
            .iter()
            .find(|f| f.descriptor.name == "node_memory_MemTotal_bytes")
            .unwrap();
        assert!(total.samples[0].value > 1e6, "MemTotal is in bytes");
        let root = families
            .iter()
            .find(|f| f.descriptor.name == "node_filesystem_size_bytes")
            .unwrap();
        assert!(!root.samples.is_empty(), "at least one real filesystem");
        assert!(
            root.samples
                .iter()
                .all(|s| !s.labels.iter().any(|(k, v)| k == "fstype" && v == "proc"))
        );
        // Every family the collector hands in is one it declared.
        let declared: Vec<_> = HostCollector::new()
            .describe()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert!(
            families
                .iter()
                .all(|f| declared.contains(&f.descriptor.name))
        );
    }
}
