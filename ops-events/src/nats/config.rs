//! [`NatsBusConfig`]: every setting of a [`NatsBus`](super::NatsBus).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::subject;
use crate::{Error, Result};

/// When the stream may delete stored events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NatsRetention {
    /// Keep events until `max_age` or `max_bytes` says otherwise, whoever consumed
    /// them. New subscriptions can start from the beginning.
    #[default]
    Limits,
    /// Delete an event once every subscription existing at the time acknowledged it.
    /// Saves space; a subscription created later only sees what is still stored.
    Interest,
}

/// Where the server keeps the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NatsStorage {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In the server's memory: faster, lost when the server stops.
    Memory,
}

/// Settings of a [`NatsBus`](super::NatsBus); every field has a default and durations
/// are milliseconds in configuration files.
///
/// ```
/// use ops_events::nats::NatsBusConfig;
///
/// let config: NatsBusConfig =
///     serde_json::from_str(r#"{"stream": "ACME_EVENTS", "subject_prefix": "acme.events"}"#)
///         .unwrap();
/// assert_eq!(config.duplicate_window.as_secs(), 120);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NatsBusConfig {
    /// The JetStream stream holding the events (created when missing). Letters,
    /// digits, `-` and `_`.
    pub stream: String,
    /// Events are published to `<subject_prefix>.<event type>`; the stream captures
    /// `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// How long the server remembers event ids to drop republished events. Publishing
    /// the same event again after this window stores it twice.
    #[serde(with = "crate::serde_millis")]
    pub duplicate_window: Duration,
    /// Events older than this are deleted. `None`: kept until `max_bytes`.
    #[serde(with = "crate::serde_millis::option")]
    pub max_age: Option<Duration>,
    /// The stream's size limit in bytes; the oldest events go first. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// When stored events may be deleted.
    pub retention: NatsRetention,
    /// Disk or memory.
    pub storage: NatsStorage,
    /// Copies of the stream in a NATS cluster (1 for a single server).
    pub replicas: usize,
    /// How long connecting may take.
    #[serde(with = "crate::serde_millis")]
    pub connect_timeout: Duration,
    /// How long one JetStream request (or one publish acknowledgement) is awaited.
    #[serde(with = "crate::serde_millis")]
    pub request_timeout: Duration,
    /// How long [`publish`](crate::EventBus::publish) keeps retrying (with backoff)
    /// while the server is unreachable before it returns a retryable error.
    #[serde(with = "crate::serde_millis")]
    pub publish_timeout: Duration,
    /// Deliveries a subscription may have unacknowledged at once; fetches return
    /// fewer events when it is reached. Keep it above the dispatcher's batch size.
    pub max_ack_pending: u32,
}

impl Default for NatsBusConfig {
    fn default() -> Self {
        Self {
            stream: "OPS_EVENTS".to_owned(),
            subject_prefix: "ops.events".to_owned(),
            duplicate_window: Duration::from_secs(120),
            max_age: None,
            max_bytes: None,
            retention: NatsRetention::Limits,
            storage: NatsStorage::File,
            replicas: 1,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(30),
            max_ack_pending: 20_000,
        }
    }
}

impl NatsBusConfig {
    /// Sets the stream name.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Sets the subject prefix.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Sets the deduplication window.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets the maximum age of stored events.
    pub fn max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets the stream's size limit.
    pub fn max_bytes(mut self, max_bytes: Option<u64>) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Sets the retention policy.
    pub fn retention(mut self, retention: NatsRetention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets disk or memory storage.
    pub fn storage(mut self, storage: NatsStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the number of replicas.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how long publishing retries.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets the unacknowledged deliveries allowed per subscription.
    pub fn max_ack_pending(mut self, max: u32) -> Self {
        self.max_ack_pending = max;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        subject::validate_stream_name(&self.stream)?;
        subject::validate_prefix(&self.subject_prefix)?;
        let positive = [
            ("nats duplicate_window", self.duplicate_window),
            ("nats connect_timeout", self.connect_timeout),
            ("nats request_timeout", self.request_timeout),
        ];
        for (what, d) in positive {
            if d.is_zero() {
                return Err(Error::invalid(what, "0", "must be more than 0 ms"));
            }
        }
        if let Some(age) = self.max_age
            && age < self.duplicate_window
        {
            return Err(Error::invalid(
                "nats max_age",
                format!("{} ms", age.as_millis()),
                "must be at least the duplicate window",
            ));
        }
        if self.replicas == 0 {
            return Err(Error::invalid("nats replicas", "0", "must be at least 1"));
        }
        if self.max_ack_pending == 0 {
            return Err(Error::invalid(
                "nats max_ack_pending",
                "0",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_serde() {
        let c = NatsBusConfig::default();
        assert_eq!(c.stream, "OPS_EVENTS");
        assert_eq!(c.subject_prefix, "ops.events");
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert!(c.validate().is_ok());
        let c: NatsBusConfig = serde_json::from_str(
            r#"{"stream": "S1", "max_age": 86400000, "retention": "interest", "storage": "memory"}"#,
        )
        .unwrap();
        assert_eq!(c.max_age, Some(Duration::from_secs(86_400)));
        assert_eq!(c.retention, NatsRetention::Interest);
        assert_eq!(c.storage, NatsStorage::Memory);
        let back: NatsBusConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let d = NatsBusConfig::default();
        assert!(d.clone().stream("a.b").validate().is_err());
        assert!(d.clone().stream("").validate().is_err());
        assert!(d.clone().subject_prefix("ops.*").validate().is_err());
        assert!(d.clone().subject_prefix("ops..x").validate().is_err());
        assert!(
            d.clone()
                .max_age(Some(Duration::from_secs(1)))
                .validate()
                .is_err()
        );
        assert!(d.clone().replicas(0).validate().is_err());
        assert!(d.max_ack_pending(0).validate().is_err());
    }
}
