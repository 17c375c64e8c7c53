//! Stage 1, kernel capture: load the eBPF programs, drain their ring buffer, decode records
//! and — on the socket-layer path — join packets with calls. Everything after
//! [`Assembler`] is a pure function of [`event::KernelEvent`]s, whichever path ran.

pub mod attach;
pub mod btf;
pub mod capture_path;
pub mod cgroup;
pub mod clock;
pub mod event;
pub mod join;
pub mod kernel;
pub mod mounts;
pub mod offsets;
pub mod tables;

use event::{KernelEvent, Record, decode};
use join::{JoinLimits, JoinStats, SocketJoin};

/// Turns raw ring buffer records into the one event stream of later stages.
pub struct Assembler {
    /// Present on the socket-layer path.
    join: Option<SocketJoin>,
    pub decode_errors: u64,
}

impl Assembler {
    pub fn syscall_path() -> Self {
        Self {
            join: None,
            decode_errors: 0,
        }
    }

    pub fn socket_path(limits: JoinLimits) -> Self {
        Self {
            join: Some(SocketJoin::new(limits)),
            decode_errors: 0,
        }
    }

    pub fn push(&mut self, record: &[u8], out: &mut Vec<KernelEvent>) {
        match (decode(record), &mut self.join) {
            (Ok(r), Some(join)) => join.push(r, out),
            (Ok(Record::Event(e)), None) => out.push(e),
            // Socket-layer pieces cannot come from the syscall path's programs.
            (Ok(_), None) | (Err(_), _) => self.decode_errors += 1,
        }
    }

    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<KernelEvent>) {
        if let Some(join) = &mut self.join {
            join.expire(now_ns, out);
        }
    }

    pub fn finish(&mut self, out: &mut Vec<KernelEvent>) {
        if let Some(join) = &mut self.join {
            join.flush_all(out);
        }
    }

    pub fn join_stats(&self) -> Option<JoinStats> {
        self.join.as_ref().map(|j| j.stats)
    }
}
