//! Reservations hold at admission: concurrent holds never exceed the credit (SQLite
//! and Postgres), settlement returns the rest exactly once, and the billing function
//! settles a task from its final event (and a charged preempted attempt from its own
//! event) however often it comes.

use std::sync::Arc;
use std::time::Duration;

use ops_billing::ledger::{Ledger, MemoryLedger, SqliteLedger};
use ops_billing::{
    BillingFunction, Budgets, HoldRequest, MemoryUsageStore, Metering, Money, PriceBook,
    Reservation,
};
use ops_core::{Event, Resources, TaskEventData, TaskId, TaskStatus, Tenant, Usage, event_types};
use ops_events::Function;

const BOOK: &str = r#"
currency = "EUR"
[[prices]]
meter = "cpu_core_seconds"
unit_price = "0.001"
[[prices]]
meter = "tasks"
unit_price = "0.01"
"#;

fn book() -> Arc<PriceBook> {
    Arc::new(PriceBook::parse(BOOK).unwrap())
}

fn eur(amount: i64) -> Money {
    Money::new(amount, "EUR".parse().unwrap())
}

fn acme() -> Tenant {
    Tenant::parse("acme").unwrap()
}

/// 1 core for 100 s: 0.10 EUR of CPU + 0.01 per task = 0.11 EUR worst case.
fn hold<'a>(task: TaskId, tenant: &'a Tenant, resources: &'a Resources) -> HoldRequest<'a> {
    HoldRequest {
        task_id: task,
        attempt: 1,
        tenant,
        environment: "production",
        template: "render",
        resources,
        timeout: Some(Duration::from_secs(100)),
        scavenger: false,
    }
}

async fn at_most_ten_of_a_hundred_start(ledger: Arc<dyn Ledger>) {
    let budgets = Budgets::new(ledger.clone(), book());
    let tenant = acme();
    // Credit for exactly ten worst cases.
    budgets.top_up(&tenant, eur(110), "initial").await.unwrap();
    let resources = Resources::new(1000, 0);
    let mut calls = Vec::new();
    for _ in 0..100 {
        let budgets = budgets.clone();
        let tenant = tenant.clone();
        let resources = resources.clone();
        calls.push(tokio::spawn(async move {
            budgets
                .reserve(&hold(TaskId::new(), &tenant, &resources))
                .await
                .unwrap()
        }));
    }
    let mut held = 0;
    for call in calls {
        match call.await.unwrap() {
            Reservation::Held { added, .. } => {
                assert_eq!(added, eur(11));
                held += 1;
            }
            Reservation::Insufficient { needed, available } => {
                assert_eq!(needed, eur(11));
                assert!(available.amount < 11, "{available}");
            }
            other => panic!("neither held nor short of credit: {other:?}"),
        }
    }
    assert_eq!(held, 10, "exactly the ten the credit covers");
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(0));
    assert!(ledger.audit().await.unwrap().is_empty());
}

