//! The conformance suite every [`Catalog`] passes: records, replacement, quotas,
//! removal, usage and the age query, with their events.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use ops_storage::MemoryCatalog;
//!
//! ops_storage::testkit::catalog::run_all(&MemoryCatalog::new(), "acme").await;
//! # }
//! ```

use chrono::{DateTime, Utc};
use ops_core::Event;

use crate::catalog::{Catalog, EntryFilter};
use crate::{Error, ObjectEntry, Quota, StorageUsage};

/// A record of `size` bytes at `path`, stored at `at`.
pub fn entry(tenant: &str, env: &str, path: &str, size: u64, at: DateTime<Utc>) -> ObjectEntry {
    let mut e: ObjectEntry = serde_json::from_value(serde_json::json!({
        "tenant": tenant, "environment": env, "path": path, "size": size,
        "sha256": format!("{size:064x}"), "created_at": at,
    }))
    .unwrap();
    e.task_id = Some("t-1".into());
    e
}

/// An event with subject `n`.
pub fn event(n: &str) -> Event {
    Event::builder("test.catalog", "test").subject(n).build()
}

/// Runs every check of the catalog contract on `c`, with records of tenants `tenant`
/// and `<tenant>-other` (which must hold nothing yet); events are published in the
/// order of the changes, subjects `1`, `2`…, only for changes that were applied.
pub async fn run_all(c: &dyn Catalog, tenant: &str) {
    let other = format!("{tenant}-other");
    let t0 = Utc::now() - chrono::Duration::days(10);
    let unlimited = Quota::default();
    assert_eq!(c.usage(tenant).await.unwrap(), StorageUsage::default());
    assert_eq!(
        c.record(
            &entry(tenant, "prod", "a/1", 100, t0),
            &unlimited,
            event("1")
        )
        .await
        .unwrap(),
        None
    );
    c.record(
        &entry(tenant, "prod", "b/2", 50, t0 + chrono::Duration::days(1)),
        &unlimited,
        event("2"),
    )
    .await
    .unwrap();
    c.record(&entry(tenant, "dev", "a/3", 7, t0), &unlimited, event("3"))
        .await
        .unwrap();
    c.record(
        &entry(&other, "prod", "a/1", 1000, t0),
        &unlimited,
        event("4"),
    )
    .await
    .unwrap();
    assert_eq!(
        c.usage(tenant).await.unwrap(),
        StorageUsage {
            bytes: 157,
            objects: 3
        },
        "usage spans environments, not tenants"
    );
    let got = c.get(tenant, "prod", "a/1").await.unwrap().unwrap();
    assert_eq!(
        (
            got.size,
            got.task_id.as_deref(),
            got.created_at.timestamp_millis()
        ),
        (100, Some("t-1"), t0.timestamp_millis())
    );
    assert_eq!(c.get(tenant, "dev", "a/1").await.unwrap(), None);

    // Replacing counts the new size once.
    let old = c
        .record(
            &entry(tenant, "prod", "a/1", 30, t0),
            &unlimited,
            event("5"),
        )
        .await
        .unwrap();
    assert_eq!(old.map(|o| o.size), Some(100));
    assert_eq!(
        c.usage(tenant).await.unwrap(),
        StorageUsage {
            bytes: 87,
            objects: 3
        }
    );

    // A quota refusal writes nothing.
    let tight = Quota {
        bytes: Some(100),
        objects: Some(10),
    };
    let refused = c
        .record(&entry(tenant, "prod", "c/big", 14, t0), &tight, event("6"))
        .await;
    assert!(
        matches!(
            &refused,
            Err(Error::QuotaExceeded {
                resource: "bytes",
                used: 87,
                limit: 100,
                need: 14,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(c.get(tenant, "prod", "c/big").await.unwrap(), None);
    let few = Quota {
        bytes: None,
        objects: Some(3),
    };
    assert!(matches!(
        c.record(&entry(tenant, "prod", "c/one", 1, t0), &few, event("7"))
            .await,
        Err(Error::QuotaExceeded {
            resource: "objects",
            ..
        })
    ));
    // …but replacing within the quota is fine: it adds no object.
    c.record(&entry(tenant, "prod", "a/1", 40, t0), &few, event("8"))
        .await
        .unwrap();

    // Retention's query: oldest first, filtered.
    let old = c
        .older_than(
            &EntryFilter::all().tenant(tenant),
            t0 + chrono::Duration::hours(1),
            10,
        )
        .await
        .unwrap();
    let mut paths: Vec<&str> = old.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["a/1", "a/3"]);
    let prod_a = c
        .older_than(
            &EntryFilter::all()
                .tenant(tenant)
                .environment("prod")
                .prefix("b/"),
            Utc::now(),
            10,
        )
        .await
        .unwrap();
    assert_eq!(prod_a.len(), 1);
    assert_eq!(prod_a[0].path, "b/2");
    let limited = c
        .older_than(&EntryFilter::all(), Utc::now(), 1)
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);

    // Removing.
    let removed = c.remove(tenant, "prod", "a/1", event("9")).await.unwrap();
    assert_eq!(removed.map(|e| e.size), Some(40));
    assert_eq!(
        c.remove(tenant, "prod", "a/1", event("10")).await.unwrap(),
        None
    );
    assert_eq!(
        c.usage(tenant).await.unwrap(),
        StorageUsage {
            bytes: 57,
            objects: 2
        }
    );
    assert_eq!(c.usage(&other).await.unwrap().bytes, 1000);
}
