//! The Hetzner and DigitalOcean backends against Prism mocks of the providers' own
//! OpenAPI specs (`tests/specs`): every request Ops sends must pass the spec's
//! validation. A test fails on any 422 from Prism (an `InvalidRequest` naming the spec
//! as its reason) and on any violation in Prism's log.
//!
//! Prism answers with the spec's canned examples and keeps no state: it does not echo
//! what was created (the server is always the example one) and a deleted server is still
//! there. So the stateful checks of the conformance suite
//! (`testkit::create_is_idempotent_and_labelled`: the same server for a retried create,
//! gone after delete) cannot run here; they run against the in-memory provider
//! (`tests/providers.rs`), and the backends' parts of them (a token found by `list`, a
//! 404 read as gone) against wiremock fakes (`tests/http.rs`). What runs here: the
//! suite's `offerings_name_the_provider`, and every call the backends make, checked
//! against the spec, with the answers read from the spec's examples.
#![cfg(any(feature = "hetzner", feature = "digitalocean"))]

use std::path::PathBuf;
use std::time::Duration;

use ops_provision::http::{HttpConfig, PollIntervals};
use ops_provision::{
    Error, FLEET, Labels, MANAGED_BY, MANAGED_BY_OPS, Provider, Result, ServerStatus,
};
use ops_testbed::prism::PrismServer;

fn spec(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/specs")
        .join(file)
}

