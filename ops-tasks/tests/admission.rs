//! Admission through the `Tasks` facade with real processes: quotas and the reason a
//! task waits, the budget gate, environments, bad configuration and submissions that
//! can never run, and statistics from history.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ops_core::{Resources, TaskId, TaskStatus, Tenant};
use ops_tasks::admission::{
    AdmissionConfig, BudgetDecision, BudgetGate, BudgetRequest, WaitReason,
};
use ops_tasks::history::StatsQuery;
use ops_tasks::local::{LocalExecutor, LocalExecutorConfig};
use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{Error, SqliteHistory, SubmitRequest, Tasks, TasksConfig};

const TEMPLATES: &[&str] = &[
    r#"
name = "work"
command = ["sleep", "{{ secs }}"]
[parameters.properties.secs]
type = "number"
default = 0.2
[resources]
cpu = 1
memory = "64Mi"
"#,
    r#"
name = "big"
command = ["true"]
[resources]
cpu = 3
"#,
];

fn catalogue() -> Catalogue {
    let mut c = Catalogue::new();
    for (i, text) in TEMPLATES.iter().enumerate() {
        c.insert(TaskTemplate::from_str(text, Format::Toml, format!("t{i}.toml")).unwrap());
    }
    c
}

async fn start(
    dir: &Path,
    admission: &str,
    gate: Option<Arc<SwitchGate>>,
) -> ops_tasks::Result<Tasks> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let history = SqliteHistory::open(dir.join("ops.db").to_str().unwrap()).await?;
    let mut exec = LocalExecutorConfig::default();
    exec.capacity = Some(Resources::new(4_000, 4 << 30));
    let mut config = TasksConfig::default();
    config.root = dir.join("tasks");
    config.admission =
        toml::from_str::<AdmissionConfig>(admission).map_err(|e| Error::InvalidConfig {
            problems: vec![e.to_string()],
        })?;
    let mut builder = Tasks::builder()
        .catalogue(catalogue())
        .history(history)
        .executor(LocalExecutor::new(exec)?)
        .config(config);
    if let Some(gate) = gate {
        builder = builder.budget_gate(gate);
    }
    builder.start().await
}

async fn wait_status(tasks: &Tasks, tenant: &Tenant, id: TaskId, want: TaskStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = tasks.tenant(tenant).get(id).await.unwrap().status;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} stayed {status}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_task_over_quota_waits_with_the_reason_and_runs_when_quota_frees() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = start(
        dir.path(),
        r#"
        [tenants.acme]
        borrowing = false
        quota.default = { cpu = 1 }
        [tenants.beta]
        "#,
        None,
    )
    .await
    .unwrap();
    let acme = Tenant::parse("acme").unwrap();
    let first = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("work").parameters(serde_json::json!({"secs": 1})))
        .await
        .unwrap();
    let second = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("work"))
        .await
        .unwrap();
    wait_status(&tasks, &acme, first, TaskStatus::Running).await;
    let waiting = tasks
        .tenant(&acme)
        .explain(second)
        .await
        .unwrap()
        .expect("queued");
    assert_eq!(waiting.info.reason, WaitReason::Quota, "{waiting:?}");
    assert!(
        waiting
            .info
            .message
            .contains("tenant \"acme\" is at its quota in \"default\""),
        "{}",
        waiting.info.message
    );
    assert_eq!(waiting.info.position, 1);
    // Another tenant is not held back by acme's quota.
    let beta = tasks
        .tenant(&ops_core::Tenant::parse("beta").unwrap())
        .submit(SubmitRequest::new("work"))
        .await
        .unwrap();
    wait_status(
        &tasks,
        &Tenant::parse("beta").unwrap(),
        beta,
        TaskStatus::Succeeded,
    )
    .await;
    // Usage shows acme at its quota.
    let usage = tasks.admin().usage().await.unwrap();
    let acme_usage = usage.iter().find(|u| u.tenant == acme).unwrap();
    assert_eq!(acme_usage.queued + acme_usage.running, 2);
    wait_status(&tasks, &acme, second, TaskStatus::Succeeded).await;
    assert!(tasks.tenant(&acme).explain(second).await.unwrap().is_none());
    // Statistics from history: both acme tasks waited, the second for the first.
    let stats = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .stats(&StatsQuery::new())
        .await
        .unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].template.as_str(), stats[0].succeeded),
        ("work", 2)
    );
    assert!(
        stats[0].wait_max >= Duration::from_millis(500),
        "{:?}",
        stats[0]
    );
    tasks.shutdown().await;
}

/// Refuses tenant `broke` until switched on.
struct SwitchGate {
    open: AtomicBool,
}

