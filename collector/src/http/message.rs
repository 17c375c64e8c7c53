//! Framing of one direction of an HTTP/1.x connection into messages: where each head starts,
//! where each message ends, and what was lost. The pairing of requests with responses (and so
//! the framing of a response, which depends on its request) is decided by the caller.

use super::{
    chunked::{ChunkedDecoder, Step},
    head::{self, Parsed, RequestHead, ResponseHead},
};
use crate::stream::Chunk;

/// Longest head accepted, in bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes the kernel copies from the end of a call: a chunked body's terminator fits.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A byte of a stream and the call that moved it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Point {
    pub offset: u64,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

/// How the body after a head is delimited; decided by the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    NoBody,
    Length(u64),
    Chunked,
    UntilClose,
    /// The connection stops speaking HTTP after this message (upgrade, CONNECT tunnel).
    Tunnel,
}

/// How sure the end of a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// Its last byte was framed exactly.
    Exact,
    /// A chunked body whose terminator was seen in the tail of the call that ended it.
    FromTail,
    /// Its end fell in bytes that were not captured: the time is the last call seen.
    Approximate,
    /// The connection closed (or the collector lost it) before the message ended.
    Incomplete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageEvent {
    Head {
        head: Head,
        start: Point,
    },
    End {
        end: Point,
        body_bytes: u64,
        kind: EndKind,
    },
    /// Bytes that could not be framed: messages in them are lost until the next call that
    /// starts a message. `request_line` is set when a request's head was cut off after it.
    Lost {
        at: Point,
        reason: &'static str,
        request_line: Option<(String, String)>,
    },
}

