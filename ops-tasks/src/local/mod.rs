//! The `local` executor: runs each task attempt as a group of processes on this machine,
//! limited and measured through cgroups.
//!
//! # How an attempt runs
//!
//! - **Directory and environment.** The attempt runs in `task_dir` (joined with the
//!   spec's `workdir`, which may not leave it), with a clean environment: `PATH`
//!   ([`LocalExecutorConfig::path`]), `HOME` (the task directory), `LANG=C.UTF-8`, the
//!   spec's variables, then `OPS_TASK_ID`, `OPS_ATTEMPT`, `OPS_TASK_DIR` and, on a host
//!   with GPUs, `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` naming the attempt's GPUs
//!   (empty/`none` when it has none). Standard input is `/dev/null`; standard output
//!   and error are appended to `task_dir/.ops/stdout.log` and `.ops/stderr.log`
//!   ([`Executor::log_path`]); [`follow_log`](crate::taskdir::follow_log) streams them live (the
//!   [task-directory protocol](crate::taskdir)).
//! - **The wrapper.** The program is found on `PATH` first (so a missing program is a
//!   `Finished` update with reason `CommandNotFound` naming it), then started under a
//!   fixed `/bin/sh` script (the wrapper) in a new process group. The wrapper writes its
//!   own pid into the attempt's `cgroup.procs` files, so everything the task forks is
//!   born inside its cgroups, then runs the program as its child with the arguments as
//!   separate `argv` entries (nothing from the task is ever interpreted by a shell), and
//!   records the exit status in `.ops/exit-<attempt>`. The wrapper does not `exec`: a
//!   coordinator that restarts is no longer the parent of anything and could not learn
//!   the exit status otherwise. The program sees its absolute path as `argv[0]`.
//! - **Exit status.** `0` is `Completed`; another code is `NonZeroExit`; a program killed
//!   by signal `N` reaches the wrapper as status `128 + N` and is reported as `Signaled`
//!   with `signal = N` (as Docker and Kubernetes do: a program that itself exits with
//!   129–192 is reported the same way). An OOM kill counted by the cgroup is
//!   `OutOfMemory`; a kill by the executor is `TimedOut`, `Cancelled`, `Preempted` or
//!   `OutOfMemory` (watchdog) whatever the status. When the main program ends, processes it left
//!   behind are killed (as when a container's init exits).
//! - **Stopping.** Timeout and cancel send SIGTERM to the process group and to every
//!   process of the cgroup, wait [`LocalExecutorConfig::kill_grace`], then SIGKILL
//!   (`cgroup.kill` on v2). [`Executor::preempt`] does the same with the grace it is
//!   given (the time a scavenger task has to checkpoint) and reports `Preempted`. Children that left the process group (`setsid`, double fork)
//!   are still in the cgroup, so they die too; without cgroups only the process group is
//!   reached.
//! - **Outputs.** The task directory (minus `.ops/`) is scanned every
//!   [`LocalExecutorConfig::poll_interval`] and once more at exit; a file matching an
//!   output glob is reported once, when its size and modification time are stable over
//!   two scans (or at the final scan). Symlinks are not followed; a symlink is reported
//!   only when it resolves inside the task directory.
//! - **GPUs** come from `nvidia-smi` (or [`LocalExecutorConfig::gpus`]) and are
//!   assigned exclusively; not enough free GPUs makes `launch` fail with
//!   [`Error::Executor`].
//!
//! # Cgroups
//!
//! At start-up ([`CgroupMode::Auto`]) the executor uses cgroup v2 if the memory
//! controller can be enabled for its children, else cgroup v1 if the `memory` hierarchy
//! is writable, else none; [`LocalExecutor::cgroup_mode`] says which (and it is logged).
//! Each attempt gets `<parent>/<task id>-<attempt>` in every hierarchy used, where
//! `<parent>` ([`LocalExecutorConfig::cgroup_parent`], default `ops`) sits under the
//! executor's own cgroup. Limits: memory (v1: `memory.limit_in_bytes` and
//! `memory.memsw.limit_in_bytes`; v2: `memory.max`, `memory.swap.max = 0` and
//! `memory.oom.group`), CPU (CFS quota from the millicores) and processes (`pids.max`:
//! [`LocalExecutorConfig::pids_max`] plus one for the wrapper).
//! Usage comes from the cgroup: `cpuacct.usage` / `cpu.stat`, and
//! `memory.max_usage_in_bytes` / `memory.peak` (which count page cache, like Kubernetes).
//! The cgroup is removed when the attempt ends.
//!
//! **Without cgroups** nothing is enforced by the kernel: the executor polls the resident
//! memory of the process group from `/proc` and kills the attempt with reason
//! `OutOfMemory` when it exceeds its memory request (a spike shorter than the poll
//! interval goes unnoticed); CPU and process-count limits are not enforced; CPU time and
//! peak memory are sampled from `/proc` (plus the CPU time the wrapper's `times` reports
//! for the children it waited for); processes that leave the process group escape kills.
//!
//! # Restarts
//!
//! The [`RunHandle`] detail holds the attempt it belongs to (a handle naming another
//! attempt finds nothing: `Gone` with `CoordinatorLost`), the wrapper's pid and start
//! time (field 22 of `/proc/<pid>/stat`, which detects pid reuse), the cgroup, the GPUs,
//! the start time and the log offsets. Dropping a [`LocalExecutor`] (or calling [`LocalExecutor::detach`])
//! leaves attempts running, as a crash would. [`Executor::reattach`] on a new executor
//! finds a live wrapper (then it polls `/proc`, enforces what remains of the timeout,
//! scans outputs and sends `Finished` with the status the wrapper records), or returns
//! `Gone` with the recorded status, or `CoordinatorLost` when there is none.
//!
//! Tasks run with the coordinator's user id; the cgroups limit resources, they are not
//! a security boundary for the file system or the network.
//!
//! ```
//! use ops_tasks::Executor;
//! use ops_tasks::local::{CgroupMode, LocalExecutor, LocalExecutorConfig};
//!
//! // Every field has a default; a config file sets only what it changes.
//! let config: LocalExecutorConfig = toml::from_str(r#"
//!     cgroups = "none"
//!     kill_grace = "5s"
//!     gpus = [{ index = 0, name = "NVIDIA L4" }]
//! "#).unwrap();
//! let executor = LocalExecutor::new(config)?;
//! assert_eq!(executor.name(), "local");
//! assert_eq!(executor.cgroup_mode(), CgroupMode::None);
//! assert_eq!(executor.capacity().gpus.count, 1);
//! assert!(executor.capacity().cpu_millis >= 1000);
//! # Ok::<(), ops_tasks::Error>(())
//! ```

