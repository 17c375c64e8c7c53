//! Socket-layer path: joins packets (payload and TCP sequence numbers, from cgroup_skb) with
//! calls (thread, time and sequence range, from sock_recv/send_length) on
//! (socket cookie, sequence range) into the data records every later stage sees. Timestamps
//! alone cannot join them: a recv may run milliseconds after its packet arrived.
//!
//! Offsets are sequence numbers relative to the connection's first payload byte (from
//! sock_ops), unwrapped past 4 GiB. Retransmitted and out-of-order packets are placed by
//! sequence number, so they are never duplicated into a stream.

use std::collections::{BTreeMap, HashMap, VecDeque};

use collector_common::TAIL_BYTES;

use super::event::{
    CallRecord, ConnRecord, DataRecord, Direction, KernelEvent, PacketRecord, Record, Role,
};
use crate::counters::counters;
use listener::ListenerPackets;

#[derive(Clone, Copy, Debug)]
pub struct JoinLimits {
    /// Payload prefix wanted per call (the kernel's capture setting).
    pub capture_bytes: usize,
    /// How long a send call waits for the packets that carry its bytes.
    pub max_wait_ns: u64,
    /// Packets held per direction of a connection.
    pub max_packets: usize,
    /// Calls waiting per direction of a connection.
    pub max_calls: usize,
    pub max_conns: usize,
}

impl Default for JoinLimits {
    fn default() -> Self {
        Self {
            capture_bytes: collector_common::DEFAULT_CAPTURE_BYTES as usize,
            max_wait_ns: 100_000_000,
            max_packets: 256,
            max_calls: 256,
            max_conns: 65_536,
        }
    }
}

counters! {
    pub struct JoinStats("join") {
        pub calls,
        pub packets,
        /// Calls emitted without (all of) their wanted payload: packets never seen in time.
        pub calls_missing_payload,
        /// Packets or calls of connections never opened (or already closed).
        pub unknown_conn,
        /// Packets dropped to stay within the per-direction bound, or already consumed.
        pub packets_dropped,
        pub duplicate_packets,
        /// recv calls that also consumed the FIN (their sequence range is one past the data).
        pub fin_adjusted,
        /// Calls the kernel's record of was lost (a missed return probe, a full ring buffer),
        /// rebuilt from the packets that carried their bytes: before a later call on the same
        /// direction, or, for sends, at the close.
        pub calls_from_packets,
        pub conns_evicted,
        /// First data packets seen on a listener (see `listener`), and those of them no
        /// connection opened for in time or that were let go to stay bounded.
        pub listener_packets,
        pub listener_packets_unclaimed,
    }
}

#[derive(Debug)]
struct Packet {
    ts_ns: u64,
    len: u64,
    bytes: Vec<u8>,
    tail: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Call {
    start: u64,
    len: u64,
    ts_ns: u64,
    pid: u32,
    tid: u32,
}

#[derive(Debug)]
struct JoinDir {
    seq0: u32,
    /// Highest offset seen, for unwrapping sequence numbers.
    last: u64,
    /// Where the next call should start.
    next_call: u64,
    packets: BTreeMap<u64, Packet>,
    calls: VecDeque<Call>,
    /// The thread of the last call, for calls rebuilt from packets at the close.
    last_thread: Option<(u32, u32)>,
}

impl JoinDir {
    fn new(seq0: u32) -> Self {
        Self {
            seq0,
            last: 0,
            next_call: 0,
            packets: BTreeMap::new(),
            calls: VecDeque::new(),
            last_thread: None,
        }
    }

    /// Where the next call should start: after the last one waiting, else after the last
    /// one emitted.
    fn expected(&self) -> u64 {
        self.calls
            .back()
            .map_or(self.next_call, |b| b.start + b.len)
    }

    /// A call for `[from, to)` when packets cover every byte of it, timed by the last of
    /// them: what a call whose own record was lost moved.
    fn call_from_packets(&self, from: u64, to: u64, (pid, tid): (u32, u32)) -> Option<Call> {
        let mut pos = from;
        let mut ts_ns = 0;
        while pos < to {
            let (off, p) = packet_with_byte(&self.packets, pos)?;
            ts_ns = ts_ns.max(p.ts_ns);
            pos = off + p.len;
        }
        (pos == to).then_some(Call {
            start: from,
            len: to - from,
            ts_ns,
            pid,
            tid,
        })
    }

