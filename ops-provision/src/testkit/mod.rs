//! The conformance suite every [`Provider`] runs (feature `testkit`).
//!
//! [`run_all`] takes a provider and the instance type and region of an offering it can
//! create twice; each check is also public. A failed check panics with its name.

use std::time::Duration;

use crate::{Labels, MANAGED_BY, MANAGED_BY_OPS, Provider, ServerSpec, ServerStatus, TOKEN};

/// Runs every check on `provider`, creating servers of `instance_type` in `region`.
pub async fn run_all(provider: &dyn Provider, instance_type: &str, region: &str) {
    offerings_name_the_provider(provider).await;
    create_is_idempotent_and_labelled(provider, instance_type, region).await;
}

/// Every offering names this provider and has a price in a currency.
pub async fn offerings_name_the_provider(provider: &dyn Provider) {
    let offerings = provider.offerings().await.expect("offerings");
    assert!(!offerings.is_empty(), "offerings: none");
    for o in &offerings {
        assert_eq!(o.provider, provider.name(), "offerings: {o:?}");
        assert_eq!(o.currency.len(), 3, "offerings: currency of {o:?}");
        assert!(
            o.hourly >= rust_decimal::Decimal::ZERO,
            "offerings: price of {o:?}"
        );
    }
}

/// A retried create (same token) finds the first server; the server carries Ops'
/// labels; `list` by those labels finds it and only what is Ops'; it becomes ready;
/// `delete` removes it and is idempotent.
pub async fn create_is_idempotent_and_labelled(
    provider: &dyn Provider,
    instance_type: &str,
    region: &str,
) {
    let spec = ServerSpec::new(
        "conformance-0",
        instance_type,
        region,
        "conformance",
        "p",
        0,
    );
    let first = provider.create(&spec).await.expect("create");
    let again = provider.create(&spec).await.expect("create again");
    assert_eq!(
        first.id, again.id,
        "create: a retried create made a second server"
    );
    assert!(first.is_ours(), "create: labels {:?}", first.labels);
    let mut selector = Labels::new();
    selector.insert(MANAGED_BY.to_owned(), MANAGED_BY_OPS.to_owned());
    selector.insert(
        TOKEN.to_owned(),
        spec.token().unwrap_or_default().to_owned(),
    );
    let listed = provider.list(&selector).await.expect("list");
    assert_eq!(listed.len(), 1, "list: {listed:?}");
    assert!(
        listed.iter().all(|s| s.is_ours()),
        "list: returned a server not ours"
    );
    let ready = provider
        .wait_ready(&first.id, Duration::from_secs(30))
        .await
        .expect("wait_ready");
    assert_eq!(ready.status, ServerStatus::Running, "wait_ready");
    provider.delete(&first.id).await.expect("delete");
    provider
        .delete(&first.id)
        .await
        .expect("delete is idempotent");
    assert!(
        provider.get(&first.id).await.expect("get").is_none(),
        "delete: still there"
    );
    assert!(
        provider.list(&selector).await.expect("list").is_empty(),
        "list after delete"
    );
}
