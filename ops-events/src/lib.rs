//! The Ops event spine (placeholder until the bus lands).
#![allow(missing_docs)]

/// Errors from `ops-events`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Storage failed.
    #[error("event store: {0}")]
    Store(#[from] sqlx::Error),
}

impl Error {
    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
