//! Fleets: a declarative spec (pools of N servers, each pool an offering or a resource
//! request) → [`plan`] (what would be created and deleted, the hourly and monthly cost
//! before and after) → [`apply`] with bounded concurrency, failover, and partial
//! failures reported per slot. The providers' labels are the source of truth: a plan
//! starts from what really exists (every server labelled with the fleet), so applying
//! again after a crash or a partial failure picks up where it stopped, and a server
//! whose slot the spec no longer has is planned for deletion.
//!
//! State kept in SQL (resumable records, orphan adoption by policy) and the events
//! written with each change come next; see the crate documentation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use futures::StreamExt;
use ops_core::Event;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::choice::{self, Failover, Ranking, ResourceRequest};
use crate::{
    Error, FLEET, Labels, MANAGED_BY, MANAGED_BY_OPS, Offering, POOL, Provider, Result, Server,
    ServerSpec, TOKEN, token,
};

/// `ops.node.provisioned`: a server was created for a fleet.
pub const NODE_PROVISIONED: &str = "ops.node.provisioned";
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
        offerings.extend(p.offerings().await?);
        existing.extend(p.list(&selector).await?);
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
        if pool.count > 0
            && let Err(e) = ranking.best()
        {
            problems.push(format!("pools[{i}] ({:?}): {e}", pool.name));
            continue;
        }
        for slot in 0..pool.count {
            wanted.insert(token(&spec.name, &pool.name, slot), (pool, slot));
        }
        rankings.insert(pool.name.as_str(), ranking);
    }
    if !problems.is_empty() {
        return Err(Error::Invalid {
            what: format!("fleet {:?}", spec.name),
            problems,
        });
    }
    let mut plan = Plan {
        fleet: spec.name.clone(),
        currency: spec.currency.clone(),
        create: Vec::new(),
        delete: Vec::new(),
        keep: Vec::new(),
        hourly_before: existing.iter().map(&price_of).sum(),
        hourly_after: Decimal::ZERO,
    };
    let mut present = BTreeSet::new();
    for server in existing {
        let tok = server.labels.get(TOKEN).cloned().unwrap_or_default();
        if wanted.contains_key(&tok) && present.insert(tok) {
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
            plan.delete.push(Delete { server, reason });
        }
    }
    for (tok, (pool, slot)) in &wanted {
        if present.contains(tok) {
            continue;
        }
        let ranking = rankings[pool.name.as_str()].clone();
        let best = ranking.candidates[0].clone();
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
    plan.create
        .sort_by(|a, b| (a.pool.as_str(), a.slot).cmp(&(b.pool.as_str(), b.slot)));
    Ok(plan)
}

/// What [`apply`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Servers created (or found made by an earlier try).
    pub created: Vec<Server>,
    /// Servers deleted (the provider confirmed they are gone).
    pub deleted: Vec<Server>,
    /// Slots or servers that failed, with the error.
    pub failed: Vec<(String, Error)>,
    /// Failover steps taken.
    pub failovers: Vec<Failover>,
    /// The events of it all, in order, to publish.
    pub events: Vec<Event>,
}

/// How long [`apply`] waits for a created server to run.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Applies `plan` with at most `concurrency` slots in flight at a time: each create
/// (with failover) is followed by a wait until the server runs. A slot that fails is
/// reported (and an `ops.node.failed` event made) while the others go on; applying a
/// fresh plan again resumes. A delete counts only once the provider says the server
/// is gone.
pub async fn apply(plan: &Plan, providers: &[&dyn Provider], concurrency: usize) -> ApplyReport {
    let source = "ops://provision";
    let creates = futures::stream::iter(plan.create.iter().map(|c| async move {
        let mut steps = Vec::new();
        let mut result =
            choice::create_with_failover(providers, &c.ranking, &c.spec, &mut steps).await;
        if let Ok((server, candidate)) = &result
            && let Some(p) = providers.iter().find(|p| p.name() == server.provider)
        {
            result = p
                .wait_ready(&server.id, READY_TIMEOUT)
                .await
                .map(|ready| (ready, candidate.clone()));
        }
        (c, result, steps)
    }))
    .buffer_unordered(concurrency.max(1))
    .collect::<Vec<_>>();
    let deletes = futures::stream::iter(plan.delete.iter().map(|d| async move {
        let result = match providers.iter().find(|p| p.name() == d.server.provider) {
            Some(p) => match p.delete(&d.server.id).await {
                Ok(()) => match p.get(&d.server.id).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err(Error::Transient {
                        provider: d.server.provider.clone(),
                        message: format!("server {} still there after delete", d.server.id),
                        retry_after: None,
                    }),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            None => Err(Error::InvalidRequest {
                provider: d.server.provider.clone(),
                field: "provider".to_owned(),
                message: "not configured".to_owned(),
            }),
        };
        (d, result)
    }))
    .buffer_unordered(concurrency.max(1))
    .collect::<Vec<_>>();
    let (created, deleted) = futures::join!(creates, deletes);
    let mut report = ApplyReport::default();
    for (c, result, steps) in created {
        for step in &steps {
            report.events.push(step.event(source));
        }
        report.failovers.extend(steps);
        match result {
            Ok((server, candidate)) => {
                report.events.push(
                    Event::builder(NODE_PROVISIONED, source)
                        .subject(server.id.clone())
                        .json(serde_json::json!({
                            "fleet": plan.fleet, "pool": c.pool, "slot": c.slot,
                            "provider": server.provider, "instance_type": server.instance_type,
                            "region": server.region, "hourly": candidate.hourly.to_string(),
                            "currency": plan.currency, "spot": candidate.spot,
                        }))
                        .build(),
                );
                report.created.push(server);
            }
            Err(e) => {
                report.events.push(
                    Event::builder(NODE_FAILED, source)
                        .subject(format!("{}/{}/{}", plan.fleet, c.pool, c.slot))
                        .json(serde_json::json!({
                            "fleet": plan.fleet, "pool": c.pool, "slot": c.slot,
                            "error": e.to_string(), "kind": e.kind().as_str(),
                        }))
                        .build(),
                );
                report.failed.push((format!("{}/{}", c.pool, c.slot), e));
            }
        }
    }
    for (d, result) in deleted {
        match result {
            Ok(()) => {
                report.events.push(
                    Event::builder(NODE_DELETED, source)
                        .subject(d.server.id.clone())
                        .json(serde_json::json!({
                            "fleet": plan.fleet, "server": d.server.name,
                            "provider": d.server.provider, "reason": d.reason,
                        }))
                        .build(),
                );
                report.deleted.push(d.server.clone());
            }
            Err(e) => report.failed.push((d.server.name.clone(), e)),
        }
    }
    report.events.push(
        Event::builder(FLEET_PLAN_APPLIED, source)
            .subject(plan.fleet.clone())
            .json(serde_json::json!({
                "fleet": plan.fleet,
                "created": report.created.len(),
                "deleted": report.deleted.len(),
                "failed": report.failed.iter().map(|(what, e)| format!("{what}: {e}")).collect::<Vec<_>>(),
                "hourly_after": plan.hourly_after.to_string(),
                "currency": plan.currency,
            }))
            .build(),
    );
    report
}
