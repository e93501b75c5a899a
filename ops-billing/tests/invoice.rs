//! Invoices: traceable lines, task totals equal to what settlement charged, period
//! meters priced over the period, drafts until the grace window ends, and the same
//! invoice for any order of the events.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ops_billing::invoice::invoice;
use ops_billing::{InvoiceStatus, Metering, PriceBook, UsageRecord};
use ops_core::{Event, Resources, TaskEventData, TaskId, TaskStatus, Usage, event_types};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;

const BOOK: &str = r#"
currency = "EUR"

[[meters]]
name = "tokens"
event = "com.acme.llm.completed"
quantity = "$.tokens"
aggregation = "sum"

[[prices]]
meter = "cpu_core_seconds"
unit_price = "0.001"

[[prices]]
meter = "cpu_core_seconds"
environment = "staging"
unit_price = "0.0005"

[[prices]]
meter = "tasks"
unit_price = "0.003"

[[prices]]
meter = "storage_gb_months"
unit_price = "0.02"

[[prices]]
meter = "tokens"
graduated = [ { up_to = 1000, unit_price = "0" }, { unit_price = "0.0001" } ]

[charges]
minimum_per_task = "0.01"
"#;

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn task(env: &str, cpu_secs: u64, day: u32) -> Event {
    let mut data = TaskEventData::new(
        TaskId::new(),
        "acme",
        env,
        "render",
        TaskStatus::Succeeded,
        1,
    );
    data.usage = Some(Usage::new(
        Duration::from_secs(cpu_secs),
        Duration::from_secs(cpu_secs),
        0,
        0,
    ));
    data.resources = Some(Resources::new(1000, 0));
    Event::builder(event_types::TASK_SUCCEEDED, "/tasks")
        .tenant("acme")
        .time(at(day, 12))
        .data(&data)
        .unwrap()
        .build()
}

fn events() -> Vec<Event> {
    let mut out = vec![
        task("production", 30, 2),
        task("production", 5, 3),
        task("staging", 100, 4),
        task("production", 7, 13),
    ];
    for (day, tokens) in [(5, 800), (6, 700)] {
        out.push(
            Event::builder("com.acme.llm.completed", "/llm")
                .tenant("acme")
                .time(at(day, 0))
                .json(json!({ "tokens": tokens }))
                .build(),
        );
    }
    out.push(
        Event::builder(event_types::STORAGE_OBJECT_CREATED, "/storage")
            .tenant("acme")
            .time(at(1, 0))
            .json(
                json!({ "tenant": "acme", "environment": "production", "size": 3_000_000_000u64 }),
            )
            .build(),
    );
    out
}

fn records(metering: &Metering, events: &[Event]) -> Vec<UsageRecord> {
    events
        .iter()
        .flat_map(|e| metering.records(e).unwrap())
        .collect()
}

#[test]
fn an_invoice_traces_its_lines_and_matches_what_was_settled() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let events = events();
    let records = records(&metering, &events);
    let (from, to) = (at(1, 0), at(1, 0) + chrono::Duration::days(30));
    let grace = chrono::Duration::days(2);
    let inv = invoice(&metering, "acme", &records, from, to, at(20, 0), grace).unwrap();
    assert_eq!(inv.status, InvoiceStatus::Draft);

    // The task total is what settlement charged, event by event.
    let settled: i64 = events
        .iter()
        .filter(|e| e.ty == event_types::TASK_SUCCEEDED)
        .map(|e| {
            metering
                .charge(&metering.records(e).unwrap())
                .unwrap()
                .amount
        })
        .sum();
    assert_eq!(inv.tasks_total.amount, settled);
    // 30 s: 0.030 + 0.003 → 0.03; 5 s: 0.008 → the 0.01 minimum; staging 100 s at
    // 0.0005: 0.053 → 0.05; 7 s: 0.010 → 0.01.
    assert_eq!(settled, 3 + 1 + 5 + 1);

    let line = |meter: &str, price: &str| {
        inv.lines
            .iter()
            .find(|l| l.meter == meter && l.price == price)
            .unwrap_or_else(|| panic!("no line {meter} {price}: {:#?}", inv.lines))
    };
    let production_cpu = line("cpu_core_seconds", "");
    assert_eq!(production_cpu.quantity, Decimal::from(42));
    assert_eq!(production_cpu.tasks.len(), 3);
    assert_eq!(
        line("cpu_core_seconds", "environment=staging").tasks.len(),
        1
    );
    assert_eq!(line("tasks", "").quantity, Decimal::from(4));
    // Every task event is behind the lines that name it.
    for e in events
        .iter()
        .filter(|e| e.ty == event_types::TASK_SUCCEEDED)
    {
        assert!(line("tasks", "").events.contains(&e.id));
    }
    // Tokens over the period: 1500, the first 1000 free: 0.05.
    let tokens = line("tokens", "");
    assert_eq!(tokens.quantity, Decimal::from(1500));
    assert_eq!(tokens.amount.amount, 5);
    // 3 GB for the whole 30-day period: 3 GB-months at 0.02.
    let storage = line("storage_gb_months", "");
    assert_eq!(storage.quantity, Decimal::from(3));
    assert_eq!(storage.amount.amount, 6);
    assert_eq!(inv.period_total.amount, 11);
    let sum: i64 = inv.lines.iter().map(|l| l.amount.amount).sum();
    assert_eq!(sum, inv.total.amount, "lines add up to the total");
    assert_eq!(inv.total.amount, settled + 11);

    let later = invoice(&metering, "acme", &records, from, to, to + grace, grace).unwrap();
    assert_eq!(later.status, InvoiceStatus::Finalized);
    let json = serde_json::to_string(&inv).unwrap();
    assert_eq!(
        serde_json::from_str::<ops_billing::Invoice>(&json).unwrap(),
        inv
    );
    let html = inv.to_html();
    assert!(html.contains("Invoice for acme"), "{html}");
    assert!(html.contains(&inv.total.to_string()), "{html}");
    let other = invoice(&metering, "globex", &records, from, to, at(20, 0), grace).unwrap();
    assert!(other.lines.is_empty());
    assert_eq!(other.total.amount, 0);
}

