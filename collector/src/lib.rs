//! The collector, stage by stage along the data's path (see ARCHITECTURE.md):
//! `source` (kernel events) → `stream` (per-connection byte streams) → `http` (exchanges) →
//! `export` (outputs); `pipeline` wires them for one exporter. Later stages — traces,
//! enrichment — slot in between as pure functions of the events.

pub mod app;
pub mod cli;
pub mod doctor;
pub mod enrich;
pub mod export;
pub mod http;
pub mod pipeline;
pub mod source;
pub mod stream;
pub mod trace;
