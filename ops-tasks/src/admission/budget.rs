//! The budget hook: an optional asynchronous gate asked before each admitted task
//! starts. Billing plugs in here; a refusal leaves the task queued with the gate's
//! reason, visible through [`Tasks::explain`](crate::Tasks::explain), and it is asked
//! again after a while.

use std::time::Duration;

use async_trait::async_trait;
use ops_core::{Environment, Labels, Resources, TaskId, Tenant};

use crate::Result;

/// What the gate is asked about.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BudgetRequest {
    /// The task.
    pub task_id: TaskId,
    /// Who pays.
    pub tenant: Tenant,
    /// Its environment.
    pub environment: Environment,
    /// Its template.
    pub template: String,
    /// Its labels.
    pub labels: Labels,
    /// What it will hold while it runs.
    pub resources: Resources,
    /// Its timeout, an upper bound of its run time when set.
    pub timeout: Option<Duration>,
    /// Scavenger work.
    pub scavenger: bool,
    /// The attempt about to start.
    pub attempt: u32,
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetDecision {
    /// Start it.
    Allow,
    /// Keep it queued.
    Refuse {
        /// Shown to the tenant (e.g. "prepaid credit exhausted").
        reason: String,
        /// Ask again after this long; the policy's `budget_recheck` when `None`.
        retry_after: Option<Duration>,
    },
}

impl BudgetDecision {
    /// A refusal asked about again after the default delay.
    pub fn refuse(reason: impl Into<String>) -> Self {
        BudgetDecision::Refuse {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// Decides whether an admitted task may start now. An error counts as a refusal
/// (work does not start unpaid because billing is unreachable).
///
/// ```
/// use async_trait::async_trait;
/// use ops_tasks::admission::{BudgetDecision, BudgetGate, BudgetRequest};
///
/// struct NoGpusForFreeTier;
///
/// #[async_trait]
/// impl BudgetGate for NoGpusForFreeTier {
///     async fn check(&self, task: &BudgetRequest) -> ops_tasks::Result<BudgetDecision> {
///         Ok(if task.tenant.as_str().starts_with("free-") && task.resources.gpus.count > 0 {
///             BudgetDecision::refuse("the free tier has no GPU hours")
///         } else {
///             BudgetDecision::Allow
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait BudgetGate: Send + Sync + 'static {
    /// Whether `task` may start now.
    async fn check(&self, task: &BudgetRequest) -> Result<BudgetDecision>;

    /// Whether each of `tasks` (one admission pass, in admission order) may start now,
    /// one answer per task in order. The coordinator asks this; the default asks
    /// [`check`](Self::check) for each, concurrently. A gate that reserves money
    /// implements it with one write for the whole pass (the billing gate does).
    async fn check_many(&self, tasks: &[BudgetRequest]) -> Vec<Result<BudgetDecision>> {
        futures::future::join_all(tasks.iter().map(|t| self.check(t))).await
    }
}

#[async_trait]
impl<T: BudgetGate + ?Sized> BudgetGate for std::sync::Arc<T> {
    async fn check(&self, task: &BudgetRequest) -> Result<BudgetDecision> {
        (**self).check(task).await
    }

    async fn check_many(&self, tasks: &[BudgetRequest]) -> Vec<Result<BudgetDecision>> {
        (**self).check_many(tasks).await
    }
}
