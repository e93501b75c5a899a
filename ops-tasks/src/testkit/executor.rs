//! The conformance suite every [`Executor`] runs: the same programs must produce the same
//! [`ExecutorUpdate`]s and [`Outcome`]s on every engine (local processes, Kubernetes, a
//! simulator of it, a real cluster).
//!
//! A backend describes its engine with an [`ExecutorTarget`] and calls [`run_all`], or
//! calls the checks one by one (each is a public function taking the target). A failed
//! check panics with a message that starts with its name.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ops_tasks::Executor;
//! use ops_tasks::local::{CgroupMode, LocalExecutor, LocalExecutorConfig};
//! use ops_tasks::testkit::executor::{self, ExecutorTarget};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let make = || async {
//!     Arc::new(LocalExecutor::new(LocalExecutorConfig::default()).unwrap()) as Arc<dyn Executor>
//! };
//! let cgroups = LocalExecutor::new(LocalExecutorConfig::default()).unwrap().cgroup_mode();
//! let target = ExecutorTarget::new(dir.path(), make).with_memory_limits(cgroups != CgroupMode::None);
//! executor::run_all(&target).await;
//!
//! // A container engine names the image the programs run in, says when its log API
//! // merges stdout and stderr, and waits longer for image pulls:
//! let target = ExecutorTarget::new(dir.path(), make)
//!     .with_image("busybox:1.36")
//!     .with_memory_limits(true)
//!     .with_separate_stderr(false)
//!     .with_patience(Duration::from_secs(180));
//! executor::completes(&target).await;
//! # }
//! ```
//!
//! # What the checks assume
//!
//! - Programs are POSIX `sh -c` scripts using busybox-compatible commands only, so that
//!   they run unchanged in a `busybox` container. They write with relative paths, in the
//!   task directory (or its working directory); the suite reads those files from
//!   [`LaunchSpec::task_dir`] on this machine, so a container engine must mount the task
//!   directory into its containers.
//! - Nothing relies on timing tighter than a second or two; every wait for an update
//!   lasts up to [`ExecutorTarget::patience`].
//! - Scripts never signal their own shell: in a container it is PID 1, which ignores
//!   signals it has no handler for (even `SIGKILL` sent from inside the container).
//! - Every attempt is checked for well-formed updates: each names the attempt's task and
//!   attempt number; `Started` comes first and at most once; each output path is
//!   reported once; `Finished` is the last update and comes exactly once (nothing may
//!   follow it for [`SETTLE`]).
//! - The re-attach checks drop the executor that launched an attempt and make a new one
//!   (a coordinator restart): dropping an executor must leave its attempts running, and
//!   the [`RunHandle`] goes through JSON in between, as history stores it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ops_core::{Reason, Resources, TaskId, Tenant};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Executor, ExecutorUpdate, LaunchSpec, LogStream, Outcome, Reattached, RunHandle};

/// How long nothing may arrive after an attempt's `Finished`.
pub const SETTLE: Duration = Duration::from_millis(500);
/// [`ExecutorTarget::patience`] unless set.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);
/// The tenant of every attempt the suite launches.
pub const TENANT: &str = "conformance";
/// CPU every attempt requests (100m).
pub const CPU_MILLIS: u64 = 100;
/// Memory every attempt requests (64Mi), except the out-of-memory check's.
pub const MEMORY_BYTES: u64 = 64 << 20;

/// The receiving end of an attempt's updates.
pub type Updates = mpsc::UnboundedReceiver<ExecutorUpdate>;

/// Makes a fresh executor over the engine under test.
pub type MakeExecutor = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn Executor>> + Send + Sync>;

/// The engine under test and what it supports.
#[derive(Clone)]
pub struct ExecutorTarget {
    /// Makes an executor over the engine under test. Called once per check, and again in
    /// re-attach checks (the previous executor is dropped first; dropping must leave
    /// attempts running).
    pub make: MakeExecutor,
    /// Task directories are created under it (one per attempt, unique).
    pub root: PathBuf,
    /// Image for container executors (e.g. `busybox:1.36`); `None` for local.
    pub image: Option<String>,
    /// The engine enforces memory limits (cgroups, pod limits): enables
    /// [`out_of_memory`].
    pub enforces_memory: bool,
    /// Separate stdout and stderr logs (false for Kubernetes, whose log API merges them:
    /// then stderr text must appear in the stdout log).
    pub separate_stderr: bool,
    /// How long to wait for an update (or a log line) before failing (default 30 s;
    /// clusters pulling images need more).
    pub patience: Duration,
}