mod cgroup;
mod config;
mod gpu;
mod process;
mod usage;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use ops_core::{Reason, Resources, TaskId, Usage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub use config::{CgroupMode, GpuDevice, LocalExecutorConfig};

use cgroup::{CgroupRoots, Limits, TaskCgroup};
use gpu::GpuPool;
use process::Program;
use usage::ProcMeter;

use crate::executor::{
    Executor, ExecutorUpdate, LaunchSpec, LogStream, Outcome, Reattached, RunHandle,
};
use crate::taskdir::{self, ExitRecord, OPS_DIR, OutputScanner, log_path, open_append};
use crate::{Error, Result};

/// [`Executor::name`] of this executor.
const NAME: &str = "local";
/// How long leftover processes may take to disappear after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

type Key = (TaskId, u32);

/// Runs task attempts as processes on this machine. See the [module docs](self).
///
/// Dropping it leaves running attempts alone (see [`LocalExecutor::detach`]).
#[derive(Debug)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LocalExecutorConfig,
    cgroups: CgroupRoots,
    gpus: GpuPool,
    capacity: Resources,
    running: Mutex<HashMap<Key, mpsc::UnboundedSender<Control>>>,
    detach: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cgroups.remove_parents();
    }
}

/// A request to the watcher of one attempt.
enum Control {
    /// Stop the attempt: SIGTERM, then SIGKILL after `grace`; `ack` once begun.
    Stop {
        reason: Reason,
        grace: Duration,
        ack: oneshot::Sender<()>,
    },
}

/// What the run handle remembers (the `detail` of [`RunHandle`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct HandleDetail {
    /// The attempt these details belong to (absent in handles written before it was
    /// recorded): a handle naming another attempt finds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    /// The wrapper's pid (also the process group); absent when nothing was started.
    #[serde(default)]
    pid: Option<i32>,
    /// Field 22 of `/proc/<pid>/stat`.
    #[serde(default)]
    start_ticks: u64,
    task_dir: PathBuf,
    #[serde(default)]
    cgroup: Option<TaskCgroup>,
    #[serde(default)]
    gpus: Vec<String>,
    started_at: DateTime<Utc>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Sizes of the logs when the attempt started: where its output begins.
    #[serde(default)]
    stdout_offset: u64,
    #[serde(default)]
    stderr_offset: u64,
}

