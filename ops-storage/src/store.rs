//! Storage opened from a URL, and handles scoped to one tenant and environment.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::path::{ObjectPath, check_segment};
use crate::{Error, Result};

/// Size of the parts streamed uploads are sent in (8 MiB).
pub const PART_SIZE: usize = 8 << 20;

/// An object store chosen by URL. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl Storage {
    /// Opens the store a URL names:
    /// - `file:///abs/dir`, or a plain path (made if missing): a local directory;
    /// - `memory://`: in memory, for tests.
    ///
    /// Other schemes (such as `s3://`) are refused with the list of the supported ones.
    pub fn open(url: &str) -> Result<Self> {
        let store: Arc<dyn ObjectStore> = if url == "memory://" || url == "memory:" {
            Arc::new(InMemory::new())
        } else if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(Error::Config(format!(
                    "{url:?}: a file URL needs an absolute path (file:///srv/ops/storage)"
                )));
            }
            Arc::new(local(FsPath::new(dir))?)
        } else if url.contains("://") {
            return Err(Error::Config(format!(
                "{url:?}: unsupported scheme; use file:///DIR, a plain directory path, or memory://"
            )));
        } else if url.is_empty() {
            return Err(Error::Config("the storage URL is empty".into()));
        } else {
            Arc::new(local(FsPath::new(url))?)
        };
        Ok(Self {
            store,
            url: url.to_owned(),
        })
    }

    /// The URL it was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The storage of one tenant's environment: everything under
    /// `tenants/<tenant>/<environment>/`.
    pub fn scope(&self, tenant: &str, environment: &str) -> Result<Scoped> {
        check_segment("tenant", tenant)?;
        check_segment("environment", environment)?;
        Ok(Scoped {
            store: self.store.clone(),
            url: self.url.clone(),
            prefix: Path::from_iter(["tenants", tenant, environment]),
        })
    }
}

fn local(dir: &FsPath) -> Result<LocalFileSystem> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    LocalFileSystem::new_with_prefix(dir)
        .map(|fs| fs.with_automatic_cleanup(true))
        .map_err(|source| Error::Backend {
            url: dir.display().to_string(),
            source,
        })
}

/// What a write stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredObject {
    /// Path relative to the tenant's storage.
    pub path: String,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// The backend's entity tag, when it gives one.
    pub e_tag: Option<String>,
}

/// An object found by listing or [`Scoped::head`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// Path relative to the tenant's storage.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: DateTime<Utc>,
    /// The backend's entity tag, when it gives one.
    pub e_tag: Option<String>,
}

/// One tenant's environment in a [`Storage`]. Every path is checked and kept under
/// its prefix.
#[derive(Clone, Debug)]
pub struct Scoped {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: Path,
}

impl Scoped {
    fn location(&self, path: &ObjectPath) -> Path {
        let mut parts: Vec<object_store::path::PathPart<'_>> = self.prefix.parts().collect();
        parts.extend(path.segments().map(object_store::path::PathPart::from));
        Path::from_iter(parts)
    }

    fn relative(&self, location: &Path) -> Option<String> {
        location.prefix_match(&self.prefix).map(|parts| {
            parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    fn backend(&self, path: &str, source: object_store::Error) -> Error {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound {
                path: path.to_owned(),
            },
            source => Error::Backend {
                url: self.url.clone(),
                source,
            },
        }
    }

    /// Stores `data` at `path` (replacing what was there) in one request.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<StoredObject> {
        let checked = ObjectPath::parse(path)?;
        let sha256 = hex::encode(Sha256::digest(&data));
        let size = data.len() as u64;
        let result = self
            .store
            .put(&self.location(&checked), PutPayload::from_bytes(data))
            .await
            .map_err(|e| self.backend(path, e))?;
        tracing::debug!(path, size, "stored object");
        Ok(StoredObject {
            path: checked.to_string(),
            size,
            sha256,
            e_tag: result.e_tag,
        })
    }

    /// Streams `data` to `path` in parts of [`PART_SIZE`]. If the stream fails, the
    /// upload is aborted and nothing appears at `path`.
    pub async fn put_stream<S>(&self, path: &str, data: S) -> Result<StoredObject>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let checked = ObjectPath::parse(path)?;
        let upload = self
            .store
            .put_multipart(&self.location(&checked))
            .await
            .map_err(|e| self.backend(path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut data = std::pin::pin!(data);
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(source) => {
                    if let Err(e) = writer.abort().await {
                        tracing::warn!(path, error = %e, "aborting an upload failed");
                    }
                    return Err(Error::Io {
                        path: PathBuf::from(path),
                        source,
                    });
                }
            };
            if let Err(e) = writer.wait_for_capacity(4).await {
                return Err(self.backend(path, e));
            }
            hasher.update(&chunk);
            size += chunk.len() as u64;
            writer.put(chunk);
        }
        let result = writer.finish().await.map_err(|e| self.backend(path, e))?;
        Ok(StoredObject {
            path: checked.to_string(),
            size,
            sha256: hex::encode(hasher.finalize()),
            e_tag: result.e_tag,
        })
    }

