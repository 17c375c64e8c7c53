//! The `otlp` and `xray-otlp` exporters: OTLP/HTTP protobuf, gzip, to any OpenTelemetry
//! backend, or SigV4-signed (service `xray`) to X-Ray's OTLP endpoint — behind the delivery
//! queue every network exporter shares (`export/queue.rs`). Span groups become
//! `ResourceSpans` (`spans.rs`); X-Ray SDK documents from the relay are converted as the
//! OpenTelemetry Collector's awsxray receiver does (`from_xray.rs`).
//!
//! Per request at most 10,000 spans and 5 MB. 429, 502, 503, 504, timeouts and an
//! unreachable endpoint are retried (after `Retry-After` when the answer has one); other
//! answers drop the batch; spans a partial success rejects are counted as unprocessed.

pub mod from_xray;
pub mod settings;
pub mod spans;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aws_credential_types::provider::SharedCredentialsProvider;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    trace::v1::ResourceSpans,
};
use prost::Message as _;

use super::queue::{self, Attempt, Item, Queue, QueueConfig};
use crate::{aws::HyperClient, logging::Throttle, trace::SpanGroup};

pub const MAX_SPANS_PER_REQUEST: usize = 10_000;
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
const CONCURRENCY: usize = 4;
/// An answer is a few bytes of protobuf or an error text: more is not read.
const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub endpoint: http::Uri,
    pub headers: http::HeaderMap,
    pub timeout: Duration,
    pub gzip: bool,
    /// X-Ray's OTLP endpoint: SigV4 with service `xray`.
    pub sigv4: Option<SigV4>,
    /// Span groups held at most; beyond, the oldest are dropped (counted).
    pub queue_size: usize,
    pub latency: Option<crate::status::metrics::ExportLatency>,
}

#[derive(Clone, Debug)]
pub struct SigV4 {
    pub region: String,
    pub credentials: SharedCredentialsProvider,
}

/// One group's spans, encoded size known.
pub struct OtlpItem {
    spans: ResourceSpans,
    count: usize,
    bytes: usize,
}

impl OtlpItem {
    fn new(spans: ResourceSpans) -> Self {
        let count = spans.scope_spans.iter().map(|s| s.spans.len()).sum();
        // In the request each item also takes its field tag and length prefix.
        let len = spans.encoded_len();
        let bytes = len + 1 + prost::length_delimiter_len(len);
        Self {
            spans,
            count,
            bytes,
        }
    }
}