impl LocalExecutor {
    /// An executor with `config`: detects cgroups, GPUs and capacity. Fails when an
    /// explicitly requested cgroup mode is unusable or the configuration is invalid.
    pub fn new(config: LocalExecutorConfig) -> Result<Self> {
        let mut problems = Vec::new();
        if config.poll_interval < Duration::from_millis(10) {
            problems.push(format!(
                "poll_interval: {:?} is too short (at least 10ms)",
                config.poll_interval
            ));
        }
        let devices = match &config.gpus {
            Some(list) => {
                let mut seen = BTreeSet::new();
                for (i, d) in list.iter().enumerate() {
                    if d.index.is_none() && d.uuid.is_none() {
                        problems.push(format!("gpus[{i}]: {:?} needs an index or a uuid", d.name));
                    } else if !seen.insert(d.id()) {
                        problems.push(format!("gpus[{i}]: GPU {} is listed twice", d.id()));
                    }
                }
                list.clone()
            }
            None => gpu::detect(),
        };
        if !problems.is_empty() {
            return Err(Error::InvalidConfig { problems });
        }
        let cgroups = CgroupRoots::detect(config.cgroups, &config.cgroup_parent)?;
        let capacity = match &config.capacity {
            Some(c) => c.clone(),
            None => detect_capacity(&devices),
        };
        tracing::info!(
            cgroups = %cgroups.mode(),
            cgroup_dirs = ?cgroups.parent_dirs(),
            gpus = devices.len(),
            cpu_millis = capacity.cpu_millis,
            memory_bytes = capacity.memory_bytes,
            "local executor ready"
        );
        let (detach, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                cgroups,
                gpus: GpuPool::new(devices),
                capacity,
                running: Mutex::new(HashMap::new()),
                detach,
            }),
        })
    }

    /// The cgroup interface in use: `V1`, `V2` or `None` (never `Auto`).
    pub fn cgroup_mode(&self) -> CgroupMode {
        self.inner.cgroups.mode()
    }

    /// The GPUs this executor hands out.
    pub fn gpus(&self) -> Vec<GpuDevice> {
        self.inner.gpus.devices()
    }

    /// The GPUs held now, each with the task and attempt holding it (for monitoring:
    /// which task sits on which GPU).
    pub fn gpu_holders(&self) -> Vec<(GpuDevice, TaskId, u32)> {
        self.inner
            .gpus
            .held()
            .into_iter()
            .map(|(device, (task, attempt))| (device, task, attempt))
            .collect()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &LocalExecutorConfig {
        &self.inner.config
    }

    /// Stops watching every attempt without touching the processes, as if the
    /// coordinator had crashed: no more updates are sent; another executor can
    /// [`reattach`](Executor::reattach). Dropping the executor does the same.
    pub fn detach(&self) {
        self.inner.detach.send_replace(true);
    }

    /// Cancels every attempt this executor watches and waits until each has begun
    /// stopping; their `Finished` updates (reason `Cancelled`) follow. For orderly stops
    /// and tests: a coordinator whose tasks should survive its restart just drops the
    /// executor instead.
    pub async fn shutdown(&self) {
        let controls: Vec<_> = lock(&self.inner.running).values().cloned().collect();
        let grace = self.inner.config.kill_grace;
        for control in controls {
            let (ack, acked) = oneshot::channel();
            let stop = Control::Stop {
                reason: Reason::Cancelled,
                grace,
                ack,
            };
            if control.send(stop).is_ok() {
                let _ = acked.await;
            }
        }
    }

    /// Where an attempt's output starts in its log files (stdout, stderr): the sizes of
    /// the logs when it started. `None` for a handle of another executor.
    pub fn log_offsets(handle: &RunHandle) -> Option<(u64, u64)> {
        let d: HandleDetail = serde_json::from_value(handle.detail.clone()).ok()?;
        Some((d.stdout_offset, d.stderr_offset))
    }

    /// Stops an attempt with `reason` (`Cancelled` or `Preempted`): SIGTERM, then SIGKILL
    /// after `grace`. Returns once the stop has begun; an attempt that already ended is
    /// not an error.
    async fn stop(&self, handle: &RunHandle, reason: Reason, grace: Duration) -> Result<()> {
        check_handle(handle)?;
        let key = (handle.task_id, handle.attempt);
        let control = lock(&self.inner.running).get(&key).cloned();
        if let Some(control) = control {
            let (ack, acked) = oneshot::channel();
            let stop = Control::Stop { reason, grace, ack };
            if control.send(stop).is_ok() {
                let _ = acked.await;
            }
            return Ok(());
        }
        // Not watched by this executor (e.g. after a restart, before reattach): stop it
        // anyway if it still runs.
        let Some(detail) = handle_detail(handle)? else {
            return Ok(());
        };
        if let Some(pid) = detail.pid
            && process::is_alive(pid, detail.start_ticks)
        {
            tracing::info!(task_id = %key.0, attempt = key.1, pid, ?reason, "stopping an unwatched attempt");
            let kill_all = move |signal: Signal| {
                if process::is_alive(pid, detail.start_ticks) {
                    process::signal_group(pid, signal);
                }
                if let Some(cg) = &detail.cgroup {
                    cg.signal_all(signal);
                }
            };
            kill_all(Signal::SIGTERM);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                kill_all(Signal::SIGKILL);
            });
        }
        Ok(())
    }
}

impl Drop for LocalExecutor {
    fn drop(&mut self) {
        self.detach();
    }
}

fn detect_capacity(gpus: &[GpuDevice]) -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let mut names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
    names.dedup();
    let model = (names.len() == 1 && !names[0].is_empty()).then(|| names[0].to_owned());
    Resources::new(cpus * 1000, memory).with_gpus(gpus.len() as u32, model)
}

fn executor_error(message: impl Into<String>) -> Error {
    Error::Executor {
        executor: NAME.to_owned(),
        message: message.into(),
    }
}

fn exit_file(task_dir: &Path, attempt: u32) -> PathBuf {
    taskdir::exit_path(task_dir, attempt)
}

