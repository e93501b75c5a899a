use std::collections::HashMap;

use super::*;
use crate::{Error, NodeGroup};

const GI: u64 = 1 << 30;

fn cpu(n: u64) -> Resources {
    Resources::new(n * 1000, GI)
}

fn policy(toml_text: &str, nodes: &[NodeGroup]) -> Arc<AdmissionPolicy> {
    let config: AdmissionConfig = toml::from_str(toml_text).expect("config parses");
    Arc::new(AdmissionPolicy::new(config, nodes).expect("valid config"))
}

fn one_node(cores: u64) -> Vec<NodeGroup> {
    vec![NodeGroup::new(1, Resources::new(cores * 1000, 1024 * GI))]
}

/// Enqueues `n` tasks, returning their ids in submission order.
fn submit(a: &mut Admission, n: usize, req: &Request) -> Vec<TaskId> {
    (0..n)
        .map(|_| {
            let id = TaskId::new();
            a.enqueue(id, req).expect("admissible");
            id
        })
        .collect()
}

fn running_by_tenant(a: &Admission) -> HashMap<String, u64> {
    a.usage()
        .into_iter()
        .map(|u| (u.tenant.as_str().to_owned(), u.running))
        .fold(HashMap::new(), |mut m, (t, n)| {
            *m.entry(t).or_default() += n;
            m
        })
}

/// A request of `tenant` in `environment` (names that follow the rule).
fn rq(tenant: &str, environment: &str, resources: Resources) -> Request {
    Request::new(
        ops_core::Tenant::parse(tenant).unwrap(),
        ops_core::Environment::parse(environment).unwrap(),
        resources,
    )
}

