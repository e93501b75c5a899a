//! Keeping task paths inside the task's directory.
//!
//! Working directories, output globs and output files come from templates (and, through
//! parameters, from end users). None may reach outside the task directory: no absolute
//! paths, no `..`, and no symlink whose target leaves the directory.

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// Checks that `path` is a plain relative path (no root, no `..`, no NUL) and returns it
/// normalised (without `.` components).
pub fn check_relative(path: &str) -> Result<PathBuf> {
    let escape = |reason: &str| Error::PathEscape {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.is_empty() {
        return Err(escape("empty path"));
    }
    if path.contains('\0') {
        return Err(escape("contains a NUL byte"));
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(escape("`..` is not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(escape("absolute paths are not allowed"));
            }
        }
    }
    Ok(out)
}

/// Checks an output glob pattern: relative, with no `..` segment.
pub fn check_glob(pattern: &str) -> Result<()> {
    let escape = |reason: &str| Error::PathEscape {
        path: pattern.to_owned(),
        reason: reason.to_owned(),
    };
    if pattern.is_empty() {
        return Err(escape("empty pattern"));
    }
    if pattern.starts_with('/') || pattern.starts_with('\\') {
        return Err(escape("absolute patterns are not allowed"));
    }
    if pattern.split(['/', '\\']).any(|seg| seg == "..") {
        return Err(escape("`..` is not allowed"));
    }
    if pattern.contains('\0') {
        return Err(escape("contains a NUL byte"));
    }
    Ok(())
}

/// Resolves `rel` under `root`, following symlinks, and fails if the result is outside
/// `root`. `root` must exist; `rel` may not (then its deepest existing ancestor is
/// checked).
pub fn resolve_within(root: &Path, rel: &Path) -> Result<PathBuf> {
    let rel_str = rel.to_string_lossy();
    let rel = check_relative(&rel_str)?;
    let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
    let joined = root.join(&rel);
    // Walk up to the deepest existing ancestor and canonicalize that.
    let mut existing = joined.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => {
                if !real.starts_with(&root) {
                    return Err(Error::PathEscape {
                        path: rel_str.into_owned(),
                        reason: format!("resolves to {} through a symlink", real.display()),
                    });
                }
                let mut out = real;
                out.extend(rest.iter().rev());
                return Ok(out);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => return Ok(joined),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        assert!(check_relative("frames/out.png").is_ok());
        assert_eq!(check_relative("./a/./b").unwrap(), PathBuf::from("a/b"));
        for bad in ["", "/etc", "../x", "a/../../b", "a\0b"] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_glob("frames/*.png").is_ok());
        assert!(check_glob("**/*.exr").is_ok());
        for bad in ["/etc/*", "../*", "a/../../*", ""] {
            assert!(check_glob(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn symlink_escape_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("task");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        std::fs::create_dir(root.join("ok")).unwrap();
        let err = resolve_within(&root, Path::new("out/passwd")).unwrap_err();
        assert!(matches!(err, Error::PathEscape { .. }), "{err}");
        let fine = resolve_within(&root, Path::new("ok/new/file")).unwrap();
        assert!(fine.ends_with("ok/new/file"));
    }
}
