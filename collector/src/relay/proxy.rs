//! The daemon's sampling proxy: X-Ray SDKs send unsigned `POST /GetSamplingRules` and
//! `POST /SamplingTargets` to the TCP port; each request is signed with the collector's
//! credentials (SigV4, service `xray`) and forwarded to the X-Ray endpoint, and X-Ray's
//! answer (status, content type, body) is returned unchanged.
//!
//! Nothing else is signed: every pod on the node can reach this port, and a signed
//! `DeleteSamplingRule` or `BatchGetTraces` would act with the node's X-Ray permissions. Any
//! other API or method is answered 403, a body that is not a small JSON object 400, and a
//! request that does not arrive within 10 s 408 — each counted by reason, none forwarded.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use aws_credential_types::provider::SharedCredentialsProvider;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    aws::{HyperClient, hyper_client, sign},
    logging::Throttle,
};

const MAX_HEAD: usize = 16 * 1024;
/// A `SamplingTargets` call carries at most 25 statistics documents of a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
/// The whole of one request, and the wait for the next on a kept-alive connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The only calls forwarded.
const SAMPLING_APIS: [&str; 2] = ["/GetSamplingRules", "/SamplingTargets"];

/// Why a request was answered by the proxy itself and not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An X-Ray API (or any path) other than the two sampling calls.
    Api,
    /// Not a POST.
    Method,
    /// A body over [`MAX_BODY`].
    BodyTooLarge,
    /// A body that is neither empty nor a JSON object, or one sent chunked.
    BodyMalformed,
    /// Not an HTTP/1.x request head, or one over [`MAX_HEAD`].
    HeadMalformed,
    /// The request did not arrive whole within [`IO_TIMEOUT`].
    ClientTimeout,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Api,
        Refusal::Method,
        Refusal::BodyTooLarge,
        Refusal::BodyMalformed,
        Refusal::HeadMalformed,
        Refusal::ClientTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Api => "api",
            Refusal::Method => "method",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyMalformed => "body_malformed",
            Refusal::HeadMalformed => "head_malformed",
            Refusal::ClientTimeout => "client_timeout",
        }
    }

    fn status(self) -> u16 {
        match self {
            Refusal::Api | Refusal::Method => 403,
            Refusal::BodyTooLarge | Refusal::BodyMalformed | Refusal::HeadMalformed => 400,
            Refusal::ClientTimeout => 408,
        }
    }
}

/// Requests forwarded, and refused by reason (`proxy_*` in `/metrics`).
#[derive(Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub refused: [AtomicU64; Refusal::ALL.len()],
}

impl ProxyStats {
    pub fn pairs(&self) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![("proxy_forwarded".to_owned(), g(&self.forwarded))];
        for (r, n) in Refusal::ALL.iter().zip(&self.refused) {
            v.push((format!("proxy_refused_{}", r.name()), g(n)));
        }
        v
    }

    fn refused(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Is this a request an X-Ray SDK sends for sampling? Only those are signed.
pub fn admit(method: &str, path: &str, body: &[u8]) -> Result<(), Refusal> {
    if !SAMPLING_APIS.contains(&path) {
        return Err(Refusal::Api);
    }
    if method != "POST" {
        return Err(Refusal::Method);
    }
    if body.len() > MAX_BODY {
        return Err(Refusal::BodyTooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err(Refusal::BodyMalformed),
    }
}

pub struct Upstream {
    /// `https://xray.<region>.amazonaws.com`, or `--endpoint-url`.
    pub endpoint: String,
    pub region: String,
    pub credentials: SharedCredentialsProvider,
}

/// Binds now and serves in the background.
pub async fn start(
    bind: SocketAddr,
    upstream: Upstream,
) -> anyhow::Result<(SocketAddr, Arc<ProxyStats>)> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("--bind-tcp {bind}: cannot listen for sampling requests"))?;
    let local = listener.local_addr()?;
    let client = hyper_client()?;
    let stats = Arc::new(ProxyStats::default());
    let shared = Arc::new((upstream, client, stats.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let (upstream, client, stats) = &*shared;
                if let Err(e) = serve(stream, upstream, client, stats).await {
                    static THROTTLE: std::sync::Mutex<Throttle> =
                        std::sync::Mutex::new(Throttle::new(Duration::from_secs(10)));
                    let allowed = THROTTLE
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .allow(std::time::Instant::now());
                    if let Some(held_back) = allowed {
                        tracing::warn!(held_back, "sampling proxy: {e:#}");
                    }
                }
                drop(permit);
            });
        }
    });
    Ok((local, stats))
}

/// One keep-alive connection: requests until the client closes.
async fn serve(
    mut stream: TcpStream,
    upstream: &Upstream,
    client: &HyperClient,
    stats: &ProxyStats,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(Read::Refused(r)) => {
                stats.refused(r);
                let body = refusal_body(r);
                respond(&mut stream, r.status(), "application/json", &body, true).await?;
                // Where this request ends is not known (or it never came whole): the
                // connection's framing cannot be trusted, so it is closed. A client that
                // timed out has nothing unread to reset the connection with.
                if !matches!(r, Refusal::ClientTimeout) {
                    linger_close(stream).await;
                }
                return Ok(());
            }
            Err(Read::Failed(e)) => return Err(e),
        };
        let (status, content_type, answer) =
            match admit(&request.method, &request.path, &request.body) {
                Err(r) => {
                    stats.refused(r);
                    (
                        r.status(),
                        "application/json".to_owned(),
                        Bytes::from(refusal_body(r)),
                    )
                }
                Ok(()) => {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    match forward(
                        upstream,
                        client,
                        &request.method,
                        &request.path,
                        request.body,
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let msg = format!(
                                "{{\"message\":\"collector sampling proxy: {}\"}}",
                                e.to_string().replace('"', "'")
                            );
                            (502, "application/json".to_owned(), Bytes::from(msg))
                        }
                    }
                }
            };
        respond(&mut stream, status, &content_type, &answer, false).await?;
        buf.drain(..request.consumed);
    }
}

