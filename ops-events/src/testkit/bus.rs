//! The conformance suite every [`EventBus`] backend runs.
//!
//! ```no_run
//! # async fn demo() {
//! use ops_events::memory::InMemoryBus;
//!
//! ops_events::testkit::bus::run_all(|| async { InMemoryBus::new() }).await;
//! # }
//! ```
//!
//! Durable backends also run [`run_durable`] with a closure that opens the *same*
//! store each time it is called, as a restarted process would. Each check is a public
//! function too, so a backend can run them one by one; a failed check panics with a
//! message that starts with its name.

use std::future::Future;
use std::time::Duration;

use ops_core::{Event, EventId};

use crate::Error;
use crate::bus::{Delivery, EventBus, StartFrom, SubscribeOptions};

/// A short ack wait, so that redelivery checks stay fast.
const SHORT_ACK_WAIT: Duration = Duration::from_millis(200);
/// The longest a check waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(5);

/// `n` events of type `ops.test.<tag>`, subjects `0..n`.
pub fn events(tag: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::builder(format!("ops.test.{tag}"), "ops://testkit")
                .subject(i.to_string())
                .json(serde_json::json!({ "i": i }))
                .build()
        })
        .collect()
}

fn ids(deliveries: &[Delivery]) -> Vec<EventId> {
    deliveries.iter().map(|d| d.event.id).collect()
}

fn event_ids(events: &[Event]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn opts(ack_wait: Duration) -> SubscribeOptions {
    SubscribeOptions::default().ack_wait(ack_wait)
}

/// Fetches until `want` deliveries arrived (or [`PATIENCE`] ran out).
async fn fetch_n(bus: &dyn EventBus, sub: &str, want: usize) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        got.extend(bus.fetch(sub, want - got.len(), left).await.expect("fetch"));
    }
    got
}

/// Runs every check, each on a fresh bus from `make`.
pub async fn run_all<B, F, Fut>(make: F)
where
    B: EventBus,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    macro_rules! check {
        ($name:ident) => {{
            tracing::info!(check = stringify!($name), "bus conformance");
            $name(&make().await).await;
        }};
    }
    check!(publish_fetch_order);
    check!(ack_removes);
    check!(backlog_counts_what_is_not_acknowledged);
    check!(oldest_unacked_is_the_lag);
    check!(unacked_redelivered_after_ack_wait);
    check!(nack_redelivers_after_delay);
    check!(independent_subscriptions);
    check!(start_new_skips_history);
    check!(duplicate_event_id_deduped);
    check!(fetch_waits_and_wakes_on_publish);
    check!(resubscribe_resumes);
    check!(competing_consumers_share_work);
    check!(unknown_subscription_is_an_error);
}

/// Runs the checks for durable backends; `open` must open the same store each time.
pub async fn run_durable<B, F, Fut>(open: F)
where
    B: EventBus,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    tracing::info!(check = "durable_resume_after_reopen", "bus conformance");
    durable_resume_after_reopen(open).await;
}

