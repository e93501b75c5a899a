//! The embedded catalog: SQLite, sharing its database (and its transactions) with an
//! `ops-events` outbox, so that a record and its event commit together.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Event;
use ops_events::sqlite::SqliteOutbox;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use tokio::sync::oneshot;

use super::{Catalog, EntryFilter, ObjectEntry, Quota, StorageUsage, without};
use crate::{Error, Result};

/// The columns of a record, in [`from_row`]'s order.
macro_rules! columns {
    () => {
        "tenant, environment, path, size, sha256, e_tag, task_id, attempt, created_at"
    };
}

/// [`Catalog`] on SQLite. Its tables (`ops_storage_objects`, `ops_storage_usage`) sit
/// beside the outbox's, and its events go into that outbox in the same transaction.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteCatalog {
    outbox: SqliteOutbox,
    // SQLite has one writer; serialising our write transactions here avoids busy
    // retries (and their sleeps) between this process's writers.
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Records waiting for the next group commit.
    queue: std::sync::Arc<std::sync::Mutex<Vec<Pending>>>,
}

impl SqliteCatalog {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or a plain
    /// path) with its outbox, and runs the catalog migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let outbox = SqliteOutbox::open(url).await?;
        Self::from_outbox(outbox).await
    }

    /// Uses the database of an existing outbox (for example the task history's, so
    /// that task and storage events share one stream), running the catalog migrations.
    pub async fn from_outbox(outbox: SqliteOutbox) -> Result<Self> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(outbox.pool()).await.map_err(catalog)?;
        Ok(Self {
            outbox,
            write_lock: Default::default(),
            queue: Default::default(),
        })
    }

    /// The outbox that holds its events (an `EventBus`).
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    async fn entry(
        conn: &mut SqliteConnection,
        tenant: &str,
        environment: &str,
        path: &str,
    ) -> Result<Option<ObjectEntry>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM ops_storage_objects \
             WHERE tenant = ? AND environment = ? AND path = ?"
        ))
        .bind(tenant)
        .bind(environment)
        .bind(path)
        .fetch_optional(&mut *conn)
        .await
        .map_err(catalog)?;
        row.map(|r| from_row(&r)).transpose()
    }

    async fn usage_on(conn: &mut SqliteConnection, tenant: &str) -> Result<StorageUsage> {
        let row = sqlx::query("SELECT bytes, objects FROM ops_storage_usage WHERE tenant = ?")
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await
            .map_err(catalog)?;
        Ok(match row {
            Some(r) => StorageUsage {
                bytes: r.get::<i64, _>(0).max(0) as u64,
                objects: r.get::<i64, _>(1).max(0) as u64,
            },
            None => StorageUsage::default(),
        })
    }

    async fn set_usage(
        conn: &mut SqliteConnection,
        tenant: &str,
        usage: StorageUsage,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO ops_storage_usage (tenant, bytes, objects) VALUES (?, ?, ?) \
             ON CONFLICT (tenant) DO UPDATE SET bytes = excluded.bytes, objects = excluded.objects",
        )
        .bind(tenant)
        .bind(usage.bytes as i64)
        .bind(usage.objects as i64)
        .execute(&mut *conn)
        .await
        .map_err(catalog)?;
        Ok(())
    }
}

/// A record waiting for the next group commit.
#[derive(Debug)]
struct Pending {
    entry: ObjectEntry,
    quota: Quota,
    event: Event,
    reply: oneshot::Sender<Result<Option<ObjectEntry>>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SqliteCatalog {
    /// Writes `batch` in one transaction and answers each writer: its replaced
    /// record, its quota refusal, or (for all of them) the transaction's failure.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        match self.write_batch(&batch).await {
            Ok(results) => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(r);
                }
            }
            Err(e) => {
                // One failure, told to every writer of the group, each keeping its kind.
                let (kind, retryable, message) = (e.kind(), e.is_retryable(), e.to_string());
                for p in batch {
                    let source = ops_events::StoreError::classified(
                        "sqlite",
                        kind,
                        retryable,
                        message.clone(),
                    );
                    let _ = p.reply.send(Err(Error::Catalog { source }));
                }
            }
        }
    }

    async fn write_batch(&self, batch: &[Pending]) -> Result<Vec<Result<Option<ObjectEntry>>>> {
        let mut tx = self
            .outbox
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(catalog)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        // Each tenant's totals: read once, kept up to date here, written once.
        let mut totals: HashMap<&str, StorageUsage> = HashMap::new();
        for p in batch {
            let entry = &p.entry;
            let old = Self::entry(&mut tx, &entry.tenant, &entry.environment, &entry.path).await?;
            let usage = match totals.get(entry.tenant.as_str()) {
                Some(usage) => *usage,
                None => Self::usage_on(&mut tx, &entry.tenant).await?,
            };
            let usage = match p.quota.admit(entry, usage, old.as_ref()) {
                Ok(usage) => usage,
                Err(refused) => {
                    results.push(Err(refused));
                    continue;
                }
            };
            sqlx::query(concat!(
                "INSERT INTO ops_storage_objects (",
                columns!(),
                ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant, environment, path) DO UPDATE SET size = excluded.size, \
                 sha256 = excluded.sha256, e_tag = excluded.e_tag, task_id = excluded.task_id, \
                 attempt = excluded.attempt, created_at = excluded.created_at"
            ))
            .bind(&entry.tenant)
            .bind(&entry.environment)
            .bind(&entry.path)
            .bind(entry.size as i64)
            .bind(&entry.sha256)
            .bind(&entry.e_tag)
            .bind(&entry.task_id)
            .bind(entry.attempt.map(i64::from))
            .bind(entry.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(catalog)?;
            totals.insert(&entry.tenant, usage);
            events.push(p.event.clone());
            results.push(Ok(old));
        }
        for (tenant, usage) in totals {
            Self::set_usage(&mut tx, tenant, usage).await?;
        }
        SqliteOutbox::append(&mut tx, &events).await?;
        tx.commit().await.map_err(catalog)?;
        self.outbox.notify();
        Ok(results)
    }
}

