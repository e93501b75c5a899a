//! The conformance suite every [`DeadLetters`] store runs.
//!
//! ```no_run
//! # async fn demo() {
//! use ops_events::InMemoryDeadLetters;
//!
//! ops_events::testkit::dead_letters::run_all(&InMemoryDeadLetters::new()).await;
//! # }
//! ```

use ops_core::Event;

use crate::dead_letter::{DeadLetter, DeadLetters};

/// Checks a [`DeadLetters`] store (which must start empty).
pub async fn run_all(store: &dyn DeadLetters) {
    let event = Event::builder("ops.test", "ops://testkit")
        .subject("x")
        .build();
    let other = Event::builder("ops.test", "ops://testkit").build();
    assert_eq!(
        store.count(None).await.unwrap(),
        0,
        "dead letters: starts empty"
    );
    store
        .put(&DeadLetter::new("f", event.clone(), "boom", 3, false))
        .await
        .unwrap();
    store
        .put(&DeadLetter::new("g", other.clone(), "bad request", 1, true))
        .await
        .unwrap();
    store
        .put(&DeadLetter::new("f", event.clone(), "boom again", 4, false))
        .await
        .unwrap();
    assert_eq!(
        store.count(None).await.unwrap(),
        2,
        "dead letters: same key replaces"
    );
    assert_eq!(store.count(Some("f")).await.unwrap(), 1);
    let got = store
        .get("f", event.id)
        .await
        .unwrap()
        .expect("letter for f");
    assert_eq!(got.event, event, "dead letters: event kept whole");
    assert_eq!((got.error.as_str(), got.attempts), ("boom again", 4));
    assert!(!got.permanent);
    assert_eq!(store.list(None, 10).await.unwrap().len(), 2);
    let g = store.list(Some("g"), 10).await.unwrap();
    assert_eq!(g.len(), 1);
    assert!(g[0].permanent && g[0].event == other);
    assert_eq!(
        store.list(None, 1).await.unwrap().len(),
        1,
        "dead letters: limit"
    );
    assert!(store.remove("f", event.id).await.unwrap());
    assert!(!store.remove("f", event.id).await.unwrap());
    assert!(store.get("f", event.id).await.unwrap().is_none());
    assert_eq!(store.count(None).await.unwrap(), 1);
}
