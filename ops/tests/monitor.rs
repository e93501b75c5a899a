//! `[monitor]` end to end: a platform serves `/metrics`; a real Prometheus scrapes it;
//! a PromQL query over Prometheus' HTTP API then answers about the task that just ran
//! (its tenant's succeeded count, its wait-time histogram). Also: a bad `[monitor]`
//! section names every key, and an address in use is an error, not a panic.

use std::path::Path;
use std::time::{Duration, Instant};

use ops::prelude::*;

const TEMPLATE: &str = r#"
name = "hello"
command = ["/bin/sh", "-c", "echo hello > hello.txt"]
outputs = ["hello.txt"]
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn config(dir: &Path, monitor: &str) -> std::path::PathBuf {
    write(&dir.join("templates/hello.toml"), TEMPLATE);
    let file = dir.join("platform.toml");
    write(
        &file,
        &format!(
            "history = \"sqlite://state/ops.db\"\ntemplates = \"templates\"\n[tasks]\nroot = \"tasks\"\n[monitor]\n{monitor}\n"
        ),
    );
    file
}

/// `$var` left in a query (inside label matchers) replaced by `.*`.
fn strip_vars(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                chars.next();
            }
            out.push_str(".*");
        } else {
            out.push(c);
        }
    }
    out
}

/// One PromQL instant query; the value of its only sample, if any.
async fn query(client: &reqwest::Client, prometheus: &str, expr: &str) -> Option<f64> {
    let body: serde_json::Value = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    assert_eq!(body["status"], "success", "{expr}: {body}");
    let result = body["data"]["result"].as_array()?;
    let first = result.first()?;
    first["value"][1].as_str()?.parse().ok()
}

async fn eventually(client: &reqwest::Client, prometheus: &str, expr: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = query(client, prometheus, expr).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{expr}: wanted {want}, Prometheus says {last:?}");
}

#[tokio::test]
async fn prometheus_scrapes_the_platform_and_answers_about_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        "listen = \"127.0.0.1:0\"\nsubscription = \"ops-monitor.test\"",
    );
    let platform = Platform::from_file(&file).await.unwrap();
    let addr = platform.metrics_addr().expect("metrics served");
    // The alert rules and dashboards made from the same configuration.
    let kit = dir.path().join("kit");
    let written = ops::monitor::MonitorConfig::default()
        .write_files(&kit)
        .unwrap();
    assert!(written.len() >= 6, "{written:?}");
    let rules = kit.join("prometheus/ops-rules.yaml");
    let Some(prometheus) =
        ops_testbed::PrometheusServer::start_with_rules(&[addr.to_string()], Some(&rules))
    else {
        platform.shutdown().await;
        return;
    };
    let acme = platform.tenant(&Tenant::parse("acme").unwrap());
    let id = acme.submit(SubmitRequest::new("hello")).await.unwrap();
    assert_eq!(acme.wait(id).await.unwrap().status, TaskStatus::Succeeded);

    let client = reqwest::Client::new();
    let url = prometheus.url();
    eventually(&client, &url, "up{job=\"ops\"}", 1.0).await;
    eventually(
        &client,
        &url,
        "sum(ops_tasks_finished_total{tenant=\"acme\",state=\"succeeded\"})",
        1.0,
    )
    .await;
    // The task waited well under a minute: it is in the 60 s bucket and in +Inf.
    eventually(
        &client,
        &url,
        "sum(ops_queue_wait_seconds_bucket{tenant=\"acme\",le=\"60.0\"})",
        1.0,
    )
    .await;
    eventually(
        &client,
        &url,
        "sum(ops_queue_wait_seconds_count{tenant=\"acme\",environment=\"default\",tier=\"regular\"})",
        1.0,
    )
    .await;
    eventually(
        &client,
        &url,
        "sum(ops_task_attempts_total{tenant=\"acme\",template=\"hello\",reason=\"Completed\"})",
        1.0,
    )
    .await;
    eventually(&client, &url, "ops_collector_up{collector=\"host\"}", 1.0).await;
    // Nothing is left running or queued.
    eventually(&client, &url, "sum(ops_tasks{tenant=\"acme\"})", 0.0).await;
    // The rules are loaded and evaluated: the Watchdog fires, nothing else does.
    eventually(
        &client,
        &url,
        "count(ALERTS{alertname=\"Watchdog\",alertstate=\"firing\"})",
        1.0,
    )
    .await;
    // Every dashboard query runs against the real server (template variables filled in).
    let mut queries = 0;
    for dashboard in ops::monitor::dashboards::all(&Default::default()) {
        for panel in dashboard.json["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "15s")
                    .replace("$__range", "1h");
                let expr = strip_vars(&expr);
                let body: serde_json::Value = client
                    .get(format!("{url}/api/v1/query"))
                    .query(&[("query", expr.as_str())])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(
                    body["status"], "success",
                    "{} / {}: {expr}: {body}",
                    dashboard.title, panel["title"]
                );
                queries += 1;
            }
        }
    }
    assert!(queries > 40, "{queries} dashboard queries");
    // Health over HTTP.
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    platform.shutdown().await;
}

#[tokio::test]
async fn a_bad_monitor_section_names_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        "listen = \"everywhere\"\n[monitor.tasks]\nmax_tenants = 0\nrun_buckets = [10.0, 1.0]",
    );
    let err = Platform::from_file(&file).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let text = err.to_string();
    for needle in [
        "monitor.listen: \"everywhere\" is not an address",
        "monitor.tasks.max_tenants: must be at least 1",
        "monitor.tasks.run_buckets: bounds must increase",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[tokio::test]
async fn an_address_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        &format!("listen = \"{}\"", taken.local_addr().unwrap()),
    );
    let err = Platform::from_file(&file).await.unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}
