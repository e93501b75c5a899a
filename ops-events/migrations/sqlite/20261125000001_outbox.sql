-- The event stream (outbox). `seq` never goes backwards and is never reused
-- (AUTOINCREMENT), so a subscription cursor can never skip an event.
CREATE TABLE IF NOT EXISTS ops_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    subject     TEXT,
    payload     TEXT    NOT NULL, -- the CloudEvent, structured JSON
    recorded_at INTEGER NOT NULL  -- unix milliseconds
);

-- Durable named subscriptions: every event with seq <= cursor was delivered at least once.
CREATE TABLE IF NOT EXISTS ops_event_subscriptions (
    name        TEXT    PRIMARY KEY NOT NULL,
    cursor      INTEGER NOT NULL,
    ack_wait_ms INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Deliveries handed out and not acknowledged yet. A row is due again once
-- deliver_after (unix milliseconds) has passed.
CREATE TABLE IF NOT EXISTS ops_event_deliveries (
    subscription  TEXT    NOT NULL REFERENCES ops_event_subscriptions (name) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    deliver_after INTEGER NOT NULL,
    PRIMARY KEY (subscription, seq)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS ops_event_deliveries_due
    ON ops_event_deliveries (subscription, deliver_after);

-- Events a function gave up on, kept with the last error until replayed.
CREATE TABLE IF NOT EXISTS ops_event_dead_letters (
    function   TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    error      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    permanent  INTEGER NOT NULL,
    failed_at  INTEGER NOT NULL, -- unix milliseconds
    PRIMARY KEY (function, event_id)
) WITHOUT ROWID;
