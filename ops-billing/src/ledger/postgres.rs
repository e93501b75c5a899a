//! The scale-out ledger: PostgreSQL, sharing its database (and its transactions) with an
//! `ops-events` outbox, for several processes posting at once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_events::postgres::PostgresOutbox;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, QueryBuilder};

use super::{
    Account, Ledger, LedgerEntry, Posted, Posting, audit_from, balances_from, entries_from,
    net_by_account,
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

#[async_trait]
impl Ledger for PostgresLedger {
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
