//! `StripeProvider` against a wiremock fake of Stripe that answers each endpoint with
//! Stripe's own fixture object (`tests/fixtures/stripe/`, from Stripe's
//! `fixtures3.json`): the id from the path, the request's top-level scalar fields
//! echoed over the same keys. The tests check the exact forms sent (every field,
//! nothing more), the idempotency keys, and how Stripe's errors and a slow answer
//! come back.
#![cfg(feature = "stripe")]

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use ops_billing::payment::stripe::{StripeConfig, StripeProvider};
use ops_billing::payment::{PaymentOutcome, PaymentProvider, ProviderInvoice, WebhookVerifier};
use ops_billing::{
    Currency, CustomerDetails, CustomerRef, Decimal, Error, Invoice, InvoiceLine, InvoiceStatus,
    Money, UsageRecord,
};
use ops_core::{ErrorKind, EventId, Tenant};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const FIXTURES: &str = include_str!("fixtures/stripe/fixtures3-subset.json");
const KEY: &str = "sk_test_ops_123";
const CUSTOMER: &str = "cus_QXg1o8vcGmoR32";
const INVOICE: &str = "in_1Pgc6tB7WZ01zgkWu9fdqL6I";
const E1: &str = "01890a5d-ac96-774b-bcce-b302099a8057";
const E2: &str = "01890a5d-ac96-774b-bcce-b302099a8058";

fn fixture(name: &str) -> Value {
    let all: Value = serde_json::from_str(FIXTURES).unwrap();
    all["resources"][name].clone()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The fields of a form body or query, decoded, in the order sent.
fn form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Sorted, so that fields from async-stripe's hash maps (metadata, payload) compare.
fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

/// Answers with a fixture object: the id from the path, top-level scalar fields of
/// the form echoed (keeping the fixture's JSON type), then `overrides`.
struct Fixture {
    object: Value,
    overrides: Value,
}

fn answer(name: &str) -> Fixture {
    Fixture {
        object: fixture(name),
        overrides: json!({}),
    }
}

fn answer_with(name: &str, overrides: Value) -> Fixture {
    Fixture {
        object: fixture(name),
        overrides,
    }
}

impl Respond for Fixture {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut object = self.object.clone();
        let segments: Vec<&str> = req.url.path().split('/').collect();
        // /v1/<resource>/<id>[/<action>]
        if let Some(id) = segments.get(3).filter(|s| !s.is_empty()) {
            object["id"] = json!(id);
        }
        for (key, value) in form(std::str::from_utf8(&req.body).unwrap()) {
            if key.contains('[') {
                continue;
            }
            let echoed = match object.get(&key) {
                Some(Value::Number(_)) => value.parse::<i64>().map(Value::from).ok(),
                Some(Value::Bool(_)) => value.parse::<bool>().map(Value::from).ok(),
                Some(Value::String(_) | Value::Null) => Some(Value::from(value)),
                _ => None,
            };
            if let Some(v) = echoed {
                object[&key] = v;
            }
        }
        if let Value::Object(o) = &self.overrides {
            for (k, v) in o {
                object[k] = v.clone();
            }
        }
        ResponseTemplate::new(200).set_body_json(object)
    }
}

fn stripe_error(status: u16, error: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({ "error": error }))
}

/// One request as sent: method, path (with the query's fields), idempotency key, form.
#[derive(Debug, PartialEq)]
struct Sent {
    method: String,
    path: String,
    key: Option<String>,
    form: Vec<(String, String)>,
}

async fn sent(server: &MockServer) -> Vec<Sent> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(
                r.headers.get("authorization").unwrap().to_str().unwrap(),
                format!("Bearer {KEY}")
            );
            let mut form = form(std::str::from_utf8(&r.body).unwrap());
            form.extend(self::form(r.url.query().unwrap_or("")));
            form.sort();
            Sent {
                method: r.method.to_string(),
                path: r.url.path().to_owned(),
                key: r
                    .headers
                    .get("idempotency-key")
                    .map(|k| k.to_str().unwrap().to_owned()),
                form,
            }
        })
        .collect()
}

fn sent_one(method: &str, path: &str, key: Option<&str>, form: &[(&str, &str)]) -> Sent {
    Sent {
        method: method.to_owned(),
        path: path.to_owned(),
        key: key.map(str::to_owned),
        form: fields(form),
    }
}

