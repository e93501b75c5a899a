//! The `coordinator` binary running tasks as pods (`--kube`), against the Kubernetes
//! API-server simulator over real HTTP, with a Postgres history shared with a
//! submit-only front end. The coordinator is SIGKILLed while pods run; its restart
//! re-adopts them, and every task ends once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ops::core::{Reason, TaskStatus, Tenant};
use ops::tasks::SubmitRequest;
use ops_kubesim::{KubeSim, SimConfig};

fn spawn(db: &str, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("coordinator.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--history", db, "--templates"])
        .arg(dir.join("templates"))
        .arg("--root")
        .arg(dir.join("tasks"))
        .args([
            "--id",
            "kube-1",
            "--lease-ttl",
            "3s",
            "--heartbeat",
            "500ms",
        ])
        .args(["--poll", "100ms", "--kube"])
        .arg(dir.join("kube.toml"))
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn coordinator");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("ready") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!(
                "coordinator did not start: {seen}\n{}",
                std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
            );
        }
        seen.push_str(&line);
    }
    assert!(
        seen.contains("running tasks on Kubernetes at http://127.0.0.1"),
        "{seen}"
    );
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_runs_tasks_as_pods_and_re_adopts_them_after_a_crash() {
    let Some(db) = ops_testbed::postgres_database() else {
        return;
    };
    let sim = KubeSim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("templates")).unwrap();
    std::fs::create_dir_all(root.join("tasks")).unwrap();
    std::fs::write(
        root.join("templates/frame.toml"),
        r#"
name = "frame"
image = "busybox:1.36"
command = ["sh", "-c", "sleep 2; mkdir -p out && echo {{ n }} > out/frame.txt; exit {{ code }}"]
outputs = ["out/*.txt"]
[parameters.properties.n]
type = "integer"
[parameters.properties.code]
type = "integer"
default = 0
[resources]
cpu = "100m"
memory = "32Mi"
"#,
    )
    .unwrap();
    std::fs::write(root.join("kubeconfig"), sim.kubeconfig_yaml()).unwrap();
    std::fs::write(
        root.join("kube.toml"),
        format!(
            "kubeconfig = {:?}\nvolume = {{ kind = \"host_path\", path = {:?} }}\n\
             kill_grace = \"1s\"\npoll_interval = \"100ms\"\n",
            root.join("kubeconfig"),
            root.join("tasks"),
        ),
    )
    .unwrap();

    let platform = ops::Platform::builder()
        .history(db.as_str())
        .templates(root.join("templates"))
        .submit_only()
        .start()
        .await
        .unwrap();
    let front = platform.tasks().clone();
    let mut coordinator = spawn(&db, root);
    let tenant = Tenant::parse("acme").unwrap();
    let mut ids = Vec::new();
    for n in 0..6 {
        let request = SubmitRequest::new("frame")
            .parameters(serde_json::json!({ "n": n, "code": if n == 5 { 3 } else { 0 } }));
        ids.push(front.tenant(&tenant).submit(request).await.unwrap());
    }
    // Wait until pods run, then crash the coordinator.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim
        .pods()
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count()
        < 6
    {
        assert!(Instant::now() < deadline, "pods did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    let mut coordinator = spawn(&db, root);

    for (n, id) in ids.iter().enumerate() {
        let record = tokio::time::timeout(Duration::from_secs(60), front.tenant(&tenant).wait(*id))
            .await
            .expect("task ends")
            .unwrap();
        if n == 5 {
            assert_eq!(record.status, TaskStatus::Failed);
            assert_eq!(record.reason, Some(Reason::NonZeroExit));
            assert_eq!(record.exit_code, Some(3));
        } else {
            assert_eq!(record.status, TaskStatus::Succeeded, "{record:?}");
            assert_eq!(record.attempt, 1, "re-adopted, not retried: {record:?}");
            let outputs = front.tenant(&tenant).outputs(*id).await.unwrap();
            assert_eq!(outputs.len(), 1, "{outputs:?}");
            assert_eq!(outputs[0].path, "out/frame.txt");
        }
        let events = front.tenant(&tenant).events(*id).await.unwrap();
        let finals = events
            .iter()
            .filter(|e| e.ty == "ops.task.succeeded" || e.ty == "ops.task.failed")
            .count();
        assert_eq!(finals, 1, "one final event for task {n}");
    }
    // The pods live in the tenant's namespace, labelled as Ops'.
    for pod in sim.pods() {
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ops-acme-default"));
        assert_eq!(
            pod.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "ops"
        );
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(coordinator.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = coordinator.wait();
    front.shutdown().await;
    platform.shutdown().await;
}
