use ops_core::{ErrorKind, EventId};

use crate::function::FunctionError;
use crate::store_error::StoreError;

/// Errors from `ops-events`.
///
/// Backends keep their own error types private and convert into this enum; callers
/// decide whether to try again with [`Error::is_retryable`] without knowing the
/// backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event store (database) failed.
    #[error("event store ({}): {source}", source.backend())]
    Store {
        /// The database failure, classified.
        #[source]
        source: StoreError,
    },
    /// Applying the event store's schema migrations failed.
    #[error("event store migrations ({}): {source}", source.backend())]
    Migrate {
        /// The migration failure, classified.
        #[source]
        source: StoreError,
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
    /// The event store's server could not be reached or refused the connection.
    #[error("cannot connect to the event store at {url}: {message}")]
    Connect {
        /// The server URL, password redacted (`postgres://user:***@host/db`).
        url: String,
        /// Why (connection refused, timed out, authentication failed...).
        message: String,
    },
    /// The event store's schema is older than this binary and migrations were not to
    /// be applied (`Migrations::Require`).
    #[error(
        "the event store schema at {url} is older than this program: missing migrations {}; \
         apply them (or connect with migrations = \"run\")",
        missing.join(", ")
    )]
    SchemaOutdated {
        /// The server URL, password redacted.
        url: String,
        /// The migrations not applied yet, as `<version>_<name>`.
        missing: Vec<String>,
    },
    /// The message broker (NATS JetStream) failed or refused an operation.
    #[error("{backend} {operation}: {message}")]
    Broker {
        /// Which backend, e.g. `nats`.
        backend: &'static str,
        /// What was being done, e.g. `create consumer`.
        operation: &'static str,
        /// What the broker or the connection reported.
        message: String,
        /// Whether trying again may succeed (lost connection, timeout, server
        /// restarting) rather than a refusal that will not change.
        retryable: bool,
    },
    /// The broker did not acknowledge some published events before the publish
    /// deadline. They may or may not be stored; publishing them again is safe (the
    /// broker deduplicates by event id).
    #[error(
        "{backend}: {unacked} of {total} events not acknowledged within {waited_ms} ms: {message}"
    )]
    NotAcknowledged {
        /// Which backend, e.g. `nats`.
        backend: &'static str,
        /// Events without an acknowledgement.
        unacked: usize,
        /// Events in the publish call.
        total: usize,
        /// How long publishing was retried.
        waited_ms: u64,
        /// The last error seen.
        message: String,
    },
}

impl Error {
    /// Whether the same call may succeed if retried (busy database, lost connection,
    /// a retryable function failure). Never for a constraint violation.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source } | Error::Migrate { source } => source.is_retryable(),
            Error::Function { source, .. } => source.is_retryable(),
            Error::Io { .. } | Error::Connect { .. } | Error::NotAcknowledged { .. } => true,
            Error::Broker { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// What kind of failure this is, for callers (and API layers) that act on it
    /// without knowing the backend.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Store { source } | Error::Migrate { source } => source.kind(),
            Error::UnknownSubscription { .. }
            | Error::UnknownFunction { .. }
            | Error::UnknownDeadLetter { .. } => ErrorKind::NotFound,
            Error::Invalid { .. } | Error::DuplicateFunction { .. } => ErrorKind::InvalidInput,
            Error::AlreadyRunning => ErrorKind::Conflict,
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Connect { .. }
            | Error::NotAcknowledged { .. }
            | Error::SchemaOutdated { .. } => ErrorKind::Unavailable,
            Error::Broker {
                retryable: true, ..
            } => ErrorKind::Unavailable,
            Error::Function { source, .. } if source.is_retryable() => ErrorKind::Unavailable,
            Error::Encode { .. }
            | Error::Corrupt { .. }
            | Error::Broker { .. }
            | Error::Function { .. } => ErrorKind::Internal,
        }
    }

    /// A failure of the SQLite event store.
    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite(source: impl Into<crate::BoxError>) -> Self {
        Error::Store {
            source: StoreError::new("sqlite", source),
        }
    }

    /// A failure of the PostgreSQL event store.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(source: impl Into<crate::BoxError>) -> Self {
        Error::Store {
            source: StoreError::new("postgres", source),
        }
    }

    /// A failed migration of `backend`'s schema.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn migrate(backend: &'static str, source: impl Into<crate::BoxError>) -> Self {
        Error::Migrate {
            source: StoreError::new(backend, source),
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

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retryable() {
        #[cfg(feature = "sqlite")]
        {
            assert!(Error::sqlite(sqlx::Error::PoolTimedOut).is_retryable());
            assert_eq!(
                Error::sqlite(sqlx::Error::PoolTimedOut).kind(),
                ErrorKind::Unavailable
            );
            assert!(!Error::sqlite(sqlx::Error::RowNotFound).is_retryable());
        }
        let e = Error::UnknownSubscription { name: "x".into() };
        assert!(!e.is_retryable());
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("\"x\""), "{e}");
        let f = Error::Function {
            function: "f".into(),
            event_id: EventId::new(),
            source: FunctionError::retryable("busy"),
        };
        assert!(f.is_retryable());
        assert_eq!(f.kind(), ErrorKind::Unavailable);
        let down = Error::Connect {
            url: "postgres://ops:***@db/ops".into(),
            message: "connection refused".into(),
        };
        assert!(down.is_retryable());
        assert!(
            down.to_string().contains("postgres://ops:***@db/ops"),
            "{down}"
        );
        let outdated = Error::SchemaOutdated {
            url: "postgres://ops@db/ops".into(),
            missing: vec!["20261125000001_outbox".into(), "20261201000001_more".into()],
        };
        assert!(!outdated.is_retryable());
        assert!(
            outdated
                .to_string()
                .contains("20261125000001_outbox, 20261201000001_more"),
            "{outdated}"
        );
    }
}
