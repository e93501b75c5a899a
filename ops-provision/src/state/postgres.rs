//! Fleet records in PostgreSQL, beside (and in the transactions of) an `ops-events` outbox.

use async_trait::async_trait;
use ops_core::Event;
use ops_events::postgres::PostgresOutbox;

use super::{Change, FleetStore, NodeRecord, decode, sort, store};
use crate::Result;

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