fn config(server: &MockServer) -> StripeConfig {
    StripeConfig::new(KEY)
        .base_url(server.uri())
        .timeout(Duration::from_secs(5))
        .meter("cpu_core_seconds", "ops_cpu_core_seconds")
        .meter("tasks", "ops_tasks")
}

fn provider(server: &MockServer) -> StripeProvider {
    StripeProvider::new(config(server)).unwrap()
}

fn eur() -> Currency {
    "EUR".parse().unwrap()
}

fn from() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
}

fn to() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
}

fn record(event: &str, meter: &str, quantity: &str) -> UsageRecord {
    UsageRecord {
        event_id: event.parse::<EventId>().unwrap(),
        meter: meter.to_owned(),
        tenant: "acme".to_owned(),
        environment: Some("prod".to_owned()),
        template: Some("render".to_owned()),
        task_id: None,
        gpu_model: None,
        outcome: None,
        scavenger: false,
        preempted: false,
        attempt: None,
        quantity: quantity.parse().unwrap(),
        at: Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap(),
    }
}

fn records() -> Vec<UsageRecord> {
    vec![
        record(E1, "cpu_core_seconds", "39600"),
        record(E1, "wall_seconds", "120"), // not mapped: not reported
        record(E2, "tasks", "1"),
    ]
}

fn line(meter: &str, price: &str, quantity: &str, amount: i64) -> InvoiceLine {
    InvoiceLine {
        meter: meter.to_owned(),
        price: price.to_owned(),
        quantity: quantity.parse::<Decimal>().unwrap(),
        amount: Money::new(amount, eur()),
        tasks: Vec::new(),
        events: Vec::new(),
    }
}

fn invoice() -> Invoice {
    Invoice {
        tenant: "acme".to_owned(),
        from: from(),
        to: to(),
        status: InvoiceStatus::Finalized,
        lines: vec![
            line("cpu_core_seconds", "", "39600", 76),
            line("storage_gb_months", "environment=prod", "1.500000", 120),
        ],
        tasks_total: Money::new(76, eur()),
        period_total: Money::new(120, eur()),
        total: Money::new(196, eur()),
    }
}

fn customer() -> CustomerRef {
    CustomerRef {
        provider: "stripe".to_owned(),
        id: CUSTOMER.to_owned(),
    }
}

fn provider_invoice() -> ProviderInvoice {
    ProviderInvoice {
        provider: "stripe".to_owned(),
        id: INVOICE.to_owned(),
        customer: CUSTOMER.to_owned(),
        tenant: "acme".to_owned(),
        from: from(),
        to: to(),
        amount_due: Money::new(120, eur()),
        status: "open".to_owned(),
    }
}

