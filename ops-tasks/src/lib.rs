//! Tasks on Ops: what a platform's customers run, and everything that happens to it.
//!
//! - [`TaskTemplate`]: what a platform offers — a command with `{{ parameter }}`
//!   placeholders, parameters described by JSON Schema, resources, GPUs, timeout,
//!   retries, output globs. Loaded from TOML, YAML or JSON; a directory of them is a
//!   [`Catalogue`]. Parameters never reach a shell unquoted.
//! - The task state machine ([`ops_core::TaskStatus`]): `submitted → queued → running →
//!   succeeded | failed | cancelled | timed_out`, with `retrying` between attempts. Every
//!   transition is written with its CloudEvent in one transaction.
//! - [`Executor`]: runs attempts. [`LocalExecutor`] (the embedded default) runs each
//!   as a process group in its own directory, with cgroup limits (v1 or v2, detected),
//!   exclusive GPU assignment, output detection, usage metering and re-attachment after
//!   a restart.
//! - [`HistoryStore`]: tasks, transitions, events, outputs and usage, with queries by
//!   tenant, status, labels, template and time range, cursor pagination and retention.
//!   [`SqliteHistory`] shares its database and transactions with the `ops-events`
//!   outbox, so functions see exactly the committed changes.
//! - [`staging::StagingExecutor`]: wraps any executor to copy a template's `inputs`
//!   from the tenant's storage (ops-storage) into the task directory before an attempt,
//!   and store its outputs there (`tasks/<task id>/…`) when it succeeds.
//! - [`Tasks`]: the facade an API layer calls — submit, get, list, cancel, logs, watch —
//!   scoped by tenant, so one tenant never sees another's tasks.
//!
//! # Backends and features
//!
//! | contract | embedded default | scale-out |
//! |---|---|---|
//! | [`Executor`] | [`local::LocalExecutor`] | `kube` (planned) |
//! | [`HistoryStore`] | [`history::SqliteHistory`] | `postgres` feature: `history::PostgresHistory` |
//!
//! [`backends::open`] picks the history store (and event bus) from a URL. Several
//! coordinators may share one store: each holds a [`Lease`], owns the tasks it runs,
//! claims unowned queued ones, and takes over those of a coordinator whose lease
//! expired (see [`HistoryStore`]'s lease methods and [`CoordinatorConfig`]). A process
//! that only submits and reads uses [`TasksBuilder::submit_only`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use ops_tasks::template::{Catalogue, Format, TaskTemplate};
//! use ops_tasks::{LocalExecutor, LocalExecutorConfig, SqliteHistory, SubmitRequest, Tasks, TasksConfig};
//! use ops_core::{TaskStatus, Tenant};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut catalogue = Catalogue::new();
//! catalogue.insert(TaskTemplate::from_str(
//!     r#"
//!     name = "greet"
//!     command = ["echo", "hello", "{{ who }}"]
//!     [parameters.properties.who]
//!     type = "string"
//!     default = "world"
//!     "#,
//!     Format::Toml,
//!     "greet.toml",
//! )?);
//!
//! let history = SqliteHistory::open(&dir.path().join("ops.db").to_string_lossy()).await?;
//! let mut config = TasksConfig::default();
//! config.root = dir.path().join("tasks");
//! let tasks = Tasks::builder()
//!     .catalogue(catalogue)
//!     .history(history)
//!     .executor(Arc::new(LocalExecutor::new(LocalExecutorConfig::default())?))
//!     .config(config)
//!     .start()
//!     .await?;
//!
//! let acme = Tenant::new("acme");
//! let id = tasks
//!     .submit(SubmitRequest::new("acme", "greet").parameters(serde_json::json!({ "who": "Ops" })))
//!     .await?;
//! let done = tasks.wait(&acme, id).await?;
//! assert_eq!(done.status, TaskStatus::Succeeded);
//! let out = tasks.logs(&acme, id, ops_tasks::LogStream::Stdout).await?;
//! assert_eq!(String::from_utf8(out)?, "hello Ops\n");
//! tasks.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod backends;
pub mod duration;
mod error;
pub mod executor;
pub mod history;
#[cfg(feature = "kube")]
pub mod kube;
pub mod local;
pub mod paths;
pub mod sim;
pub mod staging;
mod tasks;
pub mod template;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{Denied, Error, ParameterViolation, Result};
pub use executor::{
    Executor, ExecutorUpdate, LaunchSpec, LogStream, NodeGroup, Outcome, Reattached, RunHandle,
    StagedInput,
};
pub use history::{
    HistoryStore, Lease, SqliteHistory, StatsQuery, TaskPage, TaskQuery, TaskRecord, TemplateStats,
};
pub use local::{LocalExecutor, LocalExecutorConfig};
pub use sim::{SimExecutor, SimExecutorConfig};
pub use tasks::{
    BoxStream, CoordinatorConfig, RetentionPolicy, SubmitRequest, Tasks, TasksBuilder, TasksConfig,
    Waiting,
};
pub use template::{Catalogue, RenderedCommand, RetryPolicy, TaskTemplate};
