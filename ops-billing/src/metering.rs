//! Metering: events become usage records, idempotent by event id and meter.
//!
//! [`Metering::records`] reads one event:
//! - a final task event (`ops.task.succeeded|failed|timed_out|cancelled`) gives one
//!   record per built-in task meter, from the usage summed over the task's attempts
//!   less what its preempted attempts used (`usage - preempted_usage`), and the
//!   resources it requested: `cpu_core_seconds` (CPU time), `wall_seconds`,
//!   `memory_gib_seconds` (requested memory × wall time; peak memory when nothing was
//!   requested), `gpu_seconds` (with the GPU model requested) and `tasks` (1);
//! - `ops.task.preempted` gives the same records but `tasks`, from the usage of the
//!   attempt preempted (`attempt_usage`), marked [`preempted`](UsageRecord::preempted)
//!   with their [`attempt`](UsageRecord::attempt): charged or free as the price book's
//!   `charges.preempted` says, and never counted again with the final event (an event
//!   written before attempts carried their usage gives no record; its final event
//!   then counts the whole usage, as before);
//! - `ops.storage.object.created|deleted` gives a `storage_gb_months` record whose
//!   quantity is the change in bytes stored (negative for a deletion), aggregated as a
//!   time-weighted sum;
//! - an event of a meter declared in the price book gives that meter's record.
//!
//! A [`UsageStore`] keeps records with `(event id, meter)` as their key, so the record
//! is its own dedupe mark: a redelivered or replayed event changes nothing, and there
//! is no window where an event is marked seen but its record is not written.
//! [`MeteringFunction`] runs this on the event bus.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Event, EventId, TaskEventData, TaskId, TaskStatus, event_types};
use ops_events::{Function, FunctionError};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::meter::{Aggregation, builtin};
use crate::pricebook::{Charge, PriceBook, Selector};
use crate::{Error, Result};

/// Bytes in a GiB.
const GIB: u64 = 1 << 30;
/// Bytes in a GB (storage is sold in decimal units).
const GB: u64 = 1_000_000_000;
/// Seconds in a billing month (30 days).
const MONTH_SECONDS: i64 = 30 * 24 * 3600;

/// One meter's quantity from one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The event it came from.
    pub event_id: EventId,
    /// The meter.
    pub meter: String,
    /// The tenant.
    pub tenant: String,
    /// The environment, when the event has one.
    pub environment: Option<String>,
    /// The task's template, for task meters.
    pub template: Option<String>,
    /// The task, for task meters.
    pub task_id: Option<TaskId>,
    /// The GPU model requested, for `gpu_seconds`.
    pub gpu_model: Option<String>,
    /// How the task ended, for the task meters of a final event (`None` for a
    /// preempted attempt's: the task did not end).
    pub outcome: Option<TaskStatus>,
    /// Whether the task was scavenger work.
    pub scavenger: bool,
    /// Whether it is the usage of one preempted attempt (from `ops.task.preempted`),
    /// charged as `charges.preempted` says.
    pub preempted: bool,
    /// The attempt, for a preempted attempt's records (`None` for a final event's,
    /// which cover every attempt not preempted).
    pub attempt: Option<u32>,
    /// The quantity (a change of level for time-weighted meters, which may be
    /// negative).
    pub quantity: Decimal,
    /// When it happened (the event's time).
    pub at: DateTime<Utc>,
}

impl UsageRecord {
    /// Where it was used, to pick its price.
    pub fn selector(&self) -> Selector<'_> {
        Selector {
            environment: self.environment.as_deref(),
            template: self.template.as_deref(),
            gpu_model: self.gpu_model.as_deref(),
        }
    }
}

/// Turns events into usage records under a price book, and prices them.
#[derive(Clone, Debug)]
pub struct Metering {
    book: Arc<PriceBook>,
}

#[derive(Deserialize)]
struct ObjectData {
    tenant: String,
    environment: String,
    size: u64,
}

