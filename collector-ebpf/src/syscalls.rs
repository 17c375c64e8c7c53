//! Syscall capture path: classic tracepoints on accept/connect, the calls that move bytes
//! (read/recvfrom/readv/recvmsg, write/sendto/writev/sendmsg/sendfile) and close.
//!
//! This is the fallback for kernels without the socket-layer tracepoints. Its cost to
//! untracked work is the tracepoint dispatch plus one map lookup: every entry first checks
//! whether the (tgid, fd) is a traced connection and returns at once when it is not.
//! Syscall tracepoint records keep `__syscall_nr` at offset 8 and the six arguments (or the
//! return value) as 8-byte slots from offset 16 — a stable format, see
//! /sys/kernel/tracing/events/syscalls/*/format.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use collector_common::{
    AF_INET, AF_INET6, Counter, DIR_RECV, DIR_SEND, EVENT_CONN_CLOSE, EVENT_CONN_OPEN, PROTO_OTHER,
    PROTO_UNKNOWN, ROLE_CLIENT, ROLE_SERVER,
};

use crate::{
    emit::{ConnInfo, Payload, emit_conn, emit_data, first_bytes, still_http},
    fd_sock::{SockInfo, sock_info},
    maps::{
        CONN_OPEN_PENDING, CONN_SEQ, CONNS, ConnState, OPENS_PENDING, Outcome, PENDING,
        PENDING_ADDR, PENDING_BUF, PENDING_FILE, PENDING_IOV, PENDING_MSG, PendingCall, SockKey,
        count, counted, current_task_untraced, shedding,
    },
};

const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;
const EINPROGRESS: i64 = 115;

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> u64 {
    // A direct load from the record (the verifier checks it lies inside), not
    // bpf_probe_read_kernel: these run on every read and write on the node.
    // SAFETY: offsets lie inside every syscall tracepoint record.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset) as *const u64) }
}

#[inline(always)]
fn current() -> (u64, u32) {
    let id = bpf_get_current_pid_tgid();
    (id, (id >> 32) as u32)
}

/// A connection id unique on this node: per-CPU sequence, CPU number in the low bits.
#[inline(always)]
fn next_conn_id() -> u64 {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let seq = match CONN_SEQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    (seq << 12) | (cpu & 0xfff)
}

/// A socket address read from user memory: family, port (host order), address bytes; all 0
/// (and `read` false) when there was none or it could not be read.
struct SockAddr {
    read: bool,
    family: u16,
    port: u16,
    addr: [u8; 16],
}

/// Reads a sockaddr into a value written whole on every path: 5.10's verifier refuses a
/// read of stack only some paths wrote (as an `Option`'s payload is, where `None`).
#[inline(always)]
fn read_sockaddr(ptr: u64) -> SockAddr {
    let mut out = SockAddr {
        read: false,
        family: 0,
        port: 0,
        addr: [0; 16],
    };
    if ptr == 0 {
        return out;
    }
    // SAFETY: user memory read through the checked helper.
    let Ok(family) = (unsafe { bpf_probe_read_user(ptr as *const u16) }) else {
        return out;
    };
    if family != AF_INET && family != AF_INET6 {
        out.read = true;
        out.family = family;
        return out;
    }
    // SAFETY: as above.
    let Ok(port) = (unsafe { bpf_probe_read_user((ptr + 2) as *const u16) }) else {
        return out;
    };
    if family == AF_INET {
        // SAFETY: as above.
        let Ok(v4) = (unsafe { bpf_probe_read_user((ptr + 4) as *const [u8; 4]) }) else {
            return out;
        };
        out.addr[..4].copy_from_slice(&v4);
    } else {
        // SAFETY: as above.
        let Ok(v6) = (unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) }) else {
            return out;
        };
        out.addr = v6;
    }
    out.read = true;
    out.family = family;
    out.port = u16::from_be(port);
    out
}

#[inline(always)]
fn save_pending(id: u64, ptr: u64, fd: u32) {
    if PENDING
        .insert(
            id,
            PendingCall {
                ptr,
                fd,
                kind: PENDING_ADDR,
                count: 0,
            },
            0,
        )
        .is_err()
    {
        count(Counter::ErrorsPendingTableFull);
    }
}

#[inline(always)]
fn take_pending(id: u64) -> Option<PendingCall> {
    // SAFETY: the value is copied out before the entry is removed.
    let call = *unsafe { PENDING.get(id) }?;
    if PENDING.remove(id).is_err() {
        count(Counter::ErrorsMapDelete);
    }
    Some(call)
}

