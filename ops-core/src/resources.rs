use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// GPUs wanted by a task: how many, and optionally which model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    /// Number of whole GPUs.
    #[serde(default)]
    pub count: u32,
    /// A model name such as `NVIDIA A100-SXM4-80GB`; matched as a case-insensitive
    /// substring of the device name. `None` takes any model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// An amount of compute: what a task requests or what a machine offers.
///
/// In configuration files `cpu` is a number of cores (`0.5`) or millicores (`"500m"`),
/// `memory` is a byte count or a quantity with a suffix (`"512Mi"`, `"2G"`), and `gpus`
/// a count or `{ count = 1, model = "A100" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Resources {
    /// CPU in thousandths of a core.
    #[serde(
        rename = "cpu",
        default,
        serialize_with = "ser_cpu",
        deserialize_with = "de_cpu"
    )]
    pub cpu_millis: u64,
    /// Memory in bytes.
    #[serde(rename = "memory", default, deserialize_with = "de_memory")]
    pub memory_bytes: u64,
    /// GPUs.
    #[serde(default, deserialize_with = "de_gpus")]
    pub gpus: GpuRequest,
}

impl Resources {
    /// Resources from CPU millicores and memory bytes, no GPU.
    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
            gpus: GpuRequest::default(),
        }
    }

    /// Adds `count` GPUs of an optional model.
    pub fn with_gpus(mut self, count: u32, model: Option<String>) -> Self {
        self.gpus = GpuRequest { count, model };
        self
    }

    /// Whether `self` fits inside `capacity` (CPU, memory and GPU count).
    pub fn fits_in(&self, capacity: &Resources) -> bool {
        self.cpu_millis <= capacity.cpu_millis
            && self.memory_bytes <= capacity.memory_bytes
            && self.gpus.count <= capacity.gpus.count
    }

    /// Every dimension in which `self` exceeds `capacity`, as readable sentences.
    pub fn shortfalls(&self, capacity: &Resources) -> Vec<String> {
        let mut out = Vec::new();
        if self.cpu_millis > capacity.cpu_millis {
            out.push(format!(
                "cpu {}m requested, {}m available",
                self.cpu_millis, capacity.cpu_millis
            ));
        }
        if self.memory_bytes > capacity.memory_bytes {
            out.push(format!(
                "memory {} bytes requested, {} bytes available",
                self.memory_bytes, capacity.memory_bytes
            ));
        }
        if self.gpus.count > capacity.gpus.count {
            out.push(format!(
                "{} GPUs requested, {} available",
                self.gpus.count, capacity.gpus.count
            ));
        }
        out
    }

    /// Adds CPU, memory and GPU count (keeps `self`'s GPU model).
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            gpus: GpuRequest {
                count: self.gpus.count.saturating_add(other.gpus.count),
                model: self.gpus.model.clone(),
            },
        }
    }

    /// Subtracts CPU, memory and GPU count, stopping at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            gpus: GpuRequest {
                count: self.gpus.count.saturating_sub(other.gpus.count),
                model: self.gpus.model.clone(),
            },
        }
    }

    /// Parses a CPU quantity: cores (`"2"`, `"0.5"`) or millicores (`"250m"`).
    pub fn parse_cpu(s: &str) -> Result<u64> {
        let bad = |reason: &str| Error::Invalid {
            what: "cpu quantity",
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let t = s.trim();
        if let Some(m) = t.strip_suffix('m') {
            return m
                .parse::<u64>()
                .map_err(|_| bad("expected whole millicores such as \"250m\""));
        }
        let cores: f64 = t
            .parse()
            .map_err(|_| bad("expected cores (\"0.5\") or millicores (\"500m\")"))?;
        cores_to_millis(cores).ok_or_else(|| bad("must be a finite, non-negative number"))
    }

    /// Parses a memory quantity: bytes, or a number with a suffix among
    /// `K M G T` (powers of 1000) and `Ki Mi Gi Ti` (powers of 1024).
    pub fn parse_memory(s: &str) -> Result<u64> {
        let bad = |reason: &str| Error::Invalid {
            what: "memory quantity",
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        let factor: u64 = match suffix.trim() {
            "" | "B" => 1,
            "K" | "k" | "KB" => 1_000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            "Ti" | "TiB" => 1 << 40,
            _ => return Err(bad("unknown suffix; use K, M, G, T, Ki, Mi, Gi or Ti")),
        };
        let n: f64 = num
            .parse()
            .map_err(|_| bad("expected a number such as \"512Mi\""))?;
        let bytes = n * factor as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad("out of range"));
        }
        Ok(bytes.round() as u64)
    }
}

