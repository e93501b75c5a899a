//! One worker per function: fetch a batch, call, settle the batch.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ops_core::Event;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Inner, Route};
use crate::Error;
use crate::bus::{Delivery, DeliveryTag, SubscribeOptions};
use crate::dead_letter::DeadLetter;
use crate::dispatcher::stats::Counters;
use crate::function::{Function, FunctionError};

/// What to tell the bus about one delivery.
enum Outcome {
    /// Handled, skipped or dead-lettered: done with it.
    Ack(DeliveryTag),
    /// Try again after a delay.
    Retry(DeliveryTag, Duration),
    /// Not handled because of shutdown: make it due again at once.
    Release(DeliveryTag),
}

pub(super) async fn run(inner: Arc<Inner>, route: Arc<Route>, shutdown: watch::Receiver<bool>) {
    let span = tracing::info_span!("function", function = %route.name);
    work(inner, route, shutdown).instrument(span).await;
}

async fn work(inner: Arc<Inner>, route: Arc<Route>, mut shutdown: watch::Receiver<bool>) {
    let config = &inner.config;
    let mut error_backoff = ERROR_BACKOFF_MIN;
    tracing::debug!("worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let fetched = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = inner.bus.fetch(&route.name, config.batch_size, config.fetch_wait) => r,
        };
        let batch = match fetched {
            Ok(batch) => {
                error_backoff = ERROR_BACKOFF_MIN;
                batch
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed");
                if let Error::UnknownSubscription { .. } = e {
                    // The bus lost the subscription (a fresh store?): create it again.
                    let options = SubscribeOptions::default()
                        .start(config.start)
                        .ack_wait(config.ack_wait);
                    if let Err(e) = inner.bus.subscribe(&route.name, options).await {
                        tracing::warn!(error = %e, "subscribe failed");
                    }
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(error_backoff) => {}
                }
                error_backoff = (error_backoff * 2).min(ERROR_BACKOFF_MAX);
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let stop = shutdown.clone();
        let outcomes: Vec<Outcome> = futures::stream::iter(batch)
            .map(|d| handle(&inner, &route, d, &stop))
            .buffer_unordered(config.concurrency)
            .collect()
            .await;
        settle(&inner, &route, outcomes).await;
    }
    tracing::debug!("worker stopped");
}

const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn handle(
    inner: &Inner,
    route: &Route,
    delivery: Delivery,
    stop: &watch::Receiver<bool>,
) -> Outcome {
    let tag = delivery.tag;
    if *stop.borrow() {
        return Outcome::Release(tag);
    }
    let counters = &route.counters;
    if !route.matches(&delivery.event) {
        Counters::add(&counters.skipped, 1);
        return Outcome::Ack(tag);
    }
    let err = match invoke(&*route.function, &delivery.event, inner.config.call_timeout).await {
        Ok(()) => {
            Counters::add(&counters.delivered, 1);
            return Outcome::Ack(tag);
        }
        Err(err) => err,
    };
    Counters::add(&counters.failed, 1);
    let policy = &inner.config.retry;
    let event_id = delivery.event.id;
    if err.is_retryable() && delivery.attempt < policy.max_attempts {
        let delay = policy
            .delay(delivery.attempt)
            .max(err.retry_after().unwrap_or_default().min(policy.max));
        Counters::add(&counters.retried, 1);
        tracing::debug!(
            %event_id,
            attempt = delivery.attempt,
            delay_ms = delay.as_millis() as u64,
            error = %err,
            "call failed; will retry"
        );
        return Outcome::Retry(tag, delay);
    }
    let letter = DeadLetter::new(
        route.name.clone(),
        Event::clone(&delivery.event),
        err.to_string(),
        delivery.attempt,
        !err.is_retryable(),
    );
    match inner.dead_letters.put(&letter).await {
        Ok(()) => {
            Counters::add(&counters.dead_lettered, 1);
            tracing::warn!(
                %event_id,
                event_type = %delivery.event.ty,
                attempts = delivery.attempt,
                error = %err,
                "event dead-lettered"
            );
            Outcome::Ack(tag)
        }
        Err(e) => {
            // Keep the delivery: it comes back and is dead-lettered again later.
            tracing::error!(%event_id, error = %e, "could not store dead letter; will retry");
            Outcome::Retry(tag, policy.max)
        }
    }
}

/// Calls the function with a timeout, turning a panic into a retryable failure.
pub(super) async fn invoke(
    function: &dyn Function,
    event: &Event,
    timeout: Option<Duration>,
) -> Result<(), FunctionError> {
    let call = AssertUnwindSafe(function.call(event)).catch_unwind();
    let result = match timeout {
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => {
                return Err(FunctionError::retryable(format!(
                    "call timed out after {} ms",
                    limit.as_millis()
                )));
            }
        },
        None => call.await,
    };
    result.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(FunctionError::retryable(format!(
            "function panicked: {msg}"
        )))
    })
}

/// Acknowledges and gives back a whole batch in a few bus calls.
async fn settle(inner: &Inner, route: &Route, outcomes: Vec<Outcome>) {
    let mut acks = Vec::with_capacity(outcomes.len());
    let mut later: BTreeMap<Duration, Vec<DeliveryTag>> = BTreeMap::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Ack(tag) => acks.push(tag),
            Outcome::Retry(tag, delay) => later.entry(delay).or_default().push(tag),
            Outcome::Release(tag) => later.entry(Duration::ZERO).or_default().push(tag),
        }
    }
    if !acks.is_empty() {
        for attempt in 1..=3u32 {
            match inner.bus.ack(&route.name, &acks).await {
                Ok(()) => break,
                Err(e) => {
                    // Not fatal: unacknowledged deliveries come back after ack_wait.
                    tracing::warn!(error = %e, attempt, count = acks.len(), "ack failed");
                    if !e.is_retryable() {
                        break;
                    }
                    tokio::time::sleep(ERROR_BACKOFF_MIN * attempt).await;
                }
            }
        }
    }
    for (delay, tags) in later {
        if let Err(e) = inner.bus.nack(&route.name, &tags, delay).await {
            tracing::warn!(error = %e, count = tags.len(), "nack failed; redelivery after ack_wait");
        }
    }
}
