//! Offer choice: the cheapest offering across providers and owned machines for a
//! resource request, with the ranking explained, and failover down the ranking when a
//! provider is out of capacity or quota.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ops_core::Event;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{Error, Offering, Provider, Result, Server, ServerSpec};

/// The event written when a create moves on to the next offering.
pub const PROVISION_FAILOVER: &str = "ops.provision.failover";

/// What a server must have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ResourceRequest {
    /// CPU in thousandths of a core (at least).
    pub cpu_millis: u64,
    /// Memory in bytes (at least).
    pub memory_bytes: u64,
    /// GPUs (at least).
    pub gpus: u32,
    /// The GPU model, a case-insensitive substring of the offering's (`H100`, `4090`).
    pub gpu_model: Option<String>,
    /// Regions allowed (empty: any).
    pub regions: Vec<String>,
    /// Providers allowed (empty: any).
    pub providers: Vec<String>,
    /// Whether spot (interruptible) capacity may be used, at its price.
    pub spot: bool,
    /// The most an hour may cost, in `currency`.
    pub max_hourly: Option<Decimal>,
    /// The currency prices are compared in (default EUR).
    pub currency: String,
    /// Exchange rates into `currency` (`USD = 0.92`): an offering priced in another
    /// currency without a rate is left out, saying so.
    pub rates: BTreeMap<String, Decimal>,
}

impl Default for ResourceRequest {
    fn default() -> Self {
        Self {
            cpu_millis: 0,
            memory_bytes: 0,
            gpus: 0,
            gpu_model: None,
            regions: Vec::new(),
            providers: Vec::new(),
            spot: false,
            max_hourly: None,
            currency: "EUR".to_owned(),
            rates: BTreeMap::new(),
        }
    }
}

impl ResourceRequest {
    /// A request for nothing in particular, in EUR (add what is needed).
    pub fn new() -> Self {
        Self::default()
    }

    /// At least `cpu_millis` thousandths of a core.
    pub fn cpu_millis(mut self, cpu_millis: u64) -> Self {
        self.cpu_millis = cpu_millis;
        self
    }

    /// At least `bytes` of memory.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// At least `count` GPUs, of `model` when given.
    pub fn gpus(mut self, count: u32, model: Option<&str>) -> Self {
        self.gpus = count;
        self.gpu_model = model.map(str::to_owned);
        self
    }

    /// Only in `region` (may be given several times).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.regions.push(region.into());
        self
    }

    /// Only from `provider` (may be given several times).
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.providers.push(provider.into());
        self
    }

    /// Whether spot capacity may be used.
    pub fn spot(mut self, allowed: bool) -> Self {
        self.spot = allowed;
        self
    }

    /// The most an hour may cost.
    pub fn max_hourly(mut self, max: Decimal) -> Self {
        self.max_hourly = Some(max);
        self
    }

    /// The currency prices are compared in.
    pub fn currency(mut self, code: impl Into<String>) -> Self {
        self.currency = code.into();
        self
    }

    /// The exchange rate of `code` into the request's currency.
    pub fn rate(mut self, code: impl Into<String>, rate: Decimal) -> Self {
        self.rates.insert(code.into(), rate);
        self
    }

    /// The request in words, for errors and tables.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{} CPU, {} GiB",
            self.cpu_millis as f64 / 1000.0,
            self.memory_bytes as f64 / f64::from(1u32 << 30)
        );
        if self.gpus > 0 {
            let _ = write!(
                out,
                ", {} GPU{}{}",
                self.gpus,
                if self.gpus == 1 { "" } else { "s" },
                self.gpu_model
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
        }
        if !self.regions.is_empty() {
            let _ = write!(out, " in {}", self.regions.join("|"));
        }
        if let Some(max) = self.max_hourly {
            let _ = write!(out, ", at most {max} {}/h", self.currency);
        }
        out
    }

    /// Every problem with the request itself, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            out.push(format!(
                "currency: {:?} is not an ISO 4217 code",
                self.currency
            ));
        }
        if let Some(max) = self.max_hourly
            && max <= Decimal::ZERO
        {
            out.push(format!("max_hourly: {max} is not above 0"));
        }
        for (code, rate) in &self.rates {
            if *rate <= Decimal::ZERO {
                out.push(format!("rates.{code}: {rate} is not above 0"));
            }
        }
        if self.gpu_model.is_some() && self.gpus == 0 {
            out.push("gpu_model: set without gpus".to_owned());
        }
        out
    }
}

