//! Socket-layer path, calls: every hook that runs in the thread that moved bytes on a TCP
//! socket reports the call here — thread, time and the exact sequence range, from the socket's
//! own counters — and userspace joins it with the packets' payload. Which hook runs depends on
//! the kernel: the `sock_recv_length` / `sock_send_length` tracepoints (6.3+, below), else
//! fentry/fexit (`tcp_fentry.rs`), else kprobes (`tcp_kprobe.rs`).

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use collector_common::{Counter, DIR_RECV, DIR_SEND, EVENT_SOCK_CALL, PROTO_OTHER, SockCallEvent};

use crate::{
    emit::wakeup_flag,
    maps::{
        EVENTS, Outcome, PROTO_IGNORED, SOCKS, count, counted, current_task_untraced, shedding,
    },
    offset,
};

const MSG_PEEK: i32 = 2;

/// `sock_recv_length(struct sock *sk, int ret, int flags)`, after every recv on a socket.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_call(ctx: BtfTracePointContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    // A peek moves no bytes out of the stream.
    if ret > 0 && flags & MSG_PEEK == 0 {
        report(ctx.arg(0), DIR_RECV, ret);
    }
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`, after every send on a socket.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_call(ctx: BtfTracePointContext) -> i32 {
    report(ctx.arg(0), DIR_SEND, ctx.arg(1));
    0
}

/// Reports a call that moved `len` bytes (a negative `len` is an error: nothing moved), and
/// counts a failure by its reason.
#[inline(always)]
pub fn report(sk: *const c_void, direction: u32, len: i32) {
    if len > 0 {
        counted(record_call(sk as *const u8, direction, len as u32));
    }
}

/// One call on a traced connection: `len` bytes ending where the socket's sequence counter
/// now stands. Received bytes are reported once: only those beyond the last report count.
#[inline(always)]
fn record_call(sk: *const u8, direction: u32, len: u32) -> Outcome {
    let cookie = read_kernel::<u64>(sk, offset!(sk_cookie))?;
    let Some(state) = SOCKS.get_ptr_mut(cookie) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run.
    let state = unsafe { &mut *state };
    if state.proto == PROTO_OTHER || state.proto == PROTO_IGNORED {
        return Ok(());
    }
    // The accepting side's sock_ops ran in softirq; here, in the task, exclusions apply (and
    // `--cgroup`: a socket passed to a process outside the traced cgroup).
    if current_task_untraced() {
        state.proto = PROTO_IGNORED;
        return Ok(());
    }
    if shedding() {
        count(Counter::Shed);
        return Ok(());
    }
    let mut len = len;
    let seq_end = if direction == DIR_RECV {
        let end = read_kernel::<u32>(sk, offset!(tcp_copied_seq))?;
        // Beyond the last report only; consuming the FIN advances the counter one more than
        // the data, which userspace knows.
        let fresh = end.wrapping_sub(state.recv_end);
        if fresh < len {
            len = fresh;
        }
        state.recv_end = end;
        if len == 0 {
            return Ok(());
        }
        end
    } else {
        read_kernel::<u32>(sk, offset!(tcp_write_seq))?
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(mut entry) = EVENTS.reserve::<SockCallEvent>(0) else {
        return Err(Counter::ErrorsRingbufFull);
    };
    entry.write(SockCallEvent {
        kind: EVENT_SOCK_CALL,
        direction,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cookie,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        seq_end,
        len,
        comm: crate::maps::current_process_comm(),
    });
    entry.submit(wakeup_flag());
    count(Counter::CallEvents);
    Ok(())
}

/// A `T` at `base + off` in kernel memory, through the checked helper.
#[inline(always)]
pub fn read_kernel<T>(base: *const u8, off: u32) -> Result<T, Counter> {
    // SAFETY: the helper checks the address; offsets come from the kernel's BTF.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T) }
        .map_err(|_| Counter::ErrorsKernelRead)
}

/// The socket cookie of a `struct sock` (0 when none was generated: not a traced socket).
#[inline(always)]
pub fn sock_cookie(sk: *const u8) -> u64 {
    read_kernel::<u64>(sk, offset!(sk_cookie)).unwrap_or(0)
}
