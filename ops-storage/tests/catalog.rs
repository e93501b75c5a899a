//! The object catalog (in memory, SQLite, PostgreSQL), quotas, retention and the
//! `ops.storage.object.*` events, through the storage API.

#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::stream;
use ops_core::{Event, event_types};
use ops_events::sqlite::SqliteOutbox;
use ops_events::{EventBus, SubscribeOptions};
use ops_storage::catalog::{Catalog, MemoryCatalog, SqliteCatalog};
use ops_storage::{
    Error, ObjectEventData, Quota, Quotas, RetentionRule, Storage, StorageConfig, StorageUsage,
};
use sha2::{Digest, Sha256};

#[tokio::test]
async fn catalog_contract_in_memory() {
    ops_storage::testkit::catalog::run_all(&MemoryCatalog::new(), "mem").await;
}

#[tokio::test]
async fn catalog_contract_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let c = SqliteCatalog::open(dir.path().join("c.db").to_str().unwrap())
        .await
        .unwrap();
    ops_storage::testkit::catalog::run_all(&c, "lite").await;
    // Events are in the outbox: the ones of changes that committed, not the refused.
    let subjects: Vec<String> = drain(c.outbox())
        .await
        .into_iter()
        .filter_map(|e| e.subject)
        .collect();
    assert_eq!(subjects, ["1", "2", "3", "4", "5", "8", "9"]);
}

/// The test server's URL; `None` (skip) when there is none, unless services are
/// required.
#[cfg(feature = "postgres")]
fn postgres_url() -> Option<String> {
    let url = std::env::var("OPS_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        assert!(
            std::env::var("OPS_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "OPS_TEST_POSTGRES_URL is not set and OPS_REQUIRE_SERVICES=1"
        );
        eprintln!("skipped: OPS_TEST_POSTGRES_URL is not set");
    }
    url
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn catalog_contract_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let c = ops_storage::catalog::PostgresCatalog::connect(&url)
        .await
        .unwrap();
    // The database is shared between runs and tests: a fresh tenant each time.
    let tenant = format!("pg{}", ops_core::TaskId::new().to_string().replace('-', ""));
    ops_storage::testkit::catalog::run_all(&c, &tenant).await;
}

/// Every event in `bus` since the last call, in order.
async fn drain(bus: &dyn EventBus) -> Vec<Event> {
    let sub = "drain";
    bus.subscribe(sub, SubscribeOptions::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let got = bus
            .fetch(sub, 1000, Duration::from_millis(50))
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
        out.extend(got.into_iter().map(|d| (*d.event).clone()));
        bus.ack(sub, &tags).await.unwrap();
    }
}

async fn sqlite_storage(dir: &std::path::Path, quotas: Quotas) -> (Storage, SqliteCatalog) {
    let catalog = SqliteCatalog::open(dir.join("ops.db").to_str().unwrap())
        .await
        .unwrap();
    let storage = Storage::builder(dir.join("objects").to_str().unwrap())
        .catalog(Arc::new(catalog.clone()))
        .quotas(quotas)
        .retention(vec![
            RetentionRule::new("tasks/", 30),
            RetentionRule::new("", 90)
                .tenant("acme")
                .environment("staging"),
        ])
        .build()
        .unwrap();
    (storage, catalog)
}

fn data(e: &Event) -> ObjectEventData {
    e.data_as().unwrap()
}

#[tokio::test]
async fn writes_are_recorded_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, catalog) = sqlite_storage(dir.path(), Quotas::unlimited()).await;
    let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    let bytes = Bytes::from_static(b"frame one");
    let task = ops_core::TaskId::new();
    let stored = acme
        .for_task(task, 2)
        .put("tasks/f1.png", bytes.clone())
        .await
        .unwrap();
    let chunks = (0..4).map(|_| Ok(Bytes::from(vec![7u8; 3 << 20])));
    let streamed = acme
        .put_stream("big.bin", stream::iter(chunks))
        .await
        .unwrap();
    assert_eq!(streamed.size, 12 << 20);
    acme.delete("big.bin").await.unwrap();

    let record = catalog
        .get("acme", "production", "tasks/f1.png")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(record.sha256, stored.sha256);
    assert_eq!(record.task_id, Some(task.to_string()));
    assert_eq!(record.attempt, Some(2));
    assert_eq!(
        catalog.get("acme", "production", "big.bin").await.unwrap(),
        None
    );
    assert_eq!(
        storage.usage(&"acme".parse().unwrap()).await.unwrap(),
        StorageUsage {
            bytes: 9,
            objects: 1
        }
    );

    let events = drain(catalog.outbox()).await;
    let types: Vec<&str> = events.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(
        types,
        [
            event_types::STORAGE_OBJECT_CREATED,
            event_types::STORAGE_OBJECT_CREATED,
            event_types::STORAGE_OBJECT_DELETED
        ]
    );
    let first = data(&events[0]).object;
    assert_eq!(
        (first.size, first.sha256.as_str(), first.path.as_str()),
        (9, stored.sha256.as_str(), "tasks/f1.png")
    );
    assert_eq!(first.task_id, Some(task.to_string()));
    assert_eq!(first, record);
    assert_eq!(events[0].tenant(), Some("acme"));
    assert_eq!(events[0].extension("environment"), Some("production"));
    assert_eq!(data(&events[1]).object.size, 12 << 20);
    assert_eq!(data(&events[2]).reason.as_deref(), Some("deleted"));
    assert_eq!(
        data(&events[2]).object.sha256,
        data(&events[1]).object.sha256
    );
}

