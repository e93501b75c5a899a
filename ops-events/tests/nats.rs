//! NatsBus against a real nats-server: the conformance suite, deduplication, connect
//! errors, a server restart under load, and the outbox relay through an outage.
//!
//! Shared server: `$OPS_TEST_NATS_URL`; fault tests start a private `nats-server`.
//! Without them the tests are skipped (they fail with `OPS_REQUIRE_SERVICES=1`).
#![cfg(feature = "nats")]
// The fault tests print what they saw (redeliveries, slowest publish).
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_core::EventId;
use ops_events::memory::InMemoryBus;
use ops_events::nats::{NatsBus, NatsBusConfig, NatsStorage};
use ops_events::relay::{Relay, RelayConfig};
use ops_events::{Delivery, Error, EventBus, SubscribeOptions, testkit};
use ops_testbed::NatsServer;
use tokio::time::Instant;

/// A stream and subject prefix no other test uses.
fn fresh_config() -> NatsBusConfig {
    let name = ops_testbed::unique_name("ops_test");
    NatsBusConfig::default()
        .stream(name.clone())
        .subject_prefix(name)
        .storage(NatsStorage::Memory)
}

/// Deletes the test's streams from the shared server.
async fn delete_streams(url: &str, names: &[String]) {
    let Ok(client) = async_nats::connect(url).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    for name in names {
        let _ = js.delete_stream(name).await;
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<EventId> {
    deliveries.iter().map(|d| d.event.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_conforms() {
    let Some(url) = ops_testbed::nats_url() else {
        return;
    };
    let streams = Mutex::new(Vec::new());
    testkit::bus::run_all(|| async {
        let config = fresh_config();
        streams.lock().unwrap().push(config.stream.clone());
        NatsBus::connect_with(&url, config).await.unwrap()
    })
    .await;
    delete_streams(&url, &streams.into_inner().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_is_durable() {
    let Some(url) = ops_testbed::nats_url() else {
        return;
    };
    let config = fresh_config().storage(NatsStorage::File);
    testkit::bus::run_durable(|| async {
        NatsBus::connect_with(&url, config.clone()).await.unwrap()
    })
    .await;
    delete_streams(&url, &[config.stream]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_publish_is_delivered_once() {
    let Some(url) = ops_testbed::nats_url() else {
        return;
    };
    let config = fresh_config();
    let first = NatsBus::connect_with(&url, config.clone()).await.unwrap();
    // A second process publishing the same events (an outbox relayed twice).
    let second = NatsBus::connect_with(&url, config.clone()).await.unwrap();
    first
        .subscribe("once", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = testkit::events("dup", 3);
    first.publish(&evs).await.unwrap();
    second.publish(&evs).await.unwrap();
    first
        .publish(&[evs[2].clone(), evs[2].clone()])
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(
            first
                .fetch("once", 10, Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        ids(&got),
        evs.iter().map(|e| e.id).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let more = first
        .fetch("once", 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(more.is_empty(), "duplicates delivered: {more:?}");
    delete_streams(&url, &[config.stream]).await;
}

#[tokio::test]
async fn connect_errors_name_the_url() {
    let port = ops_testbed::free_port();
    let url = format!("nats://bob:s3cret@127.0.0.1:{port}");
    let config = NatsBusConfig::default().connect_timeout(Duration::from_secs(2));
    let e = NatsBus::connect_with(&url, config).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(
        msg.contains(&format!("nats://bob:***@127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "password shown: {msg}");

    let e = NatsBus::connect("http://127.0.0.1:4222").await.unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("http"), "{e}");

    let bad = NatsBusConfig::default().stream("has.dot");
    let e = NatsBus::connect_with("nats://127.0.0.1:4222", bad)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
}

#[tokio::test]
async fn a_stream_capturing_other_subjects_is_refused() {
    let Some(url) = ops_testbed::nats_url() else {
        return;
    };
    let config = fresh_config();
    NatsBus::connect_with(&url, config.clone()).await.unwrap();
    let other = config.clone().subject_prefix("elsewhere.events");
    let e = NatsBus::connect_with(&url, other).await.unwrap_err();
    assert!(matches!(e, Error::Broker { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("elsewhere.events"), "{e}");
    delete_streams(&url, &[config.stream]).await;
}

/// Stops, then starts the private server again, off the async threads.
async fn bounce(mut server: NatsServer, down_for: Duration) -> NatsServer {
    tokio::task::spawn_blocking(move || {
        server.stop();
        std::thread::sleep(down_for);
        server.start_again();
        server
    })
    .await
    .unwrap()
}

/// Fetches (and acks) until `want` distinct events were seen; tolerates errors while
/// the server is away. Returns the number of deliveries (duplicates included).
async fn consume(
    bus: &NatsBus,
    sub: &str,
    seen: &mut HashSet<EventId>,
    want: usize,
    patience: Duration,
) -> usize {
    let deadline = Instant::now() + patience;
    let mut deliveries = 0;
    while seen.len() < want && Instant::now() < deadline {
        match bus.fetch(sub, 200, Duration::from_millis(500)).await {
            Ok(batch) => {
                deliveries += batch.len();
                let tags: Vec<_> = batch.iter().map(|d| d.tag).collect();
                if bus.ack(sub, &tags).await.is_ok() {
                    seen.extend(batch.iter().map(|d| d.event.id));
                }
            }
            Err(e) => {
                assert!(e.is_retryable(), "fetch: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_loses_nothing() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let config = NatsBusConfig::default()
        .stream("RESTART")
        .subject_prefix("restart")
        .request_timeout(Duration::from_secs(2))
        .publish_timeout(Duration::from_secs(60));
    let bus = NatsBus::connect_with(&url, config.clone()).await.unwrap();
    let options = SubscribeOptions::default().ack_wait(Duration::from_secs(3));
    bus.subscribe("resumer", options.clone()).await.unwrap();

    const PUBLISHERS: usize = 3;
    const BATCHES: usize = 30;
    const BATCH: usize = 20;
    let evs = testkit::events("restart", PUBLISHERS * BATCHES * BATCH);
    let all: HashSet<EventId> = evs.iter().map(|e| e.id).collect();
    let evs = Arc::new(evs);
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (bus, evs) = (bus.clone(), evs.clone());
        publishers.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mine = &evs[p * BATCHES * BATCH..(p + 1) * BATCHES * BATCH];
            for chunk in mine.chunks(BATCH) {
                let started = Instant::now();
                bus.publish(chunk).await?;
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, Error>(slowest)
        }));
    }

    // Consume a part, then kill the server while publishers are publishing.
    let mut seen = HashSet::new();
    let mut deliveries = consume(&bus, "resumer", &mut seen, 150, Duration::from_secs(20)).await;
    assert!(seen.len() >= 150, "only {} before the restart", seen.len());
    let server = bounce(server, Duration::from_millis(700)).await;

    let mut slowest = Duration::ZERO;
    for p in publishers {
        let s = p
            .await
            .unwrap()
            .expect("a publish failed across the restart");
        slowest = slowest.max(s);
    }
    assert!(
        slowest >= Duration::from_millis(300),
        "no publish call waited for the server ({slowest:?}): the restart missed them"
    );

    // A new process resumes the durable subscription where it stopped.
    let resumed = NatsBus::connect_with(&url, config).await.unwrap();
    resumed.subscribe("resumer", options).await.unwrap();
    deliveries += consume(
        &resumed,
        "resumer",
        &mut seen,
        all.len(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(seen, all, "events lost across the restart");
    assert!(deliveries >= all.len());
    eprintln!(
        "restart: {} events, {} deliveries ({} redelivered), slowest publish {slowest:?}",
        all.len(),
        deliveries,
        deliveries - all.len()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_outbox_to_nats_through_an_outage() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let config = NatsBusConfig::default()
        .stream("RELAYED")
        .subject_prefix("relayed")
        .request_timeout(Duration::from_secs(1))
        .publish_timeout(Duration::from_secs(2));
    let target = NatsBus::connect_with(&url, config).await.unwrap();
    target
        .subscribe("check", SubscribeOptions::default())
        .await
        .unwrap();
    let outbox = InMemoryBus::new();
    let running = Relay::new(
        Arc::new(outbox.clone()),
        "to-nats",
        Arc::new(target.clone()),
    )
    .config(
        RelayConfig::default()
            .batch_size(50)
            .fetch_wait(Duration::from_millis(100))
            .retry(Duration::from_millis(20), Duration::from_millis(300)),
    )
    .start()
    .await
    .unwrap();

    let evs = testkit::events("relay", 600);
    outbox.publish(&evs[..300]).await.unwrap();
    let until = |want: u64, what: &'static str| {
        let running = &running;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while running.stats().relayed < want {
                assert!(Instant::now() < deadline, "{what}: {:?}", running.stats());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until(300, "before the outage").await;

    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.stop();
        server
    })
    .await
    .unwrap();
    outbox.publish(&evs[300..]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.stats().publish_failures == 0 {
        assert!(Instant::now() < deadline, "the outage was not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running.stats().relayed < 600);
    server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .unwrap();
    until(600, "after the outage").await;
    let stats = running.shutdown().await;
    assert_eq!(outbox.pending("to-nats").await.unwrap(), 0);

    let mut seen = HashSet::new();
    let deliveries = consume(&target, "check", &mut seen, 600, Duration::from_secs(30)).await;
    let all: HashSet<EventId> = evs.iter().map(|e| e.id).collect();
    assert_eq!(seen, all, "events lost by the relay");
    assert_eq!(deliveries, 600, "duplicates reached the target");
    eprintln!("relay: {stats:?}");
    drop(server);
}