    /// Stream offset of a sequence number: the candidate (modulo 2^32) nearest the last one.
    fn offset(&mut self, seq: u32) -> u64 {
        let rel = u64::from(seq.wrapping_sub(self.seq0));
        let base = self.last & !0xffff_ffff;
        let mut best = base | rel;
        for cand in [best.checked_sub(1 << 32), best.checked_add(1 << 32)]
            .into_iter()
            .flatten()
        {
            if cand.abs_diff(self.last) < best.abs_diff(self.last) {
                best = cand;
            }
        }
        self.last = self.last.max(best);
        best
    }
}

struct JoinConn {
    conn_id: u64,
    /// The open is held until the first call names the process (sock_ops runs in softirq).
    pending_open: Option<ConnRecord>,
    recv: JoinDir,
    send: JoinDir,
}

pub struct SocketJoin {
    conns: HashMap<u64, JoinConn>,
    on_listener: ListenerPackets,
    limits: JoinLimits,
    pub stats: JoinStats,
}

impl SocketJoin {
    pub fn new(limits: JoinLimits) -> Self {
        Self {
            conns: HashMap::new(),
            on_listener: ListenerPackets::default(),
            limits,
            stats: JoinStats::default(),
        }
    }

    pub fn push(&mut self, record: Record, out: &mut Vec<KernelEvent>) {
        match record {
            Record::Event(KernelEvent::ConnOpen(c)) => self.open(c, out),
            Record::Event(KernelEvent::ConnClose(c)) => {
                if let Some(mut conn) = self.conns.remove(&c.conn_id) {
                    self.flush(&mut conn, out);
                }
                out.push(KernelEvent::ConnClose(c));
            }
            Record::Event(e) => out.push(e),
            Record::Packet(p) => match p.on_listener_from_port {
                Some(port) => {
                    self.stats.listener_packets += 1;
                    self.stats.listener_packets_unclaimed += self.on_listener.hold(port, p);
                }
                None => self.packet(p, out),
            },
            Record::Call(c) => self.call(c, out),
        }
    }

    /// Emits calls that waited long enough for their packets.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<KernelEvent>) {
        self.stats.listener_packets_unclaimed += self.on_listener.expire(now_ns);
        let (limits, stats) = (self.limits, &mut self.stats);
        for conn in self.conns.values_mut() {
            for dir in [Direction::Recv, Direction::Send] {
                emit_ready(conn, dir, now_ns, false, limits, stats, out);
            }
        }
    }

