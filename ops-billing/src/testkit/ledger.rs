//! The conformance suite every [`Ledger`] runs: balanced postings only, every problem
//! of a bad posting listed with nothing written, idempotent retries, conflicting keys
//! refused, entries with their posting's details, and a clean audit.
//!
//! ```no_run
//! # async fn f() {
//! ops_billing::testkit::ledger::run_all(|| async { ops_billing::ledger::MemoryLedger::new() }).await;
//! # }
//! ```
//!
//! `make` must return a fresh, empty ledger each time. A failed check panics with a
//! message that names it.

use std::future::Future;

use ops_core::{ErrorKind, EventId, TaskId, Tenant};

use crate::ledger::{Account, Ledger, Posted, Posting};
use crate::{Currency, Error, Money};

fn eur() -> Currency {
    "EUR".parse().expect("EUR")
}

fn account(tenant: &str, name: &str) -> Account {
    Account::tenant(&Tenant::parse(tenant).expect("tenant"), name).expect("account")
}

fn payments() -> Account {
    Account::platform("payments").expect("account")
}

/// Runs every check, each on a fresh ledger from `make`.
pub async fn run_all<F, Fut, L>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = L>,
    L: Ledger,
{
    postings_move_money_and_balances_follow(&make().await).await;
    bad_postings_list_every_problem_and_write_nothing(&make().await).await;
    retries_change_nothing_and_reused_keys_conflict(&make().await).await;
    entries_carry_their_posting(&make().await).await;
    floors_hold_and_refused_postings_change_nothing(&make().await).await;
    batches_post_as_one_at_a_time_would(&make().await).await;
    prefixes_list_exactly_their_accounts(&make().await).await;
}

/// [`Ledger::balances_under`] lists every account whose name starts with the prefix,
/// zero balances included, sorted, and no other (`_` is no wildcard, a longer name
/// at the same level is not under the prefix).
pub async fn prefixes_list_exactly_their_accounts(ledger: &impl Ledger) {
    let names = [
        "platform:grant:acme:b:p2:never",
        "platform:grant:acme:a:p1:never",
        "platform:grant:acme2:a:p1:never",
        "platform:grant:ac_e:a:p1:never",
        "platform:grants-open",
    ];
    let mut posting = Posting::new("prefixes", "accounts with a shared prefix");
    for name in names {
        posting = posting.entry(Account::parse(name).expect("account"), Money::new(1, eur()));
    }
    posting = posting.entry(payments(), Money::new(-(names.len() as i64), eur()));
    ledger.post(&posting).await.expect("prefixes: post");
    // Back to zero: still listed.
    let zero = Posting::new("prefixes:zero", "one account back to zero")
        .entry(
            Account::parse("platform:grant:acme:b:p2:never").expect("account"),
            Money::new(-1, eur()),
        )
        .entry(payments(), Money::new(1, eur()));
    ledger.post(&zero).await.expect("prefixes: post zero");
    let listed = |rows: Vec<(Account, Money)>| {
        rows.into_iter()
            .map(|(a, m)| (a.to_string(), m.amount))
            .collect::<Vec<_>>()
    };
    let acme = listed(
        ledger
            .balances_under("platform:grant:acme:")
            .await
            .expect("prefixes: list"),
    );
    assert_eq!(
        acme,
        vec![
            ("platform:grant:acme:a:p1:never".to_owned(), 1),
            ("platform:grant:acme:b:p2:never".to_owned(), 0),
        ],
        "prefixes: one tenant's grants"
    );
    let all = listed(
        ledger
            .balances_under("platform:grant:")
            .await
            .expect("prefixes: list all"),
    );
    assert_eq!(
        all.len(),
        4,
        "prefixes: every grant and nothing else: {all:?}"
    );
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "prefixes: sorted: {all:?}"
    );
    assert!(
        ledger
            .balances_under("platform:nothing:")
            .await
            .expect("prefixes: none")
            .is_empty(),
        "prefixes: an unknown prefix lists nothing"
    );
}

