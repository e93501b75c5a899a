//! The scheduler: places pending pods on nodes.
//!
//! State is kept incrementally: per-node usage is updated when a pod is bound, finishes
//! or goes away; pending pods are grouped by their scheduling requirements (priority,
//! requests, selector, affinity, tolerations), and a group that failed to fit is not
//! retried until capacity frees up, so a pass costs O(groups x nodes), not O(pods).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::util::{
    Involved, arr, at, is_deleting, is_terminal, meta, parse_quantity, pod_priority, record_event,
    s, set_condition, str_map,
};
use super::{Inner, graceful_delete};
use crate::store::{ChangeType, Kind, Store};

const SCHEDULER: &str = "default-scheduler";

/// Resource amounts: cpu in millicores, memory in bytes, others in units.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Res {
    pub cpu: i64,
    pub mem: i64,
    pub other: BTreeMap<String, i64>,
}

impl Res {
    fn add(&mut self, o: &Res) {
        self.cpu += o.cpu;
        self.mem += o.mem;
        for (k, v) in &o.other {
            *self.other.entry(k.clone()).or_default() += v;
        }
    }

    fn sub(&mut self, o: &Res) {
        self.cpu -= o.cpu;
        self.mem -= o.mem;
        for (k, v) in &o.other {
            *self.other.entry(k.clone()).or_default() -= v;
        }
    }

    fn max(&mut self, o: &Res) {
        self.cpu = self.cpu.max(o.cpu);
        self.mem = self.mem.max(o.mem);
        for (k, v) in &o.other {
            let e = self.other.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.cpu,
            "memory" => self.mem,
            n => self.other.get(n).copied().unwrap_or(0),
        }
    }

