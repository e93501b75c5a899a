//! The ledgers: the conformance suite on the memory and SQLite ledgers, a posting and
//! its events in one SQLite transaction, and properties over random postings — always
//! balanced, applying a sequence twice changes nothing, any order gives the same
//! balances.

use std::collections::BTreeMap;

use ops_billing::ledger::{Account, Ledger, MemoryLedger, Posted, Posting, SqliteLedger};
use ops_billing::testkit::ledger::run_all;
use ops_billing::{Currency, Money};
use ops_core::{Event, Tenant};
use ops_events::{EventBus, StartFrom, SubscribeOptions};
use proptest::prelude::*;

#[tokio::test]
async fn memory_ledger_conforms() {
    run_all(|| async { MemoryLedger::new() }).await;
}

#[tokio::test]
async fn sqlite_ledger_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    run_all(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let url = format!("sqlite://{}/ledger-{i}.db", dir.path().display());
        async move { SqliteLedger::open(&url).await.unwrap() }
    })
    .await;
}

fn eur() -> Currency {
    "EUR".parse().unwrap()
}

#[tokio::test]
async fn a_posting_and_its_events_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&format!("sqlite://{}/ops.db", dir.path().display()))
        .await
        .unwrap();
    let acme = Account::tenant(&Tenant::parse("acme").unwrap(), "prepaid").unwrap();
    let event = Event::builder("ops.billing.credit.added", "/billing")
        .tenant("acme")
        .json(serde_json::json!({ "amount": 1000 }))
        .build();
    let top_up = Posting::new("top-up:1", "top-up")
        .entry(
            Account::platform("payments").unwrap(),
            Money::new(-1000, eur()),
        )
        .entry(acme.clone(), Money::new(1000, eur()))
        .event(event.clone());
    assert_eq!(ledger.post(&top_up).await.unwrap(), Posted::New);
    // A retry writes neither entries nor the event again; a conflicting reuse of the
    // key writes neither its entries nor its event.
    assert_eq!(ledger.post(&top_up).await.unwrap(), Posted::AlreadyPosted);
    let conflicting = Posting::new("top-up:1", "top-up")
        .entry(
            Account::platform("payments").unwrap(),
            Money::new(-5, eur()),
        )
        .entry(acme.clone(), Money::new(5, eur()))
        .event(
            Event::builder("ops.billing.credit.added", "/billing")
                .tenant("acme")
                .build(),
        );
    assert!(ledger.post(&conflicting).await.is_err());

    let outbox = ledger.outbox();
    let options = SubscribeOptions::default().start(StartFrom::Beginning);
    outbox.subscribe("billing-test", options).await.unwrap();
    let batch = outbox
        .fetch("billing-test", 10, std::time::Duration::from_millis(200))
        .await
        .unwrap();
    let ids: Vec<_> = batch.iter().map(|d| d.event.id).collect();
    assert_eq!(ids, [event.id], "exactly the first posting's event");
    assert_eq!(
        ledger.balance(&acme, eur()).await.unwrap(),
        Money::new(1000, eur())
    );
}

/// Random postings between a few accounts, balanced by construction.
fn postings() -> impl Strategy<Value = Vec<Posting>> {
    let accounts = [
        "platform:payments",
        "platform:revenue",
        "tenant:acme:prepaid",
        "tenant:acme:reserved",
        "tenant:globex:prepaid",
    ];
    prop::collection::vec(
        (
            prop::collection::vec((0..accounts.len(), -10_000i64..10_000), 1..4),
            0..accounts.len(),
        ),
        1..25,
    )
    .prop_map(move |raw| {
        raw.into_iter()
            .enumerate()
            .filter_map(|(i, (lines, balancing))| {
                let mut p = Posting::new(format!("p:{i}"), "random");
                let mut sum = 0;
                for (a, amount) in lines {
                    if amount == 0 {
                        continue;
                    }
                    sum += amount;
                    p = p.entry(
                        Account::parse(accounts[a]).unwrap(),
                        Money::new(amount, eur()),
                    );
                }
                if sum == 0 || p.entries.is_empty() {
                    return None;
                }
                Some(p.entry(
                    Account::parse(accounts[balancing]).unwrap(),
                    Money::new(-sum, eur()),
                ))
            })
            .collect()
    })
}

async fn apply(ledger: &impl Ledger, postings: &[Posting]) -> Vec<Posted> {
    let mut out = Vec::new();
    for p in postings {
        out.push(ledger.post(p).await.unwrap());
    }
    out
}

async fn balances(ledger: &impl Ledger) -> BTreeMap<String, i64> {
    ledger
        .balances()
        .await
        .unwrap()
        .into_iter()
        .map(|(a, m)| (a.to_string(), m.amount))
        .filter(|(_, amount)| *amount != 0)
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_ledger_stays_balanced_idempotent_and_order_free(postings in postings(), seed in any::<u64>()) {
        runtime().block_on(async {
            let ledger = MemoryLedger::new();
            let first = apply(&ledger, &postings).await;
            assert!(first.iter().all(|p| *p == Posted::New));
            let once = balances(&ledger).await;
            assert_eq!(once.values().sum::<i64>(), 0, "{once:?}");
            assert!(ledger.audit().await.unwrap().is_empty());
            let again = apply(&ledger, &postings).await;
            assert!(again.iter().all(|p| *p == Posted::AlreadyPosted));
            assert_eq!(balances(&ledger).await, once);

            let mut shuffled = postings.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let other = MemoryLedger::new();
            apply(&other, &shuffled).await;
            assert_eq!(balances(&other).await, once);
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn sqlite_ledger_agrees_with_the_memory_ledger(postings in postings()) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let sqlite = SqliteLedger::open(&format!("sqlite://{}/l.db", dir.path().display()))
                .await
                .unwrap();
            let memory = MemoryLedger::new();
            apply(&sqlite, &postings).await;
            apply(&memory, &postings).await;
            let again = apply(&sqlite, &postings).await;
            assert!(again.iter().all(|p| *p == Posted::AlreadyPosted));
            assert_eq!(balances(&sqlite).await, balances(&memory).await);
            let audit = sqlite.audit().await.unwrap();
            assert!(audit.is_empty(), "{audit:?}");
        });
    }
}
