//! Dead letters: events a function gave up on, kept until replayed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Event, EventId};
use serde::{Deserialize, Serialize};

use crate::Result;

/// An event that a function failed to handle: after its last retry, or at once for a
/// permanent failure. The event is kept whole, so it can be replayed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The function that failed.
    pub function: String,
    /// The event, unchanged.
    pub event: Event,
    /// The last error.
    pub error: String,
    /// How many times the function was called with this event (replays included).
    pub attempts: u32,
    /// Whether the last failure was permanent (not worth retrying as is).
    pub permanent: bool,
    /// When the last failure happened.
    pub failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// A dead letter failed now.
    pub fn new(
        function: impl Into<String>,
        event: Event,
        error: impl Into<String>,
        attempts: u32,
        permanent: bool,
    ) -> Self {
        Self {
            function: function.into(),
            event,
            error: error.into(),
            attempts,
            permanent,
            failed_at: Utc::now(),
        }
    }
}

/// Where dead letters are kept. One letter per function and event id: storing a
/// letter for the same pair again replaces it.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Stores a letter, replacing the one for the same function and event.
    async fn put(&self, letter: &DeadLetter) -> Result<()>;

    /// Letters, oldest failure first, optionally for one function only.
    async fn list(&self, function: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>>;

    /// The letter for a function and event, if any.
    async fn get(&self, function: &str, event_id: EventId) -> Result<Option<DeadLetter>>;

    /// Removes a letter; returns whether it existed.
    async fn remove(&self, function: &str, event_id: EventId) -> Result<bool>;

    /// How many letters are kept, optionally for one function only.
    async fn count(&self, function: Option<&str>) -> Result<u64>;
}

#[async_trait]
impl<T: DeadLetters + ?Sized> DeadLetters for Arc<T> {
    async fn put(&self, letter: &DeadLetter) -> Result<()> {
        (**self).put(letter).await
    }

    async fn list(&self, function: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        (**self).list(function, limit).await
    }

    async fn get(&self, function: &str, event_id: EventId) -> Result<Option<DeadLetter>> {
        (**self).get(function, event_id).await
    }

    async fn remove(&self, function: &str, event_id: EventId) -> Result<bool> {
        (**self).remove(function, event_id).await
    }

    async fn count(&self, function: Option<&str>) -> Result<u64> {
        (**self).count(function).await
    }
}

/// Dead letters kept in memory (lost when the process exits); the default of the
/// [`Dispatcher`](crate::Dispatcher).
#[derive(Clone, Debug, Default)]
pub struct InMemoryDeadLetters {
    letters: Arc<Mutex<HashMap<(String, EventId), DeadLetter>>>,
}

impl InMemoryDeadLetters {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, EventId), DeadLetter>> {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl DeadLetters for InMemoryDeadLetters {
    async fn put(&self, letter: &DeadLetter) -> Result<()> {
        self.lock()
            .insert((letter.function.clone(), letter.event.id), letter.clone());
        Ok(())
    }

    async fn list(&self, function: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out: Vec<DeadLetter> = self
            .lock()
            .values()
            .filter(|l| function.is_none_or(|f| l.function == f))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (a.failed_at, &a.function, a.event.id).cmp(&(b.failed_at, &b.function, b.event.id))
        });
        out.truncate(limit);
        Ok(out)
    }

    async fn get(&self, function: &str, event_id: EventId) -> Result<Option<DeadLetter>> {
        Ok(self.lock().get(&(function.to_owned(), event_id)).cloned())
    }

    async fn remove(&self, function: &str, event_id: EventId) -> Result<bool> {
        Ok(self
            .lock()
            .remove(&(function.to_owned(), event_id))
            .is_some())
    }

    async fn count(&self, function: Option<&str>) -> Result<u64> {
        Ok(self
            .lock()
            .keys()
            .filter(|(f, _)| function.is_none_or(|want| f == want))
            .count() as u64)
    }
}
