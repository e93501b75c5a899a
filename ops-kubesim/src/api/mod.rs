//! The HTTP API: routing, RBAC deny list, CRUD verbs, lists, discovery, eviction and
//! SelfSubjectAccessReview. Watches live in `watch`, logs in `logs`.

mod admission;
mod logs;
mod patch;
mod quantity;
mod selector;
mod status;
mod validate;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::agent::Agent;
use crate::store::{ApiError, Kind, Store, now_rfc3339};
pub(crate) use admission::QuotaTracker;
use admission::{is_terminal, quota_status};
use patch::PatchType;
use selector::{FieldSelector, LabelSelector};
use status::{Failure, bytes_response, invalid, json_response, success};

/// Everything the handlers share.
pub(crate) struct ApiState {
    pub store: Arc<Store>,
    pub agent: Arc<Agent>,
    pub user: String,
    pub denied: RwLock<HashSet<(String, String)>>,
    pub unavailable: AtomicBool,
    pub requests: AtomicU64,
    pub open_watches: AtomicUsize,
    /// Set when the simulator stops: background controllers end.
    pub closed: AtomicBool,
    /// Bumped to end every open watch.
    pub epoch: tokio::sync::watch::Sender<u64>,
    pub quota: Arc<QuotaTracker>,
    /// Serializes quota checks with the creates they admit.
    admission: Mutex<()>,
    pub addr: String,
}

impl ApiState {
    /// Shared state for a server at `addr`.
    pub fn new(
        store: Arc<Store>,
        agent: Arc<Agent>,
        quota: Arc<QuotaTracker>,
        user: String,
        addr: String,
    ) -> Self {
        ApiState {
            store,
            agent,
            user,
            denied: RwLock::new(HashSet::new()),
            unavailable: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            open_watches: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            epoch: tokio::sync::watch::channel(0).0,
            quota,
            admission: Mutex::new(()),
            addr,
        }
    }

    /// Ends every open watch response.
    pub fn drop_watches(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    fn is_denied(&self, verb: &str, resource: &str) -> bool {
        let d = self.denied.read().unwrap_or_else(|e| e.into_inner());
        !d.is_empty()
            && [(verb, resource), (verb, "*"), ("*", resource), ("*", "*")]
                .iter()
                .any(|(v, r)| d.contains(&(v.to_string(), r.to_string())))
    }
}

/// The router: every request goes through one dispatcher.
pub(crate) fn router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(state)
}

/// Objects every cluster starts with.
pub(crate) fn bootstrap(store: &Store) {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut obj = json!({"metadata": {"name": ns}});
        admission::default_namespace(&mut obj);
        let _ = store.create(Kind::Namespace, obj);
    }
    for (name, value) in [
        ("system-cluster-critical", 2_000_000_000),
        ("system-node-critical", 2_000_001_000),
    ] {
        let _ = store.create(
            Kind::PriorityClass,
            json!({"metadata": {"name": name}, "value": value, "preemptionPolicy": "PreemptLowerPriority",
                "description": "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."}),
        );
    }
}

