//! Health checks behind `/healthz` (liveness) and `/readyz` (readiness).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

/// Which probe a check answers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Probe {
    /// Whether the process works at all (`/healthz`): a failure means "restart me".
    /// Liveness checks are part of readiness too.
    Liveness,
    /// Whether it can serve now (`/readyz`): a database reachable, a backlog drained.
    Readiness,
}

/// A health check a part registers (the history database answers, the bus is
/// reachable). Each check should answer quickly: a check is given up on after the
/// monitor's check timeout and counts as failed.
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// A short stable name (`history`, `events`).
    fn name(&self) -> &str;

    /// `Ok` when healthy, else why not.
    async fn check(&self) -> Result<(), String>;
}

#[async_trait]
impl<T: HealthCheck + ?Sized> HealthCheck for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    async fn check(&self) -> Result<(), String> {
        (**self).check().await
    }
}

/// A [`HealthCheck`] from an async closure; see [`health_check_fn`].
pub struct FnHealthCheck<F> {
    name: String,
    f: F,
}

/// Makes a [`HealthCheck`] from an async closure.
///
/// ```
/// use ops_monitor::{health_check_fn, HealthCheck};
///
/// let check = health_check_fn("disk", || async { Ok(()) });
/// assert_eq!(check.name(), "disk");
/// ```
pub fn health_check_fn<F, Fut>(name: impl Into<String>, f: F) -> FnHealthCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    FnHealthCheck {
        name: name.into(),
        f,
    }
}

#[async_trait]
impl<F, Fut> HealthCheck for FnHealthCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> Result<(), String> {
        (self.f)().await
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The check.
    pub name: String,
    /// The probe it answers for.
    pub probe: Probe,
    /// Why it failed; `None` when it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a probe: every check that belongs to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Whether every check passed.
    pub healthy: bool,
    /// Each check, in registration order.
    pub checks: Vec<CheckResult>,
}

impl HealthReport {
    /// The report as text, one line a check in the style of Kubernetes' verbose
    /// health endpoints: `[+]history ok`, `[-]events failed: connection refused`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            match &c.error {
                None => out.push_str(&format!("[+]{} ok\n", c.name)),
                Some(e) => out.push_str(&format!("[-]{} failed: {e}\n", c.name)),
            }
        }
        out.push_str(if self.healthy { "ok\n" } else { "unhealthy\n" });
        out
    }
}
