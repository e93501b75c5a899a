//! Small helpers shared by the scheduler and the kubelet: JSON access, timestamps,
//! quantities, image references and Event objects.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::store::{ApiError, Kind, Store};

/// RFC 3339 with second precision (`metav1.Time`), formatted once per second.
pub(crate) fn now_time() -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = Timestamp::now();
    let sec = now.as_second();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != sec {
            *c = (sec, time_of(now));
        }
        c.1.clone()
    })
}

/// A timestamp as `metav1.Time`.
pub(crate) fn time_of(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3339 with nanoseconds, trailing zeros trimmed (Go's `RFC3339Nano`).
pub(crate) fn now_nano() -> String {
    Timestamp::now().to_string()
}

/// Now plus `secs` seconds as `metav1.Time`.
pub(crate) fn time_in(secs: i64) -> String {
    time_of(
        Timestamp::now()
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap_or_else(|_| Timestamp::now()),
    )
}

/// The string at a JSON path, if any.
pub(crate) fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)?.as_str()
}

/// The value at a JSON path, if any and not null.
pub(crate) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    if cur.is_null() { None } else { Some(cur) }
}

/// The array at a JSON path, or an empty slice.
pub(crate) fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// `metadata.<field>` as a string, or "".
pub(crate) fn meta<'a>(v: &'a Value, field: &str) -> &'a str {
    s(v, &["metadata", field]).unwrap_or("")
}

/// Whether the pod's phase is Succeeded or Failed.
pub(crate) fn is_terminal(pod: &Value) -> bool {
    matches!(
        s(pod, &["status", "phase"]),
        Some("Succeeded") | Some("Failed")
    )
}

/// Whether metadata.deletionTimestamp is set.
pub(crate) fn is_deleting(obj: &Value) -> bool {
    at(obj, &["metadata", "deletionTimestamp"]).is_some()
}

/// A map of strings at a JSON path.
pub(crate) fn str_map(v: &Value, path: &[&str]) -> BTreeMap<String, String> {
    at(v, path)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A 409 Conflict used to abandon an update.
pub(crate) fn conflict(message: &str) -> ApiError {
    ApiError {
        code: 409,
        reason: "Conflict".to_string(),
        message: message.to_string(),
    }
}

/// Parses a Kubernetes quantity into an integer of `unit`s, rounding up
/// (`parse_quantity("100m", 1000)` = 100 millicores; `("1Gi", 1)` = bytes).
pub(crate) fn parse_quantity(q: &str, scale: i128) -> Option<i64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    // Decimal exponent forms: 1e3, 1E3.
    let (mul_num, mul_den): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok()?;
            (10i128.checked_pow(exp)?, 1)
        }
        _ => return None,
    };
    let negative = num.starts_with('-');
    let num = num.trim_start_matches(['+', '-']);
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let int: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let frac_digits = frac_part.len().min(18) as u32;
    let frac: i128 = if frac_digits == 0 {
        0
    } else {
        frac_part[..frac_digits as usize].parse().ok()?
    };
    let den = 10i128.pow(frac_digits);
    // value = (int + frac/den) * mul_num / mul_den * scale
    let numer = (int * den + frac)
        .checked_mul(mul_num)?
        .checked_mul(scale)?;
    let denom = den * mul_den;
    let v = (numer + denom - 1) / denom;
    let v = if negative { -v } else { v };
    i64::try_from(v).ok()
}

/// A quantity of cpu millicores as written by Kubernetes ("16", "1500m").
pub(crate) fn cpu_quantity(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// A quantity of bytes as a kubelet reports memory ("65843012Ki").
pub(crate) fn mem_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) && bytes > 0 {
        format!("{}Gi", bytes >> 30)
    } else if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// The fully qualified reference containerd reports for an image
/// (`busybox` -> `docker.io/library/busybox:latest`).
pub(crate) fn normalize_image(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if let Some(d) = digest {
        full.push('@');
        full.push_str(d);
    } else if !last.contains(':') {
        full.push_str(":latest");
    }
    full
}

/// Whether an image reference is malformed the way containerd rejects it
/// (empty, upper case in the repository, whitespace).
pub(crate) fn invalid_image(image: &str) -> bool {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return true;
    }
    let name = image.split('@').next().unwrap_or(image);
    // The repository part (before the tag) must be lower case.
    let repo = match name.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => name,
    };
    repo.chars().any(|c| c.is_ascii_uppercase())
        || repo.ends_with('/')
        || repo.starts_with('/')
        || repo.contains("//")
}

/// A stable 64-hex-digit digest of `seed`.
pub(crate) fn hex64(seed: &str) -> String {
    let mut out = String::with_capacity(64);
    for i in 0u64..4 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        i.hash(&mut h);
        seed.hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// A fresh random 64-hex-digit id (container ids).
pub(crate) fn random_hex64() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

static EVENT_SEQ: AtomicU64 = AtomicU64::new(1);

/// What an Event is about.
pub(crate) struct Involved<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub kind: &'a str,
    pub field_path: Option<String>,
}

impl<'a> Involved<'a> {
    /// A pod, from its object.
    pub fn pod(pod: &'a Value) -> Self {
        Involved {
            ns: meta(pod, "namespace"),
            name: meta(pod, "name"),
            uid: meta(pod, "uid"),
            kind: "Pod",
            field_path: None,
        }
    }

