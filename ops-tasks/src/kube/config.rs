//! Configuration of the Kubernetes executor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ops_core::Resources;
use serde::{Deserialize, Serialize};

use crate::duration::serde_duration;

/// How task directories reach pods, so that outputs written by a pod land in the task
/// directory the coordinator scans (see the [module docs](super)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum TaskVolume {
    /// A directory of the node (`hostPath`), the same path the coordinator uses as its
    /// root: single-node clusters (k3s, kind with a mount) and tests.
    HostPath {
        /// The coordinator's task root, which is also the node's path.
        path: PathBuf,
    },
    /// A `ReadWriteMany` PersistentVolumeClaim (NFS, CephFS, EFS…) in every tenant
    /// namespace, mounted on the coordinator's machine at `local_root`.
    PersistentVolumeClaim {
        /// The claim's name (created by the platform operator in each namespace).
        claim: String,
        /// Where the coordinator sees the volume: its task root.
        local_root: PathBuf,
    },
    /// An `emptyDir` per pod: nothing is shared, so outputs are not collected (logs are).
    #[default]
    None,
}

/// Where the tasks of one environment run: the labels and taints of its node pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NodePool {
    /// Node labels the pool's nodes carry (`nodeSelector`).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints of the pool's nodes that its pods tolerate, as `key=value:Effect` or
    /// `key:Effect` (value-less, tolerated with `Exists`).
    #[serde(default)]
    pub tolerations: Vec<String>,
}

impl NodePool {
    /// A pool selected by one node label.
    pub fn labelled(key: &str, value: &str) -> Self {
        Self {
            node_selector: [(key.to_owned(), value.to_owned())].into(),
            tolerations: Vec::new(),
        }
    }

    /// Adds a tolerated taint (`key=value:Effect` or `key:Effect`).
    pub fn tolerate(mut self, taint: &str) -> Self {
        self.tolerations.push(taint.to_owned());
        self
    }
}

/// Network allowances added to each tenant namespace's default-deny policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NetworkConfig {
    /// Allow DNS (UDP and TCP port 53) to any namespace. Default true.
    #[serde(default = "yes")]
    pub allow_dns: bool,
    /// CIDR blocks task pods may reach (e.g. `["0.0.0.0/0"]` for the internet, or an
    /// object store's range). Default none.
    #[serde(default)]
    pub egress_cidrs: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            allow_dns: true,
            egress_cidrs: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Configuration of [`KubeExecutor`](super::KubeExecutor). Every field has a default,
/// so a config file sets only what it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KubeExecutorConfig {
    /// Kubeconfig file; `None` infers (`$KUBECONFIG`, `~/.kube/config`, then the
    /// in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None` uses the current one.
    pub context: Option<String>,
    /// Prefix of tenant namespaces: `<prefix>-<tenant>-<environment>`. Default `ops`.
    pub namespace_prefix: String,
    /// How task directories reach pods. Default [`TaskVolume::None`].
    pub volume: TaskVolume,
    /// Node pool per environment. Empty: every environment may use every node. Once
    /// one is configured, an environment without a pool cannot launch tasks.
    pub pools: BTreeMap<String, NodePool>,
    /// The ResourceQuota of every tenant namespace (none when `None`).
    pub quota: Option<Resources>,
    /// Per-tenant quotas, replacing [`KubeExecutorConfig::quota`] for those tenants.
    pub tenant_quotas: BTreeMap<String, Resources>,
    /// Requests given by the namespace's LimitRange to containers that set none (tasks
    /// whose template declares no resources). Default 100m CPU, 128Mi.
    pub default_resources: Resources,
    /// Image for templates that name none; `None` makes such launches fail.
    pub default_image: Option<String>,
    /// User and group id of task containers unless a template asks for root. Default
    /// 65532.
    pub run_as_user: i64,
    /// Grace between SIGTERM and SIGKILL when cancelling (the pod's
    /// `terminationGracePeriodSeconds`). Default 10s.
    #[serde(with = "serde_duration")]
    pub kill_grace: Duration,
    /// How long a finished pod is kept (for `kubectl logs`/debugging) before Ops
    /// deletes it. Default 10m.
    #[serde(with = "serde_duration")]
    pub finished_ttl: Duration,
    /// How long an image may fail to pull before the attempt fails with
    /// `ImageUnavailable`. Default 2m.
    #[serde(with = "serde_duration")]
    pub image_pull_timeout: Duration,
    /// How long pod creation is retried while a ResourceQuota refuses it before the
    /// attempt fails with `QuotaExceeded`. Default 1m.
    #[serde(with = "serde_duration")]
    pub quota_wait: Duration,
    /// Name of the scavenger PriorityClass (value -100, `preemptionPolicy: Never`).
    /// Default `ops-scavenger`.
    pub scavenger_priority_class: String,
    /// Network allowances of tenant namespaces.
    pub network: NetworkConfig,
    /// Stream each pod's log into the task directory. Default true.
    pub follow_logs: bool,
    /// How often outputs are scanned and image pulls and node capacity checked.
    /// Default 1s.
    #[serde(with = "serde_duration")]
    pub poll_interval: Duration,
    /// Most API requests in flight at once (the client-side limit; the API server has
    /// its own priority and fairness limits). Default 64.
    pub max_concurrent_requests: usize,
    /// Capacity offered to admission; `None` sums the allocatable resources of the
    /// schedulable nodes (of the configured pools).
    pub capacity: Option<Resources>,
    /// Timeout of the start-up connection check. Default 10s.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
}