/// Events come out in publish order, in batches of at most `max`, first attempt 1.
pub async fn publish_fetch_order(bus: &dyn EventBus) {
    bus.subscribe("order", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = events("order", 10);
    bus.publish(&evs[..6]).await.unwrap();
    bus.publish(&evs[6..]).await.unwrap();
    let first = bus.fetch("order", 4, Duration::ZERO).await.unwrap();
    assert_eq!(
        ids(&first),
        event_ids(&evs[..4]),
        "publish_fetch_order: first batch"
    );
    let rest = fetch_n(bus, "order", 6).await;
    assert_eq!(
        ids(&rest),
        event_ids(&evs[4..]),
        "publish_fetch_order: second batch"
    );
    let all: Vec<_> = first.iter().chain(&rest).collect();
    assert!(
        all.iter().all(|d| d.attempt == 1),
        "publish_fetch_order: attempt 1"
    );
    assert!(
        all.windows(2).all(|w| w[0].tag < w[1].tag),
        "publish_fetch_order: tags increase"
    );
    assert_eq!(*all[0].event, evs[0], "publish_fetch_order: event intact");
    assert!(
        bus.fetch("order", 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "publish_fetch_order: nothing more"
    );
}

/// Acknowledged deliveries are never delivered again.
pub async fn ack_removes(bus: &dyn EventBus) {
    bus.subscribe("acks", opts(SHORT_ACK_WAIT)).await.unwrap();
    bus.publish(&events("acks", 3)).await.unwrap();
    let got = fetch_n(bus, "acks", 3).await;
    assert_eq!(got.len(), 3, "ack_removes: fetched");
    assert_eq!(
        bus.pending("acks").await.unwrap(),
        3,
        "ack_removes: pending before ack"
    );
    let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
    bus.ack("acks", &tags).await.unwrap();
    bus.ack("acks", &tags).await.unwrap(); // twice is fine
    assert_eq!(
        bus.pending("acks").await.unwrap(),
        0,
        "ack_removes: pending after ack"
    );
    let again = bus.fetch("acks", 10, SHORT_ACK_WAIT * 2).await.unwrap();
    assert!(
        again.is_empty(),
        "ack_removes: acked events came back: {again:?}"
    );
}

/// The backlog is what was published and not acknowledged yet: fetched or not.
pub async fn backlog_counts_what_is_not_acknowledged(bus: &dyn EventBus) {
    let name = "backlog";
    bus.subscribe(name, opts(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(bus.backlog(name).await.unwrap(), 0, "backlog: starts empty");
    bus.publish(&events(name, 3)).await.unwrap();
    assert_eq!(bus.backlog(name).await.unwrap(), 3, "backlog: published");
    let got = fetch_n(bus, name, 2).await;
    assert_eq!(got.len(), 2, "backlog: fetched");
    assert_eq!(
        bus.backlog(name).await.unwrap(),
        3,
        "backlog: fetched but not acknowledged still counts"
    );
    let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
    bus.ack(name, &tags).await.unwrap();
    assert_eq!(bus.backlog(name).await.unwrap(), 1, "backlog: after ack");
    let rest = fetch_n(bus, name, 1).await;
    bus.ack(name, &[rest[0].tag]).await.unwrap();
    assert_eq!(bus.backlog(name).await.unwrap(), 0, "backlog: caught up");
    assert!(
        matches!(
            bus.backlog("nobody").await,
            Err(Error::UnknownSubscription { .. })
        ),
        "backlog: unknown subscription"
    );
}

/// `oldest_unacked` is `None` when caught up, else the time of the oldest event not
/// acknowledged (fetched or not).
pub async fn oldest_unacked_is_the_lag(bus: &dyn EventBus) {
    let name = "lag";
    bus.subscribe(name, opts(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(
        bus.oldest_unacked(name).await.unwrap(),
        None,
        "lag: starts caught up"
    );
    let mut first = events(name, 2);
    let old = chrono::Utc::now() - chrono::Duration::seconds(120);
    first[0].time = old;
    bus.publish(&first).await.unwrap();
    let oldest = bus
        .oldest_unacked(name)
        .await
        .unwrap()
        .expect("lag: a backlog has an age");
    let age = chrono::Utc::now() - oldest;
    assert!(
        age >= chrono::Duration::seconds(-5) && age <= chrono::Duration::seconds(130),
        "lag: age of the oldest unacknowledged event is {age}"
    );
    let got = fetch_n(bus, name, 2).await;
    assert_eq!(got.len(), 2, "lag: fetched");
    assert!(
        bus.oldest_unacked(name).await.unwrap().is_some(),
        "lag: fetched but not acknowledged still counts"
    );
    let tags: Vec<_> = got.iter().map(|d| d.tag).collect();
    bus.ack(name, &tags).await.unwrap();
    assert_eq!(
        bus.oldest_unacked(name).await.unwrap(),
        None,
        "lag: caught up after ack"
    );
    assert!(
        matches!(
            bus.oldest_unacked("nobody").await,
            Err(Error::UnknownSubscription { .. })
        ),
        "lag: unknown subscription"
    );
}

/// A delivery not acknowledged within `ack_wait` comes again, attempt 2, same tag.
pub async fn unacked_redelivered_after_ack_wait(bus: &dyn EventBus) {
    bus.subscribe("redeliver", opts(SHORT_ACK_WAIT))
        .await
        .unwrap();
    let evs = events("redeliver", 2);
    bus.publish(&evs).await.unwrap();
    let got = fetch_n(bus, "redeliver", 2).await;
    assert_eq!(got.len(), 2, "unacked_redelivered_after_ack_wait: fetched");
    bus.ack("redeliver", &[got[0].tag]).await.unwrap();
    let again = fetch_n(bus, "redeliver", 1).await;
    assert_eq!(
        again.len(),
        1,
        "unacked_redelivered_after_ack_wait: no redelivery"
    );
    assert_eq!(
        again[0].event.id, evs[1].id,
        "unacked_redelivered_after_ack_wait: which"
    );
    assert_eq!(
        again[0].attempt, 2,
        "unacked_redelivered_after_ack_wait: attempt"
    );
    assert_eq!(
        again[0].tag, got[1].tag,
        "unacked_redelivered_after_ack_wait: tag"
    );
    bus.ack("redeliver", &[again[0].tag]).await.unwrap();
    assert_eq!(bus.pending("redeliver").await.unwrap(), 0);
}

/// `nack` makes a delivery due again after the given delay.
pub async fn nack_redelivers_after_delay(bus: &dyn EventBus) {
    bus.subscribe("nack", opts(Duration::from_secs(60)))
        .await
        .unwrap();
    let evs = events("nack", 1);
    bus.publish(&evs).await.unwrap();
    let got = fetch_n(bus, "nack", 1).await;
    bus.nack("nack", &[got[0].tag], Duration::ZERO)
        .await
        .unwrap();
    let again = bus.fetch("nack", 10, PATIENCE).await.unwrap();
    assert_eq!(
        ids(&again),
        event_ids(&evs),
        "nack_redelivers_after_delay: immediate"
    );
    assert_eq!(again[0].attempt, 2, "nack_redelivers_after_delay: attempt");
    bus.nack("nack", &[again[0].tag], Duration::from_millis(300))
        .await
        .unwrap();
    let early = bus.fetch("nack", 10, Duration::ZERO).await.unwrap();
    assert!(
        early.is_empty(),
        "nack_redelivers_after_delay: came back before the delay"
    );
    let later = fetch_n(bus, "nack", 1).await;
    assert_eq!(
        ids(&later),
        event_ids(&evs),
        "nack_redelivers_after_delay: after delay"
    );
    assert_eq!(
        later[0].attempt, 3,
        "nack_redelivers_after_delay: attempt 3"
    );
}

/// Each subscription sees every event, whatever the others do.
pub async fn independent_subscriptions(bus: &dyn EventBus) {
    bus.subscribe("left", SubscribeOptions::default())
        .await
        .unwrap();
    bus.subscribe("right", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = events("indep", 3);
    bus.publish(&evs).await.unwrap();
    let left = fetch_n(bus, "left", 3).await;
    bus.ack("left", &left.iter().map(|d| d.tag).collect::<Vec<_>>())
        .await
        .unwrap();
    let right = fetch_n(bus, "right", 3).await;
    assert_eq!(
        ids(&left),
        event_ids(&evs),
        "independent_subscriptions: left"
    );
    assert_eq!(
        ids(&right),
        event_ids(&evs),
        "independent_subscriptions: right"
    );
    assert_eq!(bus.pending("right").await.unwrap(), 3);
}

/// `StartFrom::New` skips what was published before the subscription existed.
pub async fn start_new_skips_history(bus: &dyn EventBus) {
    let old = events("history", 2);
    bus.publish(&old).await.unwrap();
    bus.subscribe("fresh", SubscribeOptions::default().start(StartFrom::New))
        .await
        .unwrap();
    bus.subscribe(
        "all",
        SubscribeOptions::default().start(StartFrom::Beginning),
    )
    .await
    .unwrap();
    let new = events("history", 1);
    bus.publish(&new).await.unwrap();
    let got = fetch_n(bus, "fresh", 1).await;
    assert_eq!(
        ids(&got),
        event_ids(&new),
        "start_new_skips_history: new only"
    );
    let all = fetch_n(bus, "all", 3).await;
    let mut want = event_ids(&old);
    want.extend(event_ids(&new));
    assert_eq!(
        ids(&all),
        want,
        "start_new_skips_history: beginning sees all"
    );
}

/// Publishing an event id again (in one batch or later) stores it once.
pub async fn duplicate_event_id_deduped(bus: &dyn EventBus) {
    bus.subscribe("dedupe", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = events("dedupe", 2);
    bus.publish(&evs[..1]).await.unwrap();
    bus.publish(&[evs[0].clone(), evs[1].clone(), evs[1].clone()])
        .await
        .unwrap();
    bus.publish(&evs).await.unwrap();
    let got = fetch_n(bus, "dedupe", 2).await;
    assert_eq!(
        ids(&got),
        event_ids(&evs),
        "duplicate_event_id_deduped: once each"
    );
    let more = bus
        .fetch("dedupe", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(
        more.is_empty(),
        "duplicate_event_id_deduped: duplicates delivered: {more:?}"
    );
}

/// An idle fetch waits (returning nothing when the wait ends) and wakes up as soon as
/// an event is published.
pub async fn fetch_waits_and_wakes_on_publish(bus: &dyn EventBus) {
    bus.subscribe("wake", SubscribeOptions::default())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let none = bus
        .fetch("wake", 10, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(none.is_empty(), "fetch_waits_and_wakes_on_publish: empty");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "fetch_waits_and_wakes_on_publish: returned without waiting"
    );
    let evs = events("wake", 1);
    let started = std::time::Instant::now();
    let (got, published) = tokio::join!(bus.fetch("wake", 10, Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.publish(&evs).await
    });
    published.unwrap();
    assert_eq!(
        ids(&got.unwrap()),
        event_ids(&evs),
        "fetch_waits_and_wakes_on_publish"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fetch_waits_and_wakes_on_publish: not woken by publish"
    );
}

/// Subscribing again to an existing name resumes it (nothing replayed from the start).
pub async fn resubscribe_resumes(bus: &dyn EventBus) {
    bus.subscribe("resume", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = events("resume", 4);
    bus.publish(&evs).await.unwrap();
    let first = fetch_n(bus, "resume", 2).await;
    bus.ack("resume", &first.iter().map(|d| d.tag).collect::<Vec<_>>())
        .await
        .unwrap();
    bus.subscribe("resume", SubscribeOptions::default())
        .await
        .unwrap();
    let rest = fetch_n(bus, "resume", 2).await;
    assert_eq!(ids(&rest), event_ids(&evs[2..]), "resubscribe_resumes");
}

/// Two consumers of one subscription share the events: each is delivered once.
pub async fn competing_consumers_share_work(bus: &dyn EventBus) {
    bus.subscribe("shared", SubscribeOptions::default())
        .await
        .unwrap();
    let evs = events("shared", 40);
    bus.publish(&evs).await.unwrap();
    let (a, b) = tokio::join!(
        bus.fetch("shared", 25, Duration::ZERO),
        bus.fetch("shared", 25, Duration::ZERO)
    );
    let mut got = ids(&a.unwrap());
    got.extend(ids(&b.unwrap()));
    got.extend(ids(&fetch_n(bus, "shared", 40 - got.len()).await));
    got.sort();
    let mut want = event_ids(&evs);
    want.sort();
    assert_eq!(got, want, "competing_consumers_share_work: each event once");
}

/// Using a subscription that does not exist is a typed error; so is a bad name.
pub async fn unknown_subscription_is_an_error(bus: &dyn EventBus) {
    let is_unknown = |r: Result<(), Error>| matches!(r, Err(Error::UnknownSubscription { .. }));
    assert!(
        is_unknown(bus.fetch("nope", 1, Duration::ZERO).await.map(|_| ())),
        "unknown_subscription_is_an_error: fetch"
    );
    assert!(
        is_unknown(bus.ack("nope", &[]).await),
        "unknown_subscription_is_an_error: ack"
    );
    assert!(
        is_unknown(
            bus.nack("nope", &[crate::DeliveryTag(1)], Duration::ZERO)
                .await
        ),
        "unknown_subscription_is_an_error: nack"
    );
    assert!(is_unknown(bus.pending("nope").await.map(|_| ())));
    let bad = bus
        .subscribe("no spaces", SubscribeOptions::default())
        .await;
    assert!(
        matches!(bad, Err(Error::Invalid { .. })),
        "unknown_subscription_is_an_error: invalid name accepted"
    );
}

/// After reopening the store, a subscription resumes from its cursor, unacknowledged
/// deliveries come again, events and dedupe survive.
pub async fn durable_resume_after_reopen<B, F, Fut>(open: F)
where
    B: EventBus,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let evs = events("durable", 5);
    {
        let bus = open().await;
        bus.subscribe("durable", opts(SHORT_ACK_WAIT))
            .await
            .unwrap();
        bus.publish(&evs).await.unwrap();
        let got = fetch_n(&bus, "durable", 3).await;
        assert_eq!(
            ids(&got),
            event_ids(&evs[..3]),
            "durable_resume_after_reopen: first run"
        );
        bus.ack("durable", &[got[0].tag, got[1].tag]).await.unwrap();
        // "Crash" with the third delivery unacknowledged.
    }
    let bus = open().await;
    bus.subscribe("durable", opts(SHORT_ACK_WAIT))
        .await
        .unwrap();
    let resumed = fetch_n(&bus, "durable", 3).await;
    let mut got = ids(&resumed);
    got.sort();
    let mut want = event_ids(&evs[2..]);
    want.sort();
    assert_eq!(
        got, want,
        "durable_resume_after_reopen: resumed (cursor + redelivery)"
    );
    let third = resumed
        .iter()
        .find(|d| d.event.id == evs[2].id)
        .expect("third event");
    assert_eq!(
        third.attempt, 2,
        "durable_resume_after_reopen: redelivery attempt"
    );
    bus.publish(&evs[..1]).await.unwrap();
    bus.subscribe("durable-late", SubscribeOptions::default())
        .await
        .unwrap();
    let all = fetch_n(&bus, "durable-late", 5).await;
    assert_eq!(
        ids(&all),
        event_ids(&evs),
        "durable_resume_after_reopen: stored and deduped"
    );
    let more = bus
        .fetch("durable-late", 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(
        more.is_empty(),
        "durable_resume_after_reopen: duplicate after reopen"
    );
}
