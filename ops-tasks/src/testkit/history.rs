//! The conformance suite every [`HistoryStore`] runs.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use ops_tasks::{HistoryStore, SqliteHistory};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let n = std::sync::atomic::AtomicUsize::new(0);
//! ops_tasks::testkit::history::run_all(|| {
//!     let path = dir.path().join(format!("h{}.db", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
//!     async move {
//!         Arc::new(SqliteHistory::open(&path.to_string_lossy()).await.unwrap()) as Arc<dyn HistoryStore>
//!     }
//! })
//! .await;
//! # }
//! ```
//!
//! `make` must return a fresh, empty store each time it is called. Each check is a
//! public function too, so a backend can run them one by one; a failed check panics
//! with a message that names it. [`events_reach_the_outbox`] also needs the store's
//! outbox as an [`EventBus`], so backends call it themselves.
//! A single-node store (one that keeps the provided [`Leases`]
//! methods) runs [`run_single_node`] instead of [`run_all`].
//!
//! Lease checks use ttls of a few hundred milliseconds and sleep past them.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ops_core::{Event, Labels, Reason, TaskId, TaskStatus, Tenant, Usage, event_types};
use ops_events::{EventBus, SubscribeOptions};

use crate::history::{ChangeBatch, OutputRecord, StatsQuery, Transition};
use crate::{
    Error, HistoryStore, LaunchSpec, Lease, RetryPolicy, RunHandle, TaskQuery, TaskRecord,
};
#[allow(unused_imports)]
use crate::{HistoryReader, HistoryWriter, Leases};

/// A short lease, so that expiry checks stay fast.
const SHORT_TTL: Duration = Duration::from_millis(300);
/// Longer than [`SHORT_TTL`], with a margin for slow machines.
const PAST_SHORT_TTL: Duration = Duration::from_millis(450);
/// A lease that does not expire during a check.
const LONG_TTL: Duration = Duration::from_secs(60);

/// A tenant by name (which must follow the name rule).
pub fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).expect("a valid tenant name")
}

/// The current time, to the microsecond (what every store keeps).
pub fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A realistic unowned task of `tenant` in `status`, submitted now, with template `t`
/// and no labels. Final statuses get a `finished_at`.
pub fn record(tenant: &str, status: TaskStatus) -> TaskRecord {
    record_with_id(TaskId::new(), tenant, status)
}

/// [`record`] with a given id.
pub fn record_with_id(id: TaskId, name: &str, status: TaskStatus) -> TaskRecord {
    let submitted = now();
    let spec = LaunchSpec {
        task_id: id,
        attempt: 1,
        tenant: tenant(name),
        argv: vec!["render".into(), "--scene".into(), "a.blend".into()],
        env: [("OPS_TASK".to_owned(), id.to_string())].into(),
        task_dir: PathBuf::from(format!("/var/lib/ops/tasks/{name}/{id}")),
        workdir: None,
        resources: Default::default(),
        timeout: Some(Duration::from_secs(3600)),
        output_globs: vec!["frames/*.png".into()],
        inputs: Vec::new(),
        environment: Default::default(),
        image: Some("ghcr.io/acme/render:1.0".into()),
        scavenger: false,
        run_as_root: false,
        node_pool: None,
    };
    TaskRecord {
        id,
        tenant: tenant(name),
        environment: Default::default(),
        template: "t".into(),
        status,
        reason: None,
        message: None,
        exit_code: None,
        priority: 0,
        attempt: 1,
        max_attempts: 3,
        labels: Labels::new(),
        parameters: serde_json::json!({ "scene": "a.blend", "frames": [1, 250] }),
        spec,
        retry: RetryPolicy::default(),
        run_handle: None,
        usage: Usage::default(),
        preempted_usage: Usage::default(),
        submitted_at: submitted,
        started_at: None,
        finished_at: status.is_final().then_some(submitted),
        not_before: None,
        owner: None,
    }
}

/// An event of type `ty` about task `id`.
pub fn event(ty: &str, id: TaskId) -> Event {
    Event::builder(ty, "ops://testkit")
        .subject(id.to_string())
        .json(serde_json::json!({ "task_id": id }))
        .build()
}

/// The events a submission writes: `submitted`, then `queued` unless the task is
/// still `submitted`.
pub fn submit_events(record: &TaskRecord) -> Vec<Event> {
    let mut events = vec![event(event_types::TASK_SUBMITTED, record.id)];
    if record.status != TaskStatus::Submitted {
        events.push(event(event_types::TASK_QUEUED, record.id));
    }
    events
}

/// Inserts `records` (with their [`submit_events`]) in one batch written by `owner`.
pub async fn insert(store: &dyn HistoryStore, records: &[TaskRecord], owner: Option<&str>) {
    let mut batch = ChangeBatch {
        owner: owner.map(str::to_owned),
        ..Default::default()
    };
    for r in records {
        batch.inserts.push((r.clone(), submit_events(r)));
    }
    store.commit(&batch).await.expect("insert");
}

/// The transition of `record` to `to`, announced by an event of type `ty`.
pub fn transition(record: &TaskRecord, to: TaskStatus, ty: &str) -> Transition {
    let mut next = record.clone();
    next.status = to;
    if to == TaskStatus::Running {
        next.started_at = Some(now());
    }
    if to.is_final() {
        next.finished_at = Some(now());
    }
    Transition::new(record.status, next, event(ty, record.id))
}

/// Commits transitions in one batch written by `owner`; returns which applied.
pub async fn commit_transitions(
    store: &dyn HistoryStore,
    owner: Option<&str>,
    transitions: Vec<Transition>,
) -> Vec<bool> {
    let batch = ChangeBatch {
        owner: owner.map(str::to_owned),
        transitions,
        ..Default::default()
    };
    store.commit(&batch).await.expect("commit transitions")
}

