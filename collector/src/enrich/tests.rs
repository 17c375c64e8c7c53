use std::collections::HashMap;

use super::*;
use crate::trace::span::fixtures::server_group;

const ID: &str = "3f9e4b1a7c2d8e6f0a5b9c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";
const UID: &str = "7b2c1d0e-4f5a-4b6c-8d9e-0f1a2b3c4d5e";

#[derive(Default)]
struct FakeProc {
    cgroups: HashMap<u32, String>,
    reads: usize,
}

impl CgroupReader for FakeProc {
    fn read(&mut self, pid: u32) -> Option<String> {
        self.reads += 1;
        self.cgroups.get(&pid).cloned()
    }

    fn alive(&mut self, pid: u32) -> bool {
        self.cgroups.contains_key(&pid)
    }

    fn name(&mut self, _pid: u32) -> String {
        "python3".into()
    }
}

fn group(pid: u32) -> SpanGroup {
    server_group("python3", pid)
}

/// A call sent on its own under a request whose group already left.
fn late_call(pid: u32) -> SpanGroup {
    let mut g = group(pid);
    g.spans[0].kind = crate::trace::SpanKind::Client;
    g.spans[0].parent_id = Some("1111111111111111".into());
    g
}

fn pod() -> PodMeta {
    PodMeta {
        uid: UID.into(),
        namespace: "shop".into(),
        name: "checkout-7d4b9c8f6d-x2x9q".into(),
        node: "node-a".into(),
        service_name_annotation: None,
        app_name_label: None,
        excluded: false,
        ips: vec![],
        labels: Default::default(),
        workload: Some(("Deployment".into(), "checkout".into())),
        containers: vec![(ID.into(), "app".into())],
    }
}

fn enricher(pods: &[PodMeta]) -> Enricher<FakeProc> {
    let shared = SharedMeta::default();
    for p in pods {
        shared.pods.lock().unwrap().apply(p.clone());
    }
    let mut proc = FakeProc::default();
    proc.cgroups
        .insert(10, format!("0::/kubepods/burstable/pod{UID}/{ID}\n"));
    proc.cgroups
        .insert(11, "0::/system.slice/sshd.service\n".into());
    proc.cgroups.insert(
        12,
        format!("0::/kubepods/burstable/pod{UID}/crio-{}\n", "b".repeat(64)),
    );
    Enricher::new(
        EnrichConfig {
            cluster_name: Some("prod".into()),
            node_name: Some("node-a".into()),
        },
        shared,
        proc,
    )
}

#[test]
fn a_pod_process_gets_pod_workload_node_and_cluster() {
    let mut e = enricher(&[pod()]);
    let mut g = group(10);
    e.enrich(&mut g);
    assert_eq!(g.service, "checkout");
    assert_eq!(
        g.resource,
        Resource {
            pod: Some(PodResource {
                name: "checkout-7d4b9c8f6d-x2x9q".into(),
                namespace: "shop".into(),
                uid: UID.into(),
                container_id: Some(ID.into()),
                container: Some("app".into()),
                workload: Some(("Deployment".into(), "checkout".into())),
                labels: Default::default(),
                opted_out: false,
            }),
            ec2: None,
            node: Some("node-a".into()),
            cluster: Some("prod".into()),
        }
    );
    assert_eq!(origin(&g.resource), ORIGIN_EKS);
    assert_eq!(
        g.root_service,
        Some(RootService {
            name: "checkout".into(),
            origin: ORIGIN_EKS
        }),
        "the group's own process is the root"
    );
    assert_eq!(e.stats.with_pod, 1);
}

#[test]
fn a_root_in_another_process_is_named_for_sampling_as_its_own_groups_are() {
    let mut e = enricher(&[pod()]);
    let mut g = group(11);
    g.root = std::sync::Arc::new(crate::trace::span::TraceRoot {
        pid: 10,
        ..Default::default()
    });
    e.enrich(&mut g);
    assert_eq!(g.service, "python3");
    assert_eq!(
        g.root_service,
        Some(RootService {
            name: "checkout".into(),
            origin: ORIGIN_EKS
        })
    );
}

