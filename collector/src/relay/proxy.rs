//! The daemon's sampling proxy: X-Ray SDKs send unsigned `POST /GetSamplingRules` and
//! `POST /SamplingTargets` to the TCP port; each request is signed with the collector's
//! credentials (SigV4, service `xray`) and forwarded to the X-Ray endpoint, and X-Ray's
//! answer (status, content type, body) is returned unchanged.

use std::{net::SocketAddr, sync::Arc, time::Duration};

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
const MAX_BODY: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Upstream {
    /// `https://xray.<region>.amazonaws.com`, or `--endpoint-url`.
    pub endpoint: String,
    pub region: String,
    pub credentials: SharedCredentialsProvider,
}

/// Binds now and serves in the background.
pub async fn start(bind: SocketAddr, upstream: Upstream) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("--bind-tcp {bind}: cannot listen for sampling requests"))?;
    let local = listener.local_addr()?;
    let client = hyper_client()?;
    let shared = Arc::new((upstream, client));
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
                let (upstream, client) = &*shared;
                if let Err(e) = serve(stream, upstream, client).await {
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
    Ok(local)
}

/// One keep-alive connection: requests until the client closes.
async fn serve(
    mut stream: TcpStream,
    upstream: &Upstream,
    client: &HyperClient,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((method, path, body, head_len, body_len)) =
            read_request(&mut stream, &mut buf).await?
        else {
            return Ok(());
        };
        let (status, content_type, answer) =
            match forward(upstream, client, &method, &path, body).await {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!(
                        "{{\"message\":\"collector sampling proxy: {}\"}}",
                        e.to_string().replace('"', "'")
                    );
                    (502, "application/json".to_owned(), Bytes::from(msg))
                }
            };
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            reason(status),
            answer.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&answer).await?;
        buf.drain(..head_len + body_len);
    }
}

type Request = (String, String, Bytes, usize, usize);

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Option<Request>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = req.parse(buf)? {
            let length: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            anyhow::ensure!(length <= MAX_BODY, "request body of {length} bytes");
            let method = req.method.unwrap_or("POST").to_owned();
            let path = req.path.unwrap_or("/").to_owned();
            while buf.len() < head_len + length {
                read_more(stream, buf)
                    .await?
                    .context("connection closed mid-body")?;
            }
            let body = Bytes::copy_from_slice(&buf[head_len..head_len + length]);
            return Ok(Some((method, path, body, head_len, length)));
        }
        anyhow::ensure!(buf.len() < MAX_HEAD, "request head over {MAX_HEAD} bytes");
        if read_more(stream, buf).await?.is_none() {
            return Ok(None);
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<usize>> {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
        .await
        .context("client idle")??;
    if n == 0 {
        return Ok(None);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(Some(n))
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
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "",
    }
}
