//! The durable PostgreSQL outbox: [`PostgresOutbox`] and [`PostgresDeadLetters`]
//! (feature `postgres`, PostgreSQL 13 or later).
//!
//! The outbox is a table of events in the same database as the caller's own state, so
//! that a state change and its events commit in one transaction. Several processes
//! (coordinators on several machines) may publish and fetch at once, even on the same
//! subscription: each event goes to one of them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ops_core::Event;
//! use ops_events::postgres::PostgresOutbox;
//!
//! let outbox = PostgresOutbox::connect("postgres://ops:secret@db.internal/ops").await?;
//! let mut tx = outbox.pool().begin().await?;
//! sqlx::query("UPDATE jobs SET state = 'done' WHERE id = 'j1'").execute(&mut *tx).await?;
//! let event = Event::builder("acme.job.done", "ops://acme").subject("j1").build();
//! PostgresOutbox::append(&mut tx, &[event]).await?;
//! tx.commit().await?;
//! outbox.notify(); // wake fetchers of this process at once (others get a NOTIFY)
//! # Ok(()) }
//! ```
//!
//! # Delivery order and long transactions
//!
//! A `BIGSERIAL` is taken at insert time but becomes visible at commit, so sequence
//! numbers commit out of order and a cursor on them alone would skip events. Each row
//! therefore records its transaction id (`pg_current_xact_id()`), and a subscription
//! reads in `(txid, seq)` order only the rows of transactions older than every
//! transaction still running in the database (the oldest id in the snapshot's
//! `pg_snapshot_xip`, leaving out those seen running in other databases). Nothing
//! can commit behind the cursor, so nothing is skipped.
//!
//! The consequence: **a transaction that has written something and stays open delays
//! delivery** of every event appended by transactions that got their id after it,
//! until it ends, whatever tables it touches. Keep transactions short. Transactions in
//! other databases of the server do not count: they are recognised in
//! `pg_stat_activity` (where a session's transaction id is hidden from the outbox's
//! user, that session counts).
//!
//! # Wake-ups
//!
//! [`append`](PostgresOutbox::append) sends a `NOTIFY ops_events` that fires at commit;
//! each outbox keeps one `LISTEN` connection and wakes its waiting fetches. If that
//! connection drops, fetches poll every 100 ms until it is back; otherwise they look
//! every [`recheck_interval`](PostgresOutboxConfig::recheck_interval) anyway.

mod bus;
mod dead_letter;
mod listener;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ops_core::Event;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::sync::{Notify, watch};

use crate::redact::redact_url;
use crate::{Error, Result};

pub use dead_letter::PostgresDeadLetters;

/// The outbox migrations, PostgreSQL dialect (same versions as SQLite's). Other
/// crates' migrations (such as `ops-tasks'`) share `_sqlx_migrations` in the same
/// database, hence `ignore_missing`.
static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations/postgres")
};

/// The channel of `LISTEN`/`NOTIFY` wake-ups (per database).
const CHANNEL: &str = "ops_events";

/// How often a waiting fetch looks while the `LISTEN` connection is down.
const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// What [`PostgresOutbox::connect_with`] does with the outbox schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Migrations {
    /// Applies pending migrations (under a PostgreSQL advisory lock, so concurrent
    /// starts are safe).
    #[default]
    Run,
    /// Applies nothing: fails with [`Error::SchemaOutdated`] naming the missing
    /// migrations when the schema is older than this program. For deployments where
    /// a separate step, with more privileges, migrates.
    Require,
}

/// Settings of a [`PostgresOutbox`] opened with [`PostgresOutbox::connect_with`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PostgresOutboxConfig {
    /// Connections in the pool (the `LISTEN` connection comes on top).
    pub max_connections: u32,
    /// How long connecting waits for the server.
    #[serde(with = "crate::serde_millis")]
    pub connect_timeout: Duration,
    /// Whether to apply the outbox migrations or only require them.
    pub migrations: Migrations,
    /// How often an idle fetch looks at the table even without a wake-up: this picks up
    /// events held back by a long transaction (see the [module docs](self)).
    #[serde(with = "crate::serde_millis")]
    pub recheck_interval: Duration,
}

impl Default for PostgresOutboxConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            migrations: Migrations::Run,
            recheck_interval: Duration::from_secs(1),
        }
    }
}

impl PostgresOutboxConfig {
    /// Sets the pool size.
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets what happens to the schema.
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.migrations = migrations;
        self
    }

    /// Sets the recheck interval of idle fetches.
    pub fn recheck_interval(mut self, recheck_interval: Duration) -> Self {
        self.recheck_interval = recheck_interval;
        self
    }
}