impl ExecutorTarget {
    /// A target whose task directories go under `root` and whose executors come from
    /// `make`; no image, memory limits not enforced, separate stderr, 30 s of patience.
    pub fn new<F, Fut>(root: impl Into<PathBuf>, make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Arc<dyn Executor>> + Send + 'static,
    {
        Self {
            make: Arc::new(move || Box::pin(make())),
            root: root.into(),
            image: None,
            enforces_memory: false,
            separate_stderr: true,
            patience: DEFAULT_PATIENCE,
        }
    }

    /// Runs the programs in `image`.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Whether the engine enforces memory limits ([`ExecutorTarget::enforces_memory`]).
    pub fn with_memory_limits(mut self, enforced: bool) -> Self {
        self.enforces_memory = enforced;
        self
    }

    /// Whether stderr has its own log ([`ExecutorTarget::separate_stderr`]).
    pub fn with_separate_stderr(mut self, separate: bool) -> Self {
        self.separate_stderr = separate;
        self
    }

    /// How long to wait for each update ([`ExecutorTarget::patience`]).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// A new executor from [`ExecutorTarget::make`].
    pub async fn executor(&self) -> Arc<dyn Executor> {
        (self.make)().await
    }
}

impl std::fmt::Debug for ExecutorTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorTarget")
            .field("root", &self.root)
            .field("image", &self.image)
            .field("enforces_memory", &self.enforces_memory)
            .field("separate_stderr", &self.separate_stderr)
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

/// Runs every check in order, each on a fresh executor. [`out_of_memory`] is skipped
/// when the target does not enforce memory limits.
pub async fn run_all(target: &ExecutorTarget) {
    macro_rules! check {
        ($name:ident) => {{
            tracing::info!(check = stringify!($name), "executor conformance");
            $name(target).await;
        }};
    }
    check!(completes);
    check!(non_zero_exit);
    check!(signaled);
    check!(command_not_found);
    check!(environment_and_workdir);
    check!(outputs);
    check!(timeout);
    check!(cancel);
    check!(out_of_memory);
    check!(concurrent);
    check!(reattach_running);
    check!(reattach_finished);
    check!(reattach_unknown);
}

/// Attempt 1 of a new task of tenant [`TENANT`] running `argv`, in a fresh directory
/// under [`ExecutorTarget::root`] (named after the task id), in the target's image,
/// requesting [`CPU_MILLIS`] and [`MEMORY_BYTES`].
pub fn spec(target: &ExecutorTarget, argv: &[&str]) -> LaunchSpec {
    let task_id = TaskId::new();
    let mut spec = LaunchSpec::new(
        Tenant::parse(TENANT).expect("a valid tenant"),
        argv.iter().map(|a| (*a).to_owned()).collect(),
        target.root.join(task_id.to_string()),
    );
    spec.task_id = task_id;
    spec.image = target.image.clone();
    spec.resources = Resources::new(CPU_MILLIS, MEMORY_BYTES);
    spec
}

/// A `sh -c` spec for `script` (see [`spec`]).
pub fn script(target: &ExecutorTarget, script: &str) -> LaunchSpec {
    spec(target, &["sh", "-c", script])
}

/// Launches `spec` on `executor` with a new channel; panics (naming `check`) when
/// `launch` fails or returns a handle of another attempt or executor.
pub async fn launch(
    check: &str,
    executor: &dyn Executor,
    spec: &LaunchSpec,
) -> (RunHandle, Updates) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = executor
        .launch(spec.clone(), tx)
        .await
        .unwrap_or_else(|e| panic!("{check}: launch failed: {e}"));
    check_handle(check, executor, spec, &handle);
    (handle, rx)
}

