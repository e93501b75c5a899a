//! The `kube` executor: runs each task attempt as a pod on a Kubernetes cluster
//! (feature `kube`, on kube-rs), reporting the same updates and reasons as the local
//! executor for the same lifecycle.
//!
//! # One attempt, one pod
//!
//! An attempt is a bare Pod named `ops-<task id>-<attempt>` with `restartPolicy: Never`,
//! not a Job: Ops already owns retries (a Job's `backoffLimit` would be a second, hidden
//! retry policy), admission and timeouts; a deterministic name makes a retried create
//! find the pod an earlier call made (no duplicate after a coordinator crash); and it is
//! one object per attempt instead of two for the API server to store and for Ops to
//! watch. A pod lost with its node is not recreated by Kubernetes; Ops sees it end
//! (`Evicted`) and its retry policy decides.
//!
//! # Compartments
//!
//! Each tenant environment gets a namespace, `<prefix>-<tenant>-<environment>` (made a
//! DNS label; a hash is appended when the names had to change), created on first use
//! with a ResourceQuota and a LimitRange from the tenant's quota
//! ([`KubeExecutorConfig::quota`], [`KubeExecutorConfig::tenant_quotas`]) and a
//! default-deny NetworkPolicy that allows only DNS and
//! [`NetworkConfig::egress_cidrs`]. Environments map to node pools
//! ([`KubeExecutorConfig::pools`]: a node selector and tolerated taints), so staging work
//! never lands on production nodes.
//!
//! # The pod
//!
//! - Resources become equal requests and limits (Guaranteed QoS when CPU and memory are
//!   set); GPUs become `nvidia.com/gpu` limits, the `nvidia.com/gpu` taint is tolerated,
//!   and a GPU model selects nodes by their `nvidia.com/gpu.product` label (a
//!   case-insensitive substring of the label values the nodes carry).
//! - Security: `runAsNonRoot` with user and group [`KubeExecutorConfig::run_as_user`]
//!   unless the template sets `run_as_root`; no privilege escalation; every capability
//!   dropped; the runtime's default seccomp profile; no service-account token; no
//!   service links. Namespaces enforce the `baseline` Pod Security level and warn on
//!   `restricted`.
//! - The timeout is `activeDeadlineSeconds` (rounded up to whole seconds); cancel deletes
//!   the pod with [`KubeExecutorConfig::kill_grace`] as the grace period;
//!   [`Executor::preempt`] deletes it with the grace it is given (rounded up to whole
//!   seconds, at least 1) and the attempt ends `Preempted`.
//! - Scavenger tasks use the PriorityClass [`KubeExecutorConfig::scavenger_priority_class`]
//!   (value -100, `preemptionPolicy: Never`): they never preempt anything, and any normal
//!   pod preempts them; the attempt then ends `Preempted`.
//! - Every pod carries the labels `app.kubernetes.io/managed-by=ops`, `ops.dev/task-id`,
//!   `ops.dev/attempt`, `ops.dev/tenant`, `ops.dev/environment`; Ops only ever reads,
//!   changes or deletes objects that carry the first.
//! - A finalizer (`ops.dev/outcome`) keeps a pod that something else deletes
//!   (preemption, eviction, node loss, `kubectl delete`) until Ops has read how it
//!   ended; Ops removes it once the attempt's end is reported, and deletes finished pods
//!   after [`KubeExecutorConfig::finished_ttl`] (also those a stopped coordinator left
//!   behind, once its end was read).
//!
//! # Outputs and logs: a shared volume
//!
//! The task directory is mounted into the pod at `/ops/task` (`HOME`, `OPS_TASK_DIR` and
//! the working directory point there) from a volume the coordinator also sees
//! ([`TaskVolume`]): a node `hostPath` for single-node clusters, or a `ReadWriteMany`
//! claim (NFS, CephFS, EFS) mounted at the coordinator's root. Outputs are then found
//! exactly as the local executor finds them, by scanning the task directory, and
//! ops-storage can upload them from there; no sidecar is needed and nothing is copied
//! out of a pod that has stopped. (An uploader sidecar that writes straight to object
//! storage is the alternative for clusters without shared storage; with
//! [`TaskVolume::None`] outputs are not collected.) The pod's log (Kubernetes merges
//! stdout and stderr) is streamed into `task_dir/.ops/stdout.log`.
//!
//! # Watching
//!
//! One kube-runtime watcher follows every Ops pod of the cluster (list, then watch from
//! the list's resourceVersion; after a dropped connection it resumes, after `410 Gone`
//! it lists again). Attempts whose pods vanished while the watch was down are looked up
//! one by one after a relist, so no end goes unreported. After a coordinator restart,
//! [`Executor::reattach`] re-adopts a pod by its name and labels.
//!
//! # Failures mapped to reasons
//!
//! | Kubernetes | Reason |
//! |---|---|
//! | container exit 0 / non-zero | `Completed` / `NonZeroExit` |
//! | exit 129–192 (killed by a signal) | `Signaled` |
//! | `OOMKilled` | `OutOfMemory` |
//! | `StartError` "executable file not found" | `CommandNotFound` |
//! | `ErrImagePull`/`ImagePullBackOff` past the pull timeout, `InvalidImageName` | `ImageUnavailable` |
//! | pod reason `DeadlineExceeded` | `TimedOut` |
//! | condition `DisruptionTarget` `PreemptionByScheduler` | `Preempted` |
//! | pod reason `Evicted`, other `DisruptionTarget`s, deleted by someone else | `Evicted` |
//! | ResourceQuota refusal lasting [`KubeExecutorConfig::quota_wait`] | `QuotaExceeded` |
//! | Ops' own delete (cancel / preempt) | `Cancelled` / `Preempted` |
//!
//! Usage reports wall time only (CPU time and peak memory need the metrics API).
//!
//! # Permissions
//!
//! [`KubeExecutor::connect`] checks every permission it needs with
//! SelfSubjectAccessReviews and fails listing all that are missing. The least-privilege
//! ClusterRole is [`REQUIRED_PERMISSIONS`] (documented in `docs/kubernetes.md`).
//!
//! ```no_run
//! # async fn demo() -> ops_tasks::Result<()> {
//! use ops_tasks::Executor;
//! use ops_tasks::kube::{KubeExecutor, KubeExecutorConfig, NodePool, TaskVolume};
//!
//! let config: KubeExecutorConfig = toml::from_str(r#"
//!     kubeconfig = "/etc/ops/kubeconfig"
//!     volume = { kind = "host_path", path = "/var/lib/ops/tasks" }
//!     quota = { cpu = 64, memory = "256Gi", gpus = 8 }
//!     [pools.production]
//!     node_selector = { "ops.dev/pool" = "production" }
//!     [pools.staging]
//!     node_selector = { "ops.dev/pool" = "staging" }
//!     tolerations = ["ops.dev/pool=staging:NoSchedule"]
//! "#).unwrap();
//! let executor = KubeExecutor::connect(config).await?;
//! assert_eq!(executor.name(), "kube");
//! # Ok(())
//! # }
//! ```