fn catalog(e: impl Into<ops_events::BoxError>) -> Error {
    Error::Catalog {
        source: ops_events::StoreError::new("sqlite", e),
    }
}

fn from_row(r: &SqliteRow) -> Result<ObjectEntry> {
    let millis: i64 = r.get("created_at");
    Ok(ObjectEntry {
        tenant: r.get("tenant"),
        environment: r.get("environment"),
        path: r.get("path"),
        size: r.get::<i64, _>("size").max(0) as u64,
        sha256: r.get("sha256"),
        e_tag: r.get("e_tag"),
        task_id: r.get("task_id"),
        attempt: r.get::<Option<i64>, _>("attempt").map(|a| a as u32),
        created_at: DateTime::<Utc>::from_timestamp_millis(millis)
            .ok_or_else(|| catalog(format!("bad created_at {millis}")))?,
    })
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn usage(&self, tenant: &str) -> Result<StorageUsage> {
        let mut conn = self.outbox.pool().acquire().await.map_err(catalog)?;
        Self::usage_on(&mut conn, tenant).await
    }

    async fn record(
        &self,
        entry: &ObjectEntry,
        quota: &Quota,
        event: Event,
    ) -> Result<Option<ObjectEntry>> {
        // Group commit: writers queue their records; whoever holds the write lock
        // commits everything queued in one transaction (each record still checked
        // against its quota on its own), so concurrent writers share one commit.
        let (reply, mut answer) = oneshot::channel();
        lock(&self.queue).push(Pending {
            entry: entry.clone(),
            quota: *quota,
            event,
            reply,
        });
        {
            let _guard = self.write_lock.lock().await;
            match answer.try_recv() {
                // Committed by another writer meanwhile.
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(catalog("the catalog writer stopped"));
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    let batch = std::mem::take(&mut *lock(&self.queue));
                    // In a task of its own, so that a caller giving up half-way cannot
                    // leave the others without their answers.
                    let this = self.clone();
                    tokio::spawn(async move { this.commit_batch(batch).await })
                        .await
                        .map_err(catalog)?;
                }
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(catalog("the catalog writer stopped")))
    }

    async fn remove(
        &self,
        tenant: &str,
        environment: &str,
        path: &str,
        event: Event,
    ) -> Result<Option<ObjectEntry>> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .outbox
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(catalog)?;
        let Some(old) = Self::entry(&mut tx, tenant, environment, path).await? else {
            return Ok(None);
        };
        sqlx::query(
            "DELETE FROM ops_storage_objects WHERE tenant = ? AND environment = ? AND path = ?",
        )
        .bind(tenant)
        .bind(environment)
        .bind(path)
        .execute(&mut *tx)
        .await
        .map_err(catalog)?;
        let usage = without(Self::usage_on(&mut tx, tenant).await?, Some(&old));
        Self::set_usage(&mut tx, tenant, usage).await?;
        SqliteOutbox::append(&mut tx, std::slice::from_ref(&event))
            .await
            .map_err(catalog)?;
        tx.commit().await.map_err(catalog)?;
        self.outbox.notify();
        Ok(Some(old))
    }

    async fn get(
        &self,
        tenant: &str,
        environment: &str,
        path: &str,
    ) -> Result<Option<ObjectEntry>> {
        let mut conn = self.outbox.pool().acquire().await.map_err(catalog)?;
        Self::entry(&mut conn, tenant, environment, path).await
    }

    async fn older_than(
        &self,
        filter: &EntryFilter,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ObjectEntry>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM ops_storage_objects WHERE created_at < ? \
             AND (? IS NULL OR tenant = ?) AND (? IS NULL OR environment = ?) \
             AND substr(path, 1, length(?)) = ? \
             ORDER BY created_at, tenant, environment, path LIMIT ?"
        ))
        .bind(before.timestamp_millis())
        .bind(&filter.tenant)
        .bind(&filter.tenant)
        .bind(&filter.environment)
        .bind(&filter.environment)
        .bind(&filter.prefix)
        .bind(&filter.prefix)
        .bind(i64::from(limit))
        .fetch_all(self.outbox.pool())
        .await
        .map_err(catalog)?;
        rows.iter().map(from_row).collect()
    }
}
