//! Stage 4: HTTP exchanges → linked spans, in groups that leave together (`span.rs`).
//!
//! Every request gets its span id when it starts. Decisions — which inbound request an
//! outbound call belongs to, which trace a request joins — are made `hold` after an exchange
//! ends, when every event before that has arrived, and they are made only on sound signals:
//! - an inbound request becomes a server span; an outbound call a client span, the child of
//!   the one inbound request in flight on the same thread (never for runtimes that move work
//!   between threads, such as Go), or of the request whose trace id the app itself forwarded;
//! - when both ends of a TCP connection are on this node, the server's span joins the
//!   client's trace, with the client's span as parent (the connection's initial sequence
//!   numbers, which Service NAT leaves alone, and the order on the connection: `links.rs`);
//! - an incoming X-Amzn-Trace-Id (or a recent W3C traceparent) is honoured; Sampled=0 is not
//!   exported.
//!
//! Anything else stays unparented and counted: a wrong parent is worse than none.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use super::{
    header,
    ids::{new_span_id, new_trace_id},
    links::{Caller, Key, Links},
    process::ProcessInfo,
    span::{HttpSpan, Note, Resource, Span, SpanGroup, SpanKind, TraceRoot, sanitize_name},
};
use crate::counters::counters;
use crate::{
    http::{ConnExchange, ConnMeta, HttpOut, RequestStart, request_url},
    source::{clock::Clock, event::Role},
};

#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The service name of every process (default: the process name).
    pub service_name: Option<String>,
    /// How long after an exchange ends its span is built.
    pub hold_ns: u64,
    /// How long finished requests are remembered for links that arrive late.
    pub keep_ns: u64,
    /// Requests remembered at once; beyond, the oldest are forgotten (counted).
    pub max_requests: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            service_name: None,
            hold_ns: 500_000_000,
            keep_ns: 2_000_000_000,
            max_requests: 100_000,
        }
    }
}