mod config;
mod names;
mod pod;
mod status;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, Pod, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use ops_core::{Reason, Resources};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

pub use config::{KubeExecutorConfig, NetworkConfig, NodePool, TaskVolume};
pub use names::{CONTAINER, FINALIZER, MANAGED_BY};
pub use pod::{GPU_PRODUCT_LABEL, GPU_RESOURCE, TASK_MOUNT};

use crate::executor::{
    Executor, ExecutorUpdate, LaunchSpec, LogStream, Outcome, Reattached, RunHandle,
};
use crate::taskdir::{OPS_DIR, log_path};
use crate::taskdir::{OutputScanner, build_globs};
use crate::{Denied, Error, Result};
use status::Observed;

/// [`Executor::name`] of this executor.
const NAME: &str = "kube";
/// How long the end of an attempt waits for its log stream to drain.
const LOG_DRAIN: Duration = Duration::from_secs(10);
/// The longest time between two looks for finished pods past their TTL.
const JANITOR_MAX: Duration = Duration::from_secs(300);
/// How often node capacity is refreshed.
const CAPACITY_REFRESH: Duration = Duration::from_secs(30);

/// Every permission the executor needs: (verb, group, resource, namespaced). A
/// ClusterRole granting exactly these is in `docs/kubernetes.md`.
pub const REQUIRED_PERMISSIONS: &[(&str, &str, &str, bool)] = &[
    ("create", "", "pods", true),
    ("get", "", "pods", true),
    ("list", "", "pods", false),
    ("watch", "", "pods", false),
    ("patch", "", "pods", true),
    ("delete", "", "pods", true),
    ("get", "", "pods/log", true),
    ("get", "", "namespaces", false),
    ("create", "", "namespaces", false),
    ("create", "", "resourcequotas", true),
    ("patch", "", "resourcequotas", true),
    ("create", "", "limitranges", true),
    ("patch", "", "limitranges", true),
    ("create", "networking.k8s.io", "networkpolicies", true),
    ("get", "scheduling.k8s.io", "priorityclasses", false),
    ("create", "scheduling.k8s.io", "priorityclasses", false),
    ("list", "", "nodes", false),
];

type PodKey = (String, String);

/// Runs task attempts as pods. See the [module docs](self).
///
/// Dropping it stops watching and leaves pods running, as a crash would; a new executor
/// re-adopts them through [`Executor::reattach`].
pub struct KubeExecutor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeExecutor")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: KubeExecutorConfig,
    client: kube::Client,
    server: String,
    requests: Semaphore,
    attempts: Mutex<HashMap<PodKey, Attempt>>,
    /// Namespaces known to exist with their compartment objects.
    namespaces: tokio::sync::Mutex<HashSet<String>>,
    priority_class: tokio::sync::OnceCell<()>,
    nodes: RwLock<NodeView>,
    /// Bumped at every (re)list of the watch; attempts registered before a relist and
    /// missing from it are looked up.
    epoch: AtomicU64,
    shutdown: watch::Sender<bool>,
}

#[derive(Clone, Debug, Default)]
struct NodeView {
    capacity: Resources,
    gpu_products: Vec<String>,
}

struct Attempt {
    task_id: ops_core::TaskId,
    attempt: u32,
    task_dir: PathBuf,
    updates: mpsc::UnboundedSender<ExecutorUpdate>,
    globs: Vec<String>,
    /// The pod exists (created or adopted).
    created: bool,
    /// Epoch when registered.
    epoch: u64,
    started: bool,
    /// Finished is being (or was) reported.
    finishing: bool,
    /// Ops deleted the pod, and why (`Cancelled` or `Preempted`).
    stopped: Option<Reason>,
    /// An image pull problem and when it was first seen.
    problem: Option<(status::Problem, Instant)>,
    outputs: Option<Arc<Mutex<Scan>>>,
    log: Option<tokio::task::JoinHandle<()>>,
    /// Resume logs from here (re-attached attempts).
    log_since: Option<DateTime<Utc>>,
}

impl Attempt {
    /// A new attempt whose pod is not known to exist yet.
    fn new(
        task_id: ops_core::TaskId,
        attempt: u32,
        task_dir: PathBuf,
        globs: Vec<String>,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
        epoch: u64,
    ) -> Self {
        Self {
            task_id,
            attempt,
            task_dir,
            updates,
            globs,
            created: false,
            epoch,
            started: false,
            finishing: false,
            stopped: None,
            problem: None,
            outputs: None,
            log: None,
            log_since: None,
        }
    }
}

/// An attempt's output scanner with where to report: scans and their reports happen
/// under one lock, so the last scan (before `Finished`) never races a periodic one.
struct Scan {
    scanner: OutputScanner,
    updates: mpsc::UnboundedSender<ExecutorUpdate>,
    task_id: ops_core::TaskId,
    attempt: u32,
}

impl Scan {
    fn run(&mut self, last: bool) {
        for (path, size) in self.scanner.scan(last) {
            let _ = self.updates.send(ExecutorUpdate::OutputCreated {
                task_id: self.task_id,
                attempt: self.attempt,
                path,
                size,
            });
        }
    }
}

fn scan_blocking(scan: Arc<Mutex<Scan>>, last: bool) {
    if let Ok(mut s) = scan.lock() {
        s.run(last);
    }
}

/// What the run handle remembers (the `detail` of [`RunHandle`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct HandleDetail {
    namespace: String,
    pod: String,
    task_dir: PathBuf,
}

impl Drop for KubeExecutor {
    fn drop(&mut self) {
        let _ = self.inner.shutdown.send(true);
    }
}

fn api_error(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

/// A deletion grace period in whole seconds: rounded up, at least 1 (0 would be a
/// forced delete that skips SIGTERM, leaving the task no chance to checkpoint).
fn grace_seconds(grace: Duration) -> u32 {
    let secs = grace
        .as_secs()
        .saturating_add(u64::from(grace.subsec_nanos() > 0));
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

fn is_not_found(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| s.code == 409)
}

fn is_quota(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| s.code == 403 && s.message.contains("exceeded quota"))
}

