//! Decoding into the k8s-openapi types and field validation (`422 Invalid` causes).

use std::collections::HashSet;

use k8s_openapi::api::{
    core::v1::{Event, LimitRange, Namespace, Node, Pod, ResourceQuota},
    networking::v1::NetworkPolicy,
    scheduling::v1::PriorityClass,
};
use serde_json::{Value, json};

use super::quantity::Quantity;
use super::status::{Cause, Failure};
use crate::store::Kind;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QNAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

fn check_qualified_name(field: &str, key: &str, causes: &mut Vec<Cause>) {
    let v = Value::String(key.to_string());
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        causes.push(Cause::invalid(
            field,
            &v,
            &format!("prefix part {SUBDOMAIN_MSG}"),
        ));
    }
    if name.is_empty() {
        causes.push(Cause::invalid(field, &v, "name part must be non-empty"));
    } else if name.len() > 63 {
        causes.push(Cause::invalid(
            field,
            &v,
            "name part must be no more than 63 characters",
        ));
    } else if !is_label_value(name) {
        causes.push(Cause::invalid(field, &v, QNAME_MSG));
    }
}

/// Decodes into the k8s-openapi type (type errors are `400 BadRequest`, as a real
/// server fails to decode) and checks quantities.
pub(crate) fn decode(kind: Kind, v: &Value) -> Result<(), Failure> {
    let err = match kind {
        Kind::Pod => serde_json::from_value::<Pod>(v.clone()).err(),
        Kind::Namespace => serde_json::from_value::<Namespace>(v.clone()).err(),
        Kind::Node => serde_json::from_value::<Node>(v.clone()).err(),
        Kind::ResourceQuota => serde_json::from_value::<ResourceQuota>(v.clone()).err(),
        Kind::LimitRange => serde_json::from_value::<LimitRange>(v.clone()).err(),
        Kind::PriorityClass => serde_json::from_value::<PriorityClass>(v.clone()).err(),
        Kind::NetworkPolicy => serde_json::from_value::<NetworkPolicy>(v.clone()).err(),
        Kind::Event => serde_json::from_value::<Event>(v.clone()).err(),
    };
    let bad = |msg: String| {
        Failure::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {msg}",
            kind.name(),
            kind.api_version().rsplit('/').next().unwrap_or("v1"),
            kind.name()
        ))
    };
    if let Some(e) = err {
        return Err(bad(e.to_string()));
    }
    let mut qty_ok = true;
    for_each_quantity(kind, v, &mut |q| {
        if Quantity::parse(q).is_none() {
            qty_ok = false;
        }
    });
    if !qty_ok {
        return Err(bad(QUANTITY_MSG.to_string()));
    }
    Ok(())
}

fn resource_maps(v: &Value) -> impl Iterator<Item = &serde_json::Map<String, Value>> {
    v.as_object().into_iter()
}

fn for_each_quantity(kind: Kind, v: &Value, f: &mut dyn FnMut(&str)) {
    let mut visit_list = |m: Option<&Value>| {
        for map in m.into_iter().flat_map(resource_maps) {
            for q in map.values() {
                if let Some(s) = q.as_str() {
                    f(s);
                }
            }
        }
    };
    match kind {
        Kind::Pod => {
            for list in ["containers", "initContainers"] {
                for c in v
                    .pointer(&format!("/spec/{list}"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    visit_list(c.pointer("/resources/requests"));
                    visit_list(c.pointer("/resources/limits"));
                }
            }
        }
        Kind::ResourceQuota => visit_list(v.pointer("/spec/hard")),
        Kind::LimitRange => {
            for item in v
                .pointer("/spec/limits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for k in [
                    "max",
                    "min",
                    "default",
                    "defaultRequest",
                    "maxLimitRequestRatio",
                ] {
                    visit_list(item.get(k));
                }
            }
        }
        _ => {}
    }
}

