//! Task history: every task, its transitions and events, outputs and usage.
//!
//! [`HistoryStore`] is the contract; [`SqliteHistory`] the embedded default. A store
//! writes each state change and its event in one transaction (through the event
//! outbox of `ops-events`), so history and the event stream never disagree.

mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Environment, Event, Labels, Reason, TaskId, TaskStatus, Tenant, Usage};
use serde::{Deserialize, Serialize};

use crate::template::RetryPolicy;
use crate::{LaunchSpec, Result, RunHandle};

pub use sqlite::SqliteHistory;

/// Everything known about one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task.
    pub id: TaskId,
    /// Its owner.
    pub tenant: Tenant,
    /// Its environment.
    pub environment: Environment,
    /// The template it was made from.
    pub template: String,
    /// Where it is in its lifecycle.
    pub status: TaskStatus,
    /// Why it is in that state (final and retrying states).
    pub reason: Option<Reason>,
    /// Human-readable detail for the reason.
    pub message: Option<String>,
    /// Exit code of the last attempt, if it exited.
    pub exit_code: Option<i32>,
    /// Higher runs first.
    pub priority: i32,
    /// Current (or last) attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed in total.
    pub max_attempts: u32,
    /// Labels given at submission (template labels merged in).
    pub labels: Labels,
    /// The parameters as submitted (after defaults).
    pub parameters: serde_json::Value,
    /// The rendered attempt specification.
    pub spec: LaunchSpec,
    /// The retry policy in force.
    pub retry: RetryPolicy,
    /// Where the executor runs the current attempt (for re-attaching after a restart).
    pub run_handle: Option<RunHandle>,
    /// Usage summed over all attempts.
    pub usage: Usage,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// A retrying task waits until then.
    pub not_before: Option<DateTime<Utc>>,
}

/// A state change to apply atomically with its event.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Transition {
    /// The task.
    pub task_id: TaskId,
    /// The status the task must be in (compare-and-set); otherwise the change is skipped.
    pub from: TaskStatus,
    /// The new status.
    pub to: TaskStatus,
    /// The record after the change (the store writes its mutable fields).
    pub record: TaskRecord,
    /// The event announcing the change.
    pub event: Event,
}

impl Transition {
    /// A change of `record` (already holding the new status and fields) from `from`,
    /// announced by `event`.
    pub fn new(from: TaskStatus, record: TaskRecord, event: Event) -> Self {
        Self {
            task_id: record.id,
            from,
            to: record.status,
            record,
            event,
        }
    }
}

/// A file a task produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutputRecord {
    /// The task.
    pub task_id: TaskId,
    /// Path relative to the task directory.
    pub path: String,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// Size in bytes when seen.
    pub size: u64,
    /// When it was seen.
    pub created_at: DateTime<Utc>,
}

/// A recorded transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TransitionRecord {
    /// Status before (`None` for the first).
    pub from: Option<TaskStatus>,
    /// Status after.
    pub to: TaskStatus,
    /// Reason, if any.
    pub reason: Option<Reason>,
    /// When.
    pub at: DateTime<Utc>,
    /// The event that announced it.
    pub event_id: ops_core::EventId,
}

/// Writes applied together in one transaction.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ChangeBatch {
    /// New tasks, each with its events (e.g. `submitted` and `queued`).
    pub inserts: Vec<(TaskRecord, Vec<Event>)>,
    /// Status changes.
    pub transitions: Vec<Transition>,
    /// Outputs, each with its `ops.task.output.created` event.
    pub outputs: Vec<(OutputRecord, Event)>,
}

impl ChangeBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.transitions.is_empty() && self.outputs.is_empty()
    }

    /// All events in the batch, in write order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.inserts
            .iter()
            .flat_map(|(_, e)| e.iter())
            .chain(self.transitions.iter().map(|t| &t.event))
            .chain(self.outputs.iter().map(|(_, e)| e))
    }
}

