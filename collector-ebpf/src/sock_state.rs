//! Socket-layer path, who connects: `inet_sock_set_state` runs in the connecting task when a
//! socket enters SYN_SENT (inside `connect()`), which sock_ops cannot tell on every kernel.
//! Connections of the collector itself and of excluded processes are marked here, by the
//! `struct sock` address, for sock_ops' connect callback that follows in the same call.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use collector_common::Counter;

use crate::maps::{
    CONNECTING, CONNECTING_EXCLUDED, CONNECTING_SELF, Outcome, counted, current_task_excluded,
    current_task_in_traced_cgroup, current_task_is_self,
};

const TCP_SYN_SENT: i32 = 2;

/// `inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_connecting(ctx: BtfTracePointContext) -> i32 {
    counted(try_connecting(&ctx));
    0
}

#[inline(always)]
fn try_connecting(ctx: &BtfTracePointContext) -> Outcome {
    let sk: u64 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    if newstate == TCP_SYN_SENT {
        // With `--cgroup`, sock_ops runs only for sockets of the traced cgroup: a mark of any
        // other would wait for a callback that never comes.
        if !current_task_excluded() || !current_task_in_traced_cgroup() {
            return Ok(());
        }
        let mark = if current_task_is_self() {
            CONNECTING_SELF
        } else {
            CONNECTING_EXCLUDED
        };
        return CONNECTING
            .insert(sk, mark, 0)
            .map_err(|_| Counter::ErrorsConnTableFull);
    }
    // A connect that failed before sock_ops saw it (or one sock_ops never saw): its mark must
    // not outlive the handshake, or a later socket at the same address would inherit it.
    if oldstate == TCP_SYN_SENT
        // SAFETY: map lookup; only presence is used.
        && unsafe { CONNECTING.get(sk) }.is_some()
    {
        return CONNECTING.remove(sk).map_err(|_| Counter::ErrorsMapDelete);
    }
    Ok(())
}
