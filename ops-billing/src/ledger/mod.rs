//! The double-entry ledger: every [`Posting`] balances (its entries sum to zero),
//! balances are derived from entries, and corrections are new postings, never edits.
//!
//! Postings are idempotent by key: posting the same key with the same entries again
//! changes nothing ([`Posted::AlreadyPosted`]); the same key with other entries is a
//! [`Error::PostingConflict`]. A posting may carry events, written in the same
//! transaction as its entries on the SQL ledgers.
//!
//! ```
//! use ops_billing::ledger::{Account, Ledger, MemoryLedger, Posted, Posting};
//! use ops_billing::{Currency, Money};
//! use ops_core::Tenant;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let eur: Currency = "EUR".parse()?;
//! let acme = Tenant::parse("acme")?;
//! let ledger = MemoryLedger::new();
//! let top_up = Posting::new("top-up:acme:1", "prepaid credit")
//!     .entry(Account::platform("payments")?, Money::new(-10_00, eur))
//!     .entry(Account::tenant(&acme, "prepaid")?, Money::new(10_00, eur));
//! assert_eq!(ledger.post(&top_up).await?, Posted::New);
//! assert_eq!(ledger.post(&top_up).await?, Posted::AlreadyPosted);
//! let balance = ledger.balance(&Account::tenant(&acme, "prepaid")?, eur).await?;
//! assert_eq!(balance.to_string(), "10.00 EUR");
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::{Event, EventId, TaskId, Tenant};
use serde::{Deserialize, Serialize};

use crate::{Currency, Error, Money, Result};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresLedger;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteLedger;

/// A ledger account: `tenant:<tenant>:<name>` or `platform:<name>`, each name following
/// the one name rule of tenants (`ops_core::NAME_RULE`), optionally with more
/// `:`-separated segments (`tenant:acme:granted:promo-2026`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Account(String);

impl Account {
    /// A tenant's account, e.g. `tenant:acme:prepaid`.
    pub fn tenant(tenant: &Tenant, name: &str) -> Result<Self> {
        Self::parse(&format!("tenant:{tenant}:{name}"))
    }

    /// One of the platform's own accounts, e.g. `platform:revenue`.
    pub fn platform(name: &str) -> Result<Self> {
        Self::parse(&format!("platform:{name}"))
    }

