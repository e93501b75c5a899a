//! The NATS JetStream bus: [`NatsBus`] (feature `nats`).
//!
//! Events are stored in one JetStream stream (default `OPS_EVENTS`), each as a message
//! on `<subject prefix>.<event type>` (default prefix `ops.events`) whose payload is
//! the CloudEvent in structured JSON and whose `Nats-Msg-Id` header is the event id:
//! the server drops an event published again within the duplicate window (2 minutes by
//! default), so retrying a publish, or relaying the same outbox row twice, stores it
//! once.
//!
//! Each subscription is a durable pull consumer with explicit acks, named after the
//! subscription (`.` is written `_-` and `_` is written `__`, as NATS names may not
//! contain dots). The delivery tag is the event's stream sequence. Acknowledgements
//! and nacks are sent without waiting, except the last of each call, which waits
//! for the server's answer: the server handles one connection's acks in order, so
//! when [`ack`](crate::EventBus::ack) returns every ack of the call was applied.
//!
//! [`publish`](crate::EventBus::publish) sends a whole batch before awaiting the
//! server's acknowledgements; while the server is unreachable it retries what was not
//! acknowledged, with backoff, up to [`NatsBusConfig::publish_timeout`], then returns
//! [`Error::NotAcknowledged`] (retryable). It never reports success for an event the
//! server did not acknowledge.
//!
//! Works with nats-server 2.9 and later (JetStream enabled: `nats-server -js`).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use ops_core::Event;
//! use ops_events::nats::{NatsBus, NatsBusConfig};
//! use ops_events::{EventBus, SubscribeOptions};
//!
//! # async fn demo() -> ops_events::Result<()> {
//! let config = NatsBusConfig::default()
//!     .stream("ACME_EVENTS")
//!     .subject_prefix("acme.events")
//!     .max_age(Some(Duration::from_secs(7 * 24 * 3600)));
//! let bus = NatsBus::connect_with("nats://127.0.0.1:4222", config).await?;
//!
//! bus.subscribe("billing", SubscribeOptions::default()).await?;
//! bus.publish(&[Event::builder("ops.task.succeeded", "ops://acme").subject("t1").build()])
//!     .await?;
//! for delivery in bus.fetch("billing", 100, Duration::from_secs(1)).await? {
//!     println!("{} (attempt {})", delivery.event.ty, delivery.attempt);
//!     bus.ack("billing", &[delivery.tag]).await?;
//! }
//! # Ok(()) }
//! ```

mod config;
mod subject;
mod url;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::PublishMessage, response::Response, stream};
use async_nats::{StatusCode, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ops_core::Event;
use tokio::time::Instant;

pub use config::{NatsBusConfig, NatsRetention, NatsStorage};

use crate::bus::{Delivery, DeliveryTag, EventBus, StartFrom, SubscribeOptions, validate_name};
use crate::{Error, Result};

const BACKEND: &str = "nats";
/// Publishes awaiting their acknowledgement at once, per publish call.
const PUBLISH_WINDOW: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// An [`EventBus`] on a NATS JetStream stream: durable, shared by any number of
/// processes and machines.
///
/// Cloning is cheap; clones share one connection, which reconnects by itself after
/// the server restarts.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsBusConfig,
    /// The server URL with secrets hidden, for messages.
    url: String,
    subs: Mutex<HashMap<String, Arc<Sub>>>,
}

/// What this process knows about one subscription.
struct Sub {
    consumer: String,
    /// Where pull requests go.
    next_subject: String,
    inflight: Mutex<Inflight>,
}

