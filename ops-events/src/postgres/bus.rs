//! [`EventBus`] on the PostgreSQL outbox tables.
//!
//! Order and concurrency are explained in the [module docs](super). The statements
//! below keep to three rules: new events are read only below the `HORIZON` in
//! `(txid, seq)` order; a fetch holds its
//! subscription row (`FOR UPDATE`) from reading the cursor until it has recorded the
//! deliveries and moved the cursor, so concurrent fetchers (in any process) take
//! turns; and every list goes to the server as one array parameter.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Event;
use sqlx::Row;
use tokio::time::Instant;

use super::{FALLBACK_POLL, PostgresOutbox, duration_ms};
use crate::bus::{Delivery, DeliveryTag, EventBus, StartFrom, SubscribeOptions, validate_name};
use crate::stored::{RawDelivery, parse};
use crate::{Error, Result};

/// What a cheap read says about a subscription before taking its row lock.
struct Probe {
    /// A new event can be taken now.
    ready: bool,
    /// A committed event waits behind a transaction still running.
    held_back: bool,
    /// Milliseconds until the next delivery is due again (negative: overdue).
    next_due_ms: Option<i64>,
}

/// The delivery horizon: no transaction below it can still commit rows into this
/// database. That is the oldest transaction running when the statement's snapshot was
/// taken, skipping those seen running in *another* database (an xid belongs to one
/// database for its life, and without the privilege to see other users' sessions
/// they simply count); the snapshot's xmax when none is left.
const HORIZON: &str = "(SELECT COALESCE(MIN(x), pg_snapshot_xmax(pg_current_snapshot())) \
     FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
                       WHERE a.backend_xid = x::xid AND a.datname <> current_database()))";

/// The first event after the cursor that the subscription may receive, in the
/// order of delivery; used by the probe and (with a limit) by the fetch.
const NEXT_EVENTS: &str = "SELECT e.txid, e.seq, e.payload FROM ops_events e \
     WHERE (e.txid, e.seq) > (s.cursor_txid, s.cursor_seq) \
       AND (s.start_snapshot IS NULL OR NOT pg_visible_in_snapshot(e.txid, s.start_snapshot))";

