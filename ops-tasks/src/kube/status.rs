//! What a pod's status says about an attempt: still pending, running, or how it ended,
//! in the same [`Reason`]s the local executor reports.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use ops_core::{Reason, Usage};

use super::names;
use crate::executor::Outcome;
use crate::taskdir::status_signal as shell_status_signal;

/// What one observation of the pod means.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Not started yet. `problem` is a waiting reason that may end the attempt (image
    /// pull errors, container creation errors), with its message.
    Pending {
        /// Waiting reason and message worth acting on.
        problem: Option<Problem>,
    },
    /// The task container runs.
    Running {
        /// When it started.
        started_at: DateTime<Utc>,
    },
    /// The attempt is over.
    Finished {
        /// When the container started, if it ever did.
        started_at: Option<DateTime<Utc>>,
        /// How it ended.
        outcome: Outcome,
    },
}

/// A waiting state that ends the attempt, now or after a while.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The reason the attempt ends with.
    pub reason: Reason,
    /// Kubernetes' waiting reason, e.g. `ErrImagePull`.
    pub waiting: String,
    /// Its message.
    pub message: String,
    /// Ends the attempt at once (rather than after the image pull timeout).
    pub fatal: bool,
}

/// A Kubernetes timestamp as a chrono one.
pub fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.0.as_microsecond())
}

fn task_container(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find(|c| c.name == names::CONTAINER)
        .or_else(|| statuses.first())
}

/// Whether Kubernetes has let go of the pod: terminal phase, or deleted with nothing
/// left running (deletion grace over), or gone.
fn is_over(pod: &Pod, deleted: bool) -> bool {
    if deleted {
        return true;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return true;
    }
    pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.deletion_grace_period_seconds.unwrap_or(0) == 0
}

/// A waiting reason the attempt cannot recover from by itself.
fn waiting_problem(reason: &str, message: &str) -> Option<Problem> {
    let (r, fatal) = match reason {
        "ErrImagePull" | "ImagePullBackOff" => (Reason::ImageUnavailable, false),
        "InvalidImageName" | "ErrImageNeverPull" => (Reason::ImageUnavailable, true),
        "CreateContainerConfigError"
        | "CreateContainerError"
        | "RunContainerError"
        | "StartError" => (start_error_reason(message), true),
        _ => return None,
    };
    Some(Problem {
        reason: r,
        waiting: reason.to_owned(),
        message: message.to_owned(),
        fatal,
    })
}

/// A container that could not start: `CommandNotFound` when the runtime says the
/// executable is missing, else `LaunchFailed`.
fn start_error_reason(message: &str) -> Reason {
    let m = message.to_ascii_lowercase();
    if m.contains("executable file not found")
        || m.contains("no such file or directory")
        || m.contains("not found in $path")
    {
        Reason::CommandNotFound
    } else {
        Reason::LaunchFailed
    }
}

/// The message of an attempt Ops stopped for `reason`.
pub fn stop_message(reason: Reason) -> &'static str {
    match reason {
        Reason::Preempted => "preempted",
        _ => "cancelled",
    }
}

