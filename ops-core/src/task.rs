//! Task lifecycle vocabulary shared by executors, history and event consumers
//! (billing reads [`TaskEventData`] from `ops.task.*` events without depending on
//! `ops-tasks`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Labels, Resources, TaskId, Usage};

/// Where a task is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted and stored.
    Submitted,
    /// Waiting for capacity.
    Queued,
    /// Running on an executor.
    Running,
    /// Waiting for a backoff to elapse before the next attempt.
    Retrying,
    /// Finished with exit code 0.
    Succeeded,
    /// Finished unsuccessfully; see its [`Reason`].
    Failed,
    /// Stopped by a user.
    Cancelled,
    /// Killed after running past its timeout.
    TimedOut,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Submitted,
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Retrying,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::TimedOut,
    ];

    /// Whether the task will never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::TimedOut
        )
    }

    /// The snake_case name used in storage and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Submitted => "submitted",
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::TimedOut => "timed_out",
        }
    }

    /// Whether the state machine allows going from `self` to `next`.
    ///
    /// ```text
    /// submitted → queued → running → succeeded | failed | cancelled | timed_out
    ///                         ↓  ↑
    ///                       retrying → queued
    /// ```
    /// Any non-final state may also go to `cancelled` or `failed` (e.g. a launch error).
    pub fn can_transition_to(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        if self.is_final() {
            return false;
        }
        matches!(
            (self, next),
            (_, Cancelled | Failed)
                | (Submitted, Queued)
                | (Queued, Running)
                | (Running, Succeeded | TimedOut | Retrying | Queued)
                | (Retrying, Queued)
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::Invalid {
                what: "task status",
                value: s.to_owned(),
                reason: format!(
                    "expected one of {}",
                    TaskStatus::ALL.map(TaskStatus::as_str).join(", ")
                ),
            })
    }
}

/// Why a task (or one attempt) ended the way it did. The same lifecycle gives the same
/// reason on every executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reason {
    /// Exit code 0.
    Completed,
    /// Exited with a non-zero code.
    NonZeroExit,
    /// Killed by a signal not sent by Ops.
    Signaled,
    /// Killed by the kernel's (or cgroup's) out-of-memory killer.
    OutOfMemory,
    /// Ran past its timeout.
    TimedOut,
    /// Cancelled by a user.
    Cancelled,
    /// The program does not exist or is not executable.
    CommandNotFound,
    /// The executor could not start it for another reason.
    LaunchFailed,
    /// The coordinator stopped while the task ran and could not re-attach to it.
    CoordinatorLost,
    /// Preempted to make room for other work.
    Preempted,
    /// Refused by a quota.
    QuotaExceeded,
    /// The container image could not be pulled.
    ImageUnavailable,
    /// Evicted by the node.
    Evicted,
    /// Its inputs could not be placed in its directory, or its outputs could not be
    /// stored (a missing input object, a storage quota, an unreachable store).
    StagingFailed,
}

impl Reason {
    /// The name used in events and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Completed => "Completed",
            Reason::NonZeroExit => "NonZeroExit",
            Reason::Signaled => "Signaled",
            Reason::OutOfMemory => "OutOfMemory",
            Reason::TimedOut => "TimedOut",
            Reason::Cancelled => "Cancelled",
            Reason::CommandNotFound => "CommandNotFound",
            Reason::LaunchFailed => "LaunchFailed",
            Reason::CoordinatorLost => "CoordinatorLost",
            Reason::Preempted => "Preempted",
            Reason::QuotaExceeded => "QuotaExceeded",
            Reason::ImageUnavailable => "ImageUnavailable",
            Reason::Evicted => "Evicted",
            Reason::StagingFailed => "StagingFailed",
        }
    }

    /// Whether an attempt that ended this way may be retried by the retry policy.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Reason::NonZeroExit
                | Reason::Signaled
                | Reason::OutOfMemory
                | Reason::CoordinatorLost
                | Reason::Evicted
                | Reason::LaunchFailed
                | Reason::StagingFailed
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            Error::Invalid {
                what: "task reason",
                value: s.to_owned(),
                reason: "not a known reason".to_owned(),
            }
        })
    }
}

