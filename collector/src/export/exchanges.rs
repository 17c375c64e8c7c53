//! The `exchanges` exporter: one line per HTTP exchange — role, process, pid, method, URL,
//! status, duration, sizes — or one JSON object per line.

use std::{collections::HashMap, io::Write};

use serde::Serialize;

use super::OutputFormat;
use crate::{
    http::{ConnExchange, ExchangeFlags},
    source::{clock::Clock, event::Role},
};

/// Process names looked up in /proc, remembered per pid (bounded; cleared when full).
const MAX_COMMS: usize = 4096;

pub struct ExchangePrinter<W: Write> {
    out: W,
    format: OutputFormat,
    clock: Clock,
    comms: HashMap<u32, String>,
}

#[derive(Serialize)]
pub struct ExchangeLine<'a> {
    pub start: f64,
    pub end: f64,
    pub duration_ms: f64,
    pub role: Role,
    pub comm: &'a str,
    pub pid: u32,
    pub tid: u32,
    pub conn: u64,
    pub method: &'a str,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    pub flags: ExchangeFlags,
}

impl<W: Write> ExchangePrinter<W> {
    pub fn new(out: W, format: OutputFormat, clock: Clock) -> Self {
        Self {
            out,
            format,
            clock,
            comms: HashMap::new(),
        }
    }

    pub fn export(&mut self, e: &ConnExchange) -> std::io::Result<()> {
        let x = &e.exchange;
        let comm = if e.conn.comm.is_empty() {
            self.comm(x.pid)
        } else {
            e.conn.comm.clone()
        };
        let line = ExchangeLine {
            start: self.clock.epoch_seconds(x.start_ns),
            end: self.clock.epoch_seconds(x.end_ns),
            duration_ms: (x.end_ns - x.start_ns) as f64 / 1e6,
            role: x.role,
            comm: &comm,
            pid: x.pid,
            tid: x.tid,
            conn: x.conn_id,
            method: &x.request.method,
            url: url(e),
            status: x.response.as_ref().map(|r| r.status),
            request_body_bytes: x.request_body_bytes,
            response_body_bytes: x.response_body_bytes,
            remote: e.conn.remote.map(|a| a.to_string()),
            flags: x.flags,
        };
        super::write_line(&mut self.out, self.format, &line, text)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn comm(&mut self, pid: u32) -> String {
        if self.comms.len() >= MAX_COMMS {
            self.comms.clear();
        }
        self.comms
            .entry(pid)
            .or_insert_with(|| crate::trace::process::comm(pid))
            .clone()
    }
}

pub fn url(e: &ConnExchange) -> String {
    crate::http::request_url(&e.exchange.request, e.exchange.role, &e.conn)
}

fn text(l: &ExchangeLine<'_>) -> String {
    let status = l.status.map_or_else(|| "---".to_owned(), |s| s.to_string());
    let mut s = format!(
        "{:.6} {:<6} {}[{}] {} {} {} {:.3}ms req={}B resp={}B",
        l.start,
        format!("{:?}", l.role).to_lowercase(),
        l.comm,
        l.pid,
        l.method,
        l.url,
        status,
        l.duration_ms,
        l.request_body_bytes,
        l.response_body_bytes
    );
    let f = l.flags;
    for (set, name) in [
        (f.end_approximate, "end~"),
        (f.end_from_tail, "end-from-tail"),
        (f.incomplete, "incomplete"),
        (f.no_response, "no-response"),
        (f.request_truncated, "head-truncated"),
        (f.upgraded, "upgraded"),
        (f.paired_after_loss, "after-loss"),
    ] {
        if set {
            s.push(' ');
            s.push_str(name);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{ConnMeta, Exchange, head::RequestHead, head::ResponseHead};

    fn exchange(host: Option<&str>, target: &str) -> ConnExchange {
        ConnExchange {
            exchange: Exchange {
                conn_id: 1,
                index: 0,
                role: Role::Server,
                pid: 42,
                tid: 43,
                request: RequestHead {
                    method: "GET".into(),
                    target: target.into(),
                    host: host.map(Into::into),
                    ..RequestHead::default()
                },
                response: Some(ResponseHead {
                    status: 200,
                    ..ResponseHead::default()
                }),
                start_ns: 1_000_000,
                end_ns: 13_500_000,
                request_body_bytes: 0,
                response_body_bytes: 1024,
                flags: ExchangeFlags::default(),
            },
            conn: ConnMeta {
                role: Some(Role::Server),
                comm: "python3".into(),
                local: Some("127.0.0.1:8000".parse().unwrap()),
                remote: Some("127.0.0.1:50000".parse().unwrap()),
                isns: None,
            },
        }
    }

    #[test]
    fn the_url_drops_the_query_and_falls_back_to_the_server_address() {
        assert_eq!(
            url(&exchange(Some("svc:80"), "/a/b?token=secret#x")),
            "http://svc:80/a/b"
        );
        assert_eq!(url(&exchange(None, "/p")), "http://127.0.0.1:8000/p");
    }

    #[test]
    fn a_text_line_names_role_process_request_status_duration_and_sizes() {
        let mut p = ExchangePrinter::new(Vec::new(), OutputFormat::Text, Clock::with_offset_ns(0));
        p.export(&exchange(Some("h"), "/x?q=1")).unwrap();
        let out = String::from_utf8(p.out).unwrap();
        assert!(
            out.contains("server python3[42] GET http://h/x 200 12.500ms req=0B resp=1024B"),
            "{out}"
        );
        assert!(!out.contains("q=1"));
    }

    #[test]
    fn json_lines_carry_the_same_fields() {
        let mut p = ExchangePrinter::new(Vec::new(), OutputFormat::Json, Clock::with_offset_ns(0));
        p.export(&exchange(Some("h"), "/x")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.out).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], 200);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["role"], "server");
        assert_eq!(v["duration_ms"], 12.5);
        assert_eq!(v["flags"]["no_response"], false);
    }
}
