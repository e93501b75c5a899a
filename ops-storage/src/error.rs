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
    /// The backend cannot do this (for example signed URLs on a local directory).
    #[error("storage backend {url} does not support {what}")]
    Unsupported {
        /// The storage URL.
        url: String,
        /// What was asked.
        what: String,
    },
    /// The object catalog (which records objects, checksums and usage) failed; the
    /// object is not recorded.
    #[error("storage catalog: {0}")]
    Catalog(String),
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
                    source,
                }
            }
        }
    }
}