fn finished(key: Key, outcome: Outcome) -> ExecutorUpdate {
    ExecutorUpdate::Finished {
        task_id: key.0,
        attempt: key.1,
        outcome,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Executor for LocalExecutor {
    fn name(&self) -> &str {
        NAME
    }

    fn capacity(&self) -> Resources {
        self.inner.capacity.clone()
    }

    async fn launch(
        &self,
        spec: LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<RunHandle> {
        let inner = &self.inner;
        let key = (spec.task_id, spec.attempt);
        if lock(&inner.running).contains_key(&key) {
            return Err(executor_error(format!(
                "task {} attempt {} is already running",
                key.0, key.1
            )));
        }
        let globs = taskdir::build_globs(&spec.output_globs)?;

        // Directories: the task's, `.ops/` (never through a symlink), the working one.
        std::fs::create_dir_all(&spec.task_dir).map_err(|e| Error::io(&spec.task_dir, e))?;
        let task_dir = spec
            .task_dir
            .canonicalize()
            .map_err(|e| Error::io(&spec.task_dir, e))?;
        let ops_dir = taskdir::resolve_within(&task_dir, Path::new(OPS_DIR))?;
        std::fs::create_dir_all(&ops_dir).map_err(|e| Error::io(&ops_dir, e))?;
        let cwd = match &spec.workdir {
            Some(w) => {
                let dir = taskdir::resolve_within(&task_dir, w)?;
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                dir
            }
            None => task_dir.clone(),
        };
        let started_at = Utc::now();
        let mut detail = HandleDetail {
            task_id: Some(key.0),
            attempt: Some(key.1),
            pid: None,
            start_ticks: 0,
            task_dir: task_dir.clone(),
            cgroup: None,
            gpus: Vec::new(),
            started_at,
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
            stdout_offset: 0,
            stderr_offset: 0,
        };
        let handle = |detail: &HandleDetail| RunHandle {
            executor: NAME.to_owned(),
            task_id: key.0,
            attempt: key.1,
            detail: serde_json::to_value(detail).unwrap_or_default(),
        };
        let fail = |reason: Reason, message: String| {
            tracing::info!(task_id = %key.0, attempt = key.1, ?reason, %message, "attempt not started");
            let _ = updates.send(finished(key, Outcome::new(reason, Some(message))));
        };

        // Environment.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), inner.config.path.clone());
        env.insert("HOME".into(), task_dir.to_string_lossy().into_owned());
        env.insert("LANG".into(), "C.UTF-8".into());
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                fail(
                    Reason::LaunchFailed,
                    format!("invalid environment variable {k:?}"),
                );
                return Ok(handle(&detail));
            }
            env.insert(k.clone(), v.clone());
        }
        env.insert("OPS_TASK_ID".into(), key.0.to_string());
        env.insert("OPS_ATTEMPT".into(), key.1.to_string());
        env.insert(
            "OPS_TASK_DIR".into(),
            task_dir.to_string_lossy().into_owned(),
        );

        // The program, found before anything is started.
        let Some(name) = spec.argv.first() else {
            fail(Reason::LaunchFailed, "empty command".to_owned());
            return Ok(handle(&detail));
        };
        let program = match process::resolve_program(
            name,
            env.get("PATH").map(String::as_str).unwrap_or_default(),
            &cwd,
        ) {
            Program::Found(p) => p,
            Program::NotFound(m) | Program::NotExecutable(m) => {
                fail(Reason::CommandNotFound, m);
                return Ok(handle(&detail));
            }
        };

        // GPUs, exclusively.
        let gpus = inner
            .gpus
            .acquire(&spec.resources.gpus, key)
            .map_err(|m| executor_error(format!("task {} attempt {}: {m}", key.0, key.1)))?;
        let gpu_ids: Vec<String> = gpus.iter().map(GpuDevice::id).collect();
        if !inner.gpus.devices().is_empty() || !gpus.is_empty() {
            let visible = gpu_ids.join(",");
            env.insert(
                "NVIDIA_VISIBLE_DEVICES".into(),
                if visible.is_empty() {
                    "none".into()
                } else {
                    visible.clone()
                },
            );
            env.insert("CUDA_VISIBLE_DEVICES".into(), visible);
            env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
        }
        detail.gpus = gpu_ids.clone();
        let release = || inner.gpus.release(key);

        // Cgroup.
        let limits = Limits {
            memory_bytes: spec.resources.memory_bytes,
            cpu_millis: spec.resources.cpu_millis,
            // One more for the wrapper.
            pids_max: if inner.config.pids_max == 0 {
                0
            } else {
                inner.config.pids_max + 1
            },
        };
        let cgroup = match inner
            .cgroups
            .create(&format!("{}-{}", key.0, key.1), &limits)
        {
            Ok(c) => c,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        let cleanup = |cg: &Option<TaskCgroup>| {
            if let Some(cg) = cg {
                let _ = cg.remove();
            }
            release();
        };

        // Logs and the exit record.
        let open_log = |stream: LogStream| {
            let path = self.log_path(&task_dir, stream);
            open_append(&path).map_err(|e| Error::io(&path, e))
        };
        let (stdout, stderr) = match (open_log(LogStream::Stdout), open_log(LogStream::Stderr)) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(err), _) | (_, Err(err)) => {
                cleanup(&cgroup);
                return Err(err);
            }
        };
        detail.stdout_offset = stdout.metadata().map(|m| m.len()).unwrap_or(0);
        detail.stderr_offset = stderr.metadata().map(|m| m.len()).unwrap_or(0);
        let exit_path = exit_file(&task_dir, key.1);
        let _ = std::fs::remove_file(&exit_path);
        let scanner = if spec.output_globs.is_empty() {
            None
        } else {
            match OutputScanner::new(&task_dir, key.1, globs, false) {
                Ok(s) => Some(s),
                Err(e) => {
                    cleanup(&cgroup);
                    return Err(e);
                }
            }
        };

        // Start the wrapper.
        let procs = cgroup
            .as_ref()
            .map(TaskCgroup::procs_files)
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new(process::SHELL);
        cmd.arg("-c")
            .arg(process::WRAPPER)
            .arg("ops-task")
            .arg(&exit_path)
            .arg(procs.len().to_string())
            .args(&procs)
            .arg(&program)
            .args(&spec.argv[1..])
            .env_clear()
            .envs(&env)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                cleanup(&cgroup);
                fail(
                    Reason::LaunchFailed,
                    format!("cannot start {}: {e}", program.display()),
                );
                return Ok(handle(&detail));
            }
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        detail.pid = Some(pid);
        detail.start_ticks = process::read_stat(pid).map(|s| s.start_ticks).unwrap_or(0);
        detail.cgroup = cgroup.clone();
        tracing::info!(
            task_id = %key.0,
            attempt = key.1,
            pid,
            program = %program.display(),
            cgroups = %inner.cgroups.mode(),
            gpus = ?gpu_ids,
            "attempt started"
        );
        let _ = updates.send(ExecutorUpdate::Started {
            task_id: key.0,
            attempt: key.1,
            at: started_at,
            gpus: gpu_ids,
        });
        let attempt = Attempt::new(
            inner.clone(),
            key,
            &detail,
            &spec,
            scanner,
            updates,
            Instant::now(),
        );
        attempt.spawn(Some(child));
        Ok(handle(&detail))
    }

    async fn cancel(&self, handle: &RunHandle) -> Result<()> {
        self.stop(handle, Reason::Cancelled, self.inner.config.kill_grace)
            .await
    }

    async fn preempt(&self, handle: &RunHandle, grace: Duration) -> Result<()> {
        self.stop(handle, Reason::Preempted, grace).await
    }

    async fn reattach(
        &self,
        handle: &RunHandle,
        spec: &LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<Reattached> {
        check_handle(handle)?;
        let key = (handle.task_id, handle.attempt);
        if lock(&self.inner.running).contains_key(&key) {
            return Ok(Reattached::Running);
        }
        let Some(detail) = handle_detail(handle)? else {
            return Ok(Reattached::Gone(Outcome::new(
                Reason::CoordinatorLost,
                Some(format!(
                    "task {} attempt {} never ran here: the handle's details belong to another attempt",
                    key.0, key.1
                )),
            )));
        };
        let Some(pid) = detail.pid else {
            return Ok(Reattached::Gone(Outcome::new(
                Reason::CoordinatorLost,
                Some("the attempt never started".to_owned()),
            )));
        };
        let scanner = if spec.output_globs.is_empty() {
            None
        } else {
            let globs = taskdir::build_globs(&spec.output_globs)?;
            OutputScanner::new(&detail.task_dir, key.1, globs, true).ok()
        };
        // How long ago it started, on the monotonic clock.
        let elapsed = (Utc::now() - detail.started_at)
            .to_std()
            .unwrap_or_default();
        let started = Instant::now()
            .checked_sub(elapsed)
            .unwrap_or_else(Instant::now);
        self.inner.gpus.claim(&detail.gpus, key);
        let attempt = Attempt::new(
            self.inner.clone(),
            key,
            &detail,
            spec,
            scanner,
            updates,
            started,
        );
        if process::is_alive(pid, detail.start_ticks) {
            tracing::info!(task_id = %key.0, attempt = key.1, pid, "re-attached to a running attempt");
            attempt.spawn(None);
            Ok(Reattached::Running)
        } else {
            let outcome = attempt.finish(None, None, None).await;
            tracing::info!(task_id = %key.0, attempt = key.1, pid, reason = ?outcome.reason, "attempt ended while detached");
            Ok(Reattached::Gone(outcome))
        }
    }

    fn log_path(&self, spec_task_dir: &Path, stream: LogStream) -> PathBuf {
        log_path(spec_task_dir, stream)
    }
}

