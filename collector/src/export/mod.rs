//! Last stage: where captured data leaves the collector.

pub mod destination;
pub mod events;
pub mod exchanges;
pub mod otlp;
pub mod queue;
pub mod traces;
pub mod xray;

use crate::trace::SpanGroup;

/// The exporter contract (OpenTelemetry's SpanExporter): the pipeline hands over batches of
/// finished span groups, one call at a time, never concurrently; each exporter converts them
/// to its own wire format.
/// `export` must not wait on a network: an exporter that talks to a service keeps a bounded
/// queue, counts what it drops, and sends from its own task with its own deadlines.
pub trait SpanExporter {
    /// Takes the batch (leaving it empty).
    fn export(&mut self, batch: &mut Vec<SpanGroup>) -> std::io::Result<()>;
    /// Writes out anything buffered.
    fn flush(&mut self) -> std::io::Result<()>;
    /// Documents made elsewhere (X-Ray SDKs, through the UDP relay), passed on unchanged.
    fn export_documents(&mut self, docs: &mut Vec<String>) -> std::io::Result<()>;
}

/// Writes one record: as a JSON object on a line, or as its text line.
pub fn write_line<W: std::io::Write, T: serde::Serialize>(
    out: &mut W,
    format: OutputFormat,
    record: &T,
    text: impl FnOnce(&T) -> String,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n")
        }
        OutputFormat::Text => writeln!(out, "{}", text(record)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per line.
    Json,
}
