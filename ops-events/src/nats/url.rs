//! Checking NATS server URLs and showing them without secrets.

use crate::{Error, Result};

/// Schemes this build can connect with (`websockets` is not compiled in).
const SCHEMES: [&str; 2] = ["nats", "tls"];

/// Checks each comma-separated server address: `nats://` or `tls://`, or no scheme
/// (`host:port`, taken as `nats://`), and a host.
pub(crate) fn validate(url: &str) -> Result<()> {
    let shown = redact(url);
    if url.trim().is_empty() {
        return Err(Error::invalid("nats url", shown, "is empty"));
    }
    for server in url.split(',').map(str::trim) {
        let rest = match server.split_once("://") {
            Some((scheme, rest)) => {
                if !SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                    return Err(Error::invalid(
                        "nats url",
                        shown,
                        format!(
                            "scheme {scheme:?} is not supported (use nats://host:port or tls://host:port)"
                        ),
                    ));
                }
                rest
            }
            None => server,
        };
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        if host.is_empty() || host.starts_with(':') || host.starts_with('/') {
            return Err(Error::invalid("nats url", shown, "has no host"));
        }
    }
    Ok(())
}

/// The URL with the password (or token) of each server replaced by `***`:
/// `nats://user:***@host:4222`.
pub(crate) fn redact(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, server),
            };
            let redacted = match rest.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    // A lone user part is a token in NATS URLs: hide it too.
                    None => format!("***@{host}"),
                },
                None => rest.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{redacted}"),
                None => redacted,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden() {
        assert_eq!(
            redact("nats://bob:s3cret@127.0.0.1:4222"),
            "nats://bob:***@127.0.0.1:4222"
        );
        assert_eq!(redact("nats://tok3n@h:1"), "nats://***@h:1");
        assert_eq!(
            redact("nats://a:b@h1:1,nats://h2:2"),
            "nats://a:***@h1:1,nats://h2:2"
        );
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn schemes_are_checked() {
        assert!(validate("nats://127.0.0.1:4222").is_ok());
        assert!(validate("tls://nats.example.com:4222").is_ok());
        assert!(validate("127.0.0.1:4222").is_ok());
        assert!(validate("nats://a:1,nats://b:2").is_ok());
        let e = validate("http://bob:pw@127.0.0.1:4222").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"http\"") && !msg.contains("pw"), "{msg}");
        assert!(validate("").is_err());
        assert!(validate("nats://").is_err());
    }
}