fn check_handle(handle: &RunHandle) -> Result<()> {
    handle.check_executor(NAME)
}

/// The handle's details, or `None` when they belong to another attempt than the one the
/// handle names (so there is nothing of that attempt to find).
fn handle_detail(handle: &RunHandle) -> Result<Option<HandleDetail>> {
    let detail: HandleDetail = serde_json::from_value(handle.detail.clone())?;
    let other_task = detail.task_id.is_some_and(|t| t != handle.task_id);
    let other_attempt = detail.attempt.is_some_and(|a| a != handle.attempt);
    Ok((!other_task && !other_attempt).then_some(detail))
}

/// A kill the executor started, and why.
#[derive(Clone, Debug)]
struct Kill {
    reason: Reason,
    message: String,
    force_at: Instant,
    forced: bool,
}

/// What one poll found.
#[derive(Debug, Default)]
struct Sample {
    outputs: Vec<(String, u64)>,
    /// Resident memory of the group (only measured without cgroups).
    rss: u64,
}

/// The blocking part of watching an attempt: scanning outputs and sampling usage.
#[derive(Debug)]
struct Sampler {
    scanner: Option<OutputScanner>,
    meter: ProcMeter,
    cgroup: Option<TaskCgroup>,
    pgid: i32,
    start_ticks: u64,
    /// Highest `memory.current` seen (for kernels without `memory.peak`).
    cgroup_peak: u64,
}

