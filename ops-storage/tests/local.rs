//! The storage API on the local file system (the embedded default) and in memory: the
//! same checks run on both.

use bytes::Bytes;
use futures::stream;
use ops_storage::{Error, Storage};
use sha2::{Digest, Sha256};

async fn backends(dir: &std::path::Path) -> Vec<Storage> {
    vec![
        Storage::open(&format!("file://{}", dir.join("a").display())).unwrap(),
        Storage::open(dir.join("b").to_str().unwrap()).unwrap(),
        Storage::open("memory://").unwrap(),
    ]
}

#[tokio::test]
async fn put_get_head_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    for storage in backends(dir.path()).await {
        let acme = storage.scope("acme", "production").unwrap();
        let data = Bytes::from_static(b"frame one");
        let stored = acme.put("frames/0001.png", data.clone()).await.unwrap();
        assert_eq!(stored.size, 9);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
        acme.put("frames/0002.png", Bytes::from_static(b"two"))
            .await
            .unwrap();
        acme.put("log.txt", Bytes::from_static(b"log"))
            .await
            .unwrap();
        assert_eq!(acme.get("frames/0001.png").await.unwrap(), data);
        assert_eq!(acme.head("log.txt").await.unwrap().size, 3);
        let all: Vec<String> = acme
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.path)
            .collect();
        assert_eq!(
            all,
            ["frames/0001.png", "frames/0002.png", "log.txt"],
            "{}",
            storage.url()
        );
        let frames = acme.list(Some("frames/")).await.unwrap();
        assert_eq!(frames.len(), 2);
        acme.delete("frames/0001.png").await.unwrap();
        assert!(matches!(
            acme.get("frames/0001.png").await,
            Err(Error::NotFound { path }) if path == "frames/0001.png"
        ));
        assert!(matches!(
            acme.delete("frames/0001.png").await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            acme.head("nope").await,
            Err(Error::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn tenants_and_environments_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    for storage in backends(dir.path()).await {
        let acme = storage.scope("acme", "production").unwrap();
        acme.put("secret", Bytes::from_static(b"s")).await.unwrap();
        let globex = storage.scope("globex", "production").unwrap();
        let staging = storage.scope("acme", "staging").unwrap();
        assert!(globex.list(None).await.unwrap().is_empty());
        assert!(staging.list(None).await.unwrap().is_empty());
        for attempt in [
            "../../acme/production/secret",
            "/tenants/acme/production/secret",
            "..%2f..%2facme%2fproduction%2fsecret",
            "..\\..\\acme\\production\\secret",
        ] {
            let err = globex.get(attempt).await.unwrap_err();
            assert!(matches!(err, Error::InvalidPath { .. }), "{attempt}: {err}");
            assert!(matches!(
                globex.put(attempt, Bytes::new()).await,
                Err(Error::InvalidPath { .. })
            ));
        }
        assert!(storage.scope("../acme", "production").is_err());
        assert!(storage.scope("acme", "a/b").is_err());
    }
}

#[tokio::test]
async fn large_uploads_stream_in_parts_with_checksums() {
    let dir = tempfile::tempdir().unwrap();
    for storage in backends(dir.path()).await {
        let acme = storage.scope("acme", "production").unwrap();
        // 20 MiB in 1 MiB chunks: three 8 MiB parts.
        let chunk: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        let mut hasher = Sha256::new();
        for _ in 0..20 {
            hasher.update(&chunk);
        }
        let chunks = (0..20).map(|_| Ok(Bytes::from(chunk.clone())));
        let stored = acme
            .put_stream("checkpoints/model.bin", stream::iter(chunks))
            .await
            .unwrap();
        assert_eq!(stored.size, 20 << 20);
        assert_eq!(stored.sha256, hex::encode(hasher.finalize()));
        // Round trip through local files.
        let out = dir.path().join("download.bin");
        let got = acme.get_file("checkpoints/model.bin", &out).await.unwrap();
        assert_eq!(got.sha256, stored.sha256);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 20 << 20);
        let again = acme.put_file("copy.bin", &out).await.unwrap();
        assert_eq!(again.sha256, stored.sha256);
    }
}

#[tokio::test]
async fn an_interrupted_upload_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    for storage in backends(dir.path()).await {
        let acme = storage.scope("acme", "production").unwrap();
        let chunks = (0..12).map(|i| {
            if i == 10 {
                Err(std::io::Error::other("connection reset"))
            } else {
                Ok(Bytes::from(vec![7u8; 1 << 20]))
            }
        });
        let err = acme
            .put_stream("partial.bin", stream::iter(chunks))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert!(matches!(
            acme.head("partial.bin").await,
            Err(Error::NotFound { .. })
        ));
        assert!(
            acme.list(None).await.unwrap().is_empty(),
            "{}",
            storage.url()
        );
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
