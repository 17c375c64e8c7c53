//! Empty on the host: this lets `collector` name the eBPF crate as a build dependency, so a
//! change here or in `collector-common` rebuilds the object embedded in the collector. The
//! programs themselves are the `collector` binary target (`src/main.rs`).
#![no_std]
