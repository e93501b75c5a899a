-- Finalized invoices, kept once per tenant and period as they were sent (JSON): a late
-- event does not change an invoice that was kept.
CREATE TABLE IF NOT EXISTS ops_billing_invoices (
    tenant TEXT NOT NULL,
    period_from BIGINT NOT NULL,
    period_to BIGINT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (tenant, period_from, period_to)
);