/// A LimitRange refusal: the pod asks for more than one container may ever have in
/// this namespace (the tenant's quota), so waiting cannot help.
fn is_over_limit(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| {
        s.code == 403
            && (s.message.contains("usage per Container is")
                || s.message.contains("usage per Pod is"))
    })
}

/// An API operation, as errors name it: `verb` on `resource` of API `group` (`""`:
/// core) in `namespace` (none: cluster-wide).
#[derive(Clone, Copy)]
struct Op<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    namespace: Option<&'a str>,
}

impl<'a> Op<'a> {
    fn new(verb: &'a str, group: &'a str, resource: &'a str, namespace: Option<&'a str>) -> Self {
        Self {
            verb,
            group,
            resource,
            namespace,
        }
    }
}

impl std::fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(ns) = self.namespace {
            write!(f, " in {ns}")?;
        }
        Ok(())
    }
}

impl Inner {
    /// An engine error naming the operation; a 403 names its verb and resource.
    fn error(&self, op: Op<'_>, e: kube::Error) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 403 => Error::Forbidden {
                denied: vec![Denied {
                    verb: op.verb.into(),
                    resource: op.resource.into(),
                    group: op.group.into(),
                    namespace: op.namespace.map(str::to_owned),
                    message: Some(s.message.clone()),
                }],
            },
            kube::Error::Api(s) => Error::Executor {
                executor: NAME.into(),
                message: format!("{op}: {} ({} {})", s.message, s.code, s.reason),
            },
            _ => Error::Cluster {
                server: self.server.clone(),
                message: format!("{op}: {e}"),
            },
        }
    }
}

impl KubeExecutor {
    /// Connects to the cluster: loads the kubeconfig, checks that the API server answers
    /// and that every permission in [`REQUIRED_PERMISSIONS`] is granted (listing every
    /// one that is not), creates the scavenger PriorityClass, reads node capacity, and
    /// starts watching Ops' pods.
    pub async fn connect(config: KubeExecutorConfig) -> Result<Self> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidConfig { problems });
        }
        let kube_config = load_config(&config).await?;
        let server = kube_config.cluster_url.to_string();
        let client = kube::Client::try_from(kube_config).map_err(|e| Error::Cluster {
            server: server.clone(),
            message: format!("cannot build a client: {e}"),
        })?;
        Self::with_client(config, client, server).await
    }

    /// Like [`KubeExecutor::connect`] with a ready client (`server` names it in errors).
    pub async fn with_client(
        config: KubeExecutorConfig,
        client: kube::Client,
        server: String,
    ) -> Result<Self> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidConfig { problems });
        }
        match tokio::time::timeout(config.connect_timeout, client.apiserver_version()).await {
            Ok(Ok(v)) => {
                tracing::info!(server = %server, version = %v.git_version, "connected to Kubernetes")
            }
            Ok(Err(e)) => {
                return Err(Error::Cluster {
                    server,
                    message: format!("not reachable: {e}"),
                });
            }
            Err(_) => {
                return Err(Error::Cluster {
                    server,
                    message: format!(
                        "no answer within {:?} (connect_timeout)",
                        config.connect_timeout
                    ),
                });
            }
        }
        check_permissions(&client, &server, &config).await?;

        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            requests: Semaphore::new(config.max_concurrent_requests),
            config,
            client,
            server,
            attempts: Mutex::new(HashMap::new()),
            namespaces: tokio::sync::Mutex::new(HashSet::new()),
            priority_class: tokio::sync::OnceCell::new(),
            nodes: RwLock::new(NodeView::default()),
            epoch: AtomicU64::new(0),
            shutdown,
        });
        inner.ensure_priority_class().await?;
        inner.refresh_nodes().await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(watch_loop(inner.clone(), ready_tx));
        tokio::spawn(sweep_loop(inner.clone()));
        // The first list is done before launches: every pod created from now on is seen.
        let _ = tokio::time::timeout(inner.config.connect_timeout, ready_rx).await;
        Ok(Self { inner })
    }

    /// The pod this executor would create for `spec` (for previews and dry runs): the
    /// same object [`Executor::launch`] sends. A spec that cannot become a pod (no image,
    /// an environment without a pool, an unknown GPU model…) is `Error::Executor`.
    pub fn pod_for(&self, spec: &LaunchSpec) -> Result<Pod> {
        let ns = self.namespace_for(spec.tenant.as_str(), spec.environment.as_str());
        self.inner
            .task_pod(spec, &ns)
            .map_err(|pod::Unlaunchable(message)| Error::Executor {
                executor: NAME.into(),
                message,
            })
    }

    /// The cluster's API server URL.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The namespace of a tenant's environment.
    pub fn namespace_for(&self, tenant: &str, environment: &str) -> String {
        names::namespace(&self.inner.config.namespace_prefix, tenant, environment)
    }

    /// Attempts this executor is following now.
    pub fn active(&self) -> usize {
        self.inner.attempts.lock().map(|a| a.len()).unwrap_or(0)
    }
}

async fn load_config(config: &KubeExecutorConfig) -> Result<kube::Config> {
    let options = kube::config::KubeConfigOptions {
        context: config.context.clone(),
        ..Default::default()
    };
    match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::config("kubeconfig", format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::config("kubeconfig", format!("{}: {e}", path.display())))
        }
        None if config.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::config("kubeconfig", e)),
        None => kube::Config::infer().await.map_err(|e| {
            Error::config(
                "kubeconfig",
                format!(
                    "no Kubernetes configuration found ($KUBECONFIG, ~/.kube/config or \
                     in-cluster): {e}"
                ),
            )
        }),
    }
}

