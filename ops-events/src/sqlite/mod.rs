//! The durable SQLite outbox: [`SqliteOutbox`] and [`SqliteDeadLetters`].
//!
//! The outbox is a table of events in the same SQLite database as the caller's own
//! state, so that a state change and its events commit in one transaction:
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ops_core::Event;
//! use ops_events::sqlite::SqliteOutbox;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let outbox = SqliteOutbox::open(dir.path().join("ops.db").to_str().unwrap()).await?;
//! sqlx::query("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT)")
//!     .execute(outbox.pool())
//!     .await?;
//!
//! let mut tx = outbox.pool().begin().await?;
//! sqlx::query("INSERT INTO jobs VALUES ('j1', 'done')").execute(&mut *tx).await?;
//! let event = Event::builder("acme.job.done", "ops://acme").subject("j1").build();
//! SqliteOutbox::append(&mut *tx, &[event]).await?;
//! tx.commit().await?;
//! outbox.notify(); // wake fetchers waiting in this process
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! # Durability
//!
//! The database runs in WAL mode. With the default `synchronous = NORMAL` a commit is
//! atomic and survives a crash of the process, but the last transactions before a
//! power loss or OS crash may be rolled back (never half-applied). With
//! [`Synchronous::Full`] every commit is fsynced before it returns: nothing committed
//! is lost, at the cost of one fsync per transaction.

mod bus;
mod dead_letter;

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ops_core::Event;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
use tokio::sync::Notify;

use crate::{Error, Result};

pub use dead_letter::SqliteDeadLetters;

/// How hard SQLite works to keep commits across a power loss (see the
/// [module docs](self#durability)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Synchronous {
    /// Commits survive a process crash; the last ones may be rolled back on power
    /// loss. Fast.
    #[default]
    Normal,
    /// Every commit is fsynced: survives power loss.
    Full,
}

/// Settings of a [`SqliteOutbox`] opened with [`SqliteOutbox::open_with`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SqliteOutboxConfig {
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// Connections in the pool (forced to 1 for an in-memory database).
    pub max_connections: u32,
    /// How long a statement waits for another writer's lock before failing.
    #[serde(with = "crate::serde_millis")]
    pub busy_timeout: Duration,
    /// How often an idle fetch looks at the table even without a [`SqliteOutbox::notify`]:
    /// this picks up events committed by other processes, or by callers that did not
    /// notify.
    #[serde(with = "crate::serde_millis")]
    pub recheck_interval: Duration,
}

impl Default for SqliteOutboxConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
            recheck_interval: Duration::from_secs(1),
        }
    }
}

impl SqliteOutboxConfig {
    /// Sets the durability of commits.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets the pool size.
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets the busy timeout.
    pub fn busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// Sets the recheck interval of idle fetches.
    pub fn recheck_interval(mut self, recheck_interval: Duration) -> Self {
        self.recheck_interval = recheck_interval;
        self
    }
}

/// A durable event bus stored in SQLite: the transactional outbox of the local
/// platform.
///
/// Events, subscriptions (with their cursors) and unacknowledged deliveries all live
/// in the database, so reopening it after a restart resumes every subscription where
/// it stopped and redelivers what was not acknowledged (once its `ack_wait` has
/// passed). Tables are prefixed `ops_event` and sit beside the caller's own.
///
/// Cloning is cheap; clones share the pool and the wake-up signal.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    pool: SqlitePool,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    notify: Notify,
    recheck_interval: Duration,
}

