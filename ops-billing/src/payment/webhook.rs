//! Webhook signatures in Stripe's scheme, checked without any Stripe crate.
//!
//! A delivery carries `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]`.
//! Each `v1` is HMAC-SHA256 of `"{t}.{payload}"` under one endpoint secret. While a
//! secret is being rolled, Stripe signs with the old and the new one, so the header has
//! several `v1` values (async-stripe's own parser keeps only one of them); a delivery
//! is accepted when any `v1` matches any configured secret, compared in constant time.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// What the signature header is called in errors.
const HEADER: &str = "Stripe-Signature header";

/// The tolerance Stripe's libraries use: 5 minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Checks webhook deliveries against one or more endpoint secrets (several while a
/// secret is rolled) and a clock tolerance.
///
/// ```
/// use ops_billing::payment::WebhookVerifier;
/// let now = chrono::Utc::now();
/// let payload = br#"{"id":"evt_1","type":"invoice.paid","created":1,"data":{"object":{"id":"in_1"}}}"#;
/// let header = WebhookVerifier::sign("whsec_new", payload, now.timestamp());
/// let verifier = WebhookVerifier::new("whsec_old").with_secret("whsec_new");
/// let event = verifier.verify(payload, &header, now)?;
/// assert_eq!(event.ty, "invoice.paid");
/// # Ok::<(), ops_billing::Error>(())
/// ```
#[derive(Clone)]
pub struct WebhookVerifier {
    secrets: Vec<String>,
    tolerance: Duration,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// A verified webhook event: the envelope, with the object it is about as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookEvent {
    /// The event id (`evt_…`): deliveries of one event share it, so it is the dedupe key.
    pub id: String,
    /// The event type, e.g. `invoice.paid`, `invoice.payment_failed`.
    pub ty: String,
    /// When the provider created the event.
    pub created: DateTime<Utc>,
    /// Whether it is from live mode.
    pub livemode: bool,
    /// `data.object`: the object the event is about (an invoice, a payment intent…).
    pub object: serde_json::Value,
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    ty: String,
    created: i64,
    #[serde(default)]
    livemode: bool,
    data: EnvelopeData,
}

#[derive(Deserialize)]
struct EnvelopeData {
    object: serde_json::Value,
}

/// The parts of a signature header.
struct Header {
    timestamp: i64,
    v1: Vec<Vec<u8>>,
    schemes: Vec<String>,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::WebhookMalformed {
        what: HEADER,
        reason: reason.into(),
    }
}

fn parse_header(header: &str) -> Result<Header> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    let mut schemes = Vec::new();
    for item in header.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(malformed(format!("{item:?} is not key=value")));
        };
        match key.trim() {
            "t" => {
                if timestamp.is_some() {
                    return Err(malformed("two timestamps (t=)"));
                }
                let t = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| malformed(format!("timestamp {value:?} is not unix seconds")))?;
                timestamp = Some(t);
            }
            scheme => {
                if scheme == "v1" {
                    // A value that is not hex cannot match; it must not hide the others.
                    if let Ok(sig) = hex::decode(value.trim()) {
                        v1.push(sig);
                    }
                }
                if !schemes.iter().any(|s| s == scheme) {
                    schemes.push(scheme.to_owned());
                }
            }
        }
    }
    let Some(timestamp) = timestamp else {
        return Err(malformed("no timestamp (t=)"));
    };
    Ok(Header {
        timestamp,
        v1,
        schemes,
    })
}