/// Keeps ResourceQuota `status.used` current for namespaces whose usage changed.
pub(crate) async fn quota_status_loop(store: Arc<Store>, tracker: Arc<QuotaTracker>) {
    loop {
        tracker.notify.notified().await;
        for ns in tracker.take_dirty() {
            let total = tracker.total(&ns);
            for q in store.list(Kind::ResourceQuota, Some(&ns)) {
                let Some(name) = q.pointer("/metadata/name").and_then(Value::as_str) else {
                    continue;
                };
                let st = quota_status(&q, &total);
                if q.get("status") != Some(&st) {
                    let _ = store.update(Kind::ResourceQuota, Some(&ns), name, |o| {
                        o["status"] = quota_status(o, &total);
                        Ok(())
                    });
                }
            }
        }
        // Coalesce bursts of pod changes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Params = HashMap<String, String>;

fn param_true(p: &Params, k: &str) -> bool {
    matches!(p.get(k).map(String::as_str), Some("true" | "1"))
}

/// What a resource path names.
#[derive(Debug)]
struct Target {
    kind: Kind,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, rest: &[&str]) -> Option<Target> {
    let (kind, ns, tail) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && Kind::from_plural(rest[2]).is_some_and(Kind::namespaced)
    {
        (
            Kind::from_plural(rest[2])?,
            Some(rest[1].to_string()),
            &rest[3..],
        )
    } else {
        (Kind::from_plural(rest.first()?)?, None, &rest[1..])
    };
    if kind.group() != group || tail.len() > 2 {
        return None;
    }
    if ns.is_some() && !kind.namespaced() {
        return None;
    }
    Some(Target {
        kind,
        ns,
        name: tail.first().map(|s| s.to_string()),
        sub: tail.get(1).map(|s| s.to_string()),
    })
}

async fn dispatch(
    State(st): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    if st.unavailable.load(Ordering::Relaxed) {
        return Failure::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )
        .with_details(json!({}))
        .into_response();
    }
    let params: Params = Query::<Params>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    match route(&st, &method, uri.path(), &params, &headers, body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

async fn route(
    st: &Arc<ApiState>,
    method: &Method,
    path: &str,
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => return Ok(json_response(StatusCode::OK, &version())),
        ["healthz" | "readyz" | "livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": st.addr}]}),
            ));
        }
        ["apis"] => return Ok(json_response(StatusCode::OK, &group_list())),
        ["api", "v1"] => return Ok(json_response(StatusCode::OK, &resource_list("", "v1"))),
        ["apis", g, "v1"] if GROUPS.contains(g) => {
            return Ok(json_response(StatusCode::OK, &resource_list(g, "v1")));
        }
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] if method == Method::POST => {
            return ssar(st, &body);
        }
        _ => {}
    }
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (*g, rest),
        _ => return Err(Failure::no_route()),
    };
    let t = parse_target(group, rest).ok_or_else(Failure::no_route)?;
    let watch = param_true(params, "watch");
    let verb = match (method, &t.name, &t.sub) {
        (&Method::GET, None, _) if watch => "watch",
        (&Method::GET, None, _) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, None, _) => "deletecollection",
        (&Method::DELETE, Some(_), _) => "delete",
        _ => return Err(Failure::method_not_allowed(method.as_str(), t.kind)),
    };
    let resource = match &t.sub {
        Some(s) => format!("{}/{s}", t.kind.plural()),
        None => t.kind.plural().to_string(),
    };
    if st.is_denied(verb, &resource) {
        let scope = match &t.ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let who = match &t.name {
            Some(n) => format!("{} \"{n}\"", crate::store::res_name(t.kind)),
            None => crate::store::res_name(t.kind),
        };
        return Err(Failure::new(
            403,
            "Forbidden",
            format!(
                "{who} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                st.user,
                t.kind.group()
            ),
        )
        .for_object(t.kind, t.name.as_deref()));
    }
    // A namespaced collection needs a namespace except for reads across all of them.
    if t.kind.namespaced() && t.ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(Failure::no_route());
    }
    let ns = t.ns.as_deref();
    let kind = t.kind;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let r = match (verb, t.name.as_deref(), t.sub.as_deref()) {
        ("list", _, _) => list(st, kind, ns, params),
        ("watch", _, _) => watch::watch(st.clone(), kind, ns, params),
        ("get", Some(name), None) => get(st, kind, ns, name),
        ("get", Some(name), Some("status")) => get(st, kind, ns, name),
        ("get", Some(name), Some("log")) if kind == Kind::Pod => {
            logs::logs(st.clone(), ns.unwrap_or(""), name, params).await
        }
        ("create", None, _) => create(st, kind, ns, params, &body),
        ("create", Some(name), Some("eviction")) if kind == Kind::Pod => {
            evict(st, ns.unwrap_or(""), name, &body)
        }
        ("update", Some(name), None | Some("status")) => {
            replace(st, kind, ns, name, t.sub.as_deref(), &body)
        }
        ("update", Some(name), Some("finalize")) if kind == Kind::Namespace => {
            replace(st, kind, ns, name, Some("finalize"), &body)
        }
        ("patch", Some(name), None | Some("status")) => patch(
            st,
            kind,
            ns,
            name,
            t.sub.as_deref(),
            params,
            content_type,
            &body,
        ),
        ("delete", Some(name), None) => delete(st, kind, ns, name, params, &body),
        ("deletecollection", None, None) => delete_collection(st, kind, ns, params, &body),
        _ => Err(Failure::no_route()),
    };
    r.map_err(|f| f.for_object(kind, t.name.as_deref()))
}

