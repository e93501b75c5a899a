//! The JSON Schema of a template's parameters: checked when loaded, applied at render.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::ParameterViolation;

/// A parameter schema compiled once at load time.
#[derive(Clone, Debug)]
pub(crate) struct ParameterSchema {
    schema: Value,
    validator: Arc<jsonschema::Validator>,
}

impl ParameterSchema {
    /// The schema used when a template declares no `parameters`: any object.
    pub(crate) fn default_document() -> Value {
        serde_json::json!({ "type": "object" })
    }

    /// Checks `schema` against its meta-schema and compiles it. The error is a message
    /// for the `parameters` field.
    pub(crate) fn compile(schema: &Value) -> Result<Self, String> {
        if !schema.is_object() {
            return Err("must be a table (a JSON Schema object)".into());
        }
        match schema.get("type") {
            None => {}
            Some(Value::String(t)) if t == "object" => {}
            Some(other) => {
                return Err(format!(
                    "parameters are always an object, so `type` must be \"object\", not {other}"
                ));
            }
        }
        let invalid = |e: &dyn std::fmt::Display, at: &str| {
            if at.is_empty() {
                format!("not a valid JSON Schema: {e}")
            } else {
                format!("not a valid JSON Schema: at {at}: {e}")
            }
        };
        match jsonschema::meta::try_validate(schema) {
            Err(e) => return Err(invalid(&e, "")),
            Ok(Err(e)) => return Err(invalid(&e, e.instance_path.as_str())),
            Ok(Ok(())) => {}
        }
        let validator =
            jsonschema::validator_for(schema).map_err(|e| invalid(&e, e.instance_path.as_str()))?;
        Ok(Self {
            schema: schema.clone(),
            validator: Arc::new(validator),
        })
    }

    /// Names under `properties`: the parameters placeholders may use.
    pub(crate) fn declared(&self) -> BTreeSet<&str> {
        self.schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| props.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Fills in the `default` of every top-level property missing from `params`.
    pub(crate) fn apply_defaults(&self, params: &mut Map<String, Value>) {
        let Some(props) = self.schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (name, prop) in props {
            if let Some(default) = prop.get("default")
                && !params.contains_key(name)
            {
                params.insert(name.clone(), default.clone());
            }
        }
    }

    /// Every way in which `params` violates the schema.
    pub(crate) fn violations(&self, params: &Value) -> Vec<ParameterViolation> {
        self.validator
            .iter_errors(params)
            .map(|e| ParameterViolation {
                path: e.instance_path.as_str().to_owned(),
                message: e.to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rejects_invalid_schemas() {
        assert!(ParameterSchema::compile(&json!({"type": "object"})).is_ok());
        let err = ParameterSchema::compile(&json!({
            "properties": {"frames": {"type": "integr"}}
        }))
        .unwrap_err();
        assert!(
            err.contains("not a valid JSON Schema") && err.contains("/properties/frames/type"),
            "{err}"
        );
        let err = ParameterSchema::compile(&json!({"type": "array"})).unwrap_err();
        assert!(err.contains("\"object\""), "{err}");
        assert!(ParameterSchema::compile(&json!(["x"])).is_err());
        let err =
            ParameterSchema::compile(&json!({"$schema": "https://example.invalid/s"})).unwrap_err();
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        let err = ParameterSchema::compile(&json!({
            "properties": {"a": {"type": "string", "pattern": "(unclosed"}}
        }))
        .unwrap_err();
        assert!(err.contains("not a valid JSON Schema"), "{err}");
    }

    #[test]
    fn defaults_and_violations() {
        let schema = ParameterSchema::compile(&json!({
            "type": "object",
            "required": ["scene"],
            "properties": {
                "scene": {"type": "string"},
                "frames": {"type": "integer", "minimum": 1, "default": 10},
            }
        }))
        .unwrap();
        assert_eq!(
            schema.declared().into_iter().collect::<Vec<_>>(),
            ["frames", "scene"]
        );
        let mut params = Map::new();
        schema.apply_defaults(&mut params);
        assert_eq!(params["frames"], 10);
        let v = schema.violations(&json!({"frames": 0}));
        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(v.len(), 2, "{shown:?}");
        assert!(shown.contains(&"/frames: 0 is less than the minimum of 1".to_owned()));
        assert!(shown.contains(&"/: \"scene\" is a required property".to_owned()));
    }
}
