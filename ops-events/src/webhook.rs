//! Webhook functions: deliver events to an HTTP endpoint.
//!
//! A [`WebhookFunction`] POSTs each event as a structured-mode CloudEvent
//! (`Content-Type: application/cloudevents+json`, the JSON of [`Event`]) and signs the
//! request when it has a secret:
//!
//! ```text
//! X-Ops-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! X-Ops-Event-Id: <event id>
//! ```
//!
//! Receivers check the header with [`verify_signature`], which also rejects old
//! timestamps (replays). Several `v1=` values may appear (secret rotation); one
//! matching is enough.
//!
//! Outcomes: a 2xx response is success. A 5xx, 408 or 429 response, a connection
//! error or a timeout is a retryable failure (the dispatcher retries with backoff,
//! then dead-letters; `Retry-After` in seconds is honoured). Any other status (4xx,
//! 3xx: redirects are not followed) is a permanent failure: the event goes to the
//! dead letters at once, kept whole for replay.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use ops_core::Event;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::function::{FailureKind, Function, FunctionError};
use crate::{Error, Result};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-ops-signature";
/// The header carrying the event id (handy as an idempotency key).
pub const EVENT_ID_HEADER: &str = "x-ops-event-id";
/// The content type of structured-mode CloudEvents in JSON.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

type HmacSha256 = Hmac<Sha256>;

/// A webhook described in configuration.
///
/// ```
/// let c: ops_events::webhook::WebhookConfig = serde_json::from_str(
///     r#"{"name": "notify-acme", "url": "https://hooks.acme.example/ops", "secret": "s3cret", "timeout": 5000}"#,
/// ).unwrap();
/// let hook = ops_events::webhook::WebhookFunction::from_config(&c).unwrap();
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// The function name (names its subscription and dead letters).
    pub name: String,
    /// Where to POST (`http` or `https`).
    pub url: String,
    /// The HMAC secret; without it requests are not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Request timeout in milliseconds (default 10 s).
    #[serde(default = "default_timeout", with = "crate::serde_millis")]
    pub timeout: Duration,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl WebhookConfig {
    /// A configuration with the default timeout, no secret and no extra headers.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            secret: None,
            timeout: default_timeout(),
            headers: BTreeMap::new(),
        }
    }
}

/// A [`Function`] that POSTs each event to a URL (see the [module docs](self)).
#[derive(Clone)]
pub struct WebhookFunction {
    name: String,
    url: reqwest::Url,
    /// HMAC keyed with the secret, cloned per request.
    signer: Option<HmacSha256>,
    headers: HeaderMap,
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookFunction")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("signed", &self.signer.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`WebhookFunction`]; see [`WebhookFunction::builder`].
#[derive(Debug)]
pub struct WebhookBuilder {
    config: WebhookConfig,
    client: Option<reqwest::Client>,
}

impl WebhookBuilder {
    /// Signs requests with `secret`.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.config.secret = Some(secret.into());
        self
    }

    /// Sets the request timeout (connect included).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.headers.insert(name.into(), value.into());
        self
    }

    /// Uses this HTTP client (to share a pool or set proxies). Its own settings apply,
    /// except the timeout, which is set per request.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Checks the URL, name and headers, and builds the function.
    pub fn build(self) -> Result<WebhookFunction> {
        let config = self.config;
        crate::bus::validate_name("function name", &config.name)?;
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| Error::invalid("webhook url", &config.url, e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid(
                "webhook url",
                &config.url,
                "the scheme must be http or https",
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::invalid("webhook url", &config.url, "has no host"));
        }
        if config.timeout.is_zero() {
            return Err(Error::invalid("webhook timeout", "0", "must be positive"));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::invalid("webhook header name", name, e.to_string()))?;
            let v = HeaderValue::from_str(value)
                .map_err(|e| Error::invalid("webhook header value", name, e.to_string()))?;
            headers.insert(n, v);
        }
        let client = match self.client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(config.timeout)
                .user_agent(concat!("ops-events/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| Error::invalid("webhook http client", &config.name, e.to_string()))?,
        };
        let signer = match &config.secret {
            Some(secret) => Some(
                HmacSha256::new_from_slice(secret.as_bytes())
                    .map_err(|e| Error::invalid("webhook secret", "<redacted>", e.to_string()))?,
            ),
            None => None,
        };
        Ok(WebhookFunction {
            name: config.name,
            url,
            signer,
            headers,
            client,
            timeout: config.timeout,
        })
    }
}

impl WebhookFunction {
    /// Starts building a webhook named `name` that POSTs to `url`.
    pub fn builder(name: impl Into<String>, url: impl Into<String>) -> WebhookBuilder {
        WebhookBuilder {
            config: WebhookConfig::new(name, url),
            client: None,
        }
    }

    /// Builds a webhook from configuration.
    pub fn from_config(config: &WebhookConfig) -> Result<Self> {
        WebhookBuilder {
            config: config.clone(),
            client: None,
        }
        .build()
    }

    /// The target URL.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }
}

#[async_trait]
impl Function for WebhookFunction {
    fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, event: &Event) -> Result<(), FunctionError> {
        let body = event.to_json_bytes()?;
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, CLOUDEVENTS_JSON)
            .header(EVENT_ID_HEADER, event.id.to_string());
        if let Some(signer) = &self.signer {
            request = request.header(
                SIGNATURE_HEADER,
                signature(signer.clone(), unix_now(), &body),
            );
        }
        let response = request
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_builder() {
                    FailureKind::Permanent
                } else {
                    FailureKind::Retryable
                };
                FunctionError::new(kind, format!("POST {}: {}", self.url, describe(&e)))
                    .with_source(e)
            })?;
        let status = response.status();
        if status.is_success() {
            tracing::debug!(event_id = %event.id, status = status.as_u16(), "webhook delivered");
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let snippet: String = text.chars().take(200).collect();
        let message = format!("POST {} returned {status}: {snippet}", self.url);
        let retryable =
            status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
        let err = if retryable {
            FunctionError::retryable(message)
        } else {
            FunctionError::permanent(message)
        };
        Err(match retry_after {
            Some(d) => err.with_retry_after(d),
            None => err,
        })
    }
}

