//! Storage opened from a URL, and handles scoped to one tenant and environment.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStore, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use ops_core::{Event, TaskId, event_types};

use crate::catalog::{Catalog, MemoryCatalog, ObjectEntry, Quota, StorageUsage, without};
use crate::config::{Quotas, RetentionRule, StorageConfig};
use crate::error::classify;
use crate::s3::S3Options;
use crate::{Error, Result};
use ops_core::{Environment, ObjectPath, Tenant};

/// Size of the parts streamed uploads are sent in (8 MiB).
pub const PART_SIZE: usize = 8 << 20;

/// An object store chosen by URL, with the catalog that records its objects, the
/// tenants' quotas and the retention rules. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    pub(crate) inner: Arc<Inner>,
}

/// What a [`Storage`] and its [`Scoped`] handles share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The URL, as shown in messages.
    pub(crate) url: String,
    /// Signs URLs, on backends that can.
    #[cfg(feature = "s3")]
    pub(crate) signer: Option<Arc<dyn object_store::signer::Signer>>,
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) quotas: Quotas,
    pub(crate) retention: Vec<RetentionRule>,
    /// The `source` of the events.
    pub(crate) source: String,
}

/// An opened backend: the store and, where it can sign URLs, its signer.
pub(crate) struct Backend {
    pub(crate) store: Arc<dyn ObjectStore>,
    #[cfg(feature = "s3")]
    pub(crate) signer: Option<Arc<dyn object_store::signer::Signer>>,
}

/// Builds a [`Storage`]; see [`Storage::builder`].
#[derive(Debug)]
pub struct StorageBuilder {
    url: String,
    s3: S3Options,
    catalog: Option<Arc<dyn Catalog>>,
    quotas: Quotas,
    retention: Vec<RetentionRule>,
    source: String,
}

impl StorageBuilder {
    /// Settings for `s3://` URLs.
    pub fn s3(mut self, options: S3Options) -> Self {
        self.s3 = options;
        self
    }

    /// Where objects are recorded ([`MemoryCatalog`] when not set).
    pub fn catalog(mut self, catalog: Arc<dyn Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// The tenants' quotas (none when not set).
    pub fn quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// The rules [`Storage::apply_retention`] applies.
    pub fn retention(mut self, rules: Vec<RetentionRule>) -> Self {
        self.retention = rules;
        self
    }

    /// The `source` of the events (`ops://storage` when not set).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Opens the backend and checks the retention rules (every problem listed at once).
    pub fn build(self) -> Result<Storage> {
        let violations: Vec<String> = self
            .retention
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.violations(&format!("retention[{i}]")))
            .collect();
        if !violations.is_empty() {
            return Err(Error::InvalidConfig {
                problems: violations,
            });
        }
        let backend = open_backend(&self.url, &self.s3)?;
        Ok(Storage {
            inner: Arc::new(Inner {
                store: backend.store,
                url: redact(&self.url),
                #[cfg(feature = "s3")]
                signer: backend.signer,
                catalog: self
                    .catalog
                    .unwrap_or_else(|| Arc::new(MemoryCatalog::new())),
                quotas: self.quotas,
                retention: self.retention,
                source: self.source,
            }),
        })
    }
}

/// The URL without a password or query secrets, for messages.
fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_owned(),
    }
}

fn open_backend(url: &str, s3: &S3Options) -> Result<Backend> {
    let local = |store: Arc<dyn ObjectStore>| Backend {
        store,
        #[cfg(feature = "s3")]
        signer: None,
    };
    if url == "memory://" || url == "memory:" {
        Ok(local(Arc::new(InMemory::new())))
    } else if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(Error::InvalidUrl {
                url: url.to_owned(),
                reason: "a file URL needs an absolute path (file:///srv/ops/storage)".into(),
            });
        }
        Ok(local(Arc::new(self::local(FsPath::new(dir))?)))
    } else if url.starts_with("s3://") {
        #[cfg(feature = "s3")]
        {
            crate::s3::open(url, s3)
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = s3;
            Err(Error::Unsupported {
                url: redact(url),
                what: "s3:// URLs in this build (enable the `s3` feature of ops-storage)".into(),
            })
        }
    } else if url.contains("://") {
        Err(Error::InvalidUrl {
            url: redact(url),
            reason: "unsupported scheme; use file:///DIR, a plain directory path, s3://BUCKET or \
                     memory://"
                .into(),
        })
    } else if url.is_empty() {
        Err(Error::InvalidUrl {
            url: String::new(),
            reason: "is empty".into(),
        })
    } else {
        Ok(local(Arc::new(self::local(FsPath::new(url))?)))
    }
}

