//! A private Prism mock (npm `@stoplight/prism-cli`) serving a provider's OpenAPI spec:
//! every request is validated against the spec (an invalid one gets 422) and answered
//! with the spec's examples.
//!
//! The program is `$OPS_PRISM_BIN` (which `scripts/services` exports), else
//! `${OPS_CACHE_DIR:-~/.cache/ops}/prism/node_modules/.bin/prism`. It runs in its own
//! process group, so that dropping the server kills node and everything it started.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, missing};

/// Environment variable holding the path of the `prism` program.
pub const PRISM_BIN_ENV: &str = "OPS_PRISM_BIN";

/// How long a spec may take to load (DigitalOcean's takes about 12 s).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `prism` program, when installed.
pub fn prism_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os(PRISM_BIN_ENV) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Some(bin);
        }
    }
    let cache = std::env::var_os("OPS_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ops")))?;
    let bin = cache.join("prism/node_modules/.bin/prism");
    bin.is_file().then_some(bin)
}

/// A Prism mock of one spec on a free port, killed (with its process group) on drop.
/// Its log is kept, to check which requests failed validation.
#[derive(Debug)]
pub struct PrismServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PrismServer {
    /// Starts `prism mock` on `spec` and waits until it answers, or reports Prism
    /// missing (`scripts/services` installs it).
    pub fn start(spec: impl AsRef<Path>) -> Option<Self> {
        let spec = spec.as_ref();
        let Some(program) = prism_bin() else {
            return missing(&format!(
                "Prism (npm @stoplight/prism-cli; `scripts/services` installs it and exports {PRISM_BIN_ENV})"
            ));
        };
        assert!(spec.is_file(), "no OpenAPI spec at {}", spec.display());
        let dir = tempfile::Builder::new()
            .prefix("ops-prism-")
            .tempdir()
            .expect("temp dir");
        let log = std::fs::File::create(dir.path().join("prism.log")).expect("log file");
        let port = free_port();
        let child = Command::new(program)
            .args(["mock", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg(spec)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn prism");
        let mut server = Self {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            // Prism listens only once the spec is loaded; any HTTP answer will do.
            if answers(port) {
                return Some(server);
            }
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "prism exited ({status}) before listening on {}:\n{}",
                    spec.display(),
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "prism did not answer on port {port} within {START_TIMEOUT:?} ({}):\n{}",
            spec.display(),
            server.log()
        );
    }

    /// `http://127.0.0.1:PORT` (the spec's paths follow directly).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything Prism has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prism.log")).unwrap_or_default()
    }

    /// The log lines saying a request broke the spec (`[VALIDATOR] ✖ error …`, one per
    /// problem), in order.
    pub fn violations(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("[VALIDATOR]") && l.contains("error"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PrismServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole group: prism is a node script that may start others.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether anything answers HTTP on `port`.
fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/"
}
