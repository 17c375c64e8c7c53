use std::collections::HashMap;

use super::*;
use crate::{
    source::event::Role,
    trace::{
        assembler::fixtures::*,
        span::{
            Ec2Resource,
            fixtures::{pod_resource, server_group},
        },
    },
};

const NOW: u64 = 1_700_000_000_000_000_000;

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn convert(group: &SpanGroup) -> ResourceSpans {
    resource_spans(group, NOW, &mut Converted::default()).expect("spans")
}

#[test]
fn a_server_span_has_the_http_conventions_attributes_ids_and_kind() {
    let mut g = server_group("checkout", 10);
    let span = &mut g.spans[0];
    span.http.url = "http://shop:8080/cart?item=1".into();
    span.http.client_ip = Some("10.0.0.9".into());
    span.http.user_agent = Some("curl/8".into());
    span.parent_id = Some("1111111111111111".into());
    let rs = convert(&g);
    let out = &rs.scope_spans[0].spans[0];
    assert_eq!(
        out.trace_id,
        hex_bytes("5759e988bd862e3fe1be46a994272793"),
        "X-Ray's id is the W3C id"
    );
    assert_eq!(out.span_id, hex_bytes("53995c3f42cd8ad8"));
    assert_eq!(out.parent_span_id, hex_bytes("1111111111111111"));
    assert_eq!(out.kind, SpanKind::Server as i32);
    assert_eq!(out.name, "GET");
    assert_eq!(
        (out.start_time_unix_nano, out.end_time_unix_nano),
        (NOW, NOW + 100_000_000)
    );
    let a = attrs(&out.attributes);
    assert_eq!(a["http.request.method"], s("GET"));
    assert_eq!(a["url.path"], s("/cart"));
    assert_eq!(a["url.query"], s("item=1"));
    assert_eq!(a["url.scheme"], s("http"));
    assert_eq!(a["server.address"], s("host"));
    assert_eq!(a["server.port"], Value::IntValue(8080));
    assert_eq!(a["client.address"], s("10.0.0.9"));
    assert_eq!(a["user_agent.original"], s("curl/8"));
    assert_eq!(a["http.response.status_code"], Value::IntValue(200));
    assert!(
        !a.contains_key("url.full"),
        "server spans carry path and query"
    );
    assert_eq!(out.status, None, "a 200 is not an error");
    assert_eq!(rs.scope_spans[0].scope, Some(scope()));
}

#[test]
fn the_resource_names_service_pod_workload_container_node_cluster_and_cloud() {
    let mut g = server_group("checkout", 10);
    g.process = "python3".into();
    g.resource = pod_resource();
    if let Some(pod) = g.resource.pod.as_mut() {
        pod.labels = std::sync::Arc::new([("secret".to_owned(), "x".to_owned())].into());
    }
    g.resource.ec2 = Some(Ec2Resource {
        instance_id: "i-0123456789abcdef0".into(),
        availability_zone: "eu-west-1a".into(),
    });
    let a = attrs(&convert(&g).resource.unwrap().attributes);
    for (k, v) in [
        ("service.name", "checkout"),
        ("process.executable.name", "python3"),
        ("k8s.pod.name", "checkout-7d4b9c8f6d-x2x9q"),
        ("k8s.pod.uid", "7b2c1d0e"),
        ("k8s.namespace.name", "shop"),
        ("k8s.deployment.name", "checkout"),
        ("k8s.container.name", "app"),
        ("container.id", "3f9e4b1a"),
        ("k8s.node.name", "node-a"),
        ("k8s.cluster.name", "prod"),
        ("cloud.provider", "aws"),
        ("cloud.platform", "aws_eks"),
        ("cloud.availability_zone", "eu-west-1a"),
        ("host.id", "i-0123456789abcdef0"),
        ("telemetry.sdk.name", "ebpf-collector"),
    ] {
        assert_eq!(a.get(k), Some(&s(v)), "{k}");
    }
    assert_eq!(a["process.pid"], Value::IntValue(10));
    assert!(
        !a.keys()
            .any(|k| k.contains("label") || k.contains("secret")),
        "labels are never exported: {a:?}"
    );
    g.resource.pod = None;
    let a = attrs(&convert(&g).resource.unwrap().attributes);
    assert_eq!(a["cloud.platform"], s("aws_ec2"));
}