/// Deliveries handed out by this process and not settled yet: tag → ack subject.
struct Inflight {
    ack_wait: Duration,
    replies: HashMap<u64, (Subject, Instant)>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.inner.url)
            .field("stream", &self.inner.config.stream)
            .field("subject_prefix", &self.inner.config.subject_prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a few infallible map operations.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn broker(operation: &'static str, message: impl std::fmt::Display, retryable: bool) -> Error {
    Error::Broker {
        backend: BACKEND,
        operation,
        message: message.to_string(),
        retryable,
    }
}

/// A JetStream API error: retryable when the server says it is unavailable or slow.
fn api_error(operation: &'static str, error: &jetstream::Error) -> Error {
    let code = error.code();
    broker(operation, error, code >= 500 || code == 408)
}

impl NatsBus {
    /// Connects with the default [`NatsBusConfig`] and creates the stream if missing.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, NatsBusConfig::default()).await
    }

    /// Connects to `url` (`nats://[user:password@]host:port`, several separated by
    /// commas) and creates the stream if missing.
    ///
    /// Fails with [`Error::Invalid`] for a malformed URL or setting, with
    /// [`Error::Connect`] (naming the URL, password hidden) when no server answers,
    /// and with [`Error::Broker`] when the server has no JetStream or the stream
    /// exists with subjects that do not cover the prefix.
    pub async fn connect_with(url: &str, config: NatsBusConfig) -> Result<Self> {
        config.validate()?;
        url::validate(url)?;
        let shown = url::redact(url);
        let servers: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = async_nats::ConnectOptions::new()
            .name("ops-events")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!("nats: disconnected"),
                    async_nats::Event::Connected => tracing::info!("nats: connected"),
                    other => tracing::debug!(event = %other, "nats: connection event"),
                }
            })
            .connect(servers)
            .await
            .map_err(|e| Error::Connect {
                url: shown.clone(),
                message: e.to_string(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let bus = Self {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                url: shown,
                subs: Mutex::new(HashMap::new()),
            }),
        };
        bus.ensure_stream().await?;
        tracing::debug!(url = %bus.inner.url, stream = %bus.inner.config.stream, "nats bus ready");
        Ok(bus)
    }

    /// The settings in use.
    pub fn config(&self) -> &NatsBusConfig {
        &self.inner.config
    }

    fn stream_config(&self) -> stream::Config {
        let c = &self.inner.config;
        stream::Config {
            name: c.stream.clone(),
            subjects: vec![format!("{}.>", c.subject_prefix)],
            duplicate_window: c.duplicate_window,
            max_age: c.max_age.unwrap_or(Duration::ZERO),
            max_bytes: c
                .max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            retention: match c.retention {
                NatsRetention::Limits => stream::RetentionPolicy::Limits,
                NatsRetention::Interest => stream::RetentionPolicy::Interest,
            },
            storage: match c.storage {
                NatsStorage::File => stream::StorageType::File,
                NatsStorage::Memory => stream::StorageType::Memory,
            },
            num_replicas: c.replicas,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// Creates the stream unless it exists; checks that it captures our subjects.
    async fn ensure_stream(&self) -> Result<()> {
        let name = &self.inner.config.stream;
        let info: Response<stream::Info> = self
            .inner
            .js
            .request(format!("STREAM.INFO.{name}"), &serde_json::json!({}))
            .await
            .map_err(|e| broker("stream info", e, true))?;
        let info = match info {
            Response::Ok(info) => info,
            Response::Err { error }
                if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                let created: Response<stream::Info> = self
                    .inner
                    .js
                    .request(format!("STREAM.CREATE.{name}"), &self.stream_config())
                    .await
                    .map_err(|e| broker("create stream", e, true))?;
                match created {
                    Response::Ok(info) => {
                        tracing::info!(stream = %name, "nats: stream created");
                        info
                    }
                    // Created meanwhile by another process: use it.
                    Response::Err { error }
                        if error.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST =>
                    {
                        return Box::pin(self.ensure_stream()).await;
                    }
                    Response::Err { error } => return Err(api_error("create stream", &error)),
                }
            }
            Response::Err { error } => return Err(api_error("stream info", &error)),
        };
        let want = format!("{}.>", self.inner.config.subject_prefix);
        let covered = info.config.subjects.iter().any(|s| {
            s == &want
                || s == ">"
                || s.strip_suffix(".>")
                    .is_some_and(|p| want.starts_with(&format!("{p}.")))
        });
        if !covered {
            return Err(broker(
                "stream check",
                format!(
                    "stream {name} exists but captures {:?}, not {want:?}; use another stream \
                     name or subject prefix",
                    info.config.subjects
                ),
                false,
            ));
        }
        Ok(())
    }

    async fn consumer_info(&self, consumer: &str) -> Result<Option<consumer::Info>> {
        let stream = &self.inner.config.stream;
        let response: Response<consumer::Info> = self
            .inner
            .js
            .request(
                format!("CONSUMER.INFO.{stream}.{consumer}"),
                &serde_json::json!({}),
            )
            .await
            .map_err(|e| broker("consumer info", e, true))?;
        match response {
            Response::Ok(info) => Ok(Some(info)),
            Response::Err { error }
                if matches!(
                    error.error_code(),
                    jetstream::ErrorCode::CONSUMER_NOT_FOUND
                        | jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Ok(None)
            }
            Response::Err { error } => Err(api_error("consumer info", &error)),
        }
    }

    /// Creates or updates a durable consumer (the 2.9 `CONSUMER.CREATE` API, no
    /// `action`, no 2.10 fields).
    async fn put_consumer(&self, config: &consumer::Config) -> Result<consumer::Info> {
        let stream = &self.inner.config.stream;
        let name = config.durable_name.as_deref().unwrap_or_default();
        let response: Response<consumer::Info> = self
            .inner
            .js
            .request(
                format!("CONSUMER.CREATE.{stream}.{name}"),
                &serde_json::json!({ "stream_name": stream, "config": config }),
            )
            .await
            .map_err(|e| broker("create consumer", e, true))?;
        match response {
            Response::Ok(info) => Ok(info),
            Response::Err { error } => Err(api_error("create consumer", &error)),
        }
    }

    fn remember(&self, name: &str, consumer: String, ack_wait: Duration) -> Arc<Sub> {
        let mut subs = lock(&self.inner.subs);
        if let Some(sub) = subs.get(name) {
            lock(&sub.inflight).ack_wait = ack_wait;
            return sub.clone();
        }
        let sub = Arc::new(Sub {
            next_subject: format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{consumer}",
                self.inner.config.stream
            ),
            consumer,
            inflight: Mutex::new(Inflight {
                ack_wait,
                replies: HashMap::new(),
            }),
        });
        subs.insert(name.to_owned(), sub.clone());
        sub
    }

    fn forget(&self, name: &str) {
        lock(&self.inner.subs).remove(name);
    }

    /// The subscription, known to this process or found on the server (created by
    /// another process).
    async fn sub(&self, name: &str) -> Result<Arc<Sub>> {
        if let Some(sub) = lock(&self.inner.subs).get(name) {
            return Ok(sub.clone());
        }
        let unknown = || Error::UnknownSubscription {
            name: name.to_owned(),
        };
        if validate_name("subscription name", name).is_err() {
            return Err(unknown());
        }
        let consumer = subject::consumer_name(name);
        match self.consumer_info(&consumer).await? {
            Some(info) => Ok(self.remember(name, consumer, info.config.ack_wait)),
            None => Err(unknown()),
        }
    }

    /// One pull request: `no_wait` when `expires` is `None` (what is there now),
    /// otherwise waits up to `expires` until `batch` messages came.
    async fn pull(
        &self,
        name: &str,
        sub: &Sub,
        batch: usize,
        expires: Option<Duration>,
    ) -> Result<Vec<async_nats::Message>> {
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| broker("fetch", e, true))?;
        let request = match expires {
            Some(expires) => serde_json::json!({
                "batch": batch,
                "expires": u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
            }),
            None => serde_json::json!({ "batch": batch, "no_wait": true }),
        };
        client
            .publish_with_reply(
                sub.next_subject.clone(),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| broker("fetch", e, true))?;
        // The server ends the request itself (404 or 408); this is for a lost answer.
        let deadline =
            Instant::now() + expires.unwrap_or_default() + self.inner.config.request_timeout;
        let mut messages = Vec::new();
        while messages.len() < batch {
            let message = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) if messages.is_empty() && expires.is_none() => {
                    return Err(broker(
                        "fetch",
                        "no answer to the pull request (server unreachable?)",
                        true,
                    ));
                }
                Err(_) => break,
            };
            match message.status {
                None | Some(StatusCode::OK) => messages.push(message),
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // No messages (no_wait) / request expired.
                Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => break,
                Some(StatusCode::REQUEST_TERMINATED) => {
                    let why = message.description.unwrap_or_default();
                    if why.to_ascii_lowercase().contains("deleted") {
                        self.forget(name);
                        return Err(Error::UnknownSubscription {
                            name: name.to_owned(),
                        });
                    }
                    // Max ack pending, max waiting...: hand out what came.
                    tracing::debug!(subscription = name, reason = %why, "nats: pull ended early");
                    break;
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    // The consumer is gone, or JetStream is still starting.
                    if self.consumer_info(&sub.consumer).await?.is_none() {
                        self.forget(name);
                        return Err(Error::UnknownSubscription {
                            name: name.to_owned(),
                        });
                    }
                    return Err(broker("fetch", "no responders", true));
                }
                Some(status) => {
                    return Err(broker(
                        "fetch",
                        format!("{status} {}", message.description.unwrap_or_default()),
                        true,
                    ));
                }
            }
        }
        Ok(messages)
    }

    /// Turns messages into deliveries and remembers their ack subjects.
    async fn deliveries(
        &self,
        name: &str,
        sub: &Sub,
        messages: Vec<async_nats::Message>,
    ) -> Vec<Delivery> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(messages.len());
        let mut poison = Vec::new();
        {
            let mut inflight = lock(&sub.inflight);
            for message in messages {
                let Some(reply) = message.reply else {
                    tracing::warn!(subscription = name, subject = %message.subject, "nats: message without ack subject ignored");
                    continue;
                };
                let Some(info) = subject::parse_ack_subject(&reply) else {
                    tracing::warn!(subscription = name, reply = %reply, "nats: unexpected ack subject; message ignored");
                    continue;
                };
                let event = match serde_json::from_slice::<Event>(&message.payload) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::error!(
                            subscription = name,
                            stream_sequence = info.stream_sequence,
                            error = %e,
                            "nats: stored message is not a CloudEvent; terminated"
                        );
                        poison.push(reply);
                        continue;
                    }
                };
                inflight.replies.insert(info.stream_sequence, (reply, now));
                out.push(Delivery::new(
                    Arc::new(event),
                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                    DeliveryTag(info.stream_sequence),
                ));
            }
            // Forget deliveries nobody settled long after they were due again (acked
            // by another process, or dropped by the caller).
            let limit = usize::try_from(self.inner.config.max_ack_pending)
                .unwrap_or(usize::MAX)
                .saturating_mul(2);
            if inflight.replies.len() > limit {
                let keep = inflight.ack_wait.saturating_mul(2) + Duration::from_secs(60);
                inflight
                    .replies
                    .retain(|_, (_, at)| now.saturating_duration_since(*at) < keep);
            }
        }
        for reply in poison {
            // Never redelivered: a message that is not an event cannot be handled.
            if let Err(e) = self
                .inner
                .client
                .publish(reply, Bytes::from_static(b"+TERM"))
                .await
            {
                tracing::warn!(error = %e, "nats: could not terminate a bad message");
            }
        }
        out
    }

    /// Sends `payload` to the ack subject of each known tag: all but the last without
    /// waiting, the last as a request, answered once the server applied them all.
    async fn settle(
        &self,
        sub: &Sub,
        tags: &[DeliveryTag],
        payload: Bytes,
        operation: &'static str,
    ) -> Result<()> {
        let replies: Vec<(u64, Subject)> = {
            let inflight = lock(&sub.inflight);
            tags.iter()
                .filter_map(|t| inflight.replies.get(&t.0).map(|(r, _)| (t.0, r.clone())))
                .collect()
        };
        let Some(((_, last), rest)) = replies.split_last() else {
            return Ok(());
        };
        let client = &self.inner.client;
        for (_, reply) in rest {
            client
                .publish(reply.clone(), payload.clone())
                .await
                .map_err(|e| broker(operation, e, true))?;
        }
        client
            .request(last.clone(), payload)
            .await
            .map_err(|e| broker(operation, e, true))?;
        let mut inflight = lock(&sub.inflight);
        for (seq, reply) in &replies {
            // Keep a newer delivery of the same event (redelivered meanwhile).
            if inflight.replies.get(seq).is_some_and(|(r, _)| r == reply) {
                inflight.replies.remove(seq);
            }
        }
        Ok(())
    }

    /// Publishes the events at `todo` concurrently; returns those not acknowledged
    /// and what went wrong last.
    async fn publish_round(
        &self,
        messages: &[(String, Bytes, String)],
        todo: &[usize],
        failure: &mut Failure,
    ) -> Vec<usize> {
        let js = &self.inner.js;
        let mut failed = Vec::new();
        let mut acks = FuturesUnordered::new();
        for &i in todo {
            let (subject, payload, id) = &messages[i];
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(id);
            match js.send_publish(subject.clone(), publish).await {
                Ok(ack) => acks.push(async move { (i, ack.await) }),
                Err(e) => {
                    failure.note(&e);
                    failed.push(i);
                }
            }
            if acks.len() >= PUBLISH_WINDOW
                && let Some((i, result)) = acks.next().await
                && let Err(e) = result
            {
                failure.note(&e);
                failed.push(i);
            }
        }
        while let Some((i, result)) = acks.next().await {
            if let Err(e) = result {
                failure.note(&e);
                failed.push(i);
            }
        }
        failed.sort_unstable();
        failed
    }
}

