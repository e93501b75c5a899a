//! The Ops event spine: buses, the durable outbox, functions, triggers, webhooks.
//!
//! Everything around a task in Ops reacts to [`Event`]s (CloudEvents 1.0, from
//! `ops-core`). This crate moves them:
//!
//! - [`EventBus`]: publish events; durable named, pull-based subscriptions that
//!   resume where they stopped; acknowledgements; redelivery of what was not
//!   acknowledged. Delivery is at least once and in publish order per subscription.
//! - [`Function`]: an event handler (closures via [`function_fn`]), selected by
//!   [`Trigger`]s (event type pattern such as `ops.task.*`, subject and extension
//!   filters such as `tenant=acme`).
//! - [`Dispatcher`]: runs functions over a bus in batches, retries failures with
//!   exponential backoff, then keeps the event in the [`DeadLetters`] for
//!   [replay](Dispatcher::replay). Counters in [`DispatchStats`].
//! - `webhook::WebhookFunction`: a function that POSTs the CloudEvent to a URL,
//!   HMAC-signed (`webhook::verify_signature` for receivers).
//! - [`Dedupe`]: skip redelivered events by id.
//!
//! # Backends
//!
//! | bus | durable | module |
//! |---|---|---|
//! | in-memory, always built | no | [`memory::InMemoryBus`] |
//! | SQLite outbox (feature `sqlite`, default): the caller writes its state and events in one transaction | yes | `sqlite::SqliteOutbox` |
//! | PostgreSQL outbox (feature `postgres`): the same, shared by several machines | yes | `postgres::PostgresOutbox` |
//! | NATS JetStream (feature `nats`): the scale-out bus | yes | `nats::NatsBus` |
//!
//! Every backend passes the same conformance suites (`testkit::bus`,
//! `testkit::dead_letters`, behind the `testkit` feature).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | the durable SQLite outbox and dead-letter store (`sqlite` module, sqlx) |
//! | `webhook` | yes | webhook functions over `reqwest` with rustls (`webhook` module) |
//! | `postgres` | no | the PostgreSQL outbox (`postgres` module), PostgreSQL 13 or later |
//! | `nats` | no | the NATS JetStream bus (`nats` module), nats-server 2.9 or later |
//! | `testkit` | no | the conformance suites, for backend authors |
//!
//! Without default features the crate is the bus contract, the in-memory bus, the
//! dispatcher and the relay, with no database driver and no HTTP client.
//!
//! Errors carry an [`ErrorKind`](ops_core::ErrorKind) ([`Error::kind`]) and say whether
//! retrying may help ([`Error::is_retryable`]); database failures are [`StoreError`]s,
//! classified where they happen, with the driver's error boxed as their source.
//!
//! [`relay::Relay`] (always built) moves events from one bus to another durably: in
//! practice from the SQL outbox, written in the same transaction as the state, to NATS.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! use ops_core::{event_types, Event};
//! use ops_events::memory::InMemoryBus;
//! use ops_events::{function_fn, Dispatcher, EventBus, FunctionError, RetryPolicy, Trigger};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ops_events::Result<()> {
//! let bus = InMemoryBus::new();
//! let failures = Arc::new(AtomicUsize::new(0));
//! let seen = failures.clone();
//! let on_failure = function_fn("count-failures", move |event| {
//!     let seen = seen.clone();
//!     async move {
//!         if event.subject.is_none() {
//!             return Err(FunctionError::permanent("a task event needs a subject"));
//!         }
//!         seen.fetch_add(1, Ordering::SeqCst);
//!         Ok(())
//!     }
//! });
//!
//! let acme = ops_core::Tenant::parse("acme").unwrap();
//! let dispatcher = Dispatcher::builder(bus.clone())
//!     .route(Trigger::on(event_types::TASK_FAILED).tenant(&acme), on_failure)
//!     .retry(RetryPolicy::default().max_attempts(3))
//!     .build()?;
//! let running = dispatcher.start().await?;
//!
//! bus.publish(&[
//!     Event::builder(event_types::TASK_FAILED, "ops://local").subject("t1").tenant("acme").build(),
//!     Event::builder(event_types::TASK_FAILED, "ops://local").subject("t2").tenant("globex").build(),
//!     Event::builder(event_types::TASK_FAILED, "ops://local").tenant("acme").build(),
//! ])
//! .await?;
//!
//! // One handled, one filtered out, one dead-lettered (permanent failure).
//! while dispatcher.stats().delivered + dispatcher.stats().skipped + dispatcher.stats().dead_lettered < 3 {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! running.shutdown().await;
//! assert_eq!(failures.load(Ordering::SeqCst), 1);
//! assert_eq!(dispatcher.dead_letters().count(None).await?, 1);
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod bus;
mod dead_letter;
mod dedupe;
mod dispatcher;
mod error;
mod function;
mod redact;
mod serde_millis;
mod store_error;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod stored;
mod trigger;

pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod relay;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use bus::{Delivery, DeliveryTag, EventBus, StartFrom, SubscribeOptions, validate_name};
pub use dead_letter::{DeadLetter, DeadLetters, InMemoryDeadLetters};
pub use dedupe::Dedupe;
pub use dispatcher::{
    DispatchStats, Dispatcher, DispatcherBuilder, DispatcherConfig, ReplayReport, RetryPolicy,
    RunningDispatcher,
};
pub use error::{Error, Result};
pub use function::{FailureKind, FnFunction, Function, FunctionError, function_fn};
pub use redact::redact_url;
pub use store_error::{BoxError, StoreError};
pub use trigger::Trigger;

pub use ops_core::{Event, EventId};
