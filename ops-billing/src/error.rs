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
    /// A webhook's signature header or payload cannot be read.
    #[error("webhook: malformed {what}: {reason}")]
    WebhookMalformed {
        /// `Stripe-Signature header` or `payload`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A webhook's signature header has no `v1=` signature (only the scheme Ops checks).
    #[error("webhook: the signature header has no v1 signature (schemes found: {schemes})")]
    WebhookUnsigned {
        /// The schemes the header has, comma-separated (e.g. `v0`), or `none`.
        schemes: String,
    },
    /// No `v1` signature of a webhook matches any configured secret: forged, or signed
    /// with a secret this side does not have.
    #[error(
        "webhook: bad signature: none of its {signatures} v1 signature(s) matches any of the {secrets} configured secret(s)"
    )]
    WebhookBadSignature {
        /// How many `v1` signatures the header had.
        signatures: usize,
        /// How many secrets were tried.
        secrets: usize,
    },
    /// A validly signed webhook whose timestamp is too old: a replay, or a delivery
    /// delayed past the tolerance.
    #[error("webhook: stale timestamp: signed {age_secs} s ago, tolerance is {tolerance_secs} s")]
    WebhookStale {
        /// Seconds between the signature's timestamp and now.
        age_secs: i64,
        /// The tolerance configured.
        tolerance_secs: u64,
    },
    /// A validly signed webhook whose timestamp is ahead of this clock by more than the
    /// tolerance.
    #[error(
        "webhook: timestamp {ahead_secs} s in the future, tolerance is {tolerance_secs} s (check the clock)"
    )]
    WebhookFromFuture {
        /// Seconds the signature's timestamp is ahead of now.
        ahead_secs: i64,
        /// The tolerance configured.
        tolerance_secs: u64,
    },
    /// A payment provider's configuration is wrong (an empty key, a bad URL, no
    /// webhook secret).
    #[error("payment provider {provider}: invalid configuration: {reason}")]
    PaymentConfig {
        /// The provider (`stripe`, `none`).
        provider: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The provider refused a request as invalid (HTTP 400, 404, 409 and other 4xx);
    /// the same call fails again.
    #[error(
        "payment provider {provider}: {call} rejected (HTTP {status}{}{}): {message}",
        param.as_ref().map(|p| format!(", parameter {p}")).unwrap_or_default(),
        code.as_ref().map(|c| format!(", code {c}")).unwrap_or_default()
    )]
    PaymentRejected {
        /// The provider.
        provider: &'static str,
        /// The call, e.g. `create invoice item`.
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// The request parameter at fault, when the provider names one.
        param: Option<String>,
        /// The provider's error code (e.g. `resource_missing`).
        code: Option<String>,
        /// The provider's message.
        message: String,
    },
    /// The provider refused the API key (HTTP 401 or 403).
    #[error("payment provider {provider}: {call} not authorized (HTTP {status}): {message}")]
    PaymentAuth {
        /// The provider.
        provider: &'static str,
        /// The call.
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// A card or other payment method was declined; nothing was charged.
    #[error(
        "payment provider {provider}: {call}: payment declined ({}){}: {message}",
        code.as_deref().unwrap_or("card_error"),
        decline_code.as_ref().map(|d| format!(", decline code {d}")).unwrap_or_default()
    )]
    PaymentDeclined {
        /// The provider.
        provider: &'static str,
        /// The call.
        call: &'static str,
        /// The provider's error code (e.g. `card_declined`).
        code: Option<String>,
        /// The issuer's reason (e.g. `insufficient_funds`).
        decline_code: Option<String>,
        /// The provider's message.
        message: String,
    },
    /// The provider cannot be reached or is overloaded (a refused connection, HTTP 429
    /// or 5xx); the call is idempotent, so retrying it later is safe.
    #[error("payment provider {provider}: {call} unavailable{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    PaymentUnavailable {
        /// The provider.
        provider: &'static str,
        /// The call.
        call: &'static str,
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        /// What happened.
        message: String,
    },
    /// The provider did not answer within the timeout; the call is idempotent, so
    /// retrying it is safe (it may have been done).
    #[error("payment provider {provider}: {call} timed out after {timeout_ms} ms")]
    PaymentTimeout {
        /// The provider.
        provider: &'static str,
        /// The call.
        call: &'static str,
        /// The timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// The provider answered something Ops cannot read.
    #[error("payment provider {provider}: {call}: unexpected answer: {reason}")]
    PaymentResponse {
        /// The provider.
        provider: &'static str,
        /// The call.
        call: &'static str,
        /// What could not be read.
        reason: String,
    },
    /// An invoice that is still a draft cannot be sent to a payment provider.
    #[error(
        "invoice of {tenant} for {from} to {to} is still a draft (its grace window has not ended)"
    )]
    InvoiceNotFinal {
        /// The tenant.
        tenant: String,
        /// The period's start.
        from: chrono::DateTime<chrono::Utc>,
        /// The period's end.
        to: chrono::DateTime<chrono::Utc>,
    },
    /// Another invoice is already kept for the tenant and period.
    #[error(
        "another invoice of {tenant} for {from} to {to} is already kept: a finalized invoice does not change (correct it with a credit note)"
    )]
    InvoiceConflict {
        /// The tenant.
        tenant: String,
        /// The period's start.
        from: chrono::DateTime<chrono::Utc>,
        /// The period's end.
        to: chrono::DateTime<chrono::Utc>,
    },
    /// A grant of credit with problems, every one listed.
    #[error("grant {id:?} to {tenant}: {}", problems.join("; "))]
    InvalidGrant {
        /// The tenant.
        tenant: String,
        /// The grant's id.
        id: String,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// Spending limits with problems, every one listed with where it is.
    #[error("spending limits: {}", problems.join("; "))]
    InvalidLimits {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A charge that cannot be made (zero or negative).
    #[error("charge of {amount}: {reason}")]
    InvalidCharge {
        /// The amount asked.
        amount: crate::Money,
        /// What is wrong.
        reason: String,
    },
    /// The payment provider cannot do this (e.g. webhooks with the `none` provider).
    #[error("payment provider {provider} cannot {what}")]
    PaymentUnsupported {
        /// The provider.
        provider: &'static str,
        /// What was asked.
        what: &'static str,
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
            | Error::InvalidPriceBook { .. }
            | Error::InvalidCostBook { .. }
            | Error::InvalidPeriod { .. }
            | Error::InvalidAccount { .. }
            | Error::InvalidPosting { .. }
            | Error::WebhookMalformed { .. }
            | Error::WebhookUnsigned { .. }
            | Error::PaymentConfig { .. }
            | Error::PaymentRejected { .. }
            | Error::InvalidCharge { .. }
            | Error::InvalidGrant { .. }
            | Error::InvalidLimits { .. } => ErrorKind::InvalidInput,
            Error::PostingConflict { .. }
            | Error::InvoiceNotFinal { .. }
            | Error::InvoiceConflict { .. } => ErrorKind::Conflict,
            Error::InsufficientFunds { .. } | Error::PaymentDeclined { .. } => {
                ErrorKind::ResourceExhausted
            }
            Error::WebhookBadSignature { .. }
            | Error::WebhookStale { .. }
            | Error::WebhookFromFuture { .. }
            | Error::PaymentAuth { .. } => ErrorKind::PermissionDenied,
            Error::PaymentUnavailable { .. } | Error::PaymentTimeout { .. } => {
                ErrorKind::Unavailable
            }
            Error::PaymentResponse { .. } => ErrorKind::Internal,
            Error::PaymentUnsupported { .. } => ErrorKind::Unsupported,
            Error::Store { source } => source.kind(),
            Error::Events(e) => e.kind(),
        }
    }

    /// Whether retrying the same call may succeed: a busy or unreachable database, an
    /// unavailable or slow payment provider.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::PaymentUnavailable { .. } | Error::PaymentTimeout { .. } => true,
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
