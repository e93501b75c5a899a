//! The conformance suite every storage backend passes.
//!
//! Each check takes a [`Storage`], works in a tenant of its own (a fresh, unique name)
//! and panics with a message naming the backend when the backend misbehaves. Checks
//! leave nothing behind that another check could see, so they can run, in parallel,
//! on a shared bucket. [`run_all`] runs them one after the other:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let storage = ops_storage::Storage::open("memory://").unwrap();
//! ops_storage::testkit::backend::run_all(&storage).await;
//! # }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream;
use sha2::{Digest, Sha256};

use ops_core::{Environment, Tenant};

use crate::{Error, Scoped, Storage};

/// The environment every check writes to.
const ENVIRONMENT: &str = "production";

fn environment(name: &str) -> Environment {
    Environment::parse(name).expect("a valid environment name")
}

/// Runs every check of the suite on `storage`.
pub async fn run_all(storage: &Storage) {
    put_get_head_list_delete(storage).await;
    overwrite_replaces_object_and_record(storage).await;
    tenants_are_isolated(storage).await;
    traversal_is_refused(storage).await;
    large_stream_round_trip(storage).await;
    interrupted_stream_leaves_nothing(storage).await;
    delete_removes_the_record(storage).await;
}

/// A tenant name no other check (in this or another process) uses.
pub fn unique_tenant(what: &str) -> Tenant {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "{what}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Tenant::parse(name).expect("a generated tenant name is valid")
}

