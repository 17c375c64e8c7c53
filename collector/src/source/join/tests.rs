use super::*;
use crate::source::event::Role;

const COOKIE: u64 = 77;

fn open(recv_seq0: u32, send_seq0: u32) -> Record {
    Record::Event(KernelEvent::ConnOpen(server_conn(0, recv_seq0, send_seq0)))
}

/// The server end of the test connection, as open and close report it.
fn server_conn(ts_ns: u64, recv_seq0: u32, send_seq0: u32) -> ConnRecord {
    ConnRecord {
        ts_ns,
        conn_id: COOKIE,
        role: Role::Server,
        pid: 0,
        tid: 0,
        comm: String::new(),
        local: None,
        remote: None,
        rx_bytes: 0,
        tx_bytes: 0,
        recv_seq0,
        send_seq0,
    }
}

fn packet(dir: Direction, seq: u32, bytes: &[u8], capture: usize, ts: u64) -> Record {
    let n = bytes.len();
    Record::Packet(PacketRecord {
        ts_ns: ts,
        cookie: COOKIE,
        direction: dir,
        seq,
        len: n as u32,
        payload: bytes[..n.min(capture)].to_vec(),
        tail: (n > capture && n >= TAIL_BYTES).then(|| bytes[n - TAIL_BYTES..].to_vec()),
        on_listener_from_port: None,
    })
}

fn call(dir: Direction, seq_end: u32, len: u32, ts: u64) -> Record {
    Record::Call(CallRecord {
        ts_ns: ts,
        cookie: COOKIE,
        direction: dir,
        pid: 5,
        tid: 6,
        seq_end,
        len,
        comm: "app".into(),
    })
}

fn data(out: &[KernelEvent]) -> Vec<(Direction, u64, u32, Vec<u8>)> {
    out.iter()
        .filter_map(|e| match e {
            KernelEvent::Data(d) => {
                Some((d.direction, d.stream_offset, d.total_len, d.payload.clone()))
            }
            _ => None,
        })
        .collect()
}

fn join(records: Vec<Record>) -> (Vec<KernelEvent>, SocketJoin) {
    let mut j = SocketJoin::new(JoinLimits::default());
    let mut out = Vec::new();
    for r in records {
        j.push(r, &mut out);
    }
    (out, j)
}

#[test]
fn a_received_packet_and_the_recv_that_read_it_become_one_data_record() {
    let (out, _) = join(vec![
        open(1000, 5000),
        packet(Direction::Recv, 1000, b"GET / HTTP/1.1\r\n\r\n", 2048, 10),
        call(Direction::Recv, 1018, 18, 20),
    ]);
    assert_eq!(
        data(&out),
        [(Direction::Recv, 0, 18, b"GET / HTTP/1.1\r\n\r\n".to_vec())]
    );
    let KernelEvent::Data(d) = &out[1] else {
        panic!()
    };
    assert_eq!(
        (d.pid, d.tid, d.ts_ns),
        (5, 6, 20),
        "thread and time come from the call"
    );
    // The open waited for the first call to name the process.
    let KernelEvent::ConnOpen(o) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!((o.pid, o.comm.as_str()), (5, "app"));
}

#[test]
fn a_send_waits_for_its_packet_and_gives_up_after_the_wait_limit() {
    let (mut out, mut j) = join(vec![open(0, 5000), call(Direction::Send, 5010, 10, 10)]);
    assert!(data(&out).is_empty(), "the packet may still come");
    j.push(
        packet(Direction::Send, 5000, b"HTTP/1.1 2", 2048, 11),
        &mut out,
    );
    assert_eq!(
        data(&out),
        [(Direction::Send, 0, 10, b"HTTP/1.1 2".to_vec())]
    );

    let (mut out, mut j) = join(vec![open(0, 5000), call(Direction::Send, 5010, 10, 10)]);
    j.expire(10 + JoinLimits::default().max_wait_ns, &mut out);
    assert_eq!(data(&out), [(Direction::Send, 0, 10, vec![])]);
    assert_eq!(j.stats.calls_missing_payload, 1);
}

fn data_ts(out: &[KernelEvent]) -> Vec<u64> {
    out.iter()
        .filter_map(|e| match e {
            KernelEvent::Data(d) => Some(d.ts_ns),
            _ => None,
        })
        .collect()
}

#[test]
fn a_send_is_timed_by_its_last_packet_when_that_left_before_the_call_returned() {
    // On loopback the peer can read a response before the server's send call returns: the
    // bytes left with their packet (ts 40), the call reported at 90.
    let (out, _) = join(vec![
        open(0, 5000),
        packet(Direction::Send, 5000, b"HTTP/1.1 2", 2048, 40),
        call(Direction::Send, 5010, 10, 90),
    ]);
    assert_eq!(data_ts(&out), [40]);
    // A packet that leaves after the call (Nagle, a full window) does not delay the call;
    // nor does a received packet move a recv's time (the app read it later).
    let (out, _) = join(vec![
        open(1000, 5000),
        call(Direction::Send, 5010, 10, 90),
        packet(Direction::Send, 5000, b"HTTP/1.1 2", 2048, 95),
        packet(Direction::Recv, 1000, b"GET / HTTP/1.1\r\n\r\n", 2048, 100),
        call(Direction::Recv, 1018, 18, 120),
    ]);
    assert_eq!(data_ts(&out), [90, 120]);
}

