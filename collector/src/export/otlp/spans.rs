//! Span groups → OTLP `ResourceSpans`, with the OpenTelemetry semantic conventions' names:
//! the resource says where the process runs (`service.name`, `k8s.*`, `container.id`,
//! `cloud.*`), each span what the HTTP exchange was (`http.request.method`, `url.*`,
//! `server.*`, `client.address`, `http.response.status_code`, `user_agent.original`).

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use prost::Message as _;

use crate::trace::span::{self, Note, SpanGroup};

/// The X-Ray OTLP endpoint's limits, which we keep for every backend.
pub const MAX_SPAN_BYTES: usize = 200 * 1024;
const MAX_FUTURE_NS: u64 = 2 * 3600 * 1_000_000_000;
const MAX_PAST_NS: u64 = 14 * 24 * 3600 * 1_000_000_000;

/// What converting a group did besides converting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// Spans whose start lies more than 2 h ahead or 14 days back: dropped.
    pub out_of_range: u64,
    /// Spans over 200 kB whose longest attributes were cut.
    pub cut: u64,
}

/// The group as one `ResourceSpans`, or none when no span of it may be sent.
pub fn resource_spans(
    group: &SpanGroup,
    now_ns: u64,
    done: &mut Converted,
) -> Option<ResourceSpans> {
    let mut spans = Vec::with_capacity(group.spans.len());
    for s in &group.spans {
        if s.start_ns > now_ns.saturating_add(MAX_FUTURE_NS)
            || s.start_ns < now_ns.saturating_sub(MAX_PAST_NS)
        {
            done.out_of_range += 1;
            continue;
        }
        let mut out = otlp_span(s);
        if cut_to_fit(&mut out) {
            done.cut += 1;
        }
        spans.push(out);
    }
    if spans.is_empty() {
        return None;
    }
    Some(ResourceSpans {
        resource: Some(resource(group)),
        scope_spans: vec![ScopeSpans {
            scope: Some(scope()),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    })
}

/// Who made the spans.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "ebpf-collector".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

fn otlp_span(s: &span::Span) -> Span {
    let server = s.kind == span::SpanKind::Server;
    let h = &s.http;
    let mut attributes = vec![str_kv("http.request.method", &h.method)];
    if server {
        let (path, query) = path_and_query(&h.url);
        attributes.push(str_kv("url.path", path));
        if let Some(q) = query {
            attributes.push(str_kv("url.query", q));
        }
        attributes.push(str_kv("url.scheme", "http"));
    } else {
        attributes.push(str_kv("url.full", &h.url));
    }
    if !h.host.is_empty() {
        attributes.push(str_kv("server.address", &h.host));
    }
    if s.port != 0 {
        attributes.push(int_kv("server.port", i64::from(s.port)));
    }
    if let Some(ip) = &h.client_ip {
        attributes.push(str_kv("client.address", ip));
    }
    if let Some(ua) = &h.user_agent {
        attributes.push(str_kv("user_agent.original", ua));
    }
    if let Some(status) = h.status {
        attributes.push(int_kv("http.response.status_code", i64::from(status)));
    }
    if let Some(e) = error_type(server, h.status) {
        attributes.push(str_kv("error.type", &e));
    }
    for note in &s.notes {
        attributes.push(match note {
            Note::Lineage(l) => str_kv("aws.xray.lineage", l),
            Note::RejectedTraceparent(tp) => str_kv("collector.rejected_traceparent", tp),
            Note::EndedAtStop => bool_kv("collector.ended_at_stop", true),
        });
    }
    Span {
        trace_id: trace_id_bytes(&s.trace_id),
        span_id: hex_bytes(&s.span_id),
        parent_span_id: s.parent_id.as_deref().map(hex_bytes).unwrap_or_default(),
        name: h.method.clone(),
        kind: if server {
            SpanKind::Server
        } else {
            SpanKind::Client
        } as i32,
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes,
        status: status(server, h.status),
        ..Span::default()
    }
}

/// Error for 5xx on server spans, 4xx and 5xx on client spans, and for an exchange that
/// ended without a response (the HTTP conventions); otherwise unset.
fn status(server: bool, status: Option<u16>) -> Option<Status> {
    let error_from = if server { 500 } else { 400 };
    match status {
        Some(code) if !(error_from..600).contains(&code) => None,
        _ => Some(Status {
            message: String::new(),
            code: StatusCode::Error as i32,
        }),
    }
}

/// `error.type` of a failed exchange: the status code, or `incomplete` without a response.
fn error_type(server: bool, status: Option<u16>) -> Option<String> {
    self::status(server, status)?;
    Some(status.map_or_else(|| "incomplete".to_owned(), |c| c.to_string()))
}

fn resource(group: &SpanGroup) -> Resource {
    let r = &group.resource;
    let mut a = vec![
        str_kv("service.name", &group.service),
        str_kv("telemetry.sdk.name", "ebpf-collector"),
        str_kv("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    if group.pid != 0 {
        a.push(int_kv("process.pid", i64::from(group.pid)));
    }
    if !group.process.is_empty() {
        a.push(str_kv("process.executable.name", &group.process));
    }
    if let Some(pod) = &r.pod {
        a.push(str_kv("k8s.pod.name", &pod.name));
        a.push(str_kv("k8s.pod.uid", &pod.uid));
        a.push(str_kv("k8s.namespace.name", &pod.namespace));
        if let Some(c) = &pod.container {
            a.push(str_kv("k8s.container.name", c));
        }
        if let Some(id) = &pod.container_id {
            a.push(str_kv("container.id", id));
        }
        if let Some((kind, name)) = &pod.workload
            && let Some(key) = workload_key(kind)
        {
            a.push(str_kv(key, name));
        }
    }
    if let Some(node) = &r.node {
        a.push(str_kv("k8s.node.name", node));
    }
    if let Some(cluster) = &r.cluster {
        a.push(str_kv("k8s.cluster.name", cluster));
    }
    if let Some(ec2) = &r.ec2 {
        a.push(str_kv("cloud.provider", "aws"));
        let platform = if r.pod.is_some() {
            "aws_eks"
        } else {
            "aws_ec2"
        };
        a.push(str_kv("cloud.platform", platform));
        a.push(str_kv("cloud.availability_zone", &ec2.availability_zone));
        a.push(str_kv("host.id", &ec2.instance_id));
    }
    Resource {
        attributes: a,
        ..Resource::default()
    }
}

/// `k8s.<workload>.name` for the controllers the conventions name.
fn workload_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "k8s.deployment.name",
        "StatefulSet" => "k8s.statefulset.name",
        "DaemonSet" => "k8s.daemonset.name",
        "ReplicaSet" => "k8s.replicaset.name",
        "Job" => "k8s.job.name",
        "CronJob" => "k8s.cronjob.name",
        _ => return None,
    })
}

