//! [`LocalProvider`]: this host as one offering, so a platform on one machine plans
//! and prices like a fleet. Its cost basis is given (power, the machine's share of
//! its price); left at zero, the ranking says "owned" and the price is what it is.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rust_decimal::Decimal;

use crate::{Error, Labels, Offering, Provider, Result, Server, ServerSpec, ServerStatus};

/// The name of the local provider.
pub const LOCAL: &str = "local";

/// This host; see the [module documentation](self).
#[derive(Debug)]
pub struct LocalProvider {
    offering: Offering,
    claim: Mutex<Option<Server>>,
}

impl LocalProvider {
    /// This host, detected (cores, memory from /proc/meminfo), at `hourly` in
    /// `currency`.
    pub fn detect(hourly: Decimal, currency: impl Into<String>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        let mut offering = Offering::new(
            LOCAL,
            "this-host",
            LOCAL,
            cpus * 1000,
            memory,
            hourly,
            currency,
        );
        offering.owned = true;
        Self {
            offering,
            claim: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Server>> {
        self.claim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        LOCAL
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        let mut o = self.offering.clone();
        o.available = Some(self.lock().is_none());
        Ok(vec![o])
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server> {
        if spec.instance_type != self.offering.instance_type {
            return Err(Error::InvalidRequest {
                provider: LOCAL.to_owned(),
                field: "instance_type".to_owned(),
                message: format!(
                    "only \"this-host\" is offered, not {:?}",
                    spec.instance_type
                ),
            });
        }
        let mut claim = self.lock();
        if let Some(server) = claim.as_ref() {
            if server.made_for(spec) {
                return Ok(server.clone());
            }
            return Err(Error::Capacity {
                provider: LOCAL.to_owned(),
                offering: "this-host".to_owned(),
                region: LOCAL.to_owned(),
                message: format!("this host is already claimed by {:?}", server.name),
            });
        }
        let server = Server {
            id: "this-host".to_owned(),
            name: spec.name.clone(),
            provider: LOCAL.to_owned(),
            instance_type: "this-host".to_owned(),
            region: LOCAL.to_owned(),
            status: ServerStatus::Running,
            address: Some(std::net::IpAddr::from([127, 0, 0, 1])),
            labels: spec.labels.clone(),
            created_at: Utc::now(),
        };
        *claim = Some(server.clone());
        Ok(server)
    }

    async fn list(&self, selector: &Labels) -> Result<Vec<Server>> {
        Ok(self
            .lock()
            .iter()
            .filter(|s| s.matches(selector))
            .cloned()
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<Server>> {
        Ok(self.lock().clone().filter(|s| s.id == id))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let mut claim = self.lock();
        if claim.as_ref().is_some_and(|s| s.id == id) {
            *claim = None;
        }
        Ok(())
    }

    async fn wait_ready(&self, id: &str, _timeout: Duration) -> Result<Server> {
        self.get(id).await?.ok_or_else(|| Error::NotFound {
            provider: LOCAL.to_owned(),
            id: id.to_owned(),
        })
    }
}
