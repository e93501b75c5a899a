//! The `fleet` example end to end: on a copy of `examples/fleet` (owned machines, no
//! account) `offers`, `plan`, `apply`, `plan` again (nothing to do), `status`,
//! `destroy`; a spec with mistakes refused naming each; and `offers`/`plan` against
//! Hetzner's API as Prism serves it from the published spec, with a token in the
//! environment (every request valid for the spec).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fleet(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet"));
    cmd.args(args)
        .arg("--spec")
        .arg(dir.join("fleet.toml"))
        .env_remove("HCLOUD_TOKEN")
        .env_remove("DIGITALOCEAN_TOKEN")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fleet")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn copy_example(to: &Path) {
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fleet");
    for file in ["fleet.toml", "machines.toml", "keys/ops_ed25519"] {
        let target = to.join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(file), target).unwrap();
    }
}

#[test]
fn plan_apply_status_destroy_on_owned_machines() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let offers = ok(&fleet(dir.path(), &["offers", "--gpus", "1"], &[]));
    assert!(
        offers.contains("static/box-1@home-lab") && offers.contains("chosen: cheapest"),
        "{offers}"
    );
    assert!(offers.contains("0 GPUs < 1 asked"), "{offers}");

    let plan = ok(&fleet(dir.path(), &["plan"], &[]));
    for needle in [
        "+ gpu/0",
        "static/box-1@home-lab",
        "+ gpu/1",
        "static/box-2@home-lab",
        "+ cpu/0",
        "Cost: 0 → 0.3793 EUR/h",
    ] {
        assert!(plan.contains(needle), "{needle:?} missing from\n{plan}");
    }
    let apply = ok(&fleet(dir.path(), &["apply"], &[]));
    assert!(
        apply.contains("Done: 3 created (3 ready), 0 deleted"),
        "{apply}"
    );
    let again = ok(&fleet(dir.path(), &["plan"], &[]));
    assert!(
        again.contains("= 3 kept") && again.contains("Nothing to do."),
        "{again}"
    );
    let status = ok(&fleet(dir.path(), &["status"], &[]));
    assert!(
        status.contains("render-farm-gpu-1") && status.contains("3 server(s), 0.3793 EUR/h"),
        "{status}"
    );
    assert!(dir.path().join("fleet-data/fleet.db").is_file());
    assert!(dir.path().join("machines.claims.json").is_file());
    let destroy = ok(&fleet(dir.path(), &["destroy"], &[]));
    assert!(destroy.contains("3 deleted"), "{destroy}");
    let status = ok(&fleet(dir.path(), &["status"], &[]));
    assert!(status.contains("0 server(s)"), "{status}");
}

#[test]
fn a_spec_with_mistakes_fails_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    std::fs::write(
        dir.path().join("fleet.toml"),
        r#"
        name = "farm"
        [[pools]]
        name = "a"
        count = 1
        offering = { provider = "static", instance_type = "box-1", region = "mars" }
        [[pools]]
        name = "b"
        count = 1
        request = { gpus = 1, gpu_model = "H100" }
        "#,
    )
    .unwrap();
    let out = fleet(dir.path(), &["plan"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pools[0] (\"a\").offering.region: static offers box-1 only in home-lab"),
        "{err}"
    );
    assert!(err.contains("pools[1] (\"b\"): no offering fits"), "{err}");
}

#[test]
fn offers_and_plan_against_hetzners_api_with_a_token() {
    let spec =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops-provision/tests/specs/hetzner.json");
    let Some(prism) = ops_testbed::prism::PrismServer::start(&spec) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fleet.toml"),
        "name = \"web\"\n[[pools]]\nname = \"app\"\ncount = 1\nrequest = { cpu_millis = 1000 }\n",
    )
    .unwrap();
    let url = prism.url();
    let env = [
        ("HCLOUD_TOKEN", "test-token"),
        ("HCLOUD_ENDPOINT", url.as_str()),
    ];
    // The spec's example server type is past its `unavailable_after` date in its one
    // location, so the offer is listed as not available and the plan says so.
    let offers = ok(&fleet(dir.path(), &["offers"], &env));
    assert!(offers.contains("hetzner/cpx22@fsn1"), "{offers}");
    assert!(offers.contains("not available now"), "{offers}");
    let out = fleet(dir.path(), &["plan"], &env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pools[0] (\"app\"): no offering fits")
            && err.contains("hetzner/cpx22@fsn1: not available now"),
        "{err}"
    );
    assert!(prism.violations().is_empty(), "{:?}", prism.violations());
    // No token in the environment: no provider, and the error says which to set.
    let out = fleet(dir.path(), &["plan"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HCLOUD_TOKEN"));
}
