//! Charge models: what a quantity of a meter costs under one price.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One tier of a tiered price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The tier's upper bound (inclusive), in the meter's unit; `None` on the last tier
    /// only (no upper bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<Decimal>,
    /// Price per unit within the tier, in major units of the book's currency.
    pub unit_price: Decimal,
    /// A flat fee charged once when the quantity reaches into the tier.
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    pub flat_fee: Decimal,
}

/// A package price: every started `size` units cost `price`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Units per package.
    pub size: Decimal,
    /// Price of one package.
    pub price: Decimal,
}

/// How a quantity is turned into an amount (in major units, before rounding).
///
/// ```
/// use ops_billing::{ChargeModel, Tier};
/// use rust_decimal::Decimal;
/// let d = |s: &str| s.parse::<Decimal>().unwrap();
/// let tiers = vec![
///     Tier { up_to: Some(d("100")), unit_price: d("0.10"), flat_fee: Decimal::ZERO },
///     Tier { up_to: None, unit_price: d("0.05"), flat_fee: Decimal::ZERO },
/// ];
/// // Graduated: the first 100 units at 0.10, the 50 after them at 0.05.
/// assert_eq!(ChargeModel::Graduated(tiers.clone()).amount(d("150")), Some(d("12.50")));
/// // Volume: all 150 units at the rate of the tier 150 falls in.
/// assert_eq!(ChargeModel::Volume(tiers).amount(d("150")), Some(d("7.50")));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeModel {
    /// Every unit at one price.
    PerUnit(Decimal),
    /// Each tier's units at that tier's price (the first 100 at one price, the next at
    /// another…).
    Graduated(Vec<Tier>),
    /// Every unit at the price of the tier the whole quantity falls in.
    Volume(Vec<Tier>),
    /// Every started package at the package price.
    Package(Package),
}

impl ChargeModel {
    /// The amount for `quantity` (≥ 0) units, in major units, unrounded. `None` on an
    /// arithmetic overflow. Zero units cost nothing, flat fees included.
    pub fn amount(&self, quantity: Decimal) -> Option<Decimal> {
        if quantity <= Decimal::ZERO {
            return Some(Decimal::ZERO);
        }
        match self {
            ChargeModel::PerUnit(price) => quantity.checked_mul(*price),
            ChargeModel::Graduated(tiers) => {
                let mut total = Decimal::ZERO;
                let mut lower = Decimal::ZERO;
                for tier in tiers {
                    if quantity <= lower {
                        break;
                    }
                    let upper = tier.up_to.map_or(quantity, |u| u.min(quantity));
                    let units = upper.checked_sub(lower)?;
                    total = total
                        .checked_add(units.checked_mul(tier.unit_price)?)?
                        .checked_add(tier.flat_fee)?;
                    lower = upper;
                }
                Some(total)
            }
            ChargeModel::Volume(tiers) => {
                let tier = tiers
                    .iter()
                    .find(|t| t.up_to.is_none_or(|u| quantity <= u))?;
                quantity
                    .checked_mul(tier.unit_price)?
                    .checked_add(tier.flat_fee)
            }
            ChargeModel::Package(p) => {
                let packages = quantity.checked_div(p.size)?.ceil();
                packages.checked_mul(p.price)
            }
        }
    }

