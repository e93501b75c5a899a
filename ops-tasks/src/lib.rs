//! Tasks on Ops: templates, the task state machine, executors, history and the
//! [`Tasks`] facade.
#![allow(missing_docs)] // TODO: remove once the crate is complete

mod error;
pub mod executor;
pub mod paths;

pub use error::{Error, ParameterViolation, Result};
pub use executor::{Executor, ExecutorUpdate, LaunchSpec, LogStream, Outcome, Reattached, RunHandle};
