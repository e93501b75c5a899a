//! The `Executor` contract: how the task core asks an engine (local processes,
//! Kubernetes, a simulator) to run one attempt of a task, and hears back from it.
//!
//! The coordinator decides *what* runs (admission); an executor only runs what it is
//! handed and reports what happened through [`ExecutorUpdate`]s on a channel. Every
//! executor reports the same updates and [`Reason`]s for the same lifecycle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Environment, Reason, Resources, TaskId, Tenant, Usage};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Result;

/// One attempt of a task, fully rendered: no template logic is left for the executor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LaunchSpec {
    /// The task.
    pub task_id: TaskId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The task's owner (for labelling and isolation).
    pub tenant: Tenant,
    /// Program and arguments. Never passed through a shell by the executor: a template
    /// that opted into a shell arrives here as `["/bin/sh", "-c", script]` with every
    /// parameter already quoted.
    pub argv: Vec<String>,
    /// Environment variables added to a clean base environment.
    pub env: BTreeMap<String, String>,
    /// The task's own directory; created by the executor if missing. Everything the task
    /// writes, its logs and its outputs live under it.
    pub task_dir: PathBuf,
    /// Working directory relative to `task_dir` (already checked not to escape it).
    pub workdir: Option<PathBuf>,
    /// What the task may use; enforced where the executor can (cgroups, pod limits).
    pub resources: Resources,
    /// Kill the task after this long.
    pub timeout: Option<Duration>,
    /// Glob patterns, relative to `task_dir`, of files reported as outputs.
    pub output_globs: Vec<String>,
    /// Objects of the tenant's storage to place in `task_dir` before the attempt starts
    /// (done by [`StagingExecutor`](crate::staging::StagingExecutor); other executors
    /// ignore them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<StagedInput>,
    /// The segment of capacity the task runs in (Kubernetes: namespace and node pool).
    #[serde(default)]
    pub environment: Environment,
    /// Container image, for executors that run containers; the local executor ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Scavenger (backfill) work: runs only on idle capacity and is preempted by real work.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scavenger: bool,
    /// Run as root where the executor would otherwise use an unprivileged user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_root: bool,
    /// The node pool to run in when admission placed the attempt on capacity its
    /// environment borrows from another environment; `None`: the environment's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<Environment>,
}

impl LaunchSpec {
    /// A spec for attempt 1 of a new task of `tenant` running `argv` in `task_dir`, with
    /// no resources, limits or outputs; set the other fields as needed.
    pub fn new(tenant: Tenant, argv: Vec<String>, task_dir: impl Into<PathBuf>) -> Self {
        Self {
            task_id: TaskId::new(),
            attempt: 1,
            tenant,
            argv,
            env: BTreeMap::new(),
            task_dir: task_dir.into(),
            workdir: None,
            resources: Resources::default(),
            timeout: None,
            output_globs: Vec::new(),
            inputs: Vec::new(),
            environment: Environment::default(),
            image: None,
            scavenger: false,
            run_as_root: false,
            node_pool: None,
        }
    }
}

/// One input of an attempt: an object of the tenant's storage copied into the task
/// directory before the attempt starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StagedInput {
    /// The object's path in the tenant's environment storage (checked with
    /// [`ops_core::ObjectPath::parse`]), e.g. `datasets/scene.blend`.
    pub from: String,
    /// Where it goes, relative to the task directory (checked not to escape it).
    pub to: PathBuf,
}

impl StagedInput {
    /// The object at `from` placed at `to` in the task directory.
    pub fn new(from: impl Into<String>, to: impl Into<PathBuf>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
        }
    }
}

/// What an executor remembers about a running attempt so that a restarted coordinator
/// can find it again. Stored in history as JSON; opaque to everything but its executor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunHandle {
    /// Name of the executor that started it (e.g. `local`).
    pub executor: String,
    /// The task.
    pub task_id: TaskId,
    /// Attempt number.
    pub attempt: u32,
    /// Executor-specific details (pid, process start time, cgroup path, pod name…).
    pub detail: serde_json::Value,
}

impl RunHandle {
    /// Refuses a handle another executor made (`Error::Executor` naming both): the
    /// first thing an executor's `cancel`, `preempt` and `reattach` do.
    pub fn check_executor(&self, executor: &str) -> Result<()> {
        if self.executor != executor {
            return Err(crate::Error::Executor {
                executor: executor.to_owned(),
                message: format!(
                    "run handle of task {} belongs to executor {:?}",
                    self.task_id, self.executor
                ),
            });
        }
        Ok(())
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Outcome {
    /// `Completed` for success; otherwise why it failed.
    pub reason: Reason,
    /// The exit code when the process exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// A human-readable detail (e.g. "No such file or directory: renderx").
    pub message: Option<String>,
    /// What this attempt consumed.
    pub usage: Usage,
}

impl Outcome {
    /// An outcome with only a reason and message (for failures before start).
    pub fn new(reason: Reason, message: Option<String>) -> Self {
        Self {
            reason,
            exit_code: None,
            signal: None,
            message,
            usage: Usage::default(),
        }
    }

    /// Whether the attempt succeeded.
    pub fn succeeded(&self) -> bool {
        self.reason == Reason::Completed
    }
}

/// Something an executor observed about one attempt.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ExecutorUpdate {
    /// The attempt's process (or pod) is running.
    Started {
        /// The task.
        task_id: TaskId,
        /// Attempt.
        attempt: u32,
        /// When it started.
        at: DateTime<Utc>,
        /// GPUs assigned exclusively to it (device indexes or UUIDs).
        gpus: Vec<String>,
    },
    /// A file matching the output globs appeared (reported once per path per attempt).
    OutputCreated {
        /// The task.
        task_id: TaskId,
        /// Attempt.
        attempt: u32,
        /// Path relative to the task directory.
        path: String,
        /// Size in bytes when seen.
        size: u64,
    },
    /// The attempt is over. Always the last update for an attempt, sent exactly once.
    Finished {
        /// The task.
        task_id: TaskId,
        /// Attempt.
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
    },
}

impl ExecutorUpdate {
    /// The task the update is about.
    pub fn task_id(&self) -> TaskId {
        match self {
            ExecutorUpdate::Started { task_id, .. }
            | ExecutorUpdate::OutputCreated { task_id, .. }
            | ExecutorUpdate::Finished { task_id, .. } => *task_id,
        }
    }
}

/// Which captured stream to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The result of trying to re-attach to an attempt after a coordinator restart.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Reattached {
    /// Still running; updates (at least `Finished`) will arrive on the channel.
    Running,
    /// It is gone; the coordinator records this outcome and applies the retry policy.
    Gone(Outcome),
}

