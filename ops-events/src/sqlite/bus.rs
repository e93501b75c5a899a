//! [`EventBus`] on the SQLite outbox tables.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Event;
use sqlx::Row;
use tokio::time::Instant;

use super::{SqliteOutbox, duration_ms, now_ms};
use crate::bus::{Delivery, DeliveryTag, EventBus, StartFrom, SubscribeOptions, validate_name};
use crate::stored::{RawDelivery, parse};
use crate::{Error, Result};

/// What a cheap read says about a subscription before taking the write lock.
struct Probe {
    cursor: i64,
    head: i64,
    next_due: Option<i64>,
}

impl SqliteOutbox {
    async fn probe(&self, name: &str) -> Result<Probe> {
        let row = sqlx::query(
            "SELECT s.cursor, \
                    (SELECT COALESCE(MAX(seq), 0) FROM ops_events), \
                    (SELECT MIN(deliver_after) FROM ops_event_deliveries d WHERE d.subscription = s.name) \
             FROM ops_event_subscriptions s WHERE s.name = ?1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await.map_err(Error::sqlite)?
        .ok_or_else(|| unknown(name))?;
        Ok(Probe {
            cursor: row.try_get(0).map_err(Error::sqlite)?,
            head: row.try_get(1).map_err(Error::sqlite)?,
            next_due: row.try_get(2).map_err(Error::sqlite)?,
        })
    }

    /// Takes up to `max` deliveries in one write transaction.
    async fn take(&self, name: &str, max: usize) -> Result<Vec<RawDelivery>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        // IMMEDIATE: take the write lock up front, so that the read-then-write below
        // waits for other writers (busy timeout) instead of failing with SQLITE_BUSY.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        let row =
            sqlx::query("SELECT cursor, ack_wait_ms FROM ops_event_subscriptions WHERE name = ?1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::sqlite)?
                .ok_or_else(|| unknown(name))?;
        let cursor: i64 = row.try_get(0).map_err(Error::sqlite)?;
        let ack_wait_ms: i64 = row.try_get(1).map_err(Error::sqlite)?;
        let now = now_ms();
        let deadline = now.saturating_add(ack_wait_ms);
        let mut out = Vec::new();

        // Due redeliveries first.
        let rows = sqlx::query(
            "UPDATE ops_event_deliveries SET attempts = attempts + 1, deliver_after = ?1 \
             WHERE subscription = ?2 AND seq IN ( \
                 SELECT seq FROM ops_event_deliveries \
                 WHERE subscription = ?2 AND deliver_after <= ?3 \
                 ORDER BY deliver_after, seq LIMIT ?4) \
             RETURNING seq, attempts",
        )
        .bind(deadline)
        .bind(name)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::sqlite)?;
        if !rows.is_empty() {
            let mut attempts = Vec::with_capacity(rows.len());
            for row in &rows {
                attempts.push((
                    row.try_get::<i64, _>(0).map_err(Error::sqlite)?,
                    row.try_get::<i64, _>(1).map_err(Error::sqlite)?,
                ));
            }
            attempts.sort_unstable();
            let payloads = sqlx::query(
                "SELECT seq, payload FROM ops_events \
                 WHERE seq IN (SELECT value FROM json_each(?1)) ORDER BY seq",
            )
            .bind(json_list(attempts.iter().map(|&(seq, _)| seq)))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::sqlite)?;
            for row in payloads {
                let seq: i64 = row.try_get(0).map_err(Error::sqlite)?;
                if let Ok(i) = attempts.binary_search_by_key(&seq, |&(s, _)| s) {
                    out.push(RawDelivery {
                        seq,
                        attempts: attempts[i].1,
                        payload: row.try_get(1).map_err(Error::sqlite)?,
                    });
                }
            }
        }

        // Then new events, in order.
        let remaining = limit.saturating_sub(i64::try_from(out.len()).unwrap_or(i64::MAX));
        if remaining > 0 {
            let rows = sqlx::query(
                "SELECT seq, payload FROM ops_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(cursor)
            .bind(remaining)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::sqlite)?;
            if let Some(last) = rows.last() {
                let last: i64 = last.try_get(0).map_err(Error::sqlite)?;
                sqlx::query(
                    "INSERT INTO ops_event_deliveries (subscription, seq, attempts, deliver_after) \
                     SELECT ?1, seq, 1, ?2 FROM ops_events WHERE seq > ?3 AND seq <= ?4",
                )
                .bind(name)
                .bind(deadline)
                .bind(cursor)
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(Error::sqlite)?;
                sqlx::query("UPDATE ops_event_subscriptions SET cursor = ?1 WHERE name = ?2")
                    .bind(last)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::sqlite)?;
                out.reserve(rows.len());
                for row in rows {
                    out.push(RawDelivery {
                        seq: row.try_get(0).map_err(Error::sqlite)?,
                        attempts: 1,
                        payload: row.try_get(1).map_err(Error::sqlite)?,
                    });
                }
            }
        }
        tx.commit().await.map_err(Error::sqlite)?;
        Ok(out)
    }

    async fn exists(&self, name: &str) -> Result<()> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM ops_event_subscriptions WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::sqlite)?;
        found.map(|_| ()).ok_or_else(|| unknown(name))
    }
}

