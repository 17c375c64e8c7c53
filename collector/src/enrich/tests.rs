use std::collections::{BTreeMap, HashMap};

use super::*;

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

fn segment(pid: u32) -> Segment {
    Segment {
        name: "python3".into(),
        id: "0123456789abcdef".into(),
        trace_id: Some("1-00000000-000000000000000000000000".into()),
        parent_id: None,
        start_time: 1.0,
        end_time: 2.0,
        kind: None,
        namespace: None,
        origin: None,
        http: None,
        error: false,
        throttle: false,
        fault: false,
        annotations: BTreeMap::new(),
        aws: None,
        subsegments: vec![],
        pid,
        port: 8080,
        root: None,
    }
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
            filters: Default::default(),
        },
        shared,
        proc,
    )
}

#[test]
fn a_pod_process_gets_pod_workload_and_eks_block() {
    let mut e = enricher(&[pod()]);
    let mut s = segment(10);
    assert!(e.enrich(&mut s));
    let json: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
    assert_eq!(json["name"], "checkout");
    assert_eq!(json["origin"], "AWS::EKS::Container");
    assert_eq!(
        json["aws"]["eks"],
        serde_json::json!({"pod": "checkout-7d4b9c8f6d-x2x9q", "cluster_name": "prod", "container_id": ID})
    );
    assert_eq!(
        json["annotations"],
        serde_json::json!({
            "k8s_namespace": "shop", "k8s_pod": "checkout-7d4b9c8f6d-x2x9q", "k8s_container": "app",
            "k8s_workload": "checkout", "k8s_workload_kind": "Deployment", "k8s_node": "node-a"
        })
    );
    assert!(json.get("pid").is_none(), "the pid is never exported");
    assert_eq!(e.stats.with_pod, 1);
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
    let mut host = segment(11);
    assert!(e.enrich(&mut host));
    assert_eq!(host.name, "python3");
    assert_eq!(host.origin, None);
    let mut unknown = segment(10);
    assert!(e.enrich(&mut unknown));
    assert_eq!(unknown.name, "python3");
    assert!(unknown.annotations.is_empty());
    assert_eq!(
        (e.stats.host_processes, e.stats.container_without_pod),
        (1, 1)
    );
    // The pod arrives (API back): the next segment of that process is enriched.
    e.shared.pods.lock().unwrap().apply(pod());
    let mut later = segment(10);
    assert!(e.enrich(&mut later));
    assert_eq!(later.name, "checkout");
}

#[test]
fn a_container_not_yet_in_status_is_found_by_pod_uid() {
    let mut e = enricher(&[pod()]);
    let mut s = segment(12);
    assert!(e.enrich(&mut s));
    assert_eq!(s.name, "checkout");
    let eks = s.aws.unwrap().eks.unwrap();
    assert_eq!(eks.container_id.as_deref(), Some("b".repeat(64).as_str()));
    assert!(!s.annotations.contains_key("k8s_container"));
}

#[test]
fn independent_subsegments_and_unknown_pids_are_left_alone() {
    let mut e = enricher(&[pod()]);
    let mut sub = segment(10);
    sub.kind = Some("subsegment");
    sub.name = "callee.example".into();
    assert!(e.enrich(&mut sub));
    assert_eq!(sub.name, "callee.example");
    assert_eq!(sub.origin, None);
    let mut no_pid = segment(0);
    assert!(e.enrich(&mut no_pid));
    assert_eq!(no_pid.name, "python3");
}

#[test]
fn ec2_block_when_known() {
    let mut e = enricher(&[pod()]);
    *e.shared.ec2.write().unwrap() = Some(Ec2Meta {
        instance_id: "i-0123456789abcdef0".into(),
        availability_zone: "eu-west-1a".into(),
    });
    let mut host = segment(11);
    assert!(e.enrich(&mut host));
    assert_eq!(host.origin.as_deref(), Some(ORIGIN_EC2));
    let ec2 = host.aws.as_ref().unwrap().ec2.as_ref().unwrap();
    assert_eq!(ec2.instance_id, "i-0123456789abcdef0");
    let mut in_pod = segment(10);
    assert!(e.enrich(&mut in_pod));
    assert_eq!(
        in_pod.origin.as_deref(),
        Some(ORIGIN_EKS),
        "EKS origin wins"
    );
    assert!(in_pod.aws.as_ref().unwrap().ec2.is_some());
}

#[test]
fn cgroups_are_read_once_per_pid_and_exited_pids_evicted() {
    let mut e = enricher(&[pod()]);
    for _ in 0..3 {
        assert!(e.enrich(&mut segment(10)));
        assert!(e.enrich(&mut segment(11)));
    }
    assert_eq!(e.reader.reads, 2);
    e.reader.cgroups.remove(&11);
    e.tick(SWEEP_EVERY_NS + 1);
    assert_eq!(e.cached_pids(), 1);
    assert_eq!(e.stats.pids_evicted, 1);
}

#[test]
fn pods_that_opt_out_lose_their_segments() {
    let mut p = pod();
    p.excluded = true;
    let mut e = enricher(&[p]);
    assert!(!e.enrich(&mut segment(10)));
    let mut sub = segment(10);
    sub.kind = Some("subsegment");
    assert!(!e.enrich(&mut sub));
    assert!(e.enrich(&mut segment(11)), "other processes are kept");
    assert_eq!(e.stats.excluded_by_annotation, 2);
}
