//! Last stage: where captured data leaves the collector.

pub mod events;
pub mod exchanges;
pub mod traces;
pub mod xray;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per line.
    Json,
}
