//! The HTTP layer the cloud backends share: a thin typed JSON client on reqwest with
//! bearer auth, one rate-limit budget per credential, bounded retries and pagination.
//!
//! - **Budget.** Every [`HttpClient`] for the same provider and token shares one
//!   [`RateBudget`] (a process-wide registry keyed by a SHA-256 of both, so the token is
//!   not kept as a key). Each answer's `RateLimit-Limit`, `RateLimit-Remaining` and
//!   `RateLimit-Reset` headers (unix seconds; Hetzner and DigitalOcean both send them,
//!   header names are case-insensitive) update it; when the remaining requests fall to
//!   [`HttpConfig::reserve`], callers wait until the reset instead of spending requests
//!   on 429s. Each request taken counts down locally until the next answer says better,
//!   so concurrent callers do not all pass on a stale count.
//! - **Retries.** A 429 is retried after its `Retry-After` (or the reset); 5xx answers,
//!   timeouts and connection errors after an exponential backoff with jitter, up to
//!   [`HttpConfig::max_attempts`]; then [`Error::Transient`] with the last wait the
//!   provider asked for. A `POST` is retried only when the provider cannot have acted
//!   on it (429, connection refused): a create that may have happened is left to the
//!   caller, whose retry finds the server by its token instead of making a second.
//! - **Errors.** Any other failed answer goes to the backend's [`Classify`] function,
//!   which reads the provider's error body; [`prism_violation`] reads the validation
//!   details of a Prism mock's 422.
//!
//! # Example
//!
//! ```no_run
//! use ops_provision::http::{Answer, HttpClient, HttpConfig, Subject};
//! use ops_provision::Error;
//!
//! fn classify(provider: &str, answer: &Answer<'_>, _: &Subject<'_>) -> Error {
//!     Error::InvalidRequest {
//!         provider: provider.to_owned(),
//!         field: "request".to_owned(),
//!         message: format!("HTTP {}: {}", answer.status, answer.body),
//!     }
//! }
//!
//! # async fn run() -> ops_provision::Result<()> {
//! let client = HttpClient::new("example", "TOKEN", "https://api.example.com", classify)
//!     .config(HttpConfig::default().max_attempts(3));
//! let body: serde_json::Value = client.get("/things", &[], &Subject::none()).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{Error, Result, Server, ServerStatus};

/// The most pages [`HttpClient::paginate`] follows (a guard against a provider, or a
/// mock, whose "next page" never ends).
pub const MAX_PAGES: u32 = 1000;

/// Timeouts, retries and the rate-limit reserve of an [`HttpClient`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The whole request, connect to last byte (default 30 s).
    pub timeout: Duration,
    /// Tries per call, the first included (default 5).
    pub max_attempts: u32,
    /// The backoff before the second try; doubled for each further one (default 500 ms).
    pub backoff_initial: Duration,
    /// The longest backoff (default 30 s).
    pub backoff_max: Duration,
    /// The longest single wait for a `Retry-After` or a rate-limit reset (default 60 s):
    /// a longer one is cut short and the request tried anyway.
    pub max_wait: Duration,
    /// Requests kept in hand: callers wait for the reset when the remaining requests
    /// fall to this (default 0).
    pub reserve: u32,
    /// Headers sent with every request, besides the credential (a proxy's, or a mock's
    /// `Prefer`).
    pub headers: Vec<(String, String)>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            reserve: 0,
            headers: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// With a request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With `attempts` tries per call (at least one).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// With the first backoff and the longest.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// With the longest wait for a `Retry-After` or a reset.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// With `requests` kept in reserve.
    pub fn reserve(mut self, requests: u32) -> Self {
        self.reserve = requests;
        self
    }

    /// With the header `name: value` on every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The backoff before try `attempt + 1` (`attempt` ≥ 1), with jitter: between half
    /// and all of `initial · 2^(attempt-1)`, capped at the maximum.
    fn backoff_for(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        jitter(exp.min(self.backoff_max))
    }
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    let half = d / 2;
    let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(h.finish() % spread.saturating_add(1))
}

// ------------------------------------------------------------------ rate budget

#[derive(Debug, Default)]
struct BudgetState {
    limit: Option<u32>,
    remaining: Option<u32>,
    reset: Option<SystemTime>,
}

/// The rate-limit budget of one credential at one provider, shared by every client
/// using it (see [`RateBudget::shared`]).
#[derive(Debug, Default)]
pub struct RateBudget {
    state: Mutex<BudgetState>,
}

