//! The embedded ledger: SQLite, sharing its database (and its transactions) with an
//! `ops-events` outbox, so that a posting and its events commit together.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_events::sqlite::SqliteOutbox;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};

use super::{
    Account, Ledger, LedgerEntry, Posted, Posting, audit_from, balances_from, entries_from, one,
    plan, touched,
};
use crate::metering::{ReadEvent, UsageRow, usage_of, usage_rows};
use crate::{Currency, Error, Money, Result, UsageRecord, UsageStore};

/// [`Ledger`] on SQLite. Its tables (`ops_billing_postings`, `ops_billing_entries`,
/// `ops_billing_balances`) sit beside the outbox's; a posting's events go into that
/// outbox in the same transaction. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteLedger {
    outbox: SqliteOutbox,
    // SQLite has one writer; serialising this process's write transactions here
    // avoids busy retries between them.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteLedger {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or a plain
    /// path) with its outbox, and runs the ledger migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let outbox = SqliteOutbox::open(url).await?;
        Self::from_outbox(outbox).await
    }

    /// Uses the database of an existing outbox (for example the task history's), running
    /// the ledger migrations.
    pub async fn from_outbox(outbox: SqliteOutbox) -> Result<Self> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(outbox.pool()).await.map_err(store)?;
        Ok(Self {
            outbox,
            write_lock: Default::default(),
        })
    }

    /// The outbox that holds its events (an `EventBus`).
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    /// Takes this process's write lock and begins an IMMEDIATE transaction (SQLite's
    /// write lock at once, rather than a busy failure on the first write).
    async fn begin(
        &self,
    ) -> Result<(
        tokio::sync::MutexGuard<'_, ()>,
        sqlx::Transaction<'static, Sqlite>,
    )> {
        let guard = self.write_lock.lock().await;
        let tx = self
            .outbox
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store)?;
        Ok((guard, tx))
    }
}

/// Rows per multi-row statement (SQLite allows 32,766 bound values).
const CHUNK: usize = 1000;

