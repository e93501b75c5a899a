//! The README's "build your own platform" program is `src/bin/quickstart.rs`, word for
//! word, at most 25 lines, and it runs.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the examples live in the workspace")
}

/// The first ```rust block after `heading` in the README.
fn readme_program(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?} section"))
        .1;
    let block = section
        .split_once("```rust\n")
        .expect("a rust block in the section")
        .1;
    block
        .split_once("```")
        .expect("the rust block ends")
        .0
        .to_owned()
}

#[test]
fn the_readme_program_is_the_quickstart_example() {
    let program = readme_program("## Build your own platform");
    let example = std::fs::read_to_string(repo().join("examples/src/bin/quickstart.rs"))
        .expect("the quickstart example");
    assert_eq!(
        program, example,
        "README.md and examples/src/bin/quickstart.rs must say the same"
    );
    let lines = program.lines().count();
    assert!(lines <= 25, "the README program has {lines} lines");
}

#[test]
fn the_readme_program_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{stderr}"
    );
    for needle in [
        "succeeded (Some(Completed))",
        "output thumb.txt (",
        "event ops.task.submitted for Some(",
        "event ops.task.succeeded for Some(",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}
