//! Invoices: one tenant, one period, from its usage records, every line traceable to
//! the tasks and events behind it, and the same whatever order the events came in.
//!
//! Task usage is charged per task when the task ends (see
//! [`Budgets::settle`](crate::Budgets::settle)); the invoice shows those charges by
//! meter and price, with one `adjustments` line for what per-task rounding and the
//! minimum charge per task add, so that its task total equals what was settled. Period
//! meters (storage in GB-months, meters declared in the price book) are aggregated over
//! the whole period and priced once, tiers applying to the period's quantity; they are
//! what [`Invoice::period_charge`] returns, for posting when the invoice is finalized.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use ops_core::{EventId, TaskId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::{Aggregation, builtin};
use crate::metering::{UsageRecord, aggregate, aggregation_of, gb_months};
use crate::{ChargeModel, Metering, Money, PriceBook, PriceEntry, Result};

/// Whether an invoice may still change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// The period, or its grace window for late events, has not ended.
    Draft,
    /// Past the grace window: final.
    Finalized,
}

/// One line: a meter under one price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// The meter (`adjustments` for the rounding and minimum-charge line).
    pub meter: String,
    /// Where its price applies, e.g. `environment=staging template=render`; empty for
    /// the default price.
    pub price: String,
    /// The quantity (GB-months for storage).
    pub quantity: Decimal,
    /// The amount.
    pub amount: Money,
    /// The tasks behind it, sorted.
    pub tasks: Vec<TaskId>,
    /// The events behind it, sorted.
    pub events: Vec<EventId>,
}

/// A tenant's invoice for a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// The tenant.
    pub tenant: String,
    /// The period's start (inclusive).
    pub from: DateTime<Utc>,
    /// The period's end (exclusive).
    pub to: DateTime<Utc>,
    /// Draft or finalized.
    pub status: InvoiceStatus,
    /// The lines, sorted by meter and price.
    pub lines: Vec<InvoiceLine>,
    /// What the tasks of the period cost (already settled from credit).
    pub tasks_total: Money,
    /// What the period meters cost (charged when the invoice is finalized).
    pub period_total: Money,
    /// Everything.
    pub total: Money,
}

impl Invoice {
    /// What finalizing the invoice charges beyond the settled tasks.
    pub fn period_charge(&self) -> Money {
        self.period_total
    }

    /// The invoice as a plain-text table: each line's meter, where its price applies,
    /// quantity, unit price (looked up in `book`, the price book it was built with;
    /// tiers as `0.00002 to 3600, then 0.00001`), amount and number of tasks; then the
    /// total.
    pub fn to_text(&self, book: &PriceBook) -> String {
        let header = [
            "meter",
            "price",
            "quantity",
            "unit price",
            "amount",
            "tasks",
        ];
        let mut rows: Vec<[String; 6]> = self
            .lines
            .iter()
            .map(|line| {
                let unit_price = book
                    .prices
                    .iter()
                    .find(|e| e.meter == line.meter && entry_label(e) == line.price)
                    .and_then(PriceEntry::model)
                    .map_or_else(|| "-".to_owned(), |m| unit_price(&m));
                [
                    line.meter.clone(),
                    line.price.clone(),
                    line.quantity.round_dp(6).normalize().to_string(),
                    unit_price,
                    line.amount.to_string(),
                    line.tasks.len().to_string(),
                ]
            })
            .collect();
        rows.push([
            "total".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            self.total.to_string(),
            String::new(),
        ]);
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 6]| {
            let mut text = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i < 2 {
                    let _ = write!(text, "  {cell:<w$}");
                } else {
                    let _ = write!(text, "  {cell:>w$}");
                }
            }
            text.trim_end().to_owned()
        };
        let mut out = format!(
            "Invoice for {} from {} to {} ({})\n",
            self.tenant,
            self.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            match self.status {
                InvoiceStatus::Draft => "draft",
                InvoiceStatus::Finalized => "finalized",
            }
        );
        let _ = writeln!(out, "{}", line(header));
        for row in &rows {
            let _ = writeln!(out, "{}", line(row.each_ref().map(String::as_str)));
        }
        let _ = writeln!(
            out,
            "  (tasks {} settled from credit; period meters {} charged when finalized)",
            self.tasks_total, self.period_total
        );
        out
    }

    /// The invoice as a small, self-contained HTML page.
    pub fn to_html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut rows = String::new();
        for line in &self.lines {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td>{} tasks, {} events</td></tr>\n",
                esc(&line.meter),
                esc(&line.price),
                line.quantity.normalize(),
                line.amount,
                line.tasks.len(),
                line.events.len()
            ));
        }
        format!(
            "<!doctype html>\n<html><head><meta charset=utf-8><title>Invoice {tenant}</title>\
             <style>body{{font-family:sans-serif}}td,th{{padding:4px 8px}}.n{{text-align:right}}</style></head>\n\
             <body><h1>Invoice for {tenant}</h1><p>{from} to {to} ({status:?})</p>\n\
             <table><tr><th>meter</th><th>price</th><th>quantity</th><th>amount</th><th>from</th></tr>\n{rows}\
             <tr><th colspan=3>total</th><th class=n>{total}</th><th></th></tr></table></body></html>\n",
            tenant = esc(&self.tenant),
            from = self.from.to_rfc3339(),
            to = self.to.to_rfc3339(),
            status = self.status,
            total = self.total,
        )
    }
}

