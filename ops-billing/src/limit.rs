//! Spending limits: the most a tenant may spend per day, per month or in all, in all
//! its environments or in one, enforced at admission like credit.
//!
//! A limit holds like credit does: a task's hold at admission also takes its worst
//! case from every limit that applies to it, with a floor of zero checked in the same
//! transaction, so tasks admitted at once never hold more than the limit allows. The
//! task's settlement gives the hold back to the period it was taken from and counts
//! the real charge in the period the task ended in.
//!
//! A limit that names a tenant replaces, for that tenant, the limit of the same
//! environment scope and period that names none (the default for every tenant).
//!
//! ```toml
//! [[limits]]                       # every tenant: at most 200 EUR a month
//! amount = "200.00"
//! period = "month"
//!
//! [[limits]]                       # acme: at most 20 EUR a day in "dev"
//! tenant = "acme"
//! environment = "dev"
//! amount = "20.00"
//! period = "day"
//! ```
//!
//! Accounts: `tenant:<t>:limit:<scope>:<period>` is what is left under a limit in a
//! period (`scope` is `all`, or `env:<environment>`; `period` is `total`, `m2026-12` or
//! `d2026-12-03`), funded once per period to the limit's amount
//! (`tenant:<t>:limit-set:…` records what was funded, so a changed limit is funded by
//! the difference); a task's part is `tenant:<t>:held:<task>:limit:<scope>:<period>`.

use chrono::{DateTime, Datelike, Utc};
use ops_core::Tenant;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ledger::Account;
use crate::{Currency, Error, Money, Result};

/// How long a spending limit's period is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitPeriod {
    /// A calendar day (UTC).
    Day,
    /// A calendar month (UTC).
    Month,
    /// For ever.
    Total,
}

impl LimitPeriod {
    /// The period's account segment at `at`.
    pub fn id(self, at: DateTime<Utc>) -> String {
        match self {
            LimitPeriod::Day => format!("d{}", at.format("%Y-%m-%d")),
            LimitPeriod::Month => format!("m{:04}-{:02}", at.year(), at.month()),
            LimitPeriod::Total => "total".to_owned(),
        }
    }

    /// The period a segment names.
    fn of_id(id: &str) -> Option<Self> {
        match id.chars().next()? {
            'd' => Some(LimitPeriod::Day),
            'm' => Some(LimitPeriod::Month),
            't' if id == "total" => Some(LimitPeriod::Total),
            _ => None,
        }
    }

    fn per(self) -> &'static str {
        match self {
            LimitPeriod::Day => "a day",
            LimitPeriod::Month => "a month",
            LimitPeriod::Total => "in all",
        }
    }
}

/// The most a tenant may spend in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendingLimit {
    /// The tenant (none: every tenant, each on its own).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The environment (none: all environments together).
    #[serde(default)]
    pub environment: Option<String>,
    /// The most, in the price book's currency (e.g. `"200.00"`).
    pub amount: Decimal,
    /// Per what.
    pub period: LimitPeriod,
}

impl SpendingLimit {
    /// A limit of `amount` per `period` for every tenant, in all environments.
    pub fn new(amount: Decimal, period: LimitPeriod) -> Self {
        Self {
            tenant: None,
            environment: None,
            amount,
            period,
        }
    }

    /// For one tenant only.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// In one environment only.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Every problem of the limit, each with `at` (where it was found) and its field.
    pub fn problems(&self, at: &str, currency: Currency) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(t) = &self.tenant
            && let Err(e) = Tenant::parse(t)
        {
            out.push(format!("{at}.tenant: {e}"));
        }
        if let Some(env) = &self.environment
            && let Err(e) = Tenant::parse(env)
        {
            out.push(format!("{at}.environment: {e}"));
        }
        if self.amount < Decimal::ZERO {
            out.push(format!("{at}.amount: {} is negative", self.amount));
        } else if self.amount.normalize().scale() > currency.minor_digits()
            || Money::from_decimal(self.amount, currency).is_err()
        {
            out.push(format!(
                "{at}.amount: {} is not an amount of {currency} ({} decimals at most)",
                self.amount,
                currency.minor_digits()
            ));
        }
        out
    }

    fn scope(&self) -> String {
        self.environment
            .as_ref()
            .map_or_else(|| "all".to_owned(), |e| format!("env:{e}"))
    }

    /// For people: "200.00 EUR a month in dev".
    pub fn describe(&self, currency: Currency) -> String {
        let amount = Money::from_decimal(self.amount, currency)
            .map_or_else(|_| self.amount.to_string(), |m| m.to_string());
        match &self.environment {
            Some(env) => format!("{amount} {} in {env}", self.period.per()),
            None => format!("{amount} {}", self.period.per()),
        }
    }
}

