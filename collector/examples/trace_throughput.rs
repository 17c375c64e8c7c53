//! How fast the stages after the kernel are: synthetic server exchanges through the HTTP and
//! trace stages, without printing. `cargo run --release --example trace_throughput`.

use std::time::Instant;

use collector::{
    http::{HttpTracker, TrackerLimits},
    source::{
        clock::Clock,
        event::{ConnRecord, DataRecord, Direction, KernelEvent, Role},
    },
    trace::{TraceAssembler, TraceConfig, process::ProcessInfo},
};

struct Names;

impl ProcessInfo for Names {
    fn name(&mut self, _pid: u32) -> String {
        "nginx".into()
    }
    fn moves_work_between_threads(&mut self, _pid: u32) -> bool {
        false
    }
}

fn main() {
    const N: u64 = 200_000;
    let req = b"GET /ok/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: oha/1.16\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
    let mut events = Vec::new();
    for conn in 0..16u64 {
        events.push(KernelEvent::ConnOpen(ConnRecord {
            ts_ns: 0,
            conn_id: conn,
            role: Role::Server,
            pid: 1,
            tid: 1,
            comm: "nginx".into(),
            local: Some("127.0.0.1:8080".parse().unwrap()),
            remote: Some(format!("127.0.0.1:{}", 40000 + conn).parse().unwrap()),
            rx_bytes: 0,
            tx_bytes: 0,
            recv_seq0: 0,
            send_seq0: 0,
        }));
    }
    for i in 0..N {
        let conn = i % 16;
        let round = i / 16;
        let data = |dir, bytes: &[u8], off: u64, ts| {
            KernelEvent::Data(DataRecord {
                ts_ns: ts,
                conn_id: conn,
                direction: dir,
                pid: 1,
                tid: 1,
                stream_offset: off,
                total_len: bytes.len() as u32,
                payload: bytes.to_vec(),
                tail: None,
                payload_missing: false,
            })
        };
        events.push(data(
            Direction::Recv,
            req,
            round * req.len() as u64,
            i * 50_000,
        ));
        events.push(data(
            Direction::Send,
            resp,
            round * resp.len() as u64,
            i * 50_000 + 20_000,
        ));
    }

    let mut tracker = HttpTracker::new(TrackerLimits::default());
    let mut assembler =
        TraceAssembler::new(TraceConfig::default(), Clock::with_offset_ns(0), Names);
    let (mut http, mut segments) = (Vec::new(), Vec::new());
    let (mut t_http, mut t_trace, mut t_json, mut t_on) = (0.0, 0.0, 0.0, 0.0);
    let mut docs = 0usize;
    for chunk in events.chunks(2000) {
        let t = Instant::now();
        for e in chunk.iter().cloned() {
            tracker.on_event(e, &mut http);
        }
        t_http += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let now = match chunk.last() {
            Some(KernelEvent::Data(d)) => d.ts_ns,
            _ => 0,
        };
        for h in http.drain(..) {
            assembler.on_http(h);
        }
        t_on += t.elapsed().as_secs_f64();
        assembler.tick(now, &mut segments);
        t_trace += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for s in segments.drain(..) {
            docs += collector::export::xray::segments::documents(&s).len();
        }
        t_json += t.elapsed().as_secs_f64();
    }
    let per = |t: f64| t * 1e6 / N as f64;
    println!(
        "{N} exchanges: http stage {:.2} µs, trace stage {:.2} µs (events {:.2}), JSON {:.2} µs per exchange; {docs} documents; {} remembered",
        per(t_http),
        per(t_on),
        per(t_trace),
        per(t_json),
        assembler.remembered()
    );
}
