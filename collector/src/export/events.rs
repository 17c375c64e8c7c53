//! The `events` exporter: one line per kernel event (connection opened/closed, bytes moved),
//! naming the process and the first line of the bytes. A debug view of what the kernel sees.

use std::{collections::HashMap, io::Write};

use serde::Serialize;

use super::OutputFormat;
use crate::source::{
    clock::Clock,
    event::{ConnRecord, DataRecord, Direction, KernelEvent, Role},
};

/// Connections remembered to name the process of later data lines. Bounded: beyond it the
/// oldest entries are not kept and lines fall back to /proc.
const MAX_CONNS: usize = 65_536;
/// Longest first line printed.
const MAX_LINE: usize = 200;

pub struct EventPrinter<W: Write> {
    out: W,
    format: OutputFormat,
    clock: Clock,
    conns: HashMap<u64, (Role, String)>,
    /// Connections not remembered because the table was full.
    pub conns_not_remembered: u64,
}

impl<W: Write> EventPrinter<W> {
    pub fn new(out: W, format: OutputFormat, clock: Clock) -> Self {
        Self {
            out,
            format,
            clock,
            conns: HashMap::new(),
            conns_not_remembered: 0,
        }
    }

    pub fn on_event(&mut self, event: &KernelEvent) -> std::io::Result<()> {
        let line = match event {
            KernelEvent::ConnOpen(c) => {
                if self.conns.len() < MAX_CONNS {
                    self.conns.insert(c.conn_id, (c.role, c.comm.clone()));
                } else {
                    self.conns_not_remembered += 1;
                }
                self.conn_line("open", c)
            }
            KernelEvent::ConnClose(c) => {
                let comm = self.conns.remove(&c.conn_id).map(|(_, comm)| comm);
                let mut line = self.conn_line("close", c);
                line.comm = comm.unwrap_or_default();
                line
            }
            KernelEvent::Data(d) => self.data_line(d),
        };
        super::write_line(&mut self.out, self.format, &line, text)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn conn_line(&self, event: &'static str, c: &ConnRecord) -> Line {
        Line {
            ts: self.clock.epoch_seconds(c.ts_ns),
            event,
            direction: None,
            role: c.role,
            pid: c.pid,
            tid: c.tid,
            comm: c.comm.clone(),
            conn: c.conn_id,
            remote: c.remote.map(|a| a.to_string()),
            offset: None,
            len: None,
            first_line: None,
        }
    }

    fn data_line(&self, d: &DataRecord) -> Line {
        let (role, comm) = match self.conns.get(&d.conn_id) {
            Some((role, comm)) => (*role, comm.clone()),
            None => (Role::Unknown, crate::trace::process::comm(d.pid)),
        };
        Line {
            ts: self.clock.epoch_seconds(d.ts_ns),
            event: "data",
            direction: Some(d.direction),
            role,
            pid: d.pid,
            tid: d.tid,
            comm,
            conn: d.conn_id,
            remote: None,
            offset: Some(d.stream_offset),
            len: Some(d.total_len),
            first_line: Some(first_line(&d.payload)),
        }
    }
}

#[derive(Serialize)]
struct Line {
    ts: f64,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<Direction>,
    role: Role,
    pid: u32,
    tid: u32,
    comm: String,
    conn: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_line: Option<String>,
}

fn text(l: &Line) -> String {
    let what = match (l.event, l.direction) {
        ("data", Some(Direction::Recv)) => "recv",
        ("data", Some(Direction::Send)) => "send",
        (e, _) => e,
    };
    let mut s = format!(
        "{:.6} {what:<5} {:<7} pid={} tid={} comm={} conn={:#x}",
        l.ts,
        format!("{:?}", l.role).to_lowercase(),
        l.pid,
        l.tid,
        l.comm,
        l.conn
    );
    if let Some(r) = &l.remote {
        s.push_str(&format!(" remote={r}"));
    }
    if let (Some(off), Some(len)) = (l.offset, l.len) {
        s.push_str(&format!(" offset={off} len={len}"));
    }
    if let Some(f) = &l.first_line {
        s.push_str(&format!(" {f:?}"));
    }
    s
}

/// The bytes up to the first line break, as text, bounded.
pub fn first_line(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(payload.len())
        .min(MAX_LINE);
    crate::http::redact::redact_request_line(&String::from_utf8_lossy(&payload[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(payload: &[u8]) -> KernelEvent {
        KernelEvent::Data(DataRecord {
            ts_ns: 0,
            conn_id: 1,
            direction: Direction::Recv,
            pid: 5,
            tid: 6,
            stream_offset: 0,
            total_len: payload.len() as u32,
            payload: payload.to_vec(),
            tail: None,
            payload_missing: false,
        })
    }

    fn open() -> KernelEvent {
        KernelEvent::ConnOpen(ConnRecord {
            ts_ns: 0,
            conn_id: 1,
            role: Role::Server,
            pid: 5,
            tid: 5,
            comm: "python3".into(),
            local: None,
            remote: Some("127.0.0.1:4000".parse().unwrap()),
            rx_bytes: 0,
            tx_bytes: 0,
            recv_seq0: 0,
            send_seq0: 0,
        })
    }

    #[test]
    fn a_request_line_is_printed_with_the_process_that_read_it() {
        let mut p = EventPrinter::new(Vec::new(), OutputFormat::Text, Clock::with_offset_ns(0));
        p.on_event(&open()).unwrap();
        p.on_event(&data(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"))
            .unwrap();
        let out = String::from_utf8(p.out).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("open") && lines[0].contains("remote=127.0.0.1:4000"));
        assert!(
            lines[1].contains("recv  server  pid=5 tid=6 comm=python3"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with("\"GET /hello HTTP/1.1\""),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn json_lines_parse_and_carry_the_first_line() {
        let mut p = EventPrinter::new(Vec::new(), OutputFormat::Json, Clock::with_offset_ns(0));
        p.on_event(&open()).unwrap();
        p.on_event(&data(b"HTTP/1.0 200 OK\r\n")).unwrap();
        let out = String::from_utf8(p.out).unwrap();
        let v: serde_json::Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
        assert_eq!(v["event"], "data");
        assert_eq!(v["direction"], "recv");
        assert_eq!(v["comm"], "python3");
        assert_eq!(v["first_line"], "HTTP/1.0 200 OK");
    }

    #[test]
    fn first_line_is_bounded_and_stops_at_the_line_break() {
        assert_eq!(first_line(b"GET / HTTP/1.1\r\nX"), "GET / HTTP/1.1");
        assert_eq!(first_line(&[b'a'; 1000]).len(), MAX_LINE);
        assert_eq!(first_line(b""), "");
    }
}
