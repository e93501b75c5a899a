//! Object paths a tenant may name: relative, normalised, and unable to leave the
//! tenant's prefix however they are written.

use std::fmt;

use crate::{Error, Result};

/// Longest path accepted, in bytes (S3 allows 1,024 for the whole key, prefix included).
pub const MAX_PATH_BYTES: usize = 900;
/// Longest segment accepted, in bytes (most file systems allow 255).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// A checked path relative to a tenant's storage, such as `frames/0001.png`.
///
/// ```
/// use ops_core::ObjectPath;
///
/// assert_eq!(ObjectPath::parse("frames/0001.png")?.as_str(), "frames/0001.png");
/// let err = ObjectPath::parse("../other-tenant/secret").unwrap_err();
/// assert!(err.to_string().contains("\"..\""), "{err}");
/// // Encoded tricks are refused too, each problem named.
/// let err = ObjectPath::parse("/a/%2e%2e/b\\c").unwrap_err();
/// let text = err.to_string();
/// assert!(text.contains("absolute") && text.contains("%2e") && text.contains("backslash"), "{text}");
/// # Ok::<(), ops_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectPath(String);

impl ObjectPath {
    /// Checks `path`; every violation is listed in [`Error::InvalidPath`].
    pub fn parse(path: &str) -> Result<Self> {
        let violations = violations(path);
        if violations.is_empty() {
            Ok(Self(path.to_owned()))
        } else {
            Err(Error::InvalidPath {
                path: path.to_owned(),
                violations,
            })
        }
    }

    /// Checks a prefix for listing: like a path, but may be empty or end with `/`.
    pub fn parse_prefix(prefix: &str) -> Result<Option<Self>> {
        let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
        if trimmed.is_empty() {
            return Ok(None);
        }
        Self::parse(trimmed).map(Some)
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every rule `path` breaks.
fn violations(path: &str) -> Vec<String> {
    let mut v = Vec::new();
    if path.is_empty() {
        v.push("is empty".to_owned());
        return v;
    }
    if path.len() > MAX_PATH_BYTES {
        v.push(format!(
            "is {} bytes long; at most {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    if path.starts_with('/') {
        v.push(
            "is absolute (starts with '/'); paths are relative to the tenant's storage".to_owned(),
        );
    }
    if path.contains('\\') {
        v.push("contains a backslash".to_owned());
    }
    if path.chars().any(|c| c.is_control()) {
        v.push("contains a control character (NUL, newline, ...)".to_owned());
    }
    if path.len() >= 2 && path.as_bytes()[1] == b':' && path.as_bytes()[0].is_ascii_alphabetic() {
        v.push("starts with a drive letter".to_owned());
    }
    // Percent-encoded separators and dots, which a later decoding step could turn
    // into a traversal.
    let lower = path.to_ascii_lowercase();
    for (enc, what) in [
        ("%2e", "an encoded '.'"),
        ("%2f", "an encoded '/'"),
        ("%5c", "an encoded backslash"),
        ("%00", "an encoded NUL"),
        ("%25", "an encoded '%' (double encoding)"),
    ] {
        if lower.contains(enc) {
            v.push(format!("contains {enc} ({what})"));
        }
    }
    // Look-alikes some systems fold into '/' or '.'.
    for (c, what) in [
        ('\u{2215}', "a division slash (U+2215)"),
        ('\u{2044}', "a fraction slash (U+2044)"),
        ('\u{ff0f}', "a fullwidth solidus (U+FF0F)"),
        ('\u{ff0e}', "a fullwidth full stop (U+FF0E)"),
        ('\u{2024}', "a one dot leader (U+2024)"),
    ] {
        if path.contains(c) {
            v.push(format!("contains {what}"));
        }
    }
    let body = path.strip_prefix('/').unwrap_or(path);
    for (i, seg) in body.split('/').enumerate() {
        match seg {
            "" if i > 0 || !body.is_empty() => {
                v.push("has an empty segment ('//' or a trailing '/')".to_owned())
            }
            "." => v.push("has a \".\" segment".to_owned()),
            ".." => v.push("has a \"..\" segment".to_owned()),
            s if s.len() > MAX_SEGMENT_BYTES => v.push(format!(
                "has a segment of {} bytes; at most {MAX_SEGMENT_BYTES}",
                s.len()
            )),
            s if s.trim_end_matches([' ', '.']).is_empty() => {
                v.push(format!("has a segment of only dots and spaces ({s:?})"))
            }
            _ => {}
        }
    }
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "a",
            "frames/0001.png",
            "a.b/c..d/e",
            "checkpoints/step-100/model.safetensors",
            "ünïcode/ファイル.txt",
            "with space/and-dash_underscore",
        ] {
            assert_eq!(ObjectPath::parse(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn escapes_are_refused_with_every_reason() {
        for (p, needle) in [
            ("", "is empty"),
            ("..", "\"..\" segment"),
            ("a/../../b", "\"..\" segment"),
            ("./a", "\".\" segment"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a\\..\\b", "backslash"),
            ("a/%2E%2E/b", "%2e"),
            ("a%2fb", "%2f"),
            ("a%252e%252e", "double encoding"),
            ("a\0b", "control character"),
            ("a\nb", "control character"),
            ("C:/Windows", "drive letter"),
            ("a/\u{ff0e}\u{ff0e}/b", "fullwidth full stop"),
            ("a\u{2215}b", "division slash"),
            ("a/ . /b", "only dots and spaces"),
            ("a/.../b", "only dots and spaces"),
        ] {
            let err = ObjectPath::parse(p).unwrap_err();
            assert!(err.to_string().contains(needle), "{p:?}: {err}");
        }
        let long = "a/".repeat(500) + "b";
        assert!(
            ObjectPath::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("bytes long")
        );
        let seg = "x".repeat(300);
        assert!(
            ObjectPath::parse(&seg)
                .unwrap_err()
                .to_string()
                .contains("segment of 300 bytes")
        );
    }

    #[test]
    fn all_violations_are_listed_at_once() {
        let Err(Error::InvalidPath { violations, .. }) = ObjectPath::parse("/..\\%2e/\0") else {
            panic!("expected InvalidPath")
        };
        assert!(violations.len() >= 4, "{violations:?}");
    }

    #[test]
    fn prefixes_may_be_empty_or_end_with_a_slash() {
        assert_eq!(ObjectPath::parse_prefix("").unwrap(), None);
        assert_eq!(ObjectPath::parse_prefix("/").unwrap(), None);
        assert_eq!(
            ObjectPath::parse_prefix("frames/")
                .unwrap()
                .unwrap()
                .as_str(),
            "frames"
        );
        assert!(ObjectPath::parse_prefix("../").is_err());
    }
}