/// The payload of every `ops.task.*` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskEventData {
    /// The task.
    pub task_id: TaskId,
    /// Its owner.
    pub tenant: String,
    /// Its environment.
    pub environment: String,
    /// The template it was made from.
    pub template: String,
    /// Status after the change.
    pub status: TaskStatus,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Why the change happened, on final and retrying events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// A human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Usage so far (all attempts, preempted ones included), on final events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The usage of the attempt that just ended, on the events that end one
    /// (`ops.task.preempted`, `ops.task.retrying` and final events after a run).
    /// Absent from events written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_usage: Option<Usage>,
    /// On final events, the part of `usage` that preempted attempts consumed (already
    /// reported, attempt by attempt, by their `ops.task.preempted` events); absent
    /// when no attempt was preempted. Billing rates a final event's `usage` less this,
    /// so that a preempted attempt is never counted twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_usage: Option<Usage>,
    /// For `ops.task.output.created`: the path relative to the task's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// For `ops.task.output.created`: size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_size: Option<u64>,
    /// The task's labels.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// What the task requested (CPU, memory, GPUs and their model), on started and
    /// final events and on those that end an attempt (`ops.task.preempted`,
    /// `ops.task.retrying`): what billing prices reserved resources by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Scavenger work, run on idle capacity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scavenger: bool,
}

impl TaskEventData {
    /// Payload for a task change with no reason, usage or output.
    pub fn new(
        task_id: TaskId,
        tenant: impl Into<String>,
        environment: impl Into<String>,
        template: impl Into<String>,
        status: TaskStatus,
        attempt: u32,
    ) -> Self {
        Self {
            task_id,
            tenant: tenant.into(),
            environment: environment.into(),
            template: template.into(),
            status,
            attempt,
            reason: None,
            message: None,
            exit_code: None,
            usage: None,
            attempt_usage: None,
            preempted_usage: None,
            output: None,
            output_size: None,
            labels: Labels::new(),
            resources: None,
            scavenger: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_allows_only_documented_edges() {
        use TaskStatus::*;
        assert!(Submitted.can_transition_to(Queued));
        assert!(Queued.can_transition_to(Running));
        assert!(Running.can_transition_to(Retrying));
        assert!(Retrying.can_transition_to(Queued));
        assert!(Running.can_transition_to(Cancelled));
        assert!(!Submitted.can_transition_to(Running));
        assert!(!Succeeded.can_transition_to(Failed));
        assert!(!Queued.can_transition_to(Succeeded));
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
        }
    }

    #[test]
    fn event_data_without_attempt_usage_still_parses() {
        let id = TaskId::new();
        let old = serde_json::json!({
            "task_id": id, "tenant": "acme", "environment": "production",
            "template": "render", "status": "succeeded", "attempt": 2,
            "usage": { "wall_time": 3.0, "cpu_time": 1.5, "peak_memory_bytes": 0, "gpu_seconds": 0.0 },
        });
        let data: TaskEventData = serde_json::from_value(old).unwrap();
        assert_eq!(data.attempt_usage, None);
        assert_eq!(data.preempted_usage, None);
        assert_eq!(data.usage.unwrap().cpu_time.as_secs_f64(), 1.5);
        let json = serde_json::to_value(&data).unwrap();
        assert!(json.get("attempt_usage").is_none() && json.get("preempted_usage").is_none());
    }

    #[test]
    fn reasons_round_trip() {
        assert_eq!(
            "OutOfMemory".parse::<Reason>().unwrap(),
            Reason::OutOfMemory
        );
        assert!("Bogus".parse::<Reason>().is_err());
        assert!(!Reason::Cancelled.is_retryable());
    }
}
