//! Every counter of a run, by name: the final `summary:` log line and `/metrics` both list
//! these.

use std::sync::atomic::Ordering;

use crate::{
    enrich::{SharedMeta, kube_watch::WatchStats},
    export::xray::XrayQueue,
    guard::Guard,
    pipeline::Pipeline,
    relay::RelayStats,
    source::{Assembler, capture_path::Variant},
};

/// What the counters are read from.
pub struct Sources<'a, W: std::io::Write> {
    pub kernel: &'a [(&'static str, u64)],
    pub assembler: &'a Assembler,
    pub pipeline: &'a Pipeline<W>,
    pub shared: &'a SharedMeta,
    pub kube: Option<&'a WatchStats>,
    pub xray: Option<&'a XrayQueue>,
    pub guard: &'a Guard,
    pub capture_attached: bool,
    /// The capture variant chosen at start (none with `--capture-path off`).
    pub variant: Option<Variant>,
    pub relay: Option<&'a RelayStats>,
}

pub fn collect<W: std::io::Write>(s: &Sources<'_, W>) -> Vec<(String, u64)> {
    let mut pairs: Vec<(String, u64)> = s
        .kernel
        .iter()
        .map(|(k, v)| (format!("kernel_{k}"), *v))
        .collect();
    let mut add = |list: &[(&str, u64)]| {
        pairs.extend(list.iter().map(|(k, v)| ((*k).to_owned(), *v)));
    };
    add(&[("decode_errors", s.assembler.decode_errors)]);
    if let Some(j) = s.assembler.join_stats() {
        add(&[
            ("join_calls", j.calls),
            ("join_packets", j.packets),
            ("join_calls_missing_payload", j.calls_missing_payload),
            ("join_unknown_conn", j.unknown_conn),
            ("join_packets_dropped", j.packets_dropped),
            ("join_duplicate_packets", j.duplicate_packets),
            ("join_fin_adjusted", j.fin_adjusted),
            ("join_calls_from_packets", j.calls_from_packets),
            ("join_conns_evicted", j.conns_evicted),
        ]);
    }
    if let Some(h) = s.pipeline.http_stats() {
        add(&[
            ("http_exchanges", h.exchanges),
            ("http_exchanges_truncated", h.exchanges_truncated),
            ("http_exchanges_incomplete", h.exchanges_incomplete),
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
        ]);
    }
    if let Some(t) = s.pipeline.trace_stats() {
        add(&[
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
        ]);
    }
    if let Some(e) = s.pipeline.enrich_stats() {
        let pods = s.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        add(&e.pairs());
        add(&[
            ("kube_pods_cached", pods.len() as u64),
            ("kube_pod_events", pods.stats.applied + pods.stats.deleted),
            ("kube_relists", pods.stats.relists),
            ("kube_pods_rejected", pods.stats.rejected),
            (
                "kube_watch_errors",
                s.kube.map_or(0, |k| k.errors.load(Ordering::Relaxed)),
            ),
        ]);
    }
    if let Some(f) = s.pipeline.filter_stats() {
        add(&f.pairs());
    }
    if let Some(st) = s.pipeline.sampling_stats() {
        add(&[
            ("sampling_traces_sampled", st.traces_sampled),
            ("sampling_traces_not_sampled", st.traces_not_sampled),
            ("sampling_traces_forced", st.traces_forced),
            ("sampling_segments_dropped", st.segments_dropped),
            ("sampling_rules_from_xray", st.rules_from_xray),
        ]);
    }
    if let Some(r) = s.relay {
        let relay = r.pairs();
        let relay: Vec<(&str, u64)> = relay.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        add(&relay);
        add(&[("sdk_senders", s.shared.sdk_senders.len() as u64)]);
    }
    if let Some(q) = s.xray {
        let pairs: Vec<(&str, u64)> = q.stats().pairs();
        add(&pairs);
        add(&[("xray_queue_depth", q.len() as u64)]);
    }
    // Levels: GAUGES in status/metrics.rs names them.
    let (conns, requests, pids) = s.pipeline.levels();
    add(&[
        ("http_conns_open", conns as u64),
        ("trace_requests_remembered", requests as u64),
        ("enrich_pids_cached", pids as u64),
    ]);
    add(&[
        ("guard_shed_started", s.guard.stats.shed_started),
        ("guard_shed_seconds", s.guard.stats.shed_seconds),
        ("shedding", u64::from(s.guard.shedding())),
        ("capture_attached", u64::from(s.capture_attached)),
    ]);
    // One gauge per variant, 1 for the one chosen: which path runs, without a label.
    for v in Variant::ORDER {
        pairs.push((
            format!("capture_path_{}", v.name().replace('-', "_")),
            u64::from(s.variant == Some(v)),
        ));
    }
    pairs
}

pub fn line(pairs: &[(String, u64)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Kernel counters summed over capture sessions (the kill switch detaches, and re-attaching
/// starts the kernel's counters from zero).
pub fn add_kernel(base: &mut Vec<(&'static str, u64)>, more: &[(&'static str, u64)]) {
    for (k, v) in more {
        match base.iter_mut().find(|(b, _)| b == k) {
            Some((_, total)) => *total += v,
            None => base.push((k, *v)),
        }
    }
}