impl RateBudget {
    /// The budget of `token` at `provider`: the same one for every caller in this
    /// process.
    pub fn shared(provider: &str, token: &str) -> Arc<RateBudget> {
        static REGISTRY: OnceLock<Mutex<HashMap<[u8; 32], Arc<RateBudget>>>> = OnceLock::new();
        let mut hasher = Sha256::new();
        hasher.update(provider.as_bytes());
        hasher.update([0u8]);
        hasher.update(token.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let registry = REGISTRY.get_or_init(Mutex::default);
        let mut map = registry.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key).or_default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The requests left in this window, as last reported (and counted down since).
    pub fn remaining(&self) -> Option<u32> {
        self.lock().remaining
    }

    /// The requests allowed per window, as last reported.
    pub fn limit(&self) -> Option<u32> {
        self.lock().limit
    }

    /// When the window resets, as last reported.
    pub fn reset(&self) -> Option<SystemTime> {
        self.lock().reset
    }

    /// How long a caller must wait before its request (zero: go now), taking one
    /// request from the budget when it may go now.
    fn take(&self, reserve: u32) -> Duration {
        let mut s = self.lock();
        let Some(remaining) = s.remaining else {
            return Duration::ZERO;
        };
        if remaining > reserve {
            s.remaining = Some(remaining - 1);
            return Duration::ZERO;
        }
        match s.reset.map(|r| r.duration_since(SystemTime::now())) {
            Some(Ok(wait)) if !wait.is_zero() => wait,
            // The window has reset (or no reset is known): the next answer tells.
            _ => {
                s.remaining = None;
                Duration::ZERO
            }
        }
    }

    /// Waits, when the budget is spent, until it resets (at most `max_wait`).
    async fn acquire(&self, provider: &str, reserve: u32, max_wait: Duration) {
        let wait = self.take(reserve);
        if wait.is_zero() {
            return;
        }
        let wait = wait.min(max_wait);
        tracing::debug!(
            provider,
            wait_ms = wait.as_millis() as u64,
            "rate-limit budget spent: waiting for the reset"
        );
        tokio::time::sleep(wait).await;
        let mut s = self.lock();
        if s.reset.is_some_and(|r| r <= SystemTime::now()) {
            s.remaining = None;
        }
    }

    /// Reads an answer's `RateLimit-*` headers.
    fn update(&self, headers: &HeaderMap) {
        let remaining = header_u64(headers, "ratelimit-remaining");
        let limit = header_u64(headers, "ratelimit-limit");
        let reset = header_u64(headers, "ratelimit-reset");
        if remaining.is_none() && reset.is_none() {
            return;
        }
        let mut s = self.lock();
        if let Some(r) = remaining {
            s.remaining = Some(u32::try_from(r).unwrap_or(u32::MAX));
        }
        if let Some(l) = limit {
            s.limit = Some(u32::try_from(l).unwrap_or(u32::MAX));
        }
        if let Some(t) = reset {
            s.reset = Some(UNIX_EPOCH + Duration::from_secs(t));
        }
    }

    /// A 429: nothing is left until `until`.
    fn spent_until(&self, until: SystemTime) {
        let mut s = self.lock();
        s.remaining = Some(0);
        if s.reset.is_none_or(|r| r < until) {
            s.reset = Some(until);
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// How long an answer asks to wait: `Retry-After` (seconds), else the time until
/// `RateLimit-Reset`.
fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    if let Some(secs) = header_u64(headers, RETRY_AFTER.as_str()) {
        return Some(Duration::from_secs(secs));
    }
    let reset = UNIX_EPOCH + Duration::from_secs(header_u64(headers, "ratelimit-reset")?);
    reset.duration_since(SystemTime::now()).ok()
}

// ------------------------------------------------------------------ readiness

/// The intervals [`poll_until_running`] waits between polls: `first`, doubled after
/// each poll, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollIntervals {
    /// The wait before the first poll (a server just created is never running yet).
    pub first: Duration,
    /// The longest wait between two polls.
    pub max: Duration,
}

impl Default for PollIntervals {
    /// 2 s, 4 s, 8 s, then every 10 s.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(2),
            max: Duration::from_secs(10),
        }
    }
}