impl SqliteLedger {
    /// Runs `select` — a `SELECT json_group_array(…) … IN (` — over `values` and parses
    /// its one row: sqlx hands SQLite rows over one at a time between threads, which
    /// costs more than reading them.
    async fn json_in<T: serde::de::DeserializeOwned>(
        conn: &mut SqliteConnection,
        select: &str,
        values: &[&str],
    ) -> Result<T> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(select);
        let mut list = q.separated(", ");
        for v in values {
            list.push_bind(*v);
        }
        q.push(")");
        let json: String = q
            .build_query_scalar()
            .fetch_one(&mut *conn)
            .await
            .map_err(store)?;
        serde_json::from_str(&json).map_err(store)
    }

    /// Reads the stored lines of `keys` that are posted.
    async fn existing(
        conn: &mut SqliteConnection,
        keys: &[&str],
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(CHUNK) {
            let rows: Vec<(String, String)> = Self::json_in(
                conn,
                "SELECT json_group_array(json_array(key, lines)) FROM ops_billing_postings \
                 WHERE key IN (",
                chunk,
            )
            .await?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Reads the stored balances of `accounts` (every currency).
    async fn stored_balances(
        conn: &mut SqliteConnection,
        accounts: &[Account],
    ) -> Result<HashMap<(Account, Currency), i64>> {
        let names: Vec<&str> = accounts.iter().map(Account::as_str).collect();
        let mut out = HashMap::new();
        for chunk in names.chunks(CHUNK) {
            let rows: Vec<super::BalanceRow> = Self::json_in(
                conn,
                "SELECT json_group_array(json_array(account, currency, balance)) \
                 FROM ops_billing_balances WHERE account IN (",
                chunk,
            )
            .await?;
            for (account, money) in balances_from(rows)? {
                out.insert((account, money.currency), money.amount);
            }
        }
        Ok(out)
    }

    /// Plans and writes a batch in the open transaction `conn`.
    async fn write_many(
        conn: &mut SqliteConnection,
        postings: &[Posting],
    ) -> Result<(Vec<Result<Posted>>, bool)> {
        let keys: Vec<&str> = postings.iter().map(|p| p.key.as_str()).collect();
        let existing = Self::existing(conn, &keys).await?;
        let start = Self::stored_balances(conn, &touched(postings)).await?;
        let planned = plan(postings, &existing, &start);
        if planned.accepted.is_empty() {
            return Ok((planned.results, false));
        }
        let first_seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM ops_billing_postings")
                .fetch_one(&mut *conn)
                .await
                .map_err(store)?;
        for (n, chunk) in planned.accepted.chunks(CHUNK).enumerate() {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO ops_billing_postings (key, seq, at, memo, lines, task_id, event_id) ",
            );
            q.push_values(chunk.iter().enumerate(), |mut row, (i, (p, lines))| {
                row.push_bind(p.key.as_str())
                    .push_bind(first_seq + (n * CHUNK + i) as i64)
                    .push_bind(p.at.timestamp_millis())
                    .push_bind(p.memo.as_str())
                    .push_bind(lines.as_str())
                    .push_bind(p.task_id.map(|t| t.to_string()))
                    .push_bind(p.event_id.map(|e| e.to_string()));
            });
            q.build().execute(&mut *conn).await.map_err(store)?;
        }
        let entries: Vec<(&str, usize, &super::Entry)> = planned
            .accepted
            .iter()
            .flat_map(|(p, _)| {
                p.entries
                    .iter()
                    .enumerate()
                    .map(|(line, e)| (p.key.as_str(), line, e))
            })
            .collect();
        for chunk in entries.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO ops_billing_entries (posting, line, account, currency, amount) ",
            );
            q.push_values(chunk, |mut row, (key, line, e)| {
                row.push_bind(*key)
                    .push_bind(*line as i64)
                    .push_bind(e.account.as_str())
                    .push_bind(e.amount.currency.code())
                    .push_bind(e.amount.amount);
            });
            q.build().execute(&mut *conn).await.map_err(store)?;
        }
        let balances: Vec<_> = planned.balances.iter().collect();
        for chunk in balances.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO ops_billing_balances (account, currency, balance) ");
            q.push_values(chunk, |mut row, ((account, currency), balance)| {
                row.push_bind(account.as_str())
                    .push_bind(currency.code())
                    .push_bind(**balance);
            });
            q.push(" ON CONFLICT (account, currency) DO UPDATE SET balance = excluded.balance");
            q.build().execute(&mut *conn).await.map_err(store)?;
        }
        let events: Vec<ops_core::Event> = planned
            .accepted
            .iter()
            .flat_map(|(p, _)| p.events.iter().cloned())
            .collect();
        if !events.is_empty() {
            SqliteOutbox::append(conn, &events).await?;
        }
        Ok((planned.results, !events.is_empty()))
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn post_many(&self, postings: &[Posting]) -> Result<Vec<Result<Posted>>> {
        if postings.is_empty() {
            return Ok(Vec::new());
        }
        let (_guard, mut tx) = self.begin().await?;
        let (results, notify) = Self::write_many(&mut tx, postings).await?;
        tx.commit().await.map_err(store)?;
        if notify {
            self.outbox.notify();
        }
        Ok(results)
    }

    async fn balances_of(&self, accounts: &[Account], currency: Currency) -> Result<Vec<Money>> {
        let mut conn = self.outbox.pool().acquire().await.map_err(store)?;
        let stored = Self::stored_balances(&mut conn, accounts).await?;
        Ok(accounts
            .iter()
            .map(|a| {
                Money::new(
                    stored.get(&(a.clone(), currency)).copied().unwrap_or(0),
                    currency,
                )
            })
            .collect())
    }

    async fn post(&self, posting: &Posting) -> Result<Posted> {
        one(self.post_many(std::slice::from_ref(posting)).await?)
    }

    async fn balance(&self, account: &Account, currency: Currency) -> Result<Money> {
        let balance: Option<i64> = sqlx::query_scalar(
            "SELECT balance FROM ops_billing_balances WHERE account = ? AND currency = ?",
        )
        .bind(account.as_str())
        .bind(currency.code())
        .fetch_optional(self.outbox.pool())
        .await
        .map_err(store)?;
        Ok(Money::new(balance.unwrap_or(0), currency))
    }

    async fn balances_under(&self, prefix: &str) -> Result<Vec<(Account, Money)>> {
        // A range on the primary key (BINARY collation): every name with the prefix.
        let rows = sqlx::query_as(
            "SELECT account, currency, balance FROM ops_billing_balances \
             WHERE account >= ? AND account < ? ORDER BY account, currency",
        )
        .bind(prefix)
        .bind(format!("{prefix}\u{10ffff}"))
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
             WHERE e.account = ? ORDER BY p.seq, e.line",
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
        let (_guard, mut tx) = self.begin().await?;
        SqliteOutbox::append(&mut tx, events).await?;
        tx.commit().await.map_err(store)?;
        self.outbox.notify();
        Ok(())
    }

    async fn audit(&self) -> Result<Vec<String>> {
        let pool = self.outbox.pool();
        let unbalanced = sqlx::query_as(
            "SELECT posting, currency, SUM(amount) FROM ops_billing_entries \
             GROUP BY posting, currency HAVING SUM(amount) != 0",
        )
        .fetch_all(pool)
        .await
        .map_err(store)?;
        let sums = sqlx::query_as(
            "SELECT account, currency, SUM(amount) FROM ops_billing_entries \
             GROUP BY account, currency",
        )
        .fetch_all(pool)
        .await
        .map_err(store)?;
        audit_from(unbalanced, sums, self.balances().await?)
    }
}