fn fast() -> HttpConfig {
    HttpConfig::default()
        .max_attempts(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

fn quick_polls() -> PollIntervals {
    PollIntervals {
        first: Duration::from_millis(20),
        max: Duration::from_millis(50),
    }
}

/// The value of a call Prism must have accepted: a 422 (the request broke the spec)
/// fails the test with Prism's reasons.
#[track_caller]
fn accepted<T>(what: &str, result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e @ Error::InvalidRequest { .. }) => {
            panic!("{what}: the request broke the provider's spec: {e}")
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Prism logged no request that broke the spec.
#[track_caller]
fn assert_valid_so_far(prism: &PrismServer) {
    let violations = prism.violations();
    assert!(
        violations.is_empty(),
        "requests broke the spec:\n{}",
        violations.join("\n")
    );
}

fn selector(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(feature = "hetzner")]
#[tokio::test(flavor = "multi_thread")]
async fn hetzner_requests_follow_the_spec() {
    use ops_provision::ServerSpec;
    use ops_provision::hetzner::HetznerProvider;

    let Some(prism) = PrismServer::start(spec("hetzner.json")) else {
        return;
    };
    // The spec's paths have no `/v1`.
    let hetzner = HetznerProvider::new("test-token")
        .base_url(prism.url())
        .http_config(fast())
        .poll_intervals(quick_polls());

    // Offerings: GET /server_types (the example's `next_page` never moves on: one more
    // page, then the layer stops).
    ops_provision::testkit::offerings_name_the_provider(&hetzner).await;
    let offerings = accepted("offerings", hetzner.offerings().await);
    let cpx22 = offerings
        .iter()
        .find(|o| o.instance_type == "cpx22" && o.region == "fsn1")
        .expect("the example server type");
    assert_eq!(cpx22.hourly.to_string(), "1.0000");
    assert_eq!(cpx22.currency, "EUR");
    // Images at plan time: GET /images?name=… (the example lists one image).
    assert!(accepted(
        "has_image",
        hetzner.has_image("ubuntu-24.04").await
    ));
    assert_eq!((cpx22.cpu_millis, cpx22.memory_bytes), (2000, 4 << 30));
    // The example is no longer sold in fsn1 (`unavailable_after` 2023).
    assert_eq!(cpx22.available, Some(false));

    // list: GET /servers?label_selector=…&page=…&per_page=50. The example server is
    // being deleted, which counts as gone.
    let all = accepted("list everything", hetzner.list(&Labels::new()).await);
    assert!(all.is_empty(), "a deleting server was listed: {all:?}");
    let ours = accepted(
        "list Ops' servers",
        hetzner
            .list(&selector(&[
                (MANAGED_BY, MANAGED_BY_OPS),
                (FLEET, "my.fleet_1"),
            ]))
            .await,
    );
    assert!(ours.is_empty(), "{ours:?}");

    // SSH key: GET /ssh_keys?name=… finds another name, so POST /ssh_keys.
    let key = accepted(
        "ensure_ssh_key",
        hetzner
            .ensure_ssh_key(
                "ops-test",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@test",
            )
            .await,
    );
    assert_eq!(key, "42");

    // create: the token is looked up (the example is not the one), then POST /servers.
    let mut spec = ServerSpec::new("prism-0", "cpx22", "fsn1", "prism", "p", 0);
    spec.ssh_keys.push(key);
    let before = hetzner.http().requests_sent();
    let created = accepted("create", hetzner.create(&spec).await);
    assert_eq!(created.id, "42");
    assert_eq!(created.provider, "hetzner");
    assert!(hetzner.http().requests_sent() - before >= 2);
    assert_eq!(created.status, ServerStatus::Creating);
    assert_eq!(created.region, "fsn1");
    assert_eq!(created.instance_type, "cpx22");
    assert_eq!(created.address, Some("1.2.3.4".parse().expect("ip")));

    // get, wait_ready, delete: the example server is `deleting`, so gone.
    assert_eq!(accepted("get", hetzner.get("42").await), None);
    let before = hetzner.http().requests_sent();
    assert_eq!(
        accepted("get a non-number", hetzner.get("not-an-id").await),
        None
    );
    assert_eq!(
        hetzner.http().requests_sent(),
        before,
        "an id the API would refuse was sent"
    );
    match hetzner.wait_ready("42", Duration::from_secs(5)).await {
        Err(Error::NotFound { provider, id }) => {
            assert_eq!((provider.as_str(), id.as_str()), ("hetzner", "42"))
        }
        other => panic!("wait_ready: {other:?}"),
    }
    accepted("delete", hetzner.delete("42").await);
    accepted("delete a non-number", hetzner.delete("gone").await);
    assert_valid_so_far(&prism);

    // No credential: Prism refuses, and the error names the provider.
    let anonymous = HetznerProvider::new("").base_url(prism.url());
    let err = anonymous.offerings().await.expect_err("no token");
    assert!(
        matches!(&err, Error::Authentication { provider, .. } if provider == "hetzner"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("hetzner: authentication failed"),
        "{err}"
    );
    // The log check sees a refused request.
    assert!(
        !prism.violations().is_empty(),
        "Prism's log shows no refusal"
    );
    let broken = HetznerProvider::new("line\nbreak").base_url(prism.url());
    assert!(matches!(
        broken.offerings().await,
        Err(Error::Authentication { .. })
    ));
}

#[cfg(feature = "digitalocean")]
#[tokio::test(flavor = "multi_thread")]
async fn digitalocean_requests_follow_the_spec() {
    use ops_provision::ServerSpec;
    use ops_provision::digitalocean::{DigitalOceanProvider, label_tag};

    let Some(prism) = PrismServer::start(spec("digitalocean.yaml")) else {
        return;
    };
    let digitalocean = DigitalOceanProvider::new("test-token")
        .base_url(prism.url())
        .http_config(fast())
        .poll_intervals(quick_polls());

    // Offerings: GET /v2/sizes?page=…&per_page=200 (next links point at the real API:
    // only their page number is used).
    ops_provision::testkit::offerings_name_the_provider(&digitalocean).await;
    let offerings = accepted("offerings", digitalocean.offerings().await);
    // Images at plan time: GET /v2/images/ubuntu-24-04-x64 (a slug).
    assert!(accepted(
        "has_image",
        digitalocean.has_image("ubuntu-24.04").await
    ));
    // A name that is no slug is not sent at all.
    assert!(!accepted(
        "has_image",
        digitalocean.has_image("../v2/account").await
    ));
    let small = offerings
        .iter()
        .find(|o| o.instance_type == "s-1vcpu-1gb" && o.region == "fra1")
        .expect("the example size in fra1");
    assert_eq!(small.currency, "USD");
    assert_eq!((small.cpu_millis, small.memory_bytes), (1000, 1 << 30));
    assert_eq!(small.hourly.to_string(), "0.00743999984115362");
    assert_eq!(small.available, Some(true));
    // The example's rate-limit headers fill the shared budget.
    assert_eq!(digitalocean.http().budget().limit(), Some(5000));

    // list: GET /v2/droplets?tag_name=…; the example's three droplets, tagged `web` and
    // `env:prod` or `env:stage`. Prism ignores `tag_name`: the labels are checked here.
    let all = accepted("list everything", digitalocean.list(&Labels::new()).await);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0].id, "3164444");
    assert_eq!(all[0].labels, selector(&[("env", "prod")]));
    let prod = accepted(
        "list by tag",
        digitalocean.list(&selector(&[("env", "prod")])).await,
    );
    assert_eq!(prod.len(), 2, "{prod:?}");
    let fleet = selector(&[(MANAGED_BY, MANAGED_BY_OPS), (FLEET, "my.fleet_1")]);
    assert!(accepted("list Ops' fleet", digitalocean.list(&fleet).await).is_empty());
    assert_eq!(
        label_tag(FLEET, "my.fleet_1").ok().as_deref(),
        Some("ops_dfleet:my_dfleet__1")
    );

    // SSH keys: GET /v2/account/keys finds the example key by name; a new name is
    // uploaded with POST /v2/account/keys.
    let existing = accepted(
        "ensure an existing key",
        digitalocean
            .ensure_ssh_key("Other Public Key", "ssh-rsa AAAA")
            .await,
    );
    assert_eq!(existing, "289794");
    let uploaded = accepted(
        "ensure a new key",
        digitalocean
            .ensure_ssh_key(
                "ops-test",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@test",
            )
            .await,
    );
    assert_eq!(uploaded, "512189");

    // create: the token's tag is looked up, then POST /v2/droplets with the labels as
    // tags, the SSH keys by id, name and fingerprint, the image in DigitalOcean's words.
    let mut spec = ServerSpec::new("prism-0", "s-1vcpu-1gb", "nyc3", "prism", "p", 0);
    spec.ssh_keys = vec![
        uploaded,
        "Other Public Key".to_owned(),
        "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa".to_owned(),
    ];
    let created = accepted("create", digitalocean.create(&spec).await);
    assert_eq!(created.id, "3164444");
    assert_eq!(created.status, ServerStatus::Creating);

    // get, wait_ready (the example droplet is `active`), delete.
    let got = accepted("get", digitalocean.get("3164444").await).expect("the example");
    assert_eq!(got.address, Some("192.241.165.154".parse().expect("ip")));
    assert_eq!(got.region, "nyc3");
    let ready = accepted(
        "wait_ready",
        digitalocean
            .wait_ready("3164444", Duration::from_secs(5))
            .await,
    );
    assert_eq!(ready.status, ServerStatus::Running);
    assert_eq!(
        accepted("get a non-number", digitalocean.get("x").await),
        None
    );
    accepted("delete", digitalocean.delete("3164444").await);
    accepted("delete a non-number", digitalocean.delete("0").await);

    // The spec's own error answers, chosen with Prism's `Prefer: code=…`: 429 and 500
    // are retried, then transient; 404 reads as gone.
    let answering = |code: &str| {
        DigitalOceanProvider::new("test-token")
            .base_url(prism.url())
            .http_config(fast().header("Prefer", format!("code={code}")))
    };
    for code in ["429", "500"] {
        let failing = answering(code);
        let err = failing.offerings().await.expect_err(code);
        assert!(
            matches!(&err, Error::Transient { provider, .. } if provider == "digitalocean"),
            "{code}: {err:?}"
        );
        assert_eq!(failing.http().requests_sent(), 2, "{code}: tries");
    }
    let gone = answering("404");
    assert_eq!(accepted("get, 404", gone.get("3164444").await), None);
    accepted("delete, 404", gone.delete("3164444").await);
    assert_valid_so_far(&prism);

    // No credential: the spec's 401, naming the provider.
    let anonymous = DigitalOceanProvider::new("").base_url(prism.url());
    let err = anonymous.offerings().await.expect_err("no token");
    assert!(
        matches!(&err, Error::Authentication { provider, .. } if provider == "digitalocean"),
        "{err:?}"
    );
    assert!(
        !prism.violations().is_empty(),
        "Prism's log shows no refusal"
    );
}
