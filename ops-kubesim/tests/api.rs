//! The API half of the simulator, driven through `kube::Client` over HTTP.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, Pod, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, LogParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use ops_kubesim::{KubeSim, Runtime, SimConfig};
use serde_json::{Value, json};

/// A simulator whose containers "run" for an hour (pods stay Running).
async fn sim() -> KubeSim {
    sim_running_for(Duration::from_secs(3600)).await
}

async fn sim_running_for(run_for: Duration) -> KubeSim {
    KubeSim::start(SimConfig::default().with_runtime(Runtime::Instant {
        run_for,
        exit_code: 0,
    }))
    .await
    .expect("simulator starts")
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "task", "image": "busybox:1.36"}]}
    }))
    .unwrap()
}

fn pod_with(name: &str, resources: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "task", "image": "busybox:1.36", "resources": resources}]}
    }))
    .unwrap()
}

fn netpol(name: &str, finalizers: &[&str]) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {"podSelector": {}}
    }))
    .unwrap()
}

fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn create_ns(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// Polls `f` until it returns Some, for up to 10 seconds.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn crud_and_error_shapes() {
    let sim = sim().await;
    let client = sim.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let created = pods
        .create(&PostParams::default(), &pod("p1", json!({"app": "a"})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert!(
        meta.resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(spec.scheduler_name.as_deref(), Some("default-scheduler"));
    let status = created.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));

    let mut generated = pod("", json!({}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = pods
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let gen_name = generated.metadata.name.unwrap();
    assert!(
        gen_name.starts_with("gen-") && gen_name.len() == 9,
        "{gen_name}"
    );

    let got = pods.get("p1").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);

    let dup = api_error(
        pods.create(&PostParams::default(), &pod("p1", json!({})))
            .await,
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(dup.message, "pods \"p1\" already exists");

    let missing = api_error(pods.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "pods \"nope\" not found");
    let details = missing.details.unwrap();
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("nope", "pods")
    );

    // Every problem is listed.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "Bad_Name", "labels": {"bad key": "v"}},
        "spec": {"containers": [{"name": "task"}, {"image": "x"}]}
    }))
    .unwrap();
    let invalid = api_error(pods.create(&PostParams::default(), &bad).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid.message.starts_with(
            "Pod \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\""
        )
    );
    let causes = invalid.details.unwrap().causes;
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "metadata.labels",
            "spec.containers[0].image",
            "spec.containers[1].name"
        ]
    );

    // Unknown namespace.
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "ghost");
    let no_ns = api_error(
        elsewhere
            .create(&PostParams::default(), &pod("p", json!({})))
            .await,
    );
    assert_eq!(
        (no_ns.code, no_ns.message.as_str()),
        (404, "namespaces \"ghost\" not found")
    );

    // Malformed JSON is a 400 Status.
    let req = axum::http::Request::post("/api/v1/namespaces/default/pods")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    let bad_json = api_error(client.request_text(req).await);
    assert_eq!(
        (bad_json.code, bad_json.reason.as_str()),
        (400, "BadRequest")
    );

    // Replace keeps server fields.
    let mut p = pods.get("p1").await.unwrap();
    p.metadata.labels = Some(BTreeMap::from([("app".into(), "b".into())]));
    let replaced = pods
        .replace("p1", &PostParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.labels.unwrap()["app"], "b");
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    let name_mismatch = api_error(pods.replace("other", &PostParams::default(), &p).await);
    assert_eq!(name_mismatch.code, 400);

    // Delete preconditions, and an unschedulable (unbound) pod goes at once.
    let mut unbound = pod("unbound", json!({}));
    unbound.spec.as_mut().unwrap().node_selector =
        Some(BTreeMap::from([("no-such".into(), "node".into())]));
    pods.create(&PostParams::default(), &unbound).await.unwrap();
    let wrong_uid = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let e = api_error(pods.delete("unbound", &wrong_uid).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message
            .starts_with("Precondition failed: UID in precondition: not-the-uid")
    );
    pods.delete("unbound", &DeleteParams::background())
        .await
        .unwrap();
    assert_eq!(api_error(pods.get("unbound").await).code, 404);
    assert_eq!(
        api_error(pods.delete("unbound", &DeleteParams::default()).await).code,
        404
    );
    assert!(sim.requests() > 5);
    sim.stop().await;
}

