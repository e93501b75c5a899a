use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a task (or one of its attempts) consumed, carried in its events and stored in
/// history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Wall-clock time from start to exit.
    #[serde(with = "duration_secs")]
    pub wall_time: Duration,
    /// User plus system CPU time.
    #[serde(with = "duration_secs")]
    pub cpu_time: Duration,
    /// Peak resident memory in bytes (0 when unknown).
    pub peak_memory_bytes: u64,
    /// GPUs held multiplied by wall time, in seconds.
    pub gpu_seconds: f64,
}

impl Usage {
    /// A usage record from its parts.
    pub fn new(wall_time: Duration, cpu_time: Duration, peak_memory_bytes: u64, gpus: u32) -> Self {
        Self {
            wall_time,
            cpu_time,
            peak_memory_bytes,
            gpu_seconds: wall_time.as_secs_f64() * f64::from(gpus),
        }
    }

    /// Adds another attempt's usage to this one.
    pub fn accumulate(&mut self, other: &Usage) {
        self.wall_time += other.wall_time;
        self.cpu_time += other.cpu_time;
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
        self.gpu_seconds += other.gpu_seconds;
    }

    /// Whether nothing was consumed.
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    /// This usage less `part` of it (e.g. a task's total less its preempted attempts):
    /// times and GPU-seconds subtract, stopping at zero. The peak memory stays: a peak
    /// cannot be taken apart.
    pub fn saturating_sub(&self, part: &Usage) -> Usage {
        Usage {
            wall_time: self.wall_time.saturating_sub(part.wall_time),
            cpu_time: self.cpu_time.saturating_sub(part.cpu_time),
            peak_memory_bytes: self.peak_memory_bytes,
            gpu_seconds: (self.gpu_seconds - part.gpu_seconds).max(0.0),
        }
    }
}

mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_seconds_follow_wall_time() {
        let u = Usage::new(Duration::from_secs(10), Duration::from_secs(3), 42, 2);
        assert_eq!(u.gpu_seconds, 20.0);
        let json = serde_json::to_value(u).unwrap();
        assert_eq!(json["wall_time"], 10.0);
        let back: Usage = serde_json::from_value(json).unwrap();
        assert_eq!(back, u);
        let mut total = Usage::default();
        total.accumulate(&u);
        total.accumulate(&u);
        assert_eq!(total.wall_time, Duration::from_secs(20));
        assert_eq!(total.peak_memory_bytes, 42);
    }

    #[test]
    fn a_part_comes_off_and_never_below_zero() {
        let first = Usage::new(Duration::from_secs(10), Duration::from_secs(3), 42, 2);
        let second = Usage::new(Duration::from_secs(5), Duration::from_secs(4), 7, 2);
        let mut total = first;
        total.accumulate(&second);
        let rest = total.saturating_sub(&first);
        assert_eq!(rest.wall_time, Duration::from_secs(5));
        assert_eq!(rest.cpu_time, Duration::from_secs(4));
        assert_eq!(rest.gpu_seconds, 10.0);
        assert_eq!(rest.peak_memory_bytes, 42, "a peak stays");
        assert!(second.saturating_sub(&total).wall_time.is_zero());
        assert!(Usage::default().is_zero());
        assert!(!first.is_zero());
    }
}
