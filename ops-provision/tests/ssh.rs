//! SSH reachability against real sshd servers, each in its own network namespace
//! (`ops_testbed::sshd`, root only; skipped otherwise unless OPS_REQUIRE_SERVICES=1).
#![cfg(feature = "ssh")]
#![allow(clippy::print_stderr)] // timings, shown with --nocapture

use std::time::{Duration, Instant};

use ops_provision::inventory::{Inventory, StaticProvider};
use ops_provision::ssh::{self, Target};
use ops_provision::{Error, Provider, ServerSpec};
use ops_testbed::sshd::SshHost;

const TIMEOUT: Duration = Duration::from_secs(3);

fn target(name: &str, host: &SshHost) -> Target {
    Target::new(
        name,
        host.address().to_string(),
        host.user(),
        host.key_path(),
    )
}

#[tokio::test]
async fn a_reachable_host_runs_the_command() {
    let Some(host) = SshHost::start() else { return };
    let reach = ssh::check(&target("rig-1", &host), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log()));
    assert_eq!(reach.host, "rig-1");
    assert_eq!(reach.exit_status, Some(0));
    assert!(reach.succeeded());
    assert!(reach.stdout.starts_with("Linux "), "{:?}", reach.stdout);
    assert_eq!(reach.address.ip(), host.address());
    assert_eq!(reach.host_key, host.host_key_fingerprint());
    assert!(reach.elapsed < TIMEOUT, "{:?}", reach.elapsed);
    eprintln!("login and `uname -sm` in {:?}", reach.elapsed);

    // A command's exit status and stderr come back; a failing command is still a reach.
    let t = target("rig-1", &host).command("echo oops >&2; exit 3");
    let reach = ssh::check(&t, TIMEOUT).await.unwrap();
    assert_eq!(
        (reach.exit_status, reach.stderr.as_str()),
        (Some(3), "oops\n")
    );

    // The pinned host key is accepted; another is refused as an authentication error.
    let pinned = target("rig-1", &host).host_key(host.host_key_fingerprint());
    ssh::check(&pinned, TIMEOUT).await.unwrap();
    let wrong =
        target("rig-1", &host).host_key("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s");
    let e = ssh::check(&wrong, TIMEOUT).await.unwrap_err();
    assert!(matches!(e, Error::Authentication { .. }), "{e}");
    assert!(
        e.to_string().contains("rig-1") && e.to_string().contains("host key"),
        "{e}"
    );

    // KnownHosts (accept-new): the first key is remembered, a changed one refused.
    let known = ssh::KnownHosts::new();
    let endpoint = format!("{}:22", host.address());
    known.check(&target("rig-1", &host), TIMEOUT).await.unwrap();
    assert_eq!(known.get(&endpoint), Some(host.host_key_fingerprint()));
    known.insert(
        &endpoint,
        "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    );
    let e = known
        .check(&target("rig-1", &host), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Authentication { .. }), "{e}");
}

