//! The exposition end to end: every collector together, checked by the real promtool;
//! bad input (label values with quotes, newlines, invalid UTF-8; a failing collector;
//! families declared twice); the HTTP endpoints.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ops_core::{ErrorKind, Event, Resources, TaskEventData, TaskId, TaskStatus, event_types};
use ops_events::memory::InMemoryBus;
use ops_events::{Dispatcher, EventBus, Function, Trigger, function_fn};
use ops_monitor::gpu::{GpuCollector, GpuHolder, GpuReading, GpuSource};
use ops_monitor::host::HostCollector;
use ops_monitor::spine::SpineCollector;
use ops_monitor::tasks::TaskMetrics;
use ops_monitor::{
    CollectError, Collector, Descriptor, Error, Family, Format, MetricKind, Monitor, Probe,
    health_check_fn,
};
use prometheus_client::metrics::gauge::Gauge;

/// Runs `promtool check metrics` on `text`; gives (exit code, its output).
fn promtool_check(text: &str) -> Option<(i32, String)> {
    let promtool = ops_testbed::promtool()?;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.code().unwrap_or(-1), said))
}

/// A collector whose label values are hostile.
struct Hostile;

#[async_trait]
impl Collector for Hostile {
    fn name(&self) -> &str {
        "hostile"
    }
    fn describe(&self) -> Vec<Descriptor> {
        vec![Descriptor::new(
            "test_hostile_labels",
            "Label values that need escaping.",
            MetricKind::Gauge,
        )]
    }
    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let mut f = Family::new(self.describe().remove(0));
        f.sample([("value", "a \"quoted\" word".to_owned())], 1.0);
        f.sample([("value", "two\nlines".to_owned())], 2.0);
        f.sample([("value", "back\\slash".to_owned())], 3.0);
        // Bytes that are not UTF-8 (a mount point, a device name): replaced, never raw.
        f.sample(
            [(
                "value",
                String::from_utf8_lossy(b"caf\xe9 \xff").into_owned(),
            )],
            4.0,
        );
        Ok(vec![f])
    }
}

/// A collector that always fails.
struct Broken;

#[async_trait]
impl Collector for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn describe(&self) -> Vec<Descriptor> {
        vec![Descriptor::new(
            "test_broken",
            "Never collected.",
            MetricKind::Gauge,
        )]
    }
    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        Err(CollectError::new("the device went away"))
    }
}

/// A collector that never answers.
struct Stuck;

#[async_trait]
impl Collector for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }
    fn describe(&self) -> Vec<Descriptor> {
        vec![Descriptor::new(
            "test_stuck",
            "Never collected.",
            MetricKind::Gauge,
        )]
    }
    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Vec::new())
    }
}

struct FakeGpus;

impl GpuSource for FakeGpus {
    fn read(&self) -> Result<Vec<GpuReading>, CollectError> {
        let mut g = GpuReading::new(0, "GPU-1c2d", "NVIDIA H200");
        g.utilization = Some(2.0);
        g.fb_used_mib = Some(1024.0);
        g.fb_free_mib = Some(140_000.0);
        g.temperature_c = Some(41.0);
        g.power_w = Some(120.5);
        g.energy_mj = Some(9.5e9);
        g.last_xid = Some(79);
        g.remapped_correctable = Some(0);
        g.remapped_uncorrectable = Some(1);
        g.remap_failure = Some(false);
        Ok(vec![g])
    }
}

fn task_event(id: TaskId, ty: &str, status: TaskStatus, tenant: &str) -> Event {
    let mut data = TaskEventData::new(id, tenant, "default", "render", status, 1);
    data.resources = Some(Resources::new(2000, 1 << 30));
    Event::builder(ty, "ops://test")
        .subject(id.to_string())
        .tenant(tenant)
        .json(serde_json::to_value(&data).unwrap())
        .build()
}

async fn run_task(metrics: &TaskMetrics, tenant: &str, last: (&str, TaskStatus)) -> TaskId {
    let id = TaskId::new();
    for (ty, status) in [
        (event_types::TASK_SUBMITTED, TaskStatus::Submitted),
        (event_types::TASK_QUEUED, TaskStatus::Queued),
        (event_types::TASK_STARTED, TaskStatus::Running),
        last,
    ] {
        metrics
            .call(&task_event(id, ty, status, tenant))
            .await
            .unwrap();
    }
    id
}

