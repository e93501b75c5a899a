//! The validated, immutable side of admission: capacity segments, GPU models,
//! tenants' quotas and weights. Shared by the submit path (can this ever run?) and the
//! coordinator's [`Admission`](super::Admission) state.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ops_core::{Resources, Tenant};

use super::Request;
use super::config::{AdmissionConfig, GpuQuota, Quantity, QuotaSpec, Reclaim, TenantConfig};
use super::resvec::{CPU, GPU, MAX_MODELS, MEM, ResVec, fmt_amount};
use crate::executor::NodeGroup;
use crate::{Error, Result};

/// Name of the segment shared by environments without capacity of their own.
pub(crate) const SHARED: &str = "*";

/// A segment of capacity: what it holds and the shapes of its nodes.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) name: String,
    pub(crate) capacity: ResVec,
    pub(crate) shapes: Vec<ResVec>,
    pub(crate) reclaim: Reclaim,
}

/// Where an environment's tasks go.
#[derive(Clone, Debug)]
pub(crate) struct EnvRoute {
    pub(crate) segment: usize,
    pub(crate) lenders: Vec<usize>,
}

/// A tenant's resolved policy.
#[derive(Clone, Debug)]
pub(crate) struct TenantPolicy {
    pub(crate) weight: f64,
    pub(crate) borrowing: bool,
    /// (nominal, ceiling) by environment; absent = unlimited.
    pub(crate) quota: HashMap<String, (ResVec, ResVec)>,
}

/// Validated admission settings over one executor's capacity. Cheap to share.
///
/// ```
/// use ops_core::{Environment, Resources, Tenant};
/// use ops_tasks::NodeGroup;
/// use ops_tasks::admission::{AdmissionConfig, AdmissionPolicy, Request};
///
/// let config: AdmissionConfig = toml::from_str(r#"
///     [tenants.acme]
///     quota.default = { cpu = 4 }
/// "#)?;
/// let nodes = [NodeGroup::new(10, Resources::new(8_000, 32 << 30))];
/// let policy = AdmissionPolicy::new(config, &nodes)?;
/// // Larger than any node, and than acme's quota: refused with both reasons.
/// let err = policy
///     .check(&Request::new(Tenant::parse("acme")?, Environment::default(), Resources::new(16_000, 1 << 30)))
///     .unwrap_err();
/// assert!(err.to_string().contains("larger than any node"), "{err}");
/// // A tenant that is not configured (and no default_tenant) is refused too.
/// let umbrella = Tenant::parse("umbrella")?;
/// assert!(policy.check(&Request::new(umbrella, Environment::default(), Resources::new(1_000, 0))).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct AdmissionPolicy {
    pub(crate) config: AdmissionConfig,
    pub(crate) models: Vec<String>,
    pub(crate) segments: Vec<Segment>,
    pub(crate) routes: HashMap<String, EnvRoute>,
    pub(crate) tenants: HashMap<String, TenantPolicy>,
    pub(crate) default_tenant: Option<TenantPolicy>,
}

