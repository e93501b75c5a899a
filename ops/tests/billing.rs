//! A billed platform end to end, on real processes and SQLite: a tenant whose credit
//! cannot cover a task's worst case keeps it queued with the reason, a top-up lets it
//! start, and each task's final event settles its hold to the real cost exactly once.

use std::path::Path;
use std::time::Duration;

use ops::billing::Money;
use ops::billing::ledger::Account;
use ops::prelude::*;
use ops::{BillingConfig, Platform};

const TEMPLATE: &str = r#"
name = "step"
command = ["true"]
timeout = "10s"
[resources]
cpu = 1
memory = "16Mi"
"#;

/// A core-second costs 0.01 EUR and every task 0.01 EUR: a 10-second task holds
/// 1 × 10 × 0.01 + 0.01 = 0.11 EUR, and `true` really costs 0.01 EUR.
const PRICES: &str = r#"
currency = "EUR"
[[prices]]
meter = "cpu_core_seconds"
unit_price = "0.01"
[[prices]]
meter = "tasks"
unit_price = "0.01"
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn eur(amount: i64) -> Money {
    Money::new(amount, "EUR".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waits_for_credit_and_is_settled_to_its_real_cost() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("templates/step.toml"), TEMPLATE);
    write(&dir.path().join("prices.toml"), PRICES);
    let mut config = PlatformConfig::default();
    config.history = format!("sqlite://{}/ops.db", dir.path().display());
    config.templates = Some(dir.path().join("templates"));
    config.tasks.root = dir.path().join("tasks");
    config.tasks.admission.budget_recheck = Duration::from_millis(200);
    config.billing = Some(BillingConfig::new(dir.path().join("prices.toml")));
    let platform = Platform::from_config(config).await.unwrap();
    let budgets = platform.billing().expect("billing configured").clone();
    let tenant = Tenant::parse("acme").unwrap();
    budgets.top_up(&tenant, eur(5), "first").await.unwrap();

    let acme = platform.tenant(&tenant);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(acme.submit(SubmitRequest::new("step")).await.unwrap());
    }
    // 0.05 EUR cannot hold 0.11: every task waits, saying why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        if let Some(waiting) = acme.explain(ids[0]).await.unwrap()
            && waiting.info.message.starts_with("budget:")
        {
            break waiting.info.message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task never waited for budget"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reason.starts_with("budget: needs 0.11 EUR, 0.05 EUR available (asked again at "),
        "{reason}"
    );
    for id in &ids {
        assert_eq!(acme.get(*id).await.unwrap().status, TaskStatus::Queued);
    }

    // A top-up covers them; they start at the next recheck and run.
    budgets.top_up(&tenant, eur(100), "second").await.unwrap();
    for id in &ids {
        let task = tokio::time::timeout(Duration::from_secs(20), acme.wait(*id))
            .await
            .expect("task did not finish")
            .unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    }
    let ledger = budgets.ledger().clone();
    platform.shutdown().await;

    // Each task cost 0.01 (its CPU time rounds away): 1.05 - 0.03 left, nothing held.
    let currency = "EUR".parse().unwrap();
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(102));
    for id in &ids {
        assert_eq!(budgets.held(&tenant, *id).await.unwrap(), eur(0));
    }
    let revenue = Account::platform("revenue").unwrap();
    assert_eq!(ledger.balance(&revenue, currency).await.unwrap(), eur(3));
    assert!(ledger.audit().await.unwrap().is_empty());
    // The settlement names its task.
    let entries = ledger.entries(&revenue).await.unwrap();
    let mut settled: Vec<_> = entries.iter().filter_map(|e| e.task_id).collect();
    settled.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(settled, expected);
}