impl Metering {
    /// Metering under `book` (its declared meters and its charge policy).
    pub fn new(book: PriceBook) -> Self {
        Self {
            book: Arc::new(book),
        }
    }

    /// The price book.
    pub fn book(&self) -> &PriceBook {
        &self.book
    }

    /// The usage records of `event` (none for events nothing meters). A task or
    /// storage event whose data does not parse, or a declared meter's bad quantity, is
    /// [`Error::InvalidQuantity`] naming the meter, the event and the value.
    pub fn records(&self, event: &Event) -> Result<Vec<UsageRecord>> {
        let mut out = Vec::new();
        let ty = event.ty.as_str();
        if [
            event_types::TASK_SUCCEEDED,
            event_types::TASK_FAILED,
            event_types::TASK_TIMED_OUT,
            event_types::TASK_CANCELLED,
        ]
        .contains(&ty)
            || ty == event_types::TASK_PREEMPTED
        {
            out.extend(self.task_records(event)?);
        } else if ty == event_types::STORAGE_OBJECT_CREATED
            || ty == event_types::STORAGE_OBJECT_DELETED
        {
            let data: ObjectData =
                serde_json::from_value(event.data.clone()).map_err(|e| Error::InvalidQuantity {
                    meter: builtin::STORAGE_GB_MONTHS.to_owned(),
                    event: event.id.to_string(),
                    value: e.to_string(),
                })?;
            let bytes = Decimal::from(data.size);
            out.push(UsageRecord {
                event_id: event.id,
                meter: builtin::STORAGE_GB_MONTHS.to_owned(),
                tenant: data.tenant,
                environment: Some(data.environment),
                template: None,
                task_id: None,
                gpu_model: None,
                outcome: None,
                scavenger: false,
                preempted: false,
                attempt: None,
                quantity: if ty == event_types::STORAGE_OBJECT_DELETED {
                    -bytes
                } else {
                    bytes
                },
                at: event.time,
            });
        }
        for spec in &self.book.meters {
            if let Some(quantity) = spec.quantity(event)? {
                out.push(UsageRecord {
                    event_id: event.id,
                    meter: spec.name.clone(),
                    tenant: event.extension("tenant").unwrap_or_default().to_owned(),
                    environment: None,
                    template: None,
                    task_id: None,
                    gpu_model: None,
                    outcome: None,
                    scavenger: false,
                    preempted: false,
                    attempt: None,
                    quantity,
                    at: event.time,
                });
            }
        }
        Ok(out)
    }

    fn task_records(&self, event: &Event) -> Result<Vec<UsageRecord>> {
        let invalid = |meter: &str, value: String| Error::InvalidQuantity {
            meter: meter.to_owned(),
            event: event.id.to_string(),
            value,
        };
        let data: TaskEventData = event
            .data_as()
            .map_err(|e| invalid(builtin::TASKS, e.to_string()))?;
        let preempted = event.ty == event_types::TASK_PREEMPTED;
        let usage = if preempted {
            // Written before attempts carried their usage: the final event counts it.
            let Some(attempt) = data.attempt_usage else {
                return Ok(Vec::new());
            };
            attempt
        } else {
            // What preempted attempts used was metered from their own events.
            let total = data.usage.unwrap_or_default();
            data.preempted_usage
                .map_or(total, |part| total.saturating_sub(&part))
        };
        let wall = decimal_secs(usage.wall_time.as_secs_f64());
        let memory_bytes = match &data.resources {
            Some(r) if r.memory_bytes > 0 => r.memory_bytes,
            _ => usage.peak_memory_bytes,
        };
        let gib_seconds = Decimal::from(memory_bytes) / Decimal::from(GIB) * wall;
        let gpu_model = data.resources.as_ref().and_then(|r| r.gpus.model.clone());
        let quantities = [
            (
                builtin::CPU_CORE_SECONDS,
                decimal_secs(usage.cpu_time.as_secs_f64()),
            ),
            (builtin::WALL_SECONDS, wall),
            (builtin::MEMORY_GIB_SECONDS, gib_seconds.round_dp(6)),
            (builtin::GPU_SECONDS, decimal_secs(usage.gpu_seconds)),
            (builtin::TASKS, Decimal::ONE),
        ];
        // A preempted attempt is not a task of its own: the final event counts it.
        let meters = if preempted {
            &quantities[..quantities.len() - 1]
        } else {
            &quantities[..]
        };
        Ok(meters
            .iter()
            .map(|&(meter, quantity)| UsageRecord {
                event_id: event.id,
                meter: meter.to_owned(),
                tenant: data.tenant.clone(),
                environment: Some(data.environment.clone()),
                template: Some(data.template.clone()),
                task_id: Some(data.task_id),
                gpu_model: (meter == builtin::GPU_SECONDS)
                    .then(|| gpu_model.clone())
                    .flatten(),
                outcome: (!preempted).then_some(data.status),
                scavenger: data.scavenger,
                preempted,
                attempt: preempted.then_some(data.attempt),
                quantity,
                at: event.time,
            })
            .collect())
    }

