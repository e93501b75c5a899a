//! `SqliteHistory` directly: the state machine is enforced, transitions are
//! compare-and-set, and each applied change's event lands in the outbox.

use chrono::Utc;
use ops_core::{Event, Labels, TaskId, TaskStatus, Tenant, Usage, event_types};
use ops_events::{EventBus, SubscribeOptions};
use ops_tasks::history::{ChangeBatch, Transition};
use ops_tasks::{Error, HistoryStore, LaunchSpec, RetryPolicy, SqliteHistory, TaskRecord};

fn record(id: TaskId, status: TaskStatus) -> TaskRecord {
    let spec: LaunchSpec = serde_json::from_value(serde_json::json!({
        "task_id": id, "attempt": 0, "tenant": "acme", "argv": ["true"], "env": {},
        "task_dir": "/tmp/none", "workdir": null, "resources": {}, "timeout": null,
        "output_globs": []
    }))
    .unwrap();
    serde_json::from_value(serde_json::json!({
        "id": id, "tenant": "acme", "environment": "default", "template": "t",
        "status": status, "reason": null, "message": null, "exit_code": null,
        "priority": 0, "attempt": 0, "max_attempts": 1, "labels": Labels::new(),
        "parameters": {}, "spec": spec, "retry": RetryPolicy::default(),
        "run_handle": null, "usage": Usage::default(), "submitted_at": Utc::now(),
        "started_at": null, "finished_at": null, "not_before": null
    }))
    .unwrap()
}

fn event(ty: &str, id: TaskId) -> Event {
    Event::builder(ty, "ops://test")
        .subject(id.to_string())
        .build()
}

fn transition(r: &TaskRecord, to: TaskStatus, ty: &str) -> Transition {
    let mut next = r.clone();
    next.status = to;
    ops_tasks::history::Transition::new(r.status, next, event(ty, r.id))
}

#[tokio::test]
async fn transitions_are_checked_compare_and_set_and_evented() {
    let dir = tempfile::tempdir().unwrap();
    let history = SqliteHistory::open(&dir.path().join("h.db").to_string_lossy())
        .await
        .unwrap();
    let outbox = history.outbox().clone();
    outbox
        .subscribe("audit", SubscribeOptions::default())
        .await
        .unwrap();
    let id = TaskId::new();
    let queued = record(id, TaskStatus::Queued);
    let mut batch = ChangeBatch::default();
    batch.inserts.push((
        queued.clone(),
        vec![
            event(event_types::TASK_SUBMITTED, id),
            event(event_types::TASK_QUEUED, id),
        ],
    ));
    history.commit(&batch).await.unwrap();

    // Not allowed by the state machine: nothing is written.
    let mut bad = ChangeBatch::default();
    bad.transitions.push(transition(
        &queued,
        TaskStatus::Succeeded,
        event_types::TASK_SUCCEEDED,
    ));
    let err = history.commit(&bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");

    // Allowed: applied once; the same change again no longer matches `from`.
    let mut ok = ChangeBatch::default();
    ok.transitions.push(transition(
        &queued,
        TaskStatus::Running,
        event_types::TASK_STARTED,
    ));
    assert_eq!(history.commit(&ok).await.unwrap(), vec![true]);
    let mut again = ChangeBatch::default();
    again.transitions.push(transition(
        &queued,
        TaskStatus::Cancelled,
        event_types::TASK_CANCELLED,
    ));
    assert_eq!(history.commit(&again).await.unwrap(), vec![false]);

    let stored = history.get(id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Running);
    assert_eq!(stored.tenant, Tenant::new("acme"));
    let types: Vec<_> = history
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.ty)
        .collect();
    assert_eq!(
        types,
        [
            event_types::TASK_SUBMITTED,
            event_types::TASK_QUEUED,
            event_types::TASK_STARTED
        ]
    );
    // The outbox holds exactly the applied changes' events, in order.
    let deliveries = outbox
        .fetch("audit", 10, std::time::Duration::from_millis(100))
        .await
        .unwrap();
    let outboxed: Vec<_> = deliveries.iter().map(|d| d.event.ty.clone()).collect();
    assert_eq!(outboxed, types);
}
