//! `collector run`: wires the stages together and owns the main loop and shutdown.

use std::{io::BufWriter, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{ExporterKind, RunArgs},
    enrich::{EnrichConfig, Enricher, ProcCgroups, SharedMeta, ec2, kube_watch},
    export::{
        traces::TracePrinter,
        xray::{self, XrayConfig},
    },
    http::TrackerLimits,
    pipeline::Pipeline,
    source::{
        Assembler,
        clock::{Clock, monotonic_now_ns},
        join::JoinLimits,
        kernel::{CapturePath, KernelSource, SourceOptions},
    },
    trace::TraceConfig,
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut source = KernelSource::load(&SourceOptions {
        capture_path: args.capture_path,
        capture_bytes: args.capture_bytes,
        ringbuf_bytes: args.ringbuf_bytes,
        exclude_processes: args.exclude_processes.clone(),
    })?;
    tracing::info!(
        hooks = source.attached().len(),
        path = ?source.path(),
        "capturing on {}",
        source.attached().join(", ")
    );
    let mut assembler = match source.path() {
        CapturePath::Socket => Assembler::socket_path(JoinLimits {
            capture_bytes: args.capture_bytes as usize,
            ..JoinLimits::default()
        }),
        _ => Assembler::syscall_path(),
    };

    let stdout = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let clock = Clock::now();
    let trace_config = TraceConfig {
        service_name: args.service_name.clone(),
        hold_ns: args.trace_hold_ms * 1_000_000,
        ..TraceConfig::default()
    };
    // Pod and node metadata, for the exporters that build segments.
    let shared = SharedMeta::default();
    let mut kube_stats = None;
    if matches!(args.exporter, ExporterKind::Stdout | ExporterKind::Xray) {
        kube_stats =
            kube_watch::start(args.kubernetes, args.node_name.clone(), shared.clone()).await;
        ec2::spawn(shared.clone());
    }
    let enricher = || {
        Enricher::new(
            EnrichConfig {
                cluster_name: args.cluster_name.clone(),
                node_name: args.node_name.clone(),
            },
            shared.clone(),
            ProcCgroups,
        )
    };
    let mut xray = None;
    let mut pipeline = match args.exporter {
        ExporterKind::Events => Pipeline::events(stdout, args.format, clock),
        ExporterKind::Exchanges => {
            Pipeline::exchanges(stdout, args.format, clock, TrackerLimits::default())
        }
        ExporterKind::Stdout => Pipeline::traces(
            Box::new(TracePrinter::new(stdout, args.format)),
            clock,
            TrackerLimits::default(),
            trace_config,
            enricher(),
        ),
        ExporterKind::Xray => {
            let (queue, task) = xray::start(&XrayConfig {
                region: args.region.clone(),
                endpoint_url: args.endpoint_url.clone(),
                queue_size: args.xray_queue_size as usize,
            })
            .await?;
            xray = Some((queue.clone(), task));
            Pipeline::traces(
                Box::new(queue),
                clock,
                TrackerLimits::default(),
                trace_config,
                enricher(),
            )
        }
    };

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let interval = Duration::from_millis(args.drain_interval_ms);
    let mut events = Vec::new();

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            () = source.wait(interval) => {}
        }
        if let Err(e) = drain(&mut source, &mut assembler, &mut pipeline, &mut events) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
    }

    // Stop: take what the kernel still holds, detach everything, finish open exchanges.
    let _ = drain(&mut source, &mut assembler, &mut pipeline, &mut events);
    let counters = source.counters();
    drop(source);
    assembler.finish(&mut events);
    for event in events.drain(..) {
        pipeline.on_event(event).context("writing to stdout")?;
    }
    pipeline
        .finish()
        .and_then(|()| pipeline.flush())
        .context("writing to stdout")?;
    let mut summary = summary(&counters, &assembler, &pipeline);
    if let Some(e) = pipeline.enrich_stats() {
        let pods = shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        let watch_errors = kube_stats
            .as_ref()
            .map_or(0, |s| s.errors.load(std::sync::atomic::Ordering::Relaxed));
        for (k, v) in [
            ("enrich_with_pod", e.with_pod),
            ("enrich_container_without_pod", e.container_without_pod),
            ("enrich_host_processes", e.host_processes),
            ("enrich_excluded_by_annotation", e.excluded_by_annotation),
            ("enrich_pids_evicted", e.pids_evicted),
            ("enrich_pid_cache_resets", e.pid_cache_resets),
            ("kube_pods_cached", pods.len() as u64),
            ("kube_pod_events", pods.stats.applied + pods.stats.deleted),
            ("kube_relists", pods.stats.relists),
            ("kube_pods_rejected", pods.stats.rejected),
            ("kube_watch_errors", watch_errors),
        ] {
            summary.push_str(&format!(" {k}={v}"));
        }
    }
    if let Some((queue, task)) = xray {
        // Deliver what is queued, within the deadline.
        queue.close();
        let deadline = Duration::from_secs(args.shutdown_timeout_secs);
        if tokio::time::timeout(deadline, task).await.is_err() {
            tracing::warn!(
                "{} segment documents not delivered within {deadline:?}",
                queue.len()
            );
        }
        for (k, v) in queue.stats().pairs() {
            summary.push_str(&format!(" {k}={v}"));
        }
        summary.push_str(&format!(" xray_undelivered_at_exit={}", queue.len()));
    }
    tracing::info!("stopped; summary: {summary}");
    Ok(())
}