#[tokio::test]
async fn label_and_field_selectors() {
    let sim = sim().await;
    let client = sim.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (n, labels) in [
        ("a", json!({"app": "web", "tier": "front"})),
        ("b", json!({"app": "web", "tier": "back"})),
        ("c", json!({"app": "db"})),
        ("d", json!({})),
    ] {
        pods.create(&PostParams::default(), &pod(n, labels))
            .await
            .unwrap();
    }
    let sel = |s: &str| {
        let pods = pods.clone();
        let lp = ListParams::default().labels(s);
        async move { names(&pods.list(&lp).await.unwrap().items) }
    };
    assert_eq!(sel("app=web").await, ["a", "b"]);
    assert_eq!(sel("app==web,tier!=front").await, ["b"]);
    assert_eq!(sel("app!=web").await, ["c", "d"]);
    assert_eq!(sel("tier in (back,middle)").await, ["b"]);
    assert_eq!(sel("app notin (web)").await, ["c", "d"]);
    assert_eq!(sel("tier").await, ["a", "b"]);
    assert_eq!(sel("!tier").await, ["c", "d"]);

    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), ["c"]);
    let all: Api<Pod> = Api::all(client.clone());
    let in_default = all
        .list(&ListParams::default().fields("metadata.namespace=default,metadata.name!=a"))
        .await
        .unwrap();
    assert_eq!(names(&in_default.items), ["b", "c", "d"]);
    // Pods get bound and run: spec.nodeName and status.phase select them.
    eventually("all pods running", || {
        let pods = pods.clone();
        async move {
            let l = pods
                .list(&ListParams::default().fields("status.phase=Running"))
                .await
                .unwrap();
            (l.items.len() == 4).then_some(())
        }
    })
    .await;
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=node-1"))
        .await
        .unwrap();
    assert_eq!(on_node.items.len(), 4);
    assert!(
        pods.list(&ListParams::default().fields("status.phase=Pending"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let bad = api_error(
        pods.list(&ListParams::default().fields("spec.image=x"))
            .await,
    );
    assert_eq!(bad.code, 400);
    let list = pods.list(&ListParams::default()).await.unwrap();
    let rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv >= 4);
    sim.stop().await;
}

#[tokio::test]
async fn pagination_with_continue_and_expiry() {
    let sim = sim().await;
    let client = sim.client();
    let pols: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        pols.create(&PostParams::default(), &netpol(&format!("np-{i:02}"), &[]))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let mut lp = ListParams::default().limit(10);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = pols.list(&lp).await.unwrap();
        pages += 1;
        let rv = page.metadata.resource_version.clone();
        if first_rv.is_none() {
            first_rv = rv.clone();
        } else {
            assert_eq!(
                rv, first_rv,
                "every page reports the first page's resourceVersion"
            );
        }
        seen.extend(names(&page.items));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("np-{i:02}")).collect();
    assert_eq!(seen, expected);

    // A continue token from before a compaction is expired.
    let page = pols.list(&ListParams::default().limit(10)).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    pols.create(&PostParams::default(), &netpol("later", &[]))
        .await
        .unwrap();
    sim.compact();
    let gone = api_error(
        pols.list(&ListParams::default().limit(10).continue_token(&token))
            .await,
    );
    assert_eq!((gone.code, gone.reason.as_str()), (410, "Expired"));
    sim.stop().await;
}

