//! Meters: what is counted. Built-in meters for task usage and storage, and meters a
//! builder declares on any CloudEvent type with a JSON path to the quantity.

use ops_core::Event;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The built-in meters, fed by `ops.task.*` and `ops.storage.*` events.
pub mod builtin {
    /// CPU time used, in core-seconds.
    pub const CPU_CORE_SECONDS: &str = "cpu_core_seconds";
    /// Memory held, in GiB-seconds.
    pub const MEMORY_GIB_SECONDS: &str = "memory_gib_seconds";
    /// GPUs held, in GPU-seconds (priced per GPU model).
    pub const GPU_SECONDS: &str = "gpu_seconds";
    /// Wall-clock time, in seconds.
    pub const WALL_SECONDS: &str = "wall_seconds";
    /// Tasks that ended (a count).
    pub const TASKS: &str = "tasks";
    /// Bytes stored over time, in GB-months (a time-weighted sum of created and
    /// deleted objects; a month is 30 days).
    pub const STORAGE_GB_MONTHS: &str = "storage_gb_months";
    /// Every built-in meter.
    pub const ALL: &[&str] = &[
        CPU_CORE_SECONDS,
        MEMORY_GIB_SECONDS,
        GPU_SECONDS,
        WALL_SECONDS,
        TASKS,
        STORAGE_GB_MONTHS,
    ];
}

/// How a meter aggregates the quantities of its events over a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The sum of the quantities.
    Sum,
    /// The number of events (no quantity needed).
    Count,
    /// The largest quantity.
    Max,
    /// The quantity of the latest event.
    Latest,
    /// The number of distinct quantities (e.g. distinct users).
    UniqueCount,
    /// The quantity integrated over time (a level, such as bytes stored, times how
    /// long it held).
    TimeWeightedSum,
}

/// A meter declared in the price book (`[[meters]]`).
///
/// ```
/// use ops_billing::MeterSpec;
/// let spec: MeterSpec = toml::from_str(r#"
///     name = "tokens"
///     event = "com.acme.llm.completed"
///     quantity = "$.usage.total_tokens"
///     aggregation = "sum"
/// "#).unwrap();
/// assert!(spec.problems("meters[0]").is_empty());
/// assert_eq!(spec.pointer().as_deref(), Some("/usage/total_tokens"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSpec {
    /// The meter's name, used by prices (`meter = "tokens"`).
    pub name: String,
    /// The CloudEvent type it counts (exact).
    pub event: String,
    /// A JSON path into the event's `data` (`$.usage.tokens`, `$.items[0].n`) or a JSON
    /// pointer (`/usage/tokens`); not needed for `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
    /// How quantities add up over a period.
    pub aggregation: Aggregation,
}

impl MeterSpec {
    /// Every problem of the declaration, each prefixed by `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if ops_core::Tenant::parse(&self.name).is_err() {
            out.push(format!(
                "{at}.name: {:?} breaks the name rule ({})",
                self.name,
                ops_core::NAME_RULE
            ));
        }
        if builtin::ALL.contains(&self.name.as_str()) {
            out.push(format!(
                "{at}.name: {:?} is a built-in meter; choose another name",
                self.name
            ));
        }
        if self.event.trim().is_empty() {
            out.push(format!("{at}.event: must name a CloudEvent type"));
        }
        match (&self.quantity, self.aggregation) {
            (None, Aggregation::Count) => {}
            (None, _) => out.push(format!(
                "{at}.quantity: needed for aggregation {:?} (only count goes without)",
                self.aggregation
            )),
            (Some(path), _) => {
                if let Err(e) = json_pointer(path) {
                    out.push(format!("{at}.quantity: {e}"));
                }
            }
        }
        out
    }

    /// The quantity's location as a JSON pointer, if the path is valid.
    pub fn pointer(&self) -> Option<String> {
        self.quantity.as_deref().and_then(|p| json_pointer(p).ok())
    }

    /// The quantity this meter reads from `event`: `Ok(None)` when the event is not of
    /// its type; 1 for `count`. A missing, negative, non-numeric or non-finite quantity
    /// is [`Error::InvalidQuantity`] naming the meter, the event and the value.
    pub fn quantity(&self, event: &Event) -> Result<Option<Decimal>> {
        if event.ty != self.event {
            return Ok(None);
        }
        let invalid = |value: String| Error::InvalidQuantity {
            meter: self.name.clone(),
            event: event.id.to_string(),
            value,
        };
        let Some(pointer) = self.pointer() else {
            return if self.aggregation == Aggregation::Count {
                Ok(Some(Decimal::ONE))
            } else {
                Err(invalid("no quantity path".to_owned()))
            };
        };
        let value = event
            .data
            .pointer(&pointer)
            .ok_or_else(|| invalid(format!("nothing at {pointer}")))?;
        let text = match value {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => return Err(invalid(other.to_string())),
        };
        let quantity = text
            .parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(&text))
            .map_err(|_| invalid(text.clone()))?;
        if quantity < Decimal::ZERO {
            return Err(invalid(text));
        }
        Ok(Some(quantity))
    }
}

