//! The scale-out history store: PostgreSQL through sqlx, sharing its database (and its
//! transactions) with the `ops-events` Postgres outbox, for several coordinators on one
//! database.
//!
//! Writes are batched: a commit sends one `INSERT … SELECT FROM UNNEST(…)` per table
//! (tasks, history events, outbox) and one `UPDATE … FROM UNNEST(…)` per round of
//! transitions, all in one transaction. Claims and take-overs lock candidate rows
//! with `FOR UPDATE SKIP LOCKED`, so concurrent coordinators never wait for each
//! other nor take the same task; leases expire by the database's clock.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Environment, Event, EventId, Reason, TaskId, TaskStatus, Tenant, Usage};
use ops_events::postgres::{
    Migrations, PostgresOutbox, PostgresOutboxConfig, missing_migrations, pool_url,
};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::sql::{
    CLAIMABLE_SQL, FINAL_SQL, check_transitions, insert_owner, sort_queue_order, submit_statuses,
    ttl_micros, with_outputs_first,
};
use super::{
    ChangeBatch, HistoryReader, HistoryWriter, Lease, Leases, OutputRecord, PrunedTask, Renewal,
    TaskPage, TaskQuery, TaskRecord, TransitionRecord,
};
use crate::{Error, Result};
use ops_events::redact_url;

/// The history migrations, PostgreSQL dialect (same versions as SQLite's). The outbox
/// keeps its own in the same `_sqlx_migrations` table, hence `ignore_missing`.
static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations/postgres")
};

/// Rows per `INSERT … UNNEST` statement (bounds the size of one message).
const INSERT_CHUNK: usize = 5_000;

/// Settings of a [`PostgresHistory`] opened with [`PostgresHistory::connect_with`]: those
/// of its outbox, whose pool it shares. `migrations` applies to both schemas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PostgresHistoryConfig {
    /// Pool size, connect timeout, migrations, outbox recheck interval.
    #[serde(flatten)]
    pub outbox: PostgresOutboxConfig,
}

impl PostgresHistoryConfig {
    /// Sets the pool size.
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.outbox = self.outbox.max_connections(max_connections);
        self
    }

    /// Sets how long connecting waits for the server.
    pub fn connect_timeout(mut self, connect_timeout: std::time::Duration) -> Self {
        self.outbox = self.outbox.connect_timeout(connect_timeout);
        self
    }

    /// Sets whether the outbox and history migrations are applied, or only required.
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.outbox = self.outbox.migrations(migrations);
        self
    }
}

/// [`HistoryStore`](super::HistoryStore) on PostgreSQL (13 or later), for several coordinators sharing one
/// database. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> ops_tasks::Result<()> {
/// use ops_tasks::history::{PostgresHistory, PostgresHistoryConfig};
///
/// let history = PostgresHistory::connect_with(
///     "postgres://ops:secret@db.internal/ops",
///     PostgresHistoryConfig::default().max_connections(20),
/// )
/// .await?;
/// let outbox = history.outbox(); // the event bus functions subscribe to
/// # let _ = outbox; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresHistory {
    outbox: PostgresOutbox,
}

