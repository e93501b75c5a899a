//! [`SimExecutor`]: an [`Executor`] over simulated nodes whose attempts only pass time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Reason, Resources, TaskId, Usage};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::cluster::{NodeId, Placement, SimCluster};
use crate::executor::{
    Executor, ExecutorUpdate, LaunchSpec, LogStream, NodeGroup, Outcome, Reattached, RunHandle,
};
use crate::{Error, Result};

/// [`Executor::name`] of the simulator.
const NAME: &str = "sim";
/// Environment variable holding an attempt's virtual run time (`"90s"`, `"2h"`).
pub const DURATION_VAR: &str = "OPS_SIM_DURATION";
/// Environment variable holding an attempt's exit code (default 0).
pub const EXIT_CODE_VAR: &str = "OPS_SIM_EXIT_CODE";

/// Configuration of a [`SimExecutor`]. Every field has a default, so a file sets only
/// what it changes:
///
/// ```
/// use ops_tasks::sim::SimExecutorConfig;
///
/// let config: SimExecutorConfig = toml::from_str(r#"
///     speedup = 600
///     default_duration = "5m"
///     [[nodes]]
///     count = 1000
///     resources = { cpu = 64, memory = "512Gi", gpus = { count = 8, model = "H100" } }
///     [[nodes]]
///     pool = "batch"
///     count = 200
///     resources = { cpu = 32, memory = "128Gi" }
/// "#).unwrap();
/// assert_eq!(config.nodes.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SimExecutorConfig {
    /// The simulated nodes (default: 100 shared nodes of 16 CPUs and 64 GiB).
    pub nodes: Vec<NodeGroup>,
    /// Virtual seconds per real second (default 3600: an hour passes in a second).
    pub speedup: f64,
    /// Virtual run time of an attempt without `OPS_SIM_DURATION` (default 60 s).
    #[serde(with = "crate::duration::serde_duration")]
    pub default_duration: Duration,
}

impl Default for SimExecutorConfig {
    fn default() -> Self {
        Self {
            nodes: vec![NodeGroup::new(100, Resources::new(16_000, 64 << 30))],
            speedup: 3600.0,
            default_duration: Duration::from_secs(60),
        }
    }
}

impl SimExecutorConfig {
    /// The default configuration over `nodes`.
    pub fn new(nodes: Vec<NodeGroup>) -> Self {
        Self {
            nodes,
            ..Self::default()
        }
    }

    /// Sets [`speedup`](Self::speedup).
    pub fn speedup(mut self, speedup: f64) -> Self {
        self.speedup = speedup;
        self
    }

    /// Sets [`default_duration`](Self::default_duration).
    pub fn default_duration(mut self, duration: Duration) -> Self {
        self.default_duration = duration;
        self
    }
}

type Key = (TaskId, u32);

/// What the run handle remembers (its `detail`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct HandleDetail {
    task_id: TaskId,
    attempt: u32,
    /// Virtual run time asked for.
    duration_ms: u64,
}

