//! Webhook functions against a real HTTP receiver (axum on 127.0.0.1:0).
#![cfg(feature = "webhook")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ops_core::Event;
use ops_events::memory::InMemoryBus;
use ops_events::webhook::{WebhookFunction, verify_signature};
use ops_events::{Dispatcher, DispatcherConfig, EventBus, Function, RetryPolicy, Trigger};

const SECRET: &str = "whsec-test";

/// A receiver whose answer can change during the test.
#[derive(Clone, Default)]
struct Receiver {
    /// Status to answer (0: 200).
    status: Arc<AtomicU16>,
    /// Milliseconds to sleep before answering.
    delay_ms: Arc<AtomicU64>,
    /// Events accepted with a valid signature.
    accepted: Arc<Mutex<Vec<Event>>>,
    /// Requests seen, accepted or not.
    requests: Arc<AtomicU64>,
}

async fn handle(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    r.requests.fetch_add(1, Ordering::SeqCst);
    let delay = r.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some("application/cloudevents+json") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{content_type:?}"),
        );
    }
    let signature = headers
        .get("x-ops-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(e) = verify_signature(
        SECRET.as_bytes(),
        signature,
        &body,
        Duration::from_secs(300),
    ) {
        return (StatusCode::UNAUTHORIZED, e.to_string());
    }
    let status = r.status.load(Ordering::SeqCst);
    if status != 0 {
        return (
            StatusCode::from_u16(status).unwrap(),
            "configured failure".into(),
        );
    }
    let event = match Event::from_json_bytes(&body) {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()),
    };
    let id_header = headers.get("x-ops-event-id").and_then(|v| v.to_str().ok());
    assert_eq!(id_header, Some(event.id.to_string().as_str()));
    r.accepted.lock().unwrap().push(event);
    (StatusCode::NO_CONTENT, String::new())
}

async fn start_receiver() -> (Receiver, SocketAddr) {
    let receiver = Receiver::default();
    let app = Router::new()
        .route("/hook", post(handle))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (receiver, addr)
}

fn hook(addr: SocketAddr, timeout: Duration) -> WebhookFunction {
    WebhookFunction::builder("acme-hook", format!("http://{addr}/hook"))
        .secret(SECRET)
        .timeout(timeout)
        .build()
        .unwrap()
}