impl Sampler {
    fn tick(&mut self, last: bool) -> Sample {
        let outputs = self
            .scanner
            .as_mut()
            .map(|s| s.scan(last))
            .unwrap_or_default();
        let rss = match &self.cgroup {
            Some(cg) => {
                if let Some(current) = cg.usage().current_memory {
                    self.cgroup_peak = self.cgroup_peak.max(current);
                }
                0
            }
            None => self
                .meter
                .sample(&process::group_members(self.pgid, self.start_ticks)),
        };
        Sample { outputs, rss }
    }
}

/// Watches one attempt until it ends, then reports it.
struct Attempt {
    inner: Arc<Inner>,
    key: Key,
    pid: i32,
    start_ticks: u64,
    task_dir: PathBuf,
    cgroup: Option<TaskCgroup>,
    started_at: DateTime<Utc>,
    started: Instant,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    memory_limit: u64,
    gpus: u32,
    sampler: Arc<Mutex<Sampler>>,
    updates: mpsc::UnboundedSender<ExecutorUpdate>,
}

impl Attempt {
    fn new(
        inner: Arc<Inner>,
        key: Key,
        detail: &HandleDetail,
        spec: &LaunchSpec,
        scanner: Option<OutputScanner>,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
        started: Instant,
    ) -> Self {
        let pid = detail.pid.unwrap_or(0);
        let timeout = spec
            .timeout
            .or(detail.timeout_ms.map(Duration::from_millis));
        Self {
            inner,
            key,
            pid,
            start_ticks: detail.start_ticks,
            task_dir: detail.task_dir.clone(),
            cgroup: detail.cgroup.clone(),
            started_at: detail.started_at,
            started,
            deadline: timeout.map(|t| started + t),
            timeout,
            memory_limit: spec.resources.memory_bytes,
            gpus: detail.gpus.len() as u32,
            sampler: Arc::new(Mutex::new(Sampler {
                scanner,
                meter: ProcMeter::default(),
                cgroup: detail.cgroup.clone(),
                pgid: pid,
                start_ticks: detail.start_ticks,
                cgroup_peak: 0,
            })),
            updates,
        }
    }

