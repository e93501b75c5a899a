//! Signed URLs checked without a server: the AWS SigV4 query-string signature is
//! recomputed here, independently of object_store, from the URL's `X-Amz-*`
//! parameters, the canonical request and the secret (S3 test servers such as moto do
//! not verify signatures, so this is where the signing itself is tested).
#![cfg(feature = "s3")]

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use ops_storage::{Error, S3Options, SignedMethod, Storage};
use reqwest::Url;
use sha2::{Digest, Sha256};

const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn storage(url: &str, secret: &str) -> Storage {
    let mut options = S3Options::default();
    // Never contacted: signing is local.
    options.endpoint = Some("http://127.0.0.1:9000".into());
    options.region = Some("eu-west-1".into());
    options.allow_http = Some(true);
    options.access_key_id = Some(ACCESS_KEY.into());
    options.secret_access_key = Some(secret.into());
    Storage::builder(url).s3(options).build().unwrap()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, the rest %XX.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The URL's query parameters (decoded).
fn params(url: &Url) -> BTreeMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The SigV4 signature of a presigned `url` for `method`, computed from scratch.
fn sigv4(method: &str, url: &Url, secret: &str) -> String {
    let params = params(url);
    let canonical_query = params
        .iter()
        .filter(|(k, _)| k.as_str() != "X-Amz-Signature")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap()),
        None => url.host_str().unwrap().to_owned(),
    };
    let canonical_request = format!(
        "{method}\n{}\n{canonical_query}\nhost:{host}\n\n{}\nUNSIGNED-PAYLOAD",
        url.path(),
        params["X-Amz-SignedHeaders"],
    );
    let date_time = &params["X-Amz-Date"];
    let credential = &params["X-Amz-Credential"];
    let scope = credential.split_once('/').unwrap().1;
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut parts = scope.split('/');
    let (date, region, service) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, service);
    let k_signing = hmac(&k_service, "aws4_request");
    hex::encode(hmac(&k_signing, &string_to_sign))
}

async fn sign(storage: &Storage, method: SignedMethod, path: &str, secs: u64) -> Url {
    let url = storage
        .scope(&"acme".parse().unwrap(), &"production".parse().unwrap())
        .signed_url(method, path, Duration::from_secs(secs))
        .await
        .unwrap();
    Url::parse(&url).unwrap()
}

#[tokio::test]
async fn signatures_match_an_independent_sigv4_computation() {
    let storage = storage("s3://outputs", SECRET);
    for (method, name, path, secs) in [
        (SignedMethod::Get, "GET", "frames/0001.png", 3600),
        (SignedMethod::Put, "PUT", "frames/with space+plus.png", 1),
        (SignedMethod::Get, "GET", "ünï/ファイル.txt", 7 * 24 * 3600),
    ] {
        let url = sign(&storage, method, path, secs).await;
        let p = params(&url);
        assert_eq!(p["X-Amz-Algorithm"], "AWS4-HMAC-SHA256", "{url}");
        assert_eq!(p["X-Amz-Expires"], secs.to_string(), "{url}");
        assert_eq!(p["X-Amz-SignedHeaders"], "host", "{url}");
        let credential: Vec<&str> = p["X-Amz-Credential"].split('/').collect();
        assert_eq!(credential[0], ACCESS_KEY);
        assert_eq!(&credential[2..], ["eu-west-1", "s3", "aws4_request"]);
        assert!(p["X-Amz-Date"].starts_with(credential[1]), "{url}");
        // Path-style: the bucket is the first segment, the key under the tenant's prefix.
        assert!(
            url.path().starts_with("/outputs/tenants/acme/production/"),
            "{url}"
        );
        assert_eq!(
            sigv4(name, &url, SECRET),
            p["X-Amz-Signature"],
            "{name} {url}"
        );
        // The method is part of what is signed.
        let other = if name == "GET" { "PUT" } else { "GET" };
        assert_ne!(sigv4(other, &url, SECRET), p["X-Amz-Signature"]);
    }
}

#[tokio::test]
async fn another_secret_gives_another_signature() {
    let url = sign(
        &storage("s3://outputs", SECRET),
        SignedMethod::Get,
        "a.txt",
        60,
    )
    .await;
    let signature = &params(&url)["X-Amz-Signature"];
    assert_ne!(&sigv4("GET", &url, "some other secret"), signature);
    let other = sign(
        &storage("s3://outputs", "some other secret"),
        SignedMethod::Get,
        "a.txt",
        60,
    )
    .await;
    let other_signature = &params(&other)["X-Amz-Signature"];
    assert_eq!(&sigv4("GET", &other, "some other secret"), other_signature);
    assert_ne!(&sigv4("GET", &other, SECRET), other_signature);
}

#[tokio::test]
async fn the_url_prefix_is_part_of_the_signed_key() {
    let storage = storage("s3://outputs/ops/prod", SECRET);
    let url = sign(&storage, SignedMethod::Get, "frames/1.png", 60).await;
    assert_eq!(
        url.path(),
        "/outputs/ops/prod/tenants/acme/production/frames/1.png"
    );
    assert_eq!(sigv4("GET", &url, SECRET), params(&url)["X-Amz-Signature"]);
}

#[tokio::test]
async fn expiry_must_be_one_second_to_seven_days() {
    let acme = storage("s3://outputs", SECRET)
        .scope(&"acme".parse().unwrap(), &"production".parse().unwrap());
    for bad in [
        Duration::ZERO,
        Duration::from_millis(999),
        Duration::from_secs(7 * 24 * 3600 + 1),
    ] {
        let err = acme
            .signed_url(SignedMethod::Get, "a.txt", bad)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidExpiry { requested } if requested == bad)
                && err.to_string().contains(&format!("{bad:?}"))
                && err.kind() == ops_core::ErrorKind::InvalidInput,
            "{bad:?}: {err}"
        );
    }
    let err = acme
        .signed_url(SignedMethod::Put, "../acme2/x", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err}");
}