/// The last publish error and whether retrying can help.
#[derive(Default)]
struct Failure {
    message: String,
    permanent: bool,
    stream_missing: bool,
}

impl Failure {
    fn note(&mut self, e: &jetstream::context::PublishError) {
        use jetstream::context::PublishErrorKind as Kind;
        self.message = e.to_string();
        match e.kind() {
            Kind::MaxPayloadExceeded => self.permanent = true,
            Kind::StreamNotFound => self.stream_missing = true,
            _ => {}
        }
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let prefix = &self.inner.config.subject_prefix;
        let messages = events
            .iter()
            .map(|event| {
                let payload = serde_json::to_vec(event).map_err(|source| Error::Encode {
                    event_id: event.id,
                    source,
                })?;
                Ok((
                    subject::event_subject(prefix, &event.ty),
                    Bytes::from(payload),
                    event.id.to_string(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        let deadline = started + self.inner.config.publish_timeout;
        let mut todo: Vec<usize> = (0..messages.len()).collect();
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut failure = Failure::default();
            todo = self.publish_round(&messages, &todo, &mut failure).await;
            if todo.is_empty() {
                return Ok(());
            }
            if failure.permanent {
                return Err(broker("publish", failure.message, false));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NotAcknowledged {
                    backend: BACKEND,
                    unacked: todo.len(),
                    total: messages.len(),
                    waited_ms: u64::try_from(now.duration_since(started).as_millis())
                        .unwrap_or(u64::MAX),
                    message: failure.message,
                });
            }
            tracing::warn!(
                unacked = todo.len(),
                total = messages.len(),
                error = %failure.message,
                "nats: publish not acknowledged; retrying"
            );
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if failure.stream_missing
                && let Err(e) = self.ensure_stream().await
            {
                tracing::warn!(error = %e, "nats: could not recreate the stream");
            }
        }
    }

    async fn subscribe(&self, name: &str, options: SubscribeOptions) -> Result<()> {
        validate_name("subscription name", name)?;
        let consumer = subject::consumer_name(name);
        match self.consumer_info(&consumer).await? {
            Some(info) if info.config.ack_wait == options.ack_wait => {}
            Some(info) => {
                // Resume where it stopped; only the ack wait changes.
                let mut config = info.config;
                config.ack_wait = options.ack_wait;
                self.put_consumer(&config).await?;
            }
            None => {
                let config = consumer::Config {
                    durable_name: Some(consumer.clone()),
                    deliver_policy: match options.start {
                        StartFrom::Beginning => consumer::DeliverPolicy::All,
                        StartFrom::New => consumer::DeliverPolicy::New,
                    },
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    max_ack_pending: i64::from(self.inner.config.max_ack_pending),
                    ..Default::default()
                };
                self.put_consumer(&config).await?;
                tracing::debug!(subscription = name, consumer = %consumer, "nats: consumer created");
            }
        }
        self.remember(name, consumer, options.ack_wait);
        Ok(())
    }

    async fn fetch(&self, subscription: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let sub = self.sub(subscription).await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut messages = self.pull(subscription, &sub, max, None).await?;
        if messages.is_empty() && !wait.is_zero() {
            // Wait for one, then take what else is there: a pull request for `max`
            // would hold on until all `max` came or `wait` ran out.
            messages = self.pull(subscription, &sub, 1, Some(wait)).await?;
            if !messages.is_empty() && max > 1 {
                messages.extend(self.pull(subscription, &sub, max - 1, None).await?);
            }
        }
        Ok(self.deliveries(subscription, &sub, messages).await)
    }

    async fn ack(&self, subscription: &str, tags: &[DeliveryTag]) -> Result<()> {
        let sub = self.sub(subscription).await?;
        self.settle(&sub, tags, Bytes::from_static(b"+ACK"), "ack")
            .await
    }

    async fn nack(&self, subscription: &str, tags: &[DeliveryTag], delay: Duration) -> Result<()> {
        let sub = self.sub(subscription).await?;
        let payload = if delay.is_zero() {
            Bytes::from_static(b"-NAK")
        } else {
            let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
            Bytes::from(format!("-NAK {{\"delay\":{nanos}}}"))
        };
        self.settle(&sub, tags, payload, "nack").await
    }

    async fn pending(&self, subscription: &str) -> Result<u64> {
        let sub = self.sub(subscription).await?;
        match self.consumer_info(&sub.consumer).await? {
            Some(info) => Ok(info.num_ack_pending as u64),
            None => {
                self.forget(subscription);
                Err(Error::UnknownSubscription {
                    name: subscription.to_owned(),
                })
            }
        }
    }

    async fn backlog(&self, subscription: &str) -> Result<u64> {
        let sub = self.sub(subscription).await?;
        match self.consumer_info(&sub.consumer).await? {
            Some(info) => Ok(info.num_pending + info.num_ack_pending as u64),
            None => {
                self.forget(subscription);
                Err(Error::UnknownSubscription {
                    name: subscription.to_owned(),
                })
            }
        }
    }

    /// The time of the stream message after the consumer's acknowledgement floor (with
    /// a subject filter, possibly an earlier message of another subject: the lag is
    /// then overstated, never understated).
    async fn oldest_unacked(&self, subscription: &str) -> Result<Option<DateTime<Utc>>> {
        let sub = self.sub(subscription).await?;
        let Some(info) = self.consumer_info(&sub.consumer).await? else {
            self.forget(subscription);
            return Err(Error::UnknownSubscription {
                name: subscription.to_owned(),
            });
        };
        if info.num_pending + info.num_ack_pending as u64 == 0 {
            return Ok(None);
        }
        let stream = self
            .inner
            .js
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(|e| broker("get stream", e, true))?;
        let seq = info.ack_floor.stream_sequence + 1;
        match stream.get_raw_message(seq).await {
            Ok(message) => Ok(serde_json::from_slice::<Event>(&message.payload)
                .ok()
                .map(|event| event.time)),
            Err(e) => {
                tracing::debug!(error = %e, seq, "nats: oldest unacknowledged message not readable");
                Ok(None)
            }
        }
    }
}
