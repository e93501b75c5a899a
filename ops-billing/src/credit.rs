//! Granted credit: promotional or goodwill credit with a priority and an expiry.
//!
//! A grant adds to the tenant's one credit balance (`tenant:<t>:prepaid`), so holds at
//! admission and settlements stay one posting on one account, however many grants a
//! tenant has. What a grant has left is decided by **layers**: a tenant's open grants,
//! in their order of use — lower `priority` first, then the one that expires sooner
//! (never last), then by id — and paid credit (top-ups) after every grant. Everything
//! the tenant used (held or charged, less what came back) fills the layers in that
//! order; the rest of a layer is what is left of it.
//!
//! When a grant expires, what is left of it leaves the credit (to
//! `platform:grants-expired`, with `ops.billing.credit.expired`), once: the sweep
//! ([`Budgets::expire_grants`]) runs before any reservation that comes after an expiry
//! this process knows of, and the facade runs it every minute for grants made
//! elsewhere. A hold counts as use, so a grant used by running tasks does not expire
//! under them; what their settlement gives back returns as paid credit.
//!
//! Accounts: each open grant has a memo account
//! `platform:grant:<tenant>:<id>:p<priority>:<e<unix seconds>|never>` holding its
//! amount (this is how grants are listed), `tenant:<t>:grants-closed` sums the grants
//! that expired, and the money comes from `platform:granted`.
//!
//! ```
//! use std::sync::Arc;
//! use ops_billing::credit::Grant;
//! use ops_billing::ledger::MemoryLedger;
//! use ops_billing::{Budgets, Money, PriceBook};
//! use ops_core::Tenant;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let book = PriceBook::parse("currency = \"EUR\"")?;
//! let eur = book.currency;
//! let budgets = Budgets::new(Arc::new(MemoryLedger::new()), Arc::new(book));
//! let acme = Tenant::parse("acme")?;
//! let in_a_month = chrono::Utc::now() + chrono::Duration::days(30);
//! budgets
//!     .grant(&acme, &Grant::new("welcome", Money::new(5_00, eur)).expires_at(in_a_month))
//!     .await?;
//! budgets.top_up(&acme, Money::new(20_00, eur), "payment-1").await?;
//! assert_eq!(budgets.available(&acme).await?.to_string(), "25.00 EUR");
//! let grants = budgets.grants(&acme).await?;
//! assert_eq!(grants[0].remaining.to_string(), "5.00 EUR");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use ops_core::Tenant;

use crate::budget::{Budgets, credited, prepaid};
use crate::ledger::{Account, Posted, Posting};
use crate::{Error, Money, Result};

/// The highest priority number a grant may have.
pub const MAX_PRIORITY: u32 = 1000;

/// The priority of a grant that names none.
pub const DEFAULT_PRIORITY: u32 = 100;

/// Credit given to a tenant, used before paid credit and possibly expiring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its id, unique per tenant (the name rule of tenants): granting the same id again
    /// with the same terms changes nothing.
    pub id: String,
    /// How much.
    pub amount: Money,
    /// Lower numbers are used first (0 to [`MAX_PRIORITY`], default
    /// [`DEFAULT_PRIORITY`]).
    pub priority: u32,
    /// When what is left of it expires (none: never).
    pub expires_at: Option<DateTime<Utc>>,
}

impl Grant {
    /// A grant of `amount` that never expires, at the default priority.
    pub fn new(id: impl Into<String>, amount: Money) -> Self {
        Self {
            id: id.into(),
            amount,
            priority: DEFAULT_PRIORITY,
            expires_at: None,
        }
    }

    /// Sets the priority (lower is used first).
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets when what is left of it expires.
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Every problem of the grant, with its field.
    pub fn problems(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = Tenant::parse(&self.id) {
            out.push(format!("id: {e}"));
        }
        if self.amount.amount <= 0 {
            out.push(format!(
                "amount: a grant gives more than zero, not {}",
                self.amount
            ));
        }
        if self.priority > MAX_PRIORITY {
            out.push(format!(
                "priority: {} is above the highest, {MAX_PRIORITY}",
                self.priority
            ));
        }
        if let Some(at) = self.expires_at
            && at <= now
        {
            out.push(format!("expires_at: {at} is not in the future"));
        }
        out
    }

    fn account(&self, tenant: &Tenant) -> Result<Account> {
        let expiry = self
            .expires_at
            .map_or_else(|| "never".to_owned(), |t| format!("e{}", t.timestamp()));
        Account::parse(&format!(
            "platform:grant:{tenant}:{}:p{}:{expiry}",
            self.id, self.priority
        ))
    }
}

/// An open grant and what is left of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantStatus {
    /// The grant as made.
    pub grant: Grant,
    /// What is left of it: its amount less the use its layer took.
    pub remaining: Money,
}

/// What [`Budgets::expire_grants`] took back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredGrant {
    /// The tenant.
    pub tenant: Tenant,
    /// The grant.
    pub grant: Grant,
    /// What was left of it and left the credit.
    pub expired: Money,
}

/// A grant as listed from its memo account.
#[derive(Clone, Debug)]
struct Open {
    tenant: Tenant,
    grant: Grant,
    account: Account,
}

