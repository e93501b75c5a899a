use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, EventId, Result};

/// The well-known event types. Every state change in Ops is one of these (or a type
/// of the builder's own, namespaced the same way).
pub mod event_types {
    /// A task was accepted and stored.
    pub const TASK_SUBMITTED: &str = "ops.task.submitted";
    /// A task entered the queue and waits for admission (quota, priority, capacity,
    /// the budget gate): right after `ops.task.submitted`, in the same transaction, and
    /// again when a retry's backoff has elapsed. A preempted task goes back to the queue
    /// with `ops.task.preempted` instead. Admission itself has no event of its own: the
    /// task goes straight from queued to running, announced by `ops.task.started`.
    pub const TASK_QUEUED: &str = "ops.task.queued";
    /// A task was admitted and its process (or pod) started.
    pub const TASK_STARTED: &str = "ops.task.started";
    /// A running task wrote a file matching its output globs.
    pub const TASK_OUTPUT_CREATED: &str = "ops.task.output.created";
    /// A task exited successfully.
    pub const TASK_SUCCEEDED: &str = "ops.task.succeeded";
    /// A task failed for good; `reason` says why.
    pub const TASK_FAILED: &str = "ops.task.failed";
    /// A task was cancelled by a user.
    pub const TASK_CANCELLED: &str = "ops.task.cancelled";
    /// A task ran past its timeout and was killed.
    pub const TASK_TIMED_OUT: &str = "ops.task.timed_out";
    /// A scavenger task was preempted to make room for other work.
    pub const TASK_PREEMPTED: &str = "ops.task.preempted";
    /// An attempt failed and the task will run again after a backoff.
    pub const TASK_RETRYING: &str = "ops.task.retrying";

    /// An object was stored (a task output, an upload): its size and SHA-256 are in
    /// `data`, for billing.
    pub const STORAGE_OBJECT_CREATED: &str = "ops.storage.object.created";
    /// An object was deleted (by a user or a retention rule; `data.reason` says which).
    pub const STORAGE_OBJECT_DELETED: &str = "ops.storage.object.deleted";

    /// A tenant's prepaid credit crossed a configured share used (`data.percent`).
    pub const BILLING_BUDGET_THRESHOLD: &str = "ops.billing.budget.threshold";
    /// A tenant's credit could not hold a task's worst case: its work waits for a
    /// top-up (`data.needed`, `data.available`).
    pub const BILLING_BUDGET_EXHAUSTED: &str = "ops.billing.budget.exhausted";
    /// Credit was granted to a tenant (`data.grant`, `data.amount`, `data.priority`,
    /// `data.expires_at`).
    pub const BILLING_CREDIT_GRANTED: &str = "ops.billing.credit.granted";
    /// What was left of a tenant's granted credit expired (`data.grant`,
    /// `data.expired`: the amount that left the credit).
    pub const BILLING_CREDIT_EXPIRED: &str = "ops.billing.credit.expired";

    /// Every `ops.task.*` type, in lifecycle order.
    pub const TASK_TYPES: &[&str] = &[
        TASK_SUBMITTED,
        TASK_QUEUED,
        TASK_STARTED,
        TASK_OUTPUT_CREATED,
        TASK_SUCCEEDED,
        TASK_FAILED,
        TASK_CANCELLED,
        TASK_TIMED_OUT,
        TASK_PREEMPTED,
        TASK_RETRYING,
    ];
}

/// The CloudEvents specification version this envelope implements.
pub const SPEC_VERSION: &str = "1.0";