/// The handle names the executor and the attempt, and survives a trip through JSON.
fn check_handle(check: &str, executor: &dyn Executor, spec: &LaunchSpec, handle: &RunHandle) {
    assert_eq!(
        (handle.executor.as_str(), handle.task_id, handle.attempt),
        (executor.name(), spec.task_id, spec.attempt),
        "{check}: the run handle names another executor or attempt: {handle:?}"
    );
    let json = serde_json::to_string(handle)
        .unwrap_or_else(|e| panic!("{check}: the run handle does not serialize: {e}"));
    let back: RunHandle = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{check}: the run handle does not deserialize: {e}"));
    assert_eq!(
        &back, handle,
        "{check}: the run handle changed through JSON"
    );
}

/// The handle as history would give it back (through JSON).
fn stored(handle: &RunHandle) -> RunHandle {
    serde_json::from_value(serde_json::to_value(handle).expect("run handle to JSON"))
        .expect("run handle from JSON")
}

/// The attempt number an update is about.
fn attempt_of(update: &ExecutorUpdate) -> u32 {
    match update {
        ExecutorUpdate::Started { attempt, .. }
        | ExecutorUpdate::OutputCreated { attempt, .. }
        | ExecutorUpdate::Finished { attempt, .. } => *attempt,
    }
}

/// Waits up to `patience` for the next update on `rx`, which must be about `spec`'s
/// attempt; panics (naming `check`) on a timeout, a closed channel or an update about
/// another attempt.
pub async fn next_update(
    check: &str,
    rx: &mut Updates,
    spec: &LaunchSpec,
    patience: Duration,
) -> ExecutorUpdate {
    let update = match tokio::time::timeout(patience, rx.recv()).await {
        Ok(Some(update)) => update,
        Ok(None) => panic!("{check}: the update channel closed before Finished"),
        Err(_) => panic!("{check}: no update within {patience:?}"),
    };
    assert_eq!(
        (update.task_id(), attempt_of(&update)),
        (spec.task_id, spec.attempt),
        "{check}: update about another attempt: {update:?}"
    );
    update
}

/// Collects `spec`'s updates until its `Finished` (waiting up to `patience` for each)
/// and makes sure nothing follows it for [`SETTLE`]. Checks that the updates are well
/// formed (`Started` first and at most once, each output path once). Returns every
/// update, `Finished` last, and the outcome.
pub async fn until_finished(
    check: &str,
    rx: &mut Updates,
    spec: &LaunchSpec,
    patience: Duration,
) -> (Vec<ExecutorUpdate>, Outcome) {
    let mut seen = Vec::new();
    loop {
        let update = next_update(check, rx, spec, patience).await;
        let done = matches!(update, ExecutorUpdate::Finished { .. });
        seen.push(update);
        if done {
            break;
        }
    }
    if let Ok(Some(extra)) = tokio::time::timeout(SETTLE, rx.recv()).await {
        panic!("{check}: update after Finished: {extra:?} (after {seen:?})");
    }
    check_sequence(check, &seen);
    let Some(ExecutorUpdate::Finished { outcome, .. }) = seen.last() else {
        unreachable!("the loop ends at Finished");
    };
    let outcome = outcome.clone();
    (seen, outcome)
}

/// One attempt's updates, `Finished` last: `Started` first and at most once, each output
/// path once, exactly one `Finished`.
fn check_sequence(check: &str, updates: &[ExecutorUpdate]) {
    let mut paths = BTreeSet::new();
    for (i, u) in updates.iter().enumerate() {
        match u {
            ExecutorUpdate::Started { .. } => {
                assert_eq!(
                    i, 0,
                    "{check}: Started is not the first update: {updates:?}"
                );
            }
            ExecutorUpdate::OutputCreated { path, .. } => {
                assert!(
                    paths.insert(path.clone()),
                    "{check}: output {path} reported twice: {updates:?}"
                );
            }
            ExecutorUpdate::Finished { .. } => {
                assert_eq!(
                    i,
                    updates.len() - 1,
                    "{check}: Finished is not the last update: {updates:?}"
                );
            }
        }
    }
    assert!(
        matches!(updates.last(), Some(ExecutorUpdate::Finished { .. })),
        "{check}: no Finished: {updates:?}"
    );
}

