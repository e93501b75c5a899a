//! Task templates from fixture files: loading, validation errors, rendering and quoting.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ops_tasks::template::{Catalogue, Format, TaskTemplate};
use ops_tasks::{Error, ParameterViolation};
use serde_json::{Value, json};

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/templates")
        .join(dir)
}

fn good() -> Catalogue {
    Catalogue::load_dir(fixtures("good")).expect("good fixtures load")
}

/// Every `(file name, field, message)` in a load error.
fn problems(err: Error) -> Vec<(String, String, String)> {
    let list = match err {
        Error::InvalidTemplates { problems } => problems,
        other => vec![other],
    };
    list.into_iter()
        .map(|e| match e {
            Error::InvalidTemplate {
                file,
                field,
                message,
            } => (
                file.file_name().unwrap().to_string_lossy().into_owned(),
                field,
                message,
            ),
            other => panic!("unexpected problem {other}"),
        })
        .collect()
}

fn bad(file: &str) -> Vec<(String, String, String)> {
    problems(TaskTemplate::from_file(fixtures("bad").join(file)).unwrap_err())
}

fn violations(err: Error) -> Vec<ParameterViolation> {
    match err {
        Error::InvalidParameters { violations, .. } => violations,
        other => panic!("expected InvalidParameters, got {other}"),
    }
}

// ---- loading ----

#[test]
fn loads_toml_yaml_and_json_and_skips_other_files() {
    let catalogue = good();
    assert_eq!(
        catalogue.names().collect::<Vec<_>>(),
        ["convert", "render", "train"]
    );
    assert_eq!(catalogue.len(), 3);
    assert_eq!(catalogue.iter().count(), 3);

    let render = catalogue.get("render").unwrap();
    assert_eq!(render.description(), "Render frames of a Blender scene");
    assert_eq!(render.resources().cpu_millis, 4000);
    assert_eq!(render.resources().memory_bytes, 8 << 30);
    assert_eq!(render.resources().gpus.count, 1);
    assert_eq!(render.resources().gpus.model.as_deref(), Some("A100"));
    assert_eq!(render.timeout(), Some(Duration::from_secs(5400)));
    assert_eq!(render.priority(), 10);
    assert_eq!(render.labels()["team"], "vfx");
    assert_eq!(render.retries().max_attempts, 3);
    assert_eq!(render.retries().delay(1), Duration::from_secs(10));
    assert_eq!(render.retries().delay(2), Duration::from_secs(30));
    assert_eq!(render.retries().delay(3), Duration::from_secs(90));
    assert_eq!(render.retries().delay(4), Duration::from_secs(120));
    assert_eq!(render.outputs(), ["frames/*.png", "logs/**/*.txt"]);
    assert!(!render.shell());

    let train = catalogue.get("train").unwrap();
    assert_eq!(train.resources().cpu_millis, 500);
    assert_eq!(train.resources().memory_bytes, 512 << 20);
    assert_eq!(train.timeout(), Some(Duration::from_secs(7200)));
    assert_eq!(train.retries().max_attempts, 2);
    assert_eq!(train.retries().backoff, Duration::from_secs(1));

    let convert = catalogue.get("convert").unwrap();
    assert_eq!(convert.resources().memory_bytes, 1_000_000_000);
    assert_eq!(convert.timeout(), Some(Duration::from_secs(1800)));
}

#[test]
fn invalid_memory_names_file_and_field() {
    let found = bad("bad_memory.toml");
    assert_eq!(found.len(), 1, "{found:?}");
    let (file, field, message) = &found[0];
    assert_eq!(file, "bad_memory.toml");
    assert_eq!(field, "resources.memory");
    assert!(
        message.contains("invalid memory quantity \"12XB\""),
        "{message}"
    );
    let shown = TaskTemplate::from_file(fixtures("bad/bad_memory.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        shown.contains("bad_memory.toml: resources.memory: invalid memory quantity \"12XB\""),
        "{shown}"
    );
}

