//! The embedded history store: SQLite through sqlx, sharing its database (and its
//! transactions) with the `ops-events` outbox.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Environment, Event, EventId, Reason, TaskId, TaskStatus, Tenant, Usage};
use ops_events::sqlite::SqliteOutbox;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::Mutex;

use super::sql::{
    CLAIMABLE_SQL, FINAL_SQL, check_transitions, insert_owner, sort_queue_order, submit_statuses,
    ttl_micros, with_outputs_first,
};
use super::{
    ChangeBatch, HistoryReader, HistoryWriter, Lease, Leases, OutputRecord, PrunedTask, Renewal,
    TaskPage, TaskQuery, TaskRecord, TransitionRecord,
};
use crate::{Error, Result};

/// Rows per multi-row INSERT (SQLite allows 32,766 bound variables per statement).
const INSERT_CHUNK: usize = 500;

const TASK_COLUMNS: &str = "id, tenant, environment, template, status, reason, message, \
    exit_code, priority, attempt, max_attempts, labels, parameters, spec, retry, run_handle, \
    wall_secs, cpu_secs, peak_memory, gpu_secs, submitted_at, started_at, finished_at, \
    not_before, updated_at, owner, preempted_wall_secs, preempted_cpu_secs, \
    preempted_peak_memory, preempted_gpu_secs";

/// [`HistoryStore`](super::HistoryStore) on SQLite. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteHistory {
    outbox: SqliteOutbox,
    // SQLite has one writer; serialising our write transactions here avoids busy retries.
    write_lock: std::sync::Arc<Mutex<()>>,
}

impl SqliteHistory {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or a plain
    /// path) and runs the outbox and history migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let outbox = SqliteOutbox::open(url).await?;
        Self::from_outbox(outbox).await
    }

    /// Uses the database of an existing outbox, running the history migrations.
    pub async fn from_outbox(outbox: SqliteOutbox) -> Result<Self> {
        // The outbox keeps its own migrations in the same database.
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator
            .run(outbox.pool())
            .await
            .map_err(|e| Error::migrate("sqlite", e))?;
        Ok(Self {
            outbox,
            write_lock: Default::default(),
        })
    }

    /// The outbox that holds this history's events (an `EventBus`).
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    fn pool(&self) -> &SqlitePool {
        self.outbox.pool()
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(v).unwrap_or_default()
}

fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store {
        source: ops_events::StoreError::classified(
            "sqlite",
            ops_core::ErrorKind::Internal,
            false,
            format!("stored {what} is invalid: {e}"),
        ),
    }
}

/// The usage in the columns `<prefix>wall_secs`, `<prefix>cpu_secs`,
/// `<prefix>peak_memory` and `<prefix>gpu_secs`.
fn usage_of(row: &SqliteRow, prefix: &str) -> Result<Usage> {
    let get = |name: &str| -> Result<f64> {
        row.try_get(format!("{prefix}{name}").as_str())
            .map_err(Error::sqlite)
    };
    let peak: i64 = row
        .try_get(format!("{prefix}peak_memory").as_str())
        .map_err(Error::sqlite)?;
    let mut usage = Usage::new(
        std::time::Duration::from_secs_f64(get("wall_secs")?.max(0.0)),
        std::time::Duration::from_secs_f64(get("cpu_secs")?.max(0.0)),
        peak.max(0) as u64,
        0,
    );
    usage.gpu_seconds = get("gpu_secs")?;
    Ok(usage)
}

/// A usage's column values: wall, CPU, peak memory, GPU-seconds.
#[derive(Clone, Copy)]
struct UsageValues {
    wall: f64,
    cpu: f64,
    peak: i64,
    gpu: f64,
}

impl UsageValues {
    fn new(u: &Usage) -> Self {
        Self {
            wall: u.wall_time.as_secs_f64(),
            cpu: u.cpu_time.as_secs_f64(),
            peak: u.peak_memory_bytes.min(i64::MAX as u64) as i64,
            gpu: u.gpu_seconds,
        }
    }
}

