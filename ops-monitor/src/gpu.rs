//! [`GpuCollector`]: GPU health and use under DCGM exporter's exact names and labels,
//! plus the `tenant` and `task_id` of the task holding each GPU.
//!
//! NVIDIA's DCGM exporter needs DCGM installed and, outside Kubernetes, hand-made
//! mapping files to say which job holds a GPU. This collector reads NVML directly
//! (feature `nvml`: `nvml-wrapper` loads `libnvidia-ml.so` at run time) and asks the
//! executor ([`GpuHolders`]) who holds each GPU, so dashboards and alerts written for
//! DCGM work unchanged and also say which tenant's task sits on an idle or failing GPU.
//!
//! | family | type | unit |
//! |---|---|---|
//! | `DCGM_FI_DEV_GPU_UTIL` | gauge | percent |
//! | `DCGM_FI_DEV_FB_USED`, `DCGM_FI_DEV_FB_FREE` | gauge | MiB |
//! | `DCGM_FI_DEV_GPU_TEMP` | gauge | °C |
//! | `DCGM_FI_DEV_POWER_USAGE` | gauge | W |
//! | `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` | untyped, only grows | mJ |
//! | `DCGM_FI_DEV_XID_ERRORS` | gauge: the last XID code (0: none) | |
//! | `DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS`, `DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS` | untyped, only grow | rows |
//! | `DCGM_FI_DEV_ROW_REMAP_FAILURE` | gauge (1: a remap failed) | |
//! | `ops_gpu_collector_up` | gauge | |
//!
//! Labels: `gpu` (index), `UUID`, `device` (`nvidia0`), `modelName`, `Hostname`,
//! `tenant`, `task_id` (empty, hence absent, when the GPU is free). DCGM's counters
//! keep their names without `_total` and are therefore exposed untyped: typed as
//! counters, prometheus-client (and OpenMetrics) would add the suffix and DCGM
//! dashboards would find nothing. `promtool check metrics` flags `modelName` as
//! camelCase: that is DCGM's name, kept on purpose.
//!
//! Without NVML (no feature, no driver, no GPU) the collector exports only
//! `ops_gpu_collector_up 0` and logs why once; it never fails a scrape.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{CollectError, Collector, Descriptor, Family, Labels, MetricKind};

/// One GPU's readings. `None`: the device does not report that field.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct GpuReading {
    /// NVML index (`gpu` label).
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Model name, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// Utilisation, percent.
    pub utilization: Option<f64>,
    /// Frame buffer used, MiB.
    pub fb_used_mib: Option<f64>,
    /// Frame buffer free, MiB.
    pub fb_free_mib: Option<f64>,
    /// Temperature, °C.
    pub temperature_c: Option<f64>,
    /// Power draw, W.
    pub power_w: Option<f64>,
    /// Energy since the driver loaded, mJ.
    pub energy_mj: Option<f64>,
    /// The last XID error code seen (0: none).
    pub last_xid: Option<u64>,
    /// Rows remapped after correctable errors.
    pub remapped_correctable: Option<u64>,
    /// Rows remapped after uncorrectable errors.
    pub remapped_uncorrectable: Option<u64>,
    /// Whether a row remap failed.
    pub remap_failure: Option<bool>,
}

impl GpuReading {
    /// A reading of GPU `index` with only its identity set.
    pub fn new(index: u32, uuid: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            index,
            uuid: uuid.into(),
            model: model.into(),
            ..Self::default()
        }
    }
}

/// Where readings come from: NVML ([`NvmlSource`], feature `nvml`) or anything else
/// (a test, another library). Called off the async runtime.
pub trait GpuSource: Send + Sync + 'static {
    /// The current readings of every GPU.
    fn read(&self) -> Result<Vec<GpuReading>, CollectError>;
}

/// Who holds a GPU now, as the executor assigned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuHolder {
    /// The GPU as the executor names it: its index (`"0"`) or its UUID.
    pub gpu: String,
    /// The holding task.
    pub task_id: String,
    /// Its tenant.
    pub tenant: String,
}

/// The executor's GPU assignment (the `ops` facade plugs in the local executor's).
pub trait GpuHolders: Send + Sync + 'static {
    /// Every GPU held now.
    fn holders(&self) -> Vec<GpuHolder>;
}

impl<F> GpuHolders for F
where
    F: Fn() -> Vec<GpuHolder> + Send + Sync + 'static,
{
    fn holders(&self) -> Vec<GpuHolder> {
        self()
    }
}

/// The GPU collector; see the [module documentation](self).
#[derive(Clone)]
pub struct GpuCollector {
    source: Result<Arc<dyn GpuSource>, String>,
    holders: Option<Arc<dyn GpuHolders>>,
    hostname: String,
}

