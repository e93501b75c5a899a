//! [`Server`] and [`ServerSpec`], and the labels that mark what Ops owns.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Labels on servers (and everything else Ops creates at a provider).
pub type Labels = BTreeMap<String, String>;

/// The label every server Ops creates carries; Ops never touches a server without it.
pub const MANAGED_BY: &str = "ops.managed-by";
/// The value of [`MANAGED_BY`].
pub const MANAGED_BY_OPS: &str = "ops";
/// The fleet a server belongs to.
pub const FLEET: &str = "ops.fleet";
/// The pool within the fleet.
pub const POOL: &str = "ops.pool";
/// A token derived from the fleet spec (fleet, pool, slot): a retried create finds the
/// server the first try made instead of making a second.
pub const TOKEN: &str = "ops.token";

/// The idempotency token of slot `slot` of `pool` in `fleet`: 20 hex digits of a
/// SHA-256, valid as a label value everywhere.
pub fn token(fleet: &str, pool: &str, slot: u32) -> String {
    let digest = Sha256::digest(format!("{fleet}\u{1f}{pool}\u{1f}{slot}").as_bytes());
    hex::encode(&digest[..10])
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerSpec {
    /// The server's name.
    pub name: String,
    /// The instance type (or owned host) to create.
    pub instance_type: String,
    /// Where.
    pub region: String,
    /// The OS image (`ubuntu-24.04`); owned machines ignore it.
    pub image: String,
    /// Names of SSH keys to install.
    pub ssh_keys: Vec<String>,
    /// Labels, [`MANAGED_BY`] and [`TOKEN`] included (see [`ServerSpec::new`]).
    pub labels: Labels,
    /// Spot (interruptible) rather than on demand, where the provider sells it.
    pub spot: bool,
}

impl ServerSpec {
    /// A spec for slot `slot` of `pool` in `fleet`, labelled as Ops' with its token.
    pub fn new(
        name: impl Into<String>,
        instance_type: impl Into<String>,
        region: impl Into<String>,
        fleet: &str,
        pool: &str,
        slot: u32,
    ) -> Self {
        let mut labels = Labels::new();
        labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_OPS.to_owned());
        labels.insert(FLEET.to_owned(), fleet.to_owned());
        labels.insert(POOL.to_owned(), pool.to_owned());
        labels.insert(TOKEN.to_owned(), token(fleet, pool, slot));
        Self {
            name: name.into(),
            instance_type: instance_type.into(),
            region: region.into(),
            image: "ubuntu-24.04".to_owned(),
            ssh_keys: Vec::new(),
            labels,
            spot: false,
        }
    }

    /// The idempotency token, when it has one.
    pub fn token(&self) -> Option<&str> {
        self.labels.get(TOKEN).map(String::as_str)
    }
}

/// Where a server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerStatus {
    /// Ordered, not running yet.
    Creating,
    /// Running and reachable by the provider's account.
    Running,
    /// Stopped.
    Off,
    /// Being deleted.
    Deleting,
    /// A state Ops does not know.
    Unknown,
}

/// A server as the provider reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Server {
    /// The provider's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The provider.
    pub provider: String,
    /// Its instance type.
    pub instance_type: String,
    /// Its region.
    pub region: String,
    /// Its state.
    pub status: ServerStatus,
    /// Its public address, once it has one.
    pub address: Option<IpAddr>,
    /// Its labels.
    pub labels: Labels,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Server {
    /// Whether Ops made it (it carries `ops.managed-by=ops`).
    pub fn is_ours(&self) -> bool {
        self.labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_OPS)
    }

    /// Whether a create of `spec` made it: `spec` has a token and this server carries
    /// the same one (a retried create finds it instead of making a second).
    pub fn made_for(&self, spec: &ServerSpec) -> bool {
        spec.token()
            .is_some_and(|t| self.labels.get(TOKEN).map(String::as_str) == Some(t))
    }

    /// Whether it carries every label of `selector`.
    pub fn matches(&self, selector: &Labels) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_and_distinct() {
        assert_eq!(token("f", "gpu", 0), token("f", "gpu", 0));
        assert_ne!(token("f", "gpu", 0), token("f", "gpu", 1));
        assert_ne!(token("f", "gpu", 1), token("f", "gpu1", 0));
        assert_eq!(token("f", "gpu", 0).len(), 20);
        let spec = ServerSpec::new("f-gpu-0", "cx22", "fsn1", "f", "gpu", 0);
        assert_eq!(spec.token(), Some(token("f", "gpu", 0).as_str()));
        assert_eq!(spec.labels[MANAGED_BY], "ops");
    }
}