impl Default for KubeExecutorConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace_prefix: "ops".into(),
            volume: TaskVolume::None,
            pools: BTreeMap::new(),
            quota: None,
            tenant_quotas: BTreeMap::new(),
            default_resources: Resources::new(100, 128 << 20),
            default_image: None,
            run_as_user: 65532,
            kill_grace: Duration::from_secs(10),
            finished_ttl: Duration::from_secs(600),
            image_pull_timeout: Duration::from_secs(120),
            quota_wait: Duration::from_secs(60),
            scavenger_priority_class: "ops-scavenger".into(),
            network: NetworkConfig::default(),
            follow_logs: true,
            poll_interval: Duration::from_secs(1),
            max_concurrent_requests: 64,
            capacity: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl KubeExecutorConfig {
    /// Every problem with the configuration, as `field: message` sentences.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !super::names::is_dns_label(&self.namespace_prefix) || self.namespace_prefix.len() > 20 {
            out.push(format!(
                "namespace_prefix: {:?} must be a lower-case DNS label of at most 20 characters",
                self.namespace_prefix
            ));
        }
        if !super::names::is_dns_subdomain(&self.scavenger_priority_class) {
            out.push(format!(
                "scavenger_priority_class: {:?} is not a valid object name",
                self.scavenger_priority_class
            ));
        }
        for (env, pool) in &self.pools {
            for t in &pool.tolerations {
                if let Err(e) = super::pod::parse_toleration(t) {
                    out.push(format!("pools.{env}.tolerations: {e}"));
                }
            }
        }
        match &self.volume {
            TaskVolume::HostPath { path } if !path.is_absolute() => {
                out.push(format!("volume.path: {} is not absolute", path.display()))
            }
            TaskVolume::PersistentVolumeClaim { claim, local_root } => {
                if !super::names::is_dns_subdomain(claim) {
                    out.push(format!("volume.claim: {claim:?} is not a valid claim name"));
                }
                if !local_root.is_absolute() {
                    out.push(format!(
                        "volume.local_root: {} is not absolute",
                        local_root.display()
                    ));
                }
            }
            _ => {}
        }
        if self.poll_interval < Duration::from_millis(10) {
            out.push("poll_interval: must be at least 10ms".into());
        }
        if self.max_concurrent_requests == 0 {
            out.push("max_concurrent_requests: must be at least 1".into());
        }
        if self.kill_grace.as_secs() == 0 {
            out.push("kill_grace: must be at least 1s (Kubernetes counts whole seconds)".into());
        }
        out
    }

    /// The quota of `tenant`'s namespaces.
    pub fn quota_for(&self, tenant: &str) -> Option<&Resources> {
        self.tenant_quotas.get(tenant).or(self.quota.as_ref())
    }
}
