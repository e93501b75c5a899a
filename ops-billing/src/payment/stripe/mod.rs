//! Stripe as the payment provider, through async-stripe 1.0 (release candidate
//! `=1.0.0-rc.10`, API version 2026-09-30).
//!
//! | call | Stripe | idempotent by |
//! | --- | --- | --- |
//! | [`customer`](PaymentProvider::customer) | `GET /v1/customers/search`, then `POST /v1/customers` | metadata `ops_tenant` and the key `ops-customer-<tenant>` |
//! | [`report_usage`](PaymentProvider::report_usage) | `POST /v1/billing/meter_events`, one per record | `identifier` `<event id>:<meter>` (and the same as key) |
//! | [`invoice`](PaymentProvider::invoice) | `POST /v1/invoices`, `POST /v1/invoiceitems` per line, `POST /v1/invoices/{id}/finalize` | keys `ops-invoice-<tenant>-<from>-<to>[-line-<n>\|-prepaid\|-finalize]` |
//! | [`pay`](PaymentProvider::pay) | `POST /v1/invoices/{id}/pay` | key `ops-pay-<invoice>-<attempt>` |
//! | [`charge`](PaymentProvider::charge) | `GET /v1/customers/{id}` (its default payment method), then `POST /v1/payment_intents` with `confirm=true`, `off_session=true` | key `ops-charge-<key>` |
//!
//! Every call goes through async-stripe's typed requests. Invoices are created with
//! `auto_advance=false`, so Stripe never collects on its own beside
//! [`pay`](PaymentProvider::pay). Stripe keeps idempotency keys for 24 hours; the
//! customer search covers a retry after that, and the caller keeps the
//! [`ProviderInvoice`] it got.

mod error;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ::stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Tenant;
use serde::{Deserialize, Serialize};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::invoice::{
    CreateInvoice, CreateInvoicePendingInvoiceItemsBehavior, FinalizeInvoiceInvoice, PayInvoice,
};
use stripe_billing::invoice_item::CreateInvoiceItem;
use stripe_billing::{InvoiceCollectionMethod, InvoiceStatus};
use stripe_core::PaymentIntentStatus;
use stripe_core::customer::{
    CreateCustomer, RetrieveCustomer, RetrieveCustomerReturned, SearchCustomer,
};
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};

use super::{
    CustomerDetails, CustomerRef, PaymentOutcome, PaymentProvider, ProviderInvoice, WebhookEvent,
    WebhookVerifier, ensure_final, ensure_positive,
};
use crate::{Currency, Error, Invoice, Money, Result, UsageRecord};

/// The provider's name.
const NAME: &str = "stripe";

/// How Ops talks to Stripe; everything can come from a configuration file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StripeConfig {
    /// The secret API key (`sk_live_…`, `sk_test_…`).
    pub api_key: String,
    /// Another API base (a local fake in tests); Stripe's when `None`.
    pub base_url: Option<String>,
    /// How long one call may take, in milliseconds (default 30 000).
    pub timeout_ms: u64,
    /// Ops meter → the `event_name` of the Stripe Billing Meter it is reported to;
    /// records of other meters are not reported.
    pub meters: BTreeMap<String, String>,
    /// The meter event payload key naming the customer (Stripe's default
    /// `stripe_customer_id`).
    pub customer_payload_key: String,
    /// The meter event payload key of the quantity (Stripe's default `value`).
    pub value_payload_key: String,
    /// The webhook endpoint secrets (`whsec_…`): one, or the old and the new one while
    /// a secret is rolled.
    pub webhook_secrets: Vec<String>,
    /// How old (or how far ahead) a webhook signature may be, in seconds (default 300).
    pub webhook_tolerance_secs: u64,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            base_url: None,
            timeout_ms: 30_000,
            meters: BTreeMap::new(),
            customer_payload_key: "stripe_customer_id".to_owned(),
            value_payload_key: "value".to_owned(),
            webhook_secrets: Vec::new(),
            webhook_tolerance_secs: 300,
        }
    }
}

impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_key", &"[redacted]")
            .field("base_url", &self.base_url)
            .field("timeout_ms", &self.timeout_ms)
            .field("meters", &self.meters)
            .field("customer_payload_key", &self.customer_payload_key)
            .field("value_payload_key", &self.value_payload_key)
            .field(
                "webhook_secrets",
                &format_args!("[{} redacted]", self.webhook_secrets.len()),
            )
            .field("webhook_tolerance_secs", &self.webhook_tolerance_secs)
            .finish()
    }
}

