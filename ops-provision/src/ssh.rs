//! SSH reachability of owned machines (feature `ssh`): connect, check the host key,
//! log in with a private key, run one trivial command, and say how long it took.
//!
//! ```no_run
//! use std::time::Duration;
//! use ops_provision::ssh::{self, Target};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ops_provision::Result<()> {
//! let target = Target::new("gpu-1", "192.168.10.21", "ops", "keys/ops_ed25519");
//! let reach = ssh::check(&target, Duration::from_secs(5)).await?;
//! println!("{} ({}) in {:?}: {}", reach.host, reach.host_key, reach.elapsed, reach.stdout);
//! # Ok(()) }
//! ```
//!
//! - The key is read first, with russh's loader (OpenSSH ed25519, ECDSA and RSA keys
//!   without a passphrase): a missing, unreadable, encrypted or garbled key file is an
//!   [`Error::InvalidInventory`] naming the host and the path, found without touching
//!   the network.
//! - The host key: a [`Target::host_key`] fingerprint (`SHA256:…`, as
//!   `ssh-keygen -lf` prints it) is pinned and any other key refused; without one the
//!   key is accepted and returned in [`Reach::host_key`]. [`KnownHosts`] remembers
//!   the keys it has seen (OpenSSH's `accept-new`): a host whose key changes later is
//!   refused. A refused host key is an [`Error::Authentication`].
//! - A refused connection, an unreachable or unresolvable address, and no answer
//!   within the timeout are [`Error::Transient`] (retryable) naming the host and its
//!   address; a key the server refuses is an [`Error::Authentication`] naming the
//!   host, the user and the key file.
//! - The command (default `uname -sm`) runs in a session channel; its exit status and
//!   output (at most 64 KiB of each stream) are in the [`Reach`]. A command that fails
//!   still means the host is reachable: the caller decides what the status means.
//! - [`check_all`] checks many hosts with bounded concurrency and reports every
//!   failure at once ([`Reachability`]).
//!
//! [`StaticProvider`](crate::inventory::StaticProvider) uses this for
//! [`check_reachable`](crate::inventory::StaticProvider::check_reachable) and, for
//! hosts marked `check_ssh = true` in the inventory, in
//! [`wait_ready`](crate::Provider::wait_ready).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::time::{Instant, timeout_at};

use crate::inventory::Host;
use crate::{Error, Result};

/// The name errors of this module carry as their `provider`.
pub const SSH: &str = "ssh";

/// The command [`Target::new`] runs: cheap, present everywhere, and its answer
/// (`Linux x86_64`) says what the machine is.
pub const DEFAULT_COMMAND: &str = "uname -sm";

/// The most bytes of each output stream a [`Reach`] keeps.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// A machine to reach by SSH.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// Its name, in every error and log line.
    pub host: String,
    /// An IP address or a DNS name.
    pub address: String,
    /// The SSH port (default 22).
    pub port: u16,
    /// The user to log in as.
    pub user: String,
    /// The private key (OpenSSH format, no passphrase).
    pub key: PathBuf,
    /// The host key's fingerprint (`SHA256:…`) to insist on; `None` accepts any key.
    pub host_key: Option<String>,
    /// The command to run (default [`DEFAULT_COMMAND`]).
    pub command: String,
}

impl Target {
    /// A target on port 22 that runs [`DEFAULT_COMMAND`] and accepts any host key.
    pub fn new(
        host: impl Into<String>,
        address: impl Into<String>,
        user: impl Into<String>,
        key: impl Into<PathBuf>,
    ) -> Self {
        Self {
            host: host.into(),
            address: address.into(),
            port: 22,
            user: user.into(),
            key: key.into(),
            host_key: None,
            command: DEFAULT_COMMAND.to_owned(),
        }
    }

    /// The SSH port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Pins the host key: only a key with this fingerprint (`SHA256:…`) is accepted.
    pub fn host_key(mut self, fingerprint: impl Into<String>) -> Self {
        self.host_key = Some(fingerprint.into());
        self
    }

