//! [`DigitalOceanProvider`]: droplets from DigitalOcean (feature `digitalocean`).
//!
//! - Offerings: `GET /v2/sizes`, one per size and region it is sold in (hourly price,
//!   USD; vCPUs, memory in MiB, GPUs from `gpu_info`), unavailable ones marked so.
//! - DigitalOcean has tags, not labels: each label is one tag, [`label_tag`] and
//!   [`tag_label`] (see there for the encoding). `list` asks for the droplets of one tag
//!   (the token's, else the fleet's, else the first label's) and checks the other
//!   labels itself.
//! - Create is idempotent: droplets are listed by the token's tag first, and
//!   `POST /v2/droplets` only when none is there. SSH keys may be named by id,
//!   fingerprint or name (a name is looked up once in `/v2/account/keys`); the image
//!   `ubuntu-YY.MM` (Ops' default) is DigitalOcean's `ubuntu-YY-MM-x64`.
//! - Errors from `{"id","message"}`: a size or region "not available" is a capacity
//!   error, a droplet limit a quota one, other 422s name the field at fault.
//!
//! # Example
//!
//! ```no_run
//! use ops_provision::digitalocean::DigitalOceanProvider;
//! use ops_provision::{Provider, ServerSpec};
//!
//! # async fn run() -> ops_provision::Result<()> {
//! let digitalocean = DigitalOceanProvider::from_env()?; // DIGITALOCEAN_TOKEN
//! let spec = ServerSpec::new("web-0", "s-2vcpu-4gb", "fra1", "web", "app", 0);
//! let droplet = digitalocean.create(&spec).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::http::{
    self, Answer, HttpClient, HttpConfig, PollIntervals, Subject, poll_until_running,
};
use crate::{
    Error, FLEET, Labels, MANAGED_BY, Offering, POOL, Provider, Result, Server, ServerSpec,
    ServerStatus, TOKEN,
};

/// The provider's name in offerings, servers and errors.
pub const NAME: &str = "digitalocean";
/// The API's address (paths start with `/v2`).
pub const DEFAULT_URL: &str = "https://api.digitalocean.com";
/// The environment variable [`DigitalOceanProvider::from_env`] reads the token from.
pub const TOKEN_ENV: &str = "DIGITALOCEAN_TOKEN";
/// Prices are in US dollars.
const CURRENCY: &str = "USD";
/// The largest page the API serves.
const PER_PAGE: u32 = 200;
/// The longest tag DigitalOcean accepts.
pub const MAX_TAG_LEN: usize = 255;

/// DigitalOcean; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct DigitalOceanProvider {
    http: HttpClient,
    poll: PollIntervals,
    /// SSH key ids by name, as found or uploaded.
    keys: Arc<Mutex<HashMap<String, u64>>>,
}

