//! Every counter of a run, by name: the final `summary:` log line and `/metrics` both list
//! these.

use std::sync::atomic::Ordering;

use crate::{
    enrich::{SharedMeta, kube_watch::WatchStats},
    guard::Guard,
    pipeline::Pipeline,
    relay::{RelayStats, proxy::ProxyStats},
    source::{Assembler, capture_path::Variant, tables::TableStats},
};

/// What the counters are read from.
pub struct Sources<'a, W: std::io::Write> {
    pub kernel: &'a [(&'static str, u64)],
    pub assembler: &'a Assembler,
    pub pipeline: &'a Pipeline<W>,
    pub shared: &'a SharedMeta,
    pub kube: Option<&'a WatchStats>,
    pub delivery: &'a super::exporters::Delivery,
    pub guard: &'a Guard,
    pub capture_attached: bool,
    /// The capture variant chosen at start (none with `--capture-path off`).
    pub variant: Option<Variant>,
    pub relay: Option<&'a RelayStats>,
    pub proxy: Option<&'a ProxyStats>,
    pub tables: &'a TableStats,
}

pub fn collect<W: std::io::Write>(s: &Sources<'_, W>) -> Vec<(String, u64)> {
    let mut pairs: Vec<(String, u64)> = s
        .kernel
        .iter()
        .map(|(k, v)| (format!("kernel_{k}"), *v))
        .collect();
    let add = |pairs: &mut Vec<(String, u64)>, list: &[(&str, u64)]| {
        pairs.extend(list.iter().map(|(k, v)| ((*k).to_owned(), *v)));
    };
    add(&mut pairs, &[("decode_errors", s.assembler.decode_errors)]);
    add(&mut pairs, &s.tables.pairs());
    if let Some(j) = s.assembler.join_stats() {
        add(&mut pairs, &j.pairs());
    }
    add(&mut pairs, &s.pipeline.counters());
    if s.pipeline.enriches() {
        let pods = s.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        add(
            &mut pairs,
            &[
                ("kube_pods_cached", pods.len() as u64),
                ("kube_pod_events", pods.stats.applied + pods.stats.deleted),
                ("kube_relists", pods.stats.relists),
                ("kube_pods_rejected", pods.stats.rejected),
                (
                    "kube_watch_errors",
                    s.kube.map_or(0, |k| k.errors.load(Ordering::Relaxed)),
                ),
            ],
        );
    }
    if let Some(r) = s.relay {
        let relay = r.pairs();
        let relay: Vec<(&str, u64)> = relay.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        add(&mut pairs, &relay);
        add(
            &mut pairs,
            &[("sdk_senders", s.shared.sdk_senders.len() as u64)],
        );
    }
    if let Some(p) = s.proxy {
        pairs.extend(p.pairs());
    }
    pairs.extend(s.delivery.pairs());
    // Levels: GAUGES in status/metrics.rs names them.
    add(&mut pairs, &s.pipeline.levels());
    add(
        &mut pairs,
        &[
            ("guard_shed_started", s.guard.stats.shed_started),
            ("guard_shed_seconds", s.guard.stats.shed_seconds),
            ("shedding", u64::from(s.guard.shedding())),
            ("capture_attached", u64::from(s.capture_attached)),
        ],
    );
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
