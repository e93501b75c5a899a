//! [`PlatformConfig`]: a whole platform in one TOML file, checked as a whole.
//!
//! ```toml
//! history = "sqlite://state/ops.db"      # or postgres://ops@db/ops
//! events = "nats://nats.internal:4222"    # optional: functions subscribe to NATS
//! templates = "templates"                 # the template catalogue
//! dead_letters = "durable"                # or "memory"
//! shutdown_grace = "5s"                   # functions catch up before shutdown
//!
//! [tasks]                                 # ops_tasks::TasksConfig (root, admission…)
//! root = "state/tasks"
//!
//! [executor]                              # the local executor (feature `local`)
//! kill_grace = "2s"
//!
//! # [kube]                                # run tasks as pods instead (feature `kube`)
//!
//! [storage]                               # task inputs and outputs (ops-storage)
//! url = "state/storage"
//!
//! [dispatcher]                            # how functions are called (ops-events)
//! concurrency = 4
//!
//! # [billing]                             # credit held at admission (ops-billing)
//! # prices = "prices.toml"
//! # on_exhausted = "wait"                 # or "cancel": stop running work
//! # costs = "costs.toml"                  # the seller's cost book (margins)
//! # [[billing.limits]]                    # spending limits, held at admission
//! # environment = "dev"                   # (no tenant: every tenant, each apart)
//! # amount = "50.00"
//! # period = "month"                      # or "day", "total"
//!
//! # [provision]                           # fleets (ops-provision, feature `provision`)
//! # inventory = "machines.toml"           # owned machines, priced by their cost basis
//! # fleets = ["fleet.toml"]               # fleet specs: Platform::fleets()
//! # [provision.hetzner]                   # feature `hetzner`
//! # token_env = "HCLOUD_TOKEN"
//!
//! [[webhooks]]                            # functions from configuration
//! name = "billing"
//! url = "https://billing.internal/ops-events"
//! secret_env = "OPS_BILLING_SECRET"
//! on = ["ops.task.succeeded", "ops.task.failed"]
//! ```
//!
//! [`PlatformConfig::load`] reads a file and reports **every** problem at once, each
//! naming the key path and what is allowed: unknown keys (with the known ones), values
//! of the wrong type, URLs with an unknown scheme or one whose feature is off in this
//! build, settings the parts refuse. Relative paths are relative to the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ops_core::Tenant;
use ops_events::{DispatcherConfig, Trigger};
use ops_storage::StorageConfig;
use ops_tasks::TasksConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where dead letters (events a function failed on, after its retries) are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeadLetterStore {
    /// In the history database, beside the outbox: they survive restarts and can be
    /// replayed later (the default).
    #[default]
    Durable,
    /// In memory: lost when the process stops (tests, throw-away platforms).
    Memory,
}

/// A webhook function from configuration: every event matching its trigger is POSTed
/// to `url` as a CloudEvent, signed with HMAC-SHA256 when it has a secret (feature
/// `webhook`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookEntry {
    /// The function name (names its durable subscription and its dead letters).
    pub name: String,
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// The signing secret, written in the file. Prefer `secret_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The environment variable that holds the signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Event type patterns (`ops.task.*`, `ops.task.failed`…); default every event.
    #[serde(default = "every_event")]
    pub on: Vec<String>,
    /// Only events of this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Tenant>,
    /// Only events whose subject matches this pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Request timeout (default `10s`).
    #[serde(
        default = "default_webhook_timeout",
        with = "ops_tasks::duration::serde_duration"
    )]
    pub timeout: Duration,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebhookEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEntry")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .field("on", &self.on)
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

fn every_event() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

