//! The [`Dispatcher`]: runs functions over a bus, with retries and dead letters.

mod config;
mod stats;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ops_core::{Event, EventId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::{EventBus, SubscribeOptions, validate_name};
use crate::dead_letter::{DeadLetter, DeadLetters, InMemoryDeadLetters};
use crate::function::Function;
use crate::trigger::Trigger;
use crate::{Error, Result};

pub use config::{DispatcherConfig, RetryPolicy};
use stats::Counters;
pub use stats::DispatchStats;

/// Runs [`Function`]s over an [`EventBus`].
///
/// Each registered function gets one durable subscription named after it and one
/// worker that fetches events in batches, calls the function for those its
/// [`Trigger`]s match (acknowledging the others), and settles the whole batch with
/// one acknowledgement:
///
/// - success: acknowledged;
/// - retryable failure: delivered again after an exponential backoff
///   ([`RetryPolicy`]), up to `max_attempts` calls;
/// - permanent failure, or retries exhausted: stored in the [`DeadLetters`] (the
///   event whole, with the last error and the attempt count), then acknowledged.
///
/// Delivery is at least once, so functions dedupe by event id (see
/// [`Dedupe`](crate::Dedupe)). Dead letters are re-run with [`replay`](Self::replay).
/// [`start`](Self::start) returns a [`RunningDispatcher`] whose
/// [`shutdown`](RunningDispatcher::shutdown) stops fetching, waits for the calls in
/// progress and gives back what was fetched but not handled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ops_events::Result<()> {
/// use ops_events::{Dispatcher, EventBus, function_fn, memory::InMemoryBus, Trigger};
/// use ops_core::Event;
///
/// let bus = InMemoryBus::new();
/// let dispatcher = Dispatcher::builder(bus.clone())
///     .route(Trigger::on("ops.task.*"), function_fn("audit", |event| async move {
///         tracing::info!(event_id = %event.id, "seen");
///         Ok(())
///     }))
///     .build()?;
/// let running = dispatcher.start().await?;
/// bus.publish(&[Event::builder("ops.task.started", "ops://local").build()]).await?;
/// # while dispatcher.stats().delivered < 1 { tokio::task::yield_now().await; }
/// running.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("functions", &self.functions())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    bus: Arc<dyn EventBus>,
    dead_letters: Arc<dyn DeadLetters>,
    config: DispatcherConfig,
    routes: Vec<Arc<Route>>,
    running: AtomicBool,
}

struct Route {
    name: String,
    function: Arc<dyn Function>,
    triggers: Vec<Trigger>,
    counters: Counters,
}

impl Route {
    fn matches(&self, event: &Event) -> bool {
        self.triggers.iter().any(|t| t.matches(event))
    }
}

/// Builds a [`Dispatcher`]; see [`Dispatcher::builder`].
pub struct DispatcherBuilder {
    bus: Arc<dyn EventBus>,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    config: DispatcherConfig,
    routes: Vec<(Vec<Trigger>, Arc<dyn Function>)>,
}

