//! How often a task is tried and how long to wait between attempts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::format_duration;

/// Retry policy of a template: `[retries]` in a template file.
///
/// ```toml
/// [retries]
/// max_attempts = 3      # total attempts, the first one included
/// backoff = "10s"       # wait after the first failure
/// multiplier = 2.0      # each later wait is this much longer
/// max_backoff = "5m"    # waits never exceed this
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Total attempts, the first one included (at least 1; 1 means no retry).
    pub max_attempts: u32,
    /// Wait after the first failed attempt.
    #[serde(with = "crate::duration::serde_duration")]
    pub backoff: Duration,
    /// Factor applied to the wait after each further failure (at least 1.0).
    pub multiplier: f64,
    /// Upper bound of any wait.
    #[serde(with = "crate::duration::serde_duration")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts in total, with the default backoff.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            ..Self::default()
        }
    }

    /// Sets the first wait, the growth factor and the upper bound.
    pub fn with_backoff(
        mut self,
        backoff: Duration,
        multiplier: f64,
        max_backoff: Duration,
    ) -> Self {
        self.backoff = backoff;
        self.multiplier = multiplier;
        self.max_backoff = max_backoff;
        self
    }

    /// Whether another attempt may follow attempt number `attempt` (counted from 1).
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// How long to wait after attempt number `attempt` (counted from 1; 0 counts as 1)
    /// failed: `backoff × multiplier^(attempt − 1)`, at most `max_backoff`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.backoff.as_secs_f64() * self.multiplier.powi(exponent);
        if secs.is_nan() || secs <= 0.0 {
            return Duration::ZERO;
        }
        match Duration::try_from_secs_f64(secs) {
            Ok(d) => d.min(self.max_backoff),
            Err(_) => self.max_backoff,
        }
    }

    /// Problems with the values, as `(field, message)` relative to the policy.
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_attempts == 0 {
            out.push((
                "max_attempts",
                "must be at least 1 (1 means no retry)".to_owned(),
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            out.push((
                "multiplier",
                format!(
                    "must be a finite number of at least 1.0, not {}",
                    self.multiplier
                ),
            ));
        }
        if self.max_backoff < self.backoff {
            out.push((
                "max_backoff",
                format!(
                    "{} is shorter than backoff ({})",
                    format_duration(self.max_backoff),
                    format_duration(self.backoff)
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let p =
            RetryPolicy::new(5).with_backoff(Duration::from_secs(1), 2.0, Duration::from_secs(5));
        let delays: Vec<u64> = (1..=5).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(p.delay(0), Duration::from_secs(1));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(5));
        assert!(p.allows_another(4) && !p.allows_another(5));
        assert!(!RetryPolicy::default().allows_another(1));
        assert!(RetryPolicy::default().problems().is_empty());
    }

    #[test]
    fn reads_config_forms() {
        let p: RetryPolicy =
            toml::from_str("max_attempts = 3\nbackoff = \"10s\"\nmax_backoff = 600").unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.backoff, Duration::from_secs(10));
        assert_eq!(p.multiplier, 2.0);
        assert_eq!(p.max_backoff, Duration::from_secs(600));
        let back: RetryPolicy = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(toml::from_str::<RetryPolicy>("attempts = 3").is_err());
        let bad =
            RetryPolicy::new(0).with_backoff(Duration::from_secs(10), 0.5, Duration::from_secs(1));
        let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["max_attempts", "multiplier", "max_backoff"]);
    }
}
