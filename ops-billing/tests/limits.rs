//! Spending limits hold at admission like credit: per tenant and environment, per
//! period, never exceeded by tasks admitted at once (memory, SQLite, Postgres), given
//! back at settlement, funded again when changed, and bad limits list every problem.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ops_billing::ledger::{Ledger, MemoryLedger};
use ops_billing::{
    Budgets, Decimal, Error, HoldRequest, LimitPeriod, Money, PriceBook, Reservation, SpendingLimit,
};
use ops_core::{ErrorKind, Resources, TaskId, Tenant};

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

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).unwrap()
}

/// 1 core for 100 s: a worst case of 0.11 EUR.
fn hold<'a>(tenant: &'a Tenant, environment: &'a str, resources: &'a Resources) -> HoldRequest<'a> {
    HoldRequest {
        task_id: TaskId::new(),
        attempt: 1,
        tenant,
        environment,
        template: "render",
        resources,
        timeout: Some(Duration::from_secs(100)),
        scavenger: false,
    }
}

async fn a_limit_holds_and_settlement_gives_back(ledger: Arc<dyn Ledger>) {
    let b = Budgets::new(ledger.clone(), book())
        .limits(vec![SpendingLimit::new(dec("0.30"), LimitPeriod::Month)])
        .unwrap();
    let acme = tenant("acme");
    b.top_up(&acme, eur(10_00), "paid").await.unwrap();
    let r = Resources::new(1000, 0);
    let first = hold(&acme, "production", &r);
    assert!(matches!(
        b.reserve(&first).await.unwrap(),
        Reservation::Held { .. }
    ));
    assert!(matches!(
        b.reserve(&hold(&acme, "production", &r)).await.unwrap(),
        Reservation::Held { .. }
    ));
    match b.reserve(&hold(&acme, "production", &r)).await.unwrap() {
        Reservation::OverLimit {
            limit,
            needed,
            left,
        } => {
            assert_eq!(limit, "0.30 EUR a month");
            assert_eq!(needed, eur(11));
            assert_eq!(left, eur(8));
        }
        other => panic!("not refused by the limit: {other:?}"),
    }
    // The first task cost 0.05: 0.06 of its hold comes back under the limit.
    b.settle(&acme, first.task_id, eur(5), None).await.unwrap();
    let left = b.limits_left(&acme, "production").await.unwrap();
    assert_eq!(left, vec![("0.30 EUR a month".to_owned(), eur(14))]);
    assert!(matches!(
        b.reserve(&hold(&acme, "production", &r)).await.unwrap(),
        Reservation::Held { .. }
    ));
    // Another tenant has its own room under the same default.
    let other = tenant("other");
    b.top_up(&other, eur(1_00), "paid-other").await.unwrap();
    assert!(matches!(
        b.reserve(&hold(&other, "production", &r)).await.unwrap(),
        Reservation::Held { .. }
    ));
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_limit_holds_at_admission_and_settlement_gives_the_rest_back() {
    for (ledger, _dir) in common::ledgers().await {
        a_limit_holds_and_settlement_gives_back(ledger).await;
    }
}

async fn at_most_ten_under_the_limit(ledger: Arc<dyn Ledger>) {
    let b = Budgets::new(ledger, book())
        .limits(vec![
            SpendingLimit::new(dec("1.10"), LimitPeriod::Day).tenant("acme"),
        ])
        .unwrap();
    let acme = tenant("acme");
    b.top_up(&acme, eur(10_000), "paid").await.unwrap();
    let mut calls = Vec::new();
    for _ in 0..100 {
        let b = b.clone();
        let acme = acme.clone();
        calls.push(tokio::spawn(async move {
            let r = Resources::new(1000, 0);
            b.reserve(&hold(&acme, "production", &r)).await.unwrap()
        }));
    }
    let mut held = 0;
    for call in calls {
        match call.await.unwrap() {
            Reservation::Held { .. } => held += 1,
            Reservation::OverLimit { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(held, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_admitted_at_once_never_exceed_a_limit() {
    for (ledger, _dir) in common::ledgers().await {
        at_most_ten_under_the_limit(ledger).await;
    }
}

#[tokio::test]
async fn a_tenants_own_limit_replaces_the_default_and_environments_are_apart() {
    let b = Budgets::new(Arc::new(MemoryLedger::new()), book())
        .limits(vec![
            SpendingLimit::new(dec("0.11"), LimitPeriod::Month),
            SpendingLimit::new(dec("0.22"), LimitPeriod::Month).tenant("acme"),
            SpendingLimit::new(dec("0.11"), LimitPeriod::Day)
                .tenant("acme")
                .environment("dev"),
        ])
        .unwrap();
    let (acme, other) = (tenant("acme"), tenant("other"));
    for t in [&acme, &other] {
        b.top_up(t, eur(10_00), &format!("paid-{t}")).await.unwrap();
    }
    let r = Resources::new(1000, 0);
    // acme: 0.22 a month in all, 0.11 a day in dev.
    assert!(matches!(
        b.reserve(&hold(&acme, "dev", &r)).await.unwrap(),
        Reservation::Held { .. }
    ));
    match b.reserve(&hold(&acme, "dev", &r)).await.unwrap() {
        Reservation::OverLimit { limit, .. } => assert_eq!(limit, "0.11 EUR a day in dev"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.reserve(&hold(&acme, "production", &r)).await.unwrap(),
        Reservation::Held { .. }
    ));
    match b.reserve(&hold(&acme, "production", &r)).await.unwrap() {
        Reservation::OverLimit { limit, .. } => assert_eq!(limit, "0.22 EUR a month"),
        other => panic!("{other:?}"),
    }
    // other: the default 0.11 a month.
    assert!(matches!(
        b.reserve(&hold(&other, "dev", &r)).await.unwrap(),
        Reservation::Held { .. }
    ));
    assert!(matches!(
        b.reserve(&hold(&other, "production", &r)).await.unwrap(),
        Reservation::OverLimit { .. }
    ));
}

#[tokio::test]
async fn a_changed_limit_is_funded_by_the_difference() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let acme = tenant("acme");
    let with = |amount: &str| {
        Budgets::new(ledger.clone(), book())
            .limits(vec![SpendingLimit::new(dec(amount), LimitPeriod::Month)])
            .unwrap()
    };
    let b = with("0.30");
    b.top_up(&acme, eur(10_00), "paid").await.unwrap();
    let r = Resources::new(1000, 0);
    b.reserve(&hold(&acme, "production", &r)).await.unwrap();
    assert_eq!(
        b.limits_left(&acme, "production").await.unwrap()[0].1,
        eur(19)
    );
    // Raised, lowered, raised back: each change funds the difference before the
    // next hold of 0.11.
    for (amount, held, left) in [("0.50", true, 28), ("0.20", false, -2), ("0.50", true, 17)] {
        let b = with(amount);
        let answer = b.reserve(&hold(&acme, "production", &r)).await.unwrap();
        assert_eq!(
            matches!(answer, Reservation::Held { .. }),
            held,
            "limit {amount}: {answer:?}"
        );
        let now_left = b.limits_left(&acme, "production").await.unwrap()[0].1;
        assert_eq!(now_left, eur(left), "limit {amount}");
    }
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[test]
fn bad_limits_list_every_problem() {
    let budgets = Budgets::new(Arc::new(MemoryLedger::new()), book());
    let err = budgets
        .limits(vec![
            SpendingLimit::new(dec("-1"), LimitPeriod::Day),
            SpendingLimit::new(dec("1.001"), LimitPeriod::Month).tenant("not a name"),
            SpendingLimit::new(dec("5"), LimitPeriod::Total).environment("dev!"),
            SpendingLimit::new(dec("6"), LimitPeriod::Total).environment("dev!"),
        ])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let Error::InvalidLimits { problems } = &err else {
        panic!("{err}")
    };
    let text = problems.join("\n");
    for needle in [
        "limits[0].amount: -1 is negative",
        "limits[1].tenant:",
        "limits[1].amount: 1.001 is not an amount of EUR",
        "limits[2].environment:",
        "limits[3]: the same tenant, environment and period as limits[2]",
    ] {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }
}

#[test]
fn limits_read_from_toml() {
    #[derive(serde::Deserialize)]
    struct File {
        limits: Vec<SpendingLimit>,
    }
    let file: File = toml::from_str(
        r#"
[[limits]]
amount = "200.00"
period = "month"
[[limits]]
tenant = "acme"
environment = "dev"
amount = "20.00"
period = "day"
"#,
    )
    .unwrap();
    assert_eq!(
        file.limits[1],
        SpendingLimit::new(dec("20.00"), LimitPeriod::Day)
            .tenant("acme")
            .environment("dev")
    );
    let err = toml::from_str::<File>("[[limits]]\namount = \"1\"\nperiod = \"week\"\n")
        .err()
        .unwrap();
    assert!(err.to_string().contains("week"), "{err}");
}

/// A charged preempted attempt is spent under the limit: taken from the task's limit
/// part like its money from the hold; the next attempt's hold tops both up.
#[tokio::test]
async fn a_charged_preempted_attempt_counts_against_the_limit() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let b = Budgets::new(ledger.clone(), book())
        .limits(vec![SpendingLimit::new(dec("0.30"), LimitPeriod::Month)])
        .unwrap();
    let acme = tenant("acme");
    b.top_up(&acme, eur(10_00), "paid").await.unwrap();
    let r = Resources::new(1000, 0);
    let mut task = hold(&acme, "production", &r);
    b.reserve(&task).await.unwrap();
    assert_eq!(
        b.limits_left(&acme, "production").await.unwrap()[0].1,
        eur(19)
    );
    // The first attempt was preempted and cost 0.04.
    b.settle_attempt(&acme, task.task_id, 1, eur(4), None)
        .await
        .unwrap();
    assert_eq!(
        b.limits_left(&acme, "production").await.unwrap()[0].1,
        eur(19)
    );
    // The second attempt holds the worst case again: 0.04 more under the limit.
    task.attempt = 2;
    b.reserve(&task).await.unwrap();
    assert_eq!(
        b.limits_left(&acme, "production").await.unwrap()[0].1,
        eur(15)
    );
    // It cost 0.05: 0.30 - 0.04 - 0.05 left.
    b.settle(&acme, task.task_id, eur(5), None).await.unwrap();
    assert_eq!(
        b.limits_left(&acme, "production").await.unwrap()[0].1,
        eur(21)
    );
    assert_eq!(b.available(&acme).await.unwrap(), eur(10_00 - 9));
    assert!(ledger.audit().await.unwrap().is_empty());
}