#[tokio::test]
async fn raw_watch_events_bookmarks_and_expiry() {
    let sim = sim().await;
    let client = sim.client();
    let pols: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
    let list = pols.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = pols
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(WatchEvent::Bookmark(_))
    ));
    pols.create(&PostParams::default(), &netpol("w", &[]))
        .await
        .unwrap();
    pols.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    pols.delete("w", &DeleteParams::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => kinds.push(("ADDED", o.metadata.labels)),
            WatchEvent::Modified(o) => kinds.push(("MODIFIED", o.metadata.labels)),
            WatchEvent::Deleted(o) => kinds.push(("DELETED", o.metadata.labels)),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(kinds[0].0, "ADDED");
    assert_eq!(kinds[1].0, "MODIFIED");
    assert_eq!(kinds[2].0, "DELETED");
    assert_eq!(kinds[2].1.as_ref().unwrap()["x"], "y");
    assert_eq!(sim.open_watches(), 1);

    // A resourceVersion from before a compaction: one ERROR event, 410 Expired.
    sim.compact();
    let mut old = pols
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match old.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message
                    .starts_with(&format!("too old resource version: {rv} ("))
            );
        }
        other => panic!("expected a 410 event, got {other:?}"),
    }
    assert!(old.try_next().await.unwrap().is_none());
    // The open watch survives compaction but not drop_watches().
    sim.drop_watches();
    loop {
        match stream.try_next().await {
            Ok(Some(WatchEvent::Bookmark(_))) => {}
            Ok(None) => break,
            other => panic!("expected the stream to end, got {other:?}"),
        }
    }
    eventually("no open watches", || async {
        (sim.open_watches() == 0).then_some(())
    })
    .await;
    sim.stop().await;
}

