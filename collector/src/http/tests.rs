//! Fixture tests of the HTTP stage: whole conversations, re-split at every byte, reordered,
//! duplicated, truncated to the captured prefix, and garbage.

use super::*;
use crate::source::event::{ConnRecord, DataRecord, Direction, KernelEvent, Role};
use collector_common::TAIL_BYTES;

/// One recv/send call of a conversation.
#[derive(Clone, Debug)]
struct Call {
    dir: Direction,
    bytes: Vec<u8>,
    ts: u64,
}

fn recv(ts: u64, bytes: &[u8]) -> Call {
    Call {
        dir: Direction::Recv,
        bytes: bytes.to_vec(),
        ts,
    }
}
fn send(ts: u64, bytes: &[u8]) -> Call {
    Call {
        dir: Direction::Send,
        bytes: bytes.to_vec(),
        ts,
    }
}

/// The kernel events a conversation produces with `capture` bytes copied per call.
fn events(role: Role, calls: &[Call], capture: usize) -> Vec<KernelEvent> {
    let conn = |kind: fn(ConnRecord) -> KernelEvent, ts| {
        kind(ConnRecord {
            ts_ns: ts,
            conn_id: 9,
            role,
            pid: 100,
            tid: 100,
            comm: "server".into(),
            local: None,
            remote: None,
            rx_bytes: 0,
            tx_bytes: 0,
            recv_seq0: 0,
            send_seq0: 0,
        })
    };
    let mut out = vec![conn(KernelEvent::ConnOpen, 0)];
    let (mut rx, mut tx) = (0u64, 0u64);
    for c in calls {
        let offset = match c.dir {
            Direction::Recv => &mut rx,
            Direction::Send => &mut tx,
        };
        let n = c.bytes.len();
        out.push(KernelEvent::Data(DataRecord {
            ts_ns: c.ts,
            conn_id: 9,
            direction: c.dir,
            pid: 100,
            tid: 101,
            stream_offset: *offset,
            total_len: n as u32,
            payload: c.bytes[..n.min(capture)].to_vec(),
            tail: (n > capture && n >= TAIL_BYTES).then(|| c.bytes[n - TAIL_BYTES..].to_vec()),
            payload_missing: false,
        }));
        *offset += n as u64;
    }
    let last = calls.last().map_or(0, |c| c.ts);
    out.push(conn(KernelEvent::ConnClose, last + 1));
    out
}

fn run_events(evs: Vec<KernelEvent>) -> (Vec<Exchange>, TrackerStats) {
    let mut t = HttpTracker::new(TrackerLimits::default());
    let mut out = Vec::new();
    for e in evs {
        t.on_event(e, &mut out);
    }
    (
        out.into_iter()
            .filter_map(|o| o.into_exchange())
            .map(|c| c.exchange)
            .collect(),
        t.stats(),
    )
}

fn run(role: Role, calls: &[Call]) -> Vec<Exchange> {
    run_events(events(role, calls, usize::MAX)).0
}

/// The same conversation with one call split in two at every possible byte.
fn every_split(calls: &[Call]) -> impl Iterator<Item = Vec<Call>> + '_ {
    calls.iter().enumerate().flat_map(move |(i, c)| {
        (1..c.bytes.len()).map(move |k| {
            let mut v = calls.to_vec();
            let (a, b) = c.bytes.split_at(k);
            v[i] = Call {
                bytes: a.to_vec(),
                ..c.clone()
            };
            v.insert(
                i + 1,
                Call {
                    bytes: b.to_vec(),
                    ..c.clone()
                },
            );
            v
        })
    })
}

/// The same conversation with every call cut into single bytes.
fn single_bytes(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .flat_map(|c| {
            c.bytes.iter().map(move |b| Call {
                bytes: vec![*b],
                ..c.clone()
            })
        })
        .collect()
}