    /// Uploads a local file to `path`, streaming it in parts.
    pub async fn put_file(&self, path: &str, file: &FsPath) -> Result<StoredObject> {
        let io = |source| Error::Io {
            path: file.to_path_buf(),
            source,
        };
        let f = tokio::fs::File::open(file).await.map_err(io)?;
        let chunks = futures::stream::try_unfold(f, |mut f| async move {
            let mut buf = Vec::with_capacity(1 << 20);
            let n = (&mut f).take(1 << 20).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>((n > 0).then(|| (Bytes::from(buf), f)))
        });
        self.put_stream(path, chunks).await
    }

    /// The whole object at `path`.
    pub async fn get(&self, path: &str) -> Result<Bytes> {
        let (_, got) = self.open_object(path).await?;
        got.bytes().await.map_err(|e| self.backend(path, e))
    }

    /// Checks `path` and starts reading the object there.
    async fn open_object(&self, path: &str) -> Result<(ObjectPath, object_store::GetResult)> {
        let checked = ObjectPath::parse(path)?;
        let got = self
            .store
            .get(&self.location(&checked))
            .await
            .map_err(|e| self.backend(path, e))?;
        Ok((checked, got))
    }

    /// Streams the object at `path` into a local file (made, or replaced), returning
    /// its size and SHA-256.
    pub async fn get_file(&self, path: &str, dest: &FsPath) -> Result<StoredObject> {
        use tokio::io::AsyncWriteExt;
        let (checked, got) = self.open_object(path).await?;
        let e_tag = got.meta.e_tag.clone();
        let io = |source| Error::Io {
            path: dest.to_path_buf(),
            source,
        };
        let mut out = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut stream = got.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.backend(path, e))? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        Ok(StoredObject {
            path: checked.to_string(),
            size,
            sha256: hex::encode(hasher.finalize()),
            e_tag,
        })
    }

    /// Size and date of the object at `path`.
    pub async fn head(&self, path: &str) -> Result<ObjectInfo> {
        let checked = ObjectPath::parse(path)?;
        let meta = self
            .store
            .head(&self.location(&checked))
            .await
            .map_err(|e| self.backend(path, e))?;
        Ok(ObjectInfo {
            path: checked.to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
            e_tag: meta.e_tag,
        })
    }

    /// Every object under `prefix` (all of the tenant's when `None`), sorted by path.
    pub async fn list(&self, prefix: Option<&str>) -> Result<Vec<ObjectInfo>> {
        let location = match prefix {
            Some(p) => match ObjectPath::parse_prefix(p)? {
                Some(checked) => self.location(&checked),
                None => self.prefix.clone(),
            },
            None => self.prefix.clone(),
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&location))
            .try_collect()
            .await
            .map_err(|e| self.backend(prefix.unwrap_or(""), e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                Some(ObjectInfo {
                    path: self.relative(&m.location)?,
                    size: m.size,
                    last_modified: m.last_modified,
                    e_tag: m.e_tag,
                })
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Deletes the object at `path`; [`Error::NotFound`] when there is none.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let checked = ObjectPath::parse(path)?;
        let location = self.location(&checked);
        // Not every backend reports a missing object on delete.
        self.store
            .head(&location)
            .await
            .map_err(|e| self.backend(path, e))?;
        self.store
            .delete(&location)
            .await
            .map_err(|e| self.backend(path, e))
    }
}
