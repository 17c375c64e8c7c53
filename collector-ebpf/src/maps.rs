//! Maps and load-time settings shared by every hook family.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use collector_common::{Counter, DATA_HEADER_SIZE, MAX_CAPTURE_BYTES};

/// Every event to userspace. Its size is set by the collector at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Failure and activity counters, indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Room to build one data record (header + payload) before copying it into the ring buffer:
/// records are variable-sized, and the BPF stack is only 512 bytes.
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; DATA_HEADER_SIZE + MAX_CAPTURE_BYTES],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sequence used to make connection ids on paths that have no socket cookie.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Connections being traced on the syscall path, by (tgid, fd).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnState {
    pub conn_id: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub role: u32,
    pub _pad: u32,
}

#[map]
pub static CONNS: HashMap<SockKey, ConnState> = HashMap::with_max_entries(65536, 0);

/// Arguments saved at syscall entry for the exit, by pid_tgid (one in-flight call per thread).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// User buffer (read/write) or sockaddr pointer (accept/connect).
    pub ptr: u64,
    pub fd: u32,
    pub _pad: u32,
}

#[map]
pub static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// Load-time settings, written by the collector through `EbpfLoader::set_global`.
#[unsafe(no_mangle)]
pub static CAPTURE_BYTES: u32 = collector_common::DEFAULT_CAPTURE_BYTES;
/// Ring buffer fill level (bytes) above which a record wakes the reader; below it the reader
/// drains on its own timer. A wakeup per record costs 5–7× the program itself.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 2 * 1024 * 1024;
/// The collector's own tgid: its traffic is never traced.
#[unsafe(no_mangle)]
pub static SELF_TGID: u32 = 0;

#[inline(always)]
pub fn setting_u32(v: &'static u32) -> u32 {
    // SAFETY: a plain read of a global; volatile so the load-time value is not constant-folded.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn setting_u64(v: &'static u64) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}