#[tokio::test]
async fn two_hosts_are_checked_concurrently() {
    let (Some(a), Some(b)) = (SshHost::start(), SshHost::start()) else {
        return;
    };
    assert_ne!(a.address(), b.address());
    let started = Instant::now();
    let report = ssh::check_all(&[target("a", &a), target("b", &b)], TIMEOUT, 2).await;
    let took = started.elapsed();
    assert!(report.is_ok(), "{report}");
    let names: Vec<&str> = report.reachable().map(|r| r.host.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(report.to_string(), "2 of 2 hosts reachable");
    eprintln!("two hosts in {took:?}");
}

#[tokio::test]
async fn a_wrong_key_is_an_authentication_error_naming_the_host() {
    let Some(host) = SshHost::start() else { return };
    let mut t = target("rig-2", &host);
    t.key = host.wrong_key_path();
    let e = ssh::check(&t, TIMEOUT).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Authentication { .. }), "{text}");
    assert!(!e.is_retryable());
    for needle in [
        "rig-2",
        "\"root\"",
        &host.wrong_key_path().display().to_string(),
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable_naming_the_host() {
    let Some(mut host) = SshHost::start() else {
        return;
    };
    // The namespace answers, but nothing listens on this port.
    let t = target("rig-3", &host).port(2222);
    let started = Instant::now();
    let e = ssh::check(&t, TIMEOUT).await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT);
    let text = e.to_string();
    assert!(
        matches!(e, Error::Transient { .. }) && e.is_retryable(),
        "{text}"
    );
    let endpoint = format!("{}:2222", host.address());
    assert!(text.contains("rig-3") && text.contains(&endpoint), "{text}");
    assert!(text.contains("connection refused"), "{text}");

    // sshd stopped: the same, on port 22; started again: reachable.
    host.stop();
    let e = ssh::check(&target("rig-3", &host), TIMEOUT)
        .await
        .unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("rig-3"), "{e}");
    host.start_again();
    ssh::check(&target("rig-3", &host), TIMEOUT).await.unwrap();
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_timeout() {
    // Accepts TCP but never speaks SSH: the timeout, not the kernel, ends the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    if !keygen(&key) {
        return;
    }
    let t = Target::new("mute", "127.0.0.1", "root", &key).port(port);
    let started = Instant::now();
    let e = ssh::check(&t, Duration::from_millis(500))
        .await
        .unwrap_err();
    let took = started.elapsed();
    hold.abort();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let text = e.to_string();
    assert!(e.is_retryable(), "{text}");
    assert!(
        text.contains("\"mute\"") && text.contains("no answer within 500ms (key exchange)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_or_garbled_key_names_the_host_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let garbled = dir.path().join("garbled");
    std::fs::write(
        &garbled,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64 at all\n",
    )
    .unwrap();
    let missing = dir.path().join("missing");
    // TEST-NET-3: nothing is contacted, the key is read first.
    for (key, why) in [
        (&garbled, "not an OpenSSH private key"),
        (&missing, "cannot read it"),
    ] {
        let t = Target::new("rig-4", "203.0.113.4", "root", key);
        let e = ssh::check(&t, TIMEOUT).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::InvalidInventory { .. }), "{text}");
        assert!(
            text.contains("host \"rig-4\".key")
                && text.contains(&key.display().to_string())
                && text.contains(why),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_static_inventory_lists_every_failing_host_at_once() {
    let (Some(a), Some(b)) = (SshHost::start(), SshHost::start()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbled"), "garbage").unwrap();
    let host = |name: &str, address: String, port: u16, key: String, check: bool| {
        format!(
            "[[hosts]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\n\
             key = \"{key}\"\ncheck_ssh = {check}\ncpu = 4\nmemory = \"8Gi\"\n\
             cost = {{ monthly = 20.0 }}\n\n"
        )
    };
    let key = |p: std::path::PathBuf| p.display().to_string();
    let text = [
        host("good", a.address().to_string(), 22, key(a.key_path()), true),
        host(
            "wrong-key",
            a.address().to_string(),
            22,
            key(a.wrong_key_path()),
            false,
        ),
        host(
            "refused",
            b.address().to_string(),
            2222,
            key(b.key_path()),
            true,
        ),
        host(
            "garbled",
            b.address().to_string(),
            22,
            "garbled".to_owned(),
            false,
        ),
        host(
            "pinned",
            b.address().to_string(),
            22,
            key(b.key_path()),
            false,
        ) + &format!("host_key = \"{}\"\n\n", b.host_key_fingerprint()),
    ]
    .concat();
    let file = dir.path().join("inventory.toml");
    std::fs::write(&file, text).unwrap();
    let provider = StaticProvider::new(Inventory::load(&file).unwrap()).unwrap();

    let started = Instant::now();
    let report = provider.check_reachable(TIMEOUT).await;
    let took = started.elapsed();
    eprintln!("5 hosts checked in {took:?}: {report}");
    assert!(took < TIMEOUT, "{took:?}");
    assert!(!report.is_ok());
    let reachable: Vec<&str> = report.reachable().map(|r| r.host.as_str()).collect();
    assert_eq!(reachable, ["good", "pinned"]);
    let failed: Vec<&str> = report.failures().map(|(h, _)| h).collect();
    assert_eq!(failed, ["wrong-key", "refused", "garbled"]);
    for (name, e) in report.failures() {
        assert!(
            e.to_string().contains(&format!("\"{name}\"")),
            "{name}: {e}"
        );
    }
    let all = report.to_string();
    assert!(
        all.starts_with("2 of 5 hosts reachable; unreachable: "),
        "{all}"
    );
    assert!(
        all.contains("authentication failed") && all.contains("connection refused"),
        "{all}"
    );
    assert!(
        all.contains(&dir.path().join("garbled").display().to_string()),
        "{all}"
    );
    // The keys seen are remembered for the next checks.
    let seen = provider.known_hosts().get(&format!("{}:22", a.address()));
    assert_eq!(seen, Some(a.host_key_fingerprint()));

    // wait_ready logs in to a `check_ssh` host; an unreachable one fails naming it.
    let good = provider
        .create(&ServerSpec::new("s0", "good", "owned", "f", "p", 0))
        .await
        .unwrap();
    provider.wait_ready(&good.id, TIMEOUT).await.unwrap();
    let refused = provider
        .create(&ServerSpec::new("s1", "refused", "owned", "f", "p", 1))
        .await
        .unwrap();
    let started = Instant::now();
    let e = provider
        .wait_ready(&refused.id, Duration::from_secs(2))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    let text = e.to_string();
    assert!(e.is_retryable(), "{text}");
    assert!(
        text.contains("host \"refused\" not reachable by SSH within 2s")
            && text.contains("connection refused"),
        "{text}"
    );
    // Without `check_ssh`, wait_ready trusts the inventory as before.
    let garbled = provider
        .create(&ServerSpec::new("s2", "garbled", "owned", "f", "p", 2))
        .await
        .unwrap();
    provider.wait_ready(&garbled.id, TIMEOUT).await.unwrap();
}

/// An ed25519 key at `path`, or false (after `missing`) without `ssh-keygen`.
fn keygen(path: &std::path::Path) -> bool {
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    ok || ops_testbed::missing::<()>("ssh-keygen (apt-get install openssh-client)").is_some()
}
