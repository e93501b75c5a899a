//! Ops provisioning: servers from cloud providers and from machines you own, priced,
//! chosen and never leaked.
//!
//! - [`Provider`]: offerings with prices, create (idempotent through a token label),
//!   list by labels, get, delete, wait until ready. Everything Ops creates carries
//!   `ops.managed-by=ops` and its fleet and pool, so Ops only ever touches what it owns.
//! - Backends always built: [`memory::InMemoryProvider`] (with injectable capacity,
//!   quota, rate-limit, lost-answer and delete faults, and API latency),
//!   [`inventory::StaticProvider`] (an inventory file of owned machines, each priced by
//!   its cost basis) and [`local::LocalProvider`] (this host).
//! - [`choice`]: the cheapest offering across providers and owned machines for a
//!   [`ResourceRequest`] (GPU model, CPU, memory, regions, spot, a maximum price, exchange
//!   rates), with every alternative's reason for losing
//!   ([`Ranking::explain`](choice::Ranking::explain)), and
//!   [`create_with_failover`](choice::create_with_failover) down the ranking on capacity
//!   and quota errors, each step an `ops.provision.failover` event.
//! - Errors are classified ([`Error::kind`], [`Error::is_capacity`],
//!   [`Error::is_retryable`]): capacity, quota, authentication, invalid request,
//!   transient.
//!
//! - [`fleet`]: a declarative [`fleet::FleetSpec`] (pools of N servers of an offering or
//!   a request) → [`fleet::Fleet::plan`] from what the providers really have (their
//!   labels are the source of truth) and the fleet's records, with the cost before and
//!   after → [`fleet::Fleet::apply`] with bounded concurrency, failover and per-slot
//!   failures (applying again resumes) → [`fleet::Fleet::destroy`];
//!   [`fleet::Fleet::refresh`] reconciles records with what exists and
//!   [`fleet::Fleet::sweep`] handles orphans (servers labelled as the fleet's that no
//!   record knows) by [`fleet::OrphanPolicy`].
//! - [`state`]: fleet records ([`state::FleetStore`]: in memory, SQLite, PostgreSQL),
//!   each change written with its `ops.node.*` events in one transaction.
//! - [`config`]: the `[provision]` section (providers and fleet specs) and
//!   [`config::Fleets`].
//! - `ssh` (feature `ssh`): SSH reachability of owned machines (russh).
//! - `hetzner`, `digitalocean` (features of those names): typed clients on reqwest
//!   sharing one rate-limit budget per credential (`http`).
//!
//! # Example
//!
//! ```
//! use ops_provision::choice::{self, ResourceRequest};
//! use ops_provision::memory::InMemoryProvider;
//! use ops_provision::{Offering, Provider};
//! use rust_decimal::Decimal;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ops_provision::Result<()> {
//! let cloud = InMemoryProvider::new("cloud", vec![
//!     Offering::new("", "small", "fsn1", 2000, 4 << 30, Decimal::new(6, 3), "EUR"),
//!     Offering::new("", "large", "fsn1", 8000, 32 << 30, Decimal::new(40, 3), "EUR"),
//! ]);
//! let request = ResourceRequest::new().cpu_millis(4000);
//! let ranking = choice::rank(&cloud.offerings().await?, &request)?;
//! assert_eq!(ranking.best()?.offering.instance_type, "large");
//! assert!(ranking.explain().contains("2 CPU < 4 asked"));
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | fleet records in SQLite beside the `ops-events` outbox (`state::SqliteFleetStore`) |
//! | `ssh` | yes | SSH reachability of owned machines (`ssh`, `StaticProvider::check_reachable`, `check_ssh` hosts) |
//! | `postgres` | no | fleet records in PostgreSQL (`state::PostgresFleetStore`) |
//! | `hetzner` | no | Hetzner Cloud (`hetzner::HetznerProvider`) |
//! | `digitalocean` | no | DigitalOcean (`digitalocean::DigitalOceanProvider`) |
//! | `testkit` | no | the provider conformance suite (`testkit`) |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod offering;
mod provider;
mod server;

pub mod choice;
pub mod config;
#[cfg(feature = "digitalocean")]
#[cfg_attr(docsrs, doc(cfg(feature = "digitalocean")))]
pub mod digitalocean;
pub mod fleet;
#[cfg(feature = "hetzner")]
#[cfg_attr(docsrs, doc(cfg(feature = "hetzner")))]
pub mod hetzner;
#[cfg(any(feature = "hetzner", feature = "digitalocean"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "hetzner", feature = "digitalocean"))))]
pub mod http;
pub mod inventory;
pub mod local;
pub mod memory;
#[cfg(feature = "ssh")]
#[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
pub mod ssh;
pub mod state;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use choice::ResourceRequest;
pub use error::{Error, Result};
pub use offering::{HOURS_PER_MONTH, Offering};
pub use provider::Provider;
pub use server::{
    FLEET, Labels, MANAGED_BY, MANAGED_BY_OPS, POOL, Server, ServerSpec, ServerStatus, TOKEN, token,
};
