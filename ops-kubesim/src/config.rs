//! Public configuration of the simulator: the nodes it offers, how containers run,
//! and a few knobs for watches, image pulls and RBAC messages.

use std::collections::BTreeMap;
use std::time::Duration;

/// Configuration of a [`crate::KubeSim`].
///
/// Build it with [`SimConfig::default`] and the `with_*` builder methods; the struct is
/// `#[non_exhaustive]`, so fields may be set on a default value but not by literal.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// The nodes of the simulated cluster. Default: one node `node-1` with 16 cpu,
    /// 64Gi memory, 110 pods and no GPUs.
    pub nodes: Vec<SimNode>,
    /// How containers run. Default [`Runtime::Processes`].
    pub runtime: Runtime,
    /// How many changes are kept for watches; a watch or list from an older
    /// resourceVersion answers `410 Gone`. Default 100 000.
    pub watch_window: usize,
    /// Images that fail to pull (exact match), besides any image whose reference
    /// contains `does-not-exist`.
    pub missing_images: Vec<String>,
    /// How long every image pull takes before the container starts. Default zero.
    pub pull_delay: Duration,
    /// The identity named in RBAC (Forbidden) messages.
    /// Default `system:serviceaccount:ops:coordinator`.
    pub user: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: vec![SimNode::new("node-1", 16_000, 64 * 1024 * 1024 * 1024)],
            runtime: Runtime::Processes,
            watch_window: 100_000,
            missing_images: Vec::new(),
            pull_delay: Duration::ZERO,
            user: "system:serviceaccount:ops:coordinator".to_string(),
        }
    }
}

impl SimConfig {
    /// Replaces the cluster's nodes.
    #[must_use]
    pub fn with_nodes(mut self, nodes: Vec<SimNode>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Sets how containers run.
    #[must_use]
    pub fn with_runtime(mut self, r: Runtime) -> Self {
        self.runtime = r;
        self
    }

    /// Sets how many changes are kept for watches.
    #[must_use]
    pub fn with_watch_window(mut self, n: usize) -> Self {
        self.watch_window = n;
        self
    }

    /// Adds images that fail to pull (exact match).
    #[must_use]
    pub fn with_missing_images<I, S>(mut self, images: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.missing_images
            .extend(images.into_iter().map(Into::into));
        self
    }

    /// Sets how long every image pull takes.
    #[must_use]
    pub fn with_pull_delay(mut self, d: Duration) -> Self {
        self.pull_delay = d;
        self
    }

    /// Sets the identity named in RBAC messages.
    #[must_use]
    pub fn with_user(mut self, user: &str) -> Self {
        self.user = user.to_string();
        self
    }
}

/// One node of the simulated cluster.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimNode {
    /// Node name (also the `kubernetes.io/hostname` label).
    pub name: String,
    /// Extra labels of the Node object.
    pub labels: BTreeMap<String, String>,
    /// Taints of the Node object (`spec.taints`).
    pub taints: Vec<SimTaint>,
    /// Allocatable cpu in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory in bytes.
    pub memory_bytes: u64,
    /// Number of `nvidia.com/gpu` devices.
    pub gpus: u32,
    /// Maximum number of pods. Default 110.
    pub pods: u32,
}

impl SimNode {
    /// A node with the given cpu (millicores) and memory (bytes), 110 pods, no GPUs,
    /// no extra labels and no taints.
    pub fn new(name: &str, cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            name: name.to_string(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            cpu_millis,
            memory_bytes,
            gpus: 0,
            pods: 110,
        }
    }

    /// Gives the node `n` GPUs of `product`: sets the label `nvidia.com/gpu.product` and
    /// the taint `nvidia.com/gpu=present:NoSchedule`.
    #[must_use]
    pub fn gpus(mut self, n: u32, product: &str) -> Self {
        self.gpus = n;
        self.labels
            .insert("nvidia.com/gpu.product".to_string(), product.to_string());
        if !self
            .taints
            .iter()
            .any(|t| t.key == "nvidia.com/gpu" && t.effect == "NoSchedule")
        {
            self.taints.push(SimTaint {
                key: "nvidia.com/gpu".to_string(),
                value: "present".to_string(),
                effect: "NoSchedule".to_string(),
            });
        }
        self
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }

    /// Adds a taint (`effect`: `NoSchedule`, `PreferNoSchedule` or `NoExecute`).
    #[must_use]
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push(SimTaint {
            key: key.to_string(),
            value: value.to_string(),
            effect: effect.to_string(),
        });
        self
    }

    /// Sets the maximum number of pods.
    #[must_use]
    pub fn max_pods(mut self, pods: u32) -> Self {
        self.pods = pods;
        self
    }
}

/// A node taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTaint {
    /// Taint key.
    pub key: String,
    /// Taint value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// How the simulated kubelet runs containers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Runtime {
    /// Each container's command+args runs as a local process in its own process group,
    /// found on `PATH` (missing: terminated `StartError`, exit code 128). There are no
    /// mount namespaces: a hostPath volume mount maps to the host path joined with the
    /// mount's `subPath` (created if missing), emptyDir and other volume types to a
    /// scratch directory per pod; the container's `workingDir` and the command, args and
    /// env values that start with a `mountPath` are translated to those directories (no
    /// `workingDir`: the first mount's directory, else a scratch directory). The
    /// environment is `PATH` and `HOME` of the simulator process, `HOSTNAME`, and the
    /// container's `env` (`value` with `$(VAR)` expansion, `fieldRef`,
    /// `resourceFieldRef`). A container without command or args exits 0 at once.
    /// `limits.memory` is enforced by polling the group's RSS every 50 ms (OOMKilled,
    /// exit 137). `restartPolicy` `OnFailure`/`Always` are treated like `Never`:
    /// containers are never restarted.
    Processes,
    /// No processes: every container runs for `run_for` then exits with `exit_code`;
    /// its log gets one line `ran <name>`. Statuses, deletion, deadlines and fault
    /// injection behave as with processes; the kubelet's routine `Pulled`, `Created` and
    /// `Started` events are skipped to keep thousands of pods cheap.
    Instant {
        /// How long each container "runs".
        run_for: Duration,
        /// The exit code of every container.
        exit_code: i32,
    },
}
