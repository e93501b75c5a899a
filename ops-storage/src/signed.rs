//! Signed, expiring URLs for downloading or uploading one object without credentials.

use std::time::Duration;

use crate::store::Scoped;
use crate::{Error, Result};
use ops_core::ObjectPath;

/// What a signed URL lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignedMethod {
    /// Download the object (`GET`).
    Get,
    /// Upload the object (`PUT`).
    Put,
}

/// Shortest lifetime of a signed URL.
const MIN_EXPIRY: Duration = Duration::from_secs(1);
/// Longest lifetime of a signed URL: seven days, the most S3 (SigV4) accepts.
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl Scoped {
    /// A URL that lets anyone holding it `method` the object at `path` of this
    /// tenant's environment for `expires_in` (1 second to 7 days), without credentials.
    ///
    /// Only S3-compatible backends can sign (feature `s3`); local and in-memory
    /// storage give [`Error::Unsupported`]. The path is checked like any other
    /// ([`Error::InvalidPath`]); an expiry out of range is an [`Error::InvalidExpiry`].
    ///
    /// An object uploaded through a [`SignedMethod::Put`] URL goes straight to the
    /// backend: it is **not** recorded in the catalog, emits no
    /// `ops.storage.object.created` event and is not counted against the tenant's
    /// quota. [`Scoped::delete`] still removes it.
    pub async fn signed_url(
        &self,
        method: SignedMethod,
        path: &str,
        expires_in: Duration,
    ) -> Result<String> {
        let checked = ObjectPath::parse(path)?;
        if !(MIN_EXPIRY..=MAX_EXPIRY).contains(&expires_in) {
            return Err(Error::InvalidExpiry {
                requested: expires_in,
            });
        }
        #[cfg(feature = "s3")]
        if let Some(signer) = &self.inner.signer {
            let method = match method {
                SignedMethod::Get => reqwest::Method::GET,
                SignedMethod::Put => reqwest::Method::PUT,
            };
            let url = signer
                .signed_url(method, &self.location(&checked), expires_in)
                .await
                .map_err(|e| self.backend(path, e))?;
            return Ok(url.to_string());
        }
        let _ = (method, checked);
        Err(Error::Unsupported {
            url: self.inner.url.clone(),
            what: "signed URLs".into(),
        })
    }
}
