use std::path::PathBuf;

use ops_core::{ErrorKind, TaskId};
use thiserror::Error;

/// One violation of a template's parameter schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterViolation {
    /// JSON pointer into the submitted parameters, e.g. `/frames` (empty for the root).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl std::fmt::Display for ParameterViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Errors from `ops-tasks`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A template file could not be read or is invalid.
    #[error("template {}: {field}: {message}", file.display())]
    InvalidTemplate {
        /// The file (or a descriptive name for templates built in code).
        file: PathBuf,
        /// The offending field, dotted (e.g. `resources.memory`), or `-` for the whole file.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Several template problems, possibly in several files, reported together. Each
    /// entry is an [`Error::InvalidTemplate`] (or an [`Error::Io`] for an unreadable
    /// file); a single problem is reported as that error alone.
    #[error("{} template problems: {}", problems.len(), problems.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidTemplates {
        /// Every problem found.
        problems: Vec<Error>,
    },
    /// Parameters do not satisfy the template's schema; every violation is listed.
    #[error("invalid parameters for template {template}: {}", violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidParameters {
        /// The template.
        template: String,
        /// All violations, each with its JSON path.
        violations: Vec<ParameterViolation>,
    },
    /// No template with this name; `close_matches` lists similar names.
    #[error("unknown template {name:?}{}", if close_matches.is_empty() { String::new() } else { format!(" (did you mean {}?)", close_matches.join(", ")) })]
    TemplateNotFound {
        /// The requested name.
        name: String,
        /// Similar names in the catalogue.
        close_matches: Vec<String>,
    },
    /// No such task for this tenant (also returned for another tenant's task).
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// The request can never run on this machine.
    #[error("request larger than the machine: {}", shortfalls.join("; "))]
    ExceedsCapacity {
        /// Each dimension that does not fit.
        shortfalls: Vec<String>,
    },
    /// Admission could never run the request: unknown tenant or environment, a GPU
    /// model no node has, larger than every node or than the tenant's quota.
    #[error("the task can never be admitted: {}", reasons.join("; "))]
    Inadmissible {
        /// Every reason.
        reasons: Vec<String>,
    },
    /// A path (output glob, working directory, log) would leave the task's directory.
    #[error("path {path:?} escapes the task directory: {reason}")]
    PathEscape {
        /// The offending path or pattern.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The requested state change is not allowed.
    #[error("task {task_id}: cannot go from {from} to {to}")]
    InvalidTransition {
        /// The task.
        task_id: TaskId,
        /// Current status.
        from: ops_core::TaskStatus,
        /// Requested status.
        to: ops_core::TaskStatus,
    },
    /// Another live coordinator holds the lease on this coordinator id.
    #[error(
        "coordinator id {owner:?} is in use by a live coordinator (lease held until {until}); give each coordinator its own id"
    )]
    LeaseHeld {
        /// The contested coordinator id.
        owner: String,
        /// When the other lease expires unless renewed.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// The history database could not be reached or opened.
    #[error("cannot open history store {url}: {message}")]
    Connect {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// Why.
        message: String,
    },
    /// The database schema is older than this binary and migrations were not allowed
    /// to run.
    #[error("history store {url}: schema is out of date ({}); run the migrations (e.g. open with migrations enabled)", missing.join(", "))]
    SchemaOutdated {
        /// The URL, password redacted.
        url: String,
        /// The migrations not applied yet.
        missing: Vec<String>,
    },
    /// Configuration is invalid; every problem is listed, each as `field: what is
    /// wrong` (the field dotted, such as `admission.tenants.acme.weight`).
    #[error("invalid configuration: {}", problems.join("; "))]
    InvalidConfig {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A value (a tenant or environment name, an id) breaks its rule; the error names
    /// the rule.
    #[error(transparent)]
    InvalidValue(#[from] ops_core::Error),
    /// A page cursor that no query of this store gave.
    #[error("invalid page cursor {cursor:?}: pass the next_cursor of a previous page")]
    InvalidCursor {
        /// The cursor as given.
        cursor: String,
    },
    /// One request of a batch ([`TenantTasks::submit_many`](crate::TenantTasks::submit_many))
    /// is invalid; nothing of the batch was stored.
    #[error("request #{index}: {source}")]
    InvalidRequest {
        /// Its index in the batch, from 0.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: Box<Error>,
    },
    /// [`Tasks::builder`](crate::Tasks::builder) was not given a part it needs.
    #[error("Tasks::builder() needs {what}")]
    MissingPart {
        /// What is missing, e.g. `a history store`.
        what: &'static str,
    },
    /// Another live coordinator process holds this task root's lock.
    #[error(
        "task root {} is in use by another live coordinator (lock {} is held: {message}); give each coordinator process its own root",
        root.display(),
        lock.display()
    )]
    RootInUse {
        /// The task root.
        root: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What locking reported.
        message: String,
    },
    /// The task service has shut down.
    #[error("the task service has shut down")]
    ShutDown,
    /// This process runs no coordinator (a submit-only service), so it cannot do
    /// what only a coordinator can.
    #[error("this task service is submit-only (it runs no coordinator): it cannot {operation}")]
    NotCoordinator {
        /// What was asked, e.g. `explain a queued task`.
        operation: &'static str,
    },
    /// The store or executor cannot do this.
    #[error("not supported: {what}")]
    Unsupported {
        /// What was asked, and why not.
        what: String,
    },
    /// The executor failed.
    #[error("executor {executor}: {message}")]
    Executor {
        /// Executor name.
        executor: String,
        /// What failed.
        message: String,
    },
    /// The Kubernetes API server could not be reached, or answered in a way that makes
    /// no sense (`server` is its URL).
    #[cfg(feature = "kube")]
    #[error("Kubernetes API server {server}: {message}")]
    Cluster {
        /// The API server's URL.
        server: String,
        /// What failed.
        message: String,
    },
    /// The Kubernetes API server refused an operation (RBAC). Lists every missing
    /// permission when found by the start-up check.
    #[cfg(feature = "kube")]
    #[error("forbidden by the Kubernetes API server: {}", denied.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "))]
    Forbidden {
        /// The operations refused.
        denied: Vec<Denied>,
    },
    /// The history database failed.
    #[error("history store ({}): {source}", source.backend())]
    Store {
        /// The database failure, classified.
        #[source]
        source: ops_events::StoreError,
    },
    /// A database migration failed.
    #[error("history migration ({}): {source}", source.backend())]
    Migrate {
        /// The migration failure, classified.
        #[source]
        source: ops_events::StoreError,
    },
    /// Publishing or storing events failed.
    #[error(transparent)]
    Events(#[from] ops_events::Error),
    /// A filesystem operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// (De)serializing stored JSON failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Whether the same call may succeed if retried. Never for a constraint violation
    /// or invalid input.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source } | Error::Migrate { source } => source.is_retryable(),
            Error::Events(e) => e.is_retryable(),
            Error::InvalidRequest { source, .. } => source.is_retryable(),
            Error::Io { source, .. } => ErrorKind::of_io(source) == ErrorKind::Unavailable,
            Error::Executor { .. } | Error::Connect { .. } => true,
            #[cfg(feature = "kube")]
            Error::Cluster { .. } => true,
            _ => false,
        }
    }

    /// What kind of failure this is, for callers (and API layers) that act on it
    /// without knowing the backend.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidTemplate { .. }
            | Error::InvalidTemplates { .. }
            | Error::InvalidParameters { .. }
            | Error::ExceedsCapacity { .. }
            | Error::Inadmissible { .. }
            | Error::PathEscape { .. }
            | Error::InvalidConfig { .. }
            | Error::InvalidCursor { .. }
            | Error::MissingPart { .. } => ErrorKind::InvalidInput,
            Error::InvalidValue(e) => e.kind(),
            Error::InvalidRequest { source, .. } => source.kind(),
            Error::TemplateNotFound { .. } | Error::TaskNotFound(_) => ErrorKind::NotFound,
            Error::InvalidTransition { .. } | Error::LeaseHeld { .. } | Error::RootInUse { .. } => {
                ErrorKind::Conflict
            }
            Error::Connect { .. } | Error::SchemaOutdated { .. } | Error::Executor { .. } => {
                ErrorKind::Unavailable
            }
            #[cfg(feature = "kube")]
            Error::Cluster { .. } => ErrorKind::Unavailable,
            #[cfg(feature = "kube")]
            Error::Forbidden { .. } => ErrorKind::PermissionDenied,
            Error::ShutDown => ErrorKind::ShutDown,
            Error::NotCoordinator { .. } | Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Store { source } | Error::Migrate { source } => source.kind(),
            Error::Events(e) => e.kind(),
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Json(_) => ErrorKind::Internal,
        }
    }

    /// Invalid configuration with one problem, `field: message`.
    pub(crate) fn config(field: &str, message: impl std::fmt::Display) -> Self {
        Error::InvalidConfig {
            problems: vec![format!("{field}: {message}")],
        }
    }

    /// A database failure of `backend`.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn store(backend: &'static str, source: impl Into<ops_events::BoxError>) -> Self {
        Error::Store {
            source: ops_events::StoreError::new(backend, source),
        }
    }

    /// A failure of the SQLite history.
    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite(source: impl Into<ops_events::BoxError>) -> Self {
        Self::store("sqlite", source)
    }

    /// A failure of the Postgres history.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(source: impl Into<ops_events::BoxError>) -> Self {
        Self::store("postgres", source)
    }

    /// A failed migration of `backend`'s history schema.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn migrate(backend: &'static str, source: impl Into<ops_events::BoxError>) -> Self {
        Error::Migrate {
            source: ops_events::StoreError::new(backend, source),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// One operation the Kubernetes API server refused: `verb` on `resource` (with its API
/// group) in `namespace` (none: cluster-wide).
#[cfg(feature = "kube")]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Denied {
    /// `create`, `list`, `watch`…
    pub verb: String,
    /// `pods`, `namespaces`, `pods/log`…
    pub resource: String,
    /// API group (`""` for the core group).
    pub group: String,
    /// The namespace, when the operation is namespaced.
    pub namespace: Option<String>,
    /// The server's message, when it sent one.
    pub message: Option<String>,
}

#[cfg(feature = "kube")]
impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        write!(f, "cannot {} {}", self.verb, resource)?;
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}")?,
            None => write!(f, " cluster-wide")?,
        }
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

/// Result with [`enum@Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
