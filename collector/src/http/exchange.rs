//! Pairing requests with responses on one connection (FIFO, so pipelining works), and the
//! exchange record the later stages consume.

use std::collections::VecDeque;

use serde::Serialize;

use super::{
    head::{BodyFraming, RequestHead, ResponseHead, StreamStart, classify_start},
    message::{EndKind, Framing, Head, MessageEvent, MessageParser, Point, Side},
};
use crate::counters::counters;
use crate::{
    source::event::{Direction, Role},
    stream::{Chunk, StreamItem},
};

/// Requests waiting for their responses on one connection (pipelining depth).
const MAX_IN_FLIGHT: usize = 256;

/// One HTTP request and its response, as one side of the connection saw them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub conn_id: u64,
    /// The request's position on its connection (0 for the first): with the connection's
    /// addresses it names the same request on both ends of a TCP connection.
    pub index: u64,
    pub role: Role,
    pub pid: u32,
    /// The thread that read (server) or wrote (client) the request's first byte.
    pub tid: u32,
    pub request: RequestHead,
    pub response: Option<ResponseHead>,
    /// First request byte read by the server / written by the client (kernel ns).
    pub start_ns: u64,
    /// Last response byte written by the server / read by the client (kernel ns).
    pub end_ns: u64,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    pub flags: ExchangeFlags,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExchangeFlags {
    /// The end time is the last call seen before bytes that were not captured.
    pub end_approximate: bool,
    /// A chunked response's end was found in the tail bytes of its last call.
    pub end_from_tail: bool,
    /// The response was cut short (connection closed, or lost by the collector).
    pub incomplete: bool,
    /// No response was seen before the connection closed.
    pub no_response: bool,
    /// The request head was longer than the captured bytes: only its request line is known.
    pub request_truncated: bool,
    /// The connection switched protocols after this exchange.
    pub upgraded: bool,
    /// Paired after requests were lost on the connection: very likely right, but not certain
    /// under pipelining, so never used to link traces.
    pub paired_after_loss: bool,
    /// Still open when the collector stopped: ended at the stop time.
    pub ended_at_stop: bool,
}

counters! {
    pub struct PairingStats("http") {
        /// Messages that could not be framed (malformed, gaps, truncated heads).
        pub lost_messages,
        /// Responses with no request to pair with (their requests were lost).
        pub unmatched_responses,
        /// Requests dropped because too many were in flight on one connection.
        pub in_flight_overflow,
    }
}

/// A request whose head was just read (server) or written (client): what is in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestStart {
    pub conn_id: u64,
    pub index: u64,
    pub role: Role,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub request: RequestHead,
}

/// What the HTTP stage reports for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpEvent {
    Started(RequestStart),
    Done(Exchange),
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    head: RequestHead,
    start: Point,
    body_bytes: u64,
    /// Only the request line is known (the head was longer than the captured bytes).
    truncated: bool,
    index: u64,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "Lost is rare; the queue is nearly all requests"
)]
enum Queued {
    Request(Pending),
    /// An unknown number of requests were lost here.
    Lost,
}

/// The HTTP state of one connection: both directions' framing and the requests in flight.
#[derive(Debug)]
pub struct Pairing {
    conn_id: u64,
    role: Role,
    /// Which direction carries requests; known from the role or from the first bytes.
    request_dir: Option<Direction>,
    requests: MessageParser,
    responses: MessageParser,
    queue: VecDeque<Queued>,
    /// The response being received: its head, or None for an interim (1xx) one.
    response: Option<Option<ResponseHead>>,
    /// The first bytes were not HTTP: everything else on the connection is ignored.
    not_http: bool,
    /// The response being received was paired across lost requests.
    after_loss: bool,
    /// Requests seen on the connection so far (the next one's index).
    requests_seen: u64,
    pub stats: PairingStats,
}

impl Pairing {
    pub fn new(conn_id: u64, role: Role) -> Self {
        let request_dir = match role {
            Role::Server => Some(Direction::Recv),
            Role::Client => Some(Direction::Send),
            Role::Unknown => None,
        };
        Self {
            conn_id,
            role,
            request_dir,
            requests: MessageParser::new(Side::Request),
            responses: MessageParser::new(Side::Response),
            queue: VecDeque::new(),
            response: None,
            not_http: false,
            after_loss: false,
            requests_seen: 0,
            stats: PairingStats::default(),
        }
    }

    pub fn is_http(&self) -> bool {
        !self.not_http
    }