    /// Parses a `{cpu: .., memory: .., nvidia.com/gpu: ..}` map.
    pub(crate) fn parse(v: Option<&Value>) -> Res {
        let mut r = Res::default();
        let Some(m) = v.and_then(Value::as_object) else {
            return r;
        };
        for (k, q) in m {
            let q = match q {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            match k.as_str() {
                "cpu" => r.cpu = parse_quantity(&q, 1000).unwrap_or(0),
                "memory" => r.mem = parse_quantity(&q, 1).unwrap_or(0),
                "pods" => {}
                other => {
                    r.other
                        .insert(other.to_string(), parse_quantity(&q, 1).unwrap_or(0));
                }
            }
        }
        r
    }

    /// The names whose request exceeds `avail`, in the order the scheduler reports them.
    fn insufficient(&self, avail: &Res) -> Vec<String> {
        let mut out = Vec::new();
        if self.cpu > 0 && self.cpu > avail.cpu {
            out.push("cpu".to_string());
        }
        if self.mem > 0 && self.mem > avail.mem {
            out.push("memory".to_string());
        }
        for (k, v) in &self.other {
            if *v > 0 && *v > avail.get(k) {
                out.push(k.clone());
            }
        }
        out
    }
}

/// The effective requests of a pod: sum over containers (requests, defaulting to
/// limits), at least the largest init container, plus overhead.
pub(crate) fn pod_requests(pod: &Value) -> Res {
    let container_req = |c: &Value| {
        let mut r = Res::parse(at(c, &["resources", "limits"]));
        let req = Res::parse(at(c, &["resources", "requests"]));
        // Requests default to limits; explicit requests win.
        if at(c, &["resources", "requests", "cpu"]).is_some() {
            r.cpu = req.cpu;
        }
        if at(c, &["resources", "requests", "memory"]).is_some() {
            r.mem = req.mem;
        }
        for (k, v) in req.other {
            r.other.insert(k, v);
        }
        r
    };
    let mut sum = Res::default();
    for c in arr(pod, &["spec", "containers"]) {
        sum.add(&container_req(c));
    }
    for c in arr(pod, &["spec", "initContainers"]) {
        sum.max(&container_req(c));
    }
    sum.add(&Res::parse(at(pod, &["spec", "overhead"])));
    sum
}

#[derive(Clone, Debug, Hash)]
struct Toleration {
    key: String,
    op: String,
    value: String,
    effect: String,
}

impl Toleration {
    fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if self.key.is_empty() {
            return self.op == "Exists";
        }
        if self.key != t.key {
            return false;
        }
        match self.op.as_str() {
            "Exists" => true,
            _ => self.value == t.value,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Debug, Hash)]
struct Expr {
    key: String,
    op: String,
    values: Vec<String>,
}

impl Expr {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.op.as_str() {
            "In" => v.is_some_and(|v| self.values.contains(v)),
            "NotIn" => v.is_none_or(|v| !self.values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            "Gt" | "Lt" => {
                let (Some(v), Some(bound)) = (
                    v.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.op == "Gt" {
                    v > bound
                } else {
                    v < bound
                }
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Hash)]
struct Term {
    exprs: Vec<Expr>,
    fields: Vec<Expr>,
}

/// What a pod needs from a node, besides resources.
#[derive(Clone, Debug, Default, Hash)]
struct Needs {
    selector: BTreeMap<String, String>,
    terms: Option<Vec<Term>>,
    tolerations: Vec<Toleration>,
}

impl Needs {
    fn parse(pod: &Value) -> Needs {
        let selector = str_map(pod, &["spec", "nodeSelector"]);
        let parse_exprs = |v: &Value, field: &str| -> Vec<Expr> {
            arr(v, &[field])
                .iter()
                .map(|e| Expr {
                    key: s(e, &["key"]).unwrap_or("").to_string(),
                    op: s(e, &["operator"]).unwrap_or("").to_string(),
                    values: arr(e, &["values"])
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                })
                .collect()
        };
        let terms = at(
            pod,
            &[
                "spec",
                "affinity",
                "nodeAffinity",
                "requiredDuringSchedulingIgnoredDuringExecution",
            ],
        )
        .map(|req| {
            arr(req, &["nodeSelectorTerms"])
                .iter()
                .map(|t| Term {
                    exprs: parse_exprs(t, "matchExpressions"),
                    fields: parse_exprs(t, "matchFields"),
                })
                .collect()
        });
        let tolerations = arr(pod, &["spec", "tolerations"])
            .iter()
            .map(|t| Toleration {
                key: s(t, &["key"]).unwrap_or("").to_string(),
                op: s(t, &["operator"]).unwrap_or("Equal").to_string(),
                value: s(t, &["value"]).unwrap_or("").to_string(),
                effect: s(t, &["effect"]).unwrap_or("").to_string(),
            })
            .collect();
        Needs {
            selector,
            terms,
            tolerations,
        }
    }

    fn tolerates(&self, t: &Taint) -> bool {
        self.tolerations.iter().any(|tol| tol.tolerates(t))
    }

    fn matches_node(&self, node: &NodeInfo) -> bool {
        if !self
            .selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            return false;
        }
        match &self.terms {
            None => true,
            Some(terms) => terms.iter().any(|t| {
                (!t.exprs.is_empty() || !t.fields.is_empty())
                    && t.exprs.iter().all(|e| e.matches(&node.labels))
                    && t.fields.iter().all(|e| {
                        let mut f = BTreeMap::new();
                        f.insert("metadata.name".to_string(), node.name.clone());
                        e.matches(&f)
                    })
            }),
        }
    }
}

struct NodeInfo {
    name: String,
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    unschedulable: bool,
    alloc: Res,
    max_pods: i64,
    used: Res,
    pods: i64,
    members: HashSet<String>,
}

impl NodeInfo {
    fn parse(node: &Value) -> NodeInfo {
        let alloc_v = at(node, &["status", "allocatable"]).or(at(node, &["status", "capacity"]));
        let max_pods = alloc_v
            .and_then(|a| a.get("pods"))
            .and_then(|p| match p {
                Value::String(s) => parse_quantity(s, 1),
                Value::Number(n) => n.as_i64(),
                _ => None,
            })
            .unwrap_or(110);
        NodeInfo {
            name: meta(node, "name").to_string(),
            labels: str_map(node, &["metadata", "labels"]),
            taints: arr(node, &["spec", "taints"])
                .iter()
                .map(|t| Taint {
                    key: s(t, &["key"]).unwrap_or("").to_string(),
                    value: s(t, &["value"]).unwrap_or("").to_string(),
                    effect: s(t, &["effect"]).unwrap_or("").to_string(),
                })
                .collect(),
            unschedulable: at(node, &["spec", "unschedulable"])
                .and_then(Value::as_bool)
                .unwrap_or(false),
            alloc: Res::parse(alloc_v),
            max_pods,
            used: Res::default(),
            pods: 0,
            members: HashSet::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PState {
    /// Waiting in the group with this signature.
    Pending(u64),
    /// Has scheduling gates.
    Gated,
    /// Bound to a node and counted in its usage.
    Bound(String),
}

struct PodInfo {
    ns: String,
    name: String,
    uid: String,
    prio: i32,
    never: bool,
    req: Res,
    needs: Arc<Needs>,
    base_sig: u64,
    seq: u64,
    state: PState,
    terminating: bool,
    nominated: Option<String>,
    last_msg: Option<String>,
    grace: i64,
}

impl PodInfo {
    fn sig(&self) -> u64 {
        if self.nominated.is_some() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.uid.hash(&mut h);
            h.finish() | 1
        } else {
            self.base_sig
        }
    }
}

#[derive(Default)]
struct Group {
    prio: i32,
    /// seq -> uid, in creation order.
    members: BTreeMap<u64, String>,
    /// Failed since the last capacity change: not retried until then.
    blocked: bool,
    /// The message last announced to the group.
    msg: Option<String>,
    /// Members that have not been told the group's message yet.
    fresh: Vec<String>,
}

/// Why a pod fits no node.
struct Diag {
    reasons: BTreeMap<String, usize>,
    /// Nodes that failed on resources only (candidates for preemption).
    resource_only: Vec<String>,
    total: usize,
}

impl Diag {
    fn message(&self) -> String {
        if self.total == 0 {
            return "no nodes available to schedule pods".to_string();
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        format!(
            "0/{} nodes are available: {}.",
            self.total,
            parts.join(", ")
        )
    }
}

pub(crate) struct Scheduler {
    store: Arc<Store>,
    nodes: BTreeMap<String, NodeInfo>,
    pods: HashMap<String, PodInfo>,
    groups: HashMap<u64, Group>,
    /// Pods with a nominated node (preemptors waiting for their victims).
    nominated: HashSet<String>,
    seq: u64,
}

impl Scheduler {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Scheduler {
            store,
            nodes: BTreeMap::new(),
            pods: HashMap::new(),
            groups: HashMap::new(),
            nominated: HashSet::new(),
            seq: 0,
        }
    }

    /// Follows the store until the task is aborted.
    pub(crate) async fn run(mut self, inner: Arc<Inner>) {
        let mut rx = self.store.subscribe();
        self.resync();
        self.pass().await;
        let mut tick = tokio::time::interval(Duration::from_millis(super::RESYNC_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if inner.stopping() {
                return;
            }
            tokio::select! {
                r = rx.recv() => {
                    match r {
                        Ok(c) => {
                            self.apply(c.kind, c.ty, &c.object);
                            // Drain what is already queued, then schedule once.
                            for _ in 0..8192 {
                                match rx.try_recv() {
                                    Ok(c) => self.apply(c.kind, c.ty, &c.object),
                                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                                        self.resync();
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(RecvError::Lagged(_)) => self.resync(),
                        Err(RecvError::Closed) => return,
                    }
                }
                _ = tick.tick() => self.resync(),
            }
            self.pass().await;
        }
    }

    fn apply(&mut self, kind: Kind, ty: ChangeType, obj: &Value) {
        match kind {
            Kind::Pod => self.observe_pod(obj, ty == ChangeType::Deleted),
            Kind::Node => self.observe_node(obj, ty == ChangeType::Deleted),
            Kind::PriorityClass => {}
            _ => {}
        }
    }

    /// Re-reads every node and pod (after a lagged broadcast, and periodically).
    fn resync(&mut self) {
        let mut nodes = Vec::new();
        self.store.scan(Kind::Node, None, None, |_, v| {
            nodes.push(v.clone());
            true
        });
        let names: HashSet<String> = nodes.iter().map(|n| meta(n, "name").to_string()).collect();
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.nodes.remove(&n);
            self.unblock();
        }
        for n in &nodes {
            self.observe_node(n, false);
        }
        let mut pods = Vec::new();
        self.store.scan(Kind::Pod, None, None, |_, v| {
            pods.push(v.clone());
            true
        });
        let uids: HashSet<&str> = pods.iter().map(|p| meta(p, "uid")).collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !uids.contains(u.as_str()))
            .cloned()
            .collect();
        for uid in gone {
            self.forget(&uid);
        }
        for p in &pods {
            self.observe_pod(p, false);
        }
    }

    fn unblock(&mut self) {
        for g in self.groups.values_mut() {
            g.blocked = false;
        }
    }

    fn observe_node(&mut self, node: &Value, deleted: bool) {
        let name = meta(node, "name").to_string();
        if deleted {
            self.nodes.remove(&name);
            self.unblock();
            return;
        }
        let mut info = NodeInfo::parse(node);
        if let Some(old) = self.nodes.remove(&name) {
            let same = old.labels == info.labels
                && old.taints == info.taints
                && old.unschedulable == info.unschedulable
                && old.alloc == info.alloc
                && old.max_pods == info.max_pods;
            info.used = old.used;
            info.pods = old.pods;
            info.members = old.members;
            self.nodes.insert(name, info);
            if !same {
                self.unblock();
            }
        } else {
            self.nodes.insert(name, info);
            self.unblock();
        }
    }

    /// Forgets a pod (gone or terminal): releases its usage and leaves its group.
    fn forget(&mut self, uid: &str) {
        let Some(p) = self.pods.remove(uid) else {
            return;
        };
        match &p.state {
            PState::Bound(node) => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.used.sub(&p.req);
                    n.pods -= 1;
                    n.members.remove(uid);
                }
                self.unblock();
            }
            PState::Pending(sig) => self.leave_group(*sig, p.seq),
            PState::Gated => {}
        }
        if self.nominated.remove(uid) {
            self.unblock();
        }
    }

    fn leave_group(&mut self, sig: u64, seq: u64) {
        if let Some(g) = self.groups.get_mut(&sig) {
            g.members.remove(&seq);
            if g.members.is_empty() {
                self.groups.remove(&sig);
            }
        }
    }

    fn join_group(&mut self, uid: &str) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        let sig = p.sig();
        p.state = PState::Pending(sig);
        let g = self.groups.entry(sig).or_insert_with(|| Group {
            prio: p.prio,
            ..Group::default()
        });
        g.members.insert(p.seq, uid.to_string());
        if g.blocked {
            g.fresh.push(uid.to_string());
        }
    }

    fn observe_pod(&mut self, pod: &Value, deleted: bool) {
        let uid = meta(pod, "uid");
        if uid.is_empty() {
            return;
        }
        if deleted || is_terminal(pod) {
            self.forget(uid);
            return;
        }
        // Pods for another scheduler are left alone until bound (then they count).
        let ours = s(pod, &["spec", "schedulerName"]).is_none_or(|sn| sn == SCHEDULER);
        let node = s(pod, &["spec", "nodeName"]).filter(|n| !n.is_empty());
        let deleting = is_deleting(pod);
        if node.is_none() && deleting {
            self.forget(uid);
            return;
        }
        if !self.pods.contains_key(uid) {
            let needs = Needs::parse(pod);
            let prio = pod_priority(&self.store, pod);
            let never = s(pod, &["spec", "preemptionPolicy"]) == Some("Never");
            let req = pod_requests(pod);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            prio.hash(&mut h);
            never.hash(&mut h);
            req.hash(&mut h);
            needs.hash(&mut h);
            self.seq += 1;
            let info = PodInfo {
                ns: meta(pod, "namespace").to_string(),
                name: meta(pod, "name").to_string(),
                uid: uid.to_string(),
                prio,
                never,
                req,
                needs: Arc::new(needs),
                base_sig: h.finish() & !1,
                seq: self.seq,
                state: PState::Gated,
                terminating: deleting,
                nominated: s(pod, &["status", "nominatedNodeName"]).map(str::to_string),
                last_msg: None,
                grace: at(pod, &["spec", "terminationGracePeriodSeconds"])
                    .and_then(Value::as_i64)
                    .unwrap_or(30),
            };
            if info.nominated.is_some() {
                self.nominated.insert(uid.to_string());
            }
            self.pods.insert(uid.to_string(), info);
            match node {
                Some(n) => self.account(uid, n),
                None if !ours => {}
                None => {
                    if arr(pod, &["spec", "schedulingGates"]).is_empty() {
                        self.join_group(uid);
                    } else {
                        self.mark_gated(pod);
                    }
                }
            }
            return;
        }
        let p = self.pods.get_mut(uid).expect("present");
        p.terminating = deleting;
        let state = p.state.clone();
        match (state, node) {
            (PState::Bound(_), _) => {}
            (PState::Pending(sig), Some(n)) => {
                let seq = p.seq;
                self.leave_group(sig, seq);
                self.account(uid, n);
            }
            (PState::Gated, Some(n)) => self.account(uid, n),
            (PState::Gated, None) => {
                if ours && arr(pod, &["spec", "schedulingGates"]).is_empty() {
                    self.join_group(uid);
                }
            }
            (PState::Pending(_), None) => {}
        }
    }

    fn mark_gated(&self, pod: &Value) {
        let has = arr(pod, &["status", "conditions"])
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated");
        if has {
            return;
        }
        let uid = meta(pod, "uid").to_string();
        let _ = self.store.update(
            Kind::Pod,
            Some(meta(pod, "namespace")),
            meta(pod, "name"),
            |o| {
                if meta(o, "uid") != uid || at(o, &["spec", "nodeName"]).is_some() {
                    return Err(super::util::conflict("changed"));
                }
                set_condition(
                    &mut o["status"],
                    "PodScheduled",
                    "False",
                    Some("SchedulingGated"),
                    Some("Scheduling is blocked due to non-empty scheduling gates"),
                );
                Ok(())
            },
        );
    }

    fn account(&mut self, uid: &str, node: &str) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        p.state = PState::Bound(node.to_string());
        p.nominated = None;
        let had_nomination = self.nominated.remove(uid);
        if let Some(n) = self.nodes.get_mut(node) {
            n.used.add(&p.req);
            n.pods += 1;
            n.members.insert(uid.to_string());
        }
        if had_nomination {
            self.unblock();
        }
    }

