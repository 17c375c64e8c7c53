//! Exchanges for the trace stage's tests and the exporters' (which check the documents made
//! from these spans).

use std::net::SocketAddr;

use super::{TraceAssembler, TraceConfig};
use crate::{
    http::{
        ConnExchange, ConnMeta, Exchange, ExchangeFlags, HttpOut, RequestStart, head::RequestHead,
        head::ResponseHead,
    },
    source::{
        clock::Clock,
        event::{Isns, Role},
    },
    trace::{SpanGroup, process::ProcessInfo},
};

/// Process facts for tests: names by pid, and which pids are Go.
#[derive(Default)]
pub struct Procs {
    pub go: Vec<u32>,
}

impl ProcessInfo for Procs {
    fn name(&mut self, pid: u32) -> String {
        format!("svc{pid}")
    }
    fn moves_work_between_threads(&mut self, pid: u32) -> bool {
        self.go.contains(&pid)
    }
}

pub const MS: u64 = 1_000_000;

pub fn assembler(go: Vec<u32>) -> TraceAssembler<Procs> {
    TraceAssembler::new(
        TraceConfig::default(),
        Clock::with_offset_ns(1_700_000_000_000_000_000),
        Procs { go },
    )
}

pub struct Call {
    pub conn: u64,
    pub index: u64,
    pub role: Role,
    pub pid: u32,
    pub tid: u32,
    pub start: u64,
    pub end: u64,
    pub target: String,
    pub headers: RequestHead,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub isns: Option<Isns>,
    pub status: u16,
}

pub fn call(
    conn: u64,
    role: Role,
    pid: u32,
    tid: u32,
    start_ms: u64,
    end_ms: u64,
    target: &str,
) -> Call {
    Call {
        conn,
        index: 0,
        role,
        pid,
        tid,
        start: start_ms * MS,
        end: end_ms * MS,
        target: target.into(),
        headers: RequestHead::default(),
        local: None,
        remote: None,
        isns: None,
        status: 200,
    }
}

impl Call {
    pub fn between(mut self, local: &str, remote: &str) -> Self {
        self.local = Some(local.parse().unwrap());
        self.remote = Some(remote.parse().unwrap());
        self
    }
    /// The connection's initial sequence numbers (client's, server's), as both ends read them.
    pub fn isns(mut self, client: u32, server: u32) -> Self {
        self.isns = Some(Isns { client, server });
        self
    }
    pub fn amzn(mut self, h: &str) -> Self {
        self.headers.x_amzn_trace_id = Some(h.into());
        self
    }
    pub fn request(&self) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: self.target.clone(),
            host: Some("host:80".into()),
            ..self.headers.clone()
        }
    }
    pub fn conn_meta(&self) -> ConnMeta {
        ConnMeta {
            role: Some(self.role),
            comm: String::new(),
            local: self.local,
            remote: self.remote,
            isns: self.isns,
        }
    }
    pub fn started(&self) -> HttpOut {
        HttpOut::Started {
            start: RequestStart {
                conn_id: self.conn,
                index: self.index,
                role: self.role,
                pid: self.pid,
                tid: self.tid,
                start_ns: self.start,
                request: self.request(),
            },
            conn: self.conn_meta(),
        }
    }
    pub fn done(&self) -> HttpOut {
        HttpOut::Done(ConnExchange {
            exchange: Exchange {
                conn_id: self.conn,
                index: self.index,
                role: self.role,
                pid: self.pid,
                tid: self.tid,
                request: self.request(),
                response: Some(ResponseHead {
                    status: self.status,
                    content_length: Some(2),
                    ..ResponseHead::default()
                }),
                start_ns: self.start,
                end_ns: self.end,
                request_body_bytes: 0,
                response_body_bytes: 2,
                flags: ExchangeFlags::default(),
            },
            conn: self.conn_meta(),
        })
    }
}

/// Feeds starts and ends in time order, then builds every span.
pub fn run(a: &mut TraceAssembler<Procs>, calls: &[Call]) -> Vec<SpanGroup> {
    let mut events: Vec<(u64, u8, HttpOut)> = Vec::new();
    for c in calls {
        events.push((c.start, 0, c.started()));
        events.push((c.end, 1, c.done()));
    }
    events.sort_by_key(|(t, order, _)| (*t, *order));
    for (_, _, e) in events {
        a.on_http(e);
    }
    let mut out = Vec::new();
    a.finish(&mut out);
    out
}

/// A (pid 1) serves /a on thread 11 and calls B (pid 2) on the same node over 10.0.0.1:5000 → 10.0.0.2:80.
pub fn a_calls_b() -> Vec<Call> {
    vec![
        call(1, Role::Server, 1, 11, 0, 100, "/a"),
        call(2, Role::Client, 1, 11, 10, 90, "/b").between("10.0.0.1:5000", "10.0.0.2:80"),
        call(3, Role::Server, 2, 21, 12, 88, "/b").between("10.0.0.2:80", "10.0.0.1:5000"),
    ]
}

/// A calls B through a ClusterIP that NAT sends to B's pod address: the two ends' tuples
/// differ, their sequence numbers do not.
pub fn a_calls_b_through_nat() -> Vec<Call> {
    vec![
        call(1, Role::Server, 1, 11, 0, 100, "/a"),
        call(2, Role::Client, 1, 11, 10, 90, "/b")
            .between("10.0.0.1:5000", "10.96.0.10:80")
            .isns(0x1234_5678, 0x9abc_def0),
        call(3, Role::Server, 2, 21, 12, 88, "/b")
            .between("10.0.0.2:8080", "10.0.0.1:5000")
            .isns(0x1234_5678, 0x9abc_def0),
    ]
}

/// Node-like: a second inbound request on the same thread overlaps A's call.
pub fn two_in_flight() -> Vec<Call> {
    let mut calls = a_calls_b();
    calls.push(call(4, Role::Server, 1, 11, 5, 60, "/other"));
    calls
}

pub const FORWARDED_ROOT: &str = "1-5759e988-bd862e3fe1be46a994272793";

/// A → B where A's call leaves from another thread carrying the trace header A received.
pub fn forwarded_header() -> Vec<Call> {
    let root = FORWARDED_ROOT;
    let mut calls = a_calls_b();
    calls[0] = call(1, Role::Server, 1, 11, 0, 100, "/a")
        .amzn(&format!("Root={root};Parent=53995c3f42cd8ad8;Sampled=1"));
    calls[1] = call(2, Role::Client, 1, 99, 10, 90, "/b")
        .between("10.0.0.1:5000", "10.0.0.2:80")
        .amzn(&format!("Root={root};Parent=1111111111111111;Sampled=1"));
    calls[2] = call(3, Role::Server, 2, 21, 12, 88, "/b")
        .between("10.0.0.2:80", "10.0.0.1:5000")
        .amzn(&format!("Root={root};Parent=1111111111111111;Sampled=1"));
    calls
}

pub fn old_w3c() -> Call {
    let mut c = call(1, Role::Server, 1, 11, 0, 10, "/w3c");
    c.headers.traceparent = Some("00-00000001e8720b39541901950019ee5a-53995c3f42cd8ad8-01".into());
    c
}

pub fn late_call() -> Vec<Call> {
    vec![
        call(1, Role::Server, 1, 11, 0, 50, "/a"),
        call(2, Role::Client, 1, 11, 10, 900, "/slow-background"),
    ]
}
