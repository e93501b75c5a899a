//! [`Function`]: an event handler (the platform's "serverless function").

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ops_core::Event;

/// Boxed error source carried by a [`FunctionError`].
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An event handler. The [`Dispatcher`](crate::Dispatcher) calls it for every event
/// its [`Trigger`](crate::Trigger)s match, at least once: the same event may come
/// again (after a crash, a timeout, a retry), so a function that has side effects
/// dedupes by `event.id` (see [`Dedupe`](crate::Dedupe)).
///
/// Return `Ok` when the event is handled; a [retryable](FunctionError::retryable)
/// error to be called again after a backoff; a [permanent](FunctionError::permanent)
/// error to send the event straight to the dead letters.
#[async_trait]
pub trait Function: Send + Sync + 'static {
    /// A stable name: it names the function's durable subscription and its dead
    /// letters (ASCII letters, digits, `.`, `-`, `_`; at most 128 characters).
    fn name(&self) -> &str;

    /// Handles one event.
    async fn call(&self, event: &Event) -> Result<(), FunctionError>;
}

#[async_trait]
impl<T: Function + ?Sized> Function for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    async fn call(&self, event: &Event) -> Result<(), FunctionError> {
        (**self).call(event).await
    }
}

#[async_trait]
impl<T: Function + ?Sized> Function for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    async fn call(&self, event: &Event) -> Result<(), FunctionError> {
        (**self).call(event).await
    }
}

/// A [`Function`] from a closure; see [`function_fn`].
pub struct FnFunction<F> {
    name: String,
    f: F,
}

impl<F> fmt::Debug for FnFunction<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnFunction")
            .field("name", &self.name)
            .finish()
    }
}

/// Makes a [`Function`] from an async closure that receives the event (a clone it
/// owns).
///
/// ```
/// use ops_events::{function_fn, Function, FunctionError};
///
/// let f = function_fn("greet", |event| async move {
///     if event.subject.is_none() {
///         return Err(FunctionError::permanent("no subject"));
///     }
///     Ok(())
/// });
/// assert_eq!(f.name(), "greet");
/// ```
pub fn function_fn<F, Fut>(name: impl Into<String>, f: F) -> FnFunction<F>
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), FunctionError>> + Send + 'static,
{
    FnFunction {
        name: name.into(),
        f,
    }
}

#[async_trait]
impl<F, Fut> Function for FnFunction<F>
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), FunctionError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, event: &Event) -> Result<(), FunctionError> {
        (self.f)(event.clone()).await
    }
}

/// Whether a failed call is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// A temporary problem (a service down, a timeout): retry after a backoff.
    Retryable,
    /// Retrying the same event cannot help (bad input, rejected request): dead-letter
    /// it at once.
    Permanent,
}

/// Why a [`Function`] failed.
#[derive(Debug)]
pub struct FunctionError {
    kind: FailureKind,
    message: String,
    retry_after: Option<Duration>,
    source: Option<Source>,
}

impl FunctionError {
    /// A temporary failure: the dispatcher retries with backoff.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Retryable, message)
    }

    /// A permanent failure: the event goes to the dead letters at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Permanent, message)
    }

    /// A failure of the given kind.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// A failure caused by `error`, whose text becomes the message.
    pub fn from_error(
        kind: FailureKind,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: error.to_string(),
            retry_after: None,
            source: Some(Box::new(error)),
        }
    }

    /// Asks the dispatcher to wait at least this long before the next attempt (for
    /// example from an HTTP `Retry-After`).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.kind == FailureKind::Retryable
    }

    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The minimum delay before the next attempt, if the function asked for one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for FunctionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
        };
        write!(f, "{} ({kind})", self.message)
    }
}

impl std::error::Error for FunctionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::Error> for FunctionError {
    fn from(e: crate::Error) -> Self {
        let kind = if e.is_retryable() {
            FailureKind::Retryable
        } else {
            FailureKind::Permanent
        };
        Self::from_error(kind, e)
    }
}

impl From<ops_core::Error> for FunctionError {
    /// Parse and data errors: the same event will fail the same way.
    fn from(e: ops_core::Error) -> Self {
        Self::from_error(FailureKind::Permanent, e)
    }
}

impl From<serde_json::Error> for FunctionError {
    /// The same event will fail to (de)serialize the same way.
    fn from(e: serde_json::Error) -> Self {
        Self::from_error(FailureKind::Permanent, e)
    }
}

impl From<std::io::Error> for FunctionError {
    /// I/O problems are usually temporary.
    fn from(e: std::io::Error) -> Self {
        Self::from_error(FailureKind::Retryable, e)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[tokio::test]
    async fn closures_are_functions() {
        let f = function_fn("echo", |event| async move {
            match event.subject.as_deref() {
                Some("bad") => Err(FunctionError::permanent("bad subject")),
                Some(_) => Ok(()),
                None => Err(FunctionError::retryable("no subject yet")),
            }
        });
        let boxed: Arc<dyn Function> = Arc::new(f);
        assert_eq!(boxed.name(), "echo");
        let ok = Event::builder("t", "s").subject("x").build();
        boxed.call(&ok).await.unwrap();
        let bad = Event::builder("t", "s").subject("bad").build();
        let e = boxed.call(&bad).await.unwrap_err();
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "bad subject (permanent)");
        let none = Event::builder("t", "s").build();
        assert!(boxed.call(&none).await.unwrap_err().is_retryable());
    }

    #[test]
    fn errors_convert_with_the_right_kind() {
        let io: FunctionError = std::io::Error::other("disk").into();
        assert!(io.is_retryable());
        assert!(io.source().is_some());
        let json: FunctionError = serde_json::from_str::<u8>("x").unwrap_err().into();
        assert_eq!(json.kind(), FailureKind::Permanent);
        let e = FunctionError::retryable("slow down").with_retry_after(Duration::from_secs(3));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.message(), "slow down");
    }
}