impl WebhookEntry {
    /// A webhook `name` posting every event to `url`, unsigned.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            secret: None,
            secret_env: None,
            on: every_event(),
            tenant: None,
            subject: None,
            timeout: default_webhook_timeout(),
            headers: BTreeMap::new(),
        }
    }

    /// The trigger it is called on.
    pub fn trigger(&self) -> Trigger {
        let mut patterns = self.on.iter();
        let mut trigger = match patterns.next() {
            Some(first) => Trigger::on(first.clone()),
            None => Trigger::default(),
        };
        for p in patterns {
            trigger = trigger.or_on(p.clone());
        }
        if let Some(tenant) = &self.tenant {
            trigger = trigger.tenant(tenant);
        }
        if let Some(subject) = &self.subject {
            trigger = trigger.subject(subject.clone());
        }
        trigger
    }

    /// The secret: `secret`, or the value of `secret_env`.
    pub(crate) fn resolved_secret(&self) -> std::result::Result<Option<String>, String> {
        match (&self.secret, &self.secret_env) {
            (Some(_), Some(_)) => Err("set `secret` or `secret_env`, not both".to_owned()),
            (Some(s), None) => Ok(Some(s.clone())),
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(format!(
                    "secret_env: the environment variable {var} is not set"
                )),
            },
            (None, None) => Ok(None),
        }
    }

    /// Every problem, each naming `field` (such as `webhooks[0]`).
    fn problems(&self, field: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push(format!("{field}.name: is empty"));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            out.push(format!(
                "{field}.url: {:?} is not an http:// or https:// URL",
                self.url
            ));
        }
        if let Err(e) = self.resolved_secret() {
            out.push(format!("{field}.{e}"));
        }
        if let Err(e) = self.trigger().validate() {
            out.push(format!("{field}: {e}"));
        }
        if !cfg!(feature = "webhook") {
            out.push(format!(
                "{field}: this build has no webhook support (enable the `webhook` feature of ops)"
            ));
        }
        out
    }
}

/// The whole platform's configuration: backends by URL, the template catalogue, each
/// part's settings, functions. Every field has a default, so a file sets only what it
/// changes; see the [module documentation](self) for an example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PlatformConfig {
    /// The history store, and with it the event outbox, the dead letters and the
    /// storage catalog: `sqlite://PATH` (a path relative to the config file, or
    /// absolute; the default is `sqlite://ops-data/ops.db`) or `postgres://…`
    /// (feature `postgres`).
    pub history: String,
    /// The event bus functions subscribe to: `nats://HOST:PORT` (feature `nats`), fed
    /// by a relay from the outbox. `None`: the history store's outbox itself.
    pub events: Option<String>,
    /// The directory of task templates (TOML, YAML or JSON files).
    pub templates: Option<PathBuf>,
    /// The task service: task root, default environment, retention, coordinator,
    /// admission.
    pub tasks: TasksConfig,
    /// The local executor's settings (feature `local`).
    #[cfg(all(unix, feature = "local"))]
    pub executor: ops_tasks::local::LocalExecutorConfig,
    /// Run tasks as pods on Kubernetes with these settings (feature `kube`) instead of
    /// on this machine.
    #[cfg(feature = "kube")]
    pub kube: Option<ops_tasks::kube::KubeExecutorConfig>,
    /// Object storage for task inputs and outputs, with its catalog in the history
    /// database. `None`: no storage, templates with `inputs` cannot run. A section
    /// without `url` stores in `storage/` beside the task root.
    pub storage: Option<StorageConfig>,
    /// How functions are called: batch size, concurrency, retries.
    pub dispatcher: DispatcherConfig,
    /// Where dead letters are kept (default durable, in the history database).
    pub dead_letters: DeadLetterStore,
    /// How long [`Platform::shutdown`](crate::Platform::shutdown) waits for functions
    /// to handle the events committed before it (default `5s`); what is left is
    /// delivered after the next start.
    #[serde(with = "ops_tasks::duration::serde_duration")]
    pub shutdown_grace: Duration,
    /// Webhook functions.
    pub webhooks: Vec<WebhookEntry>,
    /// Billing: a price book, prepaid credit held at admission, settlement from
    /// usage events. `None`: tasks are not billed.
    pub billing: Option<BillingConfig>,
    /// Monitoring (feature `monitor`): metrics fed by events, host and GPU collectors,
    /// `/metrics` served at `listen`. `None`: no metrics are kept.
    #[cfg(feature = "monitor")]
    pub monitor: Option<ops_monitor::MonitorConfig>,
    /// Fleets (feature `provision`): providers (an inventory of owned machines, this
    /// host, cloud accounts) and fleet specs, with records in the history database.
    /// `None`: no fleets.
    #[cfg(feature = "provision")]
    pub provision: Option<ops_provision::config::ProvisionConfig>,
}