    /// Checks an account name.
    pub fn parse(name: &str) -> Result<Self> {
        let segments: Vec<&str> = name.split(':').collect();
        let shape_ok = match segments.first() {
            Some(&"tenant") => segments.len() >= 3,
            Some(&"platform") => segments.len() >= 2,
            _ => false,
        };
        if shape_ok && segments[1..].iter().all(|s| Tenant::parse(*s).is_ok()) {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::InvalidAccount {
                name: name.to_owned(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant of a tenant account.
    pub fn tenant_name(&self) -> Option<&str> {
        let mut parts = self.0.split(':');
        (parts.next() == Some("tenant"))
            .then(|| parts.next())
            .flatten()
    }
}

impl TryFrom<String> for Account {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        Self::parse(&name)
    }
}

impl From<Account> for String {
    fn from(a: Account) -> String {
        a.0
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One line of a posting: an amount to an account (positive debits it, negative
/// credits it; the signs of a posting sum to zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The account.
    pub account: Account,
    /// The amount.
    pub amount: Money,
}

/// A balanced set of entries, posted at once, idempotent by its key.
#[derive(Clone, Debug, PartialEq)]
pub struct Posting {
    /// The idempotency key, e.g. `usage:<event id>:<meter>`.
    pub key: String,
    /// What it is for, for people.
    pub memo: String,
    /// When it happened (for usage, the event's time, so that postings do not depend
    /// on when they were processed).
    pub at: DateTime<Utc>,
    /// The entries; at least two, summing to zero, in one currency.
    pub entries: Vec<Entry>,
    /// The task it is for, if any.
    pub task_id: Option<TaskId>,
    /// The event it came from, if any.
    pub event_id: Option<EventId>,
    /// Events written with it, in the same transaction (SQL ledgers).
    pub events: Vec<Event>,
    /// Balances the posting must leave at or above a floor, checked atomically with
    /// the posting (a reservation must not overdraw prepaid credit, however many are
    /// made at once); otherwise nothing is posted and the answer is
    /// [`Error::InsufficientFunds`].
    pub floors: Vec<(Account, Money)>,
}

impl Posting {
    /// An empty posting with a key and a memo, dated now.
    pub fn new(key: impl Into<String>, memo: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            memo: memo.into(),
            at: Utc::now(),
            entries: Vec::new(),
            task_id: None,
            event_id: None,
            events: Vec::new(),
            floors: Vec::new(),
        }
    }

    /// Refuses the posting unless it leaves `account`'s balance at least `floor`.
    pub fn floor(mut self, account: Account, floor: Money) -> Self {
        self.floors.push((account, floor));
        self
    }

    /// The error for a floor that the posting breaks: `after` is the account's balance
    /// with the posting applied.
    pub(crate) fn insufficient(&self, account: &Account, floor: Money, after: i64) -> Error {
        let delta: i64 = self
            .entries
            .iter()
            .filter(|e| &e.account == account && e.amount.currency == floor.currency)
            .map(|e| e.amount.amount)
            .sum();
        Error::InsufficientFunds {
            account: account.to_string(),
            needed: Money::new(-delta, floor.currency),
            available: Money::new(
                after.saturating_sub(delta).saturating_sub(floor.amount),
                floor.currency,
            ),
        }
    }

    /// Adds an entry.
    pub fn entry(mut self, account: Account, amount: Money) -> Self {
        self.entries.push(Entry { account, amount });
        self
    }

    /// Sets when it happened.
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }

    /// Sets the task and the event it came from.
    pub fn source(mut self, task_id: Option<TaskId>, event_id: Option<EventId>) -> Self {
        self.task_id = task_id;
        self.event_id = event_id;
        self
    }

    /// Adds an event to write with it.
    pub fn event(mut self, event: Event) -> Self {
        self.events.push(event);
        self
    }

    /// Every reason it cannot be posted: an empty or overlong key, fewer than two
    /// entries, a zero amount, two currencies, entries that do not sum to zero.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.key.trim().is_empty() || self.key.len() > 255 {
            out.push("key: must be 1 to 255 bytes".to_owned());
        }
        if self.entries.len() < 2 {
            out.push(format!(
                "entries: a posting needs at least two, has {}",
                self.entries.len()
            ));
        }
        let currency = self.entries.first().map(|e| e.amount.currency);
        let mut sum: i128 = 0;
        for (i, e) in self.entries.iter().enumerate() {
            if e.amount.amount == 0 {
                out.push(format!("entries[{i}]: zero amount to {}", e.account));
            }
            if Some(e.amount.currency) != currency {
                out.push(format!(
                    "entries[{i}]: currency {} in a {} posting",
                    e.amount.currency,
                    currency.map(|c| c.to_string()).unwrap_or_default()
                ));
            }
            sum += i128::from(e.amount.amount);
        }
        if sum != 0 {
            out.push(format!(
                "entries: do not balance, they sum to {sum} minor units"
            ));
        }
        out
    }

    /// Refuses a posting with problems.
    pub(crate) fn check(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidPosting {
                key: self.key.clone(),
                problems,
            })
        }
    }

    /// The entries as stored, to tell a retry from a conflicting reuse of the key.
    pub(crate) fn lines(&self) -> String {
        serde_json::to_string(&self.entries).unwrap_or_default()
    }
}

/// What [`Ledger::post`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// The posting was written.
    New,
    /// A posting with that key and the same entries was already there; nothing changed.
    AlreadyPosted,
}

/// An entry as stored, with its posting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The posting's key.
    pub posting: String,
    /// When the posting happened.
    pub at: DateTime<Utc>,
    /// The posting's memo.
    pub memo: String,
    /// The amount to the account.
    pub amount: Money,
    /// The task, if any.
    pub task_id: Option<TaskId>,
    /// The event, if any.
    pub event_id: Option<EventId>,
}