/// Asks the API server, with one SelfSubjectAccessReview per permission, whether each is
/// granted; fails listing every one that is not.
async fn check_permissions(
    client: &kube::Client,
    server: &str,
    config: &KubeExecutorConfig,
) -> Result<()> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    // Namespaced permissions are checked in a namespace the executor would use.
    let sample_ns = names::namespace(&config.namespace_prefix, "sample", "default");
    let checks = REQUIRED_PERMISSIONS
        .iter()
        .map(|&(verb, group, resource, namespaced)| {
            let api = api.clone();
            let namespace = namespaced.then(|| sample_ns.clone());
            async move {
                let (resource, subresource) = match resource.split_once('/') {
                    Some((r, s)) => (r, Some(s.to_owned())),
                    None => (resource, None),
                };
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            verb: Some(verb.into()),
                            group: Some(group.into()),
                            resource: Some(resource.into()),
                            subresource: subresource.clone(),
                            namespace: namespace.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let answer = api.create(&PostParams::default(), &review).await;
                let full = match &subresource {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.to_owned(),
                };
                (verb, group, full, namespace, answer)
            }
        });
    let answers = futures::future::join_all(checks).await;
    let mut denied = Vec::new();
    for (verb, group, resource, namespace, answer) in answers {
        match answer {
            Ok(review) => {
                let status = review.status.unwrap_or_default();
                if !status.allowed {
                    denied.push(Denied {
                        verb: verb.into(),
                        resource,
                        group: group.into(),
                        namespace,
                        message: status.reason.filter(|r| !r.is_empty()),
                    });
                }
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(Error::Forbidden {
                    denied: vec![Denied {
                        verb: "create".into(),
                        resource: "selfsubjectaccessreviews".into(),
                        group: "authorization.k8s.io".into(),
                        namespace: None,
                        message: Some(s.message.clone()),
                    }],
                });
            }
            Err(e) => {
                return Err(Error::Cluster {
                    server: server.to_owned(),
                    message: format!("permission check failed: {e}"),
                });
            }
        }
    }
    if denied.is_empty() {
        Ok(())
    } else {
        Err(Error::Forbidden { denied })
    }
}

impl Inner {
    /// The attempt's pod in `ns`, its GPU model matched against the nodes' products.
    fn task_pod(&self, spec: &LaunchSpec, ns: &str) -> Result<Pod, pod::Unlaunchable> {
        let products = match &spec.resources.gpus.model {
            Some(model) if spec.resources.gpus.count > 0 => self
                .nodes
                .read()
                .map(|n| pod::matching_products(model, &n.gpu_products))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        pod::task_pod(&self.config, spec, ns, &products)
    }

    async fn ensure_priority_class(&self) -> Result<()> {
        self.priority_class
            .get_or_try_init(|| async {
                let api: Api<PriorityClass> = Api::all(self.client.clone());
                let class = pod::scavenger_priority_class(&self.config.scavenger_priority_class);
                match api.create(&PostParams::default(), &class).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_conflict(&e) => Ok(()),
                    Err(e) => Err(self.error(
                        Op::new("create", "scheduling.k8s.io", "priorityclasses", None),
                        e,
                    )),
                }
            })
            .await
            .map(|_| ())
    }