impl Storage {
    /// Opens the store a URL names, with an in-memory catalog, no quotas and no
    /// retention (see [`builder`](Self::builder) for those):
    /// - `file:///abs/dir`, or a plain path (made if missing): a local directory;
    /// - `s3://bucket[/prefix]` (feature `s3`): an S3-compatible store, configured by
    ///   the URL's query (`?endpoint=http://127.0.0.1:9000&region=us-east-1`) and the
    ///   `AWS_*` environment variables;
    /// - `memory://`: in memory, for tests.
    ///
    /// Other schemes are refused with the list of the supported ones.
    pub fn open(url: &str) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A builder for the store at `url` (see [`open`](Self::open) for the URLs).
    pub fn builder(url: &str) -> StorageBuilder {
        StorageBuilder {
            url: url.to_owned(),
            s3: S3Options::default(),
            catalog: None,
            quotas: Quotas::unlimited(),
            retention: Vec::new(),
            source: "ops://storage".to_owned(),
        }
    }

    /// The store a [`StorageConfig`] describes, recording objects in `catalog`.
    /// The configuration is checked first, listing every problem at once.
    pub fn from_config(config: &StorageConfig, catalog: Arc<dyn Catalog>) -> Result<Self> {
        config.validate()?;
        Self::builder(&config.url)
            .s3(config.s3.clone())
            .catalog(catalog)
            .quotas(config.quotas())
            .retention(config.retention.clone())
            .build()
    }

    /// The URL it was opened from (without its query).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The catalog that records its objects.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.inner.catalog
    }

    /// What `tenant` holds, over all its environments.
    pub async fn usage(&self, tenant: &Tenant) -> Result<StorageUsage> {
        self.inner.catalog.usage(tenant.as_str()).await
    }

    /// The quota that applies to `tenant`.
    pub fn quota(&self, tenant: &Tenant) -> Quota {
        self.inner.quotas.of(tenant)
    }

    /// The storage of one tenant's environment: everything under
    /// `tenants/<tenant>/<environment>/`.
    pub fn scope(&self, tenant: &Tenant, environment: &Environment) -> Scoped {
        Scoped {
            inner: self.inner.clone(),
            tenant: tenant.clone(),
            environment: environment.clone(),
            prefix: Path::from_iter(["tenants", tenant.as_str(), environment.as_str()]),
            task: None,
        }
    }
}

/// Copies `range` of `file` to a new file `to` in 1 MiB blocks, giving its size and
/// SHA-256. Reading and hashing overlap with writing (a second thread writes).
fn copy_hashing(
    file: std::fs::File,
    range: std::ops::Range<u64>,
    to: &FsPath,
) -> std::io::Result<(u64, String)> {
    use std::io::{Read, Seek, Write};
    let mut out = std::fs::File::create(to)?;
    let (blocks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for block in received {
            out.write_all(&block)?;
        }
        out.flush()
    });
    let read = (|| {
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(range.start))?;
        let mut from = file.take(range.end - range.start);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let mut block = Vec::with_capacity(1 << 20);
            let n = (&mut from).take(1 << 20).read_to_end(&mut block)?;
            if n == 0 {
                break;
            }
            hasher.update(&block);
            size += n as u64;
            if blocks.send(block).is_err() {
                break; // the writer failed: its error is returned below
            }
        }
        drop(blocks);
        Ok::<_, std::io::Error>((size, hex::encode(hasher.finalize())))
    })();
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
    written?;
    read
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
            source: Box::new(source),
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
    pub(crate) inner: Arc<Inner>,
    tenant: Tenant,
    environment: Environment,
    prefix: Path,
    /// The task (id, attempt) whose outputs this handle writes.
    task: Option<(String, u32)>,
}

