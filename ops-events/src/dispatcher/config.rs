//! Dispatcher settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::StartFrom;
use crate::{Error, Result};

/// How failed calls are retried: exponential backoff, then dead letter.
///
/// Attempt `n` (1-based) that fails with a retryable error is tried again after
/// `initial × multiplier^(n-1)`, capped at `max`, until `max_attempts` calls were
/// made. Durations are milliseconds in configuration files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Delay after the first failure.
    #[serde(with = "crate::serde_millis")]
    pub initial: Duration,
    /// Growth factor of the delay (at least 1).
    pub multiplier: f64,
    /// Longest delay.
    #[serde(with = "crate::serde_millis")]
    pub max: Duration,
    /// Calls per event before it is dead-lettered (at least 1; 1 means no retry).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// Sets the first delay.
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets the growth factor.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the longest delay.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sets the number of calls before dead-lettering.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The delay before the attempt following failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(Error::invalid(
                "retry multiplier",
                self.multiplier.to_string(),
                "must be a finite number >= 1",
            ));
        }
        if self.max_attempts == 0 {
            return Err(Error::invalid(
                "retry max_attempts",
                "0",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Settings of a [`Dispatcher`](crate::Dispatcher); every field has a default and
/// durations are milliseconds in configuration files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DispatcherConfig {
    /// Deliveries fetched (and acknowledged) per round trip to the bus.
    pub batch_size: usize,
    /// Calls in flight at once per function. 1 keeps each function's events in
    /// publish order.
    pub concurrency: usize,
    /// How long an idle worker's fetch waits for new events (shutdown interrupts it).
    #[serde(with = "crate::serde_millis")]
    pub fetch_wait: Duration,
    /// The subscriptions' ack wait: a delivery not settled within it is delivered
    /// again. Keep it above the time a batch takes (`batch_size / concurrency ×
    /// call time`), or events are handled twice.
    #[serde(with = "crate::serde_millis")]
    pub ack_wait: Duration,
    /// A call running longer fails (retryable). `None`: no limit.
    #[serde(with = "crate::serde_millis::option")]
    pub call_timeout: Option<Duration>,
    /// Where a function's subscription starts the first time it runs.
    pub start: StartFrom,
    /// Retries and backoff.
    pub retry: RetryPolicy,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            concurrency: 1,
            fetch_wait: Duration::from_secs(5),
            ack_wait: Duration::from_secs(120),
            call_timeout: Some(Duration::from_secs(30)),
            start: StartFrom::Beginning,
            retry: RetryPolicy::default(),
        }
    }
}

impl DispatcherConfig {
    /// Sets the batch size.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets the calls in flight per function.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets the idle fetch wait.
    pub fn fetch_wait(mut self, fetch_wait: Duration) -> Self {
        self.fetch_wait = fetch_wait;
        self
    }

    /// Sets the ack wait of the subscriptions.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the call timeout.
    pub fn call_timeout(mut self, call_timeout: Option<Duration>) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// Sets where new subscriptions start.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid(
                "dispatcher batch_size",
                "0",
                "must be at least 1",
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::invalid(
                "dispatcher concurrency",
                "0",
                "must be at least 1",
            ));
        }
        self.retry.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default()
            .initial(Duration::from_millis(100))
            .multiplier(2.0)
            .max(Duration::from_millis(350));
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(350));
        assert_eq!(p.delay(u32::MAX), Duration::from_millis(350));
        assert!(p.validate().is_ok());
        assert!(p.clone().multiplier(f64::NAN).validate().is_err());
        assert!(p.clone().multiplier(0.5).validate().is_err());
        assert!(p.max_attempts(0).validate().is_err());
    }

    #[test]
    fn config_from_json() {
        let c: DispatcherConfig = serde_json::from_str(
            r#"{"batch_size": 64, "call_timeout": null, "retry": {"max_attempts": 3, "initial": 10}}"#,
        )
        .unwrap();
        assert_eq!(c.batch_size, 64);
        assert_eq!(c.call_timeout, None);
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.initial, Duration::from_millis(10));
        assert_eq!(c.retry.multiplier, 2.0);
        assert!(
            DispatcherConfig::default()
                .concurrency(0)
                .validate()
                .is_err()
        );
    }
}
