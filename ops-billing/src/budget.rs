//! Prepaid credit and reservations: a task starts only once its worst-case cost is
//! held from its tenant's credit, and its final event settles the hold to the real
//! cost.
//!
//! Accounts: a tenant's credit is `tenant:<t>:prepaid`; a task's hold is
//! `tenant:<t>:held:<task id>`; charges go to `platform:revenue`; top-ups come from
//! `platform:payments`. A hold is a posting from prepaid to the task's hold account
//! with a floor of zero on prepaid, checked in the same transaction: however many
//! tasks are admitted at once, holds never add up to more than the credit.

use std::sync::Arc;
use std::time::Duration;

use ops_core::{EventId, Resources, TaskId, Tenant};
use rust_decimal::Decimal;

use crate::ledger::{Account, Ledger, Posted, Posting};
use crate::meter::builtin;
use crate::pricebook::{Charge, PriceBook, Selector};
use crate::{Error, Money, Result};

/// What a task asks to hold before it starts.
#[derive(Clone, Debug)]
pub struct HoldRequest<'a> {
    /// The task.
    pub task_id: TaskId,
    /// The attempt about to start.
    pub attempt: u32,
    /// Who pays.
    pub tenant: &'a Tenant,
    /// Its environment.
    pub environment: &'a str,
    /// Its template.
    pub template: &'a str,
    /// What it will hold while it runs.
    pub resources: &'a Resources,
    /// Its timeout: the longest it can run.
    pub timeout: Option<Duration>,
    /// Scavenger work.
    pub scavenger: bool,
}

/// The answer to [`Budgets::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reservation {
    /// The worst case is held (`added` now, `held` in all for the task).
    Held {
        /// Held by this call.
        added: Money,
        /// Held for the task in all.
        held: Money,
    },
    /// Nothing to hold: the task costs nothing under the price book.
    Free,
    /// The credit does not cover the worst case; nothing was held.
    Insufficient {
        /// The worst case still to hold.
        needed: Money,
        /// The tenant's credit.
        available: Money,
    },
    /// A spending limit does not leave room for the worst case; nothing was held.
    OverLimit {
        /// The limit, for people ("200.00 EUR a month in dev").
        limit: String,
        /// The worst case still to hold.
        needed: Money,
        /// What is left under the limit in its period.
        left: Money,
    },
}

/// Credit, holds and settlements over a [`Ledger`], priced by a [`PriceBook`].
#[derive(Clone)]
pub struct Budgets {
    ledger: Arc<dyn Ledger>,
    book: Arc<PriceBook>,
    default_hold: Duration,
    thresholds: Vec<u32>,
    limits: Arc<crate::limit::Limits>,
    // The soonest grant expiry this process knows of (unix seconds; `i64::MIN` until
    // the first sweep).
    pub(crate) next_expiry: Arc<std::sync::atomic::AtomicI64>,
    // (tenant, credited) pairs whose exhaustion was published by this process.
    exhausted: Arc<std::sync::Mutex<std::collections::HashSet<(String, i64)>>>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("currency", &self.book.currency)
            .field("default_hold", &self.default_hold)
            .finish_non_exhaustive()
    }
}

pub(crate) fn prepaid(tenant: &Tenant) -> Result<Account> {
    Account::tenant(tenant, "prepaid")
}

/// What a tenant was given in all: a memo account that top-ups add to (against
/// `platform:credit-given`), the reference of the budget thresholds.
pub(crate) fn credited(tenant: &Tenant) -> Result<Account> {
    Account::tenant(tenant, "credited")
}

/// The answers of a batch: those decided without posting (`Some` slots) and, in the
/// `None` slots in order, `answer` of the ledger's answers to the postings made.
fn merge<T, U>(
    slots: Vec<Option<Result<T>>>,
    posted: impl IntoIterator<Item = U>,
    answer: impl Fn(Option<U>) -> Result<T>,
) -> Vec<Result<T>> {
    let mut posted = posted.into_iter();
    slots
        .into_iter()
        .map(|slot| slot.unwrap_or_else(|| answer(posted.next())))
        .collect()
}

/// The tenant an invoice is for.
fn invoice_tenant(invoice: &crate::Invoice) -> Result<Tenant> {
    Tenant::parse(invoice.tenant.as_str()).map_err(|_| Error::InvalidAccount {
        name: format!("tenant:{}", invoice.tenant),
    })
}

/// An invoice's period, as an account segment.
fn invoice_id(invoice: &crate::Invoice) -> String {
    format!(
        "{}-{}",
        invoice.from.format("%Y%m%dT%H%M%S"),
        invoice.to.format("%Y%m%dT%H%M%S")
    )
}

/// What credit notes may still give back on an invoice.
fn creditable(tenant: &Tenant, invoice: &str) -> Result<Account> {
    Account::tenant(tenant, &format!("invoice:{invoice}"))
}

