//! The objects Ops creates: a task's pod, and each tenant namespace's quota, limits and
//! network policy. Pure functions of the configuration and the launch spec.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, HostPathVolumeSource, LimitRange, LimitRangeItem,
    LimitRangeSpec, Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    ResourceQuota, ResourceQuotaSpec, ResourceRequirements, SeccompProfile, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ops_core::Resources;

use super::config::{KubeExecutorConfig, TaskVolume};
use super::names;
use crate::executor::LaunchSpec;

/// Where the task directory is mounted inside the pod.
pub const TASK_MOUNT: &str = "/ops/task";
/// Kubernetes' name of the GPU resource.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The node label naming the GPU model (set by NVIDIA's GPU feature discovery).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Name of the namespace's ResourceQuota, LimitRange and NetworkPolicy.
pub const COMPARTMENT_OBJECT: &str = "ops";
/// Value of the scavenger PriorityClass.
pub const SCAVENGER_PRIORITY: i32 = -100;

/// The labels every object Ops creates carries.
fn managed_labels() -> BTreeMap<String, String> {
    [(
        names::MANAGED_BY.0.to_owned(),
        names::MANAGED_BY.1.to_owned(),
    )]
    .into()
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(managed_labels()),
        ..Default::default()
    }
}

/// A Kubernetes quantity for millicores.
pub fn cpu_quantity(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// A Kubernetes quantity for bytes.
pub fn memory_quantity(bytes: u64) -> Quantity {
    if bytes.is_multiple_of(1 << 20) && bytes > 0 {
        Quantity(format!("{}Mi", bytes >> 20))
    } else {
        Quantity(bytes.to_string())
    }
}

/// Requests (= limits) for `resources`: CPU and memory when set, GPUs when any.
fn resource_list(resources: &Resources) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    if resources.cpu_millis > 0 {
        out.insert("cpu".into(), cpu_quantity(resources.cpu_millis));
    }
    if resources.memory_bytes > 0 {
        out.insert("memory".into(), memory_quantity(resources.memory_bytes));
    }
    if resources.gpus.count > 0 {
        out.insert(
            GPU_RESOURCE.into(),
            Quantity(resources.gpus.count.to_string()),
        );
    }
    out
}

