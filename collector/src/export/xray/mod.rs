//! The `xray` exporter: PutTraceSegments through aws-sdk-xray.
//!
//! The pipeline pushes documents into a bounded queue that drops its oldest when full; one
//! task sends them in batches of up to 50, when 50 are waiting or a second has passed, never
//! two calls at once. Throttling, 5xx, timeouts and transport errors (an endpoint that is
//! down) are retried with backoff — meanwhile the queue keeps filling, up to its bound. Other
//! errors drop the batch; documents X-Ray reports unprocessed are logged and never retried.
//! Every document is accounted for: sent, unprocessed, dropped (queue full or rejected), or
//! still queued.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aws_sdk_xray::{error::SdkError, operation::put_trace_segments::PutTraceSegmentsError};
use tokio::sync::Notify;

pub mod document;
pub mod segments;

/// X-Ray accepts at most 50 documents per call.
pub const MAX_BATCH: usize = 50;
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct XrayConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Documents held at most; beyond, the oldest are dropped (counted).
    pub queue_size: usize,
    /// Where call latencies are observed (the `/metrics` histogram).
    pub latency: Option<crate::status::metrics::ExportLatency>,
}

#[derive(Debug, Default)]
pub struct XrayStats {
    pub queued: AtomicU64,
    pub sent: AtomicU64,
    pub unprocessed: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    /// Wall time of the last successful call, ms.
    pub last_call_ms: AtomicU64,
}

impl XrayStats {
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("xray_queued", g(&self.queued)),
            ("xray_sent", g(&self.sent)),
            ("xray_unprocessed", g(&self.unprocessed)),
            ("xray_dropped_queue_full", g(&self.dropped_queue_full)),
            ("xray_dropped_rejected", g(&self.dropped_rejected)),
            ("xray_batches", g(&self.batches)),
            ("xray_retries", g(&self.retries)),
        ]
    }
}

struct Shared {
    queue: Mutex<(VecDeque<String>, bool)>, // (documents, closed)
    /// A batch is due (50 waiting) or the queue closed.
    notify: Notify,
    /// The queue closed: cuts a retry backoff short.
    closed: Notify,
    stats: XrayStats,
    capacity: usize,
    latency: Option<crate::status::metrics::ExportLatency>,
    /// Unprocessed-segment warnings: one per 10 s (all are counted).
    log_throttle: Mutex<crate::logging::Throttle>,
}

/// The pipeline's handle: push documents, close at shutdown.
#[derive(Clone)]
pub struct XrayQueue {
    shared: Arc<Shared>,
}

