//! The simulated kubelets: one worker task per pod bound to a simulated node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use super::util::{
    Involved, arr, at, hex64, invalid_image, is_deleting, is_terminal, meta, normalize_image,
    now_time, random_hex64, record_event, s, set_condition,
};
use super::{Cmd, Inner, NodeSpec, RESYNC_MS, Worker, lock, process};
use crate::Runtime;
use crate::store::{ChangeType, Kind};

const KUBELET: &str = "kubelet";
const EVICTION_MESSAGE: &str =
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.";
const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";
const UNKNOWN_MESSAGE: &str = "The container could not be located when the pod was terminated";

/// Follows the store and keeps one worker per pod bound to a simulated node.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut rx = inner.store.subscribe();
    resync(&inner);
    let mut tick = tokio::time::interval(Duration::from_millis(RESYNC_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if inner.stopping() {
            return;
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(c) => {
                    if c.kind == Kind::Pod {
                        handle(&inner, c.ty == ChangeType::Deleted, &c.object);
                    }
                }
                Err(RecvError::Lagged(_)) => resync(&inner),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => resync(&inner),
        }
    }
}

/// Re-reads every pod: starts missing workers, aborts those whose pod is gone.
fn resync(inner: &Arc<Inner>) {
    let mut pods = Vec::new();
    inner.store.scan(Kind::Pod, None, None, |_, v| {
        pods.push(v.clone());
        true
    });
    let uids: HashSet<&str> = pods.iter().map(|p| meta(p, "uid")).collect();
    {
        let mut k = lock(&inner.kubelet);
        for (uid, w) in &k.workers {
            if !uids.contains(uid.as_str()) {
                let _ = w.tx.send(Cmd::Abort);
            }
        }
        k.done.retain(|u| uids.contains(u.as_str()));
    }
    for p in &pods {
        handle(inner, false, p);
    }
}

fn grace_of(pod: &Value) -> i64 {
    at(pod, &["metadata", "deletionGracePeriodSeconds"])
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Finishes a deletion the kubelet has nothing left to do for.
fn confirm_deletion(inner: &Inner, pod: &Value) {
    let uid = meta(pod, "uid").to_string();
    let _ = inner.store.update(
        Kind::Pod,
        Some(meta(pod, "namespace")),
        meta(pod, "name"),
        |o| {
            if meta(o, "uid") != uid || grace_of(o) == 0 {
                return Err(super::util::conflict("changed"));
            }
            o["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            Ok(())
        },
    );
}

fn handle(inner: &Arc<Inner>, deleted: bool, pod: &Value) {
    let uid = meta(pod, "uid");
    if uid.is_empty() {
        return;
    }
    if deleted {
        let mut k = lock(&inner.kubelet);
        if let Some(w) = k.workers.get(uid) {
            let _ = w.tx.send(Cmd::Abort);
        }
        k.done.remove(uid);
        return;
    }
    let Some(node_name) = s(pod, &["spec", "nodeName"]) else {
        return;
    };
    let Some(node) = inner.node(node_name) else {
        return;
    };
    if inner.is_lost(node_name) || inner.stopping() {
        return;
    }
    let mut k = lock(&inner.kubelet);
    if let Some(w) = k.workers.get_mut(uid) {
        // A deletion, or a later one with a shorter grace period.
        if is_deleting(pod) && w.grace.is_none_or(|g| grace_of(pod) < g) {
            w.grace = Some(grace_of(pod));
            let _ = w.tx.send(Cmd::Delete(grace_of(pod)));
        }
        return;
    }
    if k.done.contains(uid) || is_terminal(pod) {
        k.done.insert(uid.to_string());
        drop(k);
        if is_deleting(pod) && grace_of(pod) > 0 {
            confirm_deletion(inner, pod);
        }
        return;
    }
    if is_deleting(pod) {
        // Deleted before this kubelet ever started it.
        drop(k);
        confirm_deletion(inner, pod);
        return;
    }
    let (tx, rx) = unbounded_channel();
    let worker = PodWorker::new(inner.clone(), pod, node.clone());
    let handle = tokio::spawn(worker.run(rx));
    k.workers.insert(
        uid.to_string(),
        Worker {
            tx,
            grace: None,
            node: node_name.to_string(),
            handle: Some(handle.abort_handle()),
        },
    );
}

#[derive(Clone, Debug)]
enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        code: i32,
        reason: String,
        message: Option<String>,
        started_at: String,
        finished_at: String,
    },
}

