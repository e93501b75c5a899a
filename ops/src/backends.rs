//! Backends chosen by URL, so that moving from one machine to many is a change of
//! configuration, not of code.
//!
//! | URL | history store, outbox, dead letters, storage catalog | feature |
//! |---|---|---|
//! | `sqlite://path/ops.db`, `sqlite:path`, or a plain path | `SqliteHistory` and the SQLite outbox, in one database file | `sqlite` (default) |
//! | `postgres://user:pass@host/db` (or `postgresql://`) | `PostgresHistory` and the PostgreSQL outbox | `postgres` |
//!
//! The event bus is the history store's own outbox unless an event bus URL is given:
//! `nats://host:4222` (feature `nats`) relays every committed event from the outbox to
//! NATS JetStream, where functions subscribe.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", dir.path().join("ops.db").display());
//! let backends = ops::backends::open(&url, None).await?;
//! assert_eq!(backends.history_url, url);
//! backends.shutdown().await;
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use std::sync::Arc;

use ops_events::{DeadLetters, EventBus};
use ops_tasks::HistoryStore;

use crate::config::scheme;
use crate::{Error, Result};

/// What [`open`] returns: the history store, the bus functions subscribe to, the
/// dead-letter store and the storage catalog, all in the history's database, and the
/// relay feeding an external bus.
pub struct Backends {
    /// Tasks, transitions and outputs, with the event outbox in the same database.
    pub history: Arc<dyn HistoryStore>,
    /// The history store's outbox, as an event bus.
    pub outbox: Arc<dyn EventBus>,
    /// Where functions subscribe: the outbox itself, or the bus it is relayed to.
    pub events: Arc<dyn EventBus>,
    /// Durable dead letters of functions, kept in the history database.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// The object catalog of `ops-storage`, in the history database: its
    /// `ops.storage.object.*` events go into the same outbox as the task events.
    pub storage_catalog: Arc<dyn ops_storage::Catalog>,
    /// The billing ledger of `ops-billing`, in the history database: postings and
    /// their events share the outbox.
    pub ledger: Arc<dyn ops_billing::ledger::Ledger>,
    /// Where usage records are kept (the ledger's database).
    pub usage: Arc<dyn ops_billing::UsageStore>,
    /// Where finalized invoices are kept (the ledger's database).
    pub invoices: Arc<dyn ops_billing::InvoiceStore>,
    /// Fleet records of `ops-provision` (feature `provision`), in the history database:
    /// each change and its events share the outbox.
    #[cfg(feature = "provision")]
    pub fleet_store: Arc<dyn ops_provision::state::FleetStore>,
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

/// The name of the outbox subscription that feeds an external bus.
pub const RELAY_SUBSCRIPTION: &str = "ops-relay";

type Opened = (
    Arc<dyn HistoryStore>,
    Arc<dyn EventBus>,
    Arc<dyn DeadLetters>,
    Arc<dyn ops_storage::Catalog>,
    (
        Arc<dyn ops_billing::ledger::Ledger>,
        Arc<dyn ops_billing::UsageStore>,
        Arc<dyn ops_billing::InvoiceStore>,
    ),
    FleetStoreSlot,
);

#[cfg(feature = "provision")]
type FleetStoreSlot = Arc<dyn ops_provision::state::FleetStore>;
#[cfg(not(feature = "provision"))]
type FleetStoreSlot = ();

/// Opens the history store at `history_url` and, when `events_url` is given, the
/// event bus that the outbox is relayed to. Errors name the URL (password redacted):
/// an unknown scheme, a backend whose feature is off, an unreachable server.
pub async fn open(history_url: &str, events_url: Option<&str>) -> Result<Backends> {
    let redacted = ops_events::redact_url(history_url);
    #[cfg_attr(
        not(feature = "provision"),
        allow(clippy::let_unit_value, unused_variables)
    )]
    let (history, outbox, dead_letters, storage_catalog, (ledger, usage, invoices), fleet_store) =
        match scheme(history_url) {
            None | Some("sqlite") => open_sqlite(history_url).await?,
            Some("postgres" | "postgresql") => open_postgres(history_url).await?,
            Some(other) => {
                return Err(Error::config(vec![format!(
                    "history: unsupported scheme {other:?} in {redacted}; use sqlite://PATH or \
                 postgres://HOST/DB"
                )]));
            }
        };
    let mut backends = Backends {
        history,
        outbox: outbox.clone(),
        events: outbox,
        dead_letters,
        storage_catalog,
        ledger,
        usage,
        invoices,
        #[cfg(feature = "provision")]
        fleet_store,
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

/// One SQL ledger as the ledger, the usage store and the invoice store of billing.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn billing<L>(
    ledger: L,
) -> (
    Arc<dyn ops_billing::ledger::Ledger>,
    Arc<dyn ops_billing::UsageStore>,
    Arc<dyn ops_billing::InvoiceStore>,
)
where
    L: ops_billing::ledger::Ledger + ops_billing::UsageStore + ops_billing::InvoiceStore,
{
    let ledger = Arc::new(ledger);
    (ledger.clone(), ledger.clone(), ledger)
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(url: &str) -> Result<Opened> {
    let history = ops_tasks::SqliteHistory::open(url).await?;
    let outbox = Arc::new(history.outbox().clone());
    let dead_letters = Arc::new(history.outbox().dead_letters());
    let catalog =
        ops_storage::catalog::SqliteCatalog::from_outbox(history.outbox().clone()).await?;
    let ledger = ops_billing::ledger::SqliteLedger::from_outbox(history.outbox().clone()).await?;
    let fleet_store = sqlite_fleet_store(history.outbox().clone()).await?;
    Ok((
        Arc::new(history),
        outbox,
        dead_letters,
        Arc::new(catalog),
        billing(ledger),
        fleet_store,
    ))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(url: &str) -> Result<Opened> {
    Err(Error::config(vec![format!(
        "history: {}: this build has no SQLite support (enable the `sqlite` feature of ops)",
        ops_events::redact_url(url)
    )]))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Opened> {
    let history = ops_tasks::history::PostgresHistory::connect(url).await?;
    let outbox = Arc::new(history.outbox().clone());
    let dead_letters = Arc::new(history.outbox().dead_letters());
    let catalog =
        ops_storage::catalog::PostgresCatalog::from_outbox(history.outbox().clone()).await?;
    let ledger = ops_billing::ledger::PostgresLedger::from_outbox(history.outbox().clone()).await?;
    let fleet_store = postgres_fleet_store(history.outbox().clone()).await?;
    Ok((
        Arc::new(history),
        outbox,
        dead_letters,
        Arc::new(catalog),
        billing(ledger),
        fleet_store,
    ))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str) -> Result<Opened> {
    Err(Error::config(vec![format!(
        "history: {}: this build has no PostgreSQL support (enable the `postgres` feature of \
         ops)",
        ops_events::redact_url(url)
    )]))
}

#[cfg_attr(not(feature = "nats"), allow(unused_variables))]
async fn attach_bus(backends: &mut Backends, url: &str) -> Result<()> {
    let redacted = ops_events::redact_url(url);
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
        Some("nats" | "tls") => Err(Error::config(vec![format!(
            "events: {redacted}: this build has no NATS support (enable the `nats` feature of ops)"
        )])),
        other => Err(Error::config(vec![format!(
            "events: unsupported scheme {:?} in {redacted}; use nats://HOST:PORT, or leave it out \
             to use the history store's outbox",
            other.unwrap_or("")
        )])),
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_and_missing_features_are_named() {
        let err = open("mysql://db/ops", None).await.unwrap_err();
        assert!(
            err.to_string().contains("unsupported scheme \"mysql\""),
            "{err}"
        );
        assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ops.db").display());
        let err = open(&url, Some("kafka://broker:9092")).await.unwrap_err();
        assert!(
            err.to_string().contains("unsupported scheme \"kafka\""),
            "{err}"
        );
        #[cfg(not(feature = "postgres"))]
        {
            let err = open("postgres://ops:secret@db/ops", None)
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains("enable the `postgres` feature"), "{text}");
            assert!(!text.contains("secret"), "the password is redacted: {text}");
        }
    }

    #[tokio::test]
    async fn sqlite_keeps_everything_in_one_database() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("nested/ops.db").display());
        let backends = open(&url, None).await.unwrap();
        assert!(dir.path().join("nested/ops.db").exists());
        assert_eq!(backends.events_url, None);
        assert_eq!(backends.dead_letters.count(None).await.unwrap(), 0);
        backends.shutdown().await;
    }
}

#[cfg(all(feature = "sqlite", feature = "provision"))]
async fn sqlite_fleet_store(outbox: ops_events::sqlite::SqliteOutbox) -> Result<FleetStoreSlot> {
    Ok(Arc::new(
        ops_provision::state::SqliteFleetStore::from_outbox(outbox).await?,
    ))
}

#[cfg(all(feature = "sqlite", not(feature = "provision")))]
async fn sqlite_fleet_store(_: ops_events::sqlite::SqliteOutbox) -> Result<FleetStoreSlot> {
    Ok(())
}

#[cfg(all(feature = "postgres", feature = "provision"))]
async fn postgres_fleet_store(
    outbox: ops_events::postgres::PostgresOutbox,
) -> Result<FleetStoreSlot> {
    Ok(Arc::new(
        ops_provision::state::PostgresFleetStore::from_outbox(outbox).await?,
    ))
}

#[cfg(all(feature = "postgres", not(feature = "provision")))]
async fn postgres_fleet_store(_: ops_events::postgres::PostgresOutbox) -> Result<FleetStoreSlot> {
    Ok(())
}