/// [`Ledger::post_many`] decides each posting as [`Ledger::post`] would in that order:
/// a floor sees what earlier postings of the batch took, a key repeated with the same
/// entries is already posted and with others conflicts, a bad posting fails alone, and
/// a whole batch posted again changes nothing.
pub async fn batches_post_as_one_at_a_time_would(ledger: &impl Ledger) {
    let check = "batches_post_as_one_at_a_time_would";
    let prepaid = account("acme", "prepaid");
    let held = |n: u32| account("acme", &format!("held:t{n}"));
    let hold = |n: u32, amount: i64| {
        Posting::new(format!("hold:{n}"), "hold")
            .entry(prepaid.clone(), Money::new(-amount, eur()))
            .entry(held(n), Money::new(amount, eur()))
            .floor(prepaid.clone(), Money::zero(eur()))
    };
    let top_up = Posting::new("top-up", "top-up")
        .entry(payments(), Money::new(-1000, eur()))
        .entry(prepaid.clone(), Money::new(1000, eur()));
    let bad = Posting::new("bad", "one entry").entry(prepaid.clone(), Money::new(5, eur()));
    let batch = vec![
        top_up.clone(),
        hold(1, 400),
        hold(2, 400),
        hold(3, 400), // 200 left: refused
        hold(1, 400), // the same again: already posted
        hold(1, 300), // the same key, other entries
        bad,
        hold(4, 200), // fits exactly
    ];
    let results = ledger.post_many(&batch).await.expect(check);
    assert_eq!(
        results.len(),
        batch.len(),
        "{check}: one result per posting"
    );
    assert_eq!(results[0].as_ref().ok(), Some(&Posted::New), "{check}");
    assert_eq!(results[1].as_ref().ok(), Some(&Posted::New), "{check}");
    assert_eq!(results[2].as_ref().ok(), Some(&Posted::New), "{check}");
    match &results[3] {
        Err(Error::InsufficientFunds {
            needed, available, ..
        }) => {
            assert_eq!(*needed, Money::new(400, eur()), "{check}");
            assert_eq!(*available, Money::new(200, eur()), "{check}");
        }
        other => panic!("{check}: expected InsufficientFunds, got {other:?}"),
    }
    assert_eq!(
        results[4].as_ref().ok(),
        Some(&Posted::AlreadyPosted),
        "{check}"
    );
    assert!(
        matches!(results[5], Err(Error::PostingConflict { .. })),
        "{check}: {:?}",
        results[5]
    );
    assert!(
        matches!(results[6], Err(Error::InvalidPosting { .. })),
        "{check}: {:?}",
        results[6]
    );
    assert_eq!(results[7].as_ref().ok(), Some(&Posted::New), "{check}");
    let balance = |a: Account| async move { ledger.balance(&a, eur()).await.expect(check) };
    assert_eq!(
        balance(prepaid.clone()).await,
        Money::zero(eur()),
        "{check}"
    );
    assert_eq!(balance(held(1)).await, Money::new(400, eur()), "{check}");
    assert_eq!(balance(held(3)).await, Money::zero(eur()), "{check}");
    assert_eq!(balance(held(4)).await, Money::new(200, eur()), "{check}");
    let read = ledger
        .balances_of(&[held(2), held(3), prepaid.clone()], eur())
        .await
        .expect(check);
    assert_eq!(
        read,
        vec![
            Money::new(400, eur()),
            Money::zero(eur()),
            Money::zero(eur())
        ],
        "{check}: balances_of in order, zero for unknown accounts"
    );
    // The whole batch again: every new posting is already posted, nothing moves.
    let again = ledger.post_many(&batch).await.expect(check);
    for i in [0, 1, 2, 4, 7] {
        assert_eq!(
            again[i].as_ref().ok(),
            Some(&Posted::AlreadyPosted),
            "{check}: posting {i} again"
        );
    }
    assert_eq!(balance(prepaid).await, Money::zero(eur()), "{check}");
    assert!(
        ledger.post_many(&[]).await.expect(check).is_empty(),
        "{check}"
    );
    assert!(ledger.audit().await.expect(check).is_empty(), "{check}");
}

