//! Task templates: what an end user may run, with which parameters, on what resources.
//!
//! A [`TaskTemplate`] is written by the platform builder as a TOML, YAML or JSON file.
//! End users pick a template by name from a [`Catalogue`] and submit parameters, which
//! are checked against the template's JSON Schema and then substituted into the command
//! with [`TaskTemplate::render`].
//!
//! ```toml
//! name = "render"
//! description = "Render frames of a Blender scene"
//! command = ["blender", "-b", "{{ scene }}", "-f", "{{ frames }}"]
//! inputs = [{ from = "scenes/{{ scene }}", to = "scene.blend" }]
//! outputs = ["frames/*.png"]
//! timeout = "1h30m"
//! priority = 10
//!
//! [parameters]
//! required = ["scene"]
//! [parameters.properties.scene]
//! type = "string"
//! [parameters.properties.frames]
//! type = "integer"
//! minimum = 1
//! default = 1
//!
//! [resources]
//! cpu = 4
//! memory = "8Gi"
//! gpus = 1
//!
//! [retries]
//! max_attempts = 3
//! backoff = "10s"
//! ```
//!
//! # Placeholders
//!
//! `{{name}}` or `{{ name }}` in `command`, `env` values, `workdir`, `inputs` and `outputs` is
//! replaced by the parameter `name`, which must be declared under
//! `parameters.properties`. Strings are inserted as they are, numbers and booleans as
//! their JSON text, `null` as nothing, arrays and objects as compact JSON. A `command`
//! element that is exactly one placeholder whose value is an array of strings, numbers
//! or booleans becomes one argument per item. Write `{{{{` for a literal `{{`.
//!
//! Values never pass through a shell: each `command` element becomes one argument, so
//! `; rm -rf /` or `$(…)` in a parameter is just text. A template may opt into a shell
//! with `shell = true`; `command` is then one script run as `/bin/sh -c script`, every
//! value is quoted as one shell word, and placeholders must stand where such a word is
//! taken literally (not inside quotes, backticks, comments, arithmetic or a
//! here-document; checked at load time). Quoting cannot help a script that re-parses its
//! arguments itself (`eval`, `sh -c "$1"`, `ssh host …`): avoid those.
//!
//! # Inputs
//!
//! `inputs` lists objects of the tenant's storage (ops-storage) to place in the task
//! directory before the task starts: `{ from = "datasets/scene.blend", to =
//! "scene.blend" }`, or just `"datasets/scene.blend"` for the same path on both sides.
//! `from` is a storage path (checked by [`ops_core::ObjectPath`]), `to` a path in the
//! task directory that may not leave it. They reach the executor as
//! [`LaunchSpec::inputs`](crate::LaunchSpec::inputs) and are copied by
//! [`StagingExecutor`](crate::staging::StagingExecutor).
//!
//! # Example
//!
//! ```
//! use ops_tasks::template::{Format, TaskTemplate};
//! use serde_json::json;
//!
//! let template = TaskTemplate::from_str(
//!     r#"
//!     name = "render"
//!     command = ["blender", "-b", "{{ scene }}", "-f", "{{frames}}", "{{ extra }}"]
//!     outputs = ["frames/*.png"]
//!
//!     [parameters]
//!     required = ["scene"]
//!     [parameters.properties.scene]
//!     type = "string"
//!     [parameters.properties.frames]
//!     type = "integer"
//!     minimum = 1
//!     default = 1
//!     [parameters.properties.extra]
//!     type = "array"
//!     default = []
//!     "#,
//!     Format::Toml,
//!     "render.toml",
//! )?;
//!
//! let cmd = template.render(&json!({ "scene": "shot 1.blend; rm -rf /", "extra": ["-a"] }))?;
//! assert_eq!(cmd.argv, ["blender", "-b", "shot 1.blend; rm -rf /", "-f", "1", "-a"]);
//!
//! let err = template.render(&json!({ "frames": 0 })).unwrap_err();
//! assert!(err.to_string().contains("/frames: 0 is less than the minimum of 1"));
//! assert!(err.to_string().contains("\"scene\" is a required property"));
//! # Ok::<(), ops_tasks::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ops_core::Resources;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{Error, Result};

mod catalogue;
mod load;
mod placeholder;
mod render;
mod retry;
mod schema;

pub use catalogue::Catalogue;
pub use render::RenderedCommand;
pub use retry::RetryPolicy;