#[tokio::test]
async fn quotas_refuse_writes_before_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas::unlimited()
        .default_quota(Quota {
            bytes: Some(1000),
            objects: Some(3),
        })
        .tenant(
            &"big".parse().unwrap(),
            Quota {
                bytes: Some(1 << 30),
                objects: None,
            },
        );
    let (storage, catalog) = sqlite_storage(dir.path(), quotas).await;
    let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    acme.put("a", Bytes::from(vec![0u8; 600])).await.unwrap();
    // Over the bytes quota: refused, nothing written or recorded.
    let err = acme
        .put("b", Bytes::from(vec![0u8; 500]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::QuotaExceeded { tenant, resource: "bytes", used: 600, limit: 1000, need: 500 }
                if tenant == "acme"
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("acme"), "{err}");
    assert!(matches!(acme.head("b").await, Err(Error::NotFound { .. })));
    // A file over the quota is refused by its size, before any upload.
    let file = dir.path().join("f.bin");
    std::fs::write(&file, vec![1u8; 2000]).unwrap();
    assert!(matches!(
        acme.put_file("f", &file).await,
        Err(Error::QuotaExceeded { need: 2000, .. })
    ));
    // A stream is cut off (and aborted) once it passes the quota.
    let chunks = (0..10).map(|_| Ok(Bytes::from(vec![2u8; 100])));
    assert!(matches!(
        acme.put_stream("s", stream::iter(chunks)).await,
        Err(Error::QuotaExceeded {
            resource: "bytes",
            ..
        })
    ));
    assert!(acme.list(None).await.unwrap().iter().all(|o| o.path == "a"));
    // Replacing an object counts only the difference; the quota spans environments.
    acme.put("a", Bytes::from(vec![0u8; 900])).await.unwrap();
    let staging = storage.scope(&"acme".parse().unwrap(), &"staging".parse().unwrap());
    assert!(matches!(
        staging.put("x", Bytes::from(vec![0u8; 200])).await,
        Err(Error::QuotaExceeded { used: 900, .. })
    ));
    staging.put("x", Bytes::from(vec![0u8; 50])).await.unwrap();
    staging.put("y", Bytes::new()).await.unwrap();
    // The object count.
    assert!(matches!(
        staging.put("z", Bytes::new()).await,
        Err(Error::QuotaExceeded {
            resource: "objects",
            used: 3,
            limit: 3,
            need: 1,
            ..
        })
    ));
    // Another tenant has its own quota.
    storage
        .scope(&"big".parse().unwrap(), &"production".parse().unwrap())
        .put("a", Bytes::from(vec![0u8; 5000]))
        .await
        .unwrap();
    assert_eq!(
        storage.usage(&"acme".parse().unwrap()).await.unwrap(),
        StorageUsage {
            bytes: 950,
            objects: 3
        }
    );
    // Only what was stored has events.
    let created = drain(catalog.outbox())
        .await
        .iter()
        .filter(|e| e.ty == event_types::STORAGE_OBJECT_CREATED)
        .count();
    assert_eq!(created, 5);
}

