-- The double-entry ledger: postings (idempotent by key), their entries, and each
-- account's balance kept in the same transaction (derived from the entries; `audit`
-- recomputes and compares).
CREATE TABLE IF NOT EXISTS ops_billing_postings (
    key TEXT PRIMARY KEY NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    memo TEXT NOT NULL,
    lines TEXT NOT NULL,
    task_id TEXT,
    event_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS ops_billing_postings_seq ON ops_billing_postings (seq);

CREATE TABLE IF NOT EXISTS ops_billing_entries (
    posting TEXT NOT NULL REFERENCES ops_billing_postings (key),
    line INTEGER NOT NULL,
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (posting, line)
);
CREATE INDEX IF NOT EXISTS ops_billing_entries_account ON ops_billing_entries (account, currency);

CREATE TABLE IF NOT EXISTS ops_billing_balances (
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance INTEGER NOT NULL,
    PRIMARY KEY (account, currency)
);
