//! Payment providers: where invoices are collected.
//!
//! [`PaymentProvider`] is the contract: a customer per tenant, usage reported as it
//! happens, finalized invoices sent and paid, one-off charges (prepaid credit), and
//! webhooks verified. Every call is
//! idempotent, so a retried call never creates a second customer, counts usage twice,
//! creates a second invoice or charges twice. A failed or errored payment is never
//! [`PaymentOutcome::Paid`].
//!
//! - [`NoPaymentProvider`] (`none`, the default, always built): nothing external;
//!   invoices are collected outside Ops and [`pay`](PaymentProvider::pay) answers
//!   [`PaymentOutcome::Manual`].
//! - `stripe::StripeProvider` (feature `stripe`): Stripe through async-stripe 1.0.
//!
//! [`WebhookVerifier`] checks Stripe-style webhook signatures, several secrets and
//! several `v1` signatures included (secret rotation); it needs no feature.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ops_core::Tenant;
use serde::{Deserialize, Serialize};

use crate::{Error, Invoice, InvoiceStatus, Money, Result, UsageRecord};

#[cfg(feature = "stripe")]
#[cfg_attr(docsrs, doc(cfg(feature = "stripe")))]
pub mod stripe;
mod webhook;

pub use webhook::{DEFAULT_TOLERANCE, WebhookEvent, WebhookVerifier, parse_event};

/// A tenant's customer at a payment provider.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CustomerRef {
    /// The provider (`stripe`, `none`).
    pub provider: String,
    /// The provider's id (`cus_…`; the tenant's name with `none`).
    pub id: String,
}

/// What a provider may show about a tenant's customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CustomerDetails {
    /// The name on invoices.
    pub name: Option<String>,
    /// Where invoices and receipts go.
    pub email: Option<String>,
}

impl CustomerDetails {
    /// With a name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// With an email address.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }
}

/// An invoice as the provider holds it, finalized and ready to be paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInvoice {
    /// The provider.
    pub provider: String,
    /// The provider's id (`in_…`).
    pub id: String,
    /// The customer.
    pub customer: String,
    /// The tenant of the Ops invoice.
    pub tenant: String,
    /// The Ops invoice's period start.
    pub from: DateTime<Utc>,
    /// The Ops invoice's period end.
    pub to: DateTime<Utc>,
    /// What the provider will collect.
    pub amount_due: Money,
    /// The provider's status (`open`, `paid`; `collected outside Ops` with `none`).
    pub status: String,
}

/// How a payment attempt ended. Only [`Paid`](PaymentOutcome::Paid) means money was
/// collected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
#[non_exhaustive]
pub enum PaymentOutcome {
    /// Collected.
    Paid,
    /// Accepted but not settled yet (bank debits); a webhook tells the end.
    Processing,
    /// The customer must act (3-D Secure, a mandate); nothing was charged.
    RequiresAction {
        /// What the provider asks for.
        reason: String,
    },
    /// Declined or failed; nothing was charged.
    Failed {
        /// Why, as the provider says it (code, decline code, message).
        reason: String,
    },
    /// The provider collects nothing: the invoice is settled outside Ops.
    Manual,
}

impl PaymentOutcome {
    /// Whether money was collected.
    pub fn is_paid(&self) -> bool {
        matches!(self, PaymentOutcome::Paid)
    }
}

