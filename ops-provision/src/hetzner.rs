//! [`HetznerProvider`]: servers from Hetzner Cloud (feature `hetzner`).
//!
//! - Offerings: `GET /server_types`, one per server type and location it has a price
//!   in (net hourly price, EUR; cores, memory in GiB). Deprecated types are left out; a
//!   type no longer sold in a location is marked unavailable there.
//! - Create is idempotent: servers are listed by their `ops.token` label first, and
//!   `POST /servers` only when none is there.
//! - Labels are Hetzner labels; `list` sends them as a `label_selector`.
//! - Errors from `{"error":{"code","message","details"}}`: `resource_unavailable` is a
//!   capacity error (failover moves on), `resource_limit_exceeded` a quota one, 429 and
//!   5xx are retried by the [shared HTTP layer](crate::http).
//!
//! A server being deleted (status `deleting`) counts as gone: `get` says `None` and
//! `list` leaves it out, so that a delete is done when the API has accepted it and a
//! fleet does not count a server that is going away.
//!
//! A server just created is never running yet, so [`wait_ready`](Provider::wait_ready)
//! waits before its first poll: a created server typically costs three requests (the
//! token lookup, the create, one poll).
//!
//! # Example
//!
//! ```no_run
//! use ops_provision::hetzner::HetznerProvider;
//! use ops_provision::{Provider, ServerSpec};
//!
//! # async fn run() -> ops_provision::Result<()> {
//! let hetzner = HetznerProvider::from_env()?; // HCLOUD_TOKEN
//! let mut spec = ServerSpec::new("web-0", "cx22", "fsn1", "web", "app", 0);
//! spec.ssh_keys.push(hetzner.ensure_ssh_key("ops", "ssh-ed25519 AAAA… ops").await?);
//! let server = hetzner.create(&spec).await?;
//! let server = hetzner.wait_ready(&server.id, std::time::Duration::from_secs(300)).await?;
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::http::{
    self, Answer, HttpClient, HttpConfig, PollIntervals, Subject, poll_until_running,
};
use crate::{
    Error, Labels, MANAGED_BY, MANAGED_BY_OPS, Offering, Provider, Result, Server, ServerSpec,
    ServerStatus, TOKEN,
};

/// The provider's name in offerings, servers and errors.
pub const NAME: &str = "hetzner";
/// The API's address.
pub const DEFAULT_URL: &str = "https://api.hetzner.cloud/v1";
/// The environment variable [`HetznerProvider::from_env`] reads the token from.
pub const TOKEN_ENV: &str = "HCLOUD_TOKEN";
/// Prices are in euros.
const CURRENCY: &str = "EUR";
/// The largest page the API serves.
const PER_PAGE: u32 = 50;

/// Hetzner Cloud; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct HetznerProvider {
    http: HttpClient,
    poll: PollIntervals,
}

