//! # ops-billing
//!
//! From usage to money. This first part of the crate is its pure core, with no I/O:
//!
//! - [`Money`] and [`Currency`]: integer minor units of an ISO 4217 currency, never
//!   floats; mixing currencies is [`Error::CurrencyMismatch`]; amounts computed from
//!   rates stay exact [`Decimal`]s until rounded once, half to even.
//! - [`PriceBook`] (TOML): prices per meter by environment, template and GPU model,
//!   the most specific one applying; charge models per unit, graduated tiers, volume
//!   tiers and packages ([`ChargeModel`]); a minimum charge per task and what failed,
//!   timed-out, cancelled, preempted and scavenger attempts cost ([`ChargePolicy`]).
//!   A book with problems is refused with every problem listed with its key path:
//!   unknown meters and currencies, overlapping tiers or a gap above the last bound,
//!   negative prices, two prices for the same place.
//! - [`MeterSpec`]: meters a builder declares on any CloudEvent type, with a JSON path
//!   to the quantity and an [`Aggregation`] (sum, count, max, latest, unique count,
//!   time-weighted sum); a missing, negative or non-numeric quantity is
//!   [`Error::InvalidQuantity`] naming the meter, the event and the value. The built-in
//!   meters ([`meter::builtin`]) price task usage and storage.
//!
//! - [`CostBook`] and [`CostReport`] ([`cost`]): the seller's view. The fleet's cost per
//!   node (configured, or an owned machine amortized), split into CPU, memory and GPU
//!   shares the OpenCost way; fleet, allocated and idle cost per resource class over a
//!   period, and revenue against cost per task, template, tenant and GPU model.
//!
//! The ledger, metering on the event bus, reservations at admission, invoices and
//! payment providers ([`PaymentProvider`], see [`payment`]) build on this core (see
//! `docs/billing.md` and `docs/billing-payments.md`).
//!
//! ```
//! use ops_billing::{PriceBook, Selector};
//! let book = PriceBook::parse(r#"
//!     currency = "EUR"
//!     [[prices]]
//!     meter = "cpu_core_seconds"
//!     graduated = [ { up_to = 36000, unit_price = "0.00002" }, { unit_price = "0.00001" } ]
//! "#)?;
//! // Ten core-hours at 0.072 EUR, the eleventh at half that.
//! let cost = book.rate("cpu_core_seconds", &Selector::default(), "39600".parse().unwrap())?;
//! assert_eq!(cost.to_string(), "0.76 EUR");
//! # Ok::<(), ops_billing::Error>(())
//! ```
//!
//! ## Features
//!
//! - `sqlite` (default): the SQLite ledger (`ledger::SqliteLedger`), sharing its
//!   database and transactions with an `ops-events` outbox.
//! - `postgres`: the PostgreSQL ledger (`ledger::PostgresLedger`), for several
//!   processes sharing one database, with the Postgres outbox.
//! - `stripe`: Stripe as the payment provider (`payment::stripe::StripeProvider`):
//!   customers, Billing Meter events, invoices and payments through async-stripe 1.0
//!   (a pinned release candidate). Without it the provider is [`NoPaymentProvider`]
//!   (`none`), and webhook signatures are checked by [`WebhookVerifier`] either way.
//! - `testkit`: the ledger conformance suite (`testkit::ledger`).
//!
//! Without default features the crate is the pure core, the in-memory ledger, the
//! `none` payment provider and webhook verification.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod budget;
pub mod cost;
pub mod credit;
mod error;
pub mod invoice;
pub mod ledger;
pub mod limit;
pub mod meter;
pub mod metering;
mod money;
pub mod payment;
mod price;
mod pricebook;

#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use budget::{BillingFunction, Budgets, HoldRequest, Reservation};
pub use cost::{CostBook, CostRates, CostReport, Margin, NodeCost};
pub use credit::{ExpiredGrant, Grant, GrantStatus};
pub use error::Error;
pub use invoice::{Invoice, InvoiceLine, InvoiceStatus, InvoiceStore, Kept, MemoryInvoiceStore};
pub use limit::{LimitPeriod, SpendingLimit};
pub use meter::{Aggregation, MeterSpec};
pub use metering::{MemoryUsageStore, Metering, MeteringFunction, UsageRecord, UsageStore};
pub use money::{Currency, Money};
pub use payment::{
    CustomerDetails, CustomerRef, NoPaymentProvider, PaymentOutcome, PaymentProvider,
    ProviderInvoice, WebhookEvent, WebhookVerifier,
};
pub use price::{ChargeModel, Package, Tier};
pub use pricebook::{Charge, ChargePolicy, PriceBook, PriceEntry, Selector};
pub use rust_decimal::Decimal;

/// A `Result` with ops-billing's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
