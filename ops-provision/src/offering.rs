//! [`Offering`]: what a provider (or an owned machine) offers, at what price.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Hours in a month, as providers bill monthly caps (730 = 8,760 / 12).
pub const HOURS_PER_MONTH: u32 = 730;

/// A kind of server a provider offers in one region, with its price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Offering {
    /// The provider's name (`hetzner`, `digitalocean`, `static`, `local`, …).
    pub provider: String,
    /// The instance type (`cx22`, `s-2vcpu-4gb`), or an owned host's name.
    pub instance_type: String,
    /// The region or location (`fsn1`, `fra1`, `home-lab`).
    pub region: String,
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
    /// The GPU model, when there are GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// On-demand price per hour.
    pub hourly: Decimal,
    /// Spot (interruptible) price per hour, where the provider sells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_hourly: Option<Decimal>,
    /// ISO 4217 code of both prices.
    pub currency: String,
    /// Whether the provider says it can be ordered now (`None`: it does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    /// A machine the platform owns (priced by its cost basis, not rented).
    #[serde(default)]
    pub owned: bool,
}

impl Offering {
    /// An offering with no GPU, available, on demand only.
    pub fn new(
        provider: impl Into<String>,
        instance_type: impl Into<String>,
        region: impl Into<String>,
        cpu_millis: u64,
        memory_bytes: u64,
        hourly: Decimal,
        currency: impl Into<String>,
    ) -> Self {
        Self {
            provider: provider.into(),
            instance_type: instance_type.into(),
            region: region.into(),
            cpu_millis,
            memory_bytes,
            gpus: 0,
            gpu_model: None,
            hourly,
            spot_hourly: None,
            currency: currency.into(),
            available: None,
            owned: false,
        }
    }

    /// With `count` GPUs of `model`.
    pub fn with_gpus(mut self, count: u32, model: impl Into<String>) -> Self {
        self.gpus = count;
        self.gpu_model = Some(model.into());
        self
    }

    /// With a spot price.
    pub fn with_spot(mut self, hourly: Decimal) -> Self {
        self.spot_hourly = Some(hourly);
        self
    }

    /// `provider/instance_type@region`, how rankings and errors name it.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.provider, self.instance_type, self.region)
    }

    /// The price of a month at the on-demand rate.
    pub fn monthly(&self) -> Decimal {
        self.hourly * Decimal::from(HOURS_PER_MONTH)
    }
}