/// A double-entry ledger.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Posts a balanced posting, or nothing if its key is already posted with the same
    /// entries. Invalid postings are [`Error::InvalidPosting`] listing every problem;
    /// a key reused with other entries is [`Error::PostingConflict`].
    async fn post(&self, posting: &Posting) -> Result<Posted>;

    /// An account's balance in `currency`: the sum of its entries.
    async fn balance(&self, account: &Account, currency: Currency) -> Result<Money>;

    /// Every account's balance (accounts with entries), sorted by account.
    async fn balances(&self) -> Result<Vec<(Account, Money)>>;

    /// An account's entries, oldest first.
    async fn entries(&self, account: &Account) -> Result<Vec<LedgerEntry>>;

    /// Checks the ledger: every posting balances and every kept balance equals the sum
    /// of its entries. Returns what is wrong (nothing, normally).
    async fn audit(&self) -> Result<Vec<String>>;

    /// Publishes events that go with no posting (a budget exhausted), through the
    /// ledger's outbox on the SQL ledgers; the memory ledger keeps them
    /// ([`MemoryLedger::events`]).
    async fn publish(&self, events: &[Event]) -> Result<()>;

    /// Posts many postings, each applied or refused on its own exactly as
    /// [`post`](Self::post) would in that order (a floor is checked against the
    /// balances the earlier postings of the batch left). The outer error is a store
    /// failure; the inner results say what happened to each posting.
    ///
    /// The SQL ledgers write the whole batch in one transaction with multi-row
    /// statements: nothing of it is written if the store fails, and it is how usage is
    /// rated at volume ([`BillingFunction::handle_many`](crate::BillingFunction::handle_many)).
    /// The default posts one at a time.
    async fn post_many(&self, postings: &[Posting]) -> Result<Vec<Result<Posted>>> {
        let mut out = Vec::with_capacity(postings.len());
        for p in postings {
            match self.post(p).await {
                Err(e @ Error::Store { .. }) => return Err(e),
                other => out.push(other),
            }
        }
        Ok(out)
    }

    /// The balances of every account whose name starts with `prefix` (usually ending
    /// in `:`), sorted by account, zero balances included: how grants and a task's
    /// hold parts are listed. The default filters [`balances`](Self::balances).
    async fn balances_under(&self, prefix: &str) -> Result<Vec<(Account, Money)>> {
        Ok(self
            .balances()
            .await?
            .into_iter()
            .filter(|(a, _)| a.as_str().starts_with(prefix))
            .collect())
    }

    /// The balances of `accounts` in `currency`, in their order. The SQL ledgers read
    /// them with one query per thousand accounts; the default asks one at a time.
    async fn balances_of(&self, accounts: &[Account], currency: Currency) -> Result<Vec<Money>> {
        let mut out = Vec::with_capacity(accounts.len());
        for a in accounts {
            out.push(self.balance(a, currency).await?);
        }
        Ok(out)
    }
}

/// What a batch of postings does, decided in order against the balances it starts
/// from: every ledger reads the keys and balances a batch touches, plans it here, and
/// writes what was accepted.
pub(crate) struct Plan<'a> {
    /// One result per posting.
    pub results: Vec<Result<Posted>>,
    /// The new postings to write, in order, with their stored lines.
    pub accepted: Vec<(&'a Posting, String)>,
    /// The new balance of every account the accepted postings change.
    pub balances: BTreeMap<(Account, Currency), i64>,
}

/// The answer to a batch of one posting.
pub(crate) fn one(mut results: Vec<Result<Posted>>) -> Result<Posted> {
    results.pop().unwrap_or(Ok(Posted::AlreadyPosted))
}

/// Every account and currency a batch names (entries and floors), once, in order.
pub(crate) fn touched_pairs(
    postings: &[Posting],
) -> std::collections::BTreeSet<(&Account, Currency)> {
    postings
        .iter()
        .flat_map(|p| {
            p.entries
                .iter()
                .map(|e| (&e.account, e.amount.currency))
                .chain(p.floors.iter().map(|(a, f)| (a, f.currency)))
        })
        .collect()
}

/// Every account a batch names (entries and floors), once.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn touched(postings: &[Posting]) -> Vec<Account> {
    let mut accounts: Vec<Account> = touched_pairs(postings)
        .into_iter()
        .map(|(a, _)| a.clone())
        .collect();
    accounts.dedup();
    accounts
}