/// Every counter of the run as `name=value` pairs, on one line.
fn summary<W: std::io::Write>(
    kernel: &[(&'static str, u64)],
    assembler: &Assembler,
    pipeline: &Pipeline<W>,
) -> String {
    let mut pairs: Vec<(String, u64)> = kernel
        .iter()
        .map(|(k, v)| (format!("kernel_{k}"), *v))
        .collect();
    pairs.push(("decode_errors".into(), assembler.decode_errors));
    if let Some(j) = assembler.join_stats() {
        pairs.extend(
            [
                ("join_calls", j.calls),
                ("join_packets", j.packets),
                ("join_calls_missing_payload", j.calls_missing_payload),
                ("join_unknown_conn", j.unknown_conn),
                ("join_packets_dropped", j.packets_dropped),
                ("join_duplicate_packets", j.duplicate_packets),
                ("join_fin_adjusted", j.fin_adjusted),
                ("join_conns_evicted", j.conns_evicted),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
    }
    if let Some(h) = pipeline.http_stats() {
        pairs.extend(
            [
                ("http_exchanges", h.exchanges),
                ("http_conns_opened", h.conns_opened),
                ("http_conns_closed", h.conns_closed),
                ("http_conns_expired", h.conns_expired),
                ("http_conns_evicted", h.conns_evicted),
                ("http_data_without_conn", h.data_without_conn),
                ("http_not_http_conns", h.not_http_conns),
                ("stream_duplicate_chunks", h.stream.duplicate_chunks),
                ("stream_overlap_bytes", h.stream.overlap_bytes),
                ("stream_gaps", h.stream.gaps),
                ("stream_gap_bytes", h.stream.gap_bytes),
                ("http_lost_messages", h.pairing.lost_messages),
                ("http_unmatched_responses", h.pairing.unmatched_responses),
                ("http_in_flight_overflow", h.pairing.in_flight_overflow),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
    }
    if let Some(t) = pipeline.trace_stats() {
        pairs.extend(
            [
                ("trace_segments", t.segments),
                ("trace_subsegments_nested", t.subsegments_nested),
                ("trace_subsegments_independent", t.subsegments_independent),
                ("trace_client_segments", t.client_segments),
                ("trace_linked_same_node", t.linked_same_node),
                ("trace_linked_by_header", t.linked_by_header),
                ("trace_parented_by_thread", t.parented_by_thread),
                (
                    "trace_parented_by_forwarded_header",
                    t.parented_by_forwarded_header,
                ),
                ("trace_unparented_ambiguous", t.unparented_ambiguous),
                (
                    "trace_unparented_thread_hopping",
                    t.unparented_thread_hopping,
                ),
                ("trace_not_sampled", t.not_sampled),
                ("trace_forgotten", t.forgotten),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One pass of the loop: ring buffer → events → stages → exporter.
fn drain<W: std::io::Write>(
    source: &mut KernelSource,
    assembler: &mut Assembler,
    pipeline: &mut Pipeline<W>,
    events: &mut Vec<crate::source::event::KernelEvent>,
) -> std::io::Result<()> {
    source.drain(|record| assembler.push(record, events));
    let now = monotonic_now_ns();
    assembler.tick(now, events);
    for event in events.drain(..) {
        pipeline.on_event(event)?;
    }
    pipeline.tick(now)?;
    pipeline.flush()
}
