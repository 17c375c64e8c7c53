//! `--exporter xray-otlp` and `--exporter auto`: spans go to X-Ray's OTLP endpoint or to
//! PutTraceSegments, and X-Ray SDK documents always to PutTraceSegments (X-Ray takes them
//! under Transaction Search too). `auto` asks `GetTraceSegmentDestination` at start and
//! every 10 minutes: `CloudWatchLogs` (Transaction Search on) means OTLP, `XRay` means
//! PutTraceSegments; without the permission it stays on PutTraceSegments and says so once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aws_sdk_xray::types::{TraceSegmentDestination, TraceSegmentDestinationStatus};

use super::{SpanExporter, otlp::OtlpQueue, xray::XrayQueue};
use crate::trace::SpanGroup;

const ASK_EVERY: Duration = Duration::from_secs(600);

/// Where spans go now: shared with the task that asks X-Ray.
#[derive(Clone, Debug, Default)]
pub struct Destination(Arc<AtomicBool>);

impl Destination {
    pub fn otlp(on: bool) -> Self {
        Self(Arc::new(AtomicBool::new(on)))
    }

    pub fn is_otlp(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, otlp: bool) -> bool {
        self.0.swap(otlp, Ordering::Relaxed) != otlp
    }
}

pub struct Routed {
    pub xray: XrayQueue,
    pub otlp: OtlpQueue,
    pub destination: Destination,
}

impl SpanExporter for Routed {
    fn export(&mut self, batch: &mut Vec<SpanGroup>) -> std::io::Result<()> {
        if self.destination.is_otlp() {
            self.otlp.export(batch)
        } else {
            self.xray.export(batch)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn export_documents(&mut self, docs: &mut Vec<String>) -> std::io::Result<()> {
        self.xray.export_documents(docs)
    }
}

/// The answer's meaning: OTLP once segments land in CloudWatch Logs (Transaction Search on
/// and no longer PENDING).
pub fn means_otlp(
    answer: Option<&TraceSegmentDestination>,
    status: Option<&TraceSegmentDestinationStatus>,
) -> bool {
    matches!(answer, Some(TraceSegmentDestination::CloudWatchLogs))
        && !matches!(status, Some(TraceSegmentDestinationStatus::Pending))
}

/// Asks once now (so the first spans go the right way), then every 10 minutes.
pub async fn follow(client: aws_sdk_xray::Client, destination: Destination) {
    ask(&client, &destination, true).await;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ASK_EVERY).await;
            ask(&client, &destination, false).await;
        }
    });
}

async fn ask(client: &aws_sdk_xray::Client, destination: &Destination, first: bool) {
    match client.get_trace_segment_destination().send().await {
        Ok(out) => {
            let otlp = means_otlp(out.destination(), out.status());
            if destination.set(otlp) || first {
                tracing::info!(
                    "GetTraceSegmentDestination: {}; spans go to {}",
                    out.destination().map_or("(none)", |d| d.as_str()),
                    if otlp {
                        "X-Ray's OTLP endpoint"
                    } else {
                        "PutTraceSegments"
                    }
                );
            }
        }
        Err(e) => {
            let e = aws_sdk_xray::error::DisplayErrorContext(e).to_string();
            if first {
                let denied = e.contains("AccessDenied");
                tracing::warn!(
                    "GetTraceSegmentDestination failed ({e}); spans go to PutTraceSegments{}",
                    if denied {
                        " — add xray:GetTraceSegmentDestination to the collector's IAM policy"
                    } else {
                        " until it answers"
                    }
                );
            }
        }
    }
}
