//! `Runtime::Processes`: containers as local processes.
//!
//! Each container's command+args runs in its own process group (so the whole group can
//! be signalled and nothing outlives the container), found on `PATH` first. There are no
//! mount namespaces: volume mounts are mapped to host directories (hostPath: the host
//! path joined with the mount's subPath, created if missing; emptyDir and other volume
//! types: a scratch directory per pod) and the container's workingDir, command, args and
//! env values that start with a mountPath are translated to those directories.
//! stdout and stderr go, line by line with RFC3339Nano timestamps, to the container's
//! log file. Memory limits are enforced by polling the group's RSS every 50 ms.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::util::{arr, at, meta, now_nano, s};
use super::{Inner, lock};

/// Live process groups, with the memory limit to enforce on each.
#[derive(Default)]
pub(crate) struct Procs {
    groups: Mutex<HashMap<i32, Watch>>,
}

struct Watch {
    limit: Option<u64>,
    oom: Arc<AtomicBool>,
}

impl Procs {
    fn register(&self, pgid: i32, limit: Option<u64>, oom: Arc<AtomicBool>) {
        lock(&self.groups).insert(pgid, Watch { limit, oom });
    }

    fn unregister(&self, pgid: i32) {
        lock(&self.groups).remove(&pgid);
    }

    /// SIGKILLs every live process group.
    pub(crate) fn kill_all(&self) {
        for pgid in lock(&self.groups).keys() {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        }
    }

    /// Whether no process group is alive.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.groups).is_empty()
    }

    fn limited(&self) -> Vec<(i32, u64, Arc<AtomicBool>)> {
        lock(&self.groups)
            .iter()
            .filter_map(|(p, w)| w.limit.map(|l| (*p, l, w.oom.clone())))
            .collect()
    }
}

/// Polls the RSS of every memory-limited process group every 50 ms and SIGKILLs a group
/// over its limit (marking it OOM-killed).
pub(crate) async fn memory_monitor(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stopping() {
            return;
        }
        let watched = inner.procs.limited();
        if watched.is_empty() {
            continue;
        }
        let groups: HashSet<i32> = watched.iter().map(|w| w.0).collect();
        let Ok(rss) = tokio::task::spawn_blocking(move || group_rss(&groups)).await else {
            continue;
        };
        for (pgid, limit, oom) in watched {
            if rss.get(&pgid).copied().unwrap_or(0) > limit {
                oom.store(true, Ordering::SeqCst);
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }
}

/// Resident memory in bytes of every process in the given process groups.
fn group_rss(groups: &HashSet<i32>) -> HashMap<i32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may contain spaces) in parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let Some(pgrp) = fields.get(2).and_then(|f| f.parse::<i32>().ok()) else {
            continue;
        };
        if !groups.contains(&pgrp) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(pgrp).or_default() += kb * 1024;
    }
    out
}

/// How to start one container.
#[derive(Debug)]
pub(crate) struct Launch {
    /// Command and args, translated, `$(VAR)`-expanded; the first is the program.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    pub mem_limit: Option<u64>,
}

/// A started container process.
pub(crate) struct Proc {
    pub pgid: i32,
    pub oom: Arc<AtomicBool>,
    /// Exit code (128+N when killed by signal N), after the logs are flushed.
    pub exit: JoinHandle<i32>,
}

/// Kills the group and forgets it when dropped (also when the task is aborted).
struct GroupGuard {
    inner: Arc<Inner>,
    pgid: i32,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        self.inner.procs.unregister(self.pgid);
    }
}

/// The StartError message containerd gives for a missing executable.
pub(crate) fn not_found_message(cmd: &str) -> String {
    if cmd.contains('/') {
        format!(
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"{cmd}\": stat {cmd}: no such file or directory: unknown"
        )
    } else {
        format!(
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"{cmd}\": executable file not found in $PATH: unknown"
        )
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the program: a path as given, else the first match on PATH.
fn resolve(program: &str, path_var: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
}

/// Starts a container process. `Err` is the StartError message.
pub(crate) async fn spawn(inner: &Arc<Inner>, launch: Launch) -> Result<Proc, String> {
    let Some(program) = launch.argv.first().cloned() else {
        return Err(not_found_message(""));
    };
    let path_var = launch
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let Some(resolved) = resolve(&program, &path_var) else {
        return Err(not_found_message(&program));
    };
    // A new file (not a truncated one): a previous pod of the same name may still hold
    // the old one open.
    let _ = tokio::fs::remove_file(&launch.log).await;
    let file = tokio::fs::File::create(&launch.log).await.map_err(|e| {
        format!(
            "failed to create container log {}: {e}",
            launch.log.display()
        )
    })?;
    let _ = tokio::fs::create_dir_all(&launch.cwd).await;
    let mut cmd = tokio::process::Command::new(&resolved);
    cmd.arg0(&program)
        .args(&launch.argv[1..])
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"{program}\": {e}: unknown"
        )
    })?;
    let Some(pid) = child.id() else {
        return Err("failed to start container process: exited at once".into());
    };
    let pgid = pid as i32;
    let oom = Arc::new(AtomicBool::new(false));
    inner.procs.register(pgid, launch.mem_limit, oom.clone());
    let guard = GroupGuard {
        inner: inner.clone(),
        pgid,
    };
    let file = Arc::new(tokio::sync::Mutex::new(file));
    let out = child
        .stdout
        .take()
        .map(|r| tokio::spawn(pump(r, file.clone())));
    let err = child
        .stderr
        .take()
        .map(|r| tokio::spawn(pump(r, file.clone())));
    let exit = tokio::spawn(async move {
        let status = child.wait().await;
        // The container's init exited: everything else in it dies too.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        for h in [out, err].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        drop(guard);
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9)),
            Err(_) => 137,
        }
    });
    Ok(Proc { pgid, oom, exit })
}