/// Polls `probe` (the server as the provider reports it now) with growing intervals
/// until it is [`Running`](ServerStatus::Running), or fails with [`Error::NotReady`]
/// after `timeout`. The wait before the last poll is cut to end at the deadline, so a
/// server that becomes ready in time is seen.
pub async fn poll_until_running<F, Fut>(
    provider: &str,
    id: &str,
    timeout: Duration,
    intervals: PollIntervals,
    mut probe: F,
) -> Result<Server>
where
    F: FnMut() -> Fut + Send,
    Fut: std::future::Future<Output = Result<Server>> + Send,
{
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut interval = intervals.first;
    loop {
        let now = tokio::time::Instant::now();
        tokio::time::sleep(interval.min(deadline.saturating_duration_since(now))).await;
        let server = probe().await?;
        tracing::debug!(provider, id, status = ?server.status, "polled");
        if server.status == ServerStatus::Running {
            return Ok(server);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NotReady {
                provider: provider.to_owned(),
                id: id.to_owned(),
                waited: started.elapsed(),
            });
        }
        interval = interval
            .saturating_mul(2)
            .min(intervals.max)
            .max(Duration::from_millis(1));
    }
}

// ------------------------------------------------------------------ the client

/// A failed answer the layer does not retry, for the backend to classify.
#[derive(Debug)]
pub struct Answer<'a> {
    /// The HTTP status.
    pub status: u16,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Its body.
    pub body: &'a str,
    /// How long it asked to wait, when it said.
    pub retry_after: Option<Duration>,
}

/// What a call is about, so that errors can name it: the offering and region of a
/// create, the id of a server.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Subject<'a> {
    /// The instance type asked for.
    pub offering: Option<&'a str>,
    /// The region asked for.
    pub region: Option<&'a str>,
    /// The server (or other resource) id in the path.
    pub id: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// About nothing in particular (a listing).
    pub fn none() -> Self {
        Self::default()
    }

    /// About the resource `id`.
    pub fn id(id: &'a str) -> Self {
        Self {
            id: Some(id),
            ..Self::default()
        }
    }

    /// About creating `offering` in `region`.
    pub fn offering(offering: &'a str, region: &'a str) -> Self {
        Self {
            offering: Some(offering),
            region: Some(region),
            id: None,
        }
    }
}

/// A backend's reading of a failed answer: its error body into a classified [`Error`]
/// naming the provider.
pub type Classify = fn(provider: &str, answer: &Answer<'_>, subject: &Subject<'_>) -> Error;

/// A JSON client of one provider's API; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct HttpClient {
    provider: &'static str,
    /// `Bearer TOKEN`, marked sensitive (`Debug` does not show it); `None` when the
    /// token cannot be a header.
    auth: Option<HeaderValue>,
    base_url: String,
    config: HttpConfig,
    client: std::result::Result<reqwest::Client, String>,
    budget: Arc<RateBudget>,
    classify: Classify,
    sent: Arc<AtomicU64>,
}

impl HttpClient {
    /// A client of `provider`'s API at `base_url` with the bearer `token`, its errors
    /// read by `classify`.
    pub fn new(
        provider: &'static str,
        token: impl Into<String>,
        base_url: impl Into<String>,
        classify: Classify,
    ) -> Self {
        let token = token.into();
        let config = HttpConfig::default();
        let auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .map(|mut auth| {
                auth.set_sensitive(true);
                auth
            });
        Self {
            provider,
            budget: RateBudget::shared(provider, &token),
            auth,
            client: build_client(&config),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            config,
            classify,
            sent: Arc::default(),
        }
    }

    /// With another base URL (a mock, a proxy).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// With timeouts, retries and reserve from `config`.
    pub fn config(mut self, config: HttpConfig) -> Self {
        self.client = build_client(&config);
        self.config = config;
        self
    }

