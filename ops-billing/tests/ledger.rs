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

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use ops_billing::ledger::{Account, Ledger, Posted, PostgresLedger, Posting};
    use ops_billing::testkit::ledger::run_all;
    use ops_billing::{Error, Money};

    use super::eur;

    #[tokio::test]
    async fn postgres_ledger_conforms() {
        if ops_testbed::postgres_database().is_none() {
            return;
        }
        run_all(|| async {
            let url = ops_testbed::postgres_database().expect("postgres");
            PostgresLedger::connect(&url).await.unwrap()
        })
        .await;
    }

    /// Many processes' worth of concurrent postings on the same accounts: each key
    /// posted once however many race for it, balances exact, no deadlock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_postings_are_exact_and_each_key_posts_once() {
        let Some(url) = ops_testbed::postgres_database() else {
            return;
        };
        let ledger = Arc::new(PostgresLedger::connect(&url).await.unwrap());
        let a = Account::parse("tenant:acme:prepaid").unwrap();
        let b = Account::parse("tenant:globex:prepaid").unwrap();
        let pay = Account::platform("payments").unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let ledger = ledger.clone();
            let (a, b, pay) = (a.clone(), b.clone(), pay.clone());
            tasks.push(tokio::spawn(async move {
                // Ten keys, each raced for by four tasks; lines in both orders.
                let key = format!("race:{}", i % 10);
                let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let p = Posting::new(key, "race")
                    .entry(pay.clone(), Money::new(-300, eur()))
                    .entry(first.clone(), Money::new(100, eur()))
                    .entry(second.clone(), Money::new(200, eur()));
                ledger.post(&p).await
            }));
        }
        let mut new = 0;
        let mut conflicts = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(Posted::New) => new += 1,
                Ok(Posted::AlreadyPosted) => {}
                Err(Error::PostingConflict { .. }) => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(new, 10, "each key posted once");
        // Racers with the lines in the other order posted other entries under the
        // same key: a conflict, never a second posting.
        assert!(conflicts <= 30);
        let total = ledger.balance(&a, eur()).await.unwrap().amount
            + ledger.balance(&b, eur()).await.unwrap().amount;
        assert_eq!(total, 3000);
        assert_eq!(
            ledger.balance(&pay, eur()).await.unwrap(),
            Money::new(-3000, eur())
        );
        assert!(ledger.audit().await.unwrap().is_empty());
    }
}
