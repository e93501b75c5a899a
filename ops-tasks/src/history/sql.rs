//! What the SQL stores (SQLite and PostgreSQL) share: event order within a batch,
//! queue order, the state-machine check below every caller, ownership of inserts.

use ops_core::{Event, TaskId, TaskStatus};

use super::{ChangeBatch, Lease, TaskRecord};
use crate::Result;

/// The order of a batch's events: each task's output events just before the first of
/// its transitions that ends an attempt (leaves `running`), so that consumers see a
/// task's outputs before it succeeds or fails; outputs of tasks without such a
/// transition last. Transitions keep their order.
pub(super) fn with_outputs_first<T>(
    transitions: Vec<(TaskId, TaskStatus, T)>,
    outputs: Vec<(TaskId, T)>,
) -> Vec<T> {
    let mut pending: std::collections::HashMap<TaskId, Vec<T>> = std::collections::HashMap::new();
    let mut order: Vec<TaskId> = Vec::new();
    for (id, item) in outputs {
        let list = pending.entry(id).or_default();
        if list.is_empty() {
            order.push(id);
        }
        list.push(item);
    }
    let mut out = Vec::new();
    for (id, from, item) in transitions {
        if from == TaskStatus::Running
            && let Some(list) = pending.remove(&id)
        {
            out.extend(list);
        }
        out.push(item);
    }
    for id in order {
        if let Some(list) = pending.remove(&id) {
            out.extend(list);
        }
    }
    out
}

/// Queue order, as claims and take-overs return tasks: highest priority first, then
/// oldest (ids are time-ordered).
pub(super) fn sort_queue_order(records: &mut [TaskRecord]) {
    records.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
}

/// Statuses in which a task waits to be claimed.
pub(super) const CLAIMABLE_SQL: &str = "('submitted', 'queued')";
/// Final statuses, for SQL.
pub(super) const FINAL_SQL: &str = "('succeeded', 'failed', 'cancelled', 'timed_out')";

/// Refuses a batch with a transition the state machine does not allow (nothing is
/// written then): enforced here, below every caller.
pub(super) fn check_transitions(batch: &ChangeBatch) -> Result<()> {
    match batch
        .transitions
        .iter()
        .find(|t| !t.from.can_transition_to(t.to) || t.record.status != t.to)
    {
        Some(t) => Err(crate::Error::InvalidTransition {
            task_id: t.task_id,
            from: t.from,
            to: t.to,
        }),
        None => Ok(()),
    }
}

/// The owner an inserted task gets: the batch's, unless it is already final.
pub(super) fn insert_owner<'a>(batch: &'a ChangeBatch, record: &TaskRecord) -> Option<&'a str> {
    if record.status.is_final() {
        None
    } else {
        batch.owner.as_deref()
    }
}

/// For the events written at submission: the status each one moves to.
pub(super) fn submit_statuses(event: &Event) -> (Option<TaskStatus>, Option<TaskStatus>) {
    match event.ty.as_str() {
        ops_core::event_types::TASK_SUBMITTED => (None, Some(TaskStatus::Submitted)),
        ops_core::event_types::TASK_QUEUED => {
            (Some(TaskStatus::Submitted), Some(TaskStatus::Queued))
        }
        _ => (None, None),
    }
}

/// A lease's ttl in microseconds (saturating).
pub(super) fn ttl_micros(lease: &Lease) -> i64 {
    i64::try_from(lease.ttl.as_micros()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_come_before_the_transition_that_ends_their_attempt() {
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        let transitions = vec![
            (c, TaskStatus::Queued, "c started"),
            (a, TaskStatus::Running, "a succeeded"),
            (b, TaskStatus::Running, "b retrying"),
        ];
        let outputs = vec![(b, "b out1"), (a, "a out1"), (c, "c out1"), (a, "a out2")];
        assert_eq!(
            with_outputs_first(transitions, outputs),
            [
                "c started",
                "a out1",
                "a out2",
                "a succeeded",
                "b out1",
                "b retrying",
                "c out1"
            ]
        );
    }
}
