//! Staging of task inputs and outputs through a tenant's object storage: a wrapper
//! around any [`Executor`].
//!
//! [`StagingExecutor`] copies each of an attempt's
//! [`inputs`](crate::LaunchSpec::inputs) (a template's `inputs`) from the tenant's
//! storage into the task directory before handing the attempt to the executor it
//! wraps, and stores the attempt's outputs (the files matching its output globs) in
//! the tenant's storage under `tasks/<task id>/<path in the task directory>` once the
//! attempt has succeeded, before the coordinator hears that it ended.
//!
//! The storage is a [`StagingStore`], a small trait this crate defines so that it
//! needs no storage crate: the `ops` facade implements it on `ops-storage` (which
//! records each object in its catalog with an `ops.storage.object.created` event, in
//! the history's outbox when they share a database, so those events come between the
//! task's `started` and `succeeded` events); a builder may implement it on anything.
//!
//! - An input that cannot be copied (a missing object, an unreachable store, a bad
//!   path) ends the attempt before anything runs, with reason
//!   [`Reason::StagingFailed`] and a message naming the input.
//! - An output that cannot be stored (over the tenant's storage quota, an unreachable
//!   store) turns a successful attempt into a failure with reason
//!   [`Reason::StagingFailed`] and a message naming the file. Outputs stored before it
//!   stay stored and recorded. `StagingFailed` is retryable: the template's retry
//!   policy applies.
//! - Only succeeded attempts are stored: nothing of a failed, cancelled, timed-out or
//!   preempted attempt is uploaded (their files stay in the task directory). Staged
//!   inputs are not uploaded again, even when they match an output glob.
//! - After a coordinator restart, [`reattach`](Executor::reattach) wraps the attempt
//!   the same way; an attempt that succeeded while no coordinator watched has its
//!   outputs stored then.
//!
//! Files are copied to and from `task_dir` on the coordinator's machine, so the wrapper
//! suits executors whose task directory is that one (the local executor, or a
//! Kubernetes executor on a volume the coordinator also mounts). Inputs are copied
//! while the coordinator launches the attempt: large inputs delay that launch round.
//!
//! Everything else (capacity, nodes, cancel, preempt, logs) is the wrapped executor's,
//! and so is [`name`](Executor::name): run handles recorded before the wrapper was
//! added stay valid, and the other way round.
//!
//! # Example
//!
//! A store that keeps each tenant's objects in a directory (`ops::staging` has the one
//! on `ops-storage`):
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use async_trait::async_trait;
//! use ops_core::{Environment, Tenant};
//! use ops_tasks::staging::{OutputFile, StagingExecutor, StagingResult, StagingStore, StoredOutput};
//! use ops_tasks::{LocalExecutor, LocalExecutorConfig};
//!
//! struct Dirs(PathBuf);
//!
//! #[async_trait]
//! impl StagingStore for Dirs {
//!     fn describe(&self) -> String {
//!         self.0.display().to_string()
//!     }
//!     async fn fetch(&self, tenant: &Tenant, env: &Environment, from: &str, to: &Path) -> StagingResult<u64> {
//!         Ok(tokio::fs::copy(self.0.join(tenant.as_str()).join(env.as_str()).join(from), to).await?)
//!     }
//!     async fn store(&self, tenant: &Tenant, env: &Environment, output: &OutputFile<'_>) -> StagingResult<StoredOutput> {
//!         let dest = self.0.join(tenant.as_str()).join(env.as_str()).join(output.path);
//!         tokio::fs::create_dir_all(dest.parent().unwrap()).await?;
//!         let size = tokio::fs::copy(output.file, &dest).await?;
//!         Ok(StoredOutput::new(output.path, size))
//!     }
//! }
//!
//! # fn main() -> Result<(), ops_tasks::Error> {
//! let local = LocalExecutor::new(LocalExecutorConfig::default())?;
//! let executor = StagingExecutor::new(local, Dirs("/srv/objects".into()));
//! # Ok(()) }
//! ```

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ops_core::{Environment, Reason, Resources, TaskId, Tenant};
use tokio::sync::mpsc;

