//! S3-compatible backends (feature `s3`): AWS S3, MinIO, Ceph RGW, moto and the like.
//!
//! A URL names the bucket and, optionally, a prefix inside it under which everything
//! is kept: `s3://bucket[/prefix]?endpoint=http://127.0.0.1:9000&region=us-east-1&allow_http=true`.
//! Each setting is taken from, in this order, [`S3Options`], the URL's query and the
//! usual `AWS_*` environment variables. Credentials never go in the URL (URLs end up in
//! logs and messages): they come from [`S3Options`] or the environment.

use serde::{Deserialize, Serialize};

/// Settings for `s3://` storage URLs. Anything left unset comes from the URL's query
/// (`?endpoint=…&region=…&allow_http=true`) and then from the usual `AWS_*` environment
/// variables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server (`http://127.0.0.1:9000`); AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when unset).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Allow a plain-HTTP endpoint (test servers).
    #[serde(default)]
    pub allow_http: Option<bool>,
}

#[cfg(feature = "s3")]
pub(crate) use backend::open;

#[cfg(feature = "s3")]
mod backend {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::path::Path;
    use object_store::prefix::PrefixStore;
    use object_store::signer::Signer;
    use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};

    use super::S3Options;
    use crate::store::Backend;
    use crate::{Error, Result};
    use ops_core::ObjectPath;

    /// Query keys an `s3://` URL may carry.
    const QUERY_KEYS: [&str; 3] = ["endpoint", "region", "allow_http"];
    /// Query keys refused because they would put a secret in the URL.
    const SECRET_KEYS: [&str; 8] = [
        "access_key_id",
        "aws_access_key_id",
        "secret_access_key",
        "aws_secret_access_key",
        "session_token",
        "aws_session_token",
        "token",
        "aws_token",
    ];
    /// How long to wait for a TCP connection: an unreachable endpoint fails in seconds.
    const CONNECT_TIMEOUT: &str = "5s";

    /// What an `s3://` URL says.
    #[derive(Debug, Default, PartialEq)]
    struct S3Url {
        bucket: String,
        prefix: Option<String>,
        endpoint: Option<String>,
        region: Option<String>,
        allow_http: Option<bool>,
    }

    /// Parses `s3://bucket[/prefix][?query]`, listing every problem at once.
    fn parse(url: &str) -> Result<S3Url> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::InvalidUrl {
            url: shown(url),
            reason: format!("not a valid s3:// URL: {e}"),
        })?;
        let mut problems = Vec::new();
        let bucket = parsed.host_str().unwrap_or_default().to_owned();
        if bucket.is_empty() {
            problems.push("names no bucket (s3://BUCKET[/PREFIX])".to_owned());
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            problems.push(
                "carries credentials; set them in the [s3] settings or the AWS_ACCESS_KEY_ID / \
                 AWS_SECRET_ACCESS_KEY environment variables"
                    .to_owned(),
            );
        }
        if parsed.port().is_some() {
            problems.push("has a port after the bucket; give ?endpoint=http://HOST:PORT".into());
        }
        if parsed.fragment().is_some() {
            problems.push("has a #fragment".to_owned());
        }
        // From the text as written: parsing already folded any `..` away.
        let raw = url
            .strip_prefix("s3://")
            .unwrap_or(url)
            .split(['?', '#'])
            .next()
            .unwrap_or_default();
        let prefix = raw.split_once('/').map_or("", |(_, p)| p);
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        let prefix = if prefix.is_empty() {
            None
        } else {
            match ObjectPath::parse(prefix) {
                Ok(p) => Some(p.to_string()),
                Err(ops_core::Error::InvalidPath { violations, .. }) => {
                    problems.push(format!("prefix {prefix:?} {}", violations.join(", ")));
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut out = S3Url {
            bucket,
            prefix,
            ..S3Url::default()
        };
        let (mut unknown, mut secrets) = (Vec::new(), Vec::new());
        for (key, value) in parsed.query_pairs() {
            let value = value.into_owned();
            match key.as_ref() {
                "endpoint" => out.endpoint = Some(value),
                "region" => out.region = Some(value),
                "allow_http" => match value.as_str() {
                    "true" | "1" => out.allow_http = Some(true),
                    "false" | "0" => out.allow_http = Some(false),
                    _ => problems.push(format!("allow_http={value:?} is not true or false")),
                },
                k if SECRET_KEYS.contains(&k) => secrets.push(k.to_owned()),
                k => unknown.push(k.to_owned()),
            }
        }
        if !unknown.is_empty() {
            problems.push(format!(
                "has unknown query keys {}; the known ones are {}",
                unknown.join(", "),
                QUERY_KEYS.join(", ")
            ));
        }
        if !secrets.is_empty() {
            problems.push(format!(
                "carries credentials in its query ({}); URLs are logged, so set them in the \
                 [s3] settings or the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / \
                 AWS_SESSION_TOKEN environment variables",
                secrets.join(", ")
            ));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(Error::InvalidUrl {
                url: shown(url),
                reason: problems.join("; "),
            })
        }
    }

    /// Opens the bucket (and prefix) an `s3://` URL names. Nothing is contacted yet: a
    /// wrong endpoint or credentials show on the first request, as
    /// [`Error::Unreachable`] or [`Error::Credentials`].
    pub(crate) fn open(url: &str, options: &S3Options) -> Result<Backend> {
        let s3url = parse(url)?;
        // Lowest precedence first: the environment, then the URL, then the options.
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&s3url.bucket);
        let endpoint = options.endpoint.as_ref().or(s3url.endpoint.as_ref());
        if let Some(endpoint) = endpoint {
            // Custom servers (MinIO, moto, Ceph) are addressed by path, not by host.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = options.region.as_ref().or(s3url.region.as_ref()) {
            builder = builder.with_region(region);
        }
        if let Some(allow) = options.allow_http.or(s3url.allow_http) {
            builder = builder.with_allow_http(allow);
        }
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &options.session_token {
            builder = builder.with_token(token);
        }
        if builder
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout))
            .is_none()
        {
            builder = builder.with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                CONNECT_TIMEOUT,
            );
        }
        // A few quick retries: a server that is down fails in seconds, not minutes
        // (object_store's default is 10 retries within 3 minutes).
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                ..BackoffConfig::default()
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
        };
        let s3 = builder
            .with_retry(retry)
            .build()
            .map_err(|e| Error::InvalidUrl {
                url: shown(url),
                reason: e.to_string(),
            })?;
        let s3 = Arc::new(s3);
        let prefix = s3url.prefix.map(Path::from);
        let store: Arc<dyn object_store::ObjectStore> = match &prefix {
            Some(prefix) => Arc::new(PrefixStore::new(AmazonS3::clone(&s3), prefix.clone())),
            None => s3.clone(),
        };
        Ok(Backend {
            store,
            signer: Some(Arc::new(PrefixSigner { s3, prefix })),
        })
    }

    /// The URL without its query or user info (either may hold a secret), for messages.
    fn shown(url: &str) -> String {
        let base = url.split(['?', '#']).next().unwrap_or(url);
        match base.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}{path}")
            }
            None => base.to_owned(),
        }
    }

    /// Signs URLs for keys under the URL's prefix: the store sees keys relative to the
    /// prefix, the bucket their full names.
    #[derive(Debug)]
    struct PrefixSigner {
        s3: Arc<AmazonS3>,
        prefix: Option<Path>,
    }

    #[async_trait]
    impl Signer for PrefixSigner {
        async fn signed_url(
            &self,
            method: reqwest::Method,
            path: &Path,
            expires_in: Duration,
        ) -> object_store::Result<reqwest::Url> {
            match &self.prefix {
                Some(prefix) => {
                    let full: Path = prefix.parts().chain(path.parts()).collect();
                    self.s3.signed_url(method, &full, expires_in).await
                }
                None => self.s3.signed_url(method, path, expires_in).await,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn urls_give_bucket_prefix_and_query() {
            let u = parse("s3://outputs/ops/prod?endpoint=http://127.0.0.1:9000&region=eu-west-1&allow_http=true")
                .unwrap();
            assert_eq!(
                u,
                S3Url {
                    bucket: "outputs".into(),
                    prefix: Some("ops/prod".into()),
                    endpoint: Some("http://127.0.0.1:9000".into()),
                    region: Some("eu-west-1".into()),
                    allow_http: Some(true),
                }
            );
            let u = parse("s3://outputs/").unwrap();
            assert_eq!((u.bucket.as_str(), u.prefix), ("outputs", None));
        }

        #[test]
        fn every_bad_key_is_listed_and_secrets_are_refused() {
            let err = parse("s3://b?endpont=x&regoin=y&secret_access_key=S3CRET&allow_http=maybe")
                .unwrap_err()
                .to_string();
            for needle in [
                "endpont",
                "regoin",
                "secret_access_key",
                "environment",
                "maybe",
            ] {
                assert!(err.contains(needle), "{needle}: {err}");
            }
            assert!(!err.contains("S3CRET"), "{err}");
            let err = parse("s3://key:S3CRET@b").unwrap_err().to_string();
            assert!(
                err.contains("credentials") && !err.contains("S3CRET"),
                "{err}"
            );
        }

        #[test]
        fn bad_prefixes_and_missing_buckets_are_refused() {
            for bad in [
                "s3://b/a/../c",
                "s3://b/a/%2e%2e/c",
                "s3://b//c",
                "s3://b/a\\c",
            ] {
                assert!(parse(bad).is_err(), "{bad}");
            }
            assert!(parse("s3:///prefix").is_err());
        }

        #[tokio::test]
        async fn signing_covers_the_url_prefix() {
            let options = S3Options {
                endpoint: Some("http://127.0.0.1:1".into()),
                access_key_id: Some("AKID".into()),
                secret_access_key: Some("secret".into()),
                ..S3Options::default()
            };
            let backend = open("s3://bkt/some/prefix", &options).unwrap();
            let url = backend
                .signer
                .unwrap()
                .signed_url(
                    reqwest::Method::GET,
                    &Path::from("a/b"),
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
            assert_eq!(url.path(), "/bkt/some/prefix/a/b", "{url}");
        }
    }
}
