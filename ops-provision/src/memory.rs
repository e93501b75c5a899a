//! [`InMemoryProvider`]: a provider in memory with injectable faults and API latency,
//! for tests and benchmarks of everything above the provider (offer choice, failover,
//! fleets) — the faults real providers have but their mocks do not.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use crate::{Error, Labels, Offering, Provider, Result, Server, ServerSpec, ServerStatus};

/// Faults to inject. Counters count down: `rate_limited: 3` answers the next three
/// calls with a 429.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Faults {
    /// Regions where every create fails with a capacity error.
    pub no_capacity_in: HashSet<String>,
    /// Creates beyond this many servers fail with a quota error.
    pub quota: Option<usize>,
    /// The next N calls fail with a 429 (`Error::Transient` with a retry-after).
    pub rate_limited: u32,
    /// The next N creates make the server, then fail as if the connection broke
    /// before the answer came (the crash between create and record).
    pub lost_create_answers: u32,
    /// The next N deletes time out (the server stays).
    pub delete_timeouts: u32,
    /// A server is `Running` after this many `get`/`wait_ready` polls (default 0).
    pub ready_after_polls: u32,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Creates in `region` fail with a capacity error.
    pub fn no_capacity_in(mut self, region: impl Into<String>) -> Self {
        self.no_capacity_in.insert(region.into());
        self
    }

    /// Creates beyond `servers` fail with a quota error.
    pub fn quota(mut self, servers: usize) -> Self {
        self.quota = Some(servers);
        self
    }

    /// The next `calls` calls get a 429.
    pub fn rate_limited(mut self, calls: u32) -> Self {
        self.rate_limited = calls;
        self
    }

    /// The next `creates` creates make their server and lose the answer.
    pub fn lost_create_answers(mut self, creates: u32) -> Self {
        self.lost_create_answers = creates;
        self
    }

    /// The next `deletes` deletes time out.
    pub fn delete_timeouts(mut self, deletes: u32) -> Self {
        self.delete_timeouts = deletes;
        self
    }

    /// Servers run after `polls` polls.
    pub fn ready_after_polls(mut self, polls: u32) -> Self {
        self.ready_after_polls = polls;
        self
    }
}

/// Calls made, by method: what the benchmarks count.
#[derive(Debug, Default)]
pub struct Calls {
    /// `offerings`.
    pub offerings: AtomicU64,
    /// `create`.
    pub create: AtomicU64,
    /// `list`.
    pub list: AtomicU64,
    /// `get` and each poll of `wait_ready`.
    pub get: AtomicU64,
    /// `delete`.
    pub delete: AtomicU64,
    /// `has_image`.
    pub images: AtomicU64,
}