fn row_to_record(row: &SqliteRow) -> Result<TaskRecord> {
    let id: String = row.try_get("id").map_err(Error::sqlite)?;
    let status: String = row.try_get("status").map_err(Error::sqlite)?;
    let reason: Option<String> = row.try_get("reason").map_err(Error::sqlite)?;
    let labels: String = row.try_get("labels").map_err(Error::sqlite)?;
    let parameters: String = row.try_get("parameters").map_err(Error::sqlite)?;
    let spec: String = row.try_get("spec").map_err(Error::sqlite)?;
    let retry: String = row.try_get("retry").map_err(Error::sqlite)?;
    let run_handle: Option<String> = row.try_get("run_handle").map_err(Error::sqlite)?;
    Ok(TaskRecord {
        id: TaskId::from_str(&id).map_err(|e| corrupt("task id", e))?,
        tenant: Tenant::parse(row.try_get::<String, _>("tenant").map_err(Error::sqlite)?)
            .map_err(|e| corrupt("tenant", e))?,
        environment: Environment::parse(
            row.try_get::<String, _>("environment")
                .map_err(Error::sqlite)?,
        )
        .map_err(|e| corrupt("environment", e))?,
        template: row.try_get("template").map_err(Error::sqlite)?,
        status: TaskStatus::from_str(&status).map_err(|e| corrupt("status", e))?,
        reason: reason
            .map(|r| Reason::from_str(&r))
            .transpose()
            .map_err(|e| corrupt("reason", e))?,
        message: row.try_get("message").map_err(Error::sqlite)?,
        exit_code: row.try_get("exit_code").map_err(Error::sqlite)?,
        priority: row.try_get("priority").map_err(Error::sqlite)?,
        attempt: row.try_get::<i64, _>("attempt").map_err(Error::sqlite)? as u32,
        max_attempts: row
            .try_get::<i64, _>("max_attempts")
            .map_err(Error::sqlite)? as u32,
        labels: serde_json::from_str(&labels)?,
        parameters: serde_json::from_str(&parameters)?,
        spec: serde_json::from_str(&spec)?,
        retry: serde_json::from_str(&retry)?,
        run_handle: run_handle.map(|h| serde_json::from_str(&h)).transpose()?,
        usage: usage_of(row, "")?,
        preempted_usage: usage_of(row, "preempted_")?,
        submitted_at: from_micros(row.try_get("submitted_at").map_err(Error::sqlite)?),
        started_at: row
            .try_get::<Option<i64>, _>("started_at")
            .map_err(Error::sqlite)?
            .map(from_micros),
        finished_at: row
            .try_get::<Option<i64>, _>("finished_at")
            .map_err(Error::sqlite)?
            .map(from_micros),
        not_before: row
            .try_get::<Option<i64>, _>("not_before")
            .map_err(Error::sqlite)?
            .map(from_micros),
        owner: row.try_get("owner").map_err(Error::sqlite)?,
    })
}

/// Owned column values of one task row, so that batches can be bound without borrows.
struct TaskRow {
    id: String,
    tenant: String,
    environment: String,
    template: String,
    status: &'static str,
    reason: Option<&'static str>,
    message: Option<String>,
    exit_code: Option<i32>,
    priority: i32,
    attempt: i64,
    max_attempts: i64,
    labels: String,
    parameters: String,
    spec: String,
    retry: String,
    run_handle: Option<String>,
    usage: UsageValues,
    preempted: UsageValues,
    submitted_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    not_before: Option<i64>,
}

impl TaskRow {
    fn new(r: &TaskRecord) -> Result<Self> {
        Ok(Self {
            id: r.id.to_string(),
            tenant: r.tenant.to_string(),
            environment: r.environment.to_string(),
            template: r.template.clone(),
            status: r.status.as_str(),
            reason: r.reason.map(Reason::as_str),
            message: r.message.clone(),
            exit_code: r.exit_code,
            priority: r.priority,
            attempt: i64::from(r.attempt),
            max_attempts: i64::from(r.max_attempts),
            labels: serde_json::to_string(&r.labels)?,
            parameters: serde_json::to_string(&r.parameters)?,
            spec: serde_json::to_string(&r.spec)?,
            retry: serde_json::to_string(&r.retry)?,
            run_handle: r
                .run_handle
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
            usage: UsageValues::new(&r.usage),
            preempted: UsageValues::new(&r.preempted_usage),
            submitted_at: micros(r.submitted_at),
            started_at: opt_micros(r.started_at),
            finished_at: opt_micros(r.finished_at),
            not_before: opt_micros(r.not_before),
        })
    }
}

