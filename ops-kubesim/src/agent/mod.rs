//! The node side of the simulator: a scheduler and one simulated kubelet per node.
//!
//! [`Agent::start`] creates the Node objects and spawns two loops on the current tokio
//! runtime. Both follow [`Store::subscribe`] and also re-list periodically (and at once
//! after a lagged broadcast), so no pod is ever stranded:
//!
//! * the scheduler ([`scheduler`]) binds pending pods (nodeSelector, required node
//!   affinity, taints/tolerations, cpu/memory/`nvidia.com/gpu`/pod-count requests),
//!   reports `Unschedulable` with the real scheduler's message style and preempts
//!   lower-priority pods;
//! * the kubelet ([`kubelet`]) runs a worker task per bound pod: image pulls (with
//!   `ErrImagePull`/`ImagePullBackOff`/`InvalidImageName`), containers as real
//!   processes ([`crate::Runtime::Processes`], see [`process`]) or timers
//!   ([`crate::Runtime::Instant`]), memory limits (OOMKilled), `activeDeadlineSeconds`,
//!   graceful deletion, and status written the way a real kubelet writes it.
//!
//! Containers are never restarted: `restartPolicy` `OnFailure` and `Always` behave like
//! `Never` (the pod ends Succeeded iff every container exited 0, else Failed).

mod kubelet;
mod process;
mod scheduler;
mod util;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::store::{Kind, Store};
use crate::{Runtime, SimConfig, SimError};
use util::{
    Involved, at, is_deleting, is_terminal, meta, now_time, record_event, s, set_condition, time_in,
};

/// How often the loops re-list the store besides following its changes.
const RESYNC_MS: u64 = 1000;

/// A node this agent runs a kubelet for.
#[derive(Clone, Debug)]
struct NodeSpec {
    name: String,
    host_ip: String,
    index: u32,
}

/// What a pod worker is told to do.
#[derive(Debug)]
enum Cmd {
    /// Graceful deletion with this grace period in seconds.
    Delete(i64),
    /// Kill the task container as the OOM killer would.
    Oom,
    /// Kubelet eviction.
    Evict,
    /// The pod is gone or its node was lost: kill everything, write nothing.
    Abort,
}

struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
    /// The grace period of the deletion the worker was told about, if any.
    grace: Option<i64>,
    node: String,
    handle: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct KubeletState {
    /// Running pod workers by uid.
    workers: HashMap<String, Worker>,
    /// Pods whose worker has finished (terminal), by uid.
    done: HashSet<String>,
}

/// Shared state of the agent's tasks.
pub(crate) struct Inner {
    store: Arc<Store>,
    runtime: Runtime,
    missing_images: Vec<String>,
    pull_delay: Duration,
    logs_dir: PathBuf,
    /// emptyDir volumes and default working directories live here.
    scratch: tempfile::TempDir,
    nodes: Vec<NodeSpec>,
    lost: Mutex<HashSet<String>>,
    kubelet: Mutex<KubeletState>,
    running: Mutex<HashSet<(String, String, String)>>,
    /// Template log file per container name for `Runtime::Instant`.
    instant_logs: Mutex<HashMap<String, PathBuf>>,
    procs: process::Procs,
    ip_seq: AtomicU32,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn is_lost(&self, node: &str) -> bool {
        lock(&self.lost).contains(node)
    }

    fn log_path(&self, ns: &str, pod: &str, container: &str) -> PathBuf {
        // Names cannot contain '_', so the flat layout is unambiguous (and saves a
        // directory per pod).
        self.logs_dir.join(format!("{ns}_{pod}_{container}.log"))
    }

    /// Writes an Instant container's log ("ran <name>"). Every such log of a container
    /// name is a hard link to one template file: creating files is far slower than
    /// linking them on some file systems, and 10,000 pods must start quickly.
    async fn write_instant_log(&self, log: &std::path::Path, container: &str) {
        let line = format!("{} ran {container}\n", util::now_nano());
        let template = {
            let mut t = lock(&self.instant_logs);
            match t.get(container) {
                Some(p) => Some(p.clone()),
                None => {
                    let p = self.logs_dir.join(format!(".instant_{container}.log"));
                    std::fs::write(&p, &line).ok().map(|_| {
                        t.insert(container.to_string(), p.clone());
                        p
                    })
                }
            }
        };
        let Some(template) = template else {
            let _ = tokio::fs::write(log, line).await;
            return;
        };
        let _ = std::fs::remove_file(log);
        if std::fs::hard_link(&template, log).is_err() {
            let _ = tokio::fs::write(log, line).await;
        }
    }