    /// Emits everything still waiting (shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<KernelEvent>) {
        let mut conns: Vec<JoinConn> = self.conns.drain().map(|(_, c)| c).collect();
        for conn in &mut conns {
            self.flush(conn, out);
        }
    }

    pub fn tracked_conns(&self) -> usize {
        self.conns.len()
    }

    fn open(&mut self, c: ConnRecord, out: &mut Vec<KernelEvent>) {
        if self.conns.len() >= self.limits.max_conns && !self.conns.contains_key(&c.conn_id) {
            // The oldest entries cannot be told cheaply; any one frees the room.
            if let Some(&id) = self.conns.keys().next() {
                let mut conn = self.conns.remove(&id).expect("listed");
                self.flush(&mut conn, out);
                self.stats.conns_evicted += 1;
            }
        }
        let first_packet = match (c.role, c.remote) {
            (Role::Server, Some(peer)) if c.recv_seq0 != 0 => {
                self.on_listener.take(peer.port(), c.recv_seq0)
            }
            _ => None,
        };
        let conn = JoinConn {
            conn_id: c.conn_id,
            recv: JoinDir::new(c.recv_seq0),
            send: JoinDir::new(c.send_seq0),
            pending_open: Some(c),
        };
        let conn_id = conn.conn_id;
        if let Some(mut old) = self.conns.insert(conn_id, conn) {
            self.flush(&mut old, out);
        }
        if let Some(p) = first_packet {
            self.packet(
                PacketRecord {
                    cookie: conn_id,
                    on_listener_from_port: None,
                    ..p
                },
                out,
            );
        }
    }

    fn flush(&mut self, conn: &mut JoinConn, out: &mut Vec<KernelEvent>) {
        if let Some(open) = conn.pending_open.take() {
            out.push(KernelEvent::ConnOpen(open));
        }
        for dir in [Direction::Recv, Direction::Send] {
            emit_ready(conn, dir, u64::MAX, true, self.limits, &mut self.stats, out);
        }
        // Sent bytes after the last call came from a send whose record was lost (received
        // ones may never have been read, so they are not claimed).
        let d = &mut conn.send;
        let end = d.packets.last_key_value().map(|(off, p)| off + p.len);
        if let (Some(end), Some(thread)) = (end, d.last_thread)
            && end > d.next_call
            && let Some(lost) = d.call_from_packets(d.next_call, end, thread)
        {
            d.calls.push_back(lost);
            self.stats.calls_from_packets += 1;
            emit_ready(
                conn,
                Direction::Send,
                u64::MAX,
                true,
                self.limits,
                &mut self.stats,
                out,
            );
        }
    }

    fn packet(&mut self, p: PacketRecord, out: &mut Vec<KernelEvent>) {
        self.stats.packets += 1;
        let Some(conn) = self.conns.get_mut(&p.cookie) else {
            self.stats.unknown_conn += 1;
            return;
        };
        let d = dir_mut(conn, p.direction);
        let offset = d.offset(p.seq);
        let len = u64::from(p.len);
        if offset + len <= d.next_call && d.calls.is_empty() {
            self.stats.packets_dropped += 1; // already consumed: a retransmission
            return;
        }
        match d.packets.get(&offset) {
            Some(old) if old.len >= len && old.bytes.len() >= p.payload.len() => {
                self.stats.duplicate_packets += 1;
            }
            _ => {
                d.packets.insert(
                    offset,
                    Packet {
                        ts_ns: p.ts_ns,
                        len,
                        bytes: p.payload,
                        tail: p.tail,
                    },
                );
            }
        }
        while d.packets.len() > self.limits.max_packets {
            d.packets.pop_first();
            self.stats.packets_dropped += 1;
        }
        emit_ready(
            conn,
            p.direction,
            p.ts_ns,
            false,
            self.limits,
            &mut self.stats,
            out,
        );
    }

    fn call(&mut self, c: CallRecord, out: &mut Vec<KernelEvent>) {
        self.stats.calls += 1;
        let Some(conn) = self.conns.get_mut(&c.cookie) else {
            self.stats.unknown_conn += 1;
            return;
        };
        if let Some(mut open) = conn.pending_open.take() {
            open.pid = c.pid;
            open.tid = c.tid;
            open.comm = c.comm;
            out.push(KernelEvent::ConnOpen(open));
        }
        let d = dir_mut(conn, c.direction);
        let len = u64::from(c.len);
        let mut start = d.offset(c.seq_end.wrapping_sub(c.len));
        // Consuming the FIN advances copied_seq by one more than the data.
        let expected = d.expected();
        if c.direction == Direction::Recv && start == expected + 1 {
            start = expected;
            self.stats.fin_adjusted += 1;
        }
        // Bytes before this call that no call moved: this thread's call whose record was
        // lost. Its packets say what it moved.
        if start > expected
            && let Some(lost) = d.call_from_packets(expected, start, (c.pid, c.tid))
        {
            d.calls.push_back(lost);
            self.stats.calls_from_packets += 1;
        }
        d.last_thread = Some((c.pid, c.tid));
        d.calls.push_back(Call {
            start,
            len,
            ts_ns: c.ts_ns,
            pid: c.pid,
            tid: c.tid,
        });
        let force = d.calls.len() > self.limits.max_calls;
        emit_ready(
            conn,
            c.direction,
            c.ts_ns,
            force,
            self.limits,
            &mut self.stats,
            out,
        );
    }
}

fn dir_mut(conn: &mut JoinConn, dir: Direction) -> &mut JoinDir {
    match dir {
        Direction::Recv => &mut conn.recv,
        Direction::Send => &mut conn.send,
    }
}

