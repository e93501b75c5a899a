//! Tasks on Ops: templates, the task state machine, executors, history and the
//! [`Tasks`] facade.
#![allow(missing_docs)] // TODO: remove once the crate is complete

pub mod duration;
mod error;
pub mod executor;
pub mod history;
pub mod local;
pub mod paths;
mod tasks;
pub mod template;

pub use error::{Error, ParameterViolation, Result};
pub use executor::{
    Executor, ExecutorUpdate, LaunchSpec, LogStream, Outcome, Reattached, RunHandle,
};
pub use history::{HistoryStore, SqliteHistory, TaskPage, TaskQuery, TaskRecord};
pub use local::{LocalExecutor, LocalExecutorConfig};
pub use tasks::{BoxStream, RetentionPolicy, SubmitRequest, Tasks, TasksBuilder, TasksConfig};
pub use template::{Catalogue, RenderedCommand, RetryPolicy, TaskTemplate};
