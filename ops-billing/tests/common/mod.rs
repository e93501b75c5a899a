//! What several test files share.

use std::sync::Arc;

use ops_billing::ledger::{Ledger, MemoryLedger, SqliteLedger};

/// A fresh ledger of every kind: memory, SQLite in a temporary directory (kept with
/// it), and Postgres when it runs (required with `OPS_REQUIRE_SERVICES=1`).
pub async fn ledgers() -> Vec<(Arc<dyn Ledger>, Option<tempfile::TempDir>)> {
    let mut out: Vec<(Arc<dyn Ledger>, Option<tempfile::TempDir>)> =
        vec![(Arc::new(MemoryLedger::new()), None)];
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(&format!("sqlite://{}/ops.db", dir.path().display()))
        .await
        .unwrap();
    out.push((Arc::new(sqlite), Some(dir)));
    #[cfg(feature = "postgres")]
    if let Some(url) = ops_testbed::postgres_database() {
        let pg = ops_billing::ledger::PostgresLedger::connect(&url)
            .await
            .unwrap();
        out.push((Arc::new(pg), None));
    }
    out
}