/// Emits the calls at the front of a direction whose bytes are known, or that waited long
/// enough (`now_ns`), or all of them when `force`.
fn emit_ready(
    conn: &mut JoinConn,
    dir: Direction,
    now_ns: u64,
    force: bool,
    limits: JoinLimits,
    stats: &mut JoinStats,
    out: &mut Vec<KernelEvent>,
) {
    let conn_id = conn.conn_id;
    let d = dir_mut(conn, dir);
    while let Some(call) = d.calls.front() {
        let want = (call.len as usize).min(limits.capture_bytes);
        let (bytes, waiting_for_packet) = gather(&d.packets, call.start, want);
        let waited = now_ns.saturating_sub(call.ts_ns) >= limits.max_wait_ns;
        // Received bytes were in packets before the call read them; sent bytes may leave
        // after the call returns, so a send call waits for its packet a little.
        if waiting_for_packet && dir == Direction::Send && !waited && !force {
            break;
        }
        let call = d.calls.pop_front().expect("front");
        if bytes.len() < want {
            stats.calls_missing_payload += 1;
        }
        let end = call.start + call.len;
        let tail = (call.len > bytes.len() as u64)
            .then(|| tail_of(&d.packets, end))
            .flatten();
        // Sent bytes have left once the packet with the last of them has; on loopback the
        // peer can read them before the send call returns (milliseconds later when the
        // sender is descheduled), so a send is timed by whichever came first.
        let ts_ns = match (dir, packet_with_byte(&d.packets, end.saturating_sub(1))) {
            (Direction::Send, Some((_, p))) => call.ts_ns.min(p.ts_ns),
            _ => call.ts_ns,
        };
        out.push(KernelEvent::Data(DataRecord {
            ts_ns,
            conn_id,
            direction: dir,
            pid: call.pid,
            tid: call.tid,
            stream_offset: call.start,
            total_len: call.len as u32,
            payload: bytes,
            tail,
            payload_missing: false,
        }));
        d.next_call = end;
        // Packets wholly before the next call are consumed.
        while let Some((&off, p)) = d.packets.first_key_value() {
            if off + p.len > end {
                break;
            }
            d.packets.pop_first();
        }
    }
}

/// The captured bytes from `start` on, up to `want`, across consecutive packets. Also says
/// whether gathering stopped because no packet (yet) covers the next byte — as opposed to a
/// packet that covers it but whose bytes were not copied.
fn gather(packets: &BTreeMap<u64, Packet>, start: u64, want: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut pos = start;
    while out.len() < want {
        let covering = packets
            .range(..=pos)
            .rev()
            .take(8)
            .find(|(off, p)| **off + p.len > pos);
        let Some((&off, p)) = covering else {
            return (out, true);
        };
        let at = (pos - off) as usize;
        if at >= p.bytes.len() {
            return (out, false); // covered, but beyond what was copied
        }
        let take = (p.bytes.len() - at).min(want - out.len());
        out.extend_from_slice(&p.bytes[at..at + take]);
        pos += take as u64;
        if (p.bytes.len() as u64) < p.len && out.len() < want {
            return (out, false); // the packet's copy ends here
        }
    }
    (out, false)
}

/// The packet that carried the byte at stream offset `at`, with its offset, if it was seen.
fn packet_with_byte(packets: &BTreeMap<u64, Packet>, at: u64) -> Option<(u64, &Packet)> {
    let (&off, p) = packets.range(..=at).next_back()?;
    (off + p.len > at).then_some((off, p))
}

/// The last TAIL_BYTES bytes before `end`, from the packet that ends there.
fn tail_of(packets: &BTreeMap<u64, Packet>, end: u64) -> Option<Vec<u8>> {
    let (&off, p) = packets.range(..end).next_back()?;
    if off + p.len != end {
        return None;
    }
    if let Some(t) = &p.tail {
        return Some(t.clone());
    }
    // A short packet copied whole has its tail in its bytes.
    (p.bytes.len() as u64 == p.len && p.len >= TAIL_BYTES as u64)
        .then(|| p.bytes[p.bytes.len() - TAIL_BYTES..].to_vec())
}

mod listener;
#[cfg(test)]
mod tests;