/// The `[billing]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BillingConfig {
    /// The price book (TOML), relative to the config file.
    pub prices: PathBuf,
    /// How long a task without a timeout is held for at admission (default `1h`).
    #[serde(default = "default_hold", with = "ops_tasks::duration::serde_duration")]
    pub default_hold: Duration,
    /// What happens to a tenant's running tasks when its credit cannot hold the next
    /// one (`ops.billing.budget.exhausted`): `wait` (default: they run on, paid by their
    /// holds, and new work waits) or `cancel` (they are cancelled, settled to what
    /// they used).
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// Spending limits per tenant and environment, held at admission like credit
    /// (see [`ops_billing::limit`]): `[[billing.limits]]` with `tenant` (none: every
    /// tenant), `environment` (none: all together), `amount` and `period` (`day`,
    /// `month` or `total`).
    #[serde(default)]
    pub limits: Vec<ops_billing::SpendingLimit>,
    /// The seller's cost book (TOML, relative to the config file): node prices and
    /// owned machines, for cost reports and margins (`Platform::cost_book`).
    #[serde(default)]
    pub costs: Option<PathBuf>,
    /// The payment provider (`[billing.payments]`; none: `none`, nothing leaves Ops).
    #[serde(default)]
    pub payments: Option<PaymentsConfig>,
}

/// The `[billing.payments]` section: who collects invoices. Secrets come from the
/// environment, never from the file.
///
/// ```toml
/// [billing.payments]
/// provider = "stripe"                        # or "none" (the default)
/// api_key_env = "STRIPE_SECRET_KEY"
/// webhook_secrets_env = "STRIPE_WEBHOOK_SECRETS"   # comma-separated while rolling
/// meters = { gpu_seconds = "ops_gpu_seconds" }     # Ops meter → Stripe meter event
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PaymentsConfig {
    /// `none` or `stripe` (the `stripe` feature).
    pub provider: String,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The environment variable holding the webhook secrets, comma-separated.
    pub webhook_secrets_env: Option<String>,
    /// Another API base (a local fake in tests).
    pub base_url: Option<String>,
    /// Ops meter → the provider's meter event name.
    pub meters: std::collections::BTreeMap<String, String>,
}

impl PaymentsConfig {
    /// Every problem, each with its key under `billing.payments`: an unknown provider,
    /// one whose feature is off, a missing or unset environment variable.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let unset = |var: &str| std::env::var(var).map_or(true, |v| v.trim().is_empty());
        match self.provider.as_str() {
            "" | "none" => {}
            "stripe" => {
                if !cfg!(feature = "stripe") {
                    out.push(
                        "billing.payments.provider: \"stripe\" needs the `stripe` feature of ops"
                            .to_owned(),
                    );
                }
                match &self.api_key_env {
                    None => out.push(
                        "billing.payments.api_key_env: required for stripe (the variable holding the API key)"
                            .to_owned(),
                    ),
                    Some(var) if unset(var) => {
                        out.push(format!("billing.payments.api_key_env: {var} is not set"))
                    }
                    Some(_) => {}
                }
                if let Some(var) = &self.webhook_secrets_env
                    && unset(var)
                {
                    out.push(format!(
                        "billing.payments.webhook_secrets_env: {var} is not set"
                    ));
                }
            }
            other => out.push(format!(
                "billing.payments.provider: unknown provider {other:?}; use \"none\" or \"stripe\""
            )),
        }
        out
    }
}

/// The policy of `[billing] on_exhausted`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnExhausted {
    /// Running tasks run on; new work waits for a top-up.
    #[default]
    Wait,
    /// The tenant's running tasks are cancelled ([`crate::billing::CancelOnExhausted`]).
    Cancel,
}

fn default_hold() -> Duration {
    Duration::from_secs(3600)
}

impl BillingConfig {
    /// Billing with the price book at `prices`.
    pub fn new(prices: impl Into<PathBuf>) -> Self {
        Self {
            prices: prices.into(),
            default_hold: default_hold(),
            on_exhausted: OnExhausted::Wait,
            limits: Vec::new(),
            costs: None,
            payments: None,
        }
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            history: "sqlite://ops-data/ops.db".to_owned(),
            events: None,
            templates: None,
            tasks: TasksConfig::default(),
            #[cfg(all(unix, feature = "local"))]
            executor: Default::default(),
            #[cfg(feature = "kube")]
            kube: None,
            storage: None,
            dispatcher: DispatcherConfig::default(),
            dead_letters: DeadLetterStore::default(),
            shutdown_grace: Duration::from_secs(5),
            webhooks: Vec::new(),
            billing: None,
            #[cfg(feature = "monitor")]
            monitor: None,
            #[cfg(feature = "provision")]
            provision: None,
        }
    }
}

