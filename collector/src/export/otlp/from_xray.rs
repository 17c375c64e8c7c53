//! X-Ray SDK segment documents (from the relay) → OTLP spans, as the OpenTelemetry
//! Collector's awsxray receiver maps them: a segment is a server span of the service its
//! name gives, each subsegment a span under its enclosing one (client kind for `remote` and
//! `aws` calls), annotations `aws.xray.annotations.<key>`, `origin` and the `aws` block the
//! resource. In-progress documents are left out (the complete one follows).

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use serde_json::Value;

use super::spans::{bool_kv, hex_bytes, int_kv, path_and_query, scope, str_kv, trace_id_bytes};
use crate::trace::ids::{is_span_id, is_trace_id};

/// Subsegments nested deeper than this are not followed.
const MAX_DEPTH: usize = 32;

pub fn resource_spans(doc: &str) -> Result<ResourceSpans, String> {
    let v: Value = serde_json::from_str(doc).map_err(|e| format!("not JSON: {e}"))?;
    if v["in_progress"].as_bool() == Some(true) {
        return Err("in progress".into());
    }
    let trace_id = v["trace_id"]
        .as_str()
        .filter(|t| is_trace_id(t))
        .ok_or("no valid trace_id")?;
    let independent = v["type"].as_str() == Some("subsegment");
    let mut spans = Vec::new();
    let parent = v["parent_id"].as_str().filter(|p| is_span_id(p));
    let top_kind = if independent {
        call_kind(&v)
    } else {
        SpanKind::Server
    };
    flatten(&v, trace_id, parent, top_kind, 0, &mut spans)?;
    Ok(ResourceSpans {
        resource: Some(resource(&v)),
        scope_spans: vec![ScopeSpans {
            scope: Some(scope()),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    })
}

fn flatten(
    v: &Value,
    trace_id: &str,
    parent: Option<&str>,
    kind: SpanKind,
    depth: usize,
    out: &mut Vec<Span>,
) -> Result<(), String> {
    let id = v["id"]
        .as_str()
        .filter(|i| is_span_id(i))
        .ok_or("no valid id")?;
    let start = v["start_time"].as_f64().ok_or("no start_time")?;
    let end = v["end_time"].as_f64().ok_or("no end_time")?;
    let seconds_ns = |s: f64| (s.max(0.0) * 1e9) as u64;
    let server = kind == SpanKind::Server;
    out.push(Span {
        trace_id: trace_id_bytes(trace_id),
        span_id: hex_bytes(id),
        parent_span_id: parent.map(hex_bytes).unwrap_or_default(),
        name: v["name"].as_str().unwrap_or("unknown").to_owned(),
        kind: kind as i32,
        start_time_unix_nano: seconds_ns(start),
        end_time_unix_nano: seconds_ns(end),
        attributes: attributes(v, server),
        status: failed(v, server).then(|| Status {
            message: String::new(),
            code: StatusCode::Error as i32,
        }),
        ..Span::default()
    });
    let Some(subs) = v["subsegments"].as_array() else {
        return Ok(());
    };
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for sub in subs {
        // A subsegment still open (no end_time) or malformed loses its subtree, not the
        // document.
        let before = out.len();
        if flatten(sub, trace_id, Some(id), call_kind(sub), depth + 1, out).is_err() {
            out.truncate(before);
        }
    }
    Ok(())
}

/// `remote` and `aws` subsegments are calls; the rest is work inside the service.
fn call_kind(v: &Value) -> SpanKind {
    match v["namespace"].as_str() {
        Some("remote" | "aws") => SpanKind::Client,
        _ => SpanKind::Internal,
    }
}

/// Faults always; errors (4xx) on calls only, as the HTTP conventions say.
fn failed(v: &Value, server: bool) -> bool {
    v["fault"].as_bool() == Some(true) || (!server && v["error"].as_bool() == Some(true))
}

fn attributes(v: &Value, server: bool) -> Vec<KeyValue> {
    let mut a = Vec::new();
    let request = &v["http"]["request"];
    // Server spans carry path and query, calls the full URL (the HTTP conventions).
    if server && let Some(url) = request["url"].as_str() {
        let (path, query) = path_and_query(url);
        a.push(str_kv("url.path", path));
        if let Some(q) = query {
            a.push(str_kv("url.query", q));
        }
    }
    let mut text = |key: &str, value: &Value| {
        if let Some(s) = value.as_str() {
            a.push(str_kv(key, s));
        }
    };
    text("http.request.method", &request["method"]);
    if !server {
        text("url.full", &request["url"]);
    }
    text("user_agent.original", &request["user_agent"]);
    text("client.address", &request["client_ip"]);
    text("aws.operation", &v["aws"]["operation"]);
    if let Some(status) = v["http"]["response"]["status"].as_i64() {
        a.push(int_kv("http.response.status_code", status));
    }
    if let Some(annotations) = v["annotations"].as_object() {
        for (k, value) in annotations {
            let key = format!("aws.xray.annotations.{k}");
            match value {
                Value::String(s) => a.push(str_kv(&key, s)),
                Value::Bool(b) => a.push(bool_kv(&key, *b)),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => a.push(int_kv(&key, i)),
                    None => a.push(str_kv(&key, &n.to_string())),
                },
                _ => {}
            }
        }
    }
    a
}

fn resource(v: &Value) -> Resource {
    let mut a = vec![str_kv(
        "service.name",
        v["name"].as_str().unwrap_or("unknown"),
    )];
    let mut text = |key: &str, value: &Value| {
        if let Some(s) = value.as_str() {
            a.push(str_kv(key, s));
        }
    };
    let aws = &v["aws"];
    text("telemetry.sdk.name", &aws["xray"]["sdk"]);
    text("telemetry.sdk.version", &aws["xray"]["sdk_version"]);
    text("k8s.pod.name", &aws["eks"]["pod"]);
    text("k8s.cluster.name", &aws["eks"]["cluster_name"]);
    text("container.id", &aws["eks"]["container_id"]);
    text("host.id", &aws["ec2"]["instance_id"]);
    text("cloud.availability_zone", &aws["ec2"]["availability_zone"]);
    let platform = match v["origin"].as_str() {
        Some("AWS::EKS::Container") => Some("aws_eks"),
        Some("AWS::EC2::Instance") => Some("aws_ec2"),
        Some("AWS::ECS::Container") => Some("aws_ecs"),
        Some("AWS::ElasticBeanstalk::Environment") => Some("aws_elastic_beanstalk"),
        _ => None,
    };
    if let Some(p) = platform {
        a.push(str_kv("cloud.provider", "aws"));
        a.push(str_kv("cloud.platform", p));
    }
    Resource {
        attributes: a,
        ..Resource::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: &str = r#"{"name":"orders","id":"70de5b6f19ff9a0a","trace_id":"1-581cf771-a006649127e371903a2de979","parent_id":"53995c3f42cd8ad8","start_time":1478293361.271,"end_time":1478293361.449,"origin":"AWS::EKS::Container","http":{"request":{"method":"GET","url":"http://orders/o/1","client_ip":"10.0.0.9"},"response":{"status":503}},"fault":true,"annotations":{"tier":"gold","n":3},"aws":{"xray":{"sdk":"X-Ray for Python","sdk_version":"2.14.0"},"eks":{"pod":"orders-1","cluster_name":"prod"}},"subsegments":[{"name":"payments","id":"1111111111111111","start_time":1478293361.3,"end_time":1478293361.4,"namespace":"remote","http":{"request":{"method":"POST","url":"http://payments/pay"},"response":{"status":404}},"error":true,"subsegments":[{"name":"sign","id":"2222222222222222","start_time":1478293361.31,"end_time":1478293361.32}]}]}"#;

    fn attr<'a>(
        kvs: &'a [KeyValue],
        key: &str,
    ) -> Option<&'a opentelemetry_proto::tonic::common::v1::any_value::Value> {
        kvs.iter()
            .find(|kv| kv.key == key)?
            .value
            .as_ref()?
            .value
            .as_ref()
    }

    #[test]
    fn a_segment_and_its_subsegments_become_spans_in_the_same_trace_with_their_parents() {
        let rs = resource_spans(SEGMENT).unwrap();
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        let trace = hex_bytes("581cf771a006649127e371903a2de979");
        assert!(spans.iter().all(|s| s.trace_id == trace));
        assert_eq!(spans[0].parent_span_id, hex_bytes("53995c3f42cd8ad8"));
        assert_eq!(spans[1].parent_span_id, spans[0].span_id);
        assert_eq!(spans[2].parent_span_id, spans[1].span_id);
        let kinds: Vec<i32> = spans.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [SpanKind::Server, SpanKind::Client, SpanKind::Internal].map(|k| k as i32)
        );
        assert!(
            spans[0]
                .start_time_unix_nano
                .abs_diff(1_478_293_361_271_000_000)
                < 1_000
        );
        assert!(spans[0].status.is_some() && spans[1].status.is_some());
        assert!(spans[2].status.is_none());
        let a = &spans[0].attributes;
        assert!(attr(a, "aws.xray.annotations.tier").is_some());
        assert!(attr(a, "http.response.status_code").is_some());
        let r = &rs.resource.unwrap().attributes;
        for key in [
            "service.name",
            "k8s.pod.name",
            "k8s.cluster.name",
            "cloud.platform",
        ] {
            assert!(attr(r, key).is_some(), "{key}");
        }
    }

    #[test]
    fn in_progress_and_malformed_documents_are_refused() {
        let in_progress = SEGMENT.replace(r#""fault":true"#, r#""in_progress":true"#);
        assert!(resource_spans(&in_progress).is_err());
        assert!(resource_spans("{").is_err());
        assert!(resource_spans(r#"{"trace_id":"x","id":"70de5b6f19ff9a0a"}"#).is_err());
    }

    #[test]
    fn an_independent_subsegment_keeps_its_parent_and_call_kind() {
        let doc = r#"{"type":"subsegment","name":"db","id":"70de5b6f19ff9a0a","trace_id":"1-581cf771-a006649127e371903a2de979","parent_id":"53995c3f42cd8ad8","namespace":"remote","start_time":1.0,"end_time":2.0}"#;
        let rs = resource_spans(doc).unwrap();
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.kind, SpanKind::Client as i32);
        assert_eq!(s.parent_span_id, hex_bytes("53995c3f42cd8ad8"));
    }
}