fn output(id: TaskId, path: &str) -> (OutputRecord, Event) {
    (
        OutputRecord {
            task_id: id,
            path: path.into(),
            attempt: 1,
            size: 42,
            created_at: now(),
        },
        event(event_types::TASK_OUTPUT_CREATED, id),
    )
}

async fn get(store: &dyn HistoryStore, id: TaskId) -> TaskRecord {
    store.get(id).await.expect("get").expect("task exists")
}

fn ids(records: &[TaskRecord]) -> Vec<TaskId> {
    records.iter().map(|r| r.id).collect()
}

/// `n` distinct task ids in increasing (submission) order.
fn ordered_ids(n: usize) -> Vec<TaskId> {
    let mut ids: Vec<TaskId> = (0..n).map(|_| TaskId::new()).collect();
    ids.sort();
    ids
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    macro_rules! check {
        ($name:ident) => {{
            tracing::info!(check = stringify!($name), "history conformance");
            $name(&*make().await).await;
        }};
    }
    check!(commit_and_get);
    check!(list_filters_and_pages);
    check!(transitions_are_checked_and_compare_and_set);
    check!(commits_are_fenced_by_owner);
    check!(leases_acquire_renew_expire);
    check!(release_unowns_queued_tasks);
    check!(claim_order);
    check!(take_over_after_expiry);
    check!(cancel_requests);
    check!(prune_deletes_finished_tasks);
    check!(transitions_store_the_attempt_spec);
    check!(preempted_usage_is_kept);
    check!(stats_per_template);
    tracing::info!(check = "claims_are_exclusive", "history conformance");
    claims_are_exclusive(make().await).await;
}

/// Runs the checks that do not need leases, each on a fresh store from `make`: for a
/// single-node store that keeps the provided [`Leases`] methods. Its
/// commits may ignore the batch's owner.
pub async fn run_single_node<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    macro_rules! check {
        ($name:ident) => {{
            tracing::info!(
                check = stringify!($name),
                "history conformance (single node)"
            );
            $name(&*make().await).await;
        }};
    }
    check!(commit_and_get);
    check!(list_filters_and_pages);
    check!(transitions_are_checked_and_compare_and_set);
    check!(prune_deletes_finished_tasks);
    check!(transitions_store_the_attempt_spec);
    check!(preempted_usage_is_kept);
    check!(stats_per_template);
    check!(single_node_leases);
}

/// The provided lease methods: not shared, the lease always alive, every unfinished
/// task the coordinator's own, nothing to claim or take over.
pub async fn single_node_leases(store: &dyn HistoryStore) {
    assert!(!store.shared(), "single node: not shared");
    let queued = record("acme", TaskStatus::Queued);
    let running = record("acme", TaskStatus::Running);
    let done = record("acme", TaskStatus::Succeeded);
    insert(store, &[queued.clone(), running.clone(), done], None).await;
    let lease = Lease::new("c1", LONG_TTL);
    store.acquire_lease(&lease, false).await.expect("acquire");
    let renewal = store.renew_lease(&lease).await.expect("renew");
    assert!(renewal.alive, "single node: the lease stays alive");
    let mut owned = ids(&store.owned("c1").await.expect("owned"));
    owned.sort();
    let mut want = vec![queued.id, running.id];
    want.sort();
    assert_eq!(owned, want, "single node: every unfinished task is owned");
    assert!(store.claim(&lease, 10).await.expect("claim").is_empty());
    assert!(
        store
            .take_over(&lease, 10)
            .await
            .expect("take over")
            .is_empty()
    );
    store.release_lease(&lease).await.expect("release");
}

/// Records come back as written; unfinished, counts and events per task.
pub async fn commit_and_get(store: &dyn HistoryStore) {
    let mut full = record("acme", TaskStatus::Queued);
    full.labels.insert("kind".into(), "render".into());
    full.labels.insert("quote".into(), "it's \"x\"".into());
    full.priority = 7;
    full.message = Some("waiting".into());
    full.exit_code = Some(3);
    full.reason = Some(Reason::Cancelled);
    full.run_handle = Some(RunHandle {
        executor: "local".into(),
        task_id: full.id,
        attempt: 1,
        detail: serde_json::json!({ "pid": 4242 }),
    });
    full.usage = Usage::new(
        Duration::from_millis(1500),
        Duration::from_millis(250),
        1 << 30,
        2,
    );
    full.preempted_usage = Usage::new(
        Duration::from_millis(500),
        Duration::from_millis(125),
        1 << 29,
        2,
    );
    full.started_at = Some(now());
    full.not_before = Some(now());
    insert(store, std::slice::from_ref(&full), None).await;
    assert_eq!(
        get(store, full.id).await,
        full,
        "commit_and_get: round trip"
    );

    let mut owned = record("acme", TaskStatus::Queued);
    let mut done = record("acme", TaskStatus::Failed);
    done.reason = Some(Reason::Cancelled);
    insert(store, &[owned.clone(), done.clone()], Some("c1")).await;
    owned.owner = Some("c1".into());
    assert_eq!(
        get(store, owned.id).await,
        owned,
        "commit_and_get: inserts are owned by the batch's owner"
    );
    assert_eq!(
        get(store, done.id).await.owner,
        None,
        "commit_and_get: a final task has no owner"
    );
    assert!(store.get(TaskId::new()).await.expect("get").is_none());

    let types: Vec<_> = store
        .events(full.id)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.ty)
        .collect();
    assert_eq!(
        types,
        [event_types::TASK_SUBMITTED, event_types::TASK_QUEUED],
        "commit_and_get: events in order"
    );
    let transitions = store.transitions(full.id).await.expect("transitions");
    let steps: Vec<_> = transitions.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        steps,
        [
            (None, TaskStatus::Submitted),
            (Some(TaskStatus::Submitted), TaskStatus::Queued)
        ],
        "commit_and_get: submission transitions"
    );

    let unfinished = ids(&store.unfinished().await.expect("unfinished"));
    assert!(unfinished.contains(&full.id) && unfinished.contains(&owned.id));
    assert!(!unfinished.contains(&done.id), "commit_and_get: unfinished");

    insert(store, &[record("globex", TaskStatus::Queued)], None).await;
    let acme = store
        .count_by_status(Some(&tenant("acme")))
        .await
        .expect("count");
    assert_eq!(
        acme,
        [(TaskStatus::Queued, 2), (TaskStatus::Failed, 1)],
        "commit_and_get: counts per status"
    );
    let all = store.count_by_status(None).await.expect("count");
    assert_eq!(all, [(TaskStatus::Queued, 3), (TaskStatus::Failed, 1)]);
}

