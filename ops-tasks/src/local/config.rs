//! Configuration of the local executor.

use std::fmt;
use std::time::Duration;

use ops_core::Resources;
use serde::{Deserialize, Serialize};

use crate::duration::serde_duration;

/// Which cgroup interface limits and measures tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Detect at start-up: cgroup v2 if its memory controller can be delegated to
    /// children, else cgroup v1 if its memory hierarchy is writable, else none.
    #[default]
    Auto,
    /// cgroup v1 hierarchies (`memory`, `cpu`, `cpuacct`, `pids`); start-up fails if the
    /// memory hierarchy is not writable.
    V1,
    /// The unified cgroup v2 hierarchy; start-up fails if its memory controller cannot be
    /// enabled for children.
    V2,
    /// No cgroups: no kernel enforcement; memory is watched by polling (see the module
    /// documentation).
    None,
}

impl CgroupMode {
    /// `auto`, `v1`, `v2` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Auto => "auto",
            CgroupMode::V1 => "v1",
            CgroupMode::V2 => "v2",
            CgroupMode::None => "none",
        }
    }
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One GPU of the host, as `nvidia-smi` lists it or as configured.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GpuDevice {
    /// Device index (as `nvidia-smi` numbers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Device UUID (`GPU-…`); preferred over the index in `CUDA_VISIBLE_DEVICES`
    /// because it does not depend on device ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Model name, e.g. `NVIDIA A100-SXM4-80GB`; requests match it as a case-insensitive
    /// substring.
    #[serde(default)]
    pub name: String,
}

impl GpuDevice {
    /// A device from its index and/or UUID and its model name.
    pub fn new(index: Option<u32>, uuid: Option<String>, name: impl Into<String>) -> Self {
        Self {
            index,
            uuid,
            name: name.into(),
        }
    }

    /// The identifier handed to the task in `CUDA_VISIBLE_DEVICES` and reported in
    /// `Started { gpus }`: the UUID when known, else the index.
    pub fn id(&self) -> String {
        match (&self.uuid, self.index) {
            (Some(uuid), _) => uuid.clone(),
            (None, Some(index)) => index.to_string(),
            (None, None) => String::new(),
        }
    }
}

/// Settings of [`LocalExecutor`](super::LocalExecutor). Every field has a default that
/// works with zero setup.
///
/// ```toml
/// cgroups = "auto"          # auto | v1 | v2 | none
/// cgroup_parent = "ops"
/// pids_max = 4096
/// kill_grace = "10s"
/// poll_interval = "250ms"
/// capacity = { cpu = 8, memory = "32Gi", gpus = 2 }
/// gpus = [{ index = 0, name = "NVIDIA A100" }, { index = 1, name = "NVIDIA A100" }]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LocalExecutorConfig {
    /// What the executor offers; `None` detects it (CPUs × 1000 millicores,
    /// `MemTotal`, the GPU inventory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Resources>,
    /// Which cgroup interface to use.
    pub cgroups: CgroupMode,
    /// Where per-attempt cgroups are created: a relative path is taken under the
    /// executor's own cgroup in each hierarchy (so tasks stay inside whatever limits the
    /// coordinator itself runs under); an absolute one under the hierarchy's root.
    pub cgroup_parent: String,
    /// Maximum number of processes of one attempt (cgroup `pids.max`); `0` for no limit.
    pub pids_max: u64,
    /// The GPUs to hand out; `None` asks `nvidia-smi` (no GPUs when it is missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<GpuDevice>>,
    /// Time between SIGTERM and SIGKILL when a task is cancelled or times out.
    #[serde(with = "serde_duration")]
    pub kill_grace: Duration,
    /// How often outputs are scanned, usage sampled and re-attached tasks checked.
    #[serde(with = "serde_duration")]
    pub poll_interval: Duration,
    /// `PATH` of the tasks' clean environment (a task's own `PATH` variable wins).
    pub path: String,
}

impl Default for LocalExecutorConfig {
    fn default() -> Self {
        Self {
            capacity: None,
            cgroups: CgroupMode::Auto,
            cgroup_parent: "ops".to_owned(),
            pids_max: 4096,
            gpus: None,
            kill_grace: Duration::from_secs(10),
            poll_interval: Duration::from_millis(250),
            path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_with_defaults() {
        let c: LocalExecutorConfig = toml::from_str(
            r#"
            cgroups = "none"
            kill_grace = "2s"
            gpus = [{ index = 0, name = "NVIDIA A100" }, { uuid = "GPU-1", name = "T4" }]
            capacity = { cpu = 2, memory = "1Gi" }
            "#,
        )
        .unwrap();
        assert_eq!(c.cgroups, CgroupMode::None);
        assert_eq!(c.kill_grace, Duration::from_secs(2));
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.cgroup_parent, "ops");
        let gpus = c.gpus.unwrap();
        assert_eq!(gpus[0].id(), "0");
        assert_eq!(gpus[1].id(), "GPU-1");
        assert_eq!(c.capacity.unwrap().cpu_millis, 2000);
        assert!(toml::from_str::<LocalExecutorConfig>("bogus = 1").is_err());
        let back: LocalExecutorConfig =
            toml::from_str(&toml::to_string(&LocalExecutorConfig::default()).unwrap()).unwrap();
        assert_eq!(back, LocalExecutorConfig::default());
    }
}
