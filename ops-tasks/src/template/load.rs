//! Turning a parsed file into a [`TaskTemplate`], collecting every problem on the way.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ops_core::Resources;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::placeholder::Pattern;
use super::schema::ParameterSchema;
use super::{Compiled, Format, Input, RetryPolicy, TaskTemplate};
use crate::taskdir::{check_glob, check_relative};
use crate::{Error, Result};

/// Every field a template file may have, in the order problems are reported.
const FIELDS: &[&str] = &[
    "name",
    "description",
    "parameters",
    "command",
    "shell",
    "env",
    "workdir",
    "inputs",
    "outputs",
    "resources",
    "timeout",
    "retries",
    "priority",
    "labels",
    "image",
    "scavenger",
    "run_as_root",
];

/// Longest template name.
const MAX_NAME_LEN: usize = 63;

/// Parses the text of a file into a JSON value; syntax errors name the line.
pub(super) fn parse_text(text: &str, format: Format, file: &Path) -> Result<Value> {
    let parsed = match format {
        Format::Toml => toml::from_str::<Value>(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line} column {column}")
                })
                .unwrap_or_default();
            format!("invalid TOML{at}: {}", e.message().trim_end())
        }),
        Format::Yaml => {
            serde_saphyr::from_str::<Value>(text).map_err(|e| format!("invalid YAML: {e}"))
        }
        Format::Json => {
            serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))
        }
    };
    parsed.map_err(|message| Error::InvalidTemplate {
        file: file.to_owned(),
        field: "-".into(),
        message,
    })
}

/// Problems found in one file, as `(field, message)`.
struct Problems<'a> {
    file: &'a Path,
    list: Vec<(String, String)>,
}

impl Problems<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push((field.into(), message.into()));
    }

    /// Deserializes `obj[key]` if present; a failure is recorded with the path inside the
    /// field (`resources.memory`, `outputs[1]`) and gives `None`.
    fn field<T: DeserializeOwned>(&mut self, obj: &Map<String, Value>, key: &str) -> Option<T> {
        let value = obj.get(key)?;
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let field = match inner.as_str() {
                    "." => key.to_owned(),
                    p if p.starts_with('[') => format!("{key}{p}"),
                    p => format!("{key}.{p}"),
                };
                let message = explain(&field, e.into_inner().to_string());
                self.push(field, message);
                None
            }
        }
    }

    /// Like [`Problems::field`] for a table whose fields all have defaults: each entry is
    /// checked on its own first, so that every bad entry is reported, not just the first.
    fn table<T: DeserializeOwned + Default>(&mut self, obj: &Map<String, Value>, key: &str) -> T {
        let Some(Value::Object(table)) = obj.get(key) else {
            return self.field(obj, key).unwrap_or_default();
        };
        let before = self.list.len();
        for (entry, value) in table {
            let single = Map::from_iter([(entry.clone(), value.clone())]);
            self.field::<T>(
                &Map::from_iter([(key.to_owned(), Value::Object(single))]),
                key,
            );
        }
        if self.list.len() > before {
            return T::default();
        }
        self.field(obj, key).unwrap_or_default()
    }

    fn into_error(self) -> Error {
        template_error(self.file, self.list)
    }
}

/// Replaces serde's "did not match any variant of untagged enum" with what is expected.
fn explain(field: &str, message: String) -> String {
    if !message.starts_with("data did not match any variant") {
        return message;
    }
    let expected = match field {
        "resources.cpu" => "cores (0.5) or millicores (\"500m\")",
        "resources.memory" => "bytes or a quantity such as \"512Mi\"",
        "resources.gpus" => "a GPU count or a table { count, model }",
        "timeout" | "retries.backoff" | "retries.max_backoff" => {
            "a duration such as \"30s\", \"5m\" or \"1h30m\", or a number of seconds"
        }
        _ => return "invalid value or type".to_owned(),
    };
    format!("expected {expected}")
}

/// One problem as [`Error::InvalidTemplate`], several as [`Error::InvalidTemplates`].
pub(super) fn template_error(file: &Path, problems: Vec<(String, String)>) -> Error {
    let mut errors: Vec<Error> = problems
        .into_iter()
        .map(|(field, message)| Error::InvalidTemplate {
            file: file.to_owned(),
            field,
            message,
        })
        .collect();
    combine(&mut errors)
}

