use std::path::PathBuf;

use ops_core::ErrorKind;

/// Errors of ops-storage.
///
/// Each has a [`kind`](Error::kind) an API layer maps to a response, and says whether
/// trying again may help ([`is_retryable`](Error::is_retryable)). The backends' own
/// errors (object_store's, the SQL driver's) are boxed sources, not part of this type.
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
    /// The storage settings are wrong; every problem is listed, each naming its field.
    #[error("storage configuration: {}", problems.join("; "))]
    InvalidConfig {
        /// Every problem, as `field: what is wrong`.
        problems: Vec<String>,
    },
    /// The storage URL cannot be used: an unknown scheme, a relative `file://` path, a
    /// malformed `s3://` URL.
    #[error("storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, without its query.
        url: String,
        /// What is wrong, and what is allowed.
        reason: String,
    },
    /// A signed URL was asked for a lifetime out of range.
    #[error("a signed URL may last from 1 second to 7 days; {requested:?} was asked")]
    InvalidExpiry {
        /// The lifetime asked for.
        requested: std::time::Duration,
    },
    /// The backend failed (unreachable, refused, ...).
    #[error("storage backend {url}: {source}")]
    Backend {
        /// The storage URL.
        url: String,
        /// What the backend (object_store) reported.
        #[source]
        source: ops_events::BoxError,
    },
    /// A write would take the tenant over its storage quota; nothing was written.
    #[error(
        "tenant {tenant:?} is over its storage quota of {limit} {resource}: {used} in use, {need} more needed"
    )]
    QuotaExceeded {
        /// The tenant.
        tenant: String,
        /// `bytes` or `objects`.
        resource: &'static str,
        /// What the tenant holds now.
        used: u64,
        /// The quota.
        limit: u64,
        /// What the write needs.
        need: u64,
    },
    /// The backend refused the credentials (unknown key, wrong secret, expired token,
    /// no permission).
    #[error("storage backend {url} refused the credentials: {message}")]
    Credentials {
        /// The storage URL.
        url: String,
        /// What the backend said.
        message: String,
    },
    /// The backend could not be reached (connection refused, DNS, timeout).
    #[error("storage backend {url} is unreachable: {message}")]
    Unreachable {
        /// The storage URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The backend (or this build) cannot do this: signed URLs on a local directory,
    /// `s3://` without the `s3` feature.
    #[error("storage backend {url} does not support {what}")]
    Unsupported {
        /// The storage URL.
        url: String,
        /// What was asked.
        what: String,
    },
    /// The object catalog's database failed; the object is not recorded.
    #[error("storage catalog ({}): {source}", source.backend())]
    Catalog {
        /// The database failure, classified.
        #[source]
        source: ops_events::StoreError,
    },
    /// Publishing or storing an object's event failed; the object is not recorded.
    #[error("storage events: {0}")]
    Events(#[from] ops_events::Error),
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

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidPath { .. }
            | Error::InvalidConfig { .. }
            | Error::InvalidUrl { .. }
            | Error::InvalidExpiry { .. } => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::QuotaExceeded { .. } => ErrorKind::ResourceExhausted,
            Error::Credentials { .. } => ErrorKind::PermissionDenied,
            Error::Unreachable { .. } => ErrorKind::Unavailable,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Catalog { source } => source.kind(),
            Error::Events(e) => e.kind(),
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Backend { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the same call may succeed if retried: an unreachable backend, a busy
    /// catalog, a lost connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Catalog { source } => source.is_retryable(),
            Error::Events(e) => e.is_retryable(),
            Error::Io { source, .. } => ErrorKind::of_io(source) == ErrorKind::Unavailable,
            _ => false,
        }
    }
}

impl From<ops_core::Error> for Error {
    fn from(e: ops_core::Error) -> Self {
        match e {
            ops_core::Error::InvalidPath { path, violations } => {
                Error::InvalidPath { path, violations }
            }
            other => Error::InvalidConfig {
                problems: vec![other.to_string()],
            },
        }
    }
}

/// Result of ops-storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns an `object_store` error about `path` into a typed [`Error`]: a missing object
/// becomes [`Error::NotFound`], refused credentials [`Error::Credentials`], a backend
/// that cannot be reached [`Error::Unreachable`], the rest [`Error::Backend`].
pub(crate) fn classify(url: &str, path: &str, source: object_store::Error) -> Error {
    /// The errors `error` was caused by, itself first.
    fn chain<'a>(
        error: &'a (dyn std::error::Error + 'static),
    ) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
        std::iter::successors(Some(error), |e| e.source())
    }

    /// Whether a cause is a failure to reach the server: refused or reset connection,
    /// DNS, timeout. Typed causes only (reqwest, io), no message matching.
    fn is_unreachable(cause: &(dyn std::error::Error + 'static)) -> bool {
        #[cfg(feature = "s3")]
        {
            if let Some(e) = cause.downcast_ref::<reqwest::Error>()
                && (e.is_connect() || e.is_timeout())
            {
                return true;
            }
            if let Some(e) = cause.downcast_ref::<object_store::client::HttpError>() {
                use object_store::client::HttpErrorKind;
                if matches!(e.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout) {
                    return true;
                }
            }
        }
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            use std::io::ErrorKind::*;
            matches!(
                e.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | AddrNotAvailable
                    | NotConnected
            )
        })
    }

    /// The S3 error codes that mean the credentials were refused. object_store keeps
    /// the HTTP status of list and multipart errors in a private type, so for those the
    /// only trace left is the status line and S3 error body in the message.
    const REFUSED: [&str; 9] = [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "401 Unauthorized",
        "403 Forbidden",
    ];

    /// The S3 `<Code>` and `<Message>` in `text`, or all of it.
    fn short(text: String) -> String {
        let tag = |name: &str| {
            let open = format!("<{name}>");
            let start = text.find(&open)? + open.len();
            let len = text[start..].find(&format!("</{name}>"))?;
            Some(text[start..start + len].to_owned())
        };
        match (tag("Code"), tag("Message")) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code,
            _ => text,
        }
    }

    match source {
        object_store::Error::NotFound { .. } => Error::NotFound {
            path: path.to_owned(),
        },
        object_store::Error::Unauthenticated { source, .. }
        | object_store::Error::PermissionDenied { source, .. } => Error::Credentials {
            url: url.to_owned(),
            message: short(source.to_string()),
        },
        source => {
            let causes = || chain(&source as &(dyn std::error::Error + 'static));
            if causes().any(is_unreachable) {
                // The innermost cause says what failed (connection refused, dns error).
                let message = causes().last().map(|e| e.to_string()).unwrap_or_default();
                Error::Unreachable {
                    url: url.to_owned(),
                    message: format!("{message} ({source})"),
                }
            } else if let Some(text) = causes()
                .map(|e| e.to_string())
                .find(|text| REFUSED.iter().any(|code| text.contains(code)))
            {
                Error::Credentials {
                    url: url.to_owned(),
                    message: short(text),
                }
            } else {
                Error::Backend {
                    url: url.to_owned(),
                    source: Box::new(source),
                }
            }
        }
    }
}