#[tokio::test]
async fn retention_deletes_old_objects_with_events() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, catalog) = sqlite_storage(dir.path(), Quotas::unlimited()).await;
    let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    let staging = storage.scope(&"acme".parse().unwrap(), &"staging".parse().unwrap());
    let globex = storage.scope(&"globex".parse().unwrap(), &"production".parse().unwrap());
    for (s, p) in [
        (&acme, "tasks/1/out.png"),
        (&acme, "tasks/2/out.png"),
        (&acme, "models/keep.bin"),
        (&staging, "scratch.txt"),
        (&globex, "tasks/9/out.png"),
    ] {
        s.put(p, Bytes::from(p.to_owned())).await.unwrap();
    }
    let _ = drain(catalog.outbox()).await;

    // Nothing is old yet.
    let report = storage.apply_retention(Utc::now()).await.unwrap();
    assert!(report.removed.is_empty() && report.failed.is_empty());

    // 31 days on: every tenant's task outputs go; models stay; staging stays (90 days).
    let report = storage
        .apply_retention(Utc::now() + chrono::Duration::days(31))
        .await
        .unwrap();
    let mut removed: Vec<String> = report
        .removed
        .iter()
        .map(|e| format!("{}/{}", e.tenant, e.path))
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            "acme/tasks/1/out.png",
            "acme/tasks/2/out.png",
            "globex/tasks/9/out.png"
        ]
    );
    assert_eq!(report.bytes, 45);
    assert!(matches!(
        acme.get("tasks/1/out.png").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(acme.list(None).await.unwrap().len(), 1);
    assert_eq!(globex.list(None).await.unwrap().len(), 0);
    let events = drain(catalog.outbox()).await;
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e.ty, event_types::STORAGE_OBJECT_DELETED);
        assert_eq!(data(e).reason.as_deref(), Some("retention"));
    }

    // 91 days on: acme's staging goes too.
    let report = storage
        .apply_retention(Utc::now() + chrono::Duration::days(91))
        .await
        .unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].path, "scratch.txt");
    assert_eq!(
        storage.usage(&"acme".parse().unwrap()).await.unwrap(),
        StorageUsage {
            bytes: 15,
            objects: 1
        }
    );
}

#[test]
fn config_reads_sizes_and_lists_every_problem() {
    let config: StorageConfig = toml::from_str(
        r#"
        url = "file:///srv/ops/storage"
        [quota]
        bytes = "10GiB"
        objects = 1000
        [tenants.acme.quota]
        bytes = 5000
        [[retention]]
        prefix = "tasks/"
        days = 30
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let quotas = config.quotas();
    assert_eq!(quotas.of(&"globex".parse().unwrap()).bytes, Some(10 << 30));
    assert_eq!(quotas.of(&"globex".parse().unwrap()).objects, Some(1000));
    assert_eq!(
        quotas.of(&"acme".parse().unwrap()),
        Quota {
            bytes: Some(5000),
            objects: None
        }
    );

    let bad: StorageConfig = toml::from_str(
        r#"
        url = ""
        [tenants."a/b"]
        [[retention]]
        prefix = "../x"
        days = 0
        [[retention]]
        tenant = ".."
        days = 1
        "#,
    )
    .unwrap();
    let err = bad.validate().unwrap_err().to_string();
    for needle in [
        "url: is empty",
        "tenants.a/b",
        "retention[0].days",
        "retention[0].prefix",
        "retention[1].tenant",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from {err}");
    }
    let unknown = toml::from_str::<StorageConfig>("url = \"x\"\nquotas = 1").unwrap_err();
    assert!(unknown.to_string().contains("quotas"), "{unknown}");
    let size =
        toml::from_str::<StorageConfig>("url = \"x\"\n[quota]\nbytes = \"ten\"").unwrap_err();
    assert!(size.to_string().contains("ten"), "{size}");
    // The builder checks retention rules too.
    assert!(matches!(
        Storage::builder("memory://")
            .retention(vec![RetentionRule::new("/abs", 0)])
            .build(),
        Err(Error::InvalidConfig { problems }) if problems.len() == 2
            && problems[0].starts_with("retention[0].days")
            && problems[1].starts_with("retention[0].prefix")
    ));
}

#[tokio::test]
async fn sqlite_catalog_shares_an_outbox_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ops.db");
    let outbox = SqliteOutbox::open(db.to_str().unwrap()).await.unwrap();
    let catalog = SqliteCatalog::from_outbox(outbox.clone()).await.unwrap();
    let storage = Storage::builder(dir.path().join("o").to_str().unwrap())
        .catalog(Arc::new(catalog))
        .build()
        .unwrap();
    storage
        .scope(&"acme".parse().unwrap(), &"production".parse().unwrap())
        .put("k", Bytes::from_static(b"12345"))
        .await
        .unwrap();
    assert_eq!(drain(&outbox).await.len(), 1);
    drop(storage);
    let reopened = SqliteCatalog::open(db.to_str().unwrap()).await.unwrap();
    assert_eq!(reopened.usage("acme").await.unwrap().bytes, 5);
}

