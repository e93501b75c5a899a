//! [`StaticProvider`]: machines you already own, from an inventory file, priced by
//! their cost basis so that the cheapest-offering choice weighs them honestly against
//! rented ones.
//!
//! ```toml
//! currency = "EUR"
//!
//! [[hosts]]
//! name = "gpu-1"
//! address = "192.168.10.21"     # an IP address or a host name
//! port = 22                     # default 22
//! user = "ops"                  # the SSH user (default root)
//! key = "keys/ops_ed25519"      # private key, relative to the file
//! host_key = "SHA256:…"         # optional: the only host key accepted (`ssh-keygen -lf`)
//! check_ssh = true              # wait_ready logs in over SSH (default false)
//! region = "home-lab"           # default "owned"
//! cpu = 32
//! memory = "128Gi"
//! gpus = { count = 2, model = "NVIDIA RTX 4090" }
//! cost = { monthly = 180.0 }    # or { hourly = 0.25 }: power, colocation, depreciation
//! ```
//!
//! Each host is one offering (its name is the instance type). Creating a server on it
//! claims it for a fleet; deleting releases it. A host with no cost basis is refused:
//! an owned machine priced at zero would always win and hide what it costs.
//!
//! # SSH reachability (feature `ssh`)
//!
//! [`StaticProvider::check_reachable`] logs in to every host with its user and key and
//! runs `uname -sm` ([`ssh::check`](crate::ssh::check)), and lists every host that
//! failed at once, each error naming the host. A claimed host is only checked by
//! [`wait_ready`](Provider::wait_ready) when the inventory says `check_ssh = true`:
//! then `wait_ready` retries (with backoff) until the host answers or the timeout
//! passes, and fails at once on a refused key, a garbled key file or a changed host
//! key. Without `check_ssh`, `wait_ready` trusts the inventory as before, so an
//! inventory of machines this process cannot reach (a planning copy) still works.
//! `check_ssh = true` without the `ssh` feature is an inventory problem rather than a
//! check silently skipped.
//!
//! Host keys: `host_key` pins one fingerprint; without it the first key a host shows
//! is accepted and remembered for the provider's life (OpenSSH's `accept-new`), and a
//! different key later is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::offering::HOURS_PER_MONTH;
use crate::{Error, Labels, Offering, Provider, Result, Server, ServerSpec, ServerStatus};

/// The name of the static provider.
pub const STATIC: &str = "static";

/// An inventory file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Inventory {
    /// The currency of every cost basis (default EUR).
    #[serde(default = "eur")]
    pub currency: String,
    /// The machines.
    #[serde(default)]
    pub hosts: Vec<Host>,
}

fn eur() -> String {
    "EUR".to_owned()
}

fn default_port() -> u16 {
    22
}

fn default_user() -> String {
    "root".to_owned()
}

fn default_region() -> String {
    "owned".to_owned()
}

/// One owned machine.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Host {
    /// Its name (the offering's instance type).
    pub name: String,
    /// Its address: an IP address or a DNS name.
    pub address: String,
    /// Its SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The SSH user.
    #[serde(default = "default_user")]
    pub user: String,
    /// The SSH private key (relative paths are relative to the inventory file).
    pub key: PathBuf,
    /// Where it is.
    #[serde(default = "default_region")]
    pub region: String,
    /// Cores.
    pub cpu: f64,
    /// Memory: bytes, or a quantity such as `"128Gi"`.
    pub memory: toml::Value,
    /// Its GPUs.
    #[serde(default)]
    pub gpus: Option<HostGpus>,
    /// What it costs to keep: monthly or hourly.
    pub cost: Option<CostBasis>,
    /// The SSH host key's fingerprint (`SHA256:…`, as `ssh-keygen -lf` prints it):
    /// any other key is refused. Without it the first key seen is accepted.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Whether [`wait_ready`](Provider::wait_ready) waits until the host answers over
    /// SSH (feature `ssh`; default false).
    #[serde(default)]
    pub check_ssh: bool,
}

