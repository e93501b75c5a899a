//! Fleet records in PostgreSQL, beside (and in the transactions of) an `ops-events` outbox.

use async_trait::async_trait;
use ops_core::Event;
use ops_events::postgres::PostgresOutbox;

use super::{Change, FleetLock, FleetStore, HeldLock, NodeRecord, decode, sort, store};
use crate::Result;

/// The first key of ops-provision's advisory locks (`'opsv'`); the second is the
/// fleet name's hash.
const LOCK_CLASS: i32 = 0x6f70_7376;

/// A held advisory lock: its connection. Released by unlocking and closing it, or by
/// dropping it (the server ends the session when the socket closes).
struct PgLock {
    conn: std::sync::Mutex<sqlx::PgConnection>,
    fleet: String,
}

#[async_trait]
impl HeldLock for PgLock {
    async fn release(self: Box<Self>) {
        let PgLock { conn, fleet } = *self;
        let mut conn = conn
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(&fleet)
            .fetch_one(&mut conn)
            .await;
        if let Err(e) = unlocked {
            tracing::warn!(fleet, error = %e, "could not unlock the fleet; closing its connection releases it");
        }
        use sqlx::Connection;
        if let Err(e) = conn.close().await {
            tracing::debug!(fleet, error = %e, "closing the fleet lock's connection");
        }
    }
}

/// [`FleetStore`] on PostgreSQL, for several processes sharing one database: the
/// table `ops_provision_nodes` sits beside the outbox's tables, and each commit's events
/// go into that outbox in the same transaction. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresFleetStore {
    outbox: PostgresOutbox,
}

impl PostgresFleetStore {
    /// Connects to the database at `url` (`postgres://…`) with its outbox, and runs the
    /// fleet migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let outbox = PostgresOutbox::connect(url).await?;
        Self::from_outbox(outbox).await
    }

    /// Uses the database of an existing outbox (the platform's), running the fleet
    /// migrations.
    pub async fn from_outbox(outbox: PostgresOutbox) -> Result<Self> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator
            .run(outbox.pool())
            .await
            .map_err(|e| store("postgres", e))?;
        Ok(Self { outbox })
    }

    /// The outbox that holds its events (an `EventBus`).
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }
}

#[async_trait]
impl FleetStore for PostgresFleetStore {
    async fn nodes(&self, fleet: &str) -> Result<Vec<NodeRecord>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT record FROM ops_provision_nodes WHERE fleet = $1")
                .bind(fleet)
                .fetch_all(self.outbox.pool())
                .await
                .map_err(|e| store("postgres", e))?;
        let mut out = rows
            .iter()
            .map(|(json,)| decode("postgres", json))
            .collect::<Result<Vec<_>>>()?;
        sort(&mut out);
        Ok(out)
    }

    async fn fleets(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT fleet FROM ops_provision_nodes ORDER BY fleet")
                .fetch_all(self.outbox.pool())
                .await
                .map_err(|e| store("postgres", e))?;
        Ok(rows.into_iter().map(|(f,)| f).collect())
    }

    /// A session advisory lock (`pg_try_advisory_lock`), held on a connection of its
    /// own: across every process on this database. Dropping the guard closes that
    /// connection, which releases the lock (also when the process dies).
    async fn lock(&self, fleet: &str) -> Result<FleetLock> {
        let mut conn = self
            .outbox
            .pool()
            .acquire()
            .await
            .map_err(|e| store("postgres", e))?
            .detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(fleet)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| store("postgres", e))?;
        if taken {
            Ok(FleetLock::holding(PgLock {
                conn: std::sync::Mutex::new(conn),
                fleet: fleet.to_owned(),
            }))
        } else {
            Err(crate::Error::Busy {
                fleet: fleet.to_owned(),
                holder: "another process (a PostgreSQL advisory lock)".to_owned(),
            })
        }
    }

    async fn commit(&self, changes: &[Change], events: &[Event]) -> Result<()> {
        let mut tx = self
            .outbox
            .pool()
            .begin()
            .await
            .map_err(|e| store("postgres", e))?;
        for change in changes {
            match change {
                Change::Put(r) => {
                    let json = serde_json::to_string(r).map_err(|e| store("postgres", e))?;
                    sqlx::query(
                        "INSERT INTO ops_provision_nodes \
                         (fleet, provider, server_id, token, state, record, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
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
                    .map_err(|e| store("postgres", e))?;
                }
                Change::Remove(k) => {
                    sqlx::query(
                        "DELETE FROM ops_provision_nodes \
                         WHERE fleet = $1 AND provider = $2 AND server_id = $3",
                    )
                    .bind(&k.fleet)
                    .bind(&k.provider)
                    .bind(&k.server_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| store("postgres", e))?;
                }
            }
        }
        PostgresOutbox::append(&mut tx, events).await?;
        tx.commit().await.map_err(|e| store("postgres", e))?;
        self.outbox.notify();
        Ok(())
    }
}