/// Waits for `spec`'s `Started`; panics (naming `check`) on anything else.
pub async fn until_started(check: &str, rx: &mut Updates, spec: &LaunchSpec, patience: Duration) {
    match next_update(check, rx, spec, patience).await {
        ExecutorUpdate::Started { .. } => {}
        other => panic!("{check}: expected Started, got {other:?}"),
    }
}

/// Polls the file at `path` for up to `patience` until it contains `needle`; returns its
/// text. Logs of a remote engine may be complete only a little after `Finished`.
pub async fn wait_for_text(check: &str, path: &Path, needle: &str, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        if Instant::now() >= deadline {
            panic!(
                "{check}: {} does not contain {needle:?} after {patience:?}: {text:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the file at `relative` in `spec`'s task directory.
fn read_task_file(check: &str, spec: &LaunchSpec, relative: &str) -> String {
    let path = spec.task_dir.join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{check}: cannot read {}: {e}", path.display()))
}

/// Launches `spec` on a new executor and returns its updates and outcome.
async fn run(
    check: &str,
    target: &ExecutorTarget,
    spec: &LaunchSpec,
) -> (Vec<ExecutorUpdate>, Outcome) {
    let executor = target.executor().await;
    let (_handle, mut rx) = launch(check, &*executor, spec).await;
    until_finished(check, &mut rx, spec, target.patience).await
}

/// `echo hello; echo oops >&2` is `Started`, then `Finished` with reason `Completed` and
/// exit code 0; "hello" is in the stdout log, "oops" in the stderr log (in the stdout log
/// when the engine merges them).
pub async fn completes(target: &ExecutorTarget) {
    const C: &str = "completes";
    let executor = target.executor().await;
    let spec = script(target, "echo hello; echo oops >&2");
    let (_handle, mut rx) = launch(C, &*executor, &spec).await;
    let (updates, outcome) = until_finished(C, &mut rx, &spec, target.patience).await;
    assert!(
        matches!(updates.first(), Some(ExecutorUpdate::Started { .. })),
        "{C}: no Started before Finished: {updates:?}"
    );
    assert_eq!(
        updates.len(),
        2,
        "{C}: only Started and Finished: {updates:?}"
    );
    assert_eq!(
        (outcome.reason, outcome.exit_code, outcome.signal),
        (Reason::Completed, Some(0), None),
        "{C}: {outcome:?}"
    );
    assert!(outcome.succeeded(), "{C}: {outcome:?}");

    let stdout = executor.log_path(&spec.task_dir, LogStream::Stdout);
    wait_for_text(C, &stdout, "hello", target.patience).await;
    if target.separate_stderr {
        let stderr = executor.log_path(&spec.task_dir, LogStream::Stderr);
        wait_for_text(C, &stderr, "oops", target.patience).await;
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        assert!(
            !out.contains("oops"),
            "{C}: stderr text in the stdout log: {out:?}"
        );
    } else {
        wait_for_text(C, &stdout, "oops", target.patience).await;
    }
}

/// `exit 3` ends with reason `NonZeroExit` and exit code 3.
pub async fn non_zero_exit(target: &ExecutorTarget) {
    const C: &str = "non_zero_exit";
    let spec = script(target, "exit 3");
    let (_, outcome) = run(C, target, &spec).await;
    assert_eq!(
        (outcome.reason, outcome.exit_code, outcome.signal),
        (Reason::NonZeroExit, Some(3), None),
        "{C}: {outcome:?}"
    );
    assert!(!outcome.succeeded(), "{C}: {outcome:?}");
}

/// A program killed by `SIGKILL` ends with reason `Signaled` and signal 9.
///
/// The script kills a child shell and exits with its status (137): its own shell may be
/// PID 1 of a container, which cannot be killed from inside. Engines report a program
/// killed by signal `N` and one exiting with `128 + N` alike (as Docker and Kubernetes
/// do), so only the reason and the signal are checked, not the exit code.
pub async fn signaled(target: &ExecutorTarget) {
    const C: &str = "signaled";
    let spec = script(target, "sh -c 'kill -9 $$'; exit $?");
    let (_, outcome) = run(C, target, &spec).await;
    assert_eq!(
        (outcome.reason, outcome.signal),
        (Reason::Signaled, Some(9)),
        "{C}: {outcome:?}"
    );
}

/// A program that does not exist: `launch` succeeds and a `Finished` with reason
/// `CommandNotFound` follows (a `Started` before it is allowed, not required); its
/// message names the program.
pub async fn command_not_found(target: &ExecutorTarget) {
    const C: &str = "command_not_found";
    const PROGRAM: &str = "ops-conformance-no-such-program";
    let spec = spec(target, &[PROGRAM]);
    let (updates, outcome) = run(C, target, &spec).await;
    assert!(
        updates
            .iter()
            .all(|u| !matches!(u, ExecutorUpdate::OutputCreated { .. })),
        "{C}: {updates:?}"
    );
    assert_eq!(outcome.reason, Reason::CommandNotFound, "{C}: {outcome:?}");
    assert!(
        outcome
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(PROGRAM),
        "{C}: the message does not name the program: {outcome:?}"
    );
}

/// The spec's environment variables and `OPS_TASK_ID` reach the program, which runs in
/// the spec's working directory (relative to the task directory).
pub async fn environment_and_workdir(target: &ExecutorTarget) {
    const C: &str = "environment_and_workdir";
    let mut spec = script(
        target,
        r#"echo "$FOO" > foo.txt; echo "$OPS_TASK_ID" > id.txt"#,
    );
    spec.env = BTreeMap::from([("FOO".to_owned(), "bar".to_owned())]);
    spec.workdir = Some(PathBuf::from("sub"));
    let (_, outcome) = run(C, target, &spec).await;
    assert_eq!(outcome.reason, Reason::Completed, "{C}: {outcome:?}");
    assert_eq!(
        read_task_file(C, &spec, "sub/foo.txt"),
        "bar\n",
        "{C}: $FOO"
    );
    assert_eq!(
        read_task_file(C, &spec, "sub/id.txt"),
        format!("{}\n", spec.task_id),
        "{C}: $OPS_TASK_ID"
    );
}

/// A file matching the output globs is reported once, with its size, before `Finished`;
/// one that does not match is not.
pub async fn outputs(target: &ExecutorTarget) {
    const C: &str = "outputs";
    let mut spec = script(
        target,
        "mkdir -p out; echo x > out/a.txt; echo y > out/b.log",
    );
    spec.output_globs = vec!["out/*.txt".to_owned()];
    let (updates, outcome) = run(C, target, &spec).await;
    assert_eq!(outcome.reason, Reason::Completed, "{C}: {outcome:?}");
    let outputs: Vec<(&str, u64)> = updates
        .iter()
        .filter_map(|u| match u {
            ExecutorUpdate::OutputCreated { path, size, .. } => Some((path.as_str(), *size)),
            _ => None,
        })
        .collect();
    assert_eq!(outputs, [("out/a.txt", 2)], "{C}: {updates:?}");
}

/// `sleep 30` with a 2 s timeout ends with reason `TimedOut`, not before the timeout.
pub async fn timeout(target: &ExecutorTarget) {
    const C: &str = "timeout";
    let mut spec = script(target, "sleep 30");
    spec.timeout = Some(Duration::from_secs(2));
    let launched = Instant::now();
    let (_, outcome) = run(C, target, &spec).await;
    assert_eq!(outcome.reason, Reason::TimedOut, "{C}: {outcome:?}");
    assert!(
        launched.elapsed() >= Duration::from_secs(1),
        "{C}: timed out after {:?}, before its 2 s timeout",
        launched.elapsed()
    );
}

/// Cancelling a running attempt ends it with reason `Cancelled`, once; cancelling it
/// again, and after it ended, is not an error.
pub async fn cancel(target: &ExecutorTarget) {
    const C: &str = "cancel";
    let executor = target.executor().await;
    let spec = script(target, "sleep 30");
    let (handle, mut rx) = launch(C, &*executor, &spec).await;
    until_started(C, &mut rx, &spec, target.patience).await;
    let cancelled = Instant::now();
    executor
        .cancel(&handle)
        .await
        .unwrap_or_else(|e| panic!("{C}: cancel failed: {e}"));
    executor
        .cancel(&handle)
        .await
        .unwrap_or_else(|e| panic!("{C}: cancelling twice failed: {e}"));
    let (_, outcome) = until_finished(C, &mut rx, &spec, target.patience).await;
    assert_eq!(outcome.reason, Reason::Cancelled, "{C}: {outcome:?}");
    assert!(
        cancelled.elapsed() < Duration::from_secs(25),
        "{C}: the attempt ran to its end ({:?})",
        cancelled.elapsed()
    );
    executor
        .cancel(&handle)
        .await
        .unwrap_or_else(|e| panic!("{C}: cancelling after the end failed: {e}"));
    if let Ok(Some(extra)) = tokio::time::timeout(SETTLE, rx.recv()).await {
        panic!("{C}: update after a cancel of an ended attempt: {extra:?}");
    }
}

/// With 48Mi of memory, a program that buffers 300 MB ends with reason `OutOfMemory`.
/// Skipped when the target does not enforce memory limits.
pub async fn out_of_memory(target: &ExecutorTarget) {
    const C: &str = "out_of_memory";
    if !target.enforces_memory {
        tracing::info!(
            check = C,
            "skipped: the engine does not enforce memory limits"
        );
        return;
    }
    let mut spec = script(target, "head -c 300000000 /dev/zero | tail");
    spec.resources.memory_bytes = 48 << 20;
    let (_, outcome) = run(C, target, &spec).await;
    assert_eq!(outcome.reason, Reason::OutOfMemory, "{C}: {outcome:?}");
}

/// 16 attempts launched at once, sharing one channel, each exit with its own code
/// (`i % 3`) and each gets exactly one `Finished`.
pub async fn concurrent(target: &ExecutorTarget) {
    const C: &str = "concurrent";
    const N: usize = 16;
    let executor = target.executor().await;
    let specs: Vec<LaunchSpec> = (0..N)
        .map(|i| script(target, &format!("exit {}", i % 3)))
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let launches = specs.iter().map(|s| executor.launch(s.clone(), tx.clone()));
    let handles = futures::future::join_all(launches).await;
    drop(tx);
    for (spec, handle) in specs.iter().zip(handles) {
        let handle = handle.unwrap_or_else(|e| panic!("{C}: launch failed: {e}"));
        check_handle(C, &*executor, spec, &handle);
    }

    let expected: HashMap<TaskId, i32> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.task_id, (i % 3) as i32))
        .collect();
    let mut seen: HashMap<TaskId, Vec<ExecutorUpdate>> = HashMap::new();
    let mut finished = 0;
    while finished < N {
        let update = match tokio::time::timeout(target.patience, rx.recv()).await {
            Ok(Some(u)) => u,
            Ok(None) => panic!("{C}: the channel closed after {finished} of {N} Finished"),
            Err(_) => panic!(
                "{C}: no update within {:?}; {finished} of {N} finished",
                target.patience
            ),
        };
        assert!(
            expected.contains_key(&update.task_id()) && attempt_of(&update) == 1,
            "{C}: update about an unknown attempt: {update:?}"
        );
        if matches!(update, ExecutorUpdate::Finished { .. }) {
            finished += 1;
        }
        seen.entry(update.task_id()).or_default().push(update);
    }
    if let Ok(Some(extra)) = tokio::time::timeout(SETTLE, rx.recv()).await {
        panic!("{C}: update after every attempt finished: {extra:?}");
    }
    for spec in &specs {
        let updates = seen.get(&spec.task_id).cloned().unwrap_or_default();
        let finishes: Vec<&Outcome> = updates
            .iter()
            .filter_map(|u| match u {
                ExecutorUpdate::Finished { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect();
        assert_eq!(
            finishes.len(),
            1,
            "{C}: task {} got {} Finished: {updates:?}",
            spec.task_id,
            finishes.len()
        );
        check_sequence(C, &updates);
        let code = expected[&spec.task_id];
        let reason = if code == 0 {
            Reason::Completed
        } else {
            Reason::NonZeroExit
        };
        assert_eq!(
            (finishes[0].reason, finishes[0].exit_code),
            (reason, Some(code)),
            "{C}: task {} ran `exit {code}`: {:?}",
            spec.task_id,
            finishes[0]
        );
    }
}

/// After a restart (the executor dropped, a new one made), re-attaching to an attempt
/// that still runs says `Running`, and its `Finished` (`Completed`) arrives on the new
/// channel; the attempt ran to its end.
pub async fn reattach_running(target: &ExecutorTarget) {
    const C: &str = "reattach_running";
    let first = target.executor().await;
    let spec = script(target, "sleep 3; echo done > done.txt");
    let (handle, mut old_rx) = launch(C, &*first, &spec).await;
    until_started(C, &mut old_rx, &spec, target.patience).await;
    let handle = stored(&handle);
    drop(first);

    let second = target.executor().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    match second.reattach(&handle, &spec, tx).await {
        Ok(Reattached::Running) => {}
        Ok(Reattached::Gone(o)) => {
            panic!("{C}: re-attach says the attempt is gone ({o:?}) while it should still run")
        }
        Err(e) => panic!("{C}: re-attach failed: {e}"),
    }
    let (_, outcome) = until_finished(C, &mut rx, &spec, target.patience).await;
    assert_eq!(
        (outcome.reason, outcome.exit_code),
        (Reason::Completed, Some(0)),
        "{C}: {outcome:?}"
    );
    assert_eq!(read_task_file(C, &spec, "done.txt"), "done\n", "{C}");
}

/// After a restart, re-attaching to an attempt that ended while nobody watched says how
/// it ended (`NonZeroExit`, exit code 4): either `Gone` with that outcome, or `Running`
/// followed by a `Finished` with it.
pub async fn reattach_finished(target: &ExecutorTarget) {
    const C: &str = "reattach_finished";
    let first = target.executor().await;
    let spec = script(target, "sleep 1; exit 4");
    let (handle, mut old_rx) = launch(C, &*first, &spec).await;
    until_started(C, &mut old_rx, &spec, target.patience).await;
    let handle = stored(&handle);
    drop(first);
    // Nobody watches while it ends.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let second = target.executor().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = match second.reattach(&handle, &spec, tx).await {
        Ok(Reattached::Gone(o)) => o,
        Ok(Reattached::Running) => until_finished(C, &mut rx, &spec, target.patience).await.1,
        Err(e) => panic!("{C}: re-attach failed: {e}"),
    };
    assert_eq!(
        (outcome.reason, outcome.exit_code),
        (Reason::NonZeroExit, Some(4)),
        "{C}: {outcome:?}"
    );
}

/// Re-attaching with a handle of an attempt that never ran (a real handle of a finished
/// attempt, given another task id) either fails or says the attempt is lost (reason
/// `CoordinatorLost`, through `Gone` or through `Running` then `Finished`); it never
/// reports the other attempt's outcome.
pub async fn reattach_unknown(target: &ExecutorTarget) {
    const C: &str = "reattach_unknown";
    let first = target.executor().await;
    let finished = script(target, "exit 5");
    let (handle, mut rx) = launch(C, &*first, &finished).await;
    let (_, outcome) = until_finished(C, &mut rx, &finished, target.patience).await;
    assert_eq!(outcome.exit_code, Some(5), "{C}: {outcome:?}");
    drop(first);

    let never = script(target, "exit 5");
    let mut forged = stored(&handle);
    forged.task_id = never.task_id;
    let second = target.executor().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = match second.reattach(&forged, &never, tx).await {
        Err(_) => return,
        Ok(Reattached::Gone(o)) => o,
        Ok(Reattached::Running) => until_finished(C, &mut rx, &never, target.patience).await.1,
    };
    assert_eq!(
        outcome.reason,
        Reason::CoordinatorLost,
        "{C}: an attempt that never ran: {outcome:?}"
    );
}