/// Owned values of one `ops_task_events` row.
struct EventRow {
    task_id: String,
    event_id: String,
    ty: String,
    from: Option<&'static str>,
    to: Option<&'static str>,
    reason: Option<&'static str>,
    at: i64,
    json: String,
}

impl EventRow {
    fn new(
        task_id: TaskId,
        event: &Event,
        from: Option<TaskStatus>,
        to: Option<TaskStatus>,
        reason: Option<Reason>,
    ) -> Result<Self> {
        Ok(Self {
            task_id: task_id.to_string(),
            event_id: event.id.to_string(),
            ty: event.ty.clone(),
            from: from.map(TaskStatus::as_str),
            to: to.map(TaskStatus::as_str),
            reason: reason.map(Reason::as_str),
            at: micros(event.time),
            json: serde_json::to_string(event)?,
        })
    }
}

async fn insert_event_rows(conn: &mut sqlx::SqliteConnection, rows: &[EventRow]) -> Result<()> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO ops_task_events (task_id, event_id, type, from_status, to_status, reason, at, event) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.task_id.as_str())
                .push_bind(r.event_id.as_str())
                .push_bind(r.ty.as_str())
                .push_bind(r.from)
                .push_bind(r.to)
                .push_bind(r.reason)
                .push_bind(r.at)
                .push_bind(r.json.as_str());
        });
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(Error::sqlite)?;
    }
    Ok(())
}

