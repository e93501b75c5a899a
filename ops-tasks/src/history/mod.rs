//! Task history: every task, its transitions and events, outputs and usage.
//!
//! The contract is split by role: [`HistoryReader`] (tenant queries, by id and by page),
//! [`HistoryWriter`] (commits and retention) and [`Leases`] (several coordinators on
//! one store, with provided single-node methods a store may keep); [`HistoryStore`] is
//! all three. `SqliteHistory` (feature `sqlite`, the embedded default) and
//! `PostgresHistory` (feature `postgres`, the store several coordinators share)
//! implement all of it. A store writes each state change and its event in one
//! transaction (through the event outbox of `ops-events`), so history and the event
//! stream never disagree.
//!
//! Every backend passes the same conformance suite (`ops_tasks::testkit::history`,
//! feature `testkit`). Their schemas are kept in step: `migrations/sqlite` and
//! `migrations/postgres` hold the same versions under the same names.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stats;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Environment, Event, Labels, Reason, TaskId, TaskStatus, Tenant, Usage};
use serde::{Deserialize, Serialize};

use crate::template::RetryPolicy;
use crate::{LaunchSpec, Result, RunHandle};

#[cfg(feature = "postgres")]
pub use postgres::{PostgresHistory, PostgresHistoryConfig};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteHistory;
pub use stats::{StatsQuery, TemplateStats, aggregate};

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
    /// Usage summed over all attempts (preempted ones included).
    pub usage: Usage,
    /// The part of [`usage`](Self::usage) that preempted attempts consumed: billing
    /// rates it attempt by attempt from their `ops.task.preempted` events, not with
    /// the final one. Zero for tasks recorded before it was kept.
    #[serde(default)]
    pub preempted_usage: Usage,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// A retrying task waits until then.
    pub not_before: Option<DateTime<Utc>>,
    /// The coordinator that holds this unfinished task (see [`Lease`]); `None` while
    /// it waits to be claimed, and again once it is final.
    #[serde(default)]
    pub owner: Option<String>,
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
    /// The coordinator writing the batch (fencing): inserts are owned by it, and a
    /// transition or output applies only while the task's owner is still this one
    /// (`None` matches unowned tasks only). A transition to a final status clears the
    /// owner; outputs of a task that this same batch made final still apply.
    pub owner: Option<String>,
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

/// A task deleted by [`HistoryWriter::prune`]: what the caller needs to clean up after
/// it (the full record is not read back, so that pruning stays cheap).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrunedTask {
    /// The task.
    pub id: TaskId,
    /// Its owner.
    pub tenant: Tenant,
    /// Its directory (`LaunchSpec::task_dir`), to be removed by the caller.
    pub task_dir: std::path::PathBuf,
}

/// A query over one tenant's tasks, newest first. The tenant is not part of it: a
/// query always runs for one tenant, given beside it
/// ([`TenantTasks::list`](crate::TenantTasks::list), [`HistoryReader::list`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TaskQuery {
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
    /// All tasks (of the tenant it runs for).
    pub fn new() -> Self {
        Self::default()
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

/// A coordinator's lease: its claim on the tasks it owns in a store shared by several
/// coordinators. See the lease methods of [`HistoryStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The coordinator's id, unique among live coordinators of one store.
    pub owner: String,
    /// Unique per process start: tells a restarted coordinator from its predecessor.
    pub incarnation: String,
    /// How long the lease lasts without renewal.
    pub ttl: std::time::Duration,
}

impl Lease {
    /// A lease for `owner` with a fresh incarnation.
    pub fn new(owner: impl Into<String>, ttl: std::time::Duration) -> Self {
        Self {
            owner: owner.into(),
            incarnation: uuid::Uuid::now_v7().to_string(),
            ttl,
        }
    }
}

/// The answer to [`Leases::renew_lease`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Renewal {
    /// Whether the lease was still held (and is now extended). `false`: it expired or
    /// another incarnation took it; the coordinator must stop touching its tasks.
    pub alive: bool,
    /// Unfinished tasks owned by this coordinator whose cancellation was requested
    /// through [`Leases::request_cancel`] (repeated until they are final).
    pub cancel_requested: Vec<TaskId>,
}

