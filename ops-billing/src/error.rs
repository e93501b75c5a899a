//! Errors of ops-billing.

use ops_core::ErrorKind;

use crate::Currency;

/// Errors of ops-billing. Each has a [`kind`](Error::kind) an API maps to a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not an active ISO 4217 currency code.
    #[error("unknown currency {code:?}: not an active ISO 4217 code (e.g. EUR, USD, JPY)")]
    UnknownCurrency {
        /// The code given.
        code: String,
    },
    /// Two amounts of different currencies met.
    #[error("currency mismatch: expected {expected}, found {found}")]
    CurrencyMismatch {
        /// The currency of the book, account or left operand.
        expected: Currency,
        /// The other one.
        found: Currency,
    },
    /// An amount too large for 64-bit minor units.
    #[error("amount out of range: {what}")]
    Overflow {
        /// What was being computed.
        what: String,
    },
    /// A meter the price book does not know.
    #[error("unknown meter {meter:?}")]
    UnknownMeter {
        /// Its name.
        meter: String,
    },
    /// A quantity that is missing, negative, not a number or not finite.
    #[error("meter {meter}: invalid quantity {value}{}", if event.is_empty() { String::new() } else { format!(" in event {event}") })]
    InvalidQuantity {
        /// The meter.
        meter: String,
        /// The event it came from (empty when given directly).
        event: String,
        /// What was found.
        value: String,
    },
    /// A price book with problems, every one listed with its key path.
    #[error("price book{}: {}", file.as_ref().map(|f| format!(" {f}")).unwrap_or_default(), problems.join("; "))]
    InvalidPriceBook {
        /// The file, when loaded from one.
        file: Option<String>,
        /// Every problem found.
        problems: Vec<String>,
    },
}

impl Error {
    /// The kind of failure, for an API layer.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::UnknownMeter { .. } => ErrorKind::NotFound,
            Error::Overflow { .. }
            | Error::UnknownCurrency { .. }
            | Error::CurrencyMismatch { .. }
            | Error::InvalidQuantity { .. }
            | Error::InvalidPriceBook { .. } => ErrorKind::InvalidInput,
        }
    }

    /// Whether retrying the same call may succeed (never, for these errors of input).
    pub fn is_retryable(&self) -> bool {
        false
    }
}
