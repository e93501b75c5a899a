//! What a collector hands in on each scrape: metric families of samples.

use std::borrow::Cow;

use crate::{Error, Result};

/// The type of a metric family, as the exposition declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricKind {
    /// A value that only grows. Its samples are named `<name>_total`: give the name
    /// without the suffix (`node_cpu_seconds` is exposed as `node_cpu_seconds_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A value exposed under its exact name with no type claimed (`untyped` in the
    /// Prometheus text format, `unknown` in OpenMetrics): for names fixed by other
    /// exporters, such as DCGM's counters, that carry no `_total` suffix.
    Untyped,
    /// A histogram (only for registered metrics, see
    /// [`MonitorBuilder::register`](crate::MonitorBuilder::register)).
    Histogram,
    /// An info metric.
    Info,
}

impl MetricKind {
    /// The type as written in the exposition's `# TYPE` line (Prometheus text format).
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Untyped => "untyped",
            MetricKind::Histogram => "histogram",
            MetricKind::Info => "info",
        }
    }

    pub(crate) fn of(ty: prometheus_client::metrics::MetricType) -> Self {
        use prometheus_client::metrics::MetricType;
        match ty {
            MetricType::Counter => MetricKind::Counter,
            MetricType::Gauge => MetricKind::Gauge,
            MetricType::Histogram => MetricKind::Histogram,
            MetricType::Info => MetricKind::Info,
            _ => MetricKind::Untyped,
        }
    }

    pub(crate) fn metric_type(self) -> prometheus_client::metrics::MetricType {
        use prometheus_client::metrics::MetricType;
        match self {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Untyped => MetricType::Unknown,
            MetricKind::Histogram => MetricType::Histogram,
            MetricKind::Info => MetricType::Info,
        }
    }
}

/// A metric family's name, help and type: what a collector declares up front
/// ([`Collector::describe`](crate::Collector::describe)) so that clashes are found at
/// start-up, not in a scrape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The family name (for counters, without `_total`).
    pub name: Cow<'static, str>,
    /// One line saying what it measures.
    pub help: Cow<'static, str>,
    /// Its type.
    pub kind: MetricKind,
}

impl Descriptor {
    /// A descriptor.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: MetricKind,
    ) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind,
        }
    }

    /// The name series of this family carry (`_total` added to counters).
    pub fn exposed_name(&self) -> Cow<'_, str> {
        match self.kind {
            MetricKind::Counter => Cow::Owned(format!("{}_total", self.name)),
            _ => Cow::Borrowed(&self.name),
        }
    }
}

/// Label pairs of one sample. Values may hold any text: quotes, backslashes and
/// newlines are escaped when written.
pub type Labels = Vec<(Cow<'static, str>, String)>;

/// One sample: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// The samples of one family, as collected on a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The family.
    pub descriptor: Descriptor,
    /// Its samples.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    pub fn new(descriptor: Descriptor) -> Self {
        Self {
            descriptor,
            samples: Vec::new(),
        }
    }

    /// Adds a sample.
    pub fn sample<const N: usize>(&mut self, labels: [(&'static str, String); N], value: f64) {
        self.samples.push(Sample {
            labels: labels
                .into_iter()
                .map(|(k, v)| (Cow::Borrowed(k), v))
                .collect(),
            value,
        });
    }

    /// Adds a sample with labels built at run time.
    pub fn push(&mut self, labels: Labels, value: f64) {
        self.samples.push(Sample { labels, value });
    }
}

/// Checks a metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*` for metrics,
/// `[a-zA-Z_][a-zA-Z0-9_]*` (not starting with `__`) for labels.
pub(crate) fn check_name(name: &str, label: bool, what: &str) -> Result<()> {
    let bad = |reason: &str| Error::InvalidName {
        name: name.to_owned(),
        what: what.to_owned(),
        reason: reason.to_owned(),
    };
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(bad("empty"));
    };
    let ok_first = first.is_ascii_alphabetic() || first == '_' || (!label && first == ':');
    if !ok_first {
        return Err(bad("must start with a letter or '_'"));
    }
    if let Some(c) =
        chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || (!label && *c == ':')))
    {
        return Err(bad(&format!(
            "{c:?} is not allowed (letters, digits and '_' only)"
        )));
    }
    if label && name.starts_with("__") {
        return Err(bad("names starting with '__' are reserved"));
    }
    Ok(())
}