/// A task whose attempt 1 (20 CPU-seconds) was preempted and whose attempt 2 (30
/// CPU-seconds) succeeded: its two events.
fn preempted_then_succeeded() -> [Event; 2] {
    let id = TaskId::new();
    let usage = |secs| Usage::new(Duration::from_secs(secs), Duration::from_secs(secs), 0, 0);
    let mut preempted =
        TaskEventData::new(id, "acme", "production", "render", TaskStatus::Queued, 1);
    preempted.attempt_usage = Some(usage(20));
    preempted.resources = Some(Resources::new(1000, 0));
    let mut done = TaskEventData::new(id, "acme", "production", "render", TaskStatus::Succeeded, 2);
    done.usage = Some(usage(50));
    done.attempt_usage = Some(usage(30));
    done.preempted_usage = Some(usage(20));
    done.resources = Some(Resources::new(1000, 0));
    [
        (event_types::TASK_PREEMPTED, preempted, 2),
        (event_types::TASK_SUCCEEDED, done, 3),
    ]
    .map(|(ty, data, day)| {
        Event::builder(ty, "/tasks")
            .tenant("acme")
            .time(at(day, 12))
            .data(&data)
            .unwrap()
            .build()
    })
}

#[test]
fn a_preempted_attempt_is_on_the_lines_and_charged_as_the_policy_says() {
    let events = preempted_then_succeeded();
    let (from, to) = (at(1, 0), at(1, 0) + chrono::Duration::days(30));
    let grace = chrono::Duration::days(2);
    for (book, settled) in [
        // Free (the default): only the last attempt, 30 × 0.001 + 0.003 → 0.03.
        (BOOK.to_owned(), 3),
        // Charged: 20 × 0.001 = 0.02 at the preempted event (no minimum: it did not end
        // the task), then 0.03 with the final one.
        (format!("{BOOK}preempted = \"charge\"\n"), 5),
    ] {
        let metering = Metering::new(PriceBook::parse(&book).unwrap());
        let records = records(&metering, &events);
        let inv = invoice(&metering, "acme", &records, from, to, at(20, 0), grace).unwrap();
        let per_event: i64 = events
            .iter()
            .map(|e| {
                metering
                    .charge(&metering.records(e).unwrap())
                    .unwrap()
                    .amount
            })
            .sum();
        assert_eq!(per_event, settled, "{book}");
        assert_eq!(inv.tasks_total.amount, settled, "{book}");
        let cpu = inv
            .lines
            .iter()
            .find(|l| l.meter == "cpu_core_seconds")
            .unwrap();
        // Both attempts are on the line, traced to the task and both events.
        assert_eq!(cpu.quantity, Decimal::from(50));
        assert_eq!(cpu.tasks.len(), 1);
        let mut ids = events.iter().map(|e| e.id).collect::<Vec<_>>();
        ids.sort();
        assert_eq!(cpu.events, ids);
        let tasks = inv.lines.iter().find(|l| l.meter == "tasks").unwrap();
        assert_eq!(
            tasks.quantity,
            Decimal::ONE,
            "one task, however many attempts"
        );
        assert_eq!(tasks.events, [events[1].id]);
        let sum: i64 = inv.lines.iter().map(|l| l.amount.amount).sum();
        assert_eq!(sum, inv.total.amount, "lines add up to the total");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_order_of_the_events_gives_the_same_invoice(seed in any::<u64>()) {
        let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
        let events = events();
        let records = records(&metering, &events);
        let (from, to) = (at(1, 0), at(1, 0) + chrono::Duration::days(30));
        let grace = chrono::Duration::days(2);
        let expected = invoice(&metering, "acme", &records, from, to, at(20, 0), grace).unwrap();
        let mut shuffled = records.clone();
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let got = invoice(&metering, "acme", &shuffled, from, to, at(20, 0), grace).unwrap();
        prop_assert_eq!(got, expected);
    }
}

/// A period's invoicing run over many tenants, several at a time, gives each tenant the
/// invoice built from its records alone, in the order asked (a tenant without usage
/// gets an empty one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_for_many_tenants_at_once_are_each_tenants_own() {
    use std::sync::Arc;
    let metering = Arc::new(Metering::new(PriceBook::parse(BOOK).unwrap()));
    let acme = records(&metering, &events());
    // The same usage for globex, under its own event ids.
    let mut ids = std::collections::HashMap::new();
    let globex: Vec<UsageRecord> = acme
        .iter()
        .map(|r| {
            let mut g = r.clone();
            g.tenant = "globex".to_owned();
            g.event_id = *ids.entry(r.event_id).or_insert_with(ops_core::EventId::new);
            g
        })
        .collect();
    let store = Arc::new(ops_billing::MemoryUsageStore::new());
    ops_billing::UsageStore::record(store.as_ref(), &acme)
        .await
        .unwrap();
    ops_billing::UsageStore::record(store.as_ref(), &globex)
        .await
        .unwrap();
    let (from, to) = (at(1, 0), at(1, 0) + chrono::Duration::days(30));
    let (now, grace) = (at(20, 0), chrono::Duration::days(2));
    let tenants = vec!["globex".to_owned(), "acme".to_owned(), "nobody".to_owned()];
    let all =
        ops_billing::invoice::invoices(metering.clone(), store, tenants, (from, to), now, grace, 2)
            .await
            .unwrap();
    let alone = |tenant: &str, records: &[UsageRecord]| {
        invoice(&metering, tenant, records, from, to, now, grace).unwrap()
    };
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], alone("globex", &globex));
    assert_eq!(all[1], alone("acme", &acme));
    assert_eq!(all[2], alone("nobody", &[]));
    assert!(all[2].lines.is_empty());
    assert_eq!(all[0].total, all[1].total);
}

