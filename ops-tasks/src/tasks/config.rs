use std::path::PathBuf;
use std::time::Duration;

use ops_core::Environment;
use serde::{Deserialize, Serialize};

/// Settings of the [`Tasks`](super::Tasks) facade, loadable from a config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TasksConfig {
    /// Where task directories live: `<root>/<tenant>/<task id>/`.
    pub root: PathBuf,
    /// The CloudEvents `source` of task events.
    pub source: String,
    /// Environment of tasks submitted without one.
    pub default_environment: Environment,
    /// At most this many tasks run at once (besides the capacity limit); 0 = no limit.
    pub max_running: usize,
    /// Upper bound on tasks launched or finished per coordinator round (one transaction).
    pub batch_size: usize,
    /// Pruning of old finished tasks; off when `None`.
    pub retention: Option<RetentionPolicy>,
    /// Identity and lease timing of this process's coordinator (matters when several
    /// coordinators share one history store).
    pub coordinator: CoordinatorConfig,
    /// Quotas, environments, fair share and the scavenger tier.
    pub admission: crate::admission::AdmissionConfig,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("ops-data/tasks"),
            source: "ops://local/tasks".to_owned(),
            default_environment: Environment::default(),
            max_running: 0,
            batch_size: 512,
            retention: None,
            coordinator: CoordinatorConfig::default(),
            admission: crate::admission::AdmissionConfig::default(),
        }
    }
}

impl TasksConfig {
    /// Every problem with the settings that can be seen without an executor, each as
    /// `field: what is wrong` (admission is checked against the executor's nodes when
    /// the service starts).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.coordinator.validate();
        if self.batch_size == 0 {
            problems.push("batch_size: must be at least 1".to_owned());
        }
        if let Some(r) = &self.retention {
            if r.interval.is_zero() {
                problems.push("retention.interval: must be above zero".to_owned());
            }
            if r.batch == 0 {
                problems.push("retention.batch: must be at least 1".to_owned());
            }
        }
        problems
    }
}

/// How a coordinator shares a history store with others: its id and its lease.
///
/// Each coordinator holds a lease in the store and renews it every `heartbeat`; a
/// coordinator whose lease is older than `lease_ttl` is presumed dead, and the others
/// take over its tasks (re-attaching to them where their executor can, otherwise
/// ending the attempt with `coordinator_lost` and retrying per the task's policy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CoordinatorConfig {
    /// Unique id among the coordinators of one store. Default: `<hostname>:<root>`,
    /// which a restarted process on the same machine and root takes over at once (it
    /// holds the root's lock file, so its predecessor is known to be dead).
    pub id: Option<String>,
    /// How long a lease lasts without renewal (default 15 s).
    #[serde(with = "crate::duration::serde_duration")]
    pub lease_ttl: Duration,
    /// How often the lease is renewed and dead coordinators' tasks are looked for
    /// (default 3 s; must be well below `lease_ttl`).
    #[serde(with = "crate::duration::serde_duration")]
    pub heartbeat: Duration,
    /// How often unowned queued tasks (submitted by other processes) are claimed, and
    /// how often `watch` polls the store for events committed by other coordinators
    /// (default 500 ms).
    #[serde(with = "crate::duration::serde_duration")]
    pub poll: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            id: None,
            lease_ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(3),
            poll: Duration::from_millis(500),
        }
    }
}

impl CoordinatorConfig {
    /// Checks the timings; every problem is listed.
    pub(crate) fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(id) = &self.id
            && (id.is_empty() || id.len() > 200)
        {
            problems.push(format!("coordinator.id {id:?}: use 1-200 characters"));
        }
        if self.lease_ttl < Duration::from_millis(100) {
            problems.push(format!(
                "coordinator.lease_ttl {:?}: at least 100ms",
                self.lease_ttl
            ));
        }
        if self.heartbeat.is_zero() || self.heartbeat * 2 > self.lease_ttl {
            problems.push(format!(
                "coordinator.heartbeat {:?}: must be above zero and at most half of lease_ttl ({:?})",
                self.heartbeat, self.lease_ttl
            ));
        }
        if self.poll.is_zero() {
            problems.push("coordinator.poll: must be above zero".to_owned());
        }
        problems
    }
}

/// Deletes finished tasks (history rows and task directories) after `max_age`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetentionPolicy {
    /// Age after finishing at which a task is deleted, e.g. `"7d"`, `"12h"`.
    #[serde(with = "crate::duration::serde_duration")]
    pub max_age: Duration,
    /// How often the pruner runs (default one hour).
    #[serde(
        default = "RetentionPolicy::default_interval",
        with = "crate::duration::serde_duration"
    )]
    pub interval: Duration,
    /// Tasks deleted per transaction (default 1000), so writers never wait long.
    #[serde(default = "RetentionPolicy::default_batch")]
    pub batch: u32,
}

impl RetentionPolicy {
    /// Keep finished tasks for `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            interval: Self::default_interval(),
            batch: Self::default_batch(),
        }
    }
    fn default_interval() -> Duration {
        Duration::from_secs(3600)
    }
    fn default_batch() -> u32 {
        1000
    }
}
