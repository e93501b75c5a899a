//! The object store: every object as JSON keyed by (kind, namespace, name), one global
//! resourceVersion counter, a bounded change log for watches and a broadcast channel
//! for in-process subscribers (the agent).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// The resource kinds the simulator stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Namespace,
    Pod,
    Node,
    ResourceQuota,
    LimitRange,
    PriorityClass,
    NetworkPolicy,
    Event,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Node,
        Kind::ResourceQuota,
        Kind::LimitRange,
        Kind::PriorityClass,
        Kind::NetworkPolicy,
        Kind::Event,
    ];

    /// The kind from its plural resource name (`pods`).
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }

    /// The plural resource name used in URLs and messages.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::ResourceQuota => "resourcequotas",
            Kind::LimitRange => "limitranges",
            Kind::PriorityClass => "priorityclasses",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Event => "events",
        }
    }

    /// The `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::ResourceQuota => "ResourceQuota",
            Kind::LimitRange => "LimitRange",
            Kind::PriorityClass => "PriorityClass",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Event => "Event",
        }
    }

    /// The API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::PriorityClass => "scheduling.k8s.io",
            _ => "",
        }
    }

    /// The `apiVersion` field.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::PriorityClass => "scheduling.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::PriorityClass)
    }
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One change of one object.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub ty: ChangeType,
    pub object: Arc<Value>,
}

/// An error the API answers with a `Status` object.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl ApiError {
    /// An error with the given code, reason and message.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// `404 NotFound`: `pods "x" not found`.
    pub fn not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res_name(kind)),
        )
    }

    /// `409 AlreadyExists`: `pods "x" already exists`.
    pub fn already_exists(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res_name(kind)),
        )
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
}

/// `pods` or `networkpolicies.networking.k8s.io`, as in API-server messages.
pub(crate) fn res_name(kind: Kind) -> String {
    if kind.group().is_empty() {
        kind.plural().to_string()
    } else {
        format!("{}.{}", kind.plural(), kind.group())
    }
}

/// A change as kept in the watch log, with its watch-event line serialized at most once.
#[derive(Debug)]
pub(crate) struct Logged {
    pub change: Change,
    /// The object before this change (None for Added).
    pub prev: Option<Arc<Value>>,
    line: OnceLock<bytes::Bytes>,
}

impl Logged {
    /// `{"type":"ADDED","object":{...}}\n`, serialized once and shared.
    pub fn line(&self) -> bytes::Bytes {
        self.line
            .get_or_init(|| event_line(self.change.ty.as_str(), &self.change.object))
            .clone()
    }
}

/// One watch-event line.
pub(crate) fn event_line(ty: &str, object: &Value) -> bytes::Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(ty.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    serde_json::to_writer(&mut buf, object).expect("JSON values serialize");
    buf.extend_from_slice(b"}\n");
    buf.into()
}

type Key = (Kind, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    log: VecDeque<Arc<Logged>>,
    window: usize,
    /// Highest resourceVersion dropped from the log: open watches behind it are lost.
    trimmed: u64,
    /// New watches or continues from a resourceVersion below this answer 410.
    min_valid: u64,
}

/// Where the log can serve a watch from.
pub(crate) enum Since {
    /// Every change after the given rv (maybe none yet), and the current rv.
    Changes(Vec<Arc<Logged>>, u64),
    /// The rv is older than what the log keeps: 410, with the oldest valid rv.
    Expired(u64),
}

/// The object store, shared as `Arc<Store>`.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Change>,
    rv_tx: watch::Sender<u64>,
    observer: OnceLock<Observer>,
}

/// A callback run under the store lock for every change (with the previous object).
pub(crate) type Observer = Box<dyn Fn(&Change, Option<&Value>) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn key_of(kind: Kind, ns: Option<&str>, name: &str) -> Key {
    let ns = if kind.namespaced() {
        ns.unwrap_or("")
    } else {
        ""
    };
    (kind, ns.to_string(), name.to_string())
}

