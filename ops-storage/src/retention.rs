//! Retention: deleting objects older than their rule allows, with an event for each.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::catalog::{EntryFilter, ObjectEntry};
use crate::store::Storage;
use ops_core::{Environment, ObjectPath, Tenant};

/// Records looked at per catalog query.
const PAGE: u32 = 500;

/// What [`Storage::apply_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetentionReport {
    /// The objects deleted (each with its `ops.storage.object.deleted` event, reason
    /// `retention`).
    pub removed: Vec<ObjectEntry>,
    /// Their bytes.
    pub bytes: u64,
    /// Objects that could not be deleted, with why; their records stay, so a later
    /// run tries again.
    pub failed: Vec<(ObjectEntry, String)>,
}

impl Storage {
    /// Applies every retention rule as of `now`: each object recorded before `now`
    /// minus the rule's days (and matching its tenant, environment and prefix) is
    /// deleted, then its record removed with an `ops.storage.object.deleted` event
    /// (reason `retention`). An object that cannot be deleted keeps its record and is
    /// listed in [`RetentionReport::failed`].
    pub async fn apply_retention(&self, now: DateTime<Utc>) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        for rule in &self.inner.retention {
            let filter = EntryFilter {
                tenant: rule.tenant.clone(),
                environment: rule.environment.clone(),
                prefix: rule.prefix.clone(),
            };
            let before = now - chrono::Duration::days(i64::from(rule.days));
            loop {
                let page = self.inner.catalog.older_than(&filter, before, PAGE).await?;
                let full = page.len() == PAGE as usize;
                let mut progressed = false;
                for entry in page {
                    if report.failed.iter().any(|(f, _)| same(f, &entry)) {
                        continue;
                    }
                    match self.expire(&entry).await {
                        Ok(()) => {
                            progressed = true;
                            report.bytes += entry.size;
                            report.removed.push(entry);
                        }
                        Err(e) => {
                            tracing::warn!(
                                tenant = %entry.tenant, path = %entry.path, error = %e,
                                "retention could not delete an object"
                            );
                            report.failed.push((entry, e.to_string()));
                        }
                    }
                }
                if !full || !progressed {
                    break;
                }
            }
        }
        if !report.removed.is_empty() || !report.failed.is_empty() {
            tracing::info!(
                removed = report.removed.len(),
                bytes = report.bytes,
                failed = report.failed.len(),
                "retention applied"
            );
        }
        Ok(report)
    }

    /// Runs [`apply_retention`](Self::apply_retention) every `every` until the
    /// returned task is aborted; failures are logged and tried again next time.
    pub fn spawn_retention(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let storage = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = storage.apply_retention(Utc::now()).await {
                    tracing::warn!(error = %e, "retention run failed");
                }
            }
        })
    }

    async fn expire(&self, entry: &ObjectEntry) -> Result<()> {
        let scoped = self.scope(
            &Tenant::parse(entry.tenant.as_str())?,
            &Environment::parse(entry.environment.as_str())?,
        );
        let path = ObjectPath::parse(&entry.path)?;
        match self.inner.store.delete(&scoped.location(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(scoped.backend(&entry.path, e)),
        }
        self.inner.forget(entry, "retention").await.map(|_| ())
    }
}

fn same(a: &ObjectEntry, b: &ObjectEntry) -> bool {
    a.tenant == b.tenant && a.environment == b.environment && a.path == b.path
}
