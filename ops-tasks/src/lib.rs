//! Tasks on Ops: what a platform's customers run, and everything that happens to it.
//!
//! - [`TaskTemplate`]: what a platform offers — a command with `{{ parameter }}`
//!   placeholders, parameters described by JSON Schema, resources, GPUs, timeout,
//!   retries, inputs, output globs. Loaded from TOML, YAML or JSON; a directory of them
//!   is a [`Catalogue`]. Parameters never reach a shell unquoted.
//! - The task state machine ([`ops_core::TaskStatus`]): `submitted → queued → running →
//!   succeeded | failed | cancelled | timed_out`, with `retrying` between attempts. Every
//!   transition is written with its CloudEvent in one transaction.
//! - [`admission`]: quotas per tenant and environment with borrowing and reclaim,
//!   priorities, dominant-resource fair share, FIFO, the scavenger tier and a budget
//!   hook — pure logic over `ops-core` types, usable with any executor.
//! - [`Executor`]: runs attempts; every executor follows the
//!   [task-directory protocol](taskdir) (logs, exit records, outputs) and passes
//!   `testkit::executor`. `local::LocalExecutor` (the embedded default) runs each
//!   attempt as a process group with cgroup limits, exclusive GPUs and re-attachment
//!   after a restart.
//! - History, split by role: [`HistoryReader`] (tenant queries), [`HistoryWriter`]
//!   (commits, retention) and [`Leases`] (several coordinators on one store, with
//!   single-node defaults); a [`HistoryStore`] is all three. `SqliteHistory` shares its
//!   database and transactions with the `ops-events` outbox, so functions see exactly
//!   the committed changes.
//! - [`staging::StagingExecutor`]: wraps any executor to copy a template's `inputs` from
//!   a [`staging::StagingStore`] (the tenant's object storage; the `ops` facade plugs in
//!   `ops-storage`) into the task directory before an attempt, and store its outputs
//!   there when it succeeds.
//! - [`Tasks`]: the service an API layer calls. [`Tasks::tenant`] gives a
//!   [`TenantTasks`] handle whose every method (submit, get, list, events, logs, watch,
//!   wait, cancel, explain, stats) is scoped to that tenant; [`Tasks::admin`] gives the
//!   operator's [`Admin`] handle.
//!
//! Errors have an [`ErrorKind`](ops_core::ErrorKind) ([`Error::kind`]) an API layer maps
//! to a response, and say whether retrying may help ([`Error::is_retryable`]).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | `SqliteHistory` (and the SQLite outbox of `ops-events`) |
//! | `local` | yes | `local::LocalExecutor`, Unix only (`nix`) |
//! | `sim` | no | `sim`: the simulation executor and the capacity planner |
//! | `postgres` | no | `history::PostgresHistory`, for several coordinators on one database |
//! | `kube` | no | `kube::KubeExecutor`, pods on Kubernetes (kube-rs) |
//! | `testkit` | no | the conformance suites `testkit::history` and `testkit::executor` |
//!
//! Without default features the crate is templates, admission, the executor and
//! history contracts, staging, the task-directory protocol and the [`Tasks`] service,
//! with no database driver and no executor: bring your own.
//!
//! # Example
//!
//! ```
//! # #[cfg(all(unix, feature = "sqlite", feature = "local"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ops_core::{TaskStatus, Tenant};
//! use ops_tasks::template::{Catalogue, Format, TaskTemplate};
//! use ops_tasks::{LocalExecutor, LocalExecutorConfig, SqliteHistory, SubmitRequest, Tasks, TasksConfig};
//!
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
//!     .executor(LocalExecutor::new(LocalExecutorConfig::default())?)
//!     .config(config)
//!     .start()
//!     .await?;
//!
//! let acme = tasks.tenant(&Tenant::parse("acme")?);
//! let id = acme
//!     .submit(SubmitRequest::new("greet").parameters(serde_json::json!({ "who": "Ops" })))
//!     .await?;
//! let done = acme.wait(id).await?;
//! assert_eq!(done.status, TaskStatus::Succeeded);
//! let out = acme.logs(id, ops_tasks::LogStream::Stdout).await?;
//! assert_eq!(String::from_utf8(out)?, "hello Ops\n");
//! // Another tenant cannot see it.
//! let globex = tasks.tenant(&Tenant::parse("globex")?);
//! assert_eq!(globex.get(id).await.unwrap_err().kind(), ops_core::ErrorKind::NotFound);
//! tasks.shutdown().await;
//! # Ok(()) }
//! # #[cfg(not(all(unix, feature = "sqlite", feature = "local")))]
//! # fn main() {}
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admission;
pub mod duration;
mod error;
pub mod executor;
pub mod history;
#[cfg(feature = "kube")]
pub mod kube;
#[cfg(all(unix, feature = "local"))]
pub mod local;
#[cfg(feature = "sim")]
pub mod sim;
pub mod staging;
pub mod taskdir;
mod tasks;
pub mod template;
#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(feature = "kube")]
pub use error::Denied;
pub use error::{Error, ParameterViolation, Result};
pub use executor::{
    Executor, ExecutorUpdate, LaunchSpec, LogStream, NodeGroup, Outcome, Reattached, RunHandle,
    StagedInput,
};
#[cfg(feature = "sqlite")]
pub use history::SqliteHistory;
pub use history::{
    HistoryReader, HistoryStore, HistoryWriter, Lease, Leases, StatsQuery, TaskPage, TaskQuery,
    TaskRecord, TemplateStats,
};
#[cfg(all(unix, feature = "local"))]
pub use local::{LocalExecutor, LocalExecutorConfig};
#[cfg(feature = "sim")]
pub use sim::{SimExecutor, SimExecutorConfig};
pub use tasks::{
    Admin, BoxStream, CoordinatorConfig, RetentionPolicy, SubmitRequest, Tasks, TasksBuilder,
    TasksConfig, TenantTasks, Waiting,
};
pub use template::{Catalogue, RenderedCommand, RetryPolicy, TaskTemplate};