#[test]
fn service_name_precedence() {
    let mut p = pod();
    assert_eq!(service_name(&p, Some(ID)).as_deref(), Some("checkout"));
    p.workload = None;
    assert_eq!(
        service_name(&p, Some(ID)).as_deref(),
        Some("app"),
        "container"
    );
    assert_eq!(
        service_name(&p, Some("unknown")),
        None,
        "process name stays"
    );
    p.app_name_label = Some("checkout-app".into());
    assert_eq!(service_name(&p, Some(ID)).as_deref(), Some("checkout-app"));
    p.workload = Some(("Deployment".into(), "checkout".into()));
    assert_eq!(
        service_name(&p, Some(ID)).as_deref(),
        Some("checkout-app"),
        "label beats workload"
    );
    p.service_name_annotation = Some("Checkout API".into());
    assert_eq!(
        service_name(&p, Some(ID)).as_deref(),
        Some("Checkout API"),
        "annotation first"
    );
}

#[test]
fn host_processes_and_unknown_pods_keep_their_process_name() {
    let mut e = enricher(&[]);
    let mut host = group(11);
    e.enrich(&mut host);
    assert_eq!(host.service, "python3");
    assert_eq!(origin(&host.resource), "");
    assert_eq!(
        host.resource.node.as_deref(),
        Some("node-a"),
        "the flag's node"
    );
    let mut unknown = group(10);
    e.enrich(&mut unknown);
    assert_eq!(unknown.service, "python3");
    assert_eq!(unknown.resource.pod, None);
    assert_eq!(
        (e.stats.host_processes, e.stats.container_without_pod),
        (1, 1)
    );
    // The pod arrives (API back): the next group of that process is enriched.
    e.shared.pods.lock().unwrap().apply(pod());
    let mut later = group(10);
    e.enrich(&mut later);
    assert_eq!(later.service, "checkout");
}

#[test]
fn a_container_not_yet_in_status_is_found_by_pod_uid() {
    let mut e = enricher(&[pod()]);
    let mut g = group(12);
    e.enrich(&mut g);
    assert_eq!(g.service, "checkout");
    let pod = g.resource.pod.unwrap();
    assert_eq!(pod.container_id.as_deref(), Some("b".repeat(64).as_str()));
    assert_eq!(pod.container, None);
}

#[test]
fn late_calls_are_not_counted_twice_and_unknown_pids_are_left_alone() {
    let mut e = enricher(&[pod()]);
    let mut late = late_call(10);
    e.enrich(&mut late);
    assert_eq!(late.service, "checkout", "the resource is the process's");
    assert_eq!(
        e.stats.with_pod, 0,
        "counted with the request it belongs to"
    );
    let mut no_pid = group(0);
    e.enrich(&mut no_pid);
    assert_eq!(no_pid.service, "python3");
    assert_eq!(no_pid.resource, Resource::default());
}

#[test]
fn ec2_is_known_to_every_group() {
    let mut e = enricher(&[pod()]);
    *e.shared.ec2.write().unwrap() = Some(Ec2Resource {
        instance_id: "i-0123456789abcdef0".into(),
        availability_zone: "eu-west-1a".into(),
    });
    let mut host = group(11);
    e.enrich(&mut host);
    assert_eq!(origin(&host.resource), ORIGIN_EC2);
    assert_eq!(
        host.resource.ec2.as_ref().unwrap().instance_id,
        "i-0123456789abcdef0"
    );
    let mut in_pod = group(10);
    e.enrich(&mut in_pod);
    assert_eq!(origin(&in_pod.resource), ORIGIN_EKS, "EKS origin wins");
    assert!(in_pod.resource.ec2.is_some());
}

#[test]
fn cgroups_are_read_once_per_pid_and_exited_pids_evicted() {
    let mut e = enricher(&[pod()]);
    for _ in 0..3 {
        e.enrich(&mut group(10));
        e.enrich(&mut group(11));
    }
    assert_eq!(e.reader.reads, 2);
    e.reader.cgroups.remove(&11);
    e.tick(SWEEP_EVERY_NS + 1);
    assert_eq!(e.cached_pids(), 1);
    assert_eq!(e.stats.pids_evicted, 1);
}
