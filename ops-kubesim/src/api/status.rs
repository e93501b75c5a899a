//! `meta/v1 Status` answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::{ApiError, Kind};

/// A failed request: becomes a `Status` body with the HTTP code.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
}

impl Failure {
    /// A failure without details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Failure {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// `404 NotFound` for the path.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// `405 MethodNotAllowed`.
    pub fn method_not_allowed(method: &str, kind: Kind) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {})",
                kind.plural()
            ),
        )
    }

    /// Attaches `details`.
    pub fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    /// Details naming an object of a kind, if no details are set yet.
    pub fn for_object(mut self, kind: Kind, name: Option<&str>) -> Self {
        if self.details.is_none() {
            let mut d = json!({"kind": kind.plural()});
            if !kind.group().is_empty() {
                d["group"] = kind.group().into();
            }
            if let Some(n) = name.filter(|n| !n.is_empty()) {
                d["name"] = n.into();
            }
            self.details = Some(d);
        }
        self
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::new(e.code, &e.reason, e.message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.to_status())
    }
}

/// A JSON response.
pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    bytes_response(code, serde_json::to_vec(v).expect("JSON values serialize"))
}

/// A response with an already-serialized JSON body.
pub(crate) fn bytes_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A `Status` with `status: Success`.
pub(crate) fn success(code: u16, details: Option<Value>) -> Value {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}

/// `Kind "name" is invalid: ...` with one cause per problem (`422 Invalid`).
pub(crate) fn invalid(kind: Kind, name: &str, causes: Vec<Cause>) -> Failure {
    let msgs: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let joined = if msgs.len() == 1 {
        msgs[0].clone()
    } else {
        format!("[{}]", msgs.join(", "))
    };
    let mut details = json!({
        "name": name,
        "kind": kind.name(),
        "causes": causes.iter().map(|c| json!({
            "reason": c.reason,
            "message": c.message,
            "field": c.field,
        })).collect::<Vec<_>>(),
    });
    if !kind.group().is_empty() {
        details["group"] = kind.group().into();
    }
    Failure::new(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {joined}", kind.name()),
    )
    .with_details(details)
}

/// One validation problem.
#[derive(Clone, Debug)]
pub(crate) struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueForbidden`, `FieldValueDuplicate`.
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    /// `Required value`.
    pub fn required(field: impl Into<String>, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: if detail.is_empty() {
                "Required value".to_string()
            } else {
                format!("Required value: {detail}")
            },
        }
    }

    /// `Invalid value: "x": detail`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    /// `Unsupported value: "x": supported values: ...`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Cause {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        }
    }

    /// `Duplicate value: "x"`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }

    /// `Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}