/// Reads the pod. `stopped`: Ops deleted it, and why (`Cancelled` or `Preempted`).
/// `deleted`: the object is gone (a DELETE watch event, or not found).
pub fn observe(pod: &Pod, stopped: Option<Reason>, deleted: bool) -> Observed {
    let container = task_container(pod);
    let state = container.and_then(|c| c.state.as_ref());
    let started_at = state.and_then(|s| {
        s.running
            .as_ref()
            .and_then(|r| r.started_at.as_ref())
            .or_else(|| s.terminated.as_ref().and_then(|t| t.started_at.as_ref()))
            .and_then(time)
    });
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let waiting = state.and_then(|s| s.waiting.as_ref());

    if !is_over(pod, deleted) {
        // A container that is done while the pod is not yet terminal (deletion grace
        // running) is reported once the pod is over.
        if let Some(w) = waiting {
            let problem = waiting_problem(
                w.reason.as_deref().unwrap_or_default(),
                w.message.as_deref().unwrap_or_default(),
            );
            return Observed::Pending { problem };
        }
        if let Some(at) = state.and_then(|s| s.running.as_ref()).and(started_at) {
            return Observed::Running { started_at: at };
        }
        if terminated.is_some()
            && let Some(at) = started_at
        {
            return Observed::Running { started_at: at };
        }
        return Observed::Pending { problem: None };
    }

    let status = pod.status.as_ref();
    let finished_at = terminated
        .and_then(|t| t.finished_at.as_ref())
        .and_then(time);
    let exit_code = terminated.map(|t| t.exit_code);
    let mut usage = Usage::default();
    if let (Some(a), Some(b)) = (started_at, finished_at) {
        usage.wall_time = (b - a).to_std().unwrap_or(Duration::ZERO);
    }
    let outcome = |reason: Reason, message: Option<String>| {
        let mut o = Outcome::new(reason, message);
        // As the local executor (and a shell) report it: 128 + N is signal N.
        o.signal = exit_code.and_then(shell_status_signal);
        if o.signal.is_none() {
            o.exit_code = exit_code;
        }
        o.usage = usage;
        o
    };
    let finished = |o: Outcome| Observed::Finished {
        started_at,
        outcome: o,
    };

    if let Some(reason) = stopped {
        return finished(outcome(reason, Some(stop_message(reason).into())));
    }
    let disruption = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    });
    if let Some(c) = disruption {
        let reason = match c.reason.as_deref() {
            Some("PreemptionByScheduler") | Some("PreemptionByKubeScheduler") => Reason::Preempted,
            _ => Reason::Evicted,
        };
        let message = c
            .message
            .clone()
            .or_else(|| c.reason.clone())
            .unwrap_or_default();
        return finished(outcome(reason, Some(message)));
    }
    match status.and_then(|s| s.reason.as_deref()) {
        Some("DeadlineExceeded") => {
            let message = status.and_then(|s| s.message.clone());
            return finished(outcome(Reason::TimedOut, message));
        }
        Some("Evicted")
        | Some("Preempting")
        | Some("Terminated")
        | Some("NodeLost")
        | Some("UnexpectedAdmissionError")
        | Some("NodeAffinity")
        | Some("OutOfcpu")
        | Some("OutOfmemory") => {
            let message = status
                .and_then(|s| s.message.clone())
                .or_else(|| status.and_then(|s| s.reason.clone()));
            return finished(outcome(Reason::Evicted, message));
        }
        _ => {}
    }
    if let Some(t) = terminated {
        let message = t.message.clone().filter(|m| !m.trim().is_empty());
        let r = match t.reason.as_deref() {
            Some("OOMKilled") => Reason::OutOfMemory,
            Some("StartError") | Some("ContainerCannotRun") => {
                start_error_reason(message.as_deref().unwrap_or_default())
            }
            _ if t.exit_code == 0 => Reason::Completed,
            _ if shell_status_signal(t.exit_code).is_some() => Reason::Signaled,
            _ => Reason::NonZeroExit,
        };
        if matches!(
            t.reason.as_deref(),
            Some("StartError" | "ContainerCannotRun")
        ) {
            // Nothing ran: no exit status, as the local executor reports it.
            let mut o = outcome(r, message);
            o.exit_code = None;
            o.signal = None;
            return finished(o);
        }
        let message = match r {
            Reason::Completed => None,
            Reason::NonZeroExit => Some(format!("exited with code {}", t.exit_code)),
            Reason::Signaled => Some(format!("killed by signal {}", t.exit_code - 128)),
            Reason::OutOfMemory => Some("killed by the out-of-memory killer".into()),
            _ => message,
        };
        return finished(outcome(r, message));
    }
    if let Some(w) = waiting
        && let Some(p) = waiting_problem(
            w.reason.as_deref().unwrap_or_default(),
            w.message.as_deref().unwrap_or_default(),
        )
    {
        return finished(outcome(
            p.reason,
            Some(format!("{}: {}", p.waiting, p.message)),
        ));
    }
    let why = if deleted {
        "pod deleted outside Ops before it ended".to_owned()
    } else {
        status
            .and_then(|s| s.message.clone())
            .unwrap_or_else(|| "pod ended without running its container".to_owned())
    };
    finished(outcome(Reason::Evicted, Some(why)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "task", "image": "busybox"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn terminated(code: i32, reason: &str) -> serde_json::Value {
        json!({"phase": if code == 0 {"Succeeded"} else {"Failed"}, "containerStatuses": [{
            "name": "task", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason,
                "startedAt": "2026-11-25T10:00:00Z", "finishedAt": "2026-11-25T10:00:05Z"}}}]})
    }

    fn finished(p: &Pod) -> Outcome {
        match observe(p, None, false) {
            Observed::Finished { outcome, .. } => outcome,
            other => panic!("not finished: {other:?}"),
        }
    }

    #[test]
    fn exits_map_like_the_local_executor() {
        let o = finished(&pod(terminated(0, "Completed")));
        assert_eq!((o.reason, o.exit_code), (Reason::Completed, Some(0)));
        assert_eq!(o.usage.wall_time, Duration::from_secs(5));
        let o = finished(&pod(terminated(3, "Error")));
        assert_eq!((o.reason, o.exit_code), (Reason::NonZeroExit, Some(3)));
        let o = finished(&pod(terminated(137, "Error")));
        assert_eq!(
            (o.reason, o.signal, o.exit_code),
            (Reason::Signaled, Some(9), None)
        );
        let o = finished(&pod(terminated(137, "OOMKilled")));
        assert_eq!(o.reason, Reason::OutOfMemory);
        let mut s = terminated(128, "StartError");
        s["containerStatuses"][0]["state"]["terminated"]["message"] =
            json!("exec: \"nope\": executable file not found in $PATH: unknown");
        let o = finished(&pod(s));
        assert_eq!(o.reason, Reason::CommandNotFound);
        assert!(o.message.unwrap().contains("nope"));
    }

    #[test]
    fn pod_reasons_and_disruptions() {
        let mut s = terminated(137, "Error");
        s["reason"] = json!("DeadlineExceeded");
        assert_eq!(finished(&pod(s)).reason, Reason::TimedOut);
        let mut s = terminated(137, "Error");
        s["reason"] = json!("Evicted");
        s["message"] = json!("The node was low on resource: memory.");
        let o = finished(&pod(s));
        assert_eq!(o.reason, Reason::Evicted);
        assert!(o.message.unwrap().contains("low on resource"));
        let mut s = terminated(143, "Error");
        s["conditions"] = json!([{"type": "DisruptionTarget", "status": "True",
            "reason": "PreemptionByScheduler", "message": "preempted by ns/p2"}]);
        assert_eq!(finished(&pod(s.clone())).reason, Reason::Preempted);
        s["conditions"][0]["reason"] = json!("DeletionByTaintManager");
        assert_eq!(finished(&pod(s)).reason, Reason::Evicted);
        // Ops' own delete wins over everything.
        let p = pod(terminated(143, "Error"));
        match observe(&p, Some(Reason::Cancelled), false) {
            Observed::Finished { outcome, .. } => assert_eq!(outcome.reason, Reason::Cancelled),
            o => panic!("{o:?}"),
        }
        match observe(&p, Some(Reason::Preempted), false) {
            Observed::Finished { outcome, .. } => {
                assert_eq!(outcome.reason, Reason::Preempted);
                assert_eq!(outcome.signal, Some(15));
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn pending_running_and_pull_problems() {
        assert_eq!(
            observe(&pod(json!({"phase": "Pending"})), None, false),
            Observed::Pending { problem: None }
        );
        let waiting = |reason: &str| {
            json!({"phase": "Pending", "containerStatuses": [{
            "name": "task", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}]})
        };
        match observe(&pod(waiting("ErrImagePull")), None, false) {
            Observed::Pending { problem: Some(p) } => {
                assert_eq!(p.reason, Reason::ImageUnavailable);
                assert!(!p.fatal);
            }
            o => panic!("{o:?}"),
        }
        match observe(&pod(waiting("InvalidImageName")), None, false) {
            Observed::Pending { problem: Some(p) } => assert!(p.fatal),
            o => panic!("{o:?}"),
        }
        let running = json!({"phase": "Running", "containerStatuses": [{
            "name": "task", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}}}]});
        assert!(matches!(
            observe(&pod(running.clone()), None, false),
            Observed::Running { .. }
        ));
        // Deleted while running, without a final status: evicted by someone else.
        match observe(&pod(running), None, true) {
            Observed::Finished {
                outcome,
                started_at,
            } => {
                assert_eq!(outcome.reason, Reason::Evicted);
                assert!(started_at.is_some());
            }
            o => panic!("{o:?}"),
        }
    }
}
