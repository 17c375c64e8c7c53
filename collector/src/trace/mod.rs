//! Stage 4, traces: HTTP exchanges become linked spans (`span.rs`), in groups that leave
//! together.

pub mod assembler;
pub mod header;
pub mod ids;
pub mod links;
pub mod process;
pub mod span;

pub use assembler::{TraceAssembler, TraceConfig, TraceStats};
pub use span::{Span, SpanGroup, SpanKind};