/// Sections of the file that only some builds understand, and the feature each needs.
const GATED: [(&str, &str, &str); 4] = [
    ("executor", "the local executor", "local"),
    ("kube", "the Kubernetes executor", "kube"),
    ("monitor", "monitoring", "monitor"),
    ("provision", "fleets", "provision"),
];

impl PlatformConfig {
    /// Reads, checks and resolves a configuration file: relative paths become relative
    /// to the file's directory. Every problem is reported at once in
    /// [`Error::Config`], naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| with_file(e, path))?;
        // Paths resolve against the file's directory, made absolute so that a file
        // given by a relative path still yields `file:///…` URLs and paths that do not
        // change meaning when the process changes its directory.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        config.resolve_paths(&base);
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(with_file(Error::config(problems), path))
        }
    }

    /// Parses TOML text, reporting every unknown key, every value of the wrong type
    /// and every URL with an unknown scheme at once. Paths are left as written; see
    /// [`load`](Self::load) and [`problems`](Self::problems).
    pub fn parse(text: &str) -> Result<Self> {
        let value: toml::Value = toml::from_str(text).map_err(|e| {
            Error::config(vec![format!(
                "not valid TOML: {}",
                e.to_string().trim_end()
            )])
        })?;
        let mut problems = url_problems(&value);
        let config = match deserialize_all::<Self>(value) {
            Ok(config) => Some(config),
            Err(found) => {
                problems.extend(found);
                None
            }
        };
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                problems.dedup();
                Err(Error::config(problems))
            }
        }
    }

    /// Makes relative paths relative to `base` (the config file's directory): the
    /// SQLite database, the templates, the task root, a storage directory and a
    /// kubeconfig.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(file) = sqlite_file(&self.history)
            && file.is_relative()
        {
            self.history = format!("sqlite://{}", base.join(file).display());
        }
        if let Some(t) = &self.templates {
            self.templates = Some(base.join(t));
        }
        self.tasks.root = base.join(&self.tasks.root);
        if let Some(storage) = &mut self.storage {
            if storage.url.is_empty() {
                let data = self.tasks.root.parent().unwrap_or(base);
                storage.url = format!("file://{}", data.join("storage").display());
            } else if !storage.url.contains("://") {
                storage.url = format!("file://{}", base.join(&storage.url).display());
            }
        }
        #[cfg(feature = "kube")]
        if let Some(kube) = &mut self.kube
            && let Some(k) = &kube.kubeconfig
        {
            kube.kubeconfig = Some(base.join(k));
        }
        #[cfg(feature = "provision")]
        if let Some(provision) = &mut self.provision {
            provision.resolve_paths(base);
        }
        if let Some(billing) = &mut self.billing {
            billing.prices = base.join(&billing.prices);
            if let Some(costs) = &mut billing.costs {
                *costs = base.join(&*costs);
            }
        }
    }

    /// Every problem of a configuration that parsed, each naming its key path: URL
    /// schemes, a missing template directory, the parts' own checks, webhooks.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = check_history_url(&self.history) {
            out.push(format!("history: {e}"));
        }
        if let Some(events) = &self.events
            && let Err(e) = check_events_url(events)
        {
            out.push(format!("events: {e}"));
        }
        if let Some(dir) = &self.templates
            && !dir.is_dir()
        {
            out.push(format!(
                "templates: {} is not a directory of templates",
                dir.display()
            ));
        }
        out.extend(
            self.tasks
                .problems()
                .into_iter()
                .map(|p| format!("tasks.{p}")),
        );
        if let Some(storage) = &self.storage {
            if let Err(e) = check_storage_url(&storage.url) {
                out.push(format!("storage.url: {e}"));
            }
            if let Err(ops_storage::Error::InvalidConfig { problems }) = storage.validate() {
                out.extend(
                    problems
                        .into_iter()
                        .filter(|p| !(p.starts_with("url:") && storage.url.trim().is_empty()))
                        .map(|p| format!("storage.{p}")),
                );
            }
        }
        #[cfg(feature = "kube")]
        if let Some(kube) = &self.kube {
            out.extend(kube.problems().into_iter().map(|p| format!("kube.{p}")));
        }
        #[cfg(feature = "provision")]
        if let Some(provision) = &self.provision {
            out.extend(provision.problems());
        }
        #[cfg(feature = "monitor")]
        if let Some(monitor) = &self.monitor {
            out.extend(monitor.problems());
        }
        if let Some(billing) = &self.billing {
            match ops_billing::PriceBook::load(&billing.prices) {
                Ok(book) => {
                    if let Some(payments) = &billing.payments {
                        out.extend(payments.problems());
                    }
                    for (i, l) in billing.limits.iter().enumerate() {
                        out.extend(l.problems(&format!("billing.limits[{i}]"), book.currency));
                    }
                    match billing.costs.as_ref().map(ops_billing::CostBook::load) {
                        None => {}
                        Some(Ok(costs)) if costs.currency != book.currency => out.push(format!(
                            "billing.costs: currency {} is not the price book's {}",
                            costs.currency, book.currency
                        )),
                        Some(Ok(_)) => {}
                        Some(Err(ops_billing::Error::InvalidCostBook { file, problems })) => {
                            let file = file.unwrap_or_default();
                            out.extend(
                                problems
                                    .into_iter()
                                    .map(|p| format!("billing.costs ({file}): {p}")),
                            );
                        }
                        Some(Err(e)) => out.push(format!("billing.costs: {e}")),
                    }
                }
                Err(ops_billing::Error::InvalidPriceBook { file, problems }) => {
                    let file = file.unwrap_or_default();
                    out.extend(
                        problems
                            .into_iter()
                            .map(|p| format!("billing.prices ({file}): {p}")),
                    );
                }
                Err(e) => out.push(format!("billing.prices: {e}")),
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            out.extend(hook.problems(&format!("webhooks[{i}]")));
            if !names.insert(hook.name.as_str()) {
                out.push(format!(
                    "webhooks[{i}].name: {:?} is used twice; function names are unique",
                    hook.name
                ));
            }
        }
        out
    }
}

