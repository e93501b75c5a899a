//! The executor conformance suite (`ops_tasks::testkit::executor`) on the local executor.
//!
//! Cgroups are detected (`OPS_TEST_CGROUPS=none|v1|v2|auto` forces a mode, as in
//! `local_executor.rs`); the out-of-memory check runs only when cgroups are in use.

use std::sync::Arc;
use std::time::Duration;

use ops_tasks::Executor;
use ops_tasks::local::{CgroupMode, LocalExecutor, LocalExecutorConfig};
use ops_tasks::testkit::executor::{self, ExecutorTarget};
use serde_json::json;

fn config() -> LocalExecutorConfig {
    let mut c = LocalExecutorConfig::default();
    if let Ok(mode) = std::env::var("OPS_TEST_CGROUPS") {
        c.cgroups =
            serde_json::from_value(json!(mode)).expect("OPS_TEST_CGROUPS: none, v1, v2 or auto");
    }
    c.kill_grace = Duration::from_secs(1);
    c.poll_interval = Duration::from_millis(50);
    c
}

#[tokio::test]
async fn local_executor_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let mode = LocalExecutor::new(config())
        .expect("local executor")
        .cgroup_mode();
    let target = ExecutorTarget::new(dir.path(), || async {
        Arc::new(LocalExecutor::new(config()).expect("local executor")) as Arc<dyn Executor>
    })
    .with_memory_limits(mode != CgroupMode::None);
    executor::run_all(&target).await;
}
