//! The vocabulary every Ops crate shares.
//!
//! `ops-core` holds plain types with light dependencies: [`Resources`] (CPU, memory,
//! GPUs by count and optional model), identifiers ([`TaskId`], [`EventId`]), who a task
//! belongs to ([`Tenant`], [`Environment`], [`Labels`]), what it consumed ([`Usage`]),
//! and the CloudEvents 1.0 [`Event`] envelope with typed data and the well-known
//! `ops.task.*` event types in [`event_types`].
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
mod resources;
pub mod task;
mod tenancy;
mod usage;

pub use error::{Error, Result};
pub use event::{Event, EventBuilder, event_types};
pub use ids::{EventId, TaskId};
pub use resources::{GpuRequest, Resources};
pub use task::{Reason, TaskEventData, TaskStatus};
pub use tenancy::{Environment, Labels, Tenant};
pub use usage::Usage;
