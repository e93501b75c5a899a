//! Tenant-scoped object storage for task inputs and outputs, on [`object_store`].
//!
//! A [`Storage`] is opened from a URL: a local directory (the embedded default), an
//! S3-compatible bucket (feature `s3`) or an in-memory store for tests.
//! [`Storage::scope`] gives a [`Scoped`] handle for one [`Tenant`](ops_core::Tenant)
//! and [`Environment`](ops_core::Environment) (names that follow `ops-core`'s one name
//! rule), whose every path is checked by [`ObjectPath`] and kept under
//! `tenants/<tenant>/<environment>/`: `..`, absolute paths, backslashes and encoded
//! tricks are refused before anything reaches the backend.
//!
//! Every write computes a SHA-256 of what was stored. Large data is streamed in parts
//! ([`Scoped::put_stream`], [`Scoped::put_file`]): an upload that fails or is dropped
//! is aborted, and no partial object becomes visible.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ops_core::{Environment, Tenant};
//! use ops_storage::Storage;
//!
//! let storage = Storage::open("memory://")?;
//! let production = Environment::parse("production")?;
//! let acme = storage.scope(&Tenant::parse("acme")?, &production);
//! let stored = acme.put("frames/0001.png", "png bytes".into()).await?;
//! assert_eq!(stored.size, 9);
//! assert_eq!(acme.get("frames/0001.png").await?, "png bytes");
//! // Another tenant sees nothing of it.
//! let globex = storage.scope(&Tenant::parse("globex")?, &production);
//! assert!(globex.list(None).await?.is_empty());
//! // And cannot reach it with a crafted path.
//! let err = acme.get("../../globex/production/x").await.unwrap_err();
//! assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | `catalog::SqliteCatalog`: objects recorded with their events in the SQLite outbox of `ops-events`, in one transaction |
//! | `s3` | no | `s3://` URLs (AWS S3, MinIO, Ceph, moto) and signed URLs |
//! | `postgres` | no | `catalog::PostgresCatalog`, sharing the PostgreSQL outbox |
//! | `testkit` | no | the conformance suites `testkit::backend` and `testkit::catalog` |
//!
//! Without default features the crate is the storage API on a local directory or in
//! memory, with the in-memory catalog ([`MemoryCatalog`]), and no database driver.
//!
//! Errors carry an [`ErrorKind`](ops_core::ErrorKind) ([`Error::kind`]): a bad path is
//! `InvalidInput`, a missing object `NotFound`, a full quota `ResourceExhausted`,
//! refused credentials `PermissionDenied`, an unreachable backend `Unavailable`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod catalog;
mod config;
mod error;
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
pub use ops_core::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES, ObjectPath};
pub use reconcile::ReconcileReport;
pub use retention::RetentionReport;
pub use s3::S3Options;
pub use signed::SignedMethod;
pub use store::{
    ObjectEventData, ObjectInfo, PART_SIZE, Scoped, Storage, StorageBuilder, StoredObject,
};
