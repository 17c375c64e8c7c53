//! The `xray` exporter: PutTraceSegments through aws-sdk-xray, behind the shared delivery
//! queue (`export/queue.rs`): batches of up to 50 documents, a second apart at most, eight
//! calls in flight. Throttling, 5xx, timeouts and transport errors are retried; other errors
//! drop the batch; documents X-Ray reports unprocessed are logged and never retried.

use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_xray::{error::SdkError, operation::put_trace_segments::PutTraceSegmentsError};

use super::queue::{self, Attempt, Queue, QueueConfig};

pub mod document;
pub mod segments;

/// X-Ray accepts at most 50 documents per call.
pub const MAX_BATCH: usize = 50;
/// PutTraceSegments calls in flight at once (the X-Ray daemon's default concurrency): one
/// call at a time caps the relay at 50 documents per round trip.
const CONCURRENCY: usize = 8;

#[derive(Clone, Debug)]
pub struct XrayConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Documents held at most; beyond, the oldest are dropped (counted).
    pub queue_size: usize,
    /// Where call latencies are observed (the `/metrics` histogram).
    pub latency: Option<crate::status::metrics::ExportLatency>,
}

/// The pipeline's handle: segment documents waiting for PutTraceSegments.
#[derive(Clone)]
pub struct XrayQueue(pub Queue<String>);

impl crate::relay::DocumentQueue for XrayQueue {
    fn push(&self, doc: String) {
        self.0.push(doc);
    }
}

impl super::SpanExporter for XrayQueue {
    /// Queues the batch's documents (splitting segments above 64 kB); never waits.
    fn export(&mut self, batch: &mut Vec<crate::trace::SpanGroup>) -> std::io::Result<()> {
        for group in batch.drain(..) {
            segments::documents(&group)
                .into_iter()
                .for_each(|d| self.0.push(d));
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn export_documents(&mut self, docs: &mut Vec<String>) -> std::io::Result<()> {
        docs.drain(..).for_each(|d| self.0.push(d));
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
    let sender = XraySender {
        client: aws_sdk_xray::Client::new(sdk),
        log_throttle: std::sync::Mutex::new(crate::logging::Throttle::new(Duration::from_secs(10))),
    };
    let (queue, task) = queue::start(
        QueueConfig {
            capacity: config.queue_size,
            max_weight: MAX_BATCH,
            max_bytes: usize::MAX,
            flush_interval: Duration::from_secs(1),
            concurrency: CONCURRENCY,
            latency: config.latency.clone(),
        },
        sender,
    );
    (XrayQueue(queue), task)
}

struct XraySender {
    client: aws_sdk_xray::Client,
    /// Unprocessed-segment warnings: one per 10 s (all are counted).
    log_throttle: std::sync::Mutex<crate::logging::Throttle>,
}

impl queue::Sender<String> for XraySender {
    fn call_name(&self) -> &'static str {
        "PutTraceSegments"
    }

    async fn send(&self, batch: &[String]) -> Attempt {
        let result = self
            .client
            .put_trace_segments()
            .set_trace_segment_documents(Some(batch.to_vec()))
            .send()
            .await;
        match result {
            Ok(out) => {
                let unprocessed = out.unprocessed_trace_segments();
                for u in unprocessed {
                    let allowed = self
                        .log_throttle
                        .lock()
                        .expect("throttle lock")
                        .allow(std::time::Instant::now());
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
                Attempt::Delivered {
                    unprocessed: unprocessed.len() as u64,
                }
            }
            Err(e) if retryable(&e) => Attempt::Retry {
                why: describe(&e),
                after: None,
            },
            Err(e) => Attempt::Failed { why: describe(&e) },
        }
    }
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
