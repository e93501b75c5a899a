//! The coordinator loop: one task that owns the queue and the running set, admits work
//! within capacity, launches it, and turns executor updates into transitions.
//!
//! Each round drains commands and executor updates, admits and launches what fits,
//! and writes every resulting change in one transaction — so throughput grows with
//! load instead of paying one commit per event.
//!
//! Several coordinators may share one history store. Each holds a [`Lease`] and owns
//! the tasks it runs; every commit is fenced by that ownership. Between rounds it
//! renews its lease (learning of cancellations requested elsewhere), takes over the
//! tasks of coordinators whose lease expired, and claims unowned queued tasks when it
//! has room.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ops_core::{Event, Reason, TaskId, TaskStatus, event_types};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::{
    TasksConfig, attempt_event, event_with, reason_status, request_of, task_data, task_event,
};
use crate::admission::{
    Admission, AdmissionPolicy, BudgetDecision, BudgetGate, BudgetRequest, Preemption, QueueInfo,
    TenantUsage,
};
use crate::history::{ChangeBatch, HistoryStore, Lease, OutputRecord, TaskRecord, Transition};
use crate::{Error, Executor, ExecutorUpdate, Outcome, Reattached, Result, RunHandle};

pub(crate) enum Command {
    Enqueue(Vec<TaskRecord>),
    Cancel(TaskId, oneshot::Sender<Result<()>>),
    /// Stop (true) or resume (false) admitting queued tasks.
    Pause(bool),
    /// Why a queued task waits.
    Explain(TaskId, oneshot::Sender<Option<QueueInfo>>),
    /// Tenants' standing per environment.
    Usage(oneshot::Sender<Vec<TenantUsage>>),
    Shutdown,
}

struct Running {
    record: TaskRecord,
    handle: Option<RunHandle>,
    cancel_requested: bool,
    /// Admission asked for it to be stopped to make room: its end requeues it.
    preempting: bool,
}

impl Running {
    fn new(record: TaskRecord, handle: Option<RunHandle>) -> Self {
        Self {
            record,
            handle,
            cancel_requested: false,
            preempting: false,
        }
    }
}

/// Claimed-but-not-started tasks a coordinator holds at most when `max_running` is 0.
const CLAIM_AHEAD: usize = 32;

/// What admission runs on: the policy, and the budget hook if there is one.
pub(crate) struct AdmissionGate {
    pub(crate) policy: Arc<AdmissionPolicy>,
    pub(crate) budget: Option<Arc<dyn BudgetGate>>,
}

pub(crate) struct Coordinator {
    history: Arc<dyn HistoryStore>,
    executor: Arc<dyn Executor>,
    config: TasksConfig,
    live: broadcast::Sender<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    updates_tx: mpsc::UnboundedSender<ExecutorUpdate>,
    updates: mpsc::UnboundedReceiver<ExecutorUpdate>,
    /// Queued tasks; their order and admission live in `admission`.
    queue: HashMap<TaskId, TaskRecord>,
    admission: Admission,
    budget: Option<Arc<dyn BudgetGate>>,
    /// Tasks admission can never run (found when queued): failed in the next round.
    rejected: Vec<(TaskRecord, String)>,
    waiting: HashMap<TaskId, TaskRecord>,
    running: HashMap<TaskId, Running>,
    shutdown: bool,
    pending: Option<ChangeBatch>,
    paused: bool,
    lease: Lease,
    next_heartbeat: Instant,
    next_claim: Instant,
}

impl Coordinator {
    pub(crate) fn new(
        history: Arc<dyn HistoryStore>,
        executor: Arc<dyn Executor>,
        config: TasksConfig,
        live: broadcast::Sender<Event>,
        commands: mpsc::UnboundedReceiver<Command>,
        lease: Lease,
        gate: AdmissionGate,
    ) -> Self {
        let AdmissionGate { policy, budget } = gate;
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let now = Instant::now();
        Self {
            history,
            executor,
            config,
            live,
            commands,
            updates_tx,
            updates,
            queue: HashMap::new(),
            admission: Admission::new(policy),
            budget,
            rejected: Vec::new(),
            waiting: HashMap::new(),
            running: HashMap::new(),
            shutdown: false,
            pending: None,
            paused: false,
            lease,
            next_heartbeat: now,
            next_claim: now,
        }
    }