/// Folds a non-empty list of problems into one error.
pub(super) fn combine(errors: &mut Vec<Error>) -> Error {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        Error::InvalidTemplates {
            problems: std::mem::take(errors),
        }
    }
}

/// Spreads an error from loading one file back into its separate problems.
pub(super) fn problems_of(error: Error) -> Vec<Error> {
    match error {
        Error::InvalidTemplates { problems } => problems,
        other => vec![other],
    }
}

/// Checks a template name: 1–63 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub(super) fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{name:?} must be 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c)))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; use lowercase letters, digits, `-`, `_` and `.`"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{name:?} must start with a letter or digit"));
    }
    Ok(())
}

/// Validates every field of a parsed template file.
pub(super) fn build(value: Value, file: &Path) -> Result<TaskTemplate> {
    let mut p = Problems {
        file,
        list: Vec::new(),
    };
    let Value::Object(obj) = value else {
        p.push(
            "-",
            format!(
                "expected a table of template fields, found {}",
                kind(&value)
            ),
        );
        return Err(p.into_error());
    };

    for key in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        let hint = FIELDS
            .iter()
            .map(|f| (strsim::jaro_winkler(key, f), f))
            .filter(|(score, _)| *score >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, f)| format!("did you mean `{f}`?"))
            .unwrap_or_else(|| format!("expected one of {}", FIELDS.join(", ")));
        p.push(key.as_str(), format!("unknown field `{key}`; {hint}"));
    }

    let name: Option<String> = p.field(&obj, "name");
    match &name {
        None if !obj.contains_key("name") => p.push("name", "missing; every template needs a name"),
        None => {}
        Some(n) => {
            if let Err(message) = check_name(n) {
                p.push("name", message);
            }
        }
    }
    let description: String = p.field(&obj, "description").unwrap_or_default();

    let parameters = obj
        .get("parameters")
        .cloned()
        .unwrap_or_else(ParameterSchema::default_document);
    let schema = match ParameterSchema::compile(&parameters) {
        Ok(schema) => Some(schema),
        Err(message) => {
            p.push("parameters", message);
            None
        }
    };

    let shell: bool = p.field(&obj, "shell").unwrap_or_default();
    let command: Option<Vec<String>> = p.field(&obj, "command");
    let mut command_patterns = Vec::new();
    match &command {
        None if !obj.contains_key("command") => p.push(
            "command",
            "missing; give the program and its arguments as a list",
        ),
        None => {}
        Some(argv) if argv.is_empty() => p.push("command", "must not be empty"),
        Some(argv) if shell && argv.len() != 1 => p.push(
            "command",
            format!(
                "with shell = true, command must be exactly one script string, not {} strings",
                argv.len()
            ),
        ),
        Some(argv) => {
            for (i, arg) in argv.iter().enumerate() {
                let field = format!("command[{i}]");
                match Pattern::parse(arg) {
                    Ok(pattern) => {
                        if shell && let Err(message) = pattern.check_shell_contexts() {
                            p.push(&field, message);
                        }
                        command_patterns.push((field, pattern));
                    }
                    Err(message) => p.push(field, message),
                }
            }
        }
    }

    let env: BTreeMap<String, String> = p.field(&obj, "env").unwrap_or_default();
    let mut env_patterns = BTreeMap::new();
    for (key, value) in &env {
        let field = format!("env.{key}");
        if key.is_empty() || key.contains(['=', '\0']) {
            p.push(&field, format!("invalid environment variable name {key:?}"));
        }
        match Pattern::parse(value) {
            Ok(pattern) => {
                env_patterns.insert(key.clone(), (field, pattern));
            }
            Err(message) => p.push(field, message),
        }
    }

    let workdir: Option<String> = p.field(&obj, "workdir");
    let mut workdir_pattern = None;
    if let Some(dir) = &workdir {
        if let Err(e) = check_relative(dir) {
            p.push("workdir", e.to_string());
        }
        match Pattern::parse(dir) {
            Ok(pattern) => workdir_pattern = Some(("workdir".to_owned(), pattern)),
            Err(message) => p.push("workdir", message),
        }
    }

    let (inputs, input_patterns) = check_inputs(&mut p, &obj);

    let outputs: Vec<String> = p.field(&obj, "outputs").unwrap_or_default();
    let mut output_patterns = Vec::new();
    for (i, glob) in outputs.iter().enumerate() {
        let field = format!("outputs[{i}]");
        if let Err(e) = check_glob(glob) {
            p.push(&field, e.to_string());
        }
        match Pattern::parse(glob) {
            Ok(pattern) => output_patterns.push((field, pattern)),
            Err(message) => p.push(field, message),
        }
    }

    let resources: Resources = p.table(&obj, "resources");

    let timeout = p.field::<Timeout>(&obj, "timeout").map(|Timeout(d)| d);
    if timeout == Some(Duration::ZERO) {
        p.push(
            "timeout",
            "must be longer than zero; leave it out for no limit",
        );
    }

    let retries: RetryPolicy = p.table(&obj, "retries");
    for (field, message) in retries.problems() {
        p.push(format!("retries.{field}"), message);
    }

    let priority: i32 = p.field(&obj, "priority").unwrap_or_default();
    let labels: BTreeMap<String, String> = p.field(&obj, "labels").unwrap_or_default();

    let image: Option<String> = p.field(&obj, "image");
    if let Some(image) = &image
        && let Err(message) = check_image(image)
    {
        p.push("image", message);
    }
    let scavenger: bool = p.field(&obj, "scavenger").unwrap_or_default();
    let run_as_root: bool = p.field(&obj, "run_as_root").unwrap_or_default();

    // Placeholders may only name declared parameters.
    if let Some(schema) = &schema {
        let declared = schema.declared();
        let all = command_patterns
            .iter()
            .chain(env_patterns.values())
            .chain(workdir_pattern.iter())
            .chain(input_patterns.iter().flat_map(|(from, to)| [from, to]))
            .chain(output_patterns.iter());
        for (field, pattern) in all {
            let mut seen = Vec::new();
            for param in pattern.params() {
                if !declared.contains(param) && !seen.contains(&param) {
                    seen.push(param);
                    p.push(
                        field.as_str(),
                        format!(
                            "placeholder {{{{ {param} }}}} refers to parameter {param:?}, which is \
                             not declared in parameters.properties"
                        ),
                    );
                }
            }
        }
    }

    let (Some(name), Some(command), Some(schema)) = (name, command, schema) else {
        return Err(p.into_error());
    };
    if !p.list.is_empty() {
        return Err(p.into_error());
    }
    let strip = |(_, pattern): (String, Pattern)| pattern;
    Ok(TaskTemplate {
        name,
        description,
        parameters,
        command,
        shell,
        env,
        workdir,
        inputs,
        outputs,
        resources,
        timeout,
        retries,
        priority,
        labels,
        image,
        scavenger,
        run_as_root,
        compiled: Compiled {
            schema,
            command: command_patterns.into_iter().map(strip).collect(),
            env: env_patterns
                .into_iter()
                .map(|(k, v)| (k, strip(v)))
                .collect(),
            workdir: workdir_pattern.map(strip),
            inputs: input_patterns
                .into_iter()
                .map(|(from, to)| (strip(from), strip(to)))
                .collect(),
            outputs: output_patterns.into_iter().map(strip).collect(),
        },
    })
}

