//! Metering: task, storage and declared-meter events into usage records, exactly once,
//! priced under the book's charge policy (preempted attempts apart from the final
//! event); bad quantities fail for good (dead letters).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ops_billing::metering::{aggregate, aggregation_of, gb_months};
use ops_billing::{
    Aggregation, MemoryUsageStore, Metering, MeteringFunction, PriceBook, UsageStore,
};
use ops_core::{Event, Resources, TaskEventData, TaskId, TaskStatus, Usage, event_types};
use ops_events::Function;
use rust_decimal::Decimal;
use serde_json::json;

const BOOK: &str = r#"
currency = "EUR"

[[meters]]
name = "tokens"
event = "com.acme.llm.completed"
quantity = "$.usage.tokens"
aggregation = "sum"

[[prices]]
meter = "cpu_core_seconds"
unit_price = "0.0001"

[[prices]]
meter = "gpu_seconds"
gpu_model = "a100"
unit_price = "0.001"

[charges]
failed = "free"
"#;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, 0, 0, 0).unwrap()
}

fn task_event(status: TaskStatus, scavenger: bool) -> Event {
    let ty = match status {
        TaskStatus::Succeeded => event_types::TASK_SUCCEEDED,
        TaskStatus::Failed => event_types::TASK_FAILED,
        _ => event_types::TASK_CANCELLED,
    };
    let mut data = TaskEventData::new(TaskId::new(), "acme", "production", "train", status, 1);
    // 100 s on 2 GPUs: 200 GPU-seconds.
    data.usage = Some(Usage::new(
        Duration::from_secs(100),
        Duration::from_millis(150_500),
        1 << 29,
        2,
    ));
    data.resources =
        Some(Resources::new(2000, 2 << 30).with_gpus(2, Some("NVIDIA-A100-SXM4-80GB".into())));
    data.scavenger = scavenger;
    Event::builder(ty, "/tasks")
        .tenant("acme")
        .time(at(2))
        .data(&data)
        .unwrap()
        .build()
}

#[tokio::test]
async fn a_task_event_is_metered_once_however_often_it_comes() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let event = task_event(TaskStatus::Succeeded, false);
    let records = metering.records(&event).unwrap();
    let by_meter = |m: &str| {
        records
            .iter()
            .find(|r| r.meter == m)
            .unwrap_or_else(|| panic!("no {m}"))
    };
    assert_eq!(by_meter("cpu_core_seconds").quantity, d("150.5"));
    assert_eq!(by_meter("wall_seconds").quantity, d("100"));
    assert_eq!(by_meter("memory_gib_seconds").quantity, d("200"));
    assert_eq!(by_meter("gpu_seconds").quantity, d("200"));
    assert_eq!(
        by_meter("gpu_seconds").gpu_model.as_deref(),
        Some("NVIDIA-A100-SXM4-80GB")
    );
    assert_eq!(by_meter("tasks").quantity, Decimal::ONE);
    assert_eq!(records.len(), 5);
    let gpu = by_meter("gpu_seconds");
    assert_eq!(
        metering
            .book()
            .rate(&gpu.meter, &gpu.selector(), gpu.quantity)
            .unwrap()
            .to_string(),
        "0.20 EUR"
    );

    let store = Arc::new(MemoryUsageStore::new());
    let function = MeteringFunction::new(metering, store.clone());
    for _ in 0..3 {
        function.call(&event).await.unwrap();
    }
    let kept = store.records("acme", at(1), at(3)).await.unwrap();
    assert_eq!(kept.len(), 5, "redelivery adds nothing: {kept:?}");
    assert_eq!(store.record(&records).await.unwrap(), 0);
    assert!(
        store
            .records("globex", at(1), at(3))
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_charge_policy_decides_what_is_charged() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let charged = |status, scavenger| {
        let records = metering.records(&task_event(status, scavenger)).unwrap();
        records.iter().all(|r| metering.charged(r))
    };
    assert!(charged(TaskStatus::Succeeded, false));
    assert!(
        !charged(TaskStatus::Failed, false),
        "failed = free in this book"
    );
    assert!(
        charged(TaskStatus::Cancelled, false),
        "cancelled: charged by default"
    );
    assert!(
        !charged(TaskStatus::Succeeded, true),
        "scavenger work: free by default"
    );
}

