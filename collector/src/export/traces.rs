//! The `stdout` exporter: a readable block per segment document with a small waterfall of
//! its subsegments, or — with `--format json` — one X-Ray segment document per line.

use std::io::Write;

use super::{
    OutputFormat,
    xray::{document::Segment, segments},
};
use crate::trace::SpanGroup;

/// Width of the waterfall bars.
const BAR: usize = 40;

pub struct TracePrinter<W: Write> {
    out: W,
    format: OutputFormat,
}

impl<W: Write> TracePrinter<W> {
    pub fn new(out: W, format: OutputFormat) -> Self {
        Self { out, format }
    }

    pub fn export(&mut self, group: &SpanGroup) -> std::io::Result<()> {
        let segment = segments::segment(group);
        match self.format {
            OutputFormat::Json => {
                for doc in segment.into_documents() {
                    self.out.write_all(doc.as_bytes())?;
                    self.out.write_all(b"\n")?;
                }
                Ok(())
            }
            OutputFormat::Text => self.out.write_all(block(&segment).as_bytes()),
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> super::SpanExporter for TracePrinter<W> {
    fn export(&mut self, batch: &mut Vec<SpanGroup>) -> std::io::Result<()> {
        batch
            .drain(..)
            .try_for_each(|g| TracePrinter::export(self, &g))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        TracePrinter::flush(self)
    }

    /// SDK documents: as they came (JSON), or one `sdk` line each (text).
    fn export_documents(&mut self, docs: &mut Vec<String>) -> std::io::Result<()> {
        for doc in docs.drain(..) {
            if self.format == OutputFormat::Text {
                self.out.write_all(b"sdk ")?;
            }
            self.out.write_all(doc.as_bytes())?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// ```text
/// trace 1-6745a1b2-…  segment 53995c3f42cd8ad8 (parent 3a1b…)
///   python3   GET http://a:8000/x 200  210.400ms |████████████████████████████████████████|
///   └ b       GET http://b:9000/y 200  180.100ms |   ██████████████████████████████████   |
/// ```
pub fn block(s: &Segment) -> String {
    let trace = s.trace_id.as_deref().unwrap_or("-");
    let mut out = match (&s.kind, &s.parent_id) {
        (Some(kind), Some(p)) => format!("trace {trace}  {kind} {} (parent {p})\n", s.id),
        (None, Some(p)) => format!("trace {trace}  segment {} (parent {p})\n", s.id),
        _ => format!("trace {trace}  segment {}\n", s.id),
    };
    let (t0, span) = (s.start_time, (s.end_time - s.start_time).max(1e-9));
    out.push_str(&line("", s, t0, span));
    for (i, sub) in s.subsegments.iter().enumerate() {
        let branch = if i + 1 == s.subsegments.len() {
            "└ "
        } else {
            "├ "
        };
        out.push_str(&line(branch, sub, t0, span));
    }
    out
}

fn line(prefix: &str, s: &Segment, t0: f64, span: f64) -> String {
    let (method, url, status) = match &s.http {
        Some(h) => (
            h.request.method.as_str(),
            h.request.url.as_str(),
            h.response
                .as_ref()
                .map_or("---".to_owned(), |r| r.status.to_string()),
        ),
        None => ("", "", String::new()),
    };
    let from = (((s.start_time - t0) / span) * BAR as f64)
        .round()
        .clamp(0.0, BAR as f64) as usize;
    let to = (((s.end_time - t0) / span) * BAR as f64)
        .round()
        .clamp(from as f64, BAR as f64) as usize;
    let bar: String = (0..BAR)
        .map(|i| {
            if i >= from && (i < to || (i == from && to == from)) {
                '█'
            } else {
                ' '
            }
        })
        .collect();
    format!(
        "  {prefix}{:<12} {method} {url} {status} {:>10.3}ms |{bar}|\n",
        s.name,
        (s.end_time - s.start_time) * 1e3
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::xray::document::{Http, HttpRequest, HttpResponse},
        trace::span::fixtures::server_group,
    };

    fn seg(name: &str, start: f64, end: f64, subs: Vec<Segment>) -> Segment {
        Segment {
            name: name.into(),
            id: "53995c3f42cd8ad8".into(),
            trace_id: Some("1-5759e988-bd862e3fe1be46a994272793".into()),
            parent_id: None,
            start_time: start,
            end_time: end,
            kind: None,
            namespace: None,
            origin: None,
            http: Some(Http {
                request: HttpRequest {
                    method: "GET".into(),
                    url: format!("http://{name}/x"),
                    user_agent: None,
                    client_ip: None,
                    x_forwarded_for: false,
                    traced: false,
                },
                response: Some(HttpResponse {
                    status: 200,
                    content_length: None,
                }),
            }),
            error: false,
            throttle: false,
            fault: false,
            annotations: Default::default(),
            aws: None,
            subsegments: subs,
        }
    }

    #[test]
    fn a_block_shows_the_trace_and_a_waterfall_of_its_calls() {
        let s = seg("a", 10.0, 10.2, vec![seg("b", 10.05, 10.15, vec![])]);
        let text = block(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "trace 1-5759e988-bd862e3fe1be46a994272793  segment 53995c3f42cd8ad8"
        );
        assert!(lines[1].contains("a            GET http://a/x 200    200.000ms |████████████████████████████████████████|"), "{text}");
        assert!(
            lines[2].contains("└ b")
                && lines[2].contains("100.000ms |          ████████████████████          |"),
            "{text}"
        );
    }

    #[test]
    fn json_output_is_one_document_per_line() {
        let mut p = TracePrinter::new(Vec::new(), OutputFormat::Json);
        p.export(&server_group("a", 1)).unwrap();
        let out = String::from_utf8(p.out).unwrap();
        assert_eq!(out.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["name"], "a");
    }
}
