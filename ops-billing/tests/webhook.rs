//! Webhook signatures: valid, forged, stale, from the future, malformed, unsigned, and
//! signed with two secrets while one is rolled. Needs no feature.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ops_billing::payment::{WebhookVerifier, parse_event};
use ops_billing::{Error, NoPaymentProvider, PaymentProvider};
use ops_core::ErrorKind;

const OLD: &str = "whsec_old_0123456789";
const NEW: &str = "whsec_new_9876543210";
const PAYLOAD: &[u8] = br#"{
  "id": "evt_1PgcAbB7WZ01zgkW",
  "object": "event",
  "type": "invoice.paid",
  "created": 1796083300,
  "livemode": false,
  "data": {"object": {"id": "in_1Pgc6tB7WZ01zgkWu9fdqL6I", "object": "invoice", "status": "paid"}}
}"#;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 5, 0).unwrap()
}

#[test]
fn valid_delivery_is_read() {
    let header = WebhookVerifier::sign(NEW, PAYLOAD, now().timestamp() - 10);
    let event = WebhookVerifier::new(NEW)
        .verify(PAYLOAD, &header, now())
        .unwrap();
    assert_eq!(event.id, "evt_1PgcAbB7WZ01zgkW");
    assert_eq!(event.ty, "invoice.paid");
    assert_eq!(event.created.timestamp(), 1796083300);
    assert!(!event.livemode);
    assert_eq!(event.object["id"], "in_1Pgc6tB7WZ01zgkWu9fdqL6I");
}

#[test]
fn forged_delivery_is_refused() {
    // Signed with a secret this side does not have.
    let header = WebhookVerifier::sign("whsec_attacker", PAYLOAD, now().timestamp());
    let err = WebhookVerifier::new(NEW)
        .verify(PAYLOAD, &header, now())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::WebhookBadSignature {
            signatures: 1,
            secrets: 1
        }
    ));
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("bad signature"), "{err}");

    // The right secret over a changed body.
    let header = WebhookVerifier::sign(NEW, PAYLOAD, now().timestamp());
    let tampered = String::from_utf8_lossy(PAYLOAD).replace("invoice.paid", "invoice.voided");
    let err = WebhookVerifier::new(NEW)
        .verify(tampered.as_bytes(), &header, now())
        .unwrap_err();
    assert!(matches!(err, Error::WebhookBadSignature { .. }), "{err}");

    // The right signature moved to another timestamp.
    let t = now().timestamp();
    let sig = WebhookVerifier::signature(NEW, PAYLOAD, t);
    let err = WebhookVerifier::new(NEW)
        .verify(PAYLOAD, &format!("t={},v1={sig}", t - 1), now())
        .unwrap_err();
    assert!(matches!(err, Error::WebhookBadSignature { .. }), "{err}");
}

#[test]
fn stale_delivery_is_refused_with_its_age_and_the_tolerance() {
    let header = WebhookVerifier::sign(NEW, PAYLOAD, now().timestamp() - 301);
    let err = WebhookVerifier::new(NEW)
        .verify(PAYLOAD, &header, now())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::WebhookStale {
            age_secs: 301,
            tolerance_secs: 300
        }
    ));
    assert_eq!(
        err.to_string(),
        "webhook: stale timestamp: signed 301 s ago, tolerance is 300 s"
    );
    // At the bound it passes; a wider tolerance takes older ones.
    let header = WebhookVerifier::sign(NEW, PAYLOAD, now().timestamp() - 300);
    WebhookVerifier::new(NEW)
        .verify(PAYLOAD, &header, now())
        .unwrap();
    let header = WebhookVerifier::sign(NEW, PAYLOAD, now().timestamp() - 3600);
    WebhookVerifier::new(NEW)
        .tolerance(Duration::from_secs(7200))
        .verify(PAYLOAD, &header, now())
        .unwrap();
}

#[test]
fn delivery_from_the_future_is_refused() {
    let header = WebhookVerifier::sign(NEW, PAYLOAD, now().timestamp() + 600);
    let err = WebhookVerifier::new(NEW)
        .verify(PAYLOAD, &header, now())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::WebhookFromFuture {
            ahead_secs: 600,
            tolerance_secs: 300
        }
    ));
    assert!(err.to_string().contains("600 s in the future"), "{err}");
}

