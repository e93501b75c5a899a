//! Fleets: a declarative spec (pools of N servers, each pool an offering or a resource
//! request) → [`plan`] (what would be created and deleted, the hourly and monthly cost
//! before and after) → [`Fleet::apply`] with bounded concurrency, failover, and partial
//! failures reported per slot. The providers' labels are the source of truth: a plan
//! starts from what really exists (every server labelled with the fleet), so applying
//! again after a crash or a partial failure picks up where it stopped, and a server
//! whose slot the spec no longer has is planned for deletion.
//!
//! [`Fleet`] adds records ([`FleetStore`]: in memory, SQLite or PostgreSQL) written with
//! the events of each change in one transaction, [`Fleet::refresh`] (records against
//! what exists), the orphan sweep ([`Fleet::sweep`], by [`OrphanPolicy`]) and
//! [`Fleet::destroy`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use futures::StreamExt;
use ops_core::Event;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::choice::{self, Failover, Ranking, ResourceRequest};
use crate::state::{Change, FleetStore, NodeKey, NodeRecord, NodeState};
use crate::{
    Error, FLEET, Labels, MANAGED_BY, MANAGED_BY_OPS, Offering, POOL, Provider, Result, Server,
    ServerSpec, TOKEN, token,
};

/// `ops.node.provisioned`: a server was created for a fleet.
pub const NODE_PROVISIONED: &str = "ops.node.provisioned";
/// `ops.node.ready`: a created server runs (and, for owned machines, answers SSH).
pub const NODE_READY: &str = "ops.node.ready";
/// `ops.node.adopted`: a server labelled as a fleet's that its records did not know (an
/// orphan) was recorded as the fleet's.
pub const NODE_ADOPTED: &str = "ops.node.adopted";
/// `ops.node.deleted`: a server was deleted (the provider confirmed it is gone).
pub const NODE_DELETED: &str = "ops.node.deleted";
/// `ops.node.failed`: a slot could not be provisioned.
pub const NODE_FAILED: &str = "ops.node.failed";
/// `ops.fleet.plan.applied`: a plan was applied (with what was done and what failed).
pub const FLEET_PLAN_APPLIED: &str = "ops.fleet.plan.applied";

/// A fleet: named pools of servers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetSpec {
    /// The fleet's name (a label value on every server).
    pub name: String,
    /// Prices are compared in this currency (default EUR).
    #[serde(default = "eur")]
    pub currency: String,
    /// Exchange rates into `currency`.
    #[serde(default)]
    pub rates: BTreeMap<String, Decimal>,
    /// The pools.
    #[serde(default)]
    pub pools: Vec<PoolSpec>,
}

fn eur() -> String {
    "EUR".to_owned()
}

fn image() -> String {
    "ubuntu-24.04".to_owned()
}

/// A pool: `count` servers of one offering, or of the cheapest that fits a request.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolSpec {
    /// The pool's name (a label value).
    pub name: String,
    /// How many servers.
    pub count: u32,
    /// A fixed offering: `{ provider, instance_type, region }`.
    #[serde(default)]
    pub offering: Option<OfferingRef>,
    /// Or what each server needs; the cheapest fitting offering is taken, and the next
    /// ones on capacity errors.
    #[serde(default)]
    pub request: Option<ResourceRequest>,
    /// The OS image.
    #[serde(default = "image")]
    pub image: String,
    /// SSH keys to install.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Extra labels.
    #[serde(default)]
    pub labels: Labels,
    /// The Ops environment the servers serve (a label).
    #[serde(default)]
    pub environment: Option<String>,
}

/// A fixed offering of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OfferingRef {
    /// The provider.
    pub provider: String,
    /// The instance type.
    pub instance_type: String,
    /// The region.
    pub region: String,
}

impl FleetSpec {
    /// Reads a fleet spec (TOML); every problem at once.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Invalid { problems, .. } => Error::Invalid {
                what: format!("fleet spec {}", path.display()),
                problems,
            },
            other => other,
        })
    }

    /// Parses TOML text; every problem at once.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |problems| Error::Invalid {
            what: "fleet spec".to_owned(),
            problems,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(vec![e.to_string().trim().to_owned()]))?;
        let spec: FleetSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            invalid(vec![format!(
                "{}: {}",
                e.path(),
                e.inner().to_string().trim()
            )])
        })?;
        let problems = spec.problems();
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(invalid(problems))
        }
    }

    /// Every problem with the spec itself, each naming its pool and field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !label_value(&self.name) {
            out.push(format!(
                "name: {:?} is not a label value (letters, digits, '-', '_', '.'; at most 63)",
                self.name
            ));
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let who = format!("pools[{i}] ({:?})", p.name);
            if !label_value(&p.name) {
                out.push(format!("{who}.name: not a label value"));
            }
            if !names.insert(p.name.as_str()) {
                out.push(format!("{who}: a second pool named {:?}", p.name));
            }
            match (&p.offering, &p.request) {
                (Some(_), Some(_)) => {
                    out.push(format!("{who}: give offering or request, not both"))
                }
                (None, None) => out.push(format!("{who}: give an offering or a request")),
                (None, Some(r)) => out.extend(
                    r.problems()
                        .into_iter()
                        .map(|e| format!("{who}.request.{e}")),
                ),
                (Some(_), None) => {}
            }
            for key in p.labels.keys() {
                if key.starts_with("ops.") {
                    out.push(format!("{who}.labels.{key}: the ops. prefix is Ops' own"));
                }
            }
        }
        out
    }
}

fn label_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One server to create.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Create {
    /// Its pool.
    pub pool: String,
    /// Its slot in the pool.
    pub slot: u32,
    /// What to create (instance type and region of the first candidate).
    pub spec: ServerSpec,
    /// The offerings to try, cheapest first.
    pub ranking: Ranking,
}

