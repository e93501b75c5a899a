//! A Kubernetes API-server simulator for tests.
//!
//! [`KubeSim::start`] serves a faithful subset of the Kubernetes API over real HTTP on
//! `127.0.0.1` (random port), reached with an ordinary [`kube::Client`]. Behind it run
//! a scheduler and a node agent (kubelet) that move pods through their lifecycle.
//!
//! # What is simulated
//! - Resources: core/v1 namespaces, pods (with `status`, `log` and `eviction`
//!   subresources), nodes, resourcequotas, limitranges, events;
//!   networking.k8s.io/v1 networkpolicies; scheduling.k8s.io/v1 priorityclasses;
//!   authorization.k8s.io/v1 selfsubjectaccessreviews; `/version`, `/api`, `/apis`.
//! - Verbs: create, get, list (label and field selectors, `limit`/`continue`), watch
//!   (from a resourceVersion, bookmarks, `timeoutSeconds`, `410 Gone` for expired
//!   versions), update with optimistic concurrency, patch (merge, strategic merge,
//!   JSON patch, apply treated as a merge patch), delete (grace periods, finalizers,
//!   preconditions), deletecollection.
//! - One global resourceVersion, a bounded change log ([`SimConfig::watch_window`]) and
//!   compaction on demand ([`KubeSim::compact`]).
//! - Validation (`422 Invalid` listing every cause), defaulting as a real server does
//!   for pods, and the admission plugins NamespaceLifecycle, LimitRanger, Priority,
//!   DefaultTolerationSeconds and ResourceQuota, with the real error messages.
//! - RBAC as a deny list ([`KubeSim::deny`]), also answered by SelfSubjectAccessReview.
//! - Faults: outages (`503`), dropped watches, compaction, OOM kills, kubelet eviction,
//!   preemption and node loss.
//!
//! # What is not
//! No authentication or TLS, no admission webhooks, no real containers or images
//! (containers are local processes or timers), no server-side apply field management
//! (apply is a merge patch that creates when missing), no protobuf, no garbage
//! collector for owner references, no API aggregation, only the `v1` versions above.

mod agent;
mod api;
mod config;
mod store;

pub use config::*;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::agent::Agent;
use crate::api::{ApiState, QuotaTracker};
use crate::store::{Kind, Store};

/// Errors of the simulator's own API (not Kubernetes `Status` answers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// No such object.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Kind or resource of the object.
        kind: String,
        /// Namespace ("" for cluster-scoped objects).
        namespace: String,
        /// Name of the object.
        name: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A running simulated cluster: API server, scheduler and node agent.
pub struct KubeSim {
    state: Arc<ApiState>,
    agent: Arc<Agent>,
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    quota_task: tokio::task::JoinHandle<()>,
    _logs: tempfile::TempDir,
}