impl Calls {
    /// Every call.
    pub fn total(&self) -> u64 {
        [
            &self.offerings,
            &self.create,
            &self.list,
            &self.get,
            &self.delete,
            &self.images,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

#[derive(Debug)]
struct Entry {
    server: Server,
    polls: u32,
}

#[derive(Debug, Default)]
struct State {
    servers: BTreeMap<String, Entry>,
    next_id: u64,
    faults: Faults,
}

/// A provider in memory; see the [module documentation](self).
#[derive(Debug)]
pub struct InMemoryProvider {
    name: String,
    offerings: Vec<Offering>,
    latency: Duration,
    images: Option<Vec<String>>,
    state: Mutex<State>,
    calls: Calls,
}

impl InMemoryProvider {
    /// A provider named `name` offering `offerings` (their `provider` is set to
    /// `name`).
    pub fn new(name: impl Into<String>, offerings: Vec<Offering>) -> Self {
        let name = name.into();
        Self {
            offerings: offerings
                .into_iter()
                .map(|mut o| {
                    o.provider = name.clone();
                    o
                })
                .collect(),
            name,
            latency: Duration::ZERO,
            images: None,
            state: Mutex::default(),
            calls: Calls::default(),
        }
    }

    /// Each call takes `latency` (a simulated API round trip).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Only these OS images exist (by default every image does).
    pub fn images(mut self, images: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.images = Some(images.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the faults to inject from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The calls made so far.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Every server, Ops' or not (what the provider's console shows).
    pub fn all_servers(&self) -> Vec<Server> {
        self.lock()
            .servers
            .values()
            .map(|e| e.server.clone())
            .collect()
    }

    /// Adds a server Ops did not make (someone's hand-made machine in the account).
    pub fn insert_foreign(&self, name: &str, region: &str) -> Server {
        let mut s = self.lock();
        s.next_id += 1;
        let server = Server {
            id: s.next_id.to_string(),
            name: name.to_owned(),
            provider: self.name.clone(),
            instance_type: "handmade".to_owned(),
            region: region.to_owned(),
            status: ServerStatus::Running,
            address: None,
            labels: Labels::new(),
            created_at: Utc::now(),
        };
        s.servers.insert(
            server.id.clone(),
            Entry {
                server: server.clone(),
                polls: 0,
            },
        );
        server
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latency, then a 429 if one is due.
    async fn call(&self, counter: &AtomicU64) -> Result<()> {
        counter.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut s = self.lock();
        if s.faults.rate_limited > 0 {
            s.faults.rate_limited -= 1;
            return Err(Error::Transient {
                provider: self.name.clone(),
                message: "429 Too Many Requests (rate limit exceeded)".to_owned(),
                retry_after: Some(Duration::from_millis(10)),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for InMemoryProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        self.call(&self.calls.offerings).await?;
        Ok(self.offerings.clone())
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server> {
        self.call(&self.calls.create).await?;
        let Some(offering) = self
            .offerings
            .iter()
            .find(|o| o.instance_type == spec.instance_type && o.region == spec.region)
        else {
            let field = if self
                .offerings
                .iter()
                .any(|o| o.instance_type == spec.instance_type)
            {
                "region"
            } else {
                "instance_type"
            };
            return Err(Error::InvalidRequest {
                provider: self.name.clone(),
                field: field.to_owned(),
                message: format!(
                    "no {} in {} (offered: {})",
                    spec.instance_type,
                    spec.region,
                    self.offerings
                        .iter()
                        .map(Offering::key)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let mut s = self.lock();
        if let Some(existing) = s.servers.values().find(|e| e.server.made_for(spec)) {
            return Ok(existing.server.clone());
        }
        if s.faults.no_capacity_in.contains(&spec.region) {
            return Err(Error::Capacity {
                provider: self.name.clone(),
                offering: spec.instance_type.clone(),
                region: spec.region.clone(),
                message: "resource_unavailable".to_owned(),
            });
        }
        if let Some(quota) = s.faults.quota
            && s.servers.len() >= quota
        {
            return Err(Error::Quota {
                provider: self.name.clone(),
                message: format!("server limit of {quota} reached"),
            });
        }
        s.next_id += 1;
        let server = Server {
            id: s.next_id.to_string(),
            name: spec.name.clone(),
            provider: self.name.clone(),
            instance_type: offering.instance_type.clone(),
            region: offering.region.clone(),
            status: ServerStatus::Creating,
            address: Some(std::net::IpAddr::from([
                10,
                0,
                (s.next_id >> 8) as u8,
                s.next_id as u8,
            ])),
            labels: spec.labels.clone(),
            created_at: Utc::now(),
        };
        s.servers.insert(
            server.id.clone(),
            Entry {
                server: server.clone(),
                polls: 0,
            },
        );
        if s.faults.lost_create_answers > 0 {
            s.faults.lost_create_answers -= 1;
            return Err(Error::Transient {
                provider: self.name.clone(),
                message: "connection reset before the answer to create".to_owned(),
                retry_after: None,
            });
        }
        Ok(server)
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<Server>> {
        self.call(&self.calls.list).await?;
        Ok(self
            .lock()
            .servers
            .values()
            .filter(|e| e.server.matches(selector))
            .map(|e| e.server.clone())
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<Server>> {
        self.call(&self.calls.get).await?;
        let mut s = self.lock();
        let ready_after = s.faults.ready_after_polls;
        Ok(s.servers.get_mut(id).map(|e| {
            e.polls += 1;
            if e.server.status == ServerStatus::Creating && e.polls > ready_after {
                e.server.status = ServerStatus::Running;
            }
            e.server.clone()
        }))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.call(&self.calls.delete).await?;
        let mut s = self.lock();
        if s.faults.delete_timeouts > 0 {
            s.faults.delete_timeouts -= 1;
            return Err(Error::Transient {
                provider: self.name.clone(),
                message: format!("timed out deleting server {id}"),
                retry_after: None,
            });
        }
        s.servers.remove(id);
        Ok(())
    }

    async fn has_image(&self, image: &str) -> Result<bool> {
        self.call(&self.calls.images).await?;
        Ok(self
            .images
            .as_ref()
            .is_none_or(|known| known.iter().any(|i| i == image)))
    }

    async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<Server> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(1);
        loop {
            match self.get(id).await? {
                Some(server) if server.status == ServerStatus::Running => return Ok(server),
                Some(_) => {}
                None => {
                    return Err(Error::NotFound {
                        provider: self.name.clone(),
                        id: id.to_owned(),
                    });
                }
            }
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(Error::NotReady {
                    provider: self.name.clone(),
                    id: id.to_owned(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
