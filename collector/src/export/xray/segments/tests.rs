use std::collections::HashMap;

use super::{documents, segment, status_flags};
use crate::{
    enrich::{ORIGIN_EC2, ORIGIN_EKS},
    source::event::Role,
    trace::{
        assembler::fixtures::*,
        span::{
            Ec2Resource, Resource,
            fixtures::{pod_resource, server_group},
        },
    },
};

#[test]
fn status_codes_set_error_throttle_and_fault() {
    for (status, flags) in [
        (200, (false, false, false)),
        (404, (true, false, false)),
        (429, (true, true, false)),
        (503, (false, false, true)),
    ] {
        let mut c = call(1, Role::Server, 1, 11, 0, 10, "/s");
        c.status = status;
        let groups = run(&mut assembler(vec![]), &[c]);
        let d = segment(&groups[0]);
        assert_eq!((d.error, d.throttle, d.fault), flags, "{status}");
        assert_eq!(status_flags(Some(status)), flags);
    }
}

#[test]
fn a_pod_resource_becomes_origin_the_eks_block_and_k8s_annotations() {
    let mut g = server_group("checkout", 10);
    g.resource = pod_resource();
    let json: serde_json::Value = serde_json::from_str(&documents(&g)[0]).unwrap();
    assert_eq!(json["name"], "checkout");
    assert_eq!(json["origin"], ORIGIN_EKS);
    assert_eq!(
        json["aws"]["eks"],
        serde_json::json!({"pod": "checkout-7d4b9c8f6d-x2x9q", "cluster_name": "prod", "container_id": "3f9e4b1a"})
    );
    assert_eq!(
        json["annotations"],
        serde_json::json!({
            "k8s_namespace": "shop", "k8s_pod": "checkout-7d4b9c8f6d-x2x9q", "k8s_container": "app",
            "k8s_workload": "checkout", "k8s_workload_kind": "Deployment", "k8s_node": "node-a"
        })
    );
    for hidden in ["pid", "port", "root"] {
        assert!(json.get(hidden).is_none(), "{hidden} is never exported");
    }
}

#[test]
fn ec2_gives_the_ec2_block_and_origin_unless_a_pod_says_eks() {
    let ec2 = Some(Ec2Resource {
        instance_id: "i-0123456789abcdef0".into(),
        availability_zone: "eu-west-1a".into(),
    });
    let mut host = server_group("python3", 11);
    host.resource.ec2.clone_from(&ec2);
    host.resource.node = Some("node-a".into());
    let json: serde_json::Value = serde_json::from_str(&documents(&host)[0]).unwrap();
    assert_eq!(json["origin"], ORIGIN_EC2);
    assert_eq!(json["aws"]["ec2"]["instance_id"], "i-0123456789abcdef0");
    assert!(
        json.get("annotations").is_none(),
        "k8s_node only with a pod"
    );
    let mut in_pod = server_group("checkout", 10);
    in_pod.resource = Resource {
        ec2,
        ..pod_resource()
    };
    let json: serde_json::Value = serde_json::from_str(&documents(&in_pod)[0]).unwrap();
    assert_eq!(json["origin"], ORIGIN_EKS, "EKS origin wins");
    assert!(json["aws"]["ec2"].is_object());
}

#[test]
fn a_late_call_is_an_independent_subsegment_without_resource() {
    let groups = run(&mut assembler(vec![]), &late_call());
    let mut late = groups[1].clone();
    late.resource = pod_resource();
    let sub = segment(&late);
    assert_eq!(sub.kind, Some("subsegment"));
    assert_eq!(sub.trace_id.as_deref(), Some(groups[0].trace_id()));
    assert_eq!(
        sub.parent_id.as_deref(),
        Some(groups[0].first().span_id.as_str())
    );
    assert_eq!((sub.origin, sub.aws), (None, None));
    assert!(sub.annotations.is_empty());
}

/// Every scenario of the trace stage's tests (and a request with enough calls to split at
/// 64 kB), as the JSON documents the X-Ray exporters send, byte for byte; random ids are
/// replaced by their order of first appearance. This is the output a change to the trace
/// stage or to this conversion must keep. After a
/// deliberate change to it: `UPDATE_GOLDEN=1 cargo test -p collector --lib golden`, and
/// review the diff of the file.
#[test]
fn documents_match_the_golden_file() {
    let statuses: Vec<Call> = [404, 429, 503]
        .into_iter()
        .enumerate()
        .map(|(i, status)| {
            let i = i as u64;
            let mut c = call(i + 1, Role::Server, 1, 11, i * 20, i * 20 + 10, "/s");
            c.status = status;
            c
        })
        .collect();
    let mut split = vec![call(1, Role::Server, 1, 11, 0, 1000, "/fan-out")];
    let long = "x".repeat(200);
    split.extend((0..160).map(|i| {
        call(
            2 + i,
            Role::Client,
            1,
            11,
            1 + i,
            2 + i,
            &format!("/{long}/{i}"),
        )
    }));
    let scenarios: Vec<(&str, Vec<u32>, Vec<Call>)> = vec![
        ("a calls b", vec![], a_calls_b()),
        ("two requests in flight", vec![], two_in_flight()),
        ("a moves work between threads", vec![1], a_calls_b()),
        ("forwarded header", vec![1], forwarded_header()),
        ("old w3c traceparent", vec![], vec![old_w3c()]),
        ("late call", vec![], late_call()),
        (
            "unparented call",
            vec![],
            vec![call(1, Role::Client, 1, 11, 0, 5, "/alone")],
        ),
        ("statuses", vec![], statuses),
        ("split at 64 kB", vec![], split),
    ];
    let mut text = String::new();
    for (name, go, calls) in scenarios {
        let docs: Vec<String> = run(&mut assembler(go), &calls)
            .iter()
            .flat_map(documents)
            .collect();
        text.push_str(&format!("# {name}: {} documents\n", docs.len()));
        text.push_str(&placeholder_ids(&docs.join("\n")));
        text.push('\n');
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/export/xray/golden.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let want = std::fs::read_to_string(path).expect("the golden file");
    for (i, (got, want)) in text.lines().zip(want.lines()).enumerate() {
        assert_eq!(got, want, "line {} of {path}", i + 1);
    }
    assert_eq!(
        text.lines().count(),
        want.lines().count(),
        "lines in {path}"
    );
}

/// Replaces each generated trace or segment id in JSON text by `<tN>` / `<sN>`, numbered in
/// order of first appearance; ids the fixtures chose themselves stay.
fn placeholder_ids(json: &str) -> String {
    let fixed = [FORWARDED_ROOT, "53995c3f42cd8ad8", "1111111111111111"];
    let mut seen: HashMap<String, String> = HashMap::new();
    let (mut traces, mut spans) = (0, 0);
    let parts: Vec<String> = json
        .split('"')
        .map(|part| {
            let generated = !fixed.contains(&part);
            if generated && crate::trace::ids::is_trace_id(part) {
                seen.entry(part.into())
                    .or_insert_with(|| {
                        traces += 1;
                        format!("<t{traces}>")
                    })
                    .clone()
            } else if generated && crate::trace::ids::is_span_id(part) {
                seen.entry(part.into())
                    .or_insert_with(|| {
                        spans += 1;
                        format!("<s{spans}>")
                    })
                    .clone()
            } else {
                part.to_owned()
            }
        })
        .collect();
    parts.join("\"")
}
