//! Checking parameters and substituting them into a template.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::TaskTemplate;
use super::load::kind;
use super::placeholder::{Pattern, Segment};
use crate::taskdir::{check_glob, check_relative};
use crate::{Error, ParameterViolation, Result, StagedInput};

/// A template with parameters filled in: what an executor needs to start the task.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RenderedCommand {
    /// Program and arguments, for direct execution (never through a shell, except the
    /// explicit `["/bin/sh", "-c", script]` of a template with `shell = true`).
    pub argv: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the task directory, checked not to escape it.
    pub workdir: Option<PathBuf>,
    /// Output glob patterns relative to the task directory, checked not to escape it.
    pub output_globs: Vec<String>,
    /// Storage objects to copy into the task directory, both paths checked.
    pub inputs: Vec<StagedInput>,
    /// The parameters as checked: the submitted ones plus schema defaults.
    pub parameters: Value,
}

/// The program a `shell = true` template runs its script with.
const SHELL: &str = "/bin/sh";

impl TaskTemplate {
    /// Checks `params` against the parameter schema (after filling in each missing
    /// top-level property's `default`) and substitutes them into the command,
    /// environment, working directory and outputs.
    ///
    /// Fails with [`Error::InvalidParameters`] listing every schema violation with its
    /// JSON pointer, and also when a used parameter is absent or holds a NUL byte; with
    /// [`Error::PathEscape`] when a rendered `workdir` or output would leave the task
    /// directory. `null` counts as no parameters.
    pub fn render(&self, params: &Value) -> Result<RenderedCommand> {
        let mut map = match params {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => {
                return Err(self.invalid(vec![ParameterViolation {
                    path: String::new(),
                    message: format!("parameters must be an object, not {}", kind(other)),
                }]));
            }
        };
        self.compiled.schema.apply_defaults(&mut map);
        let parameters = Value::Object(map);
        let violations = self.compiled.schema.violations(&parameters);
        if !violations.is_empty() {
            return Err(self.invalid(violations));
        }
        let Value::Object(map) = &parameters else {
            unreachable!("built as an object above")
        };

        let mut sub = Substitution {
            params: map,
            violations: Vec::new(),
        };
        let argv = if self.shell {
            let script = self
                .compiled
                .command
                .iter()
                .map(|p| sub.render(p, true))
                .collect::<String>();
            vec![SHELL.to_owned(), "-c".to_owned(), script]
        } else {
            let mut argv = Vec::with_capacity(self.compiled.command.len());
            for pattern in &self.compiled.command {
                match pattern.sole_param().and_then(|name| sub.scalar_list(name)) {
                    Some(items) => argv.extend(items),
                    None => argv.push(sub.render(pattern, false)),
                }
            }
            argv
        };
        let env = self
            .compiled
            .env
            .iter()
            .map(|(k, p)| (k.clone(), sub.render(p, false)))
            .collect();
        let workdir = self.compiled.workdir.as_ref().map(|p| sub.render(p, false));
        let output_globs: Vec<String> = self
            .compiled
            .outputs
            .iter()
            .map(|p| sub.render(p, false))
            .collect();

        let inputs: Vec<(String, String)> = self
            .compiled
            .inputs
            .iter()
            .map(|(from, to)| (sub.render(from, false), sub.render(to, false)))
            .collect();

        let mut violations = sub.violations;
        if argv.is_empty() && violations.is_empty() {
            violations.push(ParameterViolation {
                path: String::new(),
                message: "the command renders to no arguments at all".into(),
            });
        }
        if !violations.is_empty() {
            return Err(self.invalid(violations));
        }
        let workdir = workdir.map(|dir| check_relative(&dir)).transpose()?;
        for glob in &output_globs {
            check_glob(glob)?;
        }
        let inputs = self.check_inputs(inputs)?;
        Ok(RenderedCommand {
            argv,
            env,
            workdir,
            output_globs,
            inputs,
            parameters,
        })
    }

