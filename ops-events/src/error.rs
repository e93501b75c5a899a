use ops_core::EventId;

use crate::function::FunctionError;

/// Errors from `ops-events`.
///
/// Backends keep their own error types private and convert into this enum; callers
/// decide whether to try again with [`Error::is_retryable`] without knowing the
/// backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event store (database) failed.
    #[error("event store ({backend}): {source}")]
    Store {
        /// Which backend, e.g. `sqlite`.
        backend: &'static str,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the event store's schema migrations failed.
    #[error("event store migrations: {source}")]
    Migrate {
        /// The migration error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A subscription was used before [`EventBus::subscribe`](crate::EventBus::subscribe)
    /// created it.
    #[error("unknown subscription {name:?}; call subscribe() first")]
    UnknownSubscription {
        /// The subscription name.
        name: String,
    },
    /// A value given to `ops-events` was rejected (a name, a pattern, a URL...).
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value, e.g. `webhook url`.
        what: &'static str,
        /// The offending input.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An event could not be encoded as JSON for storage.
    #[error("event {event_id} could not be encoded: {source}")]
    Encode {
        /// The event.
        event_id: EventId,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record could not be read back.
    #[error("corrupt {what} in the event store: {reason}")]
    Corrupt {
        /// What record, e.g. `dead letter`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No function with this name is registered with the dispatcher.
    #[error("unknown function {name:?}")]
    UnknownFunction {
        /// The function name.
        name: String,
    },
    /// Two functions were registered under one name.
    #[error("function {name:?} is registered twice; function names must be unique")]
    DuplicateFunction {
        /// The function name.
        name: String,
    },
    /// No dead letter exists for this function and event.
    #[error("no dead letter for function {function:?} and event {event_id}")]
    UnknownDeadLetter {
        /// The function name.
        function: String,
        /// The event id.
        event_id: EventId,
    },
    /// A function failed when invoked directly (for example while replaying a dead
    /// letter).
    #[error("function {function:?} failed on event {event_id}: {source}")]
    Function {
        /// The function name.
        function: String,
        /// The event id.
        event_id: EventId,
        /// What the function reported.
        #[source]
        source: FunctionError,
    },
    /// A filesystem operation failed (creating the database directory...).
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The dispatcher was asked to start while it is already running.
    #[error("the dispatcher is already running")]
    AlreadyRunning,
}

impl Error {
    /// Whether the same call may succeed if retried (busy database, lost connection,
    /// a retryable function failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => sqlx_is_retryable(source),
            Error::Function { source, .. } => source.is_retryable(),
            Error::Io { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn sqlite(source: sqlx::Error) -> Self {
        Error::Store {
            backend: "sqlite",
            source,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

fn sqlx_is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including extended codes.
            let code = db.code();
            let primary = code
                .as_deref()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xff);
            matches!(primary, Some(5) | Some(6))
        }
        _ => false,
    }
}

impl From<sqlx::Error> for Error {
    fn from(source: sqlx::Error) -> Self {
        Error::sqlite(source)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(source: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate { source }
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(Error::sqlite(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!Error::sqlite(sqlx::Error::RowNotFound).is_retryable());
        let e = Error::UnknownSubscription { name: "x".into() };
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("\"x\""), "{e}");
        let f = Error::Function {
            function: "f".into(),
            event_id: EventId::new(),
            source: FunctionError::retryable("busy"),
        };
        assert!(f.is_retryable());
    }
}