struct Ctr {
    name: String,
    spec: Value,
    image: String,
    pulled: bool,
    container_id: Option<String>,
    state: CState,
}

impl Ctr {
    fn image_ref(&self) -> String {
        if self.pulled {
            normalize_image(&self.image)
        } else {
            self.image.clone()
        }
    }

    fn image_id(&self) -> String {
        if !self.pulled {
            return String::new();
        }
        let full = normalize_image(&self.image);
        let repo = match full.split_once('@') {
            Some((r, _)) => r.to_string(),
            None => match full.rsplit_once(':') {
                Some((r, tag)) if !tag.contains('/') => r.to_string(),
                _ => full.clone(),
            },
        };
        format!("{repo}@sha256:{}", hex64(&full))
    }

    fn running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }

    fn exit_code(&self) -> Option<i32> {
        match &self.state {
            CState::Terminated { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        let state = match &self.state {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = m.as_str().into();
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated {
                code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({
                    "exitCode": code,
                    "reason": reason,
                    "startedAt": started_at,
                    "finishedAt": finished_at,
                });
                if let Some(m) = message {
                    t["message"] = m.as_str().into();
                }
                if let Some(id) = &self.container_id {
                    t["containerID"] = id.as_str().into();
                }
                json!({"terminated": t})
            }
        };
        let running = self.running();
        let mut v = json!({
            "name": self.name,
            "image": self.image_ref(),
            "imageID": self.image_id(),
            "ready": running,
            "started": running,
            "restartCount": 0,
            "state": state,
            "lastState": {},
        });
        if let Some(id) = &self.container_id {
            v["containerID"] = id.as_str().into();
        }
        v
    }
}

/// Why the pod is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    Delete,
    Evict,
    Deadline,
    Abort,
}

/// How a running container is stopped.
enum Killer {
    Group(i32),
    Timer(UnboundedSender<i32>),
}

struct Live {
    killer: Killer,
    oom: Arc<AtomicBool>,
}

impl Live {
    fn signal(&self, sig: Signal) {
        match &self.killer {
            Killer::Group(pgid) => process::signal_group(*pgid, sig),
            Killer::Timer(tx) => {
                let _ = tx.send(sig as i32);
            }
        }
    }
}