/// Creates the missing parent directories of a database file.
fn create_parent(file: &Path) -> Result<()> {
    match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

impl SqliteOutbox {
    /// Opens (creating it if needed) the database at `url_or_path` with the default
    /// [`SqliteOutboxConfig`]: WAL mode, `synchronous = NORMAL`, a 5 s busy timeout,
    /// foreign keys on; then applies the outbox migrations.
    ///
    /// `url_or_path` is a `sqlite:` URL (`sqlite://data/ops.db`, `sqlite::memory:`) or
    /// a file path. Missing parent directories of the database file are created.
    pub async fn open(url_or_path: &str) -> Result<Self> {
        Self::open_with(url_or_path, &SqliteOutboxConfig::default()).await
    }

    /// [`open`](Self::open) with explicit settings.
    pub async fn open_with(url_or_path: &str, config: &SqliteOutboxConfig) -> Result<Self> {
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        let options = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path)
                .map_err(|e| Error::invalid("sqlite url", url_or_path, e.to_string()))?
        } else {
            if url_or_path.is_empty() {
                return Err(Error::invalid("sqlite path", url_or_path, "is empty"));
            }
            SqliteConnectOptions::new().filename(url_or_path)
        };
        if !in_memory {
            // A URL and a plain path alike: the database may be the first thing written
            // under its directory (a fresh clone, a new state directory).
            create_parent(options.get_filename())?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(match config.synchronous {
                Synchronous::Normal => SqliteSynchronous::Normal,
                Synchronous::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(config.busy_timeout)
            .foreign_keys(true);
        // Each connection to `:memory:` is its own database: keep exactly one.
        let max = if in_memory {
            1
        } else {
            config.max_connections.max(1)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .connect_with(options)
            .await
            .map_err(Error::sqlite)?;
        tracing::debug!(url = url_or_path, synchronous = ?config.synchronous, "opened sqlite outbox");
        Self::with_pool(pool, config.recheck_interval).await
    }

    /// Uses an existing pool (the caller chose its pragmas; WAL is recommended) and
    /// applies the outbox migrations to it.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        Self::with_pool(pool, SqliteOutboxConfig::default().recheck_interval).await
    }

    async fn with_pool(pool: SqlitePool, recheck_interval: Duration) -> Result<Self> {
        migrate(&pool).await?;
        Ok(Self {
            pool,
            shared: Arc::new(Shared {
                notify: Notify::new(),
                recheck_interval,
            }),
        })
    }

    /// The connection pool, for the caller's own tables and transactions.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Dead letters stored in this database.
    pub fn dead_letters(&self) -> SqliteDeadLetters {
        SqliteDeadLetters::new(self.pool.clone())
    }

    /// Appends events to the outbox on `conn`, typically inside the caller's
    /// transaction (`&mut *tx`), so that they commit or roll back with the caller's
    /// own changes. Events whose id is already stored are skipped.
    ///
    /// Nothing is delivered before the transaction commits; call
    /// [`notify`](Self::notify) after committing to wake waiting fetchers at once
    /// (otherwise they notice within `recheck_interval`).
    ///
    /// Large batches are written with multi-row `INSERT`s whose statements are
    /// prepared once per connection.
    ///
    /// SQLite has one writer at a time and the bus itself writes (fetch, ack). A
    /// transaction that *reads before it writes* should start with
    /// `pool.begin_with("BEGIN IMMEDIATE")`: a deferred one may fail with
    /// `SQLITE_BUSY` when another connection commits in between (the error
    /// [is retryable](crate::Error::is_retryable)).
    pub async fn append(conn: &mut SqliteConnection, events: &[Event]) -> Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        for chunk in events.chunks(APPEND_CHUNK) {
            let mut query = sqlx::query(insert_sql(chunk.len()));
            for event in chunk {
                let payload = serde_json::to_string(event).map_err(|source| Error::Encode {
                    event_id: event.id,
                    source,
                })?;
                query = query
                    .bind(event.id.to_string())
                    .bind(event.ty.clone())
                    .bind(event.subject.clone())
                    .bind(payload)
                    .bind(now);
            }
            query.execute(&mut *conn).await.map_err(Error::sqlite)?;
        }
        Ok(())
    }

    /// Wakes fetchers of this process that wait for new events. Call it after
    /// committing a transaction that [`append`](Self::append)ed events.
    pub fn notify(&self) {
        self.shared.notify.notify_waiters();
    }

    /// Deletes events recorded more than `older_than` ago that every subscription
    /// has received and acknowledged; returns how many were deleted.
    ///
    /// Retention is the caller's choice (the outbox never deletes on its own). A
    /// subscription created later with [`StartFrom::Beginning`](crate::StartFrom)
    /// does not see pruned events, and a pruned event id may be published again.
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        let cutoff = now_ms().saturating_sub(duration_ms(older_than));
        let done = sqlx::query(
            "DELETE FROM ops_events WHERE recorded_at < ?1 \
               AND seq <= (SELECT COALESCE(MIN(cursor), (SELECT MAX(seq) FROM ops_events)) \
                           FROM ops_event_subscriptions) \
               AND seq NOT IN (SELECT seq FROM ops_event_deliveries)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(Error::sqlite)?;
        Ok(done.rows_affected())
    }

    /// The highest sequence number stored (0 when empty).
    pub async fn head(&self) -> Result<u64> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM ops_events")
            .fetch_one(&self.pool)
            .await
            .map_err(Error::sqlite)?;
        Ok(u64::try_from(head).unwrap_or(0))
    }
}