    fn set_running(&self, ns: &str, pod: &str, container: &str, running: bool) {
        let key = (ns.to_string(), pod.to_string(), container.to_string());
        let mut r = lock(&self.running);
        if running {
            r.insert(key);
        } else {
            r.remove(&key);
        }
    }

    fn next_pod_ip(&self, node: &NodeSpec) -> String {
        let n = self.ip_seq.fetch_add(1, Ordering::Relaxed) % 65_000 + 2;
        format!("10.{}.{}.{}", 244 + (node.index % 10), n / 256, n % 256)
    }

    /// Sends a command to a pod's worker; false if it has none.
    fn send(&self, uid: &str, cmd: Cmd) -> bool {
        let k = lock(&self.kubelet);
        match k.workers.get(uid) {
            Some(w) => w.tx.send(cmd).is_ok(),
            None => false,
        }
    }
}

/// The scheduler and the kubelets of every simulated node.
pub(crate) struct Agent {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

/// The Node object for a configured node.
fn node_object(n: &crate::SimNode, spec: &NodeSpec) -> Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
    ] {
        labels.insert(k.into(), v.into());
    }
    labels.insert("kubernetes.io/hostname".into(), n.name.clone().into());
    for (k, v) in &n.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    let mut capacity = json!({
        "cpu": util::cpu_quantity(n.cpu_millis),
        "memory": util::mem_quantity(n.memory_bytes),
        "pods": n.pods.to_string(),
        "ephemeral-storage": "100Gi",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    if n.gpus > 0 {
        capacity["nvidia.com/gpu"] = n.gpus.to_string().into();
    }
    let now = now_time();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "lastHeartbeatTime": now, "lastTransitionTime": now,
               "reason": reason, "message": message})
    };
    let taints: Vec<Value> = n
        .taints
        .iter()
        .map(|t| {
            let mut v = json!({"key": t.key, "effect": t.effect});
            if !t.value.is_empty() {
                v["value"] = t.value.clone().into();
            }
            v
        })
        .collect();
    let mut spec_v = json!({
        "podCIDR": format!("10.{}.0.0/16", 244 + (spec.index % 10)),
        "podCIDRs": [format!("10.{}.0.0/16", 244 + (spec.index % 10))],
        "providerID": format!("kubesim://{}", n.name),
    });
    if !taints.is_empty() {
        spec_v["taints"] = taints.into();
    }
    let id = util::hex64(&n.name);
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n.name,
            "labels": labels,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": spec_v,
        "status": {
            "capacity": capacity.clone(),
            "allocatable": capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": spec.host_ip},
                {"type": "Hostname", "address": n.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": &id[..32],
                "systemUUID": format!("{}-{}-{}-{}-{}", &id[32..40], &id[40..44], &id[44..48], &id[48..52], &id[52..64]),
                "bootID": format!("{}-{}-{}-{}-{}", &id[..8], &id[8..12], &id[12..16], &id[16..20], &id[20..32]),
                "kernelVersion": "6.8.0-kubesim",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://2.1.4",
                "kubeletVersion": "v1.34.0",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": [],
        },
    })
}