/// Where invoices are collected. Every call is idempotent: calling again with the same
/// arguments (after a timeout, a crash, a redelivered event) changes nothing at the
/// provider and returns the same answer.
#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// The provider's name (`stripe`, `none`).
    fn name(&self) -> &'static str;

    /// The tenant's customer, created on first use: the same tenant always gets the
    /// same customer.
    async fn customer(&self, tenant: &Tenant, details: &CustomerDetails) -> Result<CustomerRef>;

    /// Reports usage as it happens (for usage-based prices at the provider), one
    /// provider event per record, keyed by the record's event id and meter so that a
    /// retry is not counted twice. Returns how many records were reported; records of
    /// meters the provider is not configured for are skipped.
    async fn report_usage(&self, customer: &CustomerRef, records: &[UsageRecord]) -> Result<usize>;

    /// Sends a finalized Ops invoice; the same invoice (tenant and period) always gives
    /// the same provider invoice. A draft is [`Error::InvoiceNotFinal`].
    async fn invoice(&self, customer: &CustomerRef, invoice: &Invoice) -> Result<ProviderInvoice>;

    /// Collects `invoice`. `attempt` (from 1) names the attempt: the same attempt
    /// retried never charges twice, and a new attempt after a failure (a new card) uses
    /// the next number; a paid invoice is never charged again. A decline is
    /// [`PaymentOutcome::Failed`], never `Paid`; an error of the call is an `Err`.
    async fn pay(&self, invoice: &ProviderInvoice, attempt: u32) -> Result<PaymentOutcome>;

    /// Charges `customer` `amount` now with its default payment method, e.g. to buy
    /// prepaid credit: post the top-up only when the outcome is
    /// [`PaymentOutcome::Paid`]. `key` is the caller's idempotency key (the top-up's
    /// ledger key): the same key never charges twice. An amount that is not positive is
    /// [`Error::InvalidCharge`].
    async fn charge(
        &self,
        customer: &CustomerRef,
        amount: Money,
        key: &str,
    ) -> Result<PaymentOutcome>;

    /// Verifies a webhook delivery (raw body and signature header) and reads its event.
    fn verify_webhook(
        &self,
        payload: &[u8],
        signature_header: &str,
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent>;
}

#[async_trait]
impl<T: PaymentProvider + ?Sized> PaymentProvider for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    async fn customer(&self, tenant: &Tenant, details: &CustomerDetails) -> Result<CustomerRef> {
        (**self).customer(tenant, details).await
    }

    async fn report_usage(&self, customer: &CustomerRef, records: &[UsageRecord]) -> Result<usize> {
        (**self).report_usage(customer, records).await
    }

    async fn invoice(&self, customer: &CustomerRef, invoice: &Invoice) -> Result<ProviderInvoice> {
        (**self).invoice(customer, invoice).await
    }

    async fn pay(&self, invoice: &ProviderInvoice, attempt: u32) -> Result<PaymentOutcome> {
        (**self).pay(invoice, attempt).await
    }

    async fn charge(
        &self,
        customer: &CustomerRef,
        amount: Money,
        key: &str,
    ) -> Result<PaymentOutcome> {
        (**self).charge(customer, amount, key).await
    }

    fn verify_webhook(
        &self,
        payload: &[u8],
        signature_header: &str,
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent> {
        (**self).verify_webhook(payload, signature_header, now)
    }
}

/// Refuses an amount that is not positive.
pub(crate) fn ensure_positive(amount: Money) -> Result<()> {
    if amount.amount <= 0 {
        return Err(Error::InvalidCharge {
            amount,
            reason: "a charge must be positive".to_owned(),
        });
    }
    Ok(())
}

/// Refuses a draft invoice.
pub(crate) fn ensure_final(invoice: &Invoice) -> Result<()> {
    if invoice.status == InvoiceStatus::Draft {
        return Err(Error::InvoiceNotFinal {
            tenant: invoice.tenant.clone(),
            from: invoice.from,
            to: invoice.to,
        });
    }
    Ok(())
}

/// The `none` provider: nothing leaves Ops. Customers are the tenants themselves,
/// invoices are collected outside Ops, and [`pay`](PaymentProvider::pay) is
/// [`PaymentOutcome::Manual`], never `Paid`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPaymentProvider;

/// The status of invoices with [`NoPaymentProvider`].
pub const COLLECTED_OUTSIDE: &str = "collected outside Ops";