/// An offering that fits, with its price in the request's currency.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Candidate {
    /// The offering.
    pub offering: Offering,
    /// Its hourly price in the request's currency (spot when `spot`).
    pub hourly: Decimal,
    /// Whether the spot price is the one used.
    pub spot: bool,
}

/// An offering that does not fit, and every reason why.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Rejected {
    /// The offering.
    pub offering: Offering,
    /// Why it lost.
    pub reasons: Vec<String>,
}

/// Offerings ranked for a request: the candidates cheapest first, and the rest with
/// why each lost.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Ranking {
    /// The request, in words.
    pub request: String,
    /// Offerings that fit, cheapest first (then more CPU, then by key, so the order is
    /// stable).
    pub candidates: Vec<Candidate>,
    /// Offerings that do not fit.
    pub rejected: Vec<Rejected>,
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Ranks `offerings` for `request`; see [`Ranking`].
pub fn rank(offerings: &[Offering], request: &ResourceRequest) -> Result<Ranking> {
    let problems = request.problems();
    if !problems.is_empty() {
        return Err(Error::Invalid {
            what: "resource request".to_owned(),
            problems,
        });
    }
    let mut candidates = Vec::new();
    let mut rejected = Vec::new();
    for o in offerings {
        let mut reasons = Vec::new();
        if !request.providers.is_empty() && !request.providers.contains(&o.provider) {
            reasons.push(format!("provider {} not allowed", o.provider));
        }
        if !request.regions.is_empty() && !request.regions.contains(&o.region) {
            reasons.push(format!("region {} not allowed", o.region));
        }
        if o.cpu_millis < request.cpu_millis {
            reasons.push(format!(
                "{} CPU < {} asked",
                o.cpu_millis as f64 / 1000.0,
                request.cpu_millis as f64 / 1000.0
            ));
        }
        if o.memory_bytes < request.memory_bytes {
            reasons.push(format!(
                "{:.1} GiB < {:.1} GiB asked",
                gib(o.memory_bytes),
                gib(request.memory_bytes)
            ));
        }
        if o.gpus < request.gpus {
            reasons.push(format!("{} GPUs < {} asked", o.gpus, request.gpus));
        }
        if let Some(model) = &request.gpu_model {
            let fits = o
                .gpu_model
                .as_deref()
                .is_some_and(|m| m.to_lowercase().contains(&model.to_lowercase()));
            if !fits {
                reasons.push(format!(
                    "GPU model {} is not {model}",
                    o.gpu_model.as_deref().unwrap_or("none")
                ));
            }
        }
        if o.available == Some(false) {
            reasons.push("not available now (the provider says)".to_owned());
        }
        let spot = request.spot && o.spot_hourly.is_some_and(|s| s < o.hourly);
        let native = if spot {
            o.spot_hourly.unwrap_or(o.hourly)
        } else {
            o.hourly
        };
        let price = if o.currency == request.currency {
            Some(native)
        } else if let Some(rate) = request.rates.get(&o.currency) {
            Some(native * rate)
        } else {
            reasons.push(format!(
                "priced in {} with no rate into {} (set rates.{})",
                o.currency, request.currency, o.currency
            ));
            None
        };
        if let (Some(price), Some(max)) = (price, request.max_hourly)
            && price > max
        {
            reasons.push(format!(
                "{} {}/h > {max} {}/h allowed",
                price.round_dp(4).normalize(),
                request.currency,
                request.currency
            ));
        }
        match price {
            Some(hourly) if reasons.is_empty() => candidates.push(Candidate {
                offering: o.clone(),
                hourly,
                spot,
            }),
            _ => rejected.push(Rejected {
                offering: o.clone(),
                reasons,
            }),
        }
    }
    candidates.sort_by(|a, b| {
        a.hourly
            .cmp(&b.hourly)
            .then(b.offering.cpu_millis.cmp(&a.offering.cpu_millis))
            .then(a.offering.key().cmp(&b.offering.key()))
    });
    // The nearest misses first: those with fewest reasons.
    rejected.sort_by(|a, b| {
        a.reasons
            .len()
            .cmp(&b.reasons.len())
            .then(a.offering.key().cmp(&b.offering.key()))
    });
    Ok(Ranking {
        request: request.describe(),
        candidates,
        rejected,
    })
}

