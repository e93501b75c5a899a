-- The object catalog of ops-storage: one row per stored object, and each tenant's
-- totals, kept in the same transaction. Times are unix milliseconds (UTC).
CREATE TABLE IF NOT EXISTS ops_storage_objects (
    tenant      TEXT NOT NULL,
    environment TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    e_tag       TEXT,
    task_id     TEXT,
    attempt     INTEGER,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, environment, path)
);
CREATE INDEX IF NOT EXISTS ops_storage_objects_created ON ops_storage_objects (created_at);

CREATE TABLE IF NOT EXISTS ops_storage_usage (
    tenant  TEXT PRIMARY KEY,
    bytes   BIGINT NOT NULL,
    objects BIGINT NOT NULL
);
