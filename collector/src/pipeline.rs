//! The stages after the kernel, wired for one exporter: a pure function of kernel events
//! (plus the clock), so the whole path is testable without root.

use std::io::Write;

use crate::{
    enrich::{EnrichStats, Enricher, ProcCgroups},
    export::{OutputFormat, SegmentExporter, events::EventPrinter, exchanges::ExchangePrinter},
    http::{HttpOut, HttpTracker, TrackerLimits, TrackerStats},
    source::{clock::Clock, event::KernelEvent},
    trace::{Segment, TraceAssembler, TraceConfig, TraceStats, process::ProcFs},
};

#[expect(clippy::large_enum_variant, reason = "one per collector")]
pub enum Pipeline<W: Write> {
    /// Raw kernel events, one line each.
    Events(EventPrinter<W>),
    /// Events → streams → HTTP exchanges, one line each.
    Exchanges {
        tracker: HttpTracker,
        printer: ExchangePrinter<W>,
        batch: Vec<HttpOut>,
    },
    /// Events → streams → exchanges → linked segments → pod/node metadata.
    Traces {
        tracker: HttpTracker,
        assembler: TraceAssembler<ProcFs>,
        enricher: Enricher<ProcCgroups>,
        exporter: Box<dyn SegmentExporter>,
        http: Vec<HttpOut>,
        segments: Vec<Segment>,
    },
}

impl<W: Write> Pipeline<W> {
    pub fn events(out: W, format: OutputFormat, clock: Clock) -> Self {
        Self::Events(EventPrinter::new(out, format, clock))
    }

    pub fn exchanges(out: W, format: OutputFormat, clock: Clock, limits: TrackerLimits) -> Self {
        Self::Exchanges {
            tracker: HttpTracker::new(limits),
            printer: ExchangePrinter::new(out, format, clock),
            batch: Vec::new(),
        }
    }

    pub fn traces(
        exporter: Box<dyn SegmentExporter>,
        clock: Clock,
        limits: TrackerLimits,
        config: TraceConfig,
        enricher: Enricher<ProcCgroups>,
    ) -> Self {
        Self::Traces {
            tracker: HttpTracker::new(limits),
            assembler: TraceAssembler::new(config, clock, ProcFs::default()),
            enricher,
            exporter,
            http: Vec::new(),
            segments: Vec::new(),
        }
    }

    pub fn on_event(&mut self, event: KernelEvent) -> std::io::Result<()> {
        match self {
            Self::Events(p) => p.on_event(&event),
            Self::Exchanges {
                tracker,
                printer,
                batch,
            } => {
                tracker.on_event(event, batch);
                export(printer, batch)
            }
            Self::Traces {
                tracker,
                assembler,
                enricher,
                http,
                ..
            } => {
                tracker.on_event(event, http);
                http.retain(|h| enricher.keep(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                Ok(())
            }
        }
    }

    /// Periodic work: stale holes become gaps, idle connections are closed, held segments
    /// are built.
    pub fn tick(&mut self, now_ns: u64) -> std::io::Result<()> {
        match self {
            Self::Events(_) => Ok(()),
            Self::Exchanges {
                tracker,
                printer,
                batch,
            } => {
                tracker.expire(now_ns, batch);
                export(printer, batch)
            }
            Self::Traces {
                tracker,
                assembler,
                enricher,
                exporter,
                http,
                segments,
            } => {
                tracker.expire(now_ns, http);
                http.retain(|h| enricher.keep(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                assembler.tick(now_ns, segments);
                enricher.tick(now_ns);
                segments.retain_mut(|s| enricher.enrich(s));
                exporter.export(segments)
            }
        }
    }

    /// At shutdown (`stop_ns`): finish every connection's exchanges and build every segment.
    pub fn finish(&mut self, stop_ns: u64) -> std::io::Result<()> {
        match self {
            Self::Events(_) => Ok(()),
            Self::Exchanges {
                tracker,
                printer,
                batch,
            } => {
                tracker.close_all(stop_ns, batch);
                export(printer, batch)
            }
            Self::Traces {
                tracker,
                assembler,
                enricher,
                exporter,
                http,
                segments,
            } => {
                tracker.close_all(stop_ns, http);
                http.retain(|h| enricher.keep(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                assembler.finish(segments);
                segments.retain_mut(|s| enricher.enrich(s));
                exporter.export(segments)
            }
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Events(p) => p.flush(),
            Self::Exchanges { printer, .. } => printer.flush(),
            Self::Traces { exporter, .. } => exporter.flush(),
        }
    }

    pub fn http_stats(&self) -> Option<TrackerStats> {
        match self {
            Self::Events(_) => None,
            Self::Exchanges { tracker, .. } | Self::Traces { tracker, .. } => Some(tracker.stats()),
        }
    }

    pub fn trace_stats(&self) -> Option<TraceStats> {
        match self {
            Self::Traces { assembler, .. } => Some(assembler.stats),
            _ => None,
        }
    }

    pub fn enrich_stats(&self) -> Option<EnrichStats> {
        match self {
            Self::Traces { enricher, .. } => Some(enricher.stats),
            _ => None,
        }
    }
}

fn export<W: Write>(
    printer: &mut ExchangePrinter<W>,
    batch: &mut Vec<HttpOut>,
) -> std::io::Result<()> {
    for e in batch.drain(..).filter_map(HttpOut::into_exchange) {
        printer.export(&e)?;
    }
    Ok(())
}
