//! Defaulting and the admission plugins the simulator runs on create: NamespaceLifecycle,
//! LimitRanger, Priority, DefaultTolerationSeconds and ResourceQuota (with incremental
//! usage accounting so admission stays O(quotas) per pod).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::quantity::Quantity;
use super::status::Failure;
use crate::store::{Change, ChangeType, Kind, Store};

/// Resource usage by quota key (`pods`, `requests.cpu`, `cpu`, `limits.memory`, ...).
pub(crate) type Usage = BTreeMap<String, Quantity>;

fn forbidden(kind: Kind, name: &str, msg: impl std::fmt::Display) -> Failure {
    Failure::new(
        403,
        "Forbidden",
        format!("{} \"{name}\" is forbidden: {msg}", kind.plural()),
    )
    .for_object(kind, Some(name))
}

/// `[a, b]` for several errors, `a` for one (Go's aggregate error format).
fn aggregate(errs: &[String]) -> String {
    if errs.len() == 1 {
        errs[0].clone()
    } else {
        format!("[{}]", errs.join(", "))
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let m = v.as_object_mut().expect("object");
    let slot = m.entry(key.to_string()).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("object")
}

fn set_default(m: &mut serde_json::Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// The defaults a real server fills into a new pod (defaulting, ServiceAccount,
/// DefaultTolerationSeconds); `status` is reset to Pending.
pub(crate) fn default_pod(pod: &mut Value) {
    let spec = obj_mut(pod, "spec");
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "serviceAccountName", json!("default"));
    let sa = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", sa);
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            set_default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
            let res = c.entry("resources").or_insert_with(|| json!({}));
            if let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() {
                let req = obj_mut(res, "requests");
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = t.iter().any(|x| {
                x.get("key").and_then(Value::as_str) == Some(key)
                    && x.get("effect").and_then(Value::as_str) == Some("NoExecute")
            });
            if !present {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// `status.qosClass` from the (defaulted) containers.
pub(crate) fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| {
            pod.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    let get = |c: &Value, which: &str, r: &str| {
        c.pointer(&format!("/resources/{which}/{r}"))
            .and_then(Value::as_str)
            .and_then(Quantity::parse)
            .filter(|q| q.millis != 0)
    };
    let any = containers.iter().any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|r| get(c, "requests", r).is_some() || get(c, "limits", r).is_some())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let l = get(c, "limits", r);
            l.is_some() && get(c, "requests", r).map(|q| q.millis) == l.map(|q| q.millis)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Defaults of a new namespace.
pub(crate) fn default_namespace(ns: &mut Value) {
    let name = ns
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let labels = obj_mut(obj_mut_value(ns, "metadata"), "labels");
    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    let spec = obj_mut(ns, "spec");
    set_default(spec, "finalizers", json!(["kubernetes"]));
    let status = obj_mut(ns, "status");
    status.insert("phase".into(), json!("Active"));
}

fn obj_mut_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    obj_mut(v, key);
    v.get_mut(key).expect("just inserted")
}

/// LimitRange defaulting (default from max, defaultRequest from default, then min).
pub(crate) fn default_limit_range(lr: &mut Value) {
    let Some(items) = lr.pointer_mut("/spec/limits").and_then(Value::as_array_mut) else {
        return;
    };
    for item in items {
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let max = item
            .get("max")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let min = item
            .get("min")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let default = obj_mut(item, "default");
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        let default = default.clone();
        let dreq = obj_mut(item, "defaultRequest");
        for (k, v) in default.into_iter().chain(min) {
            dreq.entry(k).or_insert(v);
        }
    }
}

/// Defaults of a new PriorityClass.
pub(crate) fn default_priority_class(pc: &mut Value) {
    if let Some(m) = pc.as_object_mut() {
        set_default(m, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
}

fn str_of<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// LimitRanger (mutating): fills default limits and requests into containers.
pub(crate) fn apply_limit_defaults(store: &Store, ns: &str, pod: &mut Value) {
    let ranges = store.list(Kind::LimitRange, Some(ns));
    for lr in &ranges {
        for item in lr
            .pointer("/spec/limits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if item.get("type").and_then(Value::as_str) != Some("Container") {
                continue;
            }
            for list in ["initContainers", "containers"] {
                let Some(cs) = pod
                    .pointer_mut(&format!("/spec/{list}"))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for c in cs {
                    let res = obj_mut_value(c, "resources");
                    for (field, src) in [("limits", "default"), ("requests", "defaultRequest")] {
                        if let Some(defs) = item.get(src).and_then(Value::as_object) {
                            let target = obj_mut(res, field);
                            for (k, v) in defs {
                                target.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                    }
                }
            }
        }
    }
}

fn q(v: Option<&Value>) -> Option<Quantity> {
    v.and_then(Value::as_str).and_then(Quantity::parse)
}

/// LimitRanger (validating): min, max and maxLimitRequestRatio per Container and Pod.
pub(crate) fn check_limits(
    store: &Store,
    ns: &str,
    name: &str,
    pod: &Value,
) -> Result<(), Failure> {
    let mut errs = Vec::new();
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| {
            pod.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    for lr in store.list(Kind::LimitRange, Some(ns)) {
        for item in lr
            .pointer("/spec/limits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ty = item.get("type").and_then(Value::as_str).unwrap_or("");
            let targets: Vec<(Option<Usage>, Option<Usage>)> = match ty {
                "Container" => containers
                    .iter()
                    .map(|c| {
                        (
                            res_map(c.pointer("/resources/requests")),
                            res_map(c.pointer("/resources/limits")),
                        )
                    })
                    .collect(),
                "Pod" => {
                    let mut req = Usage::new();
                    let mut lim = Usage::new();
                    let (mut any_req, mut any_lim) = (false, false);
                    for c in &containers {
                        if let Some(r) = res_map(c.pointer("/resources/requests")) {
                            any_req = true;
                            add_into(&mut req, &r);
                        }
                        if let Some(l) = res_map(c.pointer("/resources/limits")) {
                            any_lim = true;
                            add_into(&mut lim, &l);
                        }
                    }
                    vec![(any_req.then_some(req), any_lim.then_some(lim))]
                }
                _ => continue,
            };
            for (req, lim) in targets {
                let req = req.unwrap_or_default();
                let lim = lim.unwrap_or_default();
                for (k, enforced) in item
                    .get("min")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let Some(e) = q(Some(enforced)) else { continue };
                    match req.get(k) {
                        None => errs.push(format!(
                            "minimum {k} usage per {ty} is {e}.  No request is specified"
                        )),
                        Some(r) if r.millis < e.millis => errs.push(format!(
                            "minimum {k} usage per {ty} is {e}, but request is {r}"
                        )),
                        _ => {
                            if let Some(l) = lim.get(k).filter(|l| l.millis < e.millis) {
                                errs.push(format!(
                                    "minimum {k} usage per {ty} is {e}, but limit is {l}"
                                ));
                            }
                        }
                    }
                }
                for (k, enforced) in item
                    .get("max")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let Some(e) = q(Some(enforced)) else { continue };
                    match lim.get(k) {
                        None => errs.push(format!(
                            "maximum {k} usage per {ty} is {e}.  No limit is specified"
                        )),
                        Some(l) if l.millis > e.millis => errs.push(format!(
                            "maximum {k} usage per {ty} is {e}, but limit is {l}"
                        )),
                        _ => {
                            if let Some(r) = req.get(k).filter(|r| r.millis > e.millis) {
                                errs.push(format!(
                                    "maximum {k} usage per {ty} is {e}, but request is {r}"
                                ));
                            }
                        }
                    }
                }
                for (k, ratio) in item
                    .get("maxLimitRequestRatio")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let Some(ratio) = q(Some(ratio)) else {
                        continue;
                    };
                    match (req.get(k), lim.get(k)) {
                        (Some(r), Some(l)) if r.millis > 0 => {
                            let observed = l.millis as f64 / r.millis as f64;
                            if observed > ratio.millis as f64 / 1000.0 {
                                errs.push(format!(
                                    "{k} max limit to request ratio per {ty} is {ratio}, but provided ratio is {observed:.6}"
                                ));
                            }
                        }
                        _ => errs.push(format!(
                            "{k} max limit to request ratio per {ty} is {ratio}, but no request is specified or request is 0"
                        )),
                    }
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(forbidden(Kind::Pod, name, aggregate(&errs)))
    }
}

fn res_map(v: Option<&Value>) -> Option<Usage> {
    let m = v?.as_object()?;
    Some(
        m.iter()
            .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(v.as_str()?)?)))
            .collect(),
    )
}

fn add_into(total: &mut Usage, add: &Usage) {
    for (k, v) in add {
        let slot = total.entry(k.clone()).or_default();
        *slot = slot.add(*v);
    }
}

/// Priority admission: resolves spec.priorityClassName (or the global default) into
/// spec.priority and spec.preemptionPolicy.
pub(crate) fn resolve_priority(store: &Store, name: &str, pod: &mut Value) -> Result<(), Failure> {
    let class_name = str_of(pod, "/spec/priorityClassName")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let (class, priority, policy) = match class_name {
        Some(cn) => {
            let Some(pc) = store.get(Kind::PriorityClass, None, &cn) else {
                return Err(forbidden(
                    Kind::Pod,
                    name,
                    format!("no PriorityClass with name {cn} was found"),
                ));
            };
            (Some(cn), pc["value"].as_i64().unwrap_or(0), policy_of(&pc))
        }
        None => {
            let default = store
                .list(Kind::PriorityClass, None)
                .into_iter()
                .filter(|pc| pc["globalDefault"].as_bool() == Some(true))
                .max_by_key(|pc| pc["value"].as_i64().unwrap_or(0));
            match default {
                Some(pc) => (
                    str_of(&pc, "/metadata/name").map(str::to_string),
                    pc["value"].as_i64().unwrap_or(0),
                    policy_of(&pc),
                ),
                None => (None, 0, "PreemptLowerPriority".to_string()),
            }
        }
    };
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64)
        && given != priority
    {
        return Err(forbidden(
            Kind::Pod,
            name,
            format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
            ),
        ));
    }
    let spec = obj_mut(pod, "spec");
    if let Some(c) = class {
        spec.insert("priorityClassName".into(), json!(c));
    }
    spec.insert("priority".into(), json!(priority));
    spec.insert("preemptionPolicy".into(), json!(policy));
    Ok(())
}

fn policy_of(pc: &Value) -> String {
    pc["preemptionPolicy"]
        .as_str()
        .unwrap_or("PreemptLowerPriority")
        .to_string()
}

/// Whether a pod phase is terminal.
pub(crate) fn is_terminal(pod: &Value) -> bool {
    matches!(str_of(pod, "/status/phase"), Some("Succeeded" | "Failed"))
}

/// What a pod counts against quotas (empty when terminal).
pub(crate) fn pod_usage(pod: &Value) -> Usage {
    let mut u = Usage::new();
    if is_terminal(pod) {
        return u;
    }
    u.insert("pods".into(), Quantity::units(1));
    u.insert("count/pods".into(), Quantity::units(1));
    for which in ["requests", "limits"] {
        let mut sum = Usage::new();
        for c in pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = res_map(c.pointer(&format!("/resources/{which}"))) {
                add_into(&mut sum, &r);
            }
        }
        for c in pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for (k, v) in res_map(c.pointer(&format!("/resources/{which}"))).unwrap_or_default() {
                let slot = sum.entry(k).or_default();
                if v.millis > slot.millis {
                    *slot = v;
                }
            }
        }
        for (k, v) in sum {
            if which == "requests" && (k == "cpu" || k == "memory") {
                u.insert(k.clone(), v);
            }
            u.insert(format!("{which}.{k}"), v);
        }
    }
    u
}