fn cores_to_millis(cores: f64) -> Option<u64> {
    let m = cores * 1000.0;
    (m.is_finite() && m >= 0.0 && m <= u64::MAX as f64).then(|| m.round() as u64)
}

fn ser_cpu<S: Serializer>(millis: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{millis}m"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Int(u64),
    Float(f64),
    Str(String),
}

fn de_cpu<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    use serde::de::Error as _;
    match NumOrStr::deserialize(d)? {
        NumOrStr::Int(n) => n
            .checked_mul(1000)
            .ok_or_else(|| D::Error::custom("cpu out of range")),
        NumOrStr::Float(f) => cores_to_millis(f)
            .ok_or_else(|| D::Error::custom("cpu must be a finite, non-negative number")),
        NumOrStr::Str(s) => Resources::parse_cpu(&s).map_err(D::Error::custom),
    }
}

fn de_memory<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    use serde::de::Error as _;
    match NumOrStr::deserialize(d)? {
        NumOrStr::Int(n) => Ok(n),
        NumOrStr::Float(f) if f.is_finite() && f >= 0.0 => Ok(f.round() as u64),
        NumOrStr::Float(_) => Err(D::Error::custom("memory must be non-negative")),
        NumOrStr::Str(s) => Resources::parse_memory(&s).map_err(D::Error::custom),
    }
}

fn de_gpus<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<GpuRequest, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Gpus {
        Count(u32),
        Full(GpuRequest),
    }
    Ok(match Gpus::deserialize(d)? {
        Gpus::Count(count) => GpuRequest { count, model: None },
        Gpus::Full(g) => g,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantities() {
        assert_eq!(Resources::parse_cpu("250m").unwrap(), 250);
        assert_eq!(Resources::parse_cpu("1.5").unwrap(), 1500);
        assert_eq!(Resources::parse_memory("1Gi").unwrap(), 1 << 30);
        assert_eq!(Resources::parse_memory("2G").unwrap(), 2_000_000_000);
        assert_eq!(Resources::parse_memory("1024").unwrap(), 1024);
        let err = Resources::parse_memory("12XB").unwrap_err().to_string();
        assert!(err.contains("12XB") && err.contains("suffix"), "{err}");
        assert!(Resources::parse_cpu("-1").is_err());
    }

    #[test]
    fn deserializes_config_forms() {
        let r: Resources =
            serde_json::from_str(r#"{"cpu": 0.5, "memory": "256Mi", "gpus": 1}"#).unwrap();
        assert_eq!(r.cpu_millis, 500);
        assert_eq!(r.memory_bytes, 256 << 20);
        assert_eq!(r.gpus.count, 1);
        let r: Resources =
            serde_json::from_str(r#"{"cpu": "2", "gpus": {"count": 2, "model": "A100"}}"#).unwrap();
        assert_eq!(r.cpu_millis, 2000);
        assert_eq!(r.gpus.model.as_deref(), Some("A100"));
        let back: Resources = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let err = serde_json::from_str::<Resources>(r#"{"cpus": 1}"#).unwrap_err();
        assert!(err.to_string().contains("cpus"), "{err}");
    }

    #[test]
    fn fit_and_shortfalls() {
        let machine = Resources::new(2000, 1 << 30).with_gpus(1, None);
        let small = Resources::new(500, 1 << 20);
        let big = Resources::new(4000, 2 << 30).with_gpus(2, None);
        assert!(small.fits_in(&machine));
        assert!(!big.fits_in(&machine));
        assert_eq!(big.shortfalls(&machine).len(), 3);
        assert_eq!(machine.saturating_sub(&big), Resources::new(0, 0));
    }
}