    /// The command to run instead of [`DEFAULT_COMMAND`] (`true` is the cheapest).
    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.command = command.into();
        self
    }

    fn endpoint(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    fn who(&self) -> String {
        format!("host {:?} ({})", self.host, self.endpoint())
    }
}

impl From<&Host> for Target {
    /// The host's address, port, user, key and pinned `host_key`.
    fn from(h: &Host) -> Self {
        let mut t = Target::new(&h.name, &h.address, &h.user, &h.key).port(h.port);
        t.host_key = h.host_key.clone();
        t
    }
}

/// A host that answered: logged in and ran the command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reach {
    /// The host's name.
    pub host: String,
    /// The address connected to.
    pub address: SocketAddr,
    /// The host key's fingerprint (`SHA256:…`): pin it with [`Target::host_key`].
    pub host_key: String,
    /// From the start of the connection to the command's end.
    pub elapsed: Duration,
    /// The command's exit status, when the server sent one (not when a signal ended
    /// it).
    pub exit_status: Option<u32>,
    /// Its standard output (lossy UTF-8, at most [`MAX_OUTPUT`] bytes).
    pub stdout: String,
    /// Its standard error (lossy UTF-8, at most [`MAX_OUTPUT`] bytes).
    pub stderr: String,
}

impl Reach {
    /// Whether the command exited with status 0.
    pub fn succeeded(&self) -> bool {
        self.exit_status == Some(0)
    }
}

/// Host keys seen so far, by `address:port`: the first key a host shows is accepted
/// and remembered, a different one later is refused (OpenSSH's `accept-new`, kept in
/// memory). A [`Target::host_key`] pin wins over what was seen.
#[derive(Debug, Default)]
pub struct KnownHosts {
    keys: Mutex<BTreeMap<String, String>>,
}

impl KnownHosts {
    /// An empty set: every host's first key is accepted.
    pub fn new() -> Self {
        Self::default()
    }

    /// The fingerprint remembered for `address:port` (IPv6 addresses in brackets).
    pub fn get(&self, endpoint: &str) -> Option<String> {
        self.lock().get(endpoint).cloned()
    }

    /// Remembers `fingerprint` for `address:port`, replacing what was there (after a
    /// deliberate re-install, say).
    pub fn insert(&self, endpoint: impl Into<String>, fingerprint: impl Into<String>) {
        self.lock().insert(endpoint.into(), fingerprint.into());
    }

    /// [`check`] with the key remembered for the target (unless it pins its own), and
    /// remembers the key of a host that answers.
    pub async fn check(&self, target: &Target, timeout: Duration) -> Result<Reach> {
        let endpoint = target.endpoint();
        let mut pinned = target.clone();
        if pinned.host_key.is_none() {
            pinned.host_key = self.get(&endpoint);
        }
        let reach = check(&pinned, timeout).await?;
        self.lock()
            .entry(endpoint)
            .or_insert_with(|| reach.host_key.clone());
        Ok(reach)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every host's result, in the order asked; see [`check_all`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Reachability {
    /// Each host's name and result.
    pub results: Vec<(String, Result<Reach>)>,
}

impl Reachability {
    /// Whether every host answered.
    pub fn is_ok(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }

    /// The hosts that answered.
    pub fn reachable(&self) -> impl Iterator<Item = &Reach> {
        self.results.iter().filter_map(|(_, r)| r.as_ref().ok())
    }

    /// Every host that failed, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.results
            .iter()
            .filter_map(|(h, r)| r.as_ref().err().map(|e| (h.as_str(), e)))
    }
}

impl fmt::Display for Reachability {
    /// `2 of 3 hosts reachable; unreachable: <error>; <error>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ok = self.reachable().count();
        write!(f, "{ok} of {} hosts reachable", self.results.len())?;
        let failures: Vec<String> = self.failures().map(|(_, e)| e.to_string()).collect();
        if !failures.is_empty() {
            write!(f, "; unreachable: {}", failures.join("; "))?;
        }
        Ok(())
    }
}

