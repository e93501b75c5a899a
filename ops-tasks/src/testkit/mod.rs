//! Conformance suites (feature `testkit`): the one every [`HistoryStore`](crate::HistoryStore)
//! runs (its checks are the items of this module), and [`executor`], the one every
//! [`Executor`](crate::Executor) runs.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use ops_tasks::{HistoryStore, SqliteHistory};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let n = std::sync::atomic::AtomicUsize::new(0);
//! ops_tasks::testkit::run_all(|| {
//!     let path = dir.path().join(format!("h{}.db", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
//!     async move {
//!         Arc::new(SqliteHistory::open(&path.to_string_lossy()).await.unwrap()) as Arc<dyn HistoryStore>
//!     }
//! })
//! .await;
//! # }
//! ```
//!
//! `make` must return a fresh, empty store each time it is called. Each check is a
//! public function too, so a backend can run them one by one; a failed check panics
//! with a message that names it. [`events_reach_the_outbox`] also needs the store's
//! outbox as an [`EventBus`](ops_events::EventBus), so backends call it themselves.
//!
//! Lease checks use ttls of a few hundred milliseconds and sleep past them.

mod history;

pub mod executor;

pub use history::*;
