//! Stage 4, traces: HTTP exchanges become linked X-Ray segment documents.

pub mod assembler;
pub mod document;
pub mod header;
pub mod ids;
pub mod process;

pub use assembler::{TraceAssembler, TraceConfig, TraceStats};
pub use document::Segment;