/// A CloudEvents 1.0 event in structured JSON form.
///
/// `data` is JSON; use [`Event::data_as`] to read it as a typed value. Extension
/// attributes (such as `tenant`) are string-valued and sit at the top level in JSON,
/// as the spec requires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// Always `"1.0"`.
    pub specversion: String,
    /// Unique per source; consumers dedupe on it.
    pub id: EventId,
    /// Who emitted the event, as a URI reference (e.g. `ops://local/tasks`).
    pub source: String,
    /// The event type, e.g. `ops.task.succeeded`.
    #[serde(rename = "type")]
    pub ty: String,
    /// What the event is about, e.g. a task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the change happened.
    pub time: DateTime<Utc>,
    /// Always `application/json` for Ops events.
    #[serde(default = "json_content_type")]
    pub datacontenttype: String,
    /// The payload.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Extension attributes (lower-case alphanumeric names, string values).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, String>,
}

fn json_content_type() -> String {
    "application/json".to_owned()
}

impl Event {
    /// Starts an event of type `ty` from `source`.
    pub fn builder(ty: impl Into<String>, source: impl Into<String>) -> EventBuilder {
        EventBuilder {
            event: Event {
                specversion: SPEC_VERSION.to_owned(),
                id: EventId::new(),
                source: source.into(),
                ty: ty.into(),
                subject: None,
                time: Utc::now(),
                datacontenttype: json_content_type(),
                data: serde_json::Value::Null,
                extensions: BTreeMap::new(),
            },
        }
    }

    /// Reads `data` as a typed value.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(T::deserialize(&self.data)?)
    }

    /// The `tenant` extension attribute, if set.
    pub fn tenant(&self) -> Option<&str> {
        self.extensions.get("tenant").map(String::as_str)
    }

    /// An extension attribute by name.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).map(String::as_str)
    }

    /// Structured-mode JSON bytes (`application/cloudevents+json`).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Parses structured-mode JSON.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let e: Event = serde_json::from_slice(bytes)?;
        if e.specversion != SPEC_VERSION {
            return Err(Error::Invalid {
                what: "cloudevents specversion",
                value: e.specversion,
                reason: format!("only {SPEC_VERSION} is supported"),
            });
        }
        Ok(e)
    }
}

/// Builds an [`Event`]; see [`Event::builder`].
#[derive(Clone, Debug)]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }

    /// Sets the `tenant` extension.
    pub fn tenant(self, tenant: impl Into<String>) -> Self {
        self.extension("tenant", tenant)
    }

    /// Sets an extension attribute. Names should be lower-case alphanumeric.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.extensions.insert(name.into(), value.into());
        self
    }

    /// Sets the time (defaults to now).
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.event.time = time;
        self
    }

    /// Sets the id (defaults to a fresh one).
    pub fn id(mut self, id: EventId) -> Self {
        self.event.id = id;
        self
    }

    /// Serializes `data` as the payload.
    pub fn data<T: Serialize + ?Sized>(mut self, data: &T) -> Result<Self> {
        self.event.data = serde_json::to_value(data)?;
        Ok(self)
    }

    /// Sets a JSON payload directly.
    pub fn json(mut self, data: serde_json::Value) -> Self {
        self.event.data = data;
        self
    }

    /// The finished event.
    pub fn build(self) -> Event {
        self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Payload {
        frames: u32,
    }

    #[test]
    fn structured_json_has_top_level_attributes() {
        let e = Event::builder(event_types::TASK_SUCCEEDED, "ops://test")
            .subject("t1")
            .tenant("acme")
            .data(&Payload { frames: 3 })
            .unwrap()
            .build();
        let v: serde_json::Value = serde_json::from_slice(&e.to_json_bytes().unwrap()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "ops.task.succeeded");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["data"]["frames"], 3);
        let back = Event::from_json_bytes(&e.to_json_bytes().unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.data_as::<Payload>().unwrap(), Payload { frames: 3 });
        assert_eq!(back.tenant(), Some("acme"));
    }

    #[test]
    fn rejects_other_spec_versions() {
        let mut v = serde_json::to_value(Event::builder("x", "y").build()).unwrap();
        v["specversion"] = "0.3".into();
        let err = Event::from_json_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("0.3"), "{err}");
    }
}