use crate::Result;
use crate::executor::{
    Executor, ExecutorUpdate, LaunchSpec, LogStream, NodeGroup, Outcome, Reattached, RunHandle,
};
use crate::taskdir::{self, Matched, OPS_DIR, build_globs, matching, regular_file};

/// What a [`StagingStore`] fails with: any error; its message ends up in the
/// attempt's `StagingFailed` outcome.
pub type StagingError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of a [`StagingStore`] call.
pub type StagingResult<T> = std::result::Result<T, StagingError>;

/// One output of an attempt, to be stored.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct OutputFile<'a> {
    /// Where it goes in the tenant's environment storage: `tasks/<task id>/<path in the
    /// task directory>`.
    pub path: &'a str,
    /// The file to read.
    pub file: &'a Path,
    /// The task that wrote it.
    pub task_id: TaskId,
    /// The attempt that wrote it.
    pub attempt: u32,
}

/// What a [`StagingStore`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredOutput {
    /// Its path in the tenant's environment storage.
    pub path: String,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex, when the store computed it.
    pub sha256: Option<String>,
}

impl StoredOutput {
    /// `size` bytes stored at `path`, without a checksum.
    pub fn new(path: impl Into<String>, size: u64) -> Self {
        Self {
            path: path.into(),
            size,
            sha256: None,
        }
    }

    /// With the SHA-256 the store computed.
    pub fn sha256(mut self, sha256: impl Into<String>) -> Self {
        self.sha256 = Some(sha256.into());
        self
    }
}

/// A tenant's object storage, as staging sees it: objects by path in one tenant's
/// environment. Paths given to it are checked ([`ops_core::ObjectPath`] for storage
/// paths; destinations stay inside the task directory).
#[async_trait]
pub trait StagingStore: Send + Sync + 'static {
    /// Where it stores, for logs and `Debug` (a URL without secrets).
    fn describe(&self) -> String;

    /// Copies the object at `from` in `tenant`'s `environment` storage to the file
    /// `to` (whose directory exists); gives the bytes copied.
    async fn fetch(
        &self,
        tenant: &Tenant,
        environment: &Environment,
        from: &str,
        to: &Path,
    ) -> StagingResult<u64>;

    /// Stores an attempt's output file in `tenant`'s `environment` storage.
    async fn store(
        &self,
        tenant: &Tenant,
        environment: &Environment,
        output: &OutputFile<'_>,
    ) -> StagingResult<StoredOutput>;
}

#[async_trait]
impl<T: StagingStore + ?Sized> StagingStore for Arc<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn fetch(
        &self,
        tenant: &Tenant,
        environment: &Environment,
        from: &str,
        to: &Path,
    ) -> StagingResult<u64> {
        (**self).fetch(tenant, environment, from, to).await
    }
    async fn store(
        &self,
        tenant: &Tenant,
        environment: &Environment,
        output: &OutputFile<'_>,
    ) -> StagingResult<StoredOutput> {
        (**self).store(tenant, environment, output).await
    }
}

/// The key of a [`RunHandle::detail`] saying that the attempt never started because
/// its inputs could not be staged (the value is the message).
const STAGING_FAILED: &str = "ops_staging_failed";

/// Wraps an [`Executor`]: copies each attempt's inputs from a [`StagingStore`] into its
/// task directory before it starts, and stores its outputs there when it succeeds. See
/// the [module documentation](self).
pub struct StagingExecutor<E> {
    inner: E,
    storage: Arc<dyn StagingStore>,
}

impl<E: std::fmt::Debug> std::fmt::Debug for StagingExecutor<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingExecutor")
            .field("inner", &self.inner)
            .field("storage", &self.storage.describe())
            .finish()
    }
}

impl<E: Executor> StagingExecutor<E> {
    /// Stages the inputs and outputs of `inner`'s attempts through `storage`.
    pub fn new(inner: E, storage: impl StagingStore) -> Self {
        Self {
            inner,
            storage: Arc::new(storage),
        }
    }

