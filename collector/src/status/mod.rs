//! What operators see of a running collector: Prometheus metrics on `/metrics`, liveness on
//! `/healthz` and readiness on `/readyz`, served by `server.rs` on `--metrics-bind`.
//!
//! The main loop owns every counter; once a second it publishes a snapshot here, and scrapes
//! read that snapshot, so serving never touches the pipeline.

pub mod metrics;
pub mod server;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// The main loop is considered stuck when it has not published for this long.
pub const STALE_AFTER_SECS: u64 = 10;

#[derive(Clone, Default)]
pub struct Status {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (name, value) pairs as in the `summary:` line.
    counters: Mutex<Vec<(String, u64)>>,
    /// Epoch seconds of the last publication by the main loop.
    heartbeat: AtomicU64,
    /// Probes attached and exporters started.
    ready: AtomicBool,
    /// Why not ready (shown by /readyz).
    not_ready: Mutex<String>,
    pub export_latency: metrics::ExportLatency,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Status {
    pub fn publish(&self, counters: Vec<(String, u64)>) {
        *self
            .inner
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = counters;
        self.inner.heartbeat.store(now_secs(), Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool, why_not: &str) {
        *self
            .inner
            .not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = why_not.to_owned();
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    pub fn counters(&self) -> Vec<(String, u64)> {
        self.inner
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Alive: the main loop published recently.
    pub fn healthy(&self) -> Result<(), String> {
        let beat = self.inner.heartbeat.load(Ordering::Relaxed);
        let age = now_secs().saturating_sub(beat);
        if beat == 0 || age <= STALE_AFTER_SECS {
            Ok(())
        } else {
            Err(format!("main loop silent for {age} s"))
        }
    }

    pub fn ready(&self) -> Result<(), String> {
        self.healthy()?;
        if self.inner.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self
                .inner
                .not_ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone())
        }
    }

    pub fn export_latency(&self) -> &metrics::ExportLatency {
        &self.inner.export_latency
    }
}
