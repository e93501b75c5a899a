//! Ops monitoring: what an operator needs to see hosts, GPUs, tasks, queues, tenants
//! and the event spine in the tools they already run — Prometheus, Grafana,
//! Alertmanager — usable on its own or through the `ops` facade.
//!
//! - [`Monitor`]: a registry of metrics (prometheus-client), [`Collector`]s read on each
//!   scrape, and [`HealthCheck`]s; [`Monitor::scrape`] encodes OpenMetrics or the
//!   Prometheus text format ([`Format::negotiate`] picks from an `Accept` header). A
//!   failing collector is left out of a scrape and marked down, never an error; a
//!   family declared twice is an error at [`MonitorBuilder::build`].
//! - `http::router` (feature `http`): `/metrics`, `/healthz`, `/readyz` as an axum
//!   router to mount anywhere.
//! - `host::HostCollector` (feature `host`): node_exporter's names for CPU, load,
//!   memory, filesystems, network and boot time, read from /proc and statvfs, so the
//!   node-mixin's dashboards and alerts work unchanged.
//! - [`gpu::GpuCollector`]: DCGM exporter's names and labels, plus `tenant` and
//!   `task_id` of the task that holds each GPU; readings from NVML with the `nvml`
//!   feature. A host without NVML exports `ops_gpu_collector_up 0`.
//! - [`tasks::TaskMetrics`]: task, queue, quota, storage and event-spine counters fed
//!   by events (an `ops-events` function), so they work on every executor and across
//!   coordinators, with tenant and template cardinality capped.
//! - [`spine::SpineCollector`]: what the dispatcher delivered, retried and
//!   dead-lettered, backlogs and outbox lag per subscription.
//! - [`rules`]: alert rules generated from [`rules::AlertsConfig`] (host down, disk
//!   filling, memory pressure, task failure ratio, queue stuck, dead letters, outbox
//!   lag, GPU XID errors, row-remap failures, heat and idle allocation, preemption
//!   storms, budget burn, a Watchdog), as a Prometheus rules file and a
//!   `PrometheusRule`, from one source.
//! - [`dashboards`]: Grafana dashboards (fleet and GPUs, tasks and queues, tenants).
//! - [`stack`]: a cluster's monitoring stack (Prometheus, node-exporter, DCGM exporter,
//!   Grafana with the dashboards) rendered from [`stack::StackConfig`].
//! - [`MonitorConfig`]: all of it from one config section (`[monitor]` in the `ops`
//!   facade); [`MonitorConfig::write_files`] writes the rules, dashboards and stack.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `http` | yes | the axum router (`http` module) |
//! | `host` | yes | the host collector (`host` module; procfs, Linux) |
//! | `nvml` | no | GPU readings through NVML (`gpu::NvmlSource`, nvml-wrapper) |
//!
//! # Example
//!
//! ```
//! use ops_monitor::{Descriptor, Family, Format, MetricKind, Monitor};
//! use ops_monitor::{Collector, CollectError};
//!
//! struct Renders;
//!
//! #[async_trait::async_trait]
//! impl Collector for Renders {
//!     fn name(&self) -> &str { "renders" }
//!     fn describe(&self) -> Vec<Descriptor> {
//!         vec![Descriptor::new("farm_frames_queued", "Frames waiting.", MetricKind::Gauge)]
//!     }
//!     async fn collect(&self) -> Result<Vec<Family>, CollectError> {
//!         let mut f = Family::new(self.describe().remove(0));
//!         f.sample([("scene", "teapot \"v2\"".to_owned())], 12.0);
//!         Ok(vec![f])
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ops_monitor::Result<()> {
//! let monitor = Monitor::builder().collector(Renders).build()?;
//! let text = monitor.scrape(Format::OpenMetrics).await?;
//! assert!(text.contains(r#"farm_frames_queued{scene="teapot \"v2\""} 12"#));
//! assert!(text.contains(r#"ops_collector_up{collector="renders"} 1"#));
//! assert!(text.ends_with("# EOF\n"));
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod collector;
mod config;
mod error;
mod exposition;
mod family;
mod health;
mod monitor;

pub mod dashboards;
pub mod gpu;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "http")]
pub mod http;
pub mod rules;
pub mod spine;
pub mod stack;
pub mod tasks;

pub use collector::Collector;
pub use config::MonitorConfig;
pub use error::{CollectError, Error, Result};
pub use exposition::{Format, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
pub use family::{Descriptor, Family, Labels, MetricKind, Sample};
pub use health::{CheckResult, FnHealthCheck, HealthCheck, HealthReport, Probe, health_check_fn};
pub use monitor::{DEFAULT_CHECK_TIMEOUT, DEFAULT_COLLECT_TIMEOUT, Monitor, MonitorBuilder};

/// prometheus-client, re-exported for registering metrics of one's own.
pub use prometheus_client;
