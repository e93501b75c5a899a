//! Fleet state: what Ops knows it owns, written with the events of each change in one
//! transaction (the outbox), so that a record and its event are never apart.
//!
//! The providers' labels stay the source of truth: [`Fleet::refresh`](crate::fleet::Fleet::refresh)
//! reconciles the records with what really exists, and the orphan sweep finds servers
//! labelled as a fleet's that no record knows (a crash between create and record).
//!
//! Stores: [`MemoryFleetStore`] (events to any `EventBus`), `SqliteFleetStore` (feature
//! `sqlite`, the embedded default) and `PostgresFleetStore` (feature `postgres`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Event;
use ops_events::EventBus;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Server};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresFleetStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteFleetStore;

/// Where a recorded server is in Ops' eyes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeState {
    /// Created; not known to run yet.
    Provisioned,
    /// Running (the provider says so, and for owned machines SSH answered).
    Ready,
    /// Created but it did not become ready in time: it exists, and costs, until deleted.
    NotReady,
    /// A delete was asked for and the provider has not confirmed it yet.
    Deleting,
}

impl NodeState {
    /// The state's name as stored (`provisioned`, `ready`, `not_ready`, `deleting`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Provisioned => "provisioned",
            NodeState::Ready => "ready",
            NodeState::NotReady => "not_ready",
            NodeState::Deleting => "deleting",
        }
    }
}

/// A server a fleet owns, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeRecord {
    /// The fleet.
    pub fleet: String,
    /// The pool (from the server's label).
    pub pool: String,
    /// The slot in the pool, when known (servers adopted from an older spec may have none).
    pub slot: Option<u32>,
    /// The server's idempotency token.
    pub token: String,
    /// The server as the provider last reported it.
    pub server: Server,
    /// Ops' view of it.
    pub state: NodeState,
    /// Its hourly price in `currency` when it was recorded.
    pub hourly: Decimal,
    /// The currency of `hourly`.
    pub currency: String,
    /// When the record was first written.
    pub recorded_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl NodeRecord {
    /// A new record of `server`, owned by `fleet`.
    pub fn new(
        fleet: impl Into<String>,
        server: Server,
        slot: Option<u32>,
        state: NodeState,
        hourly: Decimal,
        currency: impl Into<String>,
    ) -> Self {
        let now = Utc::now();
        Self {
            fleet: fleet.into(),
            pool: server.labels.get(crate::POOL).cloned().unwrap_or_default(),
            slot,
            token: server.labels.get(crate::TOKEN).cloned().unwrap_or_default(),
            server,
            state,
            hourly,
            currency: currency.into(),
            recorded_at: now,
            updated_at: now,
        }
    }

    /// The same record in another state.
    pub fn with_state(mut self, state: NodeState) -> Self {
        self.state = state;
        self.updated_at = Utc::now();
        self
    }

    /// The key of the record: fleet, provider and server id.
    pub fn key(&self) -> NodeKey {
        NodeKey {
            fleet: self.fleet.clone(),
            provider: self.server.provider.clone(),
            server_id: self.server.id.clone(),
        }
    }
}

/// What identifies a record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct NodeKey {
    /// The fleet.
    pub fleet: String,
    /// The provider.
    pub provider: String,
    /// The provider's server id.
    pub server_id: String,
}

impl NodeKey {
    /// A key.
    pub fn new(
        fleet: impl Into<String>,
        provider: impl Into<String>,
        server_id: impl Into<String>,
    ) -> Self {
        Self {
            fleet: fleet.into(),
            provider: provider.into(),
            server_id: server_id.into(),
        }
    }
}

/// One change to the records.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// Insert or replace a record.
    Put(Box<NodeRecord>),
    /// Remove a record (the provider confirmed the server is gone).
    Remove(NodeKey),
}

/// Where fleet records live. [`commit`](Self::commit) writes changes and their events
/// in one transaction: both happen or neither does.
#[async_trait]
pub trait FleetStore: Send + Sync + 'static {
    /// The records of `fleet`, ordered by pool, slot and server id.
    async fn nodes(&self, fleet: &str) -> Result<Vec<NodeRecord>>;

    /// The fleets that have records.
    async fn fleets(&self) -> Result<Vec<String>>;

    /// Applies `changes` and appends `events`, atomically.
    async fn commit(&self, changes: &[Change], events: &[Event]) -> Result<()>;

    /// Takes the fleet's lock, or fails at once with [`Error::Busy`] when someone else
    /// holds it: one apply, destroy, refresh or sweep of a fleet at a time. Released
    /// when the returned guard is dropped. The provided implementation does not lock
    /// (a store of its own caller's); the stores here do: in memory and SQLite within
    /// this process, PostgreSQL across processes.
    async fn lock(&self, fleet: &str) -> Result<FleetLock> {
        let _ = fleet;
        Ok(FleetLock::holding(()))
    }
}

/// What a store holds while a fleet is locked ([`FleetStore::lock`]): released by
/// [`release`](Self::release), or by dropping it (for a connection: closing it).
#[async_trait]
pub trait HeldLock: Send + Sync + 'static {
    /// Releases the lock now.
    async fn release(self: Box<Self>);
}

#[async_trait]
impl HeldLock for tokio::sync::OwnedMutexGuard<()> {
    async fn release(self: Box<Self>) {}
}

#[async_trait]
impl HeldLock for () {
    async fn release(self: Box<Self>) {}
}

