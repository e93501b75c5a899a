-- Task history: one row per task, its events (transitions are events that change status),
-- its outputs and its labels (for label queries). Times are unix microseconds (UTC).
CREATE TABLE IF NOT EXISTS ops_tasks (
    id            TEXT PRIMARY KEY NOT NULL,   -- UUIDv7: sorts by submission time
    tenant        TEXT NOT NULL,
    environment   TEXT NOT NULL,
    template      TEXT NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT,
    message       TEXT,
    exit_code     INTEGER,
    priority      INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    labels        TEXT NOT NULL,               -- JSON object
    parameters    TEXT NOT NULL,               -- JSON
    spec          TEXT NOT NULL,               -- rendered LaunchSpec, JSON
    retry         TEXT NOT NULL,               -- RetryPolicy, JSON
    run_handle    TEXT,                        -- executor's RunHandle, JSON
    wall_secs     REAL NOT NULL DEFAULT 0,
    cpu_secs      REAL NOT NULL DEFAULT 0,
    peak_memory   INTEGER NOT NULL DEFAULT 0,
    gpu_secs      REAL NOT NULL DEFAULT 0,
    submitted_at  INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    not_before    INTEGER,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS ops_tasks_tenant ON ops_tasks (tenant, id);
CREATE INDEX IF NOT EXISTS ops_tasks_tenant_status ON ops_tasks (tenant, status, id);
CREATE INDEX IF NOT EXISTS ops_tasks_tenant_template ON ops_tasks (tenant, template, id);
CREATE INDEX IF NOT EXISTS ops_tasks_unfinished ON ops_tasks (status) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS ops_tasks_finished ON ops_tasks (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS ops_task_labels (
    task_id TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (task_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ops_task_labels_kv ON ops_task_labels (key, value, task_id);

-- Every event about a task. A row with `to_status` set is a transition.
CREATE TABLE IF NOT EXISTS ops_task_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    type        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    reason      TEXT,
    at          INTEGER NOT NULL,
    event       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_task_events_task ON ops_task_events (task_id, seq);

CREATE TABLE IF NOT EXISTS ops_task_outputs (
    task_id    TEXT NOT NULL,
    path       TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, path)
) WITHOUT ROWID;
