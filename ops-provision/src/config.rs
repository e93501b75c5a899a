//! [`ProvisionConfig`]: the providers a process may use and the fleets it manages, from
//! one TOML section (the `ops` facade's `[provision]`), and [`Fleets`], the fleets it
//! describes over one [`FleetStore`].
//!
//! ```toml
//! inventory = "machines.toml"   # owned machines (the static provider)
//! claims = "machines.claims.json" # which host serves which fleet (the default: beside
//!                               # the inventory, named after it)
//! local = false                 # this host as a provider
//! fleets = ["fleet.toml"]       # fleet specs, relative to this file
//! orphans = "adopt"             # adopt | delete | report
//! concurrency = 16
//! ready_timeout = "10m"
//!
//! [hetzner]                     # feature `hetzner`
//! token_env = "HCLOUD_TOKEN"    # the default
//!
//! [digitalocean]                # feature `digitalocean`
//! token_env = "DIGITALOCEAN_TOKEN"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, FleetSpec, OrphanPolicy};
use crate::state::FleetStore;
use crate::{Error, Provider, Result};

/// A cloud account: where its token is read from, and (for tests and proxies) its API
/// address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CloudAccount {
    /// The environment variable holding the API token (never the token itself, so a
    /// config file can be shared).
    pub token_env: String,
    /// The API's base URL, when not the provider's own.
    #[serde(default)]
    pub base_url: Option<String>,
}

impl CloudAccount {
    /// An account whose token is in `token_env`.
    pub fn from_env(token_env: impl Into<String>) -> Self {
        Self {
            token_env: token_env.into(),
            base_url: None,
        }
    }

    /// The token, or an error naming the section and the variable.
    pub fn token(&self, section: &str) -> Result<String> {
        match std::env::var(&self.token_env) {
            Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
            _ => Err(Error::Invalid {
                what: format!("provision.{section}"),
                problems: vec![format!(
                    "token_env: the environment variable {} is not set (it holds the API token)",
                    self.token_env
                )],
            }),
        }
    }
}

fn default_concurrency() -> usize {
    16
}

fn default_ready_timeout() -> Duration {
    crate::fleet::READY_TIMEOUT
}

/// The `[provision]` section: providers and fleets. Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProvisionConfig {
    /// An inventory of owned machines (the `static` provider).
    pub inventory: Option<PathBuf>,
    /// Where the static provider keeps its claims (which host serves which fleet);
    /// default: beside the inventory, `NAME.claims.json`.
    pub claims: Option<PathBuf>,
    /// Offer this host (the `local` provider).
    pub local: bool,
    /// This host's hourly cost basis when `local` (default 0.05).
    pub local_hourly: Decimal,
    /// The currency of `local_hourly` (default EUR).
    pub local_currency: String,
    /// A Hetzner Cloud account (feature `hetzner`).
    pub hetzner: Option<CloudAccount>,
    /// A DigitalOcean account (feature `digitalocean`).
    pub digitalocean: Option<CloudAccount>,
    /// Fleet spec files.
    pub fleets: Vec<PathBuf>,
    /// What to do with orphans.
    pub orphans: OrphanPolicy,
    /// Creates and deletes in flight at a time, per fleet.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a created server may take to run.
    #[serde(default = "default_ready_timeout", with = "humantime_secs")]
    pub ready_timeout: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            inventory: None,
            claims: None,
            local: false,
            local_hourly: Decimal::new(5, 2),
            local_currency: "EUR".to_owned(),
            hetzner: None,
            digitalocean: None,
            fleets: Vec::new(),
            orphans: OrphanPolicy::default(),
            concurrency: default_concurrency(),
            ready_timeout: default_ready_timeout(),
        }
    }
}

/// Durations as `"90s"`, `"10m"`, `"1h"` or a number of seconds.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 90s, 10m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

