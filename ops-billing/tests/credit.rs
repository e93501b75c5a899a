//! Granted credit: used before paid credit in priority order, what is left of a grant
//! expires once (on memory, SQLite and Postgres), bad grants list every problem, and a
//! reservation never holds credit that has expired.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ops_billing::ledger::{Ledger, MemoryLedger, Posted, SqliteLedger};
use ops_billing::{Budgets, Error, Grant, HoldRequest, Money, PriceBook, Reservation};
use ops_core::{ErrorKind, Resources, TaskId, Tenant, event_types};

const BOOK: &str = r#"
currency = "EUR"
[[prices]]
meter = "cpu_core_seconds"
unit_price = "0.001"
[[prices]]
meter = "tasks"
unit_price = "0.01"
"#;

fn budgets(ledger: Arc<dyn Ledger>) -> Budgets {
    Budgets::new(ledger, Arc::new(PriceBook::parse(BOOK).unwrap()))
}

fn eur(amount: i64) -> Money {
    Money::new(amount, "EUR".parse().unwrap())
}

fn acme() -> Tenant {
    Tenant::parse("acme").unwrap()
}

/// Grants B (priority 5, never expires, 3.00), C (priority 10, expires first, 2.00)
/// and A (priority 10, expires later, 5.00), and 10.00 of paid credit; 4.00 used.
async fn layers_are_used_in_order_and_the_rest_expires(ledger: Arc<dyn Ledger>) {
    let b = budgets(ledger.clone());
    let acme = acme();
    let now = Utc::now();
    let t0 = now + chrono::Duration::days(1);
    let t1 = now + chrono::Duration::days(2);
    b.top_up(&acme, eur(10_00), "paid").await.unwrap();
    for grant in [
        Grant::new("a", eur(5_00)).priority(10).expires_at(t1),
        Grant::new("b", eur(3_00)).priority(5),
        Grant::new("c", eur(2_00)).priority(10).expires_at(t0),
    ] {
        assert_eq!(b.grant(&acme, &grant).await.unwrap(), Posted::New);
    }
    assert_eq!(b.available(&acme).await.unwrap(), eur(20_00));
    // 4.00 used: all of b, 1.00 of c.
    b.settle(&acme, TaskId::new(), eur(4_00), None)
        .await
        .unwrap();
    let left: Vec<(String, Money)> = b
        .grants(&acme)
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.grant.id, g.remaining))
        .collect();
    assert_eq!(
        left,
        vec![
            ("b".to_owned(), eur(0)),
            ("c".to_owned(), eur(1_00)),
            ("a".to_owned(), eur(5_00)),
        ]
    );

    // Before any expiry: nothing.
    assert!(b.expire_grants(now).await.unwrap().is_empty());
    // c's time: its 1.00 left leaves the credit, once.
    let after_t0 = t0 + chrono::Duration::seconds(1);
    let expired = b.expire_grants(after_t0).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].grant.id, "c");
    assert_eq!(expired[0].expired, eur(1_00));
    assert!(b.expire_grants(after_t0).await.unwrap().is_empty());
    assert_eq!(b.available(&acme).await.unwrap(), eur(15_00));
    // What is used next comes from a (b is spent, c is gone).
    b.settle(&acme, TaskId::new(), eur(2_00), None)
        .await
        .unwrap();
    let left: Vec<(String, Money)> = b
        .grants(&acme)
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.grant.id, g.remaining))
        .collect();
    assert_eq!(
        left,
        vec![("b".to_owned(), eur(0)), ("a".to_owned(), eur(3_00))]
    );
    // a's time: 3.00 expires; the paid 10.00 stays whole.
    let expired = b
        .expire_grants(t1 + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        expired.iter().map(|e| e.expired).collect::<Vec<_>>(),
        vec![eur(3_00)]
    );
    assert_eq!(b.available(&acme).await.unwrap(), eur(10_00));
    assert!(ledger.audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn grants_are_used_first_in_order_and_what_is_left_expires_once() {
    for (ledger, _dir) in common::ledgers().await {
        layers_are_used_in_order_and_the_rest_expires(ledger).await;
    }
}

#[tokio::test]
async fn grants_and_expiries_are_published_with_their_postings() {
    let ledger = Arc::new(MemoryLedger::new());
    let b = budgets(ledger.clone());
    let acme = acme();
    let soon = Utc::now() + chrono::Duration::hours(1);
    b.grant(&acme, &Grant::new("promo", eur(2_00)).expires_at(soon))
        .await
        .unwrap();
    b.expire_grants(soon + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let events: Vec<(String, serde_json::Value)> = ledger
        .events()
        .into_iter()
        .map(|e| (e.ty.clone(), e.data.clone()))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, event_types::BILLING_CREDIT_GRANTED);
    assert_eq!(events[0].1["grant"], "promo");
    assert_eq!(events[0].1["amount"], "2.00 EUR");
    assert_eq!(events[1].0, event_types::BILLING_CREDIT_EXPIRED);
    assert_eq!(events[1].1["expired"], "2.00 EUR");
}

#[tokio::test]
async fn a_bad_grant_lists_every_problem_and_posts_nothing() {
    let ledger = Arc::new(MemoryLedger::new());
    let b = budgets(ledger.clone());
    let bad = Grant::new("no spaces!", Money::new(0, "USD".parse().unwrap()))
        .priority(5000)
        .expires_at(Utc::now() - chrono::Duration::hours(1));
    let err = b.grant(&acme(), &bad).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let Error::InvalidGrant { problems, .. } = &err else {
        panic!("{err}");
    };
    let text = problems.join("\n");
    for field in [
        "id:",
        "amount: a grant",
        "priority:",
        "expires_at:",
        "currency USD",
    ] {
        assert!(text.contains(field), "{field} missing in {text}");
    }
    assert_eq!(problems.len(), 5, "{text}");
    assert!(ledger.balances().await.unwrap().is_empty());
}

#[tokio::test]
async fn granting_again_changes_nothing_and_other_terms_conflict() {
    let b = budgets(Arc::new(MemoryLedger::new()));
    let acme = acme();
    let grant = Grant::new("welcome", eur(5_00));
    assert_eq!(b.grant(&acme, &grant).await.unwrap(), Posted::New);
    assert_eq!(b.grant(&acme, &grant).await.unwrap(), Posted::AlreadyPosted);
    let err = b
        .grant(&acme, &grant.clone().priority(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PostingConflict { .. }), "{err}");
    assert_eq!(b.available(&acme).await.unwrap(), eur(5_00));
}

#[tokio::test]
async fn a_reservation_never_holds_credit_that_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(
        SqliteLedger::open(&format!("sqlite://{}/ops.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let b = budgets(ledger);
    let acme = acme();
    let resources = Resources::new(1000, 0);
    let hold = |task| HoldRequest {
        task_id: task,
        attempt: 1,
        tenant: &acme,
        environment: "production",
        template: "render",
        resources: &resources,
        timeout: Some(Duration::from_secs(100)),
        scavenger: false,
    };
    // Enough for one worst case (0.11), for two seconds.
    b.grant(
        &acme,
        &Grant::new("trial", eur(11)).expires_at(Utc::now() + chrono::Duration::seconds(2)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    match b.reserve(&hold(TaskId::new())).await.unwrap() {
        Reservation::Insufficient { needed, available } => {
            assert_eq!(needed, eur(11));
            assert_eq!(available, eur(0));
        }
        other => panic!("held expired credit: {other:?}"),
    }
}