fn qos_class(pod: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = arr(pod, &["spec", "containers"])
        .iter()
        .chain(arr(pod, &["spec", "initContainers"]));
    for c in containers {
        let req = at(c, &["resources", "requests"]);
        let lim = at(c, &["resources", "limits"]);
        for (scale, r) in [(1000, "cpu"), (1, "memory")] {
            let l = lim
                .and_then(|l| l.get(r))
                .and_then(Value::as_str)
                .and_then(|q| super::util::parse_quantity(q, scale));
            let q = req
                .and_then(|l| l.get(r))
                .and_then(Value::as_str)
                .and_then(|q| super::util::parse_quantity(q, scale))
                .or(l);
            if l.is_some() || q.is_some() {
                any = true;
            }
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

struct PodWorker {
    inner: Arc<Inner>,
    pod: Value,
    ns: String,
    name: String,
    uid: String,
    node: NodeSpec,
    pod_ip: String,
    start_time: String,
    qos: &'static str,
    ctrs: Vec<Ctr>,
    n_init: usize,
    pod_reason: Option<(&'static str, &'static str)>,
    disruption: Option<(&'static str, &'static str)>,
    term: Option<Term>,
    grace: i64,
    live: HashMap<usize, Live>,
    kill_at: Option<Instant>,
}

enum Wake {
    Cmd(Cmd),
    Deadline,
    Timer,
}

impl PodWorker {
    fn new(inner: Arc<Inner>, pod: &Value, node: NodeSpec) -> Self {
        let pod_ip = inner.next_pod_ip(&node);
        let mut ctrs = Vec::new();
        let inits = arr(pod, &["spec", "initContainers"]);
        let n_init = inits.len();
        for (i, c) in inits
            .iter()
            .chain(arr(pod, &["spec", "containers"]))
            .enumerate()
        {
            ctrs.push(Ctr {
                name: s(c, &["name"]).unwrap_or("").to_string(),
                spec: c.clone(),
                image: s(c, &["image"]).unwrap_or("").to_string(),
                pulled: false,
                container_id: None,
                state: CState::Waiting {
                    reason: if n_init > 0 && i >= n_init {
                        "PodInitializing".into()
                    } else {
                        "ContainerCreating".into()
                    },
                    message: None,
                },
            });
        }
        PodWorker {
            ns: meta(pod, "namespace").to_string(),
            name: meta(pod, "name").to_string(),
            uid: meta(pod, "uid").to_string(),
            pod: pod.clone(),
            node,
            pod_ip,
            start_time: now_time(),
            qos: qos_class(pod),
            ctrs,
            n_init,
            pod_reason: None,
            disruption: None,
            term: None,
            grace: at(pod, &["spec", "terminationGracePeriodSeconds"])
                .and_then(Value::as_i64)
                .unwrap_or(30)
                .max(0),
            live: HashMap::new(),
            kill_at: None,
            inner,
        }
    }

    fn event(&self, ty: &str, reason: &str, message: &str, container: Option<&str>) {
        // Runtime::Instant is for volume: it skips the routine per-container events.
        if matches!(self.inner.runtime, Runtime::Instant { .. })
            && matches!(reason, "Pulled" | "Created" | "Started")
        {
            return;
        }
        let mut inv = Involved {
            ns: &self.ns,
            name: &self.name,
            uid: &self.uid,
            kind: "Pod",
            field_path: None,
        };
        if let Some(c) = container {
            inv = inv.container(c);
        }
        record_event(
            &self.inner.store,
            &inv,
            ty,
            reason,
            message,
            KUBELET,
            Some(&self.node.name),
        );
    }

    /// The phase while the worker is still going: Running once a main container has
    /// started.
    fn live_phase(&self) -> &'static str {
        let started = self.ctrs[self.n_init..]
            .iter()
            .any(|c| matches!(c.state, CState::Running { .. } | CState::Terminated { .. }));
        if started { "Running" } else { "Pending" }
    }

    /// Writes the pod status (one update). False when the pod is gone.
    fn write(&self, phase: &str, last: bool) -> bool {
        let terminal = phase == "Succeeded" || phase == "Failed";
        let inits = &self.ctrs[..self.n_init];
        let mains = &self.ctrs[self.n_init..];
        let init_pending: Vec<&str> = inits
            .iter()
            .filter(|c| c.exit_code() != Some(0))
            .map(|c| c.name.as_str())
            .collect();
        let unready: Vec<&str> = mains
            .iter()
            .filter(|c| !c.running())
            .map(|c| c.name.as_str())
            .collect();
        let statuses: Vec<Value> = mains.iter().map(Ctr::to_json).collect();
        let init_statuses: Vec<Value> = inits.iter().map(Ctr::to_json).collect();
        let res = self
            .inner
            .store
            .update(Kind::Pod, Some(&self.ns), &self.name, |o| {
                if meta(o, "uid") != self.uid {
                    return Err(super::util::conflict("replaced"));
                }
                if !o["status"].is_object() {
                    o["status"] = json!({});
                }
                let st = &mut o["status"];
                st["phase"] = phase.into();
                st["hostIP"] = self.node.host_ip.as_str().into();
                st["hostIPs"] = json!([{"ip": self.node.host_ip}]);
                st["podIP"] = self.pod_ip.as_str().into();
                st["podIPs"] = json!([{"ip": self.pod_ip}]);
                st["startTime"] = self.start_time.as_str().into();
                st["qosClass"] = self.qos.into();
                st["containerStatuses"] = statuses.clone().into();
                if self.n_init > 0 {
                    st["initContainerStatuses"] = init_statuses.clone().into();
                }
                if let Some((r, m)) = self.pod_reason {
                    st["reason"] = r.into();
                    st["message"] = m.into();
                }
                set_condition(
                    st,
                    "PodReadyToStartContainers",
                    if terminal { "False" } else { "True" },
                    None,
                    None,
                );
                if init_pending.is_empty() {
                    let r = (phase == "Succeeded").then_some("PodCompleted");
                    set_condition(st, "Initialized", "True", r, None);
                } else {
                    let m = format!(
                        "containers with incomplete status: [{}]",
                        init_pending.join(" ")
                    );
                    set_condition(
                        st,
                        "Initialized",
                        "False",
                        Some("ContainersNotInitialized"),
                        Some(&m),
                    );
                }
                for ty in ["Ready", "ContainersReady"] {
                    if unready.is_empty() && !terminal {
                        set_condition(st, ty, "True", None, None);
                    } else if phase == "Succeeded" {
                        set_condition(st, ty, "False", Some("PodCompleted"), None);
                    } else {
                        let m = format!("containers with unready status: [{}]", unready.join(" "));
                        set_condition(st, ty, "False", Some("ContainersNotReady"), Some(&m));
                    }
                }
                if let Some((r, m)) = self.disruption {
                    set_condition(st, "DisruptionTarget", "True", Some(r), Some(m));
                }
                if last && is_deleting(o) {
                    o["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                }
                Ok(())
            });
        res.is_ok()
    }

    /// Waits for a command, the active deadline, or `timer`.
    async fn wait(
        &self,
        rx: &mut UnboundedReceiver<Cmd>,
        deadline: Option<Instant>,
        timer: Option<Instant>,
    ) -> Wake {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        tokio::select! {
            c = rx.recv() => Wake::Cmd(c.unwrap_or(Cmd::Abort)),
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => Wake::Deadline,
            _ = tokio::time::sleep_until(timer.unwrap_or(far)), if timer.is_some() => Wake::Timer,
        }
    }

    async fn run(mut self, mut rx: UnboundedReceiver<Cmd>) {
        let deadline = at(&self.pod, &["spec", "activeDeadlineSeconds"])
            .and_then(Value::as_i64)
            .map(|s| Instant::now() + Duration::from_secs(s.max(0) as u64));
        if self.pull(&mut rx, deadline).await {
            let mut ok = true;
            for i in 0..self.n_init {
                self.supervise(&[i], &mut rx, deadline).await;
                if self.term.is_some() || self.ctrs[i].exit_code() != Some(0) {
                    ok = false;
                    break;
                }
            }
            if ok {
                let mains: Vec<usize> = (self.n_init..self.ctrs.len()).collect();
                self.supervise(&mains, &mut rx, deadline).await;
            }
        }
        self.finish();
        let mut k = lock(&self.inner.kubelet);
        k.workers.remove(&self.uid);
        k.done.insert(self.uid.clone());
    }

    /// Image pulls. False when the pod was stopped before any container started.
    async fn pull(&mut self, rx: &mut UnboundedReceiver<Cmd>, deadline: Option<Instant>) -> bool {
        let invalid: Vec<usize> = (0..self.ctrs.len())
            .filter(|i| invalid_image(&self.ctrs[*i].image))
            .collect();
        let missing: Vec<usize> = (0..self.ctrs.len())
            .filter(|i| !invalid.contains(i))
            .filter(|i| {
                let img = &self.ctrs[*i].image;
                img.contains("does-not-exist") || self.inner.missing_images.iter().any(|m| m == img)
            })
            .collect();
        let delay = self.inner.pull_delay;
        if invalid.is_empty() && missing.is_empty() {
            if !delay.is_zero() {
                for c in &self.ctrs {
                    self.event(
                        "Normal",
                        "Pulling",
                        &format!("Pulling image \"{}\"", c.image),
                        Some(&c.name),
                    );
                }
                if !self.write("Pending", false) {
                    self.term = Some(Term::Abort);
                    return false;
                }
                let until = Instant::now() + delay;
                loop {
                    match self.wait(rx, deadline, Some(until)).await {
                        Wake::Timer => break,
                        Wake::Deadline => {
                            self.on_deadline();
                            return false;
                        }
                        Wake::Cmd(c) => {
                            if self.on_cmd_idle(c) {
                                return false;
                            }
                        }
                    }
                }
            }
            for c in &mut self.ctrs {
                c.pulled = true;
            }
            for c in &self.ctrs {
                let msg = if delay.is_zero() {
                    format!("Container image \"{}\" already present on machine", c.image)
                } else {
                    let secs = delay.as_secs_f64();
                    format!(
                        "Successfully pulled image \"{}\" in {secs:.3}s ({secs:.3}s including waiting). Image size: 4281720 bytes.",
                        c.image
                    )
                };
                self.event("Normal", "Pulled", &msg, Some(&c.name));
            }
            return true;
        }
        // Bad images: the pod stays Pending until it is deleted (or its deadline passes).
        for &i in &invalid {
            let img = self.ctrs[i].image.clone();
            let msg = format!(
                "Failed to apply default image tag \"{img}\": couldn't parse image name \"{img}\": invalid reference format"
            );
            self.ctrs[i].state = CState::Waiting {
                reason: "InvalidImageName".into(),
                message: Some(msg.clone()),
            };
            let name = self.ctrs[i].name.clone();
            self.event("Warning", "InspectFailed", &msg, Some(&name));
            self.event("Warning", "Failed", "Error: InvalidImageName", Some(&name));
        }
        let mut backoff = Duration::from_secs(10);
        let mut pulling = true;
        loop {
            for &i in &missing {
                let img = self.ctrs[i].image.clone();
                let full = normalize_image(&img);
                let name = self.ctrs[i].name.clone();
                if pulling {
                    let msg = format!(
                        "rpc error: code = NotFound desc = failed to pull and unpack image \"{full}\": failed to resolve reference \"{full}\": {full}: not found"
                    );
                    self.event(
                        "Normal",
                        "Pulling",
                        &format!("Pulling image \"{img}\""),
                        Some(&name),
                    );
                    self.event(
                        "Warning",
                        "Failed",
                        &format!("Failed to pull image \"{img}\": {msg}"),
                        Some(&name),
                    );
                    self.event("Warning", "Failed", "Error: ErrImagePull", Some(&name));
                    self.ctrs[i].state = CState::Waiting {
                        reason: "ErrImagePull".into(),
                        message: Some(msg),
                    };
                } else {
                    let msg = format!("Back-off pulling image \"{img}\"");
                    self.event("Normal", "BackOff", &msg, Some(&name));
                    self.event("Warning", "Failed", "Error: ImagePullBackOff", Some(&name));
                    self.ctrs[i].state = CState::Waiting {
                        reason: "ImagePullBackOff".into(),
                        message: Some(msg),
                    };
                }
            }
            if !self.write("Pending", false) {
                self.term = Some(Term::Abort);
                return false;
            }
            let timer = if missing.is_empty() {
                None
            } else if pulling {
                Some(Instant::now() + Duration::from_secs(1))
            } else {
                let t = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                Some(t)
            };
            loop {
                match self.wait(rx, deadline, timer).await {
                    Wake::Timer => break,
                    Wake::Deadline => {
                        self.on_deadline();
                        return false;
                    }
                    Wake::Cmd(c) => {
                        if self.on_cmd_idle(c) {
                            return false;
                        }
                    }
                }
            }
            pulling = !pulling;
        }
    }

    fn on_deadline(&mut self) {
        self.term = Some(Term::Deadline);
        self.event("Warning", "DeadlineExceeded", DEADLINE_MESSAGE, None);
    }

    /// A command while no container runs. True when the pod must stop.
    fn on_cmd_idle(&mut self, c: Cmd) -> bool {
        match c {
            Cmd::Oom => false,
            Cmd::Delete(_) => {
                self.term = Some(Term::Delete);
                true
            }
            Cmd::Evict => {
                self.term = Some(Term::Evict);
                true
            }
            Cmd::Abort => {
                self.term = Some(Term::Abort);
                true
            }
        }
    }

    /// Starts container `i`; returns its exit future.
    async fn start(&mut self, i: usize) -> Option<BoxFuture<'static, (usize, i32)>> {
        let id = format!("containerd://{}", random_hex64());
        self.ctrs[i].container_id = Some(id);
        let name = self.ctrs[i].name.clone();
        self.event(
            "Normal",
            "Created",
            &format!("Created container: {name}"),
            Some(&name),
        );
        let log = self.inner.log_path(&self.ns, &self.name, &name);
        match self.inner.runtime.clone() {
            Runtime::Instant { run_for, exit_code } => {
                self.inner.write_instant_log(&log, &name).await;
                let (tx, mut krx) = unbounded_channel::<i32>();
                self.live.insert(
                    i,
                    Live {
                        killer: Killer::Timer(tx),
                        oom: Arc::new(AtomicBool::new(false)),
                    },
                );
                self.mark_started(i);
                Some(Box::pin(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(run_for) => (i, exit_code),
                        sig = krx.recv() => (i, 128 + sig.unwrap_or(9)),
                    }
                }))
            }
            _ => {
                let launch = process::prepare(
                    &self.inner,
                    &self.pod,
                    &self.ctrs[i].spec,
                    &self.node.host_ip,
                    &self.pod_ip,
                );
                match process::spawn(&self.inner, launch).await {
                    Ok(p) => {
                        self.live.insert(
                            i,
                            Live {
                                killer: Killer::Group(p.pgid),
                                oom: p.oom,
                            },
                        );
                        self.mark_started(i);
                        let exit = p.exit;
                        Some(Box::pin(async move { (i, exit.await.unwrap_or(137)) }))
                    }
                    Err(msg) => {
                        self.ctrs[i].state = CState::Terminated {
                            code: 128,
                            reason: "StartError".into(),
                            message: Some(msg.clone()),
                            started_at: "1970-01-01T00:00:00Z".into(),
                            finished_at: now_time(),
                        };
                        self.event("Warning", "Failed", &format!("Error: {msg}"), Some(&name));
                        None
                    }
                }
            }
        }
    }

    fn mark_started(&mut self, i: usize) {
        self.ctrs[i].state = CState::Running {
            started_at: now_time(),
        };
        let name = self.ctrs[i].name.clone();
        self.inner.set_running(&self.ns, &self.name, &name, true);
        self.event(
            "Normal",
            "Started",
            &format!("Started container {name}"),
            Some(&name),
        );
    }

    fn signal_all(&self, sig: Signal) {
        for l in self.live.values() {
            l.signal(sig);
        }
    }

    /// Stops every live container: SIGTERM, SIGKILL after `grace` seconds.
    fn terminate(&mut self, grace: i64) {
        for i in self.live.keys() {
            let name = &self.ctrs[*i].name;
            self.event(
                "Normal",
                "Killing",
                &format!("Stopping container {name}"),
                Some(name),
            );
        }
        if grace <= 0 {
            self.signal_all(Signal::SIGKILL);
        } else {
            self.signal_all(Signal::SIGTERM);
            let at = Instant::now() + Duration::from_secs(grace as u64);
            self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
        }
    }

    /// Starts the containers and runs them until every one has exited.
    async fn supervise(
        &mut self,
        idxs: &[usize],
        rx: &mut UnboundedReceiver<Cmd>,
        deadline: Option<Instant>,
    ) {
        let mut exits: FuturesUnordered<BoxFuture<'static, (usize, i32)>> = FuturesUnordered::new();
        for &i in idxs {
            if let Some(f) = self.start(i).await {
                exits.push(f);
            }
        }
        if exits.is_empty() {
            return;
        }
        if !self.write(self.live_phase(), false) {
            self.term = Some(Term::Abort);
            self.signal_all(Signal::SIGKILL);
        }
        let mut deadline_armed = deadline.is_some() && self.term.is_none();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        while !self.live.is_empty() {
            let kill_at = self.kill_at;
            tokio::select! {
                Some((i, code)) = exits.next() => {
                    let Some(l) = self.live.remove(&i) else { continue };
                    let oom = l.oom.load(Ordering::SeqCst);
                    let reason = if oom {
                        "OOMKilled"
                    } else if code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    };
                    if oom {
                        let name = self.ctrs[i].name.clone();
                        self.event(
                            "Warning",
                            "OOMKilling",
                            &format!("Memory cgroup out of memory: Killed process in container \"{name}\" of pod {}/{}", self.ns, self.name),
                            Some(&name),
                        );
                    }
                    let started_at = match &self.ctrs[i].state {
                        CState::Running { started_at } => started_at.clone(),
                        _ => now_time(),
                    };
                    self.ctrs[i].state = CState::Terminated {
                        code: if oom { 137 } else { code },
                        reason: reason.into(),
                        message: None,
                        started_at,
                        finished_at: now_time(),
                    };
                    let name = self.ctrs[i].name.clone();
                    self.inner.set_running(&self.ns, &self.name, &name, false);
                    if !self.live.is_empty() && self.term != Some(Term::Abort)
                        && !self.write(self.live_phase(), false)
                    {
                        self.term = Some(Term::Abort);
                        self.signal_all(Signal::SIGKILL);
                    }
                }
                c = rx.recv() => match c.unwrap_or(Cmd::Abort) {
                    Cmd::Delete(grace) => {
                        if self.term.is_none() || self.term == Some(Term::Deadline) {
                            self.term = Some(Term::Delete);
                        }
                        self.terminate(grace);
                    }
                    Cmd::Oom => {
                        if let Some(i) = self.live.keys().min().copied() {
                            let l = &self.live[&i];
                            l.oom.store(true, Ordering::SeqCst);
                            l.signal(Signal::SIGKILL);
                        }
                    }
                    Cmd::Evict => {
                        if self.term != Some(Term::Abort) {
                            self.term = Some(Term::Evict);
                        }
                        self.signal_all(Signal::SIGKILL);
                    }
                    Cmd::Abort => {
                        self.term = Some(Term::Abort);
                        self.signal_all(Signal::SIGKILL);
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline_armed => {
                    deadline_armed = false;
                    if self.term.is_none() {
                        self.on_deadline();
                        self.terminate(self.grace);
                    }
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                    self.kill_at = None;
                    self.signal_all(Signal::SIGKILL);
                }
            }
        }
    }

    /// Writes the final status (unless aborted).
    fn finish(&mut self) {
        for c in &self.ctrs {
            self.inner.set_running(&self.ns, &self.name, &c.name, false);
        }
        let term = self.term;
        if term == Some(Term::Abort) {
            return;
        }
        let init_failed = self.ctrs[..self.n_init]
            .iter()
            .any(|c| matches!(c.exit_code(), Some(code) if code != 0));
        match term {
            Some(Term::Evict) => {
                self.pod_reason = Some(("Evicted", EVICTION_MESSAGE));
                self.disruption = Some(("TerminationByKubelet", EVICTION_MESSAGE));
                self.event("Warning", "Evicted", EVICTION_MESSAGE, None);
            }
            Some(Term::Deadline) => {
                self.pod_reason = Some(("DeadlineExceeded", DEADLINE_MESSAGE));
            }
            _ => {}
        }
        if term.is_some() {
            for c in &mut self.ctrs {
                if !matches!(c.state, CState::Terminated { .. }) {
                    c.state = CState::Terminated {
                        code: 137,
                        reason: "ContainerStatusUnknown".into(),
                        message: Some(UNKNOWN_MESSAGE.into()),
                        started_at: "1970-01-01T00:00:00Z".into(),
                        finished_at: now_time(),
                    };
                }
            }
        }
        let mains = &self.ctrs[self.n_init..];
        let all_ok = !mains.is_empty() && mains.iter().all(|c| c.exit_code() == Some(0));
        let phase = if matches!(term, Some(Term::Evict) | Some(Term::Deadline)) || init_failed {
            "Failed"
        } else if all_ok {
            "Succeeded"
        } else {
            "Failed"
        };
        self.write(phase, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos() {
        let be = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(qos_class(&be), "BestEffort");
        let g = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }
}
