//! The span: what the trace stage decided about one request served or one call made, in no
//! exporter's format. Every later stage works on `SpanGroup`s — enrichment adds the resource,
//! filtering and sampling keep or drop whole groups, and each exporter converts them to its
//! wire format (X-Ray segment documents, OTLP).

use std::{collections::BTreeMap, sync::Arc};

/// Names: at most 200 characters (X-Ray's limit; OpenTelemetry backends take them too).
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// A request this process served.
    Server,
    /// A call this process made.
    Client,
}

/// What the trace stage knows of a span besides its HTTP fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// The incoming header's `Lineage`, passed through.
    Lineage(String),
    /// A `traceparent` that could not become this trace's id (too old, or malformed).
    RejectedTraceparent(String),
    /// Still open when the collector stopped: it ends at the stop time.
    EndedAtStop,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSpan {
    pub method: String,
    /// The URL as requested (query strings redacted by the HTTP stage).
    pub url: String,
    /// The host called (client spans) or served (server spans): `Host` without its port,
    /// else the address.
    pub host: String,
    pub user_agent: Option<String>,
    /// Server spans: the caller (the first X-Forwarded-For entry, else the peer address).
    pub client_ip: Option<String>,
    /// `client_ip` came from X-Forwarded-For (not verified).
    pub client_ip_forwarded: bool,
    /// None when the exchange ended without a response.
    pub status: Option<u16>,
    /// The response body's length.
    pub response_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub kind: SpanKind,
    /// X-Ray's form (`1-<8 hex epoch seconds>-<24 hex>`), which is also a W3C id's 32 hex.
    pub trace_id: String,
    /// 16 hex.
    pub span_id: String,
    pub parent_id: Option<String>,
    /// Unix epoch nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub http: HttpSpan,
    /// The port served (server spans) or called (client spans).
    pub port: u16,
    /// Client spans: the callee is traced on this node (its server span has this parent).
    pub callee_traced: bool,
    pub notes: Vec<Note>,
}

/// The trace's root request: what sampling decides on, carried by every group of the trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceRoot {
    pub pid: u32,
    pub host: String,
    pub method: String,
    pub path: String,
    /// The caller's decision (`Sampled=1` / `0` in the incoming header).
    pub forced: Option<bool>,
}

/// Where a process runs, as enrichment learns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    pub pod: Option<PodResource>,
    pub ec2: Option<Ec2Resource>,
    /// This node's name.
    pub node: Option<String>,
    pub cluster: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodResource {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub container_id: Option<String>,
    pub container: Option<String>,
    /// (kind, name): Deployment, StatefulSet, DaemonSet, ...
    pub workload: Option<(String, String)>,
    /// For the label-selector filters only: labels are never exported (they may hold
    /// anything).
    pub labels: Arc<BTreeMap<String, String>>,
    /// The pod opts out (`xray-collector.io/exclude: "true"`).
    pub opted_out: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ec2Resource {
    pub instance_id: String,
    pub availability_zone: String,
}

/// The service a trace's root request belongs to, as sampling rules name it: filled by
/// enrichment, which knows the pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootService {
    pub name: String,
    /// `AWS::EKS::Container`, `AWS::EC2::Instance` or empty.
    pub origin: &'static str,
}

/// Spans of one process that leave together: a server span and the calls made while serving
/// it (`spans[1..]`, each the first one's child), or one call on its own — under a request
/// whose group already left (`parent_id` set), or the root of its trace.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanGroup {
    pub spans: Vec<Span>,
    pub pid: u32,
    /// The process name (enrichment; for filters).
    pub process: String,
    /// The service: `--service-name`, else the process name; enrichment may rename it.
    pub service: String,
    pub resource: Resource,
    pub root: Arc<TraceRoot>,
    /// The root's service, for sampling rules (enrichment).
    pub root_service: Option<RootService>,
}

impl SpanGroup {
    pub fn first(&self) -> &Span {
        &self.spans[0]
    }

    pub fn trace_id(&self) -> &str {
        &self.spans[0].trace_id
    }

    /// A call sent on its own under a request whose group already left.
    pub fn is_late_call(&self) -> bool {
        let s = self.first();
        s.kind == SpanKind::Client && s.parent_id.is_some()
    }
}

/// The contract of every stage after the trace stage (enrichment, the filters, sampling):
/// it takes the span groups the trace stage built, changes them or drops those that must not
/// go out, and says what it counted. The pipeline runs them in order, so neither the wiring
/// nor the counter list names a stage's fields.
pub trait GroupStage {
    /// The groups the trace stage just built; `wall_secs` is now, in Unix seconds.
    fn process(&mut self, groups: &mut Vec<SpanGroup>, wall_secs: u64);
    /// Periodic upkeep, at `now_ns` on the kernel's clock.
    fn tick(&mut self, _now_ns: u64) {}
    /// Counters, named `<stage>_<counter>`.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// What the stage holds right now (gauges).
    fn levels(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A service name every backend accepts: Unicode letters, digits, whitespace and
/// `_ . : / % & # = + \ - @`, at most 200 characters; never empty.
pub fn sanitize_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/%&#=+\\-@".contains(*c))
        .take(MAX_NAME_CHARS)
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        "unknown".to_owned()
    } else {
        clean.to_owned()
    }
}

/// Span groups for the tests of later stages.
#[cfg(test)]
pub mod fixtures {
    use super::*;

    /// A pod of Deployment `checkout` in namespace `shop`, on node-a of cluster prod.
    pub fn pod_resource() -> Resource {
        Resource {
            pod: Some(PodResource {
                name: "checkout-7d4b9c8f6d-x2x9q".into(),
                namespace: "shop".into(),
                uid: "7b2c1d0e".into(),
                container_id: Some("3f9e4b1a".into()),
                container: Some("app".into()),
                workload: Some(("Deployment".into(), "checkout".into())),
                ..PodResource::default()
            }),
            ec2: None,
            node: Some("node-a".into()),
            cluster: Some("prod".into()),
        }
    }

    /// `service` (pid `pid`) served `GET http://host:80/x` with 200 in 100 ms.
    pub fn server_group(service: &str, pid: u32) -> SpanGroup {
        SpanGroup {
            spans: vec![Span {
                kind: SpanKind::Server,
                trace_id: "1-5759e988-bd862e3fe1be46a994272793".into(),
                span_id: "53995c3f42cd8ad8".into(),
                parent_id: None,
                start_ns: 1_700_000_000_000_000_000,
                end_ns: 1_700_000_000_100_000_000,
                http: HttpSpan {
                    method: "GET".into(),
                    url: "http://host:80/x".into(),
                    host: "host".into(),
                    status: Some(200),
                    response_bytes: Some(2),
                    ..HttpSpan::default()
                },
                port: 8080,
                callee_traced: false,
                notes: vec![],
            }],
            pid,
            process: String::new(),
            service: service.into(),
            resource: Resource::default(),
            root: Arc::new(TraceRoot {
                pid,
                ..TraceRoot::default()
            }),
            root_service: None,
        }
    }
}