fn unknown(name: &str) -> Error {
    Error::UnknownSubscription {
        name: name.to_owned(),
    }
}

/// `[1,2,3]`, for `json_each(?)`: one prepared statement whatever the list length.
fn json_list(seqs: impl Iterator<Item = i64>) -> String {
    let mut s = String::from("[");
    for (i, seq) in seqs.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&seq.to_string());
    }
    s.push(']');
    s
}

#[async_trait]
impl EventBus for SqliteOutbox {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::sqlite)?;
        SqliteOutbox::append(&mut tx, events).await?;
        tx.commit().await.map_err(Error::sqlite)?;
        self.notify();
        Ok(())
    }

    async fn subscribe(&self, name: &str, options: SubscribeOptions) -> Result<()> {
        validate_name("subscription name", name)?;
        sqlx::query(
            "INSERT INTO ops_event_subscriptions (name, cursor, ack_wait_ms, created_at) \
             VALUES (?1, CASE WHEN ?2 THEN (SELECT COALESCE(MAX(seq), 0) FROM ops_events) ELSE 0 END, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET ack_wait_ms = excluded.ack_wait_ms",
        )
        .bind(name)
        .bind(options.start == StartFrom::New)
        .bind(duration_ms(options.ack_wait))
        .bind(now_ms())
        .execute(&self.pool)
        .await.map_err(Error::sqlite)?;
        Ok(())
    }

    async fn fetch(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so a notify in between is not missed.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let probe = self.probe(subscription).await?;
            let now = now_ms();
            if max > 0 && (probe.head > probe.cursor || probe.next_due.is_some_and(|d| d <= now)) {
                let batch = parse(subscription, self.take(subscription, max).await?);
                if !batch.is_empty() {
                    return Ok(batch);
                }
                // Another consumer of this subscription was faster, or only corrupt
                // rows were due: look again (the probe changed).
                continue;
            }
            let now_instant = Instant::now();
            if max == 0 || now_instant >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline.min(now_instant + self.shared.recheck_interval);
            if let Some(due) = probe.next_due {
                let in_ms = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
                until = until.min(now_instant + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, subscription: &str, tags: &[DeliveryTag]) -> Result<()> {
        if tags.is_empty() {
            return self.exists(subscription).await;
        }
        let done = sqlx::query(
            "DELETE FROM ops_event_deliveries \
             WHERE subscription = ?1 AND seq IN (SELECT value FROM json_each(?2))",
        )
        .bind(subscription)
        .bind(json_list(tags.iter().map(|t| t.0 as i64)))
        .execute(&self.pool)
        .await
        .map_err(Error::sqlite)?;
        if done.rows_affected() == 0 {
            self.exists(subscription).await?;
        }
        Ok(())
    }

    async fn nack(&self, subscription: &str, tags: &[DeliveryTag], delay: Duration) -> Result<()> {
        if tags.is_empty() {
            return self.exists(subscription).await;
        }
        let done = sqlx::query(
            "UPDATE ops_event_deliveries SET deliver_after = ?1 \
             WHERE subscription = ?2 AND seq IN (SELECT value FROM json_each(?3))",
        )
        .bind(now_ms().saturating_add(duration_ms(delay)))
        .bind(subscription)
        .bind(json_list(tags.iter().map(|t| t.0 as i64)))
        .execute(&self.pool)
        .await
        .map_err(Error::sqlite)?;
        if done.rows_affected() == 0 {
            self.exists(subscription).await?;
        }
        self.notify();
        Ok(())
    }

    async fn pending(&self, subscription: &str) -> Result<u64> {
        self.exists(subscription).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM ops_event_deliveries WHERE subscription = ?1")
                .bind(subscription)
                .fetch_one(&self.pool)
                .await
                .map_err(Error::sqlite)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn backlog(&self, subscription: &str) -> Result<u64> {
        self.exists(subscription).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM ops_events WHERE seq > s.cursor) \
                  + (SELECT COUNT(*) FROM ops_event_deliveries d WHERE d.subscription = s.name) \
             FROM ops_event_subscriptions s WHERE s.name = ?1",
        )
        .bind(subscription)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::sqlite)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn oldest_unacked(&self, subscription: &str) -> Result<Option<DateTime<Utc>>> {
        self.exists(subscription).await?;
        let ms: Option<i64> = sqlx::query_scalar(
            "SELECT e.recorded_at FROM ops_events e WHERE e.seq = ( \
                 SELECT MIN(seq) FROM ( \
                     SELECT MIN(d.seq) AS seq FROM ops_event_deliveries d WHERE d.subscription = ?1 \
                     UNION ALL \
                     SELECT MIN(e2.seq) FROM ops_events e2, ops_event_subscriptions s \
                     WHERE s.name = ?1 AND e2.seq > s.cursor))",
        )
        .bind(subscription)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::sqlite)?
        .flatten();
        Ok(ms.and_then(DateTime::from_timestamp_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists() {
        assert_eq!(json_list([].into_iter()), "[]");
        assert_eq!(json_list([1, 22, 3].into_iter()), "[1,22,3]");
    }
}