    /// The wrapped executor.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The storage inputs come from and outputs go to.
    pub fn storage(&self) -> &Arc<dyn StagingStore> {
        &self.storage
    }

    /// A handle for an attempt that never started because its inputs could not be
    /// staged: cancelling it does nothing, re-attaching says how it ended.
    fn failed_handle(&self, spec: &LaunchSpec, message: &str) -> RunHandle {
        RunHandle {
            executor: self.inner.name().to_owned(),
            task_id: spec.task_id,
            attempt: spec.attempt,
            detail: serde_json::json!({ STAGING_FAILED: message }),
        }
    }

    /// A channel for the wrapped executor's updates of `spec`'s attempt, forwarded to
    /// `updates` with the outputs stored before `Finished`.
    fn wrap_updates(
        &self,
        spec: &LaunchSpec,
        attempt: u32,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> mpsc::UnboundedSender<ExecutorUpdate> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stager = Stager::new(self.storage.clone(), spec, attempt);
        tokio::spawn(stager.forward(rx, updates));
        tx
    }
}

/// The message of a handle made by [`StagingExecutor::failed_handle`].
fn staging_failure(handle: &RunHandle) -> Option<&str> {
    handle.detail.get(STAGING_FAILED)?.as_str()
}

#[async_trait]
impl<E: Executor> Executor for StagingExecutor<E> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capacity(&self) -> Resources {
        self.inner.capacity()
    }

    fn nodes(&self) -> Vec<NodeGroup> {
        self.inner.nodes()
    }

    /// Copies the inputs, then launches on the wrapped executor. An input that cannot
    /// be copied is reported as a `Finished` update with reason `StagingFailed` (as a
    /// missing program is), and nothing is launched.
    async fn launch(
        &self,
        spec: LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<RunHandle> {
        if let Err(message) = stage_inputs(self.storage.as_ref(), &spec).await {
            tracing::warn!(
                task_id = %spec.task_id,
                attempt = spec.attempt,
                tenant = %spec.tenant,
                %message,
                "inputs not staged; the attempt does not start"
            );
            let _ = updates.send(ExecutorUpdate::Finished {
                task_id: spec.task_id,
                attempt: spec.attempt,
                outcome: Outcome::new(Reason::StagingFailed, Some(message.clone())),
            });
            return Ok(self.failed_handle(&spec, &message));
        }
        let inner_updates = self.wrap_updates(&spec, spec.attempt, updates);
        self.inner.launch(spec, inner_updates).await
    }

    async fn cancel(&self, handle: &RunHandle) -> Result<()> {
        if staging_failure(handle).is_some() {
            return Ok(());
        }
        self.inner.cancel(handle).await
    }

    async fn preempt(&self, handle: &RunHandle, grace: Duration) -> Result<()> {
        if staging_failure(handle).is_some() {
            return Ok(());
        }
        self.inner.preempt(handle, grace).await
    }

    /// Re-attaches through the wrapped executor; an attempt found to have succeeded
    /// meanwhile has its outputs stored before this returns.
    async fn reattach(
        &self,
        handle: &RunHandle,
        spec: &LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<Reattached> {
        if let Some(message) = staging_failure(handle) {
            return Ok(Reattached::Gone(Outcome::new(
                Reason::StagingFailed,
                Some(message.to_owned()),
            )));
        }
        let inner_updates = self.wrap_updates(spec, handle.attempt, updates);
        match self.inner.reattach(handle, spec, inner_updates).await? {
            Reattached::Gone(outcome) if outcome.succeeded() => {
                let stager = Stager::new(self.storage.clone(), spec, handle.attempt);
                Ok(Reattached::Gone(stager.store_outputs(outcome).await))
            }
            other => Ok(other),
        }
    }

    fn log_path(&self, spec_task_dir: &Path, stream: LogStream) -> PathBuf {
        self.inner.log_path(spec_task_dir, stream)
    }
}

/// Copies `spec`'s inputs into its task directory; the error names the input.
async fn stage_inputs(
    storage: &dyn StagingStore,
    spec: &LaunchSpec,
) -> std::result::Result<(), String> {
    if spec.inputs.is_empty() {
        return Ok(());
    }
    let dir = &spec.task_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("staging inputs: {}: {e}", dir.display()))?;
    for input in &spec.inputs {
        let what = format!("staging input {:?} to {}", input.from, input.to.display());
        if matches!(input.to.components().next(), Some(Component::Normal(c)) if c == OPS_DIR) {
            return Err(format!("{what}: {OPS_DIR}/ is reserved for the executor"));
        }
        let dest = taskdir::resolve_within(dir, &input.to).map_err(|e| format!("{what}: {e}"))?;
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("{what}: {}: {e}", parent.display()))?;
        }
        if let Err(e) = ops_core::ObjectPath::parse(&input.from) {
            return Err(format!("{what}: {e}"));
        }
        let size = storage
            .fetch(&spec.tenant, &spec.environment, &input.from, &dest)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        tracing::info!(
            task_id = %spec.task_id,
            attempt = spec.attempt,
            tenant = %spec.tenant,
            from = %input.from,
            to = %input.to.display(),
            size,
            "staged input"
        );
    }
    Ok(())
}

