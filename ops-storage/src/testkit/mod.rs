//! Conformance suites for backend authors (feature `testkit`), one module per contract,
//! each with a `run_all` that runs every check: [`backend`] for a storage backend
//! behind a [`Storage`](crate::Storage), [`catalog`] for a
//! [`Catalog`](crate::Catalog). Each check is a public function too; a failed check
//! panics with a message that names it.

pub mod backend;
pub mod catalog;

pub use backend::unique_tenant;