/// A query over one tenant's tasks, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskQuery {
    /// Whose tasks (required: queries never cross tenants).
    pub tenant: Tenant,
    /// Any of these statuses (empty: all).
    #[serde(default)]
    pub statuses: Vec<TaskStatus>,
    /// Only this template.
    #[serde(default)]
    pub template: Option<String>,
    /// Tasks carrying all of these labels.
    #[serde(default)]
    pub labels: Labels,
    /// Submitted at or after.
    #[serde(default)]
    pub submitted_after: Option<DateTime<Utc>>,
    /// Submitted before.
    #[serde(default)]
    pub submitted_before: Option<DateTime<Utc>>,
    /// Page size (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Continue after this cursor (from a previous [`TaskPage::next_cursor`]).
    #[serde(default)]
    pub cursor: Option<String>,
}

impl TaskQuery {
    /// All tasks of a tenant.
    pub fn tenant(tenant: impl Into<Tenant>) -> Self {
        Self {
            tenant: tenant.into(),
            statuses: Vec::new(),
            template: None,
            labels: Labels::new(),
            submitted_after: None,
            submitted_before: None,
            limit: None,
            cursor: None,
        }
    }
    /// Restricts to a status (may be called several times).
    pub fn status(mut self, status: TaskStatus) -> Self {
        self.statuses.push(status);
        self
    }
    /// Restricts to a template.
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }
    /// Requires a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    /// Restricts to a submission time range `[after, before)`.
    pub fn submitted_between(
        mut self,
        after: Option<DateTime<Utc>>,
        before: Option<DateTime<Utc>>,
    ) -> Self {
        self.submitted_after = after;
        self.submitted_before = before;
        self
    }
    /// Sets the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
    /// Continues from a cursor.
    pub fn after(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// One page of a [`TaskQuery`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskPage {
    /// The tasks, newest first.
    pub tasks: Vec<TaskRecord>,
    /// Pass to [`TaskQuery::after`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Stores tasks, their transitions, events, outputs and usage.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Applies a batch in one transaction: inserts, then transitions (each applied only
    /// if the task is still in `from`), then outputs; every applied change's event is
    /// written in the same transaction. Returns, per transition, whether it applied.
    async fn commit(&self, batch: &ChangeBatch) -> Result<Vec<bool>>;

    /// A task by id, whoever owns it (the facade checks the tenant).
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>>;

    /// A page of a tenant's tasks.
    async fn list(&self, query: &TaskQuery) -> Result<TaskPage>;

    /// A task's events in order.
    async fn events(&self, id: TaskId) -> Result<Vec<Event>>;

    /// A task's transitions in order.
    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionRecord>>;

    /// A task's outputs.
    async fn outputs(&self, id: TaskId) -> Result<Vec<OutputRecord>>;

    /// Every task not in a final state (for recovery after a restart).
    async fn unfinished(&self) -> Result<Vec<TaskRecord>>;

    /// Deletes up to `batch` tasks that finished before `cutoff`, with their events,
    /// outputs and labels. Returns the ids deleted (empty when nothing is left).
    async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Vec<TaskRecord>>;

    /// Number of tasks per status for a tenant (all tenants when `None`).
    async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>>;
}

#[async_trait]
impl<T: HistoryStore + ?Sized> HistoryStore for std::sync::Arc<T> {
    async fn commit(&self, batch: &ChangeBatch) -> Result<Vec<bool>> {
        (**self).commit(batch).await
    }
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        (**self).get(id).await
    }
    async fn list(&self, query: &TaskQuery) -> Result<TaskPage> {
        (**self).list(query).await
    }
    async fn events(&self, id: TaskId) -> Result<Vec<Event>> {
        (**self).events(id).await
    }
    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionRecord>> {
        (**self).transitions(id).await
    }
    async fn outputs(&self, id: TaskId) -> Result<Vec<OutputRecord>> {
        (**self).outputs(id).await
    }
    async fn unfinished(&self) -> Result<Vec<TaskRecord>> {
        (**self).unfinished().await
    }
    async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Vec<TaskRecord>> {
        (**self).prune(cutoff, batch).await
    }
    async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>> {
        (**self).count_by_status(tenant).await
    }
}
