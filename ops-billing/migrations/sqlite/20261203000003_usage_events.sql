-- Usage by event: one row per event holding its records (a JSON array), the row being
-- the event's dedupe mark — five rows and fifteen index entries per task event became
-- one row and two index entries. Records already stored move over.
CREATE TABLE IF NOT EXISTS ops_billing_usage_events (
    event_id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    at BIGINT NOT NULL,
    records TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_billing_usage_events_tenant_at
    ON ops_billing_usage_events (tenant, at);
INSERT OR IGNORE INTO ops_billing_usage_events (event_id, tenant, at, records)
SELECT event_id, MIN(tenant), MIN(at), json_object('m', json_group_array(json_object(
    'n', meter, 'q', quantity, 'g', gpu_model,
    'x', json_object('environment', environment, 'template', template, 'task_id', task_id,
        'outcome', outcome, 'scavenger', json(CASE WHEN scavenger THEN 'true' ELSE 'false' END)))))
FROM ops_billing_usage GROUP BY event_id;
DROP TABLE IF EXISTS ops_billing_usage;
