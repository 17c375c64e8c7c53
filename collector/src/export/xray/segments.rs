//! Span groups → X-Ray segment documents. A server span becomes a segment and the calls made
//! while serving it its `remote` subsegments; a call under a request whose segment already
//! left becomes an independent subsegment; a call at the root of its trace becomes the
//! calling service's own segment, holding it. The resource becomes `origin`, `aws.eks`,
//! `aws.ec2` and `k8s_*` annotations, as the X-Ray SDKs' EKS and EC2 plugins fill them.

use std::collections::BTreeMap;

use super::document::{
    AwsBlock, Ec2Block, EksBlock, Http, HttpRequest, HttpResponse, Segment, XrayBlock,
    annotation_key, bounded, epoch_seconds,
};
use crate::{
    enrich,
    trace::{
        ids::new_span_id,
        span::{Note, Span, SpanGroup, SpanKind, sanitize_name},
    },
};

/// The group's top-level document (subsegments nested), before the 64 kB split.
pub fn segment(group: &SpanGroup) -> Segment {
    let first = group.first();
    match (first.kind, &first.parent_id) {
        (SpanKind::Server, _) => Segment {
            subsegments: group.spans[1..].iter().map(subsegment).collect(),
            ..server_segment(group, first)
        },
        (SpanKind::Client, Some(parent)) => Segment {
            kind: Some("subsegment"),
            trace_id: Some(first.trace_id.clone()),
            parent_id: Some(parent.clone()),
            ..subsegment(first)
        },
        (SpanKind::Client, None) => {
            let call = subsegment(first);
            Segment {
                name: group.service.clone(),
                id: new_span_id(),
                trace_id: Some(first.trace_id.clone()),
                parent_id: None,
                start_time: call.start_time,
                end_time: call.end_time,
                kind: None,
                namespace: None,
                origin: origin(group),
                http: None,
                error: call.error,
                throttle: call.throttle,
                fault: call.fault,
                annotations: resource_annotations(group),
                aws: Some(aws_block(group)),
                subsegments: vec![call],
            }
        }
    }
}

/// The documents that carry the group (split above 64 kB).
pub fn documents(group: &SpanGroup) -> Vec<String> {
    segment(group).into_documents()
}

fn server_segment(group: &SpanGroup, span: &Span) -> Segment {
    let (error, throttle, fault) = status_flags(span.http.status);
    let mut annotations = notes(span);
    annotations.extend(resource_annotations(group));
    Segment {
        name: group.service.clone(),
        id: span.span_id.clone(),
        trace_id: Some(span.trace_id.clone()),
        parent_id: span.parent_id.clone(),
        start_time: seconds(span.start_ns),
        end_time: seconds(span.end_ns),
        kind: None,
        namespace: None,
        origin: origin(group),
        http: Some(Http {
            request: HttpRequest {
                method: bounded(&span.http.method),
                url: bounded(&span.http.url),
                user_agent: span.http.user_agent.as_deref().map(bounded),
                client_ip: span.http.client_ip.clone(),
                x_forwarded_for: span.http.client_ip_forwarded,
                traced: false,
            },
            response: response(span),
        }),
        error,
        throttle,
        fault,
        annotations,
        aws: Some(aws_block(group)),
        subsegments: vec![],
    }
}

/// A call as a `remote` subsegment named after the host it called.
fn subsegment(span: &Span) -> Segment {
    let (error, throttle, fault) = status_flags(span.http.status);
    Segment {
        name: sanitize_name(&span.http.host),
        id: span.span_id.clone(),
        trace_id: None,
        parent_id: None,
        start_time: seconds(span.start_ns),
        end_time: seconds(span.end_ns),
        kind: None,
        namespace: Some("remote"),
        origin: None,
        http: Some(Http {
            request: HttpRequest {
                method: bounded(&span.http.method),
                url: bounded(&span.http.url),
                user_agent: None,
                client_ip: None,
                x_forwarded_for: false,
                traced: span.callee_traced,
            },
            response: response(span),
        }),
        error,
        throttle,
        fault,
        annotations: notes(span),
        aws: None,
        subsegments: vec![],
    }
}

fn seconds(epoch_ns: u64) -> f64 {
    epoch_seconds(epoch_ns as f64 / 1e9)
}

fn response(span: &Span) -> Option<HttpResponse> {
    Some(HttpResponse {
        status: span.http.status?,
        content_length: span.http.response_bytes,
    })
}

/// error for 4xx, throttle (and error) for 429, fault for 5xx.
pub fn status_flags(status: Option<u16>) -> (bool, bool, bool) {
    match status {
        Some(429) => (true, true, false),
        Some(s) if (400..500).contains(&s) => (true, false, false),
        Some(s) if (500..600).contains(&s) => (false, false, true),
        _ => (false, false, false),
    }
}

fn notes(span: &Span) -> BTreeMap<String, serde_json::Value> {
    span.notes
        .iter()
        .map(|n| match n {
            Note::Lineage(l) => ("lineage".to_owned(), l.clone().into()),
            Note::RejectedTraceparent(tp) => ("w3c_traceparent".to_owned(), bounded(tp).into()),
            Note::EndedAtStop => ("ended_at_collector_stop".to_owned(), true.into()),
        })
        .collect()
}

fn origin(group: &SpanGroup) -> Option<String> {
    Some(enrich::origin(&group.resource))
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
}

/// Says who made the segment, as the SDKs do, and where it ran.
fn aws_block(group: &SpanGroup) -> AwsBlock {
    let r = &group.resource;
    AwsBlock {
        xray: Some(XrayBlock {
            sdk: "ebpf-collector",
            sdk_version: env!("CARGO_PKG_VERSION"),
            auto_instrumentation: true,
        }),
        eks: r.pod.as_ref().map(|pod| EksBlock {
            pod: bounded(&pod.name),
            cluster_name: r.cluster.as_deref().map(bounded),
            container_id: pod.container_id.as_deref().map(bounded),
        }),
        ec2: r.ec2.as_ref().map(|ec2| Ec2Block {
            instance_id: bounded(&ec2.instance_id),
            availability_zone: bounded(&ec2.availability_zone),
        }),
    }
}

/// `k8s_*` annotations of a pod's segments (X-Ray indexes annotations for filtering).
fn resource_annotations(group: &SpanGroup) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let Some(pod) = &group.resource.pod else {
        return out;
    };
    let workload = pod.workload.as_ref();
    for (key, value) in [
        ("k8s_namespace", Some(pod.namespace.as_str())),
        ("k8s_pod", Some(pod.name.as_str())),
        ("k8s_container", pod.container.as_deref()),
        ("k8s_workload", workload.map(|(_, n)| n.as_str())),
        ("k8s_workload_kind", workload.map(|(k, _)| k.as_str())),
        ("k8s_node", group.resource.node.as_deref()),
    ] {
        if let Some(v) = value {
            out.insert(annotation_key(key), bounded(v).into());
        }
    }
    out
}

#[cfg(test)]
mod tests;