    /// Registers the attempt and watches it in the background; `child` is the wrapper
    /// when this executor started it, `None` after a re-attach.
    fn spawn(self, child: Option<tokio::process::Child>) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        lock(&self.inner.running).insert(self.key, control_tx);
        let key = self.key;
        let inner = self.inner.clone();
        let updates = self.updates.clone();
        let task = tokio::spawn(self.run(child, control_rx));
        // A bug must not leave the attempt without its `Finished`.
        tokio::spawn(async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(task_id = %key.0, attempt = key.1, "attempt monitor panicked");
                lock(&inner.running).remove(&key);
                inner.gpus.release(key);
                let _ = updates.send(finished(
                    key,
                    Outcome::new(
                        Reason::CoordinatorLost,
                        Some("the executor's monitor failed".into()),
                    ),
                ));
            }
        });
    }

    async fn run(
        self,
        mut child: Option<tokio::process::Child>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut detach = self.inner.detach.subscribe();
        if *detach.borrow_and_update() {
            return;
        }
        let mut poll = tokio::time::interval(self.inner.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
        let mut kill: Option<Kill> = None;
        let status = loop {
            let deadline = self.deadline.filter(|_| kill.is_none());
            let force_at = kill.as_ref().filter(|k| !k.forced).map(|k| k.force_at);
            tokio::select! {
                biased;
                changed = detach.changed() => {
                    if changed.is_err() || *detach.borrow() {
                        tracing::debug!(task_id = %self.key.0, attempt = self.key.1, "detached");
                        return;
                    }
                }
                status = wait_child(&mut child) => break Some(status),
                Some(Control::Stop { reason, grace, ack }) = control.recv() => {
                    let message = match reason {
                        Reason::Preempted => "preempted",
                        _ => "cancelled",
                    };
                    self.begin_kill(&mut kill, reason, message.to_owned(), Some(grace), child.is_some());
                    let _ = ack.send(());
                }
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    // A re-attached process is polled: it may have exited since the last look.
                    if child.is_none() && !process::is_alive(self.pid, self.start_ticks) {
                        break None;
                    }
                    let secs = self.timeout.unwrap_or_default().as_secs_f64();
                    self.begin_kill(&mut kill, Reason::TimedOut, format!("timed out after {secs}s"), Some(self.inner.config.kill_grace), child.is_some());
                }
                () = tokio::time::sleep_until(force_at.unwrap_or(far)), if force_at.is_some() => {
                    self.signal(Signal::SIGKILL, child.is_some());
                    if let Some(k) = kill.as_mut() {
                        k.forced = true;
                    }
                }
                _ = poll.tick() => {
                    if child.is_none() && !process::is_alive(self.pid, self.start_ticks) {
                        break None;
                    }
                    let sample = self.sample(false).await;
                    self.send_outputs(sample.outputs);
                    if self.cgroup.is_none() && self.memory_limit > 0 && sample.rss > self.memory_limit {
                        let message = format!(
                            "out of memory: {} bytes resident, limit {} bytes",
                            sample.rss, self.memory_limit
                        );
                        self.begin_kill(&mut kill, Reason::OutOfMemory, message, None, child.is_some());
                    }
                }
            }
        };
        let outcome = self.finish(status, kill, Some(&mut control)).await;
        tracing::info!(
            task_id = %self.key.0,
            attempt = self.key.1,
            reason = ?outcome.reason,
            exit_code = ?outcome.exit_code,
            signal = ?outcome.signal,
            "attempt finished"
        );
        let _ = self.updates.send(finished(self.key, outcome));
    }

    /// Starts stopping the attempt (the first reason wins): SIGTERM now and SIGKILL after
    /// `grace`, or SIGKILL at once without a grace. A later stop may bring the SIGKILL
    /// forward (a cancel during a long preemption grace), never put it off.
    fn begin_kill(
        &self,
        kill: &mut Option<Kill>,
        reason: Reason,
        message: String,
        grace: Option<Duration>,
        leader_ours: bool,
    ) {
        if let Some(k) = kill.as_mut() {
            if let Some(g) = grace {
                k.force_at = k.force_at.min(Instant::now() + g);
            }
            return;
        }
        tracing::info!(task_id = %self.key.0, attempt = self.key.1, ?reason, %message, "stopping attempt");
        let signal = if grace.is_none() {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        self.signal(signal, leader_ours);
        *kill = Some(Kill {
            reason,
            message,
            force_at: Instant::now() + grace.unwrap_or_default(),
            forced: grace.is_none(),
        });
    }

    /// Signals the whole attempt: its process group (while the wrapper still holds the
    /// group's id) and every process of its cgroup, or of the group found in `/proc`.
    fn signal(&self, signal: Signal, leader_ours: bool) {
        // Our unreaped child keeps its pid; otherwise check it is still the same process.
        if leader_ours || process::is_alive(self.pid, self.start_ticks) {
            process::signal_group(self.pid, signal);
        }
        match &self.cgroup {
            Some(cg) => cg.signal_all(signal),
            None => {
                for pid in self.members() {
                    process::signal_pid(pid, signal);
                }
            }
        }
    }

    /// Live processes of the attempt.
    fn members(&self) -> BTreeSet<i32> {
        match &self.cgroup {
            Some(cg) => cg.pids(),
            None => process::group_members(self.pid, self.start_ticks),
        }
    }

    async fn sample(&self, last: bool) -> Sample {
        let sampler = self.sampler.clone();
        tokio::task::spawn_blocking(move || lock(&sampler).tick(last))
            .await
            .unwrap_or_default()
    }

    fn send_outputs(&self, outputs: Vec<(String, u64)>) {
        for (path, size) in outputs {
            tracing::debug!(task_id = %self.key.0, attempt = self.key.1, %path, size, "output created");
            let _ = self.updates.send(ExecutorUpdate::OutputCreated {
                task_id: self.key.0,
                attempt: self.key.1,
                path,
                size,
            });
        }
    }

    /// After the main process ended: stops what it left behind, sends the last outputs,
    /// measures, cleans up and says how the attempt ended.
    async fn finish(
        &self,
        status: Option<std::io::Result<std::process::ExitStatus>>,
        kill: Option<Kill>,
        mut control: Option<&mut mpsc::UnboundedReceiver<Control>>,
    ) -> Outcome {
        let ended = Instant::now();
        let exit_path = exit_file(&self.task_dir, self.key.1);
        // Leftovers get the rest of the grace period when a kill is under way, none
        // otherwise (as when a container's init exits).
        let mut grace_end = match &kill {
            Some(k) if !k.forced => k.force_at,
            _ => Instant::now(),
        };
        let mut forced = false;
        loop {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= grace_end && !forced {
                self.signal(Signal::SIGKILL, false);
                forced = true;
            }
            if now >= grace_end + REAP_TIMEOUT {
                tracing::warn!(task_id = %self.key.0, attempt = self.key.1, pids = ?members, "processes survive SIGKILL");
                break;
            }
            let pause = tokio::time::sleep(Duration::from_millis(20));
            match control.as_deref_mut() {
                Some(rx) => tokio::select! {
                    () = pause => {}
                    // A stop while leftovers use up the grace (the main process already
                    // ended): it may bring the kill forward, as during the run.
                    Some(Control::Stop { grace, ack, .. }) = rx.recv() => {
                        grace_end = grace_end.min(Instant::now() + grace);
                        let _ = ack.send(());
                    }
                },
                None => pause.await,
            }
        }

        let sample = self.sample(true).await;
        self.send_outputs(sample.outputs);

        let (cg_usage, oom) = match &self.cgroup {
            Some(cg) => (cg.usage(), cg.oom_killed()),
            None => (Default::default(), false),
        };
        if let Some(cg) = &self.cgroup {
            let mut tries = 0;
            while let Err((path, e)) = cg.remove() {
                tries += 1;
                if tries >= 40 {
                    tracing::warn!(task_id = %self.key.0, path = %path.display(), error = %e, "cannot remove cgroup");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let record = std::fs::read_to_string(&exit_path)
            .ok()
            .and_then(|t| ExitRecord::parse(&t));

        // Wall time: from start to the end of the main process (for an attempt that
        // ended while detached, the time its exit was recorded).
        let wall = match &status {
            Some(_) => ended.duration_since(self.started),
            None => std::fs::metadata(&exit_path)
                .and_then(|m| m.modified())
                .ok()
                .map(DateTime::<Utc>::from)
                .and_then(|end| (end - self.started_at).to_std().ok())
                .unwrap_or_else(|| ended.duration_since(self.started)),
        };
        let (meter_cpu, meter_peak, cg_peak) = {
            let s = lock(&self.sampler);
            (s.meter.cpu_time(), s.meter.peak_memory(), s.cgroup_peak)
        };
        let recorded_cpu = match &record {
            Some(ExitRecord::Exited { cpu_time, .. }) => cpu_time.unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let cpu = cg_usage
            .cpu_time
            .unwrap_or_else(|| meter_cpu.max(recorded_cpu));
        let peak = cg_usage
            .peak_memory
            .filter(|p| *p > 0)
            .unwrap_or_else(|| cg_peak.max(meter_peak));
        let usage = Usage::new(wall, cpu, peak, self.gpus);

        let mut outcome = classify(status, record, kill, oom, self.memory_limit);
        outcome.usage = usage;

        lock(&self.inner.running).remove(&self.key);
        self.inner.gpus.release(self.key);
        outcome
    }
}

/// Waits for the wrapper when it is our child; never resolves otherwise.
async fn wait_child(
    child: &mut Option<tokio::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Maps how the attempt ended to an [`Outcome`] (usage left empty).
fn classify(
    status: Option<std::io::Result<std::process::ExitStatus>>,
    record: Option<ExitRecord>,
    kill: Option<Kill>,
    oom: bool,
    memory_limit: u64,
) -> Outcome {
    if record == Some(ExitRecord::WrapperFailed) && kill.is_none() {
        return Outcome::new(
            Reason::LaunchFailed,
            Some("could not move the task into its cgroup (see its stderr log)".to_owned()),
        );
    }
    // The shell reports a program killed by signal N as 128 + N.
    let from_shell = |code: i32| match taskdir::status_signal(code) {
        Some(sig) => (None, Some(sig)),
        None => (Some(code), None),
    };
    let recorded = match &record {
        Some(ExitRecord::Exited { status, .. }) => Some(*status),
        _ => None,
    };
    let (exit_code, signal) = match status {
        Some(Ok(st)) => match (st.code(), st.signal()) {
            (Some(code), _) => from_shell(code),
            (None, Some(sig)) => (None, Some(sig)),
            (None, None) => (None, None),
        },
        _ => recorded.map(from_shell).unwrap_or((None, None)),
    };
    let (reason, message) = if let Some(k) = kill {
        (k.reason, k.message)
    } else if oom && exit_code != Some(0) {
        let limit = if memory_limit > 0 {
            format!(" (limit {memory_limit} bytes)")
        } else {
            String::new()
        };
        (
            Reason::OutOfMemory,
            format!("killed by the out-of-memory killer{limit}"),
        )
    } else {
        match (exit_code, signal) {
            (Some(0), _) => (Reason::Completed, String::new()),
            (Some(code), _) => (Reason::NonZeroExit, format!("exited with code {code}")),
            (None, Some(sig)) => (
                Reason::Signaled,
                format!("killed by {}", process::signal_name(sig)),
            ),
            (None, None) => (
                Reason::CoordinatorLost,
                "the attempt ended while no coordinator watched it and left no exit status"
                    .to_owned(),
            ),
        }
    };
    let mut outcome = Outcome::new(reason, (!message.is_empty()).then_some(message));
    outcome.exit_code = exit_code;
    outcome.signal = signal;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> Option<std::io::Result<std::process::ExitStatus>> {
        Some(Ok(std::process::ExitStatus::from_raw(code << 8)))
    }

    #[test]
    fn classifies_exits() {
        let o = classify(exited(0), None, None, false, 0);
        assert_eq!((o.reason, o.exit_code), (Reason::Completed, Some(0)));
        let o = classify(exited(3), None, None, false, 0);
        assert_eq!((o.reason, o.exit_code), (Reason::NonZeroExit, Some(3)));
        let o = classify(exited(137), None, None, false, 0);
        assert_eq!(
            (o.reason, o.signal, o.exit_code),
            (Reason::Signaled, Some(9), None)
        );
        let o = classify(exited(137), None, None, true, 1 << 20);
        assert_eq!(o.reason, Reason::OutOfMemory);
        let o = classify(
            Some(Ok(std::process::ExitStatus::from_raw(15))),
            None,
            None,
            false,
            0,
        );
        assert_eq!((o.reason, o.signal), (Reason::Signaled, Some(15)));
        let rec = Some(ExitRecord::Exited {
            status: 4,
            cpu_time: None,
        });
        let o = classify(None, rec, None, false, 0);
        assert_eq!((o.reason, o.exit_code), (Reason::NonZeroExit, Some(4)));
        let o = classify(None, None, None, false, 0);
        assert_eq!(o.reason, Reason::CoordinatorLost);
        let kill = Kill {
            reason: Reason::TimedOut,
            message: "t".into(),
            force_at: Instant::now(),
            forced: false,
        };
        let o = classify(exited(143), None, Some(kill), false, 0);
        assert_eq!((o.reason, o.signal), (Reason::TimedOut, Some(15)));
        let o = classify(exited(125), Some(ExitRecord::WrapperFailed), None, false, 0);
        assert_eq!(o.reason, Reason::LaunchFailed);
    }
}
