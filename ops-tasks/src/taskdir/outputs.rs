//! Finding output files in a task directory: the output globs, the walk that skips
//! `.ops/` and follows no symlink out of the directory, and the scanner that reports
//! each settled file once per attempt.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

use super::{OPS_DIR, open_append, paths};
use crate::{Error, Result};

/// Scans a task directory for files matching the output globs.
///
/// A file is reported once it has been seen twice with the same size and modification
/// time (so that consumers rarely see a half-written file), or at the final scan after
/// the task ended. Reported paths are appended to `.ops/outputs-<attempt>.jsonl` so a
/// coordinator that re-attaches does not report them again.
#[derive(Debug)]
pub struct OutputScanner {
    root: PathBuf,
    globs: GlobSet,
    reported: HashSet<String>,
    pending: HashMap<String, (u64, Option<SystemTime>)>,
    record: PathBuf,
}

/// Builds the matcher for output globs, checking each with [`paths::check_glob`].
pub fn build_globs(patterns: &[String]) -> Result<GlobSet> {
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
    builder.build().map_err(|e| Error::PathEscape {
        path: patterns.join(", "),
        reason: format!("invalid output globs: {e}"),
    })
}

/// A file under a task directory whose path matches the output globs.
#[derive(Debug)]
pub enum Matched {
    /// Its path relative to the task directory, and the walk's entry for it.
    File(String, walkdir::DirEntry),
    /// A matching file whose name is not UTF-8 (relative path).
    NotUtf8(PathBuf),
}

/// Walks `root` (not its `.ops/`) for the files whose relative path matches `globs`,
/// giving walk errors as they come. Shared by the output scanner and staging.
pub fn matching<'a>(
    root: &'a Path,
    globs: &'a GlobSet,
) -> impl Iterator<Item = walkdir::Result<Matched>> + 'a {
    WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == OPS_DIR))
        .filter_map(move |entry| {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            if entry.file_type().is_dir() {
                return None;
            }
            let rel = entry.path().strip_prefix(root).ok()?;
            if !globs.is_match(rel) {
                return None;
            }
            Some(Ok(match rel.to_str() {
                Some(rel) => Matched::File(rel.to_owned(), entry),
                None => Matched::NotUtf8(rel.to_path_buf()),
            }))
        })
}

/// The regular file a matched entry stands for, with its metadata. A symlink counts
/// only when it resolves inside `root` (to its target); anything else is `None`.
pub fn regular_file(
    root: &Path,
    rel: &str,
    entry: &walkdir::DirEntry,
) -> Option<(PathBuf, std::fs::Metadata)> {
    let (file, meta) = if entry.path_is_symlink() {
        match paths::resolve_within(root, Path::new(rel)) {
            Ok(target) => {
                let meta = std::fs::metadata(&target).ok()?;
                (target, meta)
            }
            Err(e) => {
                tracing::debug!(path = rel, error = %e, "output symlink escapes: ignored");
                return None;
            }
        }
    } else {
        (entry.path().to_path_buf(), entry.metadata().ok()?)
    };
    meta.is_file().then_some((file, meta))
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
        for matched in matching(&self.root, &self.globs).flatten() {
            let (rel, entry) = match matched {
                Matched::File(rel, entry) => (rel, entry),
                Matched::NotUtf8(rel) => {
                    tracing::debug!(path = %rel.display(), "output path is not UTF-8: ignored");
                    continue;
                }
            };
            let rel_str = rel.as_str();
            if self.reported.contains(rel_str) {
                continue;
            }
            let Some((_, meta)) = regular_file(&self.root, rel_str, &entry) else {
                continue;
            };
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
        let file = open_append(&self.record);
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
