//! The shared HTTP layer's failure paths against wiremock fakes of the providers: 429
//! storms, a spent rate-limit budget (waited for, shared by every client of a token),
//! 5xx and connection errors retried then reported, each provider's error bodies
//! classified, pagination, and what a created server costs in requests.
#![cfg(any(feature = "hetzner", feature = "digitalocean"))]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ops_provision::http::HttpConfig;
use ops_provision::{Error, Provider, ServerSpec};
use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A token of its own for each test: budgets are shared per token, process-wide, and
/// tests run in parallel.
fn token(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Small waits, so the tests are quick.
fn fast() -> HttpConfig {
    HttpConfig::default()
        .max_attempts(3)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .max_wait(Duration::from_secs(5))
}

fn unix_in(secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    (now + secs).to_string()
}

#[cfg(feature = "hetzner")]
mod hetzner {
    use super::*;
    use ops_provision::Labels;
    use ops_provision::hetzner::HetznerProvider;
    use ops_provision::http::PollIntervals;
    use std::time::Instant;
    use wiremock::matchers::header;

    fn provider(server: &MockServer, token: &str) -> HetznerProvider {
        HetznerProvider::new(token)
            .base_url(server.uri())
            .http_config(fast())
            .poll_intervals(PollIntervals {
                first: Duration::from_millis(5),
                max: Duration::from_millis(20),
            })
    }

    fn no_types() -> serde_json::Value {
        json!({"server_types": [], "meta": {"pagination": {"page": 1, "next_page": null}}})
    }

    fn server_json(id: u64, status: &str, labels: &Labels) -> serde_json::Value {
        json!({
            "id": id, "name": format!("s-{id}"), "status": status,
            "created": "2026-12-01T10:00:00Z", "labels": labels,
            "server_type": {"name": "cx22"}, "location": {"name": "fsn1"},
            "public_net": {"ipv4": {"ip": "203.0.113.7"}}
        })
    }

    fn error(code: &str, message: &str) -> serde_json::Value {
        json!({"error": {"code": code, "message": message, "details": null}})
    }

    #[tokio::test]
    async fn a_429_storm_is_ridden_out_honouring_retry_after() {
        let server = MockServer::start().await;
        // Backoff alone would take far longer than the 1 s the provider asks for.
        let config = HttpConfig::default()
            .max_attempts(5)
            .backoff(Duration::from_secs(20), Duration::from_secs(20));
        let hetzner = HetznerProvider::new(token("storm"))
            .base_url(server.uri())
            .http_config(config);
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("Retry-After", "0")
                    .set_body_json(error("rate_limit_exceeded", "slow down")),
            )
            .up_to_n_times(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("RateLimit-Remaining", "0")
                    .insert_header("RateLimit-Reset", unix_in(1))
                    .set_body_json(error("rate_limit_exceeded", "slow down")),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(ResponseTemplate::new(200).set_body_json(no_types()))
            .mount(&server)
            .await;
        let started = Instant::now();
        hetzner
            .offerings()
            .await
            .expect("offerings after the storm");
        let took = started.elapsed();
        assert_eq!(
            server.received_requests().await.unwrap_or_default().len(),
            4
        );
        assert_eq!(hetzner.http().requests_sent(), 4);
        assert!(
            took < Duration::from_secs(5),
            "took {took:?}: backoff used instead of the provider's wait"
        );
    }

    #[tokio::test]
    async fn a_spent_budget_makes_the_next_call_wait_for_the_reset() {
        let server = MockServer::start().await;
        let hetzner = provider(&server, &token("budget"));
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("RateLimit-Limit", "3600")
                    .insert_header("RateLimit-Remaining", "0")
                    .insert_header("RateLimit-Reset", unix_in(2))
                    .set_body_json(no_types()),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(ResponseTemplate::new(200).set_body_json(no_types()))
            .mount(&server)
            .await;
        hetzner.offerings().await.expect("first call");
        assert_eq!(hetzner.http().budget().remaining(), Some(0));
        assert_eq!(hetzner.http().budget().limit(), Some(3600));
        let started = Instant::now();
        let second = tokio::spawn({
            let hetzner = hetzner.clone();
            async move { hetzner.offerings().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            server.received_requests().await.unwrap_or_default().len(),
            1,
            "the second call was sent with no budget left"
        );
        second.await.expect("join").expect("second call");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            server.received_requests().await.unwrap_or_default().len(),
            2
        );
    }

    #[tokio::test]
    async fn providers_with_the_same_token_share_one_budget() {
        let (one, two) = (MockServer::start().await, MockServer::start().await);
        let shared = token("shared");
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("RateLimit-Remaining", "0")
                    .insert_header("RateLimit-Reset", unix_in(2))
                    .set_body_json(no_types()),
            )
            .mount(&one)
            .await;
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(ResponseTemplate::new(200).set_body_json(no_types()))
            .mount(&two)
            .await;
        provider(&one, &shared)
            .offerings()
            .await
            .expect("spend the budget");
        // Another token has its own budget: no wait.
        let started = Instant::now();
        provider(&two, &token("other"))
            .offerings()
            .await
            .expect("other token");
        assert!(started.elapsed() < Duration::from_millis(500));
        // Another provider value (another address even) with the same token waits.
        let started = Instant::now();
        provider(&two, &shared)
            .offerings()
            .await
            .expect("same token");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_transient_with_retry_after() {
        let server = MockServer::start().await;
        let hetzner = provider(&server, &token("5xx"));
        Mock::given(method("GET"))
            .and(path("/server_types"))
            .respond_with(
                ResponseTemplate::new(503)
                    .insert_header("Retry-After", "0")
                    .set_body_json(error("unavailable", "down for a moment")),
            )
            .mount(&server)
            .await;
        let err = hetzner.offerings().await.expect_err("503 every time");
        assert!(
            matches!(&err, Error::Transient { provider, retry_after: Some(d), .. } if provider == "hetzner" && d.is_zero()),
            "{err:?}"
        );
        assert!(err.is_retryable());
        assert!(err.to_string().contains("503"), "{err}");
        assert_eq!(
            server.received_requests().await.unwrap_or_default().len(),
            3
        );
    }

    #[tokio::test]
    async fn a_create_the_provider_may_have_done_is_not_sent_again() {
        let server = MockServer::start().await;
        let hetzner = provider(&server, &token("post"));
        Mock::given(method("GET"))
            .and(path("/servers"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    json!({"servers": [], "meta": {"pagination": {"next_page": null}}}),
                ),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/servers"))
            .respond_with(ResponseTemplate::new(502))
            .mount(&server)
            .await;
        let spec = ServerSpec::new("web-0", "cx22", "fsn1", "web", "app", 0);
        let err = hetzner.create(&spec).await.expect_err("502");
        assert!(err.is_retryable(), "{err:?}");
        let posts = server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.method == wiremock::http::Method::POST)
            .count();
        assert_eq!(
            posts, 1,
            "a POST that may have created a server was sent again"
        );
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_transient() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let hetzner = HetznerProvider::new(token("conn"))
            .base_url(format!("http://127.0.0.1:{port}"))
            .http_config(fast());
        let err = hetzner.offerings().await.expect_err("nothing listens");
        assert!(
            matches!(&err, Error::Transient { provider, .. } if provider == "hetzner"),
            "{err:?}"
        );
        assert_eq!(hetzner.http().requests_sent(), 3);
    }

    #[tokio::test]
    async fn refused_credentials_are_authentication_errors() {
        let server = MockServer::start().await;
        let hetzner = provider(&server, "expired");
        Mock::given(method("GET"))
            .and(header("authorization", "Bearer expired"))
            .respond_with(
                ResponseTemplate::new(401)
                    .set_body_json(error("unauthorized", "unable to authenticate")),
            )
            .mount(&server)
            .await;
        let err = hetzner.offerings().await.expect_err("401");
        assert!(
            matches!(&err, Error::Authentication { provider, .. } if provider == "hetzner"),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert_eq!(
            server.received_requests().await.unwrap_or_default().len(),
            1
        );
    }

    /// An expired token stops a fleet at plan time, naming the provider and the field.
    #[tokio::test]
    async fn a_refused_token_fails_the_plan_naming_provider_and_field() {
        use ops_provision::fleet::{Fleet, FleetSpec};
        use ops_provision::state::MemoryFleetStore;
        use std::sync::Arc;
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(401)
                    .set_body_json(error("unauthorized", "unable to authenticate")),
            )
            .mount(&server)
            .await;
        let spec = FleetSpec::parse(
            "name = \"web\"\n[[pools]]\nname = \"app\"\ncount = 1\n\
             offering = { provider = \"hetzner\", instance_type = \"cx22\", region = \"fsn1\" }",
        )
        .expect("spec");
        let fleet = Fleet::new(
            spec,
            vec![Arc::new(provider(&server, "expired"))],
            Arc::new(MemoryFleetStore::default()),
        );
        let err = fleet.plan().await.expect_err("401");
        assert_eq!(err.kind(), ops_core::ErrorKind::PermissionDenied);
        let text = err.to_string();
        for needle in ["hetzner", "plan time", "token:", "unable to authenticate"] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
    }

    async fn create_failing_with(status: u16, body: serde_json::Value) -> Error {
        let server = MockServer::start().await;
        let hetzner = provider(&server, &token("create"));
        Mock::given(method("GET"))
            .and(path("/servers"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    json!({"servers": [], "meta": {"pagination": {"next_page": null}}}),
                ),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/servers"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
        let spec = ServerSpec::new("gpu-0", "ccx63", "hel1", "train", "gpu", 0);
        hetzner.create(&spec).await.expect_err("refused")
    }

    #[tokio::test]
    async fn errors_are_classified_from_the_error_code() {
        let err = create_failing_with(412, error("resource_unavailable", "no ccx63 left")).await;
        assert!(err.is_capacity(), "{err:?}");
        assert!(
            matches!(&err, Error::Capacity { provider, offering, region, .. }
                if provider == "hetzner" && offering == "ccx63" && region == "hel1"),
            "{err:?}"
        );
        let err = create_failing_with(403, error("resource_limit_exceeded", "server limit")).await;
        assert!(
            matches!(&err, Error::Quota { provider, .. } if provider == "hetzner"),
            "{err:?}"
        );
        let err = create_failing_with(
            400,
            json!({"error": {"code": "invalid_input", "message": "invalid input in field 'server_type'",
                "details": {"fields": [{"name": "server_type", "messages": ["unknown server type"]}]}}}),
        )
        .await;
        assert!(
            matches!(&err, Error::InvalidRequest { provider, field, .. } if provider == "hetzner" && field == "server_type"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn listing_follows_three_pages() {
        let server = MockServer::start().await;
        let hetzner = provider(&server, &token("pages"));
        let mut ours = Labels::new();
        ours.insert("ops.managed-by".into(), "ops".into());
        for (page, next) in [(1, json!(2)), (2, json!(3)), (3, json!(null))] {
            Mock::given(method("GET"))
                .and(path("/servers"))
                .and(query_param("page", page.to_string()))
                .and(query_param("per_page", "50"))
                .and(query_param("label_selector", "ops.managed-by=ops"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "servers": [server_json(page, "running", &ours)],
                    "meta": {"pagination": {"page": page, "next_page": next}}
                })))
                .expect(1)
                .mount(&server)
                .await;
        }
        let listed = hetzner.list(&ours).await.expect("list");
        let ids: Vec<_> = listed.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(listed[0].address, Some("203.0.113.7".parse().expect("ip")));
    }

    #[tokio::test]
    async fn a_created_server_costs_three_requests() {
        let server = MockServer::start().await;
        let hetzner = provider(&server, &token("cost"));
        let spec = ServerSpec::new("web-0", "cx22", "fsn1", "web", "app", 0);
        Mock::given(method("GET"))
            .and(path("/servers"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    json!({"servers": [], "meta": {"pagination": {"next_page": null}}}),
                ),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/servers"))
            .respond_with(ResponseTemplate::new(201).set_body_json(
                json!({"server": server_json(7, "initializing", &spec.labels), "action": {"id": 1}}),
            ))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/servers/7"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"server": server_json(7, "running", &spec.labels)})),
            )
            .mount(&server)
            .await;
        let created = hetzner.create(&spec).await.expect("create");
        assert!(created.made_for(&spec));
        let ready = hetzner
            .wait_ready(&created.id, Duration::from_secs(5))
            .await
            .expect("ready");
        assert_eq!(ready.address, Some("203.0.113.7".parse().expect("ip")));
        assert_eq!(hetzner.http().requests_sent(), 3);
    }
}

#[cfg(feature = "digitalocean")]
mod digitalocean {
    use super::*;
    use ops_provision::digitalocean::DigitalOceanProvider;

    fn provider(server: &MockServer, token: &str) -> DigitalOceanProvider {
        DigitalOceanProvider::new(token)
            .base_url(server.uri())
            .http_config(fast())
    }

    #[tokio::test]
    async fn region_unavailable_is_a_capacity_error() {
        let server = MockServer::start().await;
        let digitalocean = provider(&server, &token("do-capacity"));
        Mock::given(method("GET"))
            .and(path("/v2/droplets"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"droplets": [], "links": {}, "meta": {"total": 0}})),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v2/droplets"))
            .respond_with(ResponseTemplate::new(422).set_body_json(
                json!({"id": "unprocessable_entity", "message": "Region is not available"}),
            ))
            .mount(&server)
            .await;
        let spec = ServerSpec::new("gpu-0", "gpu-h100x1-80gb", "tor1", "train", "gpu", 0);
        let err = digitalocean.create(&spec).await.expect_err("422");
        assert!(err.is_capacity(), "{err:?}");
        assert!(
            matches!(&err, Error::Capacity { provider, offering, region, .. }
                if provider == "digitalocean" && offering == "gpu-h100x1-80gb" && region == "tor1"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn refused_credentials_are_authentication_errors() {
        let server = MockServer::start().await;
        let digitalocean = provider(&server, "revoked");
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(401).set_body_json(
                json!({"id": "unauthorized", "message": "Unable to authenticate you."}),
            ))
            .mount(&server)
            .await;
        let err = digitalocean.offerings().await.expect_err("401");
        assert!(
            matches!(&err, Error::Authentication { provider, .. } if provider == "digitalocean"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn sizes_follow_three_pages_of_links() {
        let server = MockServer::start().await;
        let digitalocean = provider(&server, &token("do-pages"));
        for page in 1..=3u32 {
            let links = if page < 3 {
                // The real API's own address: only the page number is taken from it.
                json!({"pages": {"next": format!("https://api.digitalocean.com/v2/sizes?page={}&per_page=200", page + 1)}})
            } else {
                json!({"pages": {}})
            };
            Mock::given(method("GET"))
                .and(path("/v2/sizes"))
                .and(query_param("page", page.to_string()))
                .respond_with(
                    ResponseTemplate::new(200)
                        .insert_header("ratelimit-limit", "5000")
                        .insert_header("ratelimit-remaining", "4000")
                        .insert_header("ratelimit-reset", unix_in(60))
                        .set_body_json(json!({
                            "sizes": [{
                                "slug": format!("size-{page}"), "memory": 2048, "vcpus": 2, "disk": 50,
                                "price_hourly": 0.02976, "price_monthly": 20, "regions": ["fra1", "ams3"],
                                "available": page != 2,
                                "gpu_info": if page == 3 { json!({"count": 1, "model": "nvidia_h100", "vram": {"amount": 80, "unit": "gib"}}) } else { json!(null) }
                            }],
                            "links": links, "meta": {"total": 3}
                        })),
                )
                .expect(1)
                .mount(&server)
                .await;
        }
        let offerings = digitalocean.offerings().await.expect("offerings");
        assert_eq!(offerings.len(), 6);
        let gpu = offerings
            .iter()
            .find(|o| o.instance_type == "size-3" && o.region == "ams3")
            .expect("size-3 in ams3");
        assert_eq!(
            (gpu.gpus, gpu.gpu_model.as_deref()),
            (1, Some("nvidia_h100"))
        );
        assert_eq!(gpu.hourly.to_string(), "0.02976");
        assert_eq!((gpu.cpu_millis, gpu.memory_bytes), (2000, 2 << 30));
        assert_eq!(gpu.currency, "USD");
        assert!(offerings.iter().any(|o| o.available == Some(false)));
        assert_eq!(digitalocean.http().budget().remaining(), Some(4000));
    }
}

/// Small stateful fakes of both APIs (servers made, listed by label or tag, deleted),
/// so that the whole conformance suite runs against each backend; Prism's mocks are
/// stateless (see `tests/prism.rs`).
mod conformance {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use serde_json::Value;
    use wiremock::matchers::any;
    use wiremock::{Request, Respond};

    #[derive(Clone, Default)]
    struct Fake {
        servers: Arc<Mutex<BTreeMap<u64, Value>>>,
        digitalocean: bool,
    }

    impl Fake {
        fn not_found(&self) -> ResponseTemplate {
            ResponseTemplate::new(404).set_body_json(if self.digitalocean {
                json!({"id": "not_found", "message": "The resource you requested could not be found."})
            } else {
                json!({"error": {"code": "not_found", "message": "server not found"}})
            })
        }

        fn matches(&self, server: &Value, query: &BTreeMap<String, String>) -> bool {
            if self.digitalocean {
                query.get("tag_name").is_none_or(|tag| {
                    server["tags"]
                        .as_array()
                        .is_some_and(|tags| tags.iter().any(|t| t == tag))
                })
            } else {
                query.get("label_selector").is_none_or(|expr| {
                    expr.split(',').all(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        server["labels"][k] == v
                    })
                })
            }
        }
    }

    impl Respond for Fake {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let path = request.url.path().trim_start_matches("/v2");
            let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
            let mut servers = self.servers.lock().expect("fake state");
            let (kind, list) = if self.digitalocean {
                ("droplet", "droplets")
            } else {
                ("server", "servers")
            };
            let id = path
                .strip_prefix(&format!("/{list}/"))
                .and_then(|id| id.parse::<u64>().ok());
            match (request.method.as_str(), path, id) {
                ("GET", "/server_types", _) => ResponseTemplate::new(200).set_body_json(json!({
                    "server_types": [{"name": "cx22", "cores": 2, "memory": 4.0, "disk": 40, "deprecated": false,
                        "prices": [{"location": "fsn1", "price_hourly": {"net": "0.0060", "gross": "0.0071"}}],
                        "locations": [{"name": "fsn1", "deprecation": null}]}],
                    "meta": {"pagination": {"page": 1, "next_page": null}}
                })),
                ("GET", "/sizes", _) => ResponseTemplate::new(200).set_body_json(json!({
                    "sizes": [{"slug": "s-2vcpu-4gb", "memory": 4096, "vcpus": 2, "disk": 80,
                        "price_hourly": 0.03571, "regions": ["fra1"], "available": true}],
                    "links": {}
                })),
                ("GET", p, None) if p == format!("/{list}") => {
                    let found: Vec<&Value> = servers.values().filter(|s| self.matches(s, &query)).collect();
                    ResponseTemplate::new(200).set_body_json(
                        json!({list: found, "meta": {"pagination": {"next_page": null}}, "links": {}}),
                    )
                }
                ("POST", p, None) if p == format!("/{list}") => {
                    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
                    let id = servers.keys().last().map_or(100, |k| k + 1);
                    let mut server = json!({
                        "id": id, "name": body["name"], "created": "2026-12-01T10:00:00Z",
                        "created_at": "2026-12-01T10:00:00Z",
                        "labels": body["labels"], "tags": body["tags"],
                        "server_type": {"name": body["server_type"]}, "location": {"name": body["location"]},
                        "size_slug": body["size"], "region": {"slug": body["region"]}
                    });
                    server["status"] = json!(if self.digitalocean { "active" } else { "running" });
                    servers.insert(id, server.clone());
                    // As the providers answer: not running yet.
                    server["status"] = json!(if self.digitalocean { "new" } else { "initializing" });
                    ResponseTemplate::new(if self.digitalocean { 202 } else { 201 })
                        .set_body_json(json!({kind: server}))
                }
                ("GET", _, Some(id)) => match servers.get(&id) {
                    Some(server) => ResponseTemplate::new(200).set_body_json(json!({kind: server})),
                    None => self.not_found(),
                },
                ("DELETE", _, Some(id)) => match servers.remove(&id) {
                    Some(_) if self.digitalocean => ResponseTemplate::new(204),
                    Some(_) => ResponseTemplate::new(200).set_body_json(json!({"action": {"id": 1}})),
                    None => self.not_found(),
                },
                _ => ResponseTemplate::new(400),
            }
        }
    }

    async fn serve(fake: Fake) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(any()).respond_with(fake).mount(&server).await;
        server
    }

    #[cfg(feature = "hetzner")]
    #[tokio::test]
    async fn hetzner_passes_the_conformance_suite() {
        use ops_provision::hetzner::HetznerProvider;
        let server = serve(Fake::default()).await;
        let hetzner = HetznerProvider::new(token("suite"))
            .base_url(server.uri())
            .http_config(fast())
            .poll_intervals(ops_provision::http::PollIntervals {
                first: Duration::from_millis(5),
                max: Duration::from_millis(20),
            });
        ops_provision::testkit::run_all(&hetzner, "cx22", "fsn1").await;
    }

    #[cfg(feature = "digitalocean")]
    #[tokio::test]
    async fn digitalocean_passes_the_conformance_suite() {
        use ops_provision::digitalocean::DigitalOceanProvider;
        let server = serve(Fake {
            digitalocean: true,
            ..Fake::default()
        })
        .await;
        let digitalocean = DigitalOceanProvider::new(token("suite"))
            .base_url(server.uri())
            .http_config(fast())
            .poll_intervals(ops_provision::http::PollIntervals {
                first: Duration::from_millis(5),
                max: Duration::from_millis(20),
            });
        ops_provision::testkit::run_all(&digitalocean, "s-2vcpu-4gb", "fra1").await;
        // The one droplet made is gone.
        let all = digitalocean
            .list(&ops_provision::Labels::new())
            .await
            .expect("list");
        assert!(all.is_empty(), "{all:?}");
    }
}
