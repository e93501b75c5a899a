//! The task-directory protocol: where an attempt's logs, exit record and reported
//! outputs live inside its task directory, and how paths are kept inside it.
//!
//! Every executor in this crate follows it (the local executor writes it, the
//! Kubernetes executor reads it through a volume, the simulator and staging reuse it);
//! an executor written outside the crate can follow it too, so that
//! [`Tasks`](crate::Tasks)' logs, follow-logs, outputs and staging work with it
//! unchanged.
//!
//! ```text
//! <task dir>/                   the task's own files (its working directory by default)
//!   .ops/                       the executor's ([`OPS_DIR`]); never an output, never staged into
//!     stdout.log, stderr.log    captured streams, appended across attempts (log_path)
//!     exit-<attempt>            the exit record: the status line, then `times` output (exit_path)
//!     outputs-<attempt>.jsonl   output paths already reported, one JSON string a line
//! ```
//!
//! - **Logs**: [`log_path`] and [`follow_log`] (a `tail -f` stream that ends when the
//!   task is final).
//! - **Exit record**: [`exit_path`] and [`ExitRecord::parse`]; a shell status above 128
//!   means the program was killed by signal `status - 128` ([`status_signal`]), as
//!   Docker and Kubernetes report it.
//! - **Outputs**: [`build_globs`] checks and compiles a template's output globs;
//!   [`matching`] walks the directory (skipping `.ops/`, following no symlink) for the
//!   files they match; [`regular_file`] resolves a match to a file inside the
//!   directory; [`OutputScanner`] reports each settled output once per attempt.
//! - **Paths**: [`check_relative`], [`check_glob`] and [`resolve_within`] keep every
//!   path a template or a user gives inside the task directory, symlinks included.
//!
//! ```
//! use std::path::Path;
//! use ops_tasks::LogStream;
//! use ops_tasks::taskdir::{self, ExitRecord};
//!
//! let dir = Path::new("/var/lib/ops/tasks/acme/0190-…");
//! assert!(taskdir::log_path(dir, LogStream::Stderr).ends_with(".ops/stderr.log"));
//! assert!(taskdir::exit_path(dir, 2).ends_with(".ops/exit-2"));
//! let record = ExitRecord::parse("137\n0m0.01s 0m0.00s\n0m1.50s 0m0.25s\n").unwrap();
//! assert_eq!(record.status(), Some(137));
//! assert_eq!(taskdir::status_signal(137), Some(9));
//! assert!(taskdir::check_relative("../../etc/passwd").is_err());
//! ```

mod logs;
mod outputs;
mod paths;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use logs::follow_log;
pub use outputs::{Matched, OutputScanner, build_globs, matching, regular_file};
pub use paths::{check_glob, check_relative, resolve_within};

use crate::LogStream;

/// The executor's directory inside each task directory (logs, exit records, output
/// records). Tasks may not write outputs or stage inputs there.
pub const OPS_DIR: &str = ".ops";

/// Where a captured stream of the task in `task_dir` is written.
pub fn log_path(task_dir: &Path, stream: LogStream) -> PathBuf {
    let file = match stream {
        LogStream::Stdout => "stdout.log",
        LogStream::Stderr => "stderr.log",
    };
    task_dir.join(OPS_DIR).join(file)
}

/// Where the exit record of `attempt` is written.
pub fn exit_path(task_dir: &Path, attempt: u32) -> PathBuf {
    task_dir.join(OPS_DIR).join(format!("exit-{attempt}"))
}

/// Where the outputs already reported for `attempt` are remembered.
pub fn outputs_record_path(task_dir: &Path, attempt: u32) -> PathBuf {
    task_dir
        .join(OPS_DIR)
        .join(format!("outputs-{attempt}.jsonl"))
}

/// Maps a shell status above 128 to the signal that killed the program (`128 + N`).
pub fn status_signal(status: i32) -> Option<i32> {
    (129..=128 + 64).contains(&status).then_some(status - 128)
}

/// What an attempt's exit record says.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ExitRecord {
    /// The attempt could not be started in its isolation (the line `wrapper-failed`).
    WrapperFailed,
    /// The program's status as a shell saw it (`128 + N` for signal `N`), and the CPU
    /// time of the processes that were waited for, when recorded.
    Exited {
        /// The status.
        status: i32,
        /// User plus system CPU time of the waited-for children.
        cpu_time: Option<Duration>,
    },
}

impl ExitRecord {
    /// Parses an exit record: a status line, then optionally the output of the shell's
    /// `times` builtin (the shell's own times, then its children's:
    /// `0m1.230000s 0m0.010000s`). `None` when the text is not an exit record.
    pub fn parse(text: &str) -> Option<ExitRecord> {
        let mut lines = text.lines();
        let first = lines.next()?.trim();
        if first == "wrapper-failed" {
            return Some(ExitRecord::WrapperFailed);
        }
        let status = first.parse().ok()?;
        let children = lines.nth(1).and_then(|line| {
            let mut total = Duration::ZERO;
            for part in line.split_whitespace() {
                total += parse_times_value(part)?;
            }
            Some(total)
        });
        Some(ExitRecord::Exited {
            status,
            cpu_time: children,
        })
    }

    /// The recorded status, if the program ran.
    pub fn status(&self) -> Option<i32> {
        match self {
            ExitRecord::Exited { status, .. } => Some(*status),
            ExitRecord::WrapperFailed => None,
        }
    }
}

/// `1m2.500000s` → 62.5 s.
fn parse_times_value(text: &str) -> Option<Duration> {
    let (min, sec) = text.strip_suffix('s')?.split_once('m')?;
    let secs = min.parse::<f64>().ok()? * 60.0 + sec.parse::<f64>().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Opens a file for appending without following a symlink a task may have planted.
pub(crate) fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o644).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_records_parse() {
        assert_eq!(
            ExitRecord::parse("wrapper-failed\n"),
            Some(ExitRecord::WrapperFailed)
        );
        assert_eq!(
            ExitRecord::parse("3\n0m0.00s 0m0.00s\n1m2.500000s 0m0.500000s\n"),
            Some(ExitRecord::Exited {
                status: 3,
                cpu_time: Some(Duration::from_secs(63))
            })
        );
        assert_eq!(
            ExitRecord::parse("0\n"),
            Some(ExitRecord::Exited {
                status: 0,
                cpu_time: None
            })
        );
        assert_eq!(ExitRecord::parse("garbage"), None);
        assert_eq!(status_signal(137), Some(9));
        assert_eq!(status_signal(128), None);
        assert_eq!(status_signal(1), None);
    }
}