/// A charge model's price per unit, tiers in order.
fn unit_price(model: &ChargeModel) -> String {
    let tiers = |tiers: &[crate::Tier]| {
        tiers
            .iter()
            .map(|t| {
                let mut text = t.unit_price.normalize().to_string();
                if !t.flat_fee.is_zero() {
                    let _ = write!(text, " + {}", t.flat_fee.normalize());
                }
                if let Some(up_to) = t.up_to {
                    let _ = write!(text, " to {}", up_to.normalize());
                }
                text
            })
            .collect::<Vec<_>>()
            .join(", then ")
    };
    match model {
        ChargeModel::PerUnit(p) => p.normalize().to_string(),
        ChargeModel::Graduated(t) => tiers(t),
        ChargeModel::Volume(t) => format!("all at {}", tiers(t)),
        ChargeModel::Package(p) => format!("{} per {}", p.price.normalize(), p.size.normalize()),
    }
}

/// Where a price applies, e.g. `environment=staging template=render`; empty for the
/// default price.
fn entry_label(entry: &PriceEntry) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &entry.environment {
        parts.push(format!("environment={e}"));
    }
    if let Some(t) = &entry.template {
        parts.push(format!("template={t}"));
    }
    if let Some(m) = &entry.gpu_model {
        parts.push(format!("gpu_model={m}"));
    }
    parts.join(" ")
}

#[derive(Default)]
struct Group {
    quantity: Decimal,
    amount: Decimal,
    tasks: BTreeSet<TaskId>,
    events: BTreeSet<EventId>,
    records: Vec<UsageRecord>,
}