/// Tenant isolation, filters by status, template, labels and submission time, and
/// cursor pagination, newest first.
pub async fn list_filters_and_pages(store: &dyn HistoryStore) {
    let base = now() - chrono::Duration::hours(1);
    let mut acme = Vec::new();
    for (i, id) in ordered_ids(30).into_iter().enumerate() {
        let status = match i % 3 {
            0 => TaskStatus::Queued,
            1 => TaskStatus::Running,
            _ => TaskStatus::Succeeded,
        };
        let mut r = record_with_id(id, "acme", status);
        r.template = if i % 2 == 0 { "render" } else { "train" }.into();
        r.labels.insert("kind".into(), format!("k{}", i % 3));
        if i % 5 == 0 {
            r.labels.insert("project".into(), "apollo".into());
        }
        r.submitted_at = base + chrono::Duration::seconds(i as i64);
        acme.push(r);
    }
    insert(store, &acme, None).await;
    let mut other = record("globex", TaskStatus::Queued);
    other.template = "render".into();
    other.labels.insert("kind".into(), "k0".into());
    insert(store, &[other], None).await;

    let newest_first = |filter: &dyn Fn(usize, &TaskRecord) -> bool| -> Vec<TaskId> {
        acme.iter()
            .enumerate()
            .rev()
            .filter(|(i, r)| filter(*i, r))
            .map(|(_, r)| r.id)
            .collect()
    };
    let acme_tenant = &tenant("acme");
    let list =
        |q: TaskQuery| async move { store.list(acme_tenant, &q.limit(1000)).await.expect("list") };

    let page = list(TaskQuery::new()).await;
    assert_eq!(ids(&page.tasks), newest_first(&|_, _| true), "list: all");
    assert_eq!(page.next_cursor, None);
    assert_eq!(page.tasks[29], acme[0], "list: records as written");
    assert_eq!(
        store
            .list(&tenant("nobody"), &TaskQuery::new())
            .await
            .expect("list")
            .tasks
            .len(),
        0,
        "list: tenant isolation"
    );

    let q = TaskQuery::new().status(TaskStatus::Running);
    assert_eq!(
        ids(&list(q).await.tasks),
        newest_first(&|i, _| i % 3 == 1),
        "list: by status"
    );
    let q = TaskQuery::new()
        .status(TaskStatus::Queued)
        .status(TaskStatus::Succeeded);
    assert_eq!(
        ids(&list(q).await.tasks),
        newest_first(&|i, _| i % 3 != 1),
        "list: by statuses"
    );
    let q = TaskQuery::new().template("train");
    assert_eq!(
        ids(&list(q).await.tasks),
        newest_first(&|i, _| i % 2 == 1),
        "list: by template"
    );
    let q = TaskQuery::new().label("kind", "k2");
    assert_eq!(
        ids(&list(q).await.tasks),
        newest_first(&|i, _| i % 3 == 2),
        "list: by label"
    );
    let q = TaskQuery::new()
        .label("kind", "k0")
        .label("project", "apollo");
    assert_eq!(
        ids(&list(q).await.tasks),
        newest_first(&|i, _| i % 15 == 0),
        "list: by two labels"
    );
    let q = TaskQuery::new().label("kind", "nope");
    assert!(list(q).await.tasks.is_empty(), "list: unknown label value");
    let q = TaskQuery::new().submitted_between(
        Some(base + chrono::Duration::seconds(5)),
        Some(base + chrono::Duration::seconds(15)),
    );
    assert_eq!(
        ids(&list(q).await.tasks),
        newest_first(&|i, _| (5..15).contains(&i)),
        "list: by submission time [after, before)"
    );
    let q = TaskQuery::new()
        .template("render")
        .status(TaskStatus::Queued)
        .label("kind", "k0")
        .submitted_between(Some(base + chrono::Duration::seconds(6)), None);
    assert_eq!(
        ids(&list(q).await.tasks),
        newest_first(&|i, _| i >= 6 && i % 2 == 0 && i % 3 == 0),
        "list: filters combined"
    );

    // Pages of 7: together, every task once, in order.
    for query in [TaskQuery::new(), TaskQuery::new().template("render")] {
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store
                .list(acme_tenant, &query.clone().limit(7).after(cursor))
                .await
                .expect("page");
            assert!(page.tasks.len() <= 7);
            seen.extend(ids(&page.tasks));
            pages += 1;
            assert!(pages < 10, "list: pagination does not end");
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let everything = ids(&list(query).await.tasks);
        assert_eq!(seen, everything, "list: pages together");
    }
    let page = store
        .list(acme_tenant, &TaskQuery::new().limit(10))
        .await
        .expect("list");
    assert_eq!(page.tasks.len(), 10);
    assert!(page.next_cursor.is_some(), "list: a full page has a cursor");
    let err = store
        .list(
            acme_tenant,
            &TaskQuery::new().after(Some("not-a-cursor".into())),
        )
        .await;
    assert!(
        matches!(err, Err(Error::InvalidCursor { .. })),
        "list: an invalid cursor is an error"
    );
}

