//! Dispatch counters.

use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of a dispatcher, for one function or in total. They only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DispatchStats {
    /// Events a function handled successfully.
    pub delivered: u64,
    /// Events that matched no trigger of the function (acknowledged, not called).
    pub skipped: u64,
    /// Calls that failed (each attempt counts).
    pub failed: u64,
    /// Failed calls scheduled for another attempt.
    pub retried: u64,
    /// Events sent to the dead letters.
    pub dead_lettered: u64,
    /// Dead letters replayed successfully.
    pub replayed: u64,
}

impl AddAssign for DispatchStats {
    fn add_assign(&mut self, o: Self) {
        self.delivered += o.delivered;
        self.skipped += o.skipped;
        self.failed += o.failed;
        self.retried += o.retried;
        self.dead_lettered += o.dead_lettered;
        self.replayed += o.replayed;
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) replayed: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> DispatchStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DispatchStats {
            delivered: get(&self.delivered),
            skipped: get(&self.skipped),
            failed: get(&self.failed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            replayed: get(&self.replayed),
        }
    }
}