#[test]
fn malformed_and_unsigned_headers_are_named() {
    let v = WebhookVerifier::new(NEW);
    let t = now().timestamp();
    for (header, expect) in [
        ("", "no timestamp"),
        ("v1=abcd", "no timestamp"),
        ("t=yesterday,v1=abcd", "not unix seconds"),
        ("t=1,t=2,v1=abcd", "two timestamps"),
        ("t=1,garbage", "is not key=value"),
    ] {
        let err = v.verify(PAYLOAD, header, now()).unwrap_err();
        assert!(
            matches!(err, Error::WebhookMalformed { .. }),
            "{header}: {err}"
        );
        assert!(err.to_string().contains(expect), "{header}: {err}");
        assert!(err.to_string().contains("Stripe-Signature header"), "{err}");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    // Only the old test-mode scheme: no v1 to check.
    let v0 = WebhookVerifier::signature(NEW, PAYLOAD, t);
    let err = v
        .verify(PAYLOAD, &format!("t={t},v0={v0}"), now())
        .unwrap_err();
    assert!(matches!(err, Error::WebhookUnsigned { .. }), "{err}");
    assert!(err.to_string().contains("schemes found: v0"), "{err}");
}

/// During a rotation Stripe signs with the old and the new secret: one header, two
/// `v1` values. Either secret configured accepts it; both configured too.
#[test]
fn delivery_signed_during_rotation_verifies_with_either_secret() {
    let t = now().timestamp();
    let header = format!(
        "t={t},v1={},v1={},v0={}",
        WebhookVerifier::signature(OLD, PAYLOAD, t),
        WebhookVerifier::signature(NEW, PAYLOAD, t),
        "6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
    );
    for verifier in [
        WebhookVerifier::new(OLD),
        WebhookVerifier::new(NEW),
        WebhookVerifier::new(OLD).with_secret(NEW),
        WebhookVerifier::with_secrets([NEW, OLD]).unwrap(),
    ] {
        let event = verifier.verify(PAYLOAD, &header, now()).unwrap();
        assert_eq!(event.ty, "invoice.paid");
    }
    // A delivery signed with the new secret only, before this side has it.
    let header = WebhookVerifier::sign(NEW, PAYLOAD, t);
    let err = WebhookVerifier::new(OLD)
        .verify(PAYLOAD, &header, now())
        .unwrap_err();
    assert!(matches!(err, Error::WebhookBadSignature { .. }), "{err}");
    // With both configured, a delivery signed with either passes.
    let both = WebhookVerifier::new(OLD).with_secret(NEW);
    both.verify(PAYLOAD, &header, now()).unwrap();
    both.verify(PAYLOAD, &WebhookVerifier::sign(OLD, PAYLOAD, t), now())
        .unwrap();
    // A forged header with several v1 values is still refused, naming them.
    let err = both
        .verify(PAYLOAD, &format!("t={t},v1=00,v1=zz,v1=0011"), now())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::WebhookBadSignature {
            signatures: 2,
            secrets: 2
        }
    ));
}

#[test]
fn no_secret_is_a_configuration_error() {
    let err = WebhookVerifier::with_secrets(Vec::<String>::new()).unwrap_err();
    assert!(matches!(err, Error::PaymentConfig { .. }), "{err}");
    let err = WebhookVerifier::with_secrets([""]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn signed_payload_that_is_not_an_event_is_malformed() {
    let body = br#"{"hello":"world"}"#;
    let header = WebhookVerifier::sign(NEW, body, now().timestamp());
    let err = WebhookVerifier::new(NEW)
        .verify(body, &header, now())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WebhookMalformed {
                what: "payload",
                ..
            }
        ),
        "{err}"
    );
    assert!(parse_event(PAYLOAD).is_ok());
}

#[test]
fn secrets_are_not_shown_in_debug() {
    let shown = format!("{:?}", WebhookVerifier::new(NEW).with_secret(OLD));
    assert!(!shown.contains("whsec"), "{shown}");
    assert!(shown.contains("2 redacted"), "{shown}");
}

#[test]
fn the_none_provider_takes_no_webhooks() {
    let header = WebhookVerifier::sign(NEW, PAYLOAD, now().timestamp());
    let err = NoPaymentProvider
        .verify_webhook(PAYLOAD, &header, now())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}