/// Stores the outputs of one attempt.
struct Stager {
    storage: Arc<dyn StagingStore>,
    tenant: Tenant,
    environment: Environment,
    task_id: TaskId,
    attempt: u32,
    task_dir: PathBuf,
    output_globs: Vec<String>,
    /// Staged inputs, relative to the task directory: not outputs.
    inputs: Vec<PathBuf>,
}

impl Stager {
    fn new(storage: Arc<dyn StagingStore>, spec: &LaunchSpec, attempt: u32) -> Self {
        Self {
            storage,
            tenant: spec.tenant.clone(),
            environment: spec.environment.clone(),
            task_id: spec.task_id,
            attempt,
            task_dir: spec.task_dir.clone(),
            output_globs: spec.output_globs.clone(),
            inputs: spec.inputs.iter().map(|i| i.to.clone()).collect(),
        }
    }

    /// Passes updates on, storing the outputs of a succeeded attempt before its
    /// `Finished`.
    async fn forward(
        self,
        mut rx: mpsc::UnboundedReceiver<ExecutorUpdate>,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) {
        let stager = Arc::new(self);
        while let Some(update) = rx.recv().await {
            let update = match update {
                ExecutorUpdate::Finished {
                    task_id,
                    attempt,
                    outcome,
                } if outcome.succeeded() && attempt == stager.attempt => ExecutorUpdate::Finished {
                    task_id,
                    attempt,
                    outcome: stager.store_outputs(outcome).await,
                },
                other => other,
            };
            if updates.send(update).is_err() {
                return;
            }
        }
    }

    /// Stores every output; on the first failure, `outcome` becomes `StagingFailed`
    /// naming the file.
    async fn store_outputs(&self, mut outcome: Outcome) -> Outcome {
        if let Err(message) = self.try_store_outputs().await {
            tracing::warn!(
                task_id = %self.task_id,
                attempt = self.attempt,
                tenant = %self.tenant,
                %message,
                "outputs not stored; the attempt fails"
            );
            outcome.reason = Reason::StagingFailed;
            outcome.message = Some(message);
        }
        outcome
    }