/// A durable event bus stored in PostgreSQL: the transactional outbox of a platform
/// that runs on several machines.
///
/// Events, subscriptions (with their cursors) and unacknowledged deliveries all live
/// in the database, so any process can resume a subscription where another stopped,
/// and what was not acknowledged is delivered again once its `ack_wait` has passed.
/// Processes fetching from the same subscription take turns on its row
/// (`SELECT … FOR UPDATE`) and never hand out the same event at once. Tables are
/// prefixed `ops_event` and sit beside the caller's own.
///
/// Cloning is cheap; clones share the pool, the `LISTEN` connection and the wake-up
/// signal.
#[derive(Clone, Debug)]
pub struct PostgresOutbox {
    pool: PgPool,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    notify: Notify,
    /// Whether the `LISTEN` connection is up (else fetches poll).
    listening: AtomicBool,
    recheck_interval: Duration,
    /// Dropped with the last clone: stops the listener task.
    _stop: watch::Sender<()>,
}

impl PostgresOutbox {
    /// Connects to `url` (`postgres://user:password@host:port/database`) with the
    /// default [`PostgresOutboxConfig`] and applies the outbox migrations.
    ///
    /// An unreachable server or a URL that is not `postgres://` / `postgresql://` is a
    /// clear error naming the URL, password redacted.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOutboxConfig::default()).await
    }

    /// [`connect`](Self::connect) with explicit settings.
    pub async fn connect_with(url: &str, config: PostgresOutboxConfig) -> Result<Self> {
        let shown = redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::invalid(
                "postgres url",
                shown,
                "must start with postgres:// or postgresql://",
            ));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("postgres url", shown.as_str(), e.to_string()))?;
        // One plain connection first: the pool would retry a refused connection until
        // its timeout and then only say "timed out"; this says why.
        match tokio::time::timeout(config.connect_timeout, PgConnection::connect_with(&options))
            .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(e)) => {
                return Err(Error::Connect {
                    url: shown,
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(Error::Connect {
                    url: shown,
                    message: format!("no answer within {:?}", config.connect_timeout),
                });
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            // Waiting for a free connection under load is not connecting: keep sqlx's
            // 30 s unless the connect timeout is longer.
            .acquire_timeout(config.connect_timeout.max(Duration::from_secs(30)))
            .idle_timeout(Some(Duration::from_secs(600)))
            .connect_lazy_with(options);
        tracing::debug!(url = %shown, "connected postgres outbox");
        Self::with_pool(pool, &config, &shown).await
    }

    /// Uses an existing pool (the caller's own) and applies the outbox migrations to
    /// it (default [`PostgresOutboxConfig`] otherwise).
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        let shown = pool_url(&pool);
        Self::with_pool(pool, &PostgresOutboxConfig::default(), &shown).await
    }

    async fn with_pool(pool: PgPool, config: &PostgresOutboxConfig, url: &str) -> Result<Self> {
        match config.migrations {
            Migrations::Run => MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| Error::migrate("postgres", e))?,
            Migrations::Require => {
                let mut conn = pool.acquire().await.map_err(Error::postgres)?;
                let missing = missing_migrations(&MIGRATOR, &mut conn).await?;
                if !missing.is_empty() {
                    return Err(Error::SchemaOutdated {
                        url: url.to_owned(),
                        missing,
                    });
                }
            }
        }
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            notify: Notify::new(),
            listening: AtomicBool::new(false),
            recheck_interval: config.recheck_interval,
            _stop: stop,
        });
        listener::start(
            &pool,
            config.connect_timeout,
            Arc::downgrade(&shared),
            stopped,
        )
        .await;
        Ok(Self { pool, shared })
    }

    /// The connection pool, for the caller's own tables and transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Dead letters stored in this database.
    pub fn dead_letters(&self) -> PostgresDeadLetters {
        PostgresDeadLetters::new(self.pool.clone())
    }

    /// Appends events to the outbox on `conn`, typically inside the caller's
    /// transaction (`&mut tx`), so that they commit or roll back with the caller's own
    /// changes. Events whose id is already stored are skipped (`ON CONFLICT DO
    /// NOTHING`): a duplicate never fails the caller's transaction. When two
    /// transactions append the same id at once, the second waits for the first and
    /// skips it if the first commits.
    ///
    /// Nothing is delivered before the transaction commits. At commit a `NOTIFY`
    /// wakes the fetchers of every process; [`notify`](Self::notify) wakes those of
    /// this one without the round trip through the server.
    ///
    /// Events are written with one `INSERT … SELECT FROM UNNEST(…)` per 10,000.
    pub async fn append(conn: &mut PgConnection, events: &[Event]) -> Result<()> {
        for chunk in events.chunks(APPEND_CHUNK) {
            let mut ids = Vec::with_capacity(chunk.len());
            let mut types = Vec::with_capacity(chunk.len());
            let mut subjects = Vec::with_capacity(chunk.len());
            let mut payloads = Vec::with_capacity(chunk.len());
            for event in chunk {
                payloads.push(
                    serde_json::to_string(event).map_err(|source| Error::Encode {
                        event_id: event.id,
                        source,
                    })?,
                );
                ids.push(event.id.to_string());
                types.push(event.ty.as_str());
                subjects.push(event.subject.as_deref());
            }
            sqlx::query(
                "WITH appended AS ( \
                     INSERT INTO ops_events (event_id, type, subject, payload) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
                     ON CONFLICT (event_id) DO NOTHING) \
                 SELECT pg_notify('ops_events', '')",
            )
            .bind(ids)
            .bind(types)
            .bind(subjects)
            .bind(payloads)
            .execute(&mut *conn)
            .await
            .map_err(Error::postgres)?;
        }
        Ok(())
    }

    /// Wakes fetchers of this process that wait for new events. Call it after
    /// committing a transaction that [`append`](Self::append)ed events (other
    /// processes are woken by the `NOTIFY` the commit sends).
    pub fn notify(&self) {
        self.shared.notify.notify_waiters();
    }

    /// Deletes events recorded more than `older_than` ago that no subscription still
    /// has to deliver or see acknowledged; returns how many were deleted.
    ///
    /// Retention is the caller's choice (the outbox never deletes on its own). A
    /// subscription created later with [`StartFrom::Beginning`](crate::StartFrom)
    /// does not see pruned events, and a pruned event id may be published again.
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM ops_events e \
             WHERE e.recorded_at < statement_timestamp() - $1 * interval '1 millisecond' \
               AND NOT EXISTS ( \
                   SELECT 1 FROM ops_event_subscriptions s \
                   WHERE (e.txid, e.seq) > (s.cursor_txid, s.cursor_seq) \
                     AND (s.start_snapshot IS NULL \
                          OR NOT pg_visible_in_snapshot(e.txid, s.start_snapshot))) \
               AND NOT EXISTS (SELECT 1 FROM ops_event_deliveries d WHERE d.seq = e.seq)",
        )
        .bind(duration_ms(older_than))
        .execute(&self.pool)
        .await
        .map_err(Error::postgres)?;
        Ok(done.rows_affected())
    }

    /// The highest sequence number stored (0 when empty). Sequence numbers are never
    /// reused, but with concurrent writers they commit out of order.
    pub async fn head(&self) -> Result<u64> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM ops_events")
            .fetch_one(&self.pool)
            .await
            .map_err(Error::postgres)?;
        Ok(u64::try_from(head).unwrap_or(0))
    }

    fn listening(&self) -> bool {
        self.shared.listening.load(Ordering::Relaxed)
    }
}