    /// The provider's name.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base_url
    }

    /// The rate-limit budget this client shares with every other one of its token.
    pub fn budget(&self) -> &Arc<RateBudget> {
        &self.budget
    }

    /// Requests sent so far by this client and its clones (every try counts).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// `GET path?query`, decoded.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        subject: &Subject<'_>,
    ) -> Result<T> {
        let body = self
            .send(Method::GET, path, query, None::<&()>, subject)
            .await?;
        self.decode(&Method::GET, path, &body)
    }

    /// `POST path` with a JSON body, the answer decoded.
    pub async fn post<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        subject: &Subject<'_>,
    ) -> Result<T> {
        let answer = self
            .send(Method::POST, path, &[], Some(body), subject)
            .await?;
        self.decode(&Method::POST, path, &answer)
    }

    /// `DELETE path`; the answer's body is not read.
    pub async fn delete(&self, path: &str, subject: &Subject<'_>) -> Result<()> {
        self.send(Method::DELETE, path, &[], None::<&()>, subject)
            .await
            .map(drop)
    }

    /// Every item of a paged listing: `GET path?query&page=N&per_page=…` from page 1,
    /// `split` taking each page apart into its items and the next page's number. Stops
    /// when there is no next page, when it does not move forward (a mock's canned
    /// answer), or after [`MAX_PAGES`].
    pub async fn paginate<P, T>(
        &self,
        path: &str,
        query: &[(&str, String)],
        per_page: u32,
        mut split: impl FnMut(P) -> (Vec<T>, Option<u32>) + Send,
    ) -> Result<Vec<T>>
    where
        P: DeserializeOwned,
        T: Send,
    {
        let mut items = Vec::new();
        let mut page = 1u32;
        for _ in 0..MAX_PAGES {
            let mut q = query.to_vec();
            q.push(("page", page.to_string()));
            q.push(("per_page", per_page.to_string()));
            let (mut got, next) = split(self.get::<P>(path, &q, &Subject::none()).await?);
            items.append(&mut got);
            match next {
                Some(n) if n > page => page = n,
                _ => break,
            }
        }
        Ok(items)
    }

    fn decode<T: DeserializeOwned>(&self, method: &Method, path: &str, body: &str) -> Result<T> {
        // An empty body (204) reads as JSON null, for callers that expect nothing.
        let text = if body.trim().is_empty() { "null" } else { body };
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| Error::Transient {
            provider: self.provider.to_owned(),
            message: format!(
                "unexpected answer to {method} {path}: at {}: {}",
                e.path(),
                e.inner()
            ),
            retry_after: None,
        })
    }

    /// Sends with the budget and retries; the body of a 2xx answer, or the error.
    async fn send<B: Serialize + Sync>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        subject: &Subject<'_>,
    ) -> Result<String> {
        let Some(auth) = &self.auth else {
            return Err(Error::Authentication {
                provider: self.provider.to_owned(),
                message: "the API token has characters not allowed in an HTTP header".to_owned(),
            });
        };
        let client = self.client.as_ref().map_err(|why| Error::Transient {
            provider: self.provider.to_owned(),
            message: format!("no HTTP client: {why}"),
            retry_after: None,
        })?;
        let url = format!("{}{path}", self.base_url);
        // A POST the provider may have acted on is not sent again (see module docs).
        let resend_on_failure = method != Method::POST;
        let mut last = String::new();
        let mut hint = None;
        let mut attempt = 0;
        while attempt < self.config.max_attempts {
            attempt += 1;
            self.budget
                .acquire(self.provider, self.config.reserve, self.config.max_wait)
                .await;
            let mut request = client
                .request(method.clone(), &url)
                .header(AUTHORIZATION, auth.clone());
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
            let retry = match request.send().await {
                Err(e) => {
                    tracing::debug!(provider = self.provider, %method, path, attempt, error = %e, "request failed");
                    last = format!("{method} {path}: {e}");
                    hint = None;
                    resend_on_failure || e.is_connect()
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    self.budget.update(&headers);
                    tracing::debug!(provider = self.provider, %method, path, attempt, status = status.as_u16(), "answer");
                    hint = retry_hint(&headers);
                    match response.text().await {
                        // A cut answer: to a POST, whether the provider acted is unknown.
                        Err(e) => {
                            last = format!("{method} {path}: HTTP {status}, answer cut: {e}");
                            resend_on_failure
                        }
                        Ok(text) if status.is_success() => return Ok(text),
                        Ok(text) if status == StatusCode::TOO_MANY_REQUESTS => {
                            let wait = hint.unwrap_or_else(|| self.config.backoff_for(attempt));
                            self.budget.spent_until(SystemTime::now() + wait);
                            last = format!("{method} {path}: {}", describe(status, &text));
                            true
                        }
                        Ok(text) if status.is_server_error() => {
                            last = format!("{method} {path}: {}", describe(status, &text));
                            resend_on_failure
                        }
                        Ok(text) => {
                            let answer = Answer {
                                status: status.as_u16(),
                                headers: &headers,
                                body: &text,
                                retry_after: hint,
                            };
                            return Err((self.classify)(self.provider, &answer, subject));
                        }
                    }
                }
            };
            if !retry || attempt >= self.config.max_attempts {
                break;
            }
            let wait = hint
                .unwrap_or_else(|| self.config.backoff_for(attempt))
                .min(self.config.max_wait);
            tracing::debug!(
                provider = self.provider,
                %method,
                path,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(wait).await;
        }
        Err(Error::Transient {
            provider: self.provider.to_owned(),
            message: format!(
                "{last} ({attempt} {})",
                if attempt == 1 { "try" } else { "tries" }
            ),
            retry_after: hint,
        })
    }
}