async fn kept_invoices_do_not_change(store: &dyn ops_billing::InvoiceStore) {
    use ops_billing::{Error, Kept};
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let records = records(&metering, &events());
    let (from, to) = (at(1, 0), at(1, 0) + chrono::Duration::days(30));
    let grace = chrono::Duration::days(2);
    let draft = invoice(&metering, "acme", &records, from, to, at(20, 0), grace).unwrap();
    let err = store.keep(&draft).await.unwrap_err();
    assert!(matches!(err, Error::InvoiceNotFinal { .. }), "{err}");
    let after = to + chrono::Duration::days(3);
    let november = invoice(&metering, "acme", &records, from, to, after, grace).unwrap();
    assert_eq!(store.keep(&november).await.unwrap(), Kept::New);
    assert_eq!(store.keep(&november).await.unwrap(), Kept::AlreadyKept);
    // A late event rebuilds another November: the kept one stands.
    let mut late = records.clone();
    late.extend(metering.records(&task("production", 50, 20)).unwrap());
    let rebuilt = invoice(&metering, "acme", &late, from, to, after, grace).unwrap();
    assert_ne!(rebuilt.total, november.total);
    let err = store.keep(&rebuilt).await.unwrap_err();
    assert!(matches!(err, Error::InvoiceConflict { .. }), "{err}");
    assert_eq!(err.kind(), ops_core::ErrorKind::Conflict);
    assert_eq!(
        store.kept("acme", from, to).await.unwrap().as_ref(),
        Some(&november)
    );
    // An earlier, empty period, kept after: listed first.
    let october = invoice(
        &metering,
        "acme",
        &[],
        from - chrono::Duration::days(31),
        from,
        after,
        grace,
    )
    .unwrap();
    store.keep(&october).await.unwrap();
    let all = store.kept_of("acme").await.unwrap();
    assert_eq!(all, vec![october, november]);
    assert!(store.kept("globex", from, to).await.unwrap().is_none());
    assert!(store.kept_of("globex").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_kept_invoice_does_not_change_on_every_store() {
    kept_invoices_do_not_change(&ops_billing::MemoryInvoiceStore::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = ops_billing::ledger::SqliteLedger::open(&format!(
        "sqlite://{}/ops.db",
        dir.path().display()
    ))
    .await
    .unwrap();
    kept_invoices_do_not_change(&sqlite).await;
    #[cfg(feature = "postgres")]
    if let Some(url) = ops_testbed::postgres_database() {
        let pg = ops_billing::ledger::PostgresLedger::connect(&url)
            .await
            .unwrap();
        kept_invoices_do_not_change(&pg).await;
    }
}
