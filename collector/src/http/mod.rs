//! Stage 3, HTTP exchanges: per connection, the two byte streams framed into HTTP/1.x
//! messages and paired into [`Exchange`]s. A pure function of kernel events.

pub mod chunked;
pub mod exchange;
pub mod head;
pub mod message;
pub mod redact;

use std::{collections::HashMap, net::SocketAddr};

pub use exchange::{Exchange, ExchangeFlags, HttpEvent, RequestStart};

use crate::counters::counters;
use crate::{
    source::event::{ConnRecord, DataRecord, Direction, Isns, KernelEvent, Role},
    stream::{Chunk, DirectionStream, StreamItem, StreamStats},
};
use exchange::{Pairing, PairingStats};

/// What is known of a connection besides its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnMeta {
    pub role: Option<Role>,
    pub comm: String,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub isns: Option<Isns>,
}

/// An exchange with the connection it happened on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnExchange {
    pub exchange: Exchange,
    pub conn: ConnMeta,
}

/// `http://` + Host (else the server's address) + path. Query strings and fragments are
/// dropped: they often carry tokens and personal data.
pub fn request_url(request: &head::RequestHead, role: Role, conn: &ConnMeta) -> String {
    let server_addr = match role {
        Role::Client => conn.remote,
        _ => conn.local,
    };
    let host = request
        .host
        .clone()
        .or_else(|| server_addr.map(|a| a.to_string()))
        .unwrap_or_default();
    // Only the query parameters an operator allowed (`redact.rs`; the parser already cut the
    // rest — this holds for targets built any other way too).
    let redacted = redact::redact_target(&request.target);
    let path = redacted.as_str();
    if path.starts_with('/') {
        format!("http://{host}{path}")
    } else {
        // Absolute-form (proxies) or authority-form (CONNECT) targets.
        path.to_owned()
    }
}

/// What the HTTP stage emits: requests as they start, exchanges as they end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpOut {
    Started { start: RequestStart, conn: ConnMeta },
    Done(ConnExchange),
}

impl HttpOut {
    fn with_conn(event: HttpEvent, conn: &ConnMeta) -> Self {
        match event {
            HttpEvent::Started(start) => HttpOut::Started {
                start,
                conn: conn.clone(),
            },
            HttpEvent::Done(exchange) => HttpOut::Done(ConnExchange {
                exchange,
                conn: conn.clone(),
            }),
        }
    }

    pub fn into_exchange(self) -> Option<ConnExchange> {
        match self {
            HttpOut::Done(e) => Some(e),
            HttpOut::Started { .. } => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TrackerLimits {
    /// Connections tracked at once; beyond, the least recently active one is closed.
    pub max_conns: usize,
    /// A connection idle this long is closed (its open exchanges flushed).
    pub idle_timeout_ns: u64,
    /// A hole in a stream that has not filled after this long is declared a gap.
    pub reorder_wait_ns: u64,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            max_conns: 65_536,
            idle_timeout_ns: 300_000_000_000,
            reorder_wait_ns: 200_000_000,
        }
    }
}

counters! {
    pub struct TrackerStats("http") {
        pub exchanges,
        /// Exchanges whose request head was longer than the captured bytes.
        pub exchanges_truncated,
        /// Exchanges whose response was cut short or never came.
        pub exchanges_incomplete,
        pub conns_opened,
        pub conns_closed,
        pub conns_expired,
        /// Connections dropped to stay within `max_conns`.
        pub conns_evicted,
        /// Data for a connection that was never opened (or already forgotten).
        /// Opens of a connection already open (ignored).
        pub repeated_opens,
        pub data_without_conn,
        pub not_http_conns,
    }
    with {
        pub stream: StreamStats,
        pub pairing: PairingStats,
    }
}

struct Conn {
    meta: ConnMeta,
    recv: DirectionStream,
    send: DirectionStream,
    pairing: Pairing,
    last_ts: u64,
}

pub struct HttpTracker {
    conns: HashMap<u64, Conn>,
    limits: TrackerLimits,
    stats: TrackerStats,
    items: Vec<StreamItem>,
}

impl HttpTracker {
    pub fn new(limits: TrackerLimits) -> Self {
        Self {
            conns: HashMap::new(),
            limits,
            stats: TrackerStats::default(),
            items: Vec::new(),
        }
    }

