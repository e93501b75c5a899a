//! Billing wired into the platform: [`BillingGate`] holds a task's worst-case cost
//! from its tenant's prepaid credit before it starts (ops-tasks' budget hook), and the
//! billing function on the bus meters usage and settles each task from its final event.
//! Everything of `ops-billing` is re-exported here.

pub use ops_billing::*;

use async_trait::async_trait;
use ops_tasks::admission::{BudgetDecision, BudgetGate, BudgetRequest};

/// The budget gate of a billed platform: a task starts only once its worst case is
/// held; otherwise it stays queued with `budget: needs 1.20 EUR, 0.40 EUR available`.
#[derive(Clone, Debug)]
pub struct BillingGate(pub Budgets);

#[async_trait]
impl BudgetGate for BillingGate {
    async fn check(&self, task: &BudgetRequest) -> ops_tasks::Result<BudgetDecision> {
        let hold = HoldRequest {
            task_id: task.task_id,
            attempt: task.attempt,
            tenant: &task.tenant,
            environment: task.environment.as_str(),
            template: &task.template,
            resources: &task.resources,
            timeout: task.timeout,
            scavenger: task.scavenger,
        };
        match self.0.reserve(&hold).await {
            Ok(Reservation::Held { .. } | Reservation::Free) => Ok(BudgetDecision::Allow),
            Ok(Reservation::Insufficient { needed, available }) => Ok(BudgetDecision::refuse(
                format!("budget: needs {needed}, {available} available"),
            )),
            // The coordinator keeps the task queued with this reason and asks again.
            Err(e) => Ok(BudgetDecision::refuse(format!(
                "budget: the ledger failed ({e})"
            ))),
        }
    }
}