    /// A container of a pod.
    pub fn container(mut self, container: &str) -> Self {
        self.field_path = Some(format!("spec.containers{{{container}}}"));
        self
    }
}

/// Creates a core/v1 Event in the store (errors are ignored: events are best effort).
pub(crate) fn record_event(
    store: &Store,
    involved: &Involved<'_>,
    ty: &str,
    reason: &str,
    message: &str,
    component: &str,
    host: Option<&str>,
) {
    let seq = EVENT_SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{}.{:x}{:08x}",
        involved.name,
        Timestamp::now().as_nanosecond() as u64 & 0xffff_ffff_ffff,
        seq & 0xffff_ffff
    );
    let ns = if involved.ns.is_empty() {
        "default"
    } else {
        involved.ns
    };
    let now = now_time();
    let mut obj = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": involved.kind,
            "name": involved.name,
            "uid": involved.uid,
        },
        "reason": reason,
        "message": message,
        "type": ty,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "eventTime": null,
        "reportingComponent": component,
        "reportingInstance": host.unwrap_or(""),
    });
    if !involved.ns.is_empty() {
        obj["involvedObject"]["namespace"] = involved.ns.into();
    }
    if let Some(fp) = &involved.field_path {
        obj["involvedObject"]["fieldPath"] = fp.as_str().into();
    }
    if let Some(h) = host {
        obj["source"]["host"] = h.into();
    }
    let _ = store.create(Kind::Event, obj);
}

/// Sets (or replaces) a pod condition, keeping lastTransitionTime when the status is
/// unchanged. Conditions are kept in the order a kubelet writes them.
pub(crate) fn set_condition(
    status: &mut Value,
    ty: &str,
    cond_status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    if !status.is_object() {
        *status = json!({});
    }
    let conds = status
        .as_object_mut()
        .expect("object")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let list = conds.as_array_mut().expect("array");
    let mut cond = json!({"type": ty, "status": cond_status, "lastProbeTime": null});
    if let Some(r) = reason {
        cond["reason"] = r.into();
    }
    if let Some(m) = message {
        cond["message"] = m.into();
    }
    if let Some(existing) = list.iter_mut().find(|c| c["type"] == ty) {
        let same = existing["status"] == cond_status;
        cond["lastTransitionTime"] = match existing.get("lastTransitionTime") {
            Some(t) if same && !t.is_null() => t.clone(),
            _ => now_time().into(),
        };
        *existing = cond;
    } else {
        cond["lastTransitionTime"] = now_time().into();
        list.push(cond);
        sort_conditions(list);
    }
}

fn condition_rank(ty: &str) -> usize {
    match ty {
        "PodReadyToStartContainers" => 0,
        "Initialized" => 1,
        "Ready" => 2,
        "ContainersReady" => 3,
        "PodScheduled" => 4,
        _ => 5,
    }
}

fn sort_conditions(list: &mut [Value]) {
    list.sort_by_key(|c| condition_rank(c["type"].as_str().unwrap_or("")));
}

/// A pod's priority: spec.priority, else its PriorityClass's value, else 0.
pub(crate) fn pod_priority(store: &Store, pod: &Value) -> i32 {
    if let Some(p) = at(pod, &["spec", "priority"]).and_then(Value::as_i64) {
        return p as i32;
    }
    if let Some(pc) = s(pod, &["spec", "priorityClassName"])
        && let Some(obj) = store.get(Kind::PriorityClass, None, pc)
    {
        return obj.get("value").and_then(Value::as_i64).unwrap_or(0) as i32;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m", 1000), Some(100));
        assert_eq!(parse_quantity("1", 1000), Some(1000));
        assert_eq!(parse_quantity("0.5", 1000), Some(500));
        assert_eq!(parse_quantity("2.5", 1000), Some(2500));
        assert_eq!(parse_quantity("1Gi", 1), Some(1 << 30));
        assert_eq!(parse_quantity("32Mi", 1), Some(32 << 20));
        assert_eq!(parse_quantity("1G", 1), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e3", 1), Some(1000));
        assert_eq!(parse_quantity("128974848", 1), Some(128_974_848));
        assert_eq!(parse_quantity("1.5Gi", 1), Some(3 << 29));
        assert_eq!(parse_quantity("x", 1), None);
        assert_eq!(cpu_quantity(16000), "16");
        assert_eq!(cpu_quantity(1500), "1500m");
        assert_eq!(mem_quantity(64 << 30), "64Gi");
    }

    #[test]
    fn images() {
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_image("me/app:1"), "docker.io/me/app:1");
        assert_eq!(normalize_image("ghcr.io/a/b"), "ghcr.io/a/b:latest");
        assert_eq!(normalize_image("localhost:5000/x:2"), "localhost:5000/x:2");
        assert!(invalid_image("Busybox"));
        assert!(invalid_image("busy box"));
        assert!(invalid_image(""));
        assert!(!invalid_image("busybox:Latest"));
        assert!(!invalid_image("localhost:5000/x:2"));
        assert!(!invalid_image("ghcr.io/a/b@sha256:abc"));
    }

    #[test]
    fn timestamps() {
        let t = now_time();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
        assert!(now_nano().ends_with('Z'));
    }
}
