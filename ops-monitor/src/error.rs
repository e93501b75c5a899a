//! Errors of ops-monitor.

use ops_core::ErrorKind;

/// Errors of ops-monitor. Each has a [`kind`](Error::kind) an API maps to a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A monitoring configuration with problems, every one listed with its key.
    #[error("monitor configuration: {}", problems.join("; "))]
    InvalidConfig {
        /// Every problem found, each naming its key (`alerts.disk_fill.warning_hours`…).
        problems: Vec<String>,
    },
    /// A metric family declared twice (by two collectors, or a collector and a
    /// registered metric). Every clash is listed.
    #[error("metric families declared twice: {}", clashes.join("; "))]
    DuplicateFamily {
        /// One line per clash: the family, its two types and who declared each.
        clashes: Vec<String>,
    },
    /// A metric or label name that Prometheus does not accept.
    #[error("invalid metric name {name:?} ({what}): {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Where it was declared.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing the exposition failed (a collector wrote something unencodable).
    #[error("encoding the exposition failed: {0}")]
    Encode(String),
    /// Reading a file (a rules file, a dashboard) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Serializing rules, dashboards or manifests failed.
    #[error("serializing {what}: {message}")]
    Serialize {
        /// What was serialized.
        what: String,
        /// The serializer's message.
        message: String,
    },
}

impl Error {
    /// What kind of failure this is, for an API to map.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidConfig { .. } | Error::InvalidName { .. } => ErrorKind::InvalidInput,
            Error::DuplicateFamily { .. } => ErrorKind::Conflict,
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Encode(_) | Error::Serialize { .. } => ErrorKind::Internal,
        }
    }

    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Unavailable)
    }
}

/// `Result` with ops-monitor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a collector could not collect this time. The scrape goes on without it: its
/// families are left out and `ops_collector_up{collector="…"}` is 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CollectError {
    message: String,
}

impl CollectError {
    /// A failure with a message saying what could not be read and why.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}
