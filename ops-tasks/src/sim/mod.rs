//! Simulated nodes and a virtual clock: an executor for scale tests and capacity planning.
//!
//! - [`SimCluster`]: nodes built from [`NodeGroup`](crate::NodeGroup)s with per-node free
//!   resources, first-fit placement per pool, and pods left pending by fragmentation.
//! - [`SimExecutor`]: an [`Executor`](crate::Executor) whose attempts only hold a node for
//!   a virtual run time, so the whole task core (admission, events, history) can be run
//!   with thousands of nodes on one machine.
//! - [`Simulation`]: a deterministic discrete-event run of the admission algorithm alone
//!   (no tokio, no history) over a [`Scenario`], reporting waits, utilisation and an
//!   optional audit of the admission invariants: capacity planning ("what if we add 50
//!   GPU nodes?") and the scale benchmark.

mod cluster;
mod executor;
mod simulation;
mod workload;

pub use cluster::{NodeId, Placement, SimCluster, Utilisation};
pub use executor::{DURATION_VAR, EXIT_CODE_VAR, SimExecutor, SimExecutorConfig};
pub use simulation::{
    Scenario, SimReport, SimTask, Simulation, TenantReport, TenantSample, UsageSample, Violation,
    ViolationKind, WaitStats, human_duration,
};
pub use workload::{SplitMix64, Workload, WorkloadTemplate, WorkloadTenant};