impl AdmissionPolicy {
    /// Checks `config` against the executor's `nodes`; every problem is listed in one
    /// [`Error::InvalidConfig`].
    pub fn new(config: AdmissionConfig, nodes: &[NodeGroup]) -> Result<Self> {
        let mut problems = Vec::new();
        if config.lookahead == 0 {
            problems.push("admission.lookahead: must be at least 1".to_owned());
        }
        if config.budget_recheck.is_zero() {
            problems.push("admission.budget_recheck: must be above zero".to_owned());
        }

        // GPU models, in the order nodes name them.
        let mut models: Vec<String> = Vec::new();
        for group in nodes {
            if group.resources.gpus.count > 0 {
                let model = group
                    .resources
                    .gpus
                    .model
                    .clone()
                    .unwrap_or_else(|| "gpu".to_owned());
                if !models.iter().any(|m| m.eq_ignore_ascii_case(&model)) {
                    models.push(model);
                }
            }
        }
        if models.len() > MAX_MODELS {
            problems.push(format!(
                "nodes: {} GPU models ({}); admission tells at most {MAX_MODELS} apart",
                models.len(),
                models.join(", ")
            ));
            models.truncate(MAX_MODELS);
        }
        let node_vec = |r: &Resources| node_vec(r, &models);

        let envs = &config.environments;
        let known_env = |name: &str| envs.is_empty() || envs.contains_key(name);

        // Shared nodes and node pools.
        let mut shared_total = ResVec::ZERO;
        let mut shared_shapes = Vec::new();
        let mut pools: BTreeMap<String, (ResVec, Vec<ResVec>)> = BTreeMap::new();
        for group in nodes.iter().filter(|g| g.count > 0) {
            let shape = node_vec(&group.resources);
            let mut total = ResVec::ZERO;
            for d in 0..shape.0.len() {
                total.0[d] = shape.0[d].saturating_mul(u64::from(group.count));
            }
            match &group.pool {
                None => {
                    shared_total.add(&total);
                    shared_shapes.push(shape);
                }
                Some(pool) => {
                    if !known_env(pool.as_str()) {
                        problems.push(format!(
                            "nodes: pool {:?} is not a configured environment (known: {})",
                            pool.as_str(),
                            envs.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                    let entry = pools.entry(pool.as_str().to_owned()).or_default();
                    entry.0.add(&total);
                    entry.1.push(shape);
                }
            }
        }

        // Segments: explicit capacities carved out of the shared nodes, node pools,
        // and the shared remainder.
        let mut segments = Vec::new();
        let mut routes = HashMap::new();
        let mut carved = ResVec::ZERO;
        for (name, env) in envs {
            if let Some(spec) = &env.capacity {
                if pools.contains_key(name) {
                    problems.push(format!(
                        "environments.{name}.capacity: the environment has a node pool; its capacity is the pool's"
                    ));
                    continue;
                }
                let field = format!("environments.{name}.capacity");
                let capacity = capacity_vec(spec, &models, &shared_total, &field, &mut problems);
                carved.add(&capacity);
                let shapes = shared_shapes.iter().map(|s| s.min(&capacity)).collect();
                routes.insert(
                    name.clone(),
                    EnvRoute {
                        segment: segments.len(),
                        lenders: Vec::new(),
                    },
                );
                segments.push(Segment {
                    name: name.clone(),
                    capacity,
                    shapes,
                    reclaim: env.reclaim,
                });
            }
        }
        for d in 0..carved.0.len() {
            if carved.0[d] > shared_total.0[d] {
                problems.push(format!(
                    "environments: the capacities carved out add up to {} {}, more than the {} the shared nodes have",
                    fmt_amount(d, carved.0[d]),
                    super::resvec::dim_name(d, &models),
                    fmt_amount(d, shared_total.0[d]),
                ));
            }
        }
        for (name, (capacity, shapes)) in pools {
            routes.insert(
                name.clone(),
                EnvRoute {
                    segment: segments.len(),
                    lenders: Vec::new(),
                },
            );
            let reclaim = envs.get(&name).map(|e| e.reclaim).unwrap_or_default();
            segments.push(Segment {
                name,
                capacity,
                shapes,
                reclaim,
            });
        }
        let shared = segments.len();
        segments.push(Segment {
            name: SHARED.to_owned(),
            capacity: shared_total.minus(&carved),
            shapes: shared_shapes.clone(),
            reclaim: Reclaim::Wait,
        });
        for (name, env) in envs {
            let segment = routes.get(name).map_or(shared, |r| r.segment);
            let mut lenders = Vec::new();
            for lender in &env.borrow_from {
                if lender == name {
                    problems.push(format!(
                        "environments.{name}.borrow_from: an environment cannot borrow from itself"
                    ));
                } else if !envs.contains_key(lender) {
                    problems.push(format!(
                        "environments.{name}.borrow_from: unknown environment {lender:?} (known: {})",
                        envs.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                } else {
                    let seg = routes.get(lender).map_or(shared, |r| r.segment);
                    if seg != segment && !lenders.contains(&seg) {
                        lenders.push(seg);
                    }
                }
            }
            if env.reclaim == Reclaim::Preempt && segment == shared && env.capacity.is_none() {
                tracing::debug!(environment = %name, "reclaim = preempt on an environment without its own segment applies to the shared segment");
            }
            routes.insert(name.clone(), EnvRoute { segment, lenders });
        }
        for (name, env) in envs {
            if env.reclaim == Reclaim::Preempt
                && let Some(r) = routes.get(name)
            {
                segments[r.segment].reclaim = Reclaim::Preempt;
            }
        }

        let tenant_policy = |who: &str, t: &TenantConfig, problems: &mut Vec<String>| {
            if !(t.weight.is_finite() && t.weight > 0.0) {
                problems.push(format!(
                    "{who}.weight: {} must be a positive number",
                    t.weight
                ));
            }
            let mut quota = HashMap::new();
            for (env, spec) in &t.quota {
                if !known_env(env) {
                    problems.push(format!(
                        "{who}.quota.{env}: unknown environment (known: {})",
                        envs.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                    continue;
                }
                let nominal = limit_vec(spec, &models, &format!("{who}.quota.{env}"), problems);
                let ceiling = if !t.borrowing {
                    nominal
                } else {
                    match t.borrowing_limit.get(env) {
                        Some(extra) => nominal.plus(&limit_vec(
                            extra,
                            &models,
                            &format!("{who}.borrowing_limit.{env}"),
                            problems,
                        )),
                        None => ResVec::UNLIMITED,
                    }
                };
                quota.insert(env.clone(), (nominal, ceiling));
            }
            for env in t.borrowing_limit.keys() {
                if !t.quota.contains_key(env) {
                    problems.push(format!(
                        "{who}.borrowing_limit.{env}: there is no quota for {env} to borrow beyond"
                    ));
                }
            }
            TenantPolicy {
                weight: t.weight,
                borrowing: t.borrowing,
                quota,
            }
        };
        let mut tenants = HashMap::new();
        for name in config.environments.keys() {
            if let Err(e) = ops_core::Environment::parse(name.as_str()) {
                problems.push(format!("admission.environments.{name}: {e}"));
            }
        }
        for (name, t) in &config.tenants {
            if let Err(e) = ops_core::Tenant::parse(name.as_str()) {
                problems.push(format!("admission.tenants.{name}: {e}"));
            }
            tenants.insert(
                name.clone(),
                tenant_policy(&format!("tenants.{name}"), t, &mut problems),
            );
        }
        let default_tenant = config
            .default_tenant
            .as_ref()
            .map(|t| tenant_policy("default_tenant", t, &mut problems));

        if !problems.is_empty() {
            return Err(Error::InvalidConfig { problems });
        }
        Ok(Self {
            config,
            models,
            segments,
            routes,
            tenants,
            default_tenant,
        })
    }

    /// The policy with no quotas over `nodes`.
    pub fn open(nodes: &[NodeGroup]) -> Self {
        match Self::new(AdmissionConfig::default(), nodes) {
            Ok(p) => p,
            // Only a node list with more GPU models than admission tells apart fails;
            // fall back to counting GPUs without models.
            Err(_) => {
                let plain: Vec<NodeGroup> = nodes
                    .iter()
                    .map(|g| {
                        let mut g = g.clone();
                        g.resources.gpus.model = None;
                        g
                    })
                    .collect();
                Self::new(AdmissionConfig::default(), &plain).unwrap_or_else(|_| Self::empty())
            }
        }
    }

    fn empty() -> Self {
        Self {
            config: AdmissionConfig::default(),
            models: Vec::new(),
            segments: vec![Segment {
                name: SHARED.to_owned(),
                capacity: ResVec::ZERO,
                shapes: Vec::new(),
                reclaim: Reclaim::Wait,
            }],
            routes: HashMap::new(),
            tenants: HashMap::new(),
            default_tenant: None,
        }
    }

    /// The configuration this policy was built from.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Time between a scavenger's preemption signal and its kill.
    pub fn grace(&self) -> Duration {
        self.config.scavenger.grace
    }

    /// The GPU models the nodes offer.
    pub fn gpu_models(&self) -> &[String] {
        &self.models
    }

    /// Capacity segments and what each holds, by name (`*` is the shared one).
    pub fn segments(&self) -> Vec<(String, Resources)> {
        self.segments
            .iter()
            .map(|s| (s.name.clone(), s.capacity.to_resources()))
            .collect()
    }

    /// Whether `req` can ever be admitted: its tenant and environment are known, its GPU
    /// model exists, it fits on some node of a segment it may use and within its
    /// tenant's quota. Every reason is listed in [`Error::Inadmissible`].
    pub fn check(&self, req: &Request) -> Result<()> {
        let mut reasons = Vec::new();
        let env = req.environment.as_str();
        let route = self.route(env);
        if route.is_none() {
            reasons.push(format!(
                "environment {env:?} is not configured (known: {})",
                self.config
                    .environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let tenant = self.tenant(&req.tenant);
        if tenant.is_none() {
            reasons.push(format!(
                "tenant {:?} has no admission entry and there is no default_tenant",
                req.tenant.as_str()
            ));
        }
        let candidates = self.gpu_candidates(&req.resources);
        // A policy without nodes (a submit-only service) cannot judge models or sizes.
        let has_nodes = self.segments.iter().any(|s| !s.shapes.is_empty());
        if has_nodes && req.resources.gpus.count > 0 && candidates.is_empty() {
            reasons.push(match &req.resources.gpus.model {
                Some(m) => format!(
                    "no node has GPU model {m:?} (models: {})",
                    if self.models.is_empty() {
                        "none".to_owned()
                    } else {
                        self.models.join(", ")
                    }
                ),
                None => "no node has GPUs".to_owned(),
            });
        }
        if let Some(route) = route
            && has_nodes
            && (req.resources.gpus.count == 0 || !candidates.is_empty())
        {
            // The charge named in messages: the first model the request may use.
            let first = self
                .charges(&req.resources, &candidates)
                .next()
                .unwrap_or(ResVec::ZERO);
            let segs: Vec<usize> = std::iter::once(route.segment)
                .chain(route.lenders.iter().copied())
                .collect();
            let fits_somewhere = self.charges(&req.resources, &candidates).any(|c| {
                segs.iter().any(|s| {
                    let seg = &self.segments[*s];
                    ResVec::ZERO.fits_with(&c, &seg.capacity)
                        && seg.shapes.iter().any(|sh| ResVec::ZERO.fits_with(&c, sh))
                })
            });
            if !fits_somewhere {
                let largest = segs
                    .iter()
                    .flat_map(|s| self.segments[*s].shapes.iter())
                    .fold(ResVec::ZERO, |acc, s| acc.max(s));
                reasons.push(format!(
                    "larger than any node environment {env:?} may use: {}",
                    ResVec::ZERO
                        .excess(&first, &largest, &self.models)
                        .replace(" of ", " on the largest node of ")
                        .replace(", 0 on the largest", " on the largest")
                ));
            }
            if !req.scavenger
                && let Some(t) = tenant
                && let Some((_, ceiling)) = t.quota.get(env)
                && !self
                    .charges(&req.resources, &candidates)
                    .any(|c| ResVec::ZERO.fits_with(&c, ceiling))
            {
                reasons.push(format!(
                    "exceeds tenant {:?}'s quota in {env:?}{}: {}",
                    req.tenant.as_str(),
                    if t.borrowing {
                        " plus its borrowing limit"
                    } else {
                        " (borrowing off)"
                    },
                    ResVec::ZERO.excess(&first, ceiling, &self.models)
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Error::Inadmissible { reasons })
        }
    }

    pub(crate) fn route(&self, env: &str) -> Option<EnvRoute> {
        if let Some(r) = self.routes.get(env) {
            return Some(r.clone());
        }
        self.config.environments.is_empty().then(|| EnvRoute {
            segment: self.segments.len() - 1,
            lenders: Vec::new(),
        })
    }

    pub(crate) fn tenant(&self, tenant: &Tenant) -> Option<&TenantPolicy> {
        static OPEN: std::sync::OnceLock<TenantPolicy> = std::sync::OnceLock::new();
        match self.tenants.get(tenant.as_str()) {
            Some(t) => Some(t),
            None => match &self.default_tenant {
                Some(t) => Some(t),
                None if self.tenants.is_empty() => Some(OPEN.get_or_init(|| TenantPolicy {
                    weight: 1.0,
                    borrowing: true,
                    quota: HashMap::new(),
                })),
                None => None,
            },
        }
    }

    /// Bit mask of the GPU models a request may use.
    pub(crate) fn gpu_candidates(&self, r: &Resources) -> Vec<usize> {
        if r.gpus.count == 0 {
            return Vec::new();
        }
        match &r.gpus.model {
            None => (0..self.models.len()).collect(),
            Some(want) => {
                let want = want.to_ascii_lowercase();
                (0..self.models.len())
                    .filter(|i| self.models[*i].to_ascii_lowercase().contains(&want))
                    .collect()
            }
        }
    }

    /// The charge vectors a request may take, one per usable GPU model.
    pub(crate) fn charges<'a>(
        &self,
        r: &'a Resources,
        candidates: &'a [usize],
    ) -> impl Iterator<Item = ResVec> + 'a {
        let base = base_vec(r);
        let none = (r.gpus.count == 0).then_some(base);
        none.into_iter().chain(candidates.iter().map(move |m| {
            let mut v = base;
            v.0[ResVec::model(*m)] = u64::from(r.gpus.count);
            v
        }))
    }
}

/// CPU, memory and total GPUs of a request (no model dimension).
pub(crate) fn base_vec(r: &Resources) -> ResVec {
    let mut v = ResVec::ZERO;
    v.0[CPU] = r.cpu_millis;
    v.0[MEM] = r.memory_bytes;
    v.0[GPU] = u64::from(r.gpus.count);
    v
}

fn node_vec(r: &Resources, models: &[String]) -> ResVec {
    let mut v = base_vec(r);
    if r.gpus.count > 0 {
        let model = r.gpus.model.as_deref().unwrap_or("gpu");
        if let Some(i) = models.iter().position(|m| m.eq_ignore_ascii_case(model)) {
            v.0[ResVec::model(i)] = u64::from(r.gpus.count);
        }
    }
    v
}

fn quantity(q: &Quantity, cpu: bool, field: &str, problems: &mut Vec<String>) -> Option<u64> {
    let parsed = match (q, cpu) {
        (Quantity::Int(n), true) => n.checked_mul(1000).ok_or_else(|| "out of range".to_owned()),
        (Quantity::Int(n), false) => Ok(*n),
        (Quantity::Float(f), _) if !(f.is_finite() && *f >= 0.0) => {
            Err("must be a finite, non-negative number".to_owned())
        }
        (Quantity::Float(f), true) => Ok((f * 1000.0).round() as u64),
        (Quantity::Float(f), false) => Ok(f.round() as u64),
        (Quantity::Text(s), true) => Resources::parse_cpu(s).map_err(|e| e.to_string()),
        (Quantity::Text(s), false) => Resources::parse_memory(s).map_err(|e| e.to_string()),
    };
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(format!("{field}: {e}"));
            None
        }
    }
}

/// A model name in a quota or capacity: the node model it names (exactly one).
fn model_index(
    name: &str,
    models: &[String],
    field: &str,
    problems: &mut Vec<String>,
) -> Option<usize> {
    let want = name.to_ascii_lowercase();
    let exact = models.iter().position(|m| m.to_ascii_lowercase() == want);
    if exact.is_some() {
        return exact;
    }
    let matches: Vec<usize> = (0..models.len())
        .filter(|i| models[*i].to_ascii_lowercase().contains(&want))
        .collect();
    match matches.as_slice() {
        [one] => Some(*one),
        [] => {
            problems.push(format!(
                "{field}.gpus: unknown GPU model {name:?} (the nodes have: {})",
                if models.is_empty() {
                    "no GPUs".to_owned()
                } else {
                    models.join(", ")
                }
            ));
            None
        }
        many => {
            problems.push(format!(
                "{field}.gpus: {name:?} matches several GPU models ({}); name one",
                many.iter()
                    .map(|i| models[*i].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            None
        }
    }
}

/// A quota: left-out resources unlimited.
fn limit_vec(
    spec: &QuotaSpec,
    models: &[String],
    field: &str,
    problems: &mut Vec<String>,
) -> ResVec {
    let mut v = ResVec::UNLIMITED;
    if let Some(q) = &spec.cpu
        && let Some(n) = quantity(q, true, &format!("{field}.cpu"), problems)
    {
        v.0[CPU] = n;
    }
    if let Some(q) = &spec.memory
        && let Some(n) = quantity(q, false, &format!("{field}.memory"), problems)
    {
        v.0[MEM] = n;
    }
    match &spec.gpus {
        None => {}
        Some(GpuQuota::Count(n)) => v.0[GPU] = u64::from(*n),
        Some(GpuQuota::Models(by_model)) => {
            for (name, n) in by_model {
                if let Some(i) = model_index(name, models, field, problems) {
                    v.0[ResVec::model(i)] = u64::from(*n);
                }
            }
        }
    }
    v
}

/// A segment's capacity: left-out resources are zero; GPUs given as a count keep
/// the shared nodes' split by model, capped by the count.
fn capacity_vec(
    spec: &QuotaSpec,
    models: &[String],
    shared: &ResVec,
    field: &str,
    problems: &mut Vec<String>,
) -> ResVec {
    let limit = limit_vec(spec, models, field, problems);
    let mut v = ResVec::ZERO;
    if spec.cpu.is_some() {
        v.0[CPU] = limit.0[CPU];
    }
    if spec.memory.is_some() {
        v.0[MEM] = limit.0[MEM];
    }
    match &spec.gpus {
        None => {}
        Some(GpuQuota::Count(n)) => {
            v.0[GPU] = u64::from(*n);
            for i in 0..models.len() {
                let d = ResVec::model(i);
                v.0[d] = shared.0[d].min(u64::from(*n));
            }
        }
        Some(GpuQuota::Models(_)) => {
            let mut total = 0u64;
            for i in 0..models.len() {
                let d = ResVec::model(i);
                if limit.0[d] != u64::MAX {
                    v.0[d] = limit.0[d];
                    total += limit.0[d];
                }
            }
            v.0[GPU] = total;
        }
    }
    v
}