#[async_trait]
impl BudgetGate for SwitchGate {
    async fn check(&self, task: &BudgetRequest) -> ops_tasks::Result<BudgetDecision> {
        if task.tenant.as_str() == "broke" && !self.open.load(Ordering::SeqCst) {
            return Ok(BudgetDecision::Refuse {
                reason: "prepaid credit exhausted".into(),
                retry_after: Some(Duration::from_millis(200)),
            });
        }
        Ok(BudgetDecision::Allow)
    }
}

#[tokio::test]
async fn the_budget_gate_keeps_a_task_queued_with_its_reason_until_it_allows() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(SwitchGate {
        open: AtomicBool::new(false),
    });
    let tasks = start(dir.path(), "", Some(gate.clone())).await.unwrap();
    let broke = Tenant::parse("broke").unwrap();
    let id = tasks
        .tenant(&ops_core::Tenant::parse("broke").unwrap())
        .submit(SubmitRequest::new("work"))
        .await
        .unwrap();
    let paid = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("work"))
        .await
        .unwrap();
    wait_status(
        &tasks,
        &Tenant::parse("acme").unwrap(),
        paid,
        TaskStatus::Succeeded,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        if let Some(w) = tasks.tenant(&broke).explain(id).await.unwrap()
            && w.info.reason == WaitReason::Budget
        {
            break w;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        waiting.info.message.starts_with("prepaid credit exhausted"),
        "{}",
        waiting.info.message
    );
    assert_eq!(waiting.estimated_start, None);
    assert_eq!(
        tasks.tenant(&broke).get(id).await.unwrap().status,
        TaskStatus::Queued
    );
    gate.open.store(true, Ordering::SeqCst);
    wait_status(&tasks, &broke, id, TaskStatus::Succeeded).await;
    let record = tasks.tenant(&broke).get(id).await.unwrap();
    assert_eq!(record.attempt, 1, "a refusal is not an attempt");
    tasks.shutdown().await;
}

#[tokio::test]
async fn environments_keep_their_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = start(
        dir.path(),
        r#"
        [environments.production]
        capacity = { cpu = 3, memory = "3Gi" }
        [environments.staging]
        capacity = { cpu = 1, memory = "1Gi" }
        [environments.default]
        "#,
        None,
    )
    .await
    .unwrap();
    let acme = Tenant::parse("acme").unwrap();
    let staging: Vec<TaskId> = tasks
        .tenant(&acme)
        .submit_many(
            (0..2)
                .map(|_| {
                    SubmitRequest::new("work")
                        .environment(ops_core::Environment::parse("staging").unwrap())
                        .parameters(serde_json::json!({"secs": 1}))
                })
                .collect(),
        )
        .await
        .unwrap();
    wait_status(&tasks, &acme, staging[0], TaskStatus::Running).await;
    let waiting = tasks
        .tenant(&acme)
        .explain(staging[1])
        .await
        .unwrap()
        .expect("queued");
    assert_eq!(waiting.info.reason, WaitReason::Capacity, "{waiting:?}");
    assert_eq!(waiting.info.segment, "staging");
    // Production has room of its own.
    let prod = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(
            SubmitRequest::new("big")
                .environment(ops_core::Environment::parse("production").unwrap()),
        )
        .await
        .unwrap();
    wait_status(&tasks, &acme, prod, TaskStatus::Succeeded).await;
    // A big task can never run in staging: refused at submission.
    let err = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(
            SubmitRequest::new("big").environment(ops_core::Environment::parse("staging").unwrap()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Inadmissible { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("larger than any node environment \"staging\" may use"),
        "{err}"
    );
    // An environment that is not configured is refused too.
    let err = tasks
        .tenant(&ops_core::Tenant::parse("acme").unwrap())
        .submit(SubmitRequest::new("work").environment(ops_core::Environment::parse("qa").unwrap()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("environment \"qa\" is not configured"),
        "{err}"
    );
    wait_status(&tasks, &acme, staging[1], TaskStatus::Succeeded).await;
    tasks.shutdown().await;
}

#[tokio::test]
async fn bad_admission_config_is_refused_at_start_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = start(
        dir.path(),
        r#"
        [environments.production]
        capacity = { cpu = 64 }
        borrow_from = ["staging"]
        [tenants.acme]
        quota.prod = { cpu = 1 }
        "#,
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    for needle in [
        "the capacities carved out add up to 64000m cpu, more than the 4000m",
        "environments.production.borrow_from: unknown environment \"staging\"",
        "tenants.acme.quota.prod: unknown environment (known: production)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    // The default environment must be one of the configured ones.
    let err = start(dir.path(), "[environments.production]\n", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("default_environment: \"default\" is not among"),
        "{err}"
    );
    // An unknown tenant is refused at submission when tenants are listed.
    let tasks = start(dir.path(), "[tenants.acme]\n", None).await.unwrap();
    let err = tasks
        .tenant(&ops_core::Tenant::parse("mallory").unwrap())
        .submit(SubmitRequest::new("work"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("tenant \"mallory\" has no admission entry"),
        "{err}"
    );
    tasks.shutdown().await;
}