impl std::fmt::Debug for DispatcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherBuilder")
            .field("config", &self.config)
            .field(
                "functions",
                &self
                    .routes
                    .iter()
                    .map(|(_, f)| f.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl DispatcherBuilder {
    /// Where dead letters go (default: [`InMemoryDeadLetters`]). Use
    /// [`SqliteOutbox::dead_letters`](crate::sqlite::SqliteOutbox::dead_letters) with
    /// the SQLite outbox so that they survive restarts.
    pub fn dead_letters(mut self, store: impl DeadLetters) -> Self {
        self.dead_letters = Some(Arc::new(store));
        self
    }

    /// Replaces all settings.
    pub fn config(mut self, config: DispatcherConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Calls `function` for the events `trigger` matches.
    pub fn route(self, trigger: Trigger, function: impl Function) -> Self {
        self.route_all([trigger], function)
    }

    /// Calls `function` for the events any of `triggers` matches.
    pub fn route_all(
        mut self,
        triggers: impl IntoIterator<Item = Trigger>,
        function: impl Function,
    ) -> Self {
        self.routes
            .push((triggers.into_iter().collect(), Arc::new(function)));
        self
    }

    /// Checks names, patterns and settings.
    pub fn build(self) -> Result<Dispatcher> {
        self.config.validate()?;
        let mut routes: Vec<Arc<Route>> = Vec::with_capacity(self.routes.len());
        for (triggers, function) in self.routes {
            let name = function.name().to_owned();
            validate_name("function name", &name)?;
            if routes.iter().any(|r| r.name == name) {
                return Err(Error::DuplicateFunction { name });
            }
            if triggers.is_empty() {
                return Err(Error::invalid(
                    "function triggers",
                    name,
                    "a function needs at least one trigger",
                ));
            }
            for t in &triggers {
                t.validate()?;
            }
            routes.push(Arc::new(Route {
                name,
                function,
                triggers,
                counters: Counters::default(),
            }));
        }
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                bus: self.bus,
                dead_letters: self
                    .dead_letters
                    .unwrap_or_else(|| Arc::new(InMemoryDeadLetters::new())),
                config: self.config,
                routes,
                running: AtomicBool::new(false),
            }),
        })
    }
}

/// How often [`Dispatcher::drain`] looks at the backlog.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The outcome of [`Dispatcher::replay_all`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters handled successfully (and removed).
    pub replayed: u64,
    /// Dead letters that failed again (kept, with the new error).
    pub failed: u64,
    /// Dead letters of functions this dispatcher does not know (left alone).
    pub skipped: u64,
}

impl Dispatcher {
    /// Starts building a dispatcher over `bus`.
    pub fn builder(bus: impl EventBus) -> DispatcherBuilder {
        DispatcherBuilder {
            bus: Arc::new(bus),
            dead_letters: None,
            config: DispatcherConfig::default(),
            routes: Vec::new(),
        }
    }

    /// The registered function names.
    pub fn functions(&self) -> Vec<&str> {
        self.inner.routes.iter().map(|r| r.name.as_str()).collect()
    }

    /// The dead-letter store.
    pub fn dead_letters(&self) -> &Arc<dyn DeadLetters> {
        &self.inner.dead_letters
    }

    /// The settings.
    pub fn config(&self) -> &DispatcherConfig {
        &self.inner.config
    }