impl std::fmt::Debug for KubeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSim")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl KubeSim {
    /// Starts the simulator on `127.0.0.1` with a random port (needs a tokio runtime).
    pub async fn start(config: SimConfig) -> Result<KubeSim, SimError> {
        let store = Arc::new(Store::new(config.watch_window));
        let tracker = Arc::new(QuotaTracker::default());
        {
            let t = tracker.clone();
            store.set_observer(Box::new(move |c, _prev| t.observe(c)));
        }
        api::bootstrap(&store);
        let logs = tempfile::Builder::new()
            .prefix("kubesim-logs-")
            .tempdir()
            .map_err(|e| SimError::Other(format!("creating the logs directory: {e}")))?;
        let agent = Arc::new(Agent::start(
            store.clone(),
            &config,
            logs.path().to_path_buf(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| SimError::Other(format!("binding 127.0.0.1:0: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SimError::Other(e.to_string()))?;
        let state = Arc::new(ApiState::new(
            store.clone(),
            agent.clone(),
            tracker.clone(),
            config.user.clone(),
            addr.to_string(),
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = api::router(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        let quota_task = tokio::spawn(api::quota_status_loop(store, tracker));
        Ok(KubeSim {
            state,
            agent,
            url: format!("http://{addr}"),
            shutdown: Some(tx),
            server: Some(server),
            quota_task,
            _logs: logs,
        })
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A client for the simulator (default namespace `default`); needs a tokio runtime.
    pub fn client(&self) -> kube::Client {
        let uri = self.url.parse().expect("a valid URL");
        let config = kube::Config::new(uri);
        kube::Client::try_from(config).expect("a client for an http URL")
    }

    /// A kubeconfig file body pointing at the simulator (context `kubesim`, namespace
    /// `default`, no credentials).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {url}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\n    namespace: default\ncurrent-context: kubesim\nusers:\n- name: kubesim\n  user: {{}}\npreferences: {{}}\n",
            url = self.url
        )
    }

    /// Expires every resourceVersion before the current one: new watches and list
    /// continues from them answer `410 Gone` (open watches continue).
    pub fn compact(&self) {
        self.state.store.compact();
    }

    /// Ends every open watch response (clients reconnect from their last version).
    pub fn drop_watches(&self) {
        self.state.drop_watches();
    }

    /// Denies `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection` or `*`) on `resource` (`pods`, `pods/log`, `nodes`, ... or `*`)
    /// for requests and SelfSubjectAccessReviews: they answer `403 Forbidden`.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.state
            .denied
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((verb.to_string(), resource.to_string()));
    }

    /// Removes every denial.
    pub fn allow_all(&self) {
        self.state
            .denied
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// While `down`, every request answers `503 ServiceUnavailable`.
    pub fn set_unavailable(&self, down: bool) {
        self.state.unavailable.store(down, Ordering::Relaxed);
    }

    /// Kills a pod's task container as the kernel OOM killer would (exit 137, OOMKilled).
    pub fn oom_kill(&self, ns: &str, pod: &str) -> Result<(), SimError> {
        self.agent.oom_kill(ns, pod)
    }

    /// Evicts a pod as the kubelet does under node pressure (phase Failed, reason Evicted).
    pub fn evict(&self, ns: &str, pod: &str) -> Result<(), SimError> {
        self.agent.evict(ns, pod)
    }

    /// Preempts a pod as the scheduler does (DisruptionTarget, then graceful deletion).
    pub fn preempt(&self, ns: &str, pod: &str) -> Result<(), SimError> {
        self.agent.preempt(ns, pod)
    }

    /// Loses a node: NotReady, and its pods are disrupted and deleted.
    pub fn lose_node(&self, node: &str) -> Result<(), SimError> {
        self.agent.lose_node(node)
    }

    /// A pod as stored, if present.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        let v = self.state.store.get_arc(Kind::Pod, Some(ns), name)?;
        serde_json::from_value(Value::clone(&v)).ok()
    }

    /// Every pod in every namespace.
    pub fn pods(&self) -> Vec<Pod> {
        let mut out = Vec::new();
        self.state.store.scan(Kind::Pod, None, None, |_, v| {
            if let Ok(p) = serde_json::from_value(Value::clone(v)) {
                out.push(p);
            }
            true
        });
        out
    }

    /// Any stored object as JSON, by plural resource name (`namespaces`, `pods`,
    /// `resourcequotas`, `limitranges`, `priorityclasses`, `networkpolicies`, `nodes`,
    /// `events`); `ns` is ignored for cluster-scoped kinds.
    pub fn object(&self, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let kind = Kind::from_plural(kind)?;
        self.state.store.get(kind, ns, name)
    }

    /// How many HTTP requests the server has answered (or is answering).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// How many watch responses are open.
    pub fn open_watches(&self) -> usize {
        self.state.open_watches.load(Ordering::Relaxed)
    }

    /// Stops the server and the agent (kills every process it started).
    pub async fn stop(mut self) {
        self.halt();
        self.agent.shutdown().await;
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(2), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.state.closed.store(true, Ordering::Relaxed);
        self.state.drop_watches();
        self.quota_task.abort();
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.halt();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