/// One server to delete.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delete {
    /// The server.
    pub server: Server,
    /// Why (`pool "gpu" has 2 slots; this is slot 3`).
    pub reason: String,
    /// Whether a create of the same slot waits for this delete (an orphan deleted by
    /// [`OrphanPolicy::Delete`] and made afresh).
    pub replaced: bool,
}

/// What applying a spec would do, and what it would cost.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Plan {
    /// The fleet.
    pub fleet: String,
    /// The currency of the costs.
    pub currency: String,
    /// Servers to create.
    pub create: Vec<Create>,
    /// Servers to delete.
    pub delete: Vec<Delete>,
    /// Servers kept as they are.
    pub keep: Vec<Server>,
    /// Hourly cost of the fleet now.
    pub hourly_before: Decimal,
    /// Hourly cost after the plan is applied (with the first candidate of each create).
    pub hourly_after: Decimal,
    /// Servers labelled as this fleet's that its records do not know (a crash between
    /// create and record, or records kept elsewhere): orphans, handled by the fleet's
    /// [`OrphanPolicy`]. Empty for a plan made without records ([`plan`]).
    pub unrecorded: Vec<Server>,
    /// Records of servers the providers no longer have (deleted outside Ops); applying
    /// removes them, with an `ops.node.deleted` event.
    pub gone: Vec<NodeRecord>,
    /// The hourly price of each offering (`provider/type@region`) in `currency`.
    prices: BTreeMap<String, Decimal>,
}

impl Plan {
    /// Whether applying changes nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }

    /// The plan as a table: each create with its offering and price, each delete with
    /// its reason, and the cost before and after, per hour and per month.
    pub fn table(&self) -> String {
        let mut out = format!("Plan for fleet {:?}:\n", self.fleet);
        for c in &self.create {
            let best = c.ranking.candidates.first();
            let _ = writeln!(
                out,
                "  + {:<24} {:<40} {:>10} {}/h",
                format!("{}/{}", c.pool, c.slot),
                best.map(|b| b.offering.key()).unwrap_or_default(),
                best.map(|b| b.hourly.round_dp(4).normalize().to_string())
                    .unwrap_or_default(),
                self.currency
            );
        }
        for d in &self.delete {
            let _ = writeln!(
                out,
                "  - {:<24} {:<40} {}",
                d.server.name,
                format!(
                    "{}/{}@{}",
                    d.server.provider, d.server.instance_type, d.server.region
                ),
                d.reason
            );
        }
        let _ = writeln!(out, "  = {} kept", self.keep.len());
        for s in &self.unrecorded {
            let _ = writeln!(
                out,
                "  ! {:<24} {:<40} labelled as this fleet's but not in its records (orphan)",
                s.name,
                format!("{}/{}@{}", s.provider, s.instance_type, s.region),
            );
        }
        for r in &self.gone {
            let _ = writeln!(
                out,
                "  ? {:<24} {:<40} recorded, but the provider no longer has it",
                r.server.name,
                format!("{}/{}", r.server.provider, r.server.id),
            );
        }
        let month = Decimal::from(crate::HOURS_PER_MONTH);
        let _ = writeln!(
            out,
            "Cost: {} → {} {}/h ({} → {} {}/month)",
            self.hourly_before.round_dp(4).normalize(),
            self.hourly_after.round_dp(4).normalize(),
            self.currency,
            (self.hourly_before * month).round_dp(2).normalize(),
            (self.hourly_after * month).round_dp(2).normalize(),
            self.currency
        );
        out
    }
}

/// The selector of every server of `fleet`.
pub fn fleet_selector(fleet: &str) -> Labels {
    [
        (MANAGED_BY.to_owned(), MANAGED_BY_OPS.to_owned()),
        (FLEET.to_owned(), fleet.to_owned()),
    ]
    .into()
}

/// Plans `spec` against what `providers` really have (their servers labelled with the
/// fleet) and what they offer. Every problem of the spec, and every pinned offering no
/// provider has, is an error naming the pool and field.
pub async fn plan(spec: &FleetSpec, providers: &[&dyn Provider]) -> Result<Plan> {
    plan_with(spec, providers, None).await
}