const GROUPS: [&str; 4] = [
    "networking.k8s.io",
    "scheduling.k8s.io",
    "authorization.k8s.io",
    "policy",
];

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": "v1.37.0-kubesim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn group_list() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let gv = format!("{g}/v1");
            json!({"name": g, "versions": [{"groupVersion": gv, "version": "v1"}],
                "preferredVersion": {"groupVersion": gv, "version": "v1"}})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Value {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources: Vec<Value> = Kind::ALL
        .iter()
        .filter(|k| k.group() == group)
        .map(|k| {
            json!({"name": k.plural(), "singularName": k.name().to_lowercase(), "namespaced": k.namespaced(),
                "kind": k.name(), "verbs": verbs})
        })
        .collect();
    match group {
        "" => {
            resources.push(json!({"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "patch", "update"]}));
            resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
        }
        "authorization.k8s.io" => resources.push(
            json!({"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
            "namespaced": false, "kind": "SelfSubjectAccessReview", "verbs": ["create"]}),
        ),
        _ => {}
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn ok_json(code: StatusCode, v: &Value) -> Result<Response, Failure> {
    Ok(json_response(code, v))
}

fn parse_body(kind: Kind, body: &[u8]) -> Result<Value, Failure> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Failure::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !v.is_object() {
        return Err(Failure::bad_request(
            "couldn't get version/kind; json parse error: expected an object",
        ));
    }
    if let Some(k) = v.get("kind").and_then(Value::as_str)
        && !k.is_empty()
        && k != kind.name()
    {
        return Err(Failure::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({}) or kind {k} is not {}",
            v.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
            kind.api_version(),
            kind.name()
        )));
    }
    Ok(v)
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("object")
}

fn get(st: &ApiState, kind: Kind, ns: Option<&str>, name: &str) -> Result<Response, Failure> {
    match st.store.get_arc(kind, ns, name) {
        Some(o) => ok_json(StatusCode::OK, &o),
        None => Err(ApiError::not_found(kind, name).into()),
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn list(st: &ApiState, kind: Kind, ns: Option<&str>, params: &Params) -> Result<Response, Failure> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?;
    let fields =
        FieldSelector::parse(kind, params.get("fieldSelector").map_or("", String::as_str))?;
    let limit: usize = match params.get("limit").filter(|s| !s.is_empty()) {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| Failure::bad_request(format!("invalid limit: {l}")))?
            .max(0) as usize,
        None => 0,
    };
    let mut token_rv = None;
    let mut after: Option<(String, String)> = None;
    if let Some(c) = params.get("continue").filter(|s| !s.is_empty()) {
        let decoded = unhex(c).ok_or_else(|| {
            Failure::bad_request("continue key is not valid: illegal base64 data")
        })?;
        let mut parts = decoded.splitn(3, '\n');
        let (Some(rv), Some(a_ns), Some(a_name)) = (
            parts.next().and_then(|r| r.parse::<u64>().ok()),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Failure::bad_request("continue key is not valid"));
        };
        if rv < st.store.min_valid_rv() {
            return Err(Failure::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            )
            .with_details(json!({})));
        }
        token_rv = Some(rv);
        after = Some((a_ns.to_string(), a_name.to_string()));
    }
    let mut items = Vec::new();
    let mut last_key: Option<(String, String)> = None;
    let mut more = false;
    let current = st.store.scan(
        kind,
        ns,
        after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        |k, v| {
            if labels.matches(v) && fields.matches(v) {
                if limit > 0 && items.len() == limit {
                    more = true;
                    return false;
                }
                items.push(v.clone());
                last_key = Some((k.1.clone(), k.2.clone()));
            }
            true
        },
    );
    let rv = token_rv.unwrap_or(current);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if more && let Some((a, b)) = &last_key {
        meta["continue"] = json!(hex(&format!("{rv}\n{a}\n{b}")));
    }
    let mut buf = Vec::with_capacity(64 + items.len() * 1024);
    buf.extend_from_slice(
        format!(
            "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
            kind.name(),
            kind.api_version(),
            meta
        )
        .as_bytes(),
    );
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &**item).expect("JSON values serialize");
    }
    buf.extend_from_slice(b"]}");
    Ok(bytes_response(StatusCode::OK, buf))
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| GENERATE_CHARS[*b as usize % GENERATE_CHARS.len()] as char)
        .collect()
}