#[tokio::test]
async fn watcher_recovers_from_drops_and_compaction() {
    let sim = sim().await;
    let client = sim.client();
    let pols: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<NetworkPolicy>();
    let inits = Arc::new(AtomicUsize::new(0));
    let counter = inits.clone();
    let stream = reflector(
        writer,
        watcher(
            Api::<NetworkPolicy>::all(client.clone()),
            watcher::Config::default().labels("team=ops").page_size(2),
        ),
    )
    .default_backoff()
    .for_each(move |ev| {
        if matches!(ev, Ok(watcher::Event::Init)) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        async {}
    });
    let task = tokio::spawn(stream);
    let labelled = |name: &str, team: &str| -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}, "spec": {"podSelector": {}}}))
            .unwrap()
    };
    for i in 0..5 {
        pols.create(&PostParams::default(), &labelled(&format!("n{i}"), "ops"))
            .await
            .unwrap();
    }
    pols.create(&PostParams::default(), &labelled("other", "dev"))
        .await
        .unwrap();
    let state = |reader: &reflector::Store<NetworkPolicy>| {
        let mut v: Vec<String> = reader
            .state()
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        v.sort();
        v
    };
    eventually("five objects", || async {
        (state(&reader).len() == 5).then_some(())
    })
    .await;
    // A label change moves an object out of the selection (DELETED for this watch).
    pols.patch(
        "n0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "dev"}}})),
    )
    .await
    .unwrap();
    eventually("n0 leaves", || async {
        (state(&reader) == ["n1", "n2", "n3", "n4"]).then_some(())
    })
    .await;

    // Dropped watches: the watcher resumes from its resourceVersion and misses nothing.
    sim.drop_watches();
    pols.delete("n1", &DeleteParams::default()).await.unwrap();
    pols.create(&PostParams::default(), &labelled("n5", "ops"))
        .await
        .unwrap();
    eventually("after drop", || async {
        (state(&reader) == ["n2", "n3", "n4", "n5"]).then_some(())
    })
    .await;
    assert_eq!(inits.load(Ordering::SeqCst), 1, "resuming needs no relist");

    // The watcher cannot resume for a while (RBAC denies watch), objects change and the
    // store compacts: its resume answers 410 Gone and it relists to the final state.
    sim.deny("watch", "networkpolicies");
    sim.drop_watches();
    eventually("watch closed", || async {
        (sim.open_watches() == 0).then_some(())
    })
    .await;
    pols.delete("n2", &DeleteParams::default()).await.unwrap();
    pols.create(&PostParams::default(), &labelled("n6", "ops"))
        .await
        .unwrap();
    pols.patch(
        "n3",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"v": "2"}}})),
    )
    .await
    .unwrap();
    sim.compact();
    sim.allow_all();
    eventually("relisted state", || async {
        (state(&reader) == ["n3", "n4", "n5", "n6"]).then_some(())
    })
    .await;
    eventually("relisted", || async {
        (inits.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let n3 = reader
        .get(&reflector::ObjectRef::new("n3").within("default"))
        .unwrap();
    assert_eq!(n3.metadata.annotations.as_ref().unwrap()["v"], "2");
    task.abort();
    sim.stop().await;
}

#[tokio::test]
async fn patches_and_optimistic_concurrency() {
    let sim = sim().await;
    let client = sim.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("p", json!({"a": "1"})))
        .await
        .unwrap();

    let merged = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"b": "2", "a": null}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.metadata.labels.unwrap(),
        BTreeMap::from([("b".to_string(), "2".to_string())])
    );

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations", "value": {"note": "x"}},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "busybox:1.37"}
    ]))
    .unwrap();
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["note"], "x");
    assert_eq!(
        patched.spec.unwrap().containers[0].image.as_deref(),
        Some("busybox:1.37")
    );

    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "other"}]))
            .unwrap();
    let e = api_error(
        pods.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await,
    );
    assert_eq!(e.code, 422);

    // Strategic merge patches merge containers by name.
    let smp = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "task", "image": "busybox:1.38"}]}}),
            ),
        )
        .await
        .unwrap();
    let c = &smp.spec.unwrap().containers;
    assert_eq!((c.len(), c[0].image.as_deref()), (1, Some("busybox:1.38")));

    // Pod specs are immutable apart from images and a few fields.
    let e = api_error(
        pods.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"restartPolicy": "Always"}})),
        )
        .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(e.message.contains("pod updates may not change fields"));

    // Apply creates when missing.
    let applied = pods
        .patch(
            "q",
            &PatchParams::apply("tests"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"},
                "spec": {"containers": [{"name": "task", "image": "busybox:1.36"}]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.name.as_deref(), Some("q"));

    // Optimistic concurrency: a stale resourceVersion is a 409 Conflict.
    let stale = pods.get("p").await.unwrap();
    let mut first = stale.clone();
    first.metadata.labels = Some(BTreeMap::from([("v".into(), "1".into())]));
    pods.replace("p", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut second = stale.clone();
    second.metadata.labels = Some(BTreeMap::from([("v".into(), "2".into())]));
    let conflict = api_error(pods.replace("p", &PostParams::default(), &second).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on pods \"p\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let rv = stale.metadata.resource_version.clone().unwrap();
    let e = api_error(
        pods.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv, "labels": {"v": "3"}}})),
        )
        .await,
    );
    assert_eq!(e.code, 409);
    assert_eq!(
        pods.get("p").await.unwrap().metadata.labels.unwrap()["v"],
        "1"
    );
    sim.stop().await;
}