/// Parses `key=value:Effect`, `key:Effect` or `key=value` (any effect) into a toleration.
pub fn parse_toleration(s: &str) -> Result<Toleration, String> {
    let (kv, effect) = match s.rsplit_once(':') {
        Some((kv, effect)) => (kv, Some(effect)),
        None => (s, None),
    };
    if let Some(effect) = effect
        && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
    {
        return Err(format!(
            "{s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(format!("{s:?}: missing taint key"));
    }
    Ok(Toleration {
        key: Some(key.to_owned()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
        value: value.map(str::to_owned),
        effect: effect.map(str::to_owned),
        toleration_seconds: None,
    })
}

/// The node GPU product label values that match a requested model (case-insensitive
/// substring, spaces and dashes alike), among `products`.
pub fn matching_products<'a>(
    model: &str,
    products: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let norm = |s: &str| s.to_ascii_lowercase().replace([' ', '_'], "-");
    let want = norm(model);
    let mut out: Vec<String> = products
        .into_iter()
        .filter(|p| norm(p).contains(&want))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Kubernetes expands `$(VAR)` in a container's command, args and env values, and
/// reduces `$$` to `$`; doubling every `$` makes the program receive its arguments
/// exactly as rendered (a shell script's `$$` or `$1` included).
pub fn escape_expansion(s: &str) -> String {
    s.replace('$', "$$")
}

/// Why a spec cannot become a pod (a launch failure, not an engine error).
#[derive(Debug)]
pub struct Unlaunchable(pub String);

/// The pod of one attempt. `gpu_products`: the product label values that satisfy the
/// spec's GPU model (from the nodes; empty when no model is asked for).
pub fn task_pod(
    config: &KubeExecutorConfig,
    spec: &LaunchSpec,
    namespace: &str,
    gpu_products: &[String],
) -> Result<Pod, Unlaunchable> {
    let image = spec
        .image
        .clone()
        .or_else(|| config.default_image.clone())
        .ok_or_else(|| {
            Unlaunchable(
                "no container image: set `image` in the template or `default_image` in the \
                 Kubernetes executor's configuration"
                    .into(),
            )
        })?;
    let environment = spec
        .node_pool
        .as_ref()
        .unwrap_or(&spec.environment)
        .as_str();
    let pool = if config.pools.is_empty() {
        None
    } else {
        Some(config.pools.get(environment).ok_or_else(|| {
            Unlaunchable(format!(
                "environment {environment:?} has no node pool (configured: {})",
                config.pools.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?)
    };

    let (volume, mount) = task_volume(config, &spec.task_dir)?;
    let mut workdir = TASK_MOUNT.to_owned();
    if let Some(w) = &spec.workdir {
        let w = w.to_string_lossy();
        if !w.is_empty() && w != "." {
            workdir = format!("{TASK_MOUNT}/{w}");
        }
    }

    let mut env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(escape_expansion(v)),
            value_from: None,
        })
        .collect();
    for (k, v) in [
        ("HOME", TASK_MOUNT.to_owned()),
        ("OPS_TASK_ID", spec.task_id.to_string()),
        ("OPS_ATTEMPT", spec.attempt.to_string()),
        ("OPS_TASK_DIR", TASK_MOUNT.to_owned()),
    ] {
        env.retain(|e| e.name != k);
        env.push(EnvVar {
            name: k.to_owned(),
            value: Some(v),
            value_from: None,
        });
    }

    let resources = resource_list(&spec.resources);
    let container = Container {
        name: names::CONTAINER.into(),
        image: Some(image),
        command: Some(spec.argv.iter().map(|a| escape_expansion(a)).collect()),
        env: Some(env),
        working_dir: Some(workdir),
        resources: (!resources.is_empty()).then(|| ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..Default::default()
        }),
        volume_mounts: Some(vec![mount]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let user = if spec.run_as_root {
        0
    } else {
        config.run_as_user
    };
    let security = PodSecurityContext {
        run_as_non_root: Some(!spec.run_as_root),
        run_as_user: Some(user),
        run_as_group: Some(user),
        fs_group: (!spec.run_as_root).then_some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    };

    let mut node_selector = pool.map(|p| p.node_selector.clone()).unwrap_or_default();
    let mut tolerations: Vec<Toleration> = Vec::new();
    if let Some(pool) = pool {
        for t in &pool.tolerations {
            tolerations.push(parse_toleration(t).map_err(Unlaunchable)?);
        }
    }
    let mut affinity = None;
    if spec.resources.gpus.count > 0 {
        tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
        if let Some(model) = &spec.resources.gpus.model {
            match gpu_products {
                [] => {
                    return Err(Unlaunchable(format!(
                        "no node has a GPU model matching {model:?}"
                    )));
                }
                [one] => {
                    node_selector.insert(GPU_PRODUCT_LABEL.into(), one.clone());
                }
                many => {
                    affinity = Some(k8s_openapi::api::core::v1::Affinity {
                        node_affinity: Some(NodeAffinity {
                            required_during_scheduling_ignored_during_execution: Some(
                                NodeSelector {
                                    node_selector_terms: vec![NodeSelectorTerm {
                                        match_expressions: Some(vec![NodeSelectorRequirement {
                                            key: GPU_PRODUCT_LABEL.into(),
                                            operator: "In".into(),
                                            values: Some(many.to_vec()),
                                        }]),
                                        match_fields: None,
                                    }],
                                },
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
            }
        }
    }

    let mut labels = managed_labels();
    labels.insert(names::TASK_ID.into(), spec.task_id.to_string());
    labels.insert(names::ATTEMPT.into(), spec.attempt.to_string());
    labels.insert(
        names::TENANT.into(),
        names::label_value(spec.tenant.as_str()),
    );
    labels.insert(names::ENVIRONMENT.into(), names::label_value(environment));
    if spec.scavenger {
        labels.insert(names::SCAVENGER.into(), "true".into());
    }

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(names::pod_name(&spec.task_id, spec.attempt)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(
                [(
                    names::TENANT_ANNOTATION.to_owned(),
                    spec.tenant.as_str().to_owned(),
                )]
                .into(),
            ),
            finalizers: Some(vec![names::FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            active_deadline_seconds: spec.timeout.map(|t| t.as_secs_f64().ceil().max(1.0) as i64),
            termination_grace_period_seconds: Some(config.kill_grace.as_secs() as i64),
            priority_class_name: spec
                .scavenger
                .then(|| config.scavenger_priority_class.clone()),
            security_context: Some(security),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity,
            volumes: Some(vec![volume]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The task volume and its mount (with the task directory as `subPath`).
fn task_volume(
    config: &KubeExecutorConfig,
    task_dir: &Path,
) -> Result<(Volume, VolumeMount), Unlaunchable> {
    let sub_path = |root: &Path| -> Result<String, Unlaunchable> {
        let rel = task_dir.strip_prefix(root).map_err(|_| {
            Unlaunchable(format!(
                "task directory {} is outside the task volume {}; make the coordinator's \
                 root the volume's path",
                task_dir.display(),
                root.display()
            ))
        })?;
        Ok(rel.to_string_lossy().into_owned())
    };
    let mut volume = Volume {
        name: "task".into(),
        ..Default::default()
    };
    let mut mount = VolumeMount {
        name: "task".into(),
        mount_path: TASK_MOUNT.into(),
        ..Default::default()
    };
    match &config.volume {
        TaskVolume::HostPath { path } => {
            volume.host_path = Some(HostPathVolumeSource {
                path: path.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            });
            mount.sub_path = Some(sub_path(path)?);
        }
        TaskVolume::PersistentVolumeClaim { claim, local_root } => {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            });
            mount.sub_path = Some(sub_path(local_root)?);
        }
        TaskVolume::None => {
            volume.empty_dir = Some(Default::default());
        }
    }
    Ok((volume, mount))
}

/// A tenant environment's namespace.
pub fn namespace(name: &str, tenant: &str, environment: &str) -> Namespace {
    let mut meta = meta(name, None);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(names::TENANT.into(), names::label_value(tenant));
    labels.insert(names::ENVIRONMENT.into(), names::label_value(environment));
    // Pod Security admission: baseline enforced (no privileged pods, host namespaces
    // or host ports), restricted reported as warnings.
    labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "baseline".into(),
    );
    labels.insert(
        "pod-security.kubernetes.io/warn".into(),
        "restricted".into(),
    );
    meta.annotations = Some([(names::TENANT_ANNOTATION.to_owned(), tenant.to_owned())].into());
    Namespace {
        metadata: meta,
        ..Default::default()
    }
}

/// The namespace's ResourceQuota from the tenant's quota: requests and limits of CPU and
/// memory, and GPU requests.
pub fn resource_quota(namespace: &str, quota: &Resources) -> ResourceQuota {
    let mut hard = BTreeMap::new();
    if quota.cpu_millis > 0 {
        hard.insert("requests.cpu".into(), cpu_quantity(quota.cpu_millis));
        hard.insert("limits.cpu".into(), cpu_quantity(quota.cpu_millis));
    }
    if quota.memory_bytes > 0 {
        hard.insert(
            "requests.memory".into(),
            memory_quantity(quota.memory_bytes),
        );
        hard.insert("limits.memory".into(), memory_quantity(quota.memory_bytes));
    }
    hard.insert(
        format!("requests.{GPU_RESOURCE}"),
        Quantity(quota.gpus.count.to_string()),
    );
    ResourceQuota {
        metadata: meta(COMPARTMENT_OBJECT, Some(namespace)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        status: None,
    }
}

/// The namespace's LimitRange: default requests/limits for containers that set none,
/// and the tenant's quota as the most one container may ask for.
pub fn limit_range(namespace: &str, defaults: &Resources, quota: Option<&Resources>) -> LimitRange {
    let default = resource_list(defaults);
    let max = quota.map(resource_list).filter(|m| !m.is_empty());
    let max = max.map(|mut m| {
        m.remove(GPU_RESOURCE);
        m
    });
    LimitRange {
        metadata: meta(COMPARTMENT_OBJECT, Some(namespace)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: (!default.is_empty()).then(|| default.clone()),
                default_request: (!default.is_empty()).then_some(default),
                max,
                ..Default::default()
            }],
        }),
    }
}

/// The namespace's NetworkPolicy: deny all ingress and egress of every pod, except DNS
/// and the configured egress blocks.
pub fn network_policy(namespace: &str, config: &KubeExecutorConfig) -> NetworkPolicy {
    let mut egress = Vec::new();
    if config.network.allow_dns {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                ..Default::default()
            }]),
            ports: Some(
                ["UDP", "TCP"]
                    .into_iter()
                    .map(|p| NetworkPolicyPort {
                        port: Some(IntOrString::Int(53)),
                        protocol: Some(p.into()),
                        end_port: None,
                    })
                    .collect(),
            ),
        });
    }
    if !config.network.egress_cidrs.is_empty() {
        egress.push(NetworkPolicyEgressRule {
            to: Some(
                config
                    .network
                    .egress_cidrs
                    .iter()
                    .map(|cidr| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: cidr.clone(),
                            except: None,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: None,
        });
    }
    NetworkPolicy {
        metadata: meta(COMPARTMENT_OBJECT, Some(namespace)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(Vec::new()),
            egress: Some(egress),
        }),
    }
}

/// The scavenger PriorityClass: below every default (0) pod, never preempting others.
pub fn scavenger_priority_class(name: &str) -> PriorityClass {
    PriorityClass {
        metadata: meta(name, None),
        value: Some(SCAVENGER_PRIORITY),
        preemption_policy: Some("Never".into()),
        global_default: Some(false),
        description: Some(
            "Ops scavenger (backfill) tasks: run on idle capacity, preempted by any other work"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use ops_core::Tenant;

    use super::*;
    use crate::kube::config::NodePool;

    fn spec() -> LaunchSpec {
        let mut spec = LaunchSpec::new(
            Tenant::parse("acme").unwrap(),
            vec![
                "render".into(),
                "--fast".into(),
                "kill $ $(HOME) $$1".into(),
            ],
            "/srv/ops/acme/t1",
        );
        spec.image = Some("ghcr.io/acme/render:1".into());
        spec.resources = Resources::new(2000, 4 << 30).with_gpus(1, Some("A100".into()));
        spec.timeout = Some(Duration::from_millis(1500));
        spec.workdir = Some(PathBuf::from("scenes"));
        spec.env.insert("HOME".into(), "/evil".into());
        spec
    }

    fn config() -> KubeExecutorConfig {
        KubeExecutorConfig {
            volume: TaskVolume::HostPath {
                path: "/srv/ops".into(),
            },
            pools: [(
                "default".to_owned(),
                NodePool::labelled("pool", "prod").tolerate("dedicated=prod:NoSchedule"),
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn pod_is_restricted_limited_and_placed() {
        let pod = task_pod(
            &config(),
            &spec(),
            "ops-acme-default",
            &["NVIDIA-A100-SXM4-80GB".into()],
        )
        .unwrap();
        let ps = pod.spec.as_ref().unwrap();
        let c = &ps.containers[0];
        assert_eq!(
            c.command.as_deref().unwrap(),
            ["render", "--fast", "kill $$ $$(HOME) $$$$1"]
        );
        assert_eq!(c.working_dir.as_deref(), Some("/ops/task/scenes"));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["cpu"].0, "2");
        assert_eq!(limits["memory"].0, "4096Mi");
        assert_eq!(limits[GPU_RESOURCE].0, "1");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        let psc = ps.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(ps.automount_service_account_token, Some(false));
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        assert_eq!(ps.active_deadline_seconds, Some(2));
        let sel = ps.node_selector.as_ref().unwrap();
        assert_eq!(sel["pool"], "prod");
        assert_eq!(sel[GPU_PRODUCT_LABEL], "NVIDIA-A100-SXM4-80GB");
        let tol = ps.tolerations.as_ref().unwrap();
        assert!(tol.iter().any(|t| t.key.as_deref() == Some("dedicated")
            && t.value.as_deref() == Some("prod")
            && t.effect.as_deref() == Some("NoSchedule")));
        assert!(tol.iter().any(|t| t.key.as_deref() == Some(GPU_RESOURCE)));
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.sub_path.as_deref(), Some("acme/t1"));
        let env = c.env.as_ref().unwrap();
        let home: Vec<_> = env.iter().filter(|e| e.name == "HOME").collect();
        assert_eq!(home.len(), 1);
        assert_eq!(home[0].value.as_deref(), Some(TASK_MOUNT));
        assert_eq!(
            pod.metadata.finalizers.as_ref().unwrap(),
            &[names::FINALIZER]
        );
        assert!(ps.priority_class_name.is_none());
    }

    #[test]
    fn several_gpu_models_use_affinity_and_scavengers_their_class() {
        let mut s = spec();
        s.scavenger = true;
        s.run_as_root = true;
        let pod = task_pod(&config(), &s, "ns", &["a".into(), "b".into()]).unwrap();
        let ps = pod.spec.unwrap();
        let terms = ps
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(
            terms[0].match_expressions.as_ref().unwrap()[0]
                .values
                .as_ref()
                .unwrap(),
            &["a", "b"]
        );
        assert_eq!(ps.priority_class_name.as_deref(), Some("ops-scavenger"));
        assert_eq!(ps.security_context.unwrap().run_as_user, Some(0));
    }

    #[test]
    fn unlaunchable_specs_say_why() {
        let mut s = spec();
        s.image = None;
        assert!(
            task_pod(&config(), &s, "ns", &["a".into()])
                .unwrap_err()
                .0
                .contains("no container image")
        );
        let mut s = spec();
        s.environment = ops_core::Environment::parse("staging").unwrap();
        assert!(
            task_pod(&config(), &s, "ns", &["a".into()])
                .unwrap_err()
                .0
                .contains("\"staging\" has no node pool")
        );
        assert!(
            task_pod(&config(), &spec(), "ns", &[])
                .unwrap_err()
                .0
                .contains("no node has a GPU model")
        );
        let mut s = spec();
        s.task_dir = "/elsewhere/t1".into();
        assert!(
            task_pod(&config(), &s, "ns", &["a".into()])
                .unwrap_err()
                .0
                .contains("outside the task volume")
        );
    }

    #[test]
    fn tolerations_parse() {
        let t = parse_toleration("gpu:NoSchedule").unwrap();
        assert_eq!(t.operator.as_deref(), Some("Exists"));
        assert!(parse_toleration("a=b:Sometimes").is_err());
        assert!(parse_toleration("=b").is_err());
    }

    #[test]
    fn products_match_models() {
        let products = vec![
            "NVIDIA-A100-SXM4-80GB".to_owned(),
            "NVIDIA-L4".to_owned(),
            "NVIDIA-A100-PCIE-40GB".into(),
        ];
        assert_eq!(
            matching_products("a100 sxm4", &products),
            ["NVIDIA-A100-SXM4-80GB"]
        );
        assert_eq!(matching_products("A100", &products).len(), 2);
        assert!(matching_products("H100", &products).is_empty());
    }

    #[test]
    fn compartment_objects() {
        let q = resource_quota("ns", &Resources::new(8000, 32 << 30).with_gpus(2, None));
        let hard = q.spec.unwrap().hard.unwrap();
        assert_eq!(hard["requests.cpu"].0, "8");
        assert_eq!(hard["limits.memory"].0, "32768Mi");
        assert_eq!(hard["requests.nvidia.com/gpu"].0, "2");
        let l = limit_range(
            "ns",
            &Resources::new(100, 128 << 20),
            Some(&Resources::new(4000, 0)),
        );
        let item = &l.spec.unwrap().limits[0];
        assert_eq!(item.default_request.as_ref().unwrap()["cpu"].0, "100m");
        assert_eq!(item.max.as_ref().unwrap()["cpu"].0, "4");
        let np = network_policy("ns", &KubeExecutorConfig::default());
        let spec = np.spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
        assert!(spec.ingress.unwrap().is_empty());
        assert_eq!(spec.egress.unwrap().len(), 1);
        let pc = scavenger_priority_class("ops-scavenger");
        assert_eq!(pc.value, Some(-100));
        assert_eq!(pc.preemption_policy.as_deref(), Some("Never"));
    }
}
