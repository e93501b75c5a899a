//! Per-attempt cgroups (v1 and v2): detection, limits, membership, kill, accounting.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::config::CgroupMode;
use super::process::signal_pid;
use crate::{Error, Result};

/// The v1 controllers the executor uses.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// The v2 controllers the executor enables for its children.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// CFS period used for CPU quotas.
const CFS_PERIOD_US: u64 = 100_000;

/// Where the executor creates per-attempt cgroups.
#[derive(Clone, Debug)]
pub(crate) struct CgroupRoots {
    mode: CgroupMode,
    /// One directory per hierarchy (v1: one per mount; v2: one), with its controllers.
    parents: Vec<(PathBuf, Vec<String>)>,
}

impl CgroupRoots {
    /// No cgroups.
    pub fn none() -> Self {
        Self {
            mode: CgroupMode::None,
            parents: Vec::new(),
        }
    }

    /// The mode in use (`V1`, `V2` or `None`).
    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// The parent directories, for logs.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        self.parents.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Detects what `requested` allows on this host; `Auto` falls back quietly, an
    /// explicit `V1`/`V2` fails with the reason.
    pub fn detect(requested: CgroupMode, parent: &str) -> Result<Self> {
        let parent = check_parent(parent)?;
        let mounts = read_mounts();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        match requested {
            CgroupMode::None => Ok(Self::none()),
            CgroupMode::V1 => {
                detect_v1(&mounts, &own, &parent).map_err(|e| Error::config("cgroups", e))
            }
            CgroupMode::V2 => {
                detect_v2(&mounts, &own, &parent).map_err(|e| Error::config("cgroups", e))
            }
            CgroupMode::Auto => {
                let v2 = detect_v2(&mounts, &own, &parent);
                if let Ok(found) = v2 {
                    return Ok(found);
                }
                let v1 = detect_v1(&mounts, &own, &parent);
                if let Ok(found) = v1 {
                    return Ok(found);
                }
                tracing::warn!(
                    v2 = %v2.err().unwrap_or_default(),
                    v1 = %v1.err().unwrap_or_default(),
                    "no usable cgroups: limits are not enforced by the kernel; memory is watched by polling"
                );
                Ok(Self::none())
            }
        }
    }

    /// Removes the (empty) v1 parent directories, so that an executor leaves nothing
    /// in the hierarchies it borrowed; one still in use stays. v2 parents stay: they
    /// carry the controller delegation.
    pub fn remove_parents(&self) {
        if self.mode == CgroupMode::V1 {
            for (parent, _) in &self.parents {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    /// Creates the cgroup of one attempt and applies its limits.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Option<TaskCgroup>> {
        if self.mode == CgroupMode::None {
            return Ok(None);
        }
        let mut cg = TaskCgroup {
            mode: self.mode,
            dirs: Vec::new(),
        };
        for (parent, controllers) in &self.parents {
            let dir = parent.join(name);
            match create_child(parent, &dir, self.mode) {
                Ok(()) => {}
                // Left over by a coordinator that died: reuse it if it is empty.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let procs = read_pids(&dir.join("cgroup.procs"));
                    if !procs.is_empty() {
                        cg.remove_now();
                        return Err(Error::Executor {
                            executor: "local".to_owned(),
                            message: format!(
                                "cgroup {} already exists and holds processes {procs:?}",
                                dir.display()
                            ),
                        });
                    }
                }
                Err(e) => {
                    cg.remove_now();
                    return Err(Error::io(&dir, e));
                }
            }
            cg.dirs.push(CgroupDir {
                path: dir,
                controllers: controllers.clone(),
            });
        }
        if let Err(e) = cg.apply(limits) {
            cg.remove_now();
            return Err(e);
        }
        Ok(Some(cg))
    }
}

/// Limits applied to one attempt's cgroup (`0` = no limit).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    pub pids_max: u64,
}

/// One directory of an attempt's cgroup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CgroupDir {
    pub path: PathBuf,
    pub controllers: Vec<String>,
}

/// The cgroup of one attempt (one directory per v1 hierarchy, or one v2 directory).
/// Serialized into the run handle so that a restarted coordinator finds it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskCgroup {
    pub mode: CgroupMode,
    pub dirs: Vec<CgroupDir>,
}