/// The state machine is enforced, transitions are compare-and-set, and the events and
/// transitions of applied changes are recorded in order.
pub async fn transitions_are_checked_and_compare_and_set(store: &dyn HistoryStore) {
    let queued = record("acme", TaskStatus::Queued);
    insert(store, std::slice::from_ref(&queued), None).await;

    // Not allowed by the state machine: nothing is written.
    let mut bad = ChangeBatch::default();
    bad.transitions.push(transition(
        &queued,
        TaskStatus::Succeeded,
        event_types::TASK_SUCCEEDED,
    ));
    let err = store.commit(&bad).await.expect_err("invalid transition");
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");

    // Allowed: applied once; the same change again no longer matches `from`.
    let start = transition(&queued, TaskStatus::Running, event_types::TASK_STARTED);
    let running = start.record.clone();
    assert_eq!(commit_transitions(store, None, vec![start]).await, [true]);
    let again = transition(&queued, TaskStatus::Cancelled, event_types::TASK_CANCELLED);
    assert_eq!(
        commit_transitions(store, None, vec![again]).await,
        [false],
        "transitions: compare-and-set"
    );
    let stored = get(store, queued.id).await;
    assert_eq!(stored.status, TaskStatus::Running);
    assert_eq!(stored.started_at, running.started_at);

    // Two steps of one task in one batch apply in order.
    let retry = transition(&running, TaskStatus::Retrying, event_types::TASK_RETRYING);
    let mut retrying = retry.record.clone();
    retrying.reason = Some(Reason::Cancelled);
    let retry = Transition::new(TaskStatus::Running, retrying.clone(), retry.event);
    let requeue = transition(&retrying, TaskStatus::Queued, event_types::TASK_QUEUED);
    assert_eq!(
        commit_transitions(store, None, vec![retry, requeue]).await,
        [true, true],
        "transitions: two steps in one batch"
    );

    let types: Vec<_> = store
        .events(queued.id)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.ty)
        .collect();
    assert_eq!(
        types,
        [
            event_types::TASK_SUBMITTED,
            event_types::TASK_QUEUED,
            event_types::TASK_STARTED,
            event_types::TASK_RETRYING,
            event_types::TASK_QUEUED,
        ]
    );
    let steps: Vec<_> = store
        .transitions(queued.id)
        .await
        .expect("transitions")
        .into_iter()
        .map(|t| (t.from, t.to, t.reason))
        .collect();
    assert_eq!(
        steps,
        [
            (None, TaskStatus::Submitted, None),
            (Some(TaskStatus::Submitted), TaskStatus::Queued, None),
            (Some(TaskStatus::Queued), TaskStatus::Running, None),
            (
                Some(TaskStatus::Running),
                TaskStatus::Retrying,
                Some(Reason::Cancelled)
            ),
            (
                Some(TaskStatus::Retrying),
                TaskStatus::Queued,
                Some(Reason::Cancelled)
            ),
        ]
    );
}

