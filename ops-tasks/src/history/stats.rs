//! Per-template statistics over task history: how many tasks ended how, how long they
//! waited for capacity and ran, and what they consumed.
//!
//! [`aggregate`] computes them from records; [`HistoryReader::stats`](super::HistoryReader::stats)
//! pages through a store and aggregates.
//!
//! ```
//! use ops_tasks::history::{StatsQuery, aggregate};
//!
//! let query = StatsQuery::new().since(chrono::Utc::now() - chrono::Duration::days(7));
//! assert!(query.since.is_some());
//! assert!(aggregate([]).is_empty());
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ops_core::{TaskStatus, Tenant, Usage};
use serde::{Deserialize, Serialize};

use super::TaskRecord;

/// Which of a tenant's tasks [`HistoryReader::stats`](super::HistoryReader::stats)
/// aggregates: those submitted in `[since, until)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StatsQuery {
    /// Submitted at or after.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Submitted before.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
}

impl StatsQuery {
    /// Every task (of the tenant it runs for).
    pub fn new() -> Self {
        Self::default()
    }

    /// Only tasks submitted at or after `since`.
    pub fn since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }

    /// Only tasks submitted before `until`.
    pub fn until(mut self, until: DateTime<Utc>) -> Self {
        self.until = Some(until);
        self
    }
}

/// Statistics of one template of one tenant.
///
/// Counts and usage cover tasks in a final state; wait times cover every task that
/// started (also those still running). A retried task's wait is from its submission to
/// the start of its latest attempt, and its run time that attempt's. Percentiles are
/// nearest-rank (the p95 of 20 values is the 19th smallest); with no value they are
/// zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TemplateStats {
    /// The tenant.
    pub tenant: Tenant,
    /// The template.
    pub template: String,
    /// Tasks in a final state.
    pub tasks: u64,
    /// Of those, succeeded.
    pub succeeded: u64,
    /// Of those, failed or timed out.
    pub failed: u64,
    /// Of those, cancelled.
    pub cancelled: u64,
    /// Tasks that started (finished or not): how many waits were measured.
    pub started: u64,
    /// Mean time from submission to start.
    #[serde(with = "crate::duration::serde_duration")]
    pub wait_mean: Duration,
    /// Median time from submission to start.
    #[serde(with = "crate::duration::serde_duration")]
    pub wait_p50: Duration,
    /// 95th percentile of the time from submission to start.
    #[serde(with = "crate::duration::serde_duration")]
    pub wait_p95: Duration,
    /// Longest time from submission to start.
    #[serde(with = "crate::duration::serde_duration")]
    pub wait_max: Duration,
    /// Mean time from start to end, of finished tasks that started.
    #[serde(with = "crate::duration::serde_duration")]
    pub run_mean: Duration,
    /// 95th percentile of the time from start to end.
    #[serde(with = "crate::duration::serde_duration")]
    pub run_p95: Duration,
    /// Usage of the finished tasks, summed (peak memory: the highest).
    pub usage: Usage,
}

/// Statistics per (tenant, template) of `records`, sorted by tenant then template.
pub fn aggregate<'a>(records: impl IntoIterator<Item = &'a TaskRecord>) -> Vec<TemplateStats> {
    let mut groups = Groups::default();
    for r in records {
        groups.add(r);
    }
    groups.finish()
}

/// [`aggregate`] a page at a time, keeping only what the statistics need.
#[derive(Default)]
pub(crate) struct Groups(BTreeMap<(Tenant, String), Group>);

impl Groups {
    pub(crate) fn add(&mut self, r: &TaskRecord) {
        self.0
            .entry((r.tenant.clone(), r.template.clone()))
            .or_default()
            .add(r);
    }

    pub(crate) fn finish(self) -> Vec<TemplateStats> {
        self.0
            .into_iter()
            .map(|((tenant, template), g)| g.finish(tenant, template))
            .collect()
    }
}

/// What [`aggregate`] collects for one template.
#[derive(Default)]
struct Group {
    tasks: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    waits: Vec<Duration>,
    runs: Vec<Duration>,
    usage: Usage,
}

impl Group {
    fn add(&mut self, r: &TaskRecord) {
        if let Some(started) = r.started_at {
            self.waits.push(between(r.submitted_at, started));
        }
        if !r.status.is_final() {
            return;
        }
        self.tasks += 1;
        match r.status {
            TaskStatus::Succeeded => self.succeeded += 1,
            TaskStatus::Cancelled => self.cancelled += 1,
            _ => self.failed += 1,
        }
        if let (Some(started), Some(finished)) = (r.started_at, r.finished_at) {
            self.runs.push(between(started, finished));
        }
        self.usage.accumulate(&r.usage);
    }

