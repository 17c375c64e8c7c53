//! The collector, stage by stage along the data's path (see ARCHITECTURE.md):
//! `source` (kernel events) → `export` (outputs). Later stages — connection streams, HTTP
//! exchanges, traces, enrichment — slot in between as pure functions of the events.

pub mod app;
pub mod cli;
pub mod export;
pub mod source;