/// Every endpoint the provider uses, answered with its fixture.
async fn stripe() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/customers/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "search_result", "data": [], "has_more": false,
            "url": "/v1/customers/search", "next_page": null
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/customers"))
        .respond_with(answer("customer"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/billing/meter_events"))
        .respond_with(answer("billing.meter_event"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/invoices"))
        .respond_with(answer("invoice"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/invoiceitems"))
        .respond_with(answer("invoiceitem"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/invoices/[^/]+/finalize$"))
        .respond_with(answer_with(
            "invoice",
            json!({"status": "open", "amount_due": 120, "amount_remaining": 120, "currency": "eur"}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/invoices/[^/]+/pay$"))
        .respond_with(answer_with(
            "invoice",
            json!({"status": "paid", "amount_due": 120, "amount_paid": 120, "amount_remaining": 0, "currency": "eur"}),
        ))
        .mount(&server)
        .await;
    server
}

fn usage_sent() -> Vec<Sent> {
    let timestamp = "1794744000"; // 2026-11-15T12:00:00Z
    vec![
        sent_one(
            "POST",
            "/v1/billing/meter_events",
            Some(&format!("ops-meter-{E1}:cpu_core_seconds")),
            &[
                ("event_name", "ops_cpu_core_seconds"),
                ("identifier", &format!("{E1}:cpu_core_seconds")),
                ("payload[stripe_customer_id]", CUSTOMER),
                ("payload[value]", "39600"),
                ("timestamp", timestamp),
            ],
        ),
        sent_one(
            "POST",
            "/v1/billing/meter_events",
            Some(&format!("ops-meter-{E2}:tasks")),
            &[
                ("event_name", "ops_tasks"),
                ("identifier", &format!("{E2}:tasks")),
                ("payload[stripe_customer_id]", CUSTOMER),
                ("payload[value]", "1"),
                ("timestamp", timestamp),
            ],
        ),
    ]
}

fn invoice_sent() -> Vec<Sent> {
    let key = "ops-invoice-acme-1793491200-1796083200";
    let item = |n: &str, amount: &str, description: &str| {
        sent_one(
            "POST",
            "/v1/invoiceitems",
            Some(&format!("{key}-{n}")),
            &[
                ("amount", amount),
                ("currency", "eur"),
                ("customer", CUSTOMER),
                ("description", description),
                ("invoice", INVOICE),
            ],
        )
    };
    vec![
        sent_one(
            "POST",
            "/v1/invoices",
            Some(key),
            &[
                ("auto_advance", "false"),
                ("collection_method", "charge_automatically"),
                ("currency", "eur"),
                ("customer", CUSTOMER),
                (
                    "description",
                    "Ops usage of acme, 2026-11-01 00:00 UTC to 2026-12-01 00:00 UTC",
                ),
                (
                    "metadata[ops_period]",
                    "2026-11-01 00:00 UTC to 2026-12-01 00:00 UTC",
                ),
                ("metadata[ops_tenant]", "acme"),
                ("pending_invoice_items_behavior", "exclude"),
            ],
        ),
        item("line-0", "76", "cpu_core_seconds: 39600"),
        item("line-1", "120", "storage_gb_months (environment=prod): 1.5"),
        item(
            "prepaid",
            "-76",
            "tasks already settled from prepaid credit",
        ),
        sent_one(
            "POST",
            &format!("/v1/invoices/{INVOICE}/finalize"),
            Some(&format!("{key}-finalize")),
            &[("auto_advance", "false")],
        ),
    ]
}

#[tokio::test]
async fn customer_usage_invoice_and_payment_send_stripes_exact_forms() {
    let server = stripe().await;
    let stripe = provider(&server);
    assert_eq!(stripe.name(), "stripe");
    let tenant = Tenant::parse("acme").unwrap();

    let customer = stripe
        .customer(
            &tenant,
            &CustomerDetails::default()
                .name("Acme Ltd")
                .email("billing@acme.example"),
        )
        .await
        .unwrap();
    assert_eq!(customer, self::customer());
    let reported = stripe.report_usage(&customer, &records()).await.unwrap();
    assert_eq!(reported, 2);
    let sent_invoice = stripe.invoice(&customer, &invoice()).await.unwrap();
    assert_eq!(sent_invoice, provider_invoice());
    let outcome = stripe.pay(&sent_invoice, 1).await.unwrap();
    assert_eq!(outcome, PaymentOutcome::Paid);

    let mut expected = vec![
        sent_one(
            "GET",
            "/v1/customers/search",
            None,
            &[("limit", "1"), ("query", "metadata['ops_tenant']:'acme'")],
        ),
        sent_one(
            "POST",
            "/v1/customers",
            Some("ops-customer-acme"),
            &[
                ("email", "billing@acme.example"),
                ("metadata[ops_tenant]", "acme"),
                ("name", "Acme Ltd"),
            ],
        ),
    ];
    expected.extend(usage_sent());
    expected.extend(invoice_sent());
    expected.push(sent_one(
        "POST",
        &format!("/v1/invoices/{INVOICE}/pay"),
        Some(&format!("ops-pay-{INVOICE}-1")),
        &[],
    ));
    assert_eq!(sent(&server).await, expected);
}

#[tokio::test]
async fn a_tenant_found_at_stripe_keeps_its_customer() {
    let server = MockServer::start().await;
    let mut found = fixture("customer");
    found["id"] = json!("cus_existing");
    found["metadata"] = json!({"ops_tenant": "acme"});
    Mock::given(method("GET"))
        .and(path("/v1/customers/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "search_result", "data": [found], "has_more": false,
            "url": "/v1/customers/search", "next_page": null
        })))
        .mount(&server)
        .await;
    let stripe = provider(&server);
    let customer = stripe
        .customer(&Tenant::parse("acme").unwrap(), &CustomerDetails::default())
        .await
        .unwrap();
    assert_eq!(customer.id, "cus_existing");
    // Nothing created.
    assert_eq!(sent(&server).await.len(), 1);
}

#[tokio::test]
async fn retried_usage_report_sends_the_same_identifiers() {
    let server = stripe().await;
    let stripe = provider(&server);
    stripe.report_usage(&customer(), &records()).await.unwrap();
    stripe.report_usage(&customer(), &records()).await.unwrap();
    let mut expected = usage_sent();
    expected.extend(usage_sent());
    assert_eq!(sent(&server).await, expected);
}

#[tokio::test]
async fn retried_invoice_sends_the_same_idempotency_keys() {
    let server = stripe().await;
    let stripe = provider(&server);
    let first = stripe.invoice(&customer(), &invoice()).await.unwrap();
    let again = stripe.invoice(&customer(), &invoice()).await.unwrap();
    assert_eq!(first, again);
    let mut expected = invoice_sent();
    expected.extend(invoice_sent());
    assert_eq!(sent(&server).await, expected);
}

#[tokio::test]
async fn a_draft_invoice_or_a_negative_quantity_sends_nothing() {
    let server = stripe().await;
    let stripe = provider(&server);
    let mut draft = invoice();
    draft.status = InvoiceStatus::Draft;
    let err = stripe.invoice(&customer(), &draft).await.unwrap_err();
    assert!(matches!(err, Error::InvoiceNotFinal { .. }), "{err}");
    let mut bad = records();
    bad.push(record(E2, "cpu_core_seconds", "-5"));
    let err = stripe.report_usage(&customer(), &bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidQuantity { .. }), "{err}");
    assert!(err.to_string().contains("-5"), "{err}");
    assert!(sent(&server).await.is_empty());
}

#[tokio::test]
async fn a_declined_card_is_failed_and_never_paid() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/invoices/[^/]+/pay$"))
        .respond_with(stripe_error(
            402,
            json!({
                "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "doc_url": "https://stripe.com/docs/error-codes/card-declined"
            }),
        ))
        .mount(&server)
        .await;
    let stripe = provider(&server);
    let outcome = stripe.pay(&provider_invoice(), 1).await.unwrap();
    assert!(!outcome.is_paid());
    let PaymentOutcome::Failed { reason } = outcome else {
        panic!("expected Failed, got {outcome:?}");
    };
    assert!(reason.contains("card_declined"), "{reason}");
    assert!(reason.contains("insufficient_funds"), "{reason}");
    assert!(reason.contains("insufficient funds."), "{reason}");
    // A second attempt (a new card) gets its own key; the first is never replayed.
    stripe.pay(&provider_invoice(), 2).await.unwrap();
    let keys: Vec<Option<String>> = sent(&server).await.into_iter().map(|s| s.key).collect();
    assert_eq!(
        keys,
        [
            Some(format!("ops-pay-{INVOICE}-1")),
            Some(format!("ops-pay-{INVOICE}-2"))
        ]
    );
}

#[tokio::test]
async fn a_payment_needing_the_customer_requires_action() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/invoices/[^/]+/pay$"))
        .respond_with(stripe_error(
            402,
            json!({
                "type": "invalid_request_error",
                "code": "invoice_payment_intent_requires_action",
                "message": "This payment requires additional user action before it can be completed successfully."
            }),
        ))
        .mount(&server)
        .await;
    let outcome = provider(&server).pay(&provider_invoice(), 1).await.unwrap();
    assert!(
        matches!(outcome, PaymentOutcome::RequiresAction { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn an_invalid_request_names_the_parameter() {
    let server = stripe().await;
    Mock::given(method("POST"))
        .and(path("/v1/invoiceitems"))
        .respond_with(stripe_error(
            400,
            json!({
                "type": "invalid_request_error", "code": "parameter_invalid_integer",
                "param": "amount", "message": "Invalid integer: 1.5"
            }),
        ))
        .with_priority(1)
        .mount(&server)
        .await;
    let err = provider(&server)
        .invoice(&customer(), &invoice())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PaymentRejected { status: 400, param: Some(p), call: "create invoice item", .. } if p == "amount"),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "payment provider stripe: create invoice item rejected (HTTP 400, parameter amount, code parameter_invalid_integer): Invalid integer: 1.5"
    );
    // Stopped at the first item: no finalize, so nothing to pay.
    let paths: Vec<String> = sent(&server).await.into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/invoices", "/v1/invoiceitems"]);
}

#[tokio::test]
async fn a_bad_api_key_is_permission_denied() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/billing/meter_events"))
        .respond_with(stripe_error(
            401,
            json!({"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_***123"}),
        ))
        .mount(&server)
        .await;
    let err = provider(&server)
        .report_usage(&customer(), &records())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PaymentAuth { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_retryable() {
    for (status, body) in [
        (
            500,
            json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
        ),
        (
            503,
            json!({"error": {"type": "api_error", "message": "Service unavailable"}}),
        ),
        (
            429,
            json!({"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}}),
        ),
        (
            409,
            json!({"error": {"type": "invalid_request_error", "code": "lock_timeout", "message": "This object cannot be accessed right now"}}),
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/billing/meter_events"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
        let err = provider(&server)
            .report_usage(&customer(), &records())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PaymentUnavailable { status: Some(s), .. } if s == status),
            "{status}: {err:?}"
        );
        assert!(err.is_retryable(), "{status}");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        // The first record failed: nothing after it was sent.
        assert_eq!(sent(&server).await.len(), 1);
    }
    // A gateway's HTML page instead of Stripe's JSON.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/invoices"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .mount(&server)
        .await;
    let err = provider(&server)
        .invoice(&customer(), &invoice())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PaymentUnavailable { status: None, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_failed_payment_call_is_an_error_never_paid() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/invoices/[^/]+/pay$"))
        .respond_with(stripe_error(
            500,
            json!({"type": "api_error", "message": "An unknown error occurred"}),
        ))
        .mount(&server)
        .await;
    let err = provider(&server)
        .pay(&provider_invoice(), 1)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // An answer that is not a paid invoice is not Paid either.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/invoices/[^/]+/pay$"))
        .respond_with(answer_with(
            "invoice",
            json!({"status": "uncollectible", "amount_remaining": 120}),
        ))
        .mount(&server)
        .await;
    let outcome = provider(&server).pay(&provider_invoice(), 1).await.unwrap();
    assert!(
        matches!(&outcome, PaymentOutcome::Failed { reason } if reason.contains("uncollectible")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/billing/meter_events"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("billing.meter_event"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let stripe = StripeProvider::new(config(&server).timeout(Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    let err = stripe
        .report_usage(&customer(), &records())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            Error::PaymentTimeout {
                timeout_ms: 300,
                call: "create billing meter event",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        "payment provider stripe: create billing meter event timed out after 300 ms"
    );
}

#[tokio::test]
async fn configuration_errors_are_named() {
    let err = StripeProvider::new(StripeConfig::new("  ")).unwrap_err();
    assert!(err.to_string().contains("api_key is empty"), "{err}");
    let err = StripeProvider::new(StripeConfig::new(KEY).base_url("not a url")).unwrap_err();
    assert!(matches!(err, Error::PaymentConfig { .. }), "{err}");
    let shown = format!("{:?}", StripeConfig::new(KEY).webhook_secret("whsec_x"));
    assert!(
        !shown.contains(KEY) && !shown.contains("whsec_x"),
        "{shown}"
    );
    // From a configuration file.
    let config: StripeConfig = toml::from_str(
        r#"
        api_key = "sk_test_1"
        timeout_ms = 10000
        webhook_secrets = ["whsec_old", "whsec_new"]
        [meters]
        cpu_core_seconds = "ops_cpu"
        "#,
    )
    .unwrap();
    assert_eq!(config.meters["cpu_core_seconds"], "ops_cpu");
    assert_eq!(config.value_payload_key, "value");
    StripeProvider::new(config).unwrap();
}

#[tokio::test]
async fn the_provider_verifies_webhooks_with_its_secrets() {
    let server = MockServer::start().await;
    let payload = serde_json::to_vec(&json!({
        "id": "evt_1", "object": "event", "type": "invoice.payment_failed", "created": 1796083300,
        "livemode": false, "data": {"object": fixture("invoice")}
    }))
    .unwrap();
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 5, 0).unwrap();
    let t = now.timestamp();
    let rotating = format!(
        "t={t},v1={},v1={}",
        WebhookVerifier::signature("whsec_old", &payload, t),
        WebhookVerifier::signature("whsec_new", &payload, t)
    );
    let stripe = StripeProvider::new(config(&server).webhook_secret("whsec_new")).unwrap();
    let event = stripe.verify_webhook(&payload, &rotating, now).unwrap();
    assert_eq!(event.ty, "invoice.payment_failed");
    assert_eq!(event.object["id"], INVOICE);
    let err = stripe
        .verify_webhook(&payload, &rotating, now + chrono::Duration::seconds(301))
        .unwrap_err();
    assert!(matches!(err, Error::WebhookStale { .. }), "{err}");
    // Without a secret there is nothing to verify with.
    let err = provider(&server)
        .verify_webhook(&payload, &rotating, now)
        .unwrap_err();
    assert!(matches!(err, Error::PaymentConfig { .. }), "{err}");
}

/// Stripe answering a customer with a default card and payment intents with `status`.
async fn stripe_charging(status: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/v1/customers/[^/]+$"))
        .respond_with(answer_with(
            "customer",
            json!({"invoice_settings": {"custom_fields": null, "default_payment_method": "pm_card_visa",
                "footer": null, "rendering_options": null}}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(answer_with("payment_intent", json!({ "status": status })))
        .mount(&server)
        .await;
    server
}

fn charge_sent(key: &str) -> Vec<Sent> {
    vec![
        sent_one("GET", &format!("/v1/customers/{CUSTOMER}"), None, &[]),
        sent_one(
            "POST",
            "/v1/payment_intents",
            Some(&format!("ops-charge-{key}")),
            &[
                ("amount", "1000"),
                ("confirm", "true"),
                ("currency", "eur"),
                ("customer", CUSTOMER),
                ("description", &format!("Ops charge {key}")),
                ("metadata[ops_key]", key),
                ("off_session", "true"),
                ("payment_method", "pm_card_visa"),
            ],
        ),
    ]
}

#[tokio::test]
async fn a_charge_confirms_one_payment_intent_per_key() {
    let server = stripe_charging("succeeded").await;
    let stripe = provider(&server);
    let ten = Money::new(1000, eur());
    let outcome = stripe.charge(&customer(), ten, "top-up-1").await.unwrap();
    assert_eq!(outcome, PaymentOutcome::Paid);
    // Retried: the same key, so Stripe answers the first intent instead of charging.
    stripe.charge(&customer(), ten, "top-up-1").await.unwrap();
    let mut expected = charge_sent("top-up-1");
    expected.extend(charge_sent("top-up-1"));
    assert_eq!(sent(&server).await, expected);
    let err = stripe
        .charge(&customer(), Money::new(-5, eur()), "top-up-2")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCharge { .. }), "{err}");
}

#[tokio::test]
async fn a_charge_that_does_not_succeed_is_never_paid() {
    for (status, paid) in [
        ("processing", PaymentOutcome::Processing),
        (
            "requires_payment_method",
            PaymentOutcome::Failed {
                reason: "payment intent pi_1PgafyB7WZ01zgkWSjxsAJo3 is requires_payment_method"
                    .to_owned(),
            },
        ),
    ] {
        let server = stripe_charging(status).await;
        let outcome = provider(&server)
            .charge(&customer(), Money::new(1000, eur()), "k")
            .await
            .unwrap();
        assert_eq!(outcome, paid);
    }
    for (code, requires_action) in [("card_declined", false), ("authentication_required", true)] {
        let server = stripe_charging("succeeded").await;
        Mock::given(method("POST"))
            .and(path("/v1/payment_intents"))
            .respond_with(stripe_error(
                402,
                json!({"type": "card_error", "code": code, "decline_code": "generic_decline",
                    "message": "Your card was declined."}),
            ))
            .with_priority(1)
            .mount(&server)
            .await;
        let outcome = provider(&server)
            .charge(&customer(), Money::new(1000, eur()), "k")
            .await
            .unwrap();
        assert!(!outcome.is_paid());
        if requires_action {
            assert!(
                matches!(outcome, PaymentOutcome::RequiresAction { .. }),
                "{outcome:?}"
            );
        } else {
            assert!(
                matches!(&outcome, PaymentOutcome::Failed { reason } if reason.contains("generic_decline")),
                "{outcome:?}"
            );
        }
    }
    // A customer without a payment method is not charged at all.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/v1/customers/[^/]+$"))
        .respond_with(answer("customer"))
        .mount(&server)
        .await;
    let outcome = provider(&server)
        .charge(&customer(), Money::new(1000, eur()), "k")
        .await
        .unwrap();
    assert!(
        matches!(&outcome, PaymentOutcome::RequiresAction { reason } if reason.contains("no default payment method")),
        "{outcome:?}"
    );
    assert_eq!(sent(&server).await.len(), 1);
}

/// The copies in `tests/fixtures/stripe/` are Stripe's objects, unchanged: checked
/// against the shared `specs/stripe/fixtures3.json` when it is beside the repository.
#[test]
fn fixtures_are_stripes_own() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/specs/stripe/fixtures3.json"
    );
    let Ok(text) = std::fs::read_to_string(shared) else {
        return;
    };
    let all: Value = serde_json::from_str(&text).unwrap();
    let copy: Value = serde_json::from_str(FIXTURES).unwrap();
    for (name, object) in copy["resources"].as_object().unwrap() {
        assert_eq!(&all["resources"][name], object, "{name}");
    }
}
