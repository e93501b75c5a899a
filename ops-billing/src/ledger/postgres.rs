//! The scale-out ledger: PostgreSQL, sharing its database (and its transactions) with an
//! `ops-events` outbox, for several processes posting at once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_events::postgres::PostgresOutbox;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, QueryBuilder};

use std::collections::HashMap;

use super::{
    Account, Ledger, LedgerEntry, Posted, Posting, audit_from, balances_from, entries_from,
    net_by_account, plan, touched_pairs,
};
use crate::metering::{UsageRow, usage_from, usage_rows};
use crate::{Currency, Error, Money, Result, UsageRecord, UsageStore};

/// [`Ledger`] on PostgreSQL. Concurrent postings are safe: a key is claimed with
/// `INSERT … ON CONFLICT DO NOTHING` (a second poster of the same key waits for the
/// first and then compares entries), and balance rows are updated in one order, so
/// postings on the same accounts cannot deadlock. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresLedger {
    outbox: PostgresOutbox,
}

impl PostgresLedger {
    /// Connects to the database at `url` (`postgres://…`) with its outbox, and runs the
    /// ledger migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let outbox = PostgresOutbox::connect(url).await?;
        Self::from_outbox(outbox).await
    }

    /// Uses the database of an existing outbox (for example the task history's),
    /// running the ledger migrations.
    pub async fn from_outbox(outbox: PostgresOutbox) -> Result<Self> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(outbox.pool()).await.map_err(store)?;
        Ok(Self { outbox })
    }

    /// The outbox that holds its events (an `EventBus`).
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }

    async fn write(conn: &mut PgConnection, posting: &Posting) -> Result<Posted> {
        let lines = posting.lines();
        let claimed = sqlx::query(
            "INSERT INTO ops_billing_postings (key, at, memo, lines, task_id, event_id) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&posting.key)
        .bind(posting.at.timestamp_millis())
        .bind(&posting.memo)
        .bind(&lines)
        .bind(posting.task_id.map(|t| t.to_string()))
        .bind(posting.event_id.map(|e| e.to_string()))
        .execute(&mut *conn)
        .await
        .map_err(store)?
        .rows_affected();
        if claimed == 0 {
            let existing: String =
                sqlx::query_scalar("SELECT lines FROM ops_billing_postings WHERE key = $1")
                    .bind(&posting.key)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(store)?;
            return if existing == lines {
                Ok(Posted::AlreadyPosted)
            } else {
                Err(Error::PostingConflict {
                    key: posting.key.clone(),
                })
            };
        }
        for (line, e) in posting.entries.iter().enumerate() {
            sqlx::query(
                "INSERT INTO ops_billing_entries (posting, line, account, currency, amount) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&posting.key)
            .bind(line as i32)
            .bind(e.account.as_str())
            .bind(e.amount.currency.code())
            .bind(e.amount.amount)
            .execute(&mut *conn)
            .await
            .map_err(store)?;
        }
        for ((account, currency), amount) in net_by_account(posting)? {
            sqlx::query(
                "INSERT INTO ops_billing_balances (account, currency, balance) VALUES ($1, $2, $3) \
                 ON CONFLICT (account, currency) \
                 DO UPDATE SET balance = ops_billing_balances.balance + excluded.balance",
            )
            .bind(account.as_str())
            .bind(currency.code())
            .bind(amount)
            .execute(&mut *conn)
            .await
            .map_err(store)?;
        }
        // Floors are checked after the balances changed, in the same transaction (on
        // Postgres the updated rows stay locked until commit), so concurrent postings
        // cannot together pass a floor.
        for (account, floor) in &posting.floors {
            let after: Option<i64> = sqlx::query_scalar(
                "SELECT balance FROM ops_billing_balances WHERE account = $1 AND currency = $2",
            )
            .bind(account.as_str())
            .bind(floor.currency.code())
            .fetch_optional(&mut *conn)
            .await
            .map_err(store)?;
            let after = after.unwrap_or(0);
            if after < floor.amount {
                return Err(posting.insufficient(account, *floor, after));
            }
        }
        if !posting.events.is_empty() {
            PostgresOutbox::append(conn, &posting.events).await?;
        }
        Ok(Posted::New)
    }
}

impl PostgresLedger {
    /// Plans and writes a batch in the open transaction `conn`: the balance rows it
    /// touches are locked first, in one order (so batches and single postings on the
    /// same accounts queue rather than deadlock), then decided in order and written
    /// with one statement per table.
    async fn write_many(
        conn: &mut PgConnection,
        postings: &[Posting],
    ) -> Result<Vec<Result<Posted>>> {
        let pairs = touched_pairs(postings);
        let (accounts, currencies): (Vec<&str>, Vec<String>) = pairs
            .into_iter()
            .map(|(a, c)| (a.as_str(), c.code().to_owned()))
            .unzip();
        sqlx::query(
            "INSERT INTO ops_billing_balances (account, currency, balance) \
             SELECT a, c, 0 FROM UNNEST($1::text[], $2::text[]) AS v(a, c) \
             ORDER BY a, c ON CONFLICT (account, currency) DO NOTHING",
        )
        .bind(&accounts)
        .bind(&currencies)
        .execute(&mut *conn)
        .await
        .map_err(store)?;
        let rows: Vec<super::BalanceRow> = sqlx::query_as(
            "SELECT b.account, b.currency, b.balance FROM ops_billing_balances b \
             JOIN UNNEST($1::text[], $2::text[]) AS v(a, c) \
             ON b.account = v.a AND b.currency = v.c \
             ORDER BY b.account, b.currency FOR UPDATE OF b",
        )
        .bind(&accounts)
        .bind(&currencies)
        .fetch_all(&mut *conn)
        .await
        .map_err(store)?;
        let start: HashMap<(Account, Currency), i64> = balances_from(rows)?
            .into_iter()
            .map(|(a, m)| ((a, m.currency), m.amount))
            .collect();
        let keys: Vec<&str> = postings.iter().map(|p| p.key.as_str()).collect();
        let existing: HashMap<String, String> = sqlx::query_as(
            "SELECT key, lines FROM ops_billing_postings WHERE key = ANY($1::text[])",
        )
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(store)?
        .into_iter()
        .collect();
        let planned = plan(postings, &existing, &start);
        if planned.accepted.is_empty() {
            return Ok(planned.results);
        }
        let accepted = &planned.accepted;
        let keys: Vec<&str> = accepted.iter().map(|(p, _)| p.key.as_str()).collect();
        let ats: Vec<i64> = accepted
            .iter()
            .map(|(p, _)| p.at.timestamp_millis())
            .collect();
        let memos: Vec<&str> = accepted.iter().map(|(p, _)| p.memo.as_str()).collect();
        let lines: Vec<&str> = accepted.iter().map(|(_, l)| l.as_str()).collect();
        let tasks: Vec<Option<String>> = accepted
            .iter()
            .map(|(p, _)| p.task_id.map(|t| t.to_string()))
            .collect();
        let sources: Vec<Option<String>> = accepted
            .iter()
            .map(|(p, _)| p.event_id.map(|e| e.to_string()))
            .collect();
        // In the batch's order (`seq` follows it).
        let inserted = sqlx::query(
            "INSERT INTO ops_billing_postings (key, at, memo, lines, task_id, event_id) \
             SELECT k, a, m, l, t, e FROM UNNEST($1::text[], $2::bigint[], $3::text[], \
             $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS v(k, a, m, l, t, e, n) \
             ORDER BY n ON CONFLICT (key) DO NOTHING",
        )
        .bind(&keys)
        .bind(&ats)
        .bind(&memos)
        .bind(&lines)
        .bind(&tasks)
        .bind(&sources)
        .execute(&mut *conn)
        .await
        .map_err(store)?
        .rows_affected();
        if inserted as usize != accepted.len() {
            // Another writer posted one of these keys since they were read: nothing of
            // the batch is kept, and a retry sees those postings.
            return Err(store(format!(
                "{} of the batch's postings were posted concurrently; retry the batch",
                accepted.len() - inserted as usize
            )));
        }
        let mut e_keys = Vec::new();
        let mut e_lines = Vec::new();
        let mut e_accounts = Vec::new();
        let mut e_currencies = Vec::new();
        let mut e_amounts = Vec::new();
        for (p, _) in accepted {
            for (line, e) in p.entries.iter().enumerate() {
                e_keys.push(p.key.as_str());
                e_lines.push(line as i32);
                e_accounts.push(e.account.as_str());
                e_currencies.push(e.amount.currency.code());
                e_amounts.push(e.amount.amount);
            }
        }
        sqlx::query(
            "INSERT INTO ops_billing_entries (posting, line, account, currency, amount) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[])",
        )
        .bind(&e_keys)
        .bind(&e_lines)
        .bind(&e_accounts)
        .bind(&e_currencies)
        .bind(&e_amounts)
        .execute(&mut *conn)
        .await
        .map_err(store)?;
        let mut b_accounts = Vec::new();
        let mut b_currencies = Vec::new();
        let mut b_balances = Vec::new();
        for ((account, currency), balance) in &planned.balances {
            b_accounts.push(account.as_str());
            b_currencies.push(currency.code());
            b_balances.push(*balance);
        }
        sqlx::query(
            "UPDATE ops_billing_balances b SET balance = v.balance \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS v(account, currency, balance) \
             WHERE b.account = v.account AND b.currency = v.currency",
        )
        .bind(&b_accounts)
        .bind(&b_currencies)
        .bind(&b_balances)
        .execute(&mut *conn)
        .await
        .map_err(store)?;
        let events: Vec<ops_core::Event> = accepted
            .iter()
            .flat_map(|(p, _)| p.events.iter().cloned())
            .collect();
        if !events.is_empty() {
            PostgresOutbox::append(conn, &events).await?;
        }
        Ok(planned.results)
    }
}

#[async_trait]
impl Ledger for PostgresLedger {
    async fn post_many(&self, postings: &[Posting]) -> Result<Vec<Result<Posted>>> {
        if postings.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.outbox.pool().begin().await.map_err(store)?;
        let results = Self::write_many(&mut tx, postings).await?;
        tx.commit().await.map_err(store)?;
        Ok(results)
    }

    async fn balances_of(&self, accounts: &[Account], currency: Currency) -> Result<Vec<Money>> {
        let names: Vec<&str> = accounts.iter().map(Account::as_str).collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT account, balance FROM ops_billing_balances \
             WHERE account = ANY($1::text[]) AND currency = $2",
        )
        .bind(&names)
        .bind(currency.code())
        .fetch_all(self.outbox.pool())
        .await
        .map_err(store)?;
        let found: HashMap<String, i64> = rows.into_iter().collect();
        Ok(accounts
            .iter()
            .map(|a| Money::new(found.get(a.as_str()).copied().unwrap_or(0), currency))
            .collect())
    }

    async fn post(&self, posting: &Posting) -> Result<Posted> {
        posting.check()?;
        let mut tx = self.outbox.pool().begin().await.map_err(store)?;
        // An error drops `tx`, which rolls everything back: nothing half-posted.
        let posted = Self::write(&mut tx, posting).await?;
        if posted == Posted::New {
            tx.commit().await.map_err(store)?;
        }
        Ok(posted)
    }

    async fn balance(&self, account: &Account, currency: Currency) -> Result<Money> {
        let balance: Option<i64> = sqlx::query_scalar(
            "SELECT balance FROM ops_billing_balances WHERE account = $1 AND currency = $2",
        )
        .bind(account.as_str())
        .bind(currency.code())
        .fetch_optional(self.outbox.pool())
        .await
        .map_err(store)?;
        Ok(Money::new(balance.unwrap_or(0), currency))
    }

    async fn balances_under(&self, prefix: &str) -> Result<Vec<(Account, Money)>> {
        // Byte order ("C"), whatever the database's collation: every name with the
        // prefix.
        let rows = sqlx::query_as(
            "SELECT account, currency, balance FROM ops_billing_balances \
             WHERE starts_with(account, $1) ORDER BY account COLLATE \"C\", currency",
        )
        .bind(prefix)
        .fetch_all(self.outbox.pool())
        .await
        .map_err(store)?;
        balances_from(rows)
    }

    async fn balances(&self) -> Result<Vec<(Account, Money)>> {
        let rows = sqlx::query_as(
            "SELECT account, currency, balance FROM ops_billing_balances \
             ORDER BY account, currency",
        )
        .fetch_all(self.outbox.pool())
        .await
        .map_err(store)?;
        balances_from(rows)
    }

    async fn entries(&self, account: &Account) -> Result<Vec<LedgerEntry>> {
        let rows = sqlx::query_as(
            "SELECT p.key, p.at, p.memo, e.currency, e.amount, p.task_id, p.event_id \
             FROM ops_billing_entries e JOIN ops_billing_postings p ON p.key = e.posting \
             WHERE e.account = $1 ORDER BY p.seq, e.line",
        )
        .bind(account.as_str())
        .fetch_all(self.outbox.pool())
        .await
        .map_err(store)?;
        entries_from(rows)
    }

    async fn publish(&self, events: &[ops_core::Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.outbox.pool().begin().await.map_err(store)?;
        PostgresOutbox::append(&mut tx, events).await?;
        tx.commit().await.map_err(store)?;
        self.outbox.notify();
        Ok(())
    }

    async fn audit(&self) -> Result<Vec<String>> {
        let pool = self.outbox.pool();
        let unbalanced = sqlx::query_as(
            "SELECT posting, currency, SUM(amount)::BIGINT FROM ops_billing_entries \
             GROUP BY posting, currency HAVING SUM(amount) <> 0",
        )
        .fetch_all(pool)
        .await
        .map_err(store)?;
        let sums = sqlx::query_as(
            "SELECT account, currency, SUM(amount)::BIGINT FROM ops_billing_entries \
             GROUP BY account, currency",
        )
        .fetch_all(pool)
        .await
        .map_err(store)?;
        audit_from(unbalanced, sums, self.balances().await?)
    }
}

#[async_trait]
impl UsageStore for PostgresLedger {
    async fn record(&self, records: &[UsageRecord]) -> Result<usize> {
        let rows = usage_rows(records)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.outbox.pool().begin().await.map_err(store)?;
        let mut new = 0;
        for chunk in rows.chunks(1000) {
            let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO ops_billing_usage_events (event_id, tenant, at, records) ",
            );
            q.push_values(chunk, |mut row, ((event_id, tenant, at, json), _)| {
                row.push_bind(event_id.as_str())
                    .push_bind(tenant.as_str())
                    .push_bind(*at)
                    .push_bind(json.as_str());
            });
            q.push(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
            let inserted: Vec<String> = q
                .build_query_scalar()
                .fetch_all(&mut *tx)
                .await
                .map_err(store)?;
            new += crate::metering::count_new(chunk, inserted);
        }
        tx.commit().await.map_err(store)?;
        Ok(new)
    }

    async fn records(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>> {
        let rows: Vec<UsageRow> = sqlx::query_as(
            "SELECT event_id, tenant, at, records FROM ops_billing_usage_events \
             WHERE tenant = $1 AND at >= $2 AND at < $3 ORDER BY at, event_id",
        )
        .bind(tenant)
        .bind(from.timestamp_millis())
        .bind(to.timestamp_millis())
        .fetch_all(self.outbox.pool())
        .await
        .map_err(store)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(usage_from(row)?);
        }
        out.sort_by(|a, b| (a.at, a.event_id, &a.meter).cmp(&(b.at, b.event_id, &b.meter)));
        Ok(out)
    }
}

fn store(e: impl Into<ops_events::BoxError>) -> Error {
    super::store("postgres", e)
}

#[async_trait]
impl crate::InvoiceStore for PostgresLedger {
    async fn keep(&self, invoice: &crate::Invoice) -> Result<crate::Kept> {
        let document = crate::invoice::document(invoice)?;
        let (from, to) = (
            invoice.from.timestamp_millis(),
            invoice.to.timestamp_millis(),
        );
        let inserted = sqlx::query(
            "INSERT INTO ops_billing_invoices (tenant, period_from, period_to, document) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&invoice.tenant)
        .bind(from)
        .bind(to)
        .bind(&document)
        .execute(self.outbox.pool())
        .await
        .map_err(store)?
        .rows_affected();
        if inserted == 1 {
            return Ok(crate::Kept::New);
        }
        // Not inserted: one is kept.
        let stored = self
            .kept_document(&invoice.tenant, from, to)
            .await?
            .ok_or_else(|| store(sqlx::Error::RowNotFound))?;
        crate::invoice::kept_again(invoice, &document, &stored)
    }

    async fn kept(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<crate::Invoice>> {
        let stored = self
            .kept_document(tenant, from.timestamp_millis(), to.timestamp_millis())
            .await?;
        stored
            .map(|d| crate::invoice::from_document(tenant, &d))
            .transpose()
    }

    async fn kept_of(&self, tenant: &str) -> Result<Vec<crate::Invoice>> {
        let stored: Vec<String> = sqlx::query_scalar(
            "SELECT document FROM ops_billing_invoices WHERE tenant = $1 \
             ORDER BY period_from, period_to",
        )
        .bind(tenant)
        .fetch_all(self.outbox.pool())
        .await
        .map_err(store)?;
        stored
            .iter()
            .map(|d| crate::invoice::from_document(tenant, d))
            .collect()
    }
}

impl PostgresLedger {
    /// The document of the invoice kept for `tenant` and the period (in milliseconds).
    async fn kept_document(&self, tenant: &str, from: i64, to: i64) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT document FROM ops_billing_invoices WHERE tenant = $1 AND period_from = $2 AND period_to = $3")
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_optional(self.outbox.pool())
            .await
            .map_err(store)
    }
}