impl StripeConfig {
    /// A configuration with `api_key` and the defaults.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            ..Self::default()
        }
    }

    /// Talks to `url` instead of Stripe.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The timeout of one call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Reports `meter` to the Stripe Billing Meter with `event_name`.
    pub fn meter(mut self, meter: impl Into<String>, event_name: impl Into<String>) -> Self {
        self.meters.insert(meter.into(), event_name.into());
        self
    }

    /// Accepts webhooks signed with `secret` (call again for a second one).
    pub fn webhook_secret(mut self, secret: impl Into<String>) -> Self {
        self.webhook_secrets.push(secret.into());
        self
    }
}

/// Stripe as a [`PaymentProvider`].
#[derive(Clone, Debug)]
pub struct StripeProvider {
    client: Client,
    config: StripeConfig,
    timeout: Duration,
    webhooks: Option<WebhookVerifier>,
}

fn config_error(reason: impl Into<String>) -> Error {
    Error::PaymentConfig {
        provider: NAME,
        reason: reason.into(),
    }
}

fn strategy(key: String) -> Result<RequestStrategy> {
    IdempotencyKey::new(&key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| config_error(format!("idempotency key {key:?}: {e}")))
}

impl StripeProvider {
    /// A provider from `config`: an empty API key or an invalid base URL is
    /// [`Error::PaymentConfig`].
    pub fn new(config: StripeConfig) -> Result<Self> {
        if config.api_key.trim().is_empty() {
            return Err(config_error("api_key is empty"));
        }
        if config.timeout_ms == 0 {
            return Err(config_error("timeout_ms is 0"));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = ClientBuilder::new(config.api_key.clone())
            .timeout(timeout)
            .app_info(
                "ops-billing",
                Some(env!("CARGO_PKG_VERSION").to_owned()),
                None,
            );
        if let Some(url) = &config.base_url {
            builder = builder.url(url.clone());
        }
        let client = builder.build().map_err(|e| config_error(e.to_string()))?;
        let webhooks = if config.webhook_secrets.is_empty() {
            None
        } else {
            Some(
                WebhookVerifier::with_secrets(config.webhook_secrets.iter().cloned())?
                    .tolerance(Duration::from_secs(config.webhook_tolerance_secs)),
            )
        };
        Ok(Self {
            client,
            config,
            timeout,
            webhooks,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StripeConfig {
        &self.config
    }

    fn error(&self, call: &'static str, e: ::stripe::StripeError) -> Error {
        error::map(call, e, self.timeout)
    }
}

/// The idempotency key prefix of an Ops invoice: tenant and period.
fn invoice_key(invoice: &Invoice) -> String {
    format!(
        "ops-invoice-{}-{}-{}",
        invoice.tenant,
        invoice.from.timestamp(),
        invoice.to.timestamp()
    )
}

fn money(call: &'static str, amount: i64, currency: &stripe_types::Currency) -> Result<Money> {
    let code = currency.to_string().to_ascii_uppercase();
    let currency: Currency = code.parse().map_err(|_| Error::PaymentResponse {
        provider: NAME,
        call,
        reason: format!("unknown currency {code:?}"),
    })?;
    Ok(Money::new(amount, currency))
}

fn stripe_currency(currency: Currency) -> stripe_types::Currency {
    // Infallible: an unknown code becomes `Currency::Unknown` and is sent as is.
    currency
        .code()
        .to_ascii_lowercase()
        .parse()
        .unwrap_or_default()
}

fn status_str(status: Option<&InvoiceStatus>) -> String {
    status.map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned())
}

#[async_trait]
impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn customer(&self, tenant: &Tenant, details: &CustomerDetails) -> Result<CustomerRef> {
        // Tenant names are letters, digits, '-' and '_': nothing to escape.
        let found = SearchCustomer::new(format!("metadata['ops_tenant']:'{tenant}'"))
            .limit(1)
            .send(&self.client)
            .await
            .map_err(|e| self.error("search customers", e))?;
        if let Some(customer) = found.data.first() {
            return Ok(CustomerRef {
                provider: NAME.to_owned(),
                id: customer.id.to_string(),
            });
        }
        let mut create = CreateCustomer::new().metadata(HashMap::from([(
            "ops_tenant".to_owned(),
            tenant.to_string(),
        )]));
        if let Some(name) = &details.name {
            create = create.name(name.clone());
        }
        if let Some(email) = &details.email {
            create = create.email(email.clone());
        }
        let customer = create
            .customize()
            .request_strategy(strategy(format!("ops-customer-{tenant}"))?)
            .send(&self.client)
            .await
            .map_err(|e| self.error("create customer", e))?;
        tracing::info!(tenant = %tenant, customer = %customer.id, "stripe customer created");
        Ok(CustomerRef {
            provider: NAME.to_owned(),
            id: customer.id.to_string(),
        })
    }

    async fn report_usage(&self, customer: &CustomerRef, records: &[UsageRecord]) -> Result<usize> {
        // Check every record first, so that a bad one sends nothing.
        let mut events = Vec::new();
        for record in records {
            let Some(event_name) = self.config.meters.get(&record.meter) else {
                tracing::debug!(meter = %record.meter, event_id = %record.event_id, "meter not reported to stripe");
                continue;
            };
            if record.quantity.is_sign_negative() && !record.quantity.is_zero() {
                return Err(Error::InvalidQuantity {
                    meter: record.meter.clone(),
                    event: record.event_id.to_string(),
                    value: format!(
                        "{} (Stripe meter events take no negative values)",
                        record.quantity
                    ),
                });
            }
            let identifier = format!("{}:{}", record.event_id, record.meter);
            let payload = HashMap::from([
                (
                    self.config.customer_payload_key.clone(),
                    customer.id.clone(),
                ),
                (
                    self.config.value_payload_key.clone(),
                    record.quantity.normalize().to_string(),
                ),
            ]);
            let event = CreateBillingMeterEvent::new(event_name.clone(), payload)
                .identifier(identifier.clone())
                .timestamp(record.at.timestamp());
            events.push((identifier, event));
        }
        for (identifier, event) in &events {
            event
                .customize()
                .request_strategy(strategy(format!("ops-meter-{identifier}"))?)
                .send(&self.client)
                .await
                .map_err(|e| self.error("create billing meter event", e))?;
        }
        Ok(events.len())
    }

    async fn invoice(&self, customer: &CustomerRef, invoice: &Invoice) -> Result<ProviderInvoice> {
        ensure_final(invoice)?;
        let key = invoice_key(invoice);
        let currency = stripe_currency(invoice.total.currency);
        let period = format!(
            "{} to {}",
            invoice.from.format("%Y-%m-%d %H:%M UTC"),
            invoice.to.format("%Y-%m-%d %H:%M UTC")
        );
        let created = CreateInvoice::new()
            .customer(customer.id.clone())
            .currency(currency.clone())
            .collection_method(InvoiceCollectionMethod::ChargeAutomatically)
            .auto_advance(false)
            .pending_invoice_items_behavior(CreateInvoicePendingInvoiceItemsBehavior::Exclude)
            .description(format!("Ops usage of {}, {period}", invoice.tenant))
            .metadata(HashMap::from([
                ("ops_tenant".to_owned(), invoice.tenant.clone()),
                ("ops_period".to_owned(), period.clone()),
            ]))
            .customize()
            .request_strategy(strategy(key.clone())?)
            .send(&self.client)
            .await
            .map_err(|e| self.error("create invoice", e))?;
        let Some(id) = created.id else {
            return Err(Error::PaymentResponse {
                provider: NAME,
                call: "create invoice",
                reason: "the invoice has no id".to_owned(),
            });
        };
        let mut items: Vec<(String, i64, String)> = invoice
            .lines
            .iter()
            .enumerate()
            .map(|(n, line)| {
                let price = if line.price.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", line.price)
                };
                (
                    format!("{key}-line-{n}"),
                    line.amount.amount,
                    format!("{}{price}: {}", line.meter, line.quantity.normalize()),
                )
            })
            .collect();
        // Tasks were paid from prepaid credit when they ended: the invoice shows them
        // and takes them off again, so only the period charge is collected.
        if invoice.tasks_total.amount != 0 {
            items.push((
                format!("{key}-prepaid"),
                -invoice.tasks_total.amount,
                "tasks already settled from prepaid credit".to_owned(),
            ));
        }
        for (item_key, amount, description) in items {
            CreateInvoiceItem::new()
                .customer(customer.id.clone())
                .invoice(id.to_string())
                .amount(amount)
                .currency(currency.clone())
                .description(description)
                .customize()
                .request_strategy(strategy(item_key)?)
                .send(&self.client)
                .await
                .map_err(|e| self.error("create invoice item", e))?;
        }
        let finalized = FinalizeInvoiceInvoice::new(id.clone())
            .auto_advance(false)
            .customize()
            .request_strategy(strategy(format!("{key}-finalize"))?)
            .send(&self.client)
            .await
            .map_err(|e| self.error("finalize invoice", e))?;
        tracing::info!(tenant = %invoice.tenant, invoice = %id, "stripe invoice finalized");
        Ok(ProviderInvoice {
            provider: NAME.to_owned(),
            id: id.to_string(),
            customer: customer.id.clone(),
            tenant: invoice.tenant.clone(),
            from: invoice.from,
            to: invoice.to,
            amount_due: money(
                "finalize invoice",
                finalized.amount_due,
                &finalized.currency,
            )?,
            status: status_str(finalized.status.as_ref()),
        })
    }

    async fn pay(&self, invoice: &ProviderInvoice, attempt: u32) -> Result<PaymentOutcome> {
        let answer = PayInvoice::new(invoice.id.as_str())
            .customize()
            .request_strategy(strategy(format!("ops-pay-{}-{attempt}", invoice.id))?)
            .send(&self.client)
            .await;
        let paid = match answer {
            Ok(paid) => paid,
            Err(e) => {
                let e = self.error("pay invoice", e);
                return error::outcome_of(e);
            }
        };
        let outcome = match paid.status {
            Some(InvoiceStatus::Paid) => PaymentOutcome::Paid,
            Some(InvoiceStatus::Open) if paid.amount_remaining > 0 => PaymentOutcome::Processing,
            other => PaymentOutcome::Failed {
                reason: format!(
                    "invoice {} is {} after paying ({} remaining)",
                    invoice.id,
                    status_str(other.as_ref()),
                    paid.amount_remaining
                ),
            },
        };
        tracing::info!(tenant = %invoice.tenant, invoice = %invoice.id, attempt, ?outcome, "stripe payment");
        Ok(outcome)
    }

    async fn charge(
        &self,
        customer: &CustomerRef,
        amount: Money,
        key: &str,
    ) -> Result<PaymentOutcome> {
        ensure_positive(amount)?;
        let strategy = strategy(format!("ops-charge-{key}"))?;
        let found = RetrieveCustomer::new(customer.id.as_str())
            .send(&self.client)
            .await
            .map_err(|e| self.error("retrieve customer", e))?;
        let payment_method = match found {
            RetrieveCustomerReturned::Customer(c) => c
                .invoice_settings
                .and_then(|s| s.default_payment_method)
                .map(|pm| pm.id().to_string()),
            RetrieveCustomerReturned::DeletedCustomer(_) => {
                return Err(Error::PaymentRejected {
                    provider: NAME,
                    call: "retrieve customer",
                    status: 404,
                    param: None,
                    code: Some("resource_missing".to_owned()),
                    message: format!("customer {} was deleted", customer.id),
                });
            }
        };
        let Some(payment_method) = payment_method else {
            return Ok(PaymentOutcome::RequiresAction {
                reason: format!(
                    "customer {} has no default payment method: the customer must add one",
                    customer.id
                ),
            });
        };
        let answer = CreatePaymentIntent::new(amount.amount, stripe_currency(amount.currency))
            .customer(customer.id.clone())
            .payment_method(payment_method)
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .description(format!("Ops charge {key}"))
            .metadata(HashMap::from([("ops_key".to_owned(), key.to_owned())]))
            .customize()
            .request_strategy(strategy)
            .send(&self.client)
            .await;
        let intent = match answer {
            Ok(intent) => intent,
            Err(e) => return error::outcome_of(self.error("create payment intent", e)),
        };
        let outcome = match &intent.status {
            PaymentIntentStatus::Succeeded => PaymentOutcome::Paid,
            PaymentIntentStatus::Processing => PaymentOutcome::Processing,
            PaymentIntentStatus::RequiresAction => PaymentOutcome::RequiresAction {
                reason: format!("payment intent {} requires action", intent.id),
            },
            other => PaymentOutcome::Failed {
                reason: format!("payment intent {} is {}", intent.id, other.as_str()),
            },
        };
        tracing::info!(customer = %customer.id, key, ?outcome, "stripe charge");
        Ok(outcome)
    }

    fn verify_webhook(
        &self,
        payload: &[u8],
        signature_header: &str,
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent> {
        match &self.webhooks {
            Some(verifier) => verifier.verify(payload, signature_header, now),
            None => Err(config_error(
                "no webhook secret configured (webhook_secrets)",
            )),
        }
    }
}