fn with_file(e: Error, path: &Path) -> Error {
    match e {
        Error::Config { problems, .. } => Error::Config {
            file: Some(path.to_path_buf()),
            problems,
        },
        other => other,
    }
}

/// The file of a SQLite URL (`sqlite://PATH`, `sqlite:PATH` or a bare path).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .or_else(|| (!url.contains("://")).then_some(url))?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// The scheme of a URL, if it has one.
pub(crate) fn scheme(url: &str) -> Option<&str> {
    url.find(':').map(|i| &url[..i]).filter(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    })
}

fn check_history_url(url: &str) -> std::result::Result<(), String> {
    let shown = ops_events::redact_url(url);
    match scheme(url) {
        _ if url.trim().is_empty() => {
            Err("is empty; use sqlite://PATH or postgres://HOST/DB".into())
        }
        None | Some("sqlite") if cfg!(feature = "sqlite") => Ok(()),
        None | Some("sqlite") => Err(format!(
            "{shown}: this build has no SQLite support (enable the `sqlite` feature of ops)"
        )),
        Some("postgres" | "postgresql") if cfg!(feature = "postgres") => Ok(()),
        Some("postgres" | "postgresql") => Err(format!(
            "{shown}: this build has no PostgreSQL support (enable the `postgres` feature of ops)"
        )),
        Some(other) => Err(format!(
            "unsupported scheme {other:?} in {shown}; use sqlite://PATH or postgres://HOST/DB"
        )),
    }
}

fn check_events_url(url: &str) -> std::result::Result<(), String> {
    let shown = ops_events::redact_url(url);
    match scheme(url) {
        Some("outbox") => Ok(()),
        Some("nats" | "tls") if cfg!(feature = "nats") => Ok(()),
        Some("nats" | "tls") => Err(format!(
            "{shown}: this build has no NATS support (enable the `nats` feature of ops)"
        )),
        other => Err(format!(
            "unsupported scheme {:?} in {shown}; use nats://HOST:PORT, or leave `events` out to \
             use the history store's outbox",
            other.unwrap_or("")
        )),
    }
}

