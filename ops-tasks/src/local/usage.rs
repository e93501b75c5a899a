//! Measuring what an attempt consumes when no cgroup counts it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::process::{page_size, peak_rss, read_stat, ticks_to_duration};

/// Samples the processes of an attempt from `/proc`: CPU ticks per process (the last
/// value seen for a process that has gone is kept) and the peak of the group's total
/// resident memory. Processes that live less than one sampling interval are missed;
/// the wrapper's `times` record covers those it waited for.
#[derive(Debug, Default)]
pub(crate) struct ProcMeter {
    /// (pid, start ticks) → CPU ticks last seen.
    cpu: HashMap<(i32, u64), u64>,
    peak_total_rss: u64,
    peak_single_hwm: u64,
    last_total_rss: u64,
}

impl ProcMeter {
    /// Samples `pids`; returns the group's current resident memory in bytes.
    pub fn sample(&mut self, pids: &BTreeSet<i32>) -> u64 {
        let page = page_size();
        let mut total = 0;
        for &pid in pids {
            let Some(stat) = read_stat(pid) else { continue };
            if stat.is_dead() {
                continue;
            }
            self.cpu.insert((pid, stat.start_ticks), stat.cpu_ticks);
            total += stat.rss_pages * page;
            if let Some(hwm) = peak_rss(pid) {
                self.peak_single_hwm = self.peak_single_hwm.max(hwm);
            }
        }
        self.peak_total_rss = self.peak_total_rss.max(total);
        self.last_total_rss = total;
        total
    }

    /// CPU time of every process seen.
    pub fn cpu_time(&self) -> Duration {
        ticks_to_duration(self.cpu.values().sum())
    }

    /// Highest resident memory seen (whole group, or one process's own high-water mark).
    pub fn peak_memory(&self) -> u64 {
        self.peak_total_rss.max(self.peak_single_hwm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let mut m = ProcMeter::default();
        let me = BTreeSet::from([std::process::id() as i32]);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(m.sample(&me) > 0);
        assert!(m.peak_memory() > 0);
        let _ = m.cpu_time();
    }
}