impl PostgresOutbox {
    async fn probe(&self, name: &str) -> Result<Probe> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT n.txid < {HORIZON}, \
                    (SELECT (EXTRACT(EPOCH FROM MIN(d.deliver_after) - statement_timestamp()) \
                             * 1000)::bigint \
                     FROM ops_event_deliveries d WHERE d.subscription = s.name) \
             FROM ops_event_subscriptions s \
             LEFT JOIN LATERAL ({NEXT_EVENTS} ORDER BY e.txid, e.seq LIMIT 1) n ON true \
             WHERE s.name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::postgres)?
        .ok_or_else(|| unknown(name))?;
        let ready: Option<bool> = row.try_get(0).map_err(Error::postgres)?;
        Ok(Probe {
            ready: ready == Some(true),
            held_back: ready == Some(false),
            next_due_ms: row.try_get(1).map_err(Error::postgres)?,
        })
    }

    /// Takes up to `max` deliveries (due redeliveries first, then new events) in one
    /// transaction that holds the subscription row.
    async fn take(&self, name: &str, max: usize, redeliveries: bool) -> Result<Vec<RawDelivery>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(Error::postgres)?;
        let ack_wait_ms: i64 = sqlx::query_scalar(
            "SELECT ack_wait_ms FROM ops_event_subscriptions WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::postgres)?
        .ok_or_else(|| unknown(name))?;
        let mut out = Vec::new();

        if redeliveries {
            let rows = sqlx::query(
                "WITH due AS ( \
                     SELECT seq FROM ops_event_deliveries \
                     WHERE subscription = $1 AND deliver_after <= statement_timestamp() \
                     ORDER BY deliver_after, seq LIMIT $2 \
                     FOR UPDATE SKIP LOCKED), \
                 redelivered AS ( \
                     UPDATE ops_event_deliveries d \
                     SET attempts = d.attempts + 1, \
                         deliver_after = statement_timestamp() + $3 * interval '1 millisecond' \
                     FROM due WHERE d.subscription = $1 AND d.seq = due.seq \
                     RETURNING d.seq, d.attempts) \
                 SELECT r.seq, r.attempts, e.payload \
                 FROM redelivered r JOIN ops_events e ON e.seq = r.seq ORDER BY r.seq",
            )
            .bind(name)
            .bind(limit)
            .bind(ack_wait_ms)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::postgres)?;
            out.reserve(rows.len());
            for row in rows {
                out.push(raw(&row)?);
            }
        }

        // Then new events, in order; the cursor moves to the last one taken. The
        // creation snapshot of a StartFrom::New subscription is dropped once the
        // cursor has passed everything it could hide.
        let remaining = limit.saturating_sub(i64::try_from(out.len()).unwrap_or(i64::MAX));
        if remaining > 0 {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "WITH next AS ( \
                     SELECT n.txid, n.seq, n.payload FROM ops_event_subscriptions s, LATERAL ( \
                         {NEXT_EVENTS} AND e.txid < {HORIZON} \
                         ORDER BY e.txid, e.seq LIMIT $2) n \
                     WHERE s.name = $1), \
                 last AS (SELECT txid, seq FROM next ORDER BY txid DESC, seq DESC LIMIT 1), \
                 delivered AS ( \
                     INSERT INTO ops_event_deliveries (subscription, seq, attempts, deliver_after) \
                     SELECT $1, seq, 1, statement_timestamp() + $3 * interval '1 millisecond' \
                     FROM next ON CONFLICT DO NOTHING), \
                 advanced AS ( \
                     UPDATE ops_event_subscriptions s \
                     SET cursor_txid = last.txid, cursor_seq = last.seq, \
                         start_snapshot = CASE WHEN last.txid < pg_snapshot_xmax(s.start_snapshot) \
                                               THEN s.start_snapshot END \
                     FROM last WHERE s.name = $1) \
                 SELECT seq, 1::int4, payload FROM next ORDER BY txid, seq"
            )))
            .bind(name)
            .bind(remaining)
            .bind(ack_wait_ms)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::postgres)?;
            out.reserve(rows.len());
            for row in rows {
                out.push(raw(&row)?);
            }
        }
        tx.commit().await.map_err(Error::postgres)?;
        Ok(out)
    }

    async fn exists(&self, name: &str) -> Result<()> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM ops_event_subscriptions WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::postgres)?;
        found.map(|_| ()).ok_or_else(|| unknown(name))
    }
}

fn raw(row: &sqlx::postgres::PgRow) -> Result<RawDelivery> {
    Ok(RawDelivery {
        seq: row.try_get(0).map_err(Error::postgres)?,
        attempts: i64::from(row.try_get::<i32, _>(1).map_err(Error::postgres)?),
        payload: row.try_get(2).map_err(Error::postgres)?,
    })
}

fn unknown(name: &str) -> Error {
    Error::UnknownSubscription {
        name: name.to_owned(),
    }
}

fn seqs(tags: &[DeliveryTag]) -> Vec<i64> {
    tags.iter()
        .map(|t| i64::try_from(t.0).unwrap_or(i64::MAX))
        .collect()
}

