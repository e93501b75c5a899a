use thiserror::Error;

/// Errors from parsing or building core values.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A value could not be parsed; `what` names the kind of value.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// The kind of value, e.g. `memory quantity`.
        what: &'static str,
        /// The offending input.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Event data could not be (de)serialized.
    #[error("event data: {0}")]
    EventData(#[from] serde_json::Error),
}

impl Error {
    /// Whether retrying the same call could succeed (never, for parse errors).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Result with [`enum@Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