/// Every validation problem of an object about to be stored.
pub(crate) fn validate(kind: Kind, v: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if kind == Kind::Namespace {
        if !is_dns_label(name) {
            causes.push(Cause::invalid("metadata.name", &json!(name), LABEL_MSG));
        }
    } else if !is_dns_subdomain(name) {
        causes.push(Cause::invalid("metadata.name", &json!(name), SUBDOMAIN_MSG));
    }
    if let Some(labels) = v.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, val) in labels {
            check_qualified_name("metadata.labels", k, &mut causes);
            let s = val.as_str().unwrap_or("");
            if s.len() > 63 {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    val,
                    "must be no more than 63 characters",
                ));
            } else if !is_label_value(s) {
                causes.push(Cause::invalid("metadata.labels", val, VALUE_MSG));
            }
        }
    }
    if let Some(ann) = v
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for k in ann.keys() {
            check_qualified_name("metadata.annotations", k, &mut causes);
        }
    }
    if let Some(fins) = v.pointer("/metadata/finalizers").and_then(Value::as_array) {
        for (i, f) in fins.iter().enumerate() {
            let s = f.as_str().unwrap_or("");
            if !s.contains('/') && !["kubernetes", "orphan", "foregroundDeletion"].contains(&s) {
                causes.push(Cause::invalid(
                    format!("metadata.finalizers[{i}]"),
                    f,
                    "name is neither a standard finalizer name nor is it fully qualified",
                ));
            } else {
                check_qualified_name(&format!("metadata.finalizers[{i}]"), s, &mut causes);
            }
        }
    }
    match kind {
        Kind::Pod => validate_pod(v, &mut causes),
        Kind::PriorityClass => {
            if v.get("value").is_none_or(Value::is_null) {
                causes.push(Cause::required("value", ""));
            }
            if let Some(p) = v.get("preemptionPolicy").and_then(Value::as_str)
                && !["Never", "PreemptLowerPriority"].contains(&p)
            {
                causes.push(Cause::not_supported(
                    "preemptionPolicy",
                    &json!(p),
                    &["Never", "PreemptLowerPriority"],
                ));
            }
        }
        Kind::LimitRange => {
            for (i, item) in v
                .pointer("/spec/limits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let ty = item.get("type").and_then(Value::as_str).unwrap_or("");
                if !["Container", "Pod", "PersistentVolumeClaim"].contains(&ty) {
                    causes.push(Cause::not_supported(
                        format!("spec.limits[{i}].type"),
                        &json!(ty),
                        &["Container", "PersistentVolumeClaim", "Pod"],
                    ));
                }
            }
        }
        _ => {}
    }
    causes
}

fn validate_pod(v: &Value, causes: &mut Vec<Cause>) {
    let spec = v.get("spec");
    let volumes: HashSet<&str> = spec
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|vol| vol.get("name").and_then(Value::as_str))
        .collect();
    let mut seen = HashSet::new();
    for (i, vol) in spec
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let n = vol.get("name").and_then(Value::as_str).unwrap_or("");
        if n.is_empty() {
            causes.push(Cause::required(format!("spec.volumes[{i}].name"), ""));
        } else if !seen.insert(n) {
            causes.push(Cause::duplicate(
                format!("spec.volumes[{i}].name"),
                &json!(n),
            ));
        }
    }
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required("spec.containers", ""));
    }
    let mut names = HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .and_then(|s| s.get(list))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = format!("spec.{list}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required(format!("{path}.name"), ""));
            } else if !is_dns_label(name) {
                causes.push(Cause::invalid(
                    format!("{path}.name"),
                    &json!(name),
                    LABEL_MSG,
                ));
            } else if !names.insert(name.to_string()) {
                causes.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                causes.push(Cause::required(format!("{path}.image"), ""));
            }
            for (j, m) in c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mname = m.get("name").and_then(Value::as_str).unwrap_or("");
                if !volumes.contains(mname) {
                    causes.push(Cause {
                        reason: "FieldValueNotFound",
                        field: format!("{path}.volumeMounts[{j}].name"),
                        message: format!("Not found: {}", json!(mname)),
                    });
                }
                if m.get("mountPath")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(Cause::required(
                        format!("{path}.volumeMounts[{j}].mountPath"),
                        "",
                    ));
                }
            }
            let requests = c.pointer("/resources/requests").and_then(Value::as_object);
            let limits = c.pointer("/resources/limits").and_then(Value::as_object);
            if let (Some(req), Some(lim)) = (requests, limits) {
                for (res, rq) in req {
                    let Some(lq) = lim.get(res) else { continue };
                    let (Some(r), Some(l)) = (
                        rq.as_str().and_then(Quantity::parse),
                        lq.as_str().and_then(Quantity::parse),
                    ) else {
                        continue;
                    };
                    if r.millis > l.millis {
                        causes.push(Cause::invalid(
                            format!("{path}.resources.requests"),
                            rq,
                            &format!(
                                "must be less than or equal to {res} limit of {}",
                                lq.as_str().unwrap_or("")
                            ),
                        ));
                    }
                }
            }
        }
    }
    if let Some(rp) = spec
        .and_then(|s| s.get("restartPolicy"))
        .and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        causes.push(Cause::not_supported(
            "spec.restartPolicy",
            &json!(rp),
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(d) = spec
        .and_then(|s| s.get("activeDeadlineSeconds"))
        .and_then(Value::as_i64)
        && d <= 0
    {
        causes.push(Cause::invalid(
            "spec.activeDeadlineSeconds",
            &json!(d),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("Bad_Name"));
    }

    #[test]
    fn every_problem_listed() {
        let pod = json!({
            "metadata": {"name": "Bad_Name", "labels": {"ok/x": "y", "bad key": "v", "k": "-bad-"}},
            "spec": {"containers": [{"name": "a"}, {"image": "x"}]}
        });
        let fields: Vec<String> = validate(Kind::Pod, &pod)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels",
                "metadata.labels",
                "spec.containers[0].image",
                "spec.containers[1].name"
            ]
        );
    }

    #[test]
    fn decode_rejects_bad_types_and_quantities() {
        assert!(decode(Kind::Pod, &json!({"metadata": {"name": 3}})).is_err());
        let bad_q = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "i", "resources": {"limits": {"cpu": "lots"}}}]}});
        assert_eq!(decode(Kind::Pod, &bad_q).unwrap_err().code, 400);
    }
}
