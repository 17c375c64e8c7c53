//! The stages after the kernel, wired for one exporter: a pure function of kernel events
//! (plus the clock), so the whole path is testable without root.

use std::io::Write;

use crate::{
    export::{OutputFormat, SpanExporter, events::EventPrinter, exchanges::ExchangePrinter},
    filter::HealthChecks,
    http::{HttpOut, HttpTracker, TrackerLimits},
    source::{clock::Clock, event::KernelEvent},
    trace::{SpanGroup, TraceAssembler, TraceConfig, process::ProcFs, span::GroupStage},
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
    /// Events → streams → exchanges → linked spans → the group stages (enrichment, the
    /// filters, sampling) → the exporter.
    Traces {
        tracker: HttpTracker,
        assembler: TraceAssembler<ProcFs>,
        /// Drops health checks before the trace stage.
        health: HealthChecks,
        stages: Vec<Box<dyn GroupStage>>,
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

    /// `health` drops health checks as they are parsed; `stages` run in order on every batch
    /// of span groups.
    pub fn traces(
        exporter: Box<dyn SpanExporter>,
        clock: Clock,
        limits: TrackerLimits,
        config: TraceConfig,
        health: HealthChecks,
        stages: Vec<Box<dyn GroupStage>>,
    ) -> Self {
        Self::Traces {
            tracker: HttpTracker::new(limits),
            assembler: TraceAssembler::new(config, clock, ProcFs::default()),
            health,
            stages,
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
                health,
                http,
                ..
            } => {
                tracker.on_event(event, http);
                http.retain(|h| health.keep_exchange(h));
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
                health,
                stages,
                exporter,
                http,
                groups,
            } => {
                tracker.expire(now_ns, http);
                http.retain(|h| health.keep_exchange(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                assembler.tick(now_ns, groups);
                stages.iter_mut().for_each(|s| s.tick(now_ns));
                run_stages(stages, groups);
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
                health,
                stages,
                exporter,
                http,
                groups,
            } => {
                tracker.close_all(stop_ns, http);
                http.retain(|h| health.keep_exchange(h));
                http.drain(..).for_each(|h| assembler.on_http(h));
                assembler.finish(groups);
                run_stages(stages, groups);
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
                health,
                stages,
                ..
            } => {
                let mut out = tracker.stats().pairs();
                out.extend(assembler.stats.pairs());
                out.extend(health.stats.pairs());
                stages.iter().for_each(|s| out.extend(s.counters()));
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

    /// What the stages hold right now (gauges); a stage the pipeline does not run holds
    /// nothing.
    pub fn levels(&self) -> Vec<(&'static str, u64)> {
        let conns = |t: &HttpTracker| ("http_conns_open", t.tracked_conns() as u64);
        match self {
            Self::Events(_) => vec![],
            Self::Exchanges { tracker, .. } => vec![conns(tracker)],
            Self::Traces {
                tracker,
                assembler,
                stages,
                ..
            } => {
                let mut out = vec![
                    conns(tracker),
                    ("trace_requests_remembered", assembler.remembered() as u64),
                ];
                stages.iter().for_each(|s| out.extend(s.levels()));
                out
            }
        }
    }
}

/// Every group stage in order (enrichment, the filters, sampling: `app` builds the list).
fn run_stages(stages: &mut [Box<dyn GroupStage>], groups: &mut Vec<SpanGroup>) {
    if groups.is_empty() {
        return;
    }
    let wall_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for stage in stages.iter_mut() {
        stage.process(groups, wall_secs);
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