/// Runs attempts on simulated nodes against a virtual clock: nothing is executed, an
/// attempt only holds its node's resources for its virtual run time.
///
/// - **Run time and result.** `OPS_SIM_DURATION` in the spec's environment (a
///   [duration](crate::duration::parse_duration) such as `"90s"`) is the virtual run
///   time ([`SimExecutorConfig::default_duration`] without it); `OPS_SIM_EXIT_CODE`
///   (default 0) the exit code: 0 is `Completed`, another `NonZeroExit`. An unreadable
///   value fails the launch (`LaunchFailed`). The spec's timeout is virtual time too and
///   ends the attempt `TimedOut`.
/// - **Time.** Virtual time runs [`speedup`](SimExecutorConfig::speedup) times faster
///   than the tokio clock (so a paused tokio clock pauses it); [`SimExecutor::clock`]
///   reads it. Update timestamps are real (`Utc::now()`), so history stays consistent;
///   `Usage::wall_time` (and GPU-seconds) is the virtual run time.
/// - **Nodes.** Each attempt is placed on a node of the spec's environment's pool (the
///   shared nodes when it has none, see [`SimCluster`]); `Started` names its GPUs
///   (`node-3/gpu1`). An attempt that fits the pool but no node right now stays pending
///   (no `Started`) until a node frees, like a pending pod; one that can never fit ends
///   `LaunchFailed`.
/// - **Stopping.** `cancel` ends the attempt at once (`Cancelled`); `preempt` ends it
///   after `grace` of virtual time (`Preempted`).
/// - **Restarts.** Attempts live in the executor's memory: `reattach` on the same
///   executor finds a live attempt (`Running`, updates go to the new channel) and on
///   another returns `Gone` with `CoordinatorLost`. Dropping the executor ends every
///   attempt silently.
/// - **Files.** None are written: logs are empty, no outputs are reported.
///
/// ```
/// use std::time::Duration;
/// use ops_core::{Reason, Resources, Tenant};
/// use ops_tasks::{Executor, ExecutorUpdate, LaunchSpec, NodeGroup};
/// use ops_tasks::sim::{SimExecutor, SimExecutorConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let nodes = vec![NodeGroup::new(10, Resources::new(8000, 32 << 30))];
/// let sim = SimExecutor::new(SimExecutorConfig::new(nodes).speedup(3600.0))?;
/// let mut spec = LaunchSpec::new(Tenant::parse("acme").unwrap(), vec!["train".into()], "/tmp/unused");
/// spec.env.insert("OPS_SIM_DURATION".into(), "1h".into());
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// sim.launch(spec, tx).await?;
/// assert!(matches!(rx.recv().await, Some(ExecutorUpdate::Started { .. })));
/// // An hour of virtual time takes about a second.
/// match rx.recv().await {
///     Some(ExecutorUpdate::Finished { outcome, .. }) => {
///         assert_eq!(outcome.reason, Reason::Completed);
///         assert_eq!(outcome.usage.wall_time, Duration::from_secs(3600));
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SimExecutor {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: SimExecutorConfig,
    capacity: Resources,
    epoch_real: Instant,
    epoch_virtual: DateTime<Utc>,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug)]
struct State {
    cluster: SimCluster,
    attempts: HashMap<Key, Attempt>,
    /// Real deadlines; an entry whose generation no longer matches its attempt is stale.
    timers: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    /// GPUs in use per node (bit `i` = GPU `i`).
    gpus_in_use: HashMap<u32, u64>,
    /// The attempt of each task waiting for a node.
    waiting: HashMap<TaskId, u32>,
    next_gen: u64,
    driver_started: bool,
    closed: bool,
}

#[derive(Debug)]
struct Attempt {
    updates: mpsc::UnboundedSender<ExecutorUpdate>,
    resources: Resources,
    run: Duration,
    exit_code: i32,
    timeout: Option<Duration>,
    phase: Phase,
    generation: u64,
}