#[tokio::test]
async fn the_whole_exposition_passes_promtool() {
    let metrics = TaskMetrics::default();
    run_task(
        &metrics,
        "acme \"inc\"",
        (event_types::TASK_SUCCEEDED, TaskStatus::Succeeded),
    )
    .await;
    run_task(
        &metrics,
        "globex",
        (event_types::TASK_FAILED, TaskStatus::Failed),
    )
    .await;
    metrics.set_capacity(&Resources::new(16_000, 64 << 30));
    let bus = InMemoryBus::new();
    let dispatcher = Dispatcher::builder(bus.clone())
        .route(Trigger::on("*"), function_fn("noop", |_| async { Ok(()) }))
        .build()
        .unwrap();
    let running = dispatcher.start().await.unwrap();
    bus.publish(&[Event::builder("ops.test.ping", "ops://test").build()])
        .await
        .unwrap();
    let monitor = metrics
        .register(Monitor::builder())
        .collector(HostCollector::new())
        .collector(SpineCollector::new(&dispatcher))
        .collector(Hostile)
        .build()
        .unwrap();
    let text = monitor.scrape(Format::Prometheus).await.unwrap();
    running.shutdown().await;
    for want in [
        "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}",
        "node_memory_MemAvailable_bytes ",
        "ops_tasks_finished_total{tenant=\"acme \\\"inc\\\"\",template=\"render\",environment=\"default\",state=\"succeeded\"} 1",
        "ops_task_attempts_total{tenant=\"globex\",template=\"render\",environment=\"default\",reason=\"NonZeroExit\"} 1",
        "ops_queue_wait_seconds_bucket{",
        "ops_capacity{resource=\"cpu\"} 16",
        "ops_function_events_total{function=\"noop\",outcome=\"delivered\"}",
        "ops_outbox_lag_seconds{subscription=\"noop\"}",
        "test_hostile_labels{value=\"two\\nlines\"} 2",
        "test_hostile_labels{value=\"back\\\\slash\"} 3",
        "ops_collector_up{collector=\"host\"} 1",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(text.contains("test_hostile_labels{value=\"caf\u{fffd} \u{fffd}\"} 4"));
    let Some((code, said)) = promtool_check(&text) else {
        return;
    };
    // promtool's only complaints are about node_exporter's own names (`MemTotal`…),
    // kept on purpose so that node-mixin works unchanged.
    let findings: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        findings
            .iter()
            .all(|l| l.starts_with("node_memory_") && l.contains("camelCase")),
        "promtool check metrics found problems (rc {code}):\n{said}\n---\n{text}"
    );
    let ours: String = text
        .lines()
        .filter(|l| !l.contains("node_memory_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (code, said) = promtool_check(&ours).unwrap();
    assert_eq!(code, 0, "promtool check metrics found problems:\n{said}");
    // OpenMetrics too: the same families, `# EOF` last.
    let om = monitor.scrape(Format::OpenMetrics).await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE ops_tasks_finished counter"));
}

#[tokio::test]
async fn gpu_families_keep_dcgm_names_and_say_who_holds_a_gpu() {
    let task = TaskId::new();
    let holder = task.to_string();
    let monitor = Monitor::builder()
        .collector(
            GpuCollector::new(FakeGpus)
                .hostname("gpu-node-1")
                .holders(move || {
                    vec![GpuHolder {
                        gpu: "0".into(),
                        task_id: holder.clone(),
                        tenant: "acme".into(),
                    }]
                }),
        )
        .build()
        .unwrap();
    let text = monitor.scrape(Format::Prometheus).await.unwrap();
    let series = format!(
        "DCGM_FI_DEV_GPU_UTIL{{gpu=\"0\",UUID=\"GPU-1c2d\",device=\"nvidia0\",modelName=\"NVIDIA H200\",Hostname=\"gpu-node-1\",tenant=\"acme\",task_id=\"{task}\"}} 2"
    );
    assert!(text.contains(&series), "{series} missing from:\n{text}");
    for exact in [
        "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION untyped",
        "# TYPE DCGM_FI_DEV_XID_ERRORS gauge",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{",
        "ops_gpu_collector_up 1",
    ] {
        assert!(text.contains(exact), "{exact} missing from:\n{text}");
    }
    assert!(
        !text.contains("_total{gpu="),
        "DCGM names get no _total suffix"
    );
    let Some((code, said)) = promtool_check(&text) else {
        return;
    };
    // promtool's only complaint is DCGM's own camelCase label, kept on purpose.
    let problems: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        problems.iter().all(|l| l.contains("camelCase")),
        "unexpected promtool findings (rc {code}):\n{said}"
    );
}

#[tokio::test]
async fn without_nvml_the_gpu_collector_is_down_not_an_error() {
    let monitor = Monitor::builder()
        .collector(GpuCollector::unavailable(
            "libnvidia-ml.so.1: cannot open shared object file",
        ))
        .build()
        .unwrap();
    let text = monitor.scrape(Format::Prometheus).await.unwrap();
    assert!(text.contains("ops_gpu_collector_up 0"), "{text}");
    assert!(
        text.contains("ops_collector_up{collector=\"gpu\"} 1"),
        "{text}"
    );
    assert!(!text.contains("DCGM_FI_DEV_GPU_UTIL"));
}

#[tokio::test]
async fn a_failing_or_stuck_collector_is_marked_down_and_the_rest_is_served() {
    let gauge: Gauge = Gauge::default();
    gauge.set(7);
    let monitor = Monitor::builder()
        .register("test_still_here", "A registered gauge.", gauge)
        .collector(Broken)
        .collector(Stuck)
        .collector(Hostile)
        .collect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let text = monitor.scrape(Format::Prometheus).await.unwrap();
    assert!(text.contains("test_still_here 7"), "{text}");
    assert!(
        text.contains("ops_collector_up{collector=\"broken\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("ops_collector_up{collector=\"stuck\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("ops_collector_up{collector=\"hostile\"} 1"),
        "{text}"
    );
    assert!(!text.contains("test_broken"));
    if let Some((code, said)) = promtool_check(&text) {
        assert_eq!(code, 0, "{said}");
    }
}

#[test]
fn a_family_declared_twice_is_a_start_up_error_naming_both() {
    let a: Gauge = Gauge::default();
    let b: prometheus_client::metrics::counter::Counter = Default::default();
    let err = Monitor::builder()
        .register("test_broken", "as a gauge", a)
        .collector(Broken)
        .register("test_clash", "a counter", b)
        .register(
            "test_clash_total",
            "a gauge with the counter's name",
            Gauge::<i64>::default(),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let Error::DuplicateFamily { clashes } = &err else {
        panic!("{err}")
    };
    assert_eq!(clashes.len(), 2, "{clashes:?}");
    assert!(
        clashes[0].contains("test_broken") && clashes[0].contains("collector \"broken\""),
        "{clashes:?}"
    );
    assert!(
        clashes[1].contains("counter") && clashes[1].contains("gauge"),
        "{clashes:?}"
    );

    let err = Monitor::builder()
        .register("bad-name", "dash", Gauge::<i64>::default())
        .register("1st", "digit", Gauge::<i64>::default())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("bad-name") && err.to_string().contains("1st"),
        "{err}"
    );
}

#[tokio::test]
async fn http_endpoints_negotiate_and_report_health() {
    let monitor = Monitor::builder()
        .collector(Hostile)
        .health_check(
            Probe::Liveness,
            health_check_fn("process", || async { Ok(()) }),
        )
        .health_check(
            Probe::Readiness,
            health_check_fn("history", || async { Err("connection refused".to_owned()) }),
        )
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, ops_monitor::http::router(monitor))
            .await
            .unwrap();
    });
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let om = client
        .get(format!("{base}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(om.status(), 200);
    assert!(
        om.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.text().await.unwrap().ends_with("# EOF\n"));
    let plain = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(
        plain.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let live = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.text().await.unwrap(), "[+]process ok\nok\n");
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(
        body.contains("[+]process ok") && body.contains("[-]history failed: connection refused"),
        "{body}"
    );
    server.abort();
}

#[test]
fn errors_name_their_kind() {
    let e = Error::InvalidConfig {
        problems: vec!["monitor.listen: \"x\" is not an address".into()],
    };
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(!e.is_retryable());
    let _ = Arc::new(0);
}