/// GPUs of an owned machine.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HostGpus {
    /// How many.
    pub count: u32,
    /// Their model.
    pub model: String,
}

/// What an owned machine costs: power, colocation, depreciation.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CostBasis {
    /// Per month (divided by 730 hours).
    pub monthly: Option<f64>,
    /// Per hour.
    pub hourly: Option<f64>,
}

impl Inventory {
    /// Reads and checks an inventory file; every problem is reported at once, each
    /// naming its host and field. Key paths become relative to the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        let mut inventory = Self::parse(&text).map_err(|problems| Error::InvalidInventory {
            file: file.clone(),
            problems,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for h in &mut inventory.hosts {
            if h.key.is_relative() {
                h.key = base.join(&h.key);
            }
        }
        let problems = inventory.problems(true);
        if problems.is_empty() {
            Ok(inventory)
        } else {
            Err(Error::InvalidInventory { file, problems })
        }
    }

    /// Parses TOML text (no file checks); every problem at once.
    pub fn parse(text: &str) -> std::result::Result<Self, Vec<String>> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| vec![e.to_string().trim().to_owned()])?;
        let inventory: Inventory = serde_path_to_error::deserialize(de)
            .map_err(|e| vec![format!("{}: {}", e.path(), e.inner().to_string().trim())])?;
        let problems = inventory.problems(false);
        if problems.is_empty() {
            Ok(inventory)
        } else {
            Err(problems)
        }
    }

    /// Every problem, each naming its host: duplicate names, bad addresses, missing
    /// keys (when `files`), no resources, no or two cost bases.
    pub fn problems(&self, files: bool) -> Vec<String> {
        let mut out = Vec::new();
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            out.push(format!(
                "currency: {:?} is not an ISO 4217 code",
                self.currency
            ));
        }
        let mut names = BTreeSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let who = if h.name.is_empty() {
                format!("hosts[{i}]")
            } else {
                format!("host {:?}", h.name)
            };
            if h.name.is_empty() {
                out.push(format!("{who}.name: empty"));
            } else if !names.insert(h.name.as_str()) {
                out.push(format!("{who}: listed twice"));
            }
            if !valid_address(&h.address) {
                out.push(format!(
                    "{who}.address: {:?} is neither an IP address nor a host name",
                    h.address
                ));
            }
            if h.port == 0 {
                out.push(format!("{who}.port: 0 is not a port"));
            }
            if let Some(k) = &h.host_key
                && !valid_fingerprint(k)
            {
                out.push(format!(
                    "{who}.host_key: {k:?} is not a SHA256 fingerprint (`SHA256:` and 43 base64 characters, as `ssh-keygen -lf` prints it)"
                ));
            }
            if h.check_ssh && !cfg!(feature = "ssh") {
                out.push(format!(
                    "{who}.check_ssh: needs ops-provision built with the `ssh` feature"
                ));
            }
            if files && !h.key.is_file() {
                out.push(format!(
                    "{who}.key: {} is not a readable file",
                    h.key.display()
                ));
            }
            if !(h.cpu.is_finite() && h.cpu > 0.0) {
                out.push(format!(
                    "{who}.cpu: {} is not a number of cores above 0",
                    h.cpu
                ));
            }
            if let Err(e) = memory_bytes(&h.memory) {
                out.push(format!("{who}.memory: {e}"));
            }
            if let Some(g) = &h.gpus
                && (g.count == 0 || g.model.trim().is_empty())
            {
                out.push(format!("{who}.gpus: needs a count above 0 and a model"));
            }
            match &h.cost {
                None => out.push(format!(
                    "{who}.cost: missing: give {{ monthly = … }} or {{ hourly = … }} (power, colocation, depreciation) so the machine is priced honestly"
                )),
                Some(CostBasis {
                    monthly: Some(_),
                    hourly: Some(_),
                }) => out.push(format!("{who}.cost: give monthly or hourly, not both")),
                Some(CostBasis {
                    monthly: None,
                    hourly: None,
                }) => out.push(format!("{who}.cost: give monthly or hourly")),
                Some(CostBasis { monthly, hourly }) => {
                    let v = monthly.or(*hourly).unwrap_or_default();
                    if !(v.is_finite() && v >= 0.0) {
                        out.push(format!("{who}.cost: {v} is not an amount"));
                    }
                }
            }
        }
        out
    }
}