/// What the cgroup measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CgroupUsage {
    pub cpu_time: Option<Duration>,
    pub peak_memory: Option<u64>,
    pub current_memory: Option<u64>,
}

impl TaskCgroup {
    fn dir_with(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.controllers.iter().any(|c| c == controller))
            .map(|d| d.path.as_path())
    }

    /// The `cgroup.procs` files the wrapper writes its pid into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    fn apply(&self, limits: &Limits) -> Result<()> {
        let memory = self.dir_with("memory");
        let cpu = self.dir_with("cpu");
        let pids = self.dir_with("pids");
        let quota = (limits.cpu_millis * CFS_PERIOD_US / 1000).max(1000);
        match self.mode {
            CgroupMode::V1 => {
                if let Some(dir) = memory {
                    // Tasks are killed by the group's OOM killer rather than paused.
                    let _ = std::fs::write(dir.join("memory.oom_control"), "0");
                    if limits.memory_bytes > 0 {
                        write(dir, "memory.limit_in_bytes", limits.memory_bytes)?;
                        // No escape into swap (only present with swap accounting).
                        if dir.join("memory.memsw.limit_in_bytes").exists() {
                            write(dir, "memory.memsw.limit_in_bytes", limits.memory_bytes)?;
                        }
                    }
                }
                if let Some(dir) = cpu
                    && limits.cpu_millis > 0
                {
                    write(dir, "cpu.cfs_period_us", CFS_PERIOD_US)?;
                    write(dir, "cpu.cfs_quota_us", quota)?;
                }
            }
            _ => {
                if let Some(dir) = memory {
                    if limits.memory_bytes > 0 {
                        write(dir, "memory.max", limits.memory_bytes)?;
                        if dir.join("memory.swap.max").exists() {
                            write(dir, "memory.swap.max", 0)?;
                        }
                    }
                    // An OOM kill takes the whole attempt down, as in Kubernetes.
                    if dir.join("memory.oom.group").exists() {
                        write(dir, "memory.oom.group", 1)?;
                    }
                }
                if let Some(dir) = cpu
                    && limits.cpu_millis > 0
                {
                    write(dir, "cpu.max", format!("{quota} {CFS_PERIOD_US}"))?;
                }
            }
        }
        if let Some(dir) = pids
            && limits.pids_max > 0
        {
            write(dir, "pids.max", limits.pids_max)?;
        }
        Ok(())
    }

    /// Every process in the attempt's cgroup (all hierarchies).
    pub fn pids(&self) -> BTreeSet<i32> {
        let mut out = BTreeSet::new();
        for d in &self.dirs {
            out.extend(read_pids(&d.path.join("cgroup.procs")));
        }
        out
    }

    /// Signals every process in the cgroup; SIGKILL on v2 uses `cgroup.kill`.
    pub fn signal_all(&self, signal: Signal) {
        if signal == Signal::SIGKILL && self.mode == CgroupMode::V2 {
            for d in &self.dirs {
                let _ = std::fs::write(d.path.join("cgroup.kill"), "1");
            }
        }
        for pid in self.pids() {
            signal_pid(pid, signal);
        }
    }

    /// Whether the kernel's OOM killer killed something in the cgroup.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.dir_with("memory") else {
            return false;
        };
        let file = match self.mode {
            CgroupMode::V1 => "memory.oom_control",
            _ => "memory.events",
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines().any(|line| {
            let mut parts = line.split_whitespace();
            matches!(parts.next(), Some("oom_kill" | "oom_group_kill"))
                && parts
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    > 0
        })
    }

    /// CPU time and memory as the cgroup counts them.
    pub fn usage(&self) -> CgroupUsage {
        let mut u = CgroupUsage::default();
        match self.mode {
            CgroupMode::V1 => {
                if let Some(dir) = self.dir_with("cpuacct") {
                    u.cpu_time = read_u64(&dir.join("cpuacct.usage")).map(Duration::from_nanos);
                }
                if let Some(dir) = self.dir_with("memory") {
                    u.peak_memory = read_u64(&dir.join("memory.max_usage_in_bytes"));
                    u.current_memory = read_u64(&dir.join("memory.usage_in_bytes"));
                }
            }
            _ => {
                if let Some(dir) = self
                    .dir_with("cpu")
                    .or_else(|| self.dirs.first().map(|d| d.path.as_path()))
                {
                    // cpu.stat's usage_usec is present even without the cpu controller.
                    let text = std::fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default();
                    u.cpu_time = text
                        .lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse().ok())
                        .map(Duration::from_micros);
                }
                if let Some(dir) = self.dir_with("memory") {
                    u.peak_memory = read_u64(&dir.join("memory.peak"));
                    u.current_memory = read_u64(&dir.join("memory.current"));
                }
            }
        }
        u
    }

    /// Removes the cgroup directories (they must be empty); returns the first failure.
    pub fn remove(&self) -> std::result::Result<(), (PathBuf, std::io::Error)> {
        let mut first = None;
        for d in self.dirs.iter().rev() {
            match std::fs::remove_dir(&d.path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    first.get_or_insert((d.path.clone(), e));
                }
            }
        }
        match first {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }

    fn remove_now(&self) {
        let _ = self.remove();
    }
}