#[test]
fn a_call_is_a_client_span_with_the_full_url_under_its_request() {
    let groups = run(&mut assembler(vec![]), &a_calls_b());
    let a_group = groups.iter().find(|g| g.service == "svc1").unwrap();
    let rs = convert(a_group);
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    let (server, call) = (&spans[0], &spans[1]);
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(call.parent_span_id, server.span_id);
    assert_eq!(call.trace_id, server.trace_id);
    let a = attrs(&call.attributes);
    assert_eq!(a["url.full"], s("http://host:80/b"));
    assert_eq!(a["server.address"], s("host"));
    assert_eq!(a["server.port"], Value::IntValue(80));
    assert!(!a.contains_key("client.address"));
    let b = groups.iter().find(|g| g.service == "svc2").unwrap();
    assert_eq!(
        convert(b).scope_spans[0].spans[0].parent_span_id,
        call.span_id,
        "B's server span is the call's child"
    );
}

#[test]
fn errors_are_5xx_on_server_spans_and_4xx_or_5xx_on_client_spans() {
    for (status, server_error, client_error) in [
        (200, false, false),
        (404, false, true),
        (429, false, true),
        (503, true, true),
    ] {
        let error = |server| {
            super::status(server, Some(status)).map(|s| s.code) == Some(StatusCode::Error as i32)
        };
        assert_eq!(
            (error(true), error(false)),
            (server_error, client_error),
            "{status}"
        );
    }
    assert!(super::status(true, None).is_some(), "no response: an error");
    assert_eq!(error_type(false, Some(404)).as_deref(), Some("404"));
    assert_eq!(error_type(true, None).as_deref(), Some("incomplete"));
    assert_eq!(error_type(true, Some(404)), None);
}

#[test]
fn notes_become_attributes() {
    let mut c = call(1, Role::Server, 1, 11, 0, 10, "/n");
    c.headers.x_amzn_trace_id =
        Some("Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a87bd80c:1".into());
    let groups = run(&mut assembler(vec![]), &[c]);
    let mut g = groups[0].clone();
    g.spans[0].notes.push(Note::EndedAtStop);
    let rs = resource_spans(&g, NOW, &mut Converted::default()).unwrap();
    let a = attrs(&rs.scope_spans[0].spans[0].attributes);
    assert_eq!(a["aws.xray.lineage"], s("a87bd80c:1"));
    assert_eq!(a["collector.ended_at_stop"], Value::BoolValue(true));
}

#[test]
fn spans_outside_the_time_window_are_dropped_and_oversized_ones_cut() {
    let mut g = server_group("svc", 1);
    let mut done = Converted::default();
    assert!(resource_spans(&g, NOW + MAX_PAST_NS + 1, &mut done).is_none());
    assert!(resource_spans(&g, NOW - MAX_FUTURE_NS - 1, &mut done).is_none());
    assert_eq!(done.out_of_range, 2);
    g.spans[0].http.user_agent = Some("u".repeat(300 * 1024));
    g.spans[0].http.url = format!("http://h/{}", "p".repeat(100));
    let rs = resource_spans(&g, NOW, &mut done).unwrap();
    let span = &rs.scope_spans[0].spans[0];
    assert!(
        span.encoded_len() <= MAX_SPAN_BYTES,
        "{}",
        span.encoded_len()
    );
    assert_eq!(done.cut, 1);
    let a = attrs(&span.attributes);
    assert_eq!(
        a["url.path"],
        s(&format!("/{}", "p".repeat(100))),
        "short ones stay"
    );
}