/// Reads task history: one task by id, a tenant's tasks page by page, a task's events,
/// transitions and outputs, counts and statistics. Every backend passes
/// `testkit::history`.
#[async_trait]
pub trait HistoryReader: Send + Sync + 'static {
    /// A task by id, whoever owns it (the [`Tasks`](crate::Tasks) service checks the
    /// tenant).
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>>;

    /// A page of `tenant`'s tasks.
    async fn list(&self, tenant: &Tenant, query: &TaskQuery) -> Result<TaskPage>;

    /// A task's events in order.
    async fn events(&self, id: TaskId) -> Result<Vec<Event>>;

    /// A task's transitions in order.
    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionRecord>>;

    /// A task's outputs.
    async fn outputs(&self, id: TaskId) -> Result<Vec<OutputRecord>>;

    /// Every task not in a final state (for recovery after a restart).
    async fn unfinished(&self) -> Result<Vec<TaskRecord>>;

    /// Number of tasks per status for a tenant (all tenants when `None`).
    async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>>;

    /// Statistics per template of `tenant`'s tasks that `query` selects (see
    /// [`TemplateStats`]), sorted by template. The provided implementation pages
    /// through [`list`](Self::list); a store may override it with a query of its own.
    async fn stats(&self, tenant: &Tenant, query: &StatsQuery) -> Result<Vec<TemplateStats>> {
        let base = TaskQuery::new()
            .submitted_between(query.since, query.until)
            .limit(STATS_PAGE);
        let mut groups = stats::Groups::default();
        let mut cursor = None;
        loop {
            let page = self.list(tenant, &base.clone().after(cursor)).await?;
            page.tasks.iter().for_each(|r| groups.add(r));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(groups.finish())
    }
}

/// Writes task history: each batch of changes with its events in one transaction, and
/// retention.
#[async_trait]
pub trait HistoryWriter: Send + Sync + 'static {
    /// Applies a batch in one transaction: inserts, then transitions (each applied only
    /// if the task is still in `from`), then outputs; every applied change's event is
    /// written in the same transaction. Returns, per transition, whether it applied.
    ///
    /// A store with [`Leases`] fences the batch by [`ChangeBatch::owner`]; a single-node
    /// store (the provided [`Leases`] methods) may ignore the owner.
    async fn commit(&self, batch: &ChangeBatch) -> Result<Vec<bool>>;

    /// Deletes up to `batch` tasks that finished before `cutoff`, with their events,
    /// outputs and labels, oldest first. Returns the tasks deleted (empty when nothing
    /// is left). Each call is a short transaction of its own, so that pruning a large
    /// backlog in a loop does not hold up writers.
    async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Vec<PrunedTask>>;
}

/// Coordinator leases: how several coordinators share one store without ever running a
/// task twice.
///
/// Every unfinished task has at most one owner: the coordinator that runs it. A
/// coordinator holds a [`Lease`] ([`acquire_lease`](Self::acquire_lease)) and renews it
/// ([`renew_lease`](Self::renew_lease)) well within its `ttl`; expiry is judged by the
/// store's clock. It [`claim`](Self::claim)s unowned queued tasks, and
/// [`take_over`](Self::take_over)s the unfinished tasks of coordinators whose lease
/// expired. Commits are fenced by [`ChangeBatch::owner`], so a coordinator that lost its
/// lease can no longer change a task that another one took over: no task is started by
/// two live coordinators.
///
/// **Single-node stores** implement none of it: the provided methods serve exactly one
/// coordinator (the [`Tasks`](crate::Tasks) service's lock on its task root makes it
/// the only one on that root). The lease is always held, every unfinished task is the
/// coordinator's own ([`owned`](Self::owned) is [`HistoryReader::unfinished`]), there
/// is nothing to claim or take over, and [`shared`](Self::shared) is `false`, so that a
/// submit-only front end is refused on such a store (nothing would claim its tasks).
/// `SqliteHistory` and `PostgresHistory` implement leases for real.
#[async_trait]
pub trait Leases: HistoryReader {
    /// Whether several coordinators (and submit-only front ends) may share the store:
    /// `true` when the store implements the lease methods below.
    fn shared(&self) -> bool {
        false
    }

    /// Registers `lease` until now + ttl. The same incarnation renews. Another
    /// incarnation's lease on the same owner is replaced only when it has expired or
    /// when `force` is set (the caller knows the predecessor is dead, e.g. it holds the
    /// predecessor's lock file); otherwise [`Error::LeaseHeld`](crate::Error::LeaseHeld).
    /// Tasks owned under the owner's id stay owned: the new incarnation recovers them
    /// with [`owned`](Self::owned).
    async fn acquire_lease(&self, lease: &Lease, force: bool) -> Result<()> {
        let _ = (lease, force);
        Ok(())
    }