#[tokio::test]
async fn finalizers_hold_deleted_objects() {
    let sim = sim().await;
    let client = sim.client();
    let pols: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
    pols.create(
        &PostParams::default(),
        &netpol("held", &["example.com/hold"]),
    )
    .await
    .unwrap();
    pols.delete("held", &DeleteParams::default()).await.unwrap();
    let held = pols.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    // No new finalizers while deleting.
    let e = api_error(
        pols.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}}),
            ),
        )
        .await,
    );
    assert_eq!(e.code, 422);
    pols.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(pols.get("held").await).code, 404);

    // A pod that is running gets a grace period; its finalizer keeps the final status.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut p = pod("fin", json!({}));
    p.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    pods.create(&PostParams::default(), &p).await.unwrap();
    eventually("running", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("fin").await.unwrap();
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        }
    })
    .await;
    let deleted = pods
        .delete("fin", &DeleteParams::default().grace_period(5))
        .await
        .unwrap();
    let marked = deleted.left().expect("the object while it terminates");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(5));
    let terminated = eventually("terminated and held", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("fin").await.ok()?;
            (p.metadata.deletion_grace_period_seconds == Some(0)).then_some(p)
        }
    })
    .await;
    assert_eq!(terminated.status.unwrap().phase.as_deref(), Some("Failed"));
    let json_remove: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}])).unwrap();
    pods.patch(
        "fin",
        &PatchParams::default(),
        &Patch::<()>::Json(json_remove),
    )
    .await
    .unwrap();
    assert_eq!(api_error(pods.get("fin").await).code, 404);
    sim.stop().await;
}

#[tokio::test]
async fn limit_range_defaults_and_max() {
    let sim = sim().await;
    let client = sim.client();
    create_ns(&client, "lr").await;
    let lr: LimitRange = serde_json::from_value(json!({
        "metadata": {"name": "limits"},
        "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "250m"}, "max": {"cpu": "2", "memory": "1Gi"}}]}
    }))
    .unwrap();
    let stored = Api::<LimitRange>::namespaced(client.clone(), "lr")
        .create(&PostParams::default(), &lr)
        .await
        .unwrap();
    // defaultRequest memory is defaulted from default.
    let item = &stored.spec.unwrap().limits[0];
    assert_eq!(item.default_request.as_ref().unwrap()["memory"].0, "256Mi");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "lr");
    let p = pods
        .create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .unwrap();
    let res = p.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "500m");
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(p.status.unwrap().qos_class.as_deref(), Some("Burstable"));

    let big = pod_with("big", json!({"limits": {"cpu": "4"}}));
    let e = api_error(pods.create(&PostParams::default(), &big).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "pods \"big\" is forbidden: maximum cpu usage per Container is 2, but limit is 4"
    );
    let bigger = pod_with("bigger", json!({"limits": {"cpu": "3", "memory": "2Gi"}}));
    let e = api_error(pods.create(&PostParams::default(), &bigger).await);
    assert_eq!(
        e.message,
        "pods \"bigger\" is forbidden: [maximum cpu usage per Container is 2, but limit is 3, maximum memory usage per Container is 1Gi, but limit is 2Gi]"
    );
    sim.stop().await;
}

#[tokio::test]
async fn resource_quota_rejections_and_usage() {
    let sim = sim().await;
    let client = sim.client();
    create_ns(&client, "q").await;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "compute"},
        "spec": {"hard": {"requests.cpu": "1", "pods": "3"}}
    }))
    .unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "q");
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "q");
    pods.create(
        &PostParams::default(),
        &pod_with("p1", json!({"requests": {"cpu": "600m"}})),
    )
    .await
    .unwrap();
    let e = api_error(
        pods.create(
            &PostParams::default(),
            &pod_with("p2", json!({"requests": {"cpu": "600m"}})),
        )
        .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "pods \"p2\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"
    );
    let e = api_error(
        pods.create(&PostParams::default(), &pod("p3", json!({})))
            .await,
    );
    assert_eq!(
        e.message,
        "pods \"p3\" is forbidden: failed quota: compute: must specify requests.cpu for: task"
    );
    eventually("quota status", || {
        let quotas = quotas.clone();
        async move {
            let st = quotas.get("compute").await.unwrap().status?;
            let used = st.used?;
            (used["requests.cpu"].0 == "600m" && used["pods"].0 == "1").then_some(())
        }
    })
    .await;
    // Freeing usage admits the next pod.
    pods.delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("p1 gone", || {
        let pods = pods.clone();
        async move { pods.get("p1").await.is_err().then_some(()) }
    })
    .await;
    pods.create(
        &PostParams::default(),
        &pod_with("p2", json!({"requests": {"cpu": "600m"}})),
    )
    .await
    .unwrap();
    sim.stop().await;
}

