//! The storage API on a real S3-compatible server (moto): the conformance suite on a
//! bucket and under a prefix, signed URLs, and how an unreachable server and refused
//! credentials are reported.
//!
//! Needs `OPS_TEST_S3_ENDPOINT` (`eval "$(scripts/services start)"` starts moto and
//! sets it); without it the tests are skipped, or fail when `OPS_REQUIRE_SERVICES=1`.
#![cfg(feature = "s3")]

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, TryStreamExt};
use object_store::ObjectStore;
use ops_storage::{Error, S3Options, SignedMethod, Storage};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

/// The credentials test switches moto's authentication on for the whole server, which
/// would fail every other test's requests: it takes this lock to write, the others to
/// read.
static AUTH: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

/// moto's endpoint, or `None` (with a note) when the tests should be skipped.
#[allow(clippy::print_stderr)]
fn endpoint() -> Option<String> {
    match std::env::var("OPS_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e.trim_end_matches('/').to_owned()),
        _ if std::env::var("OPS_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "OPS_TEST_S3_ENDPOINT is not set and OPS_REQUIRE_SERVICES=1: start moto with \
             `eval \"$(scripts/services start)\"` (or run scripts/test)"
        ),
        _ => {
            eprintln!(
                "skipped: OPS_TEST_S3_ENDPOINT is not set (eval \"$(scripts/services start)\")"
            );
            None
        }
    }
}

/// moto's test credentials; moto accepts any unless its authentication is on.
fn options(endpoint: &str) -> S3Options {
    let mut options = S3Options::default();
    options.endpoint = Some(endpoint.to_owned());
    options.region = Some("us-east-1".into());
    options.allow_http = Some(true);
    options.access_key_id = Some("testing".into());
    options.secret_access_key = Some("testing".into());
    options
}

/// A new, empty bucket (moto creates buckets on an unsigned PUT).
async fn bucket(endpoint: &str) -> String {
    let name = ops_storage::testkit::unique_tenant("ops-test")
        .as_str()
        .to_lowercase();
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "create bucket: {response:?}"
    );
    name
}

fn open(url: &str, options: S3Options) -> Storage {
    Storage::builder(url).s3(options).build().unwrap()
}

/// A raw object_store client on the bucket, to see the keys as S3 stores them.
fn raw(endpoint: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap()
}

#[tokio::test]
async fn conformance_on_a_bucket() {
    let Some(endpoint) = endpoint() else { return };
    let _shared = AUTH.read().await;
    let bucket = bucket(&endpoint).await;
    // Endpoint, region and allow_http from the URL; only the credentials as options.
    let mut credentials = S3Options::default();
    credentials.access_key_id = Some("testing".into());
    credentials.secret_access_key = Some("testing".into());
    let url = format!("s3://{bucket}?endpoint={endpoint}&region=us-east-1&allow_http=true");
    ops_storage::testkit::backend::run_all(&open(&url, credentials)).await;
}