impl std::fmt::Debug for GpuCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuCollector")
            .field("up", &self.source.is_ok())
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

const GPU_FAMILIES: &[(&str, &str, MetricKind)] = &[
    (
        "DCGM_FI_DEV_GPU_UTIL",
        "GPU utilization (in %).",
        MetricKind::Gauge,
    ),
    (
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB).",
        MetricKind::Gauge,
    ),
    (
        "DCGM_FI_DEV_FB_FREE",
        "Framebuffer memory free (in MiB).",
        MetricKind::Gauge,
    ),
    (
        "DCGM_FI_DEV_GPU_TEMP",
        "GPU temperature (in C).",
        MetricKind::Gauge,
    ),
    (
        "DCGM_FI_DEV_POWER_USAGE",
        "Power draw (in W).",
        MetricKind::Gauge,
    ),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ).",
        MetricKind::Untyped,
    ),
    (
        "DCGM_FI_DEV_XID_ERRORS",
        "Value of the last XID error encountered.",
        MetricKind::Gauge,
    ),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "Number of remapped rows for correctable errors.",
        MetricKind::Untyped,
    ),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "Number of remapped rows for uncorrectable errors.",
        MetricKind::Untyped,
    ),
    (
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "Whether remapping of rows has failed.",
        MetricKind::Gauge,
    ),
];

const UP: &str = "ops_gpu_collector_up";

impl GpuCollector {
    /// A collector reading `source`.
    pub fn new(source: impl GpuSource) -> Self {
        Self {
            source: Ok(Arc::new(source)),
            holders: None,
            hostname: hostname(),
        }
    }

    /// A collector with no source: it exports `ops_gpu_collector_up 0`. `reason` is
    /// logged once, now.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        tracing::info!(reason = %reason, "no GPU metrics: ops_gpu_collector_up is 0");
        Self {
            source: Err(reason),
            holders: None,
            hostname: hostname(),
        }
    }

    /// A collector reading NVML when the `nvml` feature is on and the library loads;
    /// otherwise [`unavailable`](Self::unavailable) with the reason.
    pub fn detect() -> Self {
        #[cfg(feature = "nvml")]
        {
            match NvmlSource::open() {
                Ok(source) => Self::new(source),
                Err(e) => Self::unavailable(e.to_string()),
            }
        }
        #[cfg(not(feature = "nvml"))]
        {
            Self::unavailable(
                "this build has no NVML support (the `nvml` feature of ops-monitor is off)",
            )
        }
    }

    /// Who holds each GPU, for the `tenant` and `task_id` labels.
    pub fn holders(mut self, holders: impl GpuHolders) -> Self {
        self.holders = Some(Arc::new(holders));
        self
    }

    /// The `Hostname` label (default: this host's name).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// Whether a source is there (NVML loaded).
    pub fn is_available(&self) -> bool {
        self.source.is_ok()
    }

    /// Families from `readings`, labelled with their holders.
    fn families(&self, readings: &[GpuReading]) -> Vec<Family> {
        let held: Vec<GpuHolder> = self
            .holders
            .as_ref()
            .map(|h| h.holders())
            .unwrap_or_default();
        let by_gpu: HashMap<&str, &GpuHolder> = held.iter().map(|h| (h.gpu.as_str(), h)).collect();
        let mut families: Vec<Family> = GPU_FAMILIES
            .iter()
            .map(|(name, help, kind)| Family::new(Descriptor::new(*name, *help, *kind)))
            .collect();
        for r in readings {
            let index = r.index.to_string();
            let holder = by_gpu
                .get(index.as_str())
                .or_else(|| by_gpu.get(r.uuid.as_str()))
                .copied();
            let labels: Labels = vec![
                (Cow::Borrowed("gpu"), index.clone()),
                (Cow::Borrowed("UUID"), r.uuid.clone()),
                (Cow::Borrowed("device"), format!("nvidia{}", r.index)),
                (Cow::Borrowed("modelName"), r.model.clone()),
                (Cow::Borrowed("Hostname"), self.hostname.clone()),
                (
                    Cow::Borrowed("tenant"),
                    holder.map(|h| h.tenant.clone()).unwrap_or_default(),
                ),
                (
                    Cow::Borrowed("task_id"),
                    holder.map(|h| h.task_id.clone()).unwrap_or_default(),
                ),
            ];
            let values = [
                r.utilization,
                r.fb_used_mib,
                r.fb_free_mib,
                r.temperature_c,
                r.power_w,
                r.energy_mj,
                r.last_xid.map(|x| x as f64),
                r.remapped_correctable.map(|x| x as f64),
                r.remapped_uncorrectable.map(|x| x as f64),
                r.remap_failure.map(|f| if f { 1.0 } else { 0.0 }),
            ];
            for (family, value) in families.iter_mut().zip(values) {
                if let Some(v) = value {
                    family.push(labels.clone(), v);
                }
            }
        }
        families.retain(|f| !f.samples.is_empty());
        families
    }
}