/// Events per `INSERT` statement of [`PostgresOutbox::append`].
const APPEND_CHUNK: usize = 10_000;

/// The migrations of `migrator` not yet applied to the database behind `conn`, as
/// `<version>_<name>`: what [`Migrations::Require`] reports. For crates that keep
/// their own migrations in the outbox's database (they share `_sqlx_migrations`).
pub async fn missing_migrations(
    migrator: &Migrator,
    conn: &mut PgConnection,
) -> Result<Vec<String>> {
    let table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::postgres)?;
    let applied: Vec<i64> = if table {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::postgres)?
    } else {
        Vec::new()
    };
    Ok(migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{}_{}", m.version, m.description.replace(' ', "_")))
        .collect())
}

/// `postgres://user@host:port/database` of a pool (it holds no password), for
/// messages about a pool the caller built.
pub fn pool_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("")
    )
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_json() {
        let c: PostgresOutboxConfig =
            serde_json::from_str(r#"{"migrations":"require","connect_timeout":250}"#).unwrap();
        assert_eq!(c.migrations, Migrations::Require);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.max_connections, 10);
        assert_eq!(
            c,
            PostgresOutboxConfig::default()
                .migrations(Migrations::Require)
                .connect_timeout(Duration::from_millis(250))
        );
    }

    #[test]
    fn migrations_are_embedded() {
        assert!(MIGRATOR.iter().any(|m| m.version == 20261125000001));
    }
}