/// What an exchange must look like, independent of how its bytes were cut.
fn summary(e: &Exchange) -> String {
    format!(
        "{} {} -> {:?} req_body={} resp_body={} {}..{} {:?}",
        e.request.method,
        e.request.target,
        e.response.as_ref().map(|r| r.status),
        e.request_body_bytes,
        e.response_body_bytes,
        e.start_ns,
        e.end_ns,
        e.flags
    )
}

fn summaries(v: &[Exchange]) -> Vec<String> {
    v.iter().map(summary).collect()
}

/// Asserts `calls` give exactly `expected`, however the bytes are cut.
fn assert_conversation(role: Role, calls: &[Call], expected: &[&str]) {
    let whole = summaries(&run(role, calls));
    assert_eq!(whole, expected, "whole calls");
    for split in every_split(calls) {
        assert_eq!(summaries(&run(role, &split)), expected, "split: {split:?}");
    }
    assert_eq!(
        summaries(&run(role, &single_bytes(calls))),
        expected,
        "single bytes"
    );
}

const CLEAN: &str = "ExchangeFlags { end_approximate: false, end_from_tail: false, incomplete: false, no_response: false, request_truncated: false, upgraded: false, paired_after_loss: false, ended_at_stop: false }";

fn clean(s: &str) -> String {
    format!("{s} {CLEAN}")
}

