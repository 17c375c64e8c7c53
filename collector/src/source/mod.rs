//! Stage 1, kernel capture: load the eBPF programs, drain their ring buffer, decode records.
//! Everything after [`event::decode`] is a pure function of [`event::KernelEvent`]s.

pub mod clock;
pub mod event;
pub mod kernel;
pub mod mounts;