    /// Takes the lease. `force` replaces a predecessor's unexpired lease (the caller
    /// knows it is dead); otherwise a predecessor that may still be alive is waited for
    /// once, up to one lease period.
    pub(crate) async fn acquire(&mut self, force: bool) -> Result<()> {
        match self.history.acquire_lease(&self.lease, force).await {
            Err(Error::LeaseHeld { owner, until }) => {
                // Until it expires, plus a heartbeat: the others take over what the
                // lapsed lease held before this coordinator registers again.
                let wait = (until - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(self.lease.ttl)
                    + self.config.coordinator.heartbeat
                    + Duration::from_millis(100);
                tracing::warn!(%owner, %until, ?wait, "coordinator id is leased by another incarnation; waiting for that lease to expire");
                tokio::time::sleep(wait).await;
                self.history.acquire_lease(&self.lease, false).await
            }
            other => other,
        }?;
        tracing::info!(owner = %self.lease.owner, incarnation = %self.lease.incarnation, "coordinator lease acquired");
        let now = Instant::now();
        self.next_heartbeat = now + self.config.coordinator.heartbeat;
        self.next_claim = now;
        Ok(())
    }

    /// Makes memory agree with the store: drops tasks another coordinator took over
    /// (stopping their processes) and adopts owned tasks not yet in memory (all of
    /// them at start-up).
    pub(crate) async fn resync(&mut self) -> Result<()> {
        let owned = self.history.owned(&self.lease.owner).await?;
        let owned_ids: HashSet<TaskId> = owned.iter().map(|r| r.id).collect();
        let gone: Vec<TaskId> = self
            .queue
            .keys()
            .filter(|id| !owned_ids.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.queue.remove(&id);
            self.admission.remove(id);
        }
        self.waiting.retain(|id, _| owned_ids.contains(id));
        let lost: Vec<TaskId> = self
            .running
            .keys()
            .filter(|id| !owned_ids.contains(id))
            .copied()
            .collect();
        for id in lost {
            self.drop_running(id, "taken over by another coordinator");
        }
        let known: HashSet<TaskId> = self
            .queue
            .keys()
            .copied()
            .chain(self.waiting.keys().copied())
            .chain(self.running.keys().copied())
            .collect();
        let new: Vec<TaskRecord> = owned
            .into_iter()
            .filter(|r| !known.contains(&r.id))
            .collect();
        let mut batch = ChangeBatch::default();
        self.adopt(new, &mut batch).await;
        self.commit(batch).await
    }

    /// Forgets a running task this coordinator no longer owns, stopping its process.
    fn drop_running(&mut self, id: TaskId, why: &str) {
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        self.admission.release(id);
        tracing::warn!(task_id = %id, why, "no longer owned here; stopping its process");
        if let Some(handle) = running.handle {
            let executor = self.executor.clone();
            tokio::spawn(async move {
                if let Err(e) = executor.cancel(&handle).await {
                    tracing::warn!(task_id = %id, error = %e, "could not stop a task no longer owned");
                }
            });
        }
    }

    /// Drops every trace of a task whose change was refused by the store (another
    /// coordinator owns it now), stopping its process if it runs here.
    fn forget(&mut self, id: TaskId) {
        tracing::warn!(task_id = %id, "change refused by the store: the task is owned elsewhere now");
        self.queue.remove(&id);
        self.admission.remove(id);
        self.waiting.remove(&id);
        self.drop_running(id, "change refused by the store");
    }

    /// Renews the lease (reacting to a lost one), applies cancellations requested
    /// elsewhere, and takes over dead coordinators' tasks.
    async fn heartbeat(&mut self, batch: &mut ChangeBatch) {
        let cfg = self.config.coordinator.clone();
        let renewal = match self.history.renew_lease(&self.lease).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed; retrying");
                self.next_heartbeat = Instant::now() + cfg.heartbeat.min(Duration::from_secs(1));
                return;
            }
        };
        if !renewal.alive {
            tracing::error!(owner = %self.lease.owner, "coordinator lease expired; re-acquiring it and keeping only the tasks still owned");
            self.lease = Lease::new(self.lease.owner.clone(), cfg.lease_ttl);
            let result = match self.acquire(false).await {
                Ok(()) => self.resync().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not re-acquire the lease; retrying");
                self.next_heartbeat = Instant::now() + cfg.heartbeat.min(Duration::from_secs(1));
            }
            return;
        }
        for id in renewal.cancel_requested {
            let already = self.running.get(&id).is_some_and(|r| r.cancel_requested);
            if !already {
                tracing::info!(task_id = %id, "cancellation requested through the store");
                let _ = self.cancel(id, batch);
            }
        }
        match self
            .history
            .take_over(&self.lease, self.config.batch_size as u32)
            .await
        {
            Ok(records) if !records.is_empty() => {
                tracing::warn!(
                    count = records.len(),
                    "took over tasks of a coordinator whose lease expired"
                );
                self.adopt(records, batch).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "take-over failed; will retry"),
        }
        self.next_heartbeat = Instant::now() + cfg.heartbeat;
    }

    /// Claims unowned queued tasks when there is room to run more.
    async fn claim(&mut self) {
        let now = Instant::now();
        self.next_claim = now + self.config.coordinator.poll;
        if self.paused || self.shutdown {
            return;
        }
        // Claim only what can start soon, so that other coordinators get the rest:
        // up to `max_running` when set, otherwise a short run-ahead queue.
        let limit = if self.config.max_running > 0 {
            self.config.max_running.saturating_sub(self.running.len())
        } else {
            CLAIM_AHEAD
        }
        .min(self.config.batch_size);
        let want = limit.saturating_sub(self.queue.len());
        if want == 0 || !self.admission.has_room() {
            return;
        }
        match self.history.claim(&self.lease, want as u32).await {
            Ok(records) => {
                if records.len() == want {
                    // There may be more: look again next round.
                    self.next_claim = now;
                }
                if !records.is_empty() {
                    tracing::debug!(count = records.len(), "claimed queued tasks");
                }
                for record in records {
                    self.enqueue(record);
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming queued tasks failed; will retry"),
        }
    }

    /// Takes charge of owned tasks not in memory (after a restart or a take-over):
    /// queued ones are queued again, retrying ones wait for their backoff, running ones
    /// are re-attached or ended with a reason.
    async fn adopt(&mut self, records: Vec<TaskRecord>, batch: &mut ChangeBatch) {
        let (mut queued, mut reattached, mut lost) = (0, 0, 0);
        for record in records {
            match record.status {
                TaskStatus::Submitted | TaskStatus::Queued => {
                    queued += 1;
                    self.enqueue(record);
                }
                TaskStatus::Retrying => {
                    self.waiting.insert(record.id, record);
                }
                TaskStatus::Running => {
                    let outcome = match &record.run_handle {
                        Some(handle) if handle.executor == self.executor.name() => {
                            match self
                                .executor
                                .reattach(handle, &record.spec, self.updates_tx.clone())
                                .await
                            {
                                Ok(Reattached::Running) => None,
                                Ok(Reattached::Gone(outcome)) => Some(outcome),
                                Err(e) => Some(lost_outcome(&e.to_string())),
                            }
                        }
                        Some(handle) => Some(lost_outcome(&format!(
                            "started by executor {:?}, not {:?}",
                            handle.executor,
                            self.executor.name()
                        ))),
                        None => Some(lost_outcome("no run handle was recorded")),
                    };
                    let id = record.id;
                    self.admission.occupy(id, &request_of(&record));
                    let handle = record.run_handle.clone();
                    self.running.insert(id, Running::new(record, handle));
                    match outcome {
                        None => reattached += 1,
                        Some(outcome) => {
                            lost += 1;
                            let attempt = self.running[&id].record.attempt;
                            self.finish(id, attempt, outcome, batch);
                        }
                    }
                }
                _ => {}
            }
        }
        if queued + reattached + lost > 0 {
            tracing::info!(queued, reattached, lost, "adopted unfinished tasks");
        }
    }

    fn enqueue(&mut self, record: TaskRecord) {
        match self.admission.enqueue(record.id, &request_of(&record)) {
            Ok(()) => {
                self.queue.insert(record.id, record);
            }
            Err(e) => self.rejected.push((record, e.to_string())),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        while !self.shutdown {
            match self.round().await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    // The round's changes are kept in memory and retried; nothing is lost.
                    tracing::error!(error = %e, "coordinator round failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Hand queued tasks back and mark the lease expired, so that a restart (or
        // another coordinator) takes over at once.
        if let Err(e) = self.history.release_lease(&self.lease).await {
            tracing::warn!(error = %e, "could not release the coordinator lease; it will expire");
        }
        tracing::debug!("coordinator stopped");
    }

    async fn round(&mut self) -> Result<()> {
        let mut batch = ChangeBatch::default();
        let mut cancel_replies = Vec::new();
        // 1. Commands.
        while let Ok(cmd) = self.commands.try_recv() {
            self.command(cmd, &mut batch, &mut cancel_replies);
        }
        // 2. Executor updates.
        let mut n = 0;
        while n < self.config.batch_size {
            let Ok(update) = self.updates.try_recv() else {
                break;
            };
            self.update(update, &mut batch);
            n += 1;
        }
        // 3. Lease, take-over and claims, when due.
        let now = Instant::now();
        if now >= self.next_heartbeat {
            self.heartbeat(&mut batch).await;
        }
        if now >= self.next_claim {
            self.claim().await;
        }
        // 4. Retries whose backoff has elapsed go back to the queue.
        self.requeue_due(&mut batch);
        // 5. Admission and launch.
        self.admit_and_launch(&mut batch).await;

        let had_work = !batch.is_empty();
        tracing::trace!(
            queued = self.queue.len(),
            running = self.running.len(),
            waiting = self.waiting.len(),
            inserts = batch.inserts.len(),
            transitions = batch.transitions.len(),
            outputs = batch.outputs.len(),
            "coordinator round"
        );
        self.commit(batch).await?;
        for (reply, result) in cancel_replies {
            let _: Result<(), _> = oneshot::Sender::send(reply, result);
        }
        if had_work || self.shutdown || !self.updates.is_empty() {
            return Ok(());
        }
        // 6. Nothing to do: sleep until a command, an update, the next retry or the
        //    next lease/claim check is due.
        let next_retry = self
            .waiting
            .values()
            .filter_map(|r| r.not_before)
            .min()
            .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600));
        let now = Instant::now();
        let next_maintenance = self
            .next_heartbeat
            .min(self.next_claim)
            .saturating_duration_since(now);
        let next_retry = next_retry.min(next_maintenance);
        tokio::select! {
            cmd = self.commands.recv() => match cmd {
                Some(cmd) => {
                    let mut batch = ChangeBatch::default();
                    let mut replies = Vec::new();
                    self.command(cmd, &mut batch, &mut replies);
                    self.commit(batch).await?;
                    for (reply, result) in replies {
                        let _ = reply.send(result);
                    }
                }
                None => self.shutdown = true,
            },
            Some(update) = self.updates.recv() => {
                let mut batch = ChangeBatch::default();
                self.update(update, &mut batch);
                self.commit(batch).await?;
            }
            _ = tokio::time::sleep(next_retry) => {}
        }
        Ok(())
    }

    fn command(
        &mut self,
        cmd: Command,
        batch: &mut ChangeBatch,
        replies: &mut Vec<(oneshot::Sender<Result<()>>, Result<()>)>,
    ) {
        match cmd {
            Command::Enqueue(records) => {
                for r in records {
                    self.enqueue(r);
                }
            }
            Command::Cancel(id, reply) => {
                let result = self.cancel(id, batch);
                replies.push((reply, result));
            }
            Command::Pause(paused) => self.paused = paused,
            Command::Explain(id, reply) => {
                let _ = reply.send(self.admission.explain(id, Utc::now()));
            }
            Command::Usage(reply) => {
                let _ = reply.send(self.admission.usage());
            }
            Command::Shutdown => self.shutdown = true,
        }
    }

    fn cancel(&mut self, id: TaskId, batch: &mut ChangeBatch) -> Result<()> {
        let record = match self.queue.remove(&id) {
            Some(record) => {
                self.admission.remove(id);
                Some(record)
            }
            None => self.waiting.remove(&id),
        };
        if let Some(mut record) = record {
            let from = record.status;
            record.status = TaskStatus::Cancelled;
            record.reason = Some(Reason::Cancelled);
            record.message = Some("cancelled by user".into());
            record.finished_at = Some(Utc::now());
            record.not_before = None;
            self.transition(from, record, event_types::TASK_CANCELLED, batch);
            return Ok(());
        }
        if let Some(running) = self.running.get_mut(&id)
            && !running.cancel_requested
        {
            running.cancel_requested = true;
            if let Some(handle) = running.handle.clone() {
                let executor = self.executor.clone();
                tokio::spawn(async move {
                    if let Err(e) = executor.cancel(&handle).await {
                        tracing::warn!(task_id = %id, error = %e, "cancel failed");
                    }
                });
            }
        }
        // Not ours (already final): nothing to do.
        Ok(())
    }

    fn update(&mut self, update: ExecutorUpdate, batch: &mut ChangeBatch) {
        match update {
            ExecutorUpdate::Started { task_id, gpus, .. } => {
                if !gpus.is_empty() {
                    tracing::debug!(%task_id, ?gpus, "GPUs assigned");
                }
            }
            ExecutorUpdate::OutputCreated {
                task_id,
                attempt,
                path,
                size,
            } => {
                let Some(running) = self.running.get(&task_id) else {
                    return;
                };
                let mut data = task_data(&running.record);
                data.attempt = attempt;
                data.output = Some(path.clone());
                data.output_size = Some(size);
                let event = event_with(
                    &self.config.source,
                    event_types::TASK_OUTPUT_CREATED,
                    &running.record,
                    &data,
                );
                batch.outputs.push((
                    OutputRecord {
                        task_id,
                        path,
                        attempt,
                        size,
                        created_at: Utc::now(),
                    },
                    event,
                ));
            }
            ExecutorUpdate::Finished {
                task_id,
                attempt,
                outcome,
            } => self.finish(task_id, attempt, outcome, batch),
        }
    }

    /// Applies an attempt's end: success, retry with backoff, or a final failure.
    fn finish(&mut self, id: TaskId, attempt: u32, outcome: Outcome, batch: &mut ChangeBatch) {
        let Some(running) = self.running.get(&id) else {
            tracing::debug!(task_id = %id, "finish for a task not running here");
            return;
        };
        if running.record.attempt != attempt {
            tracing::debug!(task_id = %id, attempt, "finish for an old attempt ignored");
            return;
        }
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        let preempted = !running.cancel_requested
            && (outcome.reason == Reason::Preempted
                || (running.preempting && outcome.reason != Reason::Completed));
        if preempted {
            self.requeue_preempted(running.record, outcome, batch);
            return;
        }
        self.admission.release(id);
        let mut record = running.record;
        let mut reason = outcome.reason;
        if running.cancel_requested && reason != Reason::Completed {
            reason = Reason::Cancelled;
        }
        record.usage.accumulate(&outcome.usage);
        record.exit_code = outcome.exit_code;
        record.reason = Some(reason);
        record.message =
            outcome
                .message
                .clone()
                .or_else(|| match (outcome.exit_code, outcome.signal) {
                    (Some(code), _) if code != 0 => Some(format!("exited with code {code}")),
                    (_, Some(sig)) => Some(format!("killed by signal {sig}")),
                    _ => None,
                });
        let now = Utc::now();
        if reason.is_retryable() && record.attempt < record.max_attempts {
            let delay = record.retry.delay(record.attempt);
            record.status = TaskStatus::Retrying;
            record.not_before = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
            let event = attempt_event(
                &self.config.source,
                event_types::TASK_RETRYING,
                &record,
                outcome.usage,
            );
            batch
                .transitions
                .push(Transition::new(TaskStatus::Running, record.clone(), event));
            tracing::info!(task_id = %id, attempt = record.attempt, %reason, ?delay, "attempt failed; retrying");
            self.waiting.insert(id, record);
            return;
        }
        let status = reason_status(reason);
        record.status = status;
        record.finished_at = Some(now);
        record.not_before = None;
        let ty = match status {
            TaskStatus::Succeeded => event_types::TASK_SUCCEEDED,
            TaskStatus::TimedOut => event_types::TASK_TIMED_OUT,
            TaskStatus::Cancelled => event_types::TASK_CANCELLED,
            _ => event_types::TASK_FAILED,
        };
        let event = attempt_event(&self.config.source, ty, &record, outcome.usage);
        batch
            .transitions
            .push(Transition::new(TaskStatus::Running, record, event));
    }

    /// A preempted attempt: `ops.task.preempted` with the attempt's usage (also kept
    /// apart in `preempted_usage`, so that the final event tells billing which part of
    /// the total it already saw), and the task goes back to the queue in its old place
    /// (preemption uses up none of its retries).
    fn requeue_preempted(
        &mut self,
        mut record: TaskRecord,
        outcome: Outcome,
        batch: &mut ChangeBatch,
    ) {
        let id = record.id;
        record.usage.accumulate(&outcome.usage);
        record.preempted_usage.accumulate(&outcome.usage);
        record.status = TaskStatus::Queued;
        record.reason = Some(Reason::Preempted);
        record.message = Some("preempted to make room for other work; queued again".to_owned());
        record.exit_code = outcome.exit_code;
        record.max_attempts = record.max_attempts.saturating_add(1);
        tracing::info!(task_id = %id, attempt = record.attempt, "preempted; requeued");
        let event = attempt_event(
            &self.config.source,
            event_types::TASK_PREEMPTED,
            &record,
            outcome.usage,
        );
        batch
            .transitions
            .push(Transition::new(TaskStatus::Running, record.clone(), event));
        if self.admission.requeue(id) {
            self.queue.insert(id, record);
        } else {
            self.enqueue(record);
        }
    }

    /// Asks the executor to stop the victims admission chose, with the grace period.
    fn preempt(&mut self, victims: Vec<Preemption>) {
        let grace = self.admission.policy().grace();
        for p in victims {
            let Some(running) = self.running.get_mut(&p.victim) else {
                // Not running here any more: nothing holds its room.
                self.admission.release(p.victim);
                continue;
            };
            if running.preempting || running.cancel_requested {
                continue;
            }
            running.preempting = true;
            tracing::info!(task_id = %p.victim, for_task = %p.for_task, cause = ?p.cause, ?grace, "preempting");
            if let Some(handle) = running.handle.clone() {
                let executor = self.executor.clone();
                let id = p.victim;
                tokio::spawn(async move {
                    if let Err(e) = executor.preempt(&handle, grace).await {
                        tracing::warn!(task_id = %id, error = %e, "preemption failed");
                    }
                });
            }
        }
    }

    /// Fails tasks admission can never run (e.g. after a configuration change).
    fn fail_rejected(&mut self, batch: &mut ChangeBatch) {
        for (mut record, why) in std::mem::take(&mut self.rejected) {
            let from = record.status;
            tracing::warn!(task_id = %record.id, %why, "task can never be admitted; failing it");
            record.status = TaskStatus::Failed;
            record.reason = Some(Reason::LaunchFailed);
            record.message = Some(why);
            record.finished_at = Some(Utc::now());
            record.not_before = None;
            self.transition(from, record, event_types::TASK_FAILED, batch);
        }
    }

    /// Asks the budget gate about admitted tasks; refused ones go back to the queue,
    /// held with the gate's reason.
    async fn budget_check(&mut self, launches: Vec<TaskRecord>) -> Vec<TaskRecord> {
        let Some(gate) = self.budget.clone() else {
            return launches;
        };
        let requests: Vec<BudgetRequest> = launches
            .iter()
            .map(|r| BudgetRequest {
                task_id: r.id,
                tenant: r.tenant.clone(),
                environment: r.environment.clone(),
                template: r.template.clone(),
                labels: r.labels.clone(),
                resources: r.spec.resources.clone(),
                timeout: r.spec.timeout,
                scavenger: r.spec.scavenger,
                attempt: r.attempt + 1,
            })
            .collect();
        let mut decisions = gate.check_many(&requests).await;
        // A gate that answers fewer tasks than asked refuses the rest: no task is lost.
        while decisions.len() < launches.len() {
            decisions.push(Ok(BudgetDecision::refuse(
                "the budget gate gave no answer for this task",
            )));
        }
        let recheck = self.admission.policy().config().budget_recheck;
        let now = Utc::now();
        let mut allowed = Vec::with_capacity(launches.len());
        for (record, decision) in launches.into_iter().zip(decisions) {
            let (reason, after) = match decision {
                Ok(BudgetDecision::Allow) => {
                    allowed.push(record);
                    continue;
                }
                Ok(BudgetDecision::Refuse {
                    reason,
                    retry_after,
                }) => (reason, retry_after.unwrap_or(recheck)),
                Err(e) => (format!("the budget gate failed: {e}"), recheck),
            };
            tracing::info!(task_id = %record.id, %reason, "budget gate refused; task stays queued");
            let until = now + chrono::Duration::from_std(after).unwrap_or_default();
            self.admission.refuse(record.id, reason, until);
            self.queue.insert(record.id, record);
        }
        allowed
    }

    fn transition(&self, from: TaskStatus, record: TaskRecord, ty: &str, batch: &mut ChangeBatch) {
        let event = task_event(&self.config.source, ty, &record);
        batch.transitions.push(Transition::new(from, record, event));
    }

    fn requeue_due(&mut self, batch: &mut ChangeBatch) {
        let now = Utc::now();
        let due: Vec<TaskId> = self
            .waiting
            .values()
            .filter(|r| r.not_before.is_none_or(|t| t <= now))
            .map(|r| r.id)
            .collect();
        for id in due {
            let Some(mut record) = self.waiting.remove(&id) else {
                continue;
            };
            record.status = TaskStatus::Queued;
            record.not_before = None;
            self.transition(
                TaskStatus::Retrying,
                record.clone(),
                event_types::TASK_QUEUED,
                batch,
            );
            self.enqueue(record);
        }
    }

    /// Runs an admission pass (quotas, priorities, fair share, scavengers), stops the
    /// work it preempts, asks the budget gate, and launches what is left.
    async fn admit_and_launch(&mut self, batch: &mut ChangeBatch) {
        self.fail_rejected(batch);
        if self.paused {
            return;
        }
        let mut limit = self.config.batch_size;
        if self.config.max_running > 0 {
            limit = limit.min(self.config.max_running.saturating_sub(self.running.len()));
        }
        let pass = self.admission.pass(Utc::now(), limit);
        self.preempt(pass.preempt);
        if pass.admitted.is_empty() {
            return;
        }
        let mut launches = Vec::with_capacity(pass.admitted.len());
        for admitted in pass.admitted {
            match self.queue.remove(&admitted.id) {
                Some(mut record) => {
                    // Borrowed capacity of another environment: run in its pool.
                    record.spec.node_pool = (admitted.segment != crate::admission::SHARED_SEGMENT
                        && admitted.segment != record.environment.as_str())
                    .then(|| ops_core::Environment::parse(admitted.segment.as_str()).ok())
                    .flatten();
                    launches.push(record);
                }
                None => {
                    self.admission.release(admitted.id);
                }
            }
        }
        let launches = self.budget_check(launches).await;
        let grace = self.admission.policy().grace();
        let launches: Vec<TaskRecord> = launches
            .into_iter()
            .map(|mut record| {
                record.attempt += 1;
                record.spec.attempt = record.attempt;
                // The task runs under this coordinator's root, wherever it was submitted
                // (a submit-only front end's root means nothing on this machine).
                record.spec.task_dir = self
                    .config
                    .root
                    .join(record.tenant.as_str())
                    .join(record.id.to_string());
                if record.spec.scavenger {
                    record.spec.env.insert("OPS_SCAVENGER".into(), "1".into());
                    record.spec.env.insert(
                        "OPS_PREEMPT_GRACE_SECONDS".into(),
                        grace.as_secs().to_string(),
                    );
                }
                record
            })
            .collect();
        if launches.is_empty() {
            return;
        }
        let executor = &self.executor;
        let updates = &self.updates_tx;
        let results = futures::future::join_all(
            launches
                .iter()
                .map(|r| executor.launch(r.spec.clone(), updates.clone())),
        )
        .await;
        for (mut record, result) in launches.into_iter().zip(results) {
            let id = record.id;
            let now = Utc::now();
            record.status = TaskStatus::Running;
            record.started_at = Some(now);
            record.reason = None;
            record.message = None;
            record.exit_code = None;
            match result {
                Ok(handle) => {
                    record.run_handle = Some(handle.clone());
                    self.transition(
                        TaskStatus::Queued,
                        record.clone(),
                        event_types::TASK_STARTED,
                        batch,
                    );
                    self.running.insert(id, Running::new(record, Some(handle)));
                }
                Err(e) => {
                    tracing::warn!(task_id = %id, error = %e, "launch failed");
                    self.transition(
                        TaskStatus::Queued,
                        record.clone(),
                        event_types::TASK_STARTED,
                        batch,
                    );
                    let attempt = record.attempt;
                    self.running.insert(id, Running::new(record, None));
                    self.finish(
                        id,
                        attempt,
                        Outcome::new(Reason::LaunchFailed, Some(e.to_string())),
                        batch,
                    );
                }
            }
        }
    }

    /// Writes a batch together with any batch left over from a failed round. On failure
    /// the changes stay pending in memory and are written by a later round: the queue
    /// and running set already reflect them, so nothing is lost or applied twice.
    async fn commit(&mut self, batch: ChangeBatch) -> Result<()> {
        let batch = match self.pending.take() {
            Some(mut pending) => {
                pending.inserts.extend(batch.inserts);
                pending.transitions.extend(batch.transitions);
                pending.outputs.extend(batch.outputs);
                pending
            }
            None => batch,
        };
        if batch.is_empty() {
            return Ok(());
        }
        let mut batch = batch;
        batch.owner = Some(self.lease.owner.clone());
        tracing::trace!(transitions = batch.transitions.len(), "committing");
        let applied = match self.history.commit(&batch).await {
            Ok(applied) => applied,
            Err(e) => {
                self.pending = Some(batch);
                return Err(e);
            }
        };
        let mut skipped: HashSet<ops_core::EventId> = HashSet::new();
        for (t, ok) in batch.transitions.iter().zip(&applied) {
            if *ok {
                continue;
            }
            // Skipped: either an earlier attempt of this very commit went through
            // (its reply was lost), or the task is no longer ours.
            match self.history.get(t.task_id).await {
                Ok(Some(now))
                    if now.status == t.to
                        && (now.owner.as_deref() == Some(self.lease.owner.as_str())
                            || now.status.is_final()) => {}
                Ok(_) => {
                    skipped.insert(t.event.id);
                    self.forget(t.task_id);
                }
                Err(e) => {
                    tracing::warn!(task_id = %t.task_id, error = %e, "could not check a skipped transition");
                    skipped.insert(t.event.id);
                }
            }
        }
        tracing::trace!("committed");
        for event in batch.events() {
            if !skipped.contains(&event.id) {
                let _ = self.live.send(event.clone());
            }
        }
        Ok(())
    }
}

fn lost_outcome(detail: &str) -> Outcome {
    Outcome::new(
        Reason::CoordinatorLost,
        Some(format!(
            "the coordinator running it was lost and it could not be re-attached: {detail}"
        )),
    )
}