/// The `data` of `ops.storage.object.*` events: the object's record (tenant,
/// environment, path, size, SHA-256, entity tag, task and attempt, when stored) and,
/// for deletions, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ObjectEventData {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectEntry,
    /// Why it was deleted (`deleted`, `retention`, `not_recorded`, `missing`); only
    /// on `ops.storage.object.deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Builds the `ops.storage.object.*` event for `entry`.
fn object_event(source: &str, ty: &str, entry: &ObjectEntry, reason: Option<&str>) -> Event {
    let data = ObjectEventData {
        object: entry.clone(),
        reason: reason.map(str::to_owned),
    };
    let builder = Event::builder(ty, source)
        .subject(format!("{}/{}", entry.environment, entry.path))
        .tenant(entry.tenant.clone())
        .extension("environment", entry.environment.clone());
    let builder = match &entry.task_id {
        Some(task) => builder.extension("taskid", task.clone()),
        None => builder,
    };
    builder
        .json(serde_json::to_value(&data).unwrap_or_default())
        .build()
}

impl Inner {
    /// Records `entry` (unless it passes `quota`) with its
    /// `ops.storage.object.created` event; gives the record it replaced.
    pub(crate) async fn record(
        &self,
        entry: &ObjectEntry,
        quota: &Quota,
    ) -> Result<Option<ObjectEntry>> {
        let event = object_event(
            &self.source,
            event_types::STORAGE_OBJECT_CREATED,
            entry,
            None,
        );
        self.catalog.record(entry, quota, event).await
    }

    /// Removes the record of `entry` with its `ops.storage.object.deleted` event
    /// saying `reason`; gives the removed record (`None`: there was none, and no event).
    pub(crate) async fn forget(
        &self,
        entry: &ObjectEntry,
        reason: &str,
    ) -> Result<Option<ObjectEntry>> {
        let event = object_event(
            &self.source,
            event_types::STORAGE_OBJECT_DELETED,
            entry,
            Some(reason),
        );
        self.catalog
            .remove(&entry.tenant, &entry.environment, &entry.path, event)
            .await
    }
}

impl Scoped {
    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The environment.
    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The same storage, writing as attempt `attempt` of task `task_id`: the records
    /// and events of what it stores name the task.
    pub fn for_task(&self, task_id: TaskId, attempt: u32) -> Scoped {
        Scoped {
            task: Some((task_id.to_string(), attempt)),
            ..self.clone()
        }
    }

