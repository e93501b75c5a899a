//! The price book: one currency, the meters a builder declares, prices per meter (by
//! environment, template and GPU model), and what each kind of attempt costs.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::{MeterSpec, builtin};
use crate::price::{ChargeModel, Package, Tier};
use crate::{Currency, Error, Money, Result};

/// One price: a meter, where it applies, and its charge model (exactly one of
/// `unit_price`, `graduated`, `volume`, `package`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// The meter priced (built-in or declared in `[[meters]]`).
    pub meter: String,
    /// Only tasks of this environment (default: every environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Only tasks of this template (default: every template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Only GPUs of this model, matched case-insensitively as a substring
    /// (`gpu_seconds` only; default: every model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Every unit at this price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Decimal>,
    /// Tiers, each tier's units at its own price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graduated: Option<Vec<Tier>>,
    /// Tiers, every unit at the price of the tier the quantity falls in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Vec<Tier>>,
    /// Every started package at its price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Package>,
}

impl PriceEntry {
    /// The charge model, when exactly one is set.
    pub fn model(&self) -> Option<ChargeModel> {
        match (
            &self.unit_price,
            &self.graduated,
            &self.volume,
            &self.package,
        ) {
            (Some(p), None, None, None) => Some(ChargeModel::PerUnit(*p)),
            (None, Some(t), None, None) => Some(ChargeModel::Graduated(t.clone())),
            (None, None, Some(t), None) => Some(ChargeModel::Volume(t.clone())),
            (None, None, None, Some(p)) => Some(ChargeModel::Package(p.clone())),
            _ => None,
        }
    }

    /// How specific the entry is: a template counts more than an environment, which
    /// counts more than a GPU model.
    fn specificity(&self) -> u8 {
        u8::from(self.template.is_some()) * 4
            + u8::from(self.environment.is_some()) * 2
            + u8::from(self.gpu_model.is_some())
    }

    fn applies(&self, meter: &str, on: &Selector<'_>) -> bool {
        self.meter == meter
            && self
                .environment
                .as_deref()
                .is_none_or(|e| Some(e) == on.environment)
            && self
                .template
                .as_deref()
                .is_none_or(|t| Some(t) == on.template)
            && self.gpu_model.as_deref().is_none_or(|m| {
                on.gpu_model
                    .is_some_and(|g| g.to_lowercase().contains(&m.to_lowercase()))
            })
    }
}

/// Where a quantity was used: picks the most specific price that applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selector<'a> {
    /// The task's environment.
    pub environment: Option<&'a str>,
    /// The task's template.
    pub template: Option<&'a str>,
    /// The GPU model (for `gpu_seconds`).
    pub gpu_model: Option<&'a str>,
}

/// Whether an attempt that ended a given way is charged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Charge {
    /// Charged like a success.
    #[default]
    Charge,
    /// Not charged.
    Free,
}

/// What attempts cost, by how they ended, and the minimum charge per task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargePolicy {
    /// The least a charged task costs (default nothing).
    #[serde(default)]
    pub minimum_per_task: Decimal,
    /// Failed tasks (default charged: the machine was used).
    #[serde(default)]
    pub failed: Charge,
    /// Timed-out tasks (default charged).
    #[serde(default)]
    pub timed_out: Charge,
    /// Cancelled tasks (default charged for what ran).
    #[serde(default)]
    pub cancelled: Charge,
    /// Attempts preempted to make room (default free: the platform's choice). Each is
    /// rated from its own `ops.task.preempted` event, apart from the final event, and
    /// bears no minimum per task.
    #[serde(default = "free")]
    pub preempted: Charge,
    /// Scavenger tasks (default free: they ran on idle capacity).
    #[serde(default = "free")]
    pub scavenger: Charge,
}

fn free() -> Charge {
    Charge::Free
}

impl Default for ChargePolicy {
    fn default() -> Self {
        Self {
            minimum_per_task: Decimal::ZERO,
            failed: Charge::Charge,
            timed_out: Charge::Charge,
            cancelled: Charge::Charge,
            preempted: Charge::Free,
            scavenger: Charge::Free,
        }
    }
}

