//! PATCH bodies: JSON merge patch, a strategic merge patch (merge keys for the common
//! Pod lists, set semantics for finalizers) and JSON patch.

use serde_json::{Map, Value};

use super::status::Failure;

/// The kind of patch, from the `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    /// From a `Content-Type` header value; None if unsupported.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        Some(match ct {
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/json-patch+json" => PatchType::Json,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
            _ => return None,
        })
    }
}

/// Applies a patch body to `doc`.
pub(crate) fn apply(ty: PatchType, doc: &mut Value, body: &[u8]) -> Result<(), Failure> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::bad_request(format!("error decoding patch: {e}")))?;
    match ty {
        PatchType::Merge | PatchType::Apply => {
            if !patch.is_object() {
                return Err(Failure::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            json_patch::merge(doc, &patch);
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(Failure::bad_request(
                    "error decoding patch: a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(doc, &patch, "");
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| Failure::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(doc, &ops)
                .map_err(|e| Failure::new(422, "Invalid", e.to_string()))?;
        }
    }
    Ok(())
}

/// The merge key of a list field, by field name (as in the k8s patchMergeKey tags).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "readinessGates"
        | "resourceClaims" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "ports" => "containerPort",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars merged as sets.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge(doc: &mut Value, patch: &Value, _field: &str) {
    let Some(pmap) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if pmap.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = pmap.clone();
        p.remove("$patch");
        *doc = Value::Object(p);
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let dmap = doc.as_object_mut().expect("object");
    for (k, v) in pmap {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (
                dmap.get_mut(field).and_then(Value::as_array_mut),
                v.as_array(),
            ) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            dmap.remove(k);
            continue;
        }
        match v {
            Value::Object(_) => {
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    dmap.remove(k);
                } else {
                    let slot = dmap.entry(k.clone()).or_insert(Value::Null);
                    strategic_merge(slot, v, k);
                }
            }
            Value::Array(items) => {
                if let Some(key) = merge_key(k) {
                    let slot = dmap.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                    merge_keyed_list(slot, items, key);
                } else if is_set_list(k) {
                    let slot = dmap.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                    if let Some(list) = slot.as_array_mut() {
                        for x in items {
                            if !list.contains(x) {
                                list.push(x.clone());
                            }
                        }
                    } else {
                        *slot = v.clone();
                    }
                } else {
                    dmap.insert(k.clone(), v.clone());
                }
            }
            _ => {
                dmap.insert(k.clone(), v.clone());
            }
        }
    }
}

fn merge_keyed_list(slot: &mut Value, items: &[Value], key: &str) {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *slot = Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        );
        return;
    }
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let list = slot.as_array_mut().expect("array");
    for item in items {
        let Some(kv) = item.get(key) else {
            list.push(item.clone());
            continue;
        };
        let pos = list.iter().position(|x| x.get(key) == Some(kv));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut list[i], item, ""),
            (None, false) => list.push(item.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_by_key_and_sets() {
        let mut doc = json!({"metadata": {"finalizers": ["a/x", "b/y"], "labels": {"k": "v"}},
            "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        let patch = json!({"metadata": {"finalizers": ["c/z"], "labels": {"k": null, "n": "m"},
            "$deleteFromPrimitiveList/finalizers": ["a/x"]},
            "spec": {"containers": [{"name": "b", "image": "3"}, {"name": "a", "$patch": "delete"}]}});
        apply(
            PatchType::Strategic,
            &mut doc,
            &serde_json::to_vec(&patch).unwrap(),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["b/y", "c/z"], "labels": {"n": "m"}},
                "spec": {"containers": [{"name": "b", "image": "3"}]}})
        );
    }

    #[test]
    fn json_patch_and_errors() {
        let mut doc = json!({"metadata": {"labels": {"a": "b"}}});
        let ops = json!([{"op": "replace", "path": "/metadata/labels/a", "value": "c"}]);
        apply(
            PatchType::Json,
            &mut doc,
            &serde_json::to_vec(&ops).unwrap(),
        )
        .unwrap();
        assert_eq!(doc["metadata"]["labels"]["a"], "c");
        let bad = json!([{"op": "test", "path": "/metadata/labels/a", "value": "z"}]);
        let err = apply(
            PatchType::Json,
            &mut doc,
            &serde_json::to_vec(&bad).unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            apply(PatchType::Merge, &mut doc, b"{nope")
                .unwrap_err()
                .code,
            400
        );
    }
}
