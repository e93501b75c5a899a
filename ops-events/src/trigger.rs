//! [`Trigger`]: which events a function receives.

use std::collections::BTreeMap;

use ops_core::{Event, Tenant};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Selects events for a function: event type patterns, plus optional filters on the
/// subject and on extension attributes (such as `tenant`). An event matches when its
/// type matches any of `types`, its subject matches `subject` (if set) and every
/// `extensions` entry matches the attribute of that name.
///
/// Patterns are exact, or end with `*` to match a prefix: `ops.task.*` matches
/// `ops.task.failed` and `ops.task.output.created`; `*` alone matches everything. A
/// `*` anywhere else is rejected by [`validate`](Self::validate).
///
/// ```
/// use ops_core::Event;
/// use ops_events::Trigger;
///
/// let acme = ops_core::Tenant::parse("acme").unwrap();
/// let t = Trigger::on("ops.task.*").tenant(&acme);
/// let e = Event::builder("ops.task.failed", "ops://local").tenant("acme").build();
/// assert!(t.matches(&e));
/// let other = Event::builder("ops.task.failed", "ops://local").tenant("globex").build();
/// assert!(!t.matches(&other));
/// ```
///
/// Triggers deserialize from configuration:
/// `{"types": ["ops.task.failed"], "extensions": {"tenant": "acme"}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Trigger {
    /// Event type patterns (at least one).
    pub types: Vec<String>,
    /// Subject pattern; `None` matches any subject, including none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Extension attribute patterns by attribute name; an event without the
    /// attribute does not match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
}

impl Trigger {
    /// Matches events whose type matches `pattern`.
    pub fn on(pattern: impl Into<String>) -> Self {
        Self {
            types: vec![pattern.into()],
            ..Self::default()
        }
    }

    /// Matches every event.
    pub fn any() -> Self {
        Self::on("*")
    }

    /// Also matches events whose type matches `pattern`.
    pub fn or_on(mut self, pattern: impl Into<String>) -> Self {
        self.types.push(pattern.into());
        self
    }

    /// Only events whose subject matches `pattern`.
    pub fn subject(mut self, pattern: impl Into<String>) -> Self {
        self.subject = Some(pattern.into());
        self
    }

    /// Only events whose extension attribute `name` matches `pattern`.
    pub fn extension(mut self, name: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.extensions.insert(name.into(), pattern.into());
        self
    }

    /// Only events of this tenant (the `tenant` extension attribute).
    pub fn tenant(self, tenant: &Tenant) -> Self {
        self.extension("tenant", tenant.as_str())
    }

    /// Checks the patterns; the [`Dispatcher`](crate::Dispatcher) builder calls it.
    pub fn validate(&self) -> Result<()> {
        if self.types.is_empty() {
            return Err(Error::invalid(
                "trigger",
                "types: []",
                "needs at least one event type pattern (use \"*\" for all events)",
            ));
        }
        for t in &self.types {
            if t.is_empty() {
                return Err(Error::invalid("event type pattern", t, "is empty"));
            }
            check_pattern("event type pattern", t)?;
        }
        if let Some(s) = &self.subject {
            check_pattern("subject pattern", s)?;
        }
        for (name, value) in &self.extensions {
            if name.is_empty() {
                return Err(Error::invalid(
                    "extension filter",
                    name,
                    "attribute name is empty",
                ));
            }
            check_pattern("extension pattern", value)?;
            // A tenant filter follows the tenant name rule (a prefix of one when it
            // ends with `*`), so that a typo in configuration is refused, not silently
            // matching nothing.
            if name == "tenant" && value != "*" {
                let name = value.strip_suffix('*').unwrap_or(value);
                if let Err(e) = Tenant::parse(name) {
                    return Err(Error::invalid("tenant filter", value, e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &Event) -> bool {
        self.types.iter().any(|p| pattern_matches(p, &event.ty))
            && self.subject.as_deref().is_none_or(|p| {
                event
                    .subject
                    .as_deref()
                    .is_some_and(|s| pattern_matches(p, s))
            })
            && self
                .extensions
                .iter()
                .all(|(name, p)| event.extension(name).is_some_and(|v| pattern_matches(p, v)))
    }
}

fn check_pattern(what: &'static str, pattern: &str) -> Result<()> {
    match pattern.find('*') {
        Some(i) if i + 1 != pattern.len() => Err(Error::invalid(
            what,
            pattern,
            "'*' is only allowed at the end (prefix match)",
        )),
        _ => Ok(()),
    }
}

fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str) -> ops_core::EventBuilder {
        Event::builder(ty, "ops://test")
    }

    #[test]
    fn type_patterns() {
        let t = Trigger::on("ops.task.*");
        assert!(t.matches(&event("ops.task.failed").build()));
        assert!(t.matches(&event("ops.task.output.created").build()));
        assert!(!t.matches(&event("ops.storage.object.created").build()));
        assert!(!t.matches(&event("ops.task").build()));
        let exact = Trigger::on("ops.task.failed").or_on("ops.task.timed_out");
        assert!(exact.matches(&event("ops.task.timed_out").build()));
        assert!(!exact.matches(&event("ops.task.failed.extra").build()));
        assert!(Trigger::any().matches(&event("anything").build()));
    }

    #[test]
    fn subject_and_extension_filters() {
        let t = Trigger::on("*")
            .subject("render-*")
            .tenant(&Tenant::parse("acme").unwrap())
            .extension("env", "prod");
        let good = event("x")
            .subject("render-42")
            .tenant("acme")
            .extension("env", "prod");
        assert!(t.matches(&good.clone().build()));
        assert!(!t.matches(&good.clone().subject("train-1").build()));
        assert!(!t.matches(&good.clone().tenant("globex").build()));
        assert!(!t.matches(&event("x").subject("render-42").tenant("acme").build()));
        assert!(!t.matches(&event("x").tenant("acme").extension("env", "prod").build()));
    }

    #[test]
    fn validation_and_config() {
        assert!(Trigger::on("ops.*").validate().is_ok());
        let e = Trigger::on("ops.*.failed").validate().unwrap_err();
        assert!(e.to_string().contains("only allowed at the end"), "{e}");
        assert!(Trigger::default().validate().is_err());
        assert!(Trigger::on("").validate().is_err());
        assert!(Trigger::any().subject("a*b").validate().is_err());
        let t: Trigger = serde_json::from_str(
            r#"{"types": ["ops.task.failed"], "extensions": {"tenant": "acme"}}"#,
        )
        .unwrap();
        assert_eq!(
            t,
            Trigger::on("ops.task.failed").tenant(&Tenant::parse("acme").unwrap())
        );
        assert!(serde_json::from_str::<Trigger>(r#"{"type": "x"}"#).is_err());
        // Tenant filters follow the tenant name rule.
        assert!(
            Trigger::any()
                .extension("tenant", "acme*")
                .validate()
                .is_ok()
        );
        let e = Trigger::any()
            .extension("tenant", "acme corp")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("tenant filter"), "{e}");
        assert_eq!(e.kind(), ops_core::ErrorKind::InvalidInput);
    }
}