#[derive(Debug)]
enum State {
    Idle,
    Head {
        buf: Vec<u8>,
        start: Point,
    },
    Body {
        body: BodyState,
        bytes: u64,
    },
    /// Lost track; wait for a call that starts a message.
    Desync,
    /// No longer HTTP.
    Tunnel,
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

#[derive(Debug)]
pub struct MessageParser {
    side: Side,
    state: State,
    /// The last byte seen, for ends that fall where nothing was captured.
    last: Point,
}

impl MessageParser {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            state: State::Idle,
            last: Point::default(),
        }
    }

    pub fn is_tunnel(&self) -> bool {
        matches!(self.state, State::Tunnel)
    }

    /// Frames the bytes of one call. `decide` chooses the framing of each body from its head.
    pub fn feed(
        &mut self,
        c: &Chunk,
        decide: &mut dyn FnMut(&Head) -> Framing,
        out: &mut Vec<MessageEvent>,
    ) {
        if c.len == 0 {
            return;
        }
        let point = |p: u64| Point {
            offset: c.offset + p,
            ts_ns: c.ts_ns,
            pid: c.pid,
            tid: c.tid,
        };
        let known = c.bytes.len() as u64;
        match self.state {
            State::Tunnel => return,
            // A call usually starts a message: that is where framing can resume.
            State::Desync if self.starts_message(&c.bytes) => self.state = State::Idle,
            State::Desync => {
                self.last = point(c.len - 1);
                return;
            }
            _ => {}
        }
        let mut p = 0u64;
        while p < c.len {
            match &mut self.state {
                State::Idle => {
                    if p >= known {
                        self.lose(point(p), "message start not captured", None, out);
                        break;
                    }
                    // Empty lines between messages are allowed (RFC 9112 §2.2).
                    if matches!(c.bytes[p as usize], b'\r' | b'\n') {
                        p += 1;
                        continue;
                    }
                    self.state = State::Head {
                        buf: Vec::new(),
                        start: point(p),
                    };
                }
                State::Head { buf, start } => {
                    let start = *start;
                    if p >= known {
                        let line = match self.side {
                            Side::Request => head::parse_request_line(buf),
                            Side::Response => None,
                        };
                        self.lose(start, "head longer than the captured bytes", line, out);
                        break;
                    }
                    let before = buf.len();
                    let avail = &c.bytes[p as usize..];
                    let take = avail.len().min(MAX_HEAD - before);
                    buf.extend_from_slice(&avail[..take]);
                    match parse(self.side, buf) {
                        Parsed::Complete((head, head_len)) => {
                            p += (head_len - before) as u64;
                            let framing = decide(&head);
                            out.push(MessageEvent::Head { head, start });
                            let end = point(p - 1);
                            self.state = match framing {
                                Framing::NoBody | Framing::Length(0) => {
                                    out.push(end_event(end, 0, EndKind::Exact));
                                    State::Idle
                                }
                                Framing::Tunnel => {
                                    out.push(end_event(end, 0, EndKind::Exact));
                                    State::Tunnel
                                }
                                Framing::Length(n) => State::Body {
                                    body: BodyState::Length(n),
                                    bytes: 0,
                                },
                                Framing::Chunked => State::Body {
                                    body: BodyState::Chunked(ChunkedDecoder::default()),
                                    bytes: 0,
                                },
                                Framing::UntilClose => State::Body {
                                    body: BodyState::UntilClose,
                                    bytes: 0,
                                },
                            };
                        }
                        Parsed::Partial if buf.len() >= MAX_HEAD => {
                            self.lose(start, "head too large", None, out);
                            break;
                        }
                        Parsed::Partial => p += take as u64,
                        Parsed::Invalid(reason) => {
                            self.lose(start, reason, None, out);
                            break;
                        }
                    }
                }
                State::Body { body, bytes } => {
                    let available = c.len - p;
                    match body {
                        BodyState::Length(rem) => {
                            let take = (*rem).min(available);
                            *rem -= take;
                            *bytes += take;
                            p += take;
                            if *rem == 0 {
                                out.push(end_event(point(p - 1), *bytes, EndKind::Exact));
                                self.state = State::Idle;
                            }
                        }
                        BodyState::UntilClose => {
                            *bytes += available;
                            p = c.len;
                        }
                        BodyState::Chunked(decoder) => {
                            match decoder.step(known_at(c, p), available) {
                                Step::Consumed(n) => {
                                    *bytes += n;
                                    p += n;
                                }
                                Step::Done(n) => {
                                    *bytes += n;
                                    p += n;
                                    out.push(end_event(point(p - 1), *bytes, EndKind::Exact));
                                    self.state = State::Idle;
                                }
                                Step::NeedBytes => {
                                    let total = *bytes + available;
                                    let end = point(c.len - 1);
                                    // The size lines were not captured, but the call's last
                                    // bytes were: a terminator there ends the message.
                                    if c.tail.as_deref().is_some_and(|t| t.ends_with(LAST_CHUNK)) {
                                        out.push(end_event(end, total, EndKind::FromTail));
                                        self.state = State::Idle;
                                    } else {
                                        out.push(end_event(end, total, EndKind::Approximate));
                                        self.state = State::Desync;
                                    }
                                    p = c.len;
                                }
                                Step::Invalid(reason) => {
                                    let at = point(p);
                                    out.push(end_event(at, *bytes, EndKind::Approximate));
                                    self.lose(at, reason, None, out);
                                    break;
                                }
                            }
                        }
                    }
                }
                State::Desync | State::Tunnel => break,
            }
        }
        self.last = point(c.len - 1);
    }

    /// `len` bytes at `offset` were never seen.
    pub fn gap(&mut self, offset: u64, len: u64, out: &mut Vec<MessageEvent>) {
        let at = Point {
            offset,
            ..self.last
        };
        match &mut self.state {
            State::Tunnel | State::Desync => {}
            State::Body {
                body: BodyState::UntilClose,
                bytes,
            } => *bytes += len,
            // A hole inside a body of known length loses nothing: its bytes are not needed.
            State::Body {
                body: BodyState::Length(rem),
                bytes,
            }
            | State::Body {
                body: BodyState::Chunked(ChunkedDecoder::Data(rem)),
                bytes,
            } if len < *rem => {
                *rem -= len;
                *bytes += len;
            }
            State::Body {
                body: BodyState::Length(rem),
                bytes,
            } if len == *rem => {
                out.push(end_event(at, *bytes + len, EndKind::Approximate));
                self.state = State::Idle;
            }
            State::Body { bytes, .. } => {
                out.push(end_event(at, *bytes, EndKind::Approximate));
                self.lose(at, "gap in the captured stream", None, out);
            }
            State::Idle => self.lose(at, "gap in the captured stream", None, out),
            State::Head { start, .. } => {
                let start = *start;
                self.lose(start, "gap in the captured stream", None, out);
            }
        }
    }

    /// The connection closed: a body delimited by the close ends here, others are cut short.
    pub fn close(&mut self, out: &mut Vec<MessageEvent>) {
        match &self.state {
            State::Body {
                body: BodyState::UntilClose,
                bytes,
            } => {
                out.push(end_event(self.last, *bytes, EndKind::Exact));
            }
            State::Body { bytes, .. } => {
                out.push(end_event(self.last, *bytes, EndKind::Incomplete))
            }
            State::Head { start, .. } => {
                let start = *start;
                self.lose(start, "connection closed inside a head", None, out);
            }
            State::Idle | State::Desync | State::Tunnel => {}
        }
        self.state = State::Idle;
    }

    fn starts_message(&self, bytes: &[u8]) -> bool {
        match self.side {
            Side::Request => head::looks_like_request_start(bytes),
            Side::Response => head::looks_like_response_start(bytes),
        }
    }

    fn lose(
        &mut self,
        at: Point,
        reason: &'static str,
        request_line: Option<(String, String)>,
        out: &mut Vec<MessageEvent>,
    ) {
        out.push(MessageEvent::Lost {
            at,
            reason,
            request_line,
        });
        self.state = State::Desync;
    }
}

/// The call's bytes known from offset `p` on: its captured prefix, else its captured last
/// bytes where those reach back to `p` (a chunk's CRLF and the next size line often sit
/// beyond a long chunk's captured prefix, inside the call's tail).
fn known_at(c: &Chunk, p: u64) -> &[u8] {
    if let Some(rest) = c.bytes.get(p as usize..).filter(|r| !r.is_empty()) {
        return rest;
    }
    match &c.tail {
        Some(t) if c.len >= t.len() as u64 && p >= c.len - t.len() as u64 && p < c.len => {
            &t[(p - (c.len - t.len() as u64)) as usize..]
        }
        _ => &[],
    }
}

fn end_event(end: Point, body_bytes: u64, kind: EndKind) -> MessageEvent {
    MessageEvent::End {
        end,
        body_bytes,
        kind,
    }
}

fn parse(side: Side, buf: &[u8]) -> Parsed<(Head, usize)> {
    match side {
        Side::Request => match head::parse_request(buf) {
            Parsed::Complete(h) => {
                let n = h.head_len;
                Parsed::Complete((Head::Request(h), n))
            }
            Parsed::Partial => Parsed::Partial,
            Parsed::Invalid(e) => Parsed::Invalid(e),
        },
        Side::Response => match head::parse_response(buf) {
            Parsed::Complete(h) => {
                let n = h.head_len;
                Parsed::Complete((Head::Response(h), n))
            }
            Parsed::Partial => Parsed::Partial,
            Parsed::Invalid(e) => Parsed::Invalid(e),
        },
    }
}
