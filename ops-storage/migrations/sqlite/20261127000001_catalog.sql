-- The object catalog of ops-storage: one row per stored object, and each tenant's
-- totals, kept in the same transaction. Times are unix milliseconds (UTC).
CREATE TABLE IF NOT EXISTS ops_storage_objects (
    tenant      TEXT NOT NULL,
    environment TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    e_tag       TEXT,
    task_id     TEXT,
    attempt     INTEGER,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, environment, path)
) WITHOUT ROWID;
-- What retention scans: oldest first.
CREATE INDEX IF NOT EXISTS ops_storage_objects_created ON ops_storage_objects (created_at);

CREATE TABLE IF NOT EXISTS ops_storage_usage (
    tenant  TEXT PRIMARY KEY NOT NULL,
    bytes   INTEGER NOT NULL,
    objects INTEGER NOT NULL
) WITHOUT ROWID;
