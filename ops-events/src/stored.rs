//! What the SQL outboxes (SQLite, Postgres) share once rows are read: turning stored
//! deliveries into [`Delivery`]s.

use std::sync::Arc;

use ops_core::Event;

use crate::bus::{Delivery, DeliveryTag};

/// A delivery read inside a fetch's transaction, parsed after commit.
pub(crate) struct RawDelivery {
    /// The event's sequence number (its delivery tag).
    pub(crate) seq: i64,
    /// Deliveries so far, this one included.
    pub(crate) attempts: i64,
    /// The stored CloudEvent (structured JSON).
    pub(crate) payload: String,
}

/// Parses stored deliveries. A payload that is not a valid CloudEvent is never
/// dropped: it stays pending (and is logged again on each redelivery) until someone
/// repairs the row.
pub(crate) fn parse(subscription: &str, raw: Vec<RawDelivery>) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        match serde_json::from_str::<Event>(&r.payload) {
            Ok(event) => out.push(Delivery::new(
                Arc::new(event),
                u32::try_from(r.attempts).unwrap_or(u32::MAX),
                DeliveryTag(u64::try_from(r.seq).unwrap_or(0)),
            )),
            Err(e) => tracing::error!(
                subscription,
                seq = r.seq,
                error = %e,
                "stored event is not a valid CloudEvent; left pending"
            ),
        }
    }
    out
}