/// A group of identical nodes an executor runs tasks on: how admission learns the shape
/// of the capacity (a request larger than every node can never run) and its segments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeGroup {
    /// The node pool (environment) these nodes are reserved for; `None` = shared.
    #[serde(default)]
    pub pool: Option<Environment>,
    /// How many nodes.
    pub count: u32,
    /// What each node offers.
    pub resources: Resources,
}

impl NodeGroup {
    /// `count` shared nodes of `resources` each.
    pub fn new(count: u32, resources: Resources) -> Self {
        Self {
            pool: None,
            count,
            resources,
        }
    }

    /// Reserves the nodes for one environment's pool.
    pub fn pool(mut self, pool: Environment) -> Self {
        self.pool = Some(pool);
        self
    }
}

/// Runs task attempts on some engine.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Short stable name stored in [`RunHandle::executor`], e.g. `local`.
    fn name(&self) -> &str;

    /// The total capacity this executor offers (admission never over-commits it).
    fn capacity(&self) -> Resources;

    /// The nodes behind [`capacity`](Executor::capacity), grouped by shape and pool.
    /// The default is one shared node holding all of it.
    fn nodes(&self) -> Vec<NodeGroup> {
        vec![NodeGroup::new(1, self.capacity())]
    }

    /// Starts an attempt. Returns once the attempt is launched (or failed to launch: a
    /// program that does not exist is reported as a `Finished` update with reason
    /// `CommandNotFound`, not as an error). Updates for the attempt go to `updates`.
    async fn launch(
        &self,
        spec: LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<RunHandle>;

    /// Stops an attempt: kills everything it started. Its `Finished` update carries
    /// reason `Cancelled`. Cancelling an attempt that already ended is not an error.
    async fn cancel(&self, handle: &RunHandle) -> Result<()>;

    /// Stops an attempt to make room for other work: the preemption signal (SIGTERM,
    /// or the engine's graceful stop), `grace` for the task to checkpoint, then a kill.
    /// The coordinator records the attempt as preempted whatever reason its `Finished`
    /// update carries. The default is [`cancel`](Executor::cancel).
    async fn preempt(&self, handle: &RunHandle, grace: Duration) -> Result<()> {
        let _ = grace;
        self.cancel(handle).await
    }

    /// After a coordinator restart: finds an attempt from its handle and either resumes
    /// reporting on it or says how it ended.
    async fn reattach(
        &self,
        handle: &RunHandle,
        spec: &LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<Reattached>;

    /// Where a stream of an attempt's captured output is kept, for reading and following.
    fn log_path(&self, spec_task_dir: &std::path::Path, stream: LogStream) -> PathBuf;
}

#[async_trait]
impl<T: Executor + ?Sized> Executor for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn capacity(&self) -> Resources {
        (**self).capacity()
    }
    async fn launch(
        &self,
        spec: LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<RunHandle> {
        (**self).launch(spec, updates).await
    }
    fn nodes(&self) -> Vec<NodeGroup> {
        (**self).nodes()
    }
    async fn cancel(&self, handle: &RunHandle) -> Result<()> {
        (**self).cancel(handle).await
    }
    async fn preempt(&self, handle: &RunHandle, grace: Duration) -> Result<()> {
        (**self).preempt(handle, grace).await
    }
    async fn reattach(
        &self,
        handle: &RunHandle,
        spec: &LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<Reattached> {
        (**self).reattach(handle, spec, updates).await
    }
    fn log_path(&self, task_dir: &std::path::Path, stream: LogStream) -> PathBuf {
        (**self).log_path(task_dir, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_stored_before_inputs_existed_still_load() {
        let mut spec = LaunchSpec::new(Tenant::parse("acme").unwrap(), vec!["true".into()], "/t");
        let mut old = serde_json::to_value(&spec).unwrap();
        assert!(old.get("inputs").is_none(), "empty inputs are not written");
        old.as_object_mut().unwrap().remove("inputs");
        let loaded: LaunchSpec = serde_json::from_value(old).unwrap();
        assert_eq!(loaded, spec);
        spec.inputs = vec![StagedInput::new("datasets/a.csv", "in/a.csv")];
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["inputs"][0]["from"], "datasets/a.csv");
        assert_eq!(serde_json::from_value::<LaunchSpec>(json).unwrap(), spec);
    }
}
