//! Maps and load-time settings shared by every hook family.

use aya_ebpf::{
    macros::map,
    maps::{Array, CgroupArray, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use collector_common::{
    Counter, DATA_HEADER_SIZE, KernelOffsets, MAX_CAPTURE_BYTES, OFFSETS_TASK_COMM,
};

/// Every event to userspace. Its size is set by the collector at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Failure and activity counters, indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Room to build one record (header + payload) before copying it into the ring buffer:
/// records are variable-sized, and the BPF stack is only 512 bytes. Twice the payload bound,
/// so a copy at any offset below the bound with any length up to it stays inside, which the
/// verifier can check without relating the two.
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; DATA_HEADER_SIZE + 2 * MAX_CAPTURE_BYTES],
    /// Running positions of the iovec walk. Kept in map memory (not registers) so every
    /// iteration looks alike to the verifier, whose states then prune instead of multiplying.
    pub iov_pos: u64,
    pub iov_seen: u64,
    /// The call's last bytes, gathered from every iovec entry that holds some of them, and how
    /// many were read. Twice the tail's size, so any offset below it with any length up to it
    /// stays inside.
    pub iov_tail: [u8; 2 * collector_common::TAIL_BYTES],
    pub iov_tail_got: u64,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sequence used to make connection ids on paths that have no socket cookie.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

pub use collector_common::{ConnState, SockKey, SockState};

/// A non-blocking connect returned before the handshake: the open is reported at the first
/// read or write, when the socket knows its initial sequence numbers (userspace links the
/// two ends of a connection by them).
pub const CONN_OPEN_PENDING: u32 = 1;

/// The connections marked `CONN_OPEN_PENDING`. Two threads may start a connection's first
/// I/O at once (Go's read and write loops): the one whose removal succeeds reports the open,
/// so it is reported once. Entries go at the report or the close, like `CONNS`' own.
#[map]
pub static OPENS_PENDING: LruHashMap<SockKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// LRU: a socket that dies without close(2) (process exit, exec, dup2 over it) leaves its
/// entry behind; the collector reclaims those of exited processes, and eviction takes the
/// rest, oldest first. An evicted connection is no longer traced, never the other way round:
/// excluded processes have no entry here.
#[map]
pub static CONNS: LruHashMap<SockKey, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// Arguments saved at syscall entry for the exit, by pid_tgid (one in-flight call per thread).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// User buffer, iovec array, msghdr or sockaddr pointer, as `kind` says.
    pub ptr: u64,
    pub fd: u32,
    pub kind: u32,
    /// The iovec count, for readv/writev (the exit record carries no arguments).
    pub count: u64,
}

pub const PENDING_BUF: u32 = 0;
pub const PENDING_IOV: u32 = 1;
pub const PENDING_MSG: u32 = 2;
pub const PENDING_FILE: u32 = 3;
pub const PENDING_ADDR: u32 = 4;

pub const SOCK_SELF: u32 = 1;

/// Marks on a socket between its `connect()` (task context) and sock_ops' connect callback
/// (which cannot ask who the task is on every kernel), by the `struct sock` address.
pub const CONNECTING_EXCLUDED: u32 = 1;
pub const CONNECTING_SELF: u32 = 2;

/// LRU: a connect that fails before the callback leaves its entry to be evicted.
#[map]
pub static CONNECTING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// The `struct sock` of a send in flight, by pid_tgid, for return probes (which do not see
/// the arguments). LRU: a missed return leaves nothing behind for good.
#[map]
pub static SEND_CALLS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// A connection the collector itself opened: never traced.
pub const PROTO_IGNORED: u32 = 99;

/// LRU, so that no missed close can fill it for good. Only a socket with an entry is traced,
/// and a client's entry is made at its connect, so an eviction can only stop a socket's
/// tracing, never start it (an excluded or the collector's own socket stays untraced).
#[map]
pub static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(65536, 0);

/// Local (address, port) of the collector's own TCP connections, so that when their peer is
/// on this node (a local X-Ray endpoint) the accepting side is not traced either. Key: the
/// IPv4 address (or the last 4 bytes of an IPv6 one) in network order, and the port.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Endpoint {
    pub addr: u32,
    pub port: u32,
}

#[map]
pub static SELF_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(4096, 0);

/// Struct member offsets of the running kernel, from its BTF, written by the collector at
/// load time (never compiled in).
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::NONE;