counters! {
    pub struct TraceStats("trace") {
        /// Server spans (each with the calls nested in it).
        pub segments,
        /// Calls nested in the request that made them.
        pub subsegments_nested,
        /// Calls sent on their own: their request's group had already left.
        pub subsegments_independent,
        /// Outbound calls with no inbound request in flight: the root of their trace.
        pub client_segments,
        pub linked_same_node,
        /// Same-node links refused: a connection key (sequence numbers) claimed by two
        /// connections at once — wrapped, or a collision.
        pub link_key_collisions,
        /// Server requests left unlinked because their key had collided.
        pub unlinked_key_collision,
        pub linked_by_header,
        pub parented_by_thread,
        pub parented_by_forwarded_header,
        /// Outbound calls left unparented: several inbound requests in flight on the thread.
        pub unparented_ambiguous,
        /// Outbound calls left unparented: the runtime moves work between threads.
        pub unparented_thread_hopping,
        pub not_sampled,
        pub forgotten,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParentReason {
    Thread,
    ForwardedHeader,
    NoneInFlight,
    Ambiguous,
    ThreadHopping,
}

#[derive(Clone, Debug)]
struct Identity {
    trace_id: String,
    /// The parent span: from the incoming header, or the caller's span on this node.
    parent_id: Option<String>,
    sampled: Option<bool>,
    notes: Vec<Note>,
    via_link: bool,
    via_header: bool,
    /// The request at the root of the trace (what sampling decides on).
    root: Arc<TraceRoot>,
}

struct Req {
    start: RequestStart,
    conn: ConnMeta,
    span_id: String,
    exchange: Option<ConnExchange>,
    end_ns: Option<u64>,
    identity: Option<Identity>,
    parent: Option<(Option<Key>, ParentReason)>,
    /// Outbound calls nested in this inbound request's segment.
    children: Vec<Key>,
    /// Outbound: a traced callee on this node named this call its parent.
    linked: bool,
    emitted: bool,
}

/// The inbound requests a thread served: the ones still open by start, and the ended ones by
/// end, so "what was in flight at t" only looks at requests that were open at t.
#[derive(Default)]
struct ThreadRequests {
    open: BTreeSet<(u64, Key)>,
    ended: BTreeMap<(u64, Key), u64>, // (end, key) → start
}

impl ThreadRequests {
    /// Up to two requests in flight at `t`: two are enough to call it ambiguous.
    fn in_flight_at(&self, t: u64) -> Vec<Key> {
        let mut found: Vec<Key> = self
            .open
            .range(..=(t, (u64::MAX, u64::MAX)))
            .take(2)
            .map(|(_, k)| *k)
            .collect();
        for ((_, k), start) in self.ended.range((t, (0, 0))..) {
            if found.len() >= 2 {
                break;
            }
            if *start <= t {
                found.push(*k);
            }
        }
        found
    }

    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.ended.is_empty()
    }
}

pub struct TraceAssembler<P: ProcessInfo> {
    config: TraceConfig,
    clock: Clock,
    procs: P,
    reqs: HashMap<Key, Box<Req>>,
    servers_by_thread: HashMap<(u32, u32), ThreadRequests>,
    /// Inbound requests whose trace id came in a header, by (pid, trace id): what an app that
    /// forwards that header is serving.
    servers_by_trace: HashMap<(u32, String), Vec<Key>>,
    /// Requests in the order they started (to forget the oldest when full), and emitted ones
    /// in the order they were emitted — by end time, through `ready` — to forget them after
    /// `keep`. Both are consumed from the front; keys already forgotten are skipped there.
    by_start: VecDeque<Key>,
    finished: VecDeque<(u64, Key)>,
    links: Links,
    /// Finished exchanges by end time, waiting for `hold`.
    ready: BinaryHeap<Reverse<(u64, Key)>>,
    /// Service names by pid (bounded: cleared when full).
    names: HashMap<u32, String>,
    pub stats: TraceStats,
}

impl<P: ProcessInfo> TraceAssembler<P> {
    pub fn new(config: TraceConfig, clock: Clock, procs: P) -> Self {
        Self {
            config,
            clock,
            procs,
            reqs: HashMap::new(),
            servers_by_thread: HashMap::new(),
            servers_by_trace: HashMap::new(),
            by_start: VecDeque::new(),
            finished: VecDeque::new(),
            links: Links::default(),
            ready: BinaryHeap::new(),
            names: HashMap::new(),

            stats: TraceStats::default(),
        }
    }

    pub fn on_http(&mut self, event: HttpOut) {
        match event {
            HttpOut::Started { start, conn } => self.started(start, conn),
            HttpOut::Done(e) => self.done(e),
        }
    }

    /// Builds the spans of exchanges that ended at least `hold` before `now_ns`, and
    /// forgets requests older than `keep`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<SpanGroup>) {
        while let Some(Reverse((end, key))) = self.ready.peek().copied() {
            if end.saturating_add(self.config.hold_ns) > now_ns {
                break;
            }
            self.ready.pop();
            self.emit(key, out);
        }
        self.forget(now_ns);
    }

    /// Builds every finished exchange's spans now (shutdown).
    pub fn finish(&mut self, out: &mut Vec<SpanGroup>) {
        self.tick(u64::MAX, out);
    }

    pub fn remembered(&self) -> usize {
        self.reqs.len()
    }

    fn started(&mut self, start: RequestStart, conn: ConnMeta) {
        let key = (start.conn_id, start.index);
        if self.reqs.len() >= self.config.max_requests {
            self.forget_oldest();
        }
        if self.links.insert(key, start.role, &conn, start.index) {
            self.stats.link_key_collisions += 1;
        }
        match start.role {
            Role::Client => {}
            _ => {
                self.servers_by_thread
                    .entry((start.pid, start.tid))
                    .or_default()
                    .open
                    .insert((start.start_ns, key));
                if let Some(root) = incoming_trace_id(&start, self.epoch_secs(start.start_ns)) {
                    self.servers_by_trace
                        .entry((start.pid, root))
                        .or_default()
                        .push(key);
                }
            }
        }
        self.by_start.push_back(key);
        let req = Req {
            start,
            conn,
            span_id: new_span_id(),
            exchange: None,
            end_ns: None,
            identity: None,
            parent: None,
            children: Vec::new(),
            linked: false,
            emitted: false,
        };
        self.reqs.insert(key, Box::new(req));
    }

    fn done(&mut self, e: ConnExchange) {
        let key = (e.exchange.conn_id, e.exchange.index);
        let end = e.exchange.end_ns;
        let Some(req) = self.reqs.get_mut(&key) else {
            return;
        };
        req.end_ns = Some(end);
        req.exchange = Some(e);
        if req.start.role != Role::Client
            && let Some(t) = self
                .servers_by_thread
                .get_mut(&(req.start.pid, req.start.tid))
        {
            t.open.remove(&(req.start.start_ns, key));
            t.ended.insert((end, key), req.start.start_ns);
        }
        self.ready.push(Reverse((end, key)));
    }

    fn emit(&mut self, key: Key, out: &mut Vec<SpanGroup>) {
        let Some(role) = self.reqs.get(&key).map(|r| r.start.role) else {
            return;
        };
        if role == Role::Client {
            self.emit_client(key, out);
        } else {
            self.emit_server(key, out);
        }
    }

    fn emit_server(&mut self, key: Key, out: &mut Vec<SpanGroup>) {
        let identity = self.identity(key, 0);
        let req = self.reqs.get_mut(&key).expect("present");
        req.emitted = true;
        if identity.sampled == Some(false) {
            self.stats.not_sampled += 1;
            self.emitted(key);
            return;
        }
        if identity.via_link {
            self.stats.linked_same_node += 1;
        }
        if identity.via_header {
            self.stats.linked_by_header += 1;
        }
        let children = std::mem::take(&mut req.children);
        let server = self.server_span(key, &identity);
        let (trace_id, parent_id) = (server.trace_id.clone(), server.span_id.clone());
        let mut spans = vec![server];
        for c in children {
            if let Some(mut call) = self.client_span(&trace_id, c) {
                call.parent_id = Some(parent_id.clone());
                spans.push(call);
                self.stats.subsegments_nested += 1;
            }
            self.emitted(c);
        }
        self.stats.segments += 1;
        out.push(self.group(key, spans, &identity));
        self.emitted(key);
    }

    fn emit_client(&mut self, key: Key, out: &mut Vec<SpanGroup>) {
        let (parent, reason) = self.parent(key);
        match reason {
            ParentReason::Thread => self.stats.parented_by_thread += 1,
            ParentReason::ForwardedHeader => self.stats.parented_by_forwarded_header += 1,
            ParentReason::Ambiguous => self.stats.unparented_ambiguous += 1,
            ParentReason::ThreadHopping => self.stats.unparented_thread_hopping += 1,
            ParentReason::NoneInFlight => {}
        }
        let identity = self.identity(key, 0);
        self.reqs.get_mut(&key).expect("present").emitted = true;
        if identity.sampled == Some(false) {
            self.stats.not_sampled += 1;
            self.emitted(key);
            return;
        }
        let parent_id = match parent {
            // Nested: the parent's group carries it, and releases it once built.
            Some(p) if self.reqs.get(&p).is_some_and(|r| !r.emitted) => {
                self.reqs.get_mut(&p).expect("checked").children.push(key);
                return;
            }
            // The inbound request's group already left: this call goes on its own.
            Some(p) => self.reqs.get(&p).map(|r| r.span_id.clone()),
            // No inbound request owns this call: the root of its trace.
            None => None,
        };
        if let Some(mut call) = self.client_span(&identity.trace_id, key) {
            match parent_id {
                Some(_) => self.stats.subsegments_independent += 1,
                None => self.stats.client_segments += 1,
            }
            call.parent_id = parent_id;
            let group = self.group(key, vec![call], &identity);
            out.push(group);
        }
        self.emitted(key);
    }

    fn group(&mut self, key: Key, spans: Vec<Span>, identity: &Identity) -> SpanGroup {
        SpanGroup {
            spans,
            pid: self.reqs[&key].start.pid,
            process: String::new(),
            service: self.service_name(key),
            resource: Resource::default(),
            root: identity.root.clone(),
            root_service: None,
        }
    }

    /// Which inbound request an outbound call belongs to (memoized).
    fn parent(&mut self, key: Key) -> (Option<Key>, ParentReason) {
        let req = &self.reqs[&key];
        if let Some(p) = req.parent {
            return p;
        }
        let (pid, tid, t) = (req.start.pid, req.start.tid, req.start.start_ns);
        let forwarded = incoming_trace_id(&req.start, self.epoch_secs(t));
        let decision = if let Some(root) = forwarded {
            // The app forwarded a trace id it received: the inbound request of that trace in
            // flight in the same process owns the call.
            let matching: Vec<Key> = self
                .servers_by_trace
                .get(&(pid, root))
                .into_iter()
                .flatten()
                .copied()
                .filter(|k| {
                    self.reqs
                        .get(k)
                        .is_some_and(|r| r.start.start_ns <= t && r.end_ns.is_none_or(|e| e >= t))
                })
                .take(2)
                .collect();
            match matching.as_slice() {
                [one] => (Some(*one), ParentReason::ForwardedHeader),
                [] => (None, ParentReason::NoneInFlight),
                _ => (None, ParentReason::Ambiguous),
            }
        } else if self.procs.moves_work_between_threads(pid) {
            (None, ParentReason::ThreadHopping)
        } else {
            let in_flight: Vec<Key> = self
                .servers_by_thread
                .get(&(pid, tid))
                .map(|r| r.in_flight_at(t))
                .unwrap_or_default();
            match in_flight.as_slice() {
                [one] => (Some(*one), ParentReason::Thread),
                [] => (None, ParentReason::NoneInFlight),
                _ => (None, ParentReason::Ambiguous),
            }
        };
        self.reqs.get_mut(&key).expect("present").parent = Some(decision);
        decision
    }

    /// The trace a request belongs to (memoized). An outbound call without a parent starts
    /// its own trace (it is the root span; exporters that need a segment around it make one).
    fn identity(&mut self, key: Key, depth: u32) -> Identity {
        if let Some(id) = self.reqs.get(&key).and_then(|r| r.identity.clone()) {
            return id;
        }
        let req = &self.reqs[&key];
        let start_secs = self.epoch_secs(req.start.start_ns);
        let identity = match req.start.role {
            Role::Client => match self.parent(key).0 {
                Some(p) if depth < 16 => {
                    let parent = self.identity(p, depth + 1);
                    Identity {
                        parent_id: None,
                        via_link: false,
                        via_header: false,
                        notes: vec![],
                        ..parent
                    }
                }
                _ => Identity {
                    trace_id: new_trace_id(start_secs),
                    parent_id: None,
                    sampled: None,
                    notes: vec![],
                    via_link: false,
                    via_header: false,
                    root: {
                        let req = &self.reqs[&key];
                        root_request(&req.start, &req.conn, None)
                    },
                },
            },
            _ => {
                let incoming = header::incoming(
                    req.start.request.x_amzn_trace_id.as_deref(),
                    req.start.request.traceparent.as_deref(),
                    start_secs,
                );
                let caller = match self.links.caller(&req.conn, req.start.index) {
                    Caller::Found(c) => Some(c),
                    Caller::None => None,
                    Caller::Collided => {
                        self.stats.unlinked_key_collision += 1;
                        None
                    }
                };
                if let Some(trace_id) = incoming.trace_id.clone() {
                    let notes = incoming.lineage.map(Note::Lineage).into_iter().collect();
                    Identity {
                        trace_id,
                        parent_id: incoming.parent_id,
                        sampled: incoming.sampled,
                        notes,
                        via_link: false,
                        via_header: true,
                        root: root_request(&req.start, &req.conn, incoming.sampled),
                    }
                } else if let Some(c) = caller.filter(|c| self.reqs.contains_key(c) && depth < 16) {
                    let caller_trace = self.identity(c, depth + 1);
                    let client = self.reqs.get_mut(&c).expect("checked");
                    client.linked = true;
                    Identity {
                        trace_id: caller_trace.trace_id,
                        parent_id: Some(client.span_id.clone()),
                        sampled: caller_trace.sampled,
                        notes: vec![],
                        via_link: true,
                        via_header: false,
                        root: caller_trace.root,
                    }
                } else {
                    let notes = incoming
                        .rejected_traceparent
                        .map(Note::RejectedTraceparent)
                        .into_iter()
                        .collect();
                    Identity {
                        trace_id: new_trace_id(start_secs),
                        parent_id: None,
                        sampled: incoming.sampled,
                        notes,
                        via_link: false,
                        via_header: false,
                        root: root_request(&req.start, &req.conn, incoming.sampled),
                    }
                }
            }
        };
        self.reqs.get_mut(&key).expect("present").identity = Some(identity.clone());
        identity
    }

    fn server_span(&mut self, key: Key, identity: &Identity) -> Span {
        let req = &self.reqs[&key];
        let e = req.exchange.as_ref().expect("emitted when done");
        let x = &e.exchange;
        let (client_ip, forwarded) = match x
            .request
            .x_forwarded_for
            .as_deref()
            .and_then(|v| v.split(',').next())
        {
            Some(first) if !first.trim().is_empty() => (Some(first.trim().to_owned()), true),
            _ => (e.conn.remote.map(|a| a.ip().to_string()), false),
        };
        let mut notes = identity.notes.clone();
        notes.extend(ended_at_stop(x));
        Span {
            kind: SpanKind::Server,
            trace_id: identity.trace_id.clone(),
            span_id: req.span_id.clone(),
            parent_id: identity.parent_id.clone(),
            start_ns: self.epoch_ns(x.start_ns),
            end_ns: self.epoch_ns(x.end_ns),
            http: HttpSpan {
                client_ip,
                client_ip_forwarded: forwarded,
                ..http_span(e, e.conn.local)
            },
            port: e.conn.local.map_or(0, |a| a.port()),
            callee_traced: false,
            notes,
        }
    }

    /// An outbound call, named after the host it called.
    fn client_span(&self, trace_id: &str, key: Key) -> Option<Span> {
        let req = self.reqs.get(&key)?;
        let e = req.exchange.as_ref()?;
        let x = &e.exchange;
        Some(Span {
            kind: SpanKind::Client,
            trace_id: trace_id.to_owned(),
            span_id: req.span_id.clone(),
            parent_id: None,
            start_ns: self.epoch_ns(x.start_ns),
            end_ns: self.epoch_ns(x.end_ns),
            http: http_span(e, e.conn.remote),
            port: e.conn.remote.map_or(0, |a| a.port()),
            callee_traced: req.linked,
            notes: ended_at_stop(x).collect(),
        })
    }

    /// The flag's name, else the process name (else the name seen at connection time).
    fn service_name(&mut self, key: Key) -> String {
        if let Some(name) = &self.config.service_name {
            return sanitize_name(name);
        }
        let Some(r) = self.reqs.get(&key) else {
            return "unknown".to_owned();
        };
        let pid = r.start.pid;
        if let Some(name) = self.names.get(&pid) {
            return name.clone();
        }
        let fallback = r.conn.comm.clone();
        let name = self.procs.name(pid);
        let name = sanitize_name(if name.is_empty() { &fallback } else { &name });
        if self.names.len() >= 4096 {
            self.names.clear();
        }
        self.names.insert(pid, name.clone());
        name
    }

    fn epoch_secs(&self, ktime_ns: u64) -> u64 {
        self.clock.epoch_seconds(ktime_ns).max(0.0) as u64
    }

    fn epoch_ns(&self, ktime_ns: u64) -> u64 {
        self.clock.epoch_ns(ktime_ns)
    }

    /// Forgets emitted requests that ended more than `keep` ago.
    fn forget(&mut self, now_ns: u64) {
        let keep = self.config.keep_ns;
        while let Some(&(end, key)) = self.finished.front() {
            if end.saturating_add(keep) >= now_ns {
                break;
            }
            self.finished.pop_front();
            self.remove(key);
        }
        while self
            .by_start
            .front()
            .is_some_and(|k| !self.reqs.contains_key(k))
        {
            self.by_start.pop_front();
        }
    }

    /// Makes room: the request that started first goes (counted).
    fn forget_oldest(&mut self) {
        while let Some(key) = self.by_start.pop_front() {
            if self.reqs.contains_key(&key) {
                self.remove(key);
                self.stats.forgotten += 1;
                return;
            }
        }
    }

    /// Once a request's documents are out, only what links and parenting still need is kept.
    fn emitted(&mut self, key: Key) {
        if let Some(r) = self.reqs.get_mut(&key) {
            r.emitted = true;
            r.exchange = None;
            r.children = Vec::new();
            // The head's strings are no longer needed, except a forwarded trace id, which
            // `remove` uses to find the request in its index.
            let head = std::mem::take(&mut r.start.request);
            r.start.request.x_amzn_trace_id = head.x_amzn_trace_id;
            r.start.request.traceparent = head.traceparent;
            r.conn.comm = String::new();

            if let Some(end) = r.end_ns {
                self.finished.push_back((end, key));
            }
        }
    }

    fn remove(&mut self, key: Key) {
        let Some(r) = self.reqs.remove(&key) else {
            return;
        };
        let thread = (r.start.pid, r.start.tid);
        if let Some(t) = self.servers_by_thread.get_mut(&thread) {
            t.open.remove(&(r.start.start_ns, key));
            if let Some(end) = r.end_ns {
                t.ended.remove(&(end, key));
            }
            if t.is_empty() {
                self.servers_by_thread.remove(&thread);
            }
        }
        if let Some(root) = incoming_trace_id(&r.start, self.epoch_secs(r.start.start_ns))
            && let Some(v) = self.servers_by_trace.get_mut(&(r.start.pid, root.clone()))
        {
            v.retain(|k| *k != key);
            if v.is_empty() {
                self.servers_by_trace.remove(&(r.start.pid, root));
            }
        }
        self.links.remove(key, r.start.role, &r.conn, r.start.index);
    }
}

