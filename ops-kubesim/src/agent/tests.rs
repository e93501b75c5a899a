//! Agent tests against a bare store (no HTTP).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Agent;
use super::util::{at, s};
use crate::store::{Kind, Store};
use crate::{Runtime, SimConfig, SimNode};

struct Sim {
    store: Arc<Store>,
    agent: Agent,
    _dir: tempfile::TempDir,
}

fn sim(config: SimConfig) -> Sim {
    let store = Arc::new(Store::new(100_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(store.clone(), &config, dir.path().join("logs"));
    Sim {
        store,
        agent,
        _dir: dir,
    }
}

fn pod(name: &str, command: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": command}],
        },
    })
}

impl Sim {
    fn create(&self, pod: Value) {
        self.store.create(Kind::Pod, pod).expect("create pod");
    }

    fn get(&self, name: &str) -> Option<Value> {
        self.store.get(Kind::Pod, Some("default"), name)
    }

    async fn wait(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let start = std::time::Instant::now();
        loop {
            if let Some(p) = self.get(name)
                && f(&p)
            {
                return p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {name}: {what}; pod: {:#}",
                self.get(name).unwrap_or(Value::Null)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_phase(&self, name: &str, phase: &str) -> Value {
        self.wait(name, phase, |p| s(p, &["status", "phase"]) == Some(phase))
            .await
    }

    async fn wait_gone(&self, name: &str) {
        let start = std::time::Instant::now();
        while self.get(name).is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} not gone: {:#}",
                self.get(name).unwrap_or(Value::Null)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn terminated(p: &Value) -> &Value {
    &p["status"]["containerStatuses"][0]["state"]["terminated"]
}

#[tokio::test]
async fn process_exit_code_and_logs() {
    let sim = sim(SimConfig::default());
    sim.create(pod("fail", &["sh", "-c", "echo hi; echo err >&2; exit 3"]));
    sim.create(pod("ok", &["sh", "-c", "echo fine"]));
    let p = sim.wait_phase("fail", "Failed").await;
    let t = terminated(&p);
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert!(
        t["containerID"]
            .as_str()
            .unwrap()
            .starts_with("containerd://")
    );
    assert_eq!(p["status"]["qosClass"], "BestEffort");
    assert!(s(&p, &["status", "podIP"]).unwrap().starts_with("10."));
    let log = std::fs::read_to_string(sim.agent.log_file("default", "fail", "main")).unwrap();
    assert!(log.lines().any(|l| l.ends_with(" hi")), "{log}");
    assert!(log.lines().any(|l| l.ends_with(" err")), "{log}");
    assert!(!sim.agent.container_running("default", "fail", "main"));
    let p = sim.wait_phase("ok", "Succeeded").await;
    assert_eq!(terminated(&p)["reason"], "Completed");
    let conds: Vec<&str> = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        conds,
        [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled"
        ]
    );
    sim.agent.shutdown().await;
}

#[tokio::test]
async fn start_error_and_missing_image() {
    let sim = sim(SimConfig::default());
    sim.create(pod("nocmd", &["definitely-not-a-command-xyz"]));
    let mut bad = pod("noimage", &["true"]);
    bad["spec"]["containers"][0]["image"] = "registry.example/does-not-exist:1".into();
    sim.create(bad);
    let mut invalid = pod("invalid", &["true"]);
    invalid["spec"]["containers"][0]["image"] = "Busy Box".into();
    sim.create(invalid);
    let p = sim.wait_phase("nocmd", "Failed").await;
    assert_eq!(terminated(&p)["exitCode"], 128);
    assert_eq!(terminated(&p)["reason"], "StartError");
    assert!(
        terminated(&p)["message"]
            .as_str()
            .unwrap()
            .contains("executable file not found in $PATH")
    );
    let p = sim
        .wait("noimage", "ErrImagePull", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
        })
        .await;
    assert_eq!(p["status"]["phase"], "Pending");
    sim.wait("invalid", "InvalidImageName", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "InvalidImageName"
    })
    .await;
    sim.agent.shutdown().await;
}

#[tokio::test]
async fn oom_deadline_and_graceful_delete() {
    let sim = sim(SimConfig::default());
    let mut oom = pod("oom", &["sh", "-c", "head -c 200000000 /dev/zero | tail"]);
    oom["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    sim.create(oom);
    let mut dl = pod("deadline", &["sleep", "30"]);
    dl["spec"]["activeDeadlineSeconds"] = 1.into();
    dl["spec"]["terminationGracePeriodSeconds"] = 2.into();
    sim.create(dl);
    sim.create(pod("sleeper", &["sleep", "30"]));
    let p = sim.wait_phase("oom", "Failed").await;
    assert_eq!(terminated(&p)["reason"], "OOMKilled");
    assert_eq!(terminated(&p)["exitCode"], 137);
    let p = sim.wait_phase("deadline", "Failed").await;
    assert_eq!(p["status"]["reason"], "DeadlineExceeded");
    assert_eq!(terminated(&p)["exitCode"], 143);
    let p = sim.wait_phase("sleeper", "Running").await;
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
    assert!(sim.agent.container_running("default", "sleeper", "main"));
    // What the API server does on DELETE of a running pod.
    sim.store
        .update(Kind::Pod, Some("default"), "sleeper", |o| {
            o["metadata"]["deletionTimestamp"] = super::util::time_in(30).into();
            o["metadata"]["deletionGracePeriodSeconds"] = 30.into();
            o["metadata"]["finalizers"] = json!(["test/keep"]);
            Ok(())
        })
        .unwrap();
    let p = sim
        .wait("sleeper", "terminated", |p| {
            at(p, &["metadata", "deletionGracePeriodSeconds"]).and_then(Value::as_i64) == Some(0)
        })
        .await;
    assert_eq!(p["status"]["phase"], "Failed");
    assert_eq!(terminated(&p)["exitCode"], 143);
    sim.store
        .update(Kind::Pod, Some("default"), "sleeper", |o| {
            o["metadata"]["finalizers"] = json!([]);
            Ok(())
        })
        .unwrap();
    sim.wait_gone("sleeper").await;
    sim.agent.shutdown().await;
}

#[tokio::test]
async fn scheduling_gpu_pools_and_preemption() {
    let nodes = vec![
        SimNode::new("cpu-1", 4000, 8 << 30).label("pool", "production"),
        SimNode::new("staging-1", 1000, 8 << 30).label("pool", "staging"),
        SimNode::new("gpu-1", 8000, 32 << 30).gpus(2, "NVIDIA-A100"),
    ];
    let sim = sim(SimConfig::default()
        .with_nodes(nodes)
        .with_runtime(Runtime::Instant {
            run_for: Duration::from_secs(600),
            exit_code: 0,
        }));
    let mut gpu = pod("gpu", &["true"]);
    gpu["spec"]["nodeSelector"] = json!({"nvidia.com/gpu.product": "NVIDIA-A100"});
    gpu["spec"]["tolerations"] =
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    gpu["spec"]["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": "1"}});
    sim.create(gpu);
    let p = sim.wait_phase("gpu", "Running").await;
    assert_eq!(p["spec"]["nodeName"], "gpu-1");
    // Staging pool: 1 cpu. Two 600m pods: the second does not fit.
    for name in ["st-1", "st-2"] {
        let mut p = pod(name, &["true"]);
        p["spec"]["nodeSelector"] = json!({"pool": "staging"});
        p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "600m"}});
        sim.create(p);
    }
    let p = sim.wait_phase("st-1", "Running").await;
    assert_eq!(p["spec"]["nodeName"], "staging-1");
    let p = sim
        .wait("st-2", "Unschedulable", |p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "Unschedulable"))
        })
        .await;
    let msg = p["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.starts_with("0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {nvidia.com/gpu: present}."),
        "{msg}"
    );
    // Preemption: a high priority staging pod evicts st-1; one with Never does not.
    let mut never = pod("never", &["true"]);
    never["spec"]["nodeSelector"] = json!({"pool": "staging"});
    never["spec"]["priority"] = 1000.into();
    never["spec"]["preemptionPolicy"] = "Never".into();
    never["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "600m"}});
    sim.create(never);
    let p = sim
        .wait("never", "Unschedulable", |p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["reason"] == "Unschedulable"))
        })
        .await;
    assert!(
        p["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("preemptionPolicy=Never"),
        "{p:#}"
    );
    let mut high = pod("high", &["true"]);
    high["spec"]["nodeSelector"] = json!({"pool": "staging"});
    high["spec"]["priority"] = 2000.into();
    high["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "600m"}});
    sim.create(high);
    let p = sim.wait_phase("high", "Running").await;
    assert_eq!(p["spec"]["nodeName"], "staging-1");
    sim.wait_gone("st-1").await;
    assert!(sim.get("never").unwrap()["spec"]["nodeName"].is_null());
    sim.agent.shutdown().await;
}

#[tokio::test]
async fn instant_runtime_many_pods() {
    let sim = sim(SimConfig::default()
        .with_nodes(vec![
            SimNode::new("n1", 64_000, 256 << 30),
            SimNode::new("n2", 64_000, 256 << 30),
        ])
        .with_runtime(Runtime::Instant {
            run_for: Duration::from_millis(5),
            exit_code: 0,
        }));
    let n = 2000;
    for i in 0..n {
        let mut p = pod(&format!("p-{i}"), &["true"]);
        p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "100m"}});
        sim.create(p);
    }
    let start = std::time::Instant::now();
    loop {
        let mut done = 0;
        sim.store.scan(Kind::Pod, None, None, |_, p| {
            done += usize::from(s(p, &["status", "phase"]) == Some("Succeeded"));
            true
        });
        if done == n {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{done}/{n} done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(sim.agent.log_file("default", "p-7", "main")).unwrap();
    assert!(log.ends_with(" ran main\n"), "{log}");
    sim.agent.shutdown().await;
}

#[tokio::test]
async fn init_containers_run_first() {
    let sim = sim(SimConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().to_str().unwrap();
    let mut ok = pod("init-ok", &["sh", "-c", "cat /work/ready"]);
    ok["spec"]["volumes"] = json!([{"name": "w", "hostPath": {"path": host}}]);
    ok["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "w", "mountPath": "/work"}]);
    ok["spec"]["initContainers"] = json!([{
        "name": "prepare", "image": "busybox",
        "command": ["sh", "-c", "echo yes > /work/ready"],
        "volumeMounts": [{"name": "w", "mountPath": "/work"}],
    }]);
    sim.create(ok);
    let p = sim.wait_phase("init-ok", "Succeeded").await;
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let log = std::fs::read_to_string(sim.agent.log_file("default", "init-ok", "main")).unwrap();
    assert!(log.ends_with(" yes\n"), "{log}");

    let mut bad = pod("init-bad", &["true"]);
    bad["spec"]["initContainers"] =
        json!([{"name": "prepare", "image": "busybox", "command": ["sh", "-c", "exit 2"]}]);
    sim.create(bad);
    let p = sim.wait_phase("init-bad", "Failed").await;
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        2
    );
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    let init = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Initialized")
        .unwrap()
        .clone();
    assert_eq!(init["status"], "False");
    assert_eq!(init["reason"], "ContainersNotInitialized");
    sim.agent.shutdown().await;
}

#[tokio::test]
async fn foreign_scheduler_and_gates_are_respected() {
    let sim = sim(SimConfig::default().with_runtime(Runtime::Instant {
        run_for: Duration::from_secs(600),
        exit_code: 0,
    }));
    let mut other = pod("other", &["true"]);
    other["spec"]["schedulerName"] = "my-scheduler".into();
    sim.create(other);
    let mut gated = pod("gated", &["true"]);
    gated["spec"]["schedulingGates"] = json!([{"name": "example.com/wait"}]);
    sim.create(gated);
    sim.create(pod("plain", &["true"]));
    sim.wait_phase("plain", "Running").await;
    let p = sim
        .wait("gated", "SchedulingGated", |p| {
            p["status"]["conditions"][0]["reason"] == "SchedulingGated"
        })
        .await;
    assert!(p["spec"]["nodeName"].is_null());
    assert!(sim.get("other").unwrap()["spec"]["nodeName"].is_null());
    sim.store
        .update(Kind::Pod, Some("default"), "gated", |o| {
            o["spec"]["schedulingGates"] = json!([]);
            Ok(())
        })
        .unwrap();
    sim.wait_phase("gated", "Running").await;
    sim.agent.shutdown().await;
}