    fn finish(mut self, tenant: Tenant, template: String) -> TemplateStats {
        self.waits.sort_unstable();
        self.runs.sort_unstable();
        TemplateStats {
            tenant,
            template,
            tasks: self.tasks,
            succeeded: self.succeeded,
            failed: self.failed,
            cancelled: self.cancelled,
            started: self.waits.len() as u64,
            wait_mean: mean(&self.waits),
            wait_p50: percentile(&self.waits, 50),
            wait_p95: percentile(&self.waits, 95),
            wait_max: self.waits.last().copied().unwrap_or_default(),
            run_mean: mean(&self.runs),
            run_p95: percentile(&self.runs, 95),
            usage: self.usage,
        }
    }
}

/// `to - from`, zero when clocks disagree and it would be negative.
fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

fn mean(values: &[Duration]) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let total: u128 = values.iter().map(Duration::as_nanos).sum();
    let nanos = total / values.len() as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ops_core::{Environment, Labels, TaskId};

    use super::*;
    use crate::LaunchSpec;
    use crate::template::RetryPolicy;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A task of `template` submitted at t0, started after `wait` and finished `run`
    /// later (in seconds).
    fn record(
        tenant: &str,
        template: &str,
        status: TaskStatus,
        wait: Option<i64>,
        run: Option<i64>,
    ) -> TaskRecord {
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let started_at = wait.map(|w| t0 + chrono::Duration::seconds(w));
        let finished_at = match (started_at, run) {
            (Some(s), Some(r)) => Some(s + chrono::Duration::seconds(r)),
            _ if status.is_final() => Some(t0),
            _ => None,
        };
        TaskRecord {
            id: TaskId::new(),
            tenant: Tenant::parse(tenant).unwrap(),
            environment: Environment::default(),
            template: template.to_owned(),
            status,
            reason: None,
            message: None,
            exit_code: None,
            priority: 0,
            attempt: 1,
            max_attempts: 1,
            labels: Labels::new(),
            parameters: serde_json::Value::Null,
            spec: LaunchSpec::new(
                Tenant::parse(tenant).unwrap(),
                vec!["true".into()],
                PathBuf::new(),
            ),
            retry: RetryPolicy::default(),
            run_handle: None,
            usage: Usage::new(secs(run.unwrap_or(0) as u64), secs(1), 100, 1),
            preempted_usage: Usage::default(),
            submitted_at: t0,
            started_at,
            finished_at,
            not_before: None,
            owner: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=20).map(secs).collect();
        assert_eq!(percentile(&values, 50), secs(10));
        assert_eq!(percentile(&values, 95), secs(19));
        assert_eq!(percentile(&values, 100), secs(20));
        assert_eq!(percentile(&values[..1], 95), secs(1));
        assert_eq!(percentile(&values[..4], 50), secs(2));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
        assert_eq!(mean(&values), Duration::from_millis(10_500));
        assert_eq!(mean(&[]), Duration::ZERO);
    }

    #[test]
    fn aggregates_per_tenant_and_template() {
        use TaskStatus::*;
        let mut records = vec![
            record("acme", "render", Succeeded, Some(2), Some(10)),
            record("acme", "render", Failed, Some(4), Some(20)),
            record("acme", "render", TimedOut, Some(6), Some(30)),
            record("acme", "render", Cancelled, None, None),
            // Running: counts for waits only.
            record("acme", "render", Running, Some(8), None),
            // Queued: nothing but its group.
            record("acme", "render", Queued, None, None),
            record("acme", "bake", Succeeded, Some(1), Some(1)),
            record("zeta", "render", Succeeded, Some(0), Some(5)),
        ];
        // Clocks that disagree never make a negative wait.
        records.push(record("acme", "bake", Succeeded, Some(-3), Some(1)));
        let stats = aggregate(&records);
        let keys: Vec<_> = stats
            .iter()
            .map(|s| (s.tenant.as_str(), s.template.as_str()))
            .collect();
        assert_eq!(
            keys,
            [("acme", "bake"), ("acme", "render"), ("zeta", "render")]
        );

        let render = &stats[1];
        assert_eq!(
            (
                render.tasks,
                render.succeeded,
                render.failed,
                render.cancelled,
                render.started
            ),
            (4, 1, 2, 1, 4)
        );
        assert_eq!(render.wait_mean, secs(5));
        assert_eq!(render.wait_p50, secs(4));
        assert_eq!(render.wait_p95, secs(8));
        assert_eq!(render.wait_max, secs(8));
        assert_eq!(render.run_mean, secs(20));
        assert_eq!(render.run_p95, secs(30));
        assert_eq!(render.usage.wall_time, secs(60));
        assert_eq!(render.usage.cpu_time, secs(4));
        assert_eq!(render.usage.peak_memory_bytes, 100);

        let bake = &stats[0];
        assert_eq!((bake.tasks, bake.succeeded, bake.started), (2, 2, 2));
        assert_eq!(bake.wait_p50, Duration::ZERO);
        assert_eq!(bake.wait_max, secs(1));

        let json = serde_json::to_value(render).unwrap();
        assert_eq!(json["wait_mean"], "5s");
        let back: TemplateStats = serde_json::from_value(json).unwrap();
        assert_eq!(&back, render);
    }
}