    /// Whether the charge policy charges `record` (scavenger work, preempted attempts
    /// and failed, timed-out or cancelled tasks may be free).
    pub fn charged(&self, record: &UsageRecord) -> bool {
        let policy = &self.book.charges;
        if record.scavenger && policy.scavenger == Charge::Free {
            return false;
        }
        if record.preempted {
            return policy.preempted == Charge::Charge;
        }
        let by_outcome = match record.outcome {
            Some(TaskStatus::Failed) => policy.failed,
            Some(TaskStatus::TimedOut) => policy.timed_out,
            Some(TaskStatus::Cancelled) => policy.cancelled,
            _ => Charge::Charge,
        };
        by_outcome == Charge::Charge
    }
}

impl Metering {
    /// What `records` (one event's) cost: the charged ones at their prices, at least
    /// the minimum per task when a task is charged, rounded once to the minor unit. The
    /// minimum applies to the event that ends the task, not to a preempted attempt's.
    pub fn charge(&self, records: &[UsageRecord]) -> Result<crate::Money> {
        let mut total = Decimal::ZERO;
        let mut charged_task = false;
        for r in records.iter().filter(|r| self.charged(r)) {
            total += self
                .book
                .amount(&r.meter, &r.selector(), r.quantity.max(Decimal::ZERO))?;
            charged_task |= Self::ends_a_task(r);
        }
        self.event_charge(total, charged_task)
    }

    /// Whether a charged record makes its event's charge at least the minimum per
    /// task: a task's record, not a preempted attempt's.
    pub(crate) fn ends_a_task(r: &UsageRecord) -> bool {
        r.task_id.is_some() && !r.preempted
    }

    /// An event's charge from the sum of its charged records' amounts: at least the
    /// minimum per task when it ends a charged task, rounded once.
    pub(crate) fn event_charge(&self, total: Decimal, charged_task: bool) -> Result<crate::Money> {
        let total = if charged_task {
            total.max(self.book.charges.minimum_per_task)
        } else {
            total
        };
        crate::Money::from_decimal(total, self.book.currency)
    }
}

/// Seconds as an exact decimal, to the microsecond (a non-finite or negative value is
/// zero).
fn decimal_secs(secs: f64) -> Decimal {
    if secs.is_finite() && secs > 0.0 {
        Decimal::from_f64_retain((secs * 1e6).round())
            .map(|micros| micros / Decimal::from(1_000_000))
            .unwrap_or_default()
    } else {
        Decimal::ZERO
    }
}

