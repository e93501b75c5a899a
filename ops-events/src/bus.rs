//! The [`EventBus`] contract and its types.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Event;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where a new subscription starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// Every event still stored, oldest first.
    #[default]
    Beginning,
    /// Only events published after the subscription was created.
    New,
}

/// How a subscription is created (see [`EventBus::subscribe`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Where a *new* subscription starts; ignored when the subscription exists.
    pub start: StartFrom,
    /// How long a delivery may stay unacknowledged before it is delivered again
    /// (the visibility timeout). Applies to later fetches when the subscription
    /// already exists.
    #[serde(with = "crate::serde_millis")]
    pub ack_wait: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            start: StartFrom::Beginning,
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl SubscribeOptions {
    /// Sets where a new subscription starts.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets the ack wait (visibility timeout).
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }
}

/// Identifies one delivered event within a subscription; pass it to
/// [`EventBus::ack`] or [`EventBus::nack`].
///
/// The tag is the event's position in the stream, so a redelivery of the same event
/// carries the same tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryTag(pub u64);

/// One event handed to a subscriber by [`EventBus::fetch`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The event.
    pub event: Arc<Event>,
    /// How many times this event has been delivered to this subscription, this
    /// delivery included (1 on first delivery).
    pub attempt: u32,
    /// The tag to acknowledge it with.
    pub tag: DeliveryTag,
}

impl Delivery {
    /// A delivery (for backend implementations).
    pub fn new(event: Arc<Event>, attempt: u32, tag: DeliveryTag) -> Self {
        Self {
            event,
            attempt,
            tag,
        }
    }
}

/// A stream of events with durable, named, pull-based subscriptions.
///
/// Semantics every backend keeps (checked by the `testkit` conformance suite):
///
/// - [`publish`](Self::publish) stores events in order; an event whose id was already
///   published is ignored (deduplication by [`EventId`](ops_core::EventId)).
/// - [`subscribe`](Self::subscribe) creates a named subscription or resumes an
///   existing one where it stopped. Each subscription sees every event once, in
///   publish order; subscriptions are independent of each other.
/// - [`fetch`](Self::fetch) hands out up to `max` deliveries, waiting up to `wait`
///   for some to arrive. A delivery not acknowledged within the subscription's
///   `ack_wait` is delivered again with a higher `attempt` (also after the consumer
///   or the process restarts, for durable backends). Redeliveries may come out of
///   order.
/// - [`ack`](Self::ack) removes deliveries for good; [`nack`](Self::nack) makes them
///   due again after a delay (used for retry backoff).
///
/// Delivery is therefore *at least once*: handlers dedupe by event id.
///
/// The trait is object safe: `Arc<dyn EventBus>` works, and so does any `Arc<B>`.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends events to the stream, in order, skipping ids already stored.
    async fn publish(&self, events: &[Event]) -> Result<()>;

    /// Creates the subscription `name` or resumes it. Names are 1 to 128 characters
    /// of ASCII letters, digits, `.`, `-` and `_`.
    async fn subscribe(&self, name: &str, options: SubscribeOptions) -> Result<()>;

    /// Up to `max` deliveries for `subscription`: due redeliveries first, then new
    /// events in publish order. Waits up to `wait` when nothing is available and
    /// returns an empty batch if nothing came.
    ///
    /// Cancelling the returned future loses nothing: at worst the deliveries it took
    /// come back after `ack_wait`.
    async fn fetch(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Acknowledges deliveries: they will not be delivered again. Unknown or already
    /// acknowledged tags are ignored.
    async fn ack(&self, subscription: &str, tags: &[DeliveryTag]) -> Result<()>;

    /// Gives deliveries back: they become due again after `delay`.
    async fn nack(&self, subscription: &str, tags: &[DeliveryTag], delay: Duration) -> Result<()>;

    /// How many deliveries of `subscription` are waiting to be acknowledged.
    async fn pending(&self, subscription: &str) -> Result<u64>;

    /// How many events `subscription` has not acknowledged yet: those not fetched yet
    /// plus the [`pending`](Self::pending) ones. Zero means the subscriber has caught
    /// up with everything published. The provided implementation counts only the
    /// pending ones (a lower bound) for backends that cannot see further.
    async fn backlog(&self, subscription: &str) -> Result<u64> {
        self.pending(subscription).await
    }

    /// When the oldest event `subscription` has not acknowledged was recorded: how far
    /// behind it is (the outbox lag). `None` when it has caught up. The provided
    /// implementation answers `None` for backends that cannot tell.
    async fn oldest_unacked(&self, subscription: &str) -> Result<Option<DateTime<Utc>>> {
        let _ = subscription;
        Ok(None)
    }
}

#[async_trait]
impl<T: EventBus + ?Sized> EventBus for Arc<T> {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        (**self).publish(events).await
    }

    async fn subscribe(&self, name: &str, options: SubscribeOptions) -> Result<()> {
        (**self).subscribe(name, options).await
    }

    async fn fetch(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        (**self).fetch(subscription, max, wait).await
    }

    async fn ack(&self, subscription: &str, tags: &[DeliveryTag]) -> Result<()> {
        (**self).ack(subscription, tags).await
    }

    async fn nack(&self, subscription: &str, tags: &[DeliveryTag], delay: Duration) -> Result<()> {
        (**self).nack(subscription, tags, delay).await
    }

    async fn pending(&self, subscription: &str) -> Result<u64> {
        (**self).pending(subscription).await
    }
    async fn backlog(&self, subscription: &str) -> Result<u64> {
        (**self).backlog(subscription).await
    }

    async fn oldest_unacked(&self, subscription: &str) -> Result<Option<DateTime<Utc>>> {
        (**self).oldest_unacked(subscription).await
    }
}

/// Checks a subscription (or function) name: 1 to 128 ASCII letters, digits, `.`, `-`
/// or `_`. Names map to durable consumer names on other backends, hence the limits.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::invalid(what, name, "must be 1 to 128 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(Error::invalid(
            what,
            name,
            format!("character {c:?} is not allowed (use letters, digits, '.', '-', '_')"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("subscription name", "billing.meter-v1_x").is_ok());
        assert!(validate_name("subscription name", "").is_err());
        let e = validate_name("subscription name", "a b").unwrap_err();
        assert!(e.to_string().contains("' '"), "{e}");
        assert!(validate_name("subscription name", &"a".repeat(129)).is_err());
    }

    #[test]
    fn options_deserialize_with_defaults() {
        let o: SubscribeOptions = serde_json::from_str(r#"{"start":"new"}"#).unwrap();
        assert_eq!(o.start, StartFrom::New);
        assert_eq!(o.ack_wait, Duration::from_secs(30));
        let o: SubscribeOptions = serde_json::from_str(r#"{"ack_wait":1500}"#).unwrap();
        assert_eq!(o.ack_wait, Duration::from_millis(1500));
    }
}
