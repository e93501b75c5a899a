//! `Platform::from_file` end to end: a configuration file with every kind of mistake is
//! refused with each problem named (and nothing created), a missing file is `NotFound`,
//! and a good file in a directory that does not exist yet starts a platform whose
//! webhook (from the file) receives the task's signed events over real HTTP.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ops::events::webhook::{EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature};
use ops::prelude::*;

const TEMPLATE: &str = r#"
name = "hello"
command = ["/bin/sh", "-c", "echo hello $1 > hello.txt", "hello", "{{ who }}"]
outputs = ["hello.txt"]
[parameters]
required = ["who"]
[parameters.properties.who]
type = "string"
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_bad_file_names_itself_and_every_problem_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("platform.toml");
    write(
        &file,
        r#"
        history = "sqlite://state/ops.db"
        events = "kafka://broker:9092"
        dead_letter = "durable"
        [tasks]
        batch_size = -3
        [storage]
        url = "gopher://files"
        "#,
    );
    let err = Platform::from_file(&file).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let text = err.to_string();
    for needle in [
        file.display().to_string().as_str(),
        "events: unsupported scheme \"kafka\"",
        "dead_letter: unknown field `dead_letter`, expected one of",
        "tasks.batch_size: invalid value",
        "storage.url: unsupported scheme \"gopher\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // Refused before anything was opened: no database, no task root.
    assert!(!dir.path().join("state").exists());

    let missing = dir.path().join("nowhere.toml");
    let err = Platform::from_file(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

async fn receive(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    received.0.lock().unwrap().push((headers, body));
    StatusCode::NO_CONTENT
}

#[tokio::test]
async fn a_good_file_starts_a_platform_whose_webhook_gets_signed_events() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the platform creates what it needs.
    let base = dir.path().join("fresh").join("platform");
    write(&base.join("templates/hello.toml"), TEMPLATE);
    write(
        &base.join("platform.toml"),
        &format!(
            r#"
            history = "sqlite://state/ops.db"
            templates = "templates"
            [tasks]
            root = "state/tasks"
            [[webhooks]]
            name = "billing-hook"
            url = "http://{addr}/hook"
            secret = "s3cret"
            on = ["ops.task.succeeded", "ops.task.failed"]
            tenant = "acme"
            "#
        ),
    );
    let platform = Platform::from_file(base.join("platform.toml"))
        .await
        .unwrap();
    assert!(base.join("state/ops.db").exists());

    let acme = platform.tenant(&Tenant::parse("acme").unwrap());
    let globex = platform.tenant(&Tenant::parse("globex").unwrap());
    let mine = acme
        .submit(SubmitRequest::new("hello").parameters(json!({ "who": "acme" })))
        .await
        .unwrap();
    let theirs = globex
        .submit(SubmitRequest::new("hello").parameters(json!({ "who": "globex" })))
        .await
        .unwrap();
    for (handle, id) in [(&acme, mine), (&globex, theirs)] {
        let task = tokio::time::timeout(Duration::from_secs(20), handle.wait(id))
            .await
            .expect("task did not finish in time")
            .unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    }
    let outputs = acme.outputs(mine).await.unwrap();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(outputs[0].path, "hello.txt");
    // shutdown() lets the dispatcher deliver what is due before it stops.
    platform.shutdown().await;

    let received = received.0.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        1,
        "only acme's succeeded event: {received:?}"
    );
    let (headers, body) = &received[0];
    let event: Event = serde_json::from_slice(body).unwrap();
    assert_eq!(event.ty, "ops.task.succeeded");
    assert_eq!(event.subject.as_deref(), Some(mine.to_string().as_str()));
    assert_eq!(
        headers[EVENT_ID_HEADER].to_str().unwrap(),
        event.id.to_string()
    );
    verify_signature(
        b"s3cret",
        headers[SIGNATURE_HEADER].to_str().unwrap(),
        body,
        Duration::from_secs(300),
    )
    .unwrap();
}