/// A fleet's lock. [`release`](Self::release) it when done; dropping it releases it
/// too (a PostgreSQL lock a moment later, when its connection has closed).
#[must_use = "the lock is released when the guard is dropped"]
pub struct FleetLock {
    held: Option<Box<dyn HeldLock>>,
}

impl std::fmt::Debug for FleetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLock").finish_non_exhaustive()
    }
}

impl FleetLock {
    /// A guard over `held`.
    pub fn holding(held: impl HeldLock) -> Self {
        Self {
            held: Some(Box::new(held)),
        }
    }

    /// Releases the lock now (waiting for the store to say so).
    pub async fn release(mut self) {
        if let Some(held) = self.held.take() {
            held.release().await;
        }
    }

    /// The lock of `fleet` among the users of one store in this process (`store`: the
    /// address of something its clones share).
    pub(crate) fn in_process(store: usize, fleet: &str) -> Result<Self> {
        type Locks = std::sync::Mutex<BTreeMap<(usize, String), Arc<tokio::sync::Mutex<()>>>>;
        static LOCKS: std::sync::OnceLock<Locks> = std::sync::OnceLock::new();
        let mutex = {
            let mut locks = LOCKS
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Forget locks nobody holds or waits for, so the map stays small.
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            locks.entry((store, fleet.to_owned())).or_default().clone()
        };
        match mutex.try_lock_owned() {
            Ok(guard) => Ok(Self::holding(guard)),
            Err(_) => Err(Error::Busy {
                fleet: fleet.to_owned(),
                holder: "another task of this process".to_owned(),
            }),
        }
    }
}

#[async_trait]
impl<T: FleetStore + ?Sized> FleetStore for Arc<T> {
    async fn nodes(&self, fleet: &str) -> Result<Vec<NodeRecord>> {
        (**self).nodes(fleet).await
    }
    async fn fleets(&self) -> Result<Vec<String>> {
        (**self).fleets().await
    }
    async fn commit(&self, changes: &[Change], events: &[Event]) -> Result<()> {
        (**self).commit(changes, events).await
    }
    async fn lock(&self, fleet: &str) -> Result<FleetLock> {
        (**self).lock(fleet).await
    }
}

/// Records in memory; events published to an [`EventBus`] under the same lock, and the
/// records rolled back when publishing fails. For tests and for processes that keep
/// their fleet state elsewhere.
#[derive(Clone)]
pub struct MemoryFleetStore {
    inner: Arc<tokio::sync::Mutex<BTreeMap<NodeKey, NodeRecord>>>,
    bus: Arc<dyn EventBus>,
}

impl std::fmt::Debug for MemoryFleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryFleetStore").finish_non_exhaustive()
    }
}

impl Default for MemoryFleetStore {
    fn default() -> Self {
        Self::new(Arc::new(ops_events::memory::InMemoryBus::new()))
    }
}

impl MemoryFleetStore {
    /// A store publishing its events to `bus`.
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        Self {
            inner: Default::default(),
            bus,
        }
    }

    /// The bus its events go to.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }
}

#[async_trait]
impl FleetStore for MemoryFleetStore {
    async fn nodes(&self, fleet: &str) -> Result<Vec<NodeRecord>> {
        let inner = self.inner.lock().await;
        let mut out: Vec<NodeRecord> = inner
            .values()
            .filter(|r| r.fleet == fleet)
            .cloned()
            .collect();
        sort(&mut out);
        Ok(out)
    }

    async fn fleets(&self) -> Result<Vec<String>> {
        let inner = self.inner.lock().await;
        let mut out: Vec<String> = inner.keys().map(|k| k.fleet.clone()).collect();
        out.dedup();
        Ok(out)
    }

    async fn lock(&self, fleet: &str) -> Result<FleetLock> {
        FleetLock::in_process(Arc::as_ptr(&self.inner) as *const () as usize, fleet)
    }

    async fn commit(&self, changes: &[Change], events: &[Event]) -> Result<()> {
        let mut inner = self.inner.lock().await;
        // What the changed keys held before, to undo exactly those if publishing fails.
        let undo: Vec<(NodeKey, Option<NodeRecord>)> = changes
            .iter()
            .map(|c| {
                let key = match c {
                    Change::Put(r) => r.key(),
                    Change::Remove(k) => k.clone(),
                };
                let before = inner.get(&key).cloned();
                (key, before)
            })
            .collect();
        apply_changes(&mut inner, changes);
        if let Err(e) = self.bus.publish(events).await {
            for (key, before) in undo.into_iter().rev() {
                match before {
                    Some(r) => inner.insert(key, r),
                    None => inner.remove(&key),
                };
            }
            return Err(Error::Events(e));
        }
        Ok(())
    }
}

fn apply_changes(map: &mut BTreeMap<NodeKey, NodeRecord>, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Put(r) => {
                map.insert(r.key(), (**r).clone());
            }
            Change::Remove(k) => {
                map.remove(k);
            }
        }
    }
}

pub(crate) fn sort(records: &mut [NodeRecord]) {
    records.sort_by(|a, b| {
        (a.pool.as_str(), a.slot, a.server.id.as_str()).cmp(&(
            b.pool.as_str(),
            b.slot,
            b.server.id.as_str(),
        ))
    });
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn store(backend: &'static str, e: impl Into<ops_events::BoxError>) -> Error {
    Error::Store {
        source: ops_events::StoreError::new(backend, e),
    }
}

/// A stored row: the record as JSON.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn decode(backend: &'static str, json: &str) -> Result<NodeRecord> {
    serde_json::from_str(json).map_err(|e| store(backend, e))
}
