//! Request and response heads, parsed with httparse. Only the fields the later stages use are
//! kept; every other header value — cookies and credentials included — is dropped here, as
//! soon as the head is parsed.

use super::redact::redact_target;

/// Longest header value kept (X-Ray strings are capped later, at 250 characters).
const MAX_VALUE: usize = 1024;
/// Headers per message httparse may see.
const MAX_HEADERS: usize = 128;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Request target: the path, with only the allowed query parameters (`redact.rs`).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub x_forwarded_for: Option<String>,
    pub x_amzn_trace_id: Option<String>,
    pub traceparent: Option<String>,
    pub body: BodyFraming,
    pub expect_continue: bool,
    pub upgrade: bool,
    /// Length of the head in bytes, blank line included.
    pub head_len: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: u8,
    pub status: u16,
    pub content_length: Option<u64>,
    pub body: BodyFraming,
    pub head_len: usize,
}

/// How a message's body is delimited, as its own headers say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyFraming {
    /// No framing header: no body for a request, read-until-close for a response.
    #[default]
    Unspecified,
    Length(u64),
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed.
    Partial,
    Invalid(&'static str),
}

pub fn parse_request(buf: &[u8]) -> Parsed<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let mut head = RequestHead {
                method: req.method.unwrap_or_default().to_owned(),
                target: redact_target(&bounded(req.path.unwrap_or_default().as_bytes())),
                version: req.version.unwrap_or(1),
                head_len,
                ..RequestHead::default()
            };
            for h in req.headers.iter() {
                let name = h.name;
                if name.eq_ignore_ascii_case("host") {
                    head.host = Some(bounded(h.value));
                } else if name.eq_ignore_ascii_case("user-agent") {
                    head.user_agent = Some(bounded(h.value));
                } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                    head.x_forwarded_for = Some(bounded(h.value));
                } else if name.eq_ignore_ascii_case("x-amzn-trace-id") {
                    head.x_amzn_trace_id = Some(bounded(h.value));
                } else if name.eq_ignore_ascii_case("traceparent") {
                    head.traceparent = Some(bounded(h.value));
                } else if name.eq_ignore_ascii_case("expect") {
                    head.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
                } else if name.eq_ignore_ascii_case("upgrade") {
                    head.upgrade = true;
                }
            }
            match body_framing(req.headers) {
                Ok(b) => head.body = b,
                Err(e) => return Parsed::Invalid(e),
            }
            Parsed::Complete(head)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Invalid(error_name(e)),
    }
}

pub fn parse_response(buf: &[u8]) -> Parsed<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let body = match body_framing(resp.headers) {
                Ok(b) => b,
                Err(e) => return Parsed::Invalid(e),
            };
            Parsed::Complete(ResponseHead {
                version: resp.version.unwrap_or(1),
                status: resp.code.unwrap_or(0),
                content_length: match body {
                    BodyFraming::Length(n) => Some(n),
                    _ => None,
                },
                body,
                head_len,
            })
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Invalid(error_name(e)),
    }
}

/// RFC 9112 §6.3: Transfer-Encoding ending in chunked wins over Content-Length; conflicting
/// Content-Length values are invalid.
fn body_framing(headers: &[httparse::Header<'_>]) -> Result<BodyFraming, &'static str> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value);
            chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != v) {
                return Err("conflicting Content-Length");
            }
            length = Some(v);
        }
    }
    Ok(if chunked {
        BodyFraming::Chunked
    } else if let Some(n) = length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::Unspecified
    })
}

/// Does `bytes` begin like a request line (`TOKEN SP`)? Used to find the next message after
/// a gap; a false positive is caught by the full parse.
pub fn looks_like_request_start(bytes: &[u8]) -> bool {
    let token = bytes
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    token >= 3 && bytes.get(token) == Some(&b' ')
}

pub fn looks_like_response_start(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.")
}

/// What the first bytes of a stream say about it. A short first read (even one byte) may not
/// decide yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamStart {
    Request,
    Response,
    Undecided,
    NotHttp,
}