/// A batch changes only the tasks its owner holds; a final transition clears the
/// owner; outputs are fenced the same way.
pub async fn commits_are_fenced_by_owner(store: &dyn HistoryStore) {
    let queued = record("acme", TaskStatus::Queued);
    insert(store, std::slice::from_ref(&queued), Some("c1")).await;

    let start = || transition(&queued, TaskStatus::Running, event_types::TASK_STARTED);
    assert_eq!(
        commit_transitions(store, Some("c2"), vec![start()]).await,
        [false],
        "fencing: another owner's batch is skipped"
    );
    assert_eq!(
        commit_transitions(store, None, vec![start()]).await,
        [false],
        "fencing: an unowned batch is skipped"
    );
    let t = start();
    let running = t.record.clone();
    assert_eq!(commit_transitions(store, Some("c1"), vec![t]).await, [true]);
    assert_eq!(get(store, queued.id).await.owner.as_deref(), Some("c1"));

    let write_output = |owner: &str, path: &str| ChangeBatch {
        owner: Some(owner.into()),
        outputs: vec![output(queued.id, path)],
        ..Default::default()
    };
    store
        .commit(&write_output("c2", "stolen.png"))
        .await
        .expect("commit");
    store
        .commit(&write_output("c1", "a.png"))
        .await
        .expect("commit");
    // The final transition and an output in one batch: both apply.
    let mut last = write_output("c1", "b.png");
    last.transitions.push(transition(
        &running,
        TaskStatus::Succeeded,
        event_types::TASK_SUCCEEDED,
    ));
    assert_eq!(store.commit(&last).await.expect("commit"), [true]);
    let done = get(store, queued.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(
        done.owner, None,
        "fencing: a final transition clears the owner"
    );
    store
        .commit(&write_output("c1", "late.png"))
        .await
        .expect("commit");
    let paths: Vec<_> = store
        .outputs(queued.id)
        .await
        .expect("outputs")
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(paths, ["a.png", "b.png"], "fencing: outputs");
    let outputs_evented = store
        .events(queued.id)
        .await
        .expect("events")
        .iter()
        .filter(|e| e.ty == event_types::TASK_OUTPUT_CREATED)
        .count();
    assert_eq!(
        outputs_evented, 2,
        "fencing: only applied outputs are evented"
    );
}

/// Acquire, renew, `LeaseHeld`, `force`, expiry.
pub async fn leases_acquire_renew_expire(store: &dyn HistoryStore) {
    let a = Lease::new("a", SHORT_TTL);
    store.acquire_lease(&a, false).await.expect("acquire");
    store
        .acquire_lease(&a, false)
        .await
        .expect("the same incarnation acquires again");
    let a2 = Lease::new("a", SHORT_TTL);
    match store.acquire_lease(&a2, false).await {
        Err(Error::LeaseHeld { owner, until }) => {
            assert_eq!(owner, "a");
            assert!(until > Utc::now() - chrono::Duration::seconds(1));
        }
        other => panic!("leases: a live lease must be held, got {other:?}"),
    }
    assert!(store.renew_lease(&a).await.expect("renew").alive);
    store.acquire_lease(&a2, true).await.expect("force");
    assert!(
        !store.renew_lease(&a).await.expect("renew").alive,
        "leases: a replaced incarnation is not alive"
    );
    assert!(store.renew_lease(&a2).await.expect("renew").alive);

    // Renewed within its ttl, a lease lives on.
    for _ in 0..4 {
        tokio::time::sleep(SHORT_TTL / 3).await;
        assert!(
            store.renew_lease(&a2).await.expect("renew").alive,
            "leases: renewal extends"
        );
    }
    tokio::time::sleep(PAST_SHORT_TTL).await;
    let renewal = store.renew_lease(&a2).await.expect("renew");
    assert!(!renewal.alive, "leases: an expired lease is not renewed");
    assert!(renewal.cancel_requested.is_empty());
    let a3 = Lease::new("a", SHORT_TTL);
    store
        .acquire_lease(&a3, false)
        .await
        .expect("an expired lease is replaced without force");
    assert!(store.renew_lease(&a3).await.expect("renew").alive);

    let unknown = Lease::new("never-acquired", LONG_TTL);
    assert!(!store.renew_lease(&unknown).await.expect("renew").alive);
    assert!(
        store.claim(&unknown, 10).await.expect("claim").is_empty(),
        "leases: no claims without a lease"
    );
}

/// Releasing a lease unowns its queued tasks, keeps its running ones owned, and lets
/// another coordinator take those over at once.
pub async fn release_unowns_queued_tasks(store: &dyn HistoryStore) {
    let l = Lease::new("leaving", LONG_TTL);
    store.acquire_lease(&l, false).await.expect("acquire");
    let tasks: Vec<_> = (0..3).map(|_| record("acme", TaskStatus::Queued)).collect();
    insert(store, &tasks, None).await;
    let claimed = store.claim(&l, 10).await.expect("claim");
    assert_eq!(claimed.len(), 3);
    assert!(
        claimed
            .iter()
            .all(|r| r.owner.as_deref() == Some("leaving"))
    );
    let start = transition(&claimed[0], TaskStatus::Running, event_types::TASK_STARTED);
    assert_eq!(
        commit_transitions(store, Some("leaving"), vec![start]).await,
        [true]
    );

    store.release_lease(&l).await.expect("release");
    assert_eq!(
        ids(&store.owned("leaving").await.expect("owned")),
        [claimed[0].id],
        "release: running tasks stay owned"
    );
    for r in &claimed[1..] {
        assert_eq!(
            get(store, r.id).await.owner,
            None,
            "release: queued tasks are unowned"
        );
    }
    assert!(!store.renew_lease(&l).await.expect("renew").alive);

    let m = Lease::new("staying", LONG_TTL);
    store.acquire_lease(&m, false).await.expect("acquire");
    let taken = store.take_over(&m, 10).await.expect("take over");
    assert_eq!(
        ids(&taken),
        [claimed[0].id],
        "release: a released lease's tasks are taken over at once"
    );
    assert_eq!(taken[0].owner.as_deref(), Some("staying"));
    let mut rest = ids(&store.claim(&m, 10).await.expect("claim"));
    rest.sort();
    let mut want = ids(&claimed[1..]);
    want.sort();
    assert_eq!(rest, want);
}

/// Claims take unowned submitted/queued tasks, highest priority first, then oldest.
pub async fn claim_order(store: &dyn HistoryStore) {
    let l = Lease::new("claimer", LONG_TTL);
    store.acquire_lease(&l, false).await.expect("acquire");
    let order = ordered_ids(6);
    let mut tasks = Vec::new();
    for (id, priority) in order.iter().zip([0, 5, 5, 1, 0, 9]) {
        let mut r = record_with_id(*id, "acme", TaskStatus::Queued);
        r.priority = priority;
        tasks.push(r);
    }
    tasks[0].status = TaskStatus::Submitted;
    // Not claimable: running, retrying, owned by another.
    tasks[5].status = TaskStatus::Running;
    let mut retrying = record("acme", TaskStatus::Retrying);
    retrying.priority = 100;
    let mut others = record("acme", TaskStatus::Queued);
    others.priority = 100;
    insert(store, &tasks, None).await;
    insert(store, &[retrying], None).await;
    insert(store, &[others], Some("someone-else")).await;

    let first = store.claim(&l, 2).await.expect("claim");
    assert_eq!(
        ids(&first),
        [tasks[1].id, tasks[2].id],
        "claim: priority first, then oldest"
    );
    assert!(first.iter().all(|r| r.owner.as_deref() == Some("claimer")));
    let rest = store.claim(&l, 10).await.expect("claim");
    assert_eq!(
        ids(&rest),
        [tasks[3].id, tasks[0].id, tasks[4].id],
        "claim: the rest, in order"
    );
    assert!(store.claim(&l, 10).await.expect("claim").is_empty());
    assert_eq!(
        get(store, tasks[0].id).await.owner.as_deref(),
        Some("claimer")
    );
    let mut owned = ids(&store.owned("claimer").await.expect("owned"));
    owned.sort();
    let mut want = ids(&tasks[..5]);
    want.sort();
    assert_eq!(owned, want, "claim: owned");
}

/// Eight coordinators claiming at once never get the same task.
pub async fn claims_are_exclusive(store: Arc<dyn HistoryStore>) {
    const TASKS: usize = 500;
    const CLAIMERS: usize = 8;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let mut r = record("acme", TaskStatus::Queued);
            r.priority = (i % 4) as i32;
            r
        })
        .collect();
    insert(&*store, &tasks, None).await;
    let mut handles = Vec::new();
    for i in 0..CLAIMERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let lease = Lease::new(format!("claimer-{i}"), LONG_TTL);
            store.acquire_lease(&lease, false).await.expect("acquire");
            let mut mine = Vec::new();
            loop {
                let got = store.claim(&lease, 7).await.expect("claim");
                if got.is_empty() {
                    break;
                }
                assert!(
                    got.iter()
                        .all(|r| r.owner.as_deref() == Some(lease.owner.as_str()))
                );
                mine.extend(got.into_iter().map(|r| (r.id, lease.owner.clone())));
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for h in handles {
        claimed.extend(h.await.expect("claimer"));
    }
    let unique: HashSet<_> = claimed.iter().map(|(id, _)| *id).collect();
    assert_eq!(unique.len(), claimed.len(), "claims: a task claimed twice");
    assert_eq!(claimed.len(), TASKS, "claims: every task claimed");
    for (id, owner) in claimed.iter().step_by(37) {
        assert_eq!(get(&*store, *id).await.owner.as_ref(), Some(owner));
    }
}

