//! The scheduler and kubelet side of the simulator, exercised through the public
//! `KubeSim` API and a real `kube::Client`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use ops_kubesim::{KubeSim, Runtime, SimConfig, SimNode};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn start(config: SimConfig) -> (KubeSim, Api<Pod>) {
    let sim = KubeSim::start(config).await.expect("simulator starts");
    let pods = Api::namespaced(sim.client(), "default");
    (sim, pods)
}

/// A long-running Instant runtime: pods stay Running (for scheduling tests).
fn parked() -> Runtime {
    Runtime::Instant {
        run_for: Duration::from_secs(3600),
        exit_code: 0,
    }
}

fn pod_value(name: &str, command: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "agent-test"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": command}],
        },
    })
}

fn to_pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("a valid pod")
}

async fn create(pods: &Api<Pod>, v: Value) -> Pod {
    pods.create(&PostParams::default(), &to_pod(v))
        .await
        .expect("pod created")
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn main_status(p: &Pod) -> Value {
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    serde_json::to_value(statuses.first()).unwrap_or(Value::Null)
}

fn terminated(p: &Pod) -> Value {
    main_status(p)["state"]["terminated"].clone()
}

fn waiting_reason(p: &Pod) -> String {
    main_status(p)["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn condition(p: &Pod, ty: &str) -> Option<Value> {
    let conds = p.status.as_ref()?.conditions.clone()?;
    conds
        .into_iter()
        .find(|c| c.type_ == ty)
        .map(|c| serde_json::to_value(c).expect("json"))
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Polls the pod until `f` holds (or fails after 30 s with the last state).
async fn wait_for(pods: &Api<Pod>, name: &str, what: &str, f: impl Fn(&Pod) -> bool) -> Pod {
    let start = Instant::now();
    loop {
        let cur = pods.get_opt(name).await.expect("get pod");
        if let Some(p) = &cur
            && f(p)
        {
            return p.clone();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "timed out waiting for pod {name} to be {what}; last seen: {:#}",
            serde_json::to_value(&cur).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_phase(pods: &Api<Pod>, name: &str, want: &str) -> Pod {
    wait_for(pods, name, want, |p| phase(p) == want).await
}

async fn wait_gone(pods: &Api<Pod>, name: &str) {
    let start = Instant::now();
    while let Some(p) = pods.get_opt(name).await.expect("get pod") {
        assert!(
            start.elapsed() < TIMEOUT,
            "pod {name} still exists: {:#}",
            serde_json::to_value(&p).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Watches one pod from `rv` until it is deleted; returns every version seen.
async fn watch_until_deleted(pods: &Api<Pod>, name: &str, rv: &str) -> Vec<Pod> {
    let mut watch = pods
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={name}")),
            rv,
        )
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(TIMEOUT, watch.try_next())
            .await
            .unwrap_or_else(|_| panic!("{name} not deleted in time; seen {}", seen.len()))
            .expect("watch works")
            .expect("watch open");
        match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => seen.push(p),
            WatchEvent::Deleted(p) => {
                seen.push(p);
                return seen;
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
}

async fn events_for(sim: &KubeSim, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(sim.client(), "default");
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .collect()
}

#[tokio::test]
async fn exit_codes_logs_and_status_shape() {
    let (sim, pods) = start(SimConfig::default()).await;
    create(
        &pods,
        pod_value("fails", &["sh", "-c", "echo hi; echo oops >&2; exit 3"]),
    )
    .await;
    create(&pods, pod_value("works", &["sh", "-c", "echo done"])).await;

    let p = wait_phase(&pods, "fails", "Failed").await;
    let t = terminated(&p);
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    let logs = pods
        .logs("fails", &LogParams::default())
        .await
        .expect("logs");
    assert!(logs.lines().any(|l| l == "hi"), "{logs:?}");
    assert!(logs.lines().any(|l| l == "oops"), "{logs:?}");

    let p = wait_phase(&pods, "works", "Succeeded").await;
    let st = main_status(&p);
    assert_eq!(st["state"]["terminated"]["exitCode"], 0);
    assert_eq!(st["state"]["terminated"]["reason"], "Completed");
    assert_eq!(st["image"], "docker.io/library/busybox:1.36");
    assert!(
        st["imageID"]
            .as_str()
            .unwrap()
            .starts_with("docker.io/library/busybox@sha256:")
    );
    let cid = st["containerID"].as_str().unwrap();
    assert!(
        cid.starts_with("containerd://") && cid.len() == 13 + 64,
        "{cid}"
    );
    assert_eq!(st["restartCount"], 0);
    assert_eq!(st["ready"], false);
    assert_eq!(st["started"], false);
    let status = p.status.as_ref().unwrap();
    assert!(status.pod_ip.as_deref().unwrap().starts_with("10."));
    assert!(status.host_ip.is_some() && status.start_time.is_some());
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    let types: Vec<String> = status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_.clone())
        .collect();
    assert_eq!(
        types,
        [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled"
        ]
    );
    assert_eq!(condition(&p, "Ready").unwrap()["reason"], "PodCompleted");
    assert!(condition(&p, "PodScheduled").unwrap()["lastTransitionTime"].is_string());
    let reasons: Vec<String> = events_for(&sim, "works")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "{r} missing from {reasons:?}"
        );
    }
    sim.stop().await;
}

#[tokio::test]
async fn running_pod_reports_running_status() {
    let (sim, pods) = start(SimConfig::default()).await;
    create(&pods, pod_value("runs", &["sleep", "30"])).await;
    let p = wait_phase(&pods, "runs", "Running").await;
    let st = main_status(&p);
    assert!(st["state"]["running"]["startedAt"].is_string());
    assert_eq!(st["ready"], true);
    assert_eq!(st["started"], true);
    assert_eq!(condition(&p, "Ready").unwrap()["status"], "True");
    assert_eq!(condition(&p, "ContainersReady").unwrap()["status"], "True");
    sim.stop().await;
}

#[tokio::test]
async fn missing_command_is_a_start_error() {
    let (sim, pods) = start(SimConfig::default()).await;
    create(&pods, pod_value("nocmd", &["no-such-command-kubesim", "x"])).await;
    let p = wait_phase(&pods, "nocmd", "Failed").await;
    let t = terminated(&p);
    assert_eq!(t["exitCode"], 128);
    assert_eq!(t["reason"], "StartError");
    assert!(
        t["message"].as_str().unwrap().contains(
            "exec: \"no-such-command-kubesim\": executable file not found in $PATH: unknown"
        ),
        "{t}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn image_pull_failures_keep_the_pod_pending() {
    let mut config = SimConfig::default();
    config.missing_images = vec!["registry.example/private:7".to_string()];
    let (sim, pods) = start(config).await;
    let mut v = pod_value("missing", &["true"]);
    v["spec"]["containers"][0]["image"] = "ghcr.io/acme/does-not-exist:1".into();
    create(&pods, v).await;
    let mut v = pod_value("listed", &["true"]);
    v["spec"]["containers"][0]["image"] = "registry.example/private:7".into();
    create(&pods, v).await;
    let mut v = pod_value("invalid", &["true"]);
    v["spec"]["containers"][0]["image"] = "BusyBox".into();
    create(&pods, v).await;

    let p = wait_for(&pods, "missing", "ErrImagePull", |p| {
        waiting_reason(p) == "ErrImagePull"
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    assert!(
        main_status(&p)["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    let p = wait_for(&pods, "missing", "ImagePullBackOff", |p| {
        waiting_reason(p) == "ImagePullBackOff"
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    wait_for(&pods, "listed", "ErrImagePull", |p| {
        waiting_reason(p) == "ErrImagePull"
    })
    .await;
    wait_for(&pods, "invalid", "InvalidImageName", |p| {
        waiting_reason(p) == "InvalidImageName"
    })
    .await;
    // Still pending a while later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in ["missing", "listed", "invalid"] {
        assert_eq!(phase(&pods.get(name).await.unwrap()), "Pending");
    }
    let reasons: Vec<String> = events_for(&sim, "missing")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "Failed"), "{reasons:?}");
    // A pending pod is deleted at once.
    pods.delete("missing", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "missing").await;
    sim.stop().await;
}

#[tokio::test]
async fn memory_limit_is_enforced() {
    let (sim, pods) = start(SimConfig::default()).await;
    let mut v = pod_value("hog", &["sh", "-c", "head -c 200000000 /dev/zero | tail"]);
    v["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    create(&pods, v).await;
    let p = wait_phase(&pods, "hog", "Failed").await;
    let t = terminated(&p);
    assert_eq!(t["reason"], "OOMKilled");
    assert_eq!(t["exitCode"], 137);
    assert_eq!(
        p.status.as_ref().unwrap().qos_class.as_deref(),
        Some("Burstable")
    );
    sim.stop().await;
}

#[tokio::test]
async fn active_deadline_is_enforced() {
    let (sim, pods) = start(SimConfig::default()).await;
    let mut v = pod_value("slow", &["sleep", "30"]);
    v["spec"]["activeDeadlineSeconds"] = 1.into();
    create(&pods, v).await;
    let p = wait_phase(&pods, "slow", "Failed").await;
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    assert_eq!(terminated(&p)["exitCode"], 143);
    sim.stop().await;
}

#[tokio::test]
async fn graceful_deletion_terminates_then_removes() {
    let (sim, pods) = start(SimConfig::default()).await;
    create(&pods, pod_value("victim", &["sleep", "30"])).await;
    let p = wait_phase(&pods, "victim", "Running").await;
    let rv = p.metadata.resource_version.clone().unwrap();
    let dp = DeleteParams::default().grace_period(10);
    let deleted = pods.delete("victim", &dp);
    let (seen, res) = tokio::join!(watch_until_deleted(&pods, "victim", &rv), deleted);
    res.unwrap();
    let last = seen.last().cloned();
    let last = last.expect("a Deleted event");
    assert_eq!(phase(&last), "Failed");
    assert_eq!(terminated(&last)["exitCode"], 143);
    assert_eq!(terminated(&last)["reason"], "Error");
    assert_eq!(last.metadata.deletion_grace_period_seconds, Some(0));
    assert!(pods.get_opt("victim").await.unwrap().is_none());
    sim.stop().await;
}

#[tokio::test]
async fn finalizer_keeps_the_terminated_pod() {
    let (sim, pods) = start(SimConfig::default()).await;
    let mut v = pod_value("kept", &["sleep", "30"]);
    v["metadata"]["finalizers"] = json!(["example.com/keep"]);
    create(&pods, v).await;
    wait_phase(&pods, "kept", "Running").await;
    pods.delete("kept", &DeleteParams::default()).await.unwrap();
    let p = wait_for(&pods, "kept", "terminated", |p| {
        p.metadata.deletion_grace_period_seconds == Some(0)
    })
    .await;
    assert_eq!(phase(&p), "Failed");
    assert_eq!(terminated(&p)["exitCode"], 143);
    assert!(p.metadata.deletion_timestamp.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pods.get_opt("kept").await.unwrap().is_some());
    pods.patch(
        "kept",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_gone(&pods, "kept").await;
    sim.stop().await;
}

#[tokio::test]
async fn host_path_sub_path_and_working_dir_are_mapped() {
    let host = tempfile::tempdir().unwrap();
    let (sim, pods) = start(SimConfig::default()).await;
    let mut v = pod_value(
        "writer",
        &[
            "sh",
            "-c",
            "echo via-cwd > cwd.txt && echo via-env > \"$OUT\" && pwd",
        ],
    );
    v["spec"]["volumes"] = json!([
        {"name": "work", "hostPath": {"path": host.path().to_str().unwrap(), "type": "DirectoryOrCreate"}},
        {"name": "scratch", "emptyDir": {}},
    ]);
    v["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "work", "mountPath": "/workspace", "subPath": "job-1"},
        {"name": "scratch", "mountPath": "/tmp/scratch"},
    ]);
    v["spec"]["containers"][0]["workingDir"] = "/workspace".into();
    v["spec"]["containers"][0]["env"] = json!([
        {"name": "OUT", "value": "/workspace/out/result.txt"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]);
    // The env value's directory must exist: create it on the host side.
    std::fs::create_dir_all(host.path().join("job-1/out")).unwrap();
    create(&pods, v).await;
    wait_phase(&pods, "writer", "Succeeded").await;
    let dir = host.path().join("job-1");
    assert_eq!(
        std::fs::read_to_string(dir.join("cwd.txt")).unwrap(),
        "via-cwd\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/result.txt")).unwrap(),
        "via-env\n"
    );
    let logs = pods.logs("writer", &LogParams::default()).await.unwrap();
    assert_eq!(logs.trim(), dir.to_str().unwrap());
    sim.stop().await;
}

#[tokio::test]
async fn env_from_field_refs() {
    let (sim, pods) = start(SimConfig::default()).await;
    let mut v = pod_value(
        "envs",
        &["sh", "-c", "echo $POD_NAME/$POD_NS/$NODE/$GREETING"],
    );
    v["spec"]["containers"][0]["env"] = json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "WHO", "value": "world"},
        {"name": "GREETING", "value": "hello-$(WHO)"},
    ]);
    create(&pods, v).await;
    wait_phase(&pods, "envs", "Succeeded").await;
    let logs = pods.logs("envs", &LogParams::default()).await.unwrap();
    assert_eq!(logs.trim(), "envs/default/node-1/hello-world");
    sim.stop().await;
}

fn gpu_cluster() -> SimConfig {
    SimConfig::default()
        .with_nodes(vec![
            SimNode::new("cpu-1", 8000, 32 << 30),
            SimNode::new("gpu-1", 8000, 64 << 30).gpus(2, "NVIDIA-A100-SXM4-80GB"),
        ])
        .with_runtime(parked())
}

#[tokio::test]
async fn nodes_are_published_like_a_kubelet_would() {
    let (sim, _) = start(gpu_cluster()).await;
    let nodes: Api<Node> = Api::all(sim.client());
    let gpu = nodes.get("gpu-1").await.unwrap();
    let labels = gpu.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "gpu-1");
    assert_eq!(labels["nvidia.com/gpu.product"], "NVIDIA-A100-SXM4-80GB");
    let taints = gpu.spec.as_ref().unwrap().taints.clone().unwrap();
    assert_eq!(taints[0].key, "nvidia.com/gpu");
    assert_eq!(taints[0].value.as_deref(), Some("present"));
    assert_eq!(taints[0].effect, "NoSchedule");
    let status = gpu.status.unwrap();
    let alloc = status.allocatable.unwrap();
    assert_eq!(alloc["nvidia.com/gpu"].0, "2");
    assert_eq!(alloc["cpu"].0, "8");
    assert_eq!(alloc["pods"].0, "110");
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(status.node_info.unwrap().operating_system, "linux");
    let cpu = nodes.get("cpu-1").await.unwrap();
    assert!(
        !cpu.status
            .unwrap()
            .capacity
            .unwrap()
            .contains_key("nvidia.com/gpu")
    );
    sim.stop().await;
}

#[tokio::test]
async fn gpu_pods_go_to_gpu_nodes() {
    let (sim, pods) = start(gpu_cluster()).await;
    let gpu_pod = |name: &str, tolerate: bool, gpus: u32| {
        let mut v = pod_value(name, &["train"]);
        v["spec"]["nodeSelector"] = json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"});
        if tolerate {
            v["spec"]["tolerations"] =
                json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
        }
        v["spec"]["containers"][0]["resources"] =
            json!({"limits": {"nvidia.com/gpu": gpus.to_string()}});
        v
    };
    create(&pods, gpu_pod("train-1", true, 1)).await;
    create(&pods, gpu_pod("train-2", true, 1)).await;
    let p = wait_phase(&pods, "train-1", "Running").await;
    assert_eq!(node_of(&p).as_deref(), Some("gpu-1"));
    let p = wait_phase(&pods, "train-2", "Running").await;
    assert_eq!(node_of(&p).as_deref(), Some("gpu-1"));
    // Both GPUs are taken now.
    create(&pods, gpu_pod("train-3", true, 1)).await;
    let p = wait_for(&pods, "train-3", "unschedulable", |p| {
        condition(p, "PodScheduled").is_some_and(|c| c["reason"] == "Unschedulable")
    })
    .await;
    let msg = condition(&p, "PodScheduled").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.starts_with(
            "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) didn't match Pod's node affinity/selector."
        ),
        "{msg}"
    );
    // Without the toleration the taint keeps it off.
    create(&pods, gpu_pod("untolerated", false, 1)).await;
    let p = wait_for(&pods, "untolerated", "unschedulable", |p| {
        condition(p, "PodScheduled").is_some_and(|c| c["reason"] == "Unschedulable")
    })
    .await;
    let msg = condition(&p, "PodScheduled").unwrap()["message"].clone();
    assert!(
        msg.as_str()
            .unwrap()
            .contains("1 node(s) had untolerated taint {nvidia.com/gpu: present}"),
        "{msg}"
    );
    let events = events_for(&sim, "untolerated").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedScheduling")
                && e.type_.as_deref() == Some("Warning")
                && e.source.as_ref().and_then(|s| s.component.as_deref())
                    == Some("default-scheduler")),
        "{events:?}"
    );
    // Freeing a GPU lets the waiting pod in.
    pods.delete("train-1", &DeleteParams::default())
        .await
        .unwrap();
    let p = wait_phase(&pods, "train-3", "Running").await;
    assert_eq!(node_of(&p).as_deref(), Some("gpu-1"));
    sim.stop().await;
}

#[tokio::test]
async fn pools_are_separated_by_node_selector() {
    let nodes = vec![
        SimNode::new("prod-1", 16_000, 64 << 30).label("pool", "production"),
        SimNode::new("prod-2", 16_000, 64 << 30).label("pool", "production"),
        SimNode::new("staging-1", 16_000, 64 << 30)
            .label("pool", "staging")
            .max_pods(2),
    ];
    let (sim, pods) = start(
        SimConfig::default()
            .with_nodes(nodes)
            .with_runtime(parked()),
    )
    .await;
    for i in 0..4 {
        let mut v = pod_value(&format!("stage-{i}"), &["run"]);
        v["spec"]["nodeSelector"] = json!({"pool": "staging"});
        create(&pods, v).await;
    }
    for i in 0..3 {
        let mut v = pod_value(&format!("prod-{i}"), &["run"]);
        v["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["production"]}]}]}}});
        create(&pods, v).await;
    }
    for i in 0..3 {
        let p = wait_phase(&pods, &format!("prod-{i}"), "Running").await;
        assert!(node_of(&p).unwrap().starts_with("prod-"));
    }
    let mut running = 0;
    for i in 0..4 {
        let name = format!("stage-{i}");
        let p = wait_for(&pods, &name, "bound or unschedulable", |p| {
            node_of(p).is_some()
                || condition(p, "PodScheduled").is_some_and(|c| c["reason"] == "Unschedulable")
        })
        .await;
        match node_of(&p) {
            Some(n) => {
                assert_eq!(n, "staging-1");
                running += 1;
            }
            None => {
                let msg = condition(&p, "PodScheduled").unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(
                    msg.starts_with("0/3 nodes are available: 1 Too many pods, 2 node(s) didn't match Pod's node affinity/selector."),
                    "{msg}"
                );
            }
        }
    }
    assert_eq!(running, 2);
    // Creation order: the first two got the slots.
    for i in 0..2 {
        assert_eq!(
            node_of(&pods.get(&format!("stage-{i}")).await.unwrap()).as_deref(),
            Some("staging-1")
        );
    }
    for p in pods.list(&ListParams::default()).await.unwrap() {
        if p.metadata.name.as_deref().unwrap().starts_with("stage-")
            && let Some(n) = node_of(&p)
        {
            assert_eq!(n, "staging-1");
        }
    }
    sim.stop().await;
}

async fn priority_class(sim: &KubeSim, name: &str, value: i32, never: bool) {
    let pcs: Api<PriorityClass> = Api::all(sim.client());
    let mut v = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": name}, "value": value});
    if never {
        v["preemptionPolicy"] = "Never".into();
    }
    pcs.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .expect("priority class created");
}

#[tokio::test]
async fn preemption_honours_priority_and_policy() {
    let nodes = vec![SimNode::new("small", 1000, 8 << 30)];
    let (sim, pods) = start(
        SimConfig::default()
            .with_nodes(nodes)
            .with_runtime(parked()),
    )
    .await;
    priority_class(&sim, "high", 1000, false).await;
    priority_class(&sim, "high-never", 1000, true).await;
    let sized = |name: &str, class: Option<&str>| {
        let mut v = pod_value(name, &["run"]);
        v["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "600m"}});
        if let Some(c) = class {
            v["spec"]["priorityClassName"] = c.into();
        }
        v
    };
    create(&pods, sized("low", None)).await;
    wait_phase(&pods, "low", "Running").await;

    create(&pods, sized("polite", Some("high-never"))).await;
    let p = wait_for(&pods, "polite", "unschedulable", |p| {
        condition(p, "PodScheduled").is_some_and(|c| c["reason"] == "Unschedulable")
    })
    .await;
    let msg = condition(&p, "PodScheduled").unwrap()["message"].clone();
    assert!(
        msg.as_str()
            .unwrap()
            .starts_with("0/1 nodes are available: 1 Insufficient cpu."),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let low = pods.get("low").await.unwrap();
    assert!(low.metadata.deletion_timestamp.is_none());
    assert!(condition(&low, "DisruptionTarget").is_none());

    let rv = low.metadata.resource_version.clone().unwrap();
    create(&pods, sized("urgent", Some("high"))).await;
    let seen = watch_until_deleted(&pods, "low", &rv).await;
    let c = seen
        .iter()
        .find_map(|p| condition(p, "DisruptionTarget"))
        .expect("DisruptionTarget before deletion");
    assert_eq!(c["status"], "True");
    assert_eq!(c["reason"], "PreemptionByScheduler");
    let last = seen.last().unwrap();
    assert!(last.metadata.deletion_timestamp.is_some());
    assert_eq!(phase(last), "Failed");
    let p = wait_phase(&pods, "urgent", "Running").await;
    assert_eq!(node_of(&p).as_deref(), Some("small"));
    // The pod that may not preempt is still waiting.
    assert!(node_of(&pods.get("polite").await.unwrap()).is_none());
    sim.stop().await;
}

#[tokio::test]
async fn nominated_node_is_reported_while_victims_terminate() {
    let nodes = vec![SimNode::new("small", 1000, 8 << 30)];
    let (sim, pods) = start(SimConfig::default().with_nodes(nodes)).await;
    priority_class(&sim, "high", 1000, false).await;
    // The victim ignores SIGTERM for a while, so the preemptor waits nominated.
    let mut low = pod_value("stubborn", &["sh", "-c", "trap '' TERM; sleep 30"]);
    low["spec"]["terminationGracePeriodSeconds"] = 2.into();
    low["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "600m"}});
    create(&pods, low).await;
    wait_phase(&pods, "stubborn", "Running").await;
    let mut high = pod_value("urgent", &["sleep", "30"]);
    high["spec"]["priorityClassName"] = "high".into();
    high["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "600m"}});
    create(&pods, high).await;
    let p = wait_for(&pods, "urgent", "nominated", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            == Some("small")
    })
    .await;
    assert!(node_of(&p).is_none());
    let p = wait_phase(&pods, "urgent", "Running").await;
    assert_eq!(node_of(&p).as_deref(), Some("small"));
    wait_gone(&pods, "stubborn").await;
    sim.stop().await;
}

#[tokio::test]
async fn injected_faults_produce_real_statuses() {
    let (sim, pods) = start(SimConfig::default()).await;
    for name in ["evicted", "oom", "preempted"] {
        create(&pods, pod_value(name, &["sleep", "30"])).await;
    }
    for name in ["evicted", "oom", "preempted"] {
        wait_phase(&pods, name, "Running").await;
    }
    sim.evict("default", "evicted").unwrap();
    let p = wait_phase(&pods, "evicted", "Failed").await;
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        status.message.as_deref(),
        Some("The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.")
    );
    assert_eq!(terminated(&p)["exitCode"], 137);
    assert_eq!(terminated(&p)["reason"], "Error");

    sim.oom_kill("default", "oom").unwrap();
    let p = wait_phase(&pods, "oom", "Failed").await;
    assert_eq!(terminated(&p)["reason"], "OOMKilled");
    assert_eq!(terminated(&p)["exitCode"], 137);

    let rv = pods
        .get("preempted")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    sim.preempt("default", "preempted").unwrap();
    let seen = watch_until_deleted(&pods, "preempted", &rv).await;
    let c = seen
        .iter()
        .find_map(|p| condition(p, "DisruptionTarget"))
        .expect("DisruptionTarget before deletion");
    assert_eq!(c["reason"], "PreemptionByScheduler");
    assert_eq!(terminated(seen.last().unwrap())["exitCode"], 143);

    assert!(sim.evict("default", "nope").is_err());
    assert!(
        sim.oom_kill("default", "oom").is_err(),
        "already terminated"
    );
    assert!(sim.lose_node("no-such-node").is_err());
    sim.stop().await;
}

#[tokio::test]
async fn losing_a_node_disrupts_and_deletes_its_pods() {
    let nodes = vec![
        SimNode::new("stays", 4000, 8 << 30),
        SimNode::new("goes", 4000, 8 << 30),
    ];
    let (sim, pods) = start(SimConfig::default().with_nodes(nodes)).await;
    let mut v = pod_value("doomed", &["sleep", "30"]);
    v["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "goes"});
    create(&pods, v).await;
    let p = wait_phase(&pods, "doomed", "Running").await;
    let rv = p.metadata.resource_version.clone().unwrap();
    sim.lose_node("goes").unwrap();
    let seen = watch_until_deleted(&pods, "doomed", &rv).await;
    let c = seen
        .iter()
        .find_map(|p| condition(p, "DisruptionTarget"))
        .expect("DisruptionTarget before deletion");
    assert_eq!(c["reason"], "DeletionByTaintManager");
    let nodes: Api<Node> = Api::all(sim.client());
    let node = nodes.get("goes").await.unwrap();
    let ready = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    let taints = node.spec.unwrap().taints.unwrap();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
    );
    // New pods avoid the lost node.
    create(&pods, pod_value("after", &["sleep", "30"])).await;
    let p = wait_phase(&pods, "after", "Running").await;
    assert_eq!(node_of(&p).as_deref(), Some("stays"));
    sim.stop().await;
}

/// Pids of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test]
async fn stop_leaves_no_processes_behind() {
    let (sim, pods) = start(SimConfig::default()).await;
    // A background child in the container's process group, plus the foreground one.
    create(
        &pods,
        pod_value("tree", &["sh", "-c", "sleep 3171 & sleep 3172; wait"]),
    )
    .await;
    wait_phase(&pods, "tree", "Running").await;
    let start = Instant::now();
    while processes_with("sleep 317").len() < 2 {
        assert!(start.elapsed() < TIMEOUT, "children did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.stop().await;
    let start = Instant::now();
    loop {
        let left = processes_with("sleep 317");
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instant_runtime_handles_thousands_of_pods() {
    let nodes = (0..4)
        .map(|i| SimNode::new(&format!("n{i}"), 64_000, 256 << 30).max_pods(250))
        .collect();
    let (sim, pods) = start(SimConfig::default().with_nodes(nodes).with_runtime(
        Runtime::Instant {
            run_for: Duration::from_millis(20),
            exit_code: 0,
        },
    ))
    .await;
    let n = 2000;
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let pods = pods.clone();
            async move {
                let mut v = pod_value(&format!("bulk-{i}"), &["work"]);
                v["spec"]["containers"][0]["resources"] =
                    json!({"requests": {"cpu": "100m", "memory": "64Mi"}});
                create(&pods, v).await;
            }
        })
        .await;
    let start = Instant::now();
    loop {
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        for p in sim.pods() {
            *phases.entry(phase(&p).to_string()).or_default() += 1;
        }
        if phases.get("Succeeded") == Some(&n) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{phases:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = pods.logs("bulk-1234", &LogParams::default()).await.unwrap();
    assert_eq!(logs, "ran main\n");
    sim.stop().await;
}