fn build_client(config: &HttpConfig) -> std::result::Result<reqwest::Client, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header name {name:?}: {e}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|e| format!("header {name} value: {e}"))?;
        headers.append(name, value);
    }
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("ops-provision/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .build()
        .map_err(|e| e.to_string())
}

/// `HTTP 503 Service Unavailable: <the body's start>`.
pub fn describe(status: StatusCode, body: &str) -> String {
    let body = body.trim();
    let cut = body.char_indices().nth(300).map_or(body.len(), |(i, _)| i);
    if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", &body[..cut])
    }
}

/// A Prism mock's account of why it refused a request (422), as `(field, message)`:
/// the `validation` array of its `application/problem+json` body, else its
/// `sl-violations` header. The field is the last named location (`server_type`,
/// `droplet_id`); every message is kept.
pub fn prism_violation(answer: &Answer<'_>) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Violation {
        #[serde(default)]
        location: Vec<String>,
        #[serde(default)]
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct Problem {
        validation: Vec<Violation>,
    }
    let violations = serde_json::from_str::<Problem>(answer.body)
        .map(|p| p.validation)
        .ok()
        .or_else(|| {
            let header = answer.headers.get("sl-violations")?.to_str().ok()?;
            serde_json::from_str::<Vec<Violation>>(header).ok()
        })?;
    let first = violations.first()?;
    let field = first
        .location
        .iter()
        .rev()
        .find(|l| !matches!(l.as_str(), "body" | "request" | "path" | "query"))
        .or(first.location.last())
        .cloned()
        .unwrap_or_else(|| "request".to_owned());
    let message = violations
        .iter()
        .map(|v| v.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Some((field, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_cap() {
        let config =
            HttpConfig::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            let first = config.backoff_for(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = config.backoff_for(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(config.backoff_for(30) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn debug_output_hides_the_token() {
        fn classify(provider: &str, answer: &Answer<'_>, _: &Subject<'_>) -> Error {
            Error::Transient {
                provider: provider.to_owned(),
                message: answer.body.to_owned(),
                retry_after: None,
            }
        }
        let client = HttpClient::new("p", "secret-token-value", "http://127.0.0.1:9/", classify);
        assert_eq!(client.url(), "http://127.0.0.1:9");
        assert!(!format!("{client:?}").contains("secret-token-value"));
    }

    #[test]
    fn budgets_are_shared_by_provider_and_token() {
        let a = RateBudget::shared("p", "token-a");
        assert!(Arc::ptr_eq(&a, &RateBudget::shared("p", "token-a")));
        assert!(!Arc::ptr_eq(&a, &RateBudget::shared("p", "token-b")));
        assert!(!Arc::ptr_eq(&a, &RateBudget::shared("q", "token-a")));
    }

    #[test]
    fn a_spent_budget_waits_for_its_reset_and_a_past_reset_lets_go() {
        let budget = RateBudget::default();
        let mut headers = HeaderMap::new();
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 30;
        headers.insert("RateLimit-Remaining", HeaderValue::from_static("1"));
        headers.insert("RateLimit-Limit", HeaderValue::from_static("3600"));
        headers.insert("RateLimit-Reset", HeaderValue::from(reset));
        budget.update(&headers);
        assert_eq!(budget.take(0), Duration::ZERO);
        assert_eq!(budget.remaining(), Some(0));
        assert!(budget.take(0) > Duration::from_secs(20));
        headers.insert("RateLimit-Remaining", HeaderValue::from_static("0"));
        headers.insert("RateLimit-Reset", HeaderValue::from_static("1444931833"));
        budget.update(&headers);
        assert_eq!(budget.take(0), Duration::ZERO);
    }

    #[test]
    fn reads_prism_violations_from_body_or_header() {
        let headers = HeaderMap::new();
        let body = r#"{"status":422,"validation":[{"location":["body","name"],"severity":"Error","code":"type","message":"Request body property name must be string"}]}"#;
        let answer = Answer {
            status: 422,
            headers: &headers,
            body,
            retry_after: None,
        };
        assert_eq!(
            prism_violation(&answer),
            Some((
                "name".to_owned(),
                "Request body property name must be string".to_owned()
            ))
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "sl-violations",
            HeaderValue::from_static(
                r#"[{"location":["request","path","droplet_id"],"message":"must be integer"}]"#,
            ),
        );
        let answer = Answer {
            status: 422,
            headers: &headers,
            body: r#"{"id":"example_error"}"#,
            retry_after: None,
        };
        assert_eq!(
            prism_violation(&answer).map(|v| v.0),
            Some("droplet_id".to_owned())
        );
    }
}