/// Builds `tenant`'s invoice for `[from, to)` from its usage records (any order; a
/// record of another tenant is ignored). It is a draft until `now` is past `to` plus
/// `grace`, the window for late events.
pub fn invoice(
    metering: &Metering,
    tenant: &str,
    records: &[UsageRecord],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Result<Invoice> {
    let currency = metering.book().currency;
    let mine: Vec<&UsageRecord> = records.iter().filter(|r| r.tenant == tenant).collect();
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    // Each event's charged amount and whether it ends a charged task, to add up what
    // settlement charged (as `Metering::charge` does) without pricing twice.
    let mut by_event: BTreeMap<EventId, (Decimal, bool)> = BTreeMap::new();
    // The label of each price entry, made once.
    let mut labels: std::collections::HashMap<*const PriceEntry, String> =
        std::collections::HashMap::new();
    for r in &mine {
        let period_meter = r.task_id.is_none();
        // Task usage belongs to the period it ended in; a time-weighted meter counts
        // the level reached before the period too.
        let counts = if period_meter
            && aggregation_of(metering.book(), &r.meter) == Aggregation::TimeWeightedSum
        {
            r.at < to
        } else {
            r.at >= from && r.at < to
        };
        if !counts {
            continue;
        }
        let label = match metering.book().price(&r.meter, &r.selector()) {
            Some(entry) => labels
                .entry(entry as *const PriceEntry)
                .or_insert_with(|| entry_label(entry))
                .clone(),
            None => "unpriced".to_owned(),
        };
        let group = groups.entry((r.meter.clone(), label)).or_default();
        group.events.insert(r.event_id);
        if let Some(t) = r.task_id {
            group.tasks.insert(t);
        }
        if period_meter {
            group.records.push((*r).clone());
        } else if metering.charged(r) {
            group.quantity += r.quantity;
            let amount =
                metering
                    .book()
                    .amount(&r.meter, &r.selector(), r.quantity.max(Decimal::ZERO))?;
            group.amount += amount;
            let event = by_event.entry(r.event_id).or_default();
            event.0 += amount;
            event.1 |= Metering::ends_a_task(r);
        } else {
            group.quantity += r.quantity;
        }
    }
    let mut lines = Vec::new();
    let mut lines_tasks = Money::zero(currency);
    let mut period_total = Money::zero(currency);
    for ((meter, price), group) in groups {
        let (quantity, amount) = if group.records.is_empty() {
            let amount = Money::from_decimal(group.amount, currency)?;
            lines_tasks = lines_tasks.checked_add(amount)?;
            (group.quantity, amount)
        } else {
            let aggregation = aggregation_of(metering.book(), &meter);
            let mut quantity = aggregate(&group.records, aggregation, from, to);
            if meter == builtin::STORAGE_GB_MONTHS {
                quantity = gb_months(quantity).round_dp(6);
            }
            let first = &group.records[0];
            let amount =
                metering
                    .book()
                    .rate(&meter, &first.selector(), quantity.max(Decimal::ZERO))?;
            period_total = period_total.checked_add(amount)?;
            (quantity, amount)
        };
        lines.push(InvoiceLine {
            meter,
            price,
            quantity,
            amount,
            tasks: group.tasks.into_iter().collect(),
            events: group.events.into_iter().collect(),
        });
    }
    // What was settled per task: the same charge settlement computed from each event.
    let mut tasks_total = Money::zero(currency);
    for (amount, ends_a_task) in by_event.values() {
        tasks_total = tasks_total.checked_add(metering.event_charge(*amount, *ends_a_task)?)?;
    }
    let adjustment = tasks_total.checked_sub(lines_tasks)?;
    if adjustment.amount != 0 {
        lines.push(InvoiceLine {
            meter: "adjustments".to_owned(),
            price: "per-task rounding and minimum charge".to_owned(),
            quantity: Decimal::from(by_event.len() as u64),
            amount: adjustment,
            tasks: Vec::new(),
            events: by_event.keys().copied().collect(),
        });
    }
    Ok(Invoice {
        tenant: tenant.to_owned(),
        from,
        to,
        status: if now >= to + grace {
            InvoiceStatus::Finalized
        } else {
            InvoiceStatus::Draft
        },
        lines,
        tasks_total,
        period_total,
        total: tasks_total.checked_add(period_total)?,
    })
}

/// Invoices for many tenants for `[from, to)`, each as [`invoice`] builds it from the
/// tenant's records in `store`, `concurrency` tenants at a time on the Tokio runtime
/// (each reading its records and building its invoice alongside the others): how a
/// period's invoicing run is done. In the order of `tenants`; the first error stops it.
/// The records are read from `from`, or from the start when a priced meter is
/// time-weighted (storage counts the level reached before the period).
pub async fn invoices(
    metering: std::sync::Arc<Metering>,
    store: std::sync::Arc<dyn crate::UsageStore>,
    tenants: Vec<String>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
    grace: chrono::Duration,
    concurrency: usize,
) -> Result<Vec<Invoice>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let book = metering.book();
    let since = if book
        .prices
        .iter()
        .any(|p| aggregation_of(book, &p.meter) == Aggregation::TimeWeightedSum)
    {
        DateTime::<Utc>::UNIX_EPOCH
    } else {
        from
    };
    let tenants: std::sync::Arc<[String]> = tenants.into();
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, tenants.len().max(1)) {
        let (metering, store, tenants, next) = (
            metering.clone(),
            store.clone(),
            tenants.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(tenant) = tenants.get(i) else {
                    return Ok::<_, crate::Error>(done);
                };
                let records = store.records(tenant, since, to).await?;
                done.push((
                    i,
                    invoice(&metering, tenant, &records, from, to, now, grace)?,
                ));
            }
        });
    }
    let mut out = Vec::with_capacity(tenants.len());
    while let Some(joined) = workers.join_next().await {
        let done = joined.map_err(|e| crate::Error::Store {
            source: ops_events::StoreError::new("invoices", e),
        })??;
        out.extend(done);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, invoice)| invoice).collect())
}