/// Marks a pod for graceful deletion (deletionTimestamp + deletionGracePeriodSeconds);
/// unbound or terminal pods get grace 0 and go at once (unless finalizers hold them).
pub(crate) fn graceful_delete(store: &Store, ns: &str, name: &str, uid: &str, grace: Option<i64>) {
    let _ = store.update(Kind::Pod, Some(ns), name, |o| {
        if meta(o, "uid") != uid {
            return Err(util::conflict("changed"));
        }
        if is_deleting(o) {
            return Err(util::conflict("already deleting"));
        }
        let bound = s(o, &["spec", "nodeName"]).is_some_and(|n| !n.is_empty());
        let grace = if !bound || is_terminal(o) {
            0
        } else {
            grace
                .or_else(|| {
                    at(o, &["spec", "terminationGracePeriodSeconds"]).and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0)
        };
        o["metadata"]["deletionTimestamp"] = time_in(grace).into();
        o["metadata"]["deletionGracePeriodSeconds"] = grace.into();
        Ok(())
    });
}

impl Agent {
    /// Creates Node objects for config.nodes in the store, then spawns the scheduler and
    /// the kubelet loops on the current tokio runtime (they follow store.subscribe() and
    /// also resync by listing periodically). `logs_dir`: where each container's log file lives.
    pub fn start(store: Arc<Store>, config: &SimConfig, logs_dir: PathBuf) -> Agent {
        let nodes: Vec<NodeSpec> = config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeSpec {
                name: n.name.clone(),
                host_ip: format!("172.18.{}.{}", (i + 2) / 250, (i + 2) % 250),
                index: i as u32,
            })
            .collect();
        for (n, spec) in config.nodes.iter().zip(&nodes) {
            let _ = store.create(Kind::Node, node_object(n, spec));
        }
        let _ = std::fs::create_dir_all(&logs_dir);
        let scratch = tempfile::Builder::new()
            .prefix("kubesim-pods-")
            .tempdir()
            .unwrap_or_else(|_| tempfile::tempdir_in(&logs_dir).expect("a scratch directory"));
        let inner = Arc::new(Inner {
            store: store.clone(),
            runtime: config.runtime.clone(),
            missing_images: config.missing_images.clone(),
            pull_delay: config.pull_delay,
            logs_dir,
            scratch,
            nodes,
            lost: Mutex::new(HashSet::new()),
            kubelet: Mutex::new(KubeletState::default()),
            running: Mutex::new(HashSet::new()),
            instant_logs: Mutex::new(HashMap::new()),
            procs: process::Procs::default(),
            ip_seq: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
        });
        let tasks = vec![
            tokio::spawn(scheduler::Scheduler::new(store).run(inner.clone())),
            tokio::spawn(kubelet::run(inner.clone())),
            tokio::spawn(process::memory_monitor(inner.clone())),
        ];
        Agent {
            inner,
            tasks: Mutex::new(tasks),
        }
    }

    /// Path of a container's log file: every line as "<RFC3339Nano timestamp> <text>\n"
    /// (the api's log endpoint strips or keeps timestamps, follows while the container runs).
    pub fn log_file(&self, ns: &str, pod: &str, container: &str) -> PathBuf {
        self.inner.log_path(ns, pod, container)
    }

    /// Whether that container is still running (log follow stops when false).
    pub fn container_running(&self, ns: &str, pod: &str, container: &str) -> bool {
        lock(&self.inner.running).contains(&(
            ns.to_string(),
            pod.to_string(),
            container.to_string(),
        ))
    }

    fn pod_uid(&self, ns: &str, pod: &str) -> Result<(Value, String), SimError> {
        let obj = self
            .inner
            .store
            .get(Kind::Pod, Some(ns), pod)
            .ok_or_else(|| SimError::NotFound {
                kind: "pods".into(),
                namespace: ns.into(),
                name: pod.into(),
            })?;
        let uid = meta(&obj, "uid").to_string();
        Ok((obj, uid))
    }

    fn worker_cmd(&self, ns: &str, pod: &str, cmd: Cmd, what: &str) -> Result<(), SimError> {
        let (obj, uid) = self.pod_uid(ns, pod)?;
        if self.inner.send(&uid, cmd) {
            return Ok(());
        }
        let state = if is_terminal(&obj) {
            "has already terminated"
        } else {
            "is not running on a node"
        };
        Err(SimError::Other(format!(
            "cannot {what} pod {ns}/{pod}: it {state}"
        )))
    }

    /// Kills the task container (the first one still running) as the kernel OOM killer
    /// would: terminated reason OOMKilled exit 137.
    pub fn oom_kill(&self, ns: &str, pod: &str) -> Result<(), SimError> {
        self.worker_cmd(ns, pod, Cmd::Oom, "OOM-kill")
    }

    /// Kubelet eviction: kills the containers; phase Failed, status.reason "Evicted",
    /// message "The node was low on resource: memory. ...", containers terminated exit
    /// 137 reason Error, condition DisruptionTarget (TerminationByKubelet). The pod object
    /// stays, as with a real eviction by the kubelet.
    pub fn evict(&self, ns: &str, pod: &str) -> Result<(), SimError> {
        self.worker_cmd(ns, pod, Cmd::Evict, "evict")
    }

    /// Preemption by the scheduler: condition DisruptionTarget reason
    /// PreemptionByScheduler, a Preempted event, then graceful deletion.
    pub fn preempt(&self, ns: &str, pod: &str) -> Result<(), SimError> {
        let (obj, uid) = self.pod_uid(ns, pod)?;
        let grace = at(&obj, &["spec", "terminationGracePeriodSeconds"])
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let node = s(&obj, &["spec", "nodeName"]).unwrap_or("").to_string();
        scheduler::preempt_pod(
            &self.inner.store,
            ns,
            pod,
            &uid,
            &format!("Preempted by a higher priority pod on node {node}"),
            grace,
        );
        Ok(())
    }

    /// The node stops responding: its Ready condition (and the others) turn Unknown, it
    /// gets the `node.kubernetes.io/unreachable` NoSchedule and NoExecute taints, and its
    /// pods (those not tolerating the taint forever) get condition DisruptionTarget reason
    /// DeletionByTaintManager and are then deleted. Their processes are killed.
    pub fn lose_node(&self, node: &str) -> Result<(), SimError> {
        let store = &self.inner.store;
        if store.get(Kind::Node, None, node).is_none() {
            return Err(SimError::NotFound {
                kind: "nodes".into(),
                namespace: String::new(),
                name: node.into(),
            });
        }
        lock(&self.inner.lost).insert(node.to_string());
        let now = now_time();
        let _ = store.update(Kind::Node, None, node, |o| {
            if let Some(conds) = o["status"]["conditions"].as_array_mut() {
                for c in conds {
                    c["status"] = "Unknown".into();
                    c["reason"] = "NodeStatusUnknown".into();
                    c["message"] = "Kubelet stopped posting node status.".into();
                    c["lastTransitionTime"] = now.clone().into();
                }
            }
            if !o["spec"]["taints"].is_array() {
                o["spec"]["taints"] = json!([]);
            }
            let taints = o["spec"]["taints"].as_array_mut().expect("array");
            taints.retain(|t| t["key"] != "node.kubernetes.io/unreachable");
            taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": now}));
            taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": now}));
            Ok(())
        });
        record_event(
            store,
            &Involved {
                ns: "",
                name: node,
                uid: node,
                kind: "Node",
                field_path: None,
            },
            "Normal",
            "NodeNotReady",
            &format!("Node {node} status is now: NodeNotReady"),
            "node-controller",
            None,
        );
        // Kill the node's processes silently: its kubelet is gone.
        let uids: Vec<String> = {
            let k = lock(&self.inner.kubelet);
            k.workers
                .iter()
                .filter(|(_, w)| w.node == node)
                .map(|(u, _)| u.clone())
                .collect()
        };
        for uid in uids {
            self.inner.send(&uid, Cmd::Abort);
        }
        let pods: Vec<Value> = store
            .list(Kind::Pod, None)
            .into_iter()
            .filter(|p| s(p, &["spec", "nodeName"]) == Some(node) && !is_terminal(p))
            .collect();
        for p in pods {
            let tolerates_forever = util::arr(&p, &["spec", "tolerations"]).iter().any(|t| {
                let key = s(t, &["key"]).unwrap_or("");
                let op = s(t, &["operator"]).unwrap_or("Equal");
                let effect = s(t, &["effect"]).unwrap_or("");
                (key == "node.kubernetes.io/unreachable" || (key.is_empty() && op == "Exists"))
                    && (effect.is_empty() || effect == "NoExecute")
                    && at(t, &["tolerationSeconds"]).is_none()
            });
            if tolerates_forever {
                continue;
            }
            let (ns, name, uid) = (
                meta(&p, "namespace").to_string(),
                meta(&p, "name").to_string(),
                meta(&p, "uid").to_string(),
            );
            let res = store.update(Kind::Pod, Some(&ns), &name, |o| {
                if meta(o, "uid") != uid {
                    return Err(util::conflict("changed"));
                }
                set_condition(
                    &mut o["status"],
                    "DisruptionTarget",
                    "True",
                    Some("DeletionByTaintManager"),
                    Some("Taint manager: deleting due to NoExecute taint"),
                );
                Ok(())
            });
            if let Ok(obj) = res {
                record_event(
                    store,
                    &Involved::pod(&obj),
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {ns}/{name}"),
                    "taint-eviction-controller",
                    None,
                );
            }
            let _ = store.update(Kind::Pod, Some(&ns), &name, |o| {
                if meta(o, "uid") != uid {
                    return Err(util::conflict("changed"));
                }
                if !is_deleting(o) {
                    o["metadata"]["deletionTimestamp"] = now_time().into();
                }
                o["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                Ok(())
            });
        }
        Ok(())
    }

    /// Stops the loops and kills every process (whole process groups: nothing is left
    /// behind).
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let handles: Vec<tokio::task::AbortHandle> = {
            let mut k = lock(&self.inner.kubelet);
            k.workers
                .values_mut()
                .filter_map(|w| w.handle.take())
                .collect()
        };
        for h in &handles {
            h.abort();
        }
        self.inner.procs.kill_all();
        // Give the killed processes a moment to be reaped.
        for _ in 0..40 {
            if self.inner.procs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.inner.procs.kill_all();
        }
        lock(&self.inner.running).clear();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let mut k = lock(&self.inner.kubelet);
        for w in k.workers.values_mut() {
            if let Some(h) = w.handle.take() {
                h.abort();
            }
        }
        drop(k);
        self.inner.procs.kill_all();
    }
}

#[cfg(test)]
mod tests;