#[test]
fn one_packet_read_by_two_calls_splits_at_the_right_byte() {
    let (out, _) = join(vec![
        open(0, 0),
        packet(
            Direction::Recv,
            0,
            b"GET /a HTTP/1.1\r\n\r\nGET /b",
            2048,
            1,
        ),
        call(Direction::Recv, 19, 19, 2),
        call(Direction::Recv, 25, 6, 3),
    ]);
    assert_eq!(
        data(&out),
        [
            (Direction::Recv, 0, 19, b"GET /a HTTP/1.1\r\n\r\n".to_vec()),
            (Direction::Recv, 19, 6, b"GET /b".to_vec())
        ]
    );
}

#[test]
fn a_call_over_several_packets_in_any_order_and_with_retransmissions_gets_its_bytes_once() {
    let (out, j) = join(vec![
        open(0, 0),
        packet(Direction::Recv, 6, b"world", 2048, 1), // out of order
        packet(Direction::Recv, 0, b"hello ", 2048, 2),
        packet(Direction::Recv, 0, b"hello ", 2048, 3), // retransmitted
        call(Direction::Recv, 11, 11, 4),
    ]);
    assert_eq!(
        data(&out),
        [(Direction::Recv, 0, 11, b"hello world".to_vec())]
    );
    assert_eq!(j.stats.duplicate_packets, 1);
}

#[test]
fn a_recv_that_consumed_the_fin_is_placed_on_its_data() {
    let (out, j) = join(vec![
        open(0, 0),
        packet(Direction::Recv, 0, b"HTTP/1.0 200 OK\r\n\r\nbody", 2048, 1),
        call(Direction::Recv, 10, 10, 2),
        // 13 bytes + FIN: copied_seq moved 14.
        call(Direction::Recv, 24, 13, 3),
    ]);
    assert_eq!(
        data(&out)[1],
        (Direction::Recv, 10, 13, b"00 OK\r\n\r\nbody".to_vec())
    );
    assert_eq!(j.stats.fin_adjusted, 1);
}

#[test]
fn sequence_numbers_wrap_around() {
    let seq0 = u32::MAX - 3;
    let (out, _) = join(vec![
        open(seq0, 0),
        packet(Direction::Recv, seq0, b"GET /wrap", 2048, 1),
        call(Direction::Recv, seq0.wrapping_add(9), 9, 2),
    ]);
    assert_eq!(data(&out), [(Direction::Recv, 0, 9, b"GET /wrap".to_vec())]);
}

#[test]
fn a_large_packet_gives_its_prefix_and_its_tail() {
    let mut body = vec![b'x'; 10_000];
    body.extend_from_slice(b"end-of-the-body!");
    let (out, _) = join(vec![
        open(0, 0),
        packet(Direction::Send, 0, &body, 64, 1),
        call(Direction::Send, body.len() as u32, body.len() as u32, 2),
    ]);
    let KernelEvent::Data(d) = &out[1] else {
        panic!()
    };
    assert_eq!(d.payload.len(), 64);
    assert_eq!(d.tail.as_deref(), Some(&b"end-of-the-body!"[..]));
}

#[test]
fn records_of_unknown_connections_are_counted_and_dropped() {
    let (out, j) = join(vec![
        call(Direction::Recv, 10, 10, 1),
        packet(Direction::Recv, 0, b"x", 8, 1),
    ]);
    assert!(out.is_empty());
    assert_eq!(j.stats.unknown_conn, 2);
}

#[test]
fn the_socket_path_gives_the_http_stage_the_same_exchanges_as_the_syscall_path() {
    use crate::http::{HttpTracker, TrackerLimits};
    let request = b"GET /same HTTP/1.1\r\nHost: h\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody";
    let (mut out, mut j) = join(vec![
        open(100, 900),
        packet(Direction::Recv, 100, request, 2048, 1),
        call(
            Direction::Recv,
            100 + request.len() as u32,
            request.len() as u32,
            2,
        ),
        call(
            Direction::Send,
            900 + response.len() as u32,
            response.len() as u32,
            3,
        ),
        packet(Direction::Send, 900, response, 2048, 3),
    ]);
    j.push(close(9), &mut out);
    let mut tracker = HttpTracker::new(TrackerLimits::default());
    let mut exchanges = Vec::new();
    for e in out {
        tracker.on_event(e, &mut exchanges);
    }
    let exchanges: Vec<_> = exchanges
        .into_iter()
        .filter_map(|o| o.into_exchange())
        .collect();
    assert_eq!(exchanges.len(), 1);
    let x = &exchanges[0].exchange;
    assert_eq!(
        (
            x.request.target.as_str(),
            x.response.as_ref().unwrap().status
        ),
        ("/same", 200)
    );
    assert_eq!((x.start_ns, x.end_ns, x.pid, x.tid), (2, 3, 5, 6));
    assert_eq!(x.response_body_bytes, 4);
}