    /// Extends a held lease to now + ttl; see [`Renewal`].
    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal> {
        let _ = lease;
        Ok(Renewal {
            alive: true,
            cancel_requested: Vec::new(),
        })
    }

    /// Ends a lease (graceful shutdown): its submitted/queued tasks become unowned (any
    /// coordinator may claim them); running and retrying ones stay owned and the lease
    /// is marked expired, so the same owner restarting, or another coordinator taking
    /// over, recovers them at once.
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let _ = lease;
        Ok(())
    }

    /// Claims up to `max` unowned submitted/queued tasks for a live lease, highest
    /// priority first then oldest, skipping rows other claimers hold (`FOR UPDATE SKIP
    /// LOCKED` on Postgres). Returns them with `owner` set; empty when the lease is not
    /// alive.
    async fn claim(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        let _ = (lease, max);
        Ok(Vec::new())
    }

    /// Takes over up to `max` unfinished tasks whose owner's lease expired (or whose
    /// owner has no lease), for a live lease; returns them with `owner` set. Removes
    /// expired leases that own nothing any more.
    async fn take_over(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        let _ = (lease, max);
        Ok(Vec::new())
    }

    /// Every unfinished task owned by `owner` (recovery after a restart).
    async fn owned(&self, owner: &str) -> Result<Vec<TaskRecord>> {
        let _ = owner;
        self.unfinished().await
    }

    /// Asks the owner of an unfinished task to cancel it (reported by its next
    /// [`renew_lease`](Self::renew_lease); an unowned task's claimer cancels it at
    /// once). Returns `false` when the task is unknown or already final.
    async fn request_cancel(&self, id: TaskId) -> Result<bool> {
        let _ = id;
        Err(crate::Error::Unsupported {
            what: "cancelling through the store needs a store shared by coordinators \
                   (one with leases)"
                .into(),
        })
    }
}

/// Stores tasks, their transitions, events, outputs and usage: a [`HistoryReader`], a
/// [`HistoryWriter`] and [`Leases`] in one. Implemented for every type that is all
/// three; the [`Tasks`](crate::Tasks) service takes one.
pub trait HistoryStore: HistoryReader + HistoryWriter + Leases {}

impl<T: HistoryReader + HistoryWriter + Leases + ?Sized> HistoryStore for T {}

/// Page size of the provided [`HistoryReader::stats`].
const STATS_PAGE: u32 = 1000;

#[async_trait]
impl<T: HistoryReader + ?Sized> HistoryReader for std::sync::Arc<T> {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        (**self).get(id).await
    }
    async fn list(&self, tenant: &Tenant, query: &TaskQuery) -> Result<TaskPage> {
        (**self).list(tenant, query).await
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
    async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>> {
        (**self).count_by_status(tenant).await
    }
    async fn stats(&self, tenant: &Tenant, query: &StatsQuery) -> Result<Vec<TemplateStats>> {
        (**self).stats(tenant, query).await
    }
}

#[async_trait]
impl<T: HistoryWriter + ?Sized> HistoryWriter for std::sync::Arc<T> {
    async fn commit(&self, batch: &ChangeBatch) -> Result<Vec<bool>> {
        (**self).commit(batch).await
    }
    async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Vec<PrunedTask>> {
        (**self).prune(cutoff, batch).await
    }
}

#[async_trait]
impl<T: Leases + ?Sized> Leases for std::sync::Arc<T> {
    fn shared(&self) -> bool {
        (**self).shared()
    }
    async fn acquire_lease(&self, lease: &Lease, force: bool) -> Result<()> {
        (**self).acquire_lease(lease, force).await
    }
    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal> {
        (**self).renew_lease(lease).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        (**self).release_lease(lease).await
    }
    async fn claim(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        (**self).claim(lease, max).await
    }
    async fn take_over(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        (**self).take_over(lease, max).await
    }
    async fn owned(&self, owner: &str) -> Result<Vec<TaskRecord>> {
        (**self).owned(owner).await
    }
    async fn request_cancel(&self, id: TaskId) -> Result<bool> {
        (**self).request_cancel(id).await
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    #[test]
    fn sqlite_and_postgres_migrations_are_in_step() {
        let list = |m: &sqlx::migrate::Migrator| {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect::<Vec<_>>()
        };
        let sqlite = list(&sqlx::migrate!("./migrations/sqlite"));
        let postgres = list(&sqlx::migrate!("./migrations/postgres"));
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres);
    }
}
