//! [`Provider`]: the contract every source of servers implements.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Labels, Offering, Result, Server, ServerSpec};

/// A source of servers: a cloud account, an inventory of owned machines, this host.
///
/// - [`offerings`](Self::offerings): what can be created, where, at what price.
/// - [`create`](Self::create) is idempotent: a spec with a [`TOKEN`](crate::TOKEN)
///   label that matches a server already there returns that server instead of making a
///   second (a retried create after a timeout or a crash).
/// - [`list`](Self::list) returns only servers carrying every label of the selector;
///   callers pass at least `ops.managed-by=ops`, so Ops only ever sees (and touches)
///   what it made.
/// - [`delete`](Self::delete) succeeds when the server is already gone.
/// - [`wait_ready`](Self::wait_ready) polls within the provider's rate limit.
///
/// Every implementation runs the conformance suite (`testkit`, feature `testkit`).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A short stable name (`hetzner`, `static`), used in offerings and errors.
    fn name(&self) -> &str;

    /// Everything this provider can create now, with prices.
    async fn offerings(&self) -> Result<Vec<Offering>>;

    /// Creates a server, or returns the one a previous try with the same token made.
    async fn create(&self, spec: &ServerSpec) -> Result<Server>;

    /// The servers carrying every label of `selector`.
    async fn list(&self, selector: &Labels) -> Result<Vec<Server>>;

    /// One server by id, `None` when it does not exist.
    async fn get(&self, id: &str) -> Result<Option<Server>>;

    /// Deletes a server; `Ok` when it is gone (or was never there).
    async fn delete(&self, id: &str) -> Result<()>;

    /// Waits until the server runs, up to `timeout`.
    async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<Server>;

    /// Whether servers can be created here from the OS image `image`, asked at plan
    /// time so that an unknown image is an error before anything is created. The
    /// provided implementation says yes: providers without images (owned machines,
    /// this host) ignore the field.
    async fn has_image(&self, image: &str) -> Result<bool> {
        let _ = image;
        Ok(true)
    }
}

#[async_trait]
impl<T: Provider + ?Sized> Provider for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn offerings(&self) -> Result<Vec<Offering>> {
        (**self).offerings().await
    }
    async fn create(&self, spec: &ServerSpec) -> Result<Server> {
        (**self).create(spec).await
    }
    async fn list(&self, selector: &Labels) -> Result<Vec<Server>> {
        (**self).list(selector).await
    }
    async fn get(&self, id: &str) -> Result<Option<Server>> {
        (**self).get(id).await
    }
    async fn delete(&self, id: &str) -> Result<()> {
        (**self).delete(id).await
    }
    async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<Server> {
        (**self).wait_ready(id, timeout).await
    }
    async fn has_image(&self, image: &str) -> Result<bool> {
        (**self).has_image(image).await
    }
}
