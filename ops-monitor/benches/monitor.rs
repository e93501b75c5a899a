//! ops-monitor's costs, each against a baseline measured in the same run.
//!
//! ```text
//! cargo bench -p ops-monitor --bench monitor
//! cargo bench -p ops-monitor --bench monitor -- --quick
//! ```
//!
//! - **events**: task events per second `TaskMetrics` absorbs (in memory, called
//!   directly as the dispatcher would), against the same label sets' counters bumped
//!   in a bare prometheus-client family (the least any event-fed metric does).
//! - **scrape**: one scrape of 100,000 series (1,000 tenants × 25 templates × the 4
//!   final states of `ops_tasks_finished_total`: a label set's counters start at zero,
//!   so 1,000 × 100 label sets would be 400,000 series), encoded by `Monitor::scrape`,
//!   against prometheus-client encoding a family of the same 100,000 label sets without
//!   Ops.
//! - **host**: the host collector's read per scrape, against reading /proc/stat,
//!   /proc/meminfo, /proc/loadavg, /proc/net/dev and /proc/mounts into strings.
// A benchmark's output is its table.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use ops_core::{Event, Resources, TaskEventData, TaskId, TaskStatus, event_types};
use ops_events::Function;
use ops_monitor::host::HostCollector;
use ops_monitor::tasks::{TaskMetrics, TaskMetricsConfig};
use ops_monitor::{Format, Monitor};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

fn event(id: TaskId, ty: &str, status: TaskStatus, tenant: &str, template: &str) -> Event {
    let mut data = TaskEventData::new(id, tenant, "default", template, status, 1);
    data.resources = Some(Resources::new(1000, 1 << 28));
    Event::builder(ty, "ops://bench")
        .subject(id.to_string())
        .tenant(tenant)
        .json(serde_json::to_value(&data).unwrap())
        .build()
}

fn lifecycle(tenant: &str, template: &str) -> Vec<Event> {
    let id = TaskId::new();
    [
        (event_types::TASK_SUBMITTED, TaskStatus::Submitted),
        (event_types::TASK_QUEUED, TaskStatus::Queued),
        (event_types::TASK_STARTED, TaskStatus::Running),
        (event_types::TASK_SUCCEEDED, TaskStatus::Succeeded),
    ]
    .into_iter()
    .map(|(ty, status)| event(id, ty, status, tenant, template))
    .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn events_bench(tasks: usize, runs: usize) {
    let events: Vec<Event> = (0..tasks)
        .flat_map(|i| {
            lifecycle(
                &format!("tenant-{}", i % 100),
                &format!("template-{}", i % 20),
            )
        })
        .collect();
    let mut ops = Vec::new();
    let mut base = Vec::new();
    for _ in 0..runs {
        let metrics = TaskMetrics::default();
        let started = Instant::now();
        for e in &events {
            metrics.call(e).await.unwrap();
        }
        ops.push(events.len() as f64 / started.elapsed().as_secs_f64());

        // Baseline: read each event's labels and bump a counter family, nothing else.
        let family: Family<Vec<(String, String)>, Counter> = Family::default();
        let started = Instant::now();
        for e in &events {
            let d = &e.data;
            let labels = vec![
                (
                    "tenant".to_owned(),
                    d["tenant"].as_str().unwrap_or_default().to_owned(),
                ),
                (
                    "template".to_owned(),
                    d["template"].as_str().unwrap_or_default().to_owned(),
                ),
                (
                    "state".to_owned(),
                    d["status"].as_str().unwrap_or_default().to_owned(),
                ),
            ];
            family.get_or_create(&labels).inc();
        }
        base.push(events.len() as f64 / started.elapsed().as_secs_f64());
    }
    let (ops, base) = (median(ops), median(base));
    println!(
        "| event-fed metrics: task events absorbed | {:.0}/s | {:.0}/s (bare counter family) | {:.2}× | ≥ 500,000/s |",
        ops,
        base,
        ops / base
    );
}

/// `tenants` × `templates` label sets, each with one finished task: the finished
/// counters of the four final states (started at zero) make 4 series per label set.
async fn scrape_bench(tenants: usize, templates: usize, runs: usize) {
    let metrics = TaskMetrics::new({
        let mut c = TaskMetricsConfig::default();
        c.max_tenants = tenants;
        c.max_templates = templates;
        c
    });
    let states = ["succeeded", "failed", "cancelled", "timed_out"];
    let baseline: Family<Vec<(String, String)>, Counter> = Family::default();
    for t in 0..tenants {
        for p in 0..templates {
            let (tenant, template) = (format!("tenant-{t}"), format!("template-{p}"));
            let e = event(
                TaskId::new(),
                event_types::TASK_SUCCEEDED,
                TaskStatus::Succeeded,
                &tenant,
                &template,
            );
            metrics.call(&e).await.unwrap();
            for state in states {
                let c = baseline.get_or_create(&vec![
                    ("tenant".to_owned(), tenant.clone()),
                    ("template".to_owned(), template.clone()),
                    ("environment".to_owned(), "default".to_owned()),
                    ("state".to_owned(), state.to_owned()),
                ]);
                if state == "succeeded" {
                    c.inc();
                }
            }
        }
    }
    let monitor = metrics.register(Monitor::builder()).build().unwrap();
    let mut registry = Registry::default();
    registry.register(
        "ops_tasks_finished",
        "Tasks that reached a final state",
        baseline,
    );
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut size, mut series) = (0, 0);
        for _ in 0..runs {
            let started = Instant::now();
            let text = monitor.scrape(format).await.unwrap();
            ours.push(started.elapsed().as_secs_f64() * 1e3);
            size = text.len();
            series = text.lines().filter(|l| !l.starts_with('#')).count();
            let started = Instant::now();
            let mut out = String::new();
            match format {
                Format::OpenMetrics => {
                    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap()
                }
                _ => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
                    .unwrap(),
            }
            theirs.push(started.elapsed().as_secs_f64() * 1e3);
            assert!(out.len() > tenants * templates * 4 * 20);
        }
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "| one scrape of {series} series ({tenants} tenants × {templates} templates × 4 final states, {format:?}, {:.1} MB) | {ours:.1} ms | {theirs:.1} ms (prometheus-client alone) | {:.2}× | < 50 ms |",
            size as f64 / 1e6,
            ours / theirs
        );
    }
}

fn host_bench(reads: usize) {
    let host = HostCollector::new();
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..reads {
        let started = Instant::now();
        let families = host.read().unwrap();
        ours.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(!families.is_empty());
        let started = Instant::now();
        let mut n = 0;
        for f in [
            "/proc/stat",
            "/proc/meminfo",
            "/proc/loadavg",
            "/proc/net/dev",
            "/proc/mounts",
        ] {
            n += std::fs::read_to_string(f).map(|s| s.len()).unwrap_or(0);
        }
        floor.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(n > 0);
    }
    let (p50, p99) = (median(ours.clone()), percentile(ours, 0.99));
    let base = median(floor);
    println!(
        "| host collector, one read (p50 / p99) | {p50:.3} / {p99:.3} ms | {base:.3} ms (the /proc files read raw) | {:.2}× | < 2 ms |",
        p50 / base
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| benchmark | ops-monitor | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    rt.block_on(async {
        events_bench(
            if quick { 10_000 } else { 100_000 },
            if quick { 3 } else { 5 },
        )
        .await;
        if quick {
            scrape_bench(100, 25, 3).await;
        } else {
            scrape_bench(1000, 25, 5).await;
        }
    });
    host_bench(if quick { 200 } else { 2000 });
    let _ = Duration::ZERO;
}