fn up(value: f64) -> Family {
    let mut f = Family::new(up_descriptor());
    f.sample([], value);
    f
}

fn up_descriptor() -> Descriptor {
    Descriptor::new(
        UP,
        "Whether GPU readings are available (0: no NVML library, no GPU, or NVML failed; the reason is logged).",
        MetricKind::Gauge,
    )
}

#[async_trait]
impl Collector for GpuCollector {
    fn name(&self) -> &str {
        "gpu"
    }

    fn describe(&self) -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = GPU_FAMILIES
            .iter()
            .map(|(name, help, kind)| Descriptor::new(*name, *help, *kind))
            .collect();
        out.push(up_descriptor());
        out
    }

    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let source = match &self.source {
            Ok(source) => source.clone(),
            Err(_) => return Ok(vec![up(0.0)]),
        };
        let read = tokio::task::spawn_blocking(move || source.read()).await;
        match read {
            Ok(Ok(readings)) => {
                let mut families = self.families(&readings);
                families.push(up(1.0));
                Ok(families)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the GPUs failed: ops_gpu_collector_up is 0");
                Ok(vec![up(0.0)])
            }
            Err(e) => {
                tracing::warn!(error = %e, "the GPU read task failed: ops_gpu_collector_up is 0");
                Ok(vec![up(0.0)])
            }
        }
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(feature = "nvml")]
mod nvml;
#[cfg(feature = "nvml")]
pub use nvml::NvmlSource;

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<GpuReading>);

    impl GpuSource for Fixed {
        fn read(&self) -> Result<Vec<GpuReading>, CollectError> {
            Ok(self.0.clone())
        }
    }

    struct Failing;

    impl GpuSource for Failing {
        fn read(&self) -> Result<Vec<GpuReading>, CollectError> {
            Err(CollectError::new("NVML: GPU is lost"))
        }
    }

    #[tokio::test]
    async fn labels_each_gpu_with_its_holder() {
        let mut a = GpuReading::new(0, "GPU-aaaa", "NVIDIA H200");
        a.utilization = Some(3.0);
        a.last_xid = Some(0);
        let mut b = GpuReading::new(1, "GPU-bbbb", "NVIDIA H200");
        b.utilization = Some(97.0);
        let collector = GpuCollector::new(Fixed(vec![a, b]))
            .hostname("node-1")
            .holders(|| {
                vec![GpuHolder {
                    gpu: "GPU-bbbb".into(),
                    task_id: "t-1".into(),
                    tenant: "acme".into(),
                }]
            });
        let families = collector.collect().await.unwrap();
        let util = families
            .iter()
            .find(|f| f.descriptor.name == "DCGM_FI_DEV_GPU_UTIL")
            .unwrap();
        let held = &util.samples[1];
        assert!(
            held.labels
                .contains(&(Cow::Borrowed("task_id"), "t-1".to_owned()))
        );
        assert!(
            held.labels
                .contains(&(Cow::Borrowed("tenant"), "acme".to_owned()))
        );
        assert!(
            held.labels
                .contains(&(Cow::Borrowed("Hostname"), "node-1".to_owned()))
        );
        assert!(
            util.samples[0]
                .labels
                .contains(&(Cow::Borrowed("task_id"), String::new()))
        );
        // Fields a GPU did not report are left out, not zero.
        assert!(
            !families
                .iter()
                .any(|f| f.descriptor.name == "DCGM_FI_DEV_GPU_TEMP")
        );
        let up = families.iter().find(|f| f.descriptor.name == UP).unwrap();
        assert_eq!(up.samples[0].value, 1.0);
    }

    #[tokio::test]
    async fn without_nvml_or_on_failure_it_is_down_not_an_error() {
        for collector in [
            GpuCollector::unavailable("no libnvidia-ml.so"),
            GpuCollector::new(Failing),
        ] {
            let families = collector.collect().await.unwrap();
            assert_eq!(families.len(), 1);
            assert_eq!(families[0].descriptor.name, UP);
            assert_eq!(families[0].samples[0].value, 0.0);
        }
    }

    #[cfg(not(feature = "nvml"))]
    #[test]
    fn detect_without_the_feature_is_unavailable() {
        assert!(!GpuCollector::detect().is_available());
    }
}