impl Item for OtlpItem {
    fn weight(&self) -> usize {
        self.count
    }

    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What conversion dropped or changed (the queue counts the rest).
#[derive(Debug, Default)]
pub struct ConvertStats {
    pub spans_out_of_range: AtomicU64,
    pub spans_cut: AtomicU64,
    pub sdk_documents_converted: AtomicU64,
    pub sdk_documents_unconvertible: AtomicU64,
}

/// The pipeline's handle.
#[derive(Clone)]
pub struct OtlpQueue {
    pub queue: Queue<OtlpItem>,
    pub convert: Arc<ConvertStats>,
}

impl OtlpQueue {
    /// Every counter, `otlp_*` (spans), and the queue's depth (span groups).
    pub fn pairs(&self) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.convert;
        let mut out = self.queue.stats().pairs("otlp");
        out.extend(
            [
                ("otlp_spans_out_of_range", g(&c.spans_out_of_range)),
                ("otlp_spans_cut", g(&c.spans_cut)),
                (
                    "otlp_sdk_documents_converted",
                    g(&c.sdk_documents_converted),
                ),
                (
                    "otlp_sdk_documents_unconvertible",
                    g(&c.sdk_documents_unconvertible),
                ),
                ("otlp_queue_depth", self.queue.len() as u64),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        out
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl super::SpanExporter for OtlpQueue {
    /// Converts and queues the batch; never waits.
    fn export(&mut self, batch: &mut Vec<SpanGroup>) -> std::io::Result<()> {
        let now = now_ns();
        let mut done = spans::Converted::default();
        for group in batch.drain(..) {
            if let Some(rs) = spans::resource_spans(&group, now, &mut done) {
                self.queue.push(OtlpItem::new(rs));
            }
        }
        let c = &self.convert;
        c.spans_out_of_range
            .fetch_add(done.out_of_range, Ordering::Relaxed);
        c.spans_cut.fetch_add(done.cut, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// SDK documents become spans of their own service (unconvertible ones are counted).
    fn export_documents(&mut self, docs: &mut Vec<String>) -> std::io::Result<()> {
        for doc in docs.drain(..) {
            let c = &self.convert;
            match from_xray::resource_spans(&doc) {
                Ok(rs) => {
                    c.sdk_documents_converted.fetch_add(1, Ordering::Relaxed);
                    self.queue.push(OtlpItem::new(rs));
                }
                Err(e) => {
                    c.sdk_documents_unconvertible
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("SDK document not converted to OTLP: {e}");
                }
            }
        }
        Ok(())
    }
}

/// Checks, before any span is queued, that X-Ray's OTLP endpoint takes our signature: a
/// refused one (a wrong region, bad credentials) or no credentials at all stop start-up; an
/// endpoint that does not answer yet only warns (spans wait in the queue).
pub async fn probe(config: &OtlpConfig) -> anyhow::Result<()> {
    let sender = OtlpSender {
        client: crate::aws::hyper_client()?,
        log_throttle: Mutex::new(Throttle::new(Duration::from_secs(10))),
        config: config.clone(),
    };
    let request = sender
        .request(ExportTraceServiceRequest::default().encode_to_vec())
        .await
        .context("signing a request for X-Ray's OTLP endpoint")?;
    let region = config.sigv4.as_ref().map_or("", |s| s.region.as_str());
    let endpoint = &config.endpoint;
    match tokio::time::timeout(config.timeout, sender.client.request(request)).await {
        Ok(Ok(response)) if matches!(response.status().as_u16(), 401 | 403) => {
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            anyhow::bail!(
                "X-Ray's OTLP endpoint {endpoint} refused our signature (HTTP {status}: {}): \
                 check --region / AWS_REGION ({region}) and the credentials",
                excerpt(&body)
            )
        }
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(
                "X-Ray's OTLP endpoint {endpoint} unreachable at start ({e}); spans wait in the queue"
            );
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                "X-Ray's OTLP endpoint {endpoint} did not answer at start; spans wait in the queue"
            );
            Ok(())
        }
    }
}

/// Starts the sender task.
pub fn start(config: OtlpConfig) -> anyhow::Result<(OtlpQueue, tokio::task::JoinHandle<()>)> {
    let sender = OtlpSender {
        client: crate::aws::hyper_client()?,
        log_throttle: Mutex::new(Throttle::new(Duration::from_secs(10))),
        config: config.clone(),
    };
    let (queue, task) = queue::start(
        QueueConfig {
            capacity: config.queue_size,
            max_weight: MAX_SPANS_PER_REQUEST,
            max_bytes: MAX_REQUEST_BYTES,
            flush_interval: Duration::from_secs(1),
            concurrency: CONCURRENCY,
            latency: config.latency.clone(),
        },
        sender,
    );
    let queue = OtlpQueue {
        queue,
        convert: Arc::default(),
    };
    Ok((queue, task))
}

struct OtlpSender {
    client: HyperClient,
    config: OtlpConfig,
    /// Partial-success warnings: one per 10 s (all are counted).
    log_throttle: Mutex<Throttle>,
}

impl queue::Sender<OtlpItem> for OtlpSender {
    fn call_name(&self) -> &'static str {
        "OTLP export"
    }

    async fn send(&self, batch: &[OtlpItem]) -> Attempt {
        let request = ExportTraceServiceRequest {
            resource_spans: batch.iter().map(|i| i.spans.clone()).collect(),
        };
        // Signing needs credentials, which a refreshing provider (IRSA, IMDS) may briefly
        // not have: worth another try.
        let request = match self.request(request.encode_to_vec()).await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    why: format!("{e:#}"),
                    after: None,
                };
            }
        };
        let answer = tokio::time::timeout(self.config.timeout, async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                .to_bytes();
            anyhow::Ok((parts, body))
        })
        .await;
        match answer {
            Err(_) => Attempt::Retry {
                why: format!("no answer within {:?}", self.config.timeout),
                after: None,
            },
            Ok(Err(e)) => Attempt::Retry {
                why: format!("endpoint unreachable: {e}"),
                after: None,
            },
            Ok(Ok((parts, body))) => self.outcome(parts.status, &parts.headers, &body),
        }
    }
}

impl OtlpSender {
    async fn request(&self, body: Vec<u8>) -> anyhow::Result<http::Request<Full<Bytes>>> {
        let c = &self.config;
        let body = if c.gzip { gzip(&body)? } else { body };
        let mut request = http::Request::builder()
            .method("POST")
            .uri(c.endpoint.clone())
            .header("content-type", "application/x-protobuf")
            .header(
                "user-agent",
                concat!("ebpf-collector/", env!("CARGO_PKG_VERSION")),
            );
        if c.gzip {
            request = request.header("content-encoding", "gzip");
        }
        let mut request = request.body(Full::new(Bytes::from(body.clone())))?;
        for (k, v) in &c.headers {
            request.headers_mut().append(k.clone(), v.clone());
        }
        if let Some(s) = &c.sigv4 {
            crate::aws::sign(&mut request, &body, "xray", &s.region, &s.credentials).await?;
        }
        Ok(request)
    }

    fn outcome(&self, status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Attempt {
        let code = status.as_u16();
        if status.is_success() {
            let rejected = ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .filter(|p| p.rejected_spans > 0);
            let Some(p) = rejected else {
                return Attempt::Delivered { unprocessed: 0 };
            };
            let allowed = self
                .log_throttle
                .lock()
                .expect("throttle lock")
                .allow(Instant::now());
            if let Some(held_back) = allowed {
                tracing::warn!(
                    rejected = p.rejected_spans,
                    held_back,
                    "the OTLP endpoint rejected spans: {}",
                    p.error_message
                );
            }
            return Attempt::Delivered {
                unprocessed: p.rejected_spans as u64,
            };
        }
        let why = format!("HTTP {code}: {}", excerpt(body));
        if matches!(code, 429 | 502 | 503 | 504) {
            Attempt::Retry {
                why,
                after: retry_after(headers),
            }
        } else {
            Attempt::Failed { why }
        }
    }
}

/// `Retry-After: <seconds>` (the HTTP-date form is rare from OTLP endpoints and ignored).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

/// The start of an error answer, printable.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body)?;
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_are_honoured_and_other_forms_ignored() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let data = b"spans spans spans".repeat(100);
        let z = gzip(&data).unwrap();
        assert!(z.len() < data.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