    /// Frames stream items of one direction; completed exchanges are appended to `out`.
    pub fn feed(&mut self, dir: Direction, item: &StreamItem, out: &mut Vec<HttpEvent>) {
        if self.not_http || self.requests.is_tunnel() && self.responses.is_tunnel() {
            return;
        }
        if self.request_dir.is_none() {
            self.infer_roles(dir, item);
            if self.not_http {
                return;
            }
        }
        let side = if Some(dir) == self.request_dir {
            Side::Request
        } else {
            Side::Response
        };
        let mut events = Vec::new();
        match (side, item) {
            (Side::Request, StreamItem::Data(c)) => {
                if self.is_first_request(c) {
                    return;
                }
                self.requests.feed(c, &mut request_framing, &mut events);
            }
            (Side::Response, StreamItem::Data(c)) => {
                let queue = &self.queue;
                self.responses
                    .feed(c, &mut |h| response_framing(queue, h), &mut events);
            }
            (Side::Request, StreamItem::Gap { offset, len }) => {
                self.requests.gap(*offset, *len, &mut events)
            }
            (Side::Response, StreamItem::Gap { offset, len }) => {
                self.responses.gap(*offset, *len, &mut events)
            }
        }
        for e in events {
            self.on_message(side, e, out);
        }
    }

    /// The connection closed (or is being forgotten): finish what can be finished.
    pub fn close(&mut self, last_ts: u64, out: &mut Vec<HttpEvent>) {
        let mut events = Vec::new();
        self.responses.close(&mut events);
        for e in events.drain(..) {
            self.on_message(Side::Response, e, out);
        }
        self.requests.close(&mut events);
        for e in events {
            self.on_message(Side::Request, e, out);
        }
        while let Some(q) = self.queue.pop_front() {
            if let Queued::Request(req) = q {
                let flags = ExchangeFlags {
                    no_response: true,
                    request_truncated: req.truncated,
                    ..ExchangeFlags::default()
                };
                out.push(HttpEvent::Done(self.exchange(req, None, last_ts, 0, flags)));
            }
        }
    }

    /// On a connection of unknown role, the first message tells which side is the client.
    fn infer_roles(&mut self, dir: Direction, item: &StreamItem) {
        let StreamItem::Data(c) = item else { return };
        let other = match dir {
            Direction::Recv => Direction::Send,
            Direction::Send => Direction::Recv,
        };
        let request_dir = match classify_start(&c.bytes) {
            // Too short to tell: a request is by far the likelier first message.
            StreamStart::Request | StreamStart::Undecided => dir,
            StreamStart::Response => other,
            StreamStart::NotHttp => {
                self.not_http = true;
                return;
            }
        };
        self.request_dir = Some(request_dir);
        self.role = if request_dir == Direction::Recv {
            Role::Server
        } else {
            Role::Client
        };
    }

    /// A connection whose first request bytes cannot start a request line is not HTTP/1.x.
    fn is_first_request(&mut self, c: &Chunk) -> bool {
        if c.offset == 0
            && !c.bytes.is_empty()
            && !matches!(
                classify_start(&c.bytes),
                StreamStart::Request | StreamStart::Undecided
            )
        {
            self.not_http = true;
            return true;
        }
        false
    }

