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

fn hold_of(task: &BudgetRequest) -> HoldRequest<'_> {
    HoldRequest {
        task_id: task.task_id,
        attempt: task.attempt,
        tenant: &task.tenant,
        environment: task.environment.as_str(),
        template: &task.template,
        resources: &task.resources,
        timeout: task.timeout,
        scavenger: task.scavenger,
    }
}

fn decision(reservation: Result<Reservation>) -> BudgetDecision {
    match reservation {
        Ok(Reservation::Held { .. } | Reservation::Free) => BudgetDecision::Allow,
        Ok(Reservation::Insufficient { needed, available }) => {
            BudgetDecision::refuse(format!("budget: needs {needed}, {available} available"))
        }
        // The coordinator keeps the task queued with this reason and asks again.
        Err(e) => BudgetDecision::refuse(format!("budget: the ledger failed ({e})")),
    }
}

#[async_trait]
impl BudgetGate for BillingGate {
    async fn check(&self, task: &BudgetRequest) -> ops_tasks::Result<BudgetDecision> {
        Ok(decision(self.0.reserve(&hold_of(task)).await))
    }

    /// Holds for the whole admission pass with one ledger transaction.
    async fn check_many(&self, tasks: &[BudgetRequest]) -> Vec<ops_tasks::Result<BudgetDecision>> {
        let holds: Vec<HoldRequest<'_>> = tasks.iter().map(hold_of).collect();
        match self.0.reserve_many(&holds).await {
            Ok(answers) => answers.into_iter().map(|r| Ok(decision(r))).collect(),
            Err(e) => {
                let refusal = decision(Err(e));
                tasks.iter().map(|_| Ok(refusal.clone())).collect()
            }
        }
    }
}
