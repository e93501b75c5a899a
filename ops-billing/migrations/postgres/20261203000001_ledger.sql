-- The double-entry ledger: postings (idempotent by key), their entries, and each
-- account's balance kept in the same transaction (derived from the entries; `audit`
-- recomputes and compares).
CREATE TABLE IF NOT EXISTS ops_billing_postings (
    key TEXT PRIMARY KEY,
    seq BIGSERIAL NOT NULL UNIQUE,
    at BIGINT NOT NULL,
    memo TEXT NOT NULL,
    lines TEXT NOT NULL,
    task_id TEXT,
    event_id TEXT
);

CREATE TABLE IF NOT EXISTS ops_billing_entries (
    posting TEXT NOT NULL REFERENCES ops_billing_postings (key),
    line INTEGER NOT NULL,
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (posting, line)
);
CREATE INDEX IF NOT EXISTS ops_billing_entries_account ON ops_billing_entries (account, currency);

CREATE TABLE IF NOT EXISTS ops_billing_balances (
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance BIGINT NOT NULL,
    PRIMARY KEY (account, currency)
);
