//! Label and field selectors, compiled once per request.

use serde_json::Value;

use super::status::Failure;
use crate::store::Kind;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A compiled label selector (every requirement must hold).
#[derive(Clone, Debug, Default)]
pub(crate) struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn bad_label(s: &str, why: &str) -> Failure {
    Failure::bad_request(format!("unable to parse requirement: {why}: {s:?}"))
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(s: &str) -> Result<LabelSelector, Failure> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad_label(s, "found '', expected: identifier"));
            }
            let req = if let Some(key) = p.strip_prefix('!') {
                (key.trim().to_string(), Op::NotExists)
            } else if let Some((k, v)) = p.split_once("!=") {
                (k.trim().to_string(), Op::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = p.split_once("==") {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = p.split_once('=') {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some(open) = p.find('(') {
                let head = p[..open].trim();
                let close = p
                    .rfind(')')
                    .ok_or_else(|| bad_label(s, "found '', expected: ')'"))?;
                let values: Vec<String> = p[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                let (key, op) = head
                    .rsplit_once(char::is_whitespace)
                    .ok_or_else(|| bad_label(s, "expected 'in' or 'notin'"))?;
                let op = match op.trim() {
                    "in" => Op::In(values),
                    "notin" => Op::NotIn(values),
                    other => {
                        return Err(bad_label(s, &format!("unknown operator {other:?}")));
                    }
                };
                (key.trim().to_string(), op)
            } else {
                (p.to_string(), Op::Exists)
            };
            if req.0.is_empty() || req.0.contains(char::is_whitespace) {
                return Err(bad_label(s, "invalid label key"));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// Whether the object's labels match.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.reqs.is_empty() {
            return true;
        }
        let labels = obj.pointer("/metadata/labels");
        self.reqs.iter().all(|(k, op)| {
            let v = labels.and_then(|l| l.get(k)).and_then(Value::as_str);
            match op {
                Op::Eq(x) => v == Some(x.as_str()),
                Op::NotEq(x) => v != Some(x.as_str()),
                Op::In(xs) => v.is_some_and(|v| xs.iter().any(|x| x == v)),
                Op::NotIn(xs) => v.is_none_or(|v| !xs.iter().any(|x| x == v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
            }
        })
    }
}

/// A compiled field selector.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldSelector {
    reqs: Vec<(&'static str, bool, String)>,
}

fn field_pointer(field: &str) -> Option<&'static str> {
    Some(match field {
        "metadata.name" => "/metadata/name",
        "metadata.namespace" => "/metadata/namespace",
        "status.phase" => "/status/phase",
        "spec.nodeName" => "/spec/nodeName",
        "spec.schedulerName" => "/spec/schedulerName",
        "status.podIP" => "/status/podIP",
        "involvedObject.name" => "/involvedObject/name",
        "involvedObject.kind" => "/involvedObject/kind",
        "involvedObject.uid" => "/involvedObject/uid",
        "reason" => "/reason",
        "type" => "/type",
        _ => return None,
    })
}

fn allowed_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.schedulerName",
            "status.phase",
            "status.podIP",
        ],
        Kind::Namespace => &["metadata.name", "status.phase"],
        Kind::Event => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.name",
            "involvedObject.kind",
            "involvedObject.uid",
            "reason",
            "type",
        ],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

impl FieldSelector {
    /// Parses `metadata.name=x,status.phase!=Running` for a kind.
    pub fn parse(kind: Kind, s: &str) -> Result<FieldSelector, Failure> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for part in s.split(',') {
            let part = part.trim();
            let (k, neg, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, false, v)
            } else {
                return Err(Failure::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let k = k.trim();
            let allowed = allowed_fields(kind);
            let ptr = field_pointer(k)
                .filter(|_| allowed.contains(&k))
                .ok_or_else(|| Failure::bad_request(format!("field label not supported: {k}")))?;
            reqs.push((ptr, neg, v.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    /// Whether the object matches (absent fields count as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(ptr, neg, want)| {
            let v = obj.pointer(ptr).and_then(Value::as_str).unwrap_or("");
            (v == want) != *neg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels() {
        let o = json!({"metadata": {"labels": {"app": "a", "tier": "web"}}});
        let t = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(t("app=a"));
        assert!(t("app==a,tier"));
        assert!(!t("app!=a"));
        assert!(t("tier in (web, db)"));
        assert!(!t("tier notin (web)"));
        assert!(t("x notin (web)"));
        assert!(t("!x"));
        assert!(!t("!app"));
        assert!(t("app in (a),tier notin (db),!y"));
        assert!(t(""));
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn fields() {
        let o =
            json!({"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running"}});
        let t = |s: &str| FieldSelector::parse(Kind::Pod, s).unwrap().matches(&o);
        assert!(t("metadata.name=p"));
        assert!(t("status.phase!=Pending,metadata.namespace==n"));
        assert!(t("spec.nodeName="));
        assert!(!t("spec.nodeName!="));
        assert!(FieldSelector::parse(Kind::Pod, "spec.foo=x").is_err());
        assert!(FieldSelector::parse(Kind::Node, "status.phase=x").is_err());
    }
}
