//! Conformance suites for backend authors (feature `testkit`), one module per contract,
//! each with a `run_all` that runs every check: [`bus`] for an
//! [`EventBus`](crate::EventBus), [`dead_letters`] for a
//! [`DeadLetters`](crate::DeadLetters) store. Each check is a public function too, so a
//! backend can run them one by one; a failed check panics with a message that starts
//! with its name.

pub mod bus;
pub mod dead_letters;

pub use bus::events;