#[async_trait]
impl EventBus for PostgresOutbox {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(Error::postgres)?;
        PostgresOutbox::append(&mut tx, events).await?;
        tx.commit().await.map_err(Error::postgres)?;
        self.notify();
        Ok(())
    }

    async fn subscribe(&self, name: &str, options: SubscribeOptions) -> Result<()> {
        validate_name("subscription name", name)?;
        // StartFrom::New: everything below the snapshot's xmin is history; between
        // xmin and xmax, the snapshot itself tells what was committed before.
        sqlx::query(
            "INSERT INTO ops_event_subscriptions \
                 (name, cursor_txid, cursor_seq, start_snapshot, ack_wait_ms) \
             VALUES ($1, \
                     CASE WHEN $2 THEN pg_snapshot_xmin(pg_current_snapshot()) ELSE '0'::xid8 END, \
                     0, \
                     CASE WHEN $2 THEN pg_current_snapshot() END, \
                     $3) \
             ON CONFLICT (name) DO UPDATE SET ack_wait_ms = excluded.ack_wait_ms",
        )
        .bind(name)
        .bind(options.start == StartFrom::New)
        .bind(duration_ms(options.ack_wait))
        .execute(&self.pool)
        .await
        .map_err(Error::postgres)?;
        Ok(())
    }

    async fn fetch(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so a wake-up in between is not missed.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let probe = self.probe(subscription).await?;
            let due = probe.next_due_ms.is_some_and(|ms| ms <= 0);
            if max > 0 && (probe.ready || due) {
                let batch = parse(subscription, self.take(subscription, max, due).await?);
                if !batch.is_empty() {
                    return Ok(batch);
                }
                // Another consumer of this subscription was faster, or only corrupt
                // rows were due: look again.
                continue;
            }
            let now = Instant::now();
            if max == 0 || now >= deadline {
                return Ok(Vec::new());
            }
            // Events held back by a running transaction show up when it ends, which
            // sends no wake-up unless it appended events too: look again soon.
            let poll = if self.listening() && !probe.held_back {
                self.shared.recheck_interval
            } else {
                FALLBACK_POLL.min(self.shared.recheck_interval)
            };
            let mut until = deadline.min(now + poll);
            if let Some(ms) = probe.next_due_ms {
                let ms = u64::try_from(ms).unwrap_or(0);
                until = until.min(now + Duration::from_millis(ms));
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
            "DELETE FROM ops_event_deliveries WHERE subscription = $1 AND seq = ANY($2)",
        )
        .bind(subscription)
        .bind(seqs(tags))
        .execute(&self.pool)
        .await
        .map_err(Error::postgres)?;
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
            "UPDATE ops_event_deliveries \
             SET deliver_after = statement_timestamp() + $3 * interval '1 millisecond' \
             WHERE subscription = $1 AND seq = ANY($2)",
        )
        .bind(subscription)
        .bind(seqs(tags))
        .bind(duration_ms(delay))
        .execute(&self.pool)
        .await
        .map_err(Error::postgres)?;
        if done.rows_affected() == 0 {
            self.exists(subscription).await?;
        }
        self.notify();
        Ok(())
    }

    async fn pending(&self, subscription: &str) -> Result<u64> {
        self.exists(subscription).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM ops_event_deliveries WHERE subscription = $1")
                .bind(subscription)
                .fetch_one(&self.pool)
                .await
                .map_err(Error::postgres)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn backlog(&self, subscription: &str) -> Result<u64> {
        self.exists(subscription).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM ops_events e \
                     WHERE (e.txid, e.seq) > (s.cursor_txid, s.cursor_seq)) \
                  + (SELECT COUNT(*) FROM ops_event_deliveries d WHERE d.subscription = s.name) \
             FROM ops_event_subscriptions s WHERE s.name = $1",
        )
        .bind(subscription)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::postgres)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn oldest_unacked(&self, subscription: &str) -> Result<Option<DateTime<Utc>>> {
        self.exists(subscription).await?;
        let at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT MIN(at) FROM ( \
                 SELECT e.recorded_at AS at FROM ops_event_deliveries d \
                 JOIN ops_events e ON e.seq = d.seq WHERE d.subscription = $1 \
                 UNION ALL \
                 (SELECT e.recorded_at FROM ops_events e, ops_event_subscriptions s \
                  WHERE s.name = $1 AND (e.txid, e.seq) > (s.cursor_txid, s.cursor_seq) \
                  ORDER BY e.txid, e.seq LIMIT 1)) o",
        )
        .bind(subscription)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::postgres)?;
        Ok(at)
    }
}