    pub fn on_event(&mut self, event: KernelEvent, out: &mut Vec<HttpOut>) {
        match event {
            KernelEvent::ConnOpen(c) => self.open(c, out),
            KernelEvent::Data(d) => self.data(d, out),
            KernelEvent::ConnClose(c) => {
                if let Some(conn) = self.conns.remove(&c.conn_id) {
                    self.stats.conns_closed += 1;
                    let ts = c.ts_ns.max(conn.last_ts);
                    self.finish(conn, ts, out);
                }
            }
        }
    }

    /// Declares stale holes as gaps and closes connections idle past the limit.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<HttpOut>) {
        let reorder = self.limits.reorder_wait_ns;
        let mut items = std::mem::take(&mut self.items);
        for conn in self.conns.values_mut() {
            if now_ns.saturating_sub(conn.last_ts) < reorder {
                continue;
            }
            declare_gaps(conn, |s| s.has_pending(), &mut items, &mut self.stats, out);
        }
        self.items = items;
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ts) >= self.limits.idle_timeout_ns)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            let conn = self.conns.remove(&id).expect("listed");
            self.stats.conns_expired += 1;
            let ts = conn.last_ts;
            self.finish(conn, ts, out);
        }
        // A burst of connections grows the table, and a table never shrinks by itself: give
        // the memory back once it is mostly empty.
        if self.conns.capacity() > 4 * self.conns.len().max(256) {
            self.conns.shrink_to(2 * self.conns.len());
        }
    }

    /// Flushes every connection (at shutdown).
    /// At stop: every connection ends at `stop_ns`; exchanges still open are emitted as
    /// ended then, marked `ended_at_stop`.
    pub fn close_all(&mut self, stop_ns: u64, out: &mut Vec<HttpOut>) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let conn = self.conns.remove(&id).expect("listed");
            let from = out.len();
            let ts = conn.last_ts.max(stop_ns);
            self.finish(conn, ts, out);
            for e in &mut out[from..] {
                if let HttpOut::Done(x) = e {
                    let f = &mut x.exchange.flags;
                    f.ended_at_stop = f.no_response || f.incomplete;
                }
            }
        }
    }

    pub fn stats(&self) -> TrackerStats {
        let mut s = self.stats;
        for c in self.conns.values() {
            add_stream(&mut s.stream, &c.recv.stats);
            add_stream(&mut s.stream, &c.send.stats);
            add_pairing(&mut s.pairing, &c.pairing.stats);
        }
        s
    }

    pub fn tracked_conns(&self) -> usize {
        self.conns.len()
    }

    fn open(&mut self, c: ConnRecord, out: &mut Vec<HttpOut>) {
        // Ids are never reused: a second open of a live one is a repeated report, and must
        // not restart the connection's pairing (its requests' order is what links them).
        if self.conns.contains_key(&c.conn_id) {
            self.stats.repeated_opens += 1;
            return;
        }
        self.stats.conns_opened += 1;
        if self.conns.len() >= self.limits.max_conns {
            self.evict_oldest(out);
        }
        let meta = ConnMeta {
            role: (c.role != Role::Unknown).then_some(c.role),
            isns: c.isns(),
            comm: c.comm,
            local: c.local,
            remote: c.remote,
        };
        let conn = Conn {
            pairing: Pairing::new(c.conn_id, c.role),
            meta,
            recv: DirectionStream::default(),
            send: DirectionStream::default(),
            last_ts: c.ts_ns,
        };
        self.conns.insert(c.conn_id, conn);
    }

    fn data(&mut self, d: DataRecord, out: &mut Vec<HttpOut>) {
        let Some(conn) = self.conns.get_mut(&d.conn_id) else {
            self.stats.data_without_conn += 1;
            return;
        };
        conn.last_ts = conn.last_ts.max(d.ts_ns);
        if !conn.pairing.is_http() {
            return;
        }
        // Calls reach us in (near) time order: a hole still open when a later call on this
        // connection arrives will not fill. Declare it now, before the later call is framed, so
        // a lost request is known before the responses after it are paired.
        let due = |s: &DirectionStream| s.oldest_pending_ts().is_some_and(|ts| ts < d.ts_ns);
        declare_gaps(conn, due, &mut self.items, &mut self.stats, out);
        let chunk = Chunk {
            offset: d.stream_offset,
            len: u64::from(d.total_len),
            bytes: if d.payload_missing {
                Vec::new()
            } else {
                d.payload
            },
            tail: d.tail,
            ts_ns: d.ts_ns,
            pid: d.pid,
            tid: d.tid,
        };
        let stream = match d.direction {
            Direction::Recv => &mut conn.recv,
            Direction::Send => &mut conn.send,
        };
        self.items.clear();
        stream.push(chunk, &mut self.items);
        feed(
            &mut conn.pairing,
            &conn.meta,
            d.direction,
            &self.items,
            &mut self.stats,
            out,
        );
        if !conn.pairing.is_http() {
            self.stats.not_http_conns += 1;
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<HttpOut>) {
        let Some(id) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_ts)
            .map(|(id, _)| *id)
        else {
            return;
        };
        let conn = self.conns.remove(&id).expect("found");
        self.stats.conns_evicted += 1;
        let ts = conn.last_ts;
        self.finish(conn, ts, out);
    }

    fn finish(&mut self, mut conn: Conn, ts: u64, out: &mut Vec<HttpOut>) {
        declare_gaps(&mut conn, |_| true, &mut Vec::new(), &mut self.stats, out);
        let mut events = Vec::new();
        conn.pairing.close(ts, &mut events);
        push_events(events, &conn.meta, &mut self.stats, out);
        add_stream(&mut self.stats.stream, &conn.recv.stats);
        add_stream(&mut self.stats.stream, &conn.send.stats);
        add_pairing(&mut self.stats.pairing, &conn.pairing.stats);
    }
}