/// Checks every target, at most `concurrency` at a time, each within `timeout`.
pub async fn check_all(targets: &[Target], timeout: Duration, concurrency: usize) -> Reachability {
    check_each(targets, concurrency, |t| check(t, timeout)).await
}

pub(crate) async fn check_each<'a, F, Fut>(
    targets: &'a [Target],
    concurrency: usize,
    f: F,
) -> Reachability
where
    F: Fn(&'a Target) -> Fut,
    Fut: std::future::Future<Output = Result<Reach>>,
{
    let results = futures::stream::iter(
        targets
            .iter()
            .map(|t| {
                let fut = f(t);
                async move { (t.host.clone(), fut.await) }
            })
            .collect::<Vec<_>>(),
    )
    .buffered(concurrency.max(1))
    .collect()
    .await;
    Reachability { results }
}

/// Connects to `target`, checks its host key, logs in with its key and runs its
/// command, all within `timeout`; see the [module documentation](self) for how each
/// failure is classified.
pub async fn check(target: &Target, timeout: Duration) -> Result<Reach> {
    let started = Instant::now();
    let result = attempt(target, started + timeout, timeout).await;
    match &result {
        Ok(reach) => tracing::debug!(
            host = %target.host,
            address = %reach.address,
            elapsed_ms = reach.elapsed.as_millis() as u64,
            exit_status = ?reach.exit_status,
            "ssh: host reachable"
        ),
        Err(e) => tracing::warn!(
            host = %target.host,
            endpoint = %target.endpoint(),
            error = %e,
            "ssh: host not reachable"
        ),
    }
    result
}

fn transient(message: String) -> Error {
    Error::Transient {
        provider: SSH.to_owned(),
        message,
        retry_after: None,
    }
}

fn key_problem(target: &Target, why: impl fmt::Display) -> Error {
    Error::InvalidInventory {
        file: format!("(ssh target {:?})", target.host),
        problems: vec![format!(
            "host {:?}.key: {}: {why}",
            target.host,
            target.key.display()
        )],
    }
}

fn load_key(target: &Target) -> Result<Arc<PrivateKey>> {
    let key = russh::keys::load_secret_key(&target.key, None).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => key_problem(
            target,
            "the key is encrypted; give a key without a passphrase",
        ),
        russh::keys::Error::IO(io) => key_problem(target, format!("cannot read it: {io}")),
        other => key_problem(target, format!("not an OpenSSH private key: {other}")),
    })?;
    Ok(Arc::new(key))
}

/// The handler: records the host key and refuses one that differs from the pin.
struct Client {
    pinned: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256),
            PublicKeyOrCertificate::Certificate(cert) => {
                cert.public_key().fingerprint(HashAlg::Sha256)
            }
        }
        .to_string();
        let accepted = self.pinned.as_ref().is_none_or(|p| *p == fingerprint);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(fingerprint);
        Ok(accepted)
    }
}