fn refusal_body(r: Refusal) -> Vec<u8> {
    format!(
        "{{\"message\":\"collector sampling proxy: only POST /GetSamplingRules and POST /SamplingTargets with a JSON body are forwarded (refused: {})\"}}",
        r.name()
    )
    .into_bytes()
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> anyhow::Result<()> {
    let mut answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    answer.extend_from_slice(body);
    stream.write_all(&answer).await?;
    Ok(())
}

/// Closes after a refusal without losing the answer: closing a socket with unread bytes (the
/// rest of an oversized body) sends a reset, which can destroy the answer before the client
/// reads it. So the write side is shut first, and what the client still sends is read and
/// dropped until it closes too — at most 1 MiB or 2 s.
async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 8192];
    let mut left = 1usize << 20;
    let drain = async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    // A client still sending after 2 s is closed on anyway.
    tokio::time::timeout(std::time::Duration::from_secs(2), drain)
        .await
        .ok();
}

struct Request {
    method: String,
    path: String,
    body: Bytes,
    /// Bytes of the buffer the request took (head and body).
    consumed: usize,
}

enum Read {
    /// Answered by the proxy, not forwarded.
    Refused(Refusal),
    /// The connection failed or went idle: closed without an answer.
    Failed(anyhow::Error),
}

/// The next request on the connection; `None` when the client closed between requests. A
/// request must arrive whole within [`IO_TIMEOUT`] of its first byte: a client trickling
/// bytes holds a connection slot no longer than that.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Request>, Read> {
    if buf.is_empty() && !read_more(stream, buf).await? {
        return Ok(None);
    }
    match tokio::time::timeout(IO_TIMEOUT, read_whole(stream, buf)).await {
        Ok(r) => r,
        Err(_) => Err(Read::Refused(Refusal::ClientTimeout)),
    }
}

async fn read_whole(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Request>, Read> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                if header("transfer-encoding").is_some() {
                    return Err(Read::Refused(Refusal::BodyMalformed));
                }
                let length: usize = match header("content-length") {
                    None => 0,
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or(Read::Refused(Refusal::HeadMalformed))?,
                };
                if length > MAX_BODY {
                    return Err(Read::Refused(Refusal::BodyTooLarge));
                }
                let method = req.method.unwrap_or_default().to_owned();
                let path = req.path.unwrap_or_default().to_owned();
                while buf.len() < head_len + length {
                    if !read_more(stream, buf).await? {
                        return Err(Read::Failed(anyhow::anyhow!("connection closed mid-body")));
                    }
                }
                let body = Bytes::copy_from_slice(&buf[head_len..head_len + length]);
                return Ok(Some(Request {
                    method,
                    path,
                    body,
                    consumed: head_len + length,
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Err(Read::Refused(Refusal::HeadMalformed)),
        }
        if !read_more(stream, buf).await? {
            return Ok(None);
        }
    }
}

/// Appends what the client sends next; false when it closed. Idle past [`IO_TIMEOUT`], or
/// an error, fails the connection.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool, Read> {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
        .await
        .context("client idle")
        .and_then(|r| Ok(r?))
        .map_err(Read::Failed)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

async fn forward(
    upstream: &Upstream,
    client: &HyperClient,
    method: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(u16, String, Bytes)> {
    let uri = format!("{}{path}", upstream.endpoint.trim_end_matches('/'));
    let mut request = http::Request::builder()
        .method(method)
        .uri(&uri)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))?;
    sign(
        &mut request,
        &body,
        "xray",
        &upstream.region,
        &upstream.credentials,
    )
    .await?;
    let response = tokio::time::timeout(IO_TIMEOUT, client.request(request))
        .await
        .context("X-Ray did not answer within 10 s")??;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, content_type, body))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_sampling_calls_with_a_json_object_are_admitted() {
        assert_eq!(admit("POST", "/GetSamplingRules", b"{}"), Ok(()));
        assert_eq!(admit("POST", "/GetSamplingRules", b""), Ok(()));
        assert_eq!(
            admit(
                "POST",
                "/SamplingTargets",
                br#"{"SamplingStatisticsDocuments":[]}"#
            ),
            Ok(())
        );
        for api in [
            "/DeleteSamplingRule",
            "/BatchGetTraces",
            "/PutTraceSegments",
            "/GetSamplingRules/",
            "/GetSamplingRules?x=1",
            "/getsamplingrules",
            "//GetSamplingRules",
        ] {
            assert_eq!(admit("POST", api, b"{}"), Err(Refusal::Api), "{api}");
        }
        for method in ["GET", "PUT", "DELETE", "post"] {
            assert_eq!(
                admit(method, "/SamplingTargets", b"{}"),
                Err(Refusal::Method)
            );
        }
        for body in [&b"[]"[..], b"null", b"{", b"\"x\"", b"\xff\xfe"] {
            assert_eq!(
                admit("POST", "/SamplingTargets", body),
                Err(Refusal::BodyMalformed)
            );
        }
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_BODY));
        assert_eq!(
            admit("POST", "/SamplingTargets", big.as_bytes()),
            Err(Refusal::BodyTooLarge)
        );
    }
}
