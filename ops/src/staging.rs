//! Task inputs and outputs through `ops-storage`: [`StorageStaging`] is the
//! [`StagingStore`] that `ops-tasks`' staging wrapper uses, on a [`Storage`].
//!
//! Inputs are read from the tenant's environment storage; outputs are stored there as
//! task outputs (their catalog records and `ops.storage.object.created` events name
//! the task and the attempt). [`Platform`](crate::Platform) wires it in whenever a
//! storage is configured.

use std::path::Path;

use async_trait::async_trait;
use ops_core::{Environment, Tenant};
use ops_storage::Storage;
use ops_tasks::staging::{OutputFile, StagingResult, StagingStore, StoredOutput};

/// A [`Storage`] as the place task inputs come from and outputs go to.
#[derive(Clone, Debug)]
pub struct StorageStaging(pub Storage);

#[async_trait]
impl StagingStore for StorageStaging {
    fn describe(&self) -> String {
        self.0.url().to_owned()
    }

    async fn fetch(
        &self,
        tenant: &Tenant,
        environment: &Environment,
        from: &str,
        to: &Path,
    ) -> StagingResult<u64> {
        let got = self.0.scope(tenant, environment).get_file(from, to).await?;
        Ok(got.size)
    }

    async fn store(
        &self,
        tenant: &Tenant,
        environment: &Environment,
        output: &OutputFile<'_>,
    ) -> StagingResult<StoredOutput> {
        let stored = self
            .0
            .scope(tenant, environment)
            .for_task(output.task_id, output.attempt)
            .put_file(output.path, output.file)
            .await?;
        Ok(StoredOutput::new(stored.path, stored.size).sha256(stored.sha256))
    }
}