/// Tasks of an expired lease (or of an owner without one) are taken over, and only
/// those; the old owner's commits are then fenced off.
pub async fn take_over_after_expiry(store: &dyn HistoryStore) {
    let a = Lease::new("a", SHORT_TTL);
    let b = Lease::new("b", LONG_TTL);
    store.acquire_lease(&a, false).await.expect("acquire");
    store.acquire_lease(&b, false).await.expect("acquire");
    let tasks: Vec<_> = ordered_ids(4)
        .into_iter()
        .map(|id| record_with_id(id, "acme", TaskStatus::Queued))
        .collect();
    insert(store, &tasks, None).await;
    assert_eq!(store.claim(&a, 10).await.expect("claim").len(), 4);
    let start = transition(&tasks[3], TaskStatus::Running, event_types::TASK_STARTED);
    let running = start.record.clone();
    assert_eq!(
        commit_transitions(store, Some("a"), vec![start]).await,
        [true]
    );
    let ghost = record("acme", TaskStatus::Running);
    insert(store, std::slice::from_ref(&ghost), Some("ghost")).await;

    let taken = store.take_over(&b, 10).await.expect("take over");
    assert_eq!(
        ids(&taken),
        [ghost.id],
        "take_over: only tasks whose owner has no live lease"
    );
    assert_eq!(taken[0].owner.as_deref(), Some("b"));

    tokio::time::sleep(PAST_SHORT_TTL).await;
    let dead = Lease::new("nobody", LONG_TTL);
    assert!(
        store
            .take_over(&dead, 10)
            .await
            .expect("take over")
            .is_empty()
    );
    let first = store.take_over(&b, 2).await.expect("take over");
    assert_eq!(
        ids(&first),
        ids(&tasks[..2]),
        "take_over: at most max, oldest first"
    );
    let second = store.take_over(&b, 10).await.expect("take over");
    assert_eq!(ids(&second), ids(&tasks[2..]));
    assert!(store.take_over(&b, 10).await.expect("take over").is_empty());
    assert!(second.iter().all(|r| r.owner.as_deref() == Some("b")));
    assert!(store.owned("a").await.expect("owned").is_empty());
    assert_eq!(store.owned("b").await.expect("owned").len(), 5);

    // The old owner can no longer change its former task.
    let finish = transition(&running, TaskStatus::Succeeded, event_types::TASK_SUCCEEDED);
    assert_eq!(
        commit_transitions(store, Some("a"), vec![finish.clone()]).await,
        [false],
        "take_over: the old owner is fenced off"
    );
    assert!(!store.renew_lease(&a).await.expect("renew").alive);
    assert_eq!(
        commit_transitions(store, Some("b"), vec![finish]).await,
        [true]
    );
    // The expired lease, owning nothing, was removed: the id is free again.
    store
        .acquire_lease(&Lease::new("a", LONG_TTL), false)
        .await
        .expect("acquire a freed id");
}

/// Cancellation requests reach the owner through renewals until the task is final.
pub async fn cancel_requests(store: &dyn HistoryStore) {
    let l = Lease::new("runner", LONG_TTL);
    store.acquire_lease(&l, false).await.expect("acquire");
    let t1 = record("acme", TaskStatus::Queued);
    let t2 = record("acme", TaskStatus::Queued);
    insert(store, &[t1.clone(), t2.clone()], None).await;
    assert_eq!(store.claim(&l, 10).await.expect("claim").len(), 2);
    assert!(
        store
            .renew_lease(&l)
            .await
            .expect("renew")
            .cancel_requested
            .is_empty()
    );

    assert!(store.request_cancel(t1.id).await.expect("request"));
    for _ in 0..2 {
        let renewal = store.renew_lease(&l).await.expect("renew");
        assert!(renewal.alive);
        assert_eq!(
            renewal.cancel_requested,
            [t1.id],
            "cancel: reported until final"
        );
    }
    let cancel = transition(&t1, TaskStatus::Cancelled, event_types::TASK_CANCELLED);
    assert_eq!(
        commit_transitions(store, Some("runner"), vec![cancel]).await,
        [true]
    );
    assert!(
        store
            .renew_lease(&l)
            .await
            .expect("renew")
            .cancel_requested
            .is_empty()
    );
    assert!(
        !store.request_cancel(t1.id).await.expect("request"),
        "cancel: a final task"
    );
    assert!(
        !store.request_cancel(TaskId::new()).await.expect("request"),
        "cancel: an unknown task"
    );

    // Requested while unowned: the claimer hears of it.
    let t3 = record("acme", TaskStatus::Queued);
    insert(store, std::slice::from_ref(&t3), None).await;
    assert!(store.request_cancel(t3.id).await.expect("request"));
    assert_eq!(ids(&store.claim(&l, 10).await.expect("claim")), [t3.id]);
    assert_eq!(
        store.renew_lease(&l).await.expect("renew").cancel_requested,
        [t3.id]
    );
    let _ = t2;
}