impl XrayQueue {
    pub fn push(&self, doc: String) {
        let mut q = self.shared.queue.lock().expect("queue lock");
        if q.0.len() >= self.shared.capacity {
            q.0.pop_front();
            self.shared
                .stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
        q.0.push_back(doc);
        self.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
        if q.0.len() >= MAX_BATCH {
            self.shared.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> &XrayStats {
        &self.shared.stats
    }

    /// No more documents: the sender drains what is queued and stops.
    pub fn close(&self) {
        self.shared.queue.lock().expect("queue lock").1 = true;
        self.shared.notify.notify_one();
        // Every batch waiting out a retry backoff makes its last attempt now.
        self.shared.closed.notify_waiters();
        self.shared.closed.notify_one();
    }
}

impl crate::relay::DocumentQueue for XrayQueue {
    fn push(&self, doc: String) {
        XrayQueue::push(self, doc);
    }
}

impl super::SpanExporter for XrayQueue {
    /// Queues the batch's documents (splitting segments above 64 kB); never waits.
    fn export(&mut self, batch: &mut Vec<crate::trace::SpanGroup>) -> std::io::Result<()> {
        for group in batch.drain(..) {
            segments::documents(&group)
                .into_iter()
                .for_each(|d| self.push(d));
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn export_documents(&mut self, docs: &mut Vec<String>) -> std::io::Result<()> {
        docs.drain(..).for_each(|d| self.push(d));
        Ok(())
    }
}

/// AWS settings from aws-config's default chain (env, profile, IRSA web identity, ECS, IMDS),
/// with the flags' region and endpoint; fails when no region or credentials can be found.
pub async fn load_aws(config: &XrayConfig) -> anyhow::Result<aws_config::SdkConfig> {
    let http = crate::aws::https_client();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        // Retries are ours (the queue keeps filling meanwhile); each attempt is bounded.
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        );
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        anyhow::bail!(
            "no AWS region for the xray exporter: set --region or AWS_REGION (on EC2/EKS it \
             comes from the instance metadata when reachable)"
        );
    }
    sdk.credentials_provider().context(
        "no AWS credentials provider: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, \
         or IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE)",
    )?;
    Ok(sdk)
}

/// The X-Ray endpoint the SDK client uses (for the sampling proxy, which forwards by hand).
pub fn endpoint(config: &XrayConfig, sdk: &aws_config::SdkConfig) -> String {
    config
        .endpoint_url
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_XRAY").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .unwrap_or_else(|| {
            let region = sdk.region().map_or("us-east-1", |r| r.as_ref());
            format!("https://xray.{region}.amazonaws.com")
        })
}

/// Starts the sender task.
pub fn start(
    config: &XrayConfig,
    sdk: &aws_config::SdkConfig,
) -> (XrayQueue, tokio::task::JoinHandle<()>) {
    let client = aws_sdk_xray::Client::new(sdk);
    let shared = Arc::new(Shared {
        queue: Mutex::new((VecDeque::new(), false)),
        notify: Notify::new(),
        closed: Notify::new(),

        stats: XrayStats::default(),
        capacity: config.queue_size.max(MAX_BATCH),
        latency: config.latency.clone(),
        log_throttle: Mutex::new(crate::logging::Throttle::new(Duration::from_secs(10))),
    });
    let task = tokio::spawn(send_loop(client, shared.clone()));
    (XrayQueue { shared }, task)
}

/// PutTraceSegments calls in flight at once (the X-Ray daemon's default concurrency): one
/// call at a time caps the relay at 50 documents per round trip.
const CONCURRENCY: usize = 8;

async fn send_loop(client: aws_sdk_xray::Client, shared: Arc<Shared>) {
    let mut last_flush = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let (batch, closed) = {
            let mut q = shared.queue.lock().expect("queue lock");
            let interval_passed = last_flush.elapsed() >= FLUSH_INTERVAL;
            let closed = q.1;
            (next_batch(&mut q.0, interval_passed || closed), closed)
        };
        if batch.is_empty() {
            if closed {
                while in_flight.join_next().await.is_some() {}
                return;
            }
            let wait = FLUSH_INTERVAL
                .saturating_sub(last_flush.elapsed())
                .max(Duration::from_millis(10));
            tokio::select! {
                () = shared.notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            if last_flush.elapsed() >= FLUSH_INTERVAL {
                last_flush = Instant::now() - FLUSH_INTERVAL; // due now, even if empty
            }
            continue;
        }
        while in_flight.len() >= CONCURRENCY {
            in_flight.join_next().await;
        }
        let (client, shared) = (client.clone(), shared.clone());
        in_flight.spawn(async move { send_batch(&client, &shared, batch, closed).await });
        last_flush = Instant::now();
    }
}

/// One batch until it is delivered or must be dropped. While the endpoint is unavailable
/// the batch is retried with exponential backoff (capped at 30 s); at shutdown (`closing`)
/// a failed attempt drops it instead, so a flush deadline can hold.
async fn send_batch(
    client: &aws_sdk_xray::Client,
    shared: &Shared,
    batch: Vec<String>,
    closing: bool,
) {
    let stats = &shared.stats;
    let n = batch.len() as u64;
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let result = client
            .put_trace_segments()
            .set_trace_segment_documents(Some(batch.clone()))
            .send()
            .await;
        if let Some(latency) = &shared.latency {
            latency.0.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(out) => {
                let unprocessed = out.unprocessed_trace_segments();
                for u in unprocessed {
                    let allowed = shared
                        .log_throttle
                        .lock()
                        .expect("throttle lock")
                        .allow(Instant::now());
                    if let Some(held_back) = allowed {
                        tracing::warn!(
                            id = u.id().unwrap_or("(none)"),
                            code = u.error_code().unwrap_or(""),
                            held_back,
                            "X-Ray did not process a segment: {}",
                            u.message().unwrap_or("")
                        );
                    }
                }
                stats
                    .unprocessed
                    .fetch_add(unprocessed.len() as u64, Ordering::Relaxed);
                stats
                    .sent
                    .fetch_add(n - unprocessed.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_call_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) if retryable(&e) && !shared.queue.lock().expect("queue lock").1 && !closing => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "PutTraceSegments failed ({}); retrying in {backoff:?}",
                    describe(&e)
                );
                // A stop cuts the wait short: one last attempt, then the queue drains.
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shared.closed.notified() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                stats.dropped_rejected.fetch_add(n, Ordering::Relaxed);
                tracing::error!(
                    "PutTraceSegments failed ({}); dropping {n} documents",
                    describe(&e)
                );
                return;
            }
        }
    }
}

/// The documents to send now: up to 50, once 50 are waiting or when `due` (the flush
/// interval passed, or the queue is closing).
fn next_batch(queue: &mut VecDeque<String>, due: bool) -> Vec<String> {
    let n = if queue.len() >= MAX_BATCH || due {
        queue.len().min(MAX_BATCH)
    } else {
        0
    };
    queue.drain(..n).collect()
}

/// Throttling, server errors, timeouts and transport failures are worth another try.
fn retryable(e: &SdkError<PutTraceSegmentsError>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status == 429
                || status >= 500
                || matches!(s.err(), PutTraceSegmentsError::ThrottledException(_))
        }
        _ => false,
    }
}

fn describe(e: &SdkError<PutTraceSegmentsError>) -> String {
    match e {
        SdkError::ServiceError(s) => format!("HTTP {}: {}", s.raw().status().as_u16(), s.err()),
        SdkError::DispatchFailure(_) => "endpoint unreachable".to_owned(),
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_50_documents_and_wait_for_50_or_the_interval() {
        let mut q: VecDeque<String> = (0..120).map(|i| i.to_string()).collect();
        assert_eq!(next_batch(&mut q, false).len(), 50);
        assert_eq!(next_batch(&mut q, false).len(), 50);
        assert!(
            next_batch(&mut q, false).is_empty(),
            "20 wait for more or for the interval"
        );
        let last = next_batch(&mut q, true);
        assert_eq!((last.len(), last[0].as_str()), (20, "100"), "oldest first");
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_it() {
        let shared = Arc::new(Shared {
            queue: Mutex::new((VecDeque::new(), false)),
            notify: Notify::new(),
            closed: Notify::new(),
            stats: XrayStats::default(),
            capacity: 50,
            latency: None,
            log_throttle: Mutex::new(crate::logging::Throttle::new(Duration::from_secs(10))),
        });
        let q = XrayQueue { shared };
        for i in 0..60 {
            q.push(i.to_string());
        }
        assert_eq!(q.len(), 50);
        assert_eq!(q.stats().dropped_queue_full.load(Ordering::Relaxed), 10);
        assert_eq!(q.stats().queued.load(Ordering::Relaxed), 60);
        assert_eq!(
            q.shared.queue.lock().unwrap().0.front().map(String::as_str),
            Some("10")
        );
    }
}
