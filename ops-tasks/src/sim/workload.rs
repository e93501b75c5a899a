//! Synthetic workloads: tenants × task templates, arrivals and run times drawn from a
//! seeded generator, so that the same seed gives the same tasks.

use std::time::Duration;

use ops_core::{Environment, Resources, Tenant};
use serde::{Deserialize, Serialize};

use super::SimTask;

/// A small, fast, seedable generator (SplitMix64): reproducible workloads without a
/// dependency. Not for cryptography.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// An index drawn in proportion to `weights` (the last one when all are zero).
    pub fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return weights.len().saturating_sub(1);
        }
        let mut x = self.next_f64() * total;
        for (i, w) in weights.iter().enumerate() {
            if *w > 0.0 {
                if x < *w {
                    return i;
                }
                x -= *w;
            }
        }
        weights.len().saturating_sub(1)
    }
}

/// A tenant of a synthetic workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkloadTenant {
    /// Its name.
    pub name: String,
    /// Its part of the tasks, relative to the other tenants' (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// The environment its tasks run in, unless the template names one.
    #[serde(default = "default_env")]
    pub environment: String,
}

impl WorkloadTenant {
    /// A tenant with weight 1 in the `default` environment.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            weight: 1.0,
            environment: default_env(),
        }
    }

    /// Sets [`weight`](Self::weight).
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets [`environment`](Self::environment).
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }
}

/// A kind of task in a synthetic workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkloadTemplate {
    /// Its name (for reading the scenario).
    pub name: String,
    /// How often it is drawn, relative to the other templates (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// What each task asks for.
    pub resources: Resources,
    /// Mean virtual run time.
    #[serde(with = "crate::duration::serde_duration")]
    pub duration: Duration,
    /// Run times are drawn uniformly in `duration × (1 ± jitter)` (default 0).
    #[serde(default)]
    pub jitter: f64,
    /// Priority (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Scavenger work (default false).
    #[serde(default)]
    pub scavenger: bool,
    /// The environment, instead of the tenant's.
    #[serde(default)]
    pub environment: Option<String>,
    /// Only these tenants submit it (default: all).
    #[serde(default)]
    pub tenants: Vec<String>,
}

impl WorkloadTemplate {
    /// A template of weight 1, priority 0, without jitter.
    pub fn new(name: impl Into<String>, resources: Resources, duration: Duration) -> Self {
        Self {
            name: name.into(),
            weight: 1.0,
            resources,
            duration,
            jitter: 0.0,
            priority: 0,
            scavenger: false,
            environment: None,
            tenants: Vec::new(),
        }
    }

    /// Sets [`weight`](Self::weight).
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`priority`](Self::priority).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets [`scavenger`](Self::scavenger).
    pub fn scavenger(mut self, scavenger: bool) -> Self {
        self.scavenger = scavenger;
        self
    }

    /// Sets [`environment`](Self::environment).
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Sets [`tenants`](Self::tenants).
    pub fn tenants<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tenants: I) -> Self {
        self.tenants = tenants.into_iter().map(Into::into).collect();
        self
    }
}

/// A synthetic workload: `tasks` tasks arriving as a Poisson process over `span`, each
/// of a tenant (by tenant weight) and a template that tenant may submit (by template
/// weight).
///
/// ```
/// use std::time::Duration;
/// use ops_core::Resources;
/// use ops_tasks::sim::{Workload, WorkloadTemplate, WorkloadTenant};
///
/// let w = Workload::new(7, 1000, Duration::from_secs(3600))
///     .tenant(WorkloadTenant::new("acme"))
///     .tenant(WorkloadTenant::new("globex").weight(3.0))
///     .template(WorkloadTemplate::new("render", Resources::new(2000, 4 << 30), Duration::from_secs(600)).jitter(0.5));
/// let tasks = w.generate();
/// assert_eq!(tasks.len(), 1000);
/// assert_eq!(tasks, w.generate());
/// assert!(tasks.windows(2).all(|p| p[0].arrival <= p[1].arrival));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Workload {
    /// Seed of the generator.
    #[serde(default)]
    pub seed: u64,
    /// How many tasks.
    pub tasks: usize,
    /// Arrivals are spread over this virtual time (zero: all arrive at once).
    #[serde(default, with = "crate::duration::serde_duration")]
    pub span: Duration,
    /// Who submits.
    pub tenants: Vec<WorkloadTenant>,
    /// What they submit.
    pub templates: Vec<WorkloadTemplate>,
}