    pub(crate) fn location(&self, path: &ObjectPath) -> Path {
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

    pub(crate) fn backend(&self, path: &str, source: object_store::Error) -> Error {
        classify(&self.inner.url, path, source)
    }

    /// Refuses, before anything is written, a write of `size` bytes (unknown for a
    /// stream: `None`) to `path` that would pass the tenant's quota. Gives the quota
    /// and what the tenant holds without the object being replaced, for checking a
    /// stream as it grows (`None`: no limit).
    async fn precheck(
        &self,
        path: &ObjectPath,
        size: Option<u64>,
    ) -> Result<Option<(Quota, StorageUsage)>> {
        let quota = self.inner.quotas.of(&self.tenant);
        if quota.is_unlimited() {
            return Ok(None);
        }
        let catalog = &self.inner.catalog;
        let usage = catalog.usage(self.tenant.as_str()).await?;
        let old = catalog
            .get(
                self.tenant.as_str(),
                self.environment.as_str(),
                path.as_str(),
            )
            .await?;
        // What the tenant holds without the object being replaced.
        let base = without(usage, old.as_ref());
        quota.check(
            self.tenant.as_str(),
            base,
            StorageUsage {
                bytes: size.unwrap_or(0),
                objects: 1,
            },
        )?;
        Ok(Some((quota, base)))
    }

    /// Records what was just stored at `path`, with its `ops.storage.object.created`
    /// event. When the catalog refuses (a quota passed by a concurrent write) or
    /// fails, the object is deleted again so that nothing unrecorded stays visible.
    async fn commit(
        &self,
        path: ObjectPath,
        size: u64,
        sha256: String,
        e_tag: Option<String>,
    ) -> Result<StoredObject> {
        let entry = ObjectEntry {
            tenant: self.tenant.to_string(),
            environment: self.environment.to_string(),
            path: path.to_string(),
            size,
            sha256,
            e_tag: e_tag.clone(),
            task_id: self.task.as_ref().map(|(id, _)| id.clone()),
            attempt: self.task.as_ref().map(|(_, a)| *a),
            // Milliseconds: what the catalogs keep, so events and records agree.
            created_at: Utc::now().trunc_subsecs(3),
        };
        let quota = self.inner.quotas.of(&self.tenant);
        if let Err(e) = self.inner.record(&entry, &quota).await {
            self.unstore(&path).await;
            return Err(e);
        }
        tracing::debug!(tenant = %self.tenant, path = %entry.path, size, "stored object");
        Ok(StoredObject {
            path: entry.path,
            size,
            sha256: entry.sha256,
            e_tag,
        })
    }

    /// Takes away an object whose record could not be written, and the record of
    /// what it replaced (those bytes are gone).
    async fn unstore(&self, path: &ObjectPath) {
        if let Err(e) = self.inner.store.delete(&self.location(path)).await {
            tracing::warn!(path = %path, error = %e, "could not delete an unrecorded object");
        }
        let old = self
            .inner
            .catalog
            .get(
                self.tenant.as_str(),
                self.environment.as_str(),
                path.as_str(),
            )
            .await;
        if let Ok(Some(old)) = old
            && let Err(e) = self.inner.forget(&old, "not_recorded").await
        {
            tracing::warn!(path = %path, error = %e, "could not remove a stale record");
        }
    }

    /// Stores `data` at `path` (replacing what was there) in one request.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<StoredObject> {
        let checked = ObjectPath::parse(path)?;
        let size = data.len() as u64;
        self.precheck(&checked, Some(size)).await?;
        let sha256 = hex::encode(Sha256::digest(&data));
        let result = self
            .inner
            .store
            .put(&self.location(&checked), PutPayload::from_bytes(data))
            .await
            .map_err(|e| self.backend(path, e))?;
        self.commit(checked, size, sha256, result.e_tag).await
    }