/// RFC 3339 timestamp with second precision, as metadata timestamps are written.
pub(crate) fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("object");
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .expect("object")
        .insert(field.to_string(), v);
}

fn should_vanish(kind: Kind, obj: &Value) -> bool {
    let Some(meta) = obj.get("metadata") else {
        return false;
    };
    // A namespace also waits for its spec.finalizers (the namespace controller).
    if kind == Kind::Namespace
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        return false;
    }
    if meta.get("deletionTimestamp").is_none_or(Value::is_null) {
        return false;
    }
    let finalizers_empty = meta
        .get("finalizers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    let grace_zero = meta
        .get("deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_none_or(|g| g == 0);
    finalizers_empty && grace_zero
}

impl Store {
    /// A store keeping `watch_window` changes for watches.
    pub fn new(watch_window: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        let (rv_tx, _) = watch::channel(0);
        Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                window: watch_window.max(1),
                trimmed: 0,
                min_valid: 0,
            }),
            tx,
            rv_tx,
            observer: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One object.
    pub fn get(&self, kind: Kind, ns: Option<&str>, name: &str) -> Option<Value> {
        self.get_arc(kind, ns, name).map(|v| (*v).clone())
    }

    /// One object, shared.
    pub fn get_arc(&self, kind: Kind, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
        self.lock().objects.get(&key_of(kind, ns, name)).cloned()
    }

    /// Every object of a kind (in one namespace, or all when `ns` is None).
    pub fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<Value> {
        let mut out = Vec::new();
        self.scan(kind, ns, None, |_, v| {
            out.push((**v).clone());
            true
        });
        out
    }

    /// Visits objects of a kind in key order, starting after `after` = (namespace, name)
    /// when given, under the lock, until `f` returns false. Returns the current
    /// resourceVersion (consistent with what was visited).
    pub fn scan(
        &self,
        kind: Kind,
        ns: Option<&str>,
        after: Option<(&str, &str)>,
        mut f: impl FnMut(&Key, &Arc<Value>) -> bool,
    ) -> u64 {
        let inner = self.lock();
        let ns = if kind.namespaced() { ns } else { None };
        let start: Bound<Key> = match after {
            Some((a_ns, a_name)) => Bound::Excluded((kind, a_ns.to_string(), a_name.to_string())),
            None => Bound::Included((kind, ns.unwrap_or("").to_string(), String::new())),
        };
        for (k, v) in inner.objects.range((start, Bound::Unbounded)) {
            if k.0 != kind {
                break;
            }
            if let Some(ns) = ns
                && k.1 != ns
            {
                break;
            }
            if !f(k, v) {
                break;
            }
        }
        inner.rv
    }

    /// The oldest resourceVersion a watch or continue may resume from.
    pub fn min_valid_rv(&self) -> u64 {
        self.lock().min_valid
    }

    /// Installs the callback run under the lock for every change (once).
    pub fn set_observer(&self, f: Observer) {
        let _ = self.observer.set(f);
    }

    fn emit(&self, inner: &mut Inner, change: Change, prev: Option<Arc<Value>>) {
        if let Some(obs) = self.observer.get() {
            obs(&change, prev.as_deref());
        }
        let _ = self.tx.send(change.clone());
        inner.log.push_back(Arc::new(Logged {
            change,
            prev,
            line: OnceLock::new(),
        }));
        while inner.log.len() > inner.window {
            if let Some(old) = inner.log.pop_front() {
                inner.trimmed = inner.trimmed.max(old.change.rv);
                inner.min_valid = inner.min_valid.max(old.change.rv);
            }
        }
        self.rv_tx.send_replace(inner.rv);
    }

    /// Stores a new object exactly as given plus server fields (uid, resourceVersion,
    /// creationTimestamp, generation 1). No admission. 409 AlreadyExists if present.
    pub fn create(&self, kind: Kind, mut object: Value) -> Result<Value, ApiError> {
        let name = meta_str(&object, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name is required",
                )
            })?
            .to_string();
        let ns = meta_str(&object, "namespace").map(str::to_string);
        if kind.namespaced() && ns.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "the server could not find the requested resource: namespace is required",
            ));
        }
        let key = key_of(kind, ns.as_deref(), &name);
        let mut inner = self.lock();
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), kind.api_version().into());
            map.insert("kind".into(), kind.name().into());
        }
        if !kind.namespaced()
            && let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("namespace");
        }
        set_meta(&mut object, "uid", uuid::Uuid::new_v4().to_string().into());
        set_meta(&mut object, "resourceVersion", rv.to_string().into());
        set_meta(&mut object, "creationTimestamp", now_rfc3339().into());
        set_meta(&mut object, "generation", 1.into());
        let object = Arc::new(object);
        inner.objects.insert(key, object.clone());
        self.emit(
            &mut inner,
            Change {
                rv,
                kind,
                ty: ChangeType::Added,
                object: object.clone(),
            },
            None,
        );
        Ok((*object).clone())
    }

    /// Read-modify-write under the lock. 404 if missing. Bumps resourceVersion, emits
    /// Modified. If afterwards metadata.deletionTimestamp is set, metadata.finalizers is
    /// empty and metadata.deletionGracePeriodSeconds is 0 or absent, the object is removed
    /// and Deleted is emitted (with that final object) instead.
    pub fn update(
        &self,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let key = key_of(kind, ns, name);
        let mut inner = self.lock();
        let Some(old) = inner.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        let mut obj = (*old).clone();
        f(&mut obj)?;
        // Identity and server-owned fields cannot change.
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            match old.get("metadata").and_then(|m| m.get(field)) {
                Some(v) => set_meta(&mut obj, field, v.clone()),
                None => {
                    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(field);
                    }
                }
            }
        }
        if let Some(map) = obj.as_object_mut() {
            map.insert("apiVersion".into(), kind.api_version().into());
            map.insert("kind".into(), kind.name().into());
        }
        let generation = old
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if old.get("spec") != obj.get("spec") {
            generation + 1
        } else {
            generation
        };
        set_meta(&mut obj, "generation", generation.into());
        inner.rv += 1;
        let rv = inner.rv;
        set_meta(&mut obj, "resourceVersion", rv.to_string().into());
        let obj = Arc::new(obj);
        let ty = if should_vanish(kind, &obj) {
            inner.objects.remove(&key);
            ChangeType::Deleted
        } else {
            inner.objects.insert(key, obj.clone());
            ChangeType::Modified
        };
        self.emit(
            &mut inner,
            Change {
                rv,
                kind,
                ty,
                object: obj.clone(),
            },
            Some(old),
        );
        Ok((*obj).clone())
    }

    /// Removes at once (emits Deleted). None if missing.
    #[allow(dead_code)] // part of the store contract (used by the agent and tests)
    pub fn remove(&self, kind: Kind, ns: Option<&str>, name: &str) -> Option<Value> {
        let key = key_of(kind, ns, name);
        let mut inner = self.lock();
        let old = inner.objects.remove(&key)?;
        inner.rv += 1;
        let rv = inner.rv;
        let mut obj = (*old).clone();
        set_meta(&mut obj, "resourceVersion", rv.to_string().into());
        let obj = Arc::new(obj);
        self.emit(
            &mut inner,
            Change {
                rv,
                kind,
                ty: ChangeType::Deleted,
                object: obj.clone(),
            },
            Some(old),
        );
        Some((*obj).clone())
    }

    /// Every change from now on, all kinds (broadcast; a lagging receiver should resync via list).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// A receiver of the current resourceVersion, notified after every change.
    pub fn rv_watch(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// The logged changes after `rv` for a new watch, or `Expired` when `rv` is older
    /// than the log or the last compaction.
    pub fn changes_since(&self, rv: u64) -> Since {
        let inner = self.lock();
        if rv < inner.min_valid {
            return Since::Expired(inner.min_valid);
        }
        Self::collect(&inner, rv)
    }

    /// The logged changes after `rv` for an open watch: only the window matters
    /// (compaction does not break open watches, as with etcd).
    pub fn changes_after(&self, rv: u64) -> Since {
        let inner = self.lock();
        if rv < inner.trimmed {
            return Since::Expired(inner.min_valid);
        }
        Self::collect(&inner, rv)
    }

    fn collect(inner: &Inner, rv: u64) -> Since {
        let start = inner.log.partition_point(|l| l.change.rv <= rv);
        Since::Changes(inner.log.range(start..).cloned().collect(), inner.rv)
    }

    /// Expires every resourceVersion before the current one, as an etcd compaction:
    /// new watches and list continues from an earlier resourceVersion answer 410 (open
    /// watches go on).
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.min_valid = inner.min_valid.max(inner.rv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {}})
    }

    #[test]
    fn create_update_remove_log() {
        let s = Store::new(3);
        let mut rx = s.subscribe();
        let a = s.create(Kind::Pod, pod("a")).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(a["kind"], "Pod");
        assert_eq!(
            s.create(Kind::Pod, pod("a")).unwrap_err().reason,
            "AlreadyExists"
        );
        let b = s
            .update(Kind::Pod, Some("ns"), "a", |o| {
                o["spec"]["nodeName"] = "n".into();
                Ok(())
            })
            .unwrap();
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert_eq!(b["metadata"]["generation"], 2);
        assert_eq!(rx.try_recv().unwrap().ty, ChangeType::Added);
        assert_eq!(rx.try_recv().unwrap().ty, ChangeType::Modified);
        // finalizer-free deletion with grace 0 removes
        let d = s
            .update(Kind::Pod, Some("ns"), "a", |o| {
                o["metadata"]["deletionTimestamp"] = now_rfc3339().into();
                o["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                Ok(())
            })
            .unwrap();
        assert_eq!(d["metadata"]["resourceVersion"], "3");
        assert!(s.get(Kind::Pod, Some("ns"), "a").is_none());
        assert_eq!(rx.try_recv().unwrap().ty, ChangeType::Deleted);
        s.create(Kind::Pod, pod("b")).unwrap();
        assert!(s.remove(Kind::Pod, Some("ns"), "b").is_some());
        assert!(s.remove(Kind::Pod, Some("ns"), "b").is_none());
        // window 3: rv 1 dropped, min_valid 2
        assert!(matches!(s.changes_since(0), Since::Expired(2)));
        match s.changes_since(3) {
            Since::Changes(c, rv) => assert_eq!((c.len(), rv), (2, 5)),
            Since::Expired(_) => panic!("expired"),
        }
        s.compact();
        assert!(matches!(s.changes_since(4), Since::Expired(5)));
        assert!(matches!(s.changes_after(4), Since::Changes(c, _) if c.len() == 1));
        assert!(matches!(s.changes_since(5), Since::Changes(c, 5) if c.is_empty()));
    }

    #[test]
    fn scan_by_namespace() {
        let s = Store::new(10);
        for (ns, n) in [("a", "x"), ("b", "y"), ("b", "z"), ("c", "w")] {
            s.create(Kind::Pod, json!({"metadata": {"name": n, "namespace": ns}}))
                .unwrap();
        }
        s.create(Kind::Node, json!({"metadata": {"name": "n1"}}))
            .unwrap();
        assert_eq!(s.list(Kind::Pod, Some("b")).len(), 2);
        assert_eq!(s.list(Kind::Pod, None).len(), 4);
        assert_eq!(s.list(Kind::Node, None).len(), 1);
        let mut seen = Vec::new();
        s.scan(Kind::Pod, None, Some(("b", "y")), |k, _| {
            seen.push(k.2.clone());
            true
        });
        assert_eq!(seen, ["z", "w"]);
    }
}