fn valid_address(address: &str) -> bool {
    if address.parse::<IpAddr>().is_ok() {
        return true;
    }
    !address.is_empty()
        && address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn valid_fingerprint(fingerprint: &str) -> bool {
    fingerprint.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    })
}

fn memory_bytes(v: &toml::Value) -> std::result::Result<u64, String> {
    match v {
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        toml::Value::String(s) => ops_core::Resources::parse_memory(s)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                if b > 0 {
                    Ok(b)
                } else {
                    Err(format!("{s:?} is zero"))
                }
            }),
        other => Err(format!(
            "{other} is not a memory quantity (bytes or \"128Gi\")"
        )),
    }
}

impl Host {
    fn hourly(&self) -> Decimal {
        let per = |v: f64| Decimal::from_f64_retain(v).unwrap_or_default();
        match &self.cost {
            Some(CostBasis {
                monthly: Some(m), ..
            }) => (per(*m) / Decimal::from(HOURS_PER_MONTH)).round_dp(6),
            Some(CostBasis {
                hourly: Some(h), ..
            }) => per(*h),
            _ => Decimal::ZERO,
        }
    }
}

/// The static provider over an [`Inventory`]; see the [module documentation](self).
#[derive(Debug)]
pub struct StaticProvider {
    inventory: Inventory,
    claims: Mutex<BTreeMap<String, Server>>,
    claims_file: Option<PathBuf>,
    #[cfg(feature = "ssh")]
    known_hosts: crate::ssh::KnownHosts,
}

/// How many hosts [`StaticProvider::check_reachable`] checks at a time.
#[cfg(feature = "ssh")]
pub const REACH_CONCURRENCY: usize = 16;

/// The longest one SSH attempt of [`wait_ready`](Provider::wait_ready) may take (a
/// host that drops packets would otherwise use the whole timeout in one try).
#[cfg(feature = "ssh")]
const SSH_ATTEMPT: Duration = Duration::from_secs(30);