/// Plans `postings` in order: `existing` holds the stored lines of the keys already
/// posted, `start` the stored balances of the accounts they touch (missing ones are
/// zero).
pub(crate) fn plan<'a>(
    postings: &'a [Posting],
    existing: &HashMap<String, String>,
    start: &HashMap<(Account, Currency), i64>,
) -> Plan<'a> {
    let mut results = Vec::with_capacity(postings.len());
    let mut accepted = Vec::new();
    let mut balances: BTreeMap<(Account, Currency), i64> = BTreeMap::new();
    let mut seen: HashMap<&str, String> = HashMap::new();
    for posting in postings {
        let result = (|| {
            posting.check()?;
            let lines = posting.lines();
            if let Some(stored) = existing
                .get(&posting.key)
                .or_else(|| seen.get(posting.key.as_str()))
            {
                return if *stored == lines {
                    Ok(None)
                } else {
                    Err(Error::PostingConflict {
                        key: posting.key.clone(),
                    })
                };
            }
            let current = |key: &(Account, Currency), next: &BTreeMap<_, i64>| {
                next.get(key)
                    .or_else(|| balances.get(key))
                    .or_else(|| start.get(key))
                    .copied()
                    .unwrap_or(0)
            };
            let mut next: BTreeMap<(Account, Currency), i64> = BTreeMap::new();
            for e in &posting.entries {
                let key = (e.account.clone(), e.amount.currency);
                let new = current(&key, &next)
                    .checked_add(e.amount.amount)
                    .ok_or_else(|| Error::Overflow {
                        what: format!("balance of {}", e.account),
                    })?;
                next.insert(key, new);
            }
            for (account, floor) in &posting.floors {
                let after = current(&(account.clone(), floor.currency), &next);
                if after < floor.amount {
                    return Err(posting.insufficient(account, *floor, after));
                }
            }
            balances.extend(next);
            seen.insert(posting.key.as_str(), lines.clone());
            Ok(Some(lines))
        })();
        results.push(match result {
            Ok(None) => Ok(Posted::AlreadyPosted),
            Ok(Some(lines)) => {
                accepted.push((posting, lines));
                Ok(Posted::New)
            }
            Err(e) => Err(e),
        });
    }
    Plan {
        results,
        accepted,
        balances,
    }
}

/// An in-memory ledger, for tests and programs that keep nothing.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    events: Vec<Event>,
    postings: HashMap<String, (String, Posting)>,
    order: Vec<String>,
    balances: BTreeMap<(Account, Currency), i64>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The events posted with its postings and published, in order.
    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn post(&self, posting: &Posting) -> Result<Posted> {
        one(self.post_many(std::slice::from_ref(posting)).await?)
    }

    async fn post_many(&self, postings: &[Posting]) -> Result<Vec<Result<Posted>>> {
        let mut state = self.state();
        let existing: HashMap<String, String> = postings
            .iter()
            .filter_map(|p| {
                let (lines, _) = state.postings.get(&p.key)?;
                Some((p.key.clone(), lines.clone()))
            })
            .collect();
        let start: HashMap<(Account, Currency), i64> = touched_pairs(postings)
            .into_iter()
            .filter_map(|(a, c)| {
                let key = (a.clone(), c);
                let balance = *state.balances.get(&key)?;
                Some((key, balance))
            })
            .collect();
        let planned = plan(postings, &existing, &start);
        for (posting, lines) in planned.accepted {
            state
                .postings
                .insert(posting.key.clone(), (lines, posting.clone()));
            state.order.push(posting.key.clone());
            state.events.extend(posting.events.iter().cloned());
        }
        state.balances.extend(planned.balances);
        Ok(planned.results)
    }

    async fn publish(&self, events: &[Event]) -> Result<()> {
        self.state().events.extend(events.iter().cloned());
        Ok(())
    }

    async fn balances_under(&self, prefix: &str) -> Result<Vec<(Account, Money)>> {
        let state = self.state();
        Ok(state
            .balances
            .iter()
            .filter(|((a, _), _)| a.as_str().starts_with(prefix))
            .map(|((a, c), b)| (a.clone(), Money::new(*b, *c)))
            .collect())
    }

    async fn balance(&self, account: &Account, currency: Currency) -> Result<Money> {
        let state = self.state();
        let amount = state
            .balances
            .get(&(account.clone(), currency))
            .copied()
            .unwrap_or(0);
        Ok(Money::new(amount, currency))
    }

    async fn balances(&self) -> Result<Vec<(Account, Money)>> {
        let state = self.state();
        Ok(state
            .balances
            .iter()
            .map(|((a, c), b)| (a.clone(), Money::new(*b, *c)))
            .collect())
    }

    async fn entries(&self, account: &Account) -> Result<Vec<LedgerEntry>> {
        let state = self.state();
        let mut out = Vec::new();
        for key in &state.order {
            let Some((_, p)) = state.postings.get(key) else {
                continue;
            };
            for e in p.entries.iter().filter(|e| &e.account == account) {
                out.push(LedgerEntry {
                    posting: p.key.clone(),
                    at: p.at,
                    memo: p.memo.clone(),
                    amount: e.amount,
                    task_id: p.task_id,
                    event_id: p.event_id,
                });
            }
        }
        Ok(out)
    }

    async fn audit(&self) -> Result<Vec<String>> {
        let state = self.state();
        let mut derived: BTreeMap<(Account, Currency), i64> = BTreeMap::new();
        let mut out = Vec::new();
        for (_, p) in state.postings.values() {
            if !p.problems().is_empty() {
                out.push(format!("posting {}: {}", p.key, p.problems().join("; ")));
            }
            for e in &p.entries {
                *derived
                    .entry((e.account.clone(), e.amount.currency))
                    .or_default() += e.amount.amount;
            }
        }
        compare_balances(&derived, &state.balances, &mut out);
        Ok(out)
    }
}

