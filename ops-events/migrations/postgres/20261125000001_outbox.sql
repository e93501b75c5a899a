-- The event stream (outbox), PostgreSQL dialect of migrations/sqlite (same versions).
--
-- A BIGSERIAL `seq` is taken when a row is inserted but becomes visible when its
-- transaction commits, so seqs commit out of order and a cursor on seq alone could
-- skip events. Rows therefore carry their (top-level) transaction id: readers only
-- take rows whose transaction is older than every transaction still running in this
-- database (at most pg_snapshot_xmin(pg_current_snapshot())), ordered by (txid, seq).
-- No earlier row can commit after such a row, so a (txid, seq) cursor never skips.
CREATE TABLE IF NOT EXISTS ops_events (
    seq         BIGSERIAL   PRIMARY KEY,
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id    TEXT        NOT NULL UNIQUE,
    type        TEXT        NOT NULL,
    subject     TEXT,
    payload     TEXT        NOT NULL, -- the CloudEvent, structured JSON
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS ops_events_order ON ops_events (txid, seq);

-- Durable named subscriptions: every event up to (cursor_txid, cursor_seq) was
-- delivered at least once. A subscription created with StartFrom::New keeps the
-- snapshot of its creation until its cursor has passed it: events visible in that
-- snapshot were published before it and are skipped.
CREATE TABLE IF NOT EXISTS ops_event_subscriptions (
    name           TEXT        PRIMARY KEY,
    cursor_txid    xid8        NOT NULL,
    cursor_seq     BIGINT      NOT NULL,
    start_snapshot pg_snapshot,
    ack_wait_ms    BIGINT      NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Deliveries handed out and not acknowledged yet; due again once deliver_after has
-- passed (database clock, so that coordinators on several hosts agree).
CREATE TABLE IF NOT EXISTS ops_event_deliveries (
    subscription  TEXT        NOT NULL REFERENCES ops_event_subscriptions (name) ON DELETE CASCADE,
    seq           BIGINT      NOT NULL,
    attempts      INTEGER     NOT NULL,
    deliver_after TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subscription, seq)
);

CREATE INDEX IF NOT EXISTS ops_event_deliveries_due
    ON ops_event_deliveries (subscription, deliver_after);

-- Events a function gave up on, kept with the last error until replayed.
CREATE TABLE IF NOT EXISTS ops_event_dead_letters (
    function   TEXT        NOT NULL,
    event_id   TEXT        NOT NULL,
    payload    TEXT        NOT NULL,
    error      TEXT        NOT NULL,
    attempts   INTEGER     NOT NULL,
    permanent  BOOLEAN     NOT NULL,
    failed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (function, event_id)
);