/// Creates an attempt's directory. A v1 parent removed meanwhile by another executor
/// (see [`CgroupRoots::remove_parents`]) is created again.
fn create_child(parent: &Path, dir: &Path, mode: CgroupMode) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() == ErrorKind::NotFound && mode == CgroupMode::V1 && tries < 3 => {
                tries += 1;
                match std::fs::create_dir(parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            other => return other,
        }
    }
}

fn write(dir: &Path, file: &str, value: impl ToString) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value.to_string()).map_err(|e| Error::io(path, e))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_pids(path: &Path) -> BTreeSet<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `cgroup_parent` must be a plain path: no `..`, not empty.
fn check_parent(parent: &str) -> Result<PathBuf> {
    let bad = |why: &str| Error::config("cgroup_parent", format!("{parent:?}: {why}"));
    let path = Path::new(parent);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(bad("`..` is not allowed")),
        }
    }
    if out.as_os_str().is_empty() || out == Path::new("/") {
        return Err(bad("must name a cgroup"));
    }
    Ok(out)
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Clone, Debug)]
struct Mount {
    /// `cgroup` or `cgroup2`.
    fstype: String,
    /// Path of the mount's root inside the hierarchy.
    root: PathBuf,
    mount_point: PathBuf,
    /// v1 controllers of this hierarchy (empty for v2).
    controllers: Vec<String>,
}

fn read_mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fstype)) =
            (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        if *fstype != "cgroup" && *fstype != "cgroup2" {
            continue;
        }
        let controllers = if *fstype == "cgroup" {
            right
                .get(2)
                .map(|opts| {
                    opts.split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push(Mount {
            fstype: (*fstype).to_owned(),
            root: PathBuf::from(unescape(root)),
            mount_point: PathBuf::from(unescape(mount_point)),
            controllers,
        });
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(d) = octal {
            let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The executor's own cgroup path in the hierarchy holding `controller` (v1), or in the
/// unified hierarchy (`controller` = `None`).
fn own_path(proc_self_cgroup: &str, controller: Option<&str>) -> Option<PathBuf> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        hit.then(|| PathBuf::from(path))
    })
}

/// The directory under which attempt cgroups go in one hierarchy.
fn parent_dir(mount: &Mount, own: &Path, parent: &Path) -> PathBuf {
    if parent.is_absolute() {
        let rel = parent.strip_prefix(&mount.root).unwrap_or(parent);
        return mount.mount_point.join(rel.strip_prefix("/").unwrap_or(rel));
    }
    let rel = own.strip_prefix(&mount.root).unwrap_or(own);
    mount
        .mount_point
        .join(rel.strip_prefix("/").unwrap_or(rel))
        .join(parent)
}

fn detect_v1(
    mounts: &[Mount],
    own: &str,
    parent: &Path,
) -> std::result::Result<CgroupRoots, String> {
    let mut parents: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for controller in V1_CONTROLLERS {
        let Some(mount) = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.controllers.iter().any(|c| c == controller))
        else {
            if controller == "memory" {
                return Err("no cgroup v1 memory hierarchy is mounted".to_owned());
            }
            tracing::warn!(controller, "cgroup v1 controller not mounted: not used");
            continue;
        };
        if parents
            .iter()
            .any(|(_, c)| c.iter().any(|x| x == controller))
        {
            continue; // co-mounted with one already handled (cpu,cpuacct)
        }
        let own_path = own_path(own, Some(controller)).unwrap_or_else(|| PathBuf::from("/"));
        let dir = parent_dir(mount, &own_path, parent);
        let usable = std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
            .and_then(|()| {
                nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK)
                    .map_err(|e| {
                        format!(
                            "{} is not writable: {e}",
                            dir.join("cgroup.procs").display()
                        )
                    })
            });
        match usable {
            Ok(()) => parents.push((dir, mount.controllers.clone())),
            Err(e) if controller == "memory" => return Err(e),
            Err(e) => {
                tracing::warn!(controller, error = %e, "cgroup v1 controller not usable: not used")
            }
        }
    }
    Ok(CgroupRoots {
        mode: CgroupMode::V1,
        parents,
    })
}

