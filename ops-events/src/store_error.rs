//! [`StoreError`]: a database failure without the database driver's types in the
//! public API, classified once, where it happens, into an [`ErrorKind`] and whether
//! trying again may help.

use std::error::Error as StdError;

use ops_core::ErrorKind;

/// A boxed error from a backend's own library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A failure of a database-backed store (the SQLite or PostgreSQL outbox, a history
/// store, an object catalog).
///
/// The driver's error is kept as the [`source`](std::error::Error::source), boxed, so
/// that upgrading the driver is not a breaking change; what a caller acts on is
/// classified when the error is made: [`kind`](Self::kind) and
/// [`is_retryable`](Self::is_retryable). A busy or locked database, a lost connection,
/// a full pool, a serialization failure or a deadlock are retryable
/// ([`ErrorKind::Unavailable`]); a constraint violation is a
/// [`Conflict`](ErrorKind::Conflict) and is not.
#[derive(Debug)]
pub struct StoreError {
    backend: &'static str,
    kind: ErrorKind,
    retryable: bool,
    source: BoxError,
}

impl StoreError {
    /// Classifies `source`, a failure of `backend` (`sqlite`, `postgres`…). The
    /// classification reads the SQL driver's error wherever it sits in `source`'s
    /// chain of causes (a failed migration that could not connect is still a lost
    /// connection); other errors are [`ErrorKind::Internal`] and not retryable.
    pub fn new(backend: &'static str, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        let (kind, retryable) = classify(backend, source.as_ref());
        Self {
            backend,
            kind,
            retryable,
            source,
        }
    }

    /// A failure already classified by the caller (for example one failure reported
    /// to each of the writers of a group commit).
    pub fn classified(
        backend: &'static str,
        kind: ErrorKind,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            backend,
            kind,
            retryable,
            source: source.into(),
        }
    }

    /// The backend, e.g. `sqlite`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the same call may succeed if retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The kind of a failure and whether retrying may help, from the first SQL driver
/// error in its chain of causes.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(unused_variables)
)]
fn classify(backend: &str, error: &(dyn StdError + 'static)) -> (ErrorKind, bool) {
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
                return classify_sqlx(backend, sqlx);
            }
            cause = e.source();
        }
    }
    (ErrorKind::Internal, false)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn classify_sqlx(backend: &str, e: &sqlx::Error) -> (ErrorKind, bool) {
    use sqlx::error::ErrorKind as Db;
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => (ErrorKind::Unavailable, true),
        sqlx::Error::RowNotFound => (ErrorKind::NotFound, false),
        sqlx::Error::Database(db) => {
            if matches!(
                db.kind(),
                Db::UniqueViolation
                    | Db::ForeignKeyViolation
                    | Db::NotNullViolation
                    | Db::CheckViolation
            ) {
                return (ErrorKind::Conflict, false);
            }
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            let transient = if backend == "postgres" {
                // SQLSTATE: serialization failure, deadlock, lock not available, too
                // many connections, shutdown or recovery, connection exceptions (08).
                matches!(
                    code,
                    "40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03"
                ) || code.starts_with("08")
            } else {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including extended codes.
                code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            };
            if transient {
                (ErrorKind::Unavailable, true)
            } else {
                (ErrorKind::Internal, false)
            }
        }
        _ => (ErrorKind::Internal, false),
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn constraint_violations_are_conflicts_and_not_retryable() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&pool)
            .await
            .unwrap();
        let dup = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&pool)
            .await
            .unwrap_err();
        let e = StoreError::new("sqlite", dup);
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("UNIQUE"), "{e}");
    }

    #[test]
    fn transient_failures_are_retryable_wherever_they_sit_in_the_chain() {
        let e = StoreError::new("sqlite", sqlx::Error::PoolTimedOut);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        let migrate = sqlx::migrate::MigrateError::Execute(sqlx::Error::PoolTimedOut);
        assert!(StoreError::new("sqlite", migrate).is_retryable());
        let other = StoreError::new("sqlite", std::io::Error::other("disk on fire"));
        assert_eq!(other.kind(), ErrorKind::Internal);
        assert!(!other.is_retryable());
        assert_eq!(
            StoreError::new("sqlite", sqlx::Error::RowNotFound).kind(),
            ErrorKind::NotFound
        );
    }
}
