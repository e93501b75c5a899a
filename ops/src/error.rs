use std::path::PathBuf;

use ops_core::ErrorKind;

/// Errors of the `ops` facade: a bad configuration (every problem at once), or an error
/// of one of the parts. Every variant has a [`kind`](Error::kind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The platform configuration is invalid. Each problem names the key path (such as
    /// `tasks.retention.max_age`) and what is wrong or allowed.
    #[error("{}{} configuration problem{}:\n  - {}",
        file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.join("\n  - "))]
    Config {
        /// The configuration file, when it came from one.
        file: Option<PathBuf>,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The task service failed.
    #[error(transparent)]
    Tasks(#[from] ops_tasks::Error),
    /// The event spine failed.
    #[error(transparent)]
    Events(#[from] ops_events::Error),
    /// Object storage failed.
    #[error(transparent)]
    Storage(#[from] ops_storage::Error),
    /// Billing failed.
    #[error(transparent)]
    Billing(#[from] ops_billing::Error),
    /// Provisioning failed (a provider, a fleet spec, the fleet records).
    #[cfg(feature = "provision")]
    #[error(transparent)]
    Provision(#[from] ops_provision::Error),
    /// Monitoring failed (a metric family declared twice, a bad name).
    #[cfg(feature = "monitor")]
    #[error(transparent)]
    Monitor(#[from] ops_monitor::Error),
    /// The metrics server could not listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::InvalidInput,
            Error::Tasks(e) => e.kind(),
            Error::Billing(e) => e.kind(),
            Error::Events(e) => e.kind(),
            Error::Storage(e) => e.kind(),
            #[cfg(feature = "monitor")]
            Error::Monitor(e) => e.kind(),
            #[cfg(feature = "provision")]
            Error::Provision(e) => e.kind(),
            Error::Io { source, .. } => ErrorKind::of_io(source),
            // Taken by another process, or not an address of this host: try later or
            // elsewhere.
            Error::Listen { .. } => ErrorKind::Unavailable,
        }
    }

    /// Whether the same call may succeed if retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Tasks(e) => e.is_retryable(),
            Error::Events(e) => e.is_retryable(),
            Error::Storage(e) => e.is_retryable(),
            Error::Billing(e) => e.is_retryable(),
            #[cfg(feature = "monitor")]
            Error::Monitor(e) => e.is_retryable(),
            #[cfg(feature = "provision")]
            Error::Provision(e) => e.is_retryable(),
            Error::Listen { .. } => true,
            Error::Config { .. } | Error::Io { .. } => false,
        }
    }

    pub(crate) fn config(problems: Vec<String>) -> Self {
        Error::Config {
            file: None,
            problems,
        }
    }
}

/// Result with [`enum@Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