/// Pruning deletes finished tasks older than the cutoff, oldest first, in batches,
/// with their events, outputs and labels.
pub async fn prune_deletes_finished_tasks(store: &dyn HistoryStore) {
    let old = now() - chrono::Duration::hours(2);
    let mut expired = Vec::new();
    for i in 0..5 {
        let mut r = record("acme", TaskStatus::Succeeded);
        r.finished_at = Some(old + chrono::Duration::seconds(i));
        r.labels.insert("kind".into(), "old".into());
        expired.push(r);
    }
    // Inserted newest first: pruning goes by finish time, not by id.
    expired.reverse();
    let mut recent = record("acme", TaskStatus::Failed);
    recent.labels.insert("kind".into(), "old".into());
    let running = record("acme", TaskStatus::Running);
    insert(store, &expired, None).await;
    insert(store, &[recent.clone(), running.clone()], None).await;
    let mut batch = ChangeBatch::default();
    batch.outputs.push(output(expired[0].id, "frame.png"));
    store.commit(&batch).await.expect("output");
    assert_eq!(
        store.outputs(expired[0].id).await.expect("outputs").len(),
        1
    );

    let cutoff = now() - chrono::Duration::hours(1);
    let first = store.prune(cutoff, 2).await.expect("prune");
    let first_ids: Vec<_> = first.iter().map(|p| p.id).collect();
    assert_eq!(
        first_ids,
        [expired[4].id, expired[3].id],
        "prune: oldest finished first, at most `batch`"
    );
    assert_eq!(first[0].task_dir, expired[4].spec.task_dir);
    assert_eq!(first[0].tenant, tenant("acme"));
    let mut total = first.len();
    loop {
        let more = store.prune(cutoff, 2).await.expect("prune");
        if more.is_empty() {
            break;
        }
        total += more.len();
    }
    assert_eq!(total, 5, "prune: every expired task");
    for r in &expired {
        assert!(store.get(r.id).await.expect("get").is_none());
        assert!(store.events(r.id).await.expect("events").is_empty());
        assert!(store.outputs(r.id).await.expect("outputs").is_empty());
    }
    let labelled = store
        .list(&tenant("acme"), &TaskQuery::new().label("kind", "old"))
        .await
        .expect("list");
    assert_eq!(ids(&labelled.tasks), [recent.id], "prune: labels too");
    assert!(store.get(running.id).await.expect("get").is_some());
    assert_eq!(store.events(recent.id).await.expect("events").len(), 2);
}

/// A transition stores the attempt's spec: a task claimed by a coordinator runs under
/// that coordinator's root, and reads (and pruning) find it there.
pub async fn transitions_store_the_attempt_spec(store: &dyn HistoryStore) {
    let queued = record("acme", TaskStatus::Queued);
    insert(store, std::slice::from_ref(&queued), Some("c1")).await;
    let mut t = transition(&queued, TaskStatus::Running, event_types::TASK_STARTED);
    t.record.attempt = 1;
    t.record.spec.attempt = 1;
    t.record.spec.task_dir = "/srv/c1/acme/task".into();
    assert_eq!(
        commit_transitions(store, Some("c1"), vec![t.clone()]).await,
        [true]
    );
    let running = get(store, queued.id).await;
    assert_eq!(running.spec.task_dir, t.record.spec.task_dir);
    assert_eq!(running.spec.attempt, 1);
    let mut done = transition(&running, TaskStatus::Succeeded, event_types::TASK_SUCCEEDED);
    done.record.finished_at = Some(now() - chrono::Duration::hours(2));
    assert_eq!(
        commit_transitions(store, Some("c1"), vec![done]).await,
        [true]
    );
    let pruned = store
        .prune(now() - chrono::Duration::hours(1), 10)
        .await
        .expect("prune");
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].task_dir, t.record.spec.task_dir);
}

/// A preempted attempt's usage, kept apart in `preempted_usage` by the transition
/// that requeues the task, is stored with every later transition, through to the final
/// one.
pub async fn preempted_usage_is_kept(store: &dyn HistoryStore) {
    let queued = record("acme", TaskStatus::Queued);
    insert(store, std::slice::from_ref(&queued), Some("c1")).await;
    let start = transition(&queued, TaskStatus::Running, event_types::TASK_STARTED);
    let first = Usage::new(Duration::from_secs(90), Duration::from_secs(80), 1 << 30, 1);
    let mut preempted = transition(
        &start.record,
        TaskStatus::Queued,
        event_types::TASK_PREEMPTED,
    );
    preempted.record.reason = Some(Reason::Preempted);
    preempted.record.usage = first;
    preempted.record.preempted_usage = first;
    assert_eq!(
        commit_transitions(store, Some("c1"), vec![start, preempted.clone()]).await,
        [true, true]
    );
    // (A single-node store may not keep the owner: only the rest is compared.)
    assert_eq!(
        TaskRecord {
            owner: None,
            ..get(store, queued.id).await
        },
        preempted.record,
        "preempted_usage_is_kept: the requeued task"
    );
    let mut again = transition(
        &preempted.record,
        TaskStatus::Running,
        event_types::TASK_STARTED,
    );
    again.record.attempt = 2;
    let mut done = transition(
        &again.record,
        TaskStatus::Succeeded,
        event_types::TASK_SUCCEEDED,
    );
    done.record.usage.accumulate(&Usage::new(
        Duration::from_secs(30),
        Duration::from_secs(20),
        1 << 28,
        1,
    ));
    assert_eq!(
        commit_transitions(store, Some("c1"), vec![again, done.clone()]).await,
        [true, true]
    );
    let finished = get(store, queued.id).await;
    assert_eq!(
        finished, done.record,
        "preempted_usage_is_kept: the final record"
    );
    assert_eq!(finished.preempted_usage, first);
    assert_eq!(finished.usage.wall_time, Duration::from_secs(120));
}

