use thiserror::Error;

/// What kind of failure an error is, the same across every Ops crate, so that an API
/// layer maps errors to responses (and a caller decides what to do) without knowing
/// which crate or backend raised them.
///
/// Every crate's error has a `kind()` returning one of these.
///
/// ```
/// use ops_core::{ErrorKind, Tenant};
///
/// let err = Tenant::parse("../acme").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// assert_eq!(err.kind().http_status(), 400);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist, or belongs to another tenant.
    NotFound,
    /// The request or the configuration is wrong; the same call fails again.
    InvalidInput,
    /// The request contradicts the current state (already exists, held by another,
    /// changed meanwhile).
    Conflict,
    /// The caller may not do this.
    PermissionDenied,
    /// A quota, a budget or a capacity is exhausted.
    ResourceExhausted,
    /// A service or backend cannot be reached right now; trying again later may work.
    Unavailable,
    /// The component has shut down.
    ShutDown,
    /// This build, backend or process cannot do this (a feature that is off, signed
    /// URLs on a local directory, a coordinator-only call on a submit-only process).
    Unsupported,
    /// Anything else: a bug, corrupt data, an unexpected backend failure.
    Internal,
}

impl ErrorKind {
    /// The kind as a short snake_case string (`not_found`, `invalid_input`…).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ShutDown => "shut_down",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of a failed I/O operation: a missing file is `NotFound`, a refused one
    /// `PermissionDenied`, a full disk `ResourceExhausted`, a refused or lost
    /// connection `Unavailable`, the rest `Internal`.
    pub fn of_io(error: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match error.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
            Io::AlreadyExists => ErrorKind::Conflict,
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge | Io::OutOfMemory => {
                ErrorKind::ResourceExhausted
            }
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::HostUnreachable
            | Io::NetworkUnreachable
            | Io::NetworkDown
            | Io::TimedOut
            | Io::Interrupted
            | Io::WouldBlock
            | Io::ResourceBusy => ErrorKind::Unavailable,
            Io::InvalidInput | Io::InvalidFilename => ErrorKind::InvalidInput,
            _ => ErrorKind::Internal,
        }
    }

    /// The HTTP status an API answers with for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::InvalidInput => 400,
            ErrorKind::Conflict => 409,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Unavailable | ErrorKind::ShutDown => 503,
            ErrorKind::Unsupported => 501,
            ErrorKind::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// An object path could leave its tenant's storage or is malformed; every rule it
    /// breaks is listed.
    #[error("invalid object path {path:?}: {}", violations.join("; "))]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Every rule it breaks.
        violations: Vec<String>,
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

    /// What kind of failure this is: always [`ErrorKind::InvalidInput`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// Result with [`enum@Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