impl ProvisionConfig {
    /// Makes relative paths (inventory, fleet specs) relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(inventory) = &mut self.inventory {
            *inventory = base.join(&*inventory);
        }
        if let Some(claims) = &mut self.claims {
            *claims = base.join(&*claims);
        }
        for fleet in &mut self.fleets {
            *fleet = base.join(&*fleet);
        }
    }

    /// Every problem, each naming its key: settings, the inventory (each host), the
    /// fleet specs (each pool), cloud tokens missing from the environment, sections
    /// whose feature is not built. Reads the files; calls no provider.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.concurrency == 0 {
            out.push("provision.concurrency: must be at least 1".to_owned());
        }
        if self.local_hourly < Decimal::ZERO {
            out.push("provision.local_hourly: must not be negative".to_owned());
        }
        if let Some(path) = &self.inventory
            && let Err(e) = crate::inventory::Inventory::load(path)
        {
            out.push(format!("provision.inventory: {e}"));
        }
        if let Err(Error::Invalid { problems, .. }) = self.load_specs() {
            out.extend(problems);
        }
        for (section, account, built) in [
            ("hetzner", &self.hetzner, cfg!(feature = "hetzner")),
            (
                "digitalocean",
                &self.digitalocean,
                cfg!(feature = "digitalocean"),
            ),
        ] {
            let Some(account) = account else { continue };
            if !built {
                out.push(format!(
                    "provision.{section}: this build has no {section} support (enable the \
                     `{section}` feature)"
                ));
            } else if let Err(Error::Invalid { problems, .. }) = account.token(section) {
                out.extend(
                    problems
                        .into_iter()
                        .map(|p| format!("provision.{section}.{p}")),
                );
            }
        }
        out
    }

    /// The providers it names; every problem (see [`problems`](Self::problems)) at once.
    pub fn providers(&self) -> Result<Vec<Arc<dyn Provider>>> {
        self.checked()?;
        self.build_providers()
    }

    /// Every problem at once as one error, or `Ok` when there is none.
    fn checked(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid {
                what: "provision".to_owned(),
                problems,
            })
        }
    }

    /// The providers of a checked configuration.
    fn build_providers(&self) -> Result<Vec<Arc<dyn Provider>>> {
        let mut out: Vec<Arc<dyn Provider>> = Vec::new();
        if let Some(path) = &self.inventory {
            let claims = self.claims.clone().unwrap_or_else(|| claims_beside(path));
            let p = crate::inventory::Inventory::load(path)
                .and_then(crate::inventory::StaticProvider::new)
                .and_then(|p| p.with_claims_file(claims))?;
            out.push(Arc::new(p));
        }
        if self.local {
            out.push(Arc::new(crate::local::LocalProvider::detect(
                self.local_hourly,
                self.local_currency.clone(),
            )));
        }
        #[cfg(feature = "hetzner")]
        if let Some(account) = &self.hetzner {
            out.push(cloud::hetzner(account)?);
        }
        #[cfg(feature = "digitalocean")]
        if let Some(account) = &self.digitalocean {
            out.push(cloud::digitalocean(account)?);
        }
        Ok(out)
    }

    /// The fleet specs it names, each read and checked; every problem at once.
    pub fn fleet_specs(&self) -> Result<Vec<FleetSpec>> {
        self.load_specs()
    }

    fn load_specs(&self) -> Result<Vec<FleetSpec>> {
        let mut specs = Vec::new();
        let mut problems = Vec::new();
        for path in &self.fleets {
            match FleetSpec::load(path) {
                Ok(spec) => {
                    if specs.iter().any(|s: &FleetSpec| s.name == spec.name) {
                        problems.push(format!(
                            "provision.fleets: {}: a second fleet named {:?}",
                            path.display(),
                            spec.name
                        ));
                    }
                    specs.push(spec);
                }
                Err(e) => problems.push(format!("provision.fleets: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(specs)
        } else {
            Err(Error::Invalid {
                what: "provision".to_owned(),
                problems,
            })
        }
    }
}

/// `machines.toml` → `machines.claims.json`, in the same directory.
fn claims_beside(inventory: &Path) -> PathBuf {
    let stem = inventory
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "inventory".to_owned());
    inventory.with_file_name(format!("{stem}.claims.json"))
}

#[cfg(any(feature = "hetzner", feature = "digitalocean"))]
mod cloud {
    use super::*;

    #[cfg(feature = "hetzner")]
    pub(super) fn hetzner(account: &CloudAccount) -> Result<Arc<dyn Provider>> {
        let token = account.token("hetzner")?;
        let mut p = crate::hetzner::HetznerProvider::new(token);
        if let Some(url) = &account.base_url {
            p = p.base_url(url.clone());
        }
        Ok(Arc::new(p))
    }

    #[cfg(feature = "digitalocean")]
    pub(super) fn digitalocean(account: &CloudAccount) -> Result<Arc<dyn Provider>> {
        let token = account.token("digitalocean")?;
        let mut p = crate::digitalocean::DigitalOceanProvider::new(token);
        if let Some(url) = &account.base_url {
            p = p.base_url(url.clone());
        }
        Ok(Arc::new(p))
    }
}

/// The fleets of a [`ProvisionConfig`]: its providers, its specs and one store of
/// records.
#[derive(Clone)]
pub struct Fleets {
    providers: Vec<Arc<dyn Provider>>,
    specs: Vec<FleetSpec>,
    store: Arc<dyn FleetStore>,
    config: ProvisionConfig,
}

impl std::fmt::Debug for Fleets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleets")
            .field(
                "providers",
                &self.providers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "fleets",
                &self
                    .specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Fleets {
    /// Builds the providers and reads the specs of `config`, recording in `store`.
    pub fn from_config(config: &ProvisionConfig, store: Arc<dyn FleetStore>) -> Result<Self> {
        // One check of everything (it reads the inventory and the specs), then the
        // providers and specs built without checking again.
        config.checked()?;
        let providers = config.build_providers()?;
        let specs = config.load_specs()?;
        Ok(Self {
            providers,
            specs,
            store,
            config: config.clone(),
        })
    }

    /// Fleets of `specs` on `providers` with the default settings.
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        specs: Vec<FleetSpec>,
        store: Arc<dyn FleetStore>,
    ) -> Self {
        Self {
            providers,
            specs,
            store,
            config: ProvisionConfig::default(),
        }
    }

    /// The providers.
    pub fn providers(&self) -> &[Arc<dyn Provider>] {
        &self.providers
    }

    /// The fleet specs.
    pub fn specs(&self) -> &[FleetSpec] {
        &self.specs
    }

    /// The store of records.
    pub fn store(&self) -> &Arc<dyn FleetStore> {
        &self.store
    }

    /// The fleet named `name`, with the configured concurrency, orphan policy and
    /// ready timeout; an error listing the fleets there are otherwise.
    pub fn fleet(&self, name: &str) -> Result<Fleet> {
        let Some(spec) = self.specs.iter().find(|s| s.name == name) else {
            return Err(Error::Invalid {
                what: "fleet".to_owned(),
                problems: vec![format!(
                    "no fleet named {name:?} (configured: {})",
                    self.specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )],
            });
        };
        Ok(
            Fleet::new(spec.clone(), self.providers.clone(), self.store.clone())
                .concurrency(self.config.concurrency)
                .orphans(self.config.orphans)
                .ready_timeout(self.config.ready_timeout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_defaults() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("ten").is_err());
        let c: ProvisionConfig = toml::from_str("local = true\nready_timeout = \"2m\"").unwrap();
        assert_eq!(c.ready_timeout, Duration::from_secs(120));
        assert_eq!(c.concurrency, 16);
        assert_eq!(c.orphans, OrphanPolicy::Adopt);
    }

    #[test]
    fn every_problem_at_once() {
        let c: ProvisionConfig = toml::from_str(
            "concurrency = 0\ninventory = \"/nonexistent/machines.toml\"\nfleets = [\"/nonexistent/f.toml\"]",
        )
        .unwrap();
        let err = Fleets::from_config(&c, Arc::new(crate::state::MemoryFleetStore::default()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("provision.concurrency"), "{err}");
        assert!(
            err.contains("provision.inventory: /nonexistent/machines.toml"),
            "{err}"
        );
        assert!(
            err.contains("provision.fleets: /nonexistent/f.toml"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_token_names_the_variable() {
        let account = CloudAccount::from_env("OPS_TEST_SURELY_UNSET_TOKEN");
        let err = account.token("hetzner").unwrap_err().to_string();
        assert!(
            err.contains("provision.hetzner") && err.contains("OPS_TEST_SURELY_UNSET_TOKEN"),
            "{err}"
        );
    }
}
