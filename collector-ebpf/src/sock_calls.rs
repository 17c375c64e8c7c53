//! Socket-layer path, calls: the `sock_recv_length` / `sock_send_length` tracepoints run in
//! the thread that called recv/send (any of read, recvmsg, write, sendfile, ... on a socket),
//! after the call. With the socket's sequence counters they give each call's exact byte
//! range, which userspace joins with the packets' payload.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use collector_common::{Counter, DIR_RECV, DIR_SEND, EVENT_SOCK_CALL, PROTO_OTHER, SockCallEvent};

use crate::{
    emit::wakeup_flag,
    maps::{
        EVENTS, PROTO_IGNORED, SOCKS, TCP_COPIED_SEQ_OFF, TCP_WRITE_SEQ_OFF, count,
        current_task_excluded, setting_u32, shedding,
    },
};

const MSG_PEEK: i32 = 2;

/// `sock_recv_length(struct sock *sk, int ret, int flags)`
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_call(ctx: BtfTracePointContext) -> i32 {
    let _ = try_call(&ctx, DIR_RECV);
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_call(ctx: BtfTracePointContext) -> i32 {
    let _ = try_call(&ctx, DIR_SEND);
    0
}

#[inline(always)]
fn try_call(ctx: &BtfTracePointContext, direction: u32) -> Result<(), i64> {
    let sk: *mut c_void = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    // A peek moves no bytes out of the stream.
    if ret <= 0 || (direction == DIR_RECV && flags & MSG_PEEK != 0) {
        return Ok(());
    }
    // SAFETY: a `struct sock *` from a BTF tracepoint, as the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let Some(state) = SOCKS.get_ptr_mut(cookie) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run.
    let state = unsafe { &mut *state };
    if state.proto == PROTO_OTHER || state.proto == PROTO_IGNORED {
        return Ok(());
    }
    // The accepting side's sock_ops ran in softirq; here, in the task, exclusions apply.
    if current_task_excluded() {
        state.proto = PROTO_IGNORED;
        return Ok(());
    }
    if shedding() {
        count(Counter::Shed);
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let off = if direction == DIR_RECV {
        setting_u32(&TCP_COPIED_SEQ_OFF)
    } else {
        setting_u32(&TCP_WRITE_SEQ_OFF)
    };
    // SAFETY: kernel memory read through the checked helper, at an offset from BTF.
    let Ok(seq_end) =
        (unsafe { bpf_probe_read_kernel((sk as *const u8).add(off as usize) as *const u32) })
    else {
        count(Counter::KernelReadFailed);
        return Ok(());
    };
    let Some(mut entry) = EVENTS.reserve::<SockCallEvent>(0) else {
        count(Counter::RingbufFull);
        return Ok(());
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
        len: ret as u32,
        comm: crate::maps::current_process_comm(),
    });
    entry.submit(wakeup_flag());
    count(Counter::CallEvents);
    Ok(())
}