impl DigitalOceanProvider {
    /// A provider using the personal access token `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            http: HttpClient::new(NAME, token, DEFAULT_URL, classify),
            poll: PollIntervals::default(),
            keys: Arc::default(),
        }
    }

    /// A provider with the token in `DIGITALOCEAN_TOKEN`.
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
    /// there is none. The id (or the name) can go in [`ServerSpec::ssh_keys`].
    pub async fn ensure_ssh_key(&self, name: &str, public_key: &str) -> Result<String> {
        if let Some(id) = self.key_id(name).await? {
            return Ok(id.to_string());
        }
        let created: SshKeyAnswer = self
            .http
            .post(
                "/v2/account/keys",
                &NewSshKey { name, public_key },
                &Subject::none(),
            )
            .await?;
        tracing::debug!(
            provider = NAME,
            name,
            id = created.ssh_key.id,
            "SSH key uploaded"
        );
        self.lock_keys().insert(name.to_owned(), created.ssh_key.id);
        Ok(created.ssh_key.id.to_string())
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of the SSH key named `name`: remembered, else from a fresh listing of
    /// the account's keys (which is remembered).
    async fn key_id(&self, name: &str) -> Result<Option<u64>> {
        if let Some(id) = self.lock_keys().get(name) {
            return Ok(Some(*id));
        }
        Ok(self.list_keys().await?.get(name).copied())
    }

    async fn list_keys(&self) -> Result<HashMap<String, u64>> {
        let listed: Vec<SshKey> = self
            .http
            .paginate("/v2/account/keys", &[], PER_PAGE, |p: SshKeysPage| {
                (p.ssh_keys, next_page(p.links.as_ref()))
            })
            .await?;
        let mut keys = self.lock_keys();
        keys.extend(listed.into_iter().map(|k| (k.name, k.id)));
        Ok(keys.clone())
    }

    /// `spec.ssh_keys` as the API takes them: ids and fingerprints as they are, names
    /// looked up.
    async fn key_refs(&self, names: &[String]) -> Result<Vec<serde_json::Value>> {
        let mut refs = Vec::with_capacity(names.len());
        for key in names {
            if let Ok(id) = key.parse::<u64>() {
                refs.push(id.into());
            } else if key.contains(':') {
                refs.push(key.as_str().into());
            } else {
                let Some(id) = self.key_id(key).await? else {
                    return Err(Error::InvalidRequest {
                        provider: NAME.to_owned(),
                        field: "ssh_keys".to_owned(),
                        message: format!("no SSH key named {key:?} in the account"),
                    });
                };
                refs.push(id.into());
            }
        }
        Ok(refs)
    }

    async fn fetch(&self, id: &str) -> Result<Option<Server>> {
        // Ids are positive integers: anything else names no droplet.
        let Some(number) = droplet_id(id) else {
            return Ok(None);
        };
        match self
            .http
            .get::<DropletAnswer>(&format!("/v2/droplets/{number}"), &[], &Subject::id(id))
            .await
        {
            Ok(answer) => Ok(Some(answer.droplet.into_server())),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn droplet_id(id: &str) -> Option<u64> {
    id.parse::<u64>().ok().filter(|n| *n > 0)
}

/// Ops' image names in DigitalOcean's words: `ubuntu-24.04` is `ubuntu-24-04-x64`;
/// anything else is passed as it is.
fn image_slug(image: &str) -> String {
    match image.strip_prefix("ubuntu-") {
        Some(version)
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            format!("ubuntu-{}-x64", version.replace('.', "-"))
        }
        _ => image.to_owned(),
    }
}

#[async_trait]
impl Provider for DigitalOceanProvider {
    fn name(&self) -> &str {
        NAME
    }

    /// `GET /v2/images/{slug}` (Ops' `ubuntu-24.04` is asked as `ubuntu-24-04-x64`);
    /// a 404 is no.
    async fn has_image(&self, image: &str) -> Result<bool> {
        let slug = image_slug(image);
        // A slug is letters, digits, '-', '_' and '.'; anything else names no image
        // (and must not reach the path).
        if slug.is_empty()
            || !slug
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Ok(false);
        }
        match self
            .http
            .get::<serde_json::Value>(&format!("/v2/images/{slug}"), &[], &Subject::none())
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        let sizes: Vec<Size> = self
            .http
            .paginate("/v2/sizes", &[], PER_PAGE, |p: SizesPage| {
                (p.sizes, next_page(p.links.as_ref()))
            })
            .await?;
        let mut offerings = Vec::new();
        for size in sizes {
            // The shortest decimal that reads back as the same float: what the JSON said.
            let Ok(hourly) = Decimal::from_str(&size.price_hourly.to_string()) else {
                tracing::warn!(provider = NAME, size = %size.slug, value = size.price_hourly, "price_hourly is not a decimal: size left out");
                continue;
            };
            for region in &size.regions {
                let mut offering = Offering::new(
                    NAME,
                    size.slug.as_str(),
                    region.as_str(),
                    u64::from(size.vcpus) * 1000,
                    size.memory.saturating_mul(1 << 20),
                    hourly,
                    CURRENCY,
                );
                if let Some(gpu) = size.gpu_info.as_ref().filter(|g| g.count > 0) {
                    offering = offering.with_gpus(gpu.count, gpu.model.clone().unwrap_or_default());
                }
                offering.available = Some(size.available);
                offerings.push(offering);
            }
        }
        Ok(offerings)
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server> {
        let tags = spec
            .labels
            .iter()
            .map(|(k, v)| label_tag(k, v))
            .collect::<Result<Vec<_>>>()?;
        if let Some(token) = spec.token() {
            let mut selector = Labels::new();
            selector.insert(TOKEN.to_owned(), token.to_owned());
            if let Some(found) = self
                .list(&selector)
                .await?
                .into_iter()
                .find(|s| s.made_for(spec))
            {
                tracing::debug!(provider = NAME, id = %found.id, token, "create: found the droplet a previous try made");
                return Ok(found);
            }
        }
        let body = NewDroplet {
            name: &spec.name,
            region: &spec.region,
            size: &spec.instance_type,
            image: image_slug(&spec.image),
            ssh_keys: self.key_refs(&spec.ssh_keys).await?,
            tags,
        };
        let answer: DropletAnswer = self
            .http
            .post(
                "/v2/droplets",
                &body,
                &Subject::offering(&spec.instance_type, &spec.region),
            )
            .await?;
        let server = answer.droplet.into_server();
        tracing::debug!(provider = NAME, id = %server.id, name = %server.name, "droplet created");
        Ok(server)
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<Server>> {
        let mut query = Vec::new();
        // The most selective label goes to the API; the others are checked here.
        let by = [TOKEN, POOL, FLEET, MANAGED_BY]
            .iter()
            .find_map(|k| selector.get_key_value(*k))
            .or_else(|| selector.iter().next());
        if let Some((k, v)) = by {
            query.push(("tag_name", label_tag(k, v)?));
        }
        let droplets: Vec<Droplet> = self
            .http
            .paginate("/v2/droplets", &query, PER_PAGE, |p: DropletsPage| {
                (p.droplets, next_page(p.links.as_ref()))
            })
            .await?;
        let mut seen = std::collections::HashSet::new();
        Ok(droplets
            .into_iter()
            .filter(|d| seen.insert(d.id))
            .map(Droplet::into_server)
            .filter(|s| s.matches(selector))
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<Server>> {
        self.fetch(id).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let Some(number) = droplet_id(id) else {
            return Ok(());
        };
        match self
            .http
            .delete(&format!("/v2/droplets/{number}"), &Subject::id(id))
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

// ------------------------------------------------------------------ labels as tags

/// The tag carrying the label `key=value`.
///
/// DigitalOcean tags allow letters, digits, `_`, `-` and `:`, at most 255 characters,
/// and keep the case of a tag's first use. So the tag is `KEY:VALUE`, each part with
/// lowercase letters, digits and `-` kept and every other character escaped with `_`:
/// `_d` for `.`, `__` for `_`, `_c` for `:`, `_u` and the letter for a capital, `_x` and
/// two hex digits for each byte of anything else. `ops.managed-by=ops` is
/// `ops_dmanaged-by:ops`. [`tag_label`] reads it back, whatever case the API returns.
pub fn label_tag(key: &str, value: &str) -> Result<String> {
    let tag = format!("{}:{}", escape(key), escape(value));
    if tag.len() > MAX_TAG_LEN {
        return Err(Error::InvalidRequest {
            provider: NAME.to_owned(),
            field: "labels".to_owned(),
            message: format!(
                "label {key}={value} is a tag of {} characters; DigitalOcean allows {MAX_TAG_LEN}",
                tag.len()
            ),
        });
    }
    Ok(tag)
}

/// The label a tag made by [`label_tag`] carries; `None` for a tag that is not one
/// (no `:`, or a broken escape).
pub fn tag_label(tag: &str) -> Option<(String, String)> {
    let tag = tag.to_ascii_lowercase();
    let (key, value) = tag.split_once(':')?;
    Some((unescape(key)?, unescape(value)?))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' => out.push(c),
            'A'..='Z' => {
                out.push_str("_u");
                out.push(c.to_ascii_lowercase());
            }
            '.' => out.push_str("_d"),
            '_' => out.push_str("__"),
            ':' => out.push_str("_c"),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("_x{b:02x}"));
                }
            }
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'_' {
            bytes.push(b);
            continue;
        }
        match it.next()? {
            b'_' => bytes.push(b'_'),
            b'd' => bytes.push(b'.'),
            b'c' => bytes.push(b':'),
            b'u' => bytes.push(it.next()?.to_ascii_uppercase()),
            b'x' => {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            _ => return None,
        }
    }
    String::from_utf8(bytes).ok()
}

// ------------------------------------------------------------------ errors

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: String,
}

/// DigitalOcean's error body (or a Prism mock's) into a classified [`Error`].
fn classify(provider: &str, answer: &Answer<'_>, subject: &Subject<'_>) -> Error {
    let provider = provider.to_owned();
    let body = serde_json::from_str::<ErrorBody>(answer.body).ok();
    let message = match &body {
        Some(b) if !b.message.is_empty() => format!("{} ({})", b.message, b.id),
        _ => http::describe(
            reqwest::StatusCode::from_u16(answer.status)
                .unwrap_or(reqwest::StatusCode::BAD_REQUEST),
            answer.body,
        ),
    };
    let said = body
        .as_ref()
        .map(|b| b.message.to_ascii_lowercase())
        .unwrap_or_default();
    match answer.status {
        401 | 403 => Error::Authentication { provider, message },
        404 => match subject.id {
            Some(id) => Error::NotFound {
                provider,
                id: id.to_owned(),
            },
            None => Error::InvalidRequest {
                provider,
                field: "url".to_owned(),
                message,
            },
        },
        429 | 500..=599 => Error::Transient {
            provider,
            message,
            retry_after: answer.retry_after,
        },
        422 if said.contains("exceed") || said.contains("droplet limit") => {
            Error::Quota { provider, message }
        }
        422 if said.contains("not available") || said.contains("unavailable") => Error::Capacity {
            provider,
            offering: subject.offering.unwrap_or_default().to_owned(),
            region: subject.region.unwrap_or_default().to_owned(),
            message,
        },
        _ => {
            let guessed = ["region", "size", "image", "name", "ssh_keys", "tags"]
                .into_iter()
                .find(|f| said.contains(f.trim_end_matches('s')));
            match (guessed, http::prism_violation(answer)) {
                (Some(field), _) => Error::InvalidRequest {
                    provider,
                    field: field.to_owned(),
                    message,
                },
                (None, Some((field, violation))) => Error::InvalidRequest {
                    provider,
                    field,
                    message: format!("refused by the API schema: {violation}"),
                },
                (None, None) => Error::InvalidRequest {
                    provider,
                    field: "request".to_owned(),
                    message,
                },
            }
        }
    }
}

// ------------------------------------------------------------------ wire types

#[derive(Deserialize)]
struct Links {
    pages: Option<Pages>,
}

#[derive(Deserialize)]
struct Pages {
    next: Option<String>,
}

/// The next page's number, from the `links.pages.next` URL (only its `page` is used:
/// the URL itself points at the real API even when talking to a mock).
fn next_page(links: Option<&Links>) -> Option<u32> {
    let next = links?.pages.as_ref()?.next.as_deref()?;
    let (_, query) = next.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("page="))
        .and_then(|n| n.parse().ok())
}

#[derive(Deserialize)]
struct SizesPage {
    sizes: Vec<Size>,
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Size {
    slug: String,
    /// MiB.
    memory: u64,
    vcpus: u32,
    price_hourly: f64,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    available: bool,
    #[serde(default)]
    gpu_info: Option<GpuInfo>,
}

#[derive(Deserialize)]
struct GpuInfo {
    #[serde(default)]
    count: u32,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Serialize)]
struct NewDroplet<'a> {
    name: &'a str,
    region: &'a str,
    size: &'a str,
    image: String,
    ssh_keys: Vec<serde_json::Value>,
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct DropletAnswer {
    droplet: Droplet,
}

#[derive(Deserialize)]
struct DropletsPage {
    droplets: Vec<Droplet>,
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Region {
    slug: String,
}

#[derive(Deserialize)]
struct Networks {
    #[serde(default)]
    v4: Vec<Network>,
}

#[derive(Deserialize)]
struct Network {
    ip_address: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Droplet {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    size_slug: Option<String>,
    #[serde(default)]
    region: Option<Region>,
    #[serde(default)]
    networks: Option<Networks>,
}

impl Droplet {
    fn into_server(self) -> Server {
        Server {
            id: self.id.to_string(),
            name: self.name,
            provider: NAME.to_owned(),
            instance_type: self.size_slug.unwrap_or_default(),
            region: self.region.map(|r| r.slug).unwrap_or_default(),
            status: match self.status.as_str() {
                "active" => ServerStatus::Running,
                "new" => ServerStatus::Creating,
                "off" | "archive" => ServerStatus::Off,
                _ => ServerStatus::Unknown,
            },
            address: self
                .networks
                .into_iter()
                .flat_map(|n| n.v4)
                .find(|n| n.kind == "public")
                .and_then(|n| n.ip_address.parse().ok()),
            labels: self.tags.iter().filter_map(|t| tag_label(t)).collect(),
            created_at: self.created_at.unwrap_or_else(Utc::now),
        }
    }
}

#[derive(Deserialize)]
struct SshKeysPage {
    ssh_keys: Vec<SshKey>,
    links: Option<Links>,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    #[test]
    fn labels_round_trip_through_tags() {
        let labels = [
            (MANAGED_BY, "ops"),
            (TOKEN, "0123456789abcdef0123"),
            (FLEET, "my.fleet-1_a"),
            (POOL, "GPU_pool.x:y"),
            ("weird key", "é/ü = 1"),
            ("empty", ""),
        ];
        for (k, v) in labels {
            let tag = label_tag(k, v).expect("short enough");
            assert!(
                tag.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')),
                "{tag}"
            );
            assert_eq!(tag_label(&tag), Some((k.to_owned(), v.to_owned())), "{tag}");
            // DigitalOcean may hand a tag back in another case.
            assert_eq!(
                tag_label(&tag.to_ascii_uppercase()),
                Some((k.to_owned(), v.to_owned()))
            );
        }
        assert_eq!(
            label_tag(MANAGED_BY, "ops").ok().as_deref(),
            Some("ops_dmanaged-by:ops")
        );
        assert_eq!(tag_label("web"), None);
        assert_eq!(tag_label("a_q:b"), None);
        assert_eq!(
            tag_label("env:prod"),
            Some(("env".to_owned(), "prod".to_owned()))
        );
        let long = "x".repeat(300);
        assert!(
            matches!(label_tag("k", &long), Err(Error::InvalidRequest { field, .. }) if field == "labels")
        );
    }

    #[test]
    fn images_and_pages() {
        assert_eq!(image_slug("ubuntu-24.04"), "ubuntu-24-04-x64");
        assert_eq!(image_slug("debian-12-x64"), "debian-12-x64");
        let links: Links = serde_json::from_str(
            r#"{"pages":{"next":"https://api.digitalocean.com/v2/sizes?page=2&per_page=1"}}"#,
        )
        .expect("links");
        assert_eq!(next_page(Some(&links)), Some(2));
    }

    #[test]
    fn from_env_names_the_variable() {
        // Only checkable where the variable is unset (tests may not change the
        // environment: that is `unsafe`).
        if std::env::var_os(TOKEN_ENV).is_none() {
            let err = DigitalOceanProvider::from_env().expect_err("no token");
            assert!(err.to_string().contains("DIGITALOCEAN_TOKEN"), "{err}");
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
        classify(NAME, &answer, &Subject::offering("s-1vcpu-1gb", "nyc3"))
    }

    #[test]
    fn classifies_errors() {
        let e = classify_body(
            422,
            r#"{"id":"unprocessable_entity","message":"Region is not available"}"#,
        );
        assert!(
            e.is_capacity() && matches!(e, Error::Capacity { .. }),
            "{e}"
        );
        let e = classify_body(
            422,
            r#"{"id":"forbidden","message":"creating this droplet will exceed your droplet limit"}"#,
        );
        assert!(matches!(e, Error::Quota { .. }), "{e}");
        let e = classify_body(
            422,
            r#"{"id":"unprocessable_entity","message":"You specified an invalid image for Droplet creation."}"#,
        );
        assert!(
            matches!(&e, Error::InvalidRequest { field, .. } if field == "image"),
            "{e}"
        );
        assert!(matches!(
            classify_body(401, "{}"),
            Error::Authentication { .. }
        ));
        assert!(classify_body(500, "{}").is_retryable());
        assert!(e.to_string().starts_with("digitalocean: "));
    }
}