/// Starts tracking (tgid, fd) as a new connection and reports it — or, while a non-blocking
/// connect is still in its handshake, marks the report for the first read or write.
#[inline(always)]
fn open_conn(tgid: u32, fd: u32, role: u32, remote: &SockAddr) {
    let conn_id = next_conn_id();
    let info = socket_or_peer(fd, remote);
    let key = SockKey { tgid, fd };
    // Without room to remember it, the open is reported now (its numbers unknown: the
    // 4-tuple links it, where no NAT is in the way).
    let pending = info.seq_readable
        && (info.recv_seq0 == 0 || info.send_seq0 == 0)
        && OPENS_PENDING.insert(key, 1, 0).is_ok();
    let state = ConnState {
        conn_id,
        rx_bytes: 0,
        tx_bytes: 0,
        role,
        proto: PROTO_UNKNOWN,
        flags: if pending { CONN_OPEN_PENDING } else { 0 },
        _pad0: 0,
    };
    if CONNS.insert(key, state, 0).is_err() {
        count(Counter::ErrorsConnTableFull);
        if pending && OPENS_PENDING.remove(key).is_err() {
            count(Counter::ErrorsMapDelete);
        }
        return;
    }
    count(Counter::ConnOpened);
    if !pending {
        report_open(conn_id, role, &info);
    }
}

/// The open of a connection whose report waited for its handshake (see `open_conn`): at its
/// first read or write (or its close), when both sequence counters still stand at the first
/// byte.
#[inline(always)]
fn report_pending_open(key: SockKey, state: &mut ConnState) {
    if state.flags & CONN_OPEN_PENDING == 0 {
        return;
    }
    state.flags &= !CONN_OPEN_PENDING;
    // Only the thread whose removal succeeds reports it (see `OPENS_PENDING`).
    if OPENS_PENDING.remove(key).is_ok() {
        report_open(
            state.conn_id,
            state.role,
            &socket_or_peer(key.fd, &read_sockaddr(0)),
        );
    }
}

/// What the socket says about both ends; else what the syscall's own sockaddr says about the
/// peer.
#[inline(always)]
fn socket_or_peer(fd: u32, remote: &SockAddr) -> SockInfo {
    // Written whole first, then overwritten from the socket (see `read_sockaddr`).
    let mut info = SockInfo {
        family: remote.family,
        local_port: 0,
        remote_port: remote.port,
        local_addr: [0; 16],
        remote_addr: remote.addr,
        recv_seq0: 0,
        send_seq0: 0,
        seq_readable: false,
    };
    if let Some(i) = sock_info(fd) {
        info = i;
    }
    info
}

#[inline(always)]
fn report_open(conn_id: u64, role: u32, info: &SockInfo) {
    emit_conn(&ConnInfo {
        kind: EVENT_CONN_OPEN,
        role,
        conn_id,
        with_task: true,
        family: info.family,
        local_port: info.local_port,
        remote_port: info.remote_port,
        local_addr: info.local_addr,
        remote_addr: info.remote_addr,
        rx_bytes: 0,
        tx_bytes: 0,
        recv_seq0: info.recv_seq0,
        send_seq0: info.send_seq0,
    });
}

// ---- accept / accept4 --------------------------------------------------------------------

/// `accept4(int fd, struct sockaddr *upeer_sockaddr, int *upeer_addrlen, int flags)`
#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn syscall_enter_accept4(ctx: TracePointContext) -> u32 {
    counted(try_enter_accept(&ctx));
    0
}