/// Text of a reqwest error with its causes (reqwest's own `Display` omits them).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn signed(mut mac: HmacSha256, timestamp: u64, body: &[u8]) -> HmacSha256 {
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn signature(mac: HmacSha256, timestamp: u64, body: &[u8]) -> String {
    let tag = signed(mac, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// The `X-Ops-Signature` value for `body` sent at `timestamp` (unix seconds), as a
/// [`WebhookFunction`] computes it.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> Result<String, SignatureError> {
    let mac = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::InvalidSecret)?;
    Ok(signature(mac, timestamp, body))
}

/// Why a webhook signature was rejected by [`verify_signature`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<unix>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed signature header: {0}")]
    Malformed(String),
    /// The timestamp is further from now than the tolerance (a replay, or a clock
    /// problem).
    #[error("signature timestamp {timestamp} is outside the tolerance of {tolerance_secs} s")]
    Expired {
        /// The header's timestamp.
        timestamp: u64,
        /// The tolerance used.
        tolerance_secs: u64,
    },
    /// No signature in the header matches the body and secret.
    #[error("signature does not match")]
    Mismatch,
    /// The secret cannot key an HMAC (HMAC accepts any length, so this does not
    /// happen in practice).
    #[error("invalid secret")]
    InvalidSecret,
}

/// Checks an `X-Ops-Signature` header against the raw request body, for receivers.
/// `tolerance` bounds how far the signed timestamp may be from now (5 minutes is
/// usual).
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use ops_events::webhook::{sign, verify_signature};
///
/// let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
/// let header = sign(b"s3cret", now, b"{}").unwrap();
/// assert!(verify_signature(b"s3cret", &header, b"{}", Duration::from_secs(300)).is_ok());
/// assert!(verify_signature(b"other", &header, b"{}", Duration::from_secs(300)).is_err());
/// ```
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| SignatureError::Malformed(format!("{part:?} is not key=value")))?;
        match key {
            "t" => {
                let t = value
                    .parse::<u64>()
                    .map_err(|_| SignatureError::Malformed(format!("bad timestamp {value:?}")))?;
                timestamp = Some(t);
            }
            "v1" => {
                let bytes = hex::decode(value)
                    .map_err(|_| SignatureError::Malformed("v1 is not hex".to_owned()))?;
                signatures.push(bytes);
            }
            _ => {} // unknown schemes are ignored, for forward compatibility
        }
    }
    let timestamp = timestamp.ok_or_else(|| SignatureError::Malformed("no t=".to_owned()))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1=".to_owned()));
    }
    if unix_now().abs_diff(timestamp) > tolerance.as_secs() {
        return Err(SignatureError::Expired {
            timestamp,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let key = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::InvalidSecret)?;
    let expected = signed(key, timestamp, body);
    if signatures
        .iter()
        .any(|sig| expected.clone().verify_slice(sig).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let now = unix_now();
        let body = br#"{"id":"x"}"#;
        let header = sign(b"k", now, body).unwrap();
        assert!(header.starts_with(&format!("t={now},v1=")));
        let tol = Duration::from_secs(300);
        assert_eq!(verify_signature(b"k", &header, body, tol), Ok(()));
        assert_eq!(
            verify_signature(b"k", &header, b"tampered", tol),
            Err(SignatureError::Mismatch)
        );
        // Rotation: an old and a new signature, one matches.
        let new = sign(b"new", now, body).unwrap();
        let both = format!("{header},{}", new.split_once(',').unwrap().1);
        assert_eq!(verify_signature(b"new", &both, body, tol), Ok(()));
        let old = sign(b"k", now - 3600, body).unwrap();
        assert!(matches!(
            verify_signature(b"k", &old, body, tol),
            Err(SignatureError::Expired { .. })
        ));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert!(
                matches!(
                    verify_signature(b"k", bad, body, tol),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn construction_rejects_bad_input() {
        let bad_url = WebhookFunction::builder("hook", "not a url")
            .build()
            .unwrap_err();
        assert!(
            matches!(
                bad_url,
                Error::Invalid {
                    what: "webhook url",
                    ..
                }
            ),
            "{bad_url}"
        );
        let ftp = WebhookFunction::builder("hook", "ftp://example.com/")
            .build()
            .unwrap_err();
        assert!(ftp.to_string().contains("http or https"), "{ftp}");
        let name = WebhookFunction::builder("a b", "http://example.com/")
            .build()
            .unwrap_err();
        assert!(matches!(
            name,
            Error::Invalid {
                what: "function name",
                ..
            }
        ));
        let header = WebhookFunction::builder("hook", "http://example.com/")
            .header("bad header", "x")
            .build()
            .unwrap_err();
        assert!(matches!(
            header,
            Error::Invalid {
                what: "webhook header name",
                ..
            }
        ));
        let ok = WebhookFunction::builder("hook", "https://example.com/in")
            .secret("s")
            .timeout(Duration::from_secs(1))
            .header("authorization", "Bearer t")
            .build()
            .unwrap();
        assert_eq!(ok.url(), "https://example.com/in");
        assert_eq!(ok.name(), "hook");
    }
}
