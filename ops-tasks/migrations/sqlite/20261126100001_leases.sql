-- Several coordinators on one store: task ownership, cancellation requests and
-- coordinator leases. Times are unix microseconds (UTC) of the writer's clock.
ALTER TABLE ops_tasks ADD COLUMN owner TEXT;
ALTER TABLE ops_tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;

-- What `claim` scans: unowned tasks waiting to run, best first.
CREATE INDEX IF NOT EXISTS ops_tasks_claimable ON ops_tasks (priority DESC, id)
    WHERE owner IS NULL AND status IN ('submitted', 'queued');
-- A coordinator's tasks. A final transition clears the owner, so owned tasks are
-- exactly the unfinished ones with an owner.
CREATE INDEX IF NOT EXISTS ops_tasks_owner ON ops_tasks (owner) WHERE owner IS NOT NULL;

CREATE TABLE IF NOT EXISTS ops_coordinators (
    owner        TEXT PRIMARY KEY NOT NULL,
    incarnation  TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    started_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- Databases from before leases: running and retrying tasks had no owner. Give them an
-- owner without a lease, so that the first coordinator to start takes them over
-- (re-attaching or retrying them) instead of leaving them unfinished forever.
UPDATE ops_tasks SET owner = 'pre-lease'
    WHERE owner IS NULL AND status IN ('running', 'retrying');