#[async_trait]
impl UsageStore for SqliteLedger {
    async fn record(&self, records: &[UsageRecord]) -> Result<usize> {
        let rows = usage_rows(records)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let (_guard, mut tx) = self.begin().await?;
        let mut new = 0;
        for chunk in rows.chunks(CHUNK) {
            // The events of the chunk already stored (none, normally); in this
            // transaction nobody else inserts.
            let ids: Vec<&str> = chunk.iter().map(|((id, ..), _)| id.as_str()).collect();
            let stored: std::collections::HashSet<String> = Self::json_in(
                &mut tx,
                "SELECT json_group_array(event_id) FROM ops_billing_usage_events \
                 WHERE event_id IN (",
                &ids,
            )
            .await?;
            let fresh: Vec<&(UsageRow, usize)> = chunk
                .iter()
                .filter(|((event_id, ..), _)| !stored.contains(event_id))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO ops_billing_usage_events (event_id, tenant, at, records) ",
            );
            q.push_values(&fresh, |mut row, ((event_id, tenant, at, json), _)| {
                row.push_bind(event_id.as_str())
                    .push_bind(tenant.as_str())
                    .push_bind(*at)
                    .push_bind(json.as_str());
            });
            // A repeated event within the chunk is stored once.
            q.push(" ON CONFLICT (event_id) DO NOTHING");
            q.build().execute(&mut *tx).await.map_err(store)?;
            new += fresh.iter().map(|(_, n)| n).sum::<usize>();
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
        // One row holding them all (see `stored_balances`), each event's records as
        // JSON in it (not a string to parse again).
        let json: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(event_id, tenant, at, json(records))) FROM \
             (SELECT event_id, tenant, at, records FROM ops_billing_usage_events \
             WHERE tenant = ? AND at >= ? AND at < ? ORDER BY at, event_id)",
        )
        .bind(tenant)
        .bind(from.timestamp_millis())
        .bind(to.timestamp_millis())
        .fetch_one(self.outbox.pool())
        .await
        .map_err(store)?;
        let rows: Vec<(String, String, i64, ReadEvent)> =
            serde_json::from_str(&json).map_err(store)?;
        let mut out = Vec::new();
        for (event_id, tenant, at, stored) in rows {
            out.extend(usage_of(&event_id, tenant, at, stored)?);
        }
        out.sort_by(|a, b| (a.at, a.event_id, &a.meter).cmp(&(b.at, b.event_id, &b.meter)));
        Ok(out)
    }
}

fn store(e: impl Into<ops_events::BoxError>) -> Error {
    super::store("sqlite", e)
}

#[async_trait]
impl crate::InvoiceStore for SqliteLedger {
    async fn keep(&self, invoice: &crate::Invoice) -> Result<crate::Kept> {
        let document = crate::invoice::document(invoice)?;
        let (from, to) = (
            invoice.from.timestamp_millis(),
            invoice.to.timestamp_millis(),
        );
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO ops_billing_invoices (tenant, period_from, period_to, document) \
             VALUES (?, ?, ?, ?)",
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
            "SELECT document FROM ops_billing_invoices WHERE tenant = ? \
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

impl SqliteLedger {
    /// The document of the invoice kept for `tenant` and the period (in milliseconds).
    async fn kept_document(&self, tenant: &str, from: i64, to: i64) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT document FROM ops_billing_invoices WHERE tenant = ? AND period_from = ? AND period_to = ?")
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_optional(self.outbox.pool())
            .await
            .map_err(store)
    }
}