async fn attempt(target: &Target, deadline: Instant, timeout: Duration) -> Result<Reach> {
    let started = Instant::now();
    let who = target.who();
    let late = |stage: &str| transient(format!("{who}: no answer within {timeout:?} ({stage})"));
    let key = load_key(target)?;

    let stream = timeout_at(
        deadline,
        tokio::net::TcpStream::connect((target.address.as_str(), target.port)),
    )
    .await
    .map_err(|_| late("connecting"))?
    .map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                format!(
                    "connection refused (is sshd listening on port {}?)",
                    target.port
                )
            }
            _ => e.to_string(),
        };
        transient(format!("{who}: cannot connect: {why}"))
    })?;
    let address = stream
        .peer_addr()
        .map_err(|e| transient(format!("{who}: connection lost: {e}")))?;
    // Nagle would hold back the small handshake packets.
    let _ = stream.set_nodelay(true);

    let seen = Arc::new(Mutex::new(None));
    let handler = Client {
        pinned: target.host_key.clone(),
        seen: Arc::clone(&seen),
    };
    let config = Arc::new(client::Config::default());
    let handshake = timeout_at(deadline, client::connect_stream(config, stream, handler))
        .await
        .map_err(|_| late("key exchange"))?;
    let host_key = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default();
    let mut session = match (handshake, &target.host_key) {
        (Ok(session), _) => session,
        // The handler refused the key (whichever error the session ends with then).
        (Err(_), Some(pinned)) if !host_key.is_empty() && host_key != *pinned => {
            return Err(Error::Authentication {
                provider: SSH.to_owned(),
                message: format!(
                    "{who}: host key {host_key} is not the expected {pinned} (re-installed, or someone in between?)"
                ),
            });
        }
        (Err(e), _) => return Err(transient(format!("{who}: SSH handshake failed: {e}"))),
    };

    let hash = if key.algorithm().is_rsa() {
        timeout_at(deadline, session.best_supported_rsa_hash())
            .await
            .map_err(|_| late("authentication"))?
            .map_err(|e| transient(format!("{who}: SSH handshake failed: {e}")))?
            .flatten()
    } else {
        None
    };
    let key = PrivateKeyWithHashAlg::new(key, hash);
    let auth = timeout_at(
        deadline,
        session.authenticate_publickey(target.user.clone(), key),
    )
    .await
    .map_err(|_| late("authentication"))?
    .map_err(|e| transient(format!("{who}: authentication did not finish: {e}")))?;
    if let russh::client::AuthResult::Failure {
        partial_success, ..
    } = auth
    {
        let why = if partial_success {
            "accepted the key but asks for a further method"
        } else {
            "refused the key"
        };
        return Err(Error::Authentication {
            provider: SSH.to_owned(),
            message: format!(
                "{who}: user {:?} with key {}: the server {why}",
                target.user,
                target.key.display()
            ),
        });
    }

    let run = async {
        let mut channel = session.channel_open_session().await?;
        channel.exec(true, target.command.as_bytes()).await?;
        let (mut stdout, mut stderr, mut exit_status) = (Vec::new(), Vec::new(), None);
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => keep(&mut stdout, &data),
                ChannelMsg::ExtendedData { data, ext: 1 } => keep(&mut stderr, &data),
                ChannelMsg::ExitStatus { exit_status: s } => exit_status = Some(s),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok::<_, russh::Error>((stdout, stderr, exit_status))
    };
    let command = format!("running {:?}", target.command);
    let (stdout, stderr, exit_status) = timeout_at(deadline, run)
        .await
        .map_err(|_| late(&command))?
        .map_err(|e| transient(format!("{who}: {command} failed: {e}")))?;
    // Best effort: the answer is in hand whether or not the goodbye arrives.
    let _ = timeout_at(
        deadline,
        session.disconnect(Disconnect::ByApplication, "", "en"),
    )
    .await;

    Ok(Reach {
        host: target.host.clone(),
        address,
        host_key,
        elapsed: started.elapsed(),
        exit_status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let t = Target::new("a", "fd00::1", "root", "k").port(2222);
        assert_eq!(t.endpoint(), "[fd00::1]:2222");
        assert_eq!(
            Target::new("b", "10.0.0.1", "root", "k").endpoint(),
            "10.0.0.1:22"
        );
    }

    #[tokio::test]
    async fn a_missing_key_is_reported_before_connecting() {
        // Nothing listens on port 9 of a TEST-NET-3 address; the key is read first.
        let t = Target::new("rig-1", "203.0.113.9", "root", "/nonexistent/id_ed25519");
        let e = check(&t, Duration::from_millis(100)).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::InvalidInventory { .. }), "{text}");
        assert!(
            text.contains("host \"rig-1\".key") && text.contains("/nonexistent/id_ed25519"),
            "{text}"
        );
    }

    #[test]
    fn output_is_capped() {
        let mut buf = Vec::new();
        keep(&mut buf, &vec![b'x'; MAX_OUTPUT - 1]);
        keep(&mut buf, b"yz");
        assert_eq!(buf.len(), MAX_OUTPUT);
    }
}
