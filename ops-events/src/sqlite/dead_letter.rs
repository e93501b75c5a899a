//! [`DeadLetters`] in the outbox database.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Event, EventId};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::{Error, Result};

/// Dead letters in the `ops_event_dead_letters` table of a [`SqliteOutbox`]
/// database; they survive restarts. Get one with
/// [`SqliteOutbox::dead_letters`](super::SqliteOutbox::dead_letters).
///
/// [`SqliteOutbox`]: super::SqliteOutbox
#[derive(Clone, Debug)]
pub struct SqliteDeadLetters {
    pool: SqlitePool,
}

impl SqliteDeadLetters {
    /// Dead letters in the database behind `pool`, whose outbox migrations were
    /// applied (by [`SqliteOutbox::open`](super::SqliteOutbox::open) or
    /// [`from_pool`](super::SqliteOutbox::from_pool)).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

const COLUMNS: &str = "function, payload, error, attempts, permanent, failed_at";

fn from_row(row: &SqliteRow) -> Result<DeadLetter> {
    let payload: String = row.try_get(1).map_err(Error::sqlite)?;
    let event: Event = serde_json::from_str(&payload).map_err(|e| Error::Corrupt {
        what: "dead letter",
        reason: e.to_string(),
    })?;
    let failed_at_ms: i64 = row.try_get(5).map_err(Error::sqlite)?;
    Ok(DeadLetter {
        function: row.try_get(0).map_err(Error::sqlite)?,
        event,
        error: row.try_get(2).map_err(Error::sqlite)?,
        attempts: u32::try_from(row.try_get::<i64, _>(3).map_err(Error::sqlite)?)
            .unwrap_or(u32::MAX),
        permanent: row.try_get(4).map_err(Error::sqlite)?,
        failed_at: DateTime::<Utc>::from_timestamp_millis(failed_at_ms).unwrap_or_default(),
    })
}

#[async_trait]
impl DeadLetters for SqliteDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<()> {
        let payload = serde_json::to_string(&letter.event).map_err(|source| Error::Encode {
            event_id: letter.event.id,
            source,
        })?;
        sqlx::query(
            "INSERT INTO ops_event_dead_letters \
                 (function, event_id, payload, error, attempts, permanent, failed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (function, event_id) DO UPDATE SET \
                 payload = excluded.payload, error = excluded.error, \
                 attempts = excluded.attempts, permanent = excluded.permanent, \
                 failed_at = excluded.failed_at",
        )
        .bind(&letter.function)
        .bind(letter.event.id.to_string())
        .bind(payload)
        .bind(&letter.error)
        .bind(i64::from(letter.attempts))
        .bind(letter.permanent)
        .bind(letter.failed_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(Error::sqlite)?;
        Ok(())
    }

    async fn list(&self, function: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ops_event_dead_letters \
             WHERE ?1 IS NULL OR function = ?1 \
             ORDER BY failed_at, function, event_id LIMIT ?2"
        ));
        let rows = sqlx::query(sql)
            .bind(function)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::sqlite)?;
        rows.iter().map(from_row).collect()
    }

    async fn get(&self, function: &str, event_id: EventId) -> Result<Option<DeadLetter>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ops_event_dead_letters WHERE function = ?1 AND event_id = ?2"
        ));
        let row = sqlx::query(sql)
            .bind(function)
            .bind(event_id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::sqlite)?;
        row.as_ref().map(from_row).transpose()
    }

    async fn remove(&self, function: &str, event_id: EventId) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM ops_event_dead_letters WHERE function = ?1 AND event_id = ?2")
                .bind(function)
                .bind(event_id.to_string())
                .execute(&self.pool)
                .await
                .map_err(Error::sqlite)?;
        Ok(done.rows_affected() > 0)
    }

    async fn count(&self, function: Option<&str>) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ops_event_dead_letters WHERE ?1 IS NULL OR function = ?1",
        )
        .bind(function)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::sqlite)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
