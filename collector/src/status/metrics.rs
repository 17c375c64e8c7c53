//! The Prometheus text exposition of the collector's counters (prometheus-client). Every
//! counter of the `summary:` line becomes `collector_<name>_total`, the few levels among them
//! gauges; the X-Ray upload latency is a histogram. No label takes unbounded values: there
//! are no labels at all beyond the histogram's buckets.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::Status;

/// Names (as in the summary line) that are levels, not running totals.
const GAUGES: &[&str] = &[
    "kube_pods_cached",
    "xray_queue_depth",
    "otlp_queue_depth",
    "export_xray_otlp",
    "sampling_rules_from_xray",
    "trace_requests_remembered",
    "enrich_pids_cached",
    "http_conns_open",
    "kernel_live_socks",
    "kernel_live_conns",
    "capture_attached",
    "shedding",
    "capture_path_socket_tracepoint",
    "capture_path_socket_fentry",
    "capture_path_socket_kprobe",
    "capture_path_syscall",
];

/// PutTraceSegments call latency, in seconds (5 ms … ~20 s).
#[derive(Clone, Debug)]
pub struct ExportLatency(pub Histogram);

impl Default for ExportLatency {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.005, 2.0, 12)))
    }
}

#[derive(Debug)]
struct Snapshot(Status);

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Status")
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, value) in self.0.counters() {
            let help = name.replace('_', " ");
            let full = format!("collector_{name}");
            if GAUGES.contains(&name.as_str()) {
                let gauge = ConstGauge::new(value as i64);
                let e = encoder.encode_descriptor(&full, &help, None, gauge.metric_type())?;
                gauge.encode(e)?;
            } else {
                let counter = ConstCounter::new(value);
                let e = encoder.encode_descriptor(&full, &help, None, counter.metric_type())?;
                counter.encode(e)?;
            }
        }
        Ok(())
    }
}

/// The registry scrapes render.
pub fn registry(status: &Status) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(status.clone())));
    registry.register(
        "collector_xray_put_latency_seconds",
        "PutTraceSegments call latency",
        status.export_latency().0.clone(),
    );
    registry
}

pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_as_prometheus_text() {
        let status = Status::default();
        status.publish(vec![
            ("kernel_errors_ringbuf_full".into(), 3),
            ("kube_pods_cached".into(), 12),
        ]);
        status.export_latency().0.observe(0.02);
        let text = render(&registry(&status));
        assert!(
            text.contains("# TYPE collector_kernel_errors_ringbuf_full counter"),
            "{text}"
        );
        assert!(
            text.contains("collector_kernel_errors_ringbuf_full_total 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE collector_kube_pods_cached gauge"),
            "{text}"
        );
        assert!(text.contains("collector_kube_pods_cached 12"), "{text}");
        assert!(
            text.contains("collector_xray_put_latency_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