fn namespace_lifecycle(st: &ApiState, kind: Kind, ns: &str, name: &str) -> Result<(), Failure> {
    match st.store.get_arc(Kind::Namespace, None, ns) {
        None => Err(Failure::from(ApiError::not_found(Kind::Namespace, ns))
            .for_object(Kind::Namespace, Some(ns))),
        Some(n) if n.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
            || n.pointer("/metadata/deletionTimestamp").is_some() =>
        {
            Err(Failure::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    crate::store::res_name(kind)
                ),
            )
            .for_object(kind, Some(name)))
        }
        Some(_) => Ok(()),
    }
}

fn create(
    st: &ApiState,
    kind: Kind,
    ns: Option<&str>,
    params: &Params,
    body: &[u8],
) -> Result<Response, Failure> {
    let mut obj = parse_body(kind, body)?;
    create_object(st, kind, ns, params, &mut obj)
}

fn create_object(
    st: &ApiState,
    kind: Kind,
    ns: Option<&str>,
    params: &Params,
    obj: &mut Value,
) -> Result<Response, Failure> {
    let dry_run = params.get("dryRun").is_some_and(|d| d == "All");
    {
        let meta = meta_mut(obj);
        if let Some(ns) = ns {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != ns => {
                    return Err(Failure::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        let gen_name = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.is_empty() && !gen_name.is_empty() {
            let n = format!("{gen_name}{}", generate_suffix());
            meta.insert("name".into(), json!(n));
        }
        for server_field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            meta.remove(server_field);
        }
    }
    validate::decode(kind, obj)?;
    let name = name_of(obj).to_string();
    if let Some(ns) = ns {
        namespace_lifecycle(st, kind, ns, &name)?;
    }
    match kind {
        Kind::Pod => {
            let ns = ns.unwrap_or("");
            admission::default_pod(obj);
            admission::apply_limit_defaults(&st.store, ns, obj);
            admission::resolve_priority(&st.store, &name, obj)?;
            let qos = admission::qos_class(obj);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        Kind::Namespace => admission::default_namespace(obj),
        Kind::LimitRange => admission::default_limit_range(obj),
        Kind::PriorityClass => admission::default_priority_class(obj),
        _ => {}
    }
    let causes = validate::validate(kind, obj);
    if !causes.is_empty() {
        return Err(invalid(kind, &name, causes));
    }
    if kind == Kind::PriorityClass && obj["globalDefault"].as_bool() == Some(true) {
        check_single_default(st, &name)?;
    }
    if kind == Kind::Pod {
        let ns = ns.unwrap_or("");
        admission::check_limits(&st.store, ns, &name, obj)?;
        let _guard = st.admission.lock().unwrap_or_else(|e| e.into_inner());
        admission::check_quota(&st.store, &st.quota, ns, &name, obj)?;
        if dry_run {
            return ok_json(StatusCode::CREATED, obj);
        }
        let created = st.store.create(kind, obj.clone())?;
        return ok_json(StatusCode::CREATED, &created);
    }
    if kind == Kind::ResourceQuota {
        let total = st.quota.total(ns.unwrap_or(""));
        obj["status"] = quota_status(obj, &total);
    }
    if dry_run {
        return ok_json(StatusCode::CREATED, obj);
    }
    let created = st.store.create(kind, obj.clone())?;
    ok_json(StatusCode::CREATED, &created)
}

fn check_single_default(st: &ApiState, name: &str) -> Result<(), Failure> {
    if let Some(other) = st
        .store
        .list(Kind::PriorityClass, None)
        .into_iter()
        .find(|pc| pc["globalDefault"].as_bool() == Some(true) && name_of(pc) != name)
    {
        return Err(invalid(
            Kind::PriorityClass,
            name,
            vec![status::Cause::invalid(
                "globalDefault",
                &json!(true),
                &format!(
                    "PriorityClass {} is already marked as default. Only one default can exist",
                    name_of(&other)
                ),
            )],
        ));
    }
    Ok(())
}

fn has_status(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Pod | Kind::Namespace | Kind::Node | Kind::ResourceQuota
    )
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Mutable parts of a pod spec blanked, to compare the rest.
fn pod_spec_fixed(spec: &Value) -> Value {
    let mut s = spec.clone();
    if let Some(m) = s.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("schedulingGates");
        for list in ["containers", "initContainers"] {
            for c in m
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(c) = c.as_object_mut() {
                    c.remove("image");
                }
            }
        }
    }
    s
}

/// Builds the object an update stores from the current one and the client's version
/// (`sub` "status" takes only the status; the main resource keeps the current status).
fn merge_update(
    kind: Kind,
    cur: &Value,
    mut new: Value,
    sub: Option<&str>,
) -> Result<Value, Failure> {
    let name = name_of(cur).to_string();
    if let Some(rv) = new
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        && !rv.is_empty()
        && Some(rv)
            != cur
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
    {
        return Err(Failure::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                crate::store::res_name(kind)
            ),
        )
        .for_object(kind, Some(&name)));
    }
    if sub == Some("status") {
        let mut out = cur.clone();
        out["status"] = new.get("status").cloned().unwrap_or(json!({}));
        return Ok(out);
    }
    if sub == Some("finalize") {
        let mut out = cur.clone();
        out["spec"]["finalizers"] = new
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or(json!([]));
        return Ok(out);
    }
    validate::decode(kind, &new)?;
    {
        let cur_meta = cur.get("metadata").cloned().unwrap_or(json!({}));
        let meta = meta_mut(&mut new);
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
        ] {
            if f == "ownerReferences" {
                continue;
            }
            match cur_meta.get(f) {
                Some(v) => meta.insert(f.into(), v.clone()),
                None => meta.remove(f),
            };
        }
    }
    if has_status(kind) {
        match cur.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    let mut causes = Vec::new();
    match kind {
        Kind::Pod => {
            admission::default_pod(&mut new);
            for f in [
                "priority",
                "priorityClassName",
                "preemptionPolicy",
                "nodeName",
            ] {
                match cur.pointer(&format!("/spec/{f}")) {
                    Some(v) if new.pointer(&format!("/spec/{f}")).is_none() => {
                        new["spec"][f] = v.clone();
                    }
                    _ => {}
                }
            }
            if pod_spec_fixed(&new["spec"]) != pod_spec_fixed(&cur["spec"]) {
                causes.push(status::Cause::forbidden("spec", POD_UPDATE_FORBIDDEN));
            }
        }
        Kind::Namespace if new.pointer("/spec/finalizers").is_none() => {
            new["spec"]["finalizers"] = cur
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
        }
        Kind::LimitRange => admission::default_limit_range(&mut new),
        Kind::PriorityClass => {
            admission::default_priority_class(&mut new);
            if new.get("value") != cur.get("value") {
                causes.push(status::Cause::forbidden(
                    "value",
                    "may not be changed in an update.",
                ));
            }
        }
        _ => {}
    }
    if cur.pointer("/metadata/deletionTimestamp").is_some() {
        let old: HashSet<&str> = fins(cur).collect();
        let added: Vec<&str> = fins(&new).filter(|f| !old.contains(f)).collect();
        if !added.is_empty() {
            causes.push(status::Cause::forbidden(
                "metadata.finalizers",
                &format!("no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}", added.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ")),
            ));
        }
    }
    causes.extend(validate::validate(kind, &new));
    if !causes.is_empty() {
        return Err(invalid(kind, &name, causes));
    }
    Ok(new)
}

fn fins(v: &Value) -> impl Iterator<Item = &str> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Runs an update under the store lock, keeping a rich `Failure` from the closure.
fn update_with(
    st: &ApiState,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    f: impl FnOnce(&Value) -> Result<Value, Failure>,
) -> Result<Value, Failure> {
    let mut failure = None;
    let res = st.store.update(kind, ns, name, |cur| match f(cur) {
        Ok(new) => {
            *cur = new;
            Ok(())
        }
        Err(e) => {
            let api = ApiError::new(e.code, &e.reason, e.message.clone());
            failure = Some(e);
            Err(api)
        }
    });
    match res {
        Ok(v) => Ok(v),
        Err(e) => Err(failure.unwrap_or_else(|| e.into())),
    }
}

fn after_update(st: &ApiState, kind: Kind, ns: Option<&str>, obj: &Value) {
    if kind == Kind::ResourceQuota
        && let Some(ns) = ns
    {
        st.quota.mark(ns);
    }
    let _ = obj;
}

fn replace(
    st: &ApiState,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    body: &[u8],
) -> Result<Response, Failure> {
    let mut new = parse_body(kind, body)?;
    let body_name = name_of(&new).to_string();
    if body_name != name {
        return Err(Failure::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(ns), Some(b)) = (
        ns,
        new.pointer("/metadata/namespace").and_then(Value::as_str),
    ) && !b.is_empty()
        && b != ns
    {
        return Err(Failure::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if let Some(ns) = ns {
        meta_mut(&mut new).insert("namespace".into(), json!(ns));
    }
    let out = update_with(st, kind, ns, name, |cur| merge_update(kind, cur, new, sub))?;
    after_update(st, kind, ns, &out);
    ok_json(StatusCode::OK, &out)
}

#[allow(clippy::too_many_arguments)]
fn patch(
    st: &ApiState,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    params: &Params,
    content_type: &str,
    body: &[u8],
) -> Result<Response, Failure> {
    let ty = PatchType::from_content_type(content_type).ok_or_else(|| {
        Failure::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"),
        )
    })?;
    if ty == PatchType::Apply && sub.is_none() && st.store.get_arc(kind, ns, name).is_none() {
        let mut obj = parse_body(kind, body)?;
        meta_mut(&mut obj).insert("name".into(), json!(name));
        return create_object(st, kind, ns, params, &mut obj);
    }
    let out = update_with(st, kind, ns, name, |cur| {
        let mut doc = cur.clone();
        patch::apply(ty, &mut doc, body)?;
        if name_of(&doc) != name {
            return Err(Failure::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&doc)
            )));
        }
        merge_update(kind, cur, doc, sub)
    })?;
    after_update(st, kind, ns, &out);
    ok_json(StatusCode::OK, &out)
}