#[derive(Default)]
struct NsUsage {
    per_pod: HashMap<String, Usage>,
    total: Usage,
}

/// Per-namespace pod usage, kept current by a store observer; namespaces whose usage
/// changed are marked dirty for the quota-status writer.
#[derive(Default)]
pub(crate) struct QuotaTracker {
    usage: Mutex<HashMap<String, NsUsage>>,
    dirty: Mutex<HashSet<String>>,
    pub notify: tokio::sync::Notify,
}

impl QuotaTracker {
    /// Observes one store change.
    pub fn observe(&self, change: &Change) {
        if change.kind != Kind::Pod {
            return;
        }
        let obj = &change.object;
        let (Some(ns), Some(name)) = (
            str_of(obj, "/metadata/namespace"),
            str_of(obj, "/metadata/name"),
        ) else {
            return;
        };
        let new = if change.ty == ChangeType::Deleted {
            Usage::new()
        } else {
            pod_usage(obj)
        };
        let mut all = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let nsu = all.entry(ns.to_string()).or_default();
        let old = if new.is_empty() {
            nsu.per_pod.remove(name).unwrap_or_default()
        } else {
            nsu.per_pod
                .insert(name.to_string(), new.clone())
                .unwrap_or_default()
        };
        if old == new {
            return;
        }
        for (k, v) in &old {
            if let Some(slot) = nsu.total.get_mut(k) {
                slot.millis -= v.millis;
            }
        }
        add_into(&mut nsu.total, &new);
        drop(all);
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.to_string());
        self.notify.notify_one();
    }

    /// Current usage totals of a namespace.
    pub fn total(&self, ns: &str) -> Usage {
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ns)
            .map(|u| u.total.clone())
            .unwrap_or_default()
    }

    /// Takes the set of namespaces whose usage changed.
    pub fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Marks a namespace for a status refresh.
    pub fn mark(&self, ns: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.to_string());
        self.notify.notify_one();
    }
}