/// Attempt 1 of a task (40 s of CPU, 50 s on 2 GPUs) preempted, then attempt 2 (30 s
/// of CPU, 20 s on 2 GPUs) ended the task as `status`: its two events.
fn preempted_then(status: TaskStatus) -> (Event, Event) {
    let task = TaskId::new();
    let first = Usage::new(Duration::from_secs(50), Duration::from_secs(40), 1 << 30, 2);
    let last = Usage::new(Duration::from_secs(20), Duration::from_secs(30), 1 << 29, 2);
    let resources =
        Resources::new(2000, 2 << 30).with_gpus(2, Some("NVIDIA-A100-SXM4-80GB".into()));
    let event = |ty: &str, data: &TaskEventData| {
        Event::builder(ty, "/tasks")
            .tenant("acme")
            .time(at(2))
            .data(data)
            .unwrap()
            .build()
    };
    let mut preempted =
        TaskEventData::new(task, "acme", "production", "train", TaskStatus::Queued, 1);
    preempted.reason = Some(ops_core::Reason::Preempted);
    preempted.attempt_usage = Some(first);
    preempted.resources = Some(resources.clone());
    let mut done = TaskEventData::new(task, "acme", "production", "train", status, 2);
    let mut total = first;
    total.accumulate(&last);
    done.usage = Some(total);
    done.attempt_usage = Some(last);
    done.preempted_usage = Some(first);
    done.resources = Some(resources);
    let ty = if status == TaskStatus::Failed {
        event_types::TASK_FAILED
    } else {
        event_types::TASK_SUCCEEDED
    };
    (
        event(event_types::TASK_PREEMPTED, &preempted),
        event(ty, &done),
    )
}

fn quantity(records: &[ops_billing::UsageRecord], meter: &str) -> Option<Decimal> {
    records
        .iter()
        .find(|r| r.meter == meter)
        .map(|r| r.quantity)
}

#[test]
fn a_preempted_attempt_is_metered_from_its_own_event_and_free_by_default() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let (preempted, done) = preempted_then(TaskStatus::Succeeded);

    let attempt = metering.records(&preempted).unwrap();
    assert_eq!(attempt.len(), 4, "no `tasks` record: {attempt:?}");
    assert!(attempt.iter().all(|r| r.preempted && r.attempt == Some(1)));
    assert!(
        attempt
            .iter()
            .all(|r| r.outcome.is_none() && r.task_id.is_some())
    );
    assert_eq!(quantity(&attempt, "cpu_core_seconds"), Some(d("40")));
    assert_eq!(quantity(&attempt, "gpu_seconds"), Some(d("100")));
    assert_eq!(quantity(&attempt, "tasks"), None);
    assert!(
        attempt.iter().all(|r| !metering.charged(r)),
        "charges.preempted is free by default"
    );
    assert_eq!(metering.charge(&attempt).unwrap().to_string(), "0.00 EUR");

    // The final event rates what the preempted attempt did not use.
    let last = metering.records(&done).unwrap();
    assert!(last.iter().all(|r| !r.preempted && r.attempt.is_none()));
    assert_eq!(quantity(&last, "cpu_core_seconds"), Some(d("30")));
    assert_eq!(quantity(&last, "wall_seconds"), Some(d("20")));
    assert_eq!(quantity(&last, "gpu_seconds"), Some(d("40")));
    assert_eq!(quantity(&last, "memory_gib_seconds"), Some(d("40")));
    assert_eq!(quantity(&last, "tasks"), Some(Decimal::ONE));
    // 30 CPU-seconds at 0.0001 and 40 A100-seconds at 0.001: only the last attempt.
    assert_eq!(metering.charge(&last).unwrap().to_string(), "0.04 EUR");
}

