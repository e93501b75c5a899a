//! The object catalog: which objects exist, with their size, SHA-256 and origin, and
//! how much each tenant holds. Quotas are counted from it and retention reads it.
//!
//! An object is recorded only after its bytes are stored, and the record and its
//! `ops.storage.*` event are written in one transaction, so no record (and no event)
//! ever claims an object that an interrupted upload never finished.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Event;
use ops_events::EventBus;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresCatalog;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteCatalog;

/// One stored object as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ObjectEntry {
    /// The tenant.
    pub tenant: String,
    /// The environment.
    pub environment: String,
    /// Path relative to the tenant's environment storage.
    pub path: String,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// The backend's entity tag, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// The task that wrote it, for task outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The task attempt that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// What a tenant holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageUsage {
    /// Bytes stored.
    pub bytes: u64,
    /// Objects stored.
    pub objects: u64,
}

impl StorageUsage {
    /// Both amounts added.
    pub fn plus(self, other: StorageUsage) -> StorageUsage {
        StorageUsage {
            bytes: self.bytes.saturating_add(other.bytes),
            objects: self.objects.saturating_add(other.objects),
        }
    }
}

/// `usage` without the object `old` (when there is one).
pub(crate) fn without(usage: StorageUsage, old: Option<&ObjectEntry>) -> StorageUsage {
    match old {
        Some(old) => StorageUsage {
            bytes: usage.bytes.saturating_sub(old.size),
            objects: usage.objects.saturating_sub(1),
        },
        None => usage,
    }
}

/// Limits on what a tenant may hold; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Most bytes, across all the tenant's environments.
    pub bytes: Option<u64>,
    /// Most objects, across all the tenant's environments.
    pub objects: Option<u64>,
}

impl Quota {
    /// Whether it limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.objects.is_none()
    }

    /// The tenant's totals once `entry` replaces `old` (`None`: a new object), given
    /// its totals `usage` now; [`Error::QuotaExceeded`] when they would pass this
    /// quota. What every [`Catalog::record`] checks.
    pub fn admit(
        &self,
        entry: &ObjectEntry,
        usage: StorageUsage,
        old: Option<&ObjectEntry>,
    ) -> Result<StorageUsage> {
        let base = without(usage, old);
        let added = StorageUsage {
            bytes: entry.size,
            objects: 1,
        };
        self.check(&entry.tenant, base, added)?;
        Ok(base.plus(added))
    }

    /// The first limit that `usage` plus `more` would pass, as an
    /// [`Error::QuotaExceeded`] for `tenant`.
    pub fn check(&self, tenant: &str, usage: StorageUsage, more: StorageUsage) -> Result<()> {
        let over = |resource, used: u64, limit: Option<u64>, need: u64| match limit {
            Some(limit) if need > 0 && used.saturating_add(need) > limit => {
                Err(Error::QuotaExceeded {
                    tenant: tenant.to_owned(),
                    resource,
                    used,
                    limit,
                    need,
                })
            }
            _ => Ok(()),
        };
        over("bytes", usage.bytes, self.bytes, more.bytes)?;
        over("objects", usage.objects, self.objects, more.objects)
    }
}

/// Where objects are recorded. Implementations write each change and its event in one
/// transaction (or, without a database, publish the event only after the change).
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug + 'static {
    /// What `tenant` holds, over all its environments.
    async fn usage(&self, tenant: &str) -> Result<StorageUsage>;

    /// Records `entry` (replacing the record of the same path) with its `event`, unless
    /// the tenant's usage after the change would pass `quota`: then nothing is written
    /// and [`Error::QuotaExceeded`] is returned. Gives the record it replaced.
    async fn record(
        &self,
        entry: &ObjectEntry,
        quota: &Quota,
        event: Event,
    ) -> Result<Option<ObjectEntry>>;

    /// Removes the record of a path with its `event` (written only when there was a
    /// record). Gives the removed record.
    async fn remove(
        &self,
        tenant: &str,
        environment: &str,
        path: &str,
        event: Event,
    ) -> Result<Option<ObjectEntry>>;

    /// The record of a path.
    async fn get(&self, tenant: &str, environment: &str, path: &str)
    -> Result<Option<ObjectEntry>>;

    /// Up to `limit` records stored before `before`, oldest first, optionally of one
    /// tenant and environment and under a path prefix.
    async fn older_than(
        &self,
        filter: &EntryFilter,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ObjectEntry>>;
}

