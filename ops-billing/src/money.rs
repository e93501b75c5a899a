//! [`Currency`] (ISO 4217) and [`Money`]: integer minor units, never floats.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Active ISO 4217 currencies whose minor unit is not two digits.
const EXPONENTS: &[(&str, u32)] = &[
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("ISK", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("UYI", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("BHD", 3),
    ("IQD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("TND", 3),
    ("CLF", 4),
    ("UYW", 4),
];

/// Active ISO 4217 currencies with two-digit minor units.
const TWO_DIGITS: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF",
    "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR",
    "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF",
    "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK",
    "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD",
    "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP",
    "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD", "YER", "ZAR",
    "ZMW", "ZWG",
];

/// An ISO 4217 currency, e.g. `EUR`: its code and the digits of its minor unit.
///
/// ```
/// use ops_billing::Currency;
/// let eur: Currency = "EUR".parse()?;
/// assert_eq!(eur.minor_digits(), 2);
/// assert_eq!("JPY".parse::<Currency>()?.minor_digits(), 0);
/// assert!("EUX".parse::<Currency>().is_err());
/// # Ok::<(), ops_billing::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    digits: u8,
}

impl Currency {
    /// The three-letter code.
    pub fn code(&self) -> &str {
        // The code is three ASCII capitals, checked in `from_str`.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Digits of the minor unit: 2 for EUR (cents), 0 for JPY, 3 for KWD.
    pub fn minor_digits(&self) -> u32 {
        u32::from(self.digits)
    }
}

impl FromStr for Currency {
    type Err = Error;

    fn from_str(code: &str) -> Result<Self> {
        let digits = EXPONENTS
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| *d)
            .or_else(|| TWO_DIGITS.contains(&code).then_some(2));
        match (digits, code.as_bytes()) {
            (Some(digits), &[a, b, c]) => Ok(Currency {
                code: [a, b, c],
                digits: digits as u8,
            }),
            _ => Err(Error::UnknownCurrency {
                code: code.to_owned(),
            }),
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = Error;
    fn try_from(code: String) -> Result<Self> {
        code.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money: integer minor units (cents for EUR) of one currency.
///
/// Arithmetic is checked: adding two currencies is [`Error::CurrencyMismatch`], an
/// overflow is [`Error::Overflow`]. Amounts computed from rates (which may need
/// sub-cent precision) are [`Decimal`]s until [`Money::from_decimal`] rounds them, half
/// to even, to the currency's minor unit.
///
/// ```
/// use ops_billing::{Currency, Money};
/// use rust_decimal::Decimal;
/// let eur: Currency = "EUR".parse()?;
/// let a = Money::from_decimal("1.205".parse::<Decimal>().unwrap(), eur)?; // half to even
/// assert_eq!(a, Money::new(120, eur));
/// assert_eq!(a.checked_add(Money::new(5, eur))?.to_string(), "1.25 EUR");
/// assert!(a.checked_add(Money::new(5, "USD".parse()?)).is_err());
/// # Ok::<(), ops_billing::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Minor units (cents for EUR); negative for credits.
    pub amount: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// `amount` minor units of `currency`.
    pub const fn new(amount: i64, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// Nothing, in `currency`.
    pub const fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    /// `value` in major units (`1.20` EUR), rounded half to even to the minor unit.
    pub fn from_decimal(value: Decimal, currency: Currency) -> Result<Self> {
        let minor = value
            .round_dp_with_strategy(
                currency.minor_digits(),
                RoundingStrategy::MidpointNearestEven,
            )
            .checked_mul(Decimal::from(10_i64.pow(currency.minor_digits())))
            .and_then(|m| i64::try_from(m.trunc()).ok())
            .ok_or_else(|| Error::Overflow {
                what: format!("{value} {currency}"),
            })?;
        Ok(Self::new(minor, currency))
    }

    /// The amount in major units, exactly.
    pub fn to_decimal(&self) -> Decimal {
        Decimal::new(self.amount, self.currency.minor_digits())
    }

    /// `self + other`, both in the same currency.
    pub fn checked_add(self, other: Money) -> Result<Money> {
        self.same_currency(&other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or_else(|| Error::Overflow {
                what: format!("{self} + {other}"),
            })?;
        Ok(Money::new(amount, self.currency))
    }

    /// `self - other`, both in the same currency.
    pub fn checked_sub(self, other: Money) -> Result<Money> {
        self.same_currency(&other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or_else(|| Error::Overflow {
                what: format!("{self} - {other}"),
            })?;
        Ok(Money::new(amount, self.currency))
    }

    /// Whether the amount is negative (a credit).
    pub fn is_negative(&self) -> bool {
        self.amount < 0
    }

    fn same_currency(&self, other: &Money) -> Result<()> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(Error::CurrencyMismatch {
                expected: self.currency,
                found: other.currency,
            })
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    #[test]
    fn every_listed_code_parses_once_and_unknown_codes_are_named() {
        let mut seen = std::collections::HashSet::new();
        for code in TWO_DIGITS.iter().chain(EXPONENTS.iter().map(|(c, _)| c)) {
            let c: Currency = code.parse().unwrap();
            assert_eq!(c.code(), *code);
            assert!(seen.insert(*code), "{code} listed twice");
        }
        for bad in ["eur", "EU", "EURO", "", "XXX", "€"] {
            let err = bad.parse::<Currency>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn rounding_is_half_to_even_at_the_minor_unit() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(Money::from_decimal(d("0.125"), eur()).unwrap().amount, 12);
        assert_eq!(Money::from_decimal(d("0.135"), eur()).unwrap().amount, 14);
        assert_eq!(Money::from_decimal(d("-0.125"), eur()).unwrap().amount, -12);
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(Money::from_decimal(d("102.5"), jpy).unwrap().amount, 102);
        let kwd: Currency = "KWD".parse().unwrap();
        assert_eq!(
            Money::from_decimal(d("1.2345"), kwd).unwrap().to_string(),
            "1.234 KWD"
        );
        assert!(matches!(
            Money::from_decimal(Decimal::MAX, eur()),
            Err(Error::Overflow { .. })
        ));
    }

    #[test]
    fn arithmetic_is_checked() {
        let usd: Currency = "USD".parse().unwrap();
        let err = Money::new(1, eur())
            .checked_add(Money::new(1, usd))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "currency mismatch: expected EUR, found USD"
        );
        assert!(matches!(
            Money::new(i64::MAX, eur()).checked_add(Money::new(1, eur())),
            Err(Error::Overflow { .. })
        ));
        assert_eq!(
            Money::new(150, eur())
                .checked_sub(Money::new(200, eur()))
                .unwrap()
                .to_string(),
            "-0.50 EUR"
        );
    }

    #[test]
    fn money_serializes_as_minor_units_and_a_code() {
        let m = Money::new(120, eur());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"amount":120,"currency":"EUR"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m);
        let err = serde_json::from_str::<Money>(r#"{"amount":1,"currency":"EUX"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown currency \"EUX\""),
            "{err}"
        );
    }
}