    /// Streams `data` to `path` in parts of [`PART_SIZE`]. If the stream fails, or
    /// passes the tenant's quota, the upload is aborted: nothing appears at `path` and
    /// nothing is recorded.
    pub async fn put_stream<S>(&self, path: &str, data: S) -> Result<StoredObject>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        self.put_stream_sized(path, data, None).await
    }

    async fn put_stream_sized<S>(
        &self,
        path: &str,
        data: S,
        size_hint: Option<u64>,
    ) -> Result<StoredObject>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let checked = ObjectPath::parse(path)?;
        let limits = self.precheck(&checked, size_hint).await?;
        let upload = self
            .inner
            .store
            .put_multipart(&self.location(&checked))
            .await
            .map_err(|e| self.backend(path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut data = std::pin::pin!(data);
        while let Some(chunk) = data.next().await {
            let failed = match chunk {
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    let grown = StorageUsage {
                        bytes: size,
                        objects: 1,
                    };
                    match limits.map(|(quota, base)| quota.check(self.tenant.as_str(), base, grown))
                    {
                        Some(Err(over)) => Some(over),
                        _ => match writer.wait_for_capacity(4).await {
                            Ok(()) => {
                                hasher.update(&chunk);
                                writer.put(chunk);
                                None
                            }
                            Err(e) => Some(self.backend(path, e)),
                        },
                    }
                }
                Err(source) => Some(Error::Io {
                    path: PathBuf::from(path),
                    source,
                }),
            };
            if let Some(error) = failed {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(path, error = %e, "aborting an upload failed");
                }
                return Err(error);
            }
        }
        let result = writer.finish().await.map_err(|e| self.backend(path, e))?;
        self.commit(checked, size, hex::encode(hasher.finalize()), result.e_tag)
            .await
    }

    /// Uploads a local file to `path`, streaming it in parts.
    pub async fn put_file(&self, path: &str, file: &FsPath) -> Result<StoredObject> {
        let io = |source| Error::Io {
            path: file.to_path_buf(),
            source,
        };
        let f = tokio::fs::File::open(file).await.map_err(io)?;
        let len = f.metadata().await.map_err(io)?.len();
        let chunks = futures::stream::try_unfold(f, |mut f| async move {
            let mut buf = Vec::with_capacity(1 << 20);
            let n = (&mut f).take(1 << 20).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>((n > 0).then(|| (Bytes::from(buf), f)))
        });
        self.put_stream_sized(path, chunks, Some(len)).await
    }

    /// The whole object at `path`.
    pub async fn get(&self, path: &str) -> Result<Bytes> {
        let (_, got) = self.open_object(path).await?;
        got.bytes().await.map_err(|e| self.backend(path, e))
    }

    /// Checks `path` and starts reading the object there.
    pub(crate) async fn open_object(
        &self,
        path: &str,
    ) -> Result<(ObjectPath, object_store::GetResult)> {
        let checked = ObjectPath::parse(path)?;
        let got = self
            .inner
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
        let (size, sha256) = match got.payload {
            // A local object: copied in large blocks on a blocking thread (its stream
            // would read it in small chunks).
            GetResultPayload::File(file, _) => {
                let (range, to) = (got.range, dest.to_path_buf());
                tokio::task::spawn_blocking(move || copy_hashing(file, range, &to))
                    .await
                    .map_err(|e| io(std::io::Error::other(e)))?
                    .map_err(io)?
            }
            GetResultPayload::Stream(mut stream) => {
                let mut out = tokio::fs::File::create(dest).await.map_err(io)?;
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                while let Some(chunk) =
                    stream.try_next().await.map_err(|e| self.backend(path, e))?
                {
                    hasher.update(&chunk);
                    size += chunk.len() as u64;
                    out.write_all(&chunk).await.map_err(io)?;
                }
                out.flush().await.map_err(io)?;
                (size, hex::encode(hasher.finalize()))
            }
        };
        Ok(StoredObject {
            path: checked.to_string(),
            size,
            sha256,
            e_tag,
        })
    }

    /// Size and date of the object at `path`.
    pub async fn head(&self, path: &str) -> Result<ObjectInfo> {
        let checked = ObjectPath::parse(path)?;
        let meta = self
            .inner
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
            .inner
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

    /// Deletes the object at `path` and its record, with an
    /// `ops.storage.object.deleted` event; [`Error::NotFound`] when there is neither.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let checked = ObjectPath::parse(path)?;
        let location = self.location(&checked);
        let record = self
            .inner
            .catalog
            .get(
                self.tenant.as_str(),
                self.environment.as_str(),
                checked.as_str(),
            )
            .await?;
        // Not every backend reports a missing object on delete.
        let stored = match self.inner.store.head(&location).await {
            Ok(meta) => Some(meta),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(self.backend(path, e)),
        };
        if stored.is_none() && record.is_none() {
            return Err(Error::NotFound {
                path: path.to_owned(),
            });
        }
        if stored.is_some() {
            self.inner
                .store
                .delete(&location)
                .await
                .map_err(|e| self.backend(path, e))?;
        }
        // The bytes are gone: the record goes too, with its event. (An object stored
        // without a record has no record to remove, and no event.)
        if let Some(record) = record {
            self.inner.forget(&record, "deleted").await?;
        }
        Ok(())
    }
}
