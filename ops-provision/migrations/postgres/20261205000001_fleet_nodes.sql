-- Fleet records: the servers each fleet owns (ops-provision). The record itself is
-- JSON; the key and the columns queried are columns.
CREATE TABLE IF NOT EXISTS ops_provision_nodes (
    fleet TEXT NOT NULL,
    provider TEXT NOT NULL,
    server_id TEXT NOT NULL,
    token TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (fleet, provider, server_id)
);
CREATE INDEX IF NOT EXISTS ops_provision_nodes_token ON ops_provision_nodes (fleet, token);