impl PostgresHistory {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and applies
    /// the outbox and history migrations.
    ///
    /// An unreachable server or a URL that is not `postgres://` / `postgresql://` is
    /// [`Error::Connect`] naming the URL, password redacted.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresHistoryConfig::default()).await
    }

    /// [`connect`](Self::connect) with explicit settings. With
    /// [`Migrations::Require`], a database whose schema is behind is
    /// [`Error::SchemaOutdated`] listing every missing migration (outbox and history).
    pub async fn connect_with(url: &str, config: PostgresHistoryConfig) -> Result<Self> {
        let shown = redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::Connect {
                url: shown,
                message: "not a PostgreSQL URL: use postgres://USER:PASSWORD@HOST:PORT/DATABASE"
                    .into(),
            });
        }
        let migrations = config.outbox.migrations;
        match PostgresOutbox::connect_with(url, config.outbox).await {
            Ok(outbox) => Self::open(outbox, migrations, &shown).await,
            Err(ops_events::Error::Connect { url, message }) => {
                Err(Error::Connect { url, message })
            }
            Err(ops_events::Error::Invalid { reason, .. }) => Err(Error::Connect {
                url: shown,
                message: reason,
            }),
            Err(ops_events::Error::SchemaOutdated {
                url: _,
                mut missing,
            }) => {
                // The outbox stopped first; list the history's missing migrations too.
                let mut conn = PgConnection::connect(url)
                    .await
                    .map_err(|e| Error::Connect {
                        url: shown.clone(),
                        message: e.to_string(),
                    })?;
                missing.extend(missing_migrations(&MIGRATOR, &mut conn).await?);
                let _ = conn.close().await;
                Err(Error::SchemaOutdated {
                    url: shown,
                    missing,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Uses the database of an existing outbox, applying the history migrations.
    pub async fn from_outbox(outbox: PostgresOutbox) -> Result<Self> {
        let shown = pool_url(outbox.pool());
        Self::open(outbox, Migrations::Run, &shown).await
    }

    async fn open(outbox: PostgresOutbox, migrations: Migrations, url: &str) -> Result<Self> {
        match migrations {
            Migrations::Require => {
                let mut conn = outbox.pool().acquire().await.map_err(Error::postgres)?;
                let missing = missing_migrations(&MIGRATOR, &mut conn).await?;
                if !missing.is_empty() {
                    return Err(Error::SchemaOutdated {
                        url: url.to_owned(),
                        missing,
                    });
                }
            }
            // `Run`, and any mode added later: migrate (under sqlx's advisory lock).
            _ => MIGRATOR
                .run(outbox.pool())
                .await
                .map_err(|e| Error::migrate("postgres", e))?,
        }
        Ok(Self { outbox })
    }

    /// The outbox that holds this history's events (an `EventBus`).
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }

    fn pool(&self) -> &PgPool {
        self.outbox.pool()
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store {
        source: ops_events::StoreError::classified(
            "postgres",
            ops_core::ErrorKind::Internal,
            false,
            format!("stored {what} is invalid: {e}"),
        ),
    }
}

fn status(s: &str) -> Result<TaskStatus> {
    TaskStatus::from_str(s).map_err(|e| corrupt("status", e))
}

fn reason(r: Option<String>) -> Result<Option<Reason>> {
    r.map(|r| Reason::from_str(&r))
        .transpose()
        .map_err(|e| corrupt("reason", e))
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// The usage in the columns `<prefix>wall_secs`, `<prefix>cpu_secs`,
/// `<prefix>peak_memory` and `<prefix>gpu_secs`.
fn usage_of(row: &PgRow, prefix: &str) -> Result<Usage> {
    let get = |name: &str| -> Result<f64> {
        row.try_get(format!("{prefix}{name}").as_str())
            .map_err(Error::postgres)
    };
    let peak: i64 = row
        .try_get(format!("{prefix}peak_memory").as_str())
        .map_err(Error::postgres)?;
    let mut usage = Usage::new(
        std::time::Duration::from_secs_f64(get("wall_secs")?.max(0.0)),
        std::time::Duration::from_secs_f64(get("cpu_secs")?.max(0.0)),
        peak.max(0) as u64,
        0,
    );
    usage.gpu_seconds = get("gpu_secs")?;
    Ok(usage)
}

fn row_to_record(row: &PgRow) -> Result<TaskRecord> {
    let Json(labels) = row.try_get("labels").map_err(Error::postgres)?;
    let Json(parameters) = row.try_get("parameters").map_err(Error::postgres)?;
    let Json(spec) = row.try_get("spec").map_err(Error::postgres)?;
    let Json(retry) = row.try_get("retry").map_err(Error::postgres)?;
    let run_handle: Option<Json<crate::RunHandle>> =
        row.try_get("run_handle").map_err(Error::postgres)?;
    Ok(TaskRecord {
        id: TaskId::from_uuid(row.try_get("id").map_err(Error::postgres)?),
        tenant: Tenant::parse(
            row.try_get::<String, _>("tenant")
                .map_err(Error::postgres)?,
        )
        .map_err(|e| corrupt("tenant", e))?,
        environment: Environment::parse(
            row.try_get::<String, _>("environment")
                .map_err(Error::postgres)?,
        )
        .map_err(|e| corrupt("environment", e))?,
        template: row.try_get("template").map_err(Error::postgres)?,
        status: status(row.try_get("status").map_err(Error::postgres)?)?,
        reason: reason(row.try_get("reason").map_err(Error::postgres)?)?,
        message: row.try_get("message").map_err(Error::postgres)?,
        exit_code: row.try_get("exit_code").map_err(Error::postgres)?,
        priority: row.try_get("priority").map_err(Error::postgres)?,
        attempt: row
            .try_get::<i32, _>("attempt")
            .map_err(Error::postgres)?
            .max(0) as u32,
        max_attempts: row
            .try_get::<i32, _>("max_attempts")
            .map_err(Error::postgres)?
            .max(0) as u32,
        labels,
        parameters,
        spec,
        retry,
        run_handle: run_handle.map(|Json(h)| h),
        usage: usage_of(row, "")?,
        preempted_usage: usage_of(row, "preempted_")?,
        submitted_at: row.try_get("submitted_at").map_err(Error::postgres)?,
        started_at: row.try_get("started_at").map_err(Error::postgres)?,
        finished_at: row.try_get("finished_at").map_err(Error::postgres)?,
        not_before: row.try_get("not_before").map_err(Error::postgres)?,
        owner: row.try_get("owner").map_err(Error::postgres)?,
    })
}

fn rows_to_records(rows: &[PgRow]) -> Result<Vec<TaskRecord>> {
    rows.iter().map(row_to_record).collect()
}

/// Column arrays of task rows, bound to one `UNNEST` each.
#[derive(Default)]
struct TaskColumns {
    id: Vec<Uuid>,
    tenant: Vec<String>,
    environment: Vec<String>,
    template: Vec<String>,
    status: Vec<&'static str>,
    reason: Vec<Option<&'static str>>,
    message: Vec<Option<String>>,
    exit_code: Vec<Option<i32>>,
    priority: Vec<i32>,
    attempt: Vec<i32>,
    max_attempts: Vec<i32>,
    labels: Vec<String>,
    parameters: Vec<String>,
    spec: Vec<String>,
    task_dir: Vec<String>,
    retry: Vec<String>,
    run_handle: Vec<Option<String>>,
    wall: Vec<f64>,
    cpu: Vec<f64>,
    peak: Vec<i64>,
    gpu: Vec<f64>,
    preempted_wall: Vec<f64>,
    preempted_cpu: Vec<f64>,
    preempted_peak: Vec<i64>,
    preempted_gpu: Vec<f64>,
    submitted_at: Vec<DateTime<Utc>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    not_before: Vec<Option<DateTime<Utc>>>,
    owner: Vec<Option<String>>,
}

impl TaskColumns {
    fn push(&mut self, r: &TaskRecord, owner: Option<&str>) -> Result<()> {
        self.id.push(r.id.as_uuid());
        self.tenant.push(r.tenant.to_string());
        self.environment.push(r.environment.to_string());
        self.template.push(r.template.clone());
        self.status.push(r.status.as_str());
        self.reason.push(r.reason.map(Reason::as_str));
        self.message.push(r.message.clone());
        self.exit_code.push(r.exit_code);
        self.priority.push(r.priority);
        self.attempt.push(int(r.attempt));
        self.max_attempts.push(int(r.max_attempts));
        self.labels.push(serde_json::to_string(&r.labels)?);
        self.parameters.push(serde_json::to_string(&r.parameters)?);
        self.spec.push(serde_json::to_string(&r.spec)?);
        self.task_dir
            .push(r.spec.task_dir.to_string_lossy().into_owned());
        self.retry.push(serde_json::to_string(&r.retry)?);
        self.run_handle.push(
            r.run_handle
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        );
        self.wall.push(r.usage.wall_time.as_secs_f64());
        self.cpu.push(r.usage.cpu_time.as_secs_f64());
        self.peak
            .push(r.usage.peak_memory_bytes.min(i64::MAX as u64) as i64);
        self.gpu.push(r.usage.gpu_seconds);
        let p = &r.preempted_usage;
        self.preempted_wall.push(p.wall_time.as_secs_f64());
        self.preempted_cpu.push(p.cpu_time.as_secs_f64());
        self.preempted_peak
            .push(p.peak_memory_bytes.min(i64::MAX as u64) as i64);
        self.preempted_gpu.push(p.gpu_seconds);
        self.submitted_at.push(r.submitted_at);
        self.started_at.push(r.started_at);
        self.finished_at.push(r.finished_at);
        self.not_before.push(r.not_before);
        self.owner.push(owner.map(str::to_owned));
        Ok(())
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<()> {
        if self.id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO ops_tasks (id, tenant, environment, template, status, reason, message, \
                 exit_code, priority, attempt, max_attempts, labels, parameters, spec, retry, \
                 run_handle, wall_secs, cpu_secs, peak_memory, gpu_secs, submitted_at, \
                 started_at, finished_at, not_before, updated_at, owner, task_dir, \
                 preempted_wall_secs, preempted_cpu_secs, preempted_peak_memory, \
                 preempted_gpu_secs) \
             SELECT id, tenant, environment, template, status, reason, message, exit_code, \
                 priority, attempt, max_attempts, labels::jsonb, parameters::json, spec::json, \
                 retry::json, run_handle::json, wall, cpu, peak, gpu, submitted_at, started_at, \
                 finished_at, not_before, now(), owner, task_dir, p_wall, p_cpu, p_peak, p_gpu \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::int4[], $9::int4[], $10::int4[], $11::int4[], \
                 $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], \
                 $17::float8[], $18::float8[], $19::int8[], $20::float8[], \
                 $21::timestamptz[], $22::timestamptz[], $23::timestamptz[], \
                 $24::timestamptz[], $25::text[], $26::text[], \
                 $27::float8[], $28::float8[], $29::int8[], $30::float8[]) \
             AS u(id, tenant, environment, template, status, reason, message, exit_code, \
                 priority, attempt, max_attempts, labels, parameters, spec, retry, run_handle, \
                 wall, cpu, peak, gpu, submitted_at, started_at, finished_at, not_before, owner, \
                 task_dir, p_wall, p_cpu, p_peak, p_gpu)",
        )
        .bind(self.id)
        .bind(self.tenant)
        .bind(self.environment)
        .bind(self.template)
        .bind(self.status)
        .bind(self.reason)
        .bind(self.message)
        .bind(self.exit_code)
        .bind(self.priority)
        .bind(self.attempt)
        .bind(self.max_attempts)
        .bind(self.labels)
        .bind(self.parameters)
        .bind(self.spec)
        .bind(self.retry)
        .bind(self.run_handle)
        .bind(self.wall)
        .bind(self.cpu)
        .bind(self.peak)
        .bind(self.gpu)
        .bind(self.submitted_at)
        .bind(self.started_at)
        .bind(self.finished_at)
        .bind(self.not_before)
        .bind(self.owner)
        .bind(self.task_dir)
        .bind(self.preempted_wall)
        .bind(self.preempted_cpu)
        .bind(self.preempted_peak)
        .bind(self.preempted_gpu)
        .execute(&mut *conn)
        .await
        .map_err(Error::postgres)?;
        Ok(())
    }
}

/// Column arrays of `ops_task_events` rows.
#[derive(Default)]
struct EventColumns {
    task_id: Vec<Uuid>,
    event_id: Vec<String>,
    ty: Vec<String>,
    from: Vec<Option<&'static str>>,
    to: Vec<Option<&'static str>>,
    reason: Vec<Option<&'static str>>,
    at: Vec<DateTime<Utc>>,
    json: Vec<String>,
}

impl EventColumns {
    fn push(
        &mut self,
        task_id: TaskId,
        event: &Event,
        from: Option<TaskStatus>,
        to: Option<TaskStatus>,
        reason: Option<Reason>,
    ) -> Result<()> {
        self.json.push(serde_json::to_string(event)?);
        self.task_id.push(task_id.as_uuid());
        self.event_id.push(event.id.to_string());
        self.ty.push(event.ty.clone());
        self.from.push(from.map(TaskStatus::as_str));
        self.to.push(to.map(TaskStatus::as_str));
        self.reason.push(reason.map(Reason::as_str));
        self.at.push(event.time);
        Ok(())
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<()> {
        if self.task_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO ops_task_events \
                 (task_id, event_id, type, from_status, to_status, reason, at, event) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::timestamptz[], $8::text[])",
        )
        .bind(self.task_id)
        .bind(self.event_id)
        .bind(self.ty)
        .bind(self.from)
        .bind(self.to)
        .bind(self.reason)
        .bind(self.at)
        .bind(self.json)
        .execute(&mut *conn)
        .await
        .map_err(Error::postgres)?;
        Ok(())
    }
}

/// Applies one round of transitions (no task twice) with one statement; returns the
/// ids of the tasks changed.
async fn apply_round(
    conn: &mut PgConnection,
    batch: &ChangeBatch,
    round: &[usize],
) -> Result<HashSet<Uuid>> {
    let mut c = TaskColumns::default();
    let mut from = Vec::with_capacity(round.len());
    for &i in round {
        let t = &batch.transitions[i];
        c.push(&t.record, None)?;
        // The id is the transition's, whatever the record says.
        if let Some(id) = c.id.last_mut() {
            *id = t.task_id.as_uuid();
        }
        from.push(t.from.as_str());
    }
    // Fenced: only while the task is still in `from` and owned by the batch's owner
    // (NULL-safe). A final status clears the owner.
    let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE ops_tasks t SET status = u.status, reason = u.reason, message = u.message, \
             exit_code = u.exit_code, priority = u.priority, attempt = u.attempt, \
             run_handle = u.run_handle::json, wall_secs = u.wall, cpu_secs = u.cpu, \
             peak_memory = u.peak, gpu_secs = u.gpu, started_at = u.started_at, \
             finished_at = u.finished_at, not_before = u.not_before, updated_at = now(), \
             spec = u.spec::json, task_dir = u.task_dir, preempted_wall_secs = u.p_wall, \
             preempted_cpu_secs = u.p_cpu, preempted_peak_memory = u.p_peak, \
             preempted_gpu_secs = u.p_gpu, \
             owner = CASE WHEN u.status IN {FINAL_SQL} THEN NULL ELSE t.owner END \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], \
             $7::int4[], $8::int4[], $9::text[], $10::float8[], $11::float8[], $12::int8[], \
             $13::float8[], $14::timestamptz[], $15::timestamptz[], $16::timestamptz[], \
             $18::text[], $19::text[], $20::float8[], $21::float8[], $22::int8[], \
             $23::float8[]) \
         AS u(id, from_status, status, reason, message, exit_code, priority, attempt, \
             run_handle, wall, cpu, peak, gpu, started_at, finished_at, not_before, spec, \
             task_dir, p_wall, p_cpu, p_peak, p_gpu) \
         WHERE t.id = u.id AND t.status = u.from_status \
           AND t.owner IS NOT DISTINCT FROM $17 \
         RETURNING t.id"
    )))
    .bind(c.id)
    .bind(from)
    .bind(c.status)
    .bind(c.reason)
    .bind(c.message)
    .bind(c.exit_code)
    .bind(c.priority)
    .bind(c.attempt)
    .bind(c.run_handle)
    .bind(c.wall)
    .bind(c.cpu)
    .bind(c.peak)
    .bind(c.gpu)
    .bind(c.started_at)
    .bind(c.finished_at)
    .bind(c.not_before)
    .bind(batch.owner.as_deref())
    .bind(c.spec)
    .bind(c.task_dir)
    .bind(c.preempted_wall)
    .bind(c.preempted_cpu)
    .bind(c.preempted_peak)
    .bind(c.preempted_gpu)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::postgres)?;
    Ok(ids.into_iter().collect())
}