pub fn classify_start(bytes: &[u8]) -> StreamStart {
    if looks_like_response_start(bytes) {
        return StreamStart::Response;
    }
    if looks_like_request_start(bytes) {
        return StreamStart::Request;
    }
    let all_token = bytes.len() < 16 && bytes.iter().all(|b| b.is_ascii_uppercase());
    if all_token || b"HTTP/1.".starts_with(bytes) {
        StreamStart::Undecided
    } else {
        StreamStart::NotHttp
    }
}

/// The request line alone, for a head whose end was not captured.
pub fn parse_request_line(buf: &[u8]) -> Option<(String, String)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let mut parts = buf[..line_end].split(|&b| b == b' ');
    let method = parts
        .next()
        .filter(|m| looks_like_request_start(&[m, &b" "[..]].concat()))?;
    let target = parts.next()?;
    let version = parts.next()?;
    version
        .starts_with(b"HTTP/1.")
        .then(|| (bounded(method), redact_target(&bounded(target))))
}

fn bounded(v: &[u8]) -> String {
    String::from_utf8_lossy(&v[..v.len().min(MAX_VALUE)]).into_owned()
}

fn error_name(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_only_the_headers_we_use() {
        let raw = b"POST /api/v1?x=1 HTTP/1.1\r\nHost: svc-b\r\nAuthorization: Bearer s3cr3t\r\n\
Cookie: a=b\r\nUser-Agent: curl/8\r\nX-Forwarded-For: 1.2.3.4\r\n\
X-Amzn-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1\r\n\
Content-Length: 5\r\n\r\nhello";
        let Parsed::Complete(h) = parse_request(raw) else {
            panic!()
        };
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/api/v1", "query dropped (none allowed)");
        assert_eq!(h.host.as_deref(), Some("svc-b"));
        assert_eq!(h.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(h.x_forwarded_for.as_deref(), Some("1.2.3.4"));
        assert!(h.x_amzn_trace_id.unwrap().starts_with("Root=1-5759e988"));
        assert_eq!(h.body, BodyFraming::Length(5));
        assert_eq!(h.head_len, raw.len() - 5);
        let debug = format!("{:?}", parse_request(raw));
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("a=b"),
            "{debug}"
        );
    }

    #[test]
    fn chunked_wins_over_content_length_and_conflicts_are_invalid() {
        let Parsed::Complete(h) = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ) else {
            panic!()
        };
        assert_eq!(h.body, BodyFraming::Chunked);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Parsed::Invalid("conflicting Content-Length")
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parsed::Invalid("invalid Content-Length")
        );
    }

    #[test]
    fn partial_and_garbage_heads_are_told_apart() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a"), Parsed::Partial);
        assert!(matches!(
            parse_request(b"\x16\x03\x01\x02\x00"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse_response(b"SSH-2.0-OpenSSH\r\n"),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn message_starts_are_recognised_cheaply() {
        assert!(looks_like_request_start(b"GET / HTTP/1.1"));
        assert!(looks_like_request_start(b"OPTIONS * HTTP/1.1"));
        assert!(!looks_like_request_start(b"get / HTTP/1.1"));
        assert!(!looks_like_request_start(b"GE"));
        assert!(looks_like_response_start(b"HTTP/1.0 200 OK"));
        assert_eq!(classify_start(b"G"), StreamStart::Undecided);
        assert_eq!(classify_start(b"HTTP/"), StreamStart::Undecided);
        assert_eq!(classify_start(b"GET /"), StreamStart::Request);
        assert_eq!(classify_start(b"HTTP/1.1 200"), StreamStart::Response);
        assert_eq!(classify_start(b"\x16\x03"), StreamStart::NotHttp);
        assert_eq!(classify_start(b"*1\r\n"), StreamStart::NotHttp);
        assert_eq!(
            parse_request_line(b"GET /a HTTP/1.1\r\nHost: x"),
            Some(("GET".into(), "/a".into()))
        );
        assert_eq!(parse_request_line(b"GET /a"), None);
    }
}
