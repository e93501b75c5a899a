//! The storage API on the local file system (the embedded default) and in memory: the
//! conformance suite (`ops_storage::testkit`, feature `testkit`) on each, plus what is
//! particular to local storage.

use std::time::Duration;

use bytes::Bytes;
use ops_storage::{Error, SignedMethod, Storage};

#[cfg(feature = "testkit")]
#[tokio::test]
async fn conformance_on_a_file_url() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
    ops_storage::testkit::backend::run_all(&storage).await;
}

#[cfg(feature = "testkit")]
#[tokio::test]
async fn conformance_on_a_plain_path() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().join("new/dir").to_str().unwrap()).unwrap();
    ops_storage::testkit::backend::run_all(&storage).await;
}

#[cfg(feature = "testkit")]
#[tokio::test]
async fn conformance_in_memory() {
    ops_storage::testkit::backend::run_all(&Storage::open("memory://").unwrap()).await;
}

#[tokio::test]
async fn objects_live_under_the_tenant_directory() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
    let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    acme.put("frames/0001.png", Bytes::from_static(b"png"))
        .await
        .unwrap();
    let file = dir.path().join("tenants/acme/production/frames/0001.png");
    assert_eq!(std::fs::read(&file).unwrap(), b"png");
    acme.delete("frames/0001.png").await.unwrap();
    assert!(!file.exists());
}

#[tokio::test]
async fn local_storage_cannot_sign_urls() {
    let dir = tempfile::tempdir().unwrap();
    for storage in [
        Storage::open(dir.path().to_str().unwrap()).unwrap(),
        Storage::open("memory://").unwrap(),
    ] {
        let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
        for method in [SignedMethod::Get, SignedMethod::Put] {
            let err = acme
                .signed_url(method, "a.txt", Duration::from_secs(60))
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Unsupported { ref what, .. } if what.contains("signed")),
                "{err}"
            );
        }
    }
}

#[test]
fn bad_urls_are_refused_clearly() {
    for (url, needle) in [
        ("", "empty"),
        ("file://relative/dir", "absolute path"),
        ("ftp://host/x", "unsupported scheme"),
    ] {
        let err = Storage::open(url).unwrap_err().to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Storage::open(file.path().join("sub").to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}