/// `accept(int fd, struct sockaddr *upeer_sockaddr, int *upeer_addrlen)`
#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn syscall_enter_accept(ctx: TracePointContext) -> u32 {
    counted(try_enter_accept(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn syscall_exit_accept4(ctx: TracePointContext) -> u32 {
    counted(try_exit_accept(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn syscall_exit_accept(ctx: TracePointContext) -> u32 {
    counted(try_exit_accept(&ctx));
    0
}

#[inline(always)]
fn try_enter_accept(ctx: &TracePointContext) -> Outcome {
    let (id, _) = current();
    if current_task_untraced() {
        return Ok(());
    }
    let listen_fd = arg(ctx, ARG0) as u32;
    save_pending(id, arg(ctx, ARG1), listen_fd);
    Ok(())
}

#[inline(always)]
fn try_exit_accept(ctx: &TracePointContext) -> Outcome {
    let (id, tgid) = current();
    let Some(call) = take_pending(id) else {
        return Ok(());
    };
    let ret = arg(ctx, RET) as i64;
    if ret < 0 {
        return Ok(());
    }
    // Without an address buffer (libuv passes NULL) the family is unknown: track it anyway,
    // userspace decides from the bytes whether it is HTTP.
    let remote = read_sockaddr(call.ptr);
    if remote.read && remote.family != AF_INET && remote.family != AF_INET6 {
        return Ok(());
    }
    if call.ptr != 0 && !remote.read {
        count(Counter::ErrorsAddrRead);
    }
    open_conn(tgid, ret as u32, ROLE_SERVER, &remote);
    Ok(())
}

// ---- connect -------------------------------------------------------------------------------

/// `connect(int fd, struct sockaddr *uservaddr, int addrlen)`
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn syscall_enter_connect(ctx: TracePointContext) -> u32 {
    counted(try_enter_connect(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn syscall_exit_connect(ctx: TracePointContext) -> u32 {
    counted(try_exit_connect(&ctx));
    0
}

#[inline(always)]
fn try_enter_connect(ctx: &TracePointContext) -> Outcome {
    let (id, _) = current();
    if current_task_untraced() {
        return Ok(());
    }
    let fd = arg(ctx, ARG0) as u32;
    let addr = arg(ctx, ARG1);
    let a = read_sockaddr(addr);
    if !a.read {
        count(Counter::ErrorsAddrRead);
    } else if a.family == AF_INET || a.family == AF_INET6 {
        save_pending(id, addr, fd);
    }
    Ok(())
}

#[inline(always)]
fn try_exit_connect(ctx: &TracePointContext) -> Outcome {
    let (id, tgid) = current();
    let Some(call) = take_pending(id) else {
        return Ok(());
    };
    let ret = arg(ctx, RET) as i64;
    // Non-blocking sockets (Node, Go, nginx) return -EINPROGRESS and complete later.
    if ret != 0 && ret != -EINPROGRESS {
        return Ok(());
    }
    open_conn(tgid, call.fd, ROLE_CLIENT, &read_sockaddr(call.ptr));
    Ok(())
}

// ---- read / recvfrom / readv / recvmsg, write / sendto / writev / sendmsg / sendfile --------

/// Entry of a call that moves bytes on an fd: remember where its bytes are for the exit.
/// `KIND` is a constant per program, so each program holds only its own payload path (the
/// verifier would otherwise walk every path in every program).
#[inline(always)]
fn try_enter_io<const KIND: u32>(ctx: &TracePointContext) -> Outcome {
    let (id, tgid) = current();
    let fd = arg(ctx, ARG0) as u32;
    // The one lookup every untraced read/write on the node pays.
    let Some(state) = CONNS.get_ptr_mut(SockKey { tgid, fd }) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run.
    let state = unsafe { &mut *state };
    report_pending_open(SockKey { tgid, fd }, state);
    if state.proto == PROTO_OTHER {
        return Ok(());
    }
    if shedding() {
        count(Counter::Shed);
        return Ok(());
    }
    let ptr = if KIND == PENDING_FILE {
        0
    } else {
        arg(ctx, ARG1)
    };
    let iov_count = if KIND == PENDING_IOV {
        arg(ctx, ARG2)
    } else {
        0
    };
    if PENDING
        .insert(
            id,
            PendingCall {
                ptr,
                fd,
                kind: KIND,
                count: iov_count,
            },
            0,
        )
        .is_err()
    {
        count(Counter::ErrorsPendingTableFull);
    }
    Ok(())
}

/// Where the bytes of a finished call are, from what its entry saved.
#[inline(always)]
fn payload_of<const KIND: u32>(call: &PendingCall) -> Payload {
    match KIND {
        PENDING_BUF => Payload::User(call.ptr),
        PENDING_IOV => Payload::Iov(call.ptr, call.count),

        PENDING_MSG => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (the LP64 user ABI).
            // SAFETY: user memory read through the checked helper.
            let iov = unsafe { bpf_probe_read_user((call.ptr + 16) as *const u64) }.unwrap_or(0);
            // SAFETY: as above.
            let n = unsafe { bpf_probe_read_user((call.ptr + 24) as *const u64) }.unwrap_or(0);
            if iov == 0 {
                Payload::None
            } else {
                Payload::Iov(iov, n)
            }
        }
        _ => Payload::None,
    }
}

#[inline(always)]
fn try_exit_io<const KIND: u32>(ctx: &TracePointContext, direction: u32) -> Outcome {
    let (id, tgid) = current();
    let Some(call) = take_pending(id) else {
        return Ok(());
    };
    // An entry of another kind (a stale one) is not ours to finish.
    if call.kind != KIND {
        return Ok(());
    }
    let ret = arg(ctx, RET) as i64;
    if ret <= 0 {
        return Ok(());
    }
    let Some(state) = CONNS.get_ptr_mut(SockKey { tgid, fd: call.fd }) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run.
    let state = unsafe { &mut *state };
    let payload = payload_of::<KIND>(&call);
    if state.proto == PROTO_UNKNOWN {
        let (first, known) = first_bytes(payload, ret as u64);
        if !still_http(&mut state.proto, &first, known) {
            return Ok(());
        }
    }
    let offset = if direction == DIR_RECV {
        let o = state.rx_bytes;
        state.rx_bytes += ret as u64;
        o
    } else {
        let o = state.tx_bytes;
        state.tx_bytes += ret as u64;
        o
    };
    emit_data(state.conn_id, direction, offset, ret as u64, payload);
    Ok(())
}

macro_rules! io_hooks {
    ($($enter:ident, $exit:ident, $enter_tp:literal, $exit_tp:literal, $kind:expr, $dir:expr, $doc:literal;)*) => {$(
        #[doc = $doc]
        #[tracepoint(category = "syscalls", name = $enter_tp)]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            counted(try_enter_io::<{ $kind }>(&ctx));
            0
        }

        #[tracepoint(category = "syscalls", name = $exit_tp)]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            counted(try_exit_io::<{ $kind }>(&ctx, $dir));
            0
        }
    )*};
}

io_hooks! {
    syscall_enter_read, syscall_exit_read, "sys_enter_read", "sys_exit_read", PENDING_BUF, DIR_RECV,
        "`read(unsigned int fd, char *buf, size_t count)`";
    syscall_enter_recvfrom, syscall_exit_recvfrom, "sys_enter_recvfrom", "sys_exit_recvfrom", PENDING_BUF, DIR_RECV,
        "`recvfrom(int fd, void *ubuf, size_t size, unsigned int flags, ...)`";
    syscall_enter_readv, syscall_exit_readv, "sys_enter_readv", "sys_exit_readv", PENDING_IOV, DIR_RECV,
        "`readv(unsigned long fd, const struct iovec *vec, unsigned long vlen)`";
    syscall_enter_recvmsg, syscall_exit_recvmsg, "sys_enter_recvmsg", "sys_exit_recvmsg", PENDING_MSG, DIR_RECV,
        "`recvmsg(int fd, struct user_msghdr *msg, unsigned int flags)`";
    syscall_enter_write, syscall_exit_write, "sys_enter_write", "sys_exit_write", PENDING_BUF, DIR_SEND,
        "`write(unsigned int fd, const char *buf, size_t count)`";
    syscall_enter_sendto, syscall_exit_sendto, "sys_enter_sendto", "sys_exit_sendto", PENDING_BUF, DIR_SEND,
        "`sendto(int fd, void *buff, size_t len, unsigned int flags, ...)`";
    syscall_enter_writev, syscall_exit_writev, "sys_enter_writev", "sys_exit_writev", PENDING_IOV, DIR_SEND,
        "`writev(unsigned long fd, const struct iovec *vec, unsigned long vlen)`";
    syscall_enter_sendmsg, syscall_exit_sendmsg, "sys_enter_sendmsg", "sys_exit_sendmsg", PENDING_MSG, DIR_SEND,
        "`sendmsg(int fd, struct user_msghdr *msg, unsigned int flags)`";
    syscall_enter_sendfile64, syscall_exit_sendfile64, "sys_enter_sendfile64", "sys_exit_sendfile64", PENDING_FILE, DIR_SEND,
        "`sendfile64(int out_fd, int in_fd, loff_t *offset, size_t count)`: bytes from a file, counted, not copied";
}

// ---- close -----------------------------------------------------------------------------------

/// `close(unsigned int fd)`
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn syscall_enter_close(ctx: TracePointContext) -> u32 {
    counted(try_enter_close(&ctx));
    0
}

#[inline(always)]
fn try_enter_close(ctx: &TracePointContext) -> Outcome {
    let (_, tgid) = current();
    let key = SockKey {
        tgid,
        fd: arg(ctx, ARG0) as u32,
    };
    let Some(state) = CONNS.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run; copied before the removal.
    let state = unsafe {
        report_pending_open(key, &mut *state);
        *state
    };
    CONNS.remove(key).map_err(|_| Counter::ErrorsMapDelete)?;
    count(Counter::ConnClosed);
    emit_conn(&ConnInfo {
        kind: EVENT_CONN_CLOSE,
        role: state.role,
        conn_id: state.conn_id,
        with_task: true,
        family: 0,
        local_port: 0,
        remote_port: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        rx_bytes: state.rx_bytes,
        tx_bytes: state.tx_bytes,
        recv_seq0: 0,
        send_seq0: 0,
    });
    Ok(())
}