/// Plans with the fleet's records: `records` (when given) names the servers the fleet
/// knows and its orphan policy; orphans in wanted slots are replaced under
/// [`OrphanPolicy::Delete`].
async fn plan_with(
    spec: &FleetSpec,
    providers: &[&dyn Provider],
    records: Option<(&[NodeRecord], OrphanPolicy)>,
) -> Result<Plan> {
    let problems = spec.problems();
    if !problems.is_empty() {
        return Err(Error::Invalid {
            what: "fleet spec".to_owned(),
            problems,
        });
    }
    let mut offerings: Vec<Offering> = Vec::new();
    let mut existing: Vec<Server> = Vec::new();
    let selector = fleet_selector(&spec.name);
    for p in providers {
        offerings.extend(p.offerings().await.map_err(|e| at_plan(e, "offerings"))?);
        existing.extend(p.list(&selector).await.map_err(|e| at_plan(e, "servers"))?);
    }
    let price_of = |s: &Server| -> Decimal {
        offerings
            .iter()
            .find(|o| {
                o.provider == s.provider
                    && o.instance_type == s.instance_type
                    && o.region == s.region
            })
            .map(|o| {
                if o.currency == spec.currency {
                    o.hourly
                } else {
                    spec.rates
                        .get(&o.currency)
                        .map_or(Decimal::ZERO, |r| o.hourly * r)
                }
            })
            .unwrap_or(Decimal::ZERO)
    };
    let mut wanted: BTreeMap<String, (&PoolSpec, u32)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut rankings: BTreeMap<&str, Ranking> = BTreeMap::new();
    let mut unfit: BTreeMap<&str, String> = BTreeMap::new();
    let mut images: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (i, pool) in spec.pools.iter().enumerate() {
        let request = match (&pool.offering, &pool.request) {
            (Some(o), _) => {
                let Some(found) = offerings.iter().find(|x| {
                    x.provider == o.provider
                        && x.instance_type == o.instance_type
                        && x.region == o.region
                }) else {
                    let field = if !providers.iter().any(|p| p.name() == o.provider) {
                        format!("provider: {:?} is not configured", o.provider)
                    } else if !offerings
                        .iter()
                        .any(|x| x.provider == o.provider && x.instance_type == o.instance_type)
                    {
                        format!(
                            "instance_type: {} offers no {:?}",
                            o.provider, o.instance_type
                        )
                    } else {
                        format!(
                            "region: {} offers {} only in {}",
                            o.provider,
                            o.instance_type,
                            offerings
                                .iter()
                                .filter(|x| x.provider == o.provider
                                    && x.instance_type == o.instance_type)
                                .map(|x| x.region.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    problems.push(format!("pools[{i}] ({:?}).offering.{field}", pool.name));
                    continue;
                };
                ResourceRequest::new()
                    .provider(found.provider.clone())
                    .region(found.region.clone())
                    .currency(spec.currency.clone())
                    .cpu_millis(found.cpu_millis)
                    .memory_bytes(found.memory_bytes)
            }
            (None, Some(r)) => {
                let mut r = r.clone();
                r.currency.clone_from(&spec.currency);
                for (k, v) in &spec.rates {
                    r.rates.entry(k.clone()).or_insert(*v);
                }
                r
            }
            (None, None) => continue,
        };
        let mut ranking = choice::rank(&offerings, &request)?;
        if let Some(o) = &pool.offering {
            ranking
                .candidates
                .retain(|c| c.offering.instance_type == o.instance_type);
        }
        // The image, asked once per provider at plan time: candidates at providers
        // without it drop out, and a pool left with none is a problem naming the field.
        if pool.count > 0 {
            let mut lacking: Vec<String> = Vec::new();
            for name in ranking
                .candidates
                .iter()
                .map(|c| c.offering.provider.clone())
                .collect::<BTreeSet<_>>()
            {
                let key = (name.clone(), pool.image.clone());
                let has = match images.get(&key) {
                    Some(has) => *has,
                    None => {
                        let Some(p) = providers.iter().find(|p| p.name() == name) else {
                            continue;
                        };
                        let has = p
                            .has_image(&pool.image)
                            .await
                            .map_err(|e| at_plan(e, "images"))?;
                        images.insert(key, has);
                        has
                    }
                };
                if !has {
                    lacking.push(name);
                }
            }
            if !lacking.is_empty() {
                let before = ranking.candidates.len();
                ranking
                    .candidates
                    .retain(|c| !lacking.contains(&c.offering.provider));
                if before > 0 && ranking.candidates.is_empty() {
                    problems.push(format!(
                        "pools[{i}] ({:?}).image: {} {} no image {:?}",
                        pool.name,
                        lacking.join(", "),
                        if lacking.len() == 1 { "has" } else { "have" },
                        pool.image
                    ));
                    continue;
                }
            }
        }
        // No fitting offering is a problem only when the pool needs a server made (an
        // owned machine this very pool holds is not available, and need not be).
        if pool.count > 0
            && let Err(e) = ranking.best()
        {
            unfit.insert(
                pool.name.as_str(),
                format!("pools[{i}] ({:?}): {e}", pool.name),
            );
        }
        for slot in 0..pool.count {
            wanted.insert(token(&spec.name, &pool.name, slot), (pool, slot));
        }
        rankings.insert(pool.name.as_str(), ranking);
    }
    if !problems.is_empty() {
        problems.extend(unfit.into_values());
        return Err(Error::Invalid {
            what: format!("fleet {:?}", spec.name),
            problems,
        });
    }
    let known: Option<BTreeSet<(&str, &str)>> = records.map(|(records, _)| {
        records
            .iter()
            .map(|r| (r.server.provider.as_str(), r.server.id.as_str()))
            .collect()
    });
    let is_known = |s: &Server| {
        known
            .as_ref()
            .is_none_or(|k| k.contains(&(s.provider.as_str(), s.id.as_str())))
    };
    let replace_orphans = matches!(records, Some((_, OrphanPolicy::Delete)));
    let mut plan = Plan {
        fleet: spec.name.clone(),
        currency: spec.currency.clone(),
        create: Vec::new(),
        delete: Vec::new(),
        keep: Vec::new(),
        hourly_before: existing.iter().map(&price_of).sum(),
        hourly_after: Decimal::ZERO,
        unrecorded: existing.iter().filter(|s| !is_known(s)).cloned().collect(),
        gone: Vec::new(),
        prices: offerings
            .iter()
            .map(|o| {
                let price = if o.currency == spec.currency {
                    o.hourly
                } else {
                    spec.rates
                        .get(&o.currency)
                        .map_or(Decimal::ZERO, |r| o.hourly * r)
                };
                (o.key(), price)
            })
            .collect(),
    };
    if let Some((records, _)) = records {
        plan.gone = records
            .iter()
            .filter(|r| {
                !existing
                    .iter()
                    .any(|s| s.provider == r.server.provider && s.id == r.server.id)
            })
            .cloned()
            .collect();
    }
    let mut present = BTreeSet::new();
    for server in existing {
        let tok = server.labels.get(TOKEN).cloned().unwrap_or_default();
        if wanted.contains_key(&tok) && replace_orphans && !is_known(&server) {
            plan.delete.push(Delete {
                server,
                reason:
                    "orphan (labelled as this fleet's, not in its records); orphan policy: delete"
                        .to_owned(),
                replaced: true,
            });
        } else if wanted.contains_key(&tok) && present.insert(tok) {
            plan.hourly_after += price_of(&server);
            plan.keep.push(server);
        } else {
            let pool = server.labels.get(POOL).cloned().unwrap_or_default();
            let reason = match spec.pools.iter().find(|p| p.name == pool) {
                Some(p) => format!(
                    "pool {pool:?} has {} slot(s); this server is not one of them",
                    p.count
                ),
                None => format!("pool {pool:?} is not in the spec"),
            };
            plan.delete.push(Delete {
                server,
                reason,
                replaced: false,
            });
        }
    }
    // Slots to fill in spec order. An owned machine is one server: once a slot takes
    // it, later slots rank without it (so the plan and its cost are what apply does).
    let mut missing: Vec<(usize, &PoolSpec, u32)> = wanted
        .iter()
        .filter(|(tok, _)| !present.contains(*tok))
        .map(|(_, (pool, slot))| {
            let order = spec
                .pools
                .iter()
                .position(|p| p.name == pool.name)
                .unwrap_or(0);
            (order, *pool, *slot)
        })
        .collect();
    missing.sort_by_key(|(order, _, slot)| (*order, *slot));
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (_, pool, slot) in missing {
        let slot = &slot;
        let mut ranking = rankings[pool.name.as_str()].clone();
        ranking
            .candidates
            .retain(|c| !(c.offering.owned && taken.contains(&c.offering.key())));
        let Some(best) = ranking.candidates.first().cloned() else {
            match unfit.remove(pool.name.as_str()) {
                Some(problem) => problems.push(problem),
                None if !rankings[pool.name.as_str()].candidates.is_empty() => {
                    problems.push(format!(
                        "pool {:?}: slot {slot} has no owned machine left that fits (each \
                         serves one slot) and no rented offering fits",
                        pool.name
                    ));
                }
                None => {}
            }
            continue;
        };
        if best.offering.owned {
            taken.insert(best.offering.key());
        }
        let mut server = ServerSpec::new(
            format!("{}-{}-{}", spec.name, pool.name, slot),
            best.offering.instance_type.clone(),
            best.offering.region.clone(),
            &spec.name,
            &pool.name,
            *slot,
        );
        server.image.clone_from(&pool.image);
        server.ssh_keys.clone_from(&pool.ssh_keys);
        for (k, v) in &pool.labels {
            server.labels.insert(k.clone(), v.clone());
        }
        if let Some(env) = &pool.environment {
            server
                .labels
                .insert("ops.environment".to_owned(), env.clone());
        }
        plan.hourly_after += best.hourly;
        plan.create.push(Create {
            pool: pool.name.clone(),
            slot: *slot,
            spec: server,
            ranking,
        });
    }
    if !problems.is_empty() {
        return Err(Error::Invalid {
            what: format!("fleet {:?}", spec.name),
            problems,
        });
    }
    plan.create
        .sort_by(|a, b| (a.pool.as_str(), a.slot).cmp(&(b.pool.as_str(), b.slot)));
    Ok(plan)
}

/// A provider's refusal while planning, saying what was asked; a refused credential
/// names the field to fix (`token`).
fn at_plan(e: Error, what: &str) -> Error {
    match e {
        Error::Authentication { provider, message } => Error::Authentication {
            message: format!(
                "listing {what} at plan time: {message}; token: the API token was refused \
                 (check its value, its project and that it may read and write)"
            ),
            provider,
        },
        other => other,
    }
}

/// What to do with orphans: servers labelled as a fleet's that its records do not know
/// (a crash between a create and its record, or a record lost).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OrphanPolicy {
    /// Record an orphan that fills a slot the spec wants (`ops.node.adopted`); one the
    /// spec does not want is deleted like any other surplus server. The default.
    #[default]
    Adopt,
    /// Delete every orphan; the slot is created afresh (after the delete is confirmed).
    Delete,
    /// Touch nothing; list orphans in plans and sweep reports.
    Report,
}

/// A step of [`Fleet::apply`], for progress output.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Progress {
    /// A server was created (or found made by an earlier try) and recorded.
    Created {
        /// `pool/slot`.
        slot: String,
        /// The server.
        server: Server,
    },
    /// A created server runs.
    Ready {
        /// `pool/slot`.
        slot: String,
        /// The server.
        server: Server,
    },
    /// An offering failed for capacity or quota and the next one is tried.
    Failover(Failover),
    /// A server was deleted (confirmed gone) and its record removed.
    Deleted {
        /// The server.
        server: Server,
    },
    /// An orphan was adopted.
    Adopted {
        /// The server.
        server: Server,
    },
    /// A slot or a server failed.
    Failed {
        /// `pool/slot` or the server's name.
        what: String,
        /// What went wrong.
        error: String,
    },
}

type ProgressFn = std::sync::Arc<dyn Fn(Progress) + Send + Sync>;

/// What [`Fleet::apply`] (and [`Fleet::destroy`]) did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Servers created (or found made by an earlier try).
    pub created: Vec<Server>,
    /// Servers created and running.
    pub ready: Vec<Server>,
    /// Servers deleted (the provider confirmed they are gone).
    pub deleted: Vec<Server>,
    /// Orphans adopted.
    pub adopted: Vec<Server>,
    /// Records removed because the provider no longer has their servers.
    pub gone: Vec<NodeRecord>,
    /// Slots or servers that failed, with the error. A server created but not recorded
    /// is among them, naming the server (the next plan or sweep finds it by its labels).
    pub failed: Vec<(String, Error)>,
    /// Failover steps taken.
    pub failovers: Vec<Failover>,
    /// The events written: each slot's in the order they happened (slots run
    /// concurrently, so the outbox may interleave them differently).
    pub events: Vec<Event>,
}