impl StaticProvider {
    /// A provider over `inventory` (checked with [`Inventory::problems`]).
    pub fn new(inventory: Inventory) -> Result<Self> {
        let problems = inventory.problems(false);
        if !problems.is_empty() {
            return Err(Error::InvalidInventory {
                file: "(in memory)".to_owned(),
                problems,
            });
        }
        Ok(Self {
            inventory,
            claims: Mutex::default(),
            claims_file: None,
            #[cfg(feature = "ssh")]
            known_hosts: crate::ssh::KnownHosts::new(),
        })
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Keeps the claims (which host serves which fleet, with its labels) in `path`, a
    /// JSON file read now if it exists and rewritten atomically on every create and
    /// delete: what a cloud account is to its servers, so that another process (the
    /// next `fleet plan`) sees what this one claimed. Without it claims live in memory.
    /// A claim of a host no longer in the inventory is kept (and listed) until deleted.
    pub fn with_claims_file(mut self, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let claims = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<BTreeMap<String, Server>>(&text).map_err(|e| {
                Error::Invalid {
                    what: format!("claims file {}", path.display()),
                    problems: vec![format!("not the claims JSON this provider writes: {e}")],
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        self.claims = Mutex::new(claims);
        self.claims_file = Some(path);
        Ok(self)
    }

    /// Writes the claims to the claims file (if any): a temporary file renamed over it.
    fn persist(&self, claims: &BTreeMap<String, Server>) -> Result<()> {
        let Some(path) = &self.claims_file else {
            return Ok(());
        };
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let text =
            serde_json::to_string_pretty(claims).map_err(|e| io(std::io::Error::other(e)))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Logs in to every host over SSH (whether claimed or not, `check_ssh` or not),
    /// [`REACH_CONCURRENCY`] at a time, each within `timeout`; every failure is in the
    /// report at once, each naming its host. Host keys are checked as in the
    /// [module documentation](self).
    #[cfg(feature = "ssh")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
    pub async fn check_reachable(&self, timeout: Duration) -> crate::ssh::Reachability {
        let targets: Vec<crate::ssh::Target> =
            self.inventory.hosts.iter().map(Into::into).collect();
        let report = crate::ssh::check_each(&targets, REACH_CONCURRENCY, |t| {
            self.known_hosts.check(t, timeout)
        })
        .await;
        tracing::info!(
            hosts = report.results.len(),
            unreachable = report.failures().count(),
            "static: SSH reachability checked"
        );
        report
    }

    /// The host keys seen so far (and pinned by later checks).
    #[cfg(feature = "ssh")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
    pub fn known_hosts(&self) -> &crate::ssh::KnownHosts {
        &self.known_hosts
    }

    /// Retries [`ssh::check`](crate::ssh::check) with backoff until `host` answers
    /// or `timeout` passes; a refused key or host key and a bad key file end it at
    /// once.
    #[cfg(feature = "ssh")]
    async fn wait_for_ssh(&self, host: &Host, timeout: Duration) -> Result<crate::ssh::Reach> {
        let target = crate::ssh::Target::from(host);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(200);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = match self.known_hosts.check(&target, left.min(SSH_ATTEMPT)).await {
                Ok(reach) => return Ok(reach),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            if tokio::time::Instant::now() + backoff >= deadline {
                let last = match &e {
                    Error::Transient { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                return Err(Error::Transient {
                    provider: STATIC.to_owned(),
                    message: format!(
                        "host {:?} not reachable by SSH within {timeout:?} ({tries} tries): {last}",
                        host.name
                    ),
                    retry_after: None,
                });
            }
            tracing::debug!(host = %host.name, tries, error = %e, "static: waiting for SSH");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn host(&self, name: &str) -> Option<&Host> {
        self.inventory.hosts.iter().find(|h| h.name == name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Server>> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Provider for StaticProvider {
    fn name(&self) -> &str {
        STATIC
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        let claimed = self.lock();
        Ok(self
            .inventory
            .hosts
            .iter()
            .map(|h| {
                let mut o = Offering::new(
                    STATIC,
                    h.name.clone(),
                    h.region.clone(),
                    (h.cpu * 1000.0) as u64,
                    memory_bytes(&h.memory).unwrap_or(0),
                    h.hourly(),
                    self.inventory.currency.clone(),
                );
                if let Some(g) = &h.gpus {
                    o = o.with_gpus(g.count, g.model.clone());
                }
                o.owned = true;
                o.available = Some(!claimed.contains_key(&h.name));
                o
            })
            .collect())
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server> {
        let Some(host) = self.host(&spec.instance_type) else {
            return Err(Error::InvalidRequest {
                provider: STATIC.to_owned(),
                field: "instance_type".to_owned(),
                message: format!("no host {:?} in the inventory", spec.instance_type),
            });
        };
        let mut claims = self.lock();
        if let Some(server) = claims.get(&host.name) {
            if server.made_for(spec) {
                return Ok(server.clone());
            }
            return Err(Error::Capacity {
                provider: STATIC.to_owned(),
                offering: host.name.clone(),
                region: host.region.clone(),
                message: format!(
                    "host {:?} is already claimed by {:?}",
                    host.name, server.name
                ),
            });
        }
        let server = Server {
            id: host.name.clone(),
            name: spec.name.clone(),
            provider: STATIC.to_owned(),
            instance_type: host.name.clone(),
            region: host.region.clone(),
            status: ServerStatus::Running,
            address: host.address.parse().ok(),
            labels: spec.labels.clone(),
            created_at: Utc::now(),
        };
        claims.insert(host.name.clone(), server.clone());
        if let Err(e) = self.persist(&claims) {
            // Not claimed unless recorded: a claim only in memory would vanish with
            // this process while the fleet believes in it.
            claims.remove(&host.name);
            return Err(e);
        }
        Ok(server)
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<Server>> {
        Ok(self
            .lock()
            .values()
            .filter(|s| s.matches(selector))
            .cloned()
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<Server>> {
        Ok(self.lock().get(id).cloned())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let mut claims = self.lock();
        if let Some(server) = claims.remove(id)
            && let Err(e) = self.persist(&claims)
        {
            claims.insert(id.to_owned(), server);
            return Err(e);
        }
        Ok(())
    }

    /// The claimed server at once, or (for a host with `check_ssh = true`, feature
    /// `ssh`) once it answers over SSH; see the [module documentation](self).
    async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<Server> {
        let server = self.get(id).await?.ok_or_else(|| Error::NotFound {
            provider: STATIC.to_owned(),
            id: id.to_owned(),
        })?;
        #[cfg(feature = "ssh")]
        if let Some(host) = self.host(&server.instance_type).filter(|h| h.check_ssh) {
            self.wait_for_ssh(host, timeout).await?;
        }
        #[cfg(not(feature = "ssh"))]
        let _ = timeout;
        Ok(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_names_its_host() {
        let text = r#"
            currency = "EUR"
            [[hosts]]
            name = "a"
            address = "bad address!"
            key = "k"
            cpu = 0
            memory = "lots"
            [[hosts]]
            name = "a"
            address = "10.0.0.1"
            key = "k"
            cpu = 4
            memory = "8Gi"
            cost = { monthly = 10.0, hourly = 1.0 }
        "#;
        let problems = Inventory::parse(text).unwrap_err();
        let joined = problems.join("\n");
        for needle in [
            "host \"a\".address: \"bad address!\"",
            "host \"a\".cpu: 0",
            "host \"a\".memory",
            "host \"a\".cost: missing",
            "host \"a\": listed twice",
            "host \"a\".cost: give monthly or hourly, not both",
        ] {
            assert!(
                joined.contains(needle),
                "{needle:?} missing from:\n{joined}"
            );
        }
    }

    #[test]
    fn ssh_fields_are_checked() {
        let text = r#"
            [[hosts]]
            name = "a"
            address = "10.0.0.1"
            key = "k"
            host_key = "MD5:aa:bb"
            check_ssh = true
            cpu = 4
            memory = "8Gi"
            cost = { monthly = 10.0 }
        "#;
        let joined = Inventory::parse(text).unwrap_err().join("\n");
        assert!(
            joined.contains("host \"a\".host_key: \"MD5:aa:bb\""),
            "{joined}"
        );
        assert_eq!(
            joined.contains("host \"a\".check_ssh"),
            !cfg!(feature = "ssh"),
            "{joined}"
        );
        let good = text.replace(
            "MD5:aa:bb",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
        );
        if cfg!(feature = "ssh") {
            let inventory = Inventory::parse(&good).unwrap();
            assert!(inventory.hosts[0].check_ssh);
        }
    }

    #[test]
    fn a_monthly_cost_becomes_an_hourly_price() {
        let text = r#"
            [[hosts]]
            name = "gpu-1"
            address = "gpu-1.lab.example"
            key = "k"
            cpu = 32
            memory = "128Gi"
            gpus = { count = 2, model = "NVIDIA RTX 4090" }
            cost = { monthly = 146.0 }
        "#;
        let inventory = Inventory::parse(text).unwrap();
        assert_eq!(inventory.hosts[0].hourly(), Decimal::new(2, 1));
    }
}