    /// What pods nominated to `node` with priority >= `prio` reserve there.
    fn reserved(&self, node: &str, prio: i32, except: &str) -> (Res, i64) {
        let mut r = Res::default();
        let mut n = 0;
        for uid in &self.nominated {
            if uid == except {
                continue;
            }
            if let Some(p) = self.pods.get(uid)
                && p.prio >= prio
                && p.nominated.as_deref() == Some(node)
            {
                r.add(&p.req);
                n += 1;
            }
        }
        (r, n)
    }

    fn has_nominations(&self) -> bool {
        !self.nominated.is_empty()
    }

    /// Finds the best node for a pod, or why none fits.
    fn find_node(&self, p: &PodInfo, nominations: bool) -> Result<String, Diag> {
        let mut diag = Diag {
            reasons: BTreeMap::new(),
            resource_only: Vec::new(),
            total: self.nodes.len(),
        };
        let mut best: Option<(i64, &str)> = None;
        let unsched_taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        };
        for node in self.nodes.values() {
            if node.unschedulable && !p.needs.tolerates(&unsched_taint) {
                *diag
                    .reasons
                    .entry("node(s) were unschedulable".into())
                    .or_default() += 1;
                continue;
            }
            if let Some(t) = node.taints.iter().find(|t| {
                (t.effect == "NoSchedule" || t.effect == "NoExecute") && !p.needs.tolerates(t)
            }) {
                *diag
                    .reasons
                    .entry(format!(
                        "node(s) had untolerated taint {{{}: {}}}",
                        t.key, t.value
                    ))
                    .or_default() += 1;
                continue;
            }
            if !p.needs.matches_node(node) {
                *diag
                    .reasons
                    .entry("node(s) didn't match Pod's node affinity/selector".into())
                    .or_default() += 1;
                continue;
            }
            // No allocation on the hot path: free = allocatable - used - reserved.
            let (reserved, reserved_pods) = if nominations {
                self.reserved(&node.name, p.prio, &p.uid)
            } else {
                (Res::default(), 0)
            };
            let free = |name: &str| node.alloc.get(name) - node.used.get(name) - reserved.get(name);
            let mut failed = false;
            if node.max_pods - node.pods - reserved_pods < 1 {
                *diag.reasons.entry("Too many pods".into()).or_default() += 1;
                failed = true;
            }
            let mut lacking = |name: &str, want: i64| {
                if want > 0 && want > free(name) {
                    *diag
                        .reasons
                        .entry(format!("Insufficient {name}"))
                        .or_default() += 1;
                    failed = true;
                }
            };
            lacking("cpu", p.req.cpu);
            lacking("memory", p.req.mem);
            for (k, v) in &p.req.other {
                lacking(k, *v);
            }
            if failed {
                diag.resource_only.push(node.name.clone());
                continue;
            }
            if p.nominated.as_deref() == Some(node.name.as_str()) {
                return Ok(node.name.clone());
            }
            // LeastAllocated: prefer the node with the most free cpu+memory share.
            let share = |free: i64, total: i64| {
                if total <= 0 {
                    0
                } else {
                    (free.max(0) as i128 * 1000 / total as i128) as i64
                }
            };
            let score = share(free("cpu") - p.req.cpu, node.alloc.cpu)
                + share(free("memory") - p.req.mem, node.alloc.mem);
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, node.name.as_str()));
            }
        }
        match best {
            Some((_, n)) => Ok(n.to_string()),
            None => Err(diag),
        }
    }

    /// Schedules what can be scheduled now.
    async fn pass(&mut self) {
        let mut heap: BinaryHeap<(i32, Reverse<u64>, u64)> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.blocked)
            .filter_map(|(sig, g)| {
                g.members
                    .keys()
                    .next()
                    .map(|seq| (g.prio, Reverse(*seq), *sig))
            })
            .collect();
        let mut announce: Vec<(u64, String)> = Vec::new();
        let mut work = 0usize;
        let mut nominations = self.has_nominations();
        while let Some((_, _, sig)) = heap.pop() {
            let Some(g) = self.groups.get(&sig) else {
                continue;
            };
            let Some((&seq, uid)) = g.members.iter().next() else {
                continue;
            };
            let uid = uid.clone();
            let Some(p) = self.pods.get(&uid) else {
                self.leave_group(sig, seq);
                continue;
            };
            work += 1;
            if work.is_multiple_of(128) {
                tokio::task::yield_now().await;
            }
            match self.find_node(p, nominations) {
                Ok(node) => {
                    self.bind(&uid, sig, seq, &node);
                    if let Some(g) = self.groups.get(&sig)
                        && let Some(next) = g.members.keys().next()
                    {
                        heap.push((g.prio, Reverse(*next), sig));
                    }
                }
                Err(diag) => {
                    let mut msg = diag.message();
                    if let Some(suffix) = self.try_preempt(&uid, &diag) {
                        msg.push_str(&suffix);
                    }
                    nominations = nominations || self.has_nominations();
                    // Preemption may have moved the pod to its own group.
                    let sig_now = match self.pods.get(&uid).map(|p| &p.state) {
                        Some(PState::Pending(s)) => *s,
                        _ => sig,
                    };
                    for s in [sig, sig_now] {
                        if let Some(g) = self.groups.get_mut(&s) {
                            g.blocked = true;
                        }
                    }
                    announce.push((sig_now, msg.clone()));
                    if sig_now != sig {
                        announce.push((sig, msg));
                    }
                    // Nothing can free up during a pass: the same group fails again.
                }
            }
        }
        // Groups that were already blocked may have fresh members.
        let blocked_fresh: Vec<(u64, String)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.blocked && !g.fresh.is_empty())
            .filter_map(|(sig, g)| g.msg.clone().map(|m| (*sig, m)))
            .collect();
        announce.extend(blocked_fresh);
        for (sig, msg) in announce {
            self.announce(sig, &msg).await;
        }
    }

    /// Tells a blocked group's pods why they are unschedulable: the head and members
    /// that were never told; when the message changed only the head (whose attempt
    /// produced it) gets the new one, like a real scheduler's unschedulable queue.
    async fn announce(&mut self, sig: u64, msg: &str) {
        let Some(g) = self.groups.get_mut(&sig) else {
            return;
        };
        let mut targets: Vec<String> = std::mem::take(&mut g.fresh);
        if let Some(head) = g.members.values().next() {
            targets.push(head.clone());
        }
        if g.msg.is_none() {
            targets = g.members.values().cloned().collect();
        }
        g.msg = Some(msg.to_string());
        let mut seen = BTreeSet::new();
        for (i, uid) in targets.into_iter().enumerate() {
            if !seen.insert(uid.clone()) {
                continue;
            }
            if i % 128 == 127 {
                tokio::task::yield_now().await;
            }
            let Some(p) = self.pods.get_mut(&uid) else {
                continue;
            };
            if p.last_msg.as_deref() == Some(msg) {
                continue;
            }
            p.last_msg = Some(msg.to_string());
            let nominated = p.nominated.clone();
            let res = self.store.update(Kind::Pod, Some(&p.ns), &p.name, |o| {
                if meta(o, "uid") != uid || at(o, &["spec", "nodeName"]).is_some() {
                    return Err(super::util::conflict("changed"));
                }
                set_condition(
                    &mut o["status"],
                    "PodScheduled",
                    "False",
                    Some("Unschedulable"),
                    Some(msg),
                );
                if at(o, &["status", "phase"]).is_none() {
                    o["status"]["phase"] = "Pending".into();
                }
                if let Some(n) = &nominated {
                    o["status"]["nominatedNodeName"] = n.as_str().into();
                }
                Ok(())
            });
            if let Ok(obj) = res {
                record_event(
                    &self.store,
                    &Involved::pod(&obj),
                    "Warning",
                    "FailedScheduling",
                    msg,
                    SCHEDULER,
                    None,
                );
            }
        }
    }

    fn bind(&mut self, uid: &str, sig: u64, seq: u64, node: &str) {
        let Some(p) = self.pods.get(uid) else {
            return;
        };
        let (ns, name) = (p.ns.clone(), p.name.clone());
        let res = self.store.update(Kind::Pod, Some(&ns), &name, |o| {
            if meta(o, "uid") != uid || at(o, &["spec", "nodeName"]).is_some() || is_deleting(o) {
                return Err(super::util::conflict("pod changed"));
            }
            o["spec"]["nodeName"] = node.into();
            if !o["status"].is_object() {
                o["status"] = json!({});
            }
            if let Some(st) = o["status"].as_object_mut() {
                st.remove("nominatedNodeName");
                st.entry("phase").or_insert_with(|| "Pending".into());
            }
            set_condition(&mut o["status"], "PodScheduled", "True", None, None);
            Ok(())
        });
        self.leave_group(sig, seq);
        match res {
            Ok(obj) => {
                self.account(uid, node);
                record_event(
                    &self.store,
                    &Involved::pod(&obj),
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node}"),
                    SCHEDULER,
                    None,
                );
            }
            Err(_) => match self.store.get(Kind::Pod, Some(&ns), &name) {
                Some(obj) if meta(&obj, "uid") == uid => {
                    // Re-read: it was bound or deleted meanwhile.
                    if let Some(p) = self.pods.get_mut(uid) {
                        p.state = PState::Gated;
                    }
                    self.observe_pod(&obj, false);
                }
                _ => self.forget(uid),
            },
        }
    }

    /// Preemption for an unschedulable pod. Returns the message suffix when nothing
    /// was preempted, None when victims were chosen.
    fn try_preempt(&mut self, uid: &str, diag: &Diag) -> Option<String> {
        let p = self.pods.get(uid)?;
        if p.never {
            return Some(" preemption: not eligible due to preemptionPolicy=Never.".into());
        }
        // Already waiting for victims on its nominated node.
        if let Some(n) = &p.nominated
            && let Some(node) = self.nodes.get(n)
            && node.members.iter().any(|m| {
                self.pods
                    .get(m)
                    .is_some_and(|v| v.terminating && v.prio < p.prio)
            })
        {
            return None;
        }
        let mut best: Option<(i32, usize, String, Vec<String>)> = None;
        for name in &diag.resource_only {
            let Some(node) = self.nodes.get(name) else {
                continue;
            };
            let mut victims: Vec<&PodInfo> = node
                .members
                .iter()
                .filter_map(|m| self.pods.get(m))
                .filter(|v| v.prio < p.prio && !v.terminating)
                .collect();
            victims.sort_by_key(|v| (v.prio, Reverse(v.seq)));
            let mut avail = node.alloc.clone();
            avail.sub(&node.used);
            let (r, n) = self.reserved(name, p.prio, uid);
            avail.sub(&r);
            let mut free_pods = node.max_pods - node.pods - n;
            // Pods already terminating will free their room too.
            for m in &node.members {
                if let Some(v) = self.pods.get(m)
                    && v.terminating
                {
                    avail.add(&v.req);
                    free_pods += 1;
                }
            }
            let mut chosen = Vec::new();
            let mut fits = free_pods >= 1 && p.req.insufficient(&avail).is_empty();
            for v in victims {
                if fits {
                    break;
                }
                avail.add(&v.req);
                free_pods += 1;
                chosen.push(v);
                fits = free_pods >= 1 && p.req.insufficient(&avail).is_empty();
            }
            if !fits || chosen.is_empty() {
                continue;
            }
            let top = chosen.iter().map(|v| v.prio).max().unwrap_or(i32::MIN);
            let better = best
                .as_ref()
                .is_none_or(|(bp, bn, _, _)| (top, chosen.len()) < (*bp, *bn));
            if better {
                best = Some((
                    top,
                    chosen.len(),
                    name.clone(),
                    chosen.iter().map(|v| v.uid.clone()).collect(),
                ));
            }
        }
        let Some((_, _, node, victims)) = best else {
            let helpful = diag.resource_only.len();
            let not_helpful = diag.total - helpful;
            let mut parts = Vec::new();
            if helpful > 0 {
                parts.push(format!(
                    "{helpful} No preemption victims found for incoming pod"
                ));
            }
            if not_helpful > 0 {
                parts.push(format!(
                    "{not_helpful} Preemption is not helpful for scheduling"
                ));
            }
            parts.sort();
            return Some(format!(
                " preemption: 0/{} nodes are available: {}.",
                diag.total,
                parts.join(", ")
            ));
        };
        let preemptor_uid = p.uid.clone();
        let (pns, pname) = (p.ns.clone(), p.name.clone());
        for v in &victims {
            if let Some(vi) = self.pods.get_mut(v) {
                vi.terminating = true;
                let (ns, name, grace) = (vi.ns.clone(), vi.name.clone(), vi.grace);
                preempt_pod(
                    &self.store,
                    &ns,
                    &name,
                    v,
                    &format!("Preempted by pod {preemptor_uid} on node {node}"),
                    grace,
                );
            }
        }
        // Nominate: the pod moves to its own group and reserves room on the node.
        if let Some(PState::Pending(sig)) = self.pods.get(uid).map(|p| p.state.clone()) {
            let seq = self.pods[uid].seq;
            self.leave_group(sig, seq);
            if let Some(p) = self.pods.get_mut(uid) {
                p.nominated = Some(node.clone());
            }
            self.nominated.insert(uid.to_string());
            self.join_group(uid);
        }
        let node2 = node.clone();
        let _ = self.store.update(Kind::Pod, Some(&pns), &pname, |o| {
            if meta(o, "uid") != preemptor_uid || at(o, &["spec", "nodeName"]).is_some() {
                return Err(super::util::conflict("changed"));
            }
            o["status"]["nominatedNodeName"] = node2.as_str().into();
            Ok(())
        });
        None
    }
}