#[tokio::test]
async fn a_bad_price_book_is_named_in_the_platform_config() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("prices.toml"),
        "currency = \"EUR\"\n[[prices]]\nmeter = \"cpu\"\nunit_price = 1\n",
    );
    write(
        &dir.path().join("platform.toml"),
        "history = \"sqlite://state/ops.db\"\n[billing]\nprices = \"prices.toml\"\n",
    );
    let err = Platform::from_file(dir.path().join("platform.toml"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("billing.prices"), "{text}");
    assert!(
        text.contains("prices[0].meter: unknown meter \"cpu\""),
        "{text}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!dir.path().join("state").exists(), "nothing created");
}

const SLEEPER: &str = r#"
name = "sleeper"
command = ["sleep", "30"]
timeout = "60s"
[resources]
cpu = 1
memory = "16Mi"
"#;

/// `on_exhausted = "cancel"`: when the credit cannot hold the next task, the tenant's
/// running work is stopped (and settled to what it used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_credit_cancels_running_work_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("templates/sleeper.toml"), SLEEPER);
    write(&dir.path().join("prices.toml"), PRICES);
    let mut config = PlatformConfig::default();
    config.history = format!("sqlite://{}/ops.db", dir.path().display());
    config.templates = Some(dir.path().join("templates"));
    config.tasks.root = dir.path().join("tasks");
    config.tasks.admission.budget_recheck = Duration::from_millis(200);
    let mut billing = BillingConfig::new(dir.path().join("prices.toml"));
    billing.on_exhausted = ops::OnExhausted::Cancel;
    config.billing = Some(billing);
    let platform = Platform::from_config(config).await.unwrap();
    let budgets = platform.billing().unwrap().clone();
    let tenant = Tenant::parse("acme").unwrap();
    // One task holds 1 core × 60 s × 0.01 + 0.01 = 0.61 EUR: 1.00 covers one.
    budgets.top_up(&tenant, eur(100), "first").await.unwrap();
    let acme = platform.tenant(&tenant);
    let first = acme.submit(SubmitRequest::new("sleeper")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acme.get(first).await.unwrap().status != TaskStatus::Running {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = acme.submit(SubmitRequest::new("sleeper")).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), acme.wait(first))
        .await
        .expect("the running task was not stopped")
        .unwrap();
    assert_eq!(ended.status, TaskStatus::Cancelled, "{ended:?}");
    // Its final event settles it (on the bus): the hold comes back but for what it used.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while budgets.held(&tenant, first).await.unwrap() != eur(0) {
        assert!(tokio::time::Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(budgets.available(&tenant).await.unwrap().amount >= eur(37).amount);
    acme.cancel(second).await.unwrap();
    platform.shutdown().await;
}

/// `[[billing.limits]]`: a tenant's spending limit keeps work queued with the limit
/// named, however much credit it has; a grant adds credit like a top-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spending_limit_keeps_work_queued_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("templates/step.toml"), TEMPLATE);
    write(&dir.path().join("prices.toml"), PRICES);
    write(
        &dir.path().join("platform.toml"),
        r#"
history = "sqlite://state/ops.db"
templates = "templates"
[tasks]
root = "tasks"
[tasks.admission]
budget_recheck = "200ms"
[billing]
prices = "prices.toml"
[[billing.limits]]
environment = "default"
amount = "0.11"
period = "day"
"#,
    );
    let platform = Platform::from_file(dir.path().join("platform.toml"))
        .await
        .unwrap();
    let budgets = platform.billing().unwrap().clone();
    let tenant = Tenant::parse("acme").unwrap();
    budgets
        .grant(
            &tenant,
            &ops::billing::Grant::new("welcome", eur(5_00)).priority(1),
        )
        .await
        .unwrap();
    let acme = platform.tenant(&tenant);
    let first = acme.submit(SubmitRequest::new("step")).await.unwrap();
    let second = acme.submit(SubmitRequest::new("step")).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), acme.wait(first))
        .await
        .expect("the first task did not finish")
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    // The first cost 0.01 of the 0.11 a day: 0.10 left, short of a worst case.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        // (Asked again every 200 ms: while the first ran, nothing was left.)
        let message = acme.explain(second).await.unwrap().map(|w| w.info.message);
        if let Some(message) = &message
            && message.contains("0.10 EUR left")
        {
            break message.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second task never waited for the limit: {message:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reason.starts_with(
            "budget: spending limit of 0.11 EUR a day in default: needs 0.11 EUR, 0.10 EUR left"
        ),
        "{reason}"
    );
    assert_eq!(acme.get(second).await.unwrap().status, TaskStatus::Queued);
    assert_eq!(budgets.available(&tenant).await.unwrap(), eur(4_99));
    platform.shutdown().await;
}

