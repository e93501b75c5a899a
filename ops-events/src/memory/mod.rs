//! The in-process bus: [`InMemoryBus`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Event, EventId};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bus::{Delivery, DeliveryTag, EventBus, StartFrom, SubscribeOptions, validate_name};
use crate::{Error, Result};

/// An event bus that lives in this process: zero setup, very fast, not durable.
///
/// It keeps every published event in memory for the life of the bus (so that a new
/// subscription can start from the beginning) and forgets everything when dropped.
/// Use it for tests, development and single-process tools; use
/// [`SqliteOutbox`](crate::sqlite::SqliteOutbox) when events must survive a restart.
///
/// Cloning is cheap and clones share the same stream.
#[derive(Clone, Debug, Default)]
pub struct InMemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken on publish and nack so that waiting fetchers look again.
    notify: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The stream; the event at index `i` has sequence `i + 1`.
    log: Vec<Arc<Event>>,
    ids: HashSet<EventId>,
    subs: HashMap<String, Subscription>,
}

#[derive(Debug)]
struct Subscription {
    /// Every sequence up to and including `cursor` has been delivered at least once.
    cursor: u64,
    ack_wait: Duration,
    pending: HashMap<u64, Pending>,
    /// `(deliver_after, seq)` for every pending delivery, earliest first.
    due: BTreeSet<(Instant, u64)>,
}

#[derive(Debug)]
struct Pending {
    attempts: u32,
    deliver_after: Instant,
}

impl InMemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many distinct events were published.
    pub fn len(&self) -> usize {
        self.lock().log.len()
    }

    /// Whether nothing was published yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way
        // that loses events (each update is a few infallible steps), so keep going.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes up to `max` deliveries, or returns the time the next pending delivery
    /// becomes due (if any).
    fn take(&self, name: &str, max: usize) -> Result<(Vec<Delivery>, Option<Instant>)> {
        let mut guard = self.lock();
        let State { log, subs, .. } = &mut *guard;
        let sub = subs
            .get_mut(name)
            .ok_or_else(|| Error::UnknownSubscription {
                name: name.to_owned(),
            })?;
        let now = Instant::now();
        let next_deadline = now + sub.ack_wait;
        let mut out = Vec::new();

        // Due redeliveries first.
        let mut redeliver = Vec::new();
        while redeliver.len() < max {
            match sub.due.first() {
                Some(&(at, seq)) if at <= now => {
                    sub.due.pop_first();
                    redeliver.push(seq);
                }
                _ => break,
            }
        }
        for seq in redeliver {
            let (Some(p), Some(event)) = (sub.pending.get_mut(&seq), log.get(index(seq))) else {
                continue;
            };
            p.attempts = p.attempts.saturating_add(1);
            p.deliver_after = next_deadline;
            sub.due.insert((next_deadline, seq));
            out.push(Delivery::new(event.clone(), p.attempts, DeliveryTag(seq)));
        }

        // Then new events, in order.
        let len = log.len() as u64;
        while out.len() < max && sub.cursor < len {
            let seq = sub.cursor + 1;
            sub.cursor = seq;
            sub.pending.insert(
                seq,
                Pending {
                    attempts: 1,
                    deliver_after: next_deadline,
                },
            );
            sub.due.insert((next_deadline, seq));
            out.push(Delivery::new(log[index(seq)].clone(), 1, DeliveryTag(seq)));
        }
        let next_due = sub.due.first().map(|&(at, _)| at);
        Ok((out, next_due))
    }

    fn with_sub<T>(&self, name: &str, f: impl FnOnce(&mut Subscription) -> T) -> Result<T> {
        let mut guard = self.lock();
        let sub = guard
            .subs
            .get_mut(name)
            .ok_or_else(|| Error::UnknownSubscription {
                name: name.to_owned(),
            })?;
        Ok(f(sub))
    }
}

fn index(seq: u64) -> usize {
    usize::try_from(seq.saturating_sub(1)).unwrap_or(usize::MAX)
}

#[async_trait]
impl EventBus for InMemoryBus {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        {
            let mut guard = self.lock();
            let State { log, ids, .. } = &mut *guard;
            log.reserve(events.len());
            for event in events {
                if ids.insert(event.id) {
                    log.push(Arc::new(event.clone()));
                } else {
                    tracing::debug!(event_id = %event.id, "duplicate event id ignored");
                }
            }
        }
        self.shared.notify.notify_waiters();
        Ok(())
    }

    async fn subscribe(&self, name: &str, options: SubscribeOptions) -> Result<()> {
        validate_name("subscription name", name)?;
        let mut guard = self.lock();
        let len = guard.log.len() as u64;
        let sub = guard
            .subs
            .entry(name.to_owned())
            .or_insert_with(|| Subscription {
                cursor: match options.start {
                    StartFrom::Beginning => 0,
                    StartFrom::New => len,
                },
                ack_wait: options.ack_wait,
                pending: HashMap::new(),
                due: BTreeSet::new(),
            });
        sub.ack_wait = options.ack_wait;
        Ok(())
    }

    async fn fetch(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so a publish in between is not missed.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (batch, next_due) = self.take(subscription, max)?;
            if !batch.is_empty() || max == 0 {
                return Ok(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            let until = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, subscription: &str, tags: &[DeliveryTag]) -> Result<()> {
        self.with_sub(subscription, |sub| {
            for tag in tags {
                if let Some(p) = sub.pending.remove(&tag.0) {
                    sub.due.remove(&(p.deliver_after, tag.0));
                }
            }
        })
    }

    async fn nack(&self, subscription: &str, tags: &[DeliveryTag], delay: Duration) -> Result<()> {
        let at = Instant::now() + delay;
        self.with_sub(subscription, |sub| {
            for tag in tags {
                if let Some(p) = sub.pending.get_mut(&tag.0) {
                    sub.due.remove(&(p.deliver_after, tag.0));
                    p.deliver_after = at;
                    sub.due.insert((at, tag.0));
                }
            }
        })?;
        self.shared.notify.notify_waiters();
        Ok(())
    }

    async fn pending(&self, subscription: &str) -> Result<u64> {
        self.with_sub(subscription, |sub| sub.pending.len() as u64)
    }

    async fn backlog(&self, subscription: &str) -> Result<u64> {
        let state = self.lock();
        let published = state.log.len() as u64;
        match state.subs.get(subscription) {
            Some(sub) => Ok(published.saturating_sub(sub.cursor) + sub.pending.len() as u64),
            None => Err(Error::UnknownSubscription {
                name: subscription.to_owned(),
            }),
        }
    }

    async fn oldest_unacked(&self, subscription: &str) -> Result<Option<DateTime<Utc>>> {
        let state = self.lock();
        let Some(sub) = state.subs.get(subscription) else {
            return Err(Error::UnknownSubscription {
                name: subscription.to_owned(),
            });
        };
        let unread = (sub.cursor < state.log.len() as u64).then_some(sub.cursor + 1);
        let oldest = sub.pending.keys().copied().chain(unread).min();
        // Sequence `s` is at index `s - 1`.
        Ok(oldest
            .and_then(|seq| state.log.get(seq as usize - 1))
            .map(|event| event.time))
    }
}
