//! [`Dedupe`]: remember recently handled event ids.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use ops_core::EventId;

/// Remembers the last `capacity` event ids a handler saw, so that a redelivered event
/// can be skipped.
///
/// Delivery is at least once: after a crash, a timeout or a lost acknowledgement the
/// same event comes again. A handler whose effect is not naturally idempotent checks
/// the event id first:
///
/// ```
/// use ops_core::Event;
/// use ops_events::Dedupe;
///
/// let seen = Dedupe::new(10_000);
/// let event = Event::builder("ops.task.succeeded", "ops://local").build();
/// assert!(seen.first_time(event.id)); // handle it
/// assert!(!seen.first_time(event.id)); // a redelivery: skip
/// ```
///
/// `Dedupe` lives in memory, so it covers redeliveries within one process. For
/// exactly-once effects across restarts, record the event id in the same database
/// transaction as the effect (for example a `processed_events(event_id PRIMARY KEY)`
/// table, inserted with `ON CONFLICT DO NOTHING`, whose row count tells whether the
/// event is new).
///
/// If the handler fails, call [`forget`](Self::forget) so that the retry is not
/// skipped.
#[derive(Debug)]
pub struct Dedupe {
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl Dedupe {
    /// Remembers up to `capacity` ids (at least 1), forgetting the oldest first.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Seen::default()),
        }
    }

    /// Records `id`; returns `true` the first time it is seen (within the window).
    pub fn first_time(&self, id: EventId) -> bool {
        let mut seen = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.ids.insert(id) {
            return false;
        }
        seen.order.push_back(id);
        while seen.order.len() > self.capacity {
            if let Some(old) = seen.order.pop_front() {
                seen.ids.remove(&old);
            }
        }
        true
    }

    /// Forgets `id`, so that the next delivery is handled again.
    pub fn forget(&self, id: EventId) {
        let mut seen = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.ids.remove(&id) {
            seen.order.retain(|x| *x != id);
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let d = Dedupe::new(2);
        let (a, b, c) = (EventId::new(), EventId::new(), EventId::new());
        assert!(d.first_time(a));
        assert!(d.first_time(b));
        assert!(!d.first_time(a));
        assert!(d.first_time(c));
        assert_eq!(d.len(), 2);
        assert!(d.first_time(a), "a was evicted");
        d.forget(a);
        assert!(d.first_time(a));
    }
}