/// A price book, usually from TOML:
///
/// ```
/// use ops_billing::{PriceBook, Selector};
/// let book = PriceBook::parse(r#"
///     currency = "EUR"
///
///     [[prices]]
///     meter = "cpu_core_seconds"
///     unit_price = "0.00002"          # 0.072 EUR per core-hour
///
///     [[prices]]
///     meter = "gpu_seconds"
///     gpu_model = "a100"
///     graduated = [ { up_to = 3600, unit_price = "0.0008" }, { unit_price = "0.0006" } ]
///
///     [charges]
///     minimum_per_task = "0.01"
/// "#)?;
/// let on = Selector { gpu_model: Some("NVIDIA-A100-SXM4-80GB"), ..Selector::default() };
/// let cost = book.rate("gpu_seconds", &on, "7200".parse().unwrap())?;
/// assert_eq!(cost.to_string(), "5.04 EUR");
/// # Ok::<(), ops_billing::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBook {
    /// The one currency of every price and invoice.
    pub currency: Currency,
    /// Meters declared on other event types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meters: Vec<MeterSpec>,
    /// The prices.
    #[serde(default)]
    pub prices: Vec<PriceEntry>,
    /// What attempts cost by how they ended.
    #[serde(default)]
    pub charges: ChargePolicy,
}

impl PriceBook {
    /// Reads and checks a TOML price book; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidPriceBook {
            file: Some(path.display().to_string()),
            problems: vec![e.to_string()],
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::InvalidPriceBook { problems, .. } => Error::InvalidPriceBook {
                file: Some(path.display().to_string()),
                problems,
            },
            other => other,
        })
    }

    /// Parses and checks TOML text: the first error of shape (unknown key, wrong type,
    /// unknown currency) with its key path, else every problem of content at once.
    pub fn parse(text: &str) -> Result<Self> {
        let de = toml::Deserializer::parse(text).map_err(|e| invalid(vec![e.to_string()]))?;
        let book: PriceBook = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim_end().to_owned();
            invalid(vec![if path == "." {
                message
            } else {
                format!("{path}: {message}")
            }])
        })?;
        let problems = book.problems();
        if problems.is_empty() {
            Ok(book)
        } else {
            Err(invalid(problems))
        }
    }

    /// Every problem of content, each with its key path: unknown meters, a price
    /// without a model or with two, overlapping tiers or a gap, negative prices, a GPU
    /// model on a meter other than `gpu_seconds`, two prices for the same meter and
    /// place, bad meter declarations.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut declared = HashSet::new();
        for (i, meter) in self.meters.iter().enumerate() {
            out.extend(meter.problems(&format!("meters[{i}]")));
            if !declared.insert(meter.name.as_str()) {
                out.push(format!(
                    "meters[{i}].name: {:?} is declared twice",
                    meter.name
                ));
            }
        }
        // (meter, environment, template, GPU model) → the first price there.
        type Place = (String, Option<String>, Option<String>, Option<String>);
        let mut places: BTreeMap<Place, usize> = BTreeMap::new();
        for (i, price) in self.prices.iter().enumerate() {
            let at = format!("prices[{i}]");
            if !self.knows(&price.meter) {
                let mut names: Vec<&str> = builtin::ALL.to_vec();
                names.extend(self.meters.iter().map(|m| m.name.as_str()));
                out.push(format!(
                    "{at}.meter: unknown meter {:?}; known: {}",
                    price.meter,
                    names.join(", ")
                ));
            }
            if price.gpu_model.is_some() && price.meter != builtin::GPU_SECONDS {
                out.push(format!(
                    "{at}.gpu_model: only prices of gpu_seconds name a GPU model"
                ));
            }
            match price.model() {
                Some(model) => out.extend(model.problems(&at)),
                None => out.push(format!(
                    "{at}: set exactly one of unit_price, graduated, volume, package"
                )),
            }
            let place = (
                price.meter.clone(),
                price.environment.clone(),
                price.template.clone(),
                price.gpu_model.as_ref().map(|m| m.to_lowercase()),
            );
            if let Some(&first) = places.get(&place) {
                out.push(format!(
                    "{at}: prices[{first}] already prices {:?} for the same environment, template and GPU model",
                    price.meter
                ));
            } else {
                places.insert(place, i);
            }
        }
        let min = self.charges.minimum_per_task;
        if min < Decimal::ZERO {
            out.push(format!("charges.minimum_per_task: {min} is negative"));
        }
        out
    }

    /// Whether `meter` is a built-in meter or one declared in the book.
    pub fn knows(&self, meter: &str) -> bool {
        builtin::ALL.contains(&meter) || self.meters.iter().any(|m| m.name == meter)
    }

    /// The most specific price of `meter` that applies `on`, if any. Among equally
    /// specific GPU prices, the first in the book wins.
    pub fn price(&self, meter: &str, on: &Selector<'_>) -> Option<&PriceEntry> {
        let mut best: Option<&PriceEntry> = None;
        for entry in self.prices.iter().filter(|p| p.applies(meter, on)) {
            if best.is_none_or(|b| entry.specificity() > b.specificity()) {
                best = Some(entry);
            }
        }
        best
    }

    /// What `quantity` of `meter` costs `on`, rounded half to even to the minor unit.
    /// A meter without a price that applies costs nothing; a meter the book does not
    /// know is [`Error::UnknownMeter`].
    pub fn rate(&self, meter: &str, on: &Selector<'_>, quantity: Decimal) -> Result<Money> {
        Money::from_decimal(self.amount(meter, on, quantity)?, self.currency)
    }

    /// Like [`rate`](Self::rate), unrounded, in major units: for summing many small
    /// quantities before rounding once.
    pub fn amount(&self, meter: &str, on: &Selector<'_>, quantity: Decimal) -> Result<Decimal> {
        if !self.knows(meter) {
            return Err(Error::UnknownMeter {
                meter: meter.to_owned(),
            });
        }
        if quantity < Decimal::ZERO {
            return Err(Error::InvalidQuantity {
                meter: meter.to_owned(),
                event: String::new(),
                value: quantity.to_string(),
            });
        }
        let Some(model) = self.price(meter, on).and_then(PriceEntry::model) else {
            return Ok(Decimal::ZERO);
        };
        model.amount(quantity).ok_or_else(|| Error::Overflow {
            what: format!("{quantity} {meter}"),
        })
    }
}