impl ApplyReport {
    /// Whether everything asked for was done.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// What [`Fleet::refresh`] found and did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RefreshReport {
    /// Records removed: the provider no longer has their servers.
    pub gone: Vec<NodeRecord>,
    /// Records whose server became ready.
    pub ready: Vec<NodeRecord>,
    /// Servers labelled as the fleet's that no record knows.
    pub orphans: Vec<Server>,
}

/// What [`Fleet::sweep`] found and did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SweepReport {
    /// Orphans recorded as the fleet's.
    pub adopted: Vec<Server>,
    /// Orphans deleted (confirmed gone).
    pub deleted: Vec<Server>,
    /// Orphans left alone ([`OrphanPolicy::Report`]).
    pub reported: Vec<Server>,
    /// Orphans that could not be handled.
    pub failed: Vec<(String, Error)>,
}

/// How long [`Fleet::apply`] waits for a created server to run, unless told otherwise.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

const SOURCE: &str = "ops://provision";

/// A fleet: its spec, the providers it may use, and the store of its records.
///
/// ```
/// use std::sync::Arc;
/// use ops_provision::fleet::{Fleet, FleetSpec};
/// use ops_provision::memory::InMemoryProvider;
/// use ops_provision::state::{FleetStore, MemoryFleetStore};
/// use ops_provision::Offering;
/// use rust_decimal::Decimal;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ops_provision::Result<()> {
/// let cloud = Arc::new(InMemoryProvider::new("cloud", vec![
///     Offering::new("", "cx22", "fsn1", 2000, 4 << 30, Decimal::new(6, 3), "EUR"),
/// ]));
/// let spec = FleetSpec::parse(r#"
///     name = "web"
///     [[pools]]
///     name = "app"
///     count = 2
///     offering = { provider = "cloud", instance_type = "cx22", region = "fsn1" }
/// "#)?;
/// let store = Arc::new(MemoryFleetStore::default());
/// let fleet = Fleet::new(spec, vec![cloud], store.clone());
/// let plan = fleet.plan().await?;
/// assert_eq!(plan.create.len(), 2);
/// let report = fleet.apply(&plan).await;
/// assert!(report.is_complete());
/// assert_eq!(store.nodes("web").await?.len(), 2);
/// assert!(fleet.plan().await?.is_empty());
/// fleet.destroy().await?;
/// assert!(store.nodes("web").await?.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Fleet {
    spec: FleetSpec,
    providers: Vec<std::sync::Arc<dyn Provider>>,
    store: std::sync::Arc<dyn FleetStore>,
    concurrency: usize,
    orphans: OrphanPolicy,
    ready_timeout: std::time::Duration,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("spec", &self.spec.name)
            .field(
                "providers",
                &self.providers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .field("orphans", &self.orphans)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A fleet of `spec` on `providers`, recorded in `store`; 16 slots in flight at a
    /// time, orphans adopted, ten minutes for a server to run.
    pub fn new(
        spec: FleetSpec,
        providers: Vec<std::sync::Arc<dyn Provider>>,
        store: std::sync::Arc<dyn FleetStore>,
    ) -> Self {
        Self {
            spec,
            providers,
            store,
            concurrency: 16,
            orphans: OrphanPolicy::default(),
            ready_timeout: READY_TIMEOUT,
            progress: None,
        }
    }

    /// At most `n` creates and deletes in flight at a time (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// What to do with orphans.
    pub fn orphans(mut self, policy: OrphanPolicy) -> Self {
        self.orphans = policy;
        self
    }

    /// How long a created server may take to run before its slot fails (the server is
    /// kept, recorded as not ready).
    pub fn ready_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Calls `f` with each step of apply, destroy and sweep as it happens.
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(std::sync::Arc::new(f));
        self
    }

    /// The spec.
    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    /// The store of its records.
    pub fn store(&self) -> &std::sync::Arc<dyn FleetStore> {
        &self.store
    }

    fn providers(&self) -> Vec<&dyn Provider> {
        self.providers
            .iter()
            .map(|p| &**p as &dyn Provider)
            .collect()
    }

    fn provider(&self, name: &str) -> Option<&dyn Provider> {
        self.providers
            .iter()
            .find(|p| p.name() == name)
            .map(|p| &**p as &dyn Provider)
    }

    fn tell(&self, step: Progress) {
        if let Some(f) = &self.progress {
            f(step);
        }
    }

    /// The records of the fleet.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.store.nodes(&self.spec.name).await
    }

    /// Plans the spec against what the providers have, with the fleet's records: the
    /// plan also lists orphans and records of servers that are gone.
    pub async fn plan(&self) -> Result<Plan> {
        let records = self.nodes().await?;
        plan_with(
            &self.spec,
            &self.providers(),
            Some((&records, self.orphans)),
        )
        .await
    }

    /// Applies `plan` while holding the fleet's lock ([`FleetStore::lock`]: a fleet
    /// that another apply, destroy, refresh or sweep is changing fails at once with
    /// [`Error::Busy`] in the report). Records of vanished servers are removed, orphans
    /// handled by the policy, replaced orphans deleted, then creates (with failover, each followed by a
    /// wait until the server runs) and deletes run at most `concurrency` at a time.
    /// Each change is recorded with its events in one transaction as it happens, so a
    /// crash loses at most the server being created (found again by its labels). A slot
    /// that fails is reported (`ops.node.failed`) while the others go on; applying a
    /// fresh plan again resumes.
    pub async fn apply(&self, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        // One change of a fleet at a time (across processes on PostgreSQL).
        let lock = match self.store.lock(&plan.fleet).await {
            Ok(lock) => lock,
            Err(e) => {
                report.failed.push((format!("fleet {}", plan.fleet), e));
                return report;
            }
        };
        let records: BTreeMap<NodeKey, NodeRecord> = match self.nodes().await {
            Ok(nodes) => nodes.into_iter().map(|r| (r.key(), r)).collect(),
            Err(e) => {
                // Nothing is touched without the records to write to.
                report.failed.push((format!("fleet {}", plan.fleet), e));
                return report;
            }
        };
        for record in &plan.gone {
            self.forget(record, "the provider no longer has it", &mut report)
                .await;
        }
        if self.orphans == OrphanPolicy::Adopt {
            for server in plan.unrecorded.iter().filter(|s| {
                plan.keep
                    .iter()
                    .any(|k| k.provider == s.provider && k.id == s.id)
            }) {
                match self.adopt(plan, server).await {
                    Ok(event) => {
                        report.events.push(event);
                        report.adopted.push(server.clone());
                    }
                    Err(e) => report.failed.push((server.name.clone(), e)),
                }
            }
        }
        let (replaced, rest): (Vec<&Delete>, Vec<&Delete>) =
            plan.delete.iter().partition(|d| d.replaced);
        let outcomes = futures::stream::iter(
            replaced
                .into_iter()
                .map(|d| self.delete_one(plan, d, &records)),
        )
        .buffer_unordered(self.concurrency)
        .collect::<Vec<_>>()
        .await;
        for (server, outcome) in outcomes {
            report.absorb_delete(server, outcome);
        }
        let creates = futures::stream::iter(plan.create.iter().map(|c| self.create_one(plan, c)))
            .buffer_unordered(self.concurrency)
            .collect::<Vec<_>>();
        let deletes =
            futures::stream::iter(rest.into_iter().map(|d| self.delete_one(plan, d, &records)))
                .buffer_unordered(self.concurrency)
                .collect::<Vec<_>>();
        let (created, deleted) = futures::join!(creates, deletes);
        for outcome in created {
            report.failovers.extend(outcome.failovers);
            report.events.extend(outcome.events);
            report.created.extend(outcome.created);
            report.ready.extend(outcome.ready);
            report.failed.extend(outcome.failed);
        }
        for (server, outcome) in deleted {
            report.absorb_delete(server, outcome);
        }
        let applied = Event::builder(FLEET_PLAN_APPLIED, SOURCE)
            .subject(plan.fleet.clone())
            .json(serde_json::json!({
                "fleet": plan.fleet,
                "created": report.created.len(),
                "ready": report.ready.len(),
                "deleted": report.deleted.len(),
                "adopted": report.adopted.len(),
                "failed": report.failed.iter().map(|(what, e)| format!("{what}: {e}")).collect::<Vec<_>>(),
                "hourly_before": plan.hourly_before.to_string(),
                "hourly_after": plan.hourly_after.to_string(),
                "currency": plan.currency,
            }))
            .build();
        match self.store.commit(&[], std::slice::from_ref(&applied)).await {
            Ok(()) => report.events.push(applied),
            Err(e) => report.failed.push((format!("fleet {}", plan.fleet), e)),
        }
        lock.release().await;
        report
    }

    /// Deletes every server of the fleet (what the providers' labels say, and what the
    /// records say), each record removed once the provider confirms its server is gone.
    /// A server that could not be deleted keeps its record and is in the report's
    /// failures: destroy again to retry.
    pub async fn destroy(&self) -> Result<ApplyReport> {
        let mut empty = self.spec.clone();
        empty.pools.clear();
        let records = self.nodes().await?;
        let missing: Vec<String> = records
            .iter()
            .filter(|r| self.provider(&r.server.provider).is_none())
            .map(|r| {
                format!(
                    "{} ({}/{}): provider {:?} is not configured",
                    r.server.name, r.server.provider, r.server.id, r.server.provider
                )
            })
            .collect();
        if !missing.is_empty() {
            return Err(Error::Invalid {
                what: format!("destroy fleet {:?}", self.spec.name),
                problems: missing,
            });
        }
        // Orphans are deleted too: destroy leaves nothing labelled as the fleet's.
        let mut plan = plan_with(&empty, &self.providers(), Some((&records, self.orphans))).await?;
        plan.unrecorded.clear();
        Ok(self.apply(&plan).await)
    }

    /// Reconciles the records with what the providers really have: a record whose server
    /// is gone is removed (`ops.node.deleted`, reason "gone at the provider"), a record
    /// whose server now runs becomes ready (`ops.node.ready`), and servers labelled as
    /// the fleet's that no record knows are listed as orphans (see [`sweep`](Self::sweep)).
    pub async fn refresh(&self) -> Result<RefreshReport> {
        let lock = self.store.lock(&self.spec.name).await?;
        let records = self.nodes().await?;
        let selector = fleet_selector(&self.spec.name);
        let mut existing = Vec::new();
        for p in &self.providers {
            existing.extend(p.list(&selector).await?);
        }
        let mut report = RefreshReport::default();
        let mut scratch = ApplyReport::default();
        for record in &records {
            let Some(provider) = self.provider(&record.server.provider) else {
                continue;
            };
            let listed = existing
                .iter()
                .find(|s| s.provider == record.server.provider && s.id == record.server.id);
            // A list may lag a create (ask for the one server before forgetting it) and
            // may not say a server has started (ask before calling it not ready).
            let now = match listed {
                Some(s)
                    if s.status == crate::ServerStatus::Running
                        || record.state == NodeState::Ready =>
                {
                    Some(s.clone())
                }
                _ => provider.get(&record.server.id).await?,
            };
            match now {
                None => {
                    self.forget(record, "the provider no longer has it", &mut scratch)
                        .await;
                    if let Some((_, e)) = scratch.failed.pop() {
                        return Err(e);
                    }
                    report.gone.push(record.clone());
                }
                Some(server)
                    if server.status == crate::ServerStatus::Running
                        && matches!(record.state, NodeState::Provisioned | NodeState::NotReady) =>
                {
                    let mut ready = record.clone().with_state(NodeState::Ready);
                    ready.server = server.clone();
                    let event = node_event(NODE_READY, &self.spec.name, &ready, None);
                    self.store
                        .commit(&[Change::Put(Box::new(ready.clone()))], &[event])
                        .await?;
                    report.ready.push(ready);
                }
                Some(_) => {}
            }
        }
        report.orphans = existing
            .into_iter()
            .filter(|s| {
                !records
                    .iter()
                    .any(|r| r.server.provider == s.provider && r.server.id == s.id)
            })
            .collect();
        lock.release().await;
        Ok(report)
    }

    /// Finds orphans (servers labelled as the fleet's that no record knows) and handles
    /// them by the fleet's [`OrphanPolicy`]: adopted when they fill a slot the spec
    /// wants (otherwise deleted), all deleted, or only reported.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let lock = self.store.lock(&self.spec.name).await?;
        let plan = self.plan().await?;
        let mut report = SweepReport::default();
        // Orphans have no records by definition.
        let records = BTreeMap::new();
        for server in &plan.unrecorded {
            let wanted = plan
                .keep
                .iter()
                .any(|k| k.provider == server.provider && k.id == server.id)
                || plan.delete.iter().any(|d| {
                    d.replaced && d.server.provider == server.provider && d.server.id == server.id
                });
            match (self.orphans, wanted) {
                (OrphanPolicy::Report, _) => report.reported.push(server.clone()),
                (OrphanPolicy::Adopt, true) => match self.adopt(&plan, server).await {
                    Ok(_) => report.adopted.push(server.clone()),
                    Err(e) => report.failed.push((server.name.clone(), e)),
                },
                (OrphanPolicy::Adopt, false) | (OrphanPolicy::Delete, _) => {
                    let delete = Delete {
                        server: server.clone(),
                        reason: "orphan (labelled as this fleet's, not in its records)".to_owned(),
                        replaced: false,
                    };
                    match self.delete_one(&plan, &delete, &records).await {
                        (s, Ok(_)) => report.deleted.push(s),
                        (s, Err(e)) => report.failed.push((s.name, e)),
                    }
                }
            }
        }
        lock.release().await;
        Ok(report)
    }

    fn price(&self, plan: &Plan, server: &Server) -> Decimal {
        plan.prices
            .get(&format!(
                "{}/{}@{}",
                server.provider, server.instance_type, server.region
            ))
            .copied()
            .unwrap_or(Decimal::ZERO)
    }

    fn slot_of(&self, server: &Server) -> Option<u32> {
        let tok = server.labels.get(TOKEN)?;
        let pool = self
            .spec
            .pools
            .iter()
            .find(|p| Some(&p.name) == server.labels.get(POOL))?;
        (0..pool.count).find(|slot| &token(&self.spec.name, &pool.name, *slot) == tok)
    }

    async fn adopt(&self, plan: &Plan, server: &Server) -> Result<Event> {
        let state = if server.status == crate::ServerStatus::Running {
            NodeState::Ready
        } else {
            NodeState::Provisioned
        };
        let record = NodeRecord::new(
            &self.spec.name,
            server.clone(),
            self.slot_of(server),
            state,
            self.price(plan, server),
            &plan.currency,
        );
        let event = node_event(
            NODE_ADOPTED,
            &self.spec.name,
            &record,
            Some(serde_json::json!(
                "labelled as this fleet's but not in its records"
            )),
        );
        self.store
            .commit(
                &[Change::Put(Box::new(record))],
                std::slice::from_ref(&event),
            )
            .await?;
        self.tell(Progress::Adopted {
            server: server.clone(),
        });
        Ok(event)
    }

    /// Removes the record of a server the provider no longer has.
    async fn forget(&self, record: &NodeRecord, reason: &str, report: &mut ApplyReport) {
        let event = node_event(
            NODE_DELETED,
            &self.spec.name,
            record,
            Some(serde_json::json!(reason)),
        );
        match self
            .store
            .commit(
                &[Change::Remove(record.key())],
                std::slice::from_ref(&event),
            )
            .await
        {
            Ok(()) => {
                report.events.push(event);
                report.gone.push(record.clone());
            }
            Err(e) => report.failed.push((record.server.name.clone(), e)),
        }
    }

    async fn create_one(&self, plan: &Plan, c: &Create) -> CreateOutcome {
        let slot = format!("{}/{}", c.pool, c.slot);
        let providers = self.providers();
        let mut out = CreateOutcome::default();
        let mut steps = Vec::new();
        let created =
            choice::create_with_failover(&providers, &c.ranking, &c.spec, &mut steps).await;
        let failover_events: Vec<Event> = steps.iter().map(|s| s.event(SOURCE)).collect();
        for step in &steps {
            self.tell(Progress::Failover(step.clone()));
        }
        out.failovers = steps;
        let (server, candidate) = match created {
            Ok(ok) => ok,
            Err(e) => {
                let mut events = failover_events;
                events.push(failed_event(&plan.fleet, &slot, "create", &e));
                self.fail(&mut out, slot, e, events).await;
                return out;
            }
        };
        let record = NodeRecord::new(
            &plan.fleet,
            server.clone(),
            Some(c.slot),
            NodeState::Provisioned,
            candidate.hourly,
            &plan.currency,
        );
        let mut events = failover_events;
        events.push(node_event(
            NODE_PROVISIONED,
            &plan.fleet,
            &record,
            Some(serde_json::json!({ "spot": candidate.spot })),
        ));
        if let Err(e) = self
            .store
            .commit(&[Change::Put(Box::new(record.clone()))], &events)
            .await
        {
            // The server exists and costs money: say which, so nothing is lost; the next
            // plan or sweep finds it by its labels.
            let what = format!(
                "{slot} (server {} {} created, not recorded)",
                server.provider, server.id
            );
            self.tell(Progress::Failed {
                what: what.clone(),
                error: e.to_string(),
            });
            out.failed.push((what, e));
            return out;
        }
        out.events.extend(events);
        out.created.push(server.clone());
        self.tell(Progress::Created {
            slot: slot.clone(),
            server: server.clone(),
        });
        let Some(provider) = self.provider(&server.provider) else {
            return out;
        };
        match provider.wait_ready(&server.id, self.ready_timeout).await {
            Ok(ready) => {
                let mut record = record.with_state(NodeState::Ready);
                record.server = ready.clone();
                let event = node_event(NODE_READY, &plan.fleet, &record, None);
                match self
                    .store
                    .commit(
                        &[Change::Put(Box::new(record))],
                        std::slice::from_ref(&event),
                    )
                    .await
                {
                    Ok(()) => {
                        out.events.push(event);
                        out.ready.push(ready.clone());
                        self.tell(Progress::Ready {
                            slot,
                            server: ready,
                        });
                    }
                    Err(e) => out.failed.push((slot, e)),
                }
            }
            Err(e) => {
                let event = failed_event(&plan.fleet, &slot, "ready", &e);
                let record = record.with_state(NodeState::NotReady);
                match self
                    .store
                    .commit(
                        &[Change::Put(Box::new(record))],
                        std::slice::from_ref(&event),
                    )
                    .await
                {
                    Ok(()) => out.events.push(event),
                    Err(store) => out.failed.push((slot.clone(), store)),
                }
                self.tell(Progress::Failed {
                    what: slot.clone(),
                    error: e.to_string(),
                });
                out.failed.push((slot, e));
            }
        }
        out
    }

    async fn fail(&self, out: &mut CreateOutcome, what: String, e: Error, events: Vec<Event>) {
        match self.store.commit(&[], &events).await {
            Ok(()) => out.events.extend(events),
            Err(store) => out.failed.push((what.clone(), store)),
        }
        self.tell(Progress::Failed {
            what: what.clone(),
            error: e.to_string(),
        });
        out.failed.push((what, e));
    }

    /// Deletes a server: its record (if any) is marked deleting first, and removed with
    /// `ops.node.deleted` only once the provider says the server is gone.
    async fn delete_one(
        &self,
        plan: &Plan,
        d: &Delete,
        records: &BTreeMap<NodeKey, NodeRecord>,
    ) -> (Server, Result<Vec<Event>>) {
        let result = async {
            let provider =
                self.provider(&d.server.provider)
                    .ok_or_else(|| Error::InvalidRequest {
                        provider: d.server.provider.clone(),
                        field: "provider".to_owned(),
                        message: "not configured".to_owned(),
                    })?;
            let key = NodeKey::new(&plan.fleet, &d.server.provider, &d.server.id);
            if let Some(r) = records.get(&key) {
                self.store
                    .commit(
                        &[Change::Put(Box::new(
                            r.clone().with_state(NodeState::Deleting),
                        ))],
                        &[],
                    )
                    .await?;
            }
            provider.delete(&d.server.id).await?;
            if provider.get(&d.server.id).await?.is_some() {
                return Err(Error::Transient {
                    provider: d.server.provider.clone(),
                    message: format!("server {} still there after delete", d.server.id),
                    retry_after: None,
                });
            }
            let event = Event::builder(NODE_DELETED, SOURCE)
                .subject(d.server.id.clone())
                .json(serde_json::json!({
                    "fleet": plan.fleet,
                    "server": d.server.name,
                    "id": d.server.id,
                    "provider": d.server.provider,
                    "pool": d.server.labels.get(POOL),
                    "reason": d.reason,
                }))
                .build();
            self.store
                .commit(&[Change::Remove(key)], std::slice::from_ref(&event))
                .await?;
            Ok(vec![event])
        }
        .await;
        match &result {
            Ok(_) => self.tell(Progress::Deleted {
                server: d.server.clone(),
            }),
            Err(e) => {
                let event = failed_event(&plan.fleet, &d.server.name, "delete", e);
                if let Err(store) = self.store.commit(&[], &[event]).await {
                    tracing::warn!(server = %d.server.name, error = %store, "could not record a failed delete");
                }
                self.tell(Progress::Failed {
                    what: d.server.name.clone(),
                    error: e.to_string(),
                });
            }
        }
        (d.server.clone(), result)
    }
}

