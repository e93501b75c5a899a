//! Conformance suites for backend authors (feature `testkit`), one module per contract,
//! each with a `run_all` that runs every check: [`history`] for a
//! [`HistoryStore`](crate::HistoryStore), [`executor`] for an
//! [`Executor`](crate::Executor). Each check is a public function too; a failed check
//! panics with a message that names it.

pub mod executor;
pub mod history;