#[test]
fn a_preempted_attempt_is_charged_when_the_book_says_so() {
    let book = format!("{BOOK}preempted = \"charge\"\nminimum_per_task = \"0.05\"\n");
    let metering = Metering::new(PriceBook::parse(&book).unwrap());
    let (preempted, done) = preempted_then(TaskStatus::Succeeded);
    let attempt = metering.records(&preempted).unwrap();
    assert!(attempt.iter().all(|r| metering.charged(r)));
    // 40 × 0.0001 + 100 × 0.001 = 0.104: no minimum, the attempt did not end the task.
    assert_eq!(metering.charge(&attempt).unwrap().to_string(), "0.10 EUR");
    // 0.003 + 0.04 = 0.043, raised to the minimum per task.
    let last = metering.records(&done).unwrap();
    assert_eq!(metering.charge(&last).unwrap().to_string(), "0.05 EUR");

    // Scavenger work stays free, preempted or not.
    let scavenger = |e: &Event| {
        let mut data: TaskEventData = e.data_as().unwrap();
        data.scavenger = true;
        Event::builder(&e.ty, "/tasks")
            .tenant("acme")
            .data(&data)
            .unwrap()
            .build()
    };
    let free = metering.records(&scavenger(&preempted)).unwrap();
    assert!(free.iter().all(|r| !metering.charged(r)));
    // A failed task's final event follows `charges.failed` (free in this book); its
    // preempted attempt follows `charges.preempted`.
    let (preempted, failed) = preempted_then(TaskStatus::Failed);
    assert!(
        metering
            .records(&failed)
            .unwrap()
            .iter()
            .all(|r| !metering.charged(r))
    );
    assert!(
        metering
            .records(&preempted)
            .unwrap()
            .iter()
            .all(|r| metering.charged(r))
    );
}

#[test]
fn events_written_before_attempt_usage_rate_as_before() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    // A final event as written before `attempt_usage` and `preempted_usage` existed:
    // its whole usage is rated, as it always was.
    let task = TaskId::new();
    let resources = serde_json::to_value(
        Resources::new(2000, 2 << 30).with_gpus(2, Some("NVIDIA-A100-SXM4-80GB".into())),
    )
    .unwrap();
    let old_final = Event::builder(event_types::TASK_SUCCEEDED, "/tasks")
        .tenant("acme")
        .time(at(2))
        .json(json!({
            "task_id": task, "tenant": "acme", "environment": "production",
            "template": "train", "status": "succeeded", "attempt": 2,
            "usage": { "wall_time": 70.0, "cpu_time": 70.0, "peak_memory_bytes": 1073741824_u64, "gpu_seconds": 140.0 },
            "resources": resources,
        }))
        .build();
    let records = metering.records(&old_final).unwrap();
    assert_eq!(records.len(), 5);
    assert_eq!(quantity(&records, "cpu_core_seconds"), Some(d("70")));
    assert_eq!(quantity(&records, "gpu_seconds"), Some(d("140")));
    assert!(records.iter().all(|r| !r.preempted && r.attempt.is_none()));
    // 0.007 + 0.14
    assert_eq!(metering.charge(&records).unwrap().to_string(), "0.15 EUR");
    // Its preempted event carried no usage: nothing to meter there.
    let old_preempted = Event::builder(event_types::TASK_PREEMPTED, "/tasks")
        .tenant("acme")
        .json(json!({
            "task_id": task, "tenant": "acme", "environment": "production",
            "template": "train", "status": "queued", "attempt": 1, "reason": "Preempted",
        }))
        .build();
    assert!(metering.records(&old_preempted).unwrap().is_empty());
}