/// One member offset of [`OFFSETS`], read so the load-time value is not constant-folded.
#[macro_export]
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a plain read of a global, volatile as in `setting_u32`.
        unsafe { core::ptr::read_volatile(&$crate::maps::OFFSETS.$field) }
    };
}

/// Are the offsets of this `OFFSETS_*` group known?
#[inline(always)]
pub fn offsets_valid(group: u32) -> bool {
    offset!(valid) & group == group
}

/// LRU: a thread that ends inside a call (another thread's exit_group) never comes back for
/// its entry.
#[map]
pub static PENDING: LruHashMap<u64, PendingCall> = LruHashMap::with_max_entries(16384, 0);

/// Process names (`comm`, NUL-padded) whose connections are never traced, e.g. a load
/// generator. Filled by the collector after load.
#[map]
pub static EXCLUDED_COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);

/// The current process's name: its main thread's `comm` (a worker thread's own name, such
/// as `tokio-runtime-w` or `pool-1-thread-3`, says little). Without BTF offsets, the
/// current thread's name.
#[inline(always)]
pub fn current_process_comm() -> [u8; 16] {
    if offsets_valid(OFFSETS_TASK_COMM) {
        let (leader_off, comm_off) = (offset!(task_group_leader), offset!(task_comm));
        let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
        // SAFETY: kernel memory reads through the checked helper, at offsets from BTF.
        let leader = unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel(
                task.add(leader_off as usize) as *const *const u8
            )
        };
        if let Ok(leader) = leader
            && let Ok(comm) = unsafe {
                aya_ebpf::helpers::bpf_probe_read_kernel(
                    leader.add(comm_off as usize) as *const [u8; 16]
                )
            }
        {
            return comm;
        }
    }
    aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16])
}

/// Is the current task the collector?
#[inline(always)]
pub fn current_task_is_self() -> bool {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32 == setting_u32(&SELF_TGID)
}

/// Is the current task excluded from tracing (the collector itself, or by process name)?
#[inline(always)]
pub fn current_task_excluded() -> bool {
    if current_task_is_self() {
        return true;
    }

    // SAFETY: map lookup; only presence is used.
    unsafe { EXCLUDED_COMMS.get(current_process_comm()) }.is_some()
}

/// Is the current task one whose connections are not traced: excluded, or (with
/// `--cgroup`) outside the cgroup the collector traces?
#[inline(always)]
pub fn current_task_untraced() -> bool {
    current_task_excluded() || !current_task_in_traced_cgroup()
}

/// Is the current task under the traced cgroup (always, without `--cgroup`)? Asked of the
/// kernel by the cgroup itself, not by its id at a depth: a depth read from a cgroup
/// namespace's view would be wrong.
#[inline(always)]
pub fn current_task_in_traced_cgroup() -> bool {
    if setting_u32(&TRACED_CGROUP_SET) == 0 {
        return true;
    }
    // An error (no cgroup in the slot) traces nothing rather than everything.
    TRACED_CGROUP.current_task_under_cgroup(0).unwrap_or(false)
}

/// `--cgroup`: slot 0 holds the traced cgroup, written by the collector before it attaches.
#[map]
pub static TRACED_CGROUP: CgroupArray = CgroupArray::with_max_entries(1, 0);

/// Run-time switch, written by the collector: `[0] != 0` while it sheds load. Data of traced
/// connections is then counted (`Counter::Shed`) and not copied.
#[map]
pub static SHED: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn shedding() -> bool {
    SHED.get(0).is_some_and(|v| *v != 0)
}

/// Load-time settings, written by the collector through `EbpfLoader::set_global`.
#[unsafe(no_mangle)]
pub static CAPTURE_BYTES: u32 = collector_common::DEFAULT_CAPTURE_BYTES;
/// Ring buffer fill level (bytes) above which a record wakes the reader; below it the reader
/// drains on its own timer. A wakeup per record costs 5–7× the program itself.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 2 * 1024 * 1024;
/// `--cgroup` was given: only tasks under [`TRACED_CGROUP`] are traced. The cgroup programs
/// attach to that cgroup; the other hooks ask [`current_task_in_traced_cgroup`].
#[unsafe(no_mangle)]
pub static TRACED_CGROUP_SET: u32 = 0;
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

/// What a hook's `try_` function returns: on failure, the counter that names the reason.
pub type Outcome = Result<(), Counter>;

/// Counts a `try_` function's failure: no hook discards one.
#[inline(always)]
pub fn counted(outcome: Outcome) {
    if let Err(reason) = outcome {
        count(reason);
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}