/// Parsed DeleteOptions (body, or query parameters).
#[derive(Default)]
struct DeleteOpts {
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<String>,
}

fn delete_opts(params: &Params, body: &[u8]) -> Result<DeleteOpts, Failure> {
    let mut o = DeleteOpts::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Failure::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        o.grace = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str)
            && !["Orphan", "Background", "Foreground"].contains(&p)
        {
            return Err(Failure::bad_request(format!(
                "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    }
    if let Some(g) = params
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
    {
        o.grace = Some(g);
    }
    Ok(o)
}

fn delete(
    st: &Arc<ApiState>,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    params: &Params,
    body: &[u8],
) -> Result<Response, Failure> {
    let opts = delete_opts(params, body)?;
    let out = delete_object(st, kind, ns, name, &opts)?;
    ok_json(StatusCode::OK, &out)
}

/// Marks an object for deletion (pods: with their grace period), which removes it at
/// once when nothing holds it; namespaces start terminating.
fn delete_object(
    st: &Arc<ApiState>,
    kind: Kind,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> Result<Value, Failure> {
    let Some(cur) = st.store.get_arc(kind, ns, name) else {
        return Err(ApiError::not_found(kind, name).into());
    };
    // Already being deleted: only a shorter pod grace period changes anything.
    if cur.pointer("/metadata/deletionTimestamp").is_some() {
        let cur_grace = cur
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        match opts.grace {
            Some(g) if kind == Kind::Pod && g < cur_grace => {}
            _ => return Ok((*cur).clone()),
        }
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let out = update_with(st, kind, ns, name, |cur| {
        let meta = cur.get("metadata").cloned().unwrap_or(json!({}));
        if let Some(uid) = &opts.uid
            && meta.get("uid").and_then(Value::as_str) != Some(uid)
        {
            return Err(Failure::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta.get("uid").and_then(Value::as_str).unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &opts.rv
            && meta.get("resourceVersion").and_then(Value::as_str) != Some(rv)
        {
            return Err(Failure::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta.get("resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                ),
            ));
        }
        let mut new = cur.clone();
        let grace = match kind {
            Kind::Pod => {
                let unbound = cur
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty);
                if unbound || is_terminal(cur) {
                    0
                } else {
                    opts.grace
                        .or_else(|| {
                            cur.pointer("/spec/terminationGracePeriodSeconds")
                                .and_then(Value::as_i64)
                        })
                        .unwrap_or(30)
                        .max(0)
                }
            }
            _ => 0,
        };
        let ts = now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(grace))
            .unwrap_or(now)
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), json!(ts));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        if kind == Kind::Namespace {
            new["status"]["phase"] = json!("Terminating");
        }
        Ok(new)
    })?;
    if kind == Kind::Namespace && st.store.get_arc(kind, None, name).is_some() {
        tokio::spawn(finalize_namespace(st.clone(), name.to_string()));
    }
    Ok(out)
}

/// Deletes everything in a terminating namespace, then lets it go.
async fn finalize_namespace(st: Arc<ApiState>, ns: String) {
    let mut rv_rx = st.store.rv_watch();
    loop {
        let mut left = 0;
        for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            for obj in st.store.list(kind, Some(&ns)) {
                left += 1;
                let _ = delete_object(&st, kind, Some(&ns), name_of(&obj), &DeleteOpts::default());
            }
        }
        if left == 0 {
            let _ = st.store.update(Kind::Namespace, None, &ns, |o| {
                o["spec"]["finalizers"] = json!([]);
                Ok(())
            });
            return;
        }
        if st.store.get_arc(Kind::Namespace, None, &ns).is_none()
            || st.closed.load(Ordering::Relaxed)
        {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rv_rx.changed()).await;
    }
}

fn delete_collection(
    st: &Arc<ApiState>,
    kind: Kind,
    ns: Option<&str>,
    params: &Params,
    body: &[u8],
) -> Result<Response, Failure> {
    let opts = delete_opts(params, body)?;
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?;
    let fields =
        FieldSelector::parse(kind, params.get("fieldSelector").map_or("", String::as_str))?;
    let mut names = Vec::new();
    let rv = st.store.scan(kind, ns, None, |k, v| {
        if labels.matches(v) && fields.matches(v) {
            names.push((k.1.clone(), k.2.clone()));
        }
        true
    });
    let mut items = Vec::new();
    for (n_ns, n) in names {
        let n_ns = (!n_ns.is_empty()).then_some(n_ns);
        if let Ok(o) = delete_object(st, kind, n_ns.as_deref(), &n, &opts) {
            items.push(o);
        }
    }
    ok_json(
        StatusCode::OK,
        &json!({"kind": format!("{}List", kind.name()), "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

fn evict(st: &Arc<ApiState>, ns: &str, name: &str, body: &[u8]) -> Result<Response, Failure> {
    let mut opts = DeleteOpts::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Failure::bad_request(format!("error decoding Eviction: {e}")))?;
        if let Some(d) = v.get("deleteOptions").filter(|d| d.is_object()) {
            opts = delete_opts(&Params::new(), &serde_json::to_vec(d).expect("serializes"))?;
        }
    }
    let Some(cur) = st.store.get_arc(Kind::Pod, Some(ns), name) else {
        return Err(ApiError::not_found(Kind::Pod, name).into());
    };
    if cur.pointer("/metadata/deletionTimestamp").is_none() && !is_terminal(&cur) {
        st.store.update(Kind::Pod, Some(ns), name, |p| {
            add_condition(
                p,
                json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting", "lastTransitionTime": now_rfc3339(), "lastProbeTime": null}),
            );
            Ok(())
        })?;
    }
    delete_object(st, Kind::Pod, Some(ns), name, &opts)?;
    ok_json(StatusCode::CREATED, &success(201, None))
}

/// Adds or replaces a pod condition by type.
pub(crate) fn add_condition(pod: &mut Value, cond: Value) {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let conds = pod["status"]
        .as_object_mut()
        .expect("object")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if let Some(list) = conds.as_array_mut() {
        list.retain(|c| c.get("type") != cond.get("type"));
        list.push(cond);
    }
}

fn ssar(st: &ApiState, body: &[u8]) -> Result<Response, Failure> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| {
        Failure::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    let attrs = v.pointer("/spec/resourceAttributes").cloned();
    let non_res = v.pointer("/spec/nonResourceAttributes").cloned();
    if attrs.is_none() && non_res.is_none() {
        return Err(invalid_ssar());
    }
    let allowed = match &attrs {
        Some(a) => {
            let verb = a.get("verb").and_then(Value::as_str).unwrap_or("");
            let res = a.get("resource").and_then(Value::as_str).unwrap_or("");
            let resource = match a
                .get("subresource")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(s) => format!("{res}/{s}"),
                None => res.to_string(),
            };
            !st.is_denied(verb, &resource)
        }
        None => true,
    };
    v["apiVersion"] = json!("authorization.k8s.io/v1");
    v["kind"] = json!("SelfSubjectAccessReview");
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"]["creationTimestamp"] = Value::Null;
    v["status"] = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"kubesim\" of ClusterRole \"cluster-admin\" to User \"kubesim\""})
    } else {
        json!({"allowed": false})
    };
    ok_json(StatusCode::CREATED, &v)
}

fn invalid_ssar() -> Failure {
    Failure::new(
        422,
        "Invalid",
        "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
    )
}
