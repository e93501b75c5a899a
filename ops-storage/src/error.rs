use std::path::PathBuf;

/// Errors of ops-storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path a tenant gave could leave its storage or is malformed.
    #[error("invalid object path {path:?}: {}", violations.join("; "))]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Every rule it breaks.
        violations: Vec<String>,
    },
    /// No such object in the tenant's storage.
    #[error("object {path:?} not found")]
    NotFound {
        /// The path, relative to the tenant's storage.
        path: String,
    },
    /// The storage URL or settings are wrong.
    #[error("storage configuration: {0}")]
    Config(String),
    /// The backend failed (unreachable, refused, ...).
    #[error("storage backend {url}: {source}")]
    Backend {
        /// The storage URL.
        url: String,
        /// What object_store reported.
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of ops-storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
