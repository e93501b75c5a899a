use std::path::PathBuf;
use std::time::Duration;

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
    pub default_environment: String,
    /// At most this many tasks run at once (besides the capacity limit); 0 = no limit.
    pub max_running: usize,
    /// Upper bound on tasks launched or finished per coordinator round (one transaction).
    pub batch_size: usize,
    /// Pruning of old finished tasks; off when `None`.
    pub retention: Option<RetentionPolicy>,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("ops-data/tasks"),
            source: "ops://local/tasks".to_owned(),
            default_environment: "default".to_owned(),
            max_running: 0,
            batch_size: 512,
            retention: None,
        }
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