#[tokio::test]
async fn priority_classes_resolve() {
    let sim = sim().await;
    let client = sim.client();
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let pc = |name: &str, value: i32, default: bool, policy: &str| -> PriorityClass {
        serde_json::from_value(json!({"metadata": {"name": name}, "value": value,
            "globalDefault": default, "preemptionPolicy": policy}))
        .unwrap()
    };
    classes
        .create(&PostParams::default(), &pc("high", 1000, false, "Never"))
        .await
        .unwrap();
    classes
        .create(
            &PostParams::default(),
            &pc("base", 10, true, "PreemptLowerPriority"),
        )
        .await
        .unwrap();
    let e = api_error(
        classes
            .create(&PostParams::default(), &pc("base2", 5, true, "Never"))
            .await,
    );
    assert_eq!(e.code, 422);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut hi = pod("hi", json!({}));
    hi.spec.as_mut().unwrap().priority_class_name = Some("high".into());
    let hi = pods.create(&PostParams::default(), &hi).await.unwrap();
    let spec = hi.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.preemption_policy.as_deref()),
        (Some(1000), Some("Never"))
    );

    let plain = pods
        .create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .unwrap();
    let spec = plain.spec.unwrap();
    assert_eq!(spec.priority_class_name.as_deref(), Some("base"));
    assert_eq!(spec.priority, Some(10));

    let mut missing = pod("lost", json!({}));
    missing.spec.as_mut().unwrap().priority_class_name = Some("nope".into());
    let e = api_error(pods.create(&PostParams::default(), &missing).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "pods \"lost\" is forbidden: no PriorityClass with name nope was found"
    );
    sim.stop().await;
}