/// Which records [`Catalog::older_than`] looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryFilter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this environment's.
    pub environment: Option<String>,
    /// Only paths starting with this.
    pub prefix: String,
}

impl EntryFilter {
    /// Every record.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only `tenant`'s.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Only `environment`'s.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Only paths under `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether `entry` passes.
    pub fn matches(&self, entry: &ObjectEntry) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == entry.tenant)
            && self
                .environment
                .as_ref()
                .is_none_or(|e| *e == entry.environment)
            && entry.path.starts_with(&self.prefix)
    }
}

type Key = (String, String, String);

/// A catalog in memory (the default of [`Storage::open`](crate::Storage::open)):
/// nothing survives a restart. Events go to an optional in-process bus after each
/// change.
#[derive(Default)]
pub struct MemoryCatalog {
    state: Mutex<MemoryState>,
    bus: Option<Arc<dyn EventBus>>,
}

/// The records and each tenant's totals, kept together.
#[derive(Default)]
struct MemoryState {
    entries: BTreeMap<Key, ObjectEntry>,
    totals: std::collections::HashMap<String, StorageUsage>,
}

impl std::fmt::Debug for MemoryCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCatalog")
            .field("objects", &self.lock().entries.len())
            .field("bus", &self.bus.is_some())
            .finish()
    }
}

impl MemoryCatalog {
    /// An empty catalog that emits no events.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty catalog that publishes its events to `bus`.
    pub fn with_bus(bus: Arc<dyn EventBus>) -> Self {
        Self {
            state: Mutex::default(),
            bus: Some(bus),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn publish(&self, event: Event) -> Result<()> {
        if let Some(bus) = &self.bus {
            bus.publish(std::slice::from_ref(&event)).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Catalog for MemoryCatalog {
    async fn usage(&self, tenant: &str) -> Result<StorageUsage> {
        Ok(self.lock().totals.get(tenant).copied().unwrap_or_default())
    }

    async fn record(
        &self,
        entry: &ObjectEntry,
        quota: &Quota,
        event: Event,
    ) -> Result<Option<ObjectEntry>> {
        let old = {
            let mut state = self.lock();
            let key = (
                entry.tenant.clone(),
                entry.environment.clone(),
                entry.path.clone(),
            );
            let old = state.entries.get(&key).cloned();
            let usage = state.totals.get(&entry.tenant).copied().unwrap_or_default();
            let usage = quota.admit(entry, usage, old.as_ref())?;
            state.totals.insert(entry.tenant.clone(), usage);
            state.entries.insert(key, entry.clone());
            old
        };
        self.publish(event).await?;
        Ok(old)
    }

    async fn remove(
        &self,
        tenant: &str,
        environment: &str,
        path: &str,
        event: Event,
    ) -> Result<Option<ObjectEntry>> {
        let old = {
            let mut state = self.lock();
            let old =
                state
                    .entries
                    .remove(&(tenant.to_owned(), environment.to_owned(), path.to_owned()));
            if let Some(totals) = state.totals.get_mut(tenant) {
                *totals = without(*totals, old.as_ref());
            }
            old
        };
        if old.is_some() {
            self.publish(event).await?;
        }
        Ok(old)
    }

    async fn get(
        &self,
        tenant: &str,
        environment: &str,
        path: &str,
    ) -> Result<Option<ObjectEntry>> {
        Ok(self
            .lock()
            .entries
            .get(&(tenant.to_owned(), environment.to_owned(), path.to_owned()))
            .cloned())
    }

    async fn older_than(
        &self,
        filter: &EntryFilter,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ObjectEntry>> {
        let mut found: Vec<ObjectEntry> = self
            .lock()
            .entries
            .values()
            .filter(|e| e.created_at < before && filter.matches(e))
            .cloned()
            .collect();
        found.sort_by_key(|e| e.created_at);
        found.truncate(limit as usize);
        Ok(found)
    }
}
