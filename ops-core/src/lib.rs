//! The vocabulary every Ops crate shares.
//!
//! `ops-core` holds plain types with light dependencies: [`Resources`] (CPU, memory,
//! GPUs by count and optional model), identifiers ([`TaskId`], [`EventId`]), who a task
//! belongs to ([`Tenant`], [`Environment`], [`Labels`] — tenant and environment names
//! follow one rule, [`NAME_RULE`], checked where they are made), checked
//! [`ObjectPath`]s (the paths task inputs and outputs have in a tenant's storage), what
//! a task consumed ([`Usage`]), the CloudEvents 1.0 [`Event`] envelope with typed data
//! and the well-known event types in [`event_types`], and [`ErrorKind`], the kind every
//! Ops crate's error reports so that an API layer can map it.
//!
//! ```
//! use ops_core::{event_types, Event, Resources, TaskId};
//!
//! let task = TaskId::new();
//! let event = Event::builder(event_types::TASK_SUBMITTED, "ops://local")
//!     .subject(task.to_string())
//!     .tenant("acme")
//!     .data(&serde_json::json!({ "template": "render" }))
//!     .unwrap()
//!     .build();
//! assert_eq!(event.ty, "ops.task.submitted");
//! assert_eq!(event.subject.as_deref(), Some(task.to_string().as_str()));
//!
//! let wanted = Resources::parse_memory("512Mi").unwrap();
//! assert_eq!(wanted, 512 * 1024 * 1024);
//! let r = Resources::new(500, wanted);
//! assert!(r.fits_in(&Resources::new(2000, 1 << 30)));
//! ```

mod error;
mod event;
mod ids;
mod path;
mod resources;
pub mod task;
mod tenancy;
mod usage;

pub use error::{Error, ErrorKind, Result};
pub use event::{Event, EventBuilder, event_types};
pub use ids::{EventId, TaskId};
pub use path::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES, ObjectPath};
pub use resources::{GpuRequest, Resources};
pub use task::{Reason, TaskEventData, TaskStatus};
pub use tenancy::{Environment, Labels, MAX_NAME_BYTES, NAME_RULE, Tenant};
pub use usage::Usage;
