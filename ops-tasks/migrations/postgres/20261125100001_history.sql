-- Task history, PostgreSQL dialect of migrations/sqlite (same versions): one row per
-- task, its events (transitions are events that change status) and its outputs.
-- Labels are a JSONB column with a GIN index (no label table as on SQLite). Child rows
-- carry no foreign keys: pruning deletes them explicitly, by task id, which is cheaper
-- than cascades and checks on every insert.
CREATE TABLE IF NOT EXISTS ops_tasks (
    id            UUID        PRIMARY KEY,   -- UUIDv7: sorts by submission time
    tenant        TEXT        NOT NULL,
    environment   TEXT        NOT NULL,
    template      TEXT        NOT NULL,
    status        TEXT        NOT NULL,
    reason        TEXT,
    message       TEXT,
    exit_code     INTEGER,
    priority      INTEGER     NOT NULL,
    attempt       INTEGER     NOT NULL,
    max_attempts  INTEGER     NOT NULL,
    labels        JSONB       NOT NULL,
    parameters    JSON        NOT NULL,
    spec          JSON        NOT NULL,      -- rendered LaunchSpec
    task_dir      TEXT        NOT NULL,      -- spec.task_dir, for pruning without parsing spec
    retry         JSON        NOT NULL,      -- RetryPolicy
    run_handle    JSON,                      -- executor's RunHandle
    wall_secs     DOUBLE PRECISION NOT NULL DEFAULT 0,
    cpu_secs      DOUBLE PRECISION NOT NULL DEFAULT 0,
    peak_memory   BIGINT      NOT NULL DEFAULT 0,
    gpu_secs      DOUBLE PRECISION NOT NULL DEFAULT 0,
    submitted_at  TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    not_before    TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- A tenant's latest tasks, optionally by status or template (keyset pages on id).
-- A tenant's newest tasks; it carries status and labels so that label queries filter
-- the tenant's newest tasks from the index alone (index-only scan) and read only the
-- rows of the page.
CREATE INDEX IF NOT EXISTS ops_tasks_tenant ON ops_tasks (tenant, id DESC) INCLUDE (status, labels);
CREATE INDEX IF NOT EXISTS ops_tasks_tenant_status ON ops_tasks (tenant, status, id DESC);
CREATE INDEX IF NOT EXISTS ops_tasks_tenant_template ON ops_tasks (tenant, template, id DESC);
CREATE INDEX IF NOT EXISTS ops_tasks_tenant_submitted ON ops_tasks (tenant, submitted_at);

CREATE INDEX IF NOT EXISTS ops_tasks_unfinished ON ops_tasks (id) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS ops_tasks_finished ON ops_tasks (finished_at) WHERE finished_at IS NOT NULL;

-- Every event about a task, in order. A row with `to_status` set is a transition.
CREATE TABLE IF NOT EXISTS ops_task_events (
    task_id     UUID        NOT NULL,
    seq         BIGINT      GENERATED ALWAYS AS IDENTITY,
    event_id    TEXT        NOT NULL,
    type        TEXT        NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    reason      TEXT,
    at          TIMESTAMPTZ NOT NULL,
    event       TEXT        NOT NULL,      -- the CloudEvent, structured JSON
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE IF NOT EXISTS ops_task_outputs (
    task_id    UUID        NOT NULL,
    path       TEXT        NOT NULL,
    attempt    INTEGER     NOT NULL,
    size       BIGINT      NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, path)
);
