//! Errors of ops-provision, classified so that callers (and failover) can tell a
//! provider out of capacity from a bad request or an expired token.

use std::time::Duration;

use ops_core::ErrorKind;

/// Errors of ops-provision. [`kind`](Error::kind) maps each to an API status;
/// [`is_capacity`](Error::is_capacity) says whether another offering may work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The provider has no capacity for this offering here now (Hetzner
    /// `resource_unavailable`, DigitalOcean "region unavailable"): another region or
    /// offering may work.
    #[error("{provider}: no capacity for {offering} in {region}: {message}")]
    Capacity {
        /// The provider.
        provider: String,
        /// The instance type.
        offering: String,
        /// The region or location.
        region: String,
        /// What the provider said.
        message: String,
    },
    /// An account limit was reached (servers, cores, GPUs per project).
    #[error("{provider}: quota reached: {message}")]
    Quota {
        /// The provider.
        provider: String,
        /// What the provider said.
        message: String,
    },
    /// The credential was refused (401/403).
    #[error("{provider}: authentication failed: {message}")]
    Authentication {
        /// The provider.
        provider: String,
        /// What the provider said.
        message: String,
    },
    /// The request is wrong: an unknown region, size or image, a bad field.
    #[error("{provider}: invalid {field}: {message}")]
    InvalidRequest {
        /// The provider.
        provider: String,
        /// The field or parameter at fault (`region`, `server_type`, `image`…).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A temporary failure (rate limited, 5xx, a timeout): retrying later may work.
    #[error("{provider}: temporarily unavailable: {message}")]
    Transient {
        /// The provider.
        provider: String,
        /// What happened.
        message: String,
        /// How long the provider asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// A server the caller named does not exist.
    #[error("{provider}: no server {id:?}")]
    NotFound {
        /// The provider.
        provider: String,
        /// The server id.
        id: String,
    },
    /// A server did not become ready in time.
    #[error("{provider}: server {id:?} not ready after {waited:?}")]
    NotReady {
        /// The provider.
        provider: String,
        /// The server id.
        id: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// An inventory of owned machines with problems, every one naming its host.
    #[error("inventory {file}: {}", problems.join("; "))]
    InvalidInventory {
        /// The file.
        file: String,
        /// Every problem, each naming the host and field.
        problems: Vec<String>,
    },
    /// A request or spec with problems, every one naming its field.
    #[error("{what}: {}", problems.join("; "))]
    Invalid {
        /// What was checked (`resource request`, `server spec`).
        what: String,
        /// Every problem.
        problems: Vec<String>,
    },
    /// No offering fits a request; each one's reason is in the ranking.
    #[error("no offering fits {request}: {}", reasons.join("; "))]
    NoOffering {
        /// The request, in words.
        request: String,
        /// Why the closest offerings did not fit (a few).
        reasons: Vec<String>,
    },
    /// Another apply, destroy, refresh or sweep of the same fleet holds its lock.
    #[error("fleet {fleet:?} is being changed by {holder}; try again when it is done")]
    Busy {
        /// The fleet.
        fleet: String,
        /// Who holds it (`another task of this process`, `another process`).
        holder: String,
    },
    /// Every candidate offering failed with a capacity or quota error.
    #[error("every offering failed: {}", attempts.join("; "))]
    Exhausted {
        /// Each attempt and why it failed, in order.
        attempts: Vec<String>,
    },
    /// The fleet store's database failed.
    #[error("fleet store ({}): {source}", source.backend())]
    Store {
        /// The database failure, classified.
        #[source]
        source: ops_events::StoreError,
    },
    /// The event outbox or bus failed.
    #[error("fleet events: {0}")]
    Events(#[from] ops_events::Error),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// What kind of failure this is, for an API to map.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Capacity { .. } | Error::Quota { .. } | Error::Exhausted { .. } => {
                ErrorKind::ResourceExhausted
            }
            Error::Authentication { .. } => ErrorKind::PermissionDenied,
            Error::InvalidRequest { .. }
            | Error::InvalidInventory { .. }
            | Error::Invalid { .. }
            | Error::NoOffering { .. } => ErrorKind::InvalidInput,
            Error::Transient { .. } | Error::NotReady { .. } => ErrorKind::Unavailable,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Busy { .. } => ErrorKind::Conflict,
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Store { source } => source.kind(),
            Error::Events(e) => e.kind(),
        }
    }

    /// Whether the same call may succeed later (rate limits, 5xx, timeouts).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transient { .. } | Error::NotReady { .. } | Error::Busy { .. } => true,
            Error::Store { source } => source.is_retryable(),
            Error::Events(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether another offering (region, type, provider) may succeed where this one
    /// failed: capacity and quota errors, the ones failover moves on from.
    pub fn is_capacity(&self) -> bool {
        matches!(self, Error::Capacity { .. } | Error::Quota { .. })
    }
}

/// `Result` with ops-provision's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