#[derive(Debug)]
enum Phase {
    Pending,
    Running {
        node: NodeId,
        gpus: u64,
        started: Instant,
        /// Virtual time from start to end, and how it ends.
        ends_after: Duration,
        end: End,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Exit,
    TimedOut,
    Preempted,
}

impl SimExecutor {
    /// A simulator over `config.nodes`. Fails, listing every problem, when the speedup is
    /// not a positive finite number or there are no nodes.
    pub fn new(config: SimExecutorConfig) -> Result<Self> {
        let mut problems = Vec::new();
        if !(config.speedup.is_finite() && config.speedup > 0.0) {
            problems.push(format!(
                "speedup must be a positive number, not {}",
                config.speedup
            ));
        }
        if config.nodes.iter().all(|g| g.count == 0) {
            problems.push("nodes: at least one node is needed".to_owned());
        }
        for (i, g) in config.nodes.iter().enumerate() {
            if g.resources.gpus.count > 64 {
                problems.push(format!(
                    "nodes[{i}]: at most 64 GPUs per node are simulated, not {}",
                    g.resources.gpus.count
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::InvalidConfig { problems });
        }
        let cluster = SimCluster::new(&config.nodes);
        let capacity = cluster.capacity();
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                capacity,
                epoch_real: Instant::now(),
                epoch_virtual: Utc::now(),
                state: Mutex::new(State {
                    cluster,
                    attempts: HashMap::new(),
                    timers: BinaryHeap::new(),
                    gpus_in_use: HashMap::new(),
                    waiting: HashMap::new(),
                    next_gen: 0,
                    driver_started: false,
                    closed: false,
                }),
                wake: Notify::new(),
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimExecutorConfig {
        &self.shared.config
    }

    /// Virtual now: the creation time plus the tokio time since, times the speedup.
    pub fn clock(&self) -> DateTime<Utc> {
        self.shared.virtual_now(Instant::now())
    }

    /// How long `virtual_time` takes in real (tokio) time.
    pub fn real_time(&self, virtual_time: Duration) -> Duration {
        self.shared.real(virtual_time)
    }

    /// Attempts launched and not finished: (placed and running, waiting for a node).
    pub fn attempts(&self) -> (usize, usize) {
        let state = lock(&self.shared.state);
        let pending = state.cluster.pending_len();
        (state.attempts.len() - pending, pending)
    }

    /// Used over total capacity of the simulated nodes, per resource.
    pub fn utilisation(&self) -> super::Utilisation {
        lock(&self.shared.state).cluster.utilisation()
    }
}

impl Drop for SimExecutor {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn real(&self, virtual_time: Duration) -> Duration {
        Duration::try_from_secs_f64(virtual_time.as_secs_f64() / self.config.speedup)
            .unwrap_or(Duration::MAX)
    }

    fn virtual_now(&self, at: Instant) -> DateTime<Utc> {
        let real = at.saturating_duration_since(self.epoch_real);
        let v = Duration::try_from_secs_f64(real.as_secs_f64() * self.config.speedup)
            .unwrap_or_default();
        self.epoch_virtual + chrono::Duration::from_std(v).unwrap_or_default()
    }

    /// Ends every attempt whose time has come; returns the next deadline.
    fn fire(&self, now: Instant) -> Option<Instant> {
        let mut state = lock(&self.state);
        loop {
            let Reverse((at, generation, key)) = state.timers.peek().copied()?;
            if at > now {
                return Some(at);
            }
            state.timers.pop();
            if state
                .attempts
                .get(&key)
                .is_some_and(|a| a.generation == generation)
            {
                state.finish(self, key, now, None);
            }
        }
    }

    async fn drive(self: Arc<Self>) {
        loop {
            let next = self.fire(Instant::now());
            if lock(&self.state).closed {
                return;
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

impl State {
    /// Starts a placed attempt: GPUs, `Started`, its deadline.
    fn start(&mut self, shared: &Shared, key: Key, node: NodeId, now: Instant) {
        let generation = self.next_gen;
        self.next_gen += 1;
        let Some(a) = self.attempts.get_mut(&key) else {
            return;
        };
        let mut gpus = 0u64;
        let mut names = Vec::new();
        if a.resources.gpus.count > 0 {
            let used = self.gpus_in_use.entry(node.0).or_default();
            for i in 0..64u32 {
                if names.len() as u32 == a.resources.gpus.count {
                    break;
                }
                if *used & (1 << i) == 0 {
                    gpus |= 1 << i;
                    names.push(format!("{node}/gpu{i}"));
                }
            }
            *used |= gpus;
        }
        let (ends_after, end) = match a.timeout {
            Some(t) if t < a.run => (t, End::TimedOut),
            _ => (a.run, End::Exit),
        };
        a.generation = generation;
        a.phase = Phase::Running {
            node,
            gpus,
            started: now,
            ends_after,
            end,
        };
        tracing::debug!(task_id = %key.0, attempt = key.1, %node, "simulated attempt started");
        let _ = a.updates.send(ExecutorUpdate::Started {
            task_id: key.0,
            attempt: key.1,
            at: Utc::now(),
            gpus: names,
        });
        let at = now + shared.real(ends_after);
        self.timers.push(Reverse((at, generation, key)));
    }

    /// Ends an attempt (how: from its phase, or `forced`), frees its node and starts the
    /// attempts that were waiting for it.
    fn finish(&mut self, shared: &Shared, key: Key, now: Instant, forced: Option<Outcome>) {
        let Some(a) = self.attempts.remove(&key) else {
            return;
        };
        let mut freed = None;
        let outcome = match a.phase {
            Phase::Pending => {
                self.cluster.cancel_pending(key.0);
                self.waiting.remove(&key.0);
                forced.unwrap_or_else(|| Outcome::new(Reason::Cancelled, None))
            }
            Phase::Running {
                node,
                gpus,
                started,
                ends_after,
                end,
            } => {
                if let Some(used) = self.gpus_in_use.get_mut(&node.0) {
                    *used &= !gpus;
                }
                let real = now.saturating_duration_since(started);
                let ran = Duration::try_from_secs_f64(real.as_secs_f64() * shared.config.speedup)
                    .unwrap_or_default()
                    .min(ends_after);
                let natural = forced.is_none();
                let ran = if natural { ends_after } else { ran };
                let mut outcome = forced.unwrap_or_else(|| match end {
                    End::Exit if a.exit_code == 0 => Outcome::new(Reason::Completed, None),
                    End::Exit => Outcome::new(
                        Reason::NonZeroExit,
                        Some(format!("exited with code {}", a.exit_code)),
                    ),
                    End::TimedOut => Outcome::new(
                        Reason::TimedOut,
                        Some(format!("ran past its timeout of {ends_after:?}")),
                    ),
                    End::Preempted => Outcome::new(Reason::Preempted, Some("preempted".into())),
                });
                if natural && end == End::Exit {
                    outcome.exit_code = Some(a.exit_code);
                }
                outcome.usage = Usage::new(ran, ran, a.resources.memory_bytes, gpus.count_ones());
                freed = Some(node);
                outcome
            }
        };
        tracing::debug!(task_id = %key.0, attempt = key.1, reason = ?outcome.reason, "simulated attempt finished");
        let _ = a.updates.send(ExecutorUpdate::Finished {
            task_id: key.0,
            attempt: key.1,
            outcome,
        });
        if let Some(node) = freed {
            for (waiting, node) in self.cluster.free(node, &a.resources) {
                if let Some(attempt) = self.waiting.remove(&waiting) {
                    self.start(shared, (waiting, attempt), node, now);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn executor_error(message: impl Into<String>) -> Error {
    Error::Executor {
        executor: NAME.to_owned(),
        message: message.into(),
    }
}

fn check_handle(handle: &RunHandle) -> Result<()> {
    handle.check_executor(NAME)
}

/// Reads the run time and exit code from the spec's environment.
fn behaviour(spec: &LaunchSpec, default: Duration) -> std::result::Result<(Duration, i32), String> {
    let run = match spec.env.get(DURATION_VAR) {
        Some(v) => {
            crate::duration::parse_duration(v).map_err(|e| format!("{DURATION_VAR}: {e}"))?
        }
        None => default,
    };
    let code = match spec.env.get(EXIT_CODE_VAR) {
        Some(v) => v
            .trim()
            .parse::<i32>()
            .map_err(|_| format!("{EXIT_CODE_VAR}: {v:?} is not an integer"))?,
        None => 0,
    };
    Ok((run, code))
}

#[async_trait]
impl Executor for SimExecutor {
    fn name(&self) -> &str {
        NAME
    }

    fn capacity(&self) -> Resources {
        self.shared.capacity.clone()
    }

    fn nodes(&self) -> Vec<NodeGroup> {
        self.shared.config.nodes.clone()
    }

    async fn launch(
        &self,
        spec: LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<RunHandle> {
        let key = (spec.task_id, spec.attempt);
        let behaviour = behaviour(&spec, self.shared.config.default_duration);
        let handle = RunHandle {
            executor: NAME.to_owned(),
            task_id: key.0,
            attempt: key.1,
            detail: serde_json::to_value(HandleDetail {
                task_id: key.0,
                attempt: key.1,
                duration_ms: behaviour
                    .as_ref()
                    .map(|b| b.0.as_millis() as u64)
                    .unwrap_or(0),
            })?,
        };
        let fail = |reason: Reason, message: String| {
            tracing::info!(task_id = %key.0, attempt = key.1, ?reason, %message, "attempt not started");
            let _ = updates.send(ExecutorUpdate::Finished {
                task_id: key.0,
                attempt: key.1,
                outcome: Outcome::new(reason, Some(message)),
            });
        };
        let (run, exit_code) = match behaviour {
            Ok(b) => b,
            Err(message) => {
                fail(Reason::LaunchFailed, message);
                return Ok(handle);
            }
        };
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        if state.attempts.contains_key(&key) {
            return Err(executor_error(format!(
                "task {} attempt {} is already running",
                key.0, key.1
            )));
        }
        let placement = state.cluster.place_or_wait(
            key.0,
            Some(spec.node_pool.as_ref().unwrap_or(&spec.environment)),
            &spec.resources,
            None,
        );
        if placement == Placement::Impossible {
            drop(state);
            fail(
                Reason::LaunchFailed,
                format!(
                    "no simulated node of environment {} can hold cpu {}m, memory {} bytes, {} GPUs{}",
                    spec.environment,
                    spec.resources.cpu_millis,
                    spec.resources.memory_bytes,
                    spec.resources.gpus.count,
                    spec.resources
                        .gpus
                        .model
                        .as_deref()
                        .map(|m| format!(" of model {m}"))
                        .unwrap_or_default()
                ),
            );
            return Ok(handle);
        }
        state.attempts.insert(
            key,
            Attempt {
                updates: updates.clone(),
                resources: spec.resources.clone(),
                run,
                exit_code,
                timeout: spec.timeout,
                phase: Phase::Pending,
                generation: 0,
            },
        );
        match placement {
            Placement::Placed(node) => state.start(&self.shared, key, node, now),
            _ => {
                state.waiting.insert(key.0, key.1);
                tracing::debug!(task_id = %key.0, attempt = key.1, "no node has room: pending");
            }
        }
        let start_driver = !std::mem::replace(&mut state.driver_started, true);
        drop(state);
        if start_driver {
            tokio::spawn(self.shared.clone().drive());
        }
        self.shared.wake.notify_one();
        Ok(handle)
    }

    async fn cancel(&self, handle: &RunHandle) -> Result<()> {
        check_handle(handle)?;
        let key = (handle.task_id, handle.attempt);
        let mut state = lock(&self.shared.state);
        if state.attempts.contains_key(&key) {
            state.finish(
                &self.shared,
                key,
                Instant::now(),
                Some(Outcome::new(Reason::Cancelled, None)),
            );
            drop(state);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    async fn preempt(&self, handle: &RunHandle, grace: Duration) -> Result<()> {
        check_handle(handle)?;
        let key = (handle.task_id, handle.attempt);
        let now = Instant::now();
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        let Some(a) = state.attempts.get_mut(&key) else {
            return Ok(());
        };
        match &mut a.phase {
            Phase::Pending => {
                state.finish(
                    &self.shared,
                    key,
                    now,
                    Some(Outcome::new(Reason::Preempted, Some("preempted".into()))),
                );
            }
            Phase::Running {
                started,
                ends_after,
                end,
                ..
            } => {
                let ran = Duration::try_from_secs_f64(
                    now.saturating_duration_since(*started).as_secs_f64()
                        * self.shared.config.speedup,
                )
                .unwrap_or_default();
                let stop = ran.saturating_add(grace);
                if stop < *ends_after {
                    *ends_after = stop;
                    *end = End::Preempted;
                    let generation = state.next_gen;
                    state.next_gen += 1;
                    a.generation = generation;
                    let at = *started + self.shared.real(stop);
                    state.timers.push(Reverse((at, generation, key)));
                }
            }
        }
        drop(guard);
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn reattach(
        &self,
        handle: &RunHandle,
        _spec: &LaunchSpec,
        updates: mpsc::UnboundedSender<ExecutorUpdate>,
    ) -> Result<Reattached> {
        check_handle(handle)?;
        let key = (handle.task_id, handle.attempt);
        let mut state = lock(&self.shared.state);
        match state.attempts.get_mut(&key) {
            Some(a) => {
                a.updates = updates;
                Ok(Reattached::Running)
            }
            None => Ok(Reattached::Gone(Outcome::new(
                Reason::CoordinatorLost,
                Some(format!(
                    "task {} attempt {} is not running on this simulator",
                    key.0, key.1
                )),
            ))),
        }
    }

    fn log_path(&self, spec_task_dir: &Path, stream: LogStream) -> PathBuf {
        crate::taskdir::log_path(spec_task_dir, stream)
    }
}

#[cfg(test)]
mod tests {
    use ops_core::Tenant;

    use super::*;

    fn spec(duration: &str) -> LaunchSpec {
        let mut s = LaunchSpec::new(
            Tenant::parse("t").unwrap(),
            vec!["x".into()],
            "/nonexistent",
        );
        s.env.insert(DURATION_VAR.into(), duration.into());
        s.resources = Resources::new(1000, 1 << 30);
        s
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<ExecutorUpdate>) -> ExecutorUpdate {
        tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .expect("an update")
            .expect("channel open")
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_in_virtual_time() {
        let nodes = vec![NodeGroup::new(1, Resources::new(2000, 4 << 30))];
        let sim = SimExecutor::new(SimExecutorConfig::new(nodes).speedup(60.0)).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();

        // Completes after 10 virtual minutes = 10 real seconds.
        let start = Instant::now();
        let a = spec("10m");
        sim.launch(a.clone(), tx.clone()).await.unwrap();
        assert!(matches!(
            next(&mut rx).await,
            ExecutorUpdate::Started { .. }
        ));
        // A second one fills the node; a third waits for room.
        let b = spec("1h");
        let hb = sim.launch(b.clone(), tx.clone()).await.unwrap();
        assert!(
            matches!(next(&mut rx).await, ExecutorUpdate::Started { task_id, .. } if task_id == b.task_id)
        );
        let c = spec("1m");
        sim.launch(c.clone(), tx.clone()).await.unwrap();
        assert_eq!(sim.attempts(), (2, 1));
        match next(&mut rx).await {
            ExecutorUpdate::Finished {
                task_id, outcome, ..
            } => {
                assert_eq!(task_id, a.task_id);
                assert_eq!(outcome.reason, Reason::Completed);
                assert_eq!(outcome.usage.wall_time, Duration::from_secs(600));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(
            matches!(next(&mut rx).await, ExecutorUpdate::Started { task_id, .. } if task_id == c.task_id)
        );
        // Preempt b with 2 virtual minutes of grace.
        sim.preempt(&hb, Duration::from_secs(120)).await.unwrap();
        let first = next(&mut rx).await;
        // c (1 minute) ends first.
        assert!(matches!(first, ExecutorUpdate::Finished { task_id, .. } if task_id == c.task_id));
        match next(&mut rx).await {
            ExecutorUpdate::Finished {
                task_id, outcome, ..
            } => {
                assert_eq!(task_id, b.task_id);
                assert_eq!(outcome.reason, Reason::Preempted);
                assert_eq!(outcome.message.as_deref(), Some("preempted"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(12));

        // Exit code, timeout, cancel, bad values, impossible requests.
        let mut d = spec("1m");
        d.exit_code_env(3);
        sim.launch(d, tx.clone()).await.unwrap();
        assert!(matches!(
            next(&mut rx).await,
            ExecutorUpdate::Started { .. }
        ));
        match next(&mut rx).await {
            ExecutorUpdate::Finished { outcome, .. } => {
                assert_eq!(outcome.reason, Reason::NonZeroExit);
                assert_eq!(outcome.exit_code, Some(3));
            }
            other => panic!("{other:?}"),
        }
        let mut e = spec("1h");
        e.timeout = Some(Duration::from_secs(30));
        sim.launch(e, tx.clone()).await.unwrap();
        assert!(matches!(
            next(&mut rx).await,
            ExecutorUpdate::Started { .. }
        ));
        match next(&mut rx).await {
            ExecutorUpdate::Finished { outcome, .. } => {
                assert_eq!(outcome.reason, Reason::TimedOut);
                assert_eq!(outcome.usage.wall_time, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
        let f = spec("1h");
        let hf = sim.launch(f, tx.clone()).await.unwrap();
        assert!(matches!(
            next(&mut rx).await,
            ExecutorUpdate::Started { .. }
        ));
        assert_eq!(
            sim.reattach(&hf, &spec("1h"), tx.clone()).await.unwrap(),
            Reattached::Running
        );
        sim.cancel(&hf).await.unwrap();
        assert!(
            matches!(next(&mut rx).await, ExecutorUpdate::Finished { outcome, .. } if outcome.reason == Reason::Cancelled)
        );
        sim.cancel(&hf).await.unwrap();
        assert!(matches!(
            sim.reattach(&hf, &spec("1h"), tx.clone()).await.unwrap(),
            Reattached::Gone(o) if o.reason == Reason::CoordinatorLost
        ));
        sim.launch(spec("soon"), tx.clone()).await.unwrap();
        assert!(
            matches!(next(&mut rx).await, ExecutorUpdate::Finished { outcome, .. } if outcome.reason == Reason::LaunchFailed)
        );
        let mut g = spec("1m");
        g.resources = Resources::new(64_000, 1);
        sim.launch(g, tx.clone()).await.unwrap();
        assert!(
            matches!(next(&mut rx).await, ExecutorUpdate::Finished { outcome, .. } if outcome.reason == Reason::LaunchFailed)
        );
        assert_eq!(sim.attempts(), (0, 0));
        assert!(sim.clock() > Utc::now());
    }

    #[test]
    fn config_problems_are_listed() {
        let err = SimExecutor::new(SimExecutorConfig::new(vec![]).speedup(0.0)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("speedup"), "{text}");
        assert!(text.contains("at least one node"), "{text}");
    }

    trait ExitCode {
        fn exit_code_env(&mut self, code: i32);
    }
    impl ExitCode for LaunchSpec {
        fn exit_code_env(&mut self, code: i32) {
            self.env.insert(EXIT_CODE_VAR.into(), code.to_string());
        }
    }
}