#[async_trait]
impl HistoryReader for SqliteHistory {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM ops_tasks WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await
        .map_err(Error::sqlite)?;
        row.as_ref().map(row_to_record).transpose()
    }

    async fn list(&self, tenant: &Tenant, query: &TaskQuery) -> Result<TaskPage> {
        let limit = query.limit.unwrap_or(50).clamp(1, 1000);
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {TASK_COLUMNS} FROM ops_tasks t WHERE t.tenant = "
        ));
        qb.push_bind(tenant.as_str());
        if !query.statuses.is_empty() {
            qb.push(" AND t.status IN (");
            let mut sep = qb.separated(", ");
            for s in &query.statuses {
                sep.push_bind(s.as_str());
            }
            qb.push(")");
        }
        if let Some(template) = &query.template {
            qb.push(" AND t.template = ").push_bind(template.as_str());
        }
        if let Some(after) = query.submitted_after {
            qb.push(" AND t.submitted_at >= ").push_bind(micros(after));
        }
        if let Some(before) = query.submitted_before {
            qb.push(" AND t.submitted_at < ").push_bind(micros(before));
        }
        if let Some(cursor) = &query.cursor {
            let id = TaskId::from_str(cursor).map_err(|_| Error::InvalidCursor {
                cursor: cursor.clone(),
            })?;
            qb.push(" AND t.id < ").push_bind(id.to_string());
        }
        for (k, v) in &query.labels {
            qb.push(
                " AND EXISTS (SELECT 1 FROM ops_task_labels l WHERE l.task_id = t.id AND l.key = ",
            )
            .push_bind(k.as_str())
            .push(" AND l.value = ")
            .push_bind(v.as_str())
            .push(")");
        }
        qb.push(" ORDER BY t.id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = qb
            .build()
            .fetch_all(self.pool())
            .await
            .map_err(Error::sqlite)?;
        let mut tasks = rows.iter().map(row_to_record).collect::<Result<Vec<_>>>()?;
        let next_cursor = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(|t| t.id.to_string())
        } else {
            None
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn events(&self, id: TaskId) -> Result<Vec<Event>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT event FROM ops_task_events WHERE task_id = ? ORDER BY seq")
                .bind(id.to_string())
                .fetch_all(self.pool())
                .await
                .map_err(Error::sqlite)?;
        rows.into_iter()
            .map(|(json,)| Ok(serde_json::from_str(&json)?))
            .collect()
    }

    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionRecord>> {
        let rows = sqlx::query(
            "SELECT from_status, to_status, reason, at, event_id FROM ops_task_events \
             WHERE task_id = ? AND to_status IS NOT NULL ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await
        .map_err(Error::sqlite)?;
        rows.iter()
            .map(|row| {
                let from: Option<String> = row.try_get("from_status").map_err(Error::sqlite)?;
                let to: String = row.try_get("to_status").map_err(Error::sqlite)?;
                let reason: Option<String> = row.try_get("reason").map_err(Error::sqlite)?;
                let event_id: String = row.try_get("event_id").map_err(Error::sqlite)?;
                Ok(TransitionRecord {
                    from: from
                        .map(|s| TaskStatus::from_str(&s))
                        .transpose()
                        .map_err(|e| corrupt("status", e))?,
                    to: TaskStatus::from_str(&to).map_err(|e| corrupt("status", e))?,
                    reason: reason
                        .map(|r| Reason::from_str(&r))
                        .transpose()
                        .map_err(|e| corrupt("reason", e))?,
                    at: from_micros(row.try_get("at").map_err(Error::sqlite)?),
                    event_id: EventId::from_str(&event_id).map_err(|e| corrupt("event id", e))?,
                })
            })
            .collect()
    }

    async fn outputs(&self, id: TaskId) -> Result<Vec<OutputRecord>> {
        let rows = sqlx::query(
            "SELECT path, attempt, size, created_at FROM ops_task_outputs WHERE task_id = ? \
             ORDER BY created_at, path",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await
        .map_err(Error::sqlite)?;
        rows.iter()
            .map(|row| {
                Ok(OutputRecord {
                    task_id: id,
                    path: row.try_get("path").map_err(Error::sqlite)?,
                    attempt: row.try_get::<i64, _>("attempt").map_err(Error::sqlite)? as u32,
                    size: row.try_get::<i64, _>("size").map_err(Error::sqlite)?.max(0) as u64,
                    created_at: from_micros(row.try_get("created_at").map_err(Error::sqlite)?),
                })
            })
            .collect()
    }

    async fn unfinished(&self) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM ops_tasks WHERE finished_at IS NULL ORDER BY id"
        )))
        .fetch_all(self.pool())
        .await
        .map_err(Error::sqlite)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>> {
        let rows: Vec<(String, i64)> = match tenant {
            Some(t) => sqlx::query_as(
                "SELECT status, COUNT(*) FROM ops_tasks WHERE tenant = ? GROUP BY status",
            )
            .bind(t.as_str())
            .fetch_all(self.pool())
            .await
            .map_err(Error::sqlite)?,
            None => sqlx::query_as("SELECT status, COUNT(*) FROM ops_tasks GROUP BY status")
                .fetch_all(self.pool())
                .await
                .map_err(Error::sqlite)?,
        };
        let mut out = rows
            .into_iter()
            .map(|(s, n)| {
                Ok((
                    TaskStatus::from_str(&s).map_err(|e| corrupt("status", e))?,
                    n.max(0) as u64,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|(s, _)| *s);
        Ok(out)
    }
}

#[async_trait]
impl HistoryWriter for SqliteHistory {
    async fn commit(&self, batch: &ChangeBatch) -> Result<Vec<bool>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        check_transitions(batch)?;
        // Serialise everything before taking the write lock.
        let now = micros(Utc::now());
        let owner = batch.owner.as_deref();
        let mut task_rows = Vec::with_capacity(batch.inserts.len());
        let mut label_rows = Vec::new();
        let mut event_rows = Vec::new();
        let mut outbox_events: Vec<Event> = Vec::new();
        for (record, events) in &batch.inserts {
            task_rows.push((TaskRow::new(record)?, insert_owner(batch, record)));
            for (k, v) in &record.labels {
                label_rows.push((record.id.to_string(), k.as_str(), v.as_str()));
            }
            for event in events {
                let (from, to) = submit_statuses(event);
                event_rows.push(EventRow::new(record.id, event, from, to, None)?);
                outbox_events.push(event.clone());
            }
        }
        let transition_rows = batch
            .transitions
            .iter()
            .map(|t| TaskRow::new(&t.record))
            .collect::<Result<Vec<_>>>()?;

        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        for chunk in task_rows.chunks(INSERT_CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO ops_tasks ({TASK_COLUMNS}) "));
            qb.push_values(chunk, |mut b, (r, owner)| {
                b.push_bind(r.id.as_str())
                    .push_bind(r.tenant.as_str())
                    .push_bind(r.environment.as_str())
                    .push_bind(r.template.as_str())
                    .push_bind(r.status)
                    .push_bind(r.reason)
                    .push_bind(r.message.as_deref())
                    .push_bind(r.exit_code)
                    .push_bind(r.priority)
                    .push_bind(r.attempt)
                    .push_bind(r.max_attempts)
                    .push_bind(r.labels.as_str())
                    .push_bind(r.parameters.as_str())
                    .push_bind(r.spec.as_str())
                    .push_bind(r.retry.as_str())
                    .push_bind(r.run_handle.as_deref())
                    .push_bind(r.usage.wall)
                    .push_bind(r.usage.cpu)
                    .push_bind(r.usage.peak)
                    .push_bind(r.usage.gpu)
                    .push_bind(r.submitted_at)
                    .push_bind(r.started_at)
                    .push_bind(r.finished_at)
                    .push_bind(r.not_before)
                    .push_bind(now)
                    .push_bind(*owner)
                    .push_bind(r.preempted.wall)
                    .push_bind(r.preempted.cpu)
                    .push_bind(r.preempted.peak)
                    .push_bind(r.preempted.gpu);
            });
            qb.build().execute(&mut *tx).await.map_err(Error::sqlite)?;
        }
        for chunk in label_rows.chunks(INSERT_CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO ops_task_labels (task_id, key, value) ");
            qb.push_values(chunk, |mut b, (id, k, v)| {
                b.push_bind(id.as_str()).push_bind(*k).push_bind(*v);
            });
            qb.build().execute(&mut *tx).await.map_err(Error::sqlite)?;
        }

        let mut applied = Vec::with_capacity(batch.transitions.len());
        let mut transition_events = Vec::new();
        let mut output_events = Vec::new();
        // Tasks this batch made final: their outputs still apply (see ChangeBatch::owner).
        let mut finalized = HashSet::new();
        for (t, r) in batch.transitions.iter().zip(&transition_rows) {
            // Fenced: only while the task is still in `from` and owned by the batch's
            // owner (`IS`: NULL-safe). A final status clears the owner.
            let sql = if t.to.is_final() {
                "UPDATE ops_tasks SET status = ?, reason = ?, message = ?, exit_code = ?, \
                 priority = ?, attempt = ?, run_handle = ?, wall_secs = ?, cpu_secs = ?, \
                 peak_memory = ?, gpu_secs = ?, started_at = ?, finished_at = ?, \
                 not_before = ?, updated_at = ?, spec = ?, preempted_wall_secs = ?, \
                 preempted_cpu_secs = ?, preempted_peak_memory = ?, preempted_gpu_secs = ?, \
                 owner = NULL \
                 WHERE id = ? AND status = ? AND owner IS ?"
            } else {
                "UPDATE ops_tasks SET status = ?, reason = ?, message = ?, exit_code = ?, \
                 priority = ?, attempt = ?, run_handle = ?, wall_secs = ?, cpu_secs = ?, \
                 peak_memory = ?, gpu_secs = ?, started_at = ?, finished_at = ?, \
                 not_before = ?, updated_at = ?, spec = ?, preempted_wall_secs = ?, \
                 preempted_cpu_secs = ?, preempted_peak_memory = ?, preempted_gpu_secs = ? \
                 WHERE id = ? AND status = ? AND owner IS ?"
            };
            let done = sqlx::query(sql)
                .bind(r.status)
                .bind(r.reason)
                .bind(r.message.as_deref())
                .bind(r.exit_code)
                .bind(r.priority)
                .bind(r.attempt)
                .bind(r.run_handle.as_deref())
                .bind(r.usage.wall)
                .bind(r.usage.cpu)
                .bind(r.usage.peak)
                .bind(r.usage.gpu)
                .bind(r.started_at)
                .bind(r.finished_at)
                .bind(r.not_before)
                .bind(now)
                .bind(r.spec.as_str())
                .bind(r.preempted.wall)
                .bind(r.preempted.cpu)
                .bind(r.preempted.peak)
                .bind(r.preempted.gpu)
                .bind(r.id.as_str())
                .bind(t.from.as_str())
                .bind(owner)
                .execute(&mut *tx)
                .await
                .map_err(Error::sqlite)?
                .rows_affected()
                == 1;
            if done {
                transition_events.push((
                    t.task_id,
                    t.from,
                    (
                        EventRow::new(
                            t.task_id,
                            &t.event,
                            Some(t.from),
                            Some(t.to),
                            t.record.reason,
                        )?,
                        t.event.clone(),
                    ),
                ));
                if t.to.is_final() {
                    finalized.insert(t.task_id);
                }
            } else {
                tracing::debug!(task_id = %t.task_id, from = %t.from, to = %t.to, owner, "transition skipped: status or owner changed");
            }
            applied.push(done);
        }

        let mut owned: HashMap<TaskId, bool> = HashMap::new();
        for (output, event) in &batch.outputs {
            let allowed = match owned.get(&output.task_id) {
                Some(allowed) => *allowed,
                None => {
                    let allowed = finalized.contains(&output.task_id)
                        || sqlx::query("SELECT 1 FROM ops_tasks WHERE id = ? AND owner IS ?")
                            .bind(output.task_id.to_string())
                            .bind(owner)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(Error::sqlite)?
                            .is_some();
                    owned.insert(output.task_id, allowed);
                    allowed
                }
            };
            if !allowed {
                tracing::debug!(task_id = %output.task_id, path = %output.path, owner, "output skipped: task not owned by this writer");
                continue;
            }
            let inserted = sqlx::query(
                "INSERT OR IGNORE INTO ops_task_outputs (task_id, path, attempt, size, created_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(output.task_id.to_string())
            .bind(output.path.as_str())
            .bind(i64::from(output.attempt))
            .bind(output.size.min(i64::MAX as u64) as i64)
            .bind(micros(output.created_at))
            .execute(&mut *tx)
            .await
            .map_err(Error::sqlite)?
            .rows_affected();
            if inserted == 1 {
                output_events.push((
                    output.task_id,
                    (
                        EventRow::new(output.task_id, event, None, None, None)?,
                        event.clone(),
                    ),
                ));
            }
        }
        for (row, event) in with_outputs_first(transition_events, output_events) {
            event_rows.push(row);
            outbox_events.push(event);
        }

        insert_event_rows(&mut tx, &event_rows).await?;
        SqliteOutbox::append(&mut tx, &outbox_events).await?;
        tx.commit().await.map_err(Error::sqlite)?;
        self.outbox.notify();
        Ok(applied)
    }

    async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Vec<PrunedTask>> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, tenant, json_extract(spec, '$.task_dir') FROM ops_tasks \
             WHERE finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?",
        )
        .bind(micros(cutoff))
        .bind(i64::from(batch.clamp(1, 10_000)))
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::sqlite)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        for table in [
            "DELETE FROM ops_task_events WHERE task_id IN (",
            "DELETE FROM ops_task_outputs WHERE task_id IN (",
            "DELETE FROM ops_task_labels WHERE task_id IN (",
            "DELETE FROM ops_tasks WHERE id IN (",
        ] {
            let mut qb = QueryBuilder::<Sqlite>::new(table);
            let mut sep = qb.separated(", ");
            for (id, _, _) in &rows {
                sep.push_bind(id.as_str());
            }
            qb.push(")");
            qb.build().execute(&mut *tx).await.map_err(Error::sqlite)?;
        }
        tx.commit().await.map_err(Error::sqlite)?;
        rows.into_iter()
            .map(|(id, tenant, dir)| {
                Ok(PrunedTask {
                    id: TaskId::from_str(&id).map_err(|e| corrupt("task id", e))?,
                    tenant: Tenant::parse(tenant).map_err(|e| corrupt("tenant", e))?,
                    task_dir: dir.unwrap_or_default().into(),
                })
            })
            .collect()
    }
}

