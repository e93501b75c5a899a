//! Storage settings: where objects go, per-tenant quotas and retention rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::catalog::Quota;
use crate::s3::S3Options;
use crate::{Error, Result};
use ops_core::{Environment, ObjectPath, Tenant};

/// The `[storage]` section of a platform's configuration.
///
/// ```toml
/// url = "file:///srv/ops/storage"   # or "s3://bucket/prefix?endpoint=…"
///
/// [quota]                          # every tenant's, unless overridden
/// bytes = "10GiB"
/// objects = 100000
///
/// [tenants.acme.quota]
/// bytes = "1TiB"
///
/// [[retention]]                    # task outputs go after 30 days
/// prefix = "tasks/"
/// days = 30
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StorageConfig {
    /// Where objects are stored (see [`Storage::open`](crate::Storage::open)); a
    /// platform picks a default directory when it is empty.
    #[serde(default)]
    pub url: String,
    /// Every tenant's quota, unless `tenants` names another.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Per-tenant settings.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantStorageConfig>,
    /// What is deleted when.
    #[serde(default)]
    pub retention: Vec<RetentionRule>,
    /// S3 settings (endpoint, region, credentials) for `s3://` URLs.
    #[serde(default)]
    pub s3: S3Options,
}

/// A quota as configured: sizes may be written `"10GiB"`, `"500M"` or in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Most bytes.
    #[serde(default, deserialize_with = "size")]
    pub bytes: Option<u64>,
    /// Most objects.
    #[serde(default)]
    pub objects: Option<u64>,
}

impl From<QuotaConfig> for Quota {
    fn from(q: QuotaConfig) -> Self {
        Quota {
            bytes: q.bytes,
            objects: q.objects,
        }
    }
}

/// One tenant's storage settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TenantStorageConfig {
    /// Its quota, replacing the default one.
    #[serde(default)]
    pub quota: Option<QuotaConfig>,
}

/// Deletes objects stored more than `days` ago, optionally only of one tenant or
/// environment and under a path prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetentionRule {
    /// Only this tenant's objects (all tenants' when missing).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Only this environment's objects (all environments' when missing).
    #[serde(default)]
    pub environment: Option<String>,
    /// Only paths under this prefix (`tasks/` holds task outputs); all when empty.
    #[serde(default)]
    pub prefix: String,
    /// Age in days after which objects are deleted (at least 1).
    pub days: u32,
}

impl RetentionRule {
    /// Objects under `prefix` older than `days`.
    pub fn new(prefix: impl Into<String>, days: u32) -> Self {
        Self {
            tenant: None,
            environment: None,
            prefix: prefix.into(),
            days,
        }
    }

    /// Only `tenant`'s objects.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Only `environment`'s objects.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Every problem with the rule, each naming `field` (such as `retention[0]`).
    pub(crate) fn violations(&self, field: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.days == 0 {
            out.push(format!("{field}.days: must be at least 1"));
        }
        if let Some(t) = &self.tenant
            && let Err(e) = Tenant::parse(t.as_str())
        {
            out.push(format!("{field}.tenant: {e}"));
        }
        if let Some(env) = &self.environment
            && let Err(e) = Environment::parse(env.as_str())
        {
            out.push(format!("{field}.environment: {e}"));
        }
        if let Err(e) = ObjectPath::parse_prefix(&self.prefix) {
            out.push(format!("{field}.prefix: {e}"));
        }
        out
    }
}

/// The quota of each tenant: a default and per-tenant overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quotas {
    default: Quota,
    tenants: BTreeMap<String, Quota>,
}

impl Quotas {
    /// No limits.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// `quota` for every tenant without its own.
    pub fn default_quota(mut self, quota: Quota) -> Self {
        self.default = quota;
        self
    }

    /// `quota` for `tenant`.
    pub fn tenant(mut self, tenant: &Tenant, quota: Quota) -> Self {
        self.tenants.insert(tenant.as_str().to_owned(), quota);
        self
    }

    /// The quota that applies to `tenant`.
    pub fn of(&self, tenant: &Tenant) -> Quota {
        self.of_name(tenant.as_str())
    }

    /// The quota of the tenant named `tenant` (a catalog's record).
    pub(crate) fn of_name(&self, tenant: &str) -> Quota {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

impl StorageConfig {
    /// A configuration of `url` with no quotas and no retention.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks the settings, listing every problem in one [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        let mut out = Vec::new();
        if self.url.trim().is_empty() {
            out.push("url: is empty".to_owned());
        }
        for tenant in self.tenants.keys() {
            if let Err(e) = Tenant::parse(tenant.as_str()) {
                out.push(format!("tenants.{tenant}: {e}"));
            }
        }
        for (i, rule) in self.retention.iter().enumerate() {
            out.extend(rule.violations(&format!("retention[{i}]")));
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig { problems: out })
        }
    }

    /// The quotas it sets.
    pub fn quotas(&self) -> Quotas {
        let mut quotas = Quotas::unlimited().default_quota(self.quota.into());
        for (tenant, t) in &self.tenants {
            if let Some(q) = t.quota {
                // Names are checked by `validate`; a bad one keeps the default quota.
                quotas.tenants.insert(tenant.clone(), q.into());
            }
        }
        quotas
    }
}

/// Reads a size written as a number of bytes or as a string such as `"10GiB"`.
fn size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => ops_core::Resources::parse_memory(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}