/// Declares the holes of the directions `due` picks as gaps and frames what follows them.
fn declare_gaps(
    conn: &mut Conn,
    due: impl Fn(&DirectionStream) -> bool,
    items: &mut Vec<StreamItem>,
    stats: &mut TrackerStats,
    out: &mut Vec<HttpOut>,
) {
    for (dir, stream) in [
        (Direction::Recv, &mut conn.recv),
        (Direction::Send, &mut conn.send),
    ] {
        if due(stream) {
            items.clear();
            stream.skip_to_pending(items);
            feed(&mut conn.pairing, &conn.meta, dir, items, stats, out);
        }
    }
}

fn feed(
    pairing: &mut Pairing,
    meta: &ConnMeta,
    dir: Direction,
    items: &[StreamItem],
    stats: &mut TrackerStats,
    out: &mut Vec<HttpOut>,
) {
    let mut events = Vec::new();
    for item in items {
        pairing.feed(dir, item, &mut events);
    }
    push_events(events, meta, stats, out);
}

fn push_events(
    events: Vec<HttpEvent>,
    meta: &ConnMeta,
    stats: &mut TrackerStats,
    out: &mut Vec<HttpOut>,
) {
    for e in events {
        if let HttpEvent::Done(x) = &e {
            stats.exchanges += 1;
            stats.exchanges_truncated += u64::from(x.flags.request_truncated);
            stats.exchanges_incomplete += u64::from(x.flags.incomplete || x.flags.no_response);
        }
        out.push(HttpOut::with_conn(e, meta));
    }
}

fn add_stream(total: &mut StreamStats, s: &StreamStats) {
    total.duplicate_chunks += s.duplicate_chunks;
    total.overlap_bytes += s.overlap_bytes;
    total.gaps += s.gaps;
    total.gap_bytes += s.gap_bytes;
}

fn add_pairing(total: &mut PairingStats, s: &PairingStats) {
    total.lost_messages += s.lost_messages;
    total.unmatched_responses += s.unmatched_responses;
    total.in_flight_overflow += s.in_flight_overflow;
}

#[cfg(test)]
mod tests;
