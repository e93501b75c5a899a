//! Monitoring wired from `[monitor]`: task and queue metrics fed by events, the host,
//! GPU and event-spine collectors, health checks, and `/metrics` served where the
//! configuration says.

use std::net::SocketAddr;
use std::sync::Arc;

use ops_core::{Resources, TaskId};
use ops_monitor::gpu::{GpuCollector, GpuHolder};
use ops_monitor::spine::SpineCollector;
use ops_monitor::tasks::TaskMetrics;
use ops_monitor::{Monitor, MonitorConfig, Probe, health_check_fn};
use ops_tasks::Tasks;
use ops_tasks::admission::{AdmissionConfig, GpuQuota, Quantity, QuotaSpec};

use crate::{Error, Result};

use crate::platform::GpuAssignments;

/// The running monitoring of a platform.
pub(crate) struct Monitoring {
    pub(crate) monitor: Monitor,
    pub(crate) addr: Option<SocketAddr>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Monitoring {
    pub(crate) fn shutdown(self) {
        if let Some(server) = self.server {
            server.abort();
        }
    }
}

/// A quota's amounts as resources (cores, bytes, GPUs of any model).
fn quota_resources(spec: &QuotaSpec) -> Resources {
    let cpu = match &spec.cpu {
        Some(Quantity::Int(n)) => n * 1000,
        Some(Quantity::Float(f)) => (f * 1000.0) as u64,
        Some(Quantity::Text(s)) => Resources::parse_cpu(s).unwrap_or(0),
        None => 0,
    };
    let memory = match &spec.memory {
        Some(Quantity::Int(n)) => *n,
        Some(Quantity::Float(f)) => *f as u64,
        Some(Quantity::Text(s)) => Resources::parse_memory(s).unwrap_or(0),
        None => 0,
    };
    let gpus = match &spec.gpus {
        Some(GpuQuota::Count(n)) => *n,
        Some(GpuQuota::Models(m)) => m.values().sum(),
        None => 0,
    };
    Resources::new(cpu, memory).with_gpus(gpus, None)
}

/// `ops_quota_nominal` from the admission configuration.
fn set_quotas(metrics: &TaskMetrics, admission: &AdmissionConfig) {
    for (tenant, t) in &admission.tenants {
        for (env, spec) in &t.quota {
            metrics.set_quota(tenant, env, &quota_resources(spec));
        }
    }
}

/// The event-fed metrics, to be routed on the dispatcher before it starts.
pub(crate) fn task_metrics(config: &MonitorConfig) -> TaskMetrics {
    TaskMetrics::new(config.tasks.clone()).named(config.subscription_name())
}

/// Builds the monitor once the task service and dispatcher run, and serves it when
/// `listen` is set.
pub(crate) async fn start(
    config: &MonitorConfig,
    metrics: &TaskMetrics,
    tasks: &Tasks,
    dispatcher: Option<&ops_events::Dispatcher>,
    relay: Option<(Arc<dyn ops_events::EventBus>, &str)>,
    gpus: Option<GpuAssignments>,
) -> Result<Monitoring> {
    metrics.set_capacity(&tasks.admin().capacity());
    set_quotas(metrics, tasks.admin().admission_policy().config());
    let mut builder = metrics
        .register(Monitor::builder())
        .collect_timeout(config.collect_timeout());
    if config.host {
        #[cfg(all(target_os = "linux", feature = "monitor"))]
        {
            builder = builder.collector(ops_monitor::host::HostCollector::new());
        }
    }
    if config.gpu {
        let mut collector = GpuCollector::detect();
        if let Some(assignments) = gpus {
            let metrics = metrics.clone();
            collector = collector.holders(move || {
                assignments()
                    .into_iter()
                    .map(|(gpu, task)| {
                        let task_id = task.to_string();
                        GpuHolder {
                            gpu,
                            tenant: metrics.tenant_of(&task_id).unwrap_or_default(),
                            task_id,
                        }
                    })
                    .collect()
            });
        }
        builder = builder.collector(collector);
    }
    if let Some(dispatcher) = dispatcher {
        let mut spine = SpineCollector::new(dispatcher);
        if let Some((outbox, name)) = relay {
            spine = spine.subscription_on(outbox, name);
        }
        builder = builder.collector(spine);
        // Ready when the bus answers for the metrics' own subscription.
        let bus = dispatcher.bus().clone();
        let subscription = config.subscription_name();
        builder = builder.health_check(
            Probe::Readiness,
            health_check_fn("events", move || {
                let (bus, subscription) = (bus.clone(), subscription.clone());
                async move {
                    bus.backlog(&subscription)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }),
        );
    }
    let history = tasks.admin().history().clone();
    builder = builder.health_check(
        Probe::Readiness,
        health_check_fn("history", move || {
            let history = history.clone();
            async move {
                match history.get(TaskId::new()).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }),
    );
    let monitor = builder.build()?;
    let (addr, server) = match config.listen_addr() {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
            let bound = listener.local_addr().ok();
            let router = ops_monitor::http::router(monitor.clone());
            let server = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "the metrics server stopped");
                }
            });
            tracing::info!(addr = ?bound, "serving /metrics, /healthz and /readyz");
            (bound, Some(server))
        }
        None => (None, None),
    };
    Ok(Monitoring {
        monitor,
        addr,
        server,
    })
}