/// A span above 200 kB loses the tail of its longest string attributes until it fits.
fn cut_to_fit(span: &mut Span) -> bool {
    let mut cut = false;
    while span.encoded_len() > MAX_SPAN_BYTES {
        let over = span.encoded_len() - MAX_SPAN_BYTES;
        let longest = span
            .attributes
            .iter_mut()
            .filter_map(|kv| match kv.value.as_mut()?.value.as_mut()? {
                Value::StringValue(s) => Some(s),
                _ => None,
            })
            .max_by_key(|s| s.len());
        let Some(s) = longest else {
            break;
        };
        if s.is_empty() {
            break; // nothing left to cut: the span goes as it is
        }
        let mut keep = s.len().saturating_sub(over.max(s.len() / 2));
        while !s.is_char_boundary(keep) {
            keep -= 1;
        }
        s.truncate(keep);
        cut = true;
    }
    cut
}

/// `/p?q` of `http://host:port/p?q`.
pub fn path_and_query(url: &str) -> (&str, Option<&str>) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// X-Ray's `1-<8 hex>-<24 hex>` is the W3C id's 32 hex digits.
pub fn trace_id_bytes(xray: &str) -> Vec<u8> {
    let hex: String = xray.get(2..).unwrap_or_default().replace('-', "");
    hex_bytes(&hex)
}

pub fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

pub fn str_kv(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_owned()))
}

pub fn int_kv(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

pub fn bool_kv(key: &str, value: bool) -> KeyValue {
    kv(key, Value::BoolValue(value))
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests;