#[async_trait]
impl PaymentProvider for NoPaymentProvider {
    fn name(&self) -> &'static str {
        "none"
    }

    async fn customer(&self, tenant: &Tenant, _details: &CustomerDetails) -> Result<CustomerRef> {
        Ok(CustomerRef {
            provider: "none".to_owned(),
            id: tenant.to_string(),
        })
    }

    async fn report_usage(
        &self,
        _customer: &CustomerRef,
        _records: &[UsageRecord],
    ) -> Result<usize> {
        Ok(0)
    }

    async fn invoice(&self, customer: &CustomerRef, invoice: &Invoice) -> Result<ProviderInvoice> {
        ensure_final(invoice)?;
        Ok(ProviderInvoice {
            provider: "none".to_owned(),
            id: format!(
                "{}:{}:{}",
                invoice.tenant,
                invoice.from.timestamp(),
                invoice.to.timestamp()
            ),
            customer: customer.id.clone(),
            tenant: invoice.tenant.clone(),
            from: invoice.from,
            to: invoice.to,
            amount_due: invoice.period_charge(),
            status: COLLECTED_OUTSIDE.to_owned(),
        })
    }

    async fn pay(&self, _invoice: &ProviderInvoice, _attempt: u32) -> Result<PaymentOutcome> {
        Ok(PaymentOutcome::Manual)
    }

    async fn charge(
        &self,
        _customer: &CustomerRef,
        amount: Money,
        _key: &str,
    ) -> Result<PaymentOutcome> {
        ensure_positive(amount)?;
        Ok(PaymentOutcome::Manual)
    }

    fn verify_webhook(
        &self,
        _payload: &[u8],
        _signature_header: &str,
        _now: DateTime<Utc>,
    ) -> Result<WebhookEvent> {
        Err(Error::PaymentUnsupported {
            provider: "none",
            what: "receive webhooks",
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use ops_core::ErrorKind;

    use super::*;
    use crate::Currency;

    fn invoice(status: InvoiceStatus) -> Invoice {
        let eur: Currency = "EUR".parse().unwrap();
        Invoice {
            tenant: "acme".to_owned(),
            from: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            to: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
            status,
            lines: Vec::new(),
            tasks_total: Money::new(500, eur),
            period_total: Money::new(120, eur),
            total: Money::new(620, eur),
        }
    }

    #[tokio::test]
    async fn none_keeps_everything_local_and_never_reports_paid() {
        let provider: Arc<dyn PaymentProvider> = Arc::new(NoPaymentProvider);
        assert_eq!(provider.name(), "none");
        let tenant = Tenant::parse("acme").unwrap();
        let customer = provider
            .customer(&tenant, &CustomerDetails::default().name("Acme"))
            .await
            .unwrap();
        assert_eq!(customer.id, "acme");
        assert_eq!(
            customer,
            provider
                .customer(&tenant, &CustomerDetails::default())
                .await
                .unwrap()
        );
        assert_eq!(provider.report_usage(&customer, &[]).await.unwrap(), 0);
        let sent = provider
            .invoice(&customer, &invoice(InvoiceStatus::Finalized))
            .await
            .unwrap();
        assert_eq!(sent.status, COLLECTED_OUTSIDE);
        assert_eq!(sent.amount_due.amount, 120);
        assert_eq!(sent.id, "acme:1793491200:1796083200");
        let outcome = provider.pay(&sent, 1).await.unwrap();
        assert_eq!(outcome, PaymentOutcome::Manual);
        assert!(!outcome.is_paid());
        let eur: crate::Currency = "EUR".parse().unwrap();
        let outcome = provider
            .charge(&customer, Money::new(1000, eur), "top-up-1")
            .await
            .unwrap();
        assert!(!outcome.is_paid());
        let err = provider
            .charge(&customer, Money::new(0, eur), "top-up-2")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn none_refuses_drafts_and_webhooks() {
        let customer = CustomerRef {
            provider: "none".to_owned(),
            id: "acme".to_owned(),
        };
        let err = NoPaymentProvider
            .invoice(&customer, &invoice(InvoiceStatus::Draft))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("still a draft"), "{err}");
        let err = NoPaymentProvider
            .verify_webhook(b"{}", "t=1,v1=00", Utc::now())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
}
