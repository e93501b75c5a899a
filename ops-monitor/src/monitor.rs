//! [`Monitor`]: the registry of metrics, collectors and health checks, and the scrape.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector as PcCollector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::registry::{Metric, Registry};

use crate::family::check_name;
use crate::health::{CheckResult, HealthCheck, HealthReport, Probe};
use crate::{Collector, Descriptor, Error, Family, Format, MetricKind, Result};

/// How long a scrape waits for one collector by default.
pub const DEFAULT_COLLECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a probe waits for one health check by default.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The monitor: metrics registered by the parts (task and queue metrics fed by
/// events), collectors read on each scrape (host, GPUs, the event spine) and health
/// checks. Cheap to clone; [`scrape`](Self::scrape) encodes everything in either text
/// format.
///
/// ```
/// use ops_monitor::{Descriptor, Family, Format, MetricKind, Monitor};
/// use prometheus_client::metrics::counter::Counter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ops_monitor::Result<()> {
/// let renders: Counter = Counter::default();
/// let monitor = Monitor::builder()
///     .register("renders", "Frames rendered.", renders.clone())
///     .build()?;
/// renders.inc();
/// let text = monitor.scrape(Format::Prometheus).await?;
/// assert!(text.contains("renders_total 1"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    collectors: Vec<(Arc<dyn Collector>, HashSet<String>)>,
    checks: Vec<(Probe, Arc<dyn HealthCheck>)>,
    collect_timeout: Duration,
    check_timeout: Duration,
    last_size: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field(
                "collectors",
                &self
                    .inner
                    .collectors
                    .iter()
                    .map(|(c, _)| c.name())
                    .collect::<Vec<_>>(),
            )
            .field(
                "checks",
                &self
                    .inner
                    .checks
                    .iter()
                    .map(|(_, c)| c.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Families the monitor itself exports about its collectors.
fn own_descriptors() -> [Descriptor; 2] {
    [
        Descriptor::new(
            "ops_collector_up",
            "Whether the collector's last read succeeded (1) or failed (0); a failed collector's families are left out of that scrape.",
            MetricKind::Gauge,
        ),
        Descriptor::new(
            "ops_collector_duration_seconds",
            "How long the collector's last read took.",
            MetricKind::Gauge,
        ),
    ]
}

impl Monitor {
    /// Starts building a monitor.
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder::default()
    }

    /// Reads every collector (concurrently, each within the collect timeout) and
    /// encodes the registered metrics and what the collectors handed in.
    ///
    /// A collector that fails or times out is left out and marked down
    /// (`ops_collector_up 0`); the reason is logged. Only a failure to write the text
    /// itself is an error.
    pub async fn scrape(&self, format: Format) -> Result<String> {
        let snapshot = self.collect().await;
        self.encode(format, snapshot)
    }

    /// Reads every collector; see [`scrape`](Self::scrape).
    async fn collect(&self) -> Vec<Family> {
        let timeout = self.inner.collect_timeout;
        let reads = self
            .inner
            .collectors
            .iter()
            .map(|(c, declared)| async move {
                let started = Instant::now();
                let read = tokio::time::timeout(timeout, c.collect()).await;
                (c, declared, read, started.elapsed())
            });
        let [up_desc, duration_desc] = own_descriptors();
        let mut up = Family::new(up_desc);
        let mut took = Family::new(duration_desc);
        let mut out = Vec::new();
        for (c, declared, read, elapsed) in futures::future::join_all(reads).await {
            let name = c.name().to_owned();
            let ok = match read {
                Ok(Ok(families)) => {
                    for family in families {
                        if declared.contains(family.descriptor.name.as_ref()) {
                            out.push(family);
                        } else {
                            tracing::warn!(
                                collector = %name,
                                family = %family.descriptor.name,
                                "collector handed in a family it did not declare: dropped"
                            );
                        }
                    }
                    true
                }
                Ok(Err(e)) => {
                    tracing::warn!(collector = %name, error = %e, "collector failed: marked down for this scrape");
                    false
                }
                Err(_) => {
                    tracing::warn!(collector = %name, ?timeout, "collector timed out: marked down for this scrape");
                    false
                }
            };
            up.sample([("collector", name.clone())], if ok { 1.0 } else { 0.0 });
            took.sample([("collector", name)], elapsed.as_secs_f64());
        }
        if !self.inner.collectors.is_empty() {
            out.push(up);
            out.push(took);
        }
        out
    }

    /// Encodes the registered metrics and `snapshot`.
    fn encode(&self, format: Format, snapshot: Vec<Family>) -> Result<String> {
        let mut extra = Registry::default();
        extra.register_collector(Box::new(Snapshot(snapshot)));
        // The last scrape's size and a margin: a large exposition is not copied over
        // and over as the buffer grows.
        let hint = self
            .inner
            .last_size
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut out = String::with_capacity((hint + hint / 8).max(64 * 1024));
        let written = match format {
            Format::OpenMetrics => {
                use prometheus_client::encoding::text;
                text::encode_registry(&mut out, &self.inner.registry)
                    .and_then(|()| text::encode_registry(&mut out, &extra))
                    .and_then(|()| text::encode_eof(&mut out))
            }
            Format::Prometheus => {
                use prometheus_client::encoding::prometheus_text;
                prometheus_text::encode(&mut out, &self.inner.registry)
                    .and_then(|()| prometheus_text::encode(&mut out, &extra))
            }
        };
        written.map_err(|e| Error::Encode(e.to_string()))?;
        self.inner
            .last_size
            .store(out.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// Runs the checks of `probe` (for readiness, the liveness checks too),
    /// concurrently, each within the check timeout.
    pub async fn health(&self, probe: Probe) -> HealthReport {
        let timeout = self.inner.check_timeout;
        let runs = self
            .inner
            .checks
            .iter()
            .filter(|(p, _)| probe == Probe::Readiness || *p == Probe::Liveness)
            .map(|(p, check)| async move {
                let error = match tokio::time::timeout(timeout, check.check()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some(format!("no answer within {timeout:?}")),
                };
                if let Some(e) = &error {
                    tracing::warn!(check = check.name(), error = %e, "health check failed");
                }
                CheckResult {
                    name: check.name().to_owned(),
                    probe: *p,
                    error,
                }
            });
        let checks = futures::future::join_all(runs).await;
        HealthReport {
            healthy: checks.iter().all(|c| c.error.is_none()),
            checks,
        }
    }

    /// The collectors' names.
    pub fn collectors(&self) -> Vec<&str> {
        self.inner
            .collectors
            .iter()
            .map(|(c, _)| c.name())
            .collect()
    }
}

/// The families collected on one scrape, encoded through prometheus-client.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl PcCollector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        for family in &self.0 {
            let d = &family.descriptor;
            let mut metric =
                encoder.encode_descriptor(&d.name, &d.help, None, d.kind.metric_type())?;
            for sample in &family.samples {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_ref(), v.as_str()))
                    .collect();
                let mut series = metric.encode_family(&labels)?;
                match d.kind {
                    MetricKind::Counter => {
                        series.encode_counter::<NoLabelSet, f64, f64>(&sample.value, None)?;
                    }
                    _ => series.encode_gauge(&sample.value)?,
                }
            }
        }
        Ok(())
    }
}