    async fn try_store_outputs(&self) -> std::result::Result<(), String> {
        if self.output_globs.is_empty() {
            return Ok(());
        }
        let files = {
            let (dir, globs, inputs) = (
                self.task_dir.clone(),
                self.output_globs.clone(),
                self.inputs.clone(),
            );
            tokio::task::spawn_blocking(move || find_outputs(&dir, &globs, &inputs))
                .await
                .map_err(|e| format!("finding outputs: {e}"))??
        };
        if files.is_empty() {
            return Ok(());
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        for (rel, file) in &files {
            let stored = self.store_one(rel, file).await.map_err(|e| match count {
                0 => e,
                n => format!("{e} ({n} earlier outputs were stored)"),
            })?;
            count += 1;
            bytes += stored;
        }
        tracing::info!(
            task_id = %self.task_id,
            attempt = self.attempt,
            tenant = %self.tenant,
            outputs = count,
            bytes,
            prefix = %format!("tasks/{}/", self.task_id),
            "stored outputs"
        );
        Ok(())
    }

    async fn store_one(&self, rel: &str, file: &Path) -> std::result::Result<u64, String> {
        let path = format!("tasks/{}/{rel}", self.task_id);
        let output = OutputFile {
            path: &path,
            file,
            task_id: self.task_id,
            attempt: self.attempt,
        };
        let stored = self
            .storage
            .store(&self.tenant, &self.environment, &output)
            .await
            .map_err(|e| format!("storing output {rel:?} as {path:?}: {e}"))?;
        tracing::info!(
            task_id = %self.task_id,
            attempt = self.attempt,
            tenant = %self.tenant,
            path = %stored.path,
            size = stored.size,
            sha256 = stored.sha256.as_deref().unwrap_or("-"),
            "stored output"
        );
        Ok(stored.size)
    }
}

/// The files under `task_dir` (not `.ops/`, not the staged `inputs`) matching `globs`,
/// as (path relative to `task_dir`, file to read), sorted. Symlinks count only when
/// they resolve inside the task directory. A matching file whose name is not UTF-8 is
/// an error: it cannot be stored, and is not silently left out.
fn find_outputs(
    task_dir: &Path,
    globs: &[String],
    inputs: &[PathBuf],
) -> std::result::Result<Vec<(String, PathBuf)>, String> {
    let globs = build_globs(globs).map_err(|e| format!("output globs: {e}"))?;
    let root = match task_dir.canonicalize() {
        Ok(root) => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("finding outputs in {}: {e}", task_dir.display())),
    };
    let mut found = Vec::new();
    for matched in matching(&root, &globs) {
        let matched = matched.map_err(|e| format!("finding outputs in {}: {e}", root.display()))?;
        let (rel, entry) = match matched {
            Matched::File(rel, entry) => (rel, entry),
            Matched::NotUtf8(rel) => {
                return Err(format!(
                    "output {} has a name that is not UTF-8 and cannot be stored",
                    rel.display()
                ));
            }
        };
        if inputs.iter().any(|i| i.as_path() == Path::new(&rel)) {
            continue;
        }
        if let Some((file, _)) = regular_file(&root, &rel, &entry) {
            found.push((rel, file));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_skip_ops_dir_inputs_and_escaping_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [".ops", "out/sub", "in"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("out/a.txt"), "a").unwrap();
        std::fs::write(root.join("out/sub/b.txt"), "bb").unwrap();
        std::fs::write(root.join(".ops/c.txt"), "c").unwrap();
        std::fs::write(root.join("in/scene.txt"), "s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("out/x.txt")).unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("out/y.txt")).unwrap();
        let globs = ["out/**".to_owned(), "in/*".to_owned(), "*.txt".to_owned()];
        let found = find_outputs(root, &globs, &[PathBuf::from("in/scene.txt")]).unwrap();
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["out/a.txt", "out/sub/b.txt", "out/y.txt"]);
        assert!(found[2].1.ends_with("out/a.txt"), "{found:?}");
        assert!(
            find_outputs(&root.join("missing"), &globs, &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn failed_handles_are_recognised() {
        let handle = RunHandle {
            executor: "local".into(),
            task_id: TaskId::new(),
            attempt: 1,
            detail: serde_json::json!({ STAGING_FAILED: "no scene" }),
        };
        assert_eq!(staging_failure(&handle), Some("no scene"));
        let other = RunHandle {
            detail: serde_json::json!({ "pid": 4 }),
            ..handle
        };
        assert_eq!(staging_failure(&other), None);
    }
}
