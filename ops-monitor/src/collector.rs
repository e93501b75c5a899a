//! [`Collector`]: a source of metrics read on each scrape.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{CollectError, Descriptor, Family};

/// A source of metrics read on each scrape (the host, the GPUs, the event spine).
///
/// A collector declares its families up front ([`describe`](Self::describe)), so that
/// two collectors claiming one name are a start-up error, and hands in their samples
/// on each scrape ([`collect`](Self::collect)). A failed collect leaves the collector's
/// families out of that scrape only: the others are exported as usual and
/// `ops_collector_up{collector="<name>"}` is 0, with the reason logged.
///
/// Families a collector hands in without having declared them are dropped (with a
/// warning): the exposition never holds a family declared twice.
#[async_trait]
pub trait Collector: Send + Sync + 'static {
    /// A short stable name (`host`, `gpu`, `events`): the `collector` label of
    /// `ops_collector_up`.
    fn name(&self) -> &str;

    /// The families this collector may hand in.
    fn describe(&self) -> Vec<Descriptor>;

    /// Reads the current values.
    async fn collect(&self) -> Result<Vec<Family>, CollectError>;
}

#[async_trait]
impl<T: Collector + ?Sized> Collector for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn describe(&self) -> Vec<Descriptor> {
        (**self).describe()
    }

    async fn collect(&self) -> Result<Vec<Family>, CollectError> {
        (**self).collect().await
    }
}