    /// Reads nodes: capacity of the schedulable nodes (of the configured pools) and the
    /// GPU models present.
    async fn refresh_nodes(&self) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let nodes = api
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error(Op::new("list", "", "nodes", None), e))?;
        let mut view = NodeView::default();
        for node in nodes.items {
            let labels = node.metadata.labels.clone().unwrap_or_default();
            if let Some(product) = labels.get(pod::GPU_PRODUCT_LABEL) {
                view.gpu_products.push(product.clone());
            }
            let schedulable = !node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let in_pool = self.config.pools.is_empty()
                || self.config.pools.values().any(|p| {
                    p.node_selector
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                });
            if !(schedulable && ready && in_pool) {
                continue;
            }
            let alloc = node
                .status
                .as_ref()
                .and_then(|s| s.allocatable.clone())
                .unwrap_or_default();
            let cpu = alloc
                .get("cpu")
                .and_then(|q| Resources::parse_cpu(&q.0).ok())
                .unwrap_or(0);
            let memory = alloc
                .get("memory")
                .and_then(|q| Resources::parse_memory(&q.0).ok())
                .unwrap_or(0);
            let gpus = alloc
                .get(pod::GPU_RESOURCE)
                .and_then(|q| q.0.parse::<u32>().ok())
                .unwrap_or(0);
            view.capacity = view
                .capacity
                .saturating_add(&Resources::new(cpu, memory).with_gpus(gpus, None));
        }
        view.gpu_products.sort();
        view.gpu_products.dedup();
        if let Ok(mut nodes) = self.nodes.write() {
            *nodes = view;
        }
        Ok(())
    }

    /// Creates the namespace of a tenant environment with its quota, limits and network
    /// policy, once per executor (objects that exist already are left as they are,
    /// except the quota and limits, which follow the configuration).
    async fn ensure_namespace(&self, ns: &str, tenant: &str, environment: &str) -> Result<()> {
        let mut known = self.namespaces.lock().await;
        if known.contains(ns) {
            return Ok(());
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces
            .create(
                &PostParams::default(),
                &pod::namespace(ns, tenant, environment),
            )
            .await
        {
            Ok(_) => tracing::info!(namespace = ns, tenant, environment, "created namespace"),
            Err(e) if is_conflict(&e) => {
                let existing = namespaces
                    .get(ns)
                    .await
                    .map_err(|e| self.error(Op::new("get", "", "namespaces", None), e))?;
                let ours = existing
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::MANAGED_BY.0))
                    .is_some_and(|v| v == names::MANAGED_BY.1);
                if !ours {
                    return Err(Error::Executor {
                        executor: NAME.into(),
                        message: format!(
                            "namespace {ns} exists but is not managed by Ops (no label {}={}); \
                             Ops only uses namespaces it created",
                            names::MANAGED_BY.0,
                            names::MANAGED_BY.1
                        ),
                    });
                }
            }
            Err(e) => return Err(self.error(Op::new("create", "", "namespaces", None), e)),
        }
        let quota = self.config.quota_for(tenant).cloned();
        let patch = PatchParams::default();
        if let Some(quota) = &quota {
            let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), ns);
            let object = pod::resource_quota(ns, quota);
            upsert(&api, pod::COMPARTMENT_OBJECT, &object, &patch)
                .await
                .map_err(|e| self.error(Op::new("patch", "", "resourcequotas", Some(ns)), e))?;
        }
        let api: Api<LimitRange> = Api::namespaced(self.client.clone(), ns);
        let object = pod::limit_range(ns, &self.config.default_resources, quota.as_ref());
        upsert(&api, pod::COMPARTMENT_OBJECT, &object, &patch)
            .await
            .map_err(|e| self.error(Op::new("patch", "", "limitranges", Some(ns)), e))?;
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), ns);
        match api
            .create(
                &PostParams::default(),
                &pod::network_policy(ns, &self.config),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) => {
                return Err(self.error(
                    Op::new("create", "networking.k8s.io", "networkpolicies", Some(ns)),
                    e,
                ));
            }
        }
        known.insert(ns.to_owned());
        Ok(())
    }

    /// Acts on one observation of a pod (from the watch, a relist, a lookup).
    fn observe(self: &Arc<Self>, pod: &Pod, deleted: bool) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return;
        };
        let key = (ns.clone(), name.clone());
        let mut attempts = match self.attempts.lock() {
            Ok(a) => a,
            Err(_) => return,
        };
        let Some(a) = attempts.get_mut(&key) else {
            return;
        };
        if a.finishing {
            return;
        }
        a.created = true;
        match status::observe(pod, a.stopped, deleted) {
            Observed::Pending { problem } => match problem {
                Some(p) if p.fatal => {
                    let outcome =
                        Outcome::new(p.reason, Some(format!("{}: {}", p.waiting, p.message)));
                    a.finishing = true;
                    drop(attempts);
                    self.end_unstarted(key, outcome);
                }
                Some(p) => {
                    if a.problem.is_none() {
                        tracing::info!(pod = %name, namespace = %ns, reason = %p.waiting, "image not available yet");
                        a.problem = Some((p, Instant::now()));
                    }
                }
                None => a.problem = None,
            },
            Observed::Running { started_at } => {
                a.problem = None;
                if !a.started {
                    self.start_following(&key, a, started_at);
                }
            }
            Observed::Finished {
                started_at,
                outcome,
            } => {
                a.finishing = true;
                if !a.started
                    && let Some(at) = started_at
                {
                    self.start_following(&key, a, at);
                }
                let log = a.log.take();
                drop(attempts);
                tokio::spawn(self.clone().finish(key, outcome, log));
            }
        }
    }

    /// First sight of the container running: `Started`, outputs, logs.
    fn start_following(self: &Arc<Self>, key: &PodKey, a: &mut Attempt, at: DateTime<Utc>) {
        a.started = true;
        let _ = a.updates.send(ExecutorUpdate::Started {
            task_id: a.task_id,
            attempt: a.attempt,
            at,
            gpus: Vec::new(),
        });
        if !a.globs.is_empty() && !matches!(self.config.volume, TaskVolume::None) {
            // The scanner records what it reported under `.ops/`.
            let _ = std::fs::create_dir_all(a.task_dir.join(OPS_DIR));
            match build_globs(&a.globs)
                .and_then(|g| OutputScanner::new(&a.task_dir, a.attempt, g, a.log_since.is_some()))
            {
                Ok(scanner) => {
                    a.outputs = Some(Arc::new(Mutex::new(Scan {
                        scanner,
                        updates: a.updates.clone(),
                        task_id: a.task_id,
                        attempt: a.attempt,
                    })))
                }
                Err(e) => tracing::warn!(task_id = %a.task_id, error = %e, "outputs not scanned"),
            }
        }
        if self.config.follow_logs {
            let since = a.log_since;
            let path = log_path(&a.task_dir, LogStream::Stdout);
            a.log = Some(tokio::spawn(self.clone().follow_log(
                key.clone(),
                path,
                since,
            )));
        }
    }

    /// Streams the pod's log into the task directory until the container ends.
    async fn follow_log(self: Arc<Self>, key: PodKey, path: PathBuf, since: Option<DateTime<Utc>>) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let params = LogParams {
            follow: true,
            container: Some(names::CONTAINER.into()),
            since_time: since.and_then(|t| {
                k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros()).ok()
            }),
            ..Default::default()
        };
        let stream = {
            let _permit = self.requests.acquire().await;
            api.log_stream(&key.1, &params).await
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pod = %key.1, error = %e, "no log stream");
                return;
            }
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await;
        let mut file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the task log");
                return;
            }
        };
        let mut lines = stream.lines();
        use tokio::io::AsyncWriteExt;
        while let Some(line) = lines.next().await {
            match line {
                Ok(mut l) => {
                    l.push('\n');
                    if file.write_all(l.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(pod = %key.1, error = %e, "log stream ended");
                    break;
                }
            }
        }
        let _ = file.flush().await;
    }

    /// Reports the end of an attempt that started (or ended) as a pod: drains its log,
    /// scans outputs a last time, sends `Finished`, and releases the pod.
    async fn finish(
        self: Arc<Self>,
        key: PodKey,
        outcome: Outcome,
        log: Option<tokio::task::JoinHandle<()>>,
    ) {
        if let Some(log) = log {
            let _ = tokio::time::timeout(LOG_DRAIN, log).await;
        }
        let scan = self
            .attempts
            .lock()
            .ok()
            .and_then(|a| a.get(&key).and_then(|a| a.outputs.clone()));
        if let Some(scan) = scan {
            let _ = tokio::task::spawn_blocking(move || scan_blocking(scan, true)).await;
        }
        self.report_end(&key, outcome);
        self.release(&key).await;
    }

    /// Sends `Finished` and forgets the attempt.
    fn report_end(&self, key: &PodKey, outcome: Outcome) {
        let removed = self.attempts.lock().ok().and_then(|mut a| a.remove(key));
        if let Some(a) = removed {
            tracing::debug!(task_id = %a.task_id, attempt = a.attempt, reason = %outcome.reason, "attempt ended");
            let _ = a.updates.send(ExecutorUpdate::Finished {
                task_id: a.task_id,
                attempt: a.attempt,
                outcome,
            });
        }
    }

    /// Ends an attempt whose pod never ran its container: deletes the pod, reports.
    fn end_unstarted(self: &Arc<Self>, key: PodKey, outcome: Outcome) {
        let inner = self.clone();
        tokio::spawn(async move {
            inner.delete_pod(&key, Some(0)).await;
            inner.report_end(&key, outcome);
            // Already deleted: only the finalizer holds it.
            inner.remove_finalizer(&key).await;
        });
    }

    /// Lets go of a pod whose end is reported: removes Ops' finalizer, then deletes the
    /// pod after the finished-pod TTL.
    async fn release(self: &Arc<Self>, key: &PodKey) {
        self.remove_finalizer(key).await;
        let ttl = self.config.finished_ttl;
        let inner = self.clone();
        let key = key.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(ttl) => { inner.delete_pod(&key, None).await; }
                _ = shutdown.changed() => {}
            }
        });
    }

    /// Removes Ops' finalizer from a pod.
    async fn remove_finalizer(&self, key: &PodKey) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        // Ops' pods are created with its finalizer alone, at index 0: try that first
        // (one request); when the test fails, read the pod and remove it where it is.
        let mut index = Some(0);
        for _ in 0..2 {
            let Some(i) = index else { break };
            let patch = Patch::Json::<()>(remove_finalizer_at(i));
            let result = {
                let _permit = self.requests.acquire().await;
                api.patch(&key.1, &PatchParams::default(), &patch).await
            };
            match result {
                Ok(_) => break,
                Err(e) if is_not_found(&e) => break,
                Err(e) if api_error(&e).is_some_and(|s| s.code == 422 || s.code == 409) => {
                    let pod = {
                        let _permit = self.requests.acquire().await;
                        api.get_opt(&key.1).await
                    };
                    index = match pod {
                        Ok(Some(pod)) => pod
                            .metadata
                            .finalizers
                            .unwrap_or_default()
                            .iter()
                            .position(|f| f == names::FINALIZER)
                            .filter(|&p| p != i),
                        _ => None,
                    };
                }
                Err(e) => {
                    tracing::warn!(pod = %key.1, error = %e, "cannot remove the finalizer");
                    break;
                }
            }
        }
    }

    /// Stops an attempt for `reason` (`Cancelled` or `Preempted`): deletes its pod with
    /// `grace` (rounded up to whole seconds, at least 1) as the grace period.
    async fn stop(
        self: &Arc<Self>,
        handle: &RunHandle,
        reason: Reason,
        grace: Duration,
    ) -> Result<()> {
        let d = detail(handle)?;
        let key = (d.namespace.clone(), d.pod.clone());
        let tracked = match self.attempts.lock() {
            Ok(mut a) => match a.get_mut(&key) {
                Some(a) => {
                    // The first reason wins, as with the local executor.
                    a.stopped.get_or_insert(reason);
                    Some(a.created)
                }
                None => None,
            },
            Err(_) => None,
        };
        if tracked == Some(false) {
            // Still waiting for quota: the creation loop reports the stop.
            return Ok(());
        }
        tracing::info!(pod = %d.pod, namespace = %d.namespace, ?reason, ?grace, "deleting pod");
        let existed = self.delete_pod(&key, Some(grace_seconds(grace))).await;
        if !existed && tracked.is_some() {
            self.vanished(&key);
        }
        Ok(())
    }

    /// Deletes a pod (404 is fine). `grace`: seconds, `None` for the pod's own.
    async fn delete_pod(&self, key: &PodKey, grace: Option<u32>) -> bool {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let params = DeleteParams {
            grace_period_seconds: grace,
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            ..Default::default()
        };
        let _permit = self.requests.acquire().await;
        match api.delete(&key.1, &params).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                tracing::warn!(pod = %key.1, namespace = %key.0, error = %e, "cannot delete pod");
                false
            }
        }
    }

    /// Whether a pod is a finished Ops pod past the TTL that nobody follows any more
    /// (its coordinator stopped before its own timer fired). A pod that still carries
    /// Ops' finalizer is not: no coordinator has read how it ended yet.
    fn expired(&self, pod: &Pod, now: DateTime<Utc>) -> Option<PodKey> {
        let key = (pod.metadata.namespace.clone()?, pod.metadata.name.clone()?);
        let tracked = self
            .attempts
            .lock()
            .map(|a| a.contains_key(&key))
            .unwrap_or(true);
        let ours_pending = pod
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == names::FINALIZER));
        if tracked || ours_pending || pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let Observed::Finished { .. } = status::observe(pod, None, false) else {
            return None;
        };
        let finished_at = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
            .filter_map(status::time)
            .max()?;
        let ttl = chrono::Duration::from_std(self.config.finished_ttl).unwrap_or_default();
        (now - finished_at >= ttl).then_some(key)
    }

    /// Deletes a pod [`Inner::expired`] found.
    async fn delete_expired(&self, key: PodKey) {
        tracing::debug!(pod = %key.1, namespace = %key.0, "deleting a finished pod past its TTL");
        self.delete_pod(&key, None).await;
    }

    /// Lists Ops' pods and deletes those past their TTL that nobody follows.
    async fn clean_up(self: &Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let listed = {
            let _permit = self.requests.acquire().await;
            api.list(&ListParams::default().labels(&names::managed_selector()))
                .await
        };
        let pods = match listed {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list pods for clean-up");
                return;
            }
        };
        let now = Utc::now();
        for key in pods.iter().filter_map(|p| self.expired(p, now)) {
            self.delete_expired(key).await;
        }
    }

    /// Looks up attempts the last relist did not return: their pods went while the watch
    /// was down.
    async fn look_up_missing(self: Arc<Self>, seen: HashSet<PodKey>, epoch: u64) {
        let missing: Vec<PodKey> = match self.attempts.lock() {
            Ok(a) => a
                .iter()
                .filter(|(k, a)| a.created && !a.finishing && a.epoch < epoch && !seen.contains(*k))
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => return,
        };
        for key in missing {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
            let found = {
                let _permit = self.requests.acquire().await;
                api.get_opt(&key.1).await
            };
            match found {
                Ok(Some(pod)) => self.observe(&pod, false),
                Ok(None) => self.vanished(&key),
                Err(e) => tracing::warn!(pod = %key.1, error = %e, "lookup failed"),
            }
        }
    }

    /// The pod is gone without Ops seeing how it ended.
    fn vanished(self: &Arc<Self>, key: &PodKey) {
        let stopped = {
            let Ok(mut attempts) = self.attempts.lock() else {
                return;
            };
            let Some(a) = attempts.get_mut(key) else {
                return;
            };
            if a.finishing {
                return;
            }
            a.finishing = true;
            a.stopped
        };
        let outcome = if let Some(reason) = stopped {
            Outcome::new(reason, Some(status::stop_message(reason).into()))
        } else {
            Outcome::new(
                Reason::Evicted,
                Some(format!("pod {} deleted outside Ops before it ended", key.1)),
            )
        };
        self.report_end(key, outcome);
    }

    /// One round of timers: image pull timeouts and output scans.
    async fn sweep(self: &Arc<Self>) {
        let timeout = self.config.image_pull_timeout;
        let mut pull_failed = Vec::new();
        let mut scans = Vec::new();
        if let Ok(mut attempts) = self.attempts.lock() {
            for (key, a) in attempts.iter_mut() {
                if a.finishing {
                    continue;
                }
                if let Some((p, since)) = &a.problem
                    && since.elapsed() >= timeout
                {
                    a.finishing = true;
                    pull_failed.push((
                        key.clone(),
                        Outcome::new(
                            p.reason,
                            Some(format!(
                                "{} for {:?}: {}",
                                p.waiting,
                                since.elapsed(),
                                p.message
                            )),
                        ),
                    ));
                    continue;
                }
                if let Some(s) = &a.outputs {
                    scans.push(s.clone());
                }
            }
        }
        for (key, outcome) in pull_failed {
            self.end_unstarted(key, outcome);
        }
        if scans.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for scan in scans {
                scan_blocking(scan, false);
            }
        })
        .await;
    }

    /// Creates the pod, retrying while a ResourceQuota refuses it for up to
    /// `quota_wait`; the attempt then ends `QuotaExceeded`.
    async fn create_pod(self: Arc<Self>, key: PodKey, pod: Pod) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let deadline = Instant::now() + self.config.quota_wait;
        let mut backoff = Duration::from_millis(250);
        loop {
            let created = {
                let _permit = self.requests.acquire().await;
                api.create(&PostParams::default(), &pod).await
            };
            match created {
                Ok(p) => {
                    self.observe(&p, false);
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => return self.adopt(&api, &key, &pod).await,
                Err(e) if is_over_limit(&e) => {
                    let message = api_error(&e).map(|s| s.message.clone()).unwrap_or_default();
                    tracing::warn!(pod = %key.1, namespace = %key.0, %message, "larger than the tenant's limits");
                    self.report_end(&key, Outcome::new(Reason::QuotaExceeded, Some(message)));
                    return Ok(());
                }
                Err(e) if is_quota(&e) => {
                    let stopped = self
                        .attempts
                        .lock()
                        .ok()
                        .map(|a| a.get(&key).map_or(Some(Reason::Cancelled), |a| a.stopped))
                        .unwrap_or(Some(Reason::Cancelled));
                    let message = api_error(&e).map(|s| s.message.clone()).unwrap_or_default();
                    if let Some(reason) = stopped {
                        let why =
                            format!("{} while waiting for quota", status::stop_message(reason));
                        self.report_end(&key, Outcome::new(reason, Some(why)));
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(pod = %key.1, namespace = %key.0, %message, "quota refused the pod");
                        self.report_end(&key, Outcome::new(Reason::QuotaExceeded, Some(message)));
                        return Ok(());
                    }
                    tracing::debug!(pod = %key.1, %message, "quota exceeded; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(self.error(Op::new("create", "", "pods", Some(&key.0)), e)),
            }
        }
    }

    /// A pod with the attempt's name exists already (a retried launch): adopts it when
    /// it is the same attempt's.
    async fn adopt(self: &Arc<Self>, api: &Api<Pod>, key: &PodKey, want: &Pod) -> Result<()> {
        let existing = api
            .get(&key.1)
            .await
            .map_err(|e| self.error(Op::new("get", "", "pods", Some(&key.0)), e))?;
        let label = |p: &Pod, k: &str| p.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned();
        let same = [names::TASK_ID, names::ATTEMPT, names::MANAGED_BY.0]
            .iter()
            .all(|k| label(&existing, k) == label(want, k));
        if !same {
            self.attempts.lock().ok().map(|mut a| a.remove(key));
            return Err(Error::Executor {
                executor: NAME.into(),
                message: format!(
                    "pod {}/{} exists and belongs to another attempt or to someone else",
                    key.0, key.1
                ),
            });
        }
        tracing::info!(pod = %key.1, namespace = %key.0, "adopted an existing pod");
        self.observe(&existing, false);
        Ok(())
    }
}

/// Creates `object`, or server-side applies it when it exists.
async fn upsert<K>(api: &Api<K>, name: &str, object: &K, patch: &PatchParams) -> kube::Result<()>
where
    K: kube::Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => api
            .patch(name, patch, &Patch::Merge(object))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// A JSON patch removing `/metadata/finalizers/<i>` after testing it is Ops' finalizer.
fn remove_finalizer_at(i: usize) -> json_patch::Patch {
    serde_json::from_value(serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": names::FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]))
    .unwrap_or_default()
}

async fn watch_loop(inner: Arc<Inner>, ready: tokio::sync::oneshot::Sender<()>) {
    let api: Api<Pod> = Api::all(inner.client.clone());
    let config = watcher::Config::default()
        .labels(&names::managed_selector())
        .page_size(500);
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut shutdown = inner.shutdown.subscribe();
    let mut ready = Some(ready);
    let mut relist: Option<(HashSet<PodKey>, u64)> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            event = stream.next() => event,
        };
        match event {
            Some(Ok(Event::Init)) => {
                let epoch = inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                relist = Some((HashSet::new(), epoch));
            }
            Some(Ok(Event::InitApply(pod))) => {
                if let (Some((seen, _)), Some(ns), Some(name)) =
                    (&mut relist, &pod.metadata.namespace, &pod.metadata.name)
                {
                    seen.insert((ns.clone(), name.clone()));
                }
                inner.observe(&pod, false);
                if let Some(key) = inner.expired(&pod, Utc::now()) {
                    let inner = inner.clone();
                    tokio::spawn(async move { inner.delete_expired(key).await });
                }
            }
            Some(Ok(Event::InitDone)) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                if let Some((seen, epoch)) = relist.take() {
                    tokio::spawn(inner.clone().look_up_missing(seen, epoch));
                }
            }
            Some(Ok(Event::Apply(pod))) => inner.observe(&pod, false),
            Some(Ok(Event::Delete(pod))) => inner.observe(&pod, true),
            Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            None => break,
        }
    }
}

