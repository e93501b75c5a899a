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
    /// A cost book with problems, every one listed with its key path.
    #[error("cost book{}: {}", file.as_ref().map(|f| format!(" {f}")).unwrap_or_default(), problems.join("; "))]
    InvalidCostBook {
        /// The file, when loaded from one.
        file: Option<String>,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A period that ends before it starts, or is empty.
    #[error("period {from} to {to}: the end must come after the start")]
    InvalidPeriod {
        /// Its start.
        from: chrono::DateTime<chrono::Utc>,
        /// Its end.
        to: chrono::DateTime<chrono::Utc>,
    },
    /// Not a valid ledger account name.
    #[error(
        "invalid account {name:?}: expected tenant:<tenant>:<name> or platform:<name>, each name following the rule: {}",
        ops_core::NAME_RULE
    )]
    InvalidAccount {
        /// The name given.
        name: String,
    },
    /// A posting that cannot be posted, every problem listed.
    #[error("posting {key:?}: {}", problems.join("; "))]
    InvalidPosting {
        /// Its key.
        key: String,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A posting key already used for other entries.
    #[error("posting {key:?} already exists with other entries; corrections are new postings")]
    PostingConflict {
        /// The key.
        key: String,
    },
    /// A posting would take an account below its floor (a reservation larger than the
    /// credit available); nothing was posted.
    #[error("{account}: needs {needed}, {available} available")]
    InsufficientFunds {
        /// The account.
        account: String,
        /// What the posting takes from it.
        needed: crate::Money,
        /// What it has above its floor.
        available: crate::Money,
    },
    /// The ledger's database failed.
    #[error("ledger store ({}): {source}", source.backend())]
    Store {
        /// The database failure, classified.
        #[source]
        source: ops_events::StoreError,
    },
    /// The event outbox failed.
    #[error("billing events: {0}")]
    Events(#[from] ops_events::Error),
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
            | Error::InvalidPriceBook { .. }
            | Error::InvalidCostBook { .. }
            | Error::InvalidPeriod { .. }
            | Error::InvalidAccount { .. }
            | Error::InvalidPosting { .. } => ErrorKind::InvalidInput,
            Error::PostingConflict { .. } => ErrorKind::Conflict,
            Error::InsufficientFunds { .. } => ErrorKind::ResourceExhausted,
            Error::Store { source } => source.kind(),
            Error::Events(e) => e.kind(),
        }
    }

    /// Whether retrying the same call may succeed: a busy or unreachable database.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source } => source.is_retryable(),
            Error::Events(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// For functions on the bus: a failure that may pass is retried, any other sends the
/// event to the dead letters with the reason.
impl From<Error> for ops_events::FunctionError {
    fn from(e: Error) -> Self {
        if e.is_retryable() {
            ops_events::FunctionError::retryable(e.to_string())
        } else {
            ops_events::FunctionError::permanent(e.to_string())
        }
    }
}
