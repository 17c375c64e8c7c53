//! The stages after the kernel, wired for one exporter: a pure function of kernel events
//! (plus the clock), so the whole path is testable without root.

use std::io::Write;

use crate::{
    enrich::{Enricher, ProcCgroups},
    export::{OutputFormat, SpanExporter, events::EventPrinter, exchanges::ExchangePrinter},
    filter::Selection,
    http::{HttpOut, HttpTracker, TrackerLimits},
    sampling::Sampler,
    source::{clock::Clock, event::KernelEvent},
    trace::{SpanGroup, TraceAssembler, TraceConfig, process::ProcFs},
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
    /// Events → streams → exchanges → linked spans → pod/node metadata → sampling.
    Traces {
        tracker: HttpTracker,
        assembler: TraceAssembler<ProcFs>,
        enricher: Enricher<ProcCgroups>,
        selection: Selection,
        /// Sampling of the traces we make (none: every trace is kept).
        sampler: Option<Sampler>,
        exporter: Box<dyn SpanExporter>,
        http: Vec<HttpOut>,
        groups: Vec<SpanGroup>,
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
        exporter: Box<dyn SpanExporter>,
        clock: Clock,
        limits: TrackerLimits,
        config: TraceConfig,
        enricher: Enricher<ProcCgroups>,
        selection: Selection,
        sampler: Option<Sampler>,
    ) -> Self {
        Self::Traces {
            tracker: HttpTracker::new(limits),
            assembler: TraceAssembler::new(config, clock, ProcFs::default()),
            enricher,
            selection,
            sampler,
            exporter,
            http: Vec::new(),
            groups: Vec::new(),
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
                selection,
                http,
                ..
            } => {
                tracker.on_event(event, http);
                http.retain(|h| selection.keep_exchange(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                Ok(())
            }
        }
    }

    /// Periodic work: stale holes become gaps, idle connections are closed, held spans are
    /// built.
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
                selection,
                sampler,
                exporter,
                http,
                groups,
            } => {
                tracker.expire(now_ns, http);
                http.retain(|h| selection.keep_exchange(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                assembler.tick(now_ns, groups);
                enricher.tick(now_ns);
                finish_groups(enricher, selection, sampler.as_mut(), groups);
                exporter.export(groups)
            }
        }
    }

    /// At shutdown (`stop_ns`): finish every connection's exchanges and build every span.
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
                selection,
                sampler,
                exporter,
                http,
                groups,
            } => {
                tracker.close_all(stop_ns, http);
                http.retain(|h| selection.keep_exchange(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                assembler.finish(groups);
                finish_groups(enricher, selection, sampler.as_mut(), groups);
                exporter.export(groups)
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

    /// Whether span groups are enriched (trace exporters).
    pub fn enriches(&self) -> bool {
        matches!(self, Self::Traces { .. })
    }

    /// Every stage's counters, in the data's order (stages the pipeline does not run have
    /// none).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        match self {
            Self::Events(_) => vec![],
            Self::Exchanges { tracker, .. } => tracker.stats().pairs(),
            Self::Traces {
                tracker,
                assembler,
                enricher,
                selection,
                sampler,
                ..
            } => {
                let mut out = tracker.stats().pairs();
                out.extend(assembler.stats.pairs());
                out.extend(enricher.stats.pairs());
                out.extend(selection.stats.pairs());
                if let Some(s) = sampler {
                    out.extend(s.stats().pairs());
                }
                out
            }
        }
    }

    /// SDK documents from the relay, to the exporter unchanged (trace exporters only).
    pub fn export_documents(&mut self, docs: &mut Vec<String>) -> std::io::Result<()> {
        match self {
            Self::Traces { exporter, .. } => exporter.export_documents(docs),
            _ => {
                docs.clear();
                Ok(())
            }
        }
    }

    /// What the stages hold right now: (connections tracked, requests remembered, pids
    /// cached); a stage the pipeline does not run holds nothing.
    pub fn levels(&self) -> (usize, usize, usize) {
        match self {
            Self::Events(_) => (0, 0, 0),
            Self::Exchanges { tracker, .. } => (tracker.tracked_conns(), 0, 0),
            Self::Traces {
                tracker,
                assembler,
                enricher,
                ..
            } => (
                tracker.tracked_conns(),
                assembler.remembered(),
                enricher.cached_pids(),
            ),
        }
    }
}

/// Enrichment (names, pods), the filters (and SDK duplicates), then sampling, which decides
/// per trace on the root's service as enrichment named it.
fn finish_groups(
    enricher: &mut Enricher<ProcCgroups>,
    selection: &mut Selection,
    sampler: Option<&mut Sampler>,
    groups: &mut Vec<SpanGroup>,
) {
    groups.retain_mut(|g| {
        enricher.enrich(g);
        selection.keep(g)
    });
    let Some(sampler) = sampler else {
        return;
    };
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    groups.retain(|g| sampler.keep_group(g, now_secs));
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