async fn sweep_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut tick = tokio::time::interval(inner.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_nodes = Instant::now();
    // Pods a stopped coordinator left behind are also caught by the watch's lists.
    let janitor_every = (inner.config.finished_ttl / 2).clamp(Duration::from_secs(1), JANITOR_MAX);
    let mut last_janitor = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        inner.sweep().await;
        if last_nodes.elapsed() >= CAPACITY_REFRESH {
            last_nodes = Instant::now();
            if let Err(e) = inner.refresh_nodes().await {
                tracing::warn!(error = %e, "cannot refresh node capacity");
            }
        }
        if last_janitor.elapsed() >= janitor_every {
            last_janitor = Instant::now();
            inner.clean_up().await;
        }
    }
}

fn detail(handle: &RunHandle) -> Result<HandleDetail> {
    serde_json::from_value(handle.detail.clone()).map_err(|e| Error::Executor {
        executor: NAME.into(),
        message: format!(
            "run handle of task {} is not a kube handle: {e}",
            handle.task_id
        ),
    })
}

/// Makes the task directory (`shared`: for the pod, writable by its user) and `.ops/`
/// in it when the log is streamed there. Nothing when neither is needed.
fn prepare_task_dir(task_dir: &Path, shared: bool, logs: bool) -> Result<()> {
    let dir = if logs {
        task_dir.join(OPS_DIR)
    } else if shared {
        task_dir.to_owned()
    } else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    if shared {
        use std::os::unix::fs::PermissionsExt;
        // The pod runs as another user (65532 by default); the directory is the task's
        // own, so it may write there.
        std::fs::set_permissions(task_dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::io(task_dir, e))?;
    }
    Ok(())
}