#[test]
fn escaping_outputs_are_each_reported() {
    let found = bad("escaping_output.toml");
    let fields: Vec<&str> = found.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(fields, ["outputs[1]", "outputs[2]"], "{found:?}");
    assert!(
        found[0].2.contains("path \"../x\" escapes"),
        "{}",
        found[0].2
    );
    assert!(found[1].2.contains("absolute"), "{}", found[1].2);
}

#[test]
fn invalid_schema_is_refused_at_load() {
    let found = bad("bad_schema.toml");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "parameters");
    assert!(
        found[0].2.starts_with("not a valid JSON Schema")
            && found[0].2.contains("/properties/frames/type"),
        "{}",
        found[0].2
    );
}

#[test]
fn unknown_field_is_named() {
    let found = bad("unknown_field.yaml");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "retry");
    assert!(
        found[0].2.contains("unknown field `retry`") && found[0].2.contains("`retries`"),
        "{}",
        found[0].2
    );
}

#[test]
fn undeclared_placeholder_names_field_and_placeholder() {
    let found = bad("undeclared_placeholder.json");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "command[3]");
    assert!(found[0].2.contains("{{ frames }}"), "{}", found[0].2);
    assert!(found[0].2.contains("not declared"), "{}", found[0].2);
}

#[test]
fn bad_name_is_refused() {
    let found = bad("bad_name.toml");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, "name");
    assert!(found[0].2.contains("Render Job!"), "{}", found[0].2);
}

#[test]
fn all_problems_of_a_file_are_reported_together() {
    let found = bad("many_problems.toml");
    let fields: Vec<&str> = found.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(
        fields,
        ["name", "outputs[0]", "outputs[2]", "timeout"],
        "{found:?}"
    );
}

#[test]
fn a_bad_directory_reports_every_file() {
    let err = Catalogue::load_dir(fixtures("bad")).unwrap_err();
    let shown = err.to_string();
    let found = problems(err);
    let mut files: Vec<&str> = found.iter().map(|p| p.0.as_str()).collect();
    files.dedup();
    assert_eq!(
        files,
        [
            "bad_memory.toml",
            "bad_name.toml",
            "bad_schema.toml",
            "escaping_output.toml",
            "many_problems.toml",
            "undeclared_placeholder.json",
            "unknown_field.yaml",
        ]
    );
    assert_eq!(found.len(), 11, "{found:#?}");
    assert!(shown.starts_with("11 template problems: "), "{shown}");
}

#[test]
fn duplicate_names_name_both_files() {
    let found = problems(Catalogue::load_dir(fixtures("duplicate")).unwrap_err());
    assert_eq!(found.len(), 1, "{found:?}");
    let (file, field, message) = &found[0];
    assert_eq!(file, "b.yaml");
    assert_eq!(field, "name");
    assert!(
        message.contains("duplicate template name \"render\"") && message.contains("a.toml"),
        "{message}"
    );
}