/// Aggregates `records` (of one meter) over `[from, to)` as `aggregation` says. For a
/// time-weighted sum the records are changes of level (the level before `from` counts
/// from `from`), and the result is level × seconds; `storage_gb_months` converts it to
/// GB-months.
pub fn aggregate(
    records: &[UsageRecord],
    aggregation: Aggregation,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Decimal {
    let in_period = || records.iter().filter(|r| r.at >= from && r.at < to);
    match aggregation {
        Aggregation::Sum => in_period().map(|r| r.quantity).sum(),
        Aggregation::Count => Decimal::from(in_period().count() as u64),
        Aggregation::Max => in_period().map(|r| r.quantity).max().unwrap_or_default(),
        Aggregation::Latest => in_period()
            .max_by_key(|r| (r.at, r.event_id))
            .map(|r| r.quantity)
            .unwrap_or_default(),
        Aggregation::UniqueCount => {
            let distinct: HashSet<Decimal> = in_period().map(|r| r.quantity.normalize()).collect();
            Decimal::from(distinct.len() as u64)
        }
        Aggregation::TimeWeightedSum => records
            .iter()
            .filter(|r| r.at < to)
            .map(|r| {
                let since = r.at.max(from);
                r.quantity * Decimal::from((to - since).num_milliseconds()) / Decimal::ONE_THOUSAND
            })
            .sum(),
    }
}

/// The aggregation of a meter: the built-in meters sum, except storage which is
/// time-weighted; declared meters say theirs.
pub fn aggregation_of(book: &PriceBook, meter: &str) -> Aggregation {
    if meter == builtin::STORAGE_GB_MONTHS {
        return Aggregation::TimeWeightedSum;
    }
    book.meters
        .iter()
        .find(|m| m.name == meter)
        .map_or(Aggregation::Sum, |m| m.aggregation)
}

/// Converts a time-weighted byte-seconds quantity into GB-months.
pub fn gb_months(byte_seconds: Decimal) -> Decimal {
    byte_seconds / Decimal::from(GB) / Decimal::from(MONTH_SECONDS)
}

/// Where usage records are kept, by event: an event is metered once, and its records
/// are stored together (the SQL stores keep one row per event, which is also its dedupe
/// mark, written in the same statement).
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Stores the records of events not metered before and ignores those of events
    /// already stored (an event metered again); returns how many records were new. All
    /// or nothing.
    async fn record(&self, records: &[UsageRecord]) -> Result<usize>;

    /// A tenant's records with `from <= at < to`, oldest first.
    async fn records(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>>;
}

/// Usage records in memory.
#[derive(Debug, Default)]
pub struct MemoryUsageStore {
    records: Mutex<BTreeMap<(EventId, String), UsageRecord>>,
}

impl MemoryUsageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl UsageStore for MemoryUsageStore {
    async fn record(&self, records: &[UsageRecord]) -> Result<usize> {
        let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let stored: HashSet<EventId> = records
            .iter()
            .map(|r| r.event_id)
            .filter(|id| {
                map.range((*id, String::new())..)
                    .next()
                    .is_some_and(|((e, _), _)| e == id)
            })
            .collect();
        let mut new = 0;
        for r in records.iter().filter(|r| !stored.contains(&r.event_id)) {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                map.entry((r.event_id, r.meter.clone()))
            {
                slot.insert(r.clone());
                new += 1;
            }
        }
        Ok(new)
    }

    async fn records(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>> {
        let map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<UsageRecord> = map
            .values()
            .filter(|r| r.tenant == tenant && r.at >= from && r.at < to)
            .cloned()
            .collect();
        out.sort_by_key(|r| (r.at, r.event_id, r.meter.clone()));
        Ok(out)
    }
}

/// Meters every event it is given into a [`UsageStore`]: the function to register on
/// the event bus (with a trigger on `ops.task.*`, `ops.storage.*` and the declared
/// meters' types, or on everything).
///
/// An event that cannot be metered (a bad quantity) is a permanent failure: the
/// dispatcher sends it to the dead letters with the reason, to be replayed once the
/// price book or the producer is fixed. A store failure is retried when it may pass.
#[derive(Clone)]
pub struct MeteringFunction {
    metering: Metering,
    store: Arc<dyn UsageStore>,
}

impl std::fmt::Debug for MeteringFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteringFunction").finish_non_exhaustive()
    }
}

impl MeteringFunction {
    /// The function's name (its durable subscription and dead letters).
    pub const NAME: &'static str = "ops-billing-metering";