#[async_trait]
impl Executor for KubeExecutor {
    fn name(&self) -> &str {
        NAME
    }

    fn capacity(&self) -> Resources {
        if let Some(c) = &self.inner.config.capacity {
            return c.clone();
        }
        self.inner
            .nodes
            .read()
            .map(|n| n.capacity.clone())
            .unwrap_or_default()
    }

    async fn launch(
        &self,
        spec: LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<RunHandle> {
        let inner = &self.inner;
        let tenant = spec.tenant.as_str();
        let environment = spec.environment.as_str();
        let ns = names::namespace(&inner.config.namespace_prefix, tenant, environment);
        let name = names::pod_name(&spec.task_id, spec.attempt);
        let key = (ns.clone(), name.clone());
        let handle = RunHandle {
            executor: NAME.into(),
            task_id: spec.task_id,
            attempt: spec.attempt,
            detail: serde_json::to_value(HandleDetail {
                namespace: ns.clone(),
                pod: name.clone(),
                task_dir: spec.task_dir.clone(),
            })?,
        };
        // Directory creation can take milliseconds on a busy disk: off the runtime.
        let dir = spec.task_dir.clone();
        let shared = !matches!(inner.config.volume, TaskVolume::None);
        let logs = inner.config.follow_logs;
        tokio::task::spawn_blocking(move || prepare_task_dir(&dir, shared, logs))
            .await
            .map_err(|e| Error::Executor {
                executor: NAME.into(),
                message: format!("preparing the task directory: {e}"),
            })??;
        let pod = match inner.task_pod(&spec, &ns) {
            Ok(p) => p,
            Err(pod::Unlaunchable(message)) => {
                tracing::warn!(task_id = %spec.task_id, %message, "cannot launch");
                let _ = updates.send(ExecutorUpdate::Finished {
                    task_id: spec.task_id,
                    attempt: spec.attempt,
                    outcome: Outcome::new(Reason::LaunchFailed, Some(message)),
                });
                return Ok(handle);
            }
        };
        inner.ensure_namespace(&ns, tenant, environment).await?;
        if spec.scavenger {
            inner.ensure_priority_class().await?;
        }
        let attempt = Attempt::new(
            spec.task_id,
            spec.attempt,
            spec.task_dir.clone(),
            spec.output_globs.clone(),
            updates,
            inner.epoch.load(Ordering::SeqCst),
        );
        if let Ok(mut attempts) = inner.attempts.lock() {
            attempts.insert(key.clone(), attempt);
        }
        let create = inner.clone().create_pod(key.clone(), pod);
        // A quota refusal keeps retrying in the background; anything else is answered now.
        let mut create = Box::pin(create);
        tokio::select! {
            result = &mut create => {
                if let Err(e) = result {
                    inner.attempts.lock().ok().map(|mut a| a.remove(&key));
                    return Err(e);
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = create.await {
                        tracing::warn!(error = %e, "pod creation failed");
                        inner.report_end(&key, Outcome::new(Reason::LaunchFailed, Some(e.to_string())));
                    }
                });
            }
        }
        Ok(handle)
    }

