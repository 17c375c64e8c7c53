//! The collector, stage by stage along the data's path (see ARCHITECTURE.md):
//! `source` (kernel events) → `stream` (per-connection byte streams) → `http` (exchanges) →
//! `trace` (linked spans) → `enrich` (pods, EC2) → `filter` and `sampling` (what goes out) →
//! `export` (outputs), with `relay` (X-Ray SDK segments) beside them; `pipeline` wires them
//! for one exporter. Around them: `cli`/`config` (settings), `status` (metrics and health),
//! `guard` (CPU and memory budget), `app` (the main loop). `tests/architecture.rs` holds the
//! order and fails on an import against it.

pub mod app;
pub mod aws;
pub mod cli;
pub mod config;
pub mod counters;
pub mod doctor;
pub mod enrich;
pub mod export;
pub mod filter;
pub mod guard;
pub mod http;
pub mod logging;
pub mod pipeline;
pub mod relay;
pub mod sampling;
pub mod source;
pub mod status;
pub mod stream;
pub mod trace;