impl Open {
    /// Reads `platform:grant:<tenant>:<id>:p<priority>:<expiry>` holding `amount`.
    fn parse(account: &Account, amount: Money) -> Option<Self> {
        let parts: Vec<&str> = account.as_str().split(':').collect();
        let [_, _, tenant, id, priority, expiry] = parts.as_slice() else {
            return None;
        };
        let priority = priority.strip_prefix('p')?.parse().ok()?;
        let expires_at = match *expiry {
            "never" => None,
            e => Some(DateTime::from_timestamp(
                e.strip_prefix('e')?.parse().ok()?,
                0,
            )?),
        };
        Some(Self {
            tenant: Tenant::parse(*tenant).ok()?,
            grant: Grant {
                id: (*id).to_owned(),
                amount,
                priority,
                expires_at,
            },
            account: account.clone(),
        })
    }

    /// The order of use: priority, sooner expiry (never last), id.
    fn order(&self) -> (u32, i64, &str) {
        (
            self.grant.priority,
            self.grant.expires_at.map_or(i64::MAX, |t| t.timestamp()),
            self.grant.id.as_str(),
        )
    }
}

/// A tenant's balances that decide what is left of its grants.
struct Layers {
    prepaid: i64,
    credited: i64,
    closed: i64,
    open: Vec<Open>,
}

impl Layers {
    /// What is left of each open grant, in order of use.
    fn remaining(&self) -> Vec<(usize, i64)> {
        let mut order: Vec<usize> = (0..self.open.len()).collect();
        order.sort_by(|a, b| self.open[*a].order().cmp(&self.open[*b].order()));
        // What the open layers were used for: everything given and not closed, less
        // what is still there.
        let used = self.credited - self.closed - self.prepaid;
        let mut before = 0i64;
        order
            .into_iter()
            .map(|i| {
                let amount = self.open[i].grant.amount.amount;
                let taken = (used - before).clamp(0, amount);
                before = before.saturating_add(amount);
                (i, amount - taken)
            })
            .collect()
    }
}

fn closed(tenant: &Tenant) -> Result<Account> {
    Account::tenant(tenant, "grants-closed")
}

impl Budgets {
    /// Grants credit to a tenant: it adds to the tenant's credit now, is used before
    /// paid credit (in [`Grant::priority`] order), and what is left of it expires at
    /// [`Grant::expires_at`]. Idempotent by the grant's id: the same grant again
    /// changes nothing; the same id with other terms is [`Error::PostingConflict`]. A
    /// bad grant is [`Error::InvalidGrant`] listing every problem.
    pub async fn grant(&self, tenant: &Tenant, grant: &Grant) -> Result<Posted> {
        let mut problems = grant.problems(Utc::now());
        if grant.amount.currency != self.book().currency {
            problems.push(format!(
                "amount: currency {} is not the price book's {}",
                grant.amount.currency,
                self.book().currency
            ));
        }
        if !problems.is_empty() {
            return Err(Error::InvalidGrant {
                tenant: tenant.to_string(),
                id: grant.id.clone(),
                problems,
            });
        }
        let a = grant.amount;
        let minus = Money::new(-a.amount, a.currency);
        let event =
            ops_core::Event::builder(ops_core::event_types::BILLING_CREDIT_GRANTED, "/billing")
                .tenant(tenant.as_str())
                .json(serde_json::json!({
                    "tenant": tenant.as_str(),
                    "grant": grant.id,
                    "amount": a.to_string(),
                    "priority": grant.priority,
                    "expires_at": grant.expires_at,
                }))
                .build();
        let posting = Posting::new(
            format!("grant:{tenant}:{}", grant.id),
            format!("credit granted to {tenant}: {}", grant.id),
        )
        .entry(Account::platform("granted")?, minus)
        .entry(prepaid(tenant)?, a)
        .entry(Account::platform("credit-given")?, minus)
        .entry(credited(tenant)?, a)
        .entry(grant.account(tenant)?, a)
        .entry(Account::platform("grants-open")?, minus)
        .event(event);
        let posted = self.ledger().post(&posting).await?;
        if let Some(at) = grant.expires_at {
            self.next_expiry
                .fetch_min(at.timestamp(), Ordering::Relaxed);
        }
        Ok(posted)
    }

    /// A tenant's open grants (not yet expired) and what is left of each, in the order
    /// they are used.
    pub async fn grants(&self, tenant: &Tenant) -> Result<Vec<GrantStatus>> {
        let open = self
            .open_grants(&format!("platform:grant:{tenant}:"))
            .await?;
        let layers = self.layers(tenant, open).await?;
        let currency = self.book().currency;
        Ok(layers
            .remaining()
            .into_iter()
            .map(|(i, left)| GrantStatus {
                grant: layers.open[i].grant.clone(),
                remaining: Money::new(left, currency),
            })
            .collect())
    }