/// Copies a stream to the log file, one timestamped line at a time (lines longer than
/// 16 KiB are split, like the kubelet's CRI logs).
async fn pump<R: AsyncRead + Unpin>(mut r: R, file: Arc<tokio::sync::Mutex<tokio::fs::File>>) {
    const MAX_LINE: usize = 16 * 1024;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let emit = |out: &mut Vec<u8>, ts: &str, line: &[u8]| {
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
    };
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let ts = now_nano();
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            emit(&mut out, &ts, &buf[start..start + pos]);
            start += pos + 1;
        }
        while buf.len() - start >= MAX_LINE {
            emit(&mut out, &ts, &buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        buf.drain(..start);
        if !out.is_empty() {
            let mut f = file.lock().await;
            let _ = f.write_all(&out).await;
            let _ = f.flush().await;
        }
    }
    if !buf.is_empty() {
        let mut out = Vec::new();
        emit(&mut out, &now_nano(), &buf);
        let mut f = file.lock().await;
        let _ = f.write_all(&out).await;
        let _ = f.flush().await;
    }
}

/// Sends a signal to a process group.
pub(crate) fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Expands `$(VAR)` references the way the kubelet does (`$$(` escapes).
pub(crate) fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        if bytes[i] == b'$' && i + 1 < s.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some(v) = vars.get(name) {
                    out.push_str(v);
                } else {
                    out.push_str(&s[i..i + 3 + end]);
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("char");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Mount path -> host directory for one container, longest mount path first.
pub(crate) struct Mounts {
    map: Vec<(String, PathBuf)>,
    first: Option<PathBuf>,
}

impl Mounts {
    /// Translates a container path under a mount to its host path.
    pub(crate) fn translate(&self, p: &str) -> Option<String> {
        for (mount, host) in &self.map {
            let m = mount.trim_end_matches('/');
            if p == m {
                return Some(host.to_string_lossy().into_owned());
            }
            if let Some(rest) = p.strip_prefix(m)
                && rest.starts_with('/')
            {
                return Some(format!("{}{rest}", host.to_string_lossy()));
            }
        }
        None
    }
}

/// The pod's scratch directory (emptyDirs, default working directories).
pub(crate) fn pod_scratch(inner: &Inner, uid: &str) -> PathBuf {
    inner.scratch.path().join(uid)
}

/// Maps the container's volume mounts to host directories, creating them.
pub(crate) fn mounts(
    inner: &Inner,
    pod: &Value,
    c: &Value,
    vars: &HashMap<String, String>,
) -> Mounts {
    let uid = meta(pod, "uid");
    let mut roots: HashMap<&str, (PathBuf, &str)> = HashMap::new();
    for v in arr(pod, &["spec", "volumes"]) {
        let Some(name) = s(v, &["name"]) else {
            continue;
        };
        if let Some(hp) = s(v, &["hostPath", "path"]) {
            let ty = s(v, &["hostPath", "type"]).unwrap_or("");
            roots.insert(name, (PathBuf::from(hp), ty));
        } else {
            roots.insert(
                name,
                (
                    pod_scratch(inner, uid).join("volumes").join(name),
                    "Directory",
                ),
            );
        }
    }
    let mut map = Vec::new();
    let mut first = None;
    for m in arr(c, &["volumeMounts"]) {
        let (Some(name), Some(mount_path)) = (s(m, &["name"]), s(m, &["mountPath"])) else {
            continue;
        };
        let Some((root, ty)) = roots.get(name) else {
            continue;
        };
        let sub = s(m, &["subPath"])
            .map(str::to_string)
            .or_else(|| s(m, &["subPathExpr"]).map(|e| expand(e, vars)))
            .unwrap_or_default();
        let host = if sub.is_empty() {
            root.clone()
        } else {
            root.join(sub.trim_start_matches('/'))
        };
        match *ty {
            "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
            "FileOrCreate" if sub.is_empty() => {
                if let Some(parent) = host.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&host);
            }
            _ => {
                let _ = std::fs::create_dir_all(&host);
            }
        }
        if first.is_none() && host.is_dir() {
            first = Some(host.clone());
        }
        map.push((mount_path.to_string(), host));
    }
    map.sort_by_key(|(m, _)| std::cmp::Reverse(m.trim_end_matches('/').len()));
    Mounts { map, first }
}