    /// Checks rendered inputs: `from` a storage path, `to` inside the task directory.
    /// Every bad one is listed, under the first parameter its field uses.
    fn check_inputs(&self, rendered: Vec<(String, String)>) -> Result<Vec<StagedInput>> {
        let mut violations = Vec::new();
        let mut inputs = Vec::with_capacity(rendered.len());
        for (i, ((from, to), (from_pattern, to_pattern))) in
            rendered.into_iter().zip(&self.compiled.inputs).enumerate()
        {
            let at = |pattern: &Pattern| {
                pattern
                    .params()
                    .next()
                    .map(|p| format!("/{p}"))
                    .unwrap_or_default()
            };
            if let Err(e) = ops_core::ObjectPath::parse(&from) {
                violations.push(ParameterViolation {
                    path: at(from_pattern),
                    message: format!("inputs[{i}].from: {e}"),
                });
            }
            match check_relative(&to) {
                Ok(to) => inputs.push(StagedInput::new(from, to)),
                Err(e) => violations.push(ParameterViolation {
                    path: at(to_pattern),
                    message: format!("inputs[{i}].to: {e}"),
                }),
            }
        }
        if violations.is_empty() {
            Ok(inputs)
        } else {
            Err(self.invalid(violations))
        }
    }

    fn invalid(&self, violations: Vec<ParameterViolation>) -> Error {
        Error::InvalidParameters {
            template: self.name.clone(),
            violations,
        }
    }
}

/// Substitution of checked parameters, collecting what cannot be substituted.
struct Substitution<'a> {
    params: &'a Map<String, Value>,
    violations: Vec<ParameterViolation>,
}

impl<'a> Substitution<'a> {
    fn violation(&mut self, name: &str, message: &str) {
        let v = ParameterViolation {
            path: format!("/{name}"),
            message: message.to_owned(),
        };
        if !self.violations.contains(&v) {
            self.violations.push(v);
        }
    }