#[tokio::test]
async fn rbac_denials_and_access_reviews() {
    let sim = sim().await;
    let client = sim.client();
    create_ns(&client, "ns1").await;
    sim.deny("create", "pods");
    sim.deny("list", "nodes");
    sim.deny("create", "networkpolicies");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns1");
    let e = api_error(
        pods.create(&PostParams::default(), &pod("p", json!({})))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "pods is forbidden: User \"system:serviceaccount:ops:coordinator\" cannot create resource \"pods\" in API group \"\" in the namespace \"ns1\""
    );
    assert_eq!(e.details.unwrap().kind, "pods");
    let e = api_error(
        Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(
        e.message,
        "nodes is forbidden: User \"system:serviceaccount:ops:coordinator\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );
    let e = api_error(
        Api::<NetworkPolicy>::namespaced(client.clone(), "ns1")
            .create(&PostParams::default(), &netpol("n", &[]))
            .await,
    );
    assert!(
        e.message.contains("in API group \"networking.k8s.io\""),
        "{}",
        e.message
    );
    // Other verbs still work.
    assert!(pods.list(&ListParams::default()).await.is_ok());

    let review = |verb: &str, resource: &str| -> SelfSubjectAccessReview {
        serde_json::from_value(json!({"spec": {"resourceAttributes": {"verb": verb, "resource": resource, "group": "", "namespace": "ns1"}}}))
            .unwrap()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let denied = reviews
        .create(&PostParams::default(), &review("create", "pods"))
        .await
        .unwrap();
    assert!(!denied.status.unwrap().allowed);
    let allowed = reviews
        .create(&PostParams::default(), &review("get", "pods"))
        .await
        .unwrap();
    assert!(allowed.status.unwrap().allowed);

    sim.allow_all();
    pods.create(&PostParams::default(), &pod("p", json!({})))
        .await
        .unwrap();
    let again = reviews
        .create(&PostParams::default(), &review("create", "pods"))
        .await
        .unwrap();
    assert!(again.status.unwrap().allowed);
    sim.stop().await;
}

#[tokio::test]
async fn unavailable_answers_503_and_recovers() {
    let sim = sim().await;
    let mut config = kube::Config::new(sim.url().parse().unwrap());
    config.default_retry = false;
    let no_retry = kube::Client::try_from(config).unwrap();
    sim.set_unavailable(true);
    let e = api_error(
        Api::<Pod>::namespaced(no_retry.clone(), "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (503, "ServiceUnavailable"));
    assert!(no_retry.apiserver_version().await.is_err());
    // The default client retries and gets through once the server is back.
    let retrying = sim.client();
    let handle = tokio::spawn(async move { retrying.apiserver_version().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set_unavailable(false);
    let info = handle.await.unwrap().unwrap();
    assert_eq!(info.git_version, "v1.37.0-kubesim");
    sim.stop().await;
}

#[tokio::test]
async fn kubeconfig_loads_and_discovery_answers() {
    let sim = sim().await;
    let kc = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "37"));
    let core = client.list_core_api_versions().await.unwrap();
    assert_eq!(core.versions, ["v1"]);
    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "networking.k8s.io"));
    let res = client.list_core_api_resources("v1").await.unwrap();
    assert!(
        res.resources
            .iter()
            .any(|r| r.name == "pods" && r.namespaced)
    );
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(names(&nodes.items), ["node-1"]);
    sim.stop().await;
}

#[tokio::test]
async fn eviction_and_logs() {
    let sim = sim_running_for(Duration::from_millis(300)).await;
    let client = sim.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Logs of a finished container; timestamps on request.
    pods.create(&PostParams::default(), &pod("done", json!({})))
        .await
        .unwrap();
    eventually("succeeded", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("done").await.unwrap();
            (p.status?.phase.as_deref() == Some("Succeeded")).then_some(())
        }
    })
    .await;
    assert_eq!(
        pods.logs("done", &LogParams::default()).await.unwrap(),
        "ran task\n"
    );
    let stamped = pods
        .logs(
            "done",
            &LogParams {
                timestamps: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert!(stamped.ends_with(" ran task\n") && stamped.len() > "ran task\n".len() + 20);
    let e = api_error(
        pods.logs(
            "done",
            &LogParams {
                container: Some("nope".into()),
                ..LogParams::default()
            },
        )
        .await,
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "container nope is not valid for pod done")
    );

    // A container that never starts.
    let mut stuck = pod("stuck", json!({}));
    stuck.spec.as_mut().unwrap().containers[0].image =
        Some("registry.invalid/does-not-exist:1".into());
    pods.create(&PostParams::default(), &stuck).await.unwrap();
    let e = api_error(pods.logs("stuck", &LogParams::default()).await);
    assert_eq!(e.code, 400);
    assert!(
        e.message
            .starts_with("container \"task\" in pod \"stuck\" is waiting to start: "),
        "{}",
        e.message
    );

    // Eviction: DisruptionTarget, then graceful deletion.
    let long = sim_running_for(Duration::from_secs(3600)).await;
    let lpods: Api<Pod> = Api::namespaced(long.client(), "default");
    let mut ev = pod("ev", json!({}));
    ev.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    lpods.create(&PostParams::default(), &ev).await.unwrap();
    eventually("running", || {
        let lpods = lpods.clone();
        async move {
            let p = lpods.get("ev").await.unwrap();
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        }
    })
    .await;
    let st = lpods.evict("ev", &EvictParams::default()).await.unwrap();
    assert_eq!(st.code, 201);
    // The finalizer keeps the pod after termination, so its final state can be read.
    let evicted = eventually("evicted and terminated", || {
        let lpods = lpods.clone();
        async move {
            let p = lpods.get("ev").await.unwrap();
            (p.metadata.deletion_grace_period_seconds == Some(0)).then_some(p)
        }
    })
    .await;
    assert!(evicted.metadata.deletion_timestamp.is_some());
    let conds = evicted.status.unwrap().conditions.unwrap();
    let target = conds
        .iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .unwrap();
    assert_eq!(
        (target.status.as_str(), target.reason.as_deref()),
        ("True", Some("EvictionByEvictionAPI"))
    );
    lpods
        .patch(
            "ev",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(api_error(lpods.get("ev").await).code, 404);
    assert_eq!(
        api_error(lpods.evict("ev", &EvictParams::default()).await).code,
        404
    );
    long.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn follow_logs_stream_until_exit() {
    let sim = sim_running_for(Duration::from_millis(500)).await;
    let client = sim.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("f", json!({})))
        .await
        .unwrap();
    eventually("started", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("f").await.unwrap();
            let s = p.status?.container_statuses?;
            (s[0].state.as_ref()?.running.is_some() || s[0].state.as_ref()?.terminated.is_some())
                .then_some(())
        }
    })
    .await;
    let stream = pods
        .log_stream(
            "f",
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    use futures::AsyncBufReadExt;
    let lines: Vec<String> =
        tokio::time::timeout(Duration::from_secs(10), stream.lines().try_collect())
            .await
            .expect("the follow ends when the container exits")
            .unwrap();
    assert_eq!(lines, ["ran task"]);
    sim.stop().await;
}

#[tokio::test]
async fn namespace_deletion_terminates_contents() {
    let sim = sim().await;
    let client = sim.client();
    create_ns(&client, "gone").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "gone");
    pods.create(&PostParams::default(), &pod("p", json!({})))
        .await
        .unwrap();
    Api::<NetworkPolicy>::namespaced(client.clone(), "gone")
        .create(&PostParams::default(), &netpol("n", &[]))
        .await
        .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = nss.get("gone").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    nss.delete("gone", &DeleteParams::default()).await.unwrap();
    let e = api_error(
        pods.create(&PostParams::default(), &pod("late", json!({})))
            .await,
    );
    if e.code == 403 {
        assert_eq!(
            e.message,
            "pods \"late\" is forbidden: unable to create new content in namespace gone because it is being terminated"
        );
    } else {
        assert_eq!(e.code, 404, "{e:?}");
    }
    eventually("namespace gone", || {
        let nss = nss.clone();
        async move { nss.get("gone").await.is_err().then_some(()) }
    })
    .await;
    assert!(sim.object("networkpolicies", Some("gone"), "n").is_none());
    assert!(sim.pod("gone", "p").is_none());
    sim.stop().await;
}

#[tokio::test]
async fn log_options_on_a_process() {
    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(sim.client(), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "talker"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "task", "image": "busybox:1.36",
            "command": ["sh", "-c", "echo one; echo two; echo three"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    eventually("succeeded", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("talker").await.unwrap();
            (p.status?.phase.as_deref() == Some("Succeeded")).then_some(())
        }
    })
    .await;
    let all = pods.logs("talker", &LogParams::default()).await.unwrap();
    assert_eq!(all, "one\ntwo\nthree\n");
    let tail = pods
        .logs(
            "talker",
            &LogParams {
                tail_lines: Some(2),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, "two\nthree\n");
    let limited = pods
        .logs(
            "talker",
            &LogParams {
                limit_bytes: Some(6),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(limited, "one\ntw");
    let stamped = pods
        .logs(
            "talker",
            &LogParams {
                timestamps: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 3);
    let (ts, text) = lines[2].split_once(' ').unwrap();
    assert_eq!(text, "three");
    // sinceTime filters by the line timestamps.
    let at: k8s_openapi::jiff::Timestamp = ts.parse().unwrap();
    let hour = k8s_openapi::jiff::SignedDuration::from_secs(3600);
    let since = |t: k8s_openapi::jiff::Timestamp| {
        let pods = pods.clone();
        async move {
            pods.logs(
                "talker",
                &LogParams {
                    since_time: Some(t),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(since(at.checked_sub(hour).unwrap()).await, all);
    assert_eq!(since(at.checked_add(hour).unwrap()).await, "");
    sim.stop().await;
}