    /// The bus the functions subscribe to.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.inner.bus
    }

    /// Counters summed over all functions.
    pub fn stats(&self) -> DispatchStats {
        let mut total = DispatchStats::default();
        for r in &self.inner.routes {
            total += r.counters.snapshot();
        }
        total
    }

    /// Counters of one function.
    pub fn function_stats(&self, function: &str) -> Result<DispatchStats> {
        Ok(self.route(function)?.counters.snapshot())
    }

    fn route(&self, function: &str) -> Result<&Arc<Route>> {
        self.inner
            .routes
            .iter()
            .find(|r| r.name == function)
            .ok_or_else(|| Error::UnknownFunction {
                name: function.to_owned(),
            })
    }

    /// Events published to the bus that the functions have not acknowledged yet, summed
    /// over the functions (see [`EventBus::backlog`]).
    pub async fn backlog(&self) -> Result<u64> {
        let mut total = 0;
        for route in &self.inner.routes {
            total += self.inner.bus.backlog(&route.name).await?;
        }
        Ok(total)
    }

    /// Waits until every function has acknowledged everything published so far (its
    /// backlog is empty), or `timeout` has passed; gives whether they caught up. For a
    /// graceful stop: the functions handle what was committed before the dispatcher is
    /// shut down. An event a function keeps failing on stays in the backlog until it is
    /// dead-lettered.
    pub async fn drain(&self, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.backlog().await?;
            if left == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    backlog = left,
                    ?timeout,
                    "functions did not catch up in time"
                );
                return Ok(false);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Creates (or resumes) every function's subscription and starts one worker per
    /// function on the current Tokio runtime.
    pub async fn start(&self) -> Result<RunningDispatcher> {
        if self.inner.running.swap(true, Ordering::AcqRel) {
            return Err(Error::AlreadyRunning);
        }
        let options = SubscribeOptions::default()
            .start(self.inner.config.start)
            .ack_wait(self.inner.config.ack_wait);
        for route in &self.inner.routes {
            if let Err(e) = self.inner.bus.subscribe(&route.name, options.clone()).await {
                self.inner.running.store(false, Ordering::Release);
                return Err(e);
            }
        }
        let (stop, watch) = watch::channel(false);
        let workers = self
            .inner
            .routes
            .iter()
            .map(|route| {
                tokio::spawn(worker::run(
                    self.inner.clone(),
                    route.clone(),
                    watch.clone(),
                ))
            })
            .collect();
        tracing::info!(functions = self.inner.routes.len(), "dispatcher started");
        Ok(RunningDispatcher {
            dispatcher: self.clone(),
            stop,
            workers,
        })
    }

    /// Calls the function again with a dead-lettered event. On success the letter is
    /// removed; on failure it is kept with the new error and attempt count, and the
    /// failure is returned as [`Error::Function`].
    pub async fn replay(&self, function: &str, event_id: EventId) -> Result<()> {
        let route = self.route(function)?;
        let letter = self
            .inner
            .dead_letters
            .get(function, event_id)
            .await?
            .ok_or_else(|| Error::UnknownDeadLetter {
                function: function.to_owned(),
                event_id,
            })?;
        self.replay_letter(route, letter).await
    }

    /// Replays every dead letter (of one function, or of all functions this
    /// dispatcher runs), oldest first.
    pub async fn replay_all(&self, function: Option<&str>) -> Result<ReplayReport> {
        if let Some(f) = function {
            self.route(f)?;
        }
        let letters = self.inner.dead_letters.list(function, usize::MAX).await?;
        let mut report = ReplayReport::default();
        for letter in letters {
            let Ok(route) = self.route(&letter.function) else {
                report.skipped += 1;
                continue;
            };
            match self.replay_letter(route, letter).await {
                Ok(()) => report.replayed += 1,
                Err(Error::Function { .. }) => report.failed += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    async fn replay_letter(&self, route: &Route, letter: DeadLetter) -> Result<()> {
        let event_id = letter.event.id;
        match worker::invoke(
            &*route.function,
            &letter.event,
            self.inner.config.call_timeout,
        )
        .await
        {
            Ok(()) => {
                self.inner
                    .dead_letters
                    .remove(&route.name, event_id)
                    .await?;
                Counters::add(&route.counters.replayed, 1);
                tracing::info!(function = %route.name, %event_id, "dead letter replayed");
                Ok(())
            }
            Err(source) => {
                let again = DeadLetter::new(
                    route.name.clone(),
                    letter.event,
                    source.to_string(),
                    letter.attempts.saturating_add(1),
                    !source.is_retryable(),
                );
                self.inner.dead_letters.put(&again).await?;
                tracing::warn!(function = %route.name, %event_id, error = %source, "replay failed");
                Err(Error::Function {
                    function: route.name.clone(),
                    event_id,
                    source,
                })
            }
        }
    }
}

/// A started [`Dispatcher`]. Call [`shutdown`](Self::shutdown) to stop gracefully;
/// dropping it stops the workers without waiting for them.
#[derive(Debug)]
pub struct RunningDispatcher {
    dispatcher: Dispatcher,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl RunningDispatcher {
    /// The dispatcher (for stats, dead letters and replay while it runs).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Stops fetching, waits for the calls in progress to finish and be settled, and
    /// gives back (for immediate redelivery) what was fetched but not handled.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for worker in std::mem::take(&mut self.workers) {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "dispatcher worker ended abnormally");
            }
        }
        tracing::info!("dispatcher stopped");
    }
}

impl Drop for RunningDispatcher {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.dispatcher
            .inner
            .running
            .store(false, Ordering::Release);
    }
}
