//! Backends chosen by URL, so that moving from one machine to many is a change of
//! configuration, not of code.
//!
//! | URL | history store and outbox | feature |
//! |---|---|---|
//! | `sqlite://path/ops.db`, `sqlite:path`, or a plain path | [`SqliteHistory`](crate::SqliteHistory) | (default) |
//! | `postgres://user:pass@host/db` (or `postgresql://`) | `PostgresHistory` | `postgres` |
//!
//! The event bus is the history store's own outbox unless an event bus URL is given:
//! `nats://host:4222` (feature `nats`) relays every committed event from the outbox to
//! NATS JetStream, where functions subscribe.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", dir.path().join("ops.db").display());
//! let backends = ops_tasks::backends::open(&url, None).await?;
//! assert_eq!(backends.history_url, url);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use ops_events::{DeadLetters, EventBus};

use crate::{Error, HistoryStore, Result};

/// What [`open`] returns: the history store, the bus functions subscribe to, and
/// (when events go to another bus) the relay feeding it.
pub struct Backends {
    /// Tasks, transitions and outputs, with the event outbox in the same database.
    pub history: Arc<dyn HistoryStore>,
    /// The history store's outbox, as an event bus.
    pub outbox: Arc<dyn EventBus>,
    /// Where functions subscribe: the outbox itself, or the bus it is relayed to.
    pub events: Arc<dyn EventBus>,
    /// Dead letters of functions, kept in the history database.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// The object catalog of `ops-storage`, in the history database: its
    /// `ops.storage.object.*` events go into the same outbox as the task events.
    pub storage_catalog: Arc<dyn ops_storage::Catalog>,
    /// The history URL, password redacted (for logs).
    pub history_url: String,
    /// The event bus URL, password redacted (`None`: the outbox).
    pub events_url: Option<String>,
    #[cfg(feature = "nats")]
    relay: Option<ops_events::relay::RunningRelay>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("history_url", &self.history_url)
            .field("events_url", &self.events_url)
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// Stops the relay (if any) after it has forwarded what it fetched.
    pub async fn shutdown(self) {
        #[cfg(feature = "nats")]
        if let Some(relay) = self.relay {
            relay.shutdown().await;
        }
    }
}

/// Replaces the password of a URL (`user:password@` or a `password=` query
/// parameter) with `***`, for errors and logs.
pub use ops_events::redact_url;

fn scheme(url: &str) -> Option<&str> {
    url.find(':').map(|i| &url[..i]).filter(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    })
}

/// Opens the history store at `history_url` and, when `events_url` is given, the
/// event bus that the outbox is relayed to. Errors name the URL (password
/// redacted): an unknown scheme, a backend whose feature is off, an unreachable
/// server.
pub async fn open(history_url: &str, events_url: Option<&str>) -> Result<Backends> {
    let redacted = redact_url(history_url);
    let (history, outbox, dead_letters, storage_catalog): Opened = match scheme(history_url) {
        None | Some("sqlite") => {
            let history = crate::SqliteHistory::open(history_url).await?;
            let outbox = Arc::new(history.outbox().clone());
            let dead_letters = Arc::new(history.outbox().dead_letters());
            let catalog =
                ops_storage::catalog::SqliteCatalog::from_outbox(history.outbox().clone())
                    .await
                    .map_err(|e| catalog_error(&redacted, e))?;
            (Arc::new(history), outbox, dead_letters, Arc::new(catalog))
        }
        Some("postgres" | "postgresql") => open_postgres(history_url, &redacted).await?,
        Some(other) => {
            return Err(Error::Connect {
                url: redacted,
                message: format!(
                    "unsupported scheme {other:?}: use sqlite://PATH or postgres://HOST/DB"
                ),
            });
        }
    };
    let mut backends = Backends {
        history,
        outbox: outbox.clone(),
        events: outbox,
        dead_letters,
        storage_catalog,
        history_url: redacted,
        events_url: None,
        #[cfg(feature = "nats")]
        relay: None,
    };
    if let Some(url) = events_url {
        attach_bus(&mut backends, url).await?;
    }
    Ok(backends)
}

type Opened = (
    Arc<dyn HistoryStore>,
    Arc<dyn EventBus>,
    Arc<dyn DeadLetters>,
    Arc<dyn ops_storage::Catalog>,
);

fn catalog_error(url: &str, e: ops_storage::Error) -> Error {
    Error::Connect {
        url: url.to_owned(),
        message: format!("the storage catalog: {e}"),
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, redacted: &str) -> Result<Opened> {
    let history = crate::history::PostgresHistory::connect(url).await?;
    let outbox = Arc::new(history.outbox().clone());
    let dead_letters = Arc::new(history.outbox().dead_letters());
    let catalog = ops_storage::catalog::PostgresCatalog::from_outbox(history.outbox().clone())
        .await
        .map_err(|e| catalog_error(redacted, e))?;
    Ok((Arc::new(history), outbox, dead_letters, Arc::new(catalog)))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str, redacted: &str) -> Result<Opened> {
    Err(Error::Connect {
        url: redacted.to_owned(),
        message: "this build has no Postgres support: enable the `postgres` feature of ops-tasks"
            .into(),
    })
}

/// The name of the outbox subscription that feeds an external bus.
pub const RELAY_SUBSCRIPTION: &str = "ops-relay";

#[cfg_attr(not(feature = "nats"), allow(unused_variables))]
async fn attach_bus(backends: &mut Backends, url: &str) -> Result<()> {
    let redacted = redact_url(url);
    match scheme(url) {
        Some("outbox") => Ok(()),
        #[cfg(feature = "nats")]
        Some("nats" | "tls") => {
            let bus: Arc<dyn EventBus> = Arc::new(ops_events::nats::NatsBus::connect(url).await?);
            let relay = ops_events::relay::Relay::new(
                backends.outbox.clone(),
                RELAY_SUBSCRIPTION,
                bus.clone(),
            )
            .start()
            .await?;
            backends.events = bus;
            backends.events_url = Some(redacted);
            backends.relay = Some(relay);
            Ok(())
        }
        #[cfg(not(feature = "nats"))]
        Some("nats" | "tls") => Err(Error::Connect {
            url: redacted,
            message: "this build has no NATS support: enable the `nats` feature of ops-tasks"
                .into(),
        }),
        other => Err(Error::Connect {
            url: redacted,
            message: format!(
                "unsupported event bus scheme {:?}: use nats://HOST:PORT, or leave it out to \
                 use the history store's outbox",
                other.unwrap_or("")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_are_refused_with_the_url() {
        let err = open("mysql://root:hunter2@db/ops", None).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mysql://root:***@db/ops"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("unsupported scheme"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ops.db").display());
        let err = open(&url, Some("kafka://broker:9092")).await.unwrap_err();
        assert!(err.to_string().contains("kafka://broker:9092"), "{err}");
    }
}