/// The sum of a posting's lines per account and currency, in a fixed order (the
/// order SQL ledgers lock balance rows in, so that concurrent postings cannot
/// deadlock).
#[cfg(feature = "postgres")]
pub(crate) fn net_by_account(posting: &Posting) -> Result<BTreeMap<(Account, Currency), i64>> {
    let mut net: BTreeMap<(Account, Currency), i64> = BTreeMap::new();
    for e in &posting.entries {
        let slot = net
            .entry((e.account.clone(), e.amount.currency))
            .or_default();
        *slot = slot
            .checked_add(e.amount.amount)
            .ok_or_else(|| Error::Overflow {
                what: format!("posting {} on {}", posting.key, e.account),
            })?;
    }
    Ok(net)
}

/// A database failure of `backend`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn store(backend: &'static str, e: impl Into<ops_events::BoxError>) -> Error {
    Error::Store {
        source: ops_events::StoreError::new(backend, e),
    }
}

/// A row of `account, currency, amount` (a balance, or a sum of entries), or of
/// `posting, currency, sum` for the audit's unbalanced postings.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) type BalanceRow = (String, String, i64);

/// A row of `p.key, p.at, p.memo, e.currency, e.amount, p.task_id, p.event_id`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) type EntryRow = (
    String,
    i64,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
);

/// Balances from rows of `account, currency, balance`, as the SQL ledgers read them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn balances_from(rows: Vec<BalanceRow>) -> Result<Vec<(Account, Money)>> {
    rows.into_iter()
        .map(|(account, currency, amount)| {
            Ok((
                Account::parse(&account)?,
                Money::new(amount, currency.parse()?),
            ))
        })
        .collect()
}

/// An account's entries from the SQL ledgers' rows, in their order.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn entries_from(rows: Vec<EntryRow>) -> Result<Vec<LedgerEntry>> {
    rows.into_iter()
        .map(|(posting, at, memo, currency, amount, task_id, event_id)| {
            Ok(LedgerEntry {
                posting,
                at: DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default(),
                memo,
                amount: Money::new(amount, currency.parse()?),
                task_id: task_id.and_then(|t| t.parse::<TaskId>().ok()),
                event_id: event_id.and_then(|e| e.parse::<EventId>().ok()),
            })
        })
        .collect()
}

/// The SQL ledgers' audit from what they read: postings whose entries do not sum to
/// zero, each account's sum of entries, and the balances they keep.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn audit_from(
    unbalanced: Vec<BalanceRow>,
    sums: Vec<BalanceRow>,
    kept: Vec<(Account, Money)>,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = unbalanced
        .into_iter()
        .map(|(posting, currency, sum)| {
            format!("posting {posting}: entries in {currency} sum to {sum}")
        })
        .collect();
    let derived = balances_from(sums)?
        .into_iter()
        .map(|(account, money)| ((account, money.currency), money.amount))
        .collect();
    let kept = kept
        .into_iter()
        .map(|(account, money)| ((account, money.currency), money.amount))
        .collect();
    compare_balances(&derived, &kept, &mut out);
    Ok(out)
}

/// Lists the accounts whose kept balance differs from the one derived from entries.
pub(crate) fn compare_balances(
    derived: &BTreeMap<(Account, Currency), i64>,
    kept: &BTreeMap<(Account, Currency), i64>,
    out: &mut Vec<String>,
) {
    for key in derived.keys().chain(kept.keys()) {
        let d = derived.get(key).copied().unwrap_or(0);
        let k = kept.get(key).copied().unwrap_or(0);
        if d != k {
            let line = format!(
                "account {} ({}): kept balance {k}, entries sum to {d}",
                key.0, key.1
            );
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
}