/// Many writers at once never take a tenant past its quota: the catalog's check is
/// the authority, and a write it refuses leaves no object behind.
async fn concurrent_writers_stay_within_quota(catalog: Arc<dyn Catalog>, tenant: &str) {
    let storage = Storage::builder("memory://")
        .catalog(catalog)
        .quotas(Quotas::unlimited().tenant(
            &tenant.parse().unwrap(),
            Quota {
                bytes: Some(1000),
                objects: None,
            },
        ))
        .build()
        .unwrap();
    let scoped = storage.scope(&tenant.parse().unwrap(), &"production".parse().unwrap());
    let writes = (0..25).map(|i| {
        let scoped = scoped.clone();
        tokio::spawn(async move {
            scoped
                .put(&format!("o/{i}"), Bytes::from(vec![0u8; 100]))
                .await
        })
    });
    let mut ok = 0;
    for w in writes {
        match w.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::QuotaExceeded { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(
        storage.usage(&tenant.parse().unwrap()).await.unwrap(),
        StorageUsage {
            bytes: 1000,
            objects: 10
        }
    );
    assert_eq!(scoped.list(None).await.unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let c = SqliteCatalog::open(dir.path().join("c.db").to_str().unwrap())
        .await
        .unwrap();
    concurrent_writers_stay_within_quota(Arc::new(c), "acme").await;
    concurrent_writers_stay_within_quota(Arc::new(MemoryCatalog::new()), "acme").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let c = ops_storage::catalog::PostgresCatalog::connect(&url)
        .await
        .unwrap();
    let tenant = format!("pq{}", ops_core::TaskId::new().to_string().replace('-', ""));
    concurrent_writers_stay_within_quota(Arc::new(c), &tenant).await;
}

#[tokio::test]
async fn reconcile_records_what_was_written_around_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, catalog) = sqlite_storage(dir.path(), Quotas::unlimited()).await;
    let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    acme.put("kept.txt", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    acme.put("gone.txt", Bytes::from_static(b"gone"))
        .await
        .unwrap();
    acme.put("changed.txt", Bytes::from_static(b"v1"))
        .await
        .unwrap();
    let _ = drain(catalog.outbox()).await;
    // Around ops-storage: a file copied in by hand, one deleted, one rewritten.
    let root = dir.path().join("objects/tenants/acme/production");
    std::fs::create_dir_all(root.join("manual")).unwrap();
    std::fs::write(root.join("manual/new.bin"), b"brand new bytes").unwrap();
    std::fs::remove_file(root.join("gone.txt")).unwrap();
    std::fs::write(root.join("changed.txt"), b"version two").unwrap();

    let report = acme.reconcile().await.unwrap();
    let recorded: Vec<(&str, u64)> = report
        .recorded
        .iter()
        .map(|e| (e.path.as_str(), e.size))
        .collect();
    assert_eq!(recorded, [("changed.txt", 11), ("manual/new.bin", 15)]);
    assert_eq!(
        report.recorded[1].sha256,
        hex::encode(Sha256::digest(b"brand new bytes"))
    );
    assert_eq!(report.dropped.len(), 1);
    assert_eq!(report.dropped[0].path, "gone.txt");
    assert_eq!(report.unchanged, 1);
    assert_eq!(
        storage.usage(&"acme".parse().unwrap()).await.unwrap(),
        StorageUsage {
            bytes: 4 + 11 + 15,
            objects: 3
        }
    );
    let events = drain(catalog.outbox()).await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let d = data(e);
            (e.ty.clone(), d.reason.unwrap_or(d.object.path))
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                event_types::STORAGE_OBJECT_CREATED.to_owned(),
                "changed.txt".to_owned()
            ),
            (
                event_types::STORAGE_OBJECT_CREATED.to_owned(),
                "manual/new.bin".to_owned()
            ),
            (
                event_types::STORAGE_OBJECT_DELETED.to_owned(),
                "missing".to_owned()
            ),
        ]
    );
    // Once agreed, nothing more to do.
    let again = acme.reconcile().await.unwrap();
    assert!(again.recorded.is_empty() && again.dropped.is_empty());
    assert_eq!(again.unchanged, 3);
}