#[test]
fn keep_alive_requests_pair_in_order_with_content_length_bodies() {
    let calls = [
        recv(10, b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"),
        send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        recv(
            30,
            b"POST /b HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc",
        ),
        send(40, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ];
    assert_conversation(
        Role::Server,
        &calls,
        &[
            &clean("GET /a -> Some(200) req_body=0 resp_body=5 10..20"),
            &clean("POST /b -> Some(201) req_body=3 resp_body=0 30..40"),
        ],
    );
}

#[test]
fn pipelined_requests_are_answered_first_in_first_out() {
    let calls = [
        recv(10, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n"),
        send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        send(30, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    ];
    assert_conversation(
        Role::Server,
        &calls,
        &[
            &clean("GET /1 -> Some(200) req_body=0 resp_body=2 10..20"),
            &clean("GET /2 -> Some(404) req_body=0 resp_body=0 10..20"),
            // HEAD: Content-Length describes the body a GET would get; there is none.
            &clean("HEAD /3 -> Some(200) req_body=0 resp_body=0 10..30"),
        ],
    );
}

#[test]
fn a_chunked_response_ends_at_its_terminating_chunk() {
    let calls = [
        recv(10, b"GET /c HTTP/1.1\r\n\r\n"),
        send(20, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        send(30, b"4;x=y\r\nWiki\r\n"),
        send(40, b"5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n"),
        recv(50, b"GET /next HTTP/1.1\r\n\r\n"),
        send(60, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let body = "4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n".len();
    assert_conversation(
        Role::Server,
        &calls,
        &[
            &clean(&format!(
                "GET /c -> Some(200) req_body=0 resp_body={body} 10..40"
            )),
            &clean("GET /next -> Some(200) req_body=0 resp_body=0 50..60"),
        ],
    );
}

#[test]
fn a_chunked_request_body_is_framed_too() {
    let calls = [
        recv(
            10,
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        send(20, b"HTTP/1.1 204 No Content\r\n\r\n"),
    ];
    assert_conversation(
        Role::Server,
        &calls,
        &[&clean(
            "POST /up -> Some(204) req_body=13 resp_body=0 10..20",
        )],
    );
}

#[test]
fn a_close_delimited_response_ends_at_its_last_byte_before_the_close() {
    let calls = [
        recv(10, b"GET /old HTTP/1.0\r\n\r\n"),
        send(20, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n"),
        send(30, b"part one, "),
        send(40, b"part two"),
    ];
    assert_conversation(
        Role::Server,
        &calls,
        &[&clean(
            "GET /old -> Some(200) req_body=0 resp_body=18 10..40",
        )],
    );
}

#[test]
fn interim_100_continue_and_bodiless_statuses_are_framed() {
    let calls = [
        recv(
            10,
            b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        ),
        send(20, b"HTTP/1.1 100 Continue\r\n\r\n"),
        recv(30, b"data"),
        send(40, b"HTTP/1.1 204 No Content\r\n\r\n"),
        recv(50, b"GET /cached HTTP/1.1\r\n\r\n"),
        send(
            60,
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        ),
    ];
    assert_conversation(
        Role::Server,
        &calls,
        &[
            &clean("PUT /f -> Some(204) req_body=4 resp_body=0 10..40"),
            &clean("GET /cached -> Some(304) req_body=0 resp_body=0 50..60"),
        ],
    );
}

#[test]
fn after_an_upgrade_nothing_more_is_parsed() {
    let calls = [
        recv(
            10,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ),
        send(
            20,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ),
        recv(30, b"\x81\x05hello"),
        send(40, b"\x81\x05world"),
    ];
    let whole = run(Role::Server, &calls);
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].response.as_ref().unwrap().status, 101);
    assert!(whole[0].flags.upgraded);
}

#[test]
fn the_client_side_times_from_first_byte_written_to_last_byte_read() {
    let calls = [
        send(10, b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n"),
        recv(25, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"),
        recv(35, b"done"),
    ];
    let ex = run(Role::Client, &calls);
    assert_eq!(
        summaries(&ex),
        [clean("GET /x -> Some(200) req_body=0 resp_body=4 10..35")]
    );
    assert_eq!(ex[0].role, Role::Client);
}

#[test]
fn an_unknown_role_is_inferred_from_the_first_message() {
    let calls = [
        recv(10, b"GET /i HTTP/1.1\r\n\r\n"),
        send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let ex = run(Role::Unknown, &calls);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].role, Role::Server);
}

#[test]
fn a_request_without_a_response_is_reported_when_the_connection_closes() {
    let ex = run(Role::Server, &[recv(10, b"GET /hang HTTP/1.1\r\n\r\n")]);
    assert_eq!(ex.len(), 1);
    assert!(ex[0].flags.no_response);
    assert_eq!(ex[0].response, None);
}

#[test]
fn at_stop_open_exchanges_end_at_the_stop_time_and_say_so() {
    let mut evs = events(
        Role::Server,
        &[
            recv(10, b"GET /done HTTP/1.1\r\n\r\n"),
            send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            recv(30, b"GET /open HTTP/1.1\r\n\r\n"),
        ],
        usize::MAX,
    );
    evs.retain(|e| !matches!(e, KernelEvent::ConnClose(_)));
    let mut t = HttpTracker::new(TrackerLimits::default());
    let mut out = Vec::new();
    for e in evs {
        t.on_event(e, &mut out);
    }
    t.close_all(1_000, &mut out);
    let ex: Vec<Exchange> = out
        .into_iter()
        .filter_map(|o| o.into_exchange())
        .map(|c| c.exchange)
        .collect();
    assert_eq!(ex.len(), 2);
    assert!(!ex[0].flags.ended_at_stop, "finished before the stop");
    assert_eq!(
        (ex[1].request.target.as_str(), ex[1].end_ns),
        ("/open", 1_000)
    );
    assert!(ex[1].flags.ended_at_stop && ex[1].flags.no_response);
}

#[test]
fn reordered_and_retransmitted_calls_give_the_same_exchanges() {
    let calls = [
        recv(10, b"GET /r HTTP/1.1\r\n\r\n"),
        send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"),
        send(30, b"abcdef"),
    ];
    let mut evs = events(Role::Server, &calls, usize::MAX);
    let expected = summaries(&run_events(evs.clone()).0);
    // Deliver the body before the head, and the head twice.
    evs.swap(2, 3);
    let dup = evs[3].clone();
    evs.insert(4, dup);
    let (ex, stats) = run_events(evs);
    assert_eq!(summaries(&ex), expected);
    assert_eq!(stats.stream.duplicate_chunks, 1);
}

#[test]
fn a_body_longer_than_the_captured_prefix_is_framed_by_length_alone() {
    let body = vec![b'x'; 100_000];
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    response.extend_from_slice(&body);
    let calls = [
        recv(10, b"GET /big HTTP/1.1\r\n\r\n"),
        send(20, &response),
        recv(30, b"GET /after HTTP/1.1\r\n\r\n"),
        send(40, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let (ex, _) = run_events(events(Role::Server, &calls, 256));
    assert_eq!(
        summaries(&ex),
        [
            clean("GET /big -> Some(200) req_body=0 resp_body=100000 10..20"),
            clean("GET /after -> Some(200) req_body=0 resp_body=0 30..40")
        ]
    );
}

#[test]
fn a_chunked_body_past_the_prefix_ends_by_its_tail_or_is_marked_approximate() {
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..50 {
        chunked.extend_from_slice(b"10\r\n0123456789abcdef\r\n");
    }
    let mut terminated = chunked.clone();
    terminated.extend_from_slice(b"0\r\n\r\n");
    let calls = [recv(10, b"GET /t HTTP/1.1\r\n\r\n"), send(20, &terminated)];
    let (ex, _) = run_events(events(Role::Server, &calls, 128));
    assert_eq!(ex.len(), 1);
    assert!(
        ex[0].flags.end_from_tail && !ex[0].flags.end_approximate,
        "{:?}",
        ex[0].flags
    );
    assert_eq!(ex[0].end_ns, 20);

    // Without the terminator in its tail, the end is only approximate — and marked so.
    let calls = [
        recv(10, b"GET /t HTTP/1.1\r\n\r\n"),
        send(20, &chunked),
        send(30, b"0\r\n\r\n"),
    ];
    let (ex, _) = run_events(events(Role::Server, &calls, 128));
    assert_eq!(ex.len(), 1);
    assert!(ex[0].flags.end_approximate, "{:?}", ex[0].flags);
}

#[test]
fn a_long_chunk_is_skipped_by_its_size_and_framing_goes_on_in_the_calls_tail() {
    // One write per chunk (Go's Flush, Node's write, the JDK's chunked stream): the chunk's
    // CRLF and the next size line lie past the captured prefix, in the call's last bytes.
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut first = head.clone();
    first.extend_from_slice(format!("{:x}\r\n", 3000).as_bytes());
    first.extend(std::iter::repeat_n(b'c', 3000));
    first.extend_from_slice(b"\r\n");
    let mut second = format!("{:x}\r\n", 500).into_bytes();
    second.extend(std::iter::repeat_n(b'd', 500));
    second.extend_from_slice(b"\r\n");
    let calls = [
        recv(10, b"GET /t HTTP/1.1\r\n\r\n"),
        send(20, &first),
        send(25, &second),
        send(30, b"0\r\n\r\n"),
    ];
    let (ex, _) = run_events(events(Role::Server, &calls, 128));
    assert_eq!(ex.len(), 1);
    assert!(
        !ex[0].flags.end_approximate && !ex[0].flags.end_from_tail,
        "{:?}",
        ex[0].flags
    );
    assert_eq!(ex[0].end_ns, 30);
}

#[test]
fn a_head_cut_off_by_the_capture_keeps_its_request_line_and_is_marked() {
    let mut req = b"GET /long HTTP/1.1\r\nX-Pad: ".to_vec();
    req.extend(std::iter::repeat_n(b'p', 500));
    req.extend_from_slice(b"\r\n\r\n");
    let calls = [
        recv(10, &req),
        send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let (ex, _) = run_events(events(Role::Server, &calls, 64));
    assert_eq!(ex.len(), 1);
    assert_eq!(
        (ex[0].request.method.as_str(), ex[0].request.target.as_str()),
        ("GET", "/long")
    );
    assert!(ex[0].flags.request_truncated);
    assert_eq!(ex[0].response.as_ref().unwrap().status, 200);
}

#[test]
fn a_gap_loses_only_what_it_covers_and_pairing_resumes_after_it() {
    let calls = [
        recv(10, b"GET /1 HTTP/1.1\r\n\r\n"),
        send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        recv(30, b"GET /lost HTTP/1.1\r\n\r\n"),
        send(40, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"),
        recv(50, b"GET /3 HTTP/1.1\r\n\r\n"),
        send(60, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"),
    ];
    let mut evs = events(Role::Server, &calls, usize::MAX);
    evs.remove(3); // the kernel dropped the recv of GET /lost
    let (ex, stats) = run_events(evs.clone());
    let got: Vec<_> = ex
        .iter()
        .map(|e| {
            (
                e.request.target.clone(),
                e.response.as_ref().map(|r| r.status),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("/1".to_string(), Some(200)), ("/3".to_string(), Some(202))]
    );
    assert!(ex[1].flags.paired_after_loss);
    assert_eq!(stats.stream.gaps, 1);
    assert_eq!(stats.pairing.unmatched_responses, 1);

    // A dropped response: its request is never paired with the next response.
    let mut evs = events(Role::Server, &calls, usize::MAX);
    evs.remove(4);
    let (ex, _) = run_events(evs);
    let got: Vec<_> = ex
        .iter()
        .map(|e| {
            (
                e.request.target.clone(),
                e.response.as_ref().map(|r| r.status),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("/1".to_string(), Some(200)), ("/3".to_string(), Some(202))]
    );
}

#[test]
fn non_http_connections_produce_nothing() {
    for first in [
        &b"\x16\x03\x01\x00\xa5\x01\x00"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"SSH-2.0-x\r\n",
    ] {
        let calls = [send(10, first), recv(20, b"+PONG\r\n")];
        for role in [Role::Client, Role::Server, Role::Unknown] {
            let (ex, stats) = run_events(events(role, &calls, usize::MAX));
            assert!(ex.is_empty(), "{role:?} {first:?}");
            let _ = stats;
        }
    }
}

#[test]
fn garbage_never_panics_and_never_becomes_an_exchange_with_a_wrong_status() {
    // A small deterministic generator: no dependency, same bytes every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let pieces: [&[u8]; 8] = [
        b"GET / HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n",
        b"0\r\n\r\n",
        b"zz\xff\x00",
        b"abc",
    ];
    for _ in 0..2000 {
        let mut calls = Vec::new();
        for i in 0..(next() % 8) {
            let mut bytes = Vec::new();
            for _ in 0..(next() % 6) {
                bytes.extend_from_slice(pieces[(next() % 8) as usize]);
            }
            let dir = if next() % 2 == 0 {
                Direction::Recv
            } else {
                Direction::Send
            };
            calls.push(Call { dir, bytes, ts: i });
        }
        for role in [Role::Server, Role::Client, Role::Unknown] {
            let capture = [8, 64, usize::MAX][(next() % 3) as usize];
            for e in run_events(events(role, &calls, capture)).0 {
                if let Some(r) = &e.response {
                    assert_eq!(r.status, 200, "only 200 status lines exist in the input");
                }
            }
        }
    }
}

#[test]
fn requests_are_announced_when_they_start_with_their_order_on_the_connection() {
    let calls = [
        recv(10, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
        send(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let mut t = HttpTracker::new(TrackerLimits::default());
    let mut out = Vec::new();
    for e in events(Role::Server, &calls, usize::MAX) {
        t.on_event(e, &mut out);
    }
    let seen: Vec<String> = out
        .iter()
        .map(|o| match o {
            HttpOut::Started { start, .. } => format!(
                "start {} {} @{}",
                start.index, start.request.target, start.start_ns
            ),
            HttpOut::Done(c) => format!("done {} {}", c.exchange.index, c.exchange.request.target),
        })
        .collect();
    assert_eq!(
        seen,
        ["start 0 /1 @10", "start 1 /2 @10", "done 0 /1", "done 1 /2"]
    );
}