/// Builds a [`Monitor`]; see [`Monitor::builder`]. Every clash and bad name is
/// reported at once by [`build`](Self::build).
pub struct MonitorBuilder {
    registry: Registry,
    declared: Vec<(Descriptor, String)>,
    collectors: Vec<(Arc<dyn Collector>, HashSet<String>)>,
    checks: Vec<(Probe, Arc<dyn HealthCheck>)>,
    problems: Vec<Error>,
    collect_timeout: Duration,
    check_timeout: Duration,
}

impl Default for MonitorBuilder {
    fn default() -> Self {
        Self {
            registry: Registry::default(),
            declared: own_descriptors()
                .into_iter()
                .map(|d| (d, "ops-monitor".to_owned()))
                .collect(),
            collectors: Vec::new(),
            checks: Vec::new(),
            problems: Vec::new(),
            collect_timeout: DEFAULT_COLLECT_TIMEOUT,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for MonitorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("families", &self.declared.len())
            .field("collectors", &self.collectors.len())
            .finish_non_exhaustive()
    }
}

impl MonitorBuilder {
    /// Registers a prometheus-client metric (a counter, gauge, histogram, or a
    /// `Family` of them) under `name`, updated by its owner and read on each scrape.
    /// Counters are exposed with `_total` added.
    pub fn register(
        mut self,
        name: impl Into<String>,
        help: impl Into<String>,
        metric: impl Metric,
    ) -> Self {
        let name = name.into();
        // prometheus-client ends every registered help text with a period.
        let help = help.into().trim_end_matches('.').to_owned();
        let kind = MetricKind::of(EncodeMetric::metric_type(&metric));
        match check_name(&name, false, "registered metric") {
            Ok(()) => {
                self.declared.push((
                    Descriptor::new(name.clone(), help.clone(), kind),
                    "a registered metric".to_owned(),
                ));
                self.registry.register(name, help, metric);
            }
            Err(e) => self.problems.push(e),
        }
        self
    }

