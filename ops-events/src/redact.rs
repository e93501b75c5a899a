//! Hiding secrets in URLs before they reach errors and logs.

/// `url` with its password (in the authority or a `password=` parameter) replaced by
/// `***`, for errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return redact_params(url);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &userinfo[..colon], &authority[at..]),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = redact_params(&rest[authority_end..]);
    format!("{}{authority}{tail}", &url[..scheme_end])
}

/// Replaces the value of `password=` query parameters with `***`.
fn redact_params(s: &str) -> String {
    let Some(q) = s.find('?') else {
        return s.to_owned();
    };
    let (head, query) = s.split_at(q + 1);
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{head}{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://ops:s3cret@db.internal:5432/ops"),
            "postgres://ops:***@db.internal:5432/ops"
        );
        assert_eq!(
            redact_url("postgresql://ops@db/ops?sslmode=require"),
            "postgresql://ops@db/ops?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:p%40ss@h/db?password=x&sslmode=disable"),
            "postgres://u:***@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("mysql://a:b@c"), "mysql://a:***@c");
        assert_eq!(redact_url("db?Password=x"), "db?Password=***");
    }

    #[test]
    fn other_urls_keep_their_shape() {
        assert_eq!(redact_url("sqlite:///x/a@b.db"), "sqlite:///x/a@b.db");
        assert_eq!(redact_url("sqlite://state/ops.db"), "sqlite://state/ops.db");
    }
}