/// A task's hold on a spending limit: `tenant:<t>:held:<task>:limit:<scope>:<period>`.
struct LimitPart {
    /// The part's account.
    account: Account,
    /// What it holds.
    held: Money,
    /// The limit, in the period the part was taken from.
    then: Account,
    /// The same limit in the current period.
    current: Account,
}

fn held(tenant: &Tenant, task: TaskId) -> Result<Account> {
    Account::parse(&format!("tenant:{tenant}:held:{task}"))
}

impl Budgets {
    /// Budgets on `ledger` with `book`'s prices. A task without a timeout is held for
    /// one hour of its resources (see [`default_hold`](Self::default_hold)).
    pub fn new(ledger: Arc<dyn Ledger>, book: Arc<PriceBook>) -> Self {
        Self {
            ledger,
            book,
            default_hold: Duration::from_secs(3600),
            thresholds: vec![50, 80, 100],
            limits: Default::default(),
            next_expiry: Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
            exhausted: Default::default(),
        }
    }

    /// The shares of a tenant's credit used (in percent, 1 to 100) at which
    /// `ops.billing.budget.threshold` is published (default 50, 80 and 100). The
    /// credit is everything [`top_up`](Self::top_up) added; "used" is what holds and
    /// charges took from it. The event is written with the hold that crosses the share,
    /// in its transaction.
    pub fn thresholds(mut self, percents: impl IntoIterator<Item = u32>) -> Self {
        let mut t: Vec<u32> = percents
            .into_iter()
            .filter(|p| (1..=100).contains(p))
            .collect();
        t.sort_unstable();
        t.dedup();
        self.thresholds = t;
        self
    }

    /// Spending limits per tenant and environment (see [`crate::limit`]), checked at
    /// once: a bad limit is [`Error::InvalidLimits`] listing every problem.
    pub fn limits(mut self, limits: Vec<crate::limit::SpendingLimit>) -> Result<Self> {
        self.limits = Arc::new(crate::limit::Limits::new(limits, self.book.currency)?);
        Ok(self)
    }

    /// What is left under each spending limit that applies to a task of `tenant` in
    /// `environment` now: `(limit, left)`.
    pub async fn limits_left(
        &self,
        tenant: &Tenant,
        environment: &str,
    ) -> Result<Vec<(String, Money)>> {
        let currency = self.book.currency;
        let applied = self
            .limits
            .applied(tenant, environment, chrono::Utc::now(), currency)?;
        let accounts: Vec<Account> = applied
            .iter()
            .flat_map(|a| [a.account.clone(), a.set.clone()])
            .collect();
        let read = self.ledger.balances_of(&accounts, currency).await?;
        Ok(applied
            .into_iter()
            .zip(read.chunks(2))
            .map(|(a, r)| {
                let left = r[0].amount + (a.amount.amount - r[1].amount);
                (a.describe, Money::new(left, currency))
            })
            .collect())
    }