fn scope(storage: &Storage, what: &str) -> Scoped {
    storage.scope(&unique_tenant(what), &environment(ENVIRONMENT))
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn paths(scoped: &Scoped, prefix: Option<&str>) -> Vec<String> {
    scoped
        .list(prefix)
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"))
        .into_iter()
        .map(|o| o.path)
        .collect()
}

/// `put`, `get`, `head`, `list` (all and by prefix), `delete`; a missing object is
/// [`Error::NotFound`] for `get`, `head` and `delete`; each write is recorded in the
/// catalog with its size and SHA-256.
pub async fn put_get_head_list_delete(storage: &Storage) {
    let url = storage.url();
    let t = scope(storage, "basic");
    let data = Bytes::from_static(b"frame one");
    let stored = t.put("frames/0001.png", data.clone()).await.unwrap();
    assert_eq!(stored.path, "frames/0001.png", "{url}");
    assert_eq!(stored.size, 9, "{url}");
    assert_eq!(stored.sha256, sha256(&data), "{url}");
    t.put("frames/0002.png", Bytes::from_static(b"two"))
        .await
        .unwrap();
    t.put("log.txt", Bytes::from_static(b"log")).await.unwrap();

    assert_eq!(t.get("frames/0001.png").await.unwrap(), data, "{url}");
    let head = t.head("log.txt").await.unwrap();
    assert_eq!((head.path.as_str(), head.size), ("log.txt", 3), "{url}");
    assert_eq!(
        paths(&t, None).await,
        ["frames/0001.png", "frames/0002.png", "log.txt"],
        "{url}"
    );
    assert_eq!(
        paths(&t, Some("frames/")).await,
        ["frames/0001.png", "frames/0002.png"],
        "{url}"
    );
    assert_eq!(paths(&t, Some("frames")).await.len(), 2, "{url}");
    assert!(paths(&t, Some("nothing/here")).await.is_empty(), "{url}");

    let entry = storage
        .catalog()
        .get(t.tenant().as_str(), ENVIRONMENT, "frames/0001.png")
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{url}: a put object is recorded"));
    assert_eq!(
        (entry.size, entry.sha256.as_str()),
        (9, stored.sha256.as_str())
    );
    let usage = storage.usage(t.tenant()).await.unwrap();
    assert_eq!((usage.objects, usage.bytes), (3, 9 + 3 + 3), "{url}");

    t.delete("frames/0001.png").await.unwrap();
    assert!(
        matches!(t.get("frames/0001.png").await, Err(Error::NotFound { ref path }) if path == "frames/0001.png"),
        "{url}: get after delete"
    );
    assert!(
        matches!(
            t.delete("frames/0001.png").await,
            Err(Error::NotFound { .. })
        ),
        "{url}: a second delete"
    );
    assert!(
        matches!(t.head("nope").await, Err(Error::NotFound { .. })),
        "{url}: head of a missing object"
    );
    assert_eq!(
        paths(&t, None).await,
        ["frames/0002.png", "log.txt"],
        "{url}"
    );
    for p in ["frames/0002.png", "log.txt"] {
        t.delete(p).await.unwrap();
    }
    assert!(paths(&t, None).await.is_empty(), "{url}");
}

/// A second `put` to a path replaces the bytes and the record, and counts once.
pub async fn overwrite_replaces_object_and_record(storage: &Storage) {
    let url = storage.url();
    let t = scope(storage, "overwrite");
    t.put("a.txt", Bytes::from_static(b"first version"))
        .await
        .unwrap();
    let second = t.put("a.txt", Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(t.get("a.txt").await.unwrap(), "second", "{url}");
    let entry = storage
        .catalog()
        .get(t.tenant().as_str(), ENVIRONMENT, "a.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((entry.size, &entry.sha256), (6, &second.sha256), "{url}");
    let usage = storage.usage(t.tenant()).await.unwrap();
    assert_eq!((usage.objects, usage.bytes), (1, 6), "{url}");
    t.delete("a.txt").await.unwrap();
}

/// Another tenant, or another environment of the same tenant, sees nothing of a
/// tenant's objects and cannot reach them with a crafted path; tenant and
/// environment names are single segments.
pub async fn tenants_are_isolated(storage: &Storage) {
    let url = storage.url();
    let tenant = unique_tenant("owner");
    let other = unique_tenant("other");
    let owner = storage.scope(&tenant, &environment(ENVIRONMENT));
    owner.put("secret", Bytes::from_static(b"s")).await.unwrap();
    let neighbour = storage.scope(&other, &environment(ENVIRONMENT));
    let staging = storage.scope(&tenant, &environment("staging"));
    assert!(paths(&neighbour, None).await.is_empty(), "{url}");
    assert!(paths(&staging, None).await.is_empty(), "{url}");
    assert!(
        matches!(staging.get("secret").await, Err(Error::NotFound { .. })),
        "{url}: another environment reads nothing"
    );
    for attempt in [
        format!("../../{tenant}/{ENVIRONMENT}/secret"),
        format!("/tenants/{tenant}/{ENVIRONMENT}/secret"),
        format!("..%2f..%2f{tenant}%2f{ENVIRONMENT}%2fsecret"),
        format!("..\\..\\{tenant}\\{ENVIRONMENT}\\secret"),
    ] {
        let err = neighbour.get(&attempt).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidPath { .. }),
            "{url}: {attempt}: {err}"
        );
    }
    // Names that could leave a tenant's prefix cannot even be made.
    assert!(Tenant::parse(format!("../{tenant}")).is_err());
    assert!(Environment::parse("a/b").is_err());
    assert!(Tenant::parse("").is_err());
    owner.delete("secret").await.unwrap();
}

/// Traversal and malformed paths (`../x`, `/abs`, `a/%2e%2e/b`, backslashes, `a//b`)
/// are [`Error::InvalidPath`] for every operation, and nothing is written.
pub async fn traversal_is_refused(storage: &Storage) {
    let url = storage.url();
    let t = scope(storage, "traversal");
    for bad in [
        "../x",
        "/abs",
        "a/%2e%2e/b",
        "a\\..\\b",
        "a//b",
        "a/./b",
        "",
    ] {
        let invalid = |r: Result<(), Error>, op: &str| match r {
            Err(Error::InvalidPath { .. }) => {}
            other => panic!("{url}: {op} {bad:?} gave {other:?}, not InvalidPath"),
        };
        invalid(t.put(bad, Bytes::from_static(b"x")).await.map(drop), "put");
        invalid(
            t.put_stream(bad, stream::iter([Ok(Bytes::from_static(b"x"))]))
                .await
                .map(drop),
            "put_stream",
        );
        invalid(t.get(bad).await.map(drop), "get");
        invalid(t.head(bad).await.map(drop), "head");
        invalid(t.delete(bad).await, "delete");
        invalid(
            t.signed_url(
                crate::SignedMethod::Get,
                bad,
                std::time::Duration::from_secs(60),
            )
            .await
            .map(drop),
            "signed_url",
        );
    }
    for bad in ["../", "/abs/", "a/%2e%2e/"] {
        assert!(
            matches!(t.list(Some(bad)).await, Err(Error::InvalidPath { .. })),
            "{url}: list {bad:?}"
        );
    }
    assert!(paths(&t, None).await.is_empty(), "{url}");
    assert_eq!(storage.usage(t.tenant()).await.unwrap().objects, 0, "{url}");
}

/// Removes a scratch directory when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_tenant("ops-storage-testkit").as_str());
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 20 MiB through `put_stream` (1 MiB chunks, sent in [`PART_SIZE`](crate::PART_SIZE)
/// parts) comes back whole with its SHA-256; `get_file` then `put_file` through a
/// local file keep it intact, and the catalog records the checksum.
pub async fn large_stream_round_trip(storage: &Storage) {
    let url = storage.url();
    let t = scope(storage, "large");
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut hasher = Sha256::new();
    for _ in 0..20 {
        hasher.update(&chunk);
    }
    let expected = hex::encode(hasher.finalize());
    let chunks = (0..20).map(|_| Ok(Bytes::from(chunk.clone())));
    let stored = t
        .put_stream("checkpoints/model.bin", stream::iter(chunks))
        .await
        .unwrap_or_else(|e| panic!("{url}: put_stream: {e}"));
    assert_eq!(stored.size, 20 << 20, "{url}");
    assert_eq!(stored.sha256, expected, "{url}");
    assert_eq!(
        t.head("checkpoints/model.bin").await.unwrap().size,
        20 << 20
    );
    let got = t.get("checkpoints/model.bin").await.unwrap();
    assert_eq!(sha256(&got), expected, "{url}: get");
    let entry = storage
        .catalog()
        .get(t.tenant().as_str(), ENVIRONMENT, "checkpoints/model.bin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.sha256, expected, "{url}");

    let scratch = ScratchDir::new();
    let file = scratch.0.join("download.bin");
    let downloaded = t.get_file("checkpoints/model.bin", &file).await.unwrap();
    assert_eq!(downloaded.sha256, expected, "{url}: get_file");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 20 << 20);
    let copy = t.put_file("copy.bin", &file).await.unwrap();
    assert_eq!((copy.size, &copy.sha256), (20 << 20, &expected), "{url}");
    assert_eq!(sha256(&t.get("copy.bin").await.unwrap()), expected, "{url}");
    let missing = scratch.0.join("missing.bin");
    assert!(
        matches!(t.put_file("x", &missing).await, Err(Error::Io { .. })),
        "{url}: put_file of a missing file"
    );
    assert!(
        matches!(
            t.get_file("missing", &scratch.0.join("m")).await,
            Err(Error::NotFound { .. })
        ),
        "{url}: get_file of a missing object"
    );
    for p in ["checkpoints/model.bin", "copy.bin"] {
        t.delete(p).await.unwrap();
    }
}

/// A stream that fails after 10 MiB (one part sent) leaves nothing: not in `list`,
/// not in `head`, no catalog record, usage unchanged; and the error says why.
pub async fn interrupted_stream_leaves_nothing(storage: &Storage) {
    let url = storage.url();
    let t = scope(storage, "interrupted");
    t.put("kept.txt", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    let before = storage.usage(t.tenant()).await.unwrap();
    let chunks = (0..12).map(|i| {
        if i == 10 {
            Err(std::io::Error::other("connection reset by the task"))
        } else {
            Ok(Bytes::from(vec![7u8; 1 << 20]))
        }
    });
    let err = t
        .put_stream("partial.bin", stream::iter(chunks))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("connection reset by the task"),
        "{url}: {err}"
    );
    assert!(
        matches!(t.head("partial.bin").await, Err(Error::NotFound { .. })),
        "{url}: the partial object is visible"
    );
    assert_eq!(paths(&t, None).await, ["kept.txt"], "{url}");
    assert!(
        storage
            .catalog()
            .get(t.tenant().as_str(), ENVIRONMENT, "partial.bin")
            .await
            .unwrap()
            .is_none(),
        "{url}: the partial object is recorded"
    );
    assert_eq!(storage.usage(t.tenant()).await.unwrap(), before, "{url}");
    t.delete("kept.txt").await.unwrap();
}

/// `delete` removes the object and its catalog record, and the tenant's usage drops.
pub async fn delete_removes_the_record(storage: &Storage) {
    let url = storage.url();
    let t = scope(storage, "delete");
    t.put("a/b.txt", Bytes::from_static(b"12345"))
        .await
        .unwrap();
    t.put("a/c.txt", Bytes::from_static(b"67")).await.unwrap();
    t.delete("a/b.txt").await.unwrap();
    let catalog = storage.catalog();
    assert!(
        catalog
            .get(t.tenant().as_str(), ENVIRONMENT, "a/b.txt")
            .await
            .unwrap()
            .is_none(),
        "{url}: the record outlives the object"
    );
    assert!(
        catalog
            .get(t.tenant().as_str(), ENVIRONMENT, "a/c.txt")
            .await
            .unwrap()
            .is_some(),
        "{url}"
    );
    let usage = storage.usage(t.tenant()).await.unwrap();
    assert_eq!((usage.objects, usage.bytes), (1, 2), "{url}");
    t.delete("a/c.txt").await.unwrap();
    let usage = storage.usage(t.tenant()).await.unwrap();
    assert_eq!((usage.objects, usage.bytes), (0, 0), "{url}");
    assert!(paths(&t, None).await.is_empty(), "{url}");
}
