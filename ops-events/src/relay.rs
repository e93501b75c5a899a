//! [`Relay`]: moves events from one bus to another, durably.
//!
//! The usual pair is the SQL outbox (the state change and its events are written in
//! one transaction) as the source and `nats::NatsBus` (feature `nats`) as the target, so
//! that many machines can consume the events. The relay keeps a durable subscription
//! on the source and loops: fetch a batch, publish it to the target (awaiting the
//! target's acknowledgements), then acknowledge it on the source. Nothing is lost:
//! if the target fails the batch stays unacknowledged and is published again, in
//! order, once the target is back; events published twice are dropped by the target's
//! deduplication by event id (NATS: `Nats-Msg-Id`, within its duplicate window).
//!
//! ```
//! use std::sync::Arc;
//!
//! use ops_core::Event;
//! use ops_events::EventBus;
//! use ops_events::memory::InMemoryBus;
//! use ops_events::relay::Relay;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ops_events::Result<()> {
//! let outbox = InMemoryBus::new();
//! let target = InMemoryBus::new();
//! let running = Relay::new(Arc::new(outbox.clone()), "relay", Arc::new(target.clone()))
//!     .start()
//!     .await?;
//! outbox.publish(&[Event::builder("ops.task.succeeded", "ops://local").build()]).await?;
//! while running.stats().relayed < 1 {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! let stats = running.shutdown().await;
//! assert_eq!((stats.relayed, target.len()), (1, 1));
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ops_core::Event;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::bus::{DeliveryTag, EventBus, StartFrom, SubscribeOptions, validate_name};
use crate::{Error, Result};

/// Settings of a [`Relay`]; durations are milliseconds in configuration files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Events fetched from the source and published to the target at once.
    pub batch_size: usize,
    /// How long an idle fetch on the source waits (shutdown interrupts it).
    #[serde(with = "crate::serde_millis")]
    pub fetch_wait: Duration,
    /// The source subscription's ack wait. Keep it above the time a batch takes to
    /// publish, or the batch is relayed twice (harmless within the target's
    /// duplicate window, wasted work otherwise).
    #[serde(with = "crate::serde_millis")]
    pub ack_wait: Duration,
    /// Where the source subscription starts the first time the relay runs.
    pub start: StartFrom,
    /// First delay after the target failed; doubles on each failure in a row.
    #[serde(with = "crate::serde_millis")]
    pub retry_initial: Duration,
    /// Longest delay between attempts.
    #[serde(with = "crate::serde_millis")]
    pub retry_max: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            fetch_wait: Duration::from_secs(1),
            ack_wait: Duration::from_secs(120),
            start: StartFrom::Beginning,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    /// Sets the batch size.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets the idle fetch wait.
    pub fn fetch_wait(mut self, fetch_wait: Duration) -> Self {
        self.fetch_wait = fetch_wait;
        self
    }

    /// Sets the source subscription's ack wait.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets where the source subscription starts.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets the first and the longest delay between attempts.
    pub fn retry(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid(
                "relay batch_size",
                "0",
                "must be at least 1",
            ));
        }
        if self.retry_max < self.retry_initial {
            return Err(Error::invalid(
                "relay retry_max",
                format!("{} ms", self.retry_max.as_millis()),
                "must be at least retry_initial",
            ));
        }
        Ok(())
    }
}

/// Counters of a running relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Events published to the target and acknowledged on the source.
    pub relayed: u64,
    /// Batches relayed.
    pub batches: u64,
    /// Failed attempts to publish a batch to the target (each retried).
    pub publish_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    relayed: AtomicU64,
    batches: AtomicU64,
    publish_failures: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RelayStats {
        RelayStats {
            relayed: self.relayed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
        }
    }
}