impl WebhookVerifier {
    /// A verifier for one endpoint secret (`whsec_…`), with the default tolerance of
    /// 300 s.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secrets: vec![secret.into()],
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// A verifier for all of `secrets`; none is [`Error::PaymentConfig`].
    pub fn with_secrets<S: Into<String>>(secrets: impl IntoIterator<Item = S>) -> Result<Self> {
        let secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        if secrets.is_empty() {
            return Err(Error::PaymentConfig {
                provider: "webhook",
                reason: "no webhook secret configured".to_owned(),
            });
        }
        Ok(Self {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// Also accepts deliveries signed with `secret`: during a rotation, configure the
    /// old and the new secret.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secrets.push(secret.into());
        self
    }

    /// How far a signature's timestamp may be from now, either way.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Checks the signature header of `payload` (the raw body, unparsed) and its
    /// timestamp against `now`, then reads the event. Errors:
    /// [`Error::WebhookMalformed`], [`Error::WebhookUnsigned`],
    /// [`Error::WebhookBadSignature`], [`Error::WebhookStale`],
    /// [`Error::WebhookFromFuture`].
    pub fn verify(
        &self,
        payload: &[u8],
        signature_header: &str,
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent> {
        self.verify_signature(payload, signature_header, now)?;
        parse_event(payload)
    }

    /// Checks the signature and the timestamp only (see [`verify`](Self::verify)).
    pub fn verify_signature(
        &self,
        payload: &[u8],
        signature_header: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let header = parse_header(signature_header)?;
        if header.v1.is_empty() {
            return Err(Error::WebhookUnsigned {
                schemes: if header.schemes.is_empty() {
                    "none".to_owned()
                } else {
                    header.schemes.join(", ")
                },
            });
        }
        let signed_payload = signed_payload(header.timestamp, payload);
        let matches = self.secrets.iter().any(|secret| {
            header.v1.iter().any(|sig| {
                // HMAC takes keys of any length, so this never fails.
                HmacSha256::new_from_slice(secret.as_bytes())
                    .map(|mut mac| {
                        mac.update(&signed_payload);
                        mac.verify_slice(sig).is_ok()
                    })
                    .unwrap_or(false)
            })
        });
        if !matches {
            return Err(Error::WebhookBadSignature {
                signatures: header.v1.len(),
                secrets: self.secrets.len(),
            });
        }
        // The timestamp is trusted only once the signature covering it is checked.
        let tolerance_secs = self.tolerance.as_secs();
        let tolerance = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
        let age = now.timestamp().saturating_sub(header.timestamp);
        if age > tolerance {
            return Err(Error::WebhookStale {
                age_secs: age,
                tolerance_secs,
            });
        }
        if -age > tolerance {
            return Err(Error::WebhookFromFuture {
                ahead_secs: -age,
                tolerance_secs,
            });
        }
        Ok(())
    }

    /// The signature header a provider would send for `payload` signed with `secret`
    /// at `timestamp` (unix seconds): for tests and local fakes.
    pub fn sign(secret: &str, payload: &[u8], timestamp: i64) -> String {
        format!("t={timestamp},v1={}", signature(secret, payload, timestamp))
    }

    /// The hex `v1` signature of `payload` with `secret` at `timestamp`.
    pub fn signature(secret: &str, payload: &[u8], timestamp: i64) -> String {
        signature(secret, payload, timestamp)
    }
}

fn signed_payload(timestamp: i64, payload: &[u8]) -> Vec<u8> {
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(payload);
    signed
}

fn signature(secret: &str, payload: &[u8], timestamp: i64) -> String {
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(&signed_payload(timestamp, payload));
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length.
        Err(_) => String::new(),
    }
}

/// Reads a webhook payload's envelope (id, type, created, `data.object`); it does not
/// check any signature.
pub fn parse_event(payload: &[u8]) -> Result<WebhookEvent> {
    let envelope: Envelope =
        serde_json::from_slice(payload).map_err(|e| Error::WebhookMalformed {
            what: "payload",
            reason: e.to_string(),
        })?;
    let created = Utc
        .timestamp_opt(envelope.created, 0)
        .single()
        .ok_or_else(|| Error::WebhookMalformed {
            what: "payload",
            reason: format!("created {} is not a time", envelope.created),
        })?;
    Ok(WebhookEvent {
        id: envelope.id,
        ty: envelope.ty,
        created,
        livemode: envelope.livemode,
        object: envelope.data.object,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_with_spaces_and_unknown_schemes_parses() {
        let h = parse_header("t=12, v1=00ff ,v0=abc,v1=zz").unwrap();
        assert_eq!(h.timestamp, 12);
        assert_eq!(h.v1, vec![vec![0, 255]]);
        assert_eq!(h.schemes, vec!["v1", "v0"]);
    }

    #[test]
    fn two_timestamps_are_malformed() {
        assert!(matches!(
            parse_header("t=1,t=2,v1=00"),
            Err(Error::WebhookMalformed { .. })
        ));
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_payload() {
        // python3: hmac.new(b"secret", b"1.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("secret", b"{}", 1),
            "1122767b193110cfec322b6f199b599edbf608ed087f2d27afb0b97d99523908"
        );
    }
}