/// A field's `(name, pattern)`.
type Named = (String, Pattern);

/// Reads `inputs`: each entry a storage path, or a table `{ from, to }` (`to` defaults
/// to `from`). `from` must be a storage path and `to` a path in the task directory,
/// once placeholders are filled in with any plain value.
fn check_inputs(
    p: &mut Problems<'_>,
    obj: &Map<String, Value>,
) -> (Vec<Input>, Vec<(Named, Named)>) {
    let mut inputs = Vec::new();
    let mut patterns = Vec::new();
    let Some(entries) = p.field::<Vec<Value>>(obj, "inputs") else {
        return (inputs, patterns);
    };
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let (from, to) = match entry {
            Value::String(from) => (Some(from.clone()), None),
            Value::Object(table) => {
                for key in table
                    .keys()
                    .filter(|k| !["from", "to"].contains(&k.as_str()))
                {
                    p.push(
                        format!("{field}.{key}"),
                        format!("unknown field `{key}`; expected `from` and `to`"),
                    );
                }
                let mut text = |key: &str| match table.get(key) {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => {
                        p.push(
                            format!("{field}.{key}"),
                            format!("expected a string, found {}", kind(other)),
                        );
                        None
                    }
                };
                let (from, to) = (text("from"), text("to"));
                if !table.contains_key("from") {
                    p.push(
                        format!("{field}.from"),
                        "missing; give the object's path in the tenant's storage",
                    );
                }
                (from, to)
            }
            other => {
                p.push(
                    field,
                    format!(
                        "expected a storage path or a table {{ from, to }}, found {}",
                        kind(other)
                    ),
                );
                continue;
            }
        };
        let Some(from) = from else { continue };
        let to = to.unwrap_or_else(|| from.clone());
        let from_field = format!("{field}.from");
        let to_field = format!("{field}.to");
        let from_pattern = path_pattern(p, &from_field, &from, |path| {
            ops_core::ObjectPath::parse(path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let to_pattern = path_pattern(p, &to_field, &to, |path| {
            check_relative(path).map(|_| ()).map_err(|e| e.to_string())
        });
        if let (Some(from_pattern), Some(to_pattern)) = (from_pattern, to_pattern) {
            patterns.push(((from_field, from_pattern), (to_field, to_pattern)));
        }
        inputs.push(Input { from, to });
    }
    (inputs, patterns)
}

/// Parses `text` (of `field`) as a pattern and checks, with `check`, the path it
/// makes once its placeholders hold a plain word; every problem goes to `p`.
fn path_pattern(
    p: &mut Problems<'_>,
    field: &str,
    text: &str,
    check: impl Fn(&str) -> std::result::Result<(), String>,
) -> Option<Pattern> {
    match Pattern::parse(text) {
        Ok(pattern) => {
            if let Err(e) = check(&sample(&pattern)) {
                p.push(field, e);
            }
            Some(pattern)
        }
        Err(message) => {
            p.push(field, message);
            None
        }
    }
}

/// The text of `pattern` with every placeholder replaced by a plain word, to check
/// the shape of a path before parameters are known.
fn sample(pattern: &Pattern) -> String {
    pattern
        .segments()
        .iter()
        .map(|s| match s {
            super::placeholder::Segment::Literal(text) => text.as_str(),
            super::placeholder::Segment::Param(_) => "x",
        })
        .collect()
}

/// A container image reference: no whitespace, no upper case in the repository part,
/// and not empty (what container runtimes reject as `InvalidImageName`).
fn check_image(image: &str) -> std::result::Result<(), String> {
    if image.trim().is_empty() {
        return Err("must not be empty; leave it out for executors without images".into());
    }
    if image.chars().any(char::is_whitespace) {
        return Err(format!("{image:?} contains whitespace"));
    }
    let repository = image.split(['@']).next().unwrap_or(image);
    let repository = match repository.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => repository,
    };
    let path = repository
        .split_once('/')
        .map_or(repository, |(host, rest)| {
            if host.contains('.') || host.contains(':') || host == "localhost" {
                rest
            } else {
                repository
            }
        });
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("{image:?}: repository names must be lower case"));
    }
    Ok(())
}