#[test]
fn quota_caps_a_tenant_without_borrowing() {
    let p = policy(
        r#"
        [tenants.acme]
        borrowing = false
        quota.default = { cpu = 2 }
        "#,
        &one_node(8),
    );
    let mut a = Admission::new(p);
    let ids = submit(&mut a, 4, &rq("acme", "default", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    assert_eq!(pass.admitted.len(), 2);
    assert!(pass.admitted.iter().all(|x| !x.borrowed));
    let why = a.explain(ids[2], Utc::now()).unwrap();
    assert_eq!(why.reason, WaitReason::Quota, "{why:?}");
    assert!(
        why.message.contains("cpu 1000m needed, 2000m of 2000m"),
        "{}",
        why.message
    );
}

#[test]
fn borrowing_goes_beyond_quota_and_is_reclaimed_when_the_policy_says_so() {
    let p = policy(
        r#"
        [environments.default]
        reclaim = "preempt"
        [tenants.acme]
        quota.default = { cpu = 2 }
        [tenants.beta]
        quota.default = { cpu = 2 }
        "#,
        &one_node(4),
    );
    let mut a = Admission::new(p);
    submit(&mut a, 4, &rq("acme", "default", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    assert_eq!(pass.admitted.len(), 4);
    assert_eq!(pass.admitted.iter().filter(|x| x.borrowed).count(), 2);
    // beta wants its nominal quota back: two borrowed acme tasks are preempted.
    let beta = submit(&mut a, 2, &rq("beta", "default", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    assert!(pass.admitted.is_empty());
    assert_eq!(pass.preempt.len(), 2, "{pass:?}");
    assert!(
        pass.preempt
            .iter()
            .all(|p| p.cause == PreemptCause::Reclaim)
    );
    assert_eq!(
        a.explain(beta[0], Utc::now()).unwrap().reason,
        WaitReason::Preempting
    );
    // A second pass preempts nothing more: the room is already being freed.
    assert!(a.pass(Utc::now(), 100).preempt.is_empty());
    for p in &pass.preempt {
        assert!(a.requeue(p.victim));
    }
    let pass = a.pass(Utc::now(), 100);
    let got: Vec<TaskId> = pass.admitted.iter().map(|x| x.id).collect();
    assert_eq!(got, beta);
}

#[test]
fn borrowed_work_is_not_preempted_by_default() {
    let p = policy(
        r#"
        [tenants.acme]
        quota.default = { cpu = 2 }
        [tenants.beta]
        quota.default = { cpu = 2 }
        "#,
        &one_node(4),
    );
    let mut a = Admission::new(p);
    submit(&mut a, 4, &rq("acme", "default", cpu(1)));
    assert_eq!(a.pass(Utc::now(), 100).admitted.len(), 4);
    let beta = submit(&mut a, 1, &rq("beta", "default", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    assert!(pass.preempt.is_empty() && pass.admitted.is_empty());
    assert_eq!(
        a.explain(beta[0], Utc::now()).unwrap().reason,
        WaitReason::Capacity
    );
}

#[test]
fn equal_weights_share_equally_and_weights_scale_shares() {
    for (weights, cores, expect) in [((1, 1), 10, (5, 5)), ((2, 1), 9, (6, 3))] {
        let p = policy(
            &format!(
                "[tenants.a]\nweight = {}\n[tenants.b]\nweight = {}\n",
                weights.0, weights.1
            ),
            &one_node(cores),
        );
        let mut a = Admission::new(p);
        // b submits first: FIFO across tenants does not decide, fair share does.
        submit(&mut a, 50, &rq("b", "default", cpu(1)));
        submit(&mut a, 50, &rq("a", "default", cpu(1)));
        a.pass(Utc::now(), 1000);
        let r = running_by_tenant(&a);
        assert_eq!((r["a"], r["b"]), expect, "weights {weights:?}");
    }
}

#[test]
fn fair_share_uses_the_dominant_resource() {
    // a asks for memory-heavy tasks, b for cpu-heavy ones: DRF equalises dominant shares.
    let nodes = vec![NodeGroup::new(1, Resources::new(9_000, 18 * GI))];
    let p = policy("", &nodes);
    let mut a = Admission::new(p);
    submit(
        &mut a,
        20,
        &rq("a", "default", Resources::new(1_000, 4 * GI)),
    );
    submit(&mut a, 20, &rq("b", "default", Resources::new(3_000, GI)));
    a.pass(Utc::now(), 1000);
    let r = running_by_tenant(&a);
    // a: 3 tasks = 3 cpu, 12Gi (share 2/3 memory); b: 2 tasks = 6 cpu, 2Gi (2/3 cpu).
    assert_eq!((r["a"], r["b"]), (3, 2));
}

#[test]
fn priority_first_then_fifo_within_a_tenant() {
    let p = policy("", &one_node(2));
    let mut a = Admission::new(p);
    let low = submit(&mut a, 2, &rq("acme", "default", cpu(1)));
    let high = submit(&mut a, 1, &rq("acme", "default", cpu(1)).priority(10));
    let pass = a.pass(Utc::now(), 100);
    let got: Vec<TaskId> = pass.admitted.iter().map(|x| x.id).collect();
    assert_eq!(got, vec![high[0], low[0]]);
    let info = a.explain(low[1], Utc::now()).unwrap();
    assert_eq!((info.position, info.ahead), (1, 0));
    let later = submit(&mut a, 1, &rq("beta", "default", cpu(1)).priority(5));
    assert_eq!(a.explain(low[1], Utc::now()).unwrap().position, 2);
    assert_eq!(a.explain(later[0], Utc::now()).unwrap().position, 1);
}

#[test]
fn lookahead_lets_a_small_task_pass_a_blocked_large_one() {
    let p = policy("lookahead = 4", &one_node(4));
    let mut a = Admission::new(p);
    submit(&mut a, 1, &rq("acme", "default", cpu(3)));
    let big = submit(&mut a, 1, &rq("acme", "default", cpu(4)));
    let small = submit(&mut a, 1, &rq("acme", "default", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    assert_eq!(pass.admitted.len(), 2);
    assert_eq!(pass.admitted[1].id, small[0]);
    assert!(a.is_queued(big[0]));
    // Strict FIFO keeps the small one behind.
    let p = policy("lookahead = 1", &one_node(4));
    let mut a = Admission::new(p);
    submit(&mut a, 1, &rq("acme", "default", cpu(3)));
    submit(&mut a, 1, &rq("acme", "default", cpu(4)));
    let small = submit(&mut a, 1, &rq("acme", "default", cpu(1)));
    assert_eq!(a.pass(Utc::now(), 100).admitted.len(), 1);
    assert!(a.is_queued(small[0]));
}

#[test]
fn environments_are_segments_and_borrow_only_when_configured() {
    let toml_text = |borrow: &str| {
        format!(
            r#"
            [environments.production]
            capacity = {{ cpu = 6, memory = "512Gi" }}
            [environments.staging]
            capacity = {{ cpu = 2, memory = "512Gi" }}
            borrow_from = [{borrow}]
            "#
        )
    };
    let p = policy(&toml_text(""), &one_node(8));
    let mut a = Admission::new(p);
    let staging = submit(&mut a, 4, &rq("acme", "staging", cpu(1)));
    assert_eq!(a.pass(Utc::now(), 100).admitted.len(), 2);
    let why = a.explain(staging[3], Utc::now()).unwrap();
    assert_eq!(
        (why.reason, why.segment.as_str()),
        (WaitReason::Capacity, "staging")
    );

    let p = policy(&toml_text("\"production\""), &one_node(8));
    let mut a = Admission::new(p);
    submit(&mut a, 4, &rq("acme", "staging", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    assert_eq!(pass.admitted.len(), 4);
    let lent: Vec<&Admitted> = pass.admitted.iter().filter(|x| x.borrowed).collect();
    assert_eq!(lent.len(), 2);
    assert!(lent.iter().all(|x| x.segment == "production"));
    // Production's own work still fits in what is left.
    submit(&mut a, 4, &rq("acme", "production", cpu(1)));
    assert_eq!(a.pass(Utc::now(), 100).admitted.len(), 4);
}

#[test]
fn scavengers_take_only_idle_capacity_and_make_room() {
    let p = policy("[scavenger]\ngrace = \"5s\"", &one_node(4));
    let mut a = Admission::new(p);
    let scav = submit(&mut a, 6, &rq("fah", "default", cpu(1)).scavenger(true));
    let pass = a.pass(Utc::now(), 100);
    assert_eq!(pass.admitted.len(), 4);
    // Real work arrives: two scavengers are preempted, newest first.
    let real = submit(&mut a, 2, &rq("acme", "default", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    assert!(pass.admitted.is_empty());
    let victims: Vec<TaskId> = pass.preempt.iter().map(|p| p.victim).collect();
    assert_eq!(victims, vec![scav[3], scav[2]]);
    assert!(
        pass.preempt
            .iter()
            .all(|p| p.cause == PreemptCause::Scavenger)
    );
    // Queued scavengers wait while real work waits.
    let why = a.explain(scav[4], Utc::now()).unwrap();
    assert_eq!(why.reason, WaitReason::IdleCapacity, "{why:?}");
    assert_eq!(why.ahead, 2, "real work counts as ahead of scavengers");
    for v in victims {
        assert!(a.requeue(v));
    }
    let pass = a.pass(Utc::now(), 100);
    let got: Vec<TaskId> = pass.admitted.iter().map(|x| x.id).collect();
    assert_eq!(got, real);
    // A requeued scavenger keeps its place ahead of later ones.
    a.release(real[0]);
    let pass = a.pass(Utc::now(), 100);
    assert_eq!(pass.admitted[0].id, scav[2]);
}

#[test]
fn scavengers_use_no_quota() {
    let p = policy(
        "[tenants.fah]\nborrowing = false\nquota.default = { cpu = 0 }\n",
        &one_node(4),
    );
    let mut a = Admission::new(p);
    submit(&mut a, 4, &rq("fah", "default", cpu(1)).scavenger(true));
    assert_eq!(a.pass(Utc::now(), 100).admitted.len(), 4);
}

#[test]
fn a_budget_refusal_holds_the_task_with_its_reason() {
    let p = policy("", &one_node(4));
    let mut a = Admission::new(p);
    let ids = submit(&mut a, 1, &rq("acme", "default", cpu(1)));
    let now = Utc::now();
    assert_eq!(a.pass(now, 10).admitted.len(), 1);
    let until = now + chrono::Duration::seconds(30);
    assert!(a.refuse(ids[0], "credit exhausted".into(), until));
    assert_eq!(a.running_len(), 0);
    assert!(a.pass(now, 10).admitted.is_empty());
    let why = a.explain(ids[0], now).unwrap();
    assert_eq!(why.reason, WaitReason::Budget);
    assert!(
        why.message.starts_with("credit exhausted"),
        "{}",
        why.message
    );
    assert_eq!(
        a.pass(until + chrono::Duration::seconds(1), 10)
            .admitted
            .len(),
        1
    );
}

#[test]
fn gpus_are_counted_by_model() {
    let nodes = vec![
        NodeGroup::new(
            2,
            Resources::new(32_000, 256 * GI).with_gpus(4, Some("NVIDIA-A100-SXM4-80GB".into())),
        ),
        NodeGroup::new(
            1,
            Resources::new(32_000, 256 * GI).with_gpus(8, Some("NVIDIA-H100-80GB-HBM3".into())),
        ),
    ];
    let p = policy(
        "[tenants.acme]\nquota.default = { gpus = { a100 = 4 } }\n",
        &nodes,
    );
    let mut a = Admission::new(p.clone());
    let req = rq(
        "acme",
        "default",
        Resources::new(1_000, GI).with_gpus(2, Some("a100".into())),
    );
    submit(&mut a, 3, &req);
    let pass = a.pass(Utc::now(), 100);
    // Two within the a100 quota, the third borrows (idle a100s exist).
    assert_eq!(pass.admitted.len(), 3);
    assert_eq!(
        pass.admitted[0].gpu_model.as_deref(),
        Some("NVIDIA-A100-SXM4-80GB")
    );
    assert!(pass.admitted[2].borrowed);
    // Any-model requests land on whatever model has room.
    let any = rq(
        "acme",
        "default",
        Resources::new(1_000, GI).with_gpus(8, None),
    );
    submit(&mut a, 1, &any);
    let pass = a.pass(Utc::now(), 100);
    assert_eq!(
        pass.admitted[0].gpu_model.as_deref(),
        Some("NVIDIA-H100-80GB-HBM3")
    );
    // A model no node has, or more than a node holds, can never run.
    let err = p
        .check(&rq(
            "acme",
            "default",
            Resources::new(1_000, GI).with_gpus(1, Some("v100".into())),
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("no node has GPU model \"v100\""),
        "{err}"
    );
    let err = p
        .check(&rq(
            "acme",
            "default",
            Resources::new(1_000, GI).with_gpus(5, Some("a100".into())),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("larger than any node"), "{err}");
}

#[test]
fn check_lists_every_reason() {
    let p = policy(
        r#"
        [environments.production]
        [tenants.acme]
        borrowing = false
        quota.production = { cpu = 2 }
        "#,
        &one_node(4),
    );
    let err = p
        .check(&rq("acme", "production", cpu(3)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exceeds tenant \"acme\"'s quota in \"production\" (borrowing off)"),
        "{err}"
    );
    let err = p.check(&rq("nobody", "qa", cpu(8))).unwrap_err();
    let Error::Inadmissible { reasons } = &err else {
        panic!("{err}")
    };
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("environment \"qa\" is not configured (known: production)"));
    assert!(reasons[1].contains("tenant \"nobody\" has no admission entry"));
    let err = p.check(&rq("acme", "production", cpu(8))).unwrap_err();
    assert!(err.to_string().contains("larger than any node"), "{err}");
}

#[test]
fn bad_config_lists_every_problem() {
    let config: AdmissionConfig = toml::from_str(
        r#"
        lookahead = 0
        [environments.production]
        capacity = { cpu = 6, gpus = { h100 = 1 } }
        borrow_from = ["prod"]
        [environments.staging]
        capacity = { cpu = 6, memory = "lots" }
        [tenants.acme]
        weight = 0
        quota.qa = { cpu = 1 }
        borrowing_limit.production = { cpu = 1 }
        "#,
    )
    .unwrap();
    let err = AdmissionPolicy::new(config, &one_node(8))
        .unwrap_err()
        .to_string();
    for needle in [
        "admission.lookahead: must be at least 1",
        "environments.production.capacity.gpus: unknown GPU model \"h100\" (the nodes have: no GPUs)",
        "environments.production.borrow_from: unknown environment \"prod\"",
        "environments.staging.capacity.memory",
        "the capacities carved out add up to 12000m cpu, more than the 8000m",
        "tenants.acme.weight: 0 must be a positive number",
        "tenants.acme.quota.qa: unknown environment (known: production, staging)",
        "tenants.acme.borrowing_limit.production: there is no quota",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    // Unknown fields are refused by name.
    let err = toml::from_str::<AdmissionConfig>("[tenants.acme]\nqouta = {}\n").unwrap_err();
    assert!(err.to_string().contains("qouta"), "{err}");
}

#[test]
fn node_pools_are_segments() {
    let nodes = vec![
        NodeGroup::new(2, Resources::new(4_000, 8 * GI))
            .pool(ops_core::Environment::parse("gpu-pool").unwrap()),
        NodeGroup::new(1, Resources::new(2_000, 8 * GI)),
    ];
    let p = Arc::new(AdmissionPolicy::open(&nodes));
    let mut a = Admission::new(p);
    submit(&mut a, 3, &rq("acme", "gpu-pool", cpu(4)));
    submit(&mut a, 3, &rq("acme", "default", cpu(1)));
    let pass = a.pass(Utc::now(), 100);
    let pooled = pass
        .admitted
        .iter()
        .filter(|x| x.segment == "gpu-pool")
        .count();
    assert_eq!((pooled, pass.admitted.len()), (2, 4));
}