#[test]
fn storage_is_metered_in_gb_months_over_time() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let object = |ty: &str, size: u64, time| {
        Event::builder(ty, "/storage")
            .tenant("acme")
            .time(time)
            .json(json!({
                "tenant": "acme", "environment": "production", "path": "tasks/x/out.bin",
                "size": size, "sha256": "00", "created_at": "2026-11-01T00:00:00Z"
            }))
            .build()
    };
    let mut records = Vec::new();
    // 4 GB stored before the period, 2 GB of it deleted halfway through a 30-day one.
    for e in [
        object(event_types::STORAGE_OBJECT_CREATED, 2_000_000_000, at(1)),
        object(event_types::STORAGE_OBJECT_CREATED, 2_000_000_000, at(1)),
        object(event_types::STORAGE_OBJECT_DELETED, 2_000_000_000, at(16)),
    ] {
        records.extend(metering.records(&e).unwrap());
    }
    assert_eq!(records[2].quantity, d("-2000000000"));
    let book = metering.book();
    let aggregation = aggregation_of(book, "storage_gb_months");
    assert_eq!(aggregation, Aggregation::TimeWeightedSum);
    let from = at(1);
    let to = from + chrono::Duration::days(30);
    let byte_seconds = aggregate(&records, aggregation, from, to);
    // 4 GB for 15 days and 2 GB for 15 days: 3 GB-months.
    assert_eq!(gb_months(byte_seconds), d("3"));
    // A period that starts after the deletion counts the 2 GB left for all of it.
    let later = aggregate(
        &records,
        aggregation,
        at(20),
        at(20) + chrono::Duration::days(30),
    );
    assert_eq!(gb_months(later), d("2"));
}