/// The events of applied changes, and only those, reach the store's outbox in order.
/// `bus` is the store's outbox (or the bus it feeds).
pub async fn events_reach_the_outbox(store: &dyn HistoryStore, bus: &dyn EventBus) {
    bus.subscribe("testkit-audit", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let queued = record("acme", TaskStatus::Queued);
    insert(store, std::slice::from_ref(&queued), Some("c1")).await;
    let start = transition(&queued, TaskStatus::Running, event_types::TASK_STARTED);
    let skipped = transition(&queued, TaskStatus::Cancelled, event_types::TASK_CANCELLED);
    assert_eq!(
        commit_transitions(store, Some("c1"), vec![start]).await,
        [true]
    );
    assert_eq!(
        commit_transitions(store, Some("c1"), vec![skipped]).await,
        [false]
    );
    let batch = ChangeBatch {
        owner: Some("c1".into()),
        outputs: vec![output(queued.id, "out.txt")],
        ..Default::default()
    };
    store.commit(&batch).await.expect("output");

    let want: Vec<_> = store
        .events(queued.id)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(want.len(), 4);
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < want.len() && tokio::time::Instant::now() < deadline {
        let deliveries = bus
            .fetch("testkit-audit", 10, Duration::from_millis(500))
            .await
            .expect("fetch");
        let tags: Vec<_> = deliveries.iter().map(|d| d.tag).collect();
        got.extend(deliveries.into_iter().map(|d| d.event.id));
        if !tags.is_empty() {
            bus.ack("testkit-audit", &tags).await.expect("ack");
        }
    }
    assert_eq!(
        got, want,
        "outbox: exactly the applied changes' events, in order"
    );
}

/// Statistics per template: counts by outcome, waits and run times, summed usage, within
/// one tenant and the submission window, over more than one page of `list`.
pub async fn stats_per_template(store: &dyn HistoryStore) {
    let base = now() - chrono::Duration::hours(1);
    let at = |secs: i64| base + chrono::Duration::seconds(secs);
    // (template, status, submitted, wait, run) in seconds.
    let specs = [
        ("render", TaskStatus::Succeeded, 0, Some(2), Some(10)),
        ("render", TaskStatus::Failed, 1, Some(4), Some(20)),
        ("render", TaskStatus::TimedOut, 2, Some(6), Some(30)),
        ("render", TaskStatus::Cancelled, 3, None, None),
        ("render", TaskStatus::Running, 4, Some(8), None),
        ("train", TaskStatus::Succeeded, 5, Some(1), Some(1)),
        // Outside the window: before `since`, at `until`.
        ("render", TaskStatus::Succeeded, -60, Some(100), Some(100)),
        ("render", TaskStatus::Succeeded, 600, Some(100), Some(100)),
        ("render", TaskStatus::Queued, 601, None, None),
    ];
    let mut records = Vec::new();
    for (template, status, submitted, wait, run) in specs {
        let mut r = record("acme", status);
        r.template = template.into();
        r.submitted_at = at(submitted);
        r.started_at = wait.map(|w| at(submitted + w));
        r.finished_at = match (wait, run) {
            (Some(w), Some(run)) => Some(at(submitted + w + run)),
            _ if status.is_final() => Some(at(submitted + 1)),
            _ => None,
        };
        let wall = run.unwrap_or(0) as u64;
        r.usage = Usage::new(
            Duration::from_secs(wall),
            Duration::from_secs(wall / 2),
            1 << 20,
            1,
        );
        records.push(r);
    }
    // Enough quick tasks of a third template to need more than one page.
    let bulk = 1001;
    for i in 0..bulk {
        let mut r = record("acme", TaskStatus::Succeeded);
        r.template = "bulk".into();
        r.submitted_at = at(10 + i % 100);
        r.started_at = Some(r.submitted_at + chrono::Duration::milliseconds(250));
        r.finished_at = Some(r.submitted_at + chrono::Duration::seconds(1));
        records.push(r);
    }
    let mut other = record("globex", TaskStatus::Succeeded);
    other.template = "render".into();
    other.submitted_at = at(0);
    records.push(other);
    insert(store, &records, None).await;

    let query = StatsQuery::new().since(at(0)).until(at(600));
    let stats = store.stats(&tenant("acme"), &query).await.expect("stats");
    let names: Vec<(&str, &str)> = stats
        .iter()
        .map(|s| (s.tenant.as_str(), s.template.as_str()))
        .collect();
    assert_eq!(
        names,
        [("acme", "bulk"), ("acme", "render"), ("acme", "train")],
        "stats: one row per template of the tenant, sorted"
    );
    let secs = Duration::from_secs;

    let bulk_stats = &stats[0];
    assert_eq!(bulk_stats.tasks, bulk as u64, "stats: every page counted");
    assert_eq!(bulk_stats.succeeded, bulk as u64);
    assert_eq!(bulk_stats.wait_max, Duration::from_millis(250));
    assert_eq!(bulk_stats.run_p95, Duration::from_millis(750));

    let render = &stats[1];
    assert_eq!(
        (
            render.tasks,
            render.succeeded,
            render.failed,
            render.cancelled,
            render.started
        ),
        (4, 1, 2, 1, 4),
        "stats: counts (failed includes timed out; waits include running tasks)"
    );
    assert_eq!(
        (
            render.wait_mean,
            render.wait_p50,
            render.wait_p95,
            render.wait_max
        ),
        (secs(5), secs(4), secs(8), secs(8)),
        "stats: waits"
    );
    assert_eq!(
        (render.run_mean, render.run_p95),
        (secs(20), secs(30)),
        "stats: run times"
    );
    assert_eq!(render.usage.wall_time, secs(60), "stats: usage summed");
    assert_eq!(render.usage.cpu_time, secs(30));
    assert_eq!(render.usage.gpu_seconds, 60.0);

    let train = &stats[2];
    assert_eq!((train.tasks, train.succeeded), (1, 1));
    assert_eq!((train.wait_max, train.run_mean), (secs(1), secs(1)));

    let all = store
        .stats(&tenant("acme"), &StatsQuery::new())
        .await
        .expect("stats");
    let render_all = all.iter().find(|s| s.template == "render").expect("render");
    assert_eq!(render_all.tasks, 6, "stats: no window, every task");
    let nobody = store.stats(&tenant("nobody"), &StatsQuery::new()).await;
    assert_eq!(nobody.expect("stats"), [], "stats: unknown tenant");
}
