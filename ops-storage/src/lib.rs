//! Tenant-scoped object storage for task inputs and outputs, on [`object_store`].
//!
//! A [`Storage`] is opened from a URL: a local directory (the embedded default) or an
//! in-memory store for tests. [`Storage::scope`] gives a [`Scoped`] handle for one
//! tenant and environment, whose every path is checked by [`ObjectPath`] and kept under
//! `tenants/<tenant>/<environment>/`: `..`, absolute paths, backslashes and encoded
//! tricks are refused before anything reaches the backend.
//!
//! Every write computes a SHA-256 of what was stored. Large data is streamed in parts
//! ([`Scoped::put_stream`], [`Scoped::put_file`]): an upload that fails or is dropped
//! is aborted, and no partial object becomes visible.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> ops_storage::Result<()> {
//! use ops_storage::Storage;
//!
//! let storage = Storage::open("memory://")?;
//! let acme = storage.scope("acme", "production")?;
//! let stored = acme.put("frames/0001.png", "png bytes".into()).await?;
//! assert_eq!(stored.size, 9);
//! assert_eq!(acme.get("frames/0001.png").await?, "png bytes");
//! // Another tenant sees nothing of it.
//! assert!(storage.scope("globex", "production")?.list(None).await?.is_empty());
//! // And cannot reach it with a crafted path.
//! assert!(acme.get("../../globex/production/x").await.is_err());
//! # Ok(()) }
//! ```

pub mod catalog;
mod config;
mod error;
mod path;
mod reconcile;
mod retention;
mod s3;
mod signed;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use catalog::{Catalog, MemoryCatalog, ObjectEntry, Quota, StorageUsage};
pub use config::{QuotaConfig, Quotas, RetentionRule, StorageConfig, TenantStorageConfig};
pub use error::{Error, Result};
pub use path::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES, ObjectPath};
pub use reconcile::ReconcileReport;
pub use retention::RetentionReport;
pub use s3::S3Options;
pub use signed::SignedMethod;
pub use store::{
    ObjectEventData, ObjectInfo, PART_SIZE, Scoped, Storage, StorageBuilder, StoredObject,
};