    /// Every problem with this model, each prefixed by `at` (its key path): tiers that
    /// overlap (bounds not strictly increasing, or an unbounded tier before the last),
    /// a gap above the last bound, negative prices, an empty tier list, a package
    /// size that is not positive.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        let price = |out: &mut Vec<String>, key: String, value: Decimal| {
            if value < Decimal::ZERO {
                out.push(format!("{key}: {value} is negative"));
            }
        };
        match self {
            ChargeModel::PerUnit(p) => price(&mut out, format!("{at}.unit_price"), *p),
            ChargeModel::Graduated(tiers) | ChargeModel::Volume(tiers) => {
                let key = match self {
                    ChargeModel::Graduated(_) => "graduated",
                    _ => "volume",
                };
                if tiers.is_empty() {
                    out.push(format!("{at}.{key}: needs at least one tier"));
                }
                let mut previous: Option<Decimal> = None;
                for (i, tier) in tiers.iter().enumerate() {
                    let here = format!("{at}.{key}[{i}]");
                    price(&mut out, format!("{here}.unit_price"), tier.unit_price);
                    price(&mut out, format!("{here}.flat_fee"), tier.flat_fee);
                    let last = i + 1 == tiers.len();
                    match tier.up_to {
                        None if !last => out.push(format!(
                            "{here}.up_to: only the last tier may be unbounded; tiers {i} and {} overlap",
                            i + 1
                        )),
                        None => {}
                        Some(up_to) => {
                            if up_to <= previous.unwrap_or(Decimal::ZERO) {
                                out.push(match previous {
                                    Some(p) => format!(
                                        "{here}.up_to: {up_to} does not exceed the previous tier's {p}; tiers overlap"
                                    ),
                                    None => format!("{here}.up_to: {up_to} must be positive"),
                                });
                            }
                            if last {
                                out.push(format!(
                                    "{here}.up_to: the last tier must be unbounded (leave up_to out); quantities above {up_to} would have no price"
                                ));
                            }
                            previous = Some(up_to);
                        }
                    }
                }
            }
            ChargeModel::Package(p) => {
                if p.size <= Decimal::ZERO {
                    out.push(format!("{at}.package.size: {} must be positive", p.size));
                }
                price(&mut out, format!("{at}.package.price"), p.price);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn tier(up_to: Option<&str>, price: &str) -> Tier {
        Tier {
            up_to: up_to.map(d),
            unit_price: d(price),
            flat_fee: Decimal::ZERO,
        }
    }

    #[test]
    fn each_model_prices_a_quantity() {
        let tiers = vec![
            tier(Some("10"), "1"),
            tier(Some("20"), "0.5"),
            tier(None, "0.1"),
        ];
        let graduated = ChargeModel::Graduated(tiers.clone());
        assert_eq!(graduated.amount(d("5")), Some(d("5")));
        assert_eq!(graduated.amount(d("10")), Some(d("10")));
        assert_eq!(graduated.amount(d("15")), Some(d("12.5")));
        assert_eq!(graduated.amount(d("30")), Some(d("16")));
        let volume = ChargeModel::Volume(tiers);
        assert_eq!(volume.amount(d("10")), Some(d("10")));
        assert_eq!(volume.amount(d("15")), Some(d("7.5")));
        assert_eq!(volume.amount(d("30")), Some(d("3")));
        let package = ChargeModel::Package(Package {
            size: d("1000"),
            price: d("0.50"),
        });
        assert_eq!(package.amount(d("1")), Some(d("0.50")));
        assert_eq!(package.amount(d("1000")), Some(d("0.50")));
        assert_eq!(package.amount(d("1001")), Some(d("1.00")));
        assert_eq!(package.amount(Decimal::ZERO), Some(Decimal::ZERO));
        let with_fee = ChargeModel::Graduated(vec![
            Tier {
                flat_fee: d("2"),
                ..tier(Some("10"), "0")
            },
            Tier {
                flat_fee: d("3"),
                ..tier(None, "0.1")
            },
        ]);
        assert_eq!(with_fee.amount(d("10")), Some(d("2")));
        assert_eq!(with_fee.amount(d("20")), Some(d("6")));
        assert_eq!(
            ChargeModel::PerUnit(d("0.00002")).amount(d("3600")),
            Some(d("0.072"))
        );
    }

    #[test]
    fn overlaps_gaps_and_negative_prices_are_all_named() {
        let model = ChargeModel::Graduated(vec![
            tier(Some("10"), "1"),
            tier(None, "0.5"),
            tier(Some("5"), "-0.1"),
        ]);
        let problems = model.problems("prices[2]");
        let text = problems.join("\n");
        for needle in [
            "prices[2].graduated[1].up_to: only the last tier may be unbounded; tiers 1 and 2 overlap",
            "prices[2].graduated[2].unit_price: -0.1 is negative",
            "prices[2].graduated[2].up_to: 5 does not exceed the previous tier's 10; tiers overlap",
            "prices[2].graduated[2].up_to: the last tier must be unbounded",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(ChargeModel::Volume(Vec::new()).problems("p")[0].contains("at least one tier"));
        let package = ChargeModel::Package(Package {
            size: Decimal::ZERO,
            price: d("1"),
        });
        assert_eq!(
            package.problems("p"),
            ["p.package.size: 0 must be positive"]
        );
    }

    fn tiers() -> impl Strategy<Value = Vec<Tier>> {
        prop::collection::vec((1u32..1000, 0u32..10_000, 0u32..100), 1..5).prop_map(|raw| {
            let mut bound = 0u64;
            let n = raw.len();
            raw.into_iter()
                .enumerate()
                .map(|(i, (step, price, fee))| {
                    bound += u64::from(step);
                    Tier {
                        up_to: (i + 1 < n).then(|| Decimal::from(bound)),
                        unit_price: Decimal::new(i64::from(price), 4),
                        flat_fee: Decimal::new(i64::from(fee), 2),
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn generated_tiers_are_valid_and_graduated_is_monotone(
            tiers in tiers(), a in 0u32..5000, b in 0u32..5000,
        ) {
            let model = ChargeModel::Graduated(tiers);
            prop_assert!(model.problems("p").is_empty(), "{:?}", model.problems("p"));
            let (lo, hi) = (a.min(b), a.max(b));
            let lo_amount = model.amount(Decimal::from(lo)).unwrap();
            let hi_amount = model.amount(Decimal::from(hi)).unwrap();
            prop_assert!(lo_amount <= hi_amount, "{lo} → {lo_amount}, {hi} → {hi_amount}");
        }

        #[test]
        fn one_tier_is_per_unit(price in 0u32..100_000, q in 0u64..10_000_000) {
            let price = Decimal::new(i64::from(price), 5);
            let q = Decimal::new(q as i64, 3);
            let graduated = ChargeModel::Graduated(vec![Tier { up_to: None, unit_price: price, flat_fee: Decimal::ZERO }]);
            let volume = ChargeModel::Volume(vec![Tier { up_to: None, unit_price: price, flat_fee: Decimal::ZERO }]);
            let per_unit = ChargeModel::PerUnit(price).amount(q);
            prop_assert_eq!(graduated.amount(q), per_unit);
            prop_assert_eq!(volume.amount(q), per_unit);
        }

        #[test]
        fn packages_cost_whole_packages(size in 1u32..10_000, price in 0u32..10_000, k in 0u32..1000, extra in 1u32..10_000) {
            let model = ChargeModel::Package(Package { size: Decimal::from(size), price: Decimal::new(i64::from(price), 2) });
            let exact = Decimal::from(u64::from(size) * u64::from(k));
            let whole = model.amount(exact).unwrap();
            prop_assert_eq!(whole, Decimal::new(i64::from(price), 2) * Decimal::from(k));
            // Any part of one more package costs that package.
            let more = exact + Decimal::from(extra.min(size));
            prop_assert_eq!(model.amount(more).unwrap(), whole + Decimal::new(i64::from(price), 2));
        }
    }
}