/// A posting that would take an account below its floor is refused with what it needs
/// and what is available, and changes nothing.
pub async fn floors_hold_and_refused_postings_change_nothing(ledger: &impl Ledger) {
    let check = "floors_hold_and_refused_postings_change_nothing";
    let prepaid = account("acme", "prepaid");
    let reserved = account("acme", "reserved");
    let top_up = Posting::new("top-up", "top-up")
        .entry(payments(), Money::new(-1000, eur()))
        .entry(prepaid.clone(), Money::new(1000, eur()));
    ledger.post(&top_up).await.expect(check);
    let hold = |key: &str| {
        Posting::new(key, "hold")
            .entry(prepaid.clone(), Money::new(-600, eur()))
            .entry(reserved.clone(), Money::new(600, eur()))
            .floor(prepaid.clone(), Money::zero(eur()))
    };
    assert_eq!(
        ledger.post(&hold("hold:1")).await.expect(check),
        Posted::New,
        "{check}"
    );
    let err = ledger.post(&hold("hold:2")).await.expect_err(check);
    match &err {
        Error::InsufficientFunds {
            account,
            needed,
            available,
        } => {
            assert_eq!(account, "tenant:acme:prepaid", "{check}");
            assert_eq!(*needed, Money::new(600, eur()), "{check}");
            assert_eq!(*available, Money::new(400, eur()), "{check}");
        }
        other => panic!("{check}: expected InsufficientFunds, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        "tenant:acme:prepaid: needs 6.00 EUR, 4.00 EUR available",
        "{check}"
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{check}");
    assert_eq!(
        ledger.balance(&prepaid, eur()).await.expect(check),
        Money::new(400, eur()),
        "{check}: unchanged"
    );
    // The refused key is free: a smaller hold under it fits.
    let smaller = Posting::new("hold:2", "hold")
        .entry(prepaid.clone(), Money::new(-400, eur()))
        .entry(reserved.clone(), Money::new(400, eur()))
        .floor(prepaid.clone(), Money::zero(eur()));
    assert_eq!(
        ledger.post(&smaller).await.expect(check),
        Posted::New,
        "{check}"
    );
    assert!(ledger.audit().await.expect(check).is_empty(), "{check}");
}

/// Balanced postings change balances by their entries; the audit finds nothing.
pub async fn postings_move_money_and_balances_follow(ledger: &impl Ledger) {
    let check = "postings_move_money_and_balances_follow";
    let prepaid = account("acme", "prepaid");
    let usage = Account::platform("revenue").expect("account");
    let top_up = Posting::new("top-up:1", "top-up")
        .entry(payments(), Money::new(-1000, eur()))
        .entry(prepaid.clone(), Money::new(1000, eur()));
    assert_eq!(
        ledger.post(&top_up).await.expect(check),
        Posted::New,
        "{check}"
    );
    let charge = Posting::new("usage:1", "cpu")
        .entry(prepaid.clone(), Money::new(-250, eur()))
        .entry(usage.clone(), Money::new(125, eur()))
        .entry(usage.clone(), Money::new(125, eur()));
    assert_eq!(
        ledger.post(&charge).await.expect(check),
        Posted::New,
        "{check}"
    );
    assert_eq!(
        ledger.balance(&prepaid, eur()).await.expect(check),
        Money::new(750, eur()),
        "{check}"
    );
    assert_eq!(
        ledger.balance(&usage, eur()).await.expect(check),
        Money::new(250, eur()),
        "{check}"
    );
    let usd: Currency = "USD".parse().expect("USD");
    assert_eq!(
        ledger.balance(&prepaid, usd).await.expect(check),
        Money::zero(usd),
        "{check}: another currency's balance"
    );
    let balances = ledger.balances().await.expect(check);
    let total: i64 = balances.iter().map(|(_, m)| m.amount).sum();
    assert_eq!(total, 0, "{check}: balances sum to zero: {balances:?}");
    assert_eq!(balances.len(), 3, "{check}: {balances:?}");
    assert!(
        ledger.audit().await.expect(check).is_empty(),
        "{check}: audit"
    );
}

/// An unbalanced, one-sided, zero or mixed-currency posting is refused with every
/// problem named, and changes nothing.
pub async fn bad_postings_list_every_problem_and_write_nothing(ledger: &impl Ledger) {
    let check = "bad_postings_list_every_problem_and_write_nothing";
    let usd: Currency = "USD".parse().expect("USD");
    let bad = Posting::new("bad:1", "bad")
        .entry(payments(), Money::new(-1000, eur()))
        .entry(account("acme", "prepaid"), Money::new(900, eur()))
        .entry(account("acme", "other"), Money::new(0, eur()))
        .entry(account("acme", "usd"), Money::new(5, usd));
    let err = ledger.post(&bad).await.expect_err(check);
    match &err {
        Error::InvalidPosting { key, problems } => {
            assert_eq!(key, "bad:1", "{check}");
            let text = problems.join("\n");
            for needle in [
                "zero amount",
                "currency USD in a EUR posting",
                "do not balance",
            ] {
                assert!(
                    text.contains(needle),
                    "{check}: {needle:?} missing from {text}"
                );
            }
        }
        other => panic!("{check}: expected InvalidPosting, got {other}"),
    }
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{check}");
    let one_sided = Posting::new("bad:2", "one").entry(payments(), Money::new(0, eur()));
    assert!(
        matches!(
            ledger.post(&one_sided).await,
            Err(Error::InvalidPosting { .. })
        ),
        "{check}: one entry"
    );
    assert!(
        ledger.balances().await.expect(check).is_empty(),
        "{check}: nothing written"
    );
    // The refused key stays free for a correct posting.
    let good = Posting::new("bad:1", "fixed")
        .entry(payments(), Money::new(-900, eur()))
        .entry(account("acme", "prepaid"), Money::new(900, eur()));
    assert_eq!(
        ledger.post(&good).await.expect(check),
        Posted::New,
        "{check}"
    );
}

/// Posting a key again with the same entries changes nothing; with other entries it is
/// a conflict, and changes nothing either.
pub async fn retries_change_nothing_and_reused_keys_conflict(ledger: &impl Ledger) {
    let check = "retries_change_nothing_and_reused_keys_conflict";
    let prepaid = account("acme", "prepaid");
    let p = Posting::new("top-up:7", "top-up")
        .entry(payments(), Money::new(-500, eur()))
        .entry(prepaid.clone(), Money::new(500, eur()));
    assert_eq!(ledger.post(&p).await.expect(check), Posted::New, "{check}");
    for _ in 0..3 {
        assert_eq!(
            ledger.post(&p).await.expect(check),
            Posted::AlreadyPosted,
            "{check}"
        );
    }
    let other = Posting::new("top-up:7", "top-up")
        .entry(payments(), Money::new(-600, eur()))
        .entry(prepaid.clone(), Money::new(600, eur()));
    let err = ledger.post(&other).await.expect_err(check);
    assert!(
        matches!(&err, Error::PostingConflict { key } if key == "top-up:7"),
        "{check}: {err}"
    );
    assert_eq!(err.kind(), ErrorKind::Conflict, "{check}");
    assert_eq!(
        ledger.balance(&prepaid, eur()).await.expect(check),
        Money::new(500, eur()),
        "{check}"
    );
    assert_eq!(
        ledger.entries(&prepaid).await.expect(check).len(),
        1,
        "{check}"
    );
}

/// An account's entries come oldest first with their posting's key, memo, time, task
/// and event.
pub async fn entries_carry_their_posting(ledger: &impl Ledger) {
    let check = "entries_carry_their_posting";
    let prepaid = account("globex", "prepaid");
    let task = TaskId::new();
    let event = EventId::new();
    let at =
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(1_780_000_000_000).expect("time");
    for (i, amount) in [300_i64, -120, -80].into_iter().enumerate() {
        let p = Posting::new(format!("p:{i}"), format!("memo {i}"))
            .entry(payments(), Money::new(-amount, eur()))
            .entry(prepaid.clone(), Money::new(amount, eur()))
            .at(at + chrono::Duration::seconds(i as i64))
            .source((i == 1).then_some(task), (i == 1).then_some(event));
        ledger.post(&p).await.expect(check);
    }
    let entries = ledger.entries(&prepaid).await.expect(check);
    let amounts: Vec<i64> = entries.iter().map(|e| e.amount.amount).collect();
    assert_eq!(amounts, [300, -120, -80], "{check}");
    assert_eq!(entries[1].posting, "p:1", "{check}");
    assert_eq!(entries[1].memo, "memo 1", "{check}");
    assert_eq!(entries[1].task_id, Some(task), "{check}");
    assert_eq!(entries[1].event_id, Some(event), "{check}");
    assert_eq!(entries[0].task_id, None, "{check}");
    assert_eq!(entries[2].at, at + chrono::Duration::seconds(2), "{check}");
    assert_eq!(
        ledger.balance(&prepaid, eur()).await.expect(check),
        Money::new(100, eur()),
        "{check}"
    );
}