fn invalid(problems: Vec<String>) -> Error {
    Error::InvalidPriceBook {
        file: None,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOK: &str = r#"
        currency = "EUR"

        [[meters]]
        name = "tokens"
        event = "com.acme.llm.completed"
        quantity = "$.usage.tokens"
        aggregation = "sum"

        [[prices]]
        meter = "cpu_core_seconds"
        unit_price = "0.00002"

        [[prices]]
        meter = "cpu_core_seconds"
        environment = "staging"
        unit_price = "0.00001"

        [[prices]]
        meter = "cpu_core_seconds"
        environment = "staging"
        template = "render"
        unit_price = 0

        [[prices]]
        meter = "gpu_seconds"
        gpu_model = "a100"
        unit_price = "0.0008"

        [[prices]]
        meter = "gpu_seconds"
        unit_price = "0.0005"

        [[prices]]
        meter = "tokens"
        package = { size = 1000, price = "0.02" }
    "#;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_price_applies() {
        let book = PriceBook::parse(BOOK).unwrap();
        let rate = |meter, env, template, gpu, q| {
            let on = Selector {
                environment: env,
                template,
                gpu_model: gpu,
            };
            book.rate(meter, &on, d(q)).unwrap().to_string()
        };
        assert_eq!(
            rate("cpu_core_seconds", None, None, None, "3600"),
            "0.07 EUR"
        );
        assert_eq!(
            rate("cpu_core_seconds", Some("staging"), None, None, "3600"),
            "0.04 EUR"
        );
        assert_eq!(
            rate(
                "cpu_core_seconds",
                Some("staging"),
                Some("render"),
                None,
                "3600"
            ),
            "0.00 EUR"
        );
        assert_eq!(
            rate("gpu_seconds", None, None, Some("NVIDIA-A100-80GB"), "3600"),
            "2.88 EUR"
        );
        assert_eq!(
            rate("gpu_seconds", None, None, Some("Tesla-T4"), "3600"),
            "1.80 EUR"
        );
        assert_eq!(rate("tokens", None, None, None, "1001"), "0.04 EUR");
        // A known meter without a price is free; an unknown one is an error.
        assert_eq!(rate("wall_seconds", None, None, None, "100"), "0.00 EUR");
        let err = book
            .rate("tokenz", &Selector::default(), Decimal::ONE)
            .unwrap_err();
        assert_eq!(err.to_string(), "unknown meter \"tokenz\"");
        assert_eq!(err.kind(), ops_core::ErrorKind::NotFound);
        assert!(book.rate("tasks", &Selector::default(), d("-1")).is_err());
        assert_eq!(book.charges, ChargePolicy::default());
    }

    #[test]
    fn every_problem_of_content_is_listed_with_its_key_path() {
        let err = PriceBook::parse(
            r#"
            currency = "EUR"
            [[meters]]
            name = "tokens"
            event = "com.acme.llm"
            aggregation = "sum"
            [[prices]]
            meter = "cpu_seconds"
            unit_price = "0.1"
            [[prices]]
            meter = "wall_seconds"
            [[prices]]
            meter = "wall_seconds"
            unit_price = "0.1"
            package = { size = 10, price = "1" }
            [[prices]]
            meter = "memory_gib_seconds"
            gpu_model = "a100"
            volume = [ { up_to = 10, unit_price = "0.1" }, { up_to = 5, unit_price = "0.2" } ]
            [[prices]]
            meter = "wall_seconds"
            unit_price = "0.2"
            [charges]
            minimum_per_task = "-1"
            "#,
        )
        .unwrap_err();
        let Error::InvalidPriceBook { problems, .. } = &err else {
            panic!("{err}")
        };
        let text = problems.join("\n");
        for needle in [
            "meters[0].quantity: needed for aggregation Sum",
            "prices[0].meter: unknown meter \"cpu_seconds\"; known: cpu_core_seconds,",
            "prices[1]: set exactly one of unit_price, graduated, volume, package",
            "prices[2]: set exactly one of",
            "prices[3].gpu_model: only prices of gpu_seconds name a GPU model",
            "prices[3].volume[1].up_to: 5 does not exceed the previous tier's 10; tiers overlap",
            "prices[3].volume[1].up_to: the last tier must be unbounded",
            "prices[2]: prices[1] already prices \"wall_seconds\"",
            "prices[4]: prices[1] already prices",
            "charges.minimum_per_task: -1 is negative",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert_eq!(problems.len(), 10, "{problems:#?}");
        assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn errors_of_shape_name_the_key_and_the_file() {
        let err = PriceBook::parse("currency = \"EUX\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("currency: unknown currency \"EUX\""),
            "{err}"
        );
        let err =
            PriceBook::parse("currency = \"EUR\"\n[[prices]]\nmeter = \"tasks\"\nunit_prize = 1")
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("prices[0].unit_prize: unknown field"),
            "{err}"
        );
        let err =
            PriceBook::parse("currency = \"EUR\"\n[charges]\npreempted = \"maybe\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("charges.preempted: unknown variant `maybe`"),
            "{err}"
        );

        let dir = std::env::temp_dir().join(format!("ops-billing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prices.toml");
        std::fs::write(
            &file,
            "currency = \"EUR\"\n[[prices]]\nmeter = \"nope\"\nunit_price = 1\n",
        )
        .unwrap();
        let err = PriceBook::load(&file).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(
            text.contains("prices[0].meter: unknown meter \"nope\""),
            "{text}"
        );
        let missing = PriceBook::load(dir.join("missing.toml")).unwrap_err();
        assert!(missing.to_string().contains("missing.toml"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