    /// How long a task without a timeout is held for. Its real cost is settled at the
    /// end in any case; a task that runs longer than it held takes the rest from the
    /// credit then.
    pub fn default_hold(mut self, hold: Duration) -> Self {
        self.default_hold = hold;
        self
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// The price book.
    pub fn book(&self) -> &PriceBook {
        &self.book
    }

    /// The most a task can cost: its resources for its whole timeout at the prices that
    /// apply to it, with the minimum charge; nothing for free scavenger work.
    pub fn worst_case(&self, task: &HoldRequest<'_>) -> Result<Money> {
        if task.scavenger && self.book.charges.scavenger == Charge::Free {
            return Ok(Money::zero(self.book.currency));
        }
        let longest = task.timeout.unwrap_or(self.default_hold);
        let secs = Decimal::from(longest.as_millis() as u64) / Decimal::ONE_THOUSAND;
        let r = task.resources;
        let cores = Decimal::new(r.cpu_millis as i64, 3);
        let gib = Decimal::from(r.memory_bytes) / Decimal::from(1u64 << 30);
        let selector = Selector {
            environment: Some(task.environment),
            template: Some(task.template),
            gpu_model: r.gpus.model.as_deref(),
        };
        let quantities = [
            (builtin::CPU_CORE_SECONDS, cores * secs),
            (builtin::WALL_SECONDS, secs),
            (builtin::MEMORY_GIB_SECONDS, gib * secs),
            (builtin::GPU_SECONDS, Decimal::from(r.gpus.count) * secs),
            (builtin::TASKS, Decimal::ONE),
        ];
        let mut total = Decimal::ZERO;
        for (meter, quantity) in quantities {
            total += self.book.amount(meter, &selector, quantity)?;
        }
        let total = total.max(self.book.charges.minimum_per_task);
        // Round up, so that the hold covers the worst case.
        let digits = self.book.currency.minor_digits();
        let up = total.round_dp_with_strategy(digits, rust_decimal::RoundingStrategy::AwayFromZero);
        Money::from_decimal(up, self.book.currency)
    }

    /// Holds the task's worst case from its tenant's credit (topping up what an earlier
    /// attempt already holds), atomically with the check that the credit covers it.
    pub async fn reserve(&self, task: &HoldRequest<'_>) -> Result<Reservation> {
        self.reserve_many(std::slice::from_ref(task))
            .await?
            .pop()
            .unwrap_or(Ok(Reservation::Free))
    }

    /// Reserves for many tasks at once, each as [`reserve`](Self::reserve) would in
    /// that order (the credit the earlier ones took is gone for the later ones), with
    /// one read of their holds and one [`Ledger::post_many`]: how the coordinator's
    /// budget check of an admission pass costs one transaction, not one per task.
    pub async fn reserve_many(
        &self,
        tasks: &[HoldRequest<'_>],
    ) -> Result<Vec<Result<Reservation>>> {
        self.expire_due().await?;
        let currency = self.book.currency;
        let now = chrono::Utc::now();
        let hold_accounts = tasks
            .iter()
            .map(|t| held(t.tenant, t.task_id))
            .collect::<Result<Vec<_>>>()?;
        let applied: Vec<Vec<crate::limit::Applied>> = if self.limits.is_empty() {
            vec![Vec::new(); tasks.len()]
        } else {
            tasks
                .iter()
                .map(|t| self.limits.applied(t.tenant, t.environment, now, currency))
                .collect::<Result<_>>()?
        };
        let mut limits: std::collections::BTreeMap<&Account, &crate::limit::Applied> =
            std::collections::BTreeMap::new();
        for a in applied.iter().flatten() {
            limits.insert(&a.account, a);
        }
        // One read: every task's hold, each tenant's credit and what it was given, and
        // what is left and was funded under each limit.
        let mut tenants: Vec<&Tenant> = tasks.iter().map(|t| t.tenant).collect();
        tenants.sort();
        tenants.dedup();
        let mut accounts = hold_accounts.clone();
        for t in &tenants {
            accounts.push(prepaid(t)?);
            accounts.push(credited(t)?);
        }
        for a in limits.values() {
            accounts.push(a.account.clone());
            accounts.push(a.set.clone());
        }
        let read = self.ledger.balances_of(&accounts, currency).await?;
        let (holdings, rest) = read.split_at(tasks.len());
        let (credit, limit_read) = rest.split_at(2 * tenants.len());
        let mut wallets: std::collections::HashMap<&str, (i64, i64)> = tenants
            .iter()
            .zip(credit.chunks(2))
            .map(|(t, c)| (t.as_str(), (c[0].amount, c[1].amount)))
            .collect();
        let mut lefts = self.fund_limits(&limits, limit_read).await?;
        let mut out: Vec<Option<Result<Reservation>>> = Vec::with_capacity(tasks.len());
        let mut postings = Vec::new();
        let mut wanted = Vec::new();
        for (((task, account), already), applied) in
            tasks.iter().zip(hold_accounts).zip(holdings).zip(&applied)
        {
            let planned = self.worst_case(task).and_then(|worst| {
                if worst.amount == 0 {
                    return Ok(Err(Reservation::Free));
                }
                let added = worst.checked_sub(*already)?;
                if added.amount <= 0 {
                    return Ok(Err(Reservation::Held {
                        added: Money::zero(currency),
                        held: *already,
                    }));
                }
                let parts = applied
                    .iter()
                    .map(|a| Account::parse(&format!("{account}:{}", a.part)))
                    .collect::<Result<Vec<_>>>()?;
                let mut posting = self.hold_posting(task, account, added)?;
                let mut fits = true;
                for (a, part) in applied.iter().zip(parts) {
                    posting = posting
                        .entry(a.account.clone(), Money::new(-added.amount, currency))
                        .entry(part, added)
                        .floor(a.account.clone(), Money::zero(currency));
                    fits &= lefts.get(&a.account).is_some_and(|l| *l >= added.amount);
                }
                if let Some((available, given)) = wallets.get_mut(task.tenant.as_str()) {
                    let after = *available - added.amount;
                    if after >= 0 && fits {
                        for event in self.crossed(task, *given, *available, after) {
                            posting = posting.event(event);
                        }
                        *available = after;
                        for a in applied {
                            if let Some(l) = lefts.get_mut(&a.account) {
                                *l -= added.amount;
                            }
                        }
                    }
                }
                Ok(Ok((posting, added, worst)))
            });
            match planned {
                Ok(Ok((posting, added, worst))) => {
                    postings.push(posting);
                    wanted.push((added, worst));
                    out.push(None);
                }
                Ok(Err(done)) => out.push(Some(Ok(done))),
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let posted = self
            .ledger
            .post_many(&postings)
            .await?
            .into_iter()
            .zip(wanted);
        let answers = merge(out, posted, |answer| match answer {
            Some((Ok(_), (added, worst))) => Ok(Reservation::Held { added, held: worst }),
            Some((
                Err(Error::InsufficientFunds {
                    account,
                    needed,
                    available,
                }),
                _,
            )) => Ok(match limits.iter().find(|(a, _)| a.as_str() == account) {
                Some((_, a)) => Reservation::OverLimit {
                    limit: a.describe.clone(),
                    needed,
                    left: available,
                },
                None => Reservation::Insufficient { needed, available },
            }),
            Some((Err(e), _)) => Err(e),
            None => Err(Error::InvalidPosting {
                key: "hold".to_owned(),
                problems: vec!["the ledger answered fewer postings than asked".to_owned()],
            }),
        });
        self.publish_exhausted(tasks, &answers, &wallets).await?;
        Ok(answers)
    }

    /// Funds the limits whose period has not been funded to their amount yet (the
    /// first hold of a period, or a limit changed), and returns what is left under
    /// each. `read` holds each limit's balance and what was funded, in order.
    async fn fund_limits<'a>(
        &self,
        limits: &std::collections::BTreeMap<&'a Account, &crate::limit::Applied>,
        read: &[Money],
    ) -> Result<std::collections::HashMap<&'a Account, i64>> {
        let currency = self.book.currency;
        let mut lefts = std::collections::HashMap::new();
        let mut funding = Vec::new();
        for ((account, a), r) in limits.iter().zip(read.chunks(2)) {
            let delta = a.amount.amount - r[1].amount;
            lefts.insert(*account, r[0].amount + delta);
            if delta != 0 {
                funding.push(
                    Posting::new(
                        // From what was funded to the limit: a retry or another
                        // process funding the same change posts nothing more.
                        format!("{}:{}>{}", a.set, r[1].amount, a.amount.amount),
                        format!("spending limit {}", a.describe),
                    )
                    .entry((*account).clone(), Money::new(delta, currency))
                    .entry(Account::platform("limits")?, Money::new(-delta, currency))
                    .entry(a.set.clone(), Money::new(delta, currency))
                    .entry(
                        Account::platform("limits-set")?,
                        Money::new(-delta, currency),
                    ),
                );
            }
        }
        // One at a time (once per period and tenant): `post` settles a race on a key
        // between processes as "already posted", where a Postgres batch would fail.
        for posting in &funding {
            match self.ledger.post(posting).await {
                // Funded by another process at the same time (with the same or, while
                // a changed limit rolls out, another amount): the holds' floors decide.
                Ok(_) | Err(Error::PostingConflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(lefts)
    }

    /// The threshold events a hold crosses, taking a tenant's credit from `before` to
    /// `after` out of `given`.
    fn crossed(
        &self,
        task: &HoldRequest<'_>,
        given: i64,
        before: i64,
        after: i64,
    ) -> Vec<ops_core::Event> {
        if given <= 0 {
            return Vec::new();
        }
        let used = |left: i64| (i128::from(given) - i128::from(left)) * 100;
        let currency = self.book.currency;
        self.thresholds
            .iter()
            .filter(|p| {
                let bar = i128::from(**p) * i128::from(given);
                used(before) < bar && used(after) >= bar
            })
            .map(|p| {
                ops_core::Event::builder(
                    ops_core::event_types::BILLING_BUDGET_THRESHOLD,
                    "/billing",
                )
                .tenant(task.tenant.as_str())
                .json(serde_json::json!({
                    "tenant": task.tenant.as_str(),
                    "percent": p,
                    "available": Money::new(after, currency).to_string(),
                    "credited": Money::new(given, currency).to_string(),
                    "task_id": task.task_id.to_string(),
                }))
                .build()
            })
            .collect()
    }

    /// Publishes `ops.billing.budget.exhausted` for the tenants a reservation was refused
    /// to, once per tenant and credit given (a top-up arms it again) in this process.
    async fn publish_exhausted(
        &self,
        tasks: &[HoldRequest<'_>],
        answers: &[Result<Reservation>],
        wallets: &std::collections::HashMap<&str, (i64, i64)>,
    ) -> Result<()> {
        let mut events = Vec::new();
        let mut marks = Vec::new();
        for (task, answer) in tasks.iter().zip(answers) {
            let Ok(Reservation::Insufficient { needed, available }) = answer else {
                continue;
            };
            let given = wallets.get(task.tenant.as_str()).map_or(0, |w| w.1);
            let mark = (task.tenant.as_str().to_owned(), given);
            let fresh = {
                let mut seen = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
                seen.insert(mark.clone())
            };
            if !fresh {
                continue;
            }
            marks.push(mark);
            events.push(
                ops_core::Event::builder(
                    ops_core::event_types::BILLING_BUDGET_EXHAUSTED,
                    "/billing",
                )
                .tenant(task.tenant.as_str())
                .json(serde_json::json!({
                    "tenant": task.tenant.as_str(),
                    "needed": needed.to_string(),
                    "available": available.to_string(),
                    "task_id": task.task_id.to_string(),
                }))
                .build(),
            );
        }
        if let Err(e) = self.ledger.publish(&events).await {
            // Not published: armed again, so that the next refusal tries again.
            let mut seen = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
            for m in &marks {
                seen.remove(m);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The posting that holds `added` more for `task` on `hold_account`, refused unless
    /// the tenant's credit stays at or above zero.
    fn hold_posting(
        &self,
        task: &HoldRequest<'_>,
        hold_account: Account,
        added: Money,
    ) -> Result<Posting> {
        let prepaid = prepaid(task.tenant)?;
        Ok(Posting::new(
            format!("hold:{}:{}", task.task_id, task.attempt),
            format!("hold for task {} attempt {}", task.task_id, task.attempt),
        )
        .entry(prepaid.clone(), Money::new(-added.amount, added.currency))
        .entry(hold_account, added)
        .source(Some(task.task_id), None)
        .floor(prepaid, Money::zero(added.currency)))
    }

    /// Settles a task that ended: `charge` goes to revenue, its hold is released, and
    /// the difference returns to (or, if it cost more than it held, comes from) its
    /// tenant's credit. Idempotent: settling a task again changes nothing.
    pub async fn settle(
        &self,
        tenant: &Tenant,
        task: TaskId,
        charge: Money,
        event: Option<EventId>,
    ) -> Result<Posted> {
        self.settle_many(&[(tenant.clone(), task, charge, event)])
            .await?
            .pop()
            .unwrap_or(Ok(Posted::AlreadyPosted))
    }

    /// Settles many ended tasks at once — `(tenant, task, charge, final event)` — with
    /// one read of their holds and one [`Ledger::post_many`]; each as
    /// [`settle`](Self::settle) would.
    pub async fn settle_many(
        &self,
        tasks: &[(Tenant, TaskId, Money, Option<EventId>)],
    ) -> Result<Vec<Result<Posted>>> {
        let accounts = tasks
            .iter()
            .map(|(tenant, task, ..)| held(tenant, *task))
            .collect::<Result<Vec<_>>>()?;
        let holdings = self
            .ledger
            .balances_of(&accounts, self.book.currency)
            .await?;
        let mut postings = Vec::with_capacity(tasks.len());
        let mut slots = Vec::with_capacity(tasks.len());
        let now = chrono::Utc::now();
        for ((tenant, task, charge, event), holding) in tasks.iter().zip(holdings) {
            let parts = self
                .limit_parts(tenant, *task, charge.currency, now)
                .await?;
            let settled = Self::settlement(tenant, *task, *charge, *event, holding)
                .and_then(|p| Self::limit_entries(p, *task, *charge, *event, &parts));
            slots.push(match settled {
                Ok(Some(p)) => {
                    postings.push(p);
                    None
                }
                Ok(None) => Some(Ok(Posted::AlreadyPosted)),
                Err(e) => Some(Err(e)),
            });
        }
        let posted = self.ledger.post_many(&postings).await?;
        Ok(merge(slots, posted, |answer| match answer {
            // Settled before (its hold is gone, so the entries differ): nothing to do.
            Some(Err(Error::PostingConflict { .. })) | None => Ok(Posted::AlreadyPosted),
            Some(other) => other,
        }))
    }

    /// The limit parts a task holds (none for a tenant no limit applies to), each with
    /// the limit it was taken from and that limit in the period of `now`.
    async fn limit_parts(
        &self,
        tenant: &Tenant,
        task: TaskId,
        currency: crate::Currency,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<LimitPart>> {
        if !self.limits.any_for(tenant) {
            return Ok(Vec::new());
        }
        let prefix = format!("{}:", held(tenant, task)?);
        let parts = self
            .ledger
            .balances_under(&format!("{prefix}limit:"))
            .await?;
        Ok(parts
            .into_iter()
            .filter(|(_, m)| m.currency == currency)
            .filter_map(|(account, held)| {
                let (then, current) = account
                    .as_str()
                    .strip_prefix(&prefix)
                    .and_then(|p| crate::limit::part_accounts(tenant, p, now))?;
                Some(LimitPart {
                    account,
                    held,
                    then,
                    current,
                })
            })
            .collect())
    }

    /// Adds to a task's settlement what its limit parts need: each part goes back to
    /// the period it was taken from, and the charge counts against the limit in the
    /// current period.
    fn limit_entries(
        posting: Option<Posting>,
        task: TaskId,
        charge: Money,
        event: Option<EventId>,
        parts: &[LimitPart],
    ) -> Result<Option<Posting>> {
        if parts.is_empty() {
            return Ok(posting);
        }
        let mut posting = posting.unwrap_or_else(|| {
            Posting::new(format!("settle:{task}"), format!("task {task}")).source(Some(task), event)
        });
        let mut counted = std::collections::BTreeSet::new();
        for part in parts {
            if part.held.amount != 0 {
                posting = posting
                    .entry(
                        part.account.clone(),
                        Money::new(-part.held.amount, part.held.currency),
                    )
                    .entry(part.then.clone(), part.held);
            }
            if charge.amount != 0 && counted.insert(&part.current) {
                posting = posting
                    .entry(
                        part.current.clone(),
                        Money::new(-charge.amount, charge.currency),
                    )
                    .entry(Account::platform("limits-spent")?, charge);
            }
        }
        Ok((!posting.entries.is_empty()).then_some(posting))
    }

    /// A preempted attempt's charge is spent under the limits its task holds: taken
    /// from each limit part (what the part lacks, from the limit in the current
    /// period), as its money is taken from the hold.
    fn attempt_limit_entries(
        mut posting: Posting,
        charge: Money,
        parts: &[LimitPart],
    ) -> Result<Posting> {
        for part in parts {
            let take = part.held.amount.clamp(0, charge.amount);
            if take != 0 {
                posting = posting.entry(part.account.clone(), Money::new(-take, charge.currency));
            }
            if take < charge.amount {
                posting = posting.entry(
                    part.current.clone(),
                    Money::new(take - charge.amount, charge.currency),
                );
            }
            posting = posting.entry(Account::platform("limits-spent")?, charge);
        }
        Ok(posting)
    }

    /// The posting that settles `task` holding `holding`, or nothing to post.
    fn settlement(
        tenant: &Tenant,
        task: TaskId,
        charge: Money,
        event: Option<EventId>,
        holding: Money,
    ) -> Result<Option<Posting>> {
        let hold_account = held(tenant, task)?;
        let back = holding.checked_sub(charge)?;
        let mut posting = Posting::new(format!("settle:{task}"), format!("task {task}"))
            .source(Some(task), event);
        if holding.amount != 0 {
            posting = posting.entry(hold_account, Money::new(-holding.amount, holding.currency));
        }
        if charge.amount != 0 {
            posting = posting.entry(Account::platform("revenue")?, charge);
        }
        if back.amount != 0 {
            posting = posting.entry(prepaid(tenant)?, back);
        }
        Ok((!posting.entries.is_empty()).then_some(posting))
    }

    /// Adds prepaid credit to a tenant (a payment received, or a grant), idempotent by
    /// `key`.
    pub async fn top_up(&self, tenant: &Tenant, amount: Money, key: &str) -> Result<Posted> {
        self.same_currency(amount)?;
        let posting = Posting::new(format!("top-up:{key}"), format!("credit for {tenant}"))
            .entry(
                Account::platform("payments")?,
                Money::new(-amount.amount, amount.currency),
            )
            .entry(prepaid(tenant)?, amount)
            .entry(
                Account::platform("credit-given")?,
                Money::new(-amount.amount, amount.currency),
            )
            .entry(credited(tenant)?, amount);
        self.ledger.post(&posting).await
    }

    /// Posts a finalized invoice: its period charge (storage, declared meters — the
    /// tasks were settled from credit as they ended) moves from the tenant's credit to
    /// revenue, and its total becomes what credit notes may give back
    /// (`tenant:<t>:invoice:<period>`, a memo account). Once per tenant and period:
    /// posting it again changes nothing. A draft is [`Error::InvoiceNotFinal`]. The
    /// period charge is taken even if it overdraws the credit (the tenant then owes it).
    pub async fn post_invoice(&self, invoice: &crate::Invoice) -> Result<Posted> {
        let tenant = invoice_tenant(invoice)?;
        if invoice.status != crate::InvoiceStatus::Finalized {
            return Err(Error::InvoiceNotFinal {
                tenant: invoice.tenant.clone(),
                from: invoice.from,
                to: invoice.to,
            });
        }
        for m in [invoice.total, invoice.period_charge()] {
            self.same_currency(m)?;
        }
        let id = invoice_id(invoice);
        let mut posting = Posting::new(
            format!("invoice:{tenant}:{id}"),
            format!("invoice of {tenant} for {} to {}", invoice.from, invoice.to),
        )
        .at(invoice.to);
        let period = invoice.period_charge();
        if period.amount != 0 {
            posting = posting
                .entry(
                    prepaid(&tenant)?,
                    Money::new(-period.amount, period.currency),
                )
                .entry(Account::platform("revenue")?, period);
        }
        if invoice.total.amount > 0 {
            posting = posting
                .entry(creditable(&tenant, &id)?, invoice.total)
                .entry(
                    Account::platform("creditable")?,
                    Money::new(-invoice.total.amount, invoice.total.currency),
                );
        }
        if posting.entries.is_empty() {
            // Nothing to charge and nothing to credit back.
            return Ok(Posted::AlreadyPosted);
        }
        self.ledger.post(&posting).await
    }

    /// Gives `amount` of a posted invoice back to its tenant's credit, from revenue: a
    /// correction is a new posting, never an edit. Idempotent by `key`; the credit notes
    /// of an invoice never add up to more than its total (the memo account it funded
    /// has a floor of zero: more is [`Error::InsufficientFunds`]).
    pub async fn credit_note(
        &self,
        invoice: &crate::Invoice,
        amount: Money,
        reason: &str,
        key: &str,
    ) -> Result<Posted> {
        self.same_currency(amount)?;
        if amount.amount <= 0 {
            return Err(Error::InvalidPosting {
                key: format!("credit-note:{key}"),
                problems: vec![format!(
                    "amount: a credit note gives back more than zero, not {amount}"
                )],
            });
        }
        let tenant = invoice_tenant(invoice)?;
        let id = invoice_id(invoice);
        let memo_account = creditable(&tenant, &id)?;
        let posting = Posting::new(
            format!("credit-note:{key}"),
            format!("credit note on invoice {tenant}:{id}: {reason}"),
        )
        .entry(
            Account::platform("revenue")?,
            Money::new(-amount.amount, amount.currency),
        )
        .entry(prepaid(&tenant)?, amount)
        .entry(
            memo_account.clone(),
            Money::new(-amount.amount, amount.currency),
        )
        .entry(Account::platform("creditable")?, amount)
        .floor(memo_account, Money::zero(amount.currency));
        self.ledger.post(&posting).await
    }

    fn same_currency(&self, m: Money) -> Result<()> {
        if m.currency == self.book.currency {
            Ok(())
        } else {
            Err(Error::CurrencyMismatch {
                expected: self.book.currency,
                found: m.currency,
            })
        }
    }

    /// A tenant's credit, not counting what is held for running tasks.
    pub async fn available(&self, tenant: &Tenant) -> Result<Money> {
        self.ledger
            .balance(&prepaid(tenant)?, self.book.currency)
            .await
    }

    /// What is held for a task.
    pub async fn held(&self, tenant: &Tenant, task: TaskId) -> Result<Money> {
        self.ledger
            .balance(&held(tenant, task)?, self.book.currency)
            .await
    }

    /// Settles one preempted attempt that the charge policy charges: `charge` moves
    /// from the task's hold to revenue (what the hold lacks comes from the tenant's
    /// credit). The hold stays for the next attempt, whose reservation tops it back up
    /// to the worst case; the task's final [`settle`](Self::settle) releases the rest.
    /// Idempotent by task and attempt (key `settle:<task>:attempt:<n>`): settling the
    /// attempt again changes nothing. A zero charge posts nothing.
    pub async fn settle_attempt(
        &self,
        tenant: &Tenant,
        task: TaskId,
        attempt: u32,
        charge: Money,
        event: Option<EventId>,
    ) -> Result<Posted> {
        self.same_currency(charge)?;
        let key = format!("settle:{task}:attempt:{attempt}");
        if charge.amount < 0 {
            return Err(Error::InvalidPosting {
                key,
                problems: vec![format!(
                    "charge: an attempt costs zero or more, not {charge}"
                )],
            });
        }
        if charge.amount == 0 {
            return Ok(Posted::AlreadyPosted);
        }
        let hold_account = held(tenant, task)?;
        let holding = self.ledger.balance(&hold_account, charge.currency).await?;
        let from_hold = holding.amount.clamp(0, charge.amount);
        let mut posting = Posting::new(key, format!("task {task} attempt {attempt} (preempted)"))
            .source(Some(task), event)
            .entry(Account::platform("revenue")?, charge);
        if from_hold != 0 {
            posting = posting.entry(hold_account, Money::new(-from_hold, charge.currency));
        }
        if from_hold < charge.amount {
            posting = posting.entry(
                prepaid(tenant)?,
                Money::new(from_hold - charge.amount, charge.currency),
            );
        }
        let parts = self
            .limit_parts(tenant, task, charge.currency, chrono::Utc::now())
            .await?;
        posting = Self::attempt_limit_entries(posting, charge, &parts)?;
        match self.ledger.post(&posting).await {
            // Settled before, when the hold held another amount: nothing to do.
            Err(Error::PostingConflict { .. }) => Ok(Posted::AlreadyPosted),
            other => other,
        }
    }
}

/// Metering and settlement on the event bus: every event's usage records are stored
/// (once), a task's final event settles its hold to the real cost, and a preempted
/// attempt that the charge policy charges is settled from its `ops.task.preempted`
/// event ([`Budgets::settle_attempt`]; a free one posts nothing), all idempotent, so a
/// redelivered event changes nothing. A usage event that cannot be rated goes to the
/// dead letters with the reason.
#[derive(Clone)]
pub struct BillingFunction {
    metering: crate::MeteringFunction,
    budgets: Budgets,
}

impl std::fmt::Debug for BillingFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingFunction")
            .field("budgets", &self.budgets)
            .finish_non_exhaustive()
    }
}

impl BillingFunction {
    /// The function's name (its durable subscription and dead letters).
    pub const NAME: &'static str = "ops-billing";

    /// Meters into `store` and settles through `budgets`.
    pub fn new(
        metering: crate::Metering,
        store: Arc<dyn crate::UsageStore>,
        budgets: Budgets,
    ) -> Self {
        Self {
            metering: crate::MeteringFunction::new(metering, store),
            budgets,
        }
    }

    /// The budgets it settles through.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Handles one event; what [`Function::call`](ops_events::Function::call) runs.
    pub async fn handle(&self, event: &ops_core::Event) -> Result<()> {
        let records = self.metering.meter(event).await?;
        let Some(c) = self.task_charge(&records)? else {
            return Ok(());
        };
        match c.attempt {
            Some(attempt) => {
                self.budgets
                    .settle_attempt(&c.tenant, c.task, attempt, c.charge, Some(event.id))
                    .await?
            }
            None => {
                self.budgets
                    .settle(&c.tenant, c.task, c.charge, Some(event.id))
                    .await?
            }
        };
        Ok(())
    }

    /// What an event's records settle: a task's final charge, or a charged preempted
    /// attempt's (none for events that end no task and for free preempted attempts).
    fn task_charge(&self, records: &[crate::UsageRecord]) -> Result<Option<TaskCharge>> {
        let Some(first) = records.iter().find(|r| r.task_id.is_some()) else {
            return Ok(None);
        };
        let (Some(task), Ok(tenant)) = (first.task_id, Tenant::parse(first.tenant.as_str())) else {
            return Ok(None);
        };
        let charge = self.metering.metering().charge(records)?;
        let attempt = match (first.preempted, first.attempt) {
            // A free preempted attempt posts nothing: the hold stays as it is.
            (true, _) if charge.amount == 0 => return Ok(None),
            (true, Some(attempt)) => Some(attempt),
            (true, None) => return Ok(None),
            (false, _) => None,
        };
        Ok(Some(TaskCharge {
            tenant,
            task,
            charge,
            attempt,
        }))
    }

    /// Handles many events at once, each as [`handle`](Self::handle) would: their
    /// usage records stored in one write, charged preempted attempts settled one by
    /// one, then their tasks settled with one [`Budgets::settle_many`]. For rating a
    /// backlog or a replay at volume (the bus calls [`handle`](Self::handle) per
    /// event). The outer error is a store failure
    /// (the batch can be retried whole: both steps are idempotent); the inner results
    /// are per event, in order — an event that cannot be rated fails alone.
    pub async fn handle_many(&self, events: &[ops_core::Event]) -> Result<Vec<Result<()>>> {
        let metering = self.metering.metering();
        let mut results: Vec<Result<()>> = Vec::with_capacity(events.len());
        let mut records = Vec::new();
        let mut settle = Vec::new();
        let mut settle_of = Vec::new();
        let mut attempts = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let rated = metering.records(event).and_then(|recs| {
                let task = self.task_charge(&recs)?;
                Ok((recs, task))
            });
            match rated {
                Ok((recs, task)) => {
                    records.extend(recs);
                    if let Some(c) = task {
                        match c.attempt {
                            Some(attempt) => attempts.push((i, attempt, c)),
                            None => {
                                settle.push((c.tenant, c.task, c.charge, Some(event.id)));
                                settle_of.push(i);
                            }
                        }
                    }
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if !records.is_empty() {
            self.metering.store().record(&records).await?;
        }
        for (i, attempt, c) in attempts {
            let settled = self
                .budgets
                .settle_attempt(&c.tenant, c.task, attempt, c.charge, Some(events[i].id))
                .await;
            if let Err(e) = settled {
                results[i] = Err(e);
            }
        }
        for (i, settled) in settle_of
            .into_iter()
            .zip(self.budgets.settle_many(&settle).await?)
        {
            if let Err(e) = settled {
                results[i] = Err(e);
            }
        }
        Ok(results)
    }
}

/// What one event settles: a task (its final charge), or one of its preempted
/// attempts (`attempt`).
struct TaskCharge {
    tenant: Tenant,
    task: TaskId,
    charge: Money,
    attempt: Option<u32>,
}

#[async_trait::async_trait]
impl ops_events::Function for BillingFunction {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn call(
        &self,
        event: &ops_core::Event,
    ) -> std::result::Result<(), ops_events::FunctionError> {
        Ok(self.handle(event).await?)
    }
}
