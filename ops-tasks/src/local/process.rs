//! Processes: finding the program, the wrapper shell, `/proc` and signals.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{AccessFlags, Pid, SysconfVar, access, sysconf};

/// The wrapper every attempt runs under (`/bin/sh -c WRAPPER ops-task EXIT_FILE N
/// PROCS_1 … PROCS_N PROGRAM ARGS…`).
///
/// It first moves itself into the attempt's cgroups, so that everything the task forks is
/// born inside them, then runs the program as its child (not `exec`: a coordinator that
/// restarts is no longer the parent and could not learn the exit status) and records the
/// status and the CPU times of its waited-for children in `EXIT_FILE`. Everything comes in
/// as separate arguments; nothing from the task is ever part of the script.
pub(crate) const WRAPPER: &str = r#"exit_file=$1
n=$2
shift 2
while [ "$n" -gt 0 ]; do
  if ! echo "$$" > "$1"; then
    echo "ops: cannot join cgroup $1" >&2
    echo "wrapper-failed" > "$exit_file"
    exit 125
  fi
  n=$((n - 1))
  shift
done
"$@"
s=$?
{ echo "$s"; times; } > "$exit_file"
exit "$s"
"#;

/// The shell that runs [`WRAPPER`].
pub(crate) const SHELL: &str = "/bin/sh";

/// What `PATH` lookup found for the program.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Program {
    /// An executable file.
    Found(PathBuf),
    /// Nothing by that name.
    NotFound(String),
    /// Something by that name that cannot be executed.
    NotExecutable(String),
}

/// Finds `name` the way `execvp` would: a name with a `/` is taken relative to `cwd`,
/// anything else is looked up in `path_var`.
pub(crate) fn resolve_program(name: &str, path_var: &str, cwd: &Path) -> Program {
    if name.is_empty() {
        return Program::NotFound("empty program name".to_owned());
    }
    if name.contains('/') {
        let candidate = cwd.join(name);
        return match check_executable(&candidate) {
            Ok(()) => Program::Found(candidate),
            Err(Some(why)) => Program::NotExecutable(format!("{name}: {why}")),
            Err(None) => Program::NotFound(format!("{name}: no such file")),
        };
    }
    let mut not_executable = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() {
            cwd.to_path_buf()
        } else {
            cwd.join(dir)
        };
        let candidate = dir.join(name);
        match check_executable(&candidate) {
            Ok(()) => return Program::Found(candidate),
            Err(Some(why)) => {
                not_executable.get_or_insert_with(|| format!("{}: {why}", candidate.display()));
            }
            Err(None) => {}
        }
    }
    match not_executable {
        Some(why) => Program::NotExecutable(why),
        None => Program::NotFound(format!("{name}: command not found in PATH {path_var}")),
    }
}

/// `Ok` for an executable file, `Err(None)` when nothing is there, `Err(Some(why))`
/// when something is there that cannot be run.
fn check_executable(path: &Path) -> Result<(), Option<String>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Err(None),
    };
    if meta.is_dir() {
        return Err(Some("is a directory".to_owned()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Some("permission denied (not executable)".to_owned()));
    }
    access(path, AccessFlags::X_OK).map_err(|e| Some(format!("not executable: {e}")))
}

/// The fields of `/proc/<pid>/stat` the executor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `Z`…
    pub state: char,
    /// Process group.
    pub pgrp: i32,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks: with the pid, identifies a process.
    pub start_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// Whether the process has exited (a zombie counts as exited).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        cpu_ticks: num(11)? + num(12)?,
        start_ticks: num(19)?,
        rss_pages: num(21)?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub(crate) fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` is the live (non-zombie) process that started at `start_ticks`.
pub(crate) fn is_alive(pid: i32, start_ticks: u64) -> bool {
    read_stat(pid).is_some_and(|s| s.start_ticks == start_ticks && !s.is_dead())
}

/// Live (non-zombie) members of the process group led by the wrapper `pgid` that started
/// at `start_ticks`, found by scanning `/proc`. Empty when the group id now belongs to
/// another process (the number can only be reused once the group is empty).
pub(crate) fn group_members(pgid: i32, start_ticks: u64) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    if read_stat(pgid).is_some_and(|s| s.start_ticks != start_ticks) {
        return out;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid)
            && stat.pgrp == pgid
            && !stat.is_dead()
        {
            out.insert(pid);
        }
    }
    out
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
pub(crate) fn peak_rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub(crate) fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        sysconf(SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(100)
    })
}

/// Memory page size in bytes.
pub(crate) fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(4096)
    })
}

/// Clock ticks to a duration.
pub(crate) fn ticks_to_duration(ticks: u64) -> Duration {
    let hz = clock_ticks();
    Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz)
}

/// Sends `signal` to a process, ignoring processes that are already gone.
pub(crate) fn signal_pid(pid: i32, signal: Signal) {
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Sends `signal` to a process group, ignoring a group that is already gone.
pub(crate) fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// A readable name for a signal number (`SIGKILL`), or the number.
pub(crate) fn signal_name(signal: i32) -> String {
    Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 98765 1000 250 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_ticks, 98765);
        assert_eq!(s.rss_pages, 250);
        let me = read_stat(std::process::id() as i32).unwrap();
        assert!(!me.is_dead());
        assert!(is_alive(std::process::id() as i32, me.start_ticks));
        assert!(!is_alive(std::process::id() as i32, me.start_ticks + 1));
    }

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(200), "signal 200");
    }

    #[test]
    fn resolves_programs() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(matches!(
            resolve_program("./run.sh", "/bin", dir.path()),
            Program::NotExecutable(_)
        ));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve_program("./run.sh", "/bin", dir.path()),
            Program::Found(dir.path().join("./run.sh"))
        );
        assert!(
            matches!(resolve_program("sh", "/nope:/bin", dir.path()), Program::Found(p) if p == Path::new("/bin/sh"))
        );
        assert!(
            matches!(resolve_program("no-such-prog-xyz", "/bin", dir.path()), Program::NotFound(m) if m.contains("no-such-prog-xyz"))
        );
        assert!(matches!(
            resolve_program("tmp", "/", dir.path()),
            Program::NotExecutable(_)
        ));
    }
}
