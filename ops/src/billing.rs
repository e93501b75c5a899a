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
        Ok(Reservation::OverLimit {
            limit,
            needed,
            left,
        }) => BudgetDecision::refuse(format!(
            "budget: spending limit of {limit}: needs {needed}, {left} left"
        )),
        Ok(other) => BudgetDecision::refuse(format!("budget: not held ({other:?})")),
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

/// The `cancel` policy of `[billing] on_exhausted`: on `ops.billing.budget.exhausted`,
/// cancels the tenant's running tasks (each is then settled to what it used). Tasks
/// that ended meanwhile are left as they are.
#[derive(Clone, Debug)]
pub struct CancelOnExhausted {
    tasks: std::sync::Arc<std::sync::OnceLock<ops_tasks::Tasks>>,
}

impl CancelOnExhausted {
    /// The function's name (its durable subscription and dead letters).
    pub const NAME: &'static str = "ops-billing-cancel-on-exhausted";

    /// Cancels through `tasks` once it is set (the platform sets it when its task
    /// service has started; events before that are retried).
    pub fn new(tasks: std::sync::Arc<std::sync::OnceLock<ops_tasks::Tasks>>) -> Self {
        Self { tasks }
    }
}

#[async_trait]
impl ops_events::Function for CancelOnExhausted {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn call(&self, event: &ops_core::Event) -> Result<(), ops_events::FunctionError> {
        if event.ty != ops_core::event_types::BILLING_BUDGET_EXHAUSTED {
            return Ok(());
        }
        let Some(tasks) = self.tasks.get() else {
            return Err(ops_events::FunctionError::retryable(
                "the task service has not started yet",
            ));
        };
        let tenant = event.data["tenant"]
            .as_str()
            .and_then(|t| ops_core::Tenant::parse(t).ok())
            .ok_or_else(|| {
                ops_events::FunctionError::permanent(format!("{}: no valid data.tenant", event.id))
            })?;
        let mine = tasks.tenant(&tenant);
        let running = mine
            .list(
                &ops_tasks::TaskQuery::new()
                    .status(ops_core::TaskStatus::Running)
                    .limit(1000),
            )
            .await
            .map_err(|e| ops_events::FunctionError::retryable(e.to_string()))?;
        for task in running.tasks {
            tracing::info!(tenant = %tenant, task_id = %task.id, "credit exhausted: cancelling");
            if let Err(e) = mine.cancel(task.id).await {
                tracing::warn!(task_id = %task.id, error = %e, "could not cancel");
            }
        }
        Ok(())
    }
}

/// Expires granted credit whose time has come, every `interval`, for grants made by
/// other processes (a reservation expires those this process made when they are due).
pub(crate) fn spawn_grant_expiry(
    budgets: ops_billing::Budgets,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match budgets.expire_grants(chrono::Utc::now()).await {
                Ok(expired) if !expired.is_empty() => {
                    tracing::info!(grants = expired.len(), "granted credit expired");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "expiring granted credit failed"),
            }
        }
    })
}

/// The payment provider `[billing.payments]` names (checked with the config).
pub(crate) fn payment_provider(
    config: Option<&crate::config::PaymentsConfig>,
) -> crate::Result<std::sync::Arc<dyn PaymentProvider>> {
    let Some(config) = config else {
        return Ok(std::sync::Arc::new(NoPaymentProvider));
    };
    match config.provider.as_str() {
        #[cfg(feature = "stripe")]
        "stripe" => {
            let env = |var: &Option<String>| {
                var.as_deref()
                    .and_then(|v| std::env::var(v).ok())
                    .unwrap_or_default()
            };
            let mut stripe = payment::stripe::StripeConfig::new(env(&config.api_key_env));
            if let Some(url) = &config.base_url {
                stripe = stripe.base_url(url.clone());
            }
            for secret in env(&config.webhook_secrets_env)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                stripe = stripe.webhook_secret(secret);
            }
            for (meter, event) in &config.meters {
                stripe = stripe.meter(meter.clone(), event.clone());
            }
            Ok(std::sync::Arc::new(payment::stripe::StripeProvider::new(
                stripe,
            )?))
        }
        _ => Ok(std::sync::Arc::new(NoPaymentProvider)),
    }
}