/// Checked spending limits.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limits {
    limits: Vec<SpendingLimit>,
}

/// A limit applied to one tenant at one time: its accounts and amount.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    /// What is left under it in the period.
    pub account: Account,
    /// What was funded in the period.
    pub set: Account,
    /// The task's part, under `tenant:<t>:held:<task>:` (this suffix).
    pub part: String,
    /// The limit's amount.
    pub amount: Money,
    /// For people.
    pub describe: String,
}

impl Limits {
    /// Checks `limits`, listing every problem at once.
    pub fn new(limits: Vec<SpendingLimit>, currency: Currency) -> Result<Self> {
        let mut problems = Vec::new();
        for (i, l) in limits.iter().enumerate() {
            problems.extend(l.problems(&format!("limits[{i}]"), currency));
        }
        for (i, a) in limits.iter().enumerate() {
            for (j, b) in limits.iter().enumerate().skip(i + 1) {
                if a.tenant == b.tenant && a.environment == b.environment && a.period == b.period {
                    problems.push(format!(
                        "limits[{j}]: the same tenant, environment and period as limits[{i}]"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(Self { limits })
        } else {
            Err(Error::InvalidLimits { problems })
        }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Whether any limit may apply to `tenant`.
    pub fn any_for(&self, tenant: &Tenant) -> bool {
        self.limits
            .iter()
            .any(|l| l.tenant.as_deref().is_none_or(|t| t == tenant.as_str()))
    }

    /// The limits that apply to a task of `tenant` in `environment` at `at`: the
    /// tenant's own, and the defaults it does not replace.
    pub fn applied(
        &self,
        tenant: &Tenant,
        environment: &str,
        at: DateTime<Utc>,
        currency: Currency,
    ) -> Result<Vec<Applied>> {
        let matches = |l: &&SpendingLimit| {
            l.environment.as_deref().is_none_or(|e| e == environment)
                && l.tenant.as_deref().is_none_or(|t| t == tenant.as_str())
        };
        let mut out = Vec::new();
        for l in self.limits.iter().filter(matches) {
            let replaced = l.tenant.is_none()
                && self.limits.iter().filter(matches).any(|o| {
                    o.tenant.is_some() && o.environment == l.environment && o.period == l.period
                });
            if replaced {
                continue;
            }
            let suffix = format!("{}:{}", l.scope(), l.period.id(at));
            out.push(Applied {
                account: Account::tenant(tenant, &format!("limit:{suffix}"))?,
                set: Account::tenant(tenant, &format!("limit-set:{suffix}"))?,
                part: format!("limit:{suffix}"),
                amount: Money::from_decimal(l.amount, currency)?,
                describe: l.describe(currency),
            });
        }
        Ok(out)
    }
}

/// The limit account in the current period for a task's part named `part`
/// (`limit:<scope>:<period>`), and the part's own period's account.
pub(crate) fn part_accounts(
    tenant: &Tenant,
    part: &str,
    now: DateTime<Utc>,
) -> Option<(Account, Account)> {
    let (scope, period) = part.strip_prefix("limit:")?.rsplit_once(':')?;
    let kind = LimitPeriod::of_id(period)?;
    let then = Account::tenant(tenant, &format!("limit:{scope}:{period}")).ok()?;
    let current = Account::tenant(tenant, &format!("limit:{scope}:{}", kind.id(now))).ok()?;
    Some((then, current))
}
