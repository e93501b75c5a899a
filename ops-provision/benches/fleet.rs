//! Plan and apply a 1,000-server fleet against the in-memory provider with 50 ms of
//! simulated latency on every API call: wall time at several concurrency bounds, and
//! API calls per server created (polling included), then destroy (delete and a `get`
//! confirming each server is gone, plus the plan's offerings and list). Records go to an in-memory store
//! (the provider's behaviour alone) and, in the last rows, to SQLite (each server's
//! record and events committed twice: created, then ready).
//!
//! ```text
//! cargo bench -p ops-provision --bench fleet [-- --quick]
//! ```
// A benchmark's output is its table.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ops_provision::fleet::{Fleet, FleetSpec};
use ops_provision::memory::{Faults, InMemoryProvider};
use ops_provision::state::{FleetStore, MemoryFleetStore, SqliteFleetStore};
use ops_provision::{Offering, Provider};
use rust_decimal::Decimal;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let servers: u32 = if quick { 200 } else { 1000 };
    let latency = Duration::from_millis(50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| servers | concurrency | store | plan | apply | API calls per server | ideal apply (calls × latency ÷ concurrency) | destroy (calls per server) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    for (concurrency, sqlite) in [
        (16usize, false),
        (64, false),
        (256, false),
        (64, true),
        (256, true),
    ] {
        rt.block_on(async {
            let store: Arc<dyn FleetStore> = if sqlite {
                let path = dir.path().join(format!("bench-{concurrency}.db"));
                Arc::new(SqliteFleetStore::open(path.to_str().unwrap()).await.unwrap())
            } else {
                Arc::new(MemoryFleetStore::default())
            };
            let cloud = Arc::new(InMemoryProvider::new(
                "cloud",
                vec![Offering::new("", "cpu-4", "fsn1", 4000, 16 << 30, Decimal::new(5, 2), "EUR")],
            )
            .latency(latency));
            // A server runs after its first poll, as a fast cloud's would.
            cloud.set_faults(Faults::none().ready_after_polls(0));
            let spec = FleetSpec::parse(&format!(
                "name = \"bench\"\n[[pools]]\nname = \"web\"\ncount = {servers}\noffering = {{ provider = \"cloud\", instance_type = \"cpu-4\", region = \"fsn1\" }}\n"
            ))
            .unwrap();
            let fleet = Fleet::new(spec, vec![cloud.clone() as Arc<dyn Provider>], store)
                .concurrency(concurrency);
            let started = Instant::now();
            let plan = fleet.plan().await.unwrap();
            let planned = started.elapsed();
            let before = cloud.calls().total();
            let started = Instant::now();
            let report = fleet.apply(&plan).await;
            let applied = started.elapsed();
            assert!(report.failed.is_empty(), "{:?}", report.failed);
            assert_eq!(report.created.len(), servers as usize);
            let calls = cloud.calls().total() - before;
            let ideal = latency.as_secs_f64() * calls as f64 / concurrency as f64;
            let (create, get) = (
                cloud.calls().create.load(Ordering::Relaxed),
                cloud.calls().get.load(Ordering::Relaxed),
            );
            let before = cloud.calls().total();
            let started = Instant::now();
            let destroyed = fleet.destroy().await.unwrap();
            let destroy = started.elapsed();
            assert!(destroyed.failed.is_empty(), "{:?}", destroyed.failed);
            assert_eq!(destroyed.deleted.len(), servers as usize);
            let destroy_calls = cloud.calls().total() - before;
            println!(
                "| {servers} | {concurrency} | {} | {:.2} s | {:.2} s | {:.2} (create {}, get {}) | {:.2} s | {:.2} s ({:.2}) |",
                if sqlite { "SQLite" } else { "memory" },
                planned.as_secs_f64(),
                applied.as_secs_f64(),
                calls as f64 / f64::from(servers),
                create,
                get,
                ideal,
                destroy.as_secs_f64(),
                destroy_calls as f64 / f64::from(servers)
            );
        });
    }
}
