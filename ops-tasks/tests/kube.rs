//! The Kubernetes executor over real HTTP against the API-server simulator
//! (ops-kubesim): the executor conformance suite, compartments, placement, failure
//! reasons, robust watching, re-adoption and bad input. With `OPS_TEST_KUBECONFIG` set,
//! the conformance suite also runs against that real cluster.
#![cfg(feature = "kube")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::Api;
use ops_core::{Environment, Reason, Resources, TaskId, Tenant};
use ops_kubesim::{KubeSim, Runtime, SimConfig, SimNode};
use ops_tasks::kube::{KubeExecutor, KubeExecutorConfig, NodePool, TaskVolume};
use ops_tasks::testkit::executor::{ExecutorTarget, run_all};
use ops_tasks::{Error, Executor, ExecutorUpdate, LaunchSpec, Outcome, Reattached, RunHandle};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);

fn config(root: &Path) -> KubeExecutorConfig {
    let mut c = KubeExecutorConfig::default();
    c.volume = TaskVolume::HostPath {
        path: root.to_owned(),
    };
    c.poll_interval = Duration::from_millis(100);
    c.kill_grace = Duration::from_secs(1);
    c.image_pull_timeout = Duration::from_secs(2);
    c.quota_wait = Duration::from_secs(2);
    c.finished_ttl = Duration::from_secs(600);
    c
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn executor(sim: &KubeSim, config: KubeExecutorConfig) -> KubeExecutor {
    init_tracing();
    KubeExecutor::with_client(config, sim.client(), sim.url())
        .await
        .expect("executor connects to the simulator")
}

fn spec(root: &Path, tenant: &str, argv: &[&str]) -> LaunchSpec {
    let tenant = Tenant::parse(tenant).unwrap();
    let mut spec = LaunchSpec::new(
        tenant.clone(),
        argv.iter().map(|s| s.to_string()).collect(),
        root.join(tenant.as_str()).join("placeholder"),
    );
    spec.task_dir = root.join(tenant.as_str()).join(spec.task_id.to_string());
    spec.image = Some("busybox:1.36".into());
    spec.resources = Resources::new(100, 64 << 20);
    spec
}

/// Updates of one task until its `Finished`.
async fn until_finished(
    rx: &mut mpsc::UnboundedReceiver<ExecutorUpdate>,
    task: TaskId,
) -> (Vec<ExecutorUpdate>, Outcome) {
    let mut seen = Vec::new();
    loop {
        let update = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no Finished for {task} within {PATIENCE:?}; saw {seen:?}"))
            .expect("channel open");
        if update.task_id() != task {
            continue;
        }
        if let ExecutorUpdate::Finished { outcome, .. } = &update {
            let outcome = outcome.clone();
            seen.push(update);
            return (seen, outcome);
        }
        seen.push(update);
    }
}

async fn run_one(exec: &KubeExecutor, spec: LaunchSpec) -> (Vec<ExecutorUpdate>, Outcome) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = spec.task_id;
    exec.launch(spec, tx).await.expect("launch");
    until_finished(&mut rx, id).await
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_of(sim: &KubeSim, exec: &KubeExecutor, spec: &LaunchSpec) -> Option<Pod> {
    let ns = exec.namespace_for(spec.tenant.as_str(), spec.environment.as_str());
    sim.pod(&ns, &format!("ops-{}-{}", spec.task_id, spec.attempt))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_simulator() {
    let sim = Arc::new(KubeSim::start(SimConfig::default()).await.unwrap());
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let make_sim = sim.clone();
    let target = ExecutorTarget {
        make: Arc::new(move || {
            let sim = make_sim.clone();
            let cfg = cfg.clone();
            async move { Arc::new(executor(&sim, cfg).await) as Arc<dyn Executor> }.boxed()
        }),
        root: root.path().to_owned(),
        image: Some("busybox:1.36".into()),
        enforces_memory: true,
        separate_stderr: false,
        patience: PATIENCE,
    };
    run_all(&target).await;
}

/// Against a real cluster: `OPS_TEST_KUBECONFIG=~/.kube/config` (k3s or kind on this
/// machine; the task root must be a directory the node sees at the same path, set with
/// `OPS_TEST_KUBE_ROOT`, default a new directory under /tmp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)]
async fn conformance_on_a_real_cluster() {
    let Ok(kubeconfig) = std::env::var("OPS_TEST_KUBECONFIG") else {
        eprintln!("OPS_TEST_KUBECONFIG not set: real-cluster conformance not run");
        return;
    };
    let root = match std::env::var("OPS_TEST_KUBE_ROOT") {
        Ok(r) => std::path::PathBuf::from(r),
        Err(_) => tempfile::Builder::new()
            .prefix("ops-kube-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep(),
    };
    let mut cfg = config(&root);
    cfg.kubeconfig = Some(kubeconfig.into());
    cfg.image_pull_timeout = Duration::from_secs(300);
    let target = ExecutorTarget {
        make: Arc::new(move || {
            let cfg = cfg.clone();
            async move {
                Arc::new(KubeExecutor::connect(cfg).await.expect("connect")) as Arc<dyn Executor>
            }
            .boxed()
        }),
        root,
        image: Some(std::env::var("OPS_TEST_KUBE_IMAGE").unwrap_or("busybox:1.36".into())),
        enforces_memory: true,
        separate_stderr: false,
        patience: Duration::from_secs(180),
    };
    run_all(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compartments_are_created_once_with_quota_limits_and_network_policy() {
    let sim = KubeSim::start(SimConfig::default().with_runtime(Runtime::Instant {
        run_for: Duration::from_millis(50),
        exit_code: 0,
    }))
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path());
    cfg.quota = Some(Resources::new(4000, 8 << 30).with_gpus(1, None));
    cfg.tenant_quotas
        .insert("big".into(), Resources::new(16000, 64 << 30));
    let exec = executor(&sim, cfg).await;

    for tenant in ["acme", "acme", "Big_Corp", "big"] {
        let (_, outcome) = run_one(&exec, spec(root.path(), tenant, &["true"])).await;
        assert_eq!(outcome.reason, Reason::Completed, "{tenant}: {outcome:?}");
    }
    let client = sim.client();
    let ns = exec.namespace_for("acme", "default");
    assert_eq!(ns, "ops-acme-default");
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    let labels = namespace.metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "ops");
    assert_eq!(labels["ops.dev/tenant"], "acme");
    let quota = Api::<ResourceQuota>::namespaced(client.clone(), &ns)
        .get("ops")
        .await
        .unwrap();
    let hard = quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard["requests.cpu"].0, "4");
    assert_eq!(hard["requests.nvidia.com/gpu"].0, "1");
    let big =
        Api::<ResourceQuota>::namespaced(client.clone(), &exec.namespace_for("big", "default"))
            .get("ops")
            .await
            .unwrap();
    assert_eq!(big.spec.unwrap().hard.unwrap()["requests.cpu"].0, "16");
    let limits = Api::<LimitRange>::namespaced(client.clone(), &ns)
        .get("ops")
        .await
        .unwrap();
    let item = &limits.spec.unwrap().limits[0];
    assert_eq!(item.default_request.as_ref().unwrap()["cpu"].0, "100m");
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get("ops")
        .await
        .unwrap();
    assert_eq!(
        policy.spec.unwrap().policy_types.unwrap(),
        ["Ingress", "Egress"]
    );
    // "Big_Corp" is not a DNS label: a distinct, valid namespace.
    let odd = exec.namespace_for("Big_Corp", "default");
    assert!(odd.starts_with("ops-big-corp-default-"), "{odd}");
    assert!(sim.object("namespaces", None, &odd).is_some());
    let class = Api::<PriorityClass>::all(client)
        .get("ops-scavenger")
        .await
        .unwrap();
    assert_eq!(class.value, Some(-100));
    assert_eq!(class.preemption_policy.as_deref(), Some("Never"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_stay_on_their_pools_and_gpus_on_their_models() {
    let nodes = vec![
        SimNode::new("prod-1", 4000, 8 << 30).label("ops.dev/pool", "production"),
        SimNode::new("staging-1", 1000, 2 << 30)
            .label("ops.dev/pool", "staging")
            .taint("ops.dev/pool", "staging", "NoSchedule"),
        SimNode::new("gpu-1", 8000, 32 << 30)
            .label("ops.dev/pool", "production")
            .gpus(1, "NVIDIA-A100-SXM4-80GB"),
    ];
    let sim = KubeSim::start(SimConfig::default().with_nodes(nodes))
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path());
    cfg.pools.insert(
        "production".into(),
        NodePool::labelled("ops.dev/pool", "production"),
    );
    cfg.pools.insert(
        "staging".into(),
        NodePool::labelled("ops.dev/pool", "staging").tolerate("ops.dev/pool=staging:NoSchedule"),
    );
    let exec = executor(&sim, cfg).await;
    // Capacity counts the pools' ready nodes.
    assert_eq!(exec.capacity().cpu_millis, 13000);
    assert_eq!(exec.capacity().gpus.count, 1);

    let mut staged = Vec::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..3 {
        let mut s = spec(root.path(), "acme", &["sleep", "2"]);
        s.environment = Environment::parse("staging").unwrap();
        s.resources = Resources::new(400, 64 << 20);
        exec.launch(s.clone(), tx.clone()).await.unwrap();
        staged.push(s);
    }
    // Two fit on the staging node; the third waits there rather than use production.
    wait_for("two staging pods running", || {
        staged
            .iter()
            .filter(|s| {
                pod_of(&sim, &exec, s)
                    .and_then(|p| p.status?.phase)
                    .as_deref()
                    == Some("Running")
            })
            .count()
            == 2
    })
    .await;
    for s in &staged {
        let pod = pod_of(&sim, &exec, s).unwrap();
        let node = pod.spec.unwrap().node_name;
        assert!(
            node.is_none() || node.as_deref() == Some("staging-1"),
            "staging pod on {node:?}"
        );
    }
    let waiting = staged
        .iter()
        .find_map(|s| {
            let pod = pod_of(&sim, &exec, s)?;
            pod.spec.as_ref()?.node_name.is_none().then_some(pod)
        })
        .expect("one staging pod waits");
    let condition = waiting.status.unwrap().conditions.unwrap();
    assert!(
        condition
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")),
        "{condition:?}"
    );
    // They end in any order: collect every Finished rather than wait for each in turn
    // (waiting for one would drop the others' updates).
    let mut ended = HashMap::new();
    while ended.len() < staged.len() {
        let update = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("staged pods did not all finish; ended {ended:?}"))
            .expect("channel open");
        if let ExecutorUpdate::Finished {
            task_id, outcome, ..
        } = update
        {
            ended.insert(task_id, outcome.reason);
        }
    }
    for s in &staged {
        assert_eq!(ended.get(&s.task_id), Some(&Reason::Completed));
    }

    // GPU model selection.
    let mut gpu = spec(root.path(), "acme", &["true"]);
    gpu.environment = Environment::parse("production").unwrap();
    gpu.resources = Resources::new(100, 64 << 20).with_gpus(1, Some("a100".into()));
    let (_, outcome) = run_one(&exec, gpu.clone()).await;
    assert_eq!(outcome.reason, Reason::Completed);
    let pod = pod_of(&sim, &exec, &gpu).unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("gpu-1"));

    let mut h100 = spec(root.path(), "acme", &["true"]);
    h100.environment = Environment::parse("production").unwrap();
    h100.resources = Resources::new(100, 64 << 20).with_gpus(1, Some("H100".into()));
    let (_, outcome) = run_one(&exec, h100).await;
    assert_eq!(outcome.reason, Reason::LaunchFailed);
    assert!(
        outcome
            .message
            .unwrap()
            .contains("no node has a GPU model matching \"H100\"")
    );

    let mut unknown = spec(root.path(), "acme", &["true"]);
    unknown.environment = Environment::parse("qa").unwrap();
    let (_, outcome) = run_one(&exec, unknown).await;
    assert_eq!(outcome.reason, Reason::LaunchFailed);
    assert!(outcome.message.unwrap().contains("\"qa\" has no node pool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failures_map_to_the_local_executors_reasons() {
    let nodes = vec![SimNode::new("node-1", 8000, 16 << 30)];
    let sim = KubeSim::start(SimConfig::default().with_nodes(nodes))
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let exec = executor(&sim, config(root.path())).await;

    // Image that cannot be pulled: ImageUnavailable after the pull timeout.
    let mut s = spec(root.path(), "acme", &["true"]);
    s.image = Some("registry.example/does-not-exist:1".into());
    let (updates, outcome) = run_one(&exec, s.clone()).await;
    assert_eq!(outcome.reason, Reason::ImageUnavailable, "{outcome:?}");
    assert!(outcome.message.unwrap().contains("ImagePull"));
    assert!(
        !updates
            .iter()
            .any(|u| matches!(u, ExecutorUpdate::Started { .. }))
    );
    wait_for("the unpullable pod to be deleted", || {
        pod_of(&sim, &exec, &s).is_none()
    })
    .await;

    // Kubelet eviction, eviction through the API, node loss, preemption, OOM.
    let faults: [(&str, Reason); 4] = [
        ("evict", Reason::Evicted),
        ("preempt", Reason::Preempted),
        ("oom", Reason::OutOfMemory),
        ("lose_node", Reason::Evicted),
    ];
    for (fault, want) in faults {
        let s = spec(root.path(), "acme", &["sleep", "30"]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        exec.launch(s.clone(), tx).await.unwrap();
        let first = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, ExecutorUpdate::Started { .. }),
            "{fault}: {first:?}"
        );
        let ns = exec.namespace_for("acme", "default");
        let name = format!("ops-{}-1", s.task_id);
        if fault == "evict" {
            // Someone else's finalizer first: Ops must remove its own where it is.
            let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
                {"op": "add", "path": "/metadata/finalizers/0", "value": "example.com/keep"}
            ]))
            .unwrap();
            Api::<Pod>::namespaced(sim.client(), &ns)
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Json::<()>(patch),
                )
                .await
                .unwrap();
        }
        match fault {
            "evict" => sim.evict(&ns, &name).unwrap(),
            "preempt" => sim.preempt(&ns, &name).unwrap(),
            "oom" => sim.oom_kill(&ns, &name).unwrap(),
            _ => sim.lose_node("node-1").unwrap(),
        }
        let (_, outcome) = until_finished(&mut rx, s.task_id).await;
        assert_eq!(outcome.reason, want, "{fault}: {outcome:?}");
        // Ops' finalizer is gone once the end is reported; others' stay.
        wait_for("finalizer removed", || {
            pod_of(&sim, &exec, &s).is_none_or(|p| {
                !p.metadata
                    .finalizers
                    .unwrap_or_default()
                    .contains(&ops_tasks::kube::FINALIZER.to_owned())
            })
        })
        .await;
        if fault == "evict" {
            let finalizers = pod_of(&sim, &exec, &s)
                .unwrap()
                .metadata
                .finalizers
                .unwrap();
            assert_eq!(finalizers, ["example.com/keep"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_work_preempts_scavengers() {
    let nodes = vec![SimNode::new("gpu-1", 4000, 8 << 30).gpus(1, "NVIDIA-A100-SXM4-80GB")];
    let sim = KubeSim::start(SimConfig::default().with_nodes(nodes))
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let exec = executor(&sim, config(root.path())).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut scavenger = spec(root.path(), "folding", &["sleep", "60"]);
    scavenger.scavenger = true;
    scavenger.resources = Resources::new(100, 64 << 20).with_gpus(1, None);
    exec.launch(scavenger.clone(), tx.clone()).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, ExecutorUpdate::Started { .. }));
    let pod = pod_of(&sim, &exec, &scavenger).unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().priority, Some(-100));

    // A second scavenger never preempts the first (preemptionPolicy: Never).
    let mut second = spec(root.path(), "folding", &["true"]);
    second.scavenger = true;
    second.resources = Resources::new(100, 64 << 20).with_gpus(1, None);
    exec.launch(second.clone(), tx.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        pod_of(&sim, &exec, &scavenger)
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );

    let mut real = spec(
        root.path(),
        "acme",
        &["sh", "-c", "echo trained > model.txt"],
    );
    real.resources = Resources::new(100, 64 << 20).with_gpus(1, None);
    exec.launch(real.clone(), tx.clone()).await.unwrap();
    let mut ends = HashMap::new();
    while ends.len() < 3 {
        let u = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let ExecutorUpdate::Finished {
            task_id, outcome, ..
        } = u
        {
            ends.insert(task_id, outcome.reason);
        }
    }
    assert_eq!(ends[&scavenger.task_id], Reason::Preempted);
    assert_eq!(ends[&real.task_id], Reason::Completed);
    assert_eq!(ends[&second.task_id], Reason::Completed);
    assert_eq!(
        std::fs::read_to_string(real.task_dir.join("model.txt")).unwrap(),
        "trained\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempt_deletes_the_pod_with_the_grace_given() {
    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let exec = executor(&sim, cfg.clone()).await;
    // The task ignores SIGTERM: it ends only when the grace is over.
    let s = spec(
        root.path(),
        "acme",
        &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = exec.launch(s.clone(), tx).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, ExecutorUpdate::Started { .. }), "{first:?}");

    // Rounded up to whole seconds, and longer than kill_grace.
    let grace = Duration::from_millis(2500);
    assert!(grace > cfg.kill_grace);
    let asked = tokio::time::Instant::now();
    exec.preempt(&handle, grace).await.unwrap();
    let pod = pod_of(&sim, &exec, &s).expect("pod still terminating");
    assert!(pod.metadata.deletion_timestamp.is_some());
    assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(3));
    let (_, outcome) = until_finished(&mut rx, s.task_id).await;
    assert_eq!(outcome.reason, Reason::Preempted, "{outcome:?}");
    assert!(
        asked.elapsed() >= grace,
        "ended {:?} after the preemption",
        asked.elapsed()
    );
    // Preempting it again is fine.
    exec.preempt(&handle, grace).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refusals_wait_then_fail_with_quota_exceeded() {
    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path());
    cfg.quota = Some(Resources::new(1000, 1 << 30));
    cfg.quota_wait = Duration::from_secs(20);
    let exec = executor(&sim, cfg.clone()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut first = spec(root.path(), "acme", &["sleep", "2"]);
    first.resources = Resources::new(800, 64 << 20);
    let mut second = first.clone();
    second.task_id = TaskId::new();
    second.task_dir = root.path().join("acme").join(second.task_id.to_string());
    second.argv = vec!["true".into()];
    exec.launch(first.clone(), tx.clone()).await.unwrap();
    // The second does not fit the quota until the first ends: it waits, then runs.
    exec.launch(second.clone(), tx.clone()).await.unwrap();
    let (_, a) = until_finished(&mut rx, first.task_id).await;
    let (_, b) = until_finished(&mut rx, second.task_id).await;
    assert_eq!((a.reason, b.reason), (Reason::Completed, Reason::Completed));

    // A request larger than the quota ends QuotaExceeded at once (the LimitRange's
    // per-container maximum), never lost.
    let mut huge = spec(root.path(), "acme", &["true"]);
    huge.resources = Resources::new(2000, 64 << 20);
    let (_, outcome) = run_one(&exec, huge).await;
    assert_eq!(outcome.reason, Reason::QuotaExceeded);
    assert!(
        outcome
            .message
            .unwrap()
            .contains("maximum cpu usage per Container")
    );

    // Quota used by others for longer than quota_wait: QuotaExceeded naming the quota.
    drop(exec);
    cfg.quota_wait = Duration::from_secs(1);
    let exec = executor(&sim, cfg).await;
    let mut holder = spec(root.path(), "acme", &["sleep", "5"]);
    holder.resources = Resources::new(800, 64 << 20);
    exec.launch(holder.clone(), tx.clone()).await.unwrap();
    let mut late = spec(root.path(), "acme", &["true"]);
    late.resources = Resources::new(800, 64 << 20);
    let (_, outcome) = run_one(&exec, late).await;
    assert_eq!(outcome.reason, Reason::QuotaExceeded);
    assert!(outcome.message.unwrap().contains("exceeded quota"));
    let (_, held) = until_finished(&mut rx, holder.task_id).await;
    assert_eq!(held.reason, Reason::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_expired_watches_miss_nothing_and_duplicate_nothing() {
    let sim = KubeSim::start(SimConfig::default().with_runtime(Runtime::Instant {
        run_for: Duration::from_millis(400),
        exit_code: 0,
    }))
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path());
    cfg.follow_logs = false;
    let exec = executor(&sim, cfg).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut ids = Vec::new();
    for i in 0..120 {
        let s = spec(root.path(), "acme", &["true"]);
        ids.push(s.task_id);
        exec.launch(s, tx.clone()).await.unwrap();
        if i % 20 == 10 {
            sim.drop_watches();
        }
        if i % 40 == 30 {
            sim.compact();
            sim.drop_watches();
        }
    }
    let mut started: HashMap<TaskId, usize> = HashMap::new();
    let mut finished: HashMap<TaskId, usize> = HashMap::new();
    while finished.len() < ids.len() {
        let u = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {} finished", finished.len(), ids.len()))
            .unwrap();
        match u {
            ExecutorUpdate::Started { task_id, .. } => *started.entry(task_id).or_default() += 1,
            ExecutorUpdate::Finished {
                task_id, outcome, ..
            } => {
                assert_eq!(outcome.reason, Reason::Completed);
                *finished.entry(task_id).or_default() += 1;
                if finished.len().is_multiple_of(30) {
                    sim.compact();
                    sim.drop_watches();
                }
            }
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(u) = rx.try_recv() {
        if let ExecutorUpdate::Finished { task_id, .. } = u {
            *finished.entry(task_id).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            finished.get(id),
            Some(&1),
            "task {id} finished {:?} times",
            finished.get(id)
        );
        assert_eq!(
            started.get(id),
            Some(&1),
            "task {id} started {:?} times",
            started.get(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_executor_re_adopts_running_pods() {
    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let exec = executor(&sim, cfg.clone()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut launched: Vec<(LaunchSpec, RunHandle)> = Vec::new();
    for i in 0..6 {
        let script = format!("sleep 2; echo {i} > out.txt; exit {}", i % 2);
        let s = spec(root.path(), "acme", &["sh", "-c", &script]);
        let h = exec.launch(s.clone(), tx.clone()).await.unwrap();
        launched.push((s, h));
    }
    let mut started = 0;
    while started < 6 {
        if let ExecutorUpdate::Started { .. } = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            started += 1;
        }
    }
    // A crash: the executor goes, the pods stay.
    drop(exec);
    drop(rx);
    let exec = executor(&sim, cfg).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (s, h) in &launched {
        let r = exec.reattach(h, s, tx.clone()).await.unwrap();
        assert_eq!(r, Reattached::Running);
    }
    let mut ends: HashMap<TaskId, Vec<Reason>> = HashMap::new();
    while ends.values().map(Vec::len).sum::<usize>() < 6 {
        if let ExecutorUpdate::Finished {
            task_id, outcome, ..
        } = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ends.entry(task_id).or_default().push(outcome.reason);
        }
    }
    for (i, (s, _)) in launched.iter().enumerate() {
        let want = if i % 2 == 0 {
            Reason::Completed
        } else {
            Reason::NonZeroExit
        };
        assert_eq!(ends[&s.task_id], [want]);
        assert_eq!(
            std::fs::read_to_string(s.task_dir.join("out.txt")).unwrap(),
            format!("{i}\n")
        );
    }
    // A handle whose pod is gone.
    let (s, h) = &launched[0];
    let mut gone = h.clone();
    gone.detail["pod"] = serde_json::json!("ops-nothing-here-1");
    match exec.reattach(&gone, s, tx).await.unwrap() {
        Reattached::Gone(o) => assert_eq!(o.reason, Reason::CoordinatorLost),
        r => panic!("{r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_pods_are_cleaned_up_after_the_ttl() {
    let sim = KubeSim::start(SimConfig::default().with_runtime(Runtime::Instant {
        run_for: Duration::from_millis(50),
        exit_code: 0,
    }))
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = config(root.path());
    cfg.finished_ttl = Duration::from_millis(500);
    let exec = executor(&sim, cfg).await;
    let s = spec(root.path(), "acme", &["true"]);
    let (_, outcome) = run_one(&exec, s.clone()).await;
    assert_eq!(outcome.reason, Reason::Completed);
    assert!(pod_of(&sim, &exec, &s).is_some(), "kept for the TTL");
    wait_for("pod deleted after the TTL", || {
        pod_of(&sim, &exec, &s).is_none()
    })
    .await;
    drop(exec);

    // A coordinator that stops before its timers fire leaves finished pods behind; the
    // next executor deletes those past their TTL, never one whose end nobody read.
    let mut cfg = config(root.path());
    cfg.finished_ttl = Duration::from_secs(2);
    let exec = executor(&sim, cfg.clone()).await;
    let done = spec(root.path(), "acme", &["true"]);
    let (_, outcome) = run_one(&exec, done.clone()).await;
    assert_eq!(outcome.reason, Reason::Completed);
    let ns = exec.namespace_for("acme", "default");
    let done_name = format!("ops-{}-1", done.task_id);
    wait_for("Ops' finalizer removed from the read pod", || {
        sim.pod(&ns, &done_name)
            .is_some_and(|p| p.metadata.finalizers.unwrap_or_default().is_empty())
    })
    .await;
    drop(exec);
    // A pod whose end no executor read (made here as an executor would, with the
    // finalizer, while none runs).
    let unread = spec(root.path(), "acme", &["true"]);
    let mut pod = {
        let preview = executor(&sim, cfg.clone()).await;
        preview.pod_for(&unread).unwrap()
    };
    pod.metadata.namespace = Some(ns.clone());
    let unread_name = pod.metadata.name.clone().unwrap();
    Api::<Pod>::namespaced(sim.client(), &ns)
        .create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap();
    assert!(
        sim.pod(&ns, &done_name).is_some(),
        "no timer of a dropped executor fired"
    );
    let _later = executor(&sim, cfg).await;
    wait_for("the read pod deleted by the next executor", || {
        sim.pod(&ns, &done_name).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = sim.pod(&ns, &unread_name).expect("the unread pod stays");
    assert!(
        kept.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&ops_tasks::kube::FINALIZER.to_owned()),
        "a pod whose end nobody read keeps Ops' finalizer"
    );
    assert!(kept.metadata.deletion_timestamp.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clusters_and_missing_permissions_fail_clearly() {
    let root = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of localhost.
    let kubeconfig = root.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:9\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
         users:\n- name: u\n  user: {}\n",
    )
    .unwrap();
    let mut cfg = config(root.path());
    cfg.kubeconfig = Some(kubeconfig.clone());
    cfg.connect_timeout = Duration::from_secs(3);
    let err = KubeExecutor::connect(cfg.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Cluster { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");

    std::fs::write(&kubeconfig, "clusters: [this is not: a kubeconfig").unwrap();
    let err = KubeExecutor::connect(cfg.clone()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains(&kubeconfig.display().to_string()),
        "{err}"
    );

    cfg.kubeconfig = Some(root.path().join("missing"));
    let err = KubeExecutor::connect(cfg.clone()).await.unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    let mut bad = config(root.path());
    bad.namespace_prefix = "Not A Label".into();
    bad.kill_grace = Duration::ZERO;
    let err = KubeExecutor::connect(bad).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("namespace_prefix") && text.contains("kill_grace"),
        "{text}"
    );

    // RBAC: every missing permission is listed at once.
    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    sim.deny("create", "pods");
    sim.deny("list", "nodes");
    let err = KubeExecutor::with_client(config(root.path()), sim.client(), sim.url())
        .await
        .unwrap_err();
    match &err {
        Error::Forbidden { denied } => {
            let text: Vec<String> = denied.iter().map(|d| d.to_string()).collect();
            assert_eq!(denied.len(), 2, "{text:?}");
            assert!(
                text.iter()
                    .any(|t| t.starts_with("cannot create pods in namespace")),
                "{text:?}"
            );
            assert!(
                text.iter()
                    .any(|t| t.starts_with("cannot list nodes cluster-wide")),
                "{text:?}"
            );
        }
        e => panic!("{e}"),
    }
    // Refused later (a role changed under a running coordinator): the launch error names
    // the verb and resource.
    sim.allow_all();
    let exec = executor(&sim, config(root.path())).await;
    sim.deny("create", "pods");
    let err = exec
        .launch(
            spec(root.path(), "acme", &["true"]),
            mpsc::unbounded_channel().0,
        )
        .await
        .unwrap_err();
    match &err {
        Error::Forbidden { denied } => {
            assert_eq!(denied[0].verb, "create");
            assert_eq!(denied[0].resource, "pods");
            assert_eq!(denied[0].namespace.as_deref(), Some("ops-acme-default"));
        }
        e => panic!("{e}"),
    }
}

/// The same templates through the `Tasks` facade on the local executor and on the
/// Kubernetes executor: the same events with the same reasons, exit codes and outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_lifecycle_gives_the_same_events_as_the_local_executor() {
    use ops_tasks::local::{LocalExecutor, LocalExecutorConfig};
    use ops_tasks::template::{Catalogue, Format, TaskTemplate};
    use ops_tasks::{SqliteHistory, SubmitRequest, Tasks, TasksConfig};

    const TEMPLATES: &[&str] = &[
        r#"
name = "echo"
image = "busybox:1.36"
command = ["echo", "{{ text }}"]
[parameters.properties.text]
type = "string"
default = "hello"
"#,
        r#"
name = "frames"
image = "busybox:1.36"
command = ["sh", "-c", "mkdir -p frames && for i in 1 2 3; do echo $i > frames/f$i.png; done"]
outputs = ["frames/*.png"]
"#,
        r#"
name = "flaky"
image = "busybox:1.36"
command = ["sh", "-c", "exit 3"]
[retries]
max_attempts = 2
backoff = "100ms"
"#,
        r#"
name = "sleepy"
image = "busybox:1.36"
command = ["sleep", "30"]
timeout = "1s"
"#,
        r#"
name = "missing"
image = "busybox:1.36"
command = ["ops-no-such-program-4711"]
"#,
        r#"
name = "hog"
image = "busybox:1.36"
command = ["sh", "-c", "head -c 400000000 /dev/zero | tail > /dev/null"]
[resources]
memory = "48Mi"
"#,
        r#"
name = "long"
image = "busybox:1.36"
command = ["sleep", "30"]
"#,
    ];

    #[derive(Debug, PartialEq)]
    struct Seen {
        template: String,
        events: Vec<(String, Option<Reason>, Option<i32>, u32)>,
        outputs: Vec<String>,
    }

    async fn run_all_templates(executor: Arc<dyn Executor>, dir: &Path) -> Vec<Seen> {
        let mut catalogue = Catalogue::new();
        for (i, text) in TEMPLATES.iter().enumerate() {
            catalogue
                .insert(TaskTemplate::from_str(text, Format::Toml, format!("t{i}.toml")).unwrap());
        }
        let history = SqliteHistory::open(dir.join("ops.db").to_str().unwrap())
            .await
            .unwrap();
        let mut config = TasksConfig::default();
        config.root = dir.join("tasks");
        let tasks = Tasks::builder()
            .catalogue(catalogue)
            .history(history)
            .executor(executor)
            .config(config)
            .start()
            .await
            .unwrap();
        let tenant = Tenant::parse("acme").unwrap();
        let mut ids = Vec::new();
        for name in [
            "echo", "frames", "flaky", "sleepy", "missing", "hog", "long",
        ] {
            let id = tasks
                .tenant(&ops_core::Tenant::parse("acme").unwrap())
                .submit(SubmitRequest::new(name))
                .await
                .unwrap();
            ids.push((name, id));
        }
        // Cancel the long one once it runs.
        let long = ids.last().unwrap().1;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let r = tasks.tenant(&tenant).get(long).await.unwrap();
            if r.status == ops_core::TaskStatus::Running {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "long never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        tasks.tenant(&tenant).cancel(long).await.unwrap();
        let mut seen = Vec::new();
        for (name, id) in ids {
            tokio::time::timeout(PATIENCE, tasks.tenant(&tenant).wait(id))
                .await
                .unwrap_or_else(|_| panic!("{name} did not end"))
                .unwrap();
            let events = tasks.tenant(&tenant).events(id).await.unwrap();
            let mut outputs: Vec<String> = tasks
                .tenant(&tenant)
                .outputs(id)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.path)
                .collect();
            outputs.sort();
            seen.push(Seen {
                template: name.into(),
                events: events
                    .iter()
                    .map(|e| {
                        let d: ops_core::TaskEventData = e.data_as().unwrap();
                        (e.ty.clone(), d.reason, d.exit_code, d.attempt)
                    })
                    .collect(),
                outputs,
            });
        }
        tasks.shutdown().await;
        seen
    }

    let local_dir = tempfile::tempdir().unwrap();
    let local = LocalExecutor::new(LocalExecutorConfig::default()).unwrap();
    let local_seen = run_all_templates(Arc::new(local), local_dir.path()).await;

    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    let kube_dir = tempfile::tempdir().unwrap();
    let kube = executor(&sim, config(&kube_dir.path().join("tasks"))).await;
    let kube_seen = run_all_templates(Arc::new(kube), kube_dir.path()).await;

    for (l, k) in local_seen.iter().zip(&kube_seen) {
        assert_eq!(
            l, k,
            "template {} differs between local and kube",
            l.template
        );
    }
    // And they are what the lifecycle means.
    let reasons: Vec<_> = kube_seen
        .iter()
        .map(|s| s.events.last().unwrap().1)
        .collect();
    assert_eq!(
        reasons,
        [
            Some(Reason::Completed),
            Some(Reason::Completed),
            Some(Reason::NonZeroExit),
            Some(Reason::TimedOut),
            Some(Reason::CommandNotFound),
            Some(Reason::OutOfMemory),
            Some(Reason::Cancelled),
        ]
    );
    assert_eq!(
        kube_seen[1].outputs,
        ["frames/f1.png", "frames/f2.png", "frames/f3.png"]
    );
}