/// Moves events from a subscription on `source` to `target`; see the [module
/// docs](self).
pub struct Relay {
    source: Arc<dyn EventBus>,
    subscription: String,
    target: Arc<dyn EventBus>,
    config: RelayConfig,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("subscription", &self.subscription)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay reading the subscription `subscription` of `source` (created when the
    /// relay starts) and publishing to `target`.
    pub fn new(source: Arc<dyn EventBus>, subscription: &str, target: Arc<dyn EventBus>) -> Self {
        Self {
            source,
            subscription: subscription.to_owned(),
            target,
            config: RelayConfig::default(),
        }
    }

    /// Replaces the settings.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Creates (or resumes) the source subscription and starts relaying in a Tokio
    /// task.
    pub async fn start(self) -> Result<RunningRelay> {
        self.config.validate()?;
        validate_name("relay subscription", &self.subscription)?;
        self.source
            .subscribe(&self.subscription, self.subscribe_options())
            .await?;
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("relay", subscription = %self.subscription);
        let task = tokio::spawn(self.run(counters.clone(), stopped).instrument(span));
        Ok(RunningRelay {
            stop,
            task,
            counters,
        })
    }

    fn subscribe_options(&self) -> SubscribeOptions {
        SubscribeOptions::default()
            .start(self.config.start)
            .ack_wait(self.config.ack_wait)
    }

    async fn run(self, counters: Arc<Counters>, mut stop: watch::Receiver<bool>) {
        let config = &self.config;
        let sub = self.subscription.as_str();
        let mut error_backoff = config.retry_initial;
        tracing::debug!("relay started");
        loop {
            let fetched = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                r = self.source.fetch(sub, config.batch_size, config.fetch_wait) => r,
            };
            let batch = match fetched {
                Ok(batch) => {
                    error_backoff = config.retry_initial;
                    batch
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay: fetch from source failed");
                    if let Error::UnknownSubscription { .. } = e
                        && let Err(e) = self.source.subscribe(sub, self.subscribe_options()).await
                    {
                        tracing::warn!(error = %e, "relay: subscribe failed");
                    }
                    if pause(&mut stop, error_backoff).await {
                        break;
                    }
                    error_backoff = (error_backoff * 2).min(config.retry_max);
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            let tags: Vec<DeliveryTag> = batch.iter().map(|d| d.tag).collect();
            let events: Vec<Event> = batch.iter().map(|d| Event::clone(&d.event)).collect();
            drop(batch);
            match self.publish(&events, &counters, &mut stop).await {
                Published::Yes => {}
                Published::Stopping => {
                    // Hand the batch back at once for whoever runs next.
                    self.give_back(&tags, Duration::ZERO).await;
                    break;
                }
                Published::Refused => {
                    self.give_back(&tags, config.retry_max).await;
                    continue;
                }
            }
            self.ack(&tags).await;
            counters
                .relayed
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            counters.batches.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(count = events.len(), "relay: batch relayed");
        }
        tracing::debug!("relay stopped");
    }

    /// Publishes the batch to the target, retrying (in order, before anything newer)
    /// while the failure is retryable.
    async fn publish(
        &self,
        events: &[Event],
        counters: &Counters,
        stop: &mut watch::Receiver<bool>,
    ) -> Published {
        let mut backoff = self.config.retry_initial;
        loop {
            let result = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Published::Stopping,
                r = self.target.publish(events) => r,
            };
            let e = match result {
                Ok(()) => return Published::Yes,
                Err(e) => e,
            };
            counters.publish_failures.fetch_add(1, Ordering::Relaxed);
            if !e.is_retryable() {
                tracing::error!(
                    error = %e,
                    count = events.len(),
                    "relay: target refused the batch; it comes back later"
                );
                return Published::Refused;
            }
            tracing::warn!(
                error = %e,
                count = events.len(),
                retry_in_ms = backoff.as_millis() as u64,
                "relay: publishing to the target failed; retrying"
            );
            if pause(stop, backoff).await {
                return Published::Stopping;
            }
            backoff = (backoff * 2).min(self.config.retry_max);
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) {
        for attempt in 1..=3u32 {
            match self.source.ack(&self.subscription, tags).await {
                Ok(()) => return,
                Err(e) => {
                    // Not fatal: the batch comes back after ack_wait and the target
                    // drops the duplicates.
                    tracing::warn!(error = %e, attempt, count = tags.len(), "relay: source ack failed");
                    if !e.is_retryable() {
                        return;
                    }
                    tokio::time::sleep(self.config.retry_initial * attempt).await;
                }
            }
        }
    }

    async fn give_back(&self, tags: &[DeliveryTag], delay: Duration) {
        if let Err(e) = self.source.nack(&self.subscription, tags, delay).await {
            tracing::warn!(error = %e, count = tags.len(), "relay: nack failed; redelivery after ack_wait");
        }
    }
}

enum Published {
    Yes,
    /// Shutdown was asked for before the target took the batch.
    Stopping,
    /// The target refused the batch for good (not retryable).
    Refused,
}

/// Sleeps for `delay`; true when shutdown was asked for meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// A started [`Relay`]; stop it with [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl RunningRelay {
    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Stops relaying: a batch not yet published is given back to the source at once;
    /// one already published is acknowledged first. Returns the final counters.
    pub async fn shutdown(self) -> RelayStats {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "relay task failed");
        }
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;

    use super::*;
    use crate::Delivery;
    use crate::memory::InMemoryBus;