/// `status.used` of a quota for the given totals (only the keys in `status.hard`).
pub(crate) fn quota_status(quota: &Value, total: &Usage) -> Value {
    let hard = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
    let mut used = serde_json::Map::new();
    for k in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
        let v = total.get(k).copied().unwrap_or_default();
        used.insert(k.clone(), json!(v.to_string()));
    }
    json!({"hard": hard, "used": used})
}

const CONSTRAINED: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// ResourceQuota admission for a new pod against the namespace's current usage.
pub(crate) fn check_quota(
    store: &Store,
    tracker: &QuotaTracker,
    ns: &str,
    name: &str,
    pod: &Value,
) -> Result<(), Failure> {
    let quotas = store.list(Kind::ResourceQuota, Some(ns));
    if quotas.is_empty() {
        return Ok(());
    }
    let requested = pod_usage(pod);
    let total = tracker.total(ns);
    for quota in quotas {
        let qname = str_of(&quota, "/metadata/name").unwrap_or("");
        let hard: Usage = res_map(quota.pointer("/spec/hard")).unwrap_or_default();
        // Every container must state what a quota on cpu/memory constrains.
        let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for list in ["containers", "initContainers"] {
            for c in pod
                .pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let cname = str_of(c, "/name").unwrap_or("").to_string();
                for key in CONSTRAINED.iter().filter(|k| hard.contains_key(**k)) {
                    let (which, res) = match key.split_once('.') {
                        Some((w, r)) => (w, r),
                        None => ("requests", *key),
                    };
                    if c.pointer(&format!("/resources/{which}/{res}")).is_none() {
                        missing.entry(key).or_default().insert(cname.clone());
                    }
                }
            }
        }
        if !missing.is_empty() {
            let errs: Vec<String> = missing
                .iter()
                .map(|(k, names)| {
                    format!(
                        "must specify {k} for: {}",
                        names.iter().cloned().collect::<Vec<_>>().join(",")
                    )
                })
                .collect();
            return Err(forbidden(
                Kind::Pod,
                name,
                format!("failed quota: {qname}: {}", aggregate(&errs)),
            ));
        }
        let mut req_s = Vec::new();
        let mut used_s = Vec::new();
        let mut hard_s = Vec::new();
        for (k, limit) in &hard {
            let Some(r) = requested.get(k).filter(|r| r.millis != 0) else {
                continue;
            };
            let used = total.get(k).copied().unwrap_or_default();
            if used.millis + r.millis > limit.millis {
                req_s.push(format!("{k}={r}"));
                used_s.push(format!("{k}={used}"));
                hard_s.push(format!("{k}={limit}"));
            }
        }
        if !req_s.is_empty() {
            return Err(forbidden(
                Kind::Pod,
                name,
                format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    req_s.join(","),
                    used_s.join(","),
                    hard_s.join(",")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_qos() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "busybox", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        default_pod(&mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1"
        );
        assert_eq!(qos_class(&pod), "Guaranteed");
        let mut be = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        default_pod(&mut be);
        assert_eq!(
            be["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(qos_class(&be), "BestEffort");
    }

    #[test]
    fn usage_sums_and_aliases() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": "1"}}}]}});
        let u = pod_usage(&pod);
        assert_eq!(u["requests.cpu"].to_string(), "2");
        assert_eq!(u["cpu"].to_string(), "2");
        assert_eq!(u["requests.memory"].to_string(), "2Gi");
        assert_eq!(u["limits.nvidia.com/gpu"].to_string(), "1");
        assert_eq!(u["pods"].to_string(), "1");
    }
}
