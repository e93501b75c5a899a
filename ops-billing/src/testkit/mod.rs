//! Conformance suites for the contracts of ops-billing, each with a `run_all` that runs
//! every check: [`ledger`] for a [`Ledger`](crate::ledger::Ledger) backend.

pub mod ledger;