/// The trace id a request carries in X-Amzn-Trace-Id or traceparent.
fn incoming_trace_id(start: &RequestStart, now_secs: u64) -> Option<String> {
    if start.request.x_amzn_trace_id.is_none() && start.request.traceparent.is_none() {
        return None;
    }
    header::incoming(
        start.request.x_amzn_trace_id.as_deref(),
        start.request.traceparent.as_deref(),
        now_secs,
    )
    .trace_id
}

/// The exchange's HTTP fields; `host_addr` (the server's address) names the host when the
/// request has no `Host`.
fn http_span(e: &ConnExchange, host_addr: Option<SocketAddr>) -> HttpSpan {
    let x = &e.exchange;
    HttpSpan {
        method: x.request.method.clone(),
        url: request_url(&x.request, x.role, &e.conn),
        host: host_of(x.request.host.as_deref(), host_addr),
        user_agent: x.request.user_agent.clone(),
        client_ip: None,
        client_ip_forwarded: false,
        status: x.response.as_ref().map(|r| r.status),
        response_bytes: response_bytes(e),
    }
}

/// The response body's length, when there was a response.
fn response_bytes(e: &ConnExchange) -> Option<u64> {
    let r = e.exchange.response.as_ref()?;
    Some(r.content_length.unwrap_or(e.exchange.response_body_bytes))
}

/// The `Host` header, else the address, without the port.
fn host_of(header: Option<&str>, addr: Option<SocketAddr>) -> String {
    let host = header
        .map(str::to_owned)
        .or_else(|| addr.map(|a| a.to_string()))
        .unwrap_or_default();
    host.rsplit_once(':')
        .map_or(host.as_str(), |(h, _)| h)
        .to_owned()
}

/// What sampling decides on for a trace rooted at this request.
fn root_request(start: &RequestStart, conn: &ConnMeta, forced: Option<bool>) -> Arc<TraceRoot> {
    Arc::new(TraceRoot {
        pid: start.pid,
        host: host_of(start.request.host.as_deref(), conn.local),
        method: start.request.method.clone(),
        path: start
            .request
            .target
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned(),
        forced,
    })
}

/// Exchanges still open when the collector stopped end at the stop time, and say so.
fn ended_at_stop(x: &crate::http::exchange::Exchange) -> impl Iterator<Item = Note> {
    x.flags
        .ended_at_stop
        .then_some(Note::EndedAtStop)
        .into_iter()
}

#[cfg(test)]
pub mod fixtures;
#[cfg(test)]
mod tests;
