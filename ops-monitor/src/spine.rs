//! [`SpineCollector`]: the event spine's health — what each function handled, retried
//! and dead-lettered, how far behind each subscription is.
//!
//! | family | labels |
//! |---|---|
//! | `ops_function_events_total` | `function`, `outcome` (delivered, skipped, failed, retried, dead_lettered, replayed) |
//! | `ops_dead_letters` (kept now) | `function` |
//! | `ops_subscription_backlog` (events not acknowledged) | `subscription` |
//! | `ops_outbox_lag_seconds` (age of the oldest of them; 0 when caught up) | `subscription` |
//!
//! The counters are this process's dispatcher's; the dead letters, backlogs and lags
//! are read from the shared stores, so every process reports the same values for
//! them.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use ops_events::{DeadLetters, Dispatcher, EventBus};

use crate::{CollectError, Collector, Descriptor, Family, MetricKind};

/// The event-spine collector; see the [module documentation](self).
#[derive(Clone)]
pub struct SpineCollector {
    bus: Arc<dyn EventBus>,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    dispatcher: Option<Dispatcher>,
    subscriptions: Vec<String>,
    /// Subscriptions on other buses (a relay's on the outbox).
    others: Vec<(Arc<dyn EventBus>, String)>,
}

impl std::fmt::Debug for SpineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpineCollector")
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

fn descriptors() -> [Descriptor; 4] {
    [
        Descriptor::new(
            "ops_function_events",
            "Events a function handled, by outcome.",
            MetricKind::Counter,
        ),
        Descriptor::new(
            "ops_dead_letters",
            "Dead letters kept now.",
            MetricKind::Gauge,
        ),
        Descriptor::new(
            "ops_subscription_backlog",
            "Events a subscription has not acknowledged yet.",
            MetricKind::Gauge,
        ),
        Descriptor::new(
            "ops_outbox_lag_seconds",
            "Age of the oldest event a subscription has not acknowledged (0 when caught up).",
            MetricKind::Gauge,
        ),
    ]
}

impl SpineCollector {
    /// A collector of `dispatcher`'s functions: their counters, dead letters,
    /// backlogs and lags.
    pub fn new(dispatcher: &Dispatcher) -> Self {
        Self {
            bus: dispatcher.bus().clone(),
            dead_letters: Some(dispatcher.dead_letters().clone()),
            subscriptions: dispatcher
                .functions()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            dispatcher: Some(dispatcher.clone()),
            others: Vec::new(),
        }
    }

    /// A collector of subscriptions on `bus` without a dispatcher (a relay's, another
    /// program's); add them with [`subscription`](Self::subscription).
    pub fn for_bus(bus: Arc<dyn EventBus>) -> Self {
        Self {
            bus,
            dead_letters: None,
            dispatcher: None,
            subscriptions: Vec::new(),
            others: Vec::new(),
        }
    }

    /// Also reports the backlog and lag of `name`.
    pub fn subscription(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.subscriptions.contains(&name) {
            self.subscriptions.push(name);
        }
        self
    }

    /// Also reports the backlog and lag of `name` on another bus: the relay's
    /// subscription on the outbox, when events are relayed to NATS.
    pub fn subscription_on(mut self, bus: Arc<dyn EventBus>, name: impl Into<String>) -> Self {
        self.others.push((bus, name.into()));
        self
    }
}

#[async_trait]
impl Collector for SpineCollector {
    fn name(&self) -> &str {
        "events"
    }

    fn describe(&self) -> Vec<Descriptor> {
        descriptors().to_vec()
    }

    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        let [outcomes, dead, backlog, lag] = descriptors();
        let (mut outcomes, mut dead, mut backlog, mut lag) = (
            Family::new(outcomes),
            Family::new(dead),
            Family::new(backlog),
            Family::new(lag),
        );
        if let Some(dispatcher) = &self.dispatcher {
            for function in dispatcher.functions() {
                let Ok(stats) = dispatcher.function_stats(function) else {
                    continue;
                };
                for (outcome, n) in [
                    ("delivered", stats.delivered),
                    ("skipped", stats.skipped),
                    ("failed", stats.failed),
                    ("retried", stats.retried),
                    ("dead_lettered", stats.dead_lettered),
                    ("replayed", stats.replayed),
                ] {
                    outcomes.sample(
                        [
                            ("function", function.to_owned()),
                            ("outcome", outcome.to_owned()),
                        ],
                        n as f64,
                    );
                }
            }
            if let Some(store) = &self.dead_letters {
                for function in dispatcher.functions() {
                    let n = store.count(Some(function)).await.map_err(|e| {
                        CollectError::new(format!("counting dead letters of {function}: {e}"))
                    })?;
                    dead.sample([("function", function.to_owned())], n as f64);
                }
            }
        }
        let now = Utc::now();
        let subscriptions = self
            .subscriptions
            .iter()
            .map(|name| (&self.bus, name))
            .chain(self.others.iter().map(|(bus, name)| (bus, name)));
        for (bus, name) in subscriptions {
            let n = bus
                .backlog(name)
                .await
                .map_err(|e| CollectError::new(format!("backlog of {name}: {e}")))?;
            backlog.sample([("subscription", name.clone())], n as f64);
            let oldest = bus
                .oldest_unacked(name)
                .await
                .map_err(|e| CollectError::new(format!("lag of {name}: {e}")))?;
            let age = oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            lag.sample([("subscription", name.clone())], age);
        }
        Ok(vec![outcomes, dead, backlog, lag])
    }
}