    /// Adds a collector read on each scrape.
    pub fn collector(mut self, collector: impl Collector) -> Self {
        let name = collector.name().to_owned();
        if let Err(e) = check_name(&name, true, "collector name") {
            self.problems.push(e);
        }
        let mut names = HashSet::new();
        for d in collector.describe() {
            match check_name(&d.name, false, &format!("collector {name:?}")) {
                Ok(()) => {
                    names.insert(d.name.to_string());
                    self.declared.push((d, format!("collector {name:?}")));
                }
                Err(e) => self.problems.push(e),
            }
        }
        self.collectors.push((Arc::new(collector), names));
        self
    }

    /// Adds a health check to `probe`.
    pub fn health_check(mut self, probe: Probe, check: impl HealthCheck) -> Self {
        self.checks.push((probe, Arc::new(check)));
        self
    }

    /// How long a scrape waits for one collector (default 5 s).
    pub fn collect_timeout(mut self, timeout: Duration) -> Self {
        self.collect_timeout = timeout;
        self
    }

    /// How long a probe waits for one health check (default 2 s).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// The monitor, or every problem found: bad names, and families declared twice
    /// (with their types and who declared each).
    pub fn build(self) -> Result<Monitor> {
        let mut problems = self.problems;
        match problems.len() {
            0 => {}
            1 => return Err(problems.remove(0)),
            _ => {
                return Err(Error::InvalidConfig {
                    problems: problems.iter().map(ToString::to_string).collect(),
                });
            }
        }
        let mut seen: HashMap<Cow<'_, str>, (&Descriptor, &str)> = HashMap::new();
        let mut clashes = Vec::new();
        for (d, by) in &self.declared {
            // `x` as a counter and `x_total` as a gauge would be exposed under one name.
            let key = d.name.strip_suffix("_total").unwrap_or(&d.name).to_owned();
            match seen.get(key.as_str()) {
                Some((first, first_by)) if first.kind != d.kind => clashes.push(format!(
                    "{:?} is a {} ({first_by}) and a {} ({by})",
                    d.name,
                    first.kind.as_str(),
                    d.kind.as_str()
                )),
                Some((_, first_by)) => clashes.push(format!(
                    "{:?} ({}) is declared by {first_by} and by {by}",
                    d.name,
                    d.kind.as_str()
                )),
                None => {
                    seen.insert(Cow::Owned(key), (d, by));
                }
            }
        }
        if !clashes.is_empty() {
            return Err(Error::DuplicateFamily { clashes });
        }
        Ok(Monitor {
            inner: Arc::new(Inner {
                registry: self.registry,
                collectors: self.collectors,
                checks: self.checks,
                collect_timeout: self.collect_timeout,
                check_timeout: self.check_timeout,
                last_size: Default::default(),
            }),
        })
    }
}