    /// A target that fails (retryably) while `down` is set.
    struct Flaky {
        bus: InMemoryBus,
        down: AtomicBool,
    }

    #[async_trait]
    impl EventBus for Flaky {
        async fn publish(&self, events: &[Event]) -> Result<()> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Io {
                    path: "flaky".into(),
                    source: std::io::Error::other("target down"),
                });
            }
            self.bus.publish(events).await
        }
        async fn subscribe(&self, name: &str, options: SubscribeOptions) -> Result<()> {
            self.bus.subscribe(name, options).await
        }
        async fn fetch(&self, s: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
            self.bus.fetch(s, max, wait).await
        }
        async fn ack(&self, s: &str, tags: &[DeliveryTag]) -> Result<()> {
            self.bus.ack(s, tags).await
        }
        async fn nack(&self, s: &str, tags: &[DeliveryTag], delay: Duration) -> Result<()> {
            self.bus.nack(s, tags, delay).await
        }
        async fn pending(&self, s: &str) -> Result<u64> {
            self.bus.pending(s).await
        }
    }

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::builder("ops.test.relay", "ops://test")
                    .subject(i.to_string())
                    .build()
            })
            .collect()
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn config() -> RelayConfig {
        RelayConfig::default()
            .batch_size(7)
            .fetch_wait(Duration::from_millis(50))
            .retry(Duration::from_millis(5), Duration::from_millis(20))
    }

    #[tokio::test]
    async fn relays_in_order_and_acks_the_source() {
        let source = InMemoryBus::new();
        let target = InMemoryBus::new();
        target
            .subscribe("all", SubscribeOptions::default())
            .await
            .unwrap();
        let evs = events(50);
        source.publish(&evs[..20]).await.unwrap();
        let running = Relay::new(Arc::new(source.clone()), "relay", Arc::new(target.clone()))
            .config(config())
            .start()
            .await
            .unwrap();
        source.publish(&evs[20..]).await.unwrap();
        until("relayed", || running.stats().relayed == 50).await;
        let stats = running.shutdown().await;
        assert_eq!(stats.relayed, 50);
        assert_eq!(stats.publish_failures, 0);
        assert_eq!(source.pending("relay").await.unwrap(), 0);
        let got = target
            .fetch("all", 100, Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .map(|d| d.event.id)
            .collect::<Vec<_>>();
        assert_eq!(got, evs.iter().map(|e| e.id).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn target_outage_loses_nothing() {
        let source = InMemoryBus::new();
        let target = Arc::new(Flaky {
            bus: InMemoryBus::new(),
            down: AtomicBool::new(false),
        });
        let evs = events(40);
        let running = Relay::new(Arc::new(source.clone()), "relay", target.clone())
            .config(config())
            .start()
            .await
            .unwrap();
        source.publish(&evs[..10]).await.unwrap();
        until("first part", || running.stats().relayed == 10).await;
        target.down.store(true, Ordering::SeqCst);
        source.publish(&evs[10..]).await.unwrap();
        until("failures seen", || running.stats().publish_failures >= 3).await;
        assert_eq!(running.stats().relayed, 10);
        target.down.store(false, Ordering::SeqCst);
        until("all relayed", || running.stats().relayed == 40).await;
        let stats = running.shutdown().await;
        assert!(stats.publish_failures >= 3);
        assert_eq!(target.bus.len(), 40);
        assert_eq!(source.pending("relay").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn shutdown_during_outage_gives_the_batch_back() {
        let source = InMemoryBus::new();
        let target = Arc::new(Flaky {
            bus: InMemoryBus::new(),
            down: AtomicBool::new(true),
        });
        source.publish(&events(5)).await.unwrap();
        let running = Relay::new(Arc::new(source.clone()), "relay", target.clone())
            .config(config())
            .start()
            .await
            .unwrap();
        until("failing", || running.stats().publish_failures >= 1).await;
        let stats = running.shutdown().await;
        assert_eq!(stats.relayed, 0);
        // Given back: due again at once, for the next relay.
        let again = source
            .fetch("relay", 10, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(again.len(), 5);
    }

    #[tokio::test]
    async fn bad_settings_fail_at_start() {
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
        let r = Relay::new(bus.clone(), "no spaces", bus.clone())
            .start()
            .await;
        assert!(matches!(r, Err(Error::Invalid { .. })));
        let r = Relay::new(bus.clone(), "ok", bus)
            .config(RelayConfig::default().batch_size(0))
            .start()
            .await;
        assert!(matches!(r, Err(Error::Invalid { .. })));
    }
}