    /// Meters into `store` under `metering`.
    pub fn new(metering: Metering, store: Arc<dyn UsageStore>) -> Self {
        Self { metering, store }
    }

    /// The metering it applies.
    pub fn metering(&self) -> &Metering {
        &self.metering
    }

    /// The store it meters into.
    pub fn store(&self) -> &Arc<dyn UsageStore> {
        &self.store
    }

    /// Meters `event` into the store (records already there are kept as they are) and
    /// returns its records.
    pub async fn meter(&self, event: &Event) -> Result<Vec<UsageRecord>> {
        let records = self.metering.records(event)?;
        if !records.is_empty() {
            self.store.record(&records).await?;
        }
        Ok(records)
    }
}

#[async_trait]
impl Function for MeteringFunction {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn call(&self, event: &Event) -> std::result::Result<(), FunctionError> {
        self.meter(event).await?;
        Ok(())
    }
}

/// Where a record was used: what the records of one task event share, with whether
/// they are a preempted attempt's and which (absent from rows stored before these
/// existed, which read as a final event's).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone, Default, PartialEq, serde::Serialize, Deserialize)]
struct Place {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    scavenger: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    preempted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl Place {
    fn of(r: &UsageRecord) -> Self {
        Self {
            environment: r.environment.clone(),
            template: r.template.clone(),
            task_id: r.task_id.map(|t| t.to_string()),
            outcome: r.outcome.map(|o| o.as_str().to_owned()),
            scavenger: r.scavenger,
            preempted: r.preempted,
            attempt: r.attempt,
        }
    }
}

/// One stored record: its meter (`n`), quantity (`q`), GPU model (`g`), and its place
/// (`x`) when it differs from the event's.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(serde::Serialize, Deserialize)]
struct StoredRecord {
    n: String,
    q: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    g: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<Place>,
}

/// The records of one event as the SQL usage stores keep them (a JSON object in the
/// event's row): the place its records share, and each record — about 200 bytes for a
/// task's five meters.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(serde::Serialize, Deserialize)]
struct StoredEvent {
    #[serde(flatten)]
    place: Place,
    m: Vec<StoredRecord>,
}

/// An event's row in the SQL usage stores: `event_id, tenant, at, records`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) type UsageRow = (String, String, i64, String);

/// The rows of `records`, one per event (in the order of their first record), with how
/// many records each holds. The records of one event belong to one tenant.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn usage_rows(records: &[UsageRecord]) -> Result<Vec<(UsageRow, usize)>> {
    let mut out: Vec<(UsageRow, usize)> = Vec::new();
    let mut index: std::collections::HashMap<EventId, (usize, StoredEvent)> =
        std::collections::HashMap::new();
    for r in records {
        let slot = index.entry(r.event_id).or_insert_with(|| {
            out.push((
                (
                    r.event_id.to_string(),
                    r.tenant.clone(),
                    r.at.timestamp_millis(),
                    String::new(),
                ),
                0,
            ));
            (
                out.len() - 1,
                StoredEvent {
                    place: Place::of(r),
                    m: Vec::new(),
                },
            )
        });
        let row = &mut out[slot.0];
        if r.tenant != row.0.1 {
            return Err(Error::InvalidQuantity {
                meter: r.meter.clone(),
                event: r.event_id.to_string(),
                value: format!(
                    "tenant {:?} in an event of tenant {:?}: an event's usage belongs to one tenant",
                    r.tenant, row.0.1
                ),
            });
        }
        row.1 += 1;
        let shared = &slot.1.place;
        let same = r.environment == shared.environment
            && r.template == shared.template
            && r.outcome.map(|o| o.as_str()) == shared.outcome.as_deref()
            && r.scavenger == shared.scavenger
            && r.preempted == shared.preempted
            && r.attempt == shared.attempt
            && match (r.task_id, &shared.task_id) {
                (None, None) => true,
                (Some(t), Some(s)) => t.to_string() == *s,
                _ => false,
            };
        slot.1.m.push(StoredRecord {
            n: r.meter.clone(),
            q: r.quantity.to_string(),
            g: r.gpu_model.clone(),
            x: (!same).then(|| Place::of(r)),
        });
    }
    for (_, (i, event)) in index {
        out[i].0.3 = serde_json::to_string(&event).map_err(|e| Error::InvalidQuantity {
            meter: "usage record".to_owned(),
            event: out[i].0.0.clone(),
            value: e.to_string(),
        })?;
    }
    Ok(out)
}

