//! Ops: the SDK for building a cloud-computing platform — you have machines (or cloud
//! accounts) and want to sell services on them; you write the tasks you offer and the
//! logic around them, Ops is the engine.
//!
//! This crate is the one door for the common case, in the manner of `kube` over
//! `kube-core`, `kube-client` and `kube-runtime`. It re-exports the parts, each a crate
//! usable alone:
//!
//! | module | crate | what it owns |
//! |---|---|---|
//! | [`core`] | `ops-core` | vocabulary: resources, ids, tenants, events, error kinds |
//! | [`events`] | `ops-events` | the event spine: buses, the outbox, functions, webhooks |
//! | [`tasks`] | `ops-tasks` | templates, admission, executors, history, the task service |
//! | [`storage`] | `ops-storage` | tenant-scoped object storage for inputs and outputs |
//! | [`billing`] | `ops-billing` | money, price books, the ledger, metering, credit held at admission, invoices (plus [`billing::BillingGate`]) |
//! | `monitor` | `ops-monitor` | metrics in Prometheus' formats, health checks, alert rules, dashboards (feature `monitor`) |
//! | `provision` | `ops-provision` | fleets of servers from clouds and owned machines: offers, plans with costs, apply, destroy, records with events (feature `provision`) |
//!
//! and owns the wiring between them: a [`Platform`] from a [`PlatformBuilder`] or one
//! TOML file ([`PlatformConfig`], every problem reported at once) — history, outbox,
//! dead letters, the storage catalog and the billing ledger in one database chosen by URL
//! ([`backends`]); the event bus by URL with its relay; storage with staging of task
//! inputs and outputs ([`staging`]); billing (`[billing]`: each task's worst case held
//! from its tenant's credit before it starts, settled from its final event); the
//! executor; functions and webhooks from code or
//! configuration with durable dead letters; and one [`Platform::shutdown`].
//!
//! ```
//! # #[cfg(all(unix, feature = "sqlite", feature = "local"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ops::prelude::*;
//! use ops::tasks::template::{Catalogue, Format, TaskTemplate};
//!
//! let dir = tempfile::tempdir()?;
//! let mut catalogue = Catalogue::new();
//! catalogue.insert(TaskTemplate::from_str(
//!     r#"name = "hello"
//!        command = ["sh", "-c", "echo hi > greeting.txt"]
//!        outputs = ["*.txt"]"#,
//!     Format::Toml,
//!     "hello.toml",
//! )?);
//! let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
//! let platform = Platform::builder()
//!     .history(format!("sqlite://{}/ops.db", dir.path().display()))
//!     .catalogue(catalogue)
//!     .root(dir.path().join("tasks"))
//!     .function(Trigger::on(event_types::TASK_SUCCEEDED), function_fn("tell", move |event| {
//!         let tx = tx.clone();
//!         async move { tx.send(event.subject.clone()).map_err(|e| FunctionError::permanent(e.to_string())) }
//!     }))
//!     .start()
//!     .await?;
//! let acme = platform.tenant(&Tenant::parse("acme")?);
//! let id = acme.submit(SubmitRequest::new("hello")).await?;
//! assert_eq!(acme.wait(id).await?.status, TaskStatus::Succeeded);
//! assert_eq!(acme.outputs(id).await?[0].path, "greeting.txt");
//! let told = tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv()).await?;
//! assert_eq!(told, Some(Some(id.to_string())));
//! platform.shutdown().await;
//! # Ok(()) }
//! # #[cfg(not(all(unix, feature = "sqlite", feature = "local")))]
//! # fn main() {}
//! ```
//!
//! # Features
//!
//! Backends are features of this crate, forwarded to the parts:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | SQLite history, outbox, dead letters, storage catalog and billing ledger |
//! | `local` | yes | the local executor (Unix) |
//! | `webhook` | yes | webhook functions (`[[webhooks]]`) |
//! | `postgres` | no | PostgreSQL history, outbox, dead letters, storage catalog and billing ledger |
//! | `nats` | no | NATS JetStream as the event bus, fed by a relay from the outbox |
//! | `kube` | no | the Kubernetes executor (`[kube]`) |
//! | `s3` | no | S3-compatible object storage and signed URLs |
//! | `sim` | no | the simulation executor and capacity planner |
//! | `stripe` | no | Stripe as the payment provider (`[billing.payments]`) |
//! | `monitor` | yes | `[monitor]`: task, queue, host, GPU and event-spine metrics, `/metrics`, `/healthz`, `/readyz` |
//! | `nvml` | no | GPU metrics through NVML (DCGM exporter's names) |
//! | `provision` | yes | `[provision]`: fleets on owned machines (inventory, SSH checks) and this host, records in the history database ([`Platform::fleets`]) |
//! | `hetzner` | no | Hetzner Cloud servers for fleets (`[provision.hetzner]`) |
//! | `digitalocean` | no | DigitalOcean droplets for fleets (`[provision.digitalocean]`) |
//!
//! A configuration that names a backend whose feature is off is refused with the
//! feature to enable.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backends;
pub mod billing;
pub mod config;
mod error;
#[cfg(feature = "monitor")]
mod monitoring;
mod platform;
pub mod staging;

pub use config::{
    BillingConfig, DeadLetterStore, OnExhausted, PaymentsConfig, PlatformConfig, WebhookEntry,
};
pub use error::{Error, Result};
pub use platform::{Platform, PlatformBuilder, STORAGE_RETENTION_INTERVAL};

/// `ops-core`: the vocabulary every part shares.
pub use ops_core as core;
/// `ops-events`: the event spine.
pub use ops_events as events;
/// `ops-monitor`: metrics, health checks, alert rules and dashboards (feature
/// `monitor`).
#[cfg(feature = "monitor")]
pub use ops_monitor as monitor;
/// `ops-provision`: servers from cloud providers and owned machines, priced, planned
/// and recorded (feature `provision`).
#[cfg(feature = "provision")]
pub use ops_provision as provision;
/// `ops-storage`: tenant-scoped object storage.
pub use ops_storage as storage;
/// `ops-tasks`: templates, admission, executors, history and the task service.
pub use ops_tasks as tasks;

/// What most platform programs use: `use ops::prelude::*;`.
pub mod prelude {
    pub use crate::{Platform, PlatformConfig};
    pub use ops_core::{Environment, ErrorKind, Event, TaskId, TaskStatus, Tenant, event_types};
    pub use ops_events::{Function, FunctionError, Trigger, function_fn};
    pub use ops_tasks::{SubmitRequest, TaskQuery, TasksConfig};
    /// Parameters of a [`SubmitRequest`] are JSON: `json!({ "scene": "teapot" })`.
    pub use serde_json::json;
}