/// A batch's event, before ordering ([`with_outputs_first`]).
enum Ordered<'a> {
    Transition(&'a crate::history::Transition),
    Output(&'a OutputRecord, &'a Event),
}

/// Splits transitions into rounds in which each task appears at most once, keeping
/// the order of a task's transitions (the k-th change of a task is in round k).
fn rounds(batch: &ChangeBatch) -> Vec<Vec<usize>> {
    let mut seen: HashMap<TaskId, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, t) in batch.transitions.iter().enumerate() {
        let k = seen.entry(t.task_id).or_insert(0);
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

#[async_trait]
impl HistoryReader for PostgresHistory {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        let row = sqlx::query("SELECT * FROM ops_tasks WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(self.pool())
            .await
            .map_err(Error::postgres)?;
        row.as_ref().map(row_to_record).transpose()
    }

    async fn list(&self, tenant: &Tenant, query: &TaskQuery) -> Result<TaskPage> {
        let limit = query.limit.unwrap_or(50).clamp(1, 1000);
        // With labels, the ids are found first from the `ops_tasks_tenant` index alone
        // (it carries status and labels, so the tenant's newest tasks are filtered
        // without reading the table), then only the page's rows are read.
        let by_labels = !query.labels.is_empty();
        let mut qb = QueryBuilder::<Postgres>::new(if by_labels {
            "SELECT t.* FROM ops_tasks t JOIN (SELECT id FROM ops_tasks t WHERE t.tenant = "
        } else {
            "SELECT * FROM ops_tasks t WHERE t.tenant = "
        });
        qb.push_bind(tenant.as_str());
        match query.statuses.as_slice() {
            [] => {}
            [one] => {
                qb.push(" AND t.status = ").push_bind(one.as_str());
            }
            many => {
                qb.push(" AND t.status = ANY(")
                    .push_bind(many.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                    .push(")");
            }
        }
        if let Some(template) = &query.template {
            qb.push(" AND t.template = ").push_bind(template.as_str());
        }
        if let Some(after) = query.submitted_after {
            qb.push(" AND t.submitted_at >= ").push_bind(after);
        }
        if let Some(before) = query.submitted_before {
            qb.push(" AND t.submitted_at < ").push_bind(before);
        }
        if let Some(cursor) = &query.cursor {
            let id = TaskId::from_str(cursor).map_err(|_| Error::InvalidCursor {
                cursor: cursor.clone(),
            })?;
            qb.push(" AND t.id < ").push_bind(id.as_uuid());
        }
        if by_labels {
            qb.push(" AND t.labels @> ")
                .push_bind(serde_json::to_string(&query.labels)?)
                .push("::jsonb");
        }
        qb.push(" ORDER BY t.id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        if by_labels {
            qb.push(") page ON t.id = page.id ORDER BY t.id DESC");
        }
        let rows = qb
            .build()
            .fetch_all(self.pool())
            .await
            .map_err(Error::postgres)?;
        let mut tasks = rows_to_records(&rows)?;
        let next_cursor = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(|t| t.id.to_string())
        } else {
            None
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn events(&self, id: TaskId) -> Result<Vec<Event>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT event FROM ops_task_events WHERE task_id = $1 ORDER BY seq")
                .bind(id.as_uuid())
                .fetch_all(self.pool())
                .await
                .map_err(Error::postgres)?;
        rows.iter()
            .map(|json| Ok(serde_json::from_str(json)?))
            .collect()
    }

    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionRecord>> {
        let rows = sqlx::query(
            "SELECT from_status, to_status, reason, at, event_id FROM ops_task_events \
             WHERE task_id = $1 AND to_status IS NOT NULL ORDER BY seq",
        )
        .bind(id.as_uuid())
        .fetch_all(self.pool())
        .await
        .map_err(Error::postgres)?;
        rows.iter()
            .map(|row| {
                let from: Option<String> = row.try_get("from_status").map_err(Error::postgres)?;
                let event_id: String = row.try_get("event_id").map_err(Error::postgres)?;
                Ok(TransitionRecord {
                    from: from.as_deref().map(status).transpose()?,
                    to: status(row.try_get("to_status").map_err(Error::postgres)?)?,
                    reason: reason(row.try_get("reason").map_err(Error::postgres)?)?,
                    at: row.try_get("at").map_err(Error::postgres)?,
                    event_id: EventId::from_str(&event_id).map_err(|e| corrupt("event id", e))?,
                })
            })
            .collect()
    }

    async fn outputs(&self, id: TaskId) -> Result<Vec<OutputRecord>> {
        let rows = sqlx::query(
            "SELECT path, attempt, size, created_at FROM ops_task_outputs WHERE task_id = $1 \
             ORDER BY created_at, path",
        )
        .bind(id.as_uuid())
        .fetch_all(self.pool())
        .await
        .map_err(Error::postgres)?;
        rows.iter()
            .map(|row| {
                Ok(OutputRecord {
                    task_id: id,
                    path: row.try_get("path").map_err(Error::postgres)?,
                    attempt: row
                        .try_get::<i32, _>("attempt")
                        .map_err(Error::postgres)?
                        .max(0) as u32,
                    size: row
                        .try_get::<i64, _>("size")
                        .map_err(Error::postgres)?
                        .max(0) as u64,
                    created_at: row.try_get("created_at").map_err(Error::postgres)?,
                })
            })
            .collect()
    }

    async fn unfinished(&self) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query("SELECT * FROM ops_tasks WHERE finished_at IS NULL ORDER BY id")
            .fetch_all(self.pool())
            .await
            .map_err(Error::postgres)?;
        rows_to_records(&rows)
    }

    async fn count_by_status(&self, tenant: Option<&Tenant>) -> Result<Vec<(TaskStatus, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM ops_tasks \
             WHERE ($1::text IS NULL OR tenant = $1) GROUP BY status",
        )
        .bind(tenant.map(|t| t.as_str()))
        .fetch_all(self.pool())
        .await
        .map_err(Error::postgres)?;
        let mut out = rows
            .into_iter()
            .map(|(s, n)| Ok((status(&s)?, n.max(0) as u64)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|(s, _)| *s);
        Ok(out)
    }
}

#[async_trait]
impl HistoryWriter for PostgresHistory {
    async fn commit(&self, batch: &ChangeBatch) -> Result<Vec<bool>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        check_transitions(batch)?;
        let owner = batch.owner.as_deref();
        let mut events = EventColumns::default();
        let mut outbox_events: Vec<Event> = Vec::new();
        let mut tasks = Vec::new();
        for chunk in batch.inserts.chunks(INSERT_CHUNK) {
            let mut c = TaskColumns::default();
            for (record, evs) in chunk {
                c.push(record, insert_owner(batch, record))?;
                for event in evs {
                    let (from, to) = submit_statuses(event);
                    events.push(record.id, event, from, to, None)?;
                    outbox_events.push(event.clone());
                }
            }
            tasks.push(c);
        }

        let mut tx = self.pool().begin().await.map_err(Error::postgres)?;
        for c in tasks {
            c.insert(&mut tx).await?;
        }

        let mut applied = vec![false; batch.transitions.len()];
        // Tasks this batch made final: their outputs still apply (see ChangeBatch::owner).
        let mut finalized = HashSet::new();
        for round in rounds(batch) {
            let changed = apply_round(&mut tx, batch, &round).await?;
            for i in round {
                let t = &batch.transitions[i];
                if changed.contains(&t.task_id.as_uuid()) {
                    applied[i] = true;
                    if t.to.is_final() {
                        finalized.insert(t.task_id);
                    }
                }
            }
        }
        let mut transition_events = Vec::new();
        let mut output_events = Vec::new();
        for (t, done) in batch.transitions.iter().zip(&applied) {
            if *done {
                transition_events.push((t.task_id, t.from, Ordered::Transition(t)));
            } else {
                tracing::debug!(task_id = %t.task_id, from = %t.from, to = %t.to, owner, "transition skipped: status or owner changed");
            }
        }

        if !batch.outputs.is_empty() {
            let check: Vec<Uuid> = batch
                .outputs
                .iter()
                .map(|(o, _)| o.task_id)
                .filter(|id| !finalized.contains(id))
                .map(|id| id.as_uuid())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            // FOR SHARE: the owner cannot change (take-over) before this commits.
            let owned: HashSet<Uuid> = if check.is_empty() {
                HashSet::new()
            } else {
                sqlx::query_scalar::<_, Uuid>(
                    "SELECT id FROM ops_tasks WHERE id = ANY($1) \
                     AND owner IS NOT DISTINCT FROM $2 FOR SHARE",
                )
                .bind(&check)
                .bind(owner)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::postgres)?
                .into_iter()
                .collect()
            };
            let allowed: Vec<&(OutputRecord, Event)> = batch
                .outputs
                .iter()
                .filter(|(o, _)| {
                    let ok = finalized.contains(&o.task_id) || owned.contains(&o.task_id.as_uuid());
                    if !ok {
                        tracing::debug!(task_id = %o.task_id, path = %o.path, owner, "output skipped: task not owned by this writer");
                    }
                    ok
                })
                .collect();
            if !allowed.is_empty() {
                let inserted: Vec<(Uuid, String)> = sqlx::query_as(
                    "INSERT INTO ops_task_outputs (task_id, path, attempt, size, created_at) \
                     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::int8[], \
                         $5::timestamptz[]) \
                     ON CONFLICT DO NOTHING RETURNING task_id, path",
                )
                .bind(
                    allowed
                        .iter()
                        .map(|(o, _)| o.task_id.as_uuid())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    allowed
                        .iter()
                        .map(|(o, _)| o.path.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    allowed
                        .iter()
                        .map(|(o, _)| int(o.attempt))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    allowed
                        .iter()
                        .map(|(o, _)| o.size.min(i64::MAX as u64) as i64)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    allowed
                        .iter()
                        .map(|(o, _)| o.created_at)
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::postgres)?;
                let mut inserted: HashSet<(Uuid, String)> = inserted.into_iter().collect();
                // The first of duplicates in the batch is the one inserted.
                for (o, event) in allowed {
                    if inserted.remove(&(o.task_id.as_uuid(), o.path.clone())) {
                        output_events.push((o.task_id, Ordered::Output(o, event)));
                    }
                }
            }
        }
        for item in with_outputs_first(transition_events, output_events) {
            match item {
                Ordered::Transition(t) => {
                    events.push(
                        t.task_id,
                        &t.event,
                        Some(t.from),
                        Some(t.to),
                        t.record.reason,
                    )?;
                    outbox_events.push(t.event.clone());
                }
                Ordered::Output(o, event) => {
                    events.push(o.task_id, event, None, None, None)?;
                    outbox_events.push(event.clone());
                }
            }
        }

        events.insert(&mut tx).await?;
        PostgresOutbox::append(&mut tx, &outbox_events).await?;
        tx.commit().await.map_err(Error::postgres)?;
        self.outbox.notify();
        Ok(applied)
    }

    async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Vec<PrunedTask>> {
        // One short statement per batch. Rows another transaction holds are skipped
        // (pruned next time), so pruning never waits for, nor blocks, a writer. The
        // locked rows are deleted by their ctid (stable while locked): no second
        // index lookup.
        let mut rows: Vec<(Uuid, String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "WITH victims AS MATERIALIZED ( \
                 SELECT ctid AS tid, id FROM ops_tasks \
                 WHERE finished_at IS NOT NULL AND finished_at < $1 \
                 ORDER BY finished_at LIMIT $2 \
                 FOR UPDATE SKIP LOCKED), \
             ids AS (SELECT array_agg(id) AS ids FROM victims), \
             events AS (DELETE FROM ops_task_events \
                 WHERE task_id = ANY((SELECT ids FROM ids)::uuid[])), \
             outputs AS (DELETE FROM ops_task_outputs \
                 WHERE task_id = ANY((SELECT ids FROM ids)::uuid[])) \
             DELETE FROM ops_tasks t WHERE t.ctid = ANY(ARRAY(SELECT tid FROM victims)) \
             RETURNING t.id, t.tenant, t.task_dir, t.finished_at",
        )
        .bind(cutoff)
        .bind(i64::from(batch.clamp(1, 10_000)))
        .fetch_all(self.pool())
        .await
        .map_err(Error::postgres)?;
        rows.sort_by_key(|r| (r.3, r.0));
        Ok(rows
            .into_iter()
            .map(|(id, tenant, dir, _)| {
                Ok(PrunedTask {
                    id: TaskId::from_uuid(id),
                    tenant: Tenant::parse(tenant).map_err(|e| corrupt("tenant", e))?,
                    task_dir: dir.into(),
                })
            })
            .collect::<Result<Vec<_>>>()?)
    }
}

