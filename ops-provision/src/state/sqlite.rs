//! Fleet records in SQLite, beside (and in the transactions of) an `ops-events` outbox.

use std::sync::Arc;

use async_trait::async_trait;
use ops_core::Event;
use ops_events::sqlite::SqliteOutbox;

use super::{Change, FleetLock, FleetStore, HeldLock, NodeRecord, decode, sort, store};
use crate::Result;

/// A locked lock file; closing it (on release or drop) unlocks it.
struct LockFile(std::fs::File);

#[async_trait]
impl HeldLock for LockFile {
    async fn release(self: Box<Self>) {
        if let Err(e) = self.0.unlock() {
            tracing::debug!(error = %e, "unlocking a fleet lock file (closing it unlocks it)");
        }
    }
}

/// [`FleetStore`] on SQLite: the table `ops_provision_nodes` sits beside the outbox's
/// tables, and each commit's events go into that outbox in the same transaction.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteFleetStore {
    outbox: SqliteOutbox,
    // SQLite has one writer: this process's write transactions queue here rather than
    // retrying on busy errors.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteFleetStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or a plain
    /// path) with its outbox, and runs the fleet migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let outbox = SqliteOutbox::open(url).await?;
        Self::from_outbox(outbox).await
    }

    /// Uses the database of an existing outbox (the platform's), running the fleet
    /// migrations.
    pub async fn from_outbox(outbox: SqliteOutbox) -> Result<Self> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator
            .run(outbox.pool())
            .await
            .map_err(|e| store("sqlite", e))?;
        Ok(Self {
            outbox,
            write_lock: Default::default(),
        })
    }

    /// The outbox that holds its events (an `EventBus`).
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }
}

#[async_trait]
impl FleetStore for SqliteFleetStore {
    async fn nodes(&self, fleet: &str) -> Result<Vec<NodeRecord>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT record FROM ops_provision_nodes WHERE fleet = ?")
                .bind(fleet)
                .fetch_all(self.outbox.pool())
                .await
                .map_err(|e| store("sqlite", e))?;
        let mut out = rows
            .iter()
            .map(|(json,)| decode("sqlite", json))
            .collect::<Result<Vec<_>>>()?;
        sort(&mut out);
        Ok(out)
    }

    async fn fleets(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT fleet FROM ops_provision_nodes ORDER BY fleet")
                .fetch_all(self.outbox.pool())
                .await
                .map_err(|e| store("sqlite", e))?;
        Ok(rows.into_iter().map(|(f,)| f).collect())
    }

    /// A lock file beside the database (`ops.db.fleet-NAME.lock`, locked with the
    /// operating system's exclusive file lock), so processes sharing the file exclude
    /// each other, and a lock dies with its process. An in-memory database locks within
    /// this process.
    async fn lock(&self, fleet: &str) -> Result<FleetLock> {
        let file: Option<String> =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_optional(self.outbox.pool())
                .await
                .map_err(|e| store("sqlite", e))?;
        let Some(db) = file.filter(|f| !f.is_empty()) else {
            return FleetLock::in_process(
                Arc::as_ptr(&self.write_lock) as *const () as usize,
                fleet,
            );
        };
        let path = std::path::PathBuf::from(format!("{db}.fleet-{fleet}.lock"));
        let io = |source| crate::Error::Io {
            path: path.display().to_string(),
            source,
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => Ok(FleetLock::holding(LockFile(lock))),
            Err(std::fs::TryLockError::WouldBlock) => Err(crate::Error::Busy {
                fleet: fleet.to_owned(),
                holder: format!("another process or task (lock file {})", path.display()),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    async fn commit(&self, changes: &[Change], events: &[Event]) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self
            .outbox
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| store("sqlite", e))?;
        for change in changes {
            match change {
                Change::Put(r) => {
                    let json = serde_json::to_string(r).map_err(|e| store("sqlite", e))?;
                    sqlx::query(
                        "INSERT INTO ops_provision_nodes \
                         (fleet, provider, server_id, token, state, record, updated_at) \
                         VALUES (?, ?, ?, ?, ?, ?, ?) \
                         ON CONFLICT (fleet, provider, server_id) DO UPDATE SET \
                         token = excluded.token, state = excluded.state, \
                         record = excluded.record, updated_at = excluded.updated_at",
                    )
                    .bind(&r.fleet)
                    .bind(&r.server.provider)
                    .bind(&r.server.id)
                    .bind(&r.token)
                    .bind(r.state.as_str())
                    .bind(json)
                    .bind(r.updated_at.timestamp_millis())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| store("sqlite", e))?;
                }
                Change::Remove(k) => {
                    sqlx::query(
                        "DELETE FROM ops_provision_nodes \
                         WHERE fleet = ? AND provider = ? AND server_id = ?",
                    )
                    .bind(&k.fleet)
                    .bind(&k.provider)
                    .bind(&k.server_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| store("sqlite", e))?;
                }
            }
        }
        SqliteOutbox::append(&mut tx, events).await?;
        tx.commit().await.map_err(|e| store("sqlite", e))?;
        self.outbox.notify();
        Ok(())
    }
}