/// A JSON path of names and indexes (`$.a.b[0]`, `$['a b']` is not supported) or a
/// JSON pointer (`/a/b/0`), as a JSON pointer.
fn json_pointer(path: &str) -> std::result::Result<String, String> {
    if path.starts_with('/') {
        return Ok(path.to_owned());
    }
    let Some(rest) = path.strip_prefix('$') else {
        return Err(format!(
            "{path:?} is neither a JSON path ($.a.b) nor a JSON pointer (/a/b)"
        ));
    };
    let mut pointer = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                if name.is_empty() || name == "*" {
                    return Err(format!("{path:?}: an empty or wildcard name"));
                }
                pointer.push('/');
                pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
            }
            '[' => {
                let mut index = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    index.push(n);
                }
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{path:?}: [{index}] is not an array index"));
                }
                pointer.push('/');
                pointer.push_str(&index);
            }
            other => return Err(format!("{path:?}: unexpected {other:?}")),
        }
    }
    if pointer.is_empty() {
        return Err(format!(
            "{path:?} names the whole event data, not a quantity"
        ));
    }
    Ok(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(quantity: Option<&str>, aggregation: Aggregation) -> MeterSpec {
        MeterSpec {
            name: "tokens".into(),
            event: "com.acme.llm.completed".into(),
            quantity: quantity.map(str::to_owned),
            aggregation,
        }
    }

    fn event(data: serde_json::Value) -> Event {
        Event::builder("com.acme.llm.completed", "/acme/llm")
            .json(data)
            .build()
    }

    #[test]
    fn paths_become_pointers_and_bad_ones_are_named() {
        assert_eq!(json_pointer("$.a.b[2].c").unwrap(), "/a/b/2/c");
        assert_eq!(json_pointer("/a/b").unwrap(), "/a/b");
        assert_eq!(json_pointer("$.a/b").unwrap(), "/a~1b");
        for bad in ["a.b", "$", "$.a[x]", "$..a", "$.*", "$a"] {
            assert!(json_pointer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities_are_read_and_bad_ones_refused() {
        let s = spec(Some("$.usage.tokens"), Aggregation::Sum);
        let q = |v| s.quantity(&event(json!({ "usage": { "tokens": v } })));
        assert_eq!(q(json!(1500)).unwrap(), Some(Decimal::from(1500)));
        assert_eq!(q(json!("2.5")).unwrap(), Some("2.5".parse().unwrap()));
        assert_eq!(q(json!(1.5e3)).unwrap(), Some(Decimal::from(1500)));
        for bad in [
            json!(-1),
            json!("NaN"),
            json!("inf"),
            json!(null),
            json!([1]),
        ] {
            let err = q(bad.clone()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidQuantity { meter, .. } if meter == "tokens"),
                "{bad}: {err}"
            );
            assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
        }
        let missing = s.quantity(&event(json!({}))).unwrap_err();
        assert!(
            missing.to_string().contains("nothing at /usage/tokens"),
            "{missing}"
        );
        let other = Event::builder("com.acme.other", "/x").build();
        assert_eq!(s.quantity(&other).unwrap(), None);
        let count = spec(None, Aggregation::Count);
        assert_eq!(
            count.quantity(&event(json!({}))).unwrap(),
            Some(Decimal::ONE)
        );
    }

    #[test]
    fn declarations_list_every_problem() {
        let bad = MeterSpec {
            name: "gpu_seconds".into(),
            event: " ".into(),
            quantity: None,
            aggregation: Aggregation::Max,
        };
        let problems = bad.problems("meters[1]");
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("built-in meter"), "{problems:?}");
        assert!(problems[1].starts_with("meters[1].event"), "{problems:?}");
        assert!(
            problems[2].starts_with("meters[1].quantity"),
            "{problems:?}"
        );
        let worse = spec(Some("usage"), Aggregation::Sum);
        assert!(worse.problems("m")[0].contains("neither a JSON path"));
    }
}