    fn on_message(&mut self, side: Side, event: MessageEvent, out: &mut Vec<HttpEvent>) {
        match (side, event) {
            (
                Side::Request,
                MessageEvent::Head {
                    head: Head::Request(head),
                    start,
                },
            ) => {
                if self.queue.len() >= MAX_IN_FLIGHT {
                    self.stats.in_flight_overflow += 1;
                    self.queue.pop_front();
                }
                let index = self.next_index();
                out.push(HttpEvent::Started(RequestStart {
                    conn_id: self.conn_id,
                    index,
                    role: self.role,
                    pid: start.pid,
                    tid: start.tid,
                    start_ns: start.ts_ns,
                    request: head.clone(),
                }));
                self.queue.push_back(Queued::Request(Pending {
                    head,
                    start,
                    body_bytes: 0,
                    truncated: false,
                    index,
                }));
            }
            (Side::Request, MessageEvent::End { body_bytes, .. }) => {
                if let Some(Queued::Request(req)) = self.queue.back_mut() {
                    req.body_bytes = body_bytes;
                }
            }
            (
                Side::Request,
                MessageEvent::Lost {
                    at, request_line, ..
                },
            ) => {
                self.stats.lost_messages += 1;
                // Lost requests still take their place in the connection's order, so indexes
                // stay equal on both ends; an unknown number of them cannot.
                let queued = match request_line {
                    Some((method, target)) => Queued::Request(Pending {
                        head: RequestHead {
                            method,
                            target,
                            ..RequestHead::default()
                        },
                        start: at,
                        body_bytes: 0,
                        truncated: true,
                        index: self.next_index(),
                    }),
                    None => Queued::Lost,
                };
                self.queue.push_back(queued);
            }
            (
                Side::Response,
                MessageEvent::Head {
                    head: Head::Response(head),
                    start,
                },
            ) => {
                let interim = (100..200).contains(&head.status) && head.status != 101;
                self.response = Some((!interim).then_some(head));
                if !interim {
                    self.skip_lost_requests(start);
                }
            }
            (
                Side::Response,
                MessageEvent::End {
                    end,
                    body_bytes,
                    kind,
                },
            ) => {
                let Some(Some(head)) = self.response.take() else {
                    return;
                }; // interim or lost
                let Some(Queued::Request(req)) = self.queue.pop_front() else {
                    self.stats.unmatched_responses += 1;
                    return;
                };
                let flags = ExchangeFlags {
                    end_approximate: kind == EndKind::Approximate,
                    end_from_tail: kind == EndKind::FromTail,
                    incomplete: kind == EndKind::Incomplete,
                    request_truncated: req.truncated,
                    upgraded: head.status == 101 || self.responses.is_tunnel(),
                    no_response: false,
                    paired_after_loss: std::mem::take(&mut self.after_loss),
                    ended_at_stop: false,
                };
                out.push(HttpEvent::Done(self.exchange(
                    req,
                    Some(head),
                    end.ts_ns,
                    body_bytes,
                    flags,
                )));
            }
            (Side::Response, MessageEvent::Lost { .. }) => {
                self.stats.lost_messages += 1;
                self.response = None;
                // The response to the oldest request was lost: do not pair the next one with it.
                if matches!(self.queue.front(), Some(Queued::Request(_))) {
                    self.queue.pop_front();
                    self.stats.unmatched_responses += 1;
                }
            }
            // A head of the wrong kind cannot come out of a parser of one side.
            (_, MessageEvent::Head { .. }) => {}
        }
    }

    /// Before pairing a response, drop "lost requests" markers it cannot belong to. A response
    /// that starts before the next known request arrived answers a lost request: it is left
    /// unpaired. One that starts after is paired with that request and marked
    /// `paired_after_loss`: only pipelining across the loss could make that pairing wrong, and
    /// later stages do not link such exchanges.
    fn skip_lost_requests(&mut self, response_start: Point) {
        if !matches!(self.queue.front(), Some(Queued::Lost)) {
            return;
        }
        let next_known = self.queue.iter().find_map(|q| match q {
            Queued::Request(req) => Some(req.start.ts_ns),
            Queued::Lost => None,
        });
        match next_known {
            Some(ts) if response_start.ts_ns >= ts => {
                while matches!(self.queue.front(), Some(Queued::Lost)) {
                    self.queue.pop_front();
                }
                self.after_loss = true;
            }
            _ => {
                self.response = None;
                self.stats.unmatched_responses += 1;
            }
        }
    }

    fn next_index(&mut self) -> u64 {
        self.requests_seen += 1;
        self.requests_seen - 1
    }

    fn exchange(
        &self,
        req: Pending,
        response: Option<ResponseHead>,
        end_ns: u64,
        response_body_bytes: u64,
        flags: ExchangeFlags,
    ) -> Exchange {
        Exchange {
            conn_id: self.conn_id,
            index: req.index,
            role: self.role,
            pid: req.start.pid,
            tid: req.start.tid,
            request: req.head,
            response,
            start_ns: req.start.ts_ns,
            end_ns: end_ns.max(req.start.ts_ns),
            request_body_bytes: req.body_bytes,
            response_body_bytes,
            flags,
        }
    }
}

fn request_framing(head: &Head) -> Framing {
    let Head::Request(r) = head else {
        return Framing::NoBody;
    };
    match r.body {
        BodyFraming::Chunked => Framing::Chunked,
        BodyFraming::Length(n) => Framing::Length(n),
        BodyFraming::Unspecified => Framing::NoBody,
    }
}

/// RFC 9112 §6.3: a response's body depends on its request and status.
fn response_framing(queue: &VecDeque<Queued>, head: &Head) -> Framing {
    let Head::Response(r) = head else {
        return Framing::NoBody;
    };
    let method = queue.iter().find_map(|q| match q {
        Queued::Request(req) => Some(req.head.method.as_str()),
        Queued::Lost => None,
    });
    match (r.status, method) {
        (101, _) => Framing::Tunnel,
        (100..=199, _) | (204, _) | (304, _) => Framing::NoBody,
        (_, Some("HEAD")) => Framing::NoBody,
        (200..=299, Some("CONNECT")) => Framing::Tunnel,
        _ => match r.body {
            BodyFraming::Chunked => Framing::Chunked,
            BodyFraming::Length(n) => Framing::Length(n),
            BodyFraming::Unspecified => Framing::UntilClose,
        },
    }
}