#[test]
fn unknown_extension_and_missing_file() {
    let err = TaskTemplate::from_file(fixtures("good/notes.md")).unwrap_err();
    assert!(err.to_string().contains("unknown extension"), "{err}");
    let err = TaskTemplate::from_file(fixtures("good/missing.toml")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let err = Catalogue::load_dir(fixtures("no-such-dir")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn templates_round_trip_through_serde() {
    for template in good().iter() {
        let toml_text = toml::to_string(template.as_ref()).unwrap();
        let back = TaskTemplate::from_str(&toml_text, Format::Toml, "back.toml")
            .unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(template.as_ref()).unwrap()
        );
        let json_value = serde_json::to_value(template.as_ref()).unwrap();
        let back: TaskTemplate = serde_json::from_value(json_value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json_value);
    }
    let err = serde_json::from_value::<TaskTemplate>(json!({"name": "x"})).unwrap_err();
    assert!(err.to_string().contains("command"), "{err}");
}

// ---- rendering ----

#[test]
fn renders_with_defaults() {
    let render = good().get("render").unwrap();
    let cmd = render.render(&json!({"scene": "shot.blend"})).unwrap();
    assert_eq!(
        cmd.argv,
        [
            "blender",
            "--background",
            "shot.blend",
            "--render-output",
            "frames/####",
            "--frame-start",
            "1",
            "--frame-end",
            "1",
        ]
    );
    assert_eq!(cmd.env["RENDER_ENGINE"], "cycles");
    assert_eq!(cmd.env["BLENDER_USER_SCRIPTS"], "scripts");
    assert_eq!(cmd.workdir.as_deref(), Some(Path::new("work/cycles")));
    assert_eq!(cmd.output_globs, ["frames/*.png", "logs/**/*.txt"]);
    assert_eq!(cmd.parameters["engine"], "cycles");
    assert_eq!(cmd.parameters["extra_args"], json!([]));

    let train = good().get("train").unwrap();
    let cmd = train.render(&json!({"datasets": ["a.csv"]})).unwrap();
    assert_eq!(
        cmd.argv,
        [
            "python", "train.py", "--epochs", "3", "--lr", "0.001", "a.csv"
        ]
    );
}

#[test]
fn every_violation_is_listed_with_its_path() {
    let render = good().get("render").unwrap();
    let err = render
        .render(&json!({"start": 0, "end": "ten", "engine": "povray", "colour": "red"}))
        .unwrap_err();
    let shown = err.to_string();
    let mut listed: Vec<String> = violations(err).iter().map(ToString::to_string).collect();
    listed.sort();
    assert_eq!(listed.len(), 5, "{listed:#?}");
    assert!(
        listed.contains(&"/: \"scene\" is a required property".to_owned()),
        "{listed:#?}"
    );
    assert!(
        listed.contains(&"/start: 0 is less than the minimum of 1".to_owned()),
        "{listed:#?}"
    );
    assert!(
        listed.contains(&"/end: \"ten\" is not of type \"integer\"".to_owned()),
        "{listed:#?}"
    );
    assert!(
        listed.iter().any(|v| v.starts_with("/engine: ")),
        "{listed:#?}"
    );
    assert!(
        listed
            .iter()
            .any(|v| v.starts_with("/: ") && v.contains("colour")),
        "{listed:#?}"
    );
    assert!(
        shown.starts_with("invalid parameters for template render: "),
        "{shown}"
    );

    let train = good().get("train").unwrap();
    let paths: Vec<String> = violations(
        train
            .render(&json!({"datasets": ["ok", 7], "epochs": 1000, "lr": -1}))
            .unwrap_err(),
    )
    .into_iter()
    .map(|v| v.path)
    .collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    for expected in ["/datasets/1", "/epochs", "/lr"] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} in {paths:?}"
        );
    }
}

#[test]
fn unknown_template_suggests_close_matches() {
    let err = good().get("rendr").unwrap_err();
    assert!(err.to_string().contains("did you mean render?"), "{err}");
    match err {
        Error::TemplateNotFound {
            name,
            close_matches,
        } => {
            assert_eq!(name, "rendr");
            assert_eq!(close_matches[0], "render");
        }
        other => panic!("{other}"),
    }
    match good().get("no-such-thing").unwrap_err() {
        Error::TemplateNotFound { close_matches, .. } => assert!(close_matches.is_empty()),
        other => panic!("{other}"),
    }
}

#[test]
fn arrays_expand_to_one_argument_per_item() {
    let render = good().get("render").unwrap();
    let cmd = render
        .render(&json!({"scene": "s.blend", "extra_args": ["--threads", "8", "a b"]}))
        .unwrap();
    assert_eq!(cmd.argv[cmd.argv.len() - 3..], ["--threads", "8", "a b"]);
}

const INJECTIONS: &[&str] = &[
    "$(touch pwned)",
    "`touch pwned`",
    "; touch pwned",
    "a\ntouch pwned",
    "' ; touch pwned ; '",
    "\"$HOME\"",
    "&& touch pwned || touch pwned",
    "| touch pwned",
    "> pwned",
    "$((1+1)) ${HOME} \\ * ?",
    "",
];