    fn value(&mut self, name: &str) -> Option<&'a Value> {
        let value = self.params.get(name);
        if value.is_none() {
            self.violation(
                name,
                "used by the template but not given, and the schema has no default",
            );
        }
        value
    }

    /// The items of an array of scalars, one argument each.
    fn scalar_list(&mut self, name: &str) -> Option<Vec<String>> {
        let Some(Value::Array(items)) = self.params.get(name) else {
            return None;
        };
        if !items.iter().all(is_scalar) {
            return None;
        }
        Some(items.iter().map(|item| self.text(name, item)).collect())
    }

    /// A value as text; strings verbatim, `null` empty, anything else as JSON.
    fn text(&mut self, name: &str, value: &Value) -> String {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if text.contains('\0') {
            self.violation(
                name,
                "contains a NUL byte, which no process argument can hold",
            );
            return String::new();
        }
        text
    }

    /// A value as one shell word, or as one word per item for an array of scalars.
    fn quoted(&mut self, name: &str, value: &Value) -> String {
        let words: Vec<String> = match value {
            Value::Array(items) if items.iter().all(is_scalar) => {
                items.iter().map(|item| self.text(name, item)).collect()
            }
            other => vec![self.text(name, other)],
        };
        let mut out = Vec::with_capacity(words.len());
        for word in &words {
            match shlex::try_quote(word) {
                Ok(quoted) => out.push(quoted.into_owned()),
                Err(e) => self.violation(name, &format!("cannot be quoted for the shell: {e}")),
            }
        }
        out.join(" ")
    }

    fn render(&mut self, pattern: &Pattern, shell: bool) -> String {
        let mut out = String::new();
        for segment in pattern.segments() {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Param(name) => {
                    let Some(value) = self.value(name) else {
                        continue;
                    };
                    let text = if shell {
                        self.quoted(name, value)
                    } else {
                        self.text(name, value)
                    };
                    out.push_str(&text);
                }
            }
        }
        out
    }
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn template(extra: Value) -> TaskTemplate {
        let mut base = json!({
            "name": "t",
            "parameters": {
                "type": "object",
                "properties": {
                    "s": {"type": "string"},
                    "n": {"type": "number", "default": 2.5},
                    "b": {"type": "boolean"},
                    "z": {"type": "null"},
                    "list": {"type": "array"},
                    "obj": {"type": "object"},
                    "dir": {"type": "string"}
                }
            },
            "command": ["echo"]
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        TaskTemplate::from_value(base, "t").unwrap()
    }

    #[test]
    fn values_become_text() {
        let t = template(json!({
            "command": ["echo", "{{s}}", "{{ n }}", "b={{b}}", "[{{z}}]", "{{obj}}", "x{{list}}", "{{list}}"],
            "env": {"S": "{{ s }}-{{n}}"},
        }));
        let r = t
            .render(&json!({
                "s": "a b", "b": true, "z": null, "obj": {"k": [1]}, "list": ["p", 1, false]
            }))
            .unwrap();
        assert_eq!(
            r.argv,
            [
                "echo",
                "a b",
                "2.5",
                "b=true",
                "[]",
                r#"{"k":[1]}"#,
                r#"x["p",1,false]"#,
                "p",
                "1",
                "false"
            ]
        );
        assert_eq!(r.env["S"], "a b-2.5");
        assert_eq!(r.parameters["n"], 2.5);
    }

    #[test]
    fn lists_of_non_scalars_stay_one_argument() {
        let t = template(json!({"command": ["echo", "{{list}}"]}));
        let r = t.render(&json!({"list": [[1], {"a": 2}]})).unwrap();
        assert_eq!(r.argv, ["echo", r#"[[1],{"a":2}]"#]);
        let r = t.render(&json!({"list": []})).unwrap();
        assert_eq!(r.argv, ["echo"]);
        let t = template(json!({"command": ["{{list}}"]}));
        let err = t.render(&json!({"list": []})).unwrap_err();
        assert!(err.to_string().contains("no arguments"), "{err}");
    }

    #[test]
    fn missing_and_nul_values_are_violations() {
        let t = template(
            json!({"command": ["echo", "{{s}}", "{{b}}", "{{s}}"], "env": {"B": "{{b}}"}}),
        );
        let Err(Error::InvalidParameters {
            template,
            violations,
        }) = t.render(&json!({"s": "a\0b"}))
        else {
            panic!("expected InvalidParameters");
        };
        assert_eq!(template, "t");
        let shown: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("/s: contains a NUL byte"), "{shown:?}");
        assert!(
            shown[1].starts_with("/b: used by the template but not given"),
            "{shown:?}"
        );
        let err = t.render(&json!("scene")).unwrap_err();
        assert!(
            err.to_string().contains("must be an object, not a string"),
            "{err}"
        );
    }

    #[test]
    fn shell_values_are_quoted() {
        let t =
            template(json!({"shell": true, "command": ["printf '%s\\n' {{s}} {{list}} {{n}}"]}));
        let r = t
            .render(&json!({"s": "it's $(x)", "list": ["a b", "c"]}))
            .unwrap();
        assert_eq!(r.argv[..2], ["/bin/sh", "-c"]);
        let words = shlex::split(&r.argv[2]).unwrap();
        assert_eq!(words, ["printf", "%s\\n", "it's $(x)", "a b", "c", "2.5"]);
        let err = t.render(&json!({"s": "nul\0"})).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidParameters { violations, .. } if violations[0].path == "/s"),
            "{err}"
        );
    }

    #[test]
    fn rendered_paths_cannot_escape() {
        let t = template(json!({"workdir": "work/{{dir}}", "outputs": ["{{dir}}/*.png"]}));
        let r = t.render(&json!({"dir": "./shot1"})).unwrap();
        assert_eq!(r.workdir, Some(PathBuf::from("work/shot1")));
        assert_eq!(r.output_globs, ["./shot1/*.png"]);
        for bad in ["../..", "a/../../b"] {
            let err = t.render(&json!({"dir": bad})).unwrap_err();
            assert!(matches!(err, Error::PathEscape { .. }), "{bad}: {err}");
        }
        let t = template(json!({"outputs": ["{{dir}}/*.png"]}));
        let err = t.render(&json!({"dir": "/etc"})).unwrap_err();
        assert!(matches!(err, Error::PathEscape { .. }), "{err}");
    }

    #[test]
    fn inputs_are_rendered_and_checked() {
        let t = template(json!({"inputs": [
            "datasets/{{s}}",
            {"from": "scenes/{{s}}.blend", "to": "in/{{dir}}/scene.blend"},
        ]}));
        let r = t.render(&json!({"s": "a b", "dir": "./x"})).unwrap();
        assert_eq!(
            r.inputs,
            [
                StagedInput::new("datasets/a b", "datasets/a b"),
                StagedInput::new("scenes/a b.blend", "in/x/scene.blend"),
            ]
        );
        let Err(Error::InvalidParameters { violations, .. }) =
            t.render(&json!({"s": "../other", "dir": "../.."}))
        else {
            panic!("expected InvalidParameters");
        };
        let shown: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("/s: inputs[0].from: invalid object path"),
            "{shown:?}"
        );
        assert!(shown[1].starts_with("/s: inputs[0].to: path"), "{shown:?}");
        assert!(
            shown[3].starts_with("/dir: inputs[1].to: path"),
            "{shown:?}"
        );
    }
}