#[test]
fn a_send_whose_call_record_was_lost_is_rebuilt_from_its_packets() {
    // Two responses; the first send's record never came (a missed return probe).
    let first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let second = b"HTTP/1.1 204 No Content\r\n\r\n";
    let n1 = first.len() as u32;
    let n2 = second.len() as u32;
    let (out, j) = join(vec![
        open(1000, 5000),
        packet(Direction::Send, 5000, first, 2048, 10),
        packet(Direction::Send, 5000 + n1, second, 2048, 30),
        call(Direction::Send, 5000 + n1 + n2, n2, 31),
    ]);
    assert_eq!(
        data(&out),
        [
            (Direction::Send, 0, n1, first.to_vec()),
            (Direction::Send, u64::from(n1), n2, second.to_vec()),
        ]
    );
    assert_eq!(j.stats.calls_from_packets, 1);
    // Timed by its packet, on the thread of the call that followed it.
    let KernelEvent::Data(d) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!((d.ts_ns, d.tid), (10, 6));
}

#[test]
fn the_last_send_is_rebuilt_at_the_close_but_unread_received_bytes_are_not_claimed() {
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let n = response.len() as u32;
    let close = close(99);
    let (out, j) = join(vec![
        open(1000, 5000),
        packet(Direction::Recv, 1000, b"GET / HTTP/1.1\r\n\r\n", 2048, 5),
        call(Direction::Recv, 1018, 18, 6),
        packet(
            Direction::Send,
            5000,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            2048,
            7,
        ),
        call(Direction::Send, 5025, 25, 8),
        packet(Direction::Send, 5025, response, 2048, 9),
        // Sent by the peer, never read before the close.
        packet(
            Direction::Recv,
            1018,
            b"GET /never-read HTTP/1.1\r\n\r\n",
            2048,
            10,
        ),
        close,
    ]);
    let got = data(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2], (Direction::Send, 25, n, response.to_vec()));
    assert!(got.iter().all(|d| !d.3.starts_with(b"GET /never-read")));
    assert_eq!(j.stats.calls_from_packets, 1);
}

#[test]
fn a_hole_no_packet_covers_stays_a_hole() {
    let (out, j) = join(vec![
        open(1000, 5000),
        packet(
            Direction::Send,
            5010,
            b"HTTP/1.1 204 No Content\r\n\r\n",
            2048,
            30,
        ),
        call(Direction::Send, 5010 + 27, 27, 31),
    ]);
    assert_eq!(data(&out).len(), 1);
    assert_eq!(data(&out)[0].1, 10);
    assert_eq!(j.stats.calls_from_packets, 0);
}

/// The server end's close at `ts_ns`.
fn close(ts_ns: u64) -> Record {
    Record::Event(KernelEvent::ConnClose(server_conn(ts_ns, 0, 0)))
}

#[test]
fn a_first_packet_seen_on_the_listener_joins_the_connection_opened_for_it() {
    let on_listener = |port: u16, seq: u32, bytes: &[u8], ts: u64| {
        let Record::Packet(p) = packet(Direction::Recv, seq, bytes, 2048, ts) else {
            unreachable!()
        };
        Record::Packet(PacketRecord {
            cookie: 0,
            on_listener_from_port: Some(port),
            ..p
        })
    };
    let open_from = |port: u16, recv_seq0: u32| {
        let mut c = server_conn(0, recv_seq0, 5000);
        c.remote = Some(([127, 0, 0, 1], port).into());
        Record::Event(KernelEvent::ConnOpen(c))
    };
    let request = b"GET / HTTP/1.1\r\n\r\n";
    let (out, j) = join(vec![
        // Another connection's packet, and one from the same port with another sequence
        // number: neither is this connection's.
        on_listener(40000, 1000, b"GET /other HTTP/1.1", 1),
        on_listener(40001, 999, b"GET /other HTTP/1.1", 2),
        on_listener(40001, 1000, request, 3),
        open_from(40001, 1000),
        call(Direction::Recv, 1018, 18, 20),
    ]);
    assert_eq!(data(&out), [(Direction::Recv, 0, 18, request.to_vec())]);
    assert_eq!(j.stats.listener_packets, 3);
    assert_eq!(j.stats.calls_missing_payload, 0);

    // Unclaimed ones are let go after a second, and counted.
    let mut j = j;
    let mut out = Vec::new();
    j.expire(3 + 1_000_000_000, &mut out);
    assert_eq!(j.stats.listener_packets_unclaimed, 2);
}