fn echo_template(shell: bool) -> TaskTemplate {
    let command = if shell {
        json!(["printf '%s|' {{ msg }} {{ words }}"])
    } else {
        json!(["printf", "%s|", "{{ msg }}", "{{ words }}"])
    };
    TaskTemplate::from_value(
        json!({
            "name": "echo",
            "shell": shell,
            "command": command,
            "parameters": {
                "properties": {
                    "msg": {"type": "string"},
                    "words": {"type": "array", "items": {"type": "string"}, "default": []}
                },
                "required": ["msg"]
            }
        }),
        "echo.json",
    )
    .unwrap()
}

/// Runs `argv` directly (no shell of ours) in an empty directory; returns stdout and
/// whether the directory is still empty afterwards.
fn run_in_empty_dir(argv: &[String]) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir.path())
        .env_clear()
        .env("HOME", "/home/should-not-expand")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "{argv:?}: {out:?}");
    let empty = std::fs::read_dir(dir.path()).unwrap().next().is_none();
    (String::from_utf8(out.stdout).unwrap(), empty)
}

#[test]
fn injection_strings_arrive_literally_without_a_shell() {
    let template = echo_template(false);
    for msg in INJECTIONS {
        let cmd = template.render(&json!({"msg": msg})).unwrap();
        assert_eq!(cmd.argv, ["printf", "%s|", msg]);
        let (stdout, untouched) = run_in_empty_dir(&cmd.argv);
        assert_eq!(stdout, format!("{msg}|"));
        assert!(untouched, "{msg:?} created a file");
    }
}

#[test]
fn shell_templates_quote_every_value() {
    let template = echo_template(true);
    for msg in INJECTIONS {
        let cmd = template.render(&json!({"msg": msg})).unwrap();
        assert_eq!(cmd.argv[..2], ["/bin/sh", "-c"]);
        let (stdout, untouched) = run_in_empty_dir(&cmd.argv);
        assert_eq!(stdout, format!("{msg}|"), "script: {}", cmd.argv[2]);
        assert!(untouched, "{msg:?} created a file; script: {}", cmd.argv[2]);
    }
    // Arrays become one quoted word per item.
    let words: Vec<Value> = INJECTIONS.iter().map(|s| json!(s)).collect();
    let cmd = template
        .render(&json!({"msg": "m", "words": words}))
        .unwrap();
    let (stdout, untouched) = run_in_empty_dir(&cmd.argv);
    assert_eq!(stdout, format!("m|{}|", INJECTIONS.join("|")));
    assert!(untouched);
}

#[test]
fn shell_refuses_nul_and_unquotable_placements() {
    let template = echo_template(true);
    let found = violations(template.render(&json!({"msg": "a\0b"})).unwrap_err());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path, "/msg");
    assert!(found[0].message.contains("NUL"), "{}", found[0].message);

    let err = TaskTemplate::from_str(
        r#"
        name = "quoted"
        shell = true
        command = ["echo \"{{ msg }}\""]
        [parameters.properties.msg]
        type = "string"
        "#,
        Format::Toml,
        "quoted.toml",
    )
    .unwrap_err();
    let found = problems(err);
    assert_eq!(found[0].1, "command[0]");
    assert!(
        found[0].2.contains("inside double quotes"),
        "{}",
        found[0].2
    );
}

#[test]
fn escaped_braces_stay_literal() {
    let template = TaskTemplate::from_str(
        r#"
        name = "braces"
        command = ["echo", "{{{{ not a placeholder }}", "{{x}}"]
        [parameters.properties.x]
        type = "string"
        "#,
        Format::Toml,
        "braces.toml",
    )
    .unwrap();
    let cmd = template.render(&json!({"x": "{{ y }}"})).unwrap();
    assert_eq!(cmd.argv, ["echo", "{{ not a placeholder }}", "{{ y }}"]);
}
