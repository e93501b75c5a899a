use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest tenant or environment name, in bytes: a DNS label, so that a name fits in
/// the names other systems derive from it (Kubernetes namespaces, storage prefixes,
/// cgroup and directory names).
pub const MAX_NAME_BYTES: usize = 63;

/// The rule every tenant and environment name follows, as shown in errors.
pub const NAME_RULE: &str =
    "1 to 63 ASCII letters, digits, '-' or '_', starting with a letter or a digit";

/// Every way `name` breaks [`NAME_RULE`].
fn name_violations(name: &str) -> Vec<String> {
    let mut v = Vec::new();
    if name.is_empty() {
        v.push("is empty".to_owned());
        return v;
    }
    if name.len() > MAX_NAME_BYTES {
        v.push(format!(
            "is {} bytes long (at most {MAX_NAME_BYTES})",
            name.len()
        ));
    }
    let mut bad: Vec<char> = name
        .chars()
        .filter(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        .collect();
    bad.sort_unstable();
    bad.dedup();
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().map(|c| format!("{c:?}")).collect();
        v.push(format!("contains {}", shown.join(", ")));
    }
    if name.starts_with(['-', '_']) {
        v.push("starts with a '-' or '_'".to_owned());
    }
    v
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("A checked ", $what, " name: [`NAME_RULE`], every violation listed in an")]
            /// [`Error::Invalid`] (kind `InvalidInput`) that names the rule.
            pub fn parse(name: impl AsRef<str> + Into<String>) -> Result<Self> {
                let violations = name_violations(name.as_ref());
                if violations.is_empty() {
                    Ok(Self(name.into()))
                } else {
                    Err(Error::Invalid {
                        what: $what,
                        value: name.into(),
                        reason: format!("{}; use {NAME_RULE}", violations.join(", ")),
                    })
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// The customer a task, an object or an event belongs to. Tenants never see each
    /// other's data.
    ///
    /// A tenant is always a valid name ([`NAME_RULE`]): it is made by
    /// [`Tenant::parse`] (or `FromStr`, `TryFrom`, deserialization, which apply the same
    /// rule), so every crate that takes a `&Tenant` can use it in paths, namespaces and
    /// keys without checking it again.
    ///
    /// ```
    /// use ops_core::{ErrorKind, Tenant};
    ///
    /// let acme = Tenant::parse("acme")?;
    /// assert_eq!(acme.as_str(), "acme");
    /// let err = Tenant::parse("../globex").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::InvalidInput);
    /// assert!(err.to_string().contains("contains '.', '/'"), "{err}");
    /// assert!(serde_json::from_str::<Tenant>("\"a b\"").is_err());
    /// # Ok::<(), ops_core::Error>(())
    /// ```
    Tenant,
    "tenant"
);
name_type!(
    /// A segment of capacity such as `production` or `staging`; the same name rule as
    /// [`Tenant`] ([`NAME_RULE`]).
    Environment,
    "environment"
);

impl Default for Environment {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

/// Free-form key/value labels, ordered so that their serialization is stable.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule() {
        for ok in ["a", "acme", "Acme-2", "a_b", "0team", &"x".repeat(63)] {
            assert_eq!(Tenant::parse(ok).unwrap().as_str(), ok);
            assert!(Environment::parse(ok).is_ok(), "{ok}");
        }
        for (bad, needle) in [
            ("", "is empty"),
            ("-a", "starts with"),
            ("_a", "starts with"),
            ("a/b", "'/'"),
            ("..", "'.'"),
            ("a b", "' '"),
            ("ünï", "'ü'"),
            (&"x".repeat(64), "64 bytes long"),
        ] {
            let err = Tenant::parse(bad).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{bad:?}: {text}");
            assert!(text.contains(NAME_RULE), "the rule is named: {text}");
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn every_violation_is_listed() {
        let name = format!("-{}/x", "y".repeat(70));
        let text = Tenant::parse(name).unwrap_err().to_string();
        for needle in ["bytes long", "'/'", "starts with"] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn deserializing_checks_the_rule() {
        let t: Tenant = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(t, "acme");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"acme\"");
        let err = serde_json::from_str::<Environment>("\"prod/eu\"").unwrap_err();
        assert!(err.to_string().contains("invalid environment"), "{err}");
        assert_eq!(Environment::default().as_str(), "default");
    }
}
