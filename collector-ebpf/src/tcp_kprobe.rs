//! Socket-layer path, calls, on kernels with neither the `sock_*_length` tracepoints nor BPF
//! trampolines: kprobes on the same TCP functions as `tcp_fentry.rs`. A return probe does not
//! see the arguments, so a send's socket waits in `SEND_CALLS` for its return.

use aya_ebpf::{
    cty::c_void,
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use collector_common::{Counter, DIR_RECV, DIR_SEND};

use crate::{
    maps::{SEND_CALLS, SOCKS, count},
    sock_calls::{report, sock_cookie},
};

/// `void tcp_cleanup_rbuf(struct sock *sk, int copied)` (see `tcp_fentry.rs`). No return
/// probe: a thread blocked in recv would hold one of the few return-probe instances.
#[kprobe(function = "tcp_cleanup_rbuf")]
pub fn tcp_recv_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(copied)) = (ctx.arg::<*const c_void>(0), ctx.arg::<i32>(1)) {
        report(sk, DIR_RECV, copied);
    }
    0
}

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`, entry.
#[kprobe(function = "tcp_sendmsg")]
pub fn tcp_send_kprobe(ctx: ProbeContext) -> u32 {
    send_entry(&ctx);
    0
}

#[kretprobe(function = "tcp_sendmsg")]
pub fn tcp_send_kretprobe(ctx: RetProbeContext) -> u32 {
    send_return(&ctx);
    0
}

/// `int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int
/// flags)`, before 6.5.
#[kprobe(function = "tcp_sendpage")]
pub fn tcp_sendpage_kprobe(ctx: ProbeContext) -> u32 {
    send_entry(&ctx);
    0
}

#[kretprobe(function = "tcp_sendpage")]
pub fn tcp_sendpage_kretprobe(ctx: RetProbeContext) -> u32 {
    send_return(&ctx);
    0
}

/// Keeps the socket of a send on a traced connection for its return. Untraced sockets stop
/// at one lookup.
#[inline(always)]
fn send_entry(ctx: &ProbeContext) {
    let Some(sk) = ctx.arg::<u64>(0) else { return };
    // SAFETY: map lookup; only presence is used.
    if unsafe { SOCKS.get(sock_cookie(sk as *const u8)) }.is_none() {
        return;
    }
    if SEND_CALLS
        .insert(bpf_get_current_pid_tgid(), sk, 0)
        .is_err()
    {
        count(Counter::ErrorsPendingTableFull);
    }
}

#[inline(always)]
fn send_return(ctx: &RetProbeContext) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map lookup; the value is copied before the entry is removed.
    let Some(sk) = (unsafe { SEND_CALLS.get(id) }).copied() else {
        return;
    };
    if SEND_CALLS.remove(id).is_err() {
        count(Counter::ErrorsMapDelete);
    }
    report(sk as *const c_void, DIR_SEND, ctx.ret::<i32>());
}