fn check_storage_url(url: &str) -> std::result::Result<(), String> {
    match scheme(url) {
        _ if url.trim().is_empty() => Ok(()), // resolved to a default directory
        Some("file" | "memory") => Ok(()),
        Some("s3") if cfg!(feature = "s3") => Ok(()),
        Some("s3") => Err(format!(
            "{url:?}: this build has no S3 support (enable the `s3` feature of ops)"
        )),
        Some(other) if url.contains("://") => Err(format!(
            "unsupported scheme {other:?} in {url:?}; use a directory, file:///DIR, s3://BUCKET \
             or memory://"
        )),
        _ => Ok(()), // a plain directory path
    }
}

/// The URL problems that can be seen in the raw file, so that they are reported with
/// the others even when the file does not deserialize.
fn url_problems(value: &toml::Value) -> Vec<String> {
    let mut out = Vec::new();
    let get = |path: &[&str]| {
        path.iter()
            .try_fold(value, |v, key| v.get(*key))
            .and_then(|v| v.as_str())
    };
    if let Some(url) = get(&["history"])
        && let Err(e) = check_history_url(url)
    {
        out.push(format!("history: {e}"));
    }
    if let Some(url) = get(&["events"])
        && let Err(e) = check_events_url(url)
    {
        out.push(format!("events: {e}"));
    }
    if let Some(url) = get(&["storage", "url"])
        && let Err(e) = check_storage_url(url)
    {
        out.push(format!("storage.url: {e}"));
    }
    out
}

/// Deserializes `value`, collecting every error instead of stopping at the first: each
/// error's key is reported (with its path) and removed, and the rest tried again. A
/// missing required key ends the search (nothing can stand in for it).
pub(crate) fn deserialize_all<T: DeserializeOwned>(
    mut value: toml::Value,
) -> std::result::Result<T, Vec<String>> {
    let mut problems = Vec::new();
    let mut removed: Vec<Vec<String>> = Vec::new();
    for _ in 0..256 {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        let path: Vec<String> = error
            .path()
            .iter()
            .map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => index.to_string(),
                serde_path_to_error::Segment::Map { key } => key.clone(),
                serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                serde_path_to_error::Segment::Unknown => "?".to_owned(),
            })
            .collect();
        let message = error.inner().to_string();
        let message = message.lines().next().unwrap_or_default().to_owned();
        if let Some(field) = missing_field(&message) {
            let mut full = path.clone();
            full.push(field);
            if !removed.contains(&full) {
                problems.push(describe(&error.path().to_string(), &message));
            }
            return Err(problems);
        }
        problems.push(describe(&error.path().to_string(), &gated(&path, message)));
        if path.is_empty() || !remove(&mut value, &path) {
            return Err(problems);
        }
        removed.push(path);
    }
    Err(problems)
}