impl HetznerProvider {
    /// A provider using the API token `token` (a project's read & write token).
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            http: HttpClient::new(NAME, token, DEFAULT_URL, classify),
            poll: PollIntervals::default(),
        }
    }

    /// A provider with the token in `HCLOUD_TOKEN`.
    pub fn from_env() -> Result<Self> {
        match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.trim().is_empty() => Ok(Self::new(token.trim())),
            _ => Err(Error::Authentication {
                provider: NAME.to_owned(),
                message: format!("no API token: set {TOKEN_ENV}"),
            }),
        }
    }

    /// With another API address (a mock, a proxy); the default is [`DEFAULT_URL`].
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.http = self.http.base_url(url);
        self
    }

    /// With timeouts, retries and rate-limit reserve from `config`.
    pub fn http_config(mut self, config: HttpConfig) -> Self {
        self.http = self.http.config(config);
        self
    }

    /// With the intervals of [`wait_ready`](Provider::wait_ready)'s polls.
    pub fn poll_intervals(mut self, intervals: PollIntervals) -> Self {
        self.poll = intervals;
        self
    }

    /// The HTTP client (its request count, its rate-limit budget).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The id of the SSH key named `name`, uploading `public_key` under that name when
    /// there is none. The id can go in [`ServerSpec::ssh_keys`].
    pub async fn ensure_ssh_key(&self, name: &str, public_key: &str) -> Result<String> {
        let keys: Vec<SshKey> = self
            .http
            .paginate(
                "/ssh_keys",
                &[("name", name.to_owned())],
                PER_PAGE,
                |p: SshKeysPage| (p.ssh_keys, next_page(p.meta.as_ref())),
            )
            .await?;
        if let Some(key) = keys.into_iter().find(|k| k.name == name) {
            return Ok(key.id.to_string());
        }
        let mut labels = Labels::new();
        labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_OPS.to_owned());
        let created: SshKeyAnswer = self
            .http
            .post(
                "/ssh_keys",
                &NewSshKey {
                    name,
                    public_key,
                    labels: &labels,
                },
                &Subject::none(),
            )
            .await?;
        tracing::debug!(
            provider = NAME,
            name,
            id = created.ssh_key.id,
            "SSH key uploaded"
        );
        Ok(created.ssh_key.id.to_string())
    }

    async fn fetch(&self, id: &str) -> Result<Option<Server>> {
        // Ids are integers: anything else names no server (and the API would refuse it).
        let Ok(number) = id.parse::<u64>() else {
            return Ok(None);
        };
        match self
            .http
            .get::<ServerAnswer>(&format!("/servers/{number}"), &[], &Subject::id(id))
            .await
        {
            Ok(answer) => Ok(
                Some(answer.server.into_server()).filter(|s| s.status != ServerStatus::Deleting)
            ),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Provider for HetznerProvider {
    fn name(&self) -> &str {
        NAME
    }

    /// `GET /images?name=…`: a system image, snapshot or backup of that name.
    async fn has_image(&self, image: &str) -> Result<bool> {
        #[derive(serde::Deserialize)]
        struct Images {
            images: Vec<serde_json::Value>,
        }
        let found: Images = self
            .http
            .get("/images", &[("name", image.to_owned())], &Subject::none())
            .await?;
        Ok(!found.images.is_empty())
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        let types: Vec<ServerType> = self
            .http
            .paginate("/server_types", &[], PER_PAGE, |p: ServerTypesPage| {
                (p.server_types, next_page(p.meta.as_ref()))
            })
            .await?;
        let now = Utc::now();
        let mut offerings = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in types.iter().filter(|t| !t.deprecated.unwrap_or(false)) {
            for price in &t.prices {
                if !seen.insert((t.name.as_str(), price.location.as_str())) {
                    continue;
                }
                let Ok(hourly) = Decimal::from_str(price.price_hourly.net.trim()) else {
                    tracing::warn!(
                        provider = NAME,
                        server_type = %t.name,
                        location = %price.location,
                        value = %price.price_hourly.net,
                        "price_hourly.net is not a number: offering left out"
                    );
                    continue;
                };
                let mut offering = Offering::new(
                    NAME,
                    t.name.as_str(),
                    price.location.as_str(),
                    (t.cores * 1000.0).round() as u64,
                    (t.memory * f64::from(1u32 << 30)).round() as u64,
                    hourly,
                    CURRENCY,
                );
                // A type announced for removal from a location stays orderable until
                // its `unavailable_after`.
                let gone = t
                    .locations
                    .iter()
                    .filter(|l| l.name == price.location)
                    .filter_map(|l| l.deprecation.as_ref()?.unavailable_after)
                    .any(|after| after <= now);
                if gone {
                    offering.available = Some(false);
                }
                offerings.push(offering);
            }
        }
        Ok(offerings)
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server> {
        if let Some(token) = spec.token() {
            let mut selector = Labels::new();
            selector.insert(TOKEN.to_owned(), token.to_owned());
            if let Some(found) = self
                .list(&selector)
                .await?
                .into_iter()
                .find(|s| s.made_for(spec))
            {
                tracing::debug!(provider = NAME, id = %found.id, token, "create: found the server a previous try made");
                return Ok(found);
            }
        }
        let body = NewServer {
            name: &spec.name,
            server_type: &spec.instance_type,
            image: &spec.image,
            location: &spec.region,
            labels: &spec.labels,
            ssh_keys: &spec.ssh_keys,
            start_after_create: true,
        };
        let answer: ServerAnswer = self
            .http
            .post(
                "/servers",
                &body,
                &Subject::offering(&spec.instance_type, &spec.region),
            )
            .await?;
        let server = answer.server.into_server();
        tracing::debug!(provider = NAME, id = %server.id, name = %server.name, "server created");
        Ok(server)
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<Server>> {
        let mut query = Vec::new();
        if !selector.is_empty() {
            let expr = selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            query.push(("label_selector", expr));
        }
        let servers: Vec<HServer> = self
            .http
            .paginate("/servers", &query, PER_PAGE, |p: ServersPage| {
                (p.servers, next_page(p.meta.as_ref()))
            })
            .await?;
        // The selector is checked here too, and a server listed on two pages (one
        // created meanwhile shifts the pages) is kept once.
        let mut seen = std::collections::HashSet::new();
        Ok(servers
            .into_iter()
            .filter(|s| seen.insert(s.id))
            .map(HServer::into_server)
            .filter(|s| s.status != ServerStatus::Deleting && s.matches(selector))
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<Server>> {
        self.fetch(id).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let Ok(number) = id.parse::<u64>() else {
            return Ok(());
        };
        match self
            .http
            .delete(&format!("/servers/{number}"), &Subject::id(id))
            .await
        {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<Server> {
        poll_until_running(NAME, id, timeout, self.poll, || async {
            self.fetch(id).await?.ok_or_else(|| Error::NotFound {
                provider: NAME.to_owned(),
                id: id.to_owned(),
            })
        })
        .await
    }
}

// ------------------------------------------------------------------ errors

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Option<serde_json::Value>,
}

/// Hetzner's error body (or a Prism mock's) into a classified [`Error`].
fn classify(provider: &str, answer: &Answer<'_>, subject: &Subject<'_>) -> Error {
    let provider = provider.to_owned();
    if answer.status == 422
        && let Some((field, message)) = http::prism_violation(answer)
    {
        return Error::InvalidRequest {
            provider,
            field,
            message: format!("refused by the API schema: {message}"),
        };
    }
    let detail = serde_json::from_str::<ErrorBody>(answer.body)
        .map(|b| b.error)
        .ok();
    let code = detail.as_ref().map_or("", |d| d.code.as_str());
    let message = match &detail {
        Some(d) if !d.message.is_empty() => format!("{} ({})", d.message, d.code),
        _ => http::describe(
            reqwest::StatusCode::from_u16(answer.status)
                .unwrap_or(reqwest::StatusCode::BAD_REQUEST),
            answer.body,
        ),
    };
    let not_found = |provider: String, message: String| match subject.id {
        Some(id) => Error::NotFound {
            provider,
            id: id.to_owned(),
        },
        None => Error::InvalidRequest {
            provider,
            field: "url".to_owned(),
            message,
        },
    };
    let transient = |provider: String, message: String| Error::Transient {
        provider,
        message,
        retry_after: answer.retry_after,
    };
    match code {
        "unauthorized" | "forbidden" | "token_readonly" => {
            Error::Authentication { provider, message }
        }
        "resource_unavailable" | "placement_error" => Error::Capacity {
            provider,
            offering: subject.offering.unwrap_or_default().to_owned(),
            region: subject.region.unwrap_or_default().to_owned(),
            message,
        },
        "resource_limit_exceeded" => Error::Quota { provider, message },
        "rate_limit_exceeded"
        | "server_error"
        | "service_error"
        | "unavailable"
        | "timeout"
        | "maintenance"
        | "conflict"
        | "locked" => transient(provider, message),
        "not_found" => not_found(provider, message),
        "uniqueness_error" => Error::InvalidRequest {
            provider,
            field: "name".to_owned(),
            message,
        },
        // `invalid_input`, `json_error`, codes Ops does not know, or no code at all.
        _ => match answer.status {
            401 | 403 => Error::Authentication { provider, message },
            429 | 500..=599 => transient(provider, message),
            404 => not_found(provider, message),
            _ => Error::InvalidRequest {
                provider,
                field: detail
                    .as_ref()
                    .and_then(|d| d.details.as_ref())
                    .and_then(|d| d.pointer("/fields/0/name"))
                    .and_then(|n| n.as_str())
                    .unwrap_or("request")
                    .to_owned(),
                message,
            },
        },
    }
}

// ------------------------------------------------------------------ wire types

#[derive(Deserialize)]
struct Meta {
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    next_page: Option<u32>,
}

fn next_page(meta: Option<&Meta>) -> Option<u32> {
    meta?.pagination.as_ref()?.next_page
}

#[derive(Deserialize)]
struct ServerTypesPage {
    server_types: Vec<ServerType>,
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct ServerType {
    name: String,
    cores: f64,
    /// GiB.
    memory: f64,
    #[serde(default)]
    deprecated: Option<bool>,
    #[serde(default)]
    prices: Vec<Price>,
    #[serde(default)]
    locations: Vec<TypeLocation>,
}

#[derive(Deserialize)]
struct Price {
    location: String,
    price_hourly: Amount,
}

#[derive(Deserialize)]
struct Amount {
    net: String,
}

#[derive(Deserialize)]
struct TypeLocation {
    name: String,
    #[serde(default)]
    deprecation: Option<Deprecation>,
}

#[derive(Deserialize)]
struct Deprecation {
    #[serde(default)]
    unavailable_after: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct NewServer<'a> {
    name: &'a str,
    server_type: &'a str,
    image: &'a str,
    location: &'a str,
    labels: &'a Labels,
    ssh_keys: &'a [String],
    start_after_create: bool,
}

#[derive(Deserialize)]
struct ServerAnswer {
    server: HServer,
}

#[derive(Deserialize)]
struct ServersPage {
    servers: Vec<HServer>,
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct Datacenter {
    location: Option<Named>,
}

#[derive(Deserialize)]
struct PublicNet {
    ipv4: Option<Ipv4>,
}

#[derive(Deserialize)]
struct Ipv4 {
    ip: Option<String>,
}

#[derive(Deserialize)]
struct HServer {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    server_type: Option<Named>,
    #[serde(default)]
    location: Option<Named>,
    #[serde(default)]
    datacenter: Option<Datacenter>,
    #[serde(default)]
    public_net: Option<PublicNet>,
}

impl HServer {
    fn into_server(self) -> Server {
        let region = self
            .location
            .map(|l| l.name)
            .or_else(|| self.datacenter.and_then(|d| d.location).map(|l| l.name))
            .unwrap_or_default();
        Server {
            id: self.id.to_string(),
            name: self.name,
            provider: NAME.to_owned(),
            instance_type: self.server_type.map(|t| t.name).unwrap_or_default(),
            region,
            status: status(&self.status),
            address: self
                .public_net
                .and_then(|n| n.ipv4)
                .and_then(|v4| v4.ip)
                .and_then(|ip| ip.parse().ok()),
            labels: self.labels,
            created_at: self.created.unwrap_or_else(Utc::now),
        }
    }
}

fn status(s: &str) -> ServerStatus {
    match s {
        "running" => ServerStatus::Running,
        "initializing" | "starting" | "migrating" | "rebuilding" => ServerStatus::Creating,
        "off" | "stopping" => ServerStatus::Off,
        "deleting" => ServerStatus::Deleting,
        _ => ServerStatus::Unknown,
    }
}

#[derive(Deserialize)]
struct SshKeysPage {
    ssh_keys: Vec<SshKey>,
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct SshKey {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct SshKeyAnswer {
    ssh_key: SshKey,
}

#[derive(Serialize)]
struct NewSshKey<'a> {
    name: &'a str,
    public_key: &'a str,
    labels: &'a Labels,
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    #[test]
    fn from_env_names_the_variable() {
        // Only checkable where the variable is unset (tests may not change the
        // environment: that is `unsafe`).
        if std::env::var_os(TOKEN_ENV).is_none() {
            let err = HetznerProvider::from_env().expect_err("no token");
            assert!(err.to_string().contains("HCLOUD_TOKEN"), "{err}");
        }
    }

    fn classify_body(status: u16, body: &str) -> Error {
        let headers = HeaderMap::new();
        let answer = Answer {
            status,
            headers: &headers,
            body,
            retry_after: None,
        };
        classify(NAME, &answer, &Subject::offering("cx22", "fsn1"))
    }

    #[test]
    fn classifies_error_codes() {
        let e = classify_body(
            412,
            r#"{"error":{"code":"resource_unavailable","message":"no"}}"#,
        );
        assert!(
            matches!(&e, Error::Capacity { offering, region, .. } if offering == "cx22" && region == "fsn1")
        );
        assert!(e.to_string().starts_with("hetzner: "));
        let e = classify_body(
            403,
            r#"{"error":{"code":"resource_limit_exceeded","message":"limit"}}"#,
        );
        assert!(matches!(e, Error::Quota { .. }), "{e}");
        let e = classify_body(
            400,
            r#"{"error":{"code":"invalid_input","message":"bad","details":{"fields":[{"name":"server_type","messages":["unknown"]}]}}}"#,
        );
        assert!(matches!(&e, Error::InvalidRequest { field, .. } if field == "server_type"));
        let e = classify_body(401, r#"{"error":{"code":"unauthorized","message":"no"}}"#);
        assert!(matches!(e, Error::Authentication { .. }));
        assert!(matches!(
            classify_body(503, "oops"),
            Error::Transient { .. }
        ));
    }

    #[test]
    fn maps_statuses() {
        assert_eq!(status("running"), ServerStatus::Running);
        assert_eq!(status("initializing"), ServerStatus::Creating);
        assert_eq!(status("off"), ServerStatus::Off);
        assert_eq!(status("weird"), ServerStatus::Unknown);
    }
}