#[async_trait]
impl Leases for SqliteHistory {
    fn shared(&self) -> bool {
        true
    }

    async fn acquire_lease(&self, lease: &Lease, force: bool) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        let now = micros(Utc::now());
        let expires = now.saturating_add(ttl_micros(lease));
        let current: Option<(String, i64)> =
            sqlx::query_as("SELECT incarnation, expires_at FROM ops_coordinators WHERE owner = ?")
                .bind(lease.owner.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::sqlite)?;
        match current {
            None => {
                sqlx::query(
                    "INSERT INTO ops_coordinators \
                     (owner, incarnation, expires_at, heartbeat_at, started_at) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(lease.owner.as_str())
                .bind(lease.incarnation.as_str())
                .bind(expires)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(Error::sqlite)?;
            }
            Some((incarnation, _)) if incarnation == lease.incarnation => {
                sqlx::query(
                    "UPDATE ops_coordinators SET expires_at = ?, heartbeat_at = ? WHERE owner = ?",
                )
                .bind(expires)
                .bind(now)
                .bind(lease.owner.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::sqlite)?;
            }
            Some((_, until)) if until > now && !force => {
                return Err(Error::LeaseHeld {
                    owner: lease.owner.clone(),
                    until: from_micros(until),
                });
            }
            Some(_) => {
                sqlx::query(
                    "UPDATE ops_coordinators SET incarnation = ?, expires_at = ?, \
                     heartbeat_at = ?, started_at = ? WHERE owner = ?",
                )
                .bind(lease.incarnation.as_str())
                .bind(expires)
                .bind(now)
                .bind(now)
                .bind(lease.owner.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::sqlite)?;
            }
        }
        tx.commit().await.map_err(Error::sqlite)?;
        Ok(())
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        let now = micros(Utc::now());
        let alive = sqlx::query(
            "UPDATE ops_coordinators SET expires_at = ?, heartbeat_at = ? \
             WHERE owner = ? AND incarnation = ? AND expires_at > ?",
        )
        .bind(now.saturating_add(ttl_micros(lease)))
        .bind(now)
        .bind(lease.owner.as_str())
        .bind(lease.incarnation.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(Error::sqlite)?
        .rows_affected()
            == 1;
        let mut renewal = Renewal {
            alive,
            cancel_requested: Vec::new(),
        };
        if alive {
            let ids: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM ops_tasks WHERE owner = ? AND cancel_requested <> 0 \
                 AND status NOT IN {FINAL_SQL} ORDER BY id"
            )))
            .bind(lease.owner.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::sqlite)?;
            renewal.cancel_requested = ids
                .into_iter()
                .map(|(id,)| TaskId::from_str(&id).map_err(|e| corrupt("task id", e)))
                .collect::<Result<_>>()?;
        }
        tx.commit().await.map_err(Error::sqlite)?;
        Ok(renewal)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        let now = micros(Utc::now());
        let held = sqlx::query(
            "UPDATE ops_coordinators SET expires_at = ?, heartbeat_at = ? \
             WHERE owner = ? AND incarnation = ?",
        )
        .bind(now - 1)
        .bind(now)
        .bind(lease.owner.as_str())
        .bind(lease.incarnation.as_str())
        .execute(&mut *tx)
        .await
        .map_err(Error::sqlite)?
        .rows_affected()
            == 1;
        if held {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE ops_tasks SET owner = NULL, updated_at = ? \
                 WHERE owner = ? AND status IN {CLAIMABLE_SQL}"
            )))
            .bind(now)
            .bind(lease.owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::sqlite)?;
            sqlx::query(
                "DELETE FROM ops_coordinators WHERE owner = ? AND NOT EXISTS \
                 (SELECT 1 FROM ops_tasks WHERE owner = ?)",
            )
            .bind(lease.owner.as_str())
            .bind(lease.owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::sqlite)?;
        }
        tx.commit().await.map_err(Error::sqlite)?;
        Ok(())
    }

    async fn claim(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        let now = micros(Utc::now());
        if !lease_alive(&mut tx, lease, now).await? {
            return Ok(Vec::new());
        }
        // SQLite has one writer at a time (BEGIN IMMEDIATE): nothing to skip.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE ops_tasks SET owner = ?, updated_at = ? WHERE id IN ( \
                 SELECT id FROM ops_tasks WHERE owner IS NULL AND status IN {CLAIMABLE_SQL} \
                 ORDER BY priority DESC, id LIMIT ?) \
             RETURNING {TASK_COLUMNS}"
        )))
        .bind(lease.owner.as_str())
        .bind(now)
        .bind(i64::from(max))
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::sqlite)?;
        let mut records = rows.iter().map(row_to_record).collect::<Result<Vec<_>>>()?;
        tx.commit().await.map_err(Error::sqlite)?;
        sort_queue_order(&mut records);
        Ok(records)
    }

    async fn take_over(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        let now = micros(Utc::now());
        if !lease_alive(&mut tx, lease, now).await? {
            return Ok(Vec::new());
        }
        let mut records = Vec::new();
        if max > 0 {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE ops_tasks SET owner = ?, updated_at = ? WHERE id IN ( \
                     SELECT t.id FROM ops_tasks t \
                     WHERE t.owner IS NOT NULL AND t.owner <> ? \
                       AND t.status NOT IN {FINAL_SQL} \
                       AND NOT EXISTS (SELECT 1 FROM ops_coordinators c \
                                       WHERE c.owner = t.owner AND c.expires_at > ?) \
                     ORDER BY t.priority DESC, t.id LIMIT ?) \
                 RETURNING {TASK_COLUMNS}"
            )))
            .bind(lease.owner.as_str())
            .bind(now)
            .bind(lease.owner.as_str())
            .bind(now)
            .bind(i64::from(max))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::sqlite)?;
            records = rows.iter().map(row_to_record).collect::<Result<Vec<_>>>()?;
        }
        sqlx::query(
            "DELETE FROM ops_coordinators WHERE expires_at <= ? AND NOT EXISTS \
             (SELECT 1 FROM ops_tasks t WHERE t.owner = ops_coordinators.owner)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(Error::sqlite)?;
        tx.commit().await.map_err(Error::sqlite)?;
        sort_queue_order(&mut records);
        Ok(records)
    }

    async fn owned(&self, owner: &str) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM ops_tasks WHERE owner = ? \
             AND status NOT IN {FINAL_SQL} ORDER BY id"
        )))
        .bind(owner)
        .fetch_all(self.pool())
        .await
        .map_err(Error::sqlite)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn request_cancel(&self, id: TaskId) -> Result<bool> {
        let _guard = self.write_lock.lock().await;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE ops_tasks SET cancel_requested = 1 \
             WHERE id = ? AND status NOT IN {FINAL_SQL}"
        )))
        .bind(id.to_string())
        .execute(self.pool())
        .await
        .map_err(Error::sqlite)?
        .rows_affected();
        Ok(done == 1)
    }
}

/// Whether `lease` is held and unexpired at `now`.
async fn lease_alive(conn: &mut sqlx::SqliteConnection, lease: &Lease, now: i64) -> Result<bool> {
    Ok(sqlx::query(
        "SELECT 1 FROM ops_coordinators WHERE owner = ? AND incarnation = ? AND expires_at > ?",
    )
    .bind(lease.owner.as_str())
    .bind(lease.incarnation.as_str())
    .bind(now)
    .fetch_optional(conn)
    .await
    .map_err(Error::sqlite)?
    .is_some())
}
