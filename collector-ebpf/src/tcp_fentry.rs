//! Socket-layer path, calls, on kernels without the `sock_*_length` tracepoints (before 6.3)
//! but with BPF trampolines: fentry/fexit on the TCP functions every recv and send goes
//! through. They cost work that is not TCP nothing, like the tracepoints.

use aya_ebpf::{
    cty::c_void,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use collector_common::{DIR_RECV, DIR_SEND};

use crate::sock_calls::report;

/// `void tcp_cleanup_rbuf(struct sock *sk, int copied)`: runs in the reading thread once a
/// read has consumed bytes (`copied_seq` already advanced), with the same two arguments on
/// every kernel since 4.x — unlike `tcp_recvmsg`, which lost an argument in 5.19.
#[fentry(function = "tcp_cleanup_rbuf")]
pub fn tcp_recv_fentry(ctx: FEntryContext) -> i32 {
    report(ctx.arg::<*const c_void>(0), DIR_RECV, ctx.arg(1));
    0
}

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`; the return value
/// follows the three arguments. (`ctx.ret()` would need 5.17's `bpf_get_func_ret`.)
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_send_fexit(ctx: FExitContext) -> i32 {
    report(ctx.arg::<*const c_void>(0), DIR_SEND, ctx.arg(3));
    0
}

/// `int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int
/// flags)`: sendfile/splice to TCP before 6.5 (later they go through `tcp_sendmsg`).
#[fexit(function = "tcp_sendpage")]
pub fn tcp_sendpage_fexit(ctx: FExitContext) -> i32 {
    report(ctx.arg::<*const c_void>(0), DIR_SEND, ctx.arg(5));
    0
}
