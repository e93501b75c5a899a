-- Usage records, one per (event, meter): the record is its own dedupe mark.
CREATE TABLE IF NOT EXISTS ops_billing_usage (
    event_id TEXT NOT NULL,
    meter TEXT NOT NULL,
    tenant TEXT NOT NULL,
    environment TEXT,
    template TEXT,
    task_id TEXT,
    gpu_model TEXT,
    outcome TEXT,
    scavenger BOOLEAN NOT NULL,
    quantity TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (event_id, meter)
);
CREATE INDEX IF NOT EXISTS ops_billing_usage_tenant_at ON ops_billing_usage (tenant, at);
