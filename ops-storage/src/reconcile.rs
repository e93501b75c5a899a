//! Reconciling the catalog with what the backend holds: objects written around
//! ops-storage (a signed PUT URL, a copy by hand, a catalog that started empty) get
//! recorded, and records whose object is gone are dropped, each with its event.

use chrono::{DateTime, SubsecRound, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Result;
use crate::catalog::{EntryFilter, ObjectEntry, Quota};
use crate::store::Scoped;

/// What [`Scoped::reconcile`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReconcileReport {
    /// Objects found without a record (or with a record of another size), now
    /// recorded with their SHA-256 and an `ops.storage.object.created` event.
    pub recorded: Vec<ObjectEntry>,
    /// Records whose object is gone, now removed with an `ops.storage.object.deleted`
    /// event (reason `missing`).
    pub dropped: Vec<ObjectEntry>,
    /// Objects whose record was already right.
    pub unchanged: u64,
}

impl Scoped {
    /// Makes the catalog agree with the backend for this tenant's environment. Every
    /// object is listed, and each one without a matching record is read once to
    /// compute its SHA-256. Recording an object that already exists is never refused by
    /// the quota: the tenant's usage then says what it really holds, and later writes
    /// are refused until it is back under its quota.
    ///
    /// It reads every record of the environment into memory; run it per environment,
    /// after a restart with an in-memory catalog, or periodically where objects may be
    /// written around ops-storage.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let filter = EntryFilter::all()
            .tenant(self.tenant().as_str())
            .environment(self.environment().as_str());
        let far = DateTime::<Utc>::MAX_UTC;
        let mut records = self
            .inner
            .catalog
            .older_than(&filter, far, u32::MAX)
            .await?;
        records.sort_by(|a, b| a.path.cmp(&b.path));
        let stored = self.list(None).await?;
        for object in &stored {
            let record = records
                .binary_search_by(|r| r.path.as_str().cmp(&object.path))
                .ok()
                .map(|i| &records[i]);
            if record.is_some_and(|r| r.size == object.size) {
                report.unchanged += 1;
                continue;
            }
            let (_, got) = self.open_object(&object.path).await?;
            let mut hasher = Sha256::new();
            let mut stream = got.into_stream();
            let mut size = 0u64;
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| self.backend(&object.path, e))?
            {
                hasher.update(&chunk);
                size += chunk.len() as u64;
            }
            let entry = ObjectEntry {
                tenant: self.tenant().to_string(),
                environment: self.environment().to_string(),
                path: object.path.clone(),
                size,
                sha256: hex::encode(hasher.finalize()),
                e_tag: object.e_tag.clone(),
                task_id: record.and_then(|r| r.task_id.clone()),
                attempt: record.and_then(|r| r.attempt),
                created_at: object.last_modified.trunc_subsecs(3),
            };
            self.inner.record(&entry, &Quota::default()).await?;
            report.recorded.push(entry);
        }
        for record in records {
            if stored
                .binary_search_by(|o| o.path.as_str().cmp(&record.path))
                .is_ok()
            {
                continue;
            }
            self.inner.forget(&record, "missing").await?;
            report.dropped.push(record);
        }
        if !report.recorded.is_empty() || !report.dropped.is_empty() {
            tracing::info!(
                tenant = %self.tenant(),
                environment = %self.environment(),
                recorded = report.recorded.len(),
                dropped = report.dropped.len(),
                "catalog reconciled"
            );
        }
        Ok(report)
    }
}