use placeholder::Pattern;
use schema::ParameterSchema;

/// The language of a template file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`).
    Json,
}

impl Format {
    /// The format a file's extension stands for, if any.
    pub fn from_path(path: impl AsRef<Path>) -> Option<Format> {
        match path.as_ref().extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A kind of task end users may run: command, parameter schema, resources and policies.
///
/// Built only through validation ([`TaskTemplate::from_str`], [`TaskTemplate::from_file`],
/// [`TaskTemplate::from_value`] or serde), so a value of this type is always usable.
/// Serializing writes the file format back.
#[derive(Clone, Debug, Serialize)]
pub struct TaskTemplate {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    parameters: Value,
    command: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shell: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workdir: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<Input>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<String>,
    resources: Resources,
    #[serde(
        serialize_with = "serialize_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    timeout: Option<Duration>,
    retries: RetryPolicy,
    priority: i32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    scavenger: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    run_as_root: bool,
    #[serde(skip)]
    compiled: Compiled,
}

/// What loading derived from the fields, kept for rendering.
#[derive(Clone, Debug)]
struct Compiled {
    schema: ParameterSchema,
    command: Vec<Pattern>,
    env: BTreeMap<String, Pattern>,
    workdir: Option<Pattern>,
    /// `(from, to)` of each input.
    inputs: Vec<(Pattern, Pattern)>,
    outputs: Vec<Pattern>,
}

/// One entry of a template's `inputs`, as written (placeholders included): the object
/// `from` of the tenant's storage is copied to `to` in the task directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Input {
    /// Path in the tenant's environment storage.
    pub from: String,
    /// Path relative to the task directory.
    pub to: String,
}

impl TaskTemplate {
    /// Parses and validates a template written in `format`. `file` names the source in
    /// errors. Every problem found is reported: one as [`Error::InvalidTemplate`],
    /// several as [`Error::InvalidTemplates`].
    pub fn from_str(text: &str, format: Format, file: impl AsRef<Path>) -> Result<Self> {
        let file = file.as_ref();
        let value = load::parse_text(text, format, file)?;
        load::build(value, file)
    }

    /// Reads a template file; the format follows the extension (`.toml`, `.yaml`,
    /// `.yml`, `.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let format = Format::from_path(path).ok_or_else(|| Error::InvalidTemplate {
            file: path.to_owned(),
            field: "-".into(),
            message: "unknown extension; expected .toml, .yaml, .yml or .json".into(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_str(&text, format, path)
    }

    /// Validates a template given as a JSON value (as built in code with `json!`).
    pub fn from_value(value: Value, file: impl AsRef<Path>) -> Result<Self> {
        load::build(value, file.as_ref())
    }

    /// Unique name in its catalogue.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Human-readable description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON Schema of the parameters.
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    /// The command as written, placeholders included.
    pub fn command(&self) -> &[String] {
        &self.command
    }

    /// Whether the command is a `/bin/sh -c` script.
    pub fn shell(&self) -> bool {
        self.shell
    }

    /// Environment variables as written, placeholders included.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Working directory as written, relative to the task directory.
    pub fn workdir(&self) -> Option<&str> {
        self.workdir.as_deref()
    }

    /// Inputs as written: storage objects copied into the task directory.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// Output glob patterns as written, relative to the task directory.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// What one run needs.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Limit on one attempt's run time.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// How failed attempts are retried.
    pub fn retries(&self) -> &RetryPolicy {
        &self.retries
    }

    /// Scheduling priority; higher runs first.
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Free-form labels copied to tasks.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The container image tasks run in, for executors that run containers
    /// (Kubernetes); the local executor ignores it.
    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// Whether tasks of this template are scavenger (backfill) work: they run only on
    /// otherwise idle capacity and give way to real work.
    pub fn scavenger(&self) -> bool {
        self.scavenger
    }

    /// Whether the template asks to run as root where the executor would otherwise run
    /// it as an unprivileged user (Kubernetes' default security context).
    pub fn run_as_root(&self) -> bool {
        self.run_as_root
    }
}

fn serialize_timeout<S: serde::Serializer>(
    timeout: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match timeout {
        Some(d) => crate::duration::serde_duration::serialize(d, s),
        None => s.serialize_none(),
    }
}

impl<'de> Deserialize<'de> for TaskTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        load::build(value, Path::new("(inline)")).map_err(serde::de::Error::custom)
    }
}
