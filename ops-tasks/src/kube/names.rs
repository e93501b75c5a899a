//! Object names and label values: what Kubernetes accepts, derived from Ops names.

use sha2::{Digest, Sha256};

/// Label marking every object Ops manages; Ops only touches objects that carry it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ops");
/// Label with the task id.
pub const TASK_ID: &str = "ops.dev/task-id";
/// Label with the attempt number.
pub const ATTEMPT: &str = "ops.dev/attempt";
/// Label with the tenant (label-safe form; the exact name is in an annotation).
pub const TENANT: &str = "ops.dev/tenant";
/// Label with the environment (label-safe form).
pub const ENVIRONMENT: &str = "ops.dev/environment";
/// Label on scavenger pods.
pub const SCAVENGER: &str = "ops.dev/scavenger";
/// Annotation with the exact tenant name.
pub const TENANT_ANNOTATION: &str = "ops.dev/tenant-name";
/// Finalizer that keeps a pod until Ops has read how it ended.
pub const FINALIZER: &str = "ops.dev/outcome";
/// The task container's name.
pub const CONTAINER: &str = "task";

/// The label selector of every pod Ops manages.
pub fn managed_selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// Whether `s` is an RFC 1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A short stable hash of `s` (8 hex digits).
fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// Lower-cases and replaces anything outside `[a-z0-9-]` by `-`, trimming dashes.
fn dns_words(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut out = String::with_capacity(mapped.len());
    for c in mapped.chars() {
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    out.trim_matches('-').to_owned()
}

/// The namespace of a tenant's environment: `<prefix>-<tenant>-<environment>`, made a
/// DNS label. When that changed the names (upper case, other characters) or had to be
/// shortened, a hash of the exact names is appended so that two tenants never share one.
pub fn namespace(prefix: &str, tenant: &str, environment: &str) -> String {
    let plain = format!("{prefix}-{}-{}", dns_words(tenant), dns_words(environment));
    let exact = format!("{prefix}-{tenant}-{environment}");
    if plain == exact && plain.len() <= 63 {
        return plain;
    }
    let hash = short_hash(&format!("{tenant}\u{0}{environment}"));
    let mut head = plain;
    head.truncate(63 - hash.len() - 1);
    format!("{}-{hash}", head.trim_end_matches('-'))
}

/// A label value for `s`: itself when valid, else a sanitized form with a hash suffix
/// (label values: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends).
pub fn label_value(s: &str) -> String {
    let valid = s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        return s.to_owned();
    }
    let hash = short_hash(s);
    let mut head = dns_words(s);
    head.truncate(63 - hash.len() - 1);
    let head = head.trim_end_matches('-');
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// The pod of one attempt: `ops-<task id>-<attempt>` (at most 50 characters), so that a
/// retried create finds the pod an earlier call made instead of making a second one.
pub fn pod_name(task_id: &ops_core::TaskId, attempt: u32) -> String {
    format!("ops-{task_id}-{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dns_labels_and_distinct() {
        assert_eq!(
            namespace("ops", "acme", "production"),
            "ops-acme-production"
        );
        let a = namespace("ops", "Acme", "production");
        let b = namespace("ops", "acme!", "production");
        assert!(is_dns_label(&a) && is_dns_label(&b), "{a} {b}");
        assert_ne!(a, b);
        assert_ne!(a, "ops-acme-production");
        let long = namespace("ops", &"t".repeat(100), "staging");
        assert!(is_dns_label(&long), "{long}");
        assert_ne!(long, namespace("ops", &"t".repeat(101), "staging"));
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("acme"), "acme");
        assert_eq!(label_value("Acme_Corp.1"), "Acme_Corp.1");
        for s in ["acme corp", "-x-", &"y".repeat(80), "ü", ""] {
            let v = label_value(s);
            assert!(v.len() <= 63, "{v}");
            assert!(
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
                "{v}"
            );
        }
        assert_ne!(label_value("acme corp"), label_value("acme-corp"));
    }

    #[test]
    fn pod_names_fit() {
        let id = ops_core::TaskId::new();
        let name = pod_name(&id, 12);
        assert!(is_dns_subdomain(&name) && name.len() <= 63, "{name}");
    }

    #[test]
    fn dns_checks() {
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("-a") && !is_dns_label("A") && !is_dns_label(""));
        assert!(is_dns_subdomain("ops.dev-x"));
        assert!(!is_dns_subdomain("ops..dev"));
    }
}