/// `timeout` as a duration string or whole seconds.
#[derive(serde::Deserialize)]
struct Timeout(#[serde(with = "crate::duration::serde_duration")] Duration);

/// A word for the kind of a JSON value, for messages.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(value: Value) -> Vec<String> {
        match build(value, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => problems_of(e)
                .into_iter()
                .map(|e| match e {
                    Error::InvalidTemplate { field, message, .. } => format!("{field}: {message}"),
                    other => other.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn names() {
        for good in ["render", "a", "blender-4.1_gpu", "0day", &"x".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "Render",
            "a b",
            "-x",
            ".x",
            "ünï",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn minimal_template_and_defaults() {
        let t = build(json!({"name": "x", "command": ["true"]}), Path::new("t")).unwrap();
        assert_eq!(t.retries().max_attempts, 1);
        assert_eq!(t.priority(), 0);
        assert!(!t.shell());
        assert_eq!(t.timeout(), None);
        assert_eq!(t.parameters(), &json!({"type": "object"}));
    }

    #[test]
    fn reports_every_problem_with_its_field() {
        let found = problems(json!({
            "name": "Bad Name",
            "comand": [],
            "parameters": {"properties": {"n": {"type": "integer"}}},
            "command": ["run", "{{ n }}", "{{ missing }}", "{{ bad"],
            "env": {"A": "{{ other }}", "": "x"},
            "workdir": "/abs",
            "outputs": ["ok/*", "../x", "/etc/*"],
            "resources": {"memory": "12XB", "cpu": "1", "gpus": "two"},
            "timeout": "soon",
            "retries": {"max_attempts": 0, "backoff": "1x"},
            "priority": "high",
        }));
        let fields: Vec<&str> = found.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "comand",
                "name",
                "command[3]",
                "env.",
                "workdir",
                "outputs[1]",
                "outputs[2]",
                "resources.gpus",
                "resources.memory",
                "timeout",
                "retries.backoff",
                "priority",
                "command[2]",
                "env.A",
            ],
            "{found:#?}"
        );
        assert!(found[0].contains("did you mean `command`?"), "{}", found[0]);
        assert!(found[7].contains("a GPU count"), "{}", found[7]);
        assert!(found[8].contains("\"12XB\""), "{}", found[8]);
        assert!(found[12].contains("{{ missing }}"), "{}", found[12]);
    }

    #[test]
    fn inputs_are_checked_entry_by_entry() {
        let t = build(
            json!({
                "name": "x",
                "command": ["true"],
                "parameters": {"properties": {"scene": {"type": "string"}}},
                "inputs": ["datasets/a.txt", {"from": "scenes/{{ scene }}", "to": "in/scene.blend"}],
            }),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(t.inputs()[0].to, "datasets/a.txt");
        assert_eq!(t.inputs()[1].from, "scenes/{{ scene }}");
        let found = problems(json!({
            "name": "x",
            "command": ["true"],
            "inputs": [
                "ok/path",
                "../secret",
                {"from": "a", "to": "/etc/passwd"},
                {"to": "b", "form": "a"},
                {"from": 3},
                7,
                {"from": "{{ nope }}/a"},
            ],
        }));
        let fields: Vec<&str> = found.iter().map(|s| s.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "inputs[1].from",
                "inputs[1].to",
                "inputs[2].to",
                "inputs[3].form",
                "inputs[3].from",
                "inputs[4].from",
                "inputs[5]",
                "inputs[6].from",
                "inputs[6].to",
            ],
            "{found:#?}"
        );
        assert!(found[0].contains("\"..\" segment"), "{}", found[0]);
        assert!(found[2].contains("absolute"), "{}", found[2]);
        assert!(found[4].contains("missing"), "{}", found[4]);
        assert!(
            found[5].contains("expected a string, found a number"),
            "{}",
            found[5]
        );
        assert!(found[7].contains("{{ nope }}"), "{}", found[7]);
    }

    #[test]
    fn required_fields_and_shell_shape() {
        let found = problems(json!({}));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("name: missing"));
        assert!(found[1].starts_with("command: missing"));
        let found = problems(json!({"name": "s", "shell": true, "command": ["a", "b"]}));
        assert!(found[0].contains("exactly one script string"), "{found:?}");
        let found = problems(json!({"name": "s", "command": []}));
        assert_eq!(found, ["command: must not be empty"]);
        let found = problems(json!(["not", "a", "table"]));
        assert_eq!(
            found,
            ["-: expected a table of template fields, found a list"]
        );
        let found = problems(json!({"name": "s", "command": ["x"], "timeout": 0}));
        assert!(
            found[0].starts_with("timeout: must be longer than zero"),
            "{found:?}"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse_text(
            "name = \"x\"\ncommand = [\n",
            Format::Toml,
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.toml") && err.contains("line"), "{err}");
        let err = parse_text("name: [", Format::Yaml, Path::new("t.yaml")).unwrap_err();
        assert!(err.to_string().contains("invalid YAML"), "{err}");
        let err = parse_text("{", Format::Json, Path::new("t.json")).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
