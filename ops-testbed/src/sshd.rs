//! [`SshHost`]: a real OpenSSH server in its own network namespace, as a test's
//! "remote machine" (Debian `openssh-server`, root only).
//!
//! Each host gets a namespace `ops-ssh-<pid>-<n>`, a veth pair with a /30 from
//! 10.213.0.0/16 (this side `.1`, the namespace `.2`), its own host key, and an
//! authorized ed25519 client key for `root`; sshd listens on the namespace's address,
//! port 22. Dropping it kills sshd and deletes the namespace (which removes the veth).
//! Only the network is isolated: sshd sees this machine's files and users.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{is_root, missing, run};

const SSHD: &str = "/usr/sbin/sshd";

static HOSTS: AtomicU32 = AtomicU32::new(0);

/// An sshd in a network namespace, reachable from this side at [`address`](Self::address).
#[derive(Debug)]
pub struct SshHost {
    namespace: String,
    address: Ipv4Addr,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SshHost {
    /// Starts a host, or reports it missing through [`missing`] when not root or
    /// `ip`, `ssh-keygen` or `/usr/sbin/sshd` are not there.
    pub fn start() -> Option<Self> {
        if !is_root() {
            return missing("sshd in a network namespace (needs root)");
        }
        let ip = crate::which("ip");
        let keygen = crate::which("ssh-keygen");
        if ip.is_none() || keygen.is_none() || !Path::new(SSHD).is_file() {
            return missing(
                "sshd in a network namespace (needs `ip`, `ssh-keygen` and /usr/sbin/sshd: \
                 apt-get install iproute2 openssh-server)",
            );
        }
        let n = HOSTS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let namespace = format!("ops-ssh-{pid}-{n}");
        // Interface names have at most 15 bytes: "os" + pid and n in hex + side.
        let (outer, inner) = (format!("os{pid:x}x{n:x}h"), format!("os{pid:x}x{n:x}n"));
        let (here, address) = free_subnet(pid, n);

        let dir = tempfile::Builder::new()
            .prefix("ops-sshd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for (file, comment) in [
            ("host_ed25519", "host"),
            ("id_ed25519", "ops-test"),
            ("wrong_ed25519", "wrong"),
        ] {
            run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                    .arg(d.join(file)),
                "ssh-keygen",
            );
        }
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys"))
            .expect("write authorized_keys");
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {address}\nPort 22\nHostKey {host_key}\nPidFile {pid_file}\n\
                 AuthorizedKeysFile {authorized}\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 MaxStartups 100\nLogLevel VERBOSE\n",
                host_key = d.join("host_ed25519").display(),
                pid_file = d.join("sshd.pid").display(),
                authorized = d.join("authorized_keys").display(),
            ),
        )
        .expect("write sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");

        // From here on, Drop cleans up whatever was made.
        let mut host = Self {
            namespace: namespace.clone(),
            address,
            dir,
            child: None,
        };
        let ns = namespace.as_str();
        run(
            Command::new("ip").args(["netns", "add", ns]),
            "ip netns add",
        );
        run(
            Command::new("ip").args([
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]),
            "ip link add veth",
        );
        run(
            Command::new("ip").args(["link", "set", &inner, "netns", ns]),
            "ip link set netns",
        );
        run(
            Command::new("ip").args(["addr", "add", &format!("{here}/30"), "dev", &outer]),
            "ip addr add (this side)",
        );
        run(
            Command::new("ip").args(["link", "set", &outer, "up"]),
            "ip link set up",
        );
        for args in [
            vec!["addr", "add", &format!("{address}/30"), "dev", &inner],
            vec!["link", "set", &inner, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            run(
                Command::new("ip")
                    .args(["netns", "exec", ns, "ip"])
                    .args(&args),
                "ip (in the namespace)",
            );
        }
        host.start_sshd();
        Some(host)
    }

    fn start_sshd(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("sshd.log")).expect("sshd log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace, SSHD, "-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let to = SocketAddr::from((self.address, 22));
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("sshd exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sshd did not listen on {to} within 10 s:\n{}", self.log());
    }

    /// Stops sshd (the namespace and its address stay: connections are refused).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the (stopped) sshd again with the same keys.
    pub fn start_again(&mut self) {
        self.stop();
        self.start_sshd();
    }

    /// The namespace's address, where sshd listens.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// sshd's port (22).
    pub fn port(&self) -> u16 {
        22
    }

    /// The user the client key logs in as (`root`).
    pub fn user(&self) -> &str {
        "root"
    }

    /// The authorized client private key (OpenSSH ed25519, no passphrase).
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// A valid ed25519 private key that sshd does not authorize.
    pub fn wrong_key_path(&self) -> PathBuf {
        self.dir.path().join("wrong_ed25519")
    }

    /// The host key's fingerprint as `ssh-keygen -lf` prints it (`SHA256:…`).
    pub fn host_key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("host_ed25519.pub"))
            .output()
            .expect("ssh-keygen -lf");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint from ssh-keygen -lf")
            .to_owned()
    }

    /// The namespace's name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A /30 in 10.213.0.0/16 that no interface here uses yet (a namespace left by a
/// killed test run keeps its address): (this side, the namespace's side).
fn free_subnet(pid: u32, n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // 16,384 subnets; start from one derived from pid and n so that concurrent test
    // binaries rarely probe the same ones.
    let start = (pid.wrapping_mul(64).wrapping_add(n)) % 16_384;
    for i in 0..16_384u32 {
        let s = (start + i) % 16_384;
        let base = s * 4;
        let here = Ipv4Addr::new(10, 213, (base >> 8) as u8, (base & 0xff) as u8 + 1);
        let there = Ipv4Addr::new(10, 213, (base >> 8) as u8, (base & 0xff) as u8 + 2);
        if !used.contains(&format!("inet {here}/")) {
            return (here, there);
        }
    }
    panic!("no free /30 left in 10.213.0.0/16");
}