#[tokio::test]
async fn bad_spending_limits_are_named_in_the_platform_config() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("prices.toml"), PRICES);
    write(
        &dir.path().join("platform.toml"),
        "history = \"sqlite://state/ops.db\"\n[billing]\nprices = \"prices.toml\"\n\
         [[billing.limits]]\ntenant = \"a b\"\namount = \"-1\"\nperiod = \"day\"\n",
    );
    let err = Platform::from_file(dir.path().join("platform.toml"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("billing.limits[0].tenant:"), "{text}");
    assert!(
        text.contains("billing.limits[0].amount: -1 is negative"),
        "{text}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!dir.path().join("state").exists(), "nothing created");
}

#[tokio::test]
async fn the_cost_book_is_read_with_the_config_and_its_problems_named() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("prices.toml"), PRICES);
    write(
        &dir.path().join("costs.toml"),
        "currency = \"USD\"\n[[nodes]]\nname = \"box\"\nper_hour = \"-1\"\n",
    );
    write(
        &dir.path().join("platform.toml"),
        "history = \"sqlite://state/ops.db\"\n[billing]\nprices = \"prices.toml\"\n\
         costs = \"costs.toml\"\n",
    );
    let err = Platform::from_file(dir.path().join("platform.toml"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("billing.costs ("), "{text}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!dir.path().join("state").exists(), "nothing created");

    // A good one in another currency than the prices: named too.
    write(
        &dir.path().join("costs.toml"),
        "currency = \"USD\"\n[[nodes]]\nname = \"box\"\ncores = 2\nmemory_gib = 2\nhourly = \"0.10\"\n",
    );
    let err = Platform::from_file(dir.path().join("platform.toml"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("billing.costs: currency USD is not the price book's EUR"),
        "{err}"
    );

    write(
        &dir.path().join("costs.toml"),
        "currency = \"EUR\"\n[[nodes]]\nname = \"box\"\ncores = 2\nmemory_gib = 2\nhourly = \"0.10\"\n",
    );
    let platform = Platform::from_file(dir.path().join("platform.toml"))
        .await
        .unwrap();
    assert_eq!(
        platform.cost_book().expect("cost book").currency.code(),
        "EUR"
    );
    platform.shutdown().await;
}

/// Finalized invoices are kept in the history database, once, and read back after a
/// restart.
#[tokio::test]
async fn finalized_invoices_are_kept_in_the_history_database() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("prices.toml"), PRICES);
    let config = || {
        let mut config = PlatformConfig::default();
        config.history = format!("sqlite://{}/ops.db", dir.path().display());
        config.tasks.root = dir.path().join("tasks");
        config.billing = Some(BillingConfig::new(dir.path().join("prices.toml")));
        config
    };
    let platform = Platform::from_config(config()).await.unwrap();
    let book = platform.billing().unwrap().book().clone();
    let metering = ops::billing::Metering::new(book);
    let to = chrono::Utc::now() - chrono::Duration::days(2);
    let from = to - chrono::Duration::days(30);
    let invoice = ops::billing::invoice::invoice(
        &metering,
        "acme",
        &[],
        from,
        to,
        chrono::Utc::now(),
        chrono::Duration::days(1),
    )
    .unwrap();
    let store = platform.invoices().expect("billing configured").clone();
    assert_eq!(store.keep(&invoice).await.unwrap(), ops::billing::Kept::New);
    platform.shutdown().await;
    drop(store);

    let platform = Platform::from_config(config()).await.unwrap();
    let store = platform.invoices().unwrap();
    assert_eq!(store.kept_of("acme").await.unwrap(), vec![invoice.clone()]);
    assert_eq!(
        store.keep(&invoice).await.unwrap(),
        ops::billing::Kept::AlreadyKept
    );
    platform.shutdown().await;
}

/// `[billing.payments]`: the provider named in the file, its secrets from the
/// environment; an unknown provider or an unset variable is named in the config error.
#[tokio::test]
async fn the_payment_provider_comes_from_the_config_and_secrets_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("prices.toml"), PRICES);
    let file = dir.path().join("platform.toml");
    let with = |payments: &str| {
        write(
            &file,
            &format!(
                "history = \"sqlite://state/ops.db\"\n[billing]\nprices = \"prices.toml\"\n{payments}"
            ),
        );
    };
    // None named: `none`.
    with("");
    let platform = Platform::from_file(&file).await.unwrap();
    assert_eq!(platform.payments().unwrap().name(), "none");
    platform.shutdown().await;

    with("[billing.payments]\nprovider = \"paypal\"\n");
    let text = Platform::from_file(&file).await.unwrap_err().to_string();
    assert!(
        text.contains("billing.payments.provider: unknown provider \"paypal\""),
        "{text}"
    );

    with(
        "[billing.payments]\nprovider = \"stripe\"\napi_key_env = \"OPS_TEST_UNSET_STRIPE_KEY\"\n",
    );
    let text = Platform::from_file(&file).await.unwrap_err().to_string();
    assert!(
        text.contains("billing.payments.api_key_env: OPS_TEST_UNSET_STRIPE_KEY is not set"),
        "{text}"
    );

    #[cfg(feature = "stripe")]
    {
        // Any variable that is set will do to build it (no call is made): PATH.
        with(
            "[billing.payments]\nprovider = \"stripe\"\napi_key_env = \"PATH\"\n\
             base_url = \"http://127.0.0.1:9\"\n",
        );
        let platform = Platform::from_file(&file).await.unwrap();
        assert_eq!(platform.payments().unwrap().name(), "stripe");
        platform.shutdown().await;
    }
}