fn dispatcher(bus: &InMemoryBus, hook: WebhookFunction) -> Dispatcher {
    Dispatcher::builder(bus.clone())
        .config(
            DispatcherConfig::default()
                .fetch_wait(Duration::from_millis(200))
                .call_timeout(None)
                .retry(
                    RetryPolicy::default()
                        .initial(Duration::from_millis(10))
                        .max(Duration::from_millis(50))
                        .max_attempts(3),
                ),
        )
        .route(Trigger::on("ops.task.*"), hook)
        .build()
        .unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn event() -> Event {
    Event::builder("ops.task.succeeded", "ops://test")
        .subject("t1")
        .tenant("acme")
        .json(serde_json::json!({ "exit_code": 0 }))
        .build()
}

#[tokio::test]
async fn delivers_signed_cloudevents() {
    let (receiver, addr) = start_receiver().await;
    let bus = InMemoryBus::new();
    let d = dispatcher(&bus, hook(addr, Duration::from_secs(5)));
    let running = d.start().await.unwrap();
    let e = event();
    bus.publish(std::slice::from_ref(&e)).await.unwrap();
    eventually("delivery", || d.stats().delivered == 1).await;
    running.shutdown().await;
    assert_eq!(
        *receiver.accepted.lock().unwrap(),
        vec![e],
        "the receiver verified and parsed it"
    );
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_errors_are_retried_dead_lettered_and_replayable() {
    let (receiver, addr) = start_receiver().await;
    receiver.status.store(500, Ordering::SeqCst);
    let bus = InMemoryBus::new();
    let d = dispatcher(&bus, hook(addr, Duration::from_secs(5)));
    let running = d.start().await.unwrap();
    let e = event();
    bus.publish(std::slice::from_ref(&e)).await.unwrap();
    eventually("dead letter", || d.stats().dead_lettered == 1).await;
    assert_eq!(
        receiver.requests.load(Ordering::SeqCst),
        3,
        "max_attempts calls"
    );
    assert_eq!(d.stats().retried, 2);
    let letter = d
        .dead_letters()
        .get("acme-hook", e.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.event, e, "event kept");
    assert!(!letter.permanent);
    assert!(letter.error.contains("500"), "{}", letter.error);

    // The receiver is fixed: replay delivers it and clears the letter.
    receiver.status.store(0, Ordering::SeqCst);
    d.replay("acme-hook", e.id).await.unwrap();
    assert_eq!(*receiver.accepted.lock().unwrap(), vec![e]);
    assert_eq!(d.dead_letters().count(None).await.unwrap(), 0);
    running.shutdown().await;
}

#[tokio::test]
async fn slow_receivers_time_out_then_dead_letter() {
    let (receiver, addr) = start_receiver().await;
    receiver.delay_ms.store(2_000, Ordering::SeqCst);
    let bus = InMemoryBus::new();
    let d = dispatcher(&bus, hook(addr, Duration::from_millis(100)));
    let running = d.start().await.unwrap();
    let e = event();
    bus.publish(std::slice::from_ref(&e)).await.unwrap();
    eventually("dead letter", || d.stats().dead_lettered == 1).await;
    running.shutdown().await;
    assert_eq!(d.stats().retried, 2, "timeouts are retried");
    let letter = d
        .dead_letters()
        .get("acme-hook", e.id)
        .await
        .unwrap()
        .unwrap();
    assert!(letter.error.contains("timed out"), "{}", letter.error);
    assert_eq!(letter.attempts, 3);
    assert!(receiver.accepted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_errors_dead_letter_at_once() {
    let (receiver, addr) = start_receiver().await;
    receiver.status.store(422, Ordering::SeqCst);
    let bus = InMemoryBus::new();
    let d = dispatcher(&bus, hook(addr, Duration::from_secs(5)));
    let running = d.start().await.unwrap();
    let e = event();
    bus.publish(std::slice::from_ref(&e)).await.unwrap();
    eventually("dead letter", || d.stats().dead_lettered == 1).await;
    running.shutdown().await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 1, "no retry");
    let letter = d
        .dead_letters()
        .get("acme-hook", e.id)
        .await
        .unwrap()
        .unwrap();
    assert!(letter.permanent);
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.event, e);
}

#[tokio::test]
async fn statuses_and_transport_errors_are_classified() {
    let (receiver, addr) = start_receiver().await;
    let f = hook(addr, Duration::from_secs(5));
    let e = event();
    for (status, retryable) in [
        (500, true),
        (503, true),
        (429, true),
        (408, true),
        (400, false),
        (404, false),
        (410, false),
    ] {
        receiver.status.store(status, Ordering::SeqCst);
        let err = f.call(&e).await.unwrap_err();
        assert_eq!(err.is_retryable(), retryable, "status {status}: {err}");
        assert!(err.message().contains(&status.to_string()), "{err}");
    }
    receiver.status.store(0, Ordering::SeqCst);
    f.call(&e).await.unwrap();

    // A wrong secret: the receiver answers 401, a permanent failure.
    let wrong = WebhookFunction::builder("wrong", format!("http://{addr}/hook"))
        .secret("not-the-secret")
        .build()
        .unwrap();
    let err = wrong.call(&e).await.unwrap_err();
    assert!(
        !err.is_retryable() && err.message().contains("401"),
        "{err}"
    );

    // Nobody listening: a retryable connection error.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let refused = hook(closed, Duration::from_secs(2))
        .call(&e)
        .await
        .unwrap_err();
    assert!(refused.is_retryable(), "{refused}");
}