impl Workload {
    /// A workload without tenants or templates yet.
    pub fn new(seed: u64, tasks: usize, span: Duration) -> Self {
        Self {
            seed,
            tasks,
            span,
            tenants: Vec::new(),
            templates: Vec::new(),
        }
    }

    /// Adds a tenant.
    pub fn tenant(mut self, tenant: WorkloadTenant) -> Self {
        self.tenants.push(tenant);
        self
    }

    /// Adds a template.
    pub fn template(mut self, template: WorkloadTemplate) -> Self {
        self.templates.push(template);
        self
    }

    /// Problems that make [`generate`](Self::generate) produce fewer tasks than asked.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.tasks > 0 && self.tenants.is_empty() {
            out.push("workload: no tenants".to_owned());
        }
        if self.tasks > 0 && self.templates.is_empty() {
            out.push("workload: no templates".to_owned());
        }
        for t in &self.tenants {
            if let Err(e) = Tenant::parse(t.name.as_str()) {
                out.push(format!("workload: tenant {:?}: {e}", t.name));
            }
            if let Err(e) = Environment::parse(t.environment.as_str()) {
                out.push(format!("workload: tenant {:?}: {e}", t.name));
            }
            if !self
                .templates
                .iter()
                .any(|p| p.tenants.is_empty() || p.tenants.contains(&t.name))
            {
                out.push(format!(
                    "workload: tenant {:?} may submit no template",
                    t.name
                ));
            }
        }
        for p in &self.templates {
            if let Some(Err(e)) = p.environment.as_deref().map(Environment::parse) {
                out.push(format!("workload: template {:?}: {e}", p.name));
            }
            if !(p.jitter.is_finite() && (0.0..=1.0).contains(&p.jitter)) {
                out.push(format!(
                    "workload: template {:?}: jitter must be between 0 and 1",
                    p.name
                ));
            }
        }
        out
    }

    /// The tasks, in arrival order. Tenants that may submit no template are skipped.
    pub fn generate(&self) -> Vec<SimTask> {
        let mut rng = SplitMix64::new(self.seed);
        let tenant_weights: Vec<f64> = self.tenants.iter().map(|t| t.weight).collect();
        // Per tenant: the templates it may submit and their weights.
        let allowed: Vec<(Vec<usize>, Vec<f64>)> = self
            .tenants
            .iter()
            .map(|t| {
                let ix: Vec<usize> = (0..self.templates.len())
                    .filter(|i| {
                        let p = &self.templates[*i];
                        p.tenants.is_empty() || p.tenants.contains(&t.name)
                    })
                    .collect();
                let w = ix.iter().map(|i| self.templates[*i].weight).collect();
                (ix, w)
            })
            .collect();
        let mean_gap = if self.tasks > 0 {
            self.span.as_secs_f64() / self.tasks as f64
        } else {
            0.0
        };
        let mut at = 0.0f64;
        let mut out = Vec::with_capacity(self.tasks);
        for _ in 0..self.tasks {
            if mean_gap > 0.0 {
                // Exponential gaps: a Poisson process.
                at += -mean_gap * (1.0 - rng.next_f64()).ln();
            }
            let t = rng.pick(&tenant_weights);
            let Some(tenant) = self.tenants.get(t) else {
                break;
            };
            let (ix, w) = &allowed[t];
            if ix.is_empty() {
                continue;
            }
            let p = &self.templates[ix[rng.pick(w)]];
            let factor = 1.0 + p.jitter.clamp(0.0, 1.0) * (2.0 * rng.next_f64() - 1.0);
            let duration =
                Duration::try_from_secs_f64(p.duration.as_secs_f64() * factor).unwrap_or_default();
            let environment = p.environment.as_ref().unwrap_or(&tenant.environment);
            // Names that break the rule are listed by `problems`; their tasks are skipped.
            let (Ok(tenant), Ok(environment)) = (
                Tenant::parse(tenant.name.as_str()),
                Environment::parse(environment.as_str()),
            ) else {
                continue;
            };
            out.push(SimTask {
                arrival: Duration::try_from_secs_f64(at).unwrap_or_default(),
                tenant,
                environment,
                priority: p.priority,
                resources: p.resources.clone(),
                scavenger: p.scavenger,
                duration,
            });
        }
        out
    }
}

fn one() -> f64 {
    1.0
}

fn default_env() -> String {
    "default".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_reproducible_and_spread() {
        let mut a = SplitMix64::new(1);
        let mut b = SplitMix64::new(1);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[a.pick(&[1.0, 2.0, 0.0])] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!(
            (counts[1] as f64 / counts[0] as f64 - 2.0).abs() < 0.15,
            "{counts:?}"
        );
    }
}
