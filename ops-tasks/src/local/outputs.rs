//! Finding output files in a task directory.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

use super::OPS_DIR;
use crate::paths;
use crate::{Error, Result};

/// Scans a task directory for files matching the output globs.
///
/// A file is reported once it has been seen twice with the same size and modification
/// time (so that consumers rarely see a half-written file), or at the final scan after
/// the task ended. Reported paths are appended to `.ops/outputs-<attempt>.jsonl` so a
/// coordinator that re-attaches does not report them again.
#[derive(Debug)]
pub(crate) struct OutputScanner {
    root: PathBuf,
    globs: GlobSet,
    reported: HashSet<String>,
    pending: HashMap<String, (u64, Option<SystemTime>)>,
    record: PathBuf,
}

/// Builds the matcher for output globs, checking each with [`paths::check_glob`].
pub(crate) fn build_globs(patterns: &[String]) -> Result<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        paths::check_glob(p)?;
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::PathEscape {
                path: p.clone(),
                reason: format!("invalid glob: {e}"),
            })?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("output globs: {e}")))
}

impl OutputScanner {
    /// A scanner for `task_dir`; `resume` loads what an earlier coordinator reported.
    pub fn new(task_dir: &Path, attempt: u32, globs: GlobSet, resume: bool) -> Result<Self> {
        let root = task_dir
            .canonicalize()
            .map_err(|e| Error::io(task_dir, e))?;
        let record = root.join(OPS_DIR).join(format!("outputs-{attempt}.jsonl"));
        let mut reported = HashSet::new();
        if resume {
            if let Ok(text) = std::fs::read_to_string(&record) {
                reported.extend(
                    text.lines()
                        .filter_map(|l| serde_json::from_str::<String>(l).ok()),
                );
            }
        } else {
            let _ = std::fs::remove_file(&record);
        }
        Ok(Self {
            root,
            globs,
            reported,
            pending: HashMap::new(),
            record,
        })
    }

    /// New outputs (path relative to the task directory, size); `last` reports every
    /// match not yet reported.
    pub fn scan(&mut self, last: bool) -> Vec<(String, u64)> {
        let mut found = Vec::new();
        let walker = WalkDir::new(&self.root)
            .follow_links(false)
            .min_depth(1)
            .into_iter()
            .filter_entry(|e| !(e.depth() == 1 && e.file_name() == OPS_DIR));
        for entry in walker.flatten() {
            if entry.file_type().is_dir() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&self.root) else {
                continue;
            };
            let Some(rel_str) = rel.to_str() else {
                tracing::debug!(path = %rel.display(), "output path is not UTF-8: ignored");
                continue;
            };
            if self.reported.contains(rel_str) || !self.globs.is_match(rel) {
                continue;
            }
            // Symlinks count only when they resolve inside the task directory.
            let meta = if entry.path_is_symlink() {
                match paths::resolve_within(&self.root, rel) {
                    Ok(target) => std::fs::metadata(target),
                    Err(e) => {
                        tracing::debug!(path = rel_str, error = %e, "output symlink escapes: ignored");
                        continue;
                    }
                }
            } else {
                entry.metadata().map_err(std::io::Error::other)
            };
            let Ok(meta) = meta else { continue };
            if !meta.is_file() {
                continue;
            }
            let seen = (meta.len(), meta.modified().ok());
            let settled = self.pending.get(rel_str) == Some(&seen);
            if last || settled {
                self.pending.remove(rel_str);
                self.reported.insert(rel_str.to_owned());
                self.remember(rel_str);
                found.push((rel_str.to_owned(), meta.len()));
            } else {
                self.pending.insert(rel_str.to_owned(), seen);
            }
        }
        found.sort();
        found
    }

    fn remember(&self, path: &str) {
        let line = serde_json::to_string(path).unwrap_or_default();
        let file = super::open_append(&self.record);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_settled_files_once_and_skips_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".ops")).unwrap();
        std::fs::create_dir_all(root.join("out/sub")).unwrap();
        std::fs::write(root.join("out/a.txt"), "a").unwrap();
        std::fs::write(root.join("out/sub/b.txt"), "bb").unwrap();
        std::fs::write(root.join(".ops/c.txt"), "c").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("out/x.txt")).unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("out/y.txt")).unwrap();
        let globs = build_globs(&["out/*.txt".into(), "**/b.txt".into(), "*.txt".into()]).unwrap();
        let mut s = OutputScanner::new(root, 1, globs.clone(), false).unwrap();
        assert!(s.scan(false).is_empty(), "first sight is not settled");
        let found = s.scan(false);
        assert_eq!(
            found,
            vec![
                ("out/a.txt".into(), 1),
                ("out/sub/b.txt".into(), 2),
                ("out/y.txt".into(), 1)
            ]
        );
        assert!(s.scan(true).is_empty());
        let mut resumed = OutputScanner::new(root, 1, globs, true).unwrap();
        assert!(resumed.scan(true).is_empty());
        assert!(build_globs(&["../*".into()]).is_err());
        assert!(build_globs(&["a/[".into()]).is_err());
    }
}