fn detect_v2(
    mounts: &[Mount],
    own: &str,
    parent: &Path,
) -> std::result::Result<CgroupRoots, String> {
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or_else(|| "no cgroup2 hierarchy is mounted".to_owned())?;
    let own_path = own_path(own, None).unwrap_or_else(|| PathBuf::from("/"));
    let dir = parent_dir(mount, &own_path, parent);
    // Enable the controllers level by level from the hierarchy's root down to `dir`, so
    // that each attempt's cgroup (a child of `dir`) gets them.
    let rel = dir
        .strip_prefix(&mount.mount_point)
        .map_err(|_| {
            format!(
                "{} is outside {}",
                dir.display(),
                mount.mount_point.display()
            )
        })?
        .to_path_buf();
    let mut level = mount.mount_point.clone();
    let available = std::fs::read_to_string(level.join("cgroup.controllers")).unwrap_or_default();
    if !available.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "the memory controller is not available in {} (held by cgroup v1?)",
            level.join("cgroup.controllers").display()
        ));
    }
    let mut comps = rel.components().peekable();
    loop {
        enable_v2_controllers(&level)?;
        let Some(next) = comps.next() else { break };
        level.push(next);
        if !level.exists() {
            std::fs::create_dir(&level)
                .map_err(|e| format!("cannot create {}: {e}", level.display()))?;
        }
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let controllers: Vec<String> = controller_list(&enabled)
        .filter(|c| V2_CONTROLLERS.contains(c))
        .map(str::to_owned)
        .collect();
    if !controllers.iter().any(|c| c == "memory") {
        return Err(format!(
            "memory controller not enabled in {}",
            dir.display()
        ));
    }
    Ok(CgroupRoots {
        mode: CgroupMode::V2,
        parents: vec![(dir, controllers)],
    })
}