/// Applies this crate's migrations; other crates' migrations in the same database
/// (such as `ops-tasks`') are left alone.
async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .map_err(|e| Error::migrate("sqlite", e))?;
    Ok(())
}

/// Rows per multi-row INSERT: 5 parameters each, well under SQLite's limit.
const APPEND_CHUNK: usize = 200;

/// The INSERT for `rows` events; full chunks share one static string so the
/// connection's statement cache prepares it once.
fn insert_sql(rows: usize) -> SqlStr {
    static FULL: OnceLock<String> = OnceLock::new();
    let build = |rows: usize| {
        let mut sql = String::with_capacity(100 + rows * 18);
        sql.push_str(
            "INSERT INTO ops_events (event_id, type, subject, payload, recorded_at) VALUES ",
        );
        for i in 0..rows {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?,?,?,?,?)");
        }
        sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
        sql
    };
    if rows == APPEND_CHUNK {
        FULL.get_or_init(|| build(APPEND_CHUNK))
            .as_str()
            .into_sql_str()
    } else {
        AssertSqlSafe(build(rows)).into_sql_str()
    }
}

/// Now in unix milliseconds.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_one_group_per_row() {
        let sql = insert_sql(3);
        assert_eq!(sql.as_str().matches("(?,?,?,?,?)").count(), 3);
        let full = insert_sql(APPEND_CHUNK);
        assert_eq!(full.as_str().matches('?').count(), APPEND_CHUNK * 5);
    }

    /// The SQLite and PostgreSQL dialects of the outbox schema keep the same
    /// migration versions and names, so both stores stay in step.
    #[test]
    fn migration_dialects_stay_in_step() {
        let list = |dialect: &str| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dialect);
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".sql"))
                .collect();
            names.sort();
            names
        };
        let sqlite = list("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, list("postgres"));
        let embedded: Vec<String> = sqlx::migrate!("./migrations/sqlite")
            .iter()
            .map(|m| format!("{}_{}.sql", m.version, m.description.replace(' ', "_")))
            .collect();
        assert_eq!(embedded, sqlite, "the sqlite migrator embeds these files");
    }

    #[test]
    fn config_reads_from_json() {
        let c: SqliteOutboxConfig =
            serde_json::from_str(r#"{"synchronous":"full","busy_timeout":250}"#).unwrap();
        assert_eq!(c.synchronous, Synchronous::Full);
        assert_eq!(c.busy_timeout, Duration::from_millis(250));
        assert_eq!(c.max_connections, 4);
    }

    #[tokio::test]
    async fn open_rejects_bad_urls_and_creates_files() {
        let err = SqliteOutbox::open("").await.unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/ops.db");
        let outbox = SqliteOutbox::open(path.to_str().unwrap()).await.unwrap();
        assert!(path.exists());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");

        let full = SqliteOutbox::open_with(
            dir.path().join("full.db").to_str().unwrap(),
            &SqliteOutboxConfig::default().synchronous(Synchronous::Full),
        )
        .await
        .unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(full.pool())
            .await
            .unwrap();
        assert_eq!(sync, 2, "FULL");

        let mem = SqliteOutbox::open("sqlite::memory:").await.unwrap();
        assert_eq!(mem.head().await.unwrap(), 0);
    }

    /// A `sqlite://` URL gets its missing directories created like a plain path does
    /// (the README's first command on a fresh clone opens `sqlite://state/ops.db`).
    #[tokio::test]
    async fn sqlite_urls_create_missing_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        for (i, url) in [
            format!("sqlite://{}/a/b/ops.db", dir.path().display()),
            format!("sqlite:{}/c/d/ops.db?mode=rwc", dir.path().display()),
        ]
        .iter()
        .enumerate()
        {
            let outbox = SqliteOutbox::open(url)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(outbox.head().await.unwrap(), 0);
            let file = dir.path().join(["a/b/ops.db", "c/d/ops.db"][i]);
            assert!(file.exists(), "{}", file.display());
        }
        // A parent that cannot be created is an I/O error naming it.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let url = format!("sqlite://{}/sub/ops.db", blocker.display());
        let err = SqliteOutbox::open(&url).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if path.ends_with("file/sub")),
            "{err:?}"
        );
    }
}
