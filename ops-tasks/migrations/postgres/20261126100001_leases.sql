-- Several coordinators on one store: task ownership, cancellation requests and
-- coordinator leases, PostgreSQL dialect. Lease times are the database's clock, so
-- that coordinators on hosts with skewed clocks agree.
ALTER TABLE ops_tasks ADD COLUMN IF NOT EXISTS owner TEXT;
ALTER TABLE ops_tasks ADD COLUMN IF NOT EXISTS cancel_requested BOOLEAN NOT NULL DEFAULT false;

-- What `claim` scans: unowned tasks waiting to run, best first.
CREATE INDEX IF NOT EXISTS ops_tasks_claimable ON ops_tasks (priority DESC, id)
    WHERE owner IS NULL AND status IN ('submitted', 'queued');
-- A coordinator's tasks. A final transition clears the owner, so owned tasks are
-- exactly the unfinished ones with an owner.
CREATE INDEX IF NOT EXISTS ops_tasks_owner ON ops_tasks (owner) WHERE owner IS NOT NULL;

CREATE TABLE IF NOT EXISTS ops_coordinators (
    owner        TEXT        PRIMARY KEY,
    incarnation  TEXT        NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL
);