fn enable_v2_controllers(dir: &Path) -> std::result::Result<(), String> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<&str> = V2_CONTROLLERS
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .filter(|c| !controller_list(&enabled).any(|e| e == *c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let path = dir.join("cgroup.subtree_control");
    let all = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if std::fs::write(&path, all).is_ok() {
        return Ok(());
    }
    // One at a time, to find the one that fails; only memory is required.
    for c in missing {
        if let Err(e) = std::fs::write(&path, format!("+{c}")) {
            if c == "memory" {
                return Err(format!(
                    "cannot enable the memory controller in {}: {e} (a cgroup with processes of \
                     its own cannot delegate; run the coordinator in a delegated cgroup, e.g. \
                     systemd Delegate=yes, or set an absolute cgroup_parent)",
                    path.display()
                ));
            }
            tracing::warn!(controller = c, path = %path.display(), error = %e, "cgroup v2 controller not enabled");
        }
    }
    Ok(())
}

/// Controller names in `cgroup.subtree_control` (tolerating a `+` prefix).
fn controller_list(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace().map(|c| c.trim_start_matches('+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mounts_and_own_paths() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 25 0:30 / /mnt/with\\040space rw - ext4 /dev/sda rw";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[1].controllers, vec!["memory"]);
        assert_eq!(mounts[3].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(unescape("a\\040b"), "a b");
        let own = "4:memory:/process_api/abc\n1:cpu:/\n0::/user.slice\n";
        assert_eq!(
            own_path(own, Some("memory")).unwrap(),
            Path::new("/process_api/abc")
        );
        assert_eq!(own_path(own, None).unwrap(), Path::new("/user.slice"));
        assert_eq!(
            parent_dir(&mounts[1], Path::new("/process_api/abc"), Path::new("ops")),
            Path::new("/sys/fs/cgroup/memory/process_api/abc/ops")
        );
        assert_eq!(
            parent_dir(&mounts[1], Path::new("/process_api/abc"), Path::new("/ops")),
            Path::new("/sys/fs/cgroup/memory/ops")
        );
        assert!(check_parent("../x").is_err());
        assert!(check_parent("").is_err());
        assert!(check_parent("a/b").is_ok());
    }

    fn fake_v2_root() -> (tempfile::TempDir, Mount) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        // A real cgroupfs fills new directories itself; the fake one is prepared.
        std::fs::create_dir_all(root.join("svc/ops")).unwrap();
        std::fs::write(root.join("svc/cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::write(root.join("svc/ops/cgroup.controllers"), "cpu memory pids").unwrap();
        let mount = Mount {
            fstype: "cgroup2".into(),
            root: PathBuf::from("/"),
            mount_point: root.to_path_buf(),
            controllers: Vec::new(),
        };
        (dir, mount)
    }

    #[test]
    fn v2_delegation_limits_and_accounting_on_a_fake_tree() {
        let (dir, mount) = fake_v2_root();
        let root = dir.path();
        let found = detect_v2(&[mount], "0::/svc\n", Path::new("ops")).unwrap();
        assert_eq!(found.mode(), CgroupMode::V2);
        assert_eq!(found.parent_dirs(), vec![root.join("svc/ops")]);
        assert_eq!(
            std::fs::read_to_string(root.join("svc/ops/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );

        let roots = CgroupRoots {
            mode: CgroupMode::V2,
            parents: vec![(
                root.join("svc/ops"),
                vec!["memory".into(), "cpu".into(), "pids".into()],
            )],
        };
        std::fs::create_dir_all(root.join("svc/ops/t-1")).unwrap();
        for f in ["memory.swap.max", "memory.oom.group"] {
            std::fs::write(root.join("svc/ops/t-1").join(f), "").unwrap();
        }
        let limits = Limits {
            memory_bytes: 50 << 20,
            cpu_millis: 250,
            pids_max: 11,
        };
        let cg = roots.create("t-1", &limits).unwrap().unwrap();
        let d = root.join("svc/ops/t-1");
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read("memory.max"), (50u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("pids.max"), "11");
        assert_eq!(cg.procs_files(), vec![d.join("cgroup.procs")]);

        assert!(!cg.oom_killed());
        std::fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(cg.oom_killed());
        std::fs::write(
            d.join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\n",
        )
        .unwrap();
        std::fs::write(d.join("memory.peak"), "4096\n").unwrap();
        let u = cg.usage();
        assert_eq!(u.cpu_time, Some(Duration::from_millis(1500)));
        assert_eq!(u.peak_memory, Some(4096));
    }

    #[test]
    fn v2_refuses_a_hierarchy_without_memory() {
        let (dir, mount) = fake_v2_root();
        std::fs::write(dir.path().join("cgroup.controllers"), "hugetlb").unwrap();
        let err = detect_v2(&[mount], "0::/svc\n", Path::new("ops")).unwrap_err();
        assert!(err.contains("memory controller is not available"), "{err}");
    }

    /// cgroup.kill on the real unified hierarchy, where this host has one (root only).
    #[test]
    fn v2_kill_reaches_every_process() {
        let mounts = read_mounts();
        let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
            return;
        };
        let dir = mount
            .mount_point
            .join(format!("ops-unit-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() || !dir.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&dir);
            return;
        }
        let cg = TaskCgroup {
            mode: CgroupMode::V2,
            dirs: vec![CgroupDir {
                path: dir.clone(),
                controllers: Vec::new(),
            }],
        };
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        assert_eq!(cg.pids(), BTreeSet::from([child.id() as i32]));
        cg.signal_all(Signal::SIGKILL);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        for _ in 0..100 {
            if cg.remove().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("cannot remove {}", dir.display());
    }
}
