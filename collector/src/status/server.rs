//! A small HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`: one request per
//! connection, heads parsed with httparse, bounded in size, time and concurrency, so a
//! misbehaving scraper can neither stall nor exhaust the collector.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{Status, metrics};

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

/// Binds now (so a bad address fails start-up with a clear error) and serves in the background.
pub async fn start(bind: SocketAddr, status: Status) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-bind {bind}: cannot listen: {e}"))?;
    let local = listener.local_addr()?;
    let registry = Arc::new(metrics::registry(&status));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Beyond the limit, connections are closed at once.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (status, registry) = (status.clone(), registry.clone());
            tokio::spawn(async move {
                let _ = serve(stream, &status, &registry).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}

async fn serve(
    mut stream: TcpStream,
    status: &Status,
    registry: &prometheus_client::registry::Registry,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let path = loop {
        let mut chunk = [0u8; 1024];
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return respond(&mut stream, 405, "text/plain", "GET only\n").await;
                }
                break req.path.unwrap_or("/").to_owned();
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return respond(&mut stream, 400, "text/plain", "bad request\n").await,
        }
    };
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => {
            let body = metrics::render(registry);
            respond(
                &mut stream,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => match status.healthy() {
            Ok(()) => respond(&mut stream, 200, "text/plain", "ok\n").await,
            Err(why) => respond(&mut stream, 503, "text/plain", &format!("{why}\n")).await,
        },
        "/readyz" => match status.ready() {
            Ok(()) => respond(&mut stream, 200, "text/plain", "ok\n").await,
            Err(why) => respond(&mut stream, 503, "text/plain", &format!("{why}\n")).await,
        },
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "try /metrics, /healthz, /readyz\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