/// `path: message`, or the message alone at the top.
fn describe(path: &str, message: &str) -> String {
    if path.is_empty() || path == "." {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

/// For a section this build does not understand, says which feature adds it.
fn gated(path: &[String], message: String) -> String {
    if let [key] = path
        && message.starts_with("unknown field")
        && let Some((_, what, feature)) = GATED.iter().find(|(k, _, _)| k == key)
    {
        return format!("{what} is not in this build (enable the `{feature}` feature of ops)");
    }
    message
}

/// The field of a serde `missing field `x`` message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Removes the value at `path` (keys and array indexes) from `value`.
fn remove(value: &mut toml::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for key in parents {
        node = match node {
            toml::Value::Table(t) => match t.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            toml::Value::Array(a) => match key.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        toml::Value::Table(t) => t.remove(last).is_some(),
        toml::Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once_with_its_key_path() {
        let err = PlatformConfig::parse(
            r#"
            history = "mysql://db/ops"
            histroy = "x"
            events = "kafka://broker"
            dead_letters = "disk"
            [tasks]
            batch_size = "many"
            default_environment = "prod/eu"
            [tasks.retention]
            max_age = "a week"
            [storage]
            url = "ftp://files/ops"
            [dispatcher]
            concurrency = 4
            colour = "red"
            "#,
        )
        .unwrap_err();
        let Error::Config { problems, .. } = &err else {
            panic!("{err}")
        };
        let text = err.to_string();
        for needle in [
            "history: unsupported scheme \"mysql\"",
            "use sqlite://PATH or postgres://HOST/DB",
            "events: unsupported scheme \"kafka\"",
            "storage.url: unsupported scheme \"ftp\"",
            "histroy: unknown field `histroy`, expected one of",
            "dead_letters: unknown variant `disk`, expected `durable` or `memory`",
            "tasks.batch_size: invalid type: string \"many\"",
            "tasks.default_environment: invalid environment \"prod/eu\"",
            "tasks.retention.max_age",
            "dispatcher.colour: unknown field `colour`",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert_eq!(problems.len(), 9, "{problems:#?}");
        assert_eq!(err.kind(), ops_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_good_file_parses_and_paths_resolve_against_it() {
        let mut config = PlatformConfig::parse(
            r#"
            history = "sqlite://state/ops.db"
            templates = "templates"
            [tasks]
            root = "state/tasks"
            [storage]
            "#,
        )
        .unwrap();
        config.resolve_paths(Path::new("/srv/platform"));
        assert_eq!(config.history, "sqlite:///srv/platform/state/ops.db");
        assert_eq!(
            config.templates.as_deref(),
            Some(Path::new("/srv/platform/templates"))
        );
        assert_eq!(config.tasks.root, Path::new("/srv/platform/state/tasks"));
        assert_eq!(
            config.storage.unwrap().url,
            "file:///srv/platform/state/storage"
        );
        assert_eq!(config.dead_letters, DeadLetterStore::Durable);
    }

    #[test]
    fn a_file_given_by_a_relative_path_resolves_to_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("platform.toml"),
            "history = \"sqlite://state/ops.db\"\n[storage]\n",
        )
        .unwrap();
        // The same file, named relative to the current directory.
        let cwd = std::env::current_dir().unwrap();
        let mut relative = PathBuf::new();
        for _ in cwd.components().skip(1) {
            relative.push("..");
        }
        relative.push(dir.path().strip_prefix("/").unwrap());
        relative.push("platform.toml");
        let config = PlatformConfig::load(&relative).unwrap();
        // Each path is absolute and lies two levels under the file's directory.
        let home = dir.path().canonicalize().unwrap();
        let storage = config.storage.unwrap().url;
        for (key, path) in [
            ("history", config.history.strip_prefix("sqlite://")),
            ("tasks.root", config.tasks.root.to_str()),
            ("storage.url", storage.strip_prefix("file://")),
        ] {
            let path = Path::new(path.unwrap_or_else(|| panic!("{key}: not a path")));
            assert!(path.is_absolute(), "{key}: {}", path.display());
            let grandparent = path.parent().and_then(Path::parent).unwrap();
            assert_eq!(grandparent.canonicalize().unwrap(), home, "{key}");
        }
    }

    #[test]
    fn syntax_errors_and_bad_webhooks_are_reported() {
        let err = PlatformConfig::parse("history = ").unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
        let config = PlatformConfig::parse(
            r#"
            [[webhooks]]
            name = "hook"
            url = "ftp://x"
            secret = "a"
            secret_env = "B"
            on = ["ops.*.failed"]
            [[webhooks]]
            name = "hook"
            url = "https://example.invalid/hook"
            secret_env = "OPS_TEST_SURELY_UNSET_VARIABLE"
            "#,
        )
        .unwrap();
        let problems = config.problems().join("\n");
        for needle in [
            "webhooks[0].url: \"ftp://x\" is not an http:// or https:// URL",
            "webhooks[0].set `secret` or `secret_env`, not both",
            "webhooks[0]: invalid event type pattern",
            "webhooks[1].secret_env: the environment variable OPS_TEST_SURELY_UNSET_VARIABLE is not set",
            "webhooks[1].name: \"hook\" is used twice",
        ] {
            assert!(
                problems.contains(needle),
                "{needle:?} missing from:\n{problems}"
            );
        }
    }

    #[test]
    fn a_missing_required_key_after_a_removed_one_is_not_reported_twice() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Needs {
            name: String,
            #[serde(default)]
            size: u32,
        }
        let value: toml::Value = toml::from_str("name = 3\nsize = \"x\"\nextra = 1").unwrap();
        let problems = deserialize_all::<Needs>(value).unwrap_err();
        // Each bad key is reported once; the missing `name` that removing it leaves is
        // not reported again.
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("extra: unknown field"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("name: invalid type"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("size: invalid type"),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|p| p.contains("missing field")),
            "{problems:?}"
        );
    }
}