impl Ranking {
    /// The cheapest candidate, or [`Error::NoOffering`] with the nearest misses'
    /// reasons.
    pub fn best(&self) -> Result<&Candidate> {
        self.candidates.first().ok_or_else(|| Error::NoOffering {
            request: self.request.clone(),
            reasons: self
                .rejected
                .iter()
                .take(5)
                .map(|r| format!("{}: {}", r.offering.key(), r.reasons.join(", ")))
                .collect(),
        })
    }

    /// The ranking as a table: each candidate with its price and what it loses to
    /// the first, then each rejected offering with its reasons.
    pub fn explain(&self) -> String {
        let mut out = format!("Offerings for {}:\n", self.request);
        let best = self.candidates.first().map(|c| c.hourly);
        for (i, c) in self.candidates.iter().enumerate() {
            let verdict = match best {
                Some(_) if i == 0 => "chosen: cheapest".to_owned(),
                Some(b) if c.hourly == b => "same price, ranked after by CPU and name".to_owned(),
                Some(b) => format!("{} more an hour", (c.hourly - b).round_dp(4).normalize()),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:>2}. {:<36} {:>10}/h{} {}  {}",
                i + 1,
                c.offering.key(),
                c.hourly.round_dp(4).normalize(),
                if c.spot { " spot" } else { "     " },
                if c.offering.owned { "owned" } else { "     " },
                verdict
            );
        }
        for r in &self.rejected {
            let _ = writeln!(
                out,
                "   -  {:<36} {}",
                r.offering.key(),
                r.reasons.join("; ")
            );
        }
        out
    }
}

/// One failed try during [`create_with_failover`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Failover {
    /// The offering that failed.
    pub from: String,
    /// The next one tried (`None`: none was left).
    pub to: Option<String>,
    /// The provider's error.
    pub reason: String,
}

impl Failover {
    /// The `ops.provision.failover` event of this step.
    pub fn event(&self, source: &str) -> Event {
        Event::builder(PROVISION_FAILOVER, source)
            .subject(self.from.clone())
            .json(serde_json::json!({
                "from": self.from,
                "to": self.to,
                "reason": self.reason,
            }))
            .build()
    }
}

/// Creates `spec` (its instance type and region replaced by each candidate's) on the
/// first candidate whose provider has capacity, going down the ranking on capacity and
/// quota errors. Any other error stops at once. Gives the server and the candidate it
/// was made from; each failover step is pushed to `steps` (success or not), to be
/// written as `ops.provision.failover` events.
pub async fn create_with_failover(
    providers: &[&dyn Provider],
    ranking: &Ranking,
    spec: &ServerSpec,
    steps: &mut Vec<Failover>,
) -> Result<(Server, Candidate)> {
    ranking.best()?;
    let mut attempts = Vec::new();
    for (i, candidate) in ranking.candidates.iter().enumerate() {
        let Some(provider) = providers
            .iter()
            .find(|p| p.name() == candidate.offering.provider)
        else {
            attempts.push(format!(
                "{}: provider not configured",
                candidate.offering.key()
            ));
            continue;
        };
        let mut spec = spec.clone();
        spec.instance_type = candidate.offering.instance_type.clone();
        spec.region = candidate.offering.region.clone();
        spec.spot = candidate.spot;
        match provider.create(&spec).await {
            Ok(server) => return Ok((server, candidate.clone())),
            Err(e) if e.is_capacity() => {
                let next = ranking.candidates.get(i + 1).map(|c| c.offering.key());
                tracing::warn!(
                    from = %candidate.offering.key(),
                    to = next.as_deref().unwrap_or("none"),
                    error = %e,
                    "provisioning fails over"
                );
                attempts.push(format!("{}: {e}", candidate.offering.key()));
                steps.push(Failover {
                    from: candidate.offering.key(),
                    to: next,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Exhausted { attempts })
}
