//! The scale-out catalog: PostgreSQL, sharing its database (and its transactions) with an
//! `ops-events` outbox, so that a record and its event commit together.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Event;
use ops_events::postgres::PostgresOutbox;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::{Catalog, EntryFilter, ObjectEntry, Quota, StorageUsage, without};
use crate::{Error, Result};

/// The columns of a record, in [`from_row`]'s order.
macro_rules! columns {
    () => {
        "tenant, environment, path, size, sha256, e_tag, task_id, attempt, created_at"
    };
}

/// [`Catalog`] on PostgreSQL, for several coordinators sharing one database. Its tables (`ops_storage_objects`, `ops_storage_usage`) sit
/// beside the outbox's, and its events go into that outbox in the same transaction.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresCatalog {
    outbox: PostgresOutbox,
}

impl PostgresCatalog {
    /// Connects to the database at `url` (`postgres://…`) with its outbox, and runs
    /// the catalog migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let outbox = PostgresOutbox::connect(url).await?;
        Self::from_outbox(outbox).await
    }

    /// Uses the database of an existing outbox (for example the task history's, so
    /// that task and storage events share one stream), running the catalog migrations.
    pub async fn from_outbox(outbox: PostgresOutbox) -> Result<Self> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(outbox.pool()).await.map_err(catalog)?;
        Ok(Self { outbox })
    }

    /// The outbox that holds its events (an `EventBus`).
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }

    async fn entry(
        conn: &mut PgConnection,
        tenant: &str,
        environment: &str,
        path: &str,
    ) -> Result<Option<ObjectEntry>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM ops_storage_objects \
             WHERE tenant = $1 AND environment = $2 AND path = $3"
        ))
        .bind(tenant)
        .bind(environment)
        .bind(path)
        .fetch_optional(&mut *conn)
        .await
        .map_err(catalog)?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Serialises writers of one tenant (their quota check reads the totals): locks
    /// the tenant's usage row, made first if missing.
    async fn lock_tenant(conn: &mut PgConnection, tenant: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO ops_storage_usage (tenant, bytes, objects) VALUES ($1, 0, 0) \
             ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant)
        .execute(&mut *conn)
        .await
        .map_err(catalog)?;
        sqlx::query("SELECT 1 FROM ops_storage_usage WHERE tenant = $1 FOR UPDATE")
            .bind(tenant)
            .execute(&mut *conn)
            .await
            .map_err(catalog)?;
        Ok(())
    }

    async fn usage_on(conn: &mut PgConnection, tenant: &str) -> Result<StorageUsage> {
        let row = sqlx::query("SELECT bytes, objects FROM ops_storage_usage WHERE tenant = $1")
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

    async fn set_usage(conn: &mut PgConnection, tenant: &str, usage: StorageUsage) -> Result<()> {
        sqlx::query(
            "INSERT INTO ops_storage_usage (tenant, bytes, objects) VALUES ($1, $2, $3) \
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

fn catalog(e: impl Into<ops_events::BoxError>) -> Error {
    Error::Catalog {
        source: ops_events::StoreError::new("postgres", e),
    }
}

fn from_row(r: &PgRow) -> Result<ObjectEntry> {
    let millis: i64 = r.get("created_at");
    Ok(ObjectEntry {
        tenant: r.get("tenant"),
        environment: r.get("environment"),
        path: r.get("path"),
        size: r.get::<i64, _>("size").max(0) as u64,
        sha256: r.get("sha256"),
        e_tag: r.get("e_tag"),
        task_id: r.get("task_id"),
        attempt: r.get::<Option<i32>, _>("attempt").map(|a| a as u32),
        created_at: DateTime::<Utc>::from_timestamp_millis(millis)
            .ok_or_else(|| catalog(format!("bad created_at {millis}")))?,
    })
}

#[async_trait]
impl Catalog for PostgresCatalog {
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
        let mut tx = self.outbox.pool().begin().await.map_err(catalog)?;
        Self::lock_tenant(&mut tx, &entry.tenant).await?;
        let old = Self::entry(&mut tx, &entry.tenant, &entry.environment, &entry.path).await?;
        let usage = quota.admit(
            entry,
            Self::usage_on(&mut tx, &entry.tenant).await?,
            old.as_ref(),
        )?;
        sqlx::query(concat!(
            "INSERT INTO ops_storage_objects (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
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
        .bind(entry.attempt.map(|a| a as i32))
        .bind(entry.created_at.timestamp_millis())
        .execute(&mut *tx)
        .await
        .map_err(catalog)?;
        Self::set_usage(&mut tx, &entry.tenant, usage).await?;
        PostgresOutbox::append(&mut tx, std::slice::from_ref(&event)).await?;
        tx.commit().await.map_err(catalog)?;
        self.outbox.notify();
        Ok(old)
    }

    async fn remove(
        &self,
        tenant: &str,
        environment: &str,
        path: &str,
        event: Event,
    ) -> Result<Option<ObjectEntry>> {
        let mut tx = self.outbox.pool().begin().await.map_err(catalog)?;
        Self::lock_tenant(&mut tx, tenant).await?;
        let Some(old) = Self::entry(&mut tx, tenant, environment, path).await? else {
            return Ok(None);
        };
        sqlx::query(
            "DELETE FROM ops_storage_objects WHERE tenant = $1 AND environment = $2 AND path = $3",
        )
        .bind(tenant)
        .bind(environment)
        .bind(path)
        .execute(&mut *tx)
        .await
        .map_err(catalog)?;
        let usage = without(Self::usage_on(&mut tx, tenant).await?, Some(&old));
        Self::set_usage(&mut tx, tenant, usage).await?;
        PostgresOutbox::append(&mut tx, std::slice::from_ref(&event)).await?;
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
            " FROM ops_storage_objects WHERE created_at < $1 \
             AND ($2::text IS NULL OR tenant = $2) AND ($3::text IS NULL OR environment = $3) \
             AND left(path, length($4)) = $4 \
             ORDER BY created_at, tenant, environment, path LIMIT $5"
        ))
        .bind(before.timestamp_millis())
        .bind(&filter.tenant)
        .bind(&filter.environment)
        .bind(&filter.prefix)
        .bind(i64::from(limit))
        .fetch_all(self.outbox.pool())
        .await
        .map_err(catalog)?;
        rows.iter().map(from_row).collect()
    }
}