#[async_trait]
impl Leases for PostgresHistory {
    fn shared(&self) -> bool {
        true
    }

    async fn acquire_lease(&self, lease: &Lease, force: bool) -> Result<()> {
        // Expiry is judged by the database's clock (now()), the same for every host.
        for _ in 0..3 {
            let taken = sqlx::query(
                "INSERT INTO ops_coordinators \
                     (owner, incarnation, expires_at, heartbeat_at, started_at) \
                 VALUES ($1, $2, now() + $3 * interval '1 microsecond', now(), now()) \
                 ON CONFLICT (owner) DO UPDATE SET incarnation = EXCLUDED.incarnation, \
                     expires_at = EXCLUDED.expires_at, heartbeat_at = EXCLUDED.heartbeat_at, \
                     started_at = CASE WHEN ops_coordinators.incarnation = EXCLUDED.incarnation \
                         THEN ops_coordinators.started_at ELSE EXCLUDED.started_at END \
                 WHERE ops_coordinators.incarnation = EXCLUDED.incarnation \
                     OR ops_coordinators.expires_at <= now() OR $4 \
                 RETURNING 1",
            )
            .bind(lease.owner.as_str())
            .bind(lease.incarnation.as_str())
            .bind(ttl_micros(lease))
            .bind(force)
            .fetch_optional(self.pool())
            .await
            .map_err(Error::postgres)?
            .is_some();
            if taken {
                return Ok(());
            }
            let until: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT expires_at FROM ops_coordinators WHERE owner = $1")
                    .bind(lease.owner.as_str())
                    .fetch_optional(self.pool())
                    .await
                    .map_err(Error::postgres)?;
            // Gone meanwhile (removed by a take-over): try again.
            if let Some(until) = until {
                return Err(Error::LeaseHeld {
                    owner: lease.owner.clone(),
                    until,
                });
            }
        }
        Err(Error::LeaseHeld {
            owner: lease.owner.clone(),
            until: Utc::now(),
        })
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal> {
        let (alive, cancel): (bool, Vec<Uuid>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH renewed AS ( \
                 UPDATE ops_coordinators \
                 SET expires_at = now() + $3 * interval '1 microsecond', heartbeat_at = now() \
                 WHERE owner = $1 AND incarnation = $2 AND expires_at > now() \
                 RETURNING owner) \
             SELECT EXISTS (SELECT 1 FROM renewed), \
                 ARRAY(SELECT t.id FROM ops_tasks t \
                       WHERE t.owner = $1 AND t.cancel_requested \
                         AND t.status NOT IN {FINAL_SQL} \
                         AND EXISTS (SELECT 1 FROM renewed) ORDER BY t.id)"
        )))
        .bind(lease.owner.as_str())
        .bind(lease.incarnation.as_str())
        .bind(ttl_micros(lease))
        .fetch_one(self.pool())
        .await
        .map_err(Error::postgres)?;
        Ok(Renewal {
            alive,
            cancel_requested: cancel.into_iter().map(TaskId::from_uuid).collect(),
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(Error::postgres)?;
        let held = sqlx::query(
            "UPDATE ops_coordinators \
             SET expires_at = now() - interval '1 microsecond', heartbeat_at = now() \
             WHERE owner = $1 AND incarnation = $2",
        )
        .bind(lease.owner.as_str())
        .bind(lease.incarnation.as_str())
        .execute(&mut *tx)
        .await
        .map_err(Error::postgres)?
        .rows_affected()
            == 1;
        if held {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE ops_tasks SET owner = NULL, updated_at = now() \
                 WHERE owner = $1 AND status IN {CLAIMABLE_SQL}"
            )))
            .bind(lease.owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::postgres)?;
            sqlx::query(
                "DELETE FROM ops_coordinators WHERE owner = $1 \
                 AND NOT EXISTS (SELECT 1 FROM ops_tasks WHERE owner = $1)",
            )
            .bind(lease.owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::postgres)?;
        }
        tx.commit().await.map_err(Error::postgres)?;
        Ok(())
    }

    async fn claim(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH picked AS ( \
                 SELECT id FROM ops_tasks \
                 WHERE owner IS NULL AND status IN {CLAIMABLE_SQL} \
                   AND EXISTS (SELECT 1 FROM ops_coordinators \
                               WHERE owner = $1 AND incarnation = $2 AND expires_at > now()) \
                 ORDER BY priority DESC, id LIMIT $3 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE ops_tasks t SET owner = $1, updated_at = now() FROM picked \
             WHERE t.id = picked.id AND t.owner IS NULL \
             RETURNING t.*"
        )))
        .bind(lease.owner.as_str())
        .bind(lease.incarnation.as_str())
        .bind(i64::from(max))
        .fetch_all(self.pool())
        .await
        .map_err(Error::postgres)?;
        let mut records = rows_to_records(&rows)?;
        sort_queue_order(&mut records);
        Ok(records)
    }

    async fn take_over(&self, lease: &Lease, max: u32) -> Result<Vec<TaskRecord>> {
        let mut tx = self.pool().begin().await.map_err(Error::postgres)?;
        let alive = sqlx::query(
            "SELECT 1 FROM ops_coordinators \
             WHERE owner = $1 AND incarnation = $2 AND expires_at > now()",
        )
        .bind(lease.owner.as_str())
        .bind(lease.incarnation.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::postgres)?
        .is_some();
        if !alive {
            return Ok(Vec::new());
        }
        let mut records = Vec::new();
        if max > 0 {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "WITH picked AS ( \
                     SELECT t.id FROM ops_tasks t \
                     WHERE t.owner IS NOT NULL AND t.owner <> $1 \
                       AND t.status NOT IN {FINAL_SQL} \
                       AND NOT EXISTS (SELECT 1 FROM ops_coordinators c \
                                       WHERE c.owner = t.owner AND c.expires_at > now()) \
                     ORDER BY t.priority DESC, t.id LIMIT $2 \
                     FOR UPDATE OF t SKIP LOCKED) \
                 UPDATE ops_tasks t SET owner = $1, updated_at = now() FROM picked \
                 WHERE t.id = picked.id \
                 RETURNING t.*"
            )))
            .bind(lease.owner.as_str())
            .bind(i64::from(max))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::postgres)?;
            records = rows_to_records(&rows)?;
        }
        sqlx::query(
            "DELETE FROM ops_coordinators c WHERE c.expires_at <= now() \
             AND NOT EXISTS (SELECT 1 FROM ops_tasks t WHERE t.owner = c.owner)",
        )
        .execute(&mut *tx)
        .await
        .map_err(Error::postgres)?;
        tx.commit().await.map_err(Error::postgres)?;
        sort_queue_order(&mut records);
        Ok(records)
    }

    async fn owned(&self, owner: &str) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM ops_tasks WHERE owner = $1 AND status NOT IN {FINAL_SQL} ORDER BY id"
        )))
        .bind(owner)
        .fetch_all(self.pool())
        .await
        .map_err(Error::postgres)?;
        rows_to_records(&rows)
    }

    async fn request_cancel(&self, id: TaskId) -> Result<bool> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE ops_tasks SET cancel_requested = true \
             WHERE id = $1 AND status NOT IN {FINAL_SQL}"
        )))
        .bind(id.as_uuid())
        .execute(self.pool())
        .await
        .map_err(Error::postgres)?
        .rows_affected();
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_embedded() {
        assert!(MIGRATOR.iter().any(|m| m.version == 20261126100001));
    }

    #[test]
    fn config_reads_from_json() {
        let c: PostgresHistoryConfig =
            serde_json::from_str(r#"{"migrations":"require","max_connections":3}"#).unwrap();
        assert_eq!(
            c,
            PostgresHistoryConfig::default()
                .migrations(Migrations::Require)
                .max_connections(3)
        );
    }
}