    /// Expires every grant whose time has come by `now`: what is left of it (its
    /// layer's rest) leaves the tenant's credit, with `ops.billing.credit.expired`,
    /// once per grant. Safe to run from several processes at once. Returns what
    /// expired.
    pub async fn expire_grants(&self, now: DateTime<Utc>) -> Result<Vec<ExpiredGrant>> {
        let all = self.open_grants("platform:grant:").await?;
        let next = all
            .iter()
            .filter_map(|o| o.grant.expires_at)
            .filter(|t| *t > now)
            .map(|t| t.timestamp())
            .min()
            .unwrap_or(i64::MAX);
        let mut by_tenant: BTreeMap<Tenant, Vec<Open>> = BTreeMap::new();
        for o in all {
            by_tenant.entry(o.tenant.clone()).or_default().push(o);
        }
        let mut out = Vec::new();
        for (tenant, open) in by_tenant {
            if open
                .iter()
                .any(|o| o.grant.expires_at.is_some_and(|t| t <= now))
            {
                out.extend(self.expire_tenant(&tenant, open, now).await?);
            }
        }
        self.next_expiry.store(next, Ordering::Relaxed);
        Ok(out)
    }

    /// Runs [`expire_grants`](Self::expire_grants) if a grant this process knows of
    /// has expired (or it has not looked yet).
    pub(crate) async fn expire_due(&self) -> Result<()> {
        if Utc::now().timestamp() >= self.next_expiry.load(Ordering::Relaxed) {
            self.expire_grants(Utc::now()).await?;
        }
        Ok(())
    }

    async fn open_grants(&self, prefix: &str) -> Result<Vec<Open>> {
        let currency = self.book().currency;
        Ok(self
            .ledger()
            .balances_under(prefix)
            .await?
            .into_iter()
            .filter(|(_, m)| m.currency == currency && m.amount > 0)
            .filter_map(|(a, m)| Open::parse(&a, m))
            .collect())
    }

    async fn layers(&self, tenant: &Tenant, open: Vec<Open>) -> Result<Layers> {
        let read = self
            .ledger()
            .balances_of(
                &[prepaid(tenant)?, credited(tenant)?, closed(tenant)?],
                self.book().currency,
            )
            .await?;
        Ok(Layers {
            prepaid: read[0].amount,
            credited: read[1].amount,
            closed: read[2].amount,
            open,
        })
    }

    /// Expires a tenant's due grants, soonest first. A posting carries a floor that
    /// fails if the tenant's credit moved since it was read (a hold or a settlement in
    /// between would change what is left); then it reads again, a few times.
    async fn expire_tenant(
        &self,
        tenant: &Tenant,
        mut open: Vec<Open>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ExpiredGrant>> {
        let currency = self.book().currency;
        let mut out = Vec::new();
        let mut attempts = 0;
        loop {
            let layers = self.layers(tenant, open.clone()).await?;
            let due = layers
                .remaining()
                .into_iter()
                .filter(|(i, _)| layers.open[*i].grant.expires_at.is_some_and(|t| t <= now))
                .min_by_key(|(i, _)| {
                    (
                        layers.open[*i].grant.expires_at,
                        layers.open[*i].order().2.to_owned(),
                    )
                });
            let Some((i, left)) = due else {
                return Ok(out);
            };
            let o = &layers.open[i];
            let amount = o.grant.amount;
            let mut posting = Posting::new(
                format!("grant-expired:{tenant}:{}", o.grant.id),
                format!("grant {} of {tenant} expired", o.grant.id),
            )
            .at(o.grant.expires_at.unwrap_or(now))
            .entry(o.account.clone(), Money::new(-amount.amount, currency))
            .entry(Account::platform("grants-open")?, amount)
            .entry(closed(tenant)?, amount)
            .entry(
                Account::platform("grants-closed")?,
                Money::new(-amount.amount, currency),
            )
            .event(
                ops_core::Event::builder(ops_core::event_types::BILLING_CREDIT_EXPIRED, "/billing")
                    .tenant(tenant.as_str())
                    .json(serde_json::json!({
                        "tenant": tenant.as_str(),
                        "grant": o.grant.id,
                        "amount": amount.to_string(),
                        "expired": Money::new(left, currency).to_string(),
                    }))
                    .build(),
            );
            if left > 0 {
                posting = posting
                    .entry(prepaid(tenant)?, Money::new(-left, currency))
                    .entry(
                        Account::platform("grants-expired")?,
                        Money::new(left, currency),
                    )
                    // Nothing moved the credit since it was read.
                    .floor(
                        prepaid(tenant)?,
                        Money::new(layers.prepaid - left, currency),
                    );
            }
            match self.ledger().post(&posting).await {
                Ok(Posted::New) => {
                    tracing::info!(%tenant, grant = %o.grant.id, expired = %Money::new(left, currency), "grant expired");
                    out.push(ExpiredGrant {
                        tenant: tenant.clone(),
                        grant: o.grant.clone(),
                        expired: Money::new(left, currency),
                    });
                }
                // Another process expired it.
                Ok(Posted::AlreadyPosted) | Err(Error::PostingConflict { .. }) => {}
                Err(Error::InsufficientFunds { .. }) if attempts < 5 => {
                    attempts += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let gone = o.account.clone();
            open.retain(|x| x.account != gone);
        }
    }
}