/// A stored event's records as read back: the shared place's fields spelt out (no
/// `#[serde(flatten)]`, which buffers every field), the same JSON as [`StoredEvent`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Deserialize)]
pub(crate) struct ReadEvent {
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    scavenger: bool,
    #[serde(default)]
    preempted: bool,
    #[serde(default)]
    attempt: Option<u32>,
    m: Vec<StoredRecord>,
}

/// The usage records of a [`UsageRow`]; a value that does not parse is named.
#[cfg(feature = "postgres")]
pub(crate) fn usage_from(row: UsageRow) -> Result<Vec<UsageRecord>> {
    let (event_id, tenant, at, json) = row;
    let stored: ReadEvent = serde_json::from_str(&json).map_err(|e| Error::InvalidQuantity {
        meter: "usage record".to_owned(),
        event: event_id.clone(),
        value: format!("records {:?}", e.to_string()),
    })?;
    usage_of(&event_id, tenant, at, stored)
}

/// The usage records of an event read back (`event_id, tenant, at` and its records).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn usage_of(
    event_id: &str,
    tenant: String,
    at: i64,
    stored: ReadEvent,
) -> Result<Vec<UsageRecord>> {
    let corrupt = |what: &str, value: &str| Error::InvalidQuantity {
        meter: "usage record".to_owned(),
        event: event_id.to_owned(),
        value: format!("{what} {value:?}"),
    };
    let id: EventId = event_id
        .parse()
        .map_err(|_| corrupt("event id", event_id))?;
    let at = DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default();
    let task_of = |t: Option<&String>| {
        t.map(|t| t.parse::<TaskId>().map_err(|_| corrupt("task id", t)))
            .transpose()
    };
    let outcome_of = |o: Option<&String>| {
        o.map(|o| o.parse::<TaskStatus>().map_err(|_| corrupt("outcome", o)))
            .transpose()
    };
    // Parsed once for the records that share the event's place.
    let task_id = task_of(stored.task_id.as_ref())?;
    let outcome = outcome_of(stored.outcome.as_ref())?;
    let mut out = Vec::with_capacity(stored.m.len());
    for r in stored.m {
        let quantity = r.q.parse().map_err(|_| corrupt("quantity", &r.q))?;
        let record = match r.x {
            None => UsageRecord {
                event_id: id,
                meter: r.n,
                tenant: tenant.clone(),
                environment: stored.environment.clone(),
                template: stored.template.clone(),
                task_id,
                gpu_model: r.g,
                outcome,
                scavenger: stored.scavenger,
                preempted: stored.preempted,
                attempt: stored.attempt,
                quantity,
                at,
            },
            Some(place) => UsageRecord {
                event_id: id,
                meter: r.n,
                tenant: tenant.clone(),
                task_id: task_of(place.task_id.as_ref())?,
                outcome: outcome_of(place.outcome.as_ref())?,
                environment: place.environment,
                template: place.template,
                gpu_model: r.g,
                scavenger: place.scavenger,
                preempted: place.preempted,
                attempt: place.attempt,
                quantity,
                at,
            },
        };
        out.push(record);
    }
    Ok(out)
}

/// How many records the rows whose event ids came back from an insert hold.
#[cfg(feature = "postgres")]
pub(crate) fn count_new(rows: &[(UsageRow, usize)], inserted: Vec<String>) -> usize {
    let inserted: HashSet<String> = inserted.into_iter().collect();
    rows.iter()
        .filter(|((event_id, ..), _)| inserted.contains(event_id))
        .map(|(_, n)| n)
        .sum()
}
