//! Test support: real PostgreSQL, NATS and Prometheus servers for Ops' integration tests.
//!
//! The test command (`scripts/test`) starts one shared PostgreSQL and one NATS server
//! and exports their URLs ([`POSTGRES_URL_ENV`], [`NATS_URL_ENV`]). Tests that share
//! them call [`postgres_database`] (a fresh, empty database per call) or [`nats_url`].
//! Tests that must restart a server (fault tests) start a private one with
//! [`PostgresServer::start`] or [`NatsServer::start`].
//!
//! When a service is missing, [`missing`] decides: with `OPS_REQUIRE_SERVICES=1` (which
//! the test command sets) the test fails; otherwise it is skipped with a message.
//!
//! This crate is for tests only: it panics on failure, as tests do.
#![allow(clippy::print_stderr)]

pub mod prism;
pub mod sshd;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Environment variable holding a PostgreSQL URL (a database the tests may create
/// other databases from).
pub const POSTGRES_URL_ENV: &str = "OPS_TEST_POSTGRES_URL";
/// Environment variable holding a NATS URL (JetStream enabled).
pub const NATS_URL_ENV: &str = "OPS_TEST_NATS_URL";

/// Whether missing services must fail tests (`OPS_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    std::env::var("OPS_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Called when `what` is unavailable: panics when services are required, otherwise
/// prints why the test is skipped. Returns `None` so callers can `?`/`let else` on it.
pub fn missing<T>(what: &str) -> Option<T> {
    if services_required() {
        panic!("{what} is required (OPS_REQUIRE_SERVICES=1) but not available");
    }
    eprintln!("skipping: {what} is not available (set OPS_REQUIRE_SERVICES=1 to fail instead)");
    None
}

/// A free TCP port on 127.0.0.1 (free when asked; bind soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------- PostgreSQL

/// Where PostgreSQL's server programs are: `$OPS_PG_BIN`, Debian's
/// `/usr/lib/postgresql/<version>/bin` (newest), or `PATH`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("OPS_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

fn is_root() -> bool {
    nix_free_uid() == 0
}

fn nix_free_uid() -> u32 {
    // `id -u` avoids a libc dependency for one number.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// Runs a PostgreSQL program as the `postgres` user when we are root (the server
/// refuses to run as root), as ourselves otherwise.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private PostgreSQL server in a temporary directory, stopped on drop.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl PostgresServer {
    /// Starts a server (initdb + pg_ctl, `fsync=off`) on a free port, or reports it
    /// missing through [`missing`].
    pub fn start() -> Option<Self> {
        let Some(bin) = postgres_bin_dir() else {
            return missing("PostgreSQL (initdb/pg_ctl)");
        };
        let dir = tempfile::Builder::new()
            .prefix("ops-pg-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                "chown data dir to postgres",
            );
        }
        let data = dir.path().join("data");
        run(
            pg_command(&bin, "initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ]),
            "initdb",
        );
        let mut server = Self {
            bin,
            dir,
            port: free_port(),
            running: false,
        };
        server.start_again();
        run(
            Command::new(server.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-p"])
                .arg(server.port.to_string())
                .args(["-U", "postgres", "ops_test"]),
            "createdb ops_test",
        );
        Some(server)
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) {
        let d = self.dir.path();
        run(
            pg_command(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(d.join("data"))
                .arg("-l")
                .arg(d.join("log"))
                .args(["-w", "-o"])
                .arg(format!(
                    "-h 127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off \
                     -c max_connections=200",
                    self.port,
                    d.display()
                ))
                .arg("start"),
            "pg_ctl start",
        );
        assert!(
            wait_for_port(self.port, Duration::from_secs(30)),
            "PostgreSQL did not listen on port {}",
            self.port
        );
        self.running = true;
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Stops and starts the server, as a crash-and-restart would.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `ops_test` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/ops_test", self.port)
    }

    /// Creates a fresh empty database and returns its URL.
    pub fn database(&self) -> String {
        create_database(&self.url())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Splits `postgres://user@host:port/db` into (prefix up to the last `/`, database).
fn split_db(url: &str) -> (&str, &str) {
    let path_start = url
        .find("://")
        .map(|i| i + 3)
        .and_then(|s| url[s..].find('/').map(|i| s + i))
        .unwrap_or(url.len());
    let (base, rest) = url.split_at(path_start);
    let db = rest.trim_start_matches('/');
    let db = db.split('?').next().unwrap_or(db);
    (base, db)
}

/// Creates a fresh empty database on the server of `url` (with `psql`) and returns its
/// URL.
pub fn create_database(url: &str) -> String {
    let name = unique("ops");
    run(
        Command::new("psql")
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE {name}")),
        "psql CREATE DATABASE",
    );
    let (base, _) = split_db(url);
    format!("{base}/{name}")
}

/// A fresh database on the shared server (`$OPS_TEST_POSTGRES_URL`), or `None` (after
/// [`missing`]) when there is none.
pub fn postgres_database() -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(create_database(&url)),
        _ => missing(&format!("PostgreSQL (${POSTGRES_URL_ENV})")),
    }
}

// ---------------------------------------------------------------- NATS

/// The shared NATS server's URL (`$OPS_TEST_NATS_URL`), or `None` (after [`missing`]).
pub fn nats_url() -> Option<String> {
    match std::env::var(NATS_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => missing(&format!("NATS (${NATS_URL_ENV})")),
    }
}

/// This machine for a benchmark's header: its CPU count and model, e.g.
/// `2 CPUs (AMD EPYC)`.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs ({model})")
}

/// A prefix unique to this call, for stream/subscription names on a shared server.
pub fn unique_name(prefix: &str) -> String {
    unique(prefix)
}

/// A private `nats-server -js` with its own store directory, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    program: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a JetStream server on free ports, or reports it missing.
    pub fn start() -> Option<Self> {
        let program = std::env::var("OPS_NATS_SERVER")
            .map(PathBuf::from)
            .ok()
            .or_else(|| which("nats-server"));
        let Some(program) = program else {
            return missing("nats-server");
        };
        let dir = tempfile::Builder::new()
            .prefix("ops-nats-")
            .tempdir()
            .expect("temp dir");
        let mut server = Self {
            program,
            dir,
            port: free_port(),
            monitor_port: free_port(),
            child: None,
        };
        server.start_again();
        Some(server)
    }

    /// Starts the (stopped) server again with the same ports and store.
    pub fn start_again(&mut self) {
        let child = Command::new(&self.program)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if healthz(self.monitor_port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server did not become healthy on port {}", self.port);
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and restarts the server; JetStream state on disk survives.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Prometheus server (Debian `prometheus`) scraping the given targets every
/// second, with its HTTP API on a free port. Stopped (and its data removed) on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    _dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` (`host:port`, `/metrics`) as job `ops`, or
    /// reports it missing.
    pub fn start(targets: &[String]) -> Option<Self> {
        Self::start_with_rules(targets, None)
    }

    /// [`start`](Self::start), evaluating the rules file `rules` every second.
    pub fn start_with_rules(targets: &[String], rules: Option<&Path>) -> Option<Self> {
        let program = std::env::var("OPS_PROMETHEUS")
            .map(PathBuf::from)
            .ok()
            .or_else(|| which("prometheus"));
        let Some(program) = program else {
            return missing("prometheus (Debian package `prometheus`)");
        };
        let dir = tempfile::Builder::new()
            .prefix("ops-prometheus-")
            .tempdir()
            .expect("temp dir");
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let rule_files = rules
            .map(|r| format!("rule_files:\n  - \"{}\"\n", r.display()))
            .unwrap_or_default();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: ops\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(program)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let server = Self {
            _dir: dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_ok(port, "/-/ready") {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("prometheus did not become ready on port {port}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The path of `promtool`, or `None` (reported with [`missing`]).
pub fn promtool() -> Option<PathBuf> {
    match which("promtool") {
        Some(p) => Some(p),
        None => missing("promtool (Debian package `prometheus`)"),
    }
}

fn healthz(port: u16) -> bool {
    http_ok(port, "/healthz")
}

fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .chain([PathBuf::from("/usr/sbin").join(program)])
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_database_from_url() {
        assert_eq!(
            split_db("postgres://postgres@127.0.0.1:5432/ops_test"),
            ("postgres://postgres@127.0.0.1:5432", "ops_test")
        );
        assert_eq!(
            split_db("postgres://u:p@h/db?sslmode=disable"),
            ("postgres://u:p@h", "db")
        );
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }
}