/// Preempts a pod: condition DisruptionTarget (PreemptionByScheduler), a Preempted
/// event, then graceful deletion.
pub(crate) fn preempt_pod(store: &Store, ns: &str, name: &str, uid: &str, event: &str, grace: i64) {
    let res = store.update(Kind::Pod, Some(ns), name, |o| {
        if meta(o, "uid") != uid {
            return Err(super::util::conflict("changed"));
        }
        set_condition(
            &mut o["status"],
            "DisruptionTarget",
            "True",
            Some("PreemptionByScheduler"),
            Some(&format!(
                "{SCHEDULER}: preempting to accommodate a higher priority pod"
            )),
        );
        Ok(())
    });
    if let Ok(obj) = res {
        record_event(
            store,
            &Involved::pod(&obj),
            "Normal",
            "Preempted",
            event,
            SCHEDULER,
            None,
        );
        graceful_delete(store, ns, name, uid, Some(grace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_default_to_limits() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "2"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "2"}}}
        ], "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}]}});
        let r = pod_requests(&pod);
        assert_eq!(r.cpu, 3000);
        assert_eq!(r.mem, 1 << 30);
        assert_eq!(r.other.get("nvidia.com/gpu"), Some(&2));
    }

    #[test]
    fn tolerations_and_affinity() {
        let pod = json!({"spec": {
            "nodeSelector": {"pool": "a"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}}
        }});
        let needs = Needs::parse(&pod);
        let node = NodeInfo::parse(
            &json!({"metadata": {"name": "n", "labels": {"pool": "a", "zone": "z1"}}}),
        );
        assert!(needs.matches_node(&node));
        let node2 = NodeInfo::parse(
            &json!({"metadata": {"name": "n", "labels": {"pool": "a", "zone": "z2"}}}),
        );
        assert!(!needs.matches_node(&node2));
        assert!(needs.tolerates(&Taint {
            key: "nvidia.com/gpu".into(),
            value: "present".into(),
            effect: "NoSchedule".into()
        }));
        assert!(!needs.tolerates(&Taint {
            key: "other".into(),
            value: "".into(),
            effect: "NoSchedule".into()
        }));
        let all = Needs::parse(&json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        assert!(all.tolerates(&Taint {
            key: "x".into(),
            value: "y".into(),
            effect: "NoExecute".into()
        }));
    }

    #[test]
    fn message_format() {
        let mut reasons = BTreeMap::new();
        reasons.insert(
            "node(s) didn't match Pod's node affinity/selector".to_string(),
            2,
        );
        reasons.insert("Insufficient nvidia.com/gpu".to_string(), 1);
        let d = Diag {
            reasons,
            resource_only: vec![],
            total: 3,
        };
        assert_eq!(
            d.message(),
            "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
    }
}