/// The value of a `fieldRef` for a pod.
fn field_ref(pod: &Value, path: &str) -> Option<String> {
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|r| r.strip_suffix("']"))
    {
        return s(pod, &["metadata", "labels", key]).map(str::to_string);
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|r| r.strip_suffix("']"))
    {
        return s(pod, &["metadata", "annotations", key]).map(str::to_string);
    }
    let parts: Vec<&str> = path.split('.').collect();
    let v = at(pod, &parts)?;
    Some(match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Builds the launch of a container, or None when it has nothing to run.
pub(crate) fn prepare(
    inner: &Inner,
    pod: &Value,
    c: &Value,
    host_ip: &str,
    pod_ip: &str,
) -> Launch {
    let ns = meta(pod, "namespace");
    let name = meta(pod, "name");
    let cname = s(c, &["name"]).unwrap_or("");
    let mut pod_ext = pod.clone();
    pod_ext["status"]["podIP"] = pod_ip.into();
    pod_ext["status"]["hostIP"] = host_ip.into();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set = |env: &mut Vec<(String, String)>,
               vars: &mut HashMap<String, String>,
               k: &str,
               v: String| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.clone()));
        vars.insert(k.to_string(), v);
    };
    set(
        &mut env,
        &mut vars,
        "PATH",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    if let Ok(home) = std::env::var("HOME") {
        set(&mut env, &mut vars, "HOME", home);
    }
    set(&mut env, &mut vars, "HOSTNAME", name.to_string());
    for e in arr(c, &["env"]) {
        let Some(k) = s(e, &["name"]) else {
            continue;
        };
        let v = if let Some(v) = s(e, &["value"]) {
            Some(expand(v, &vars))
        } else if let Some(fp) = s(e, &["valueFrom", "fieldRef", "fieldPath"]) {
            field_ref(&pod_ext, fp)
        } else if let Some(res) = s(e, &["valueFrom", "resourceFieldRef", "resource"]) {
            let parts: Vec<&str> = res.split('.').collect();
            at(c, &[&["resources"], parts.as_slice()].concat())
                .and_then(Value::as_str)
                .map(|q| {
                    if res.ends_with("cpu") {
                        super::util::parse_quantity(q, 1)
                            .map(|v| v.max(1).to_string())
                            .unwrap_or_default()
                    } else {
                        super::util::parse_quantity(q, 1)
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    }
                })
        } else if at(e, &["value"]).is_none() && at(e, &["valueFrom"]).is_none() {
            Some(String::new())
        } else {
            None
        };
        if let Some(v) = v {
            set(&mut env, &mut vars, k, v);
        }
    }
    let mounts = mounts(inner, pod, c, &vars);
    for (_, v) in env.iter_mut() {
        if let Some(t) = mounts.translate(v) {
            *v = t;
        }
    }
    let rootfs = pod_scratch(inner, meta(pod, "uid")).join("rootfs");
    let cwd = match s(c, &["workingDir"]).filter(|w| !w.is_empty()) {
        Some(w) => match mounts.translate(w) {
            Some(t) => PathBuf::from(t),
            None if Path::new(w).is_dir() => PathBuf::from(w),
            None => rootfs.join(w.trim_start_matches('/')),
        },
        None => mounts.first.clone().unwrap_or(rootfs),
    };
    let mut argv: Vec<String> = arr(c, &["command"])
        .iter()
        .chain(arr(c, &["args"]))
        .filter_map(|a| a.as_str())
        .map(|a| {
            let a = expand(a, &vars);
            mounts.translate(&a).unwrap_or(a)
        })
        .collect();
    if argv.is_empty() {
        // No command: the image's entrypoint is unknown here; the container exits 0.
        argv = vec!["true".to_string()];
    }
    let mem_limit = s(c, &["resources", "limits", "memory"])
        .and_then(|q| super::util::parse_quantity(q, 1))
        .map(|v| v.max(0) as u64);
    Launch {
        argv,
        env,
        cwd,
        log: inner.log_path(ns, name, cname),
        mem_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_vars() {
        let mut vars = HashMap::new();
        vars.insert("A".to_string(), "x".to_string());
        assert_eq!(expand("$(A)/b", &vars), "x/b");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("a$b", &vars), "a$b");
    }

    #[test]
    fn translates_paths() {
        let m = Mounts {
            map: vec![
                ("/data/sub".into(), PathBuf::from("/h2")),
                ("/data".into(), PathBuf::from("/h1")),
            ],
            first: None,
        };
        assert_eq!(m.translate("/data/x").as_deref(), Some("/h1/x"));
        assert_eq!(m.translate("/data").as_deref(), Some("/h1"));
        assert_eq!(m.translate("/data/sub/y").as_deref(), Some("/h2/y"));
        assert_eq!(m.translate("/database"), None);
    }
}