#[tokio::test]
async fn declared_meters_read_their_quantity_and_bad_ones_go_to_dead_letters() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let llm = |tokens: serde_json::Value| {
        Event::builder("com.acme.llm.completed", "/llm")
            .tenant("acme")
            .json(json!({ "usage": { "tokens": tokens } }))
            .build()
    };
    let records = metering.records(&llm(json!(1234))).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].meter, "tokens");
    assert_eq!(records[0].tenant, "acme");
    assert_eq!(records[0].quantity, d("1234"));

    let store = Arc::new(MemoryUsageStore::new());
    let function = MeteringFunction::new(metering, store.clone());
    for bad in [json!(-5), json!("NaN"), json!("lots")] {
        let event = llm(bad.clone());
        let err = function.call(&event).await.unwrap_err();
        assert!(!err.is_retryable(), "{bad}: {err}");
        let text = err.to_string();
        assert!(text.contains("meter tokens"), "{text}");
        assert!(text.contains(&event.id.to_string()), "{text}");
    }
    // Nothing half-recorded for the refused events.
    assert!(
        store
            .records("acme", at(1), Utc::now() + chrono::Duration::days(1))
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn aggregations_over_a_period() {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let mut records = Vec::new();
    for (day, tokens) in [(1, 5), (2, 9), (3, 5), (5, 7)] {
        let e = Event::builder("com.acme.llm.completed", "/llm")
            .tenant("acme")
            .time(at(day))
            .json(json!({ "usage": { "tokens": tokens } }))
            .build();
        records.extend(metering.records(&e).unwrap());
    }
    let (from, to) = (at(1), at(4));
    assert_eq!(aggregate(&records, Aggregation::Sum, from, to), d("19"));
    assert_eq!(aggregate(&records, Aggregation::Count, from, to), d("3"));
    assert_eq!(aggregate(&records, Aggregation::Max, from, to), d("9"));
    assert_eq!(aggregate(&records, Aggregation::Latest, from, to), d("5"));
    assert_eq!(
        aggregate(&records, Aggregation::UniqueCount, from, to),
        d("2")
    );
    // Order does not matter.
    records.reverse();
    assert_eq!(aggregate(&records, Aggregation::Latest, from, to), d("5"));
    assert_eq!(aggregate(&records, Aggregation::Sum, from, to), d("19"));
}

async fn the_store_keeps_each_event_and_meter_once(store: &dyn UsageStore) {
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let event = task_event(TaskStatus::Succeeded, true);
    let mut records = metering.records(&event).unwrap();
    // A declared meter's record of the same event has no task place of its own.
    let mut declared = records[0].clone();
    declared.meter = "tokens".to_owned();
    declared.environment = None;
    declared.template = None;
    declared.task_id = None;
    declared.outcome = None;
    declared.scavenger = false;
    declared.quantity = d("12.5");
    records.push(declared);
    // A preempted attempt's records keep their mark and attempt.
    let (preempted, _) = preempted_then(TaskStatus::Succeeded);
    records.extend(metering.records(&preempted).unwrap());
    assert_eq!(store.record(&records).await.unwrap(), 10);
    assert_eq!(store.record(&records).await.unwrap(), 0);
    // An event already metered is not metered again, even with other records.
    assert_eq!(store.record(&records[..2]).await.unwrap(), 0);
    let kept = store.records("acme", at(1), at(3)).await.unwrap();
    let mut expected = records.clone();
    expected.sort_by(|a, b| (&a.meter, a.event_id).cmp(&(&b.meter, b.event_id)));
    let mut kept_sorted = kept.clone();
    kept_sorted.sort_by(|a, b| (&a.meter, a.event_id).cmp(&(&b.meter, b.event_id)));
    assert_eq!(kept_sorted, expected, "records round-trip exactly");
    assert!(
        store
            .records("acme", at(3), at(4))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn usage_stores_keep_records_exactly_once() {
    the_store_keeps_each_event_and_meter_once(&MemoryUsageStore::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = ops_billing::ledger::SqliteLedger::open(&format!(
        "sqlite://{}/ops.db",
        dir.path().display()
    ))
    .await
    .unwrap();
    the_store_keeps_each_event_and_meter_once(&sqlite).await;
    #[cfg(feature = "postgres")]
    if let Some(url) = ops_testbed::postgres_database() {
        let pg = ops_billing::ledger::PostgresLedger::connect(&url)
            .await
            .unwrap();
        the_store_keeps_each_event_and_meter_once(&pg).await;
    }
}

/// Records stored by the first release of the SQLite store (one row per event and
/// meter) move to one row per event when the ledger opens, unchanged.
#[tokio::test]
async fn usage_rows_of_the_first_schema_move_over() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ops.db", dir.path().display());
    let metering = Metering::new(PriceBook::parse(BOOK).unwrap());
    let event = task_event(TaskStatus::Failed, true);
    let records = metering.records(&event).unwrap();
    {
        use sqlx::ConnectOptions;
        let mut conn = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(include_str!(
            "../migrations/sqlite/20261203000002_usage.sql"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        for r in &records {
            sqlx::query("INSERT INTO ops_billing_usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(r.event_id.to_string())
                .bind(&r.meter)
                .bind(&r.tenant)
                .bind(&r.environment)
                .bind(&r.template)
                .bind(r.task_id.map(|t| t.to_string()))
                .bind(&r.gpu_model)
                .bind(r.outcome.map(|o| o.as_str()))
                .bind(r.scavenger)
                .bind(r.quantity.to_string())
                .bind(r.at.timestamp_millis())
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    let ledger = ops_billing::ledger::SqliteLedger::open(&url).await.unwrap();
    let mut kept = ledger.records("acme", at(1), at(3)).await.unwrap();
    kept.sort_by(|a, b| a.meter.cmp(&b.meter));
    let mut expected = records.clone();
    expected.sort_by(|a, b| a.meter.cmp(&b.meter));
    assert_eq!(kept, expected);
    assert_eq!(
        ledger.record(&records).await.unwrap(),
        0,
        "still metered once"
    );
}