/// What [`InvoiceStore::keep`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// The invoice was stored.
    New,
    /// The same invoice was already stored; nothing changed.
    AlreadyKept,
}

/// Where finalized invoices are kept, once per tenant and period: what was sent to the
/// tenant, unchanged by any event that arrives later. The SQL ledgers keep them in
/// their database (`ops_billing_invoices`).
#[async_trait::async_trait]
pub trait InvoiceStore: Send + Sync + 'static {
    /// Keeps a finalized invoice. Keeping the same invoice again changes nothing
    /// ([`Kept::AlreadyKept`]); another invoice for the same tenant and period is
    /// [`Error::InvoiceConflict`](crate::Error::InvoiceConflict); a draft is
    /// [`Error::InvoiceNotFinal`](crate::Error::InvoiceNotFinal).
    async fn keep(&self, invoice: &Invoice) -> Result<Kept>;

    /// The invoice kept for `tenant` and the period `[from, to)`, if any.
    async fn kept(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<Invoice>>;

    /// Every invoice kept for `tenant`, oldest period first.
    async fn kept_of(&self, tenant: &str) -> Result<Vec<Invoice>>;
}

/// An invoice as kept: its document, or why it cannot be kept.
pub(crate) fn document(invoice: &Invoice) -> Result<String> {
    if invoice.status != InvoiceStatus::Finalized {
        return Err(crate::Error::InvoiceNotFinal {
            tenant: invoice.tenant.clone(),
            from: invoice.from,
            to: invoice.to,
        });
    }
    serde_json::to_string(invoice).map_err(|e| crate::Error::InvalidPosting {
        key: format!("invoice:{}", invoice.tenant),
        problems: vec![e.to_string()],
    })
}

/// What keeping `invoice` did when `stored` is the document found under its key.
pub(crate) fn kept_again(invoice: &Invoice, document: &str, stored: &str) -> Result<Kept> {
    if document == stored {
        Ok(Kept::AlreadyKept)
    } else {
        Err(crate::Error::InvoiceConflict {
            tenant: invoice.tenant.clone(),
            from: invoice.from,
            to: invoice.to,
        })
    }
}

/// A kept invoice from its document.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn from_document(tenant: &str, document: &str) -> Result<Invoice> {
    serde_json::from_str(document).map_err(|e| crate::Error::InvalidPosting {
        key: format!("invoice:{tenant}"),
        problems: vec![format!("the kept invoice does not read back: {e}")],
    })
}

/// Invoices kept in memory, for tests and programs that keep nothing.
#[derive(Debug, Default)]
pub struct MemoryInvoiceStore {
    kept: std::sync::Mutex<BTreeMap<(String, i64, i64), String>>,
}