impl ApplyReport {
    fn absorb_delete(&mut self, server: Server, outcome: Result<Vec<Event>>) {
        match outcome {
            Ok(events) => {
                self.events.extend(events);
                self.deleted.push(server);
            }
            Err(e) => self.failed.push((server.name.clone(), e)),
        }
    }
}

#[derive(Default)]
struct CreateOutcome {
    created: Vec<Server>,
    ready: Vec<Server>,
    failed: Vec<(String, Error)>,
    failovers: Vec<Failover>,
    events: Vec<Event>,
}

fn node_event(ty: &str, fleet: &str, r: &NodeRecord, reason: Option<serde_json::Value>) -> Event {
    let mut data = serde_json::json!({
        "fleet": fleet,
        "pool": r.pool,
        "slot": r.slot,
        "server": r.server.name,
        "id": r.server.id,
        "provider": r.server.provider,
        "instance_type": r.server.instance_type,
        "region": r.server.region,
        "address": r.server.address,
        "hourly": r.hourly.to_string(),
        "currency": r.currency,
    });
    if let (Some(reason), Some(map)) = (reason, data.as_object_mut()) {
        match reason {
            serde_json::Value::Object(extra) => map.extend(extra),
            other => {
                map.insert("reason".to_owned(), other);
            }
        }
    }
    Event::builder(ty, SOURCE)
        .subject(r.server.id.clone())
        .json(data)
        .build()
}

fn failed_event(fleet: &str, what: &str, operation: &str, e: &Error) -> Event {
    Event::builder(NODE_FAILED, SOURCE)
        .subject(format!("{fleet}/{what}"))
        .json(serde_json::json!({
            "fleet": fleet,
            "what": what,
            "operation": operation,
            "error": e.to_string(),
            "kind": e.kind().as_str(),
        }))
        .build()
}
