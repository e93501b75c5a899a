//! What the event-fed metrics say after each kind of lifecycle, redelivery, and
//! cardinality cap.

use ops_core::{Event, Reason, Resources, TaskEventData, TaskId, TaskStatus, event_types};
use ops_events::Function;
use ops_monitor::tasks::{TaskMetrics, TaskMetricsConfig};
use ops_monitor::{Format, Monitor};

struct Fixture {
    metrics: TaskMetrics,
    monitor: Monitor,
}

impl Fixture {
    fn new(config: TaskMetricsConfig) -> Self {
        let metrics = TaskMetrics::new(config);
        let monitor = metrics.register(Monitor::builder()).build().unwrap();
        Self { metrics, monitor }
    }

    async fn send(&self, event: &Event) {
        self.metrics.call(event).await.unwrap();
    }

    /// The value of the series whose line starts with `series` (name and labels).
    async fn value(&self, series: &str) -> Option<f64> {
        let text = self.monitor.scrape(Format::Prometheus).await.unwrap();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

fn event(id: TaskId, ty: &str, status: TaskStatus, attempt: u32, tenant: &str) -> Event {
    task_event(id, ty, status, attempt, tenant, "render", None)
}

fn task_event(
    id: TaskId,
    ty: &str,
    status: TaskStatus,
    attempt: u32,
    tenant: &str,
    template: &str,
    reason: Option<Reason>,
) -> Event {
    let mut data = TaskEventData::new(id, tenant, "prod", template, status, attempt);
    data.resources = Some(Resources::new(2000, 1 << 30).with_gpus(1, None));
    data.reason = reason;
    Event::builder(ty, "ops://test")
        .subject(id.to_string())
        .tenant(tenant)
        .json(serde_json::to_value(&data).unwrap())
        .build()
}

#[tokio::test]
async fn a_retried_and_preempted_task_counts_each_attempt_once() {
    let f = Fixture::new(TaskMetricsConfig::default());
    let id = TaskId::new();
    let run = [
        event(
            id,
            event_types::TASK_SUBMITTED,
            TaskStatus::Submitted,
            1,
            "acme",
        ),
        event(id, event_types::TASK_QUEUED, TaskStatus::Queued, 1, "acme"),
        event(
            id,
            event_types::TASK_STARTED,
            TaskStatus::Running,
            1,
            "acme",
        ),
    ];
    for e in &run {
        f.send(e).await;
    }
    assert_eq!(
        f.value(r#"ops_tasks{tenant="acme",template="render",environment="prod",state="running"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        f.value(r#"ops_quota_used{tenant="acme",environment="prod",resource="cpu"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        f.value(r#"ops_capacity_used{resource="gpu"}"#).await,
        Some(1.0)
    );
    // Attempt 1 fails and is retried; attempt 2 is preempted; attempt 3 succeeds.
    let rest = [
        task_event(
            id,
            event_types::TASK_RETRYING,
            TaskStatus::Retrying,
            1,
            "acme",
            "render",
            Some(Reason::OutOfMemory),
        ),
        event(id, event_types::TASK_QUEUED, TaskStatus::Queued, 2, "acme"),
        event(
            id,
            event_types::TASK_STARTED,
            TaskStatus::Running,
            2,
            "acme",
        ),
        task_event(
            id,
            event_types::TASK_PREEMPTED,
            TaskStatus::Queued,
            2,
            "acme",
            "render",
            Some(Reason::Preempted),
        ),
        event(
            id,
            event_types::TASK_STARTED,
            TaskStatus::Running,
            3,
            "acme",
        ),
        task_event(
            id,
            event_types::TASK_SUCCEEDED,
            TaskStatus::Succeeded,
            3,
            "acme",
            "render",
            Some(Reason::Completed),
        ),
    ];
    for e in &rest {
        f.send(e).await;
    }
    // Every event again (a redelivery after a crash), and one stale event late.
    for e in run.iter().chain(&rest) {
        f.send(e).await;
    }
    let attempts = |reason: &str| {
        format!(
            r#"ops_task_attempts_total{{tenant="acme",template="render",environment="prod",reason="{reason}"}}"#
        )
    };
    assert_eq!(f.value(&attempts("OutOfMemory")).await, Some(1.0));
    assert_eq!(f.value(&attempts("Preempted")).await, Some(1.0));
    assert_eq!(f.value(&attempts("Completed")).await, Some(1.0));
    assert_eq!(
        f.value(r#"ops_task_preemptions_total{tenant="acme",environment="prod"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(f.value(r#"ops_tasks_finished_total{tenant="acme",template="render",environment="prod",state="succeeded"}"#).await, Some(1.0));
    assert_eq!(f.value(r#"ops_tasks_finished_total{tenant="acme",template="render",environment="prod",state="failed"}"#).await, Some(0.0), "started at zero");
    for state in ["submitted", "queued", "running", "retrying"] {
        let series = format!(
            r#"ops_tasks{{tenant="acme",template="render",environment="prod",state="{state}"}}"#
        );
        assert_eq!(f.value(&series).await, Some(0.0), "{state}");
    }
    assert_eq!(
        f.value(r#"ops_queue_depth{environment="prod",tier="regular"}"#)
            .await,
        Some(0.0)
    );
    assert_eq!(
        f.value(r#"ops_quota_used{tenant="acme",environment="prod",resource="cpu"}"#)
            .await,
        Some(0.0)
    );
    assert_eq!(
        f.value(
            r#"ops_task_run_seconds_count{tenant="acme",template="render",environment="prod"}"#
        )
        .await,
        Some(3.0)
    );
    // Three waits: the first queueing, after the retry, after the preemption.
    assert_eq!(
        f.value(r#"ops_queue_wait_seconds_count{tenant="acme",environment="prod",tier="regular"}"#)
            .await,
        Some(3.0)
    );
    assert_eq!(
        f.value(r#"ops_events_total{type="ops.task.started"}"#)
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_queued_task_shows_its_age_and_a_cancelled_one_leaves_the_queue() {
    let f = Fixture::new(TaskMetricsConfig::default());
    let id = TaskId::new();
    let mut queued = event(id, event_types::TASK_QUEUED, TaskStatus::Queued, 1, "acme");
    queued.time = chrono::Utc::now() - chrono::Duration::seconds(90);
    f.send(&queued).await;
    assert_eq!(
        f.value(r#"ops_queue_depth{environment="prod",tier="regular"}"#)
            .await,
        Some(1.0)
    );
    let age = f
        .value(r#"ops_queue_oldest_wait_seconds{environment="prod",tier="regular"}"#)
        .await
        .unwrap();
    assert!((89.0..120.0).contains(&age), "{age}");
    f.send(&task_event(
        id,
        event_types::TASK_CANCELLED,
        TaskStatus::Cancelled,
        1,
        "acme",
        "render",
        Some(Reason::Cancelled),
    ))
    .await;
    assert_eq!(
        f.value(r#"ops_queue_depth{environment="prod",tier="regular"}"#)
            .await,
        Some(0.0)
    );
    assert_eq!(
        f.value(r#"ops_queue_oldest_wait_seconds{environment="prod",tier="regular"}"#)
            .await,
        Some(0.0)
    );
    assert_eq!(f.value(r#"ops_tasks_finished_total{tenant="acme",template="render",environment="prod",state="cancelled"}"#).await, Some(1.0));
    // No attempt ran: none is counted.
    assert_eq!(f.value(r#"ops_task_attempts_total{tenant="acme",template="render",environment="prod",reason="Cancelled"}"#).await, None);
}

#[tokio::test]
async fn tenants_and_templates_beyond_the_caps_fold_into_other() {
    let mut config = TaskMetricsConfig::default();
    config.max_tenants = 2;
    config.max_templates = 1;
    let f = Fixture::new(config);
    for (tenant, template) in [("a", "t1"), ("b", "t2"), ("c", "t1"), ("d", "t3")] {
        let id = TaskId::new();
        f.send(&task_event(
            id,
            event_types::TASK_SUCCEEDED,
            TaskStatus::Succeeded,
            1,
            tenant,
            template,
            None,
        ))
        .await;
    }
    let finished = |t: &str, p: &str| {
        format!(
            r#"ops_tasks_finished_total{{tenant="{t}",template="{p}",environment="prod",state="succeeded"}}"#
        )
    };
    assert_eq!(f.value(&finished("a", "t1")).await, Some(1.0));
    assert_eq!(f.value(&finished("b", "other")).await, Some(1.0));
    assert_eq!(f.value(&finished("other", "t1")).await, Some(1.0));
    assert_eq!(f.value(&finished("other", "other")).await, Some(1.0));
    let text = f.monitor.scrape(Format::Prometheus).await.unwrap();
    assert!(!text.contains("tenant=\"c\"") && !text.contains("template=\"t3\""));
}

#[tokio::test]
async fn storage_and_budget_events_feed_tenant_gauges() {
    let f = Fixture::new(TaskMetricsConfig::default());
    let object = |size: u64, path: &str| serde_json::json!({ "object": { "tenant": "acme", "environment": "prod", "path": path, "size": size, "sha256": "00", "created_at": "2026-12-03T00:00:00Z" } });
    let stored = |ty: &str, data: serde_json::Value| {
        Event::builder(ty, "ops://test")
            .tenant("acme")
            .json(data)
            .build()
    };
    f.send(&stored(
        event_types::STORAGE_OBJECT_CREATED,
        object(100, "a.bin"),
    ))
    .await;
    f.send(&stored(
        event_types::STORAGE_OBJECT_CREATED,
        object(50, "b.bin"),
    ))
    .await;
    // a.bin replaced by a larger one: counted once, at its new size.
    f.send(&stored(
        event_types::STORAGE_OBJECT_CREATED,
        object(300, "a.bin"),
    ))
    .await;
    assert_eq!(
        f.value(r#"ops_storage_bytes{tenant="acme"}"#).await,
        Some(350.0)
    );
    assert_eq!(
        f.value(r#"ops_storage_objects{tenant="acme"}"#).await,
        Some(2.0)
    );
    f.send(&stored(
        event_types::STORAGE_OBJECT_DELETED,
        object(50, "b.bin"),
    ))
    .await;
    assert_eq!(
        f.value(r#"ops_storage_bytes{tenant="acme"}"#).await,
        Some(300.0)
    );
    assert_eq!(
        f.value(r#"ops_storage_objects{tenant="acme"}"#).await,
        Some(1.0)
    );

    f.send(&stored(
        event_types::BILLING_BUDGET_THRESHOLD,
        serde_json::json!({ "tenant": "acme", "percent": 80 }),
    ))
    .await;
    f.send(&stored(
        event_types::BILLING_BUDGET_EXHAUSTED,
        serde_json::json!({ "tenant": "acme" }),
    ))
    .await;
    assert_eq!(
        f.value(r#"ops_billing_budget_threshold_percent{tenant="acme"}"#)
            .await,
        Some(80.0)
    );
    assert_eq!(
        f.value(r#"ops_billing_budget_exhausted_total{tenant="acme"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_event_without_task_data_is_skipped_not_dead_lettered() {
    let f = Fixture::new(TaskMetricsConfig::default());
    let bad = Event::builder(event_types::TASK_FAILED, "ops://test")
        .subject("x")
        .json(serde_json::json!({ "oops": true }))
        .build();
    assert!(f.metrics.call(&bad).await.is_ok());
    assert_eq!(
        f.value(r#"ops_events_total{type="ops.task.failed"}"#).await,
        Some(1.0)
    );
    assert!(
        !f.monitor
            .scrape(Format::Prometheus)
            .await
            .unwrap()
            .contains("ops_tasks_finished_total{")
    );
}