impl MemoryInvoiceStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn kept_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i64, i64), String>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl InvoiceStore for MemoryInvoiceStore {
    async fn keep(&self, invoice: &Invoice) -> Result<Kept> {
        let doc = document(invoice)?;
        let key = (
            invoice.tenant.clone(),
            invoice.from.timestamp_millis(),
            invoice.to.timestamp_millis(),
        );
        let mut kept = self.kept_map();
        match kept.get(&key) {
            Some(stored) => kept_again(invoice, &doc, stored),
            None => {
                kept.insert(key, doc);
                Ok(Kept::New)
            }
        }
    }

    async fn kept(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<Invoice>> {
        let key = (
            tenant.to_owned(),
            from.timestamp_millis(),
            to.timestamp_millis(),
        );
        let doc = self.kept_map().get(&key).cloned();
        doc.map(|d| from_document(tenant, &d)).transpose()
    }

    async fn kept_of(&self, tenant: &str) -> Result<Vec<Invoice>> {
        let docs: Vec<String> = self
            .kept_map()
            .iter()
            .filter(|((t, _, _), _)| t == tenant)
            .map(|(_, d)| d.clone())
            .collect();
        docs.iter().map(|d| from_document(tenant, d)).collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn record(meter: &str, template: &str, task: TaskId, event: EventId, q: &str) -> UsageRecord {
        UsageRecord {
            event_id: event,
            meter: meter.to_owned(),
            tenant: "acme".to_owned(),
            environment: Some("production".to_owned()),
            template: Some(template.to_owned()),
            task_id: Some(task),
            gpu_model: None,
            outcome: Some(ops_core::TaskStatus::Succeeded),
            scavenger: false,
            preempted: false,
            attempt: None,
            quantity: q.parse().unwrap(),
            at: Utc.with_ymd_and_hms(2026, 11, 2, 12, 0, 0).unwrap(),
        }
    }

    #[test]
    fn the_text_table_shows_quantities_unit_prices_amounts_and_the_total() {
        let book = PriceBook::parse(
            r#"
            currency = "EUR"
            [[prices]]
            meter = "cpu_core_seconds"
            graduated = [ { up_to = 3600, unit_price = "0.0001" }, { unit_price = "0.00005" } ]
            [[prices]]
            meter = "tasks"
            unit_price = "0.02"
            [[prices]]
            meter = "tasks"
            template = "render"
            unit_price = "0.01"
            "#,
        )
        .unwrap();
        let metering = Metering::new(book.clone());
        let mut records = Vec::new();
        for (template, cpu) in [("render", "7200"), ("render", "100"), ("encode", "40")] {
            let (task, event) = (TaskId::new(), EventId::new());
            records.push(record("cpu_core_seconds", template, task, event, cpu));
            records.push(record("tasks", template, task, event, "1"));
        }
        let from = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let invoice = invoice(
            &metering,
            "acme",
            &records,
            from,
            to,
            to,
            chrono::Duration::days(3),
        )
        .unwrap();
        let text = invoice.to_text(&book);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Invoice for acme from 2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z (draft)"
        );
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(1), "meter price quantity unit price amount tasks");
        // 3600 s at 0.0001 + 3600 at 0.00005, then 100 and 40 at 0.0001.
        assert_eq!(
            words(2),
            "cpu_core_seconds 7340 0.0001 to 3600, then 0.00005 0.55 EUR 3"
        );
        assert_eq!(words(3), "tasks 1 0.02 0.02 EUR 1");
        assert_eq!(words(4), "tasks template=render 2 0.01 0.02 EUR 2");
        assert_eq!(words(5), "total 0.59 EUR");
        assert_eq!(
            words(6),
            "(tasks 0.59 EUR settled from credit; period meters 0.00 EUR charged when finalized)"
        );
        // Columns line up: every amount ends where the header's `amount` does.
        let end = lines[1].find("amount").unwrap() + "amount".len();
        for line in &lines[2..=5] {
            assert_eq!(&line[end - 3..end], "EUR", "{line:?}");
        }
    }
}