    async fn cancel(&self, handle: &RunHandle) -> Result<()> {
        self.inner
            .stop(handle, Reason::Cancelled, self.inner.config.kill_grace)
            .await
    }

    async fn preempt(&self, handle: &RunHandle, grace: Duration) -> Result<()> {
        self.inner.stop(handle, Reason::Preempted, grace).await
    }

    async fn reattach(
        &self,
        handle: &RunHandle,
        spec: &LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<Reattached> {
        let d = detail(handle)?;
        let key = (d.namespace.clone(), d.pod.clone());
        let api: Api<Pod> = Api::namespaced(self.inner.client.clone(), &d.namespace);
        let found = api.get_opt(&d.pod).await.map_err(|e| {
            self.inner
                .error(Op::new("get", "", "pods", Some(&d.namespace)), e)
        })?;
        let Some(pod) = found else {
            return Ok(Reattached::Gone(Outcome::new(
                Reason::CoordinatorLost,
                Some(format!("pod {}/{} no longer exists", d.namespace, d.pod)),
            )));
        };
        let task = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::TASK_ID))
            .cloned();
        if task.as_deref() != Some(handle.task_id.to_string().as_str()) {
            return Ok(Reattached::Gone(Outcome::new(
                Reason::CoordinatorLost,
                Some(format!(
                    "pod {}/{} belongs to another task",
                    d.namespace, d.pod
                )),
            )));
        }
        // Logs resume from the last write; a line printed in that second may repeat.
        let log_path = log_path(&d.task_dir, LogStream::Stdout);
        let log_since = std::fs::metadata(&log_path)
            .and_then(|m| m.modified())
            .ok()
            .map(DateTime::<Utc>::from);
        let _ = std::fs::create_dir_all(d.task_dir.join(OPS_DIR));
        let mut attempt = Attempt::new(
            handle.task_id,
            handle.attempt,
            d.task_dir.clone(),
            spec.output_globs.clone(),
            updates,
            self.inner.epoch.load(Ordering::SeqCst),
        );
        attempt.created = true;
        attempt.log_since = Some(log_since.unwrap_or_else(Utc::now));
        if let Ok(mut attempts) = self.inner.attempts.lock() {
            attempts.insert(key, attempt);
        }
        tracing::info!(pod = %d.pod, namespace = %d.namespace, "re-attached");
        self.inner.observe(&pod, false);
        Ok(Reattached::Running)
    }

    fn log_path(&self, task_dir: &Path, _stream: LogStream) -> PathBuf {
        // Kubernetes merges stdout and stderr into one log.
        log_path(task_dir, LogStream::Stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_is_whole_seconds_rounded_up() {
        assert_eq!(grace_seconds(Duration::ZERO), 1);
        assert_eq!(grace_seconds(Duration::from_millis(300)), 1);
        assert_eq!(grace_seconds(Duration::from_secs(30)), 30);
        assert_eq!(grace_seconds(Duration::from_millis(30_001)), 31);
        assert_eq!(grace_seconds(Duration::MAX), u32::MAX);
    }
}