/// The same through admission passes: ten passes of ten tasks at once, each pass one
/// `reserve_many`, against a credit for ten.
async fn at_most_ten_of_ten_passes_start(ledger: Arc<dyn Ledger>) {
    let budgets = Budgets::new(ledger.clone(), book());
    let tenant = acme();
    budgets.top_up(&tenant, eur(110), "initial").await.unwrap();
    let resources = Resources::new(1000, 0);
    let mut calls = Vec::new();
    for _ in 0..10 {
        let budgets = budgets.clone();
        let tenant = tenant.clone();
        let resources = resources.clone();
        calls.push(tokio::spawn(async move {
            let ids: Vec<TaskId> = (0..10).map(|_| TaskId::new()).collect();
            let holds: Vec<HoldRequest<'_>> = ids
                .iter()
                .map(|id| hold(*id, &tenant, &resources))
                .collect();
            // A Postgres batch that lost a race on a key is retried whole.
            loop {
                match budgets.reserve_many(&holds).await {
                    Ok(answers) => {
                        break answers.into_iter().map(Result::unwrap).collect::<Vec<_>>();
                    }
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let mut held = 0;
    for call in calls {
        for answer in call.await.unwrap() {
            match answer {
                Reservation::Held { added, .. } => {
                    assert_eq!(added, eur(11));
                    held += 1;
                }
                Reservation::Insufficient { needed, .. } => assert_eq!(needed, eur(11)),
                other => panic!("neither held nor short of credit: {other:?}"),
            }
        }
    }
    assert_eq!(held, 10, "exactly the ten the credit covers");
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(0));
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admission_passes_never_exceed_the_credit() {
    at_most_ten_of_ten_passes_start(Arc::new(MemoryLedger::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(&format!("sqlite://{}/ops.db", dir.path().display()))
        .await
        .unwrap();
    at_most_ten_of_ten_passes_start(Arc::new(sqlite)).await;
    #[cfg(feature = "postgres")]
    if let Some(url) = ops_testbed::postgres_database() {
        let pg = ops_billing::ledger::PostgresLedger::connect(&url)
            .await
            .unwrap();
        at_most_ten_of_ten_passes_start(Arc::new(pg)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_holds_never_exceed_the_credit() {
    at_most_ten_of_a_hundred_start(Arc::new(MemoryLedger::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(&format!("sqlite://{}/ops.db", dir.path().display()))
        .await
        .unwrap();
    at_most_ten_of_a_hundred_start(Arc::new(sqlite)).await;
    #[cfg(feature = "postgres")]
    if let Some(url) = ops_testbed::postgres_database() {
        let pg = ops_billing::ledger::PostgresLedger::connect(&url)
            .await
            .unwrap();
        at_most_ten_of_a_hundred_start(Arc::new(pg)).await;
    }
}

fn final_event(task: TaskId, cpu_secs: u64) -> Event {
    let mut data = TaskEventData::new(
        task,
        "acme",
        "production",
        "render",
        TaskStatus::Succeeded,
        1,
    );
    data.usage = Some(Usage::new(
        Duration::from_secs(cpu_secs * 2),
        Duration::from_secs(cpu_secs),
        0,
        0,
    ));
    data.resources = Some(Resources::new(1000, 0));
    Event::builder(event_types::TASK_SUCCEEDED, "/tasks")
        .tenant("acme")
        .data(&data)
        .unwrap()
        .build()
}

#[tokio::test]
async fn the_final_event_settles_the_hold_once() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let budgets = Budgets::new(ledger.clone(), book());
    let tenant = acme();
    budgets.top_up(&tenant, eur(100), "p1").await.unwrap();
    let task = TaskId::new();
    let resources = Resources::new(1000, 0);
    let reserved = budgets
        .reserve(&hold(task, &tenant, &resources))
        .await
        .unwrap();
    assert_eq!(
        reserved,
        Reservation::Held {
            added: eur(11),
            held: eur(11)
        }
    );
    // The next attempt's hold tops up nothing: the worst case is already held.
    let mut second = hold(task, &tenant, &resources);
    second.attempt = 2;
    assert_eq!(
        budgets.reserve(&second).await.unwrap(),
        Reservation::Held {
            added: eur(0),
            held: eur(11)
        }
    );
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(89));

    let function = BillingFunction::new(
        Metering::new((*book()).clone()),
        Arc::new(MemoryUsageStore::new()),
        budgets.clone(),
    );
    // 30 CPU-seconds: 0.03 + 0.01 = 0.04 EUR; 0.07 returns to the credit.
    let event = final_event(task, 30);
    for _ in 0..3 {
        function.call(&event).await.unwrap();
    }
    assert_eq!(budgets.held(&tenant, task).await.unwrap(), eur(0));
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(96));
    let revenue = ops_billing::ledger::Account::platform("revenue").unwrap();
    assert_eq!(
        ledger
            .balance(&revenue, "EUR".parse().unwrap())
            .await
            .unwrap(),
        eur(4)
    );
    assert!(ledger.audit().await.unwrap().is_empty());
}

/// Attempt 1 of `task` (40 CPU-seconds) preempted, then attempt 2 (30 CPU-seconds)
/// succeeded: the two events as ops-tasks writes them.
fn preempted_then_succeeded(task: TaskId) -> (Event, Event) {
    let usage = |cpu_secs| {
        Usage::new(
            Duration::from_secs(cpu_secs),
            Duration::from_secs(cpu_secs),
            0,
            0,
        )
    };
    let mut preempted =
        TaskEventData::new(task, "acme", "production", "render", TaskStatus::Queued, 1);
    preempted.reason = Some(ops_core::Reason::Preempted);
    preempted.attempt_usage = Some(usage(40));
    preempted.resources = Some(Resources::new(1000, 0));
    let mut done = TaskEventData::new(
        task,
        "acme",
        "production",
        "render",
        TaskStatus::Succeeded,
        2,
    );
    done.usage = Some(usage(70));
    done.attempt_usage = Some(usage(30));
    done.preempted_usage = Some(usage(40));
    done.resources = Some(Resources::new(1000, 0));
    let event = |ty: &str, data: &TaskEventData| {
        Event::builder(ty, "/tasks")
            .tenant("acme")
            .data(data)
            .unwrap()
            .build()
    };
    (
        event(event_types::TASK_PREEMPTED, &preempted),
        event(event_types::TASK_SUCCEEDED, &done),
    )
}

/// The keys of the postings that reached revenue, with their amounts.
async fn revenue(ledger: &dyn Ledger) -> Vec<(String, Money)> {
    let account = ops_billing::ledger::Account::platform("revenue").unwrap();
    let mut out: Vec<(String, Money)> = ledger
        .entries(&account)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.posting, e.amount))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A budget, a billing function under `book`, credit of 1.00 EUR and the worst case of
/// attempt 1 of a fresh task held.
async fn preemption_setup(
    book: &str,
) -> (Arc<dyn Ledger>, Budgets, BillingFunction, Tenant, TaskId) {
    let book = Arc::new(PriceBook::parse(book).unwrap());
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let budgets = Budgets::new(ledger.clone(), book.clone());
    let tenant = acme();
    budgets.top_up(&tenant, eur(100), "p1").await.unwrap();
    let task = TaskId::new();
    let resources = Resources::new(1000, 0);
    budgets
        .reserve(&hold(task, &tenant, &resources))
        .await
        .unwrap();
    let function = BillingFunction::new(
        Metering::new((*book).clone()),
        Arc::new(MemoryUsageStore::new()),
        budgets.clone(),
    );
    (ledger, budgets, function, tenant, task)
}

/// Holds the worst case of attempt 2 again, as admission does before it starts.
async fn reserve_second(budgets: &Budgets, tenant: &Tenant, task: TaskId) -> Reservation {
    let resources = Resources::new(1000, 0);
    let mut second = hold(task, tenant, &resources);
    second.attempt = 2;
    budgets.reserve(&second).await.unwrap()
}

#[tokio::test]
async fn a_preempted_attempt_is_free_by_default() {
    let (ledger, budgets, function, tenant, task) = preemption_setup(BOOK).await;
    let (preempted, done) = preempted_then_succeeded(task);
    for _ in 0..2 {
        function.call(&preempted).await.unwrap();
    }
    assert_eq!(
        budgets.held(&tenant, task).await.unwrap(),
        eur(11),
        "nothing posted"
    );
    assert!(revenue(&*ledger).await.is_empty());
    assert_eq!(
        reserve_second(&budgets, &tenant, task).await,
        Reservation::Held {
            added: eur(0),
            held: eur(11)
        }
    );
    for _ in 0..2 {
        function.call(&done).await.unwrap();
    }
    // Only the last attempt: 30 CPU-seconds (0.03) + 0.01 per task.
    assert_eq!(
        revenue(&*ledger).await,
        [(format!("settle:{task}"), eur(4))]
    );
    assert_eq!(budgets.held(&tenant, task).await.unwrap(), eur(0));
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(96));
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_charged_preempted_attempt_is_settled_once_at_its_event() {
    let book = format!("{BOOK}[charges]\npreempted = \"charge\"\n");
    let (ledger, budgets, function, tenant, task) = preemption_setup(&book).await;
    let (preempted, done) = preempted_then_succeeded(task);
    for _ in 0..3 {
        function.call(&preempted).await.unwrap();
    }
    // 40 CPU-seconds: 0.04 from the hold to revenue; the hold stays for attempt 2.
    let attempt_key = format!("settle:{task}:attempt:1");
    assert_eq!(revenue(&*ledger).await, [(attempt_key.clone(), eur(4))]);
    assert_eq!(budgets.held(&tenant, task).await.unwrap(), eur(7));
    assert_eq!(
        reserve_second(&budgets, &tenant, task).await,
        Reservation::Held {
            added: eur(4),
            held: eur(11)
        },
        "attempt 2 tops the hold back up to its worst case"
    );
    for _ in 0..2 {
        function.call(&done).await.unwrap();
    }
    // Redelivered after the task was settled (its hold gone): still nothing new.
    function.call(&preempted).await.unwrap();
    // The rest, 30 CPU-seconds (0.03) + 0.01 per task, with the final event.
    let settled = revenue(&*ledger).await;
    assert_eq!(
        settled,
        [(format!("settle:{task}"), eur(4)), (attempt_key, eur(4))]
    );
    let entries = ledger
        .entries(&ops_billing::ledger::Account::platform("revenue").unwrap())
        .await
        .unwrap();
    let from_event = |key: &str| entries.iter().find(|e| e.posting == key).unwrap().event_id;
    assert_eq!(
        from_event(&format!("settle:{task}:attempt:1")),
        Some(preempted.id)
    );
    assert_eq!(from_event(&format!("settle:{task}")), Some(done.id));
    // Together what the whole usage costs rated at once (70 CPU-seconds + 0.01).
    let whole = {
        let mut data: TaskEventData = done.data_as().unwrap();
        data.preempted_usage = None;
        data.attempt_usage = None;
        Event::builder(event_types::TASK_SUCCEEDED, "/tasks")
            .tenant("acme")
            .data(&data)
            .unwrap()
            .build()
    };
    let metering = Metering::new(PriceBook::parse(&book).unwrap());
    let whole = metering.charge(&metering.records(&whole).unwrap()).unwrap();
    assert_eq!(whole, eur(8));
    assert_eq!(eur(settled.iter().map(|(_, m)| m.amount).sum()), whole);
    assert_eq!(budgets.held(&tenant, task).await.unwrap(), eur(0));
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(92));
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn handle_many_settles_preempted_attempts_like_handle() {
    let book = format!("{BOOK}[charges]\npreempted = \"charge\"\n");
    let (ledger, budgets, function, tenant, task) = preemption_setup(&book).await;
    let (preempted, done) = preempted_then_succeeded(task);
    let events = [preempted.clone(), done.clone(), preempted, done];
    for result in function.handle_many(&events).await.unwrap() {
        result.unwrap();
    }
    assert_eq!(
        revenue(&*ledger).await,
        [
            (format!("settle:{task}"), eur(4)),
            (format!("settle:{task}:attempt:1"), eur(4))
        ]
    );
    assert_eq!(budgets.held(&tenant, task).await.unwrap(), eur(0));
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(92));
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_attempt_charge_beyond_the_hold_comes_from_the_credit() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let budgets = Budgets::new(ledger.clone(), book());
    let tenant = acme();
    budgets.top_up(&tenant, eur(100), "p1").await.unwrap();
    let task = TaskId::new();
    let resources = Resources::new(1000, 0);
    budgets
        .reserve(&hold(task, &tenant, &resources))
        .await
        .unwrap();
    // 0.15 against a hold of 0.11: the hold is emptied, 0.04 more from the credit.
    let posted = budgets
        .settle_attempt(&tenant, task, 1, eur(15), None)
        .await
        .unwrap();
    assert_eq!(posted, ops_billing::ledger::Posted::New);
    assert_eq!(budgets.held(&tenant, task).await.unwrap(), eur(0));
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(85));
    assert_eq!(
        budgets
            .settle_attempt(&tenant, task, 1, eur(15), None)
            .await
            .unwrap(),
        ops_billing::ledger::Posted::AlreadyPosted
    );
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(85));
    // Nothing to charge: nothing posted.
    assert_eq!(
        budgets
            .settle_attempt(&tenant, task, 2, eur(0), None)
            .await
            .unwrap(),
        ops_billing::ledger::Posted::AlreadyPosted
    );
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[test]
fn worst_case_covers_the_timeout_and_rounds_up() {
    let budgets = Budgets::new(Arc::new(MemoryLedger::new()), book());
    let tenant = acme();
    let resources = Resources::new(1500, 0);
    let mut h = hold(TaskId::new(), &tenant, &resources);
    h.timeout = Some(Duration::from_millis(100_001));
    // 1.5 cores × 100.001 s × 0.001 = 0.1500015, + 0.01 = 0.1600015 → 0.17 EUR (rounded up).
    assert_eq!(budgets.worst_case(&h).unwrap(), eur(17));
    h.timeout = None;
    // No timeout: the default hold of one hour (1.5 × 3600 × 0.001 + 0.01 = 5.41).
    assert_eq!(budgets.worst_case(&h).unwrap(), eur(541));
    h.scavenger = true;
    assert_eq!(
        budgets.worst_case(&h).unwrap(),
        eur(0),
        "scavenger work is free"
    );
}

async fn thresholds_and_exhaustion(ledger: Arc<dyn Ledger>) {
    let budgets = Budgets::new(ledger.clone(), book()).thresholds([50, 80]);
    let tenant = acme();
    // 0.44 EUR: four holds of 0.11.
    budgets.top_up(&tenant, eur(44), "p1").await.unwrap();
    let resources = Resources::new(1000, 0);
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(
            budgets
                .reserve(&hold(TaskId::new(), &tenant, &resources))
                .await
                .unwrap(),
        );
    }
    assert!(matches!(answers[3], Reservation::Held { .. }));
    assert!(matches!(answers[4], Reservation::Insufficient { .. }));
    // Refused again: exhaustion is published once per credit given.
    let again = budgets
        .reserve(&hold(TaskId::new(), &tenant, &resources))
        .await
        .unwrap();
    assert!(matches!(again, Reservation::Insufficient { .. }));
}

fn budget_events(events: &[Event]) -> Vec<(String, serde_json::Value)> {
    events
        .iter()
        .filter(|e| e.ty.starts_with("ops.billing.budget."))
        .map(|e| (e.ty.clone(), e.data.clone()))
        .collect()
}

fn check_budget_events(events: Vec<(String, serde_json::Value)>) {
    let kinds: Vec<(&str, Option<u64>)> = events
        .iter()
        .map(|(ty, data)| (ty.as_str(), data["percent"].as_u64()))
        .collect();
    // 0.22 of 0.44 used: 50%; 0.44 used: 80% (crossed with 100% used); then refused once.
    assert_eq!(
        kinds,
        vec![
            (event_types::BILLING_BUDGET_THRESHOLD, Some(50)),
            (event_types::BILLING_BUDGET_THRESHOLD, Some(80)),
            (event_types::BILLING_BUDGET_EXHAUSTED, None),
        ],
        "{events:?}"
    );
    assert_eq!(events[0].1["available"], "0.22 EUR");
    assert_eq!(events[0].1["credited"], "0.44 EUR");
    assert_eq!(events[1].1["available"], "0.00 EUR");
    assert_eq!(events[2].1["needed"], "0.11 EUR");
    assert_eq!(events[2].1["available"], "0.00 EUR");
    assert_eq!(events[2].1["tenant"], "acme");
}

#[tokio::test]
async fn thresholds_and_exhaustion_are_published_once() {
    let memory = Arc::new(MemoryLedger::new());
    thresholds_and_exhaustion(memory.clone()).await;
    check_budget_events(budget_events(&memory.events()));

    // On SQLite the events are in the outbox, written with the holds.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(&format!("sqlite://{}/ops.db", dir.path().display()))
        .await
        .unwrap();
    thresholds_and_exhaustion(Arc::new(sqlite.clone())).await;
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM ops_events ORDER BY seq")
        .fetch_all(sqlite.outbox().pool())
        .await
        .unwrap();
    let events: Vec<Event> = payloads
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    check_budget_events(budget_events(&events));
}

fn finalized(period_charge: i64, total: i64) -> ops_billing::Invoice {
    use chrono::TimeZone;
    ops_billing::Invoice {
        tenant: "acme".to_owned(),
        from: chrono::Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
        to: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        status: ops_billing::InvoiceStatus::Finalized,
        lines: Vec::new(),
        tasks_total: eur(total - period_charge),
        period_total: eur(period_charge),
        total: eur(total),
    }
}

async fn invoices_post_once_and_credit_notes_correct(ledger: Arc<dyn Ledger>) {
    let budgets = Budgets::new(ledger.clone(), book());
    let tenant = acme();
    budgets.top_up(&tenant, eur(1000), "p1").await.unwrap();
    let mut draft = finalized(30, 130);
    draft.status = ops_billing::InvoiceStatus::Draft;
    let err = budgets.post_invoice(&draft).await.unwrap_err();
    assert!(
        matches!(err, ops_billing::Error::InvoiceNotFinal { .. }),
        "{err}"
    );
    assert_eq!(err.kind(), ops_core::ErrorKind::Conflict);

    let invoice = finalized(30, 130);
    assert_eq!(
        budgets.post_invoice(&invoice).await.unwrap(),
        ops_billing::ledger::Posted::New
    );
    assert_eq!(
        budgets.post_invoice(&invoice).await.unwrap(),
        ops_billing::ledger::Posted::AlreadyPosted
    );
    // The period charge came from the credit, once.
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(970));
    let revenue = ops_billing::ledger::Account::platform("revenue").unwrap();
    let currency = "EUR".parse().unwrap();
    assert_eq!(ledger.balance(&revenue, currency).await.unwrap(), eur(30));

    // Corrections are new postings: two notes of 0.60 fit the 1.30 invoiced, a third
    // does not, and a retried note changes nothing.
    for key in ["n1", "n2", "n2"] {
        budgets
            .credit_note(&invoice, eur(60), "render farm outage", key)
            .await
            .unwrap();
    }
    let err = budgets
        .credit_note(&invoice, eur(60), "again", "n3")
        .await
        .unwrap_err();
    match &err {
        ops_billing::Error::InsufficientFunds {
            needed, available, ..
        } => {
            assert_eq!(*needed, eur(60));
            assert_eq!(*available, eur(10));
        }
        other => panic!("expected InsufficientFunds, got {other}"),
    }
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(1090));
    assert_eq!(ledger.balance(&revenue, currency).await.unwrap(), eur(-90));
    let bad = budgets
        .credit_note(&invoice, eur(0), "nothing", "n4")
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ops_core::ErrorKind::InvalidInput, "{bad}");
    let usd = budgets
        .credit_note(&invoice, Money::new(5, "USD".parse().unwrap()), "usd", "n5")
        .await
        .unwrap_err();
    assert!(
        matches!(usd, ops_billing::Error::CurrencyMismatch { .. }),
        "{usd}"
    );
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn invoices_post_once_and_credit_notes_never_exceed_them() {
    invoices_post_once_and_credit_notes_correct(Arc::new(MemoryLedger::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(&format!("sqlite://{}/ops.db", dir.path().display()))
        .await
        .unwrap();
    invoices_post_once_and_credit_notes_correct(Arc::new(sqlite)).await;
    #[cfg(feature = "postgres")]
    if let Some(url) = ops_testbed::postgres_database() {
        let pg = ops_billing::ledger::PostgresLedger::connect(&url)
            .await
            .unwrap();
        invoices_post_once_and_credit_notes_correct(Arc::new(pg)).await;
    }
}