#[tokio::test]
async fn conformance_under_a_prefix() {
    let Some(endpoint) = endpoint() else { return };
    let _shared = AUTH.read().await;
    let bucket = bucket(&endpoint).await;
    let storage = open(&format!("s3://{bucket}/some/prefix"), options(&endpoint));
    ops_storage::testkit::backend::run_all(&storage).await;
    // Everything was written under the prefix: a handle on the bucket root sees it
    // there and nowhere else.
    let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    acme.put("kept.txt", Bytes::from_static(b"k"))
        .await
        .unwrap();
    let keys: Vec<String> = raw(&endpoint, &bucket)
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys, ["some/prefix/tenants/acme/production/kept.txt"]);
    let root = open(&format!("s3://{bucket}"), options(&endpoint));
    assert!(
        root.scope(&"acme".parse().unwrap(), &"production".parse().unwrap())
            .list(None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn options_win_over_the_url_query() {
    let Some(endpoint) = endpoint() else { return };
    let _shared = AUTH.read().await;
    let bucket = bucket(&endpoint).await;
    // The URL names a closed port; the options the real server.
    let url = format!("s3://{bucket}?endpoint=http://127.0.0.1:9&allow_http=true");
    let acme = open(&url, options(&endpoint))
        .scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    acme.put("a.txt", Bytes::from_static(b"a")).await.unwrap();
    assert_eq!(acme.get("a.txt").await.unwrap(), "a");
}

#[tokio::test]
async fn signed_urls_download_and_upload() {
    let Some(endpoint) = endpoint() else { return };
    let _shared = AUTH.read().await;
    let bucket = bucket(&endpoint).await;
    let http = reqwest::Client::new();
    for url in [
        format!("s3://{bucket}"),
        format!("s3://{bucket}/with/prefix"),
    ] {
        let storage = open(&url, options(&endpoint));
        let acme = storage.scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
        acme.put("report.pdf", Bytes::from_static(b"%PDF report"))
            .await
            .unwrap();

        let get = acme
            .signed_url(SignedMethod::Get, "report.pdf", Duration::from_secs(300))
            .await
            .unwrap();
        assert!(get.contains("X-Amz-Expires=300"), "{get}");
        let response = http.get(&get).send().await.unwrap();
        assert!(response.status().is_success(), "{url}: {response:?}");
        assert_eq!(response.bytes().await.unwrap(), "%PDF report", "{url}");
        // Unsigned, the same object is refused: the signature is what lets it through.
        let unsigned = get.split('?').next().unwrap();
        assert_eq!(http.get(unsigned).send().await.unwrap().status(), 403);

        let put = acme
            .signed_url(SignedMethod::Put, "uploads/in.bin", Duration::from_secs(60))
            .await
            .unwrap();
        let response = http.put(&put).body("uploaded").send().await.unwrap();
        assert!(response.status().is_success(), "{url}: {response:?}");
        assert_eq!(acme.get("uploads/in.bin").await.unwrap(), "uploaded");
        assert_eq!(acme.head("uploads/in.bin").await.unwrap().size, 8);
        // As documented: an upload through a signed URL bypasses the catalog.
        assert!(
            storage
                .catalog()
                .get("acme", "production", "uploads/in.bin")
                .await
                .unwrap()
                .is_none()
        );
        // Reconciling records it, with its checksum.
        let report = acme.reconcile().await.unwrap();
        let recorded: Vec<(&str, u64)> = report
            .recorded
            .iter()
            .map(|e| (e.path.as_str(), e.size))
            .collect();
        assert!(recorded.contains(&("uploads/in.bin", 8)), "{report:?}");
        let record = storage
            .catalog()
            .get("acme", "production", "uploads/in.bin")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.sha256, hex::encode(Sha256::digest(b"uploaded")));
        acme.delete("uploads/in.bin").await.unwrap();
        assert!(matches!(
            acme.head("uploads/in.bin").await,
            Err(Error::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_fast() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let acme = open("s3://nowhere", options(&endpoint))
        .scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    let started = Instant::now();
    let errors = [
        acme.put("a.txt", Bytes::from_static(b"a"))
            .await
            .map(drop)
            .unwrap_err(),
        acme.get("a.txt").await.map(drop).unwrap_err(),
        acme.list(None).await.map(drop).unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("unreachable"), "{err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "three requests took {:?}",
        started.elapsed()
    );
}

/// Posts to moto's control API.
async fn moto(endpoint: &str, what: &str, body: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/moto-api/{what}"))
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "moto {what}: {response:?}");
    response.text().await.unwrap()
}

/// Calls moto's IAM API (while authentication is still off, moto only reads the
/// service from the Authorization header's scope).
async fn iam(endpoint: &str, form: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("{form}&Version=2010-05-08"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "iam {form}: {response:?}");
    response.text().await.unwrap()
}

fn xml_tag<'a>(xml: &'a str, tag: &str) -> &'a str {
    let start = xml.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>")).unwrap();
    &xml[start..start + len]
}

#[tokio::test]
async fn refused_credentials_are_reported_as_such() {
    let Some(endpoint) = endpoint() else { return };
    let _alone = AUTH.write().await;
    let bucket = bucket(&endpoint).await;
    // moto checks keys and signatures once its "initial no-auth action count" is
    // used up: allow the two IAM calls below, then check everything.
    moto(&endpoint, "reset-auth", "2").await;
    let result = std::panic::AssertUnwindSafe(async {
        let user = ops_storage::testkit::unique_tenant("user");
        iam(&endpoint, &format!("Action=CreateUser&UserName={user}")).await;
        let key = iam(
            &endpoint,
            &format!("Action=CreateAccessKey&UserName={user}"),
        )
        .await;
        let (key_id, secret) = (
            xml_tag(&key, "AccessKeyId").to_owned(),
            xml_tag(&key, "SecretAccessKey").to_owned(),
        );
        moto(&endpoint, "reset-auth", "0").await;

        let with = |key_id: &str, secret: &str| {
            let mut options = options(&endpoint);
            options.access_key_id = Some(key_id.into());
            options.secret_access_key = Some(secret.into());
            open(&format!("s3://{bucket}"), options)
                .scope(&"acme".parse().unwrap(), &"production".parse().unwrap())
        };
        for (acme, code) in [
            // A key moto does not know.
            (with("AKIAUNKNOWNKEY000000", &secret), "InvalidAccessKeyId"),
            // A known key with a wrong secret.
            (with(&key_id, "not the secret"), "SignatureDoesNotMatch"),
            // The right secret, but the user may do nothing.
            (with(&key_id, &secret), "AccessDenied"),
        ] {
            // put/get come back typed (403); list only as a message, which is parsed.
            let errors = [
                acme.put("a.txt", Bytes::from_static(b"a"))
                    .await
                    .map(drop)
                    .unwrap_err(),
                acme.get("a.txt").await.map(drop).unwrap_err(),
                acme.list(None).await.map(drop).unwrap_err(),
            ];
            for err in errors {
                assert!(
                    matches!(err, Error::Credentials { ref message, .. } if message.contains(code)),
                    "{code}: {err:?}"
                );
            }
        }
    })
    .catch_unwind()
    .await;
    // Authentication off again, whatever happened.
    moto(&endpoint, "reset-auth", "inf").await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
