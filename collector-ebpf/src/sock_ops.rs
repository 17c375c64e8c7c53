//! Socket-layer path, connections: sock_ops on the cgroup v2 root sees every TCP connection
//! established (active = we connected = client, passive = we accepted = server) and closed,
//! with its 4-tuple, socket cookie and initial sequence numbers.

use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::sock_ops, programs::SockOpsContext};
use collector_common::{
    AF_INET, AF_INET6, Counter, EVENT_CONN_CLOSE, EVENT_CONN_OPEN, PROTO_UNKNOWN, ROLE_CLIENT,
    ROLE_SERVER,
};

use crate::{
    emit::{ConnInfo, emit_conn},
    maps::{
        CONNECTING, CONNECTING_SELF, Endpoint, Outcome, PROTO_IGNORED, SELF_ENDPOINTS, SOCK_SELF,
        SOCKS, SockState, count, counted,
    },
};

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 4;
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

/// Every sock_ops callback of every TCP socket on the node. Always returns 1 (no effect on
/// the connection). Uses no helper that asks about the current task: sock_ops mostly runs in
/// softirq, and kernels before 6.10 refuse those helpers here (6.12 refuses
/// `bpf_get_current_comm`), so who connected comes from [`CONNECTING`].
#[sock_ops]
pub fn sock_ops_conn(ctx: SockOpsContext) -> u32 {
    counted(try_sock_ops(&ctx));
    1
}

#[inline(always)]
fn try_sock_ops(ctx: &SockOpsContext) -> Outcome {
    match ctx.op() {
        // Runs in the connecting task, after the local port is chosen and before the SYN.
        BPF_SOCK_OPS_TCP_CONNECT_CB => connecting(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => open(ctx, ROLE_CLIENT),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => open(ctx, ROLE_SERVER),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => close(ctx),
        _ => Ok(()),
    }
}

/// Every connecting socket gets its entry here, before the SYN: an excluded process's or the
/// collector's own (marked at `connect()` by `sock_state::sock_connecting`) as ignored, any
/// other as a client to trace once established. A client without an entry at its
/// established callback (evicted since) is not traced, so an eviction never turns an
/// ignored socket into a traced one. The collector's own local endpoints are remembered so
/// that a peer on this node does not trace its side either.
#[inline(always)]
fn connecting(ctx: &SockOpsContext) -> Outcome {
    let sk = sock_addr(ctx);
    // SAFETY: map lookup; the value is copied.
    let mark = (unsafe { CONNECTING.get(sk) }).copied().unwrap_or(0);
    if mark != 0 {
        CONNECTING
            .remove(sk)
            .map_err(|_| Counter::ErrorsMapDelete)?;
    }
    let state = SockState {
        role: ROLE_CLIENT,
        proto: if mark == 0 {
            PROTO_UNKNOWN
        } else {
            PROTO_IGNORED
        },
        recv_end: 0,
        flags: if mark & CONNECTING_SELF != 0 {
            SOCK_SELF
        } else {
            0
        },
    };
    SOCKS
        .insert(cookie(ctx), state, 0)
        .map_err(|_| Counter::ErrorsConnTableFull)?;
    if mark & CONNECTING_SELF != 0 {
        SELF_ENDPOINTS
            .insert(local_endpoint(ctx), 1, 0)
            .map_err(|_| Counter::ErrorsConnTableFull)?;
    }
    // To remove the entries at close (a failed connect closes too).
    watch_state(ctx)
}

/// Asks for the socket's state callbacks, to see its close.
#[inline(always)]
fn watch_state(ctx: &SockOpsContext) -> Outcome {
    ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG)
        .map_err(|_| Counter::ErrorsCbFlags)
}

/// The address of the connection's `struct sock`: the key the connect-time tracepoint used.
#[inline(always)]
fn sock_addr(ctx: &SockOpsContext) -> u64 {
    // SAFETY: a context field load at a constant offset (the verifier rewrites it).
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ops).__bindgen_anon_2.sk)) as u64 }
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: sock_ops context pointer, as the helper expects.
    unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) }
}

#[inline(always)]
fn open(ctx: &SockOpsContext, role: u32) -> Outcome {
    let cookie = cookie(ctx);
    let family = ctx.family() as u16;
    // SAFETY: context fields read directly; the verifier rewrites these accesses.
    let (rcv_nxt, snd_nxt) = unsafe { ((*ctx.ops).rcv_nxt, (*ctx.ops).snd_nxt) };
    if role == ROLE_CLIENT {
        // Traced only with the entry its connect made (see `connecting`).
        let Some(state) = SOCKS.get_ptr_mut(cookie) else {
            return Ok(());
        };
        // SAFETY: map value pointer valid for this program run.
        let state = unsafe { &mut *state };
        if state.proto == PROTO_IGNORED {
            return Ok(());
        }
        if family != AF_INET && family != AF_INET6 {
            return SOCKS.remove(cookie).map_err(|_| Counter::ErrorsMapDelete);
        }
        state.recv_end = rcv_nxt;
    } else {
        if family != AF_INET && family != AF_INET6 {
            return Ok(());
        }
        // The accepting side of the collector's own connection on this node.
        // SAFETY: map lookup; only presence is used.
        let ignored = unsafe { SELF_ENDPOINTS.get(remote_endpoint(ctx)) }.is_some();
        let state = SockState {
            role,
            proto: if ignored {
                PROTO_IGNORED
            } else {
                PROTO_UNKNOWN
            },
            recv_end: rcv_nxt,
            flags: 0,
        };
        SOCKS
            .insert(cookie, state, 0)
            .map_err(|_| Counter::ErrorsConnTableFull)?;
        // To see the close (of ignored sockets too: the entry goes then).
        watch_state(ctx)?;
        if ignored {
            return Ok(());
        }
    }
    count(Counter::ConnOpened);
    let (local_addr, remote_addr) = if family == AF_INET {
        (v4(ctx.local_ip4()), v4(ctx.remote_ip4()))
    } else {
        ip6_addrs(ctx)
    };
    emit_conn(&ConnInfo {
        kind: EVENT_CONN_OPEN,
        role,
        conn_id: cookie,
        // Established callbacks run in softirq: the current task is not the connection's.
        with_task: false,
        family,
        // local_port is in host order; remote_port in network order, and on little-endian
        // machines the kernel loads it into the upper 16 bits (sock_ops_convert_ctx_access).
        local_port: ctx.local_port() as u16,
        remote_port: remote_port(ctx.remote_port()),
        local_addr,
        remote_addr,
        rx_bytes: 0,
        tx_bytes: 0,
        recv_seq0: rcv_nxt,
        send_seq0: snd_nxt,
    });
    Ok(())
}

#[inline(always)]
fn close(ctx: &SockOpsContext) -> Outcome {
    let cookie = cookie(ctx);
    // SAFETY: map lookup; the value is copied.
    let Some(state) = (unsafe { SOCKS.get(cookie) }).copied() else {
        // Evicted: if it was one of the collector's own, its endpoint goes now.
        let local = local_endpoint(ctx);
        // SAFETY: map lookup; only presence is used.
        if unsafe { SELF_ENDPOINTS.get(local) }.is_some() {
            return SELF_ENDPOINTS
                .remove(local)
                .map_err(|_| Counter::ErrorsMapDelete);
        }
        return Ok(());
    };
    SOCKS.remove(cookie).map_err(|_| Counter::ErrorsMapDelete)?;
    if state.proto == PROTO_IGNORED {
        if state.flags & SOCK_SELF != 0 {
            SELF_ENDPOINTS
                .remove(local_endpoint(ctx))
                .map_err(|_| Counter::ErrorsMapDelete)?;
        }
        return Ok(());
    }
    // A client whose connect failed was never reported open.
    // SAFETY: context field load.
    if state.role == ROLE_CLIENT && ctx.arg(0) == TCP_SYN_SENT {
        return Ok(());
    }
    count(Counter::ConnClosed);
    emit_conn(&ConnInfo {
        kind: EVENT_CONN_CLOSE,
        role: state.role,
        conn_id: cookie,
        with_task: false,
        family: 0,
        local_port: 0,
        remote_port: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        rx_bytes: 0,
        tx_bytes: 0,
        recv_seq0: 0,
        send_seq0: 0,
    });
    Ok(())
}

/// This socket's local address and port as an [`Endpoint`] key.
#[inline(always)]
fn local_endpoint(ctx: &SockOpsContext) -> Endpoint {
    // SAFETY: context field loads at constant offsets.
    let addr = if ctx.family() as u16 == AF_INET {
        ctx.local_ip4()
    } else {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ops).local_ip6[3])) }
    };
    Endpoint {
        addr,
        port: ctx.local_port(),
    }
}

/// The peer's address and port, keyed like [`local_endpoint`] keys its own side.
#[inline(always)]
fn remote_endpoint(ctx: &SockOpsContext) -> Endpoint {
    // SAFETY: as above.
    let addr = if ctx.family() as u16 == AF_INET {
        ctx.remote_ip4()
    } else {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ops).remote_ip6[3])) }
    };
    Endpoint {
        addr,
        port: u32::from(remote_port(ctx.remote_port())),
    }
}

#[inline(always)]
fn remote_port(raw: u32) -> u16 {
    #[cfg(target_endian = "little")]
    let port = (raw >> 16) as u16;
    #[cfg(target_endian = "big")]
    let port = raw as u16;
    u16::from_be(port)
}

/// An IPv4 address as the context holds it (network order in a u32) to bytes.
#[inline(always)]
fn v4(a: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a.to_ne_bytes());
    out
}

/// The verifier only allows context loads at constant offsets from the context pointer
/// itself: each word is read on its own, never through a pointer to the array.
#[inline(always)]
fn ip6_addrs(ctx: &SockOpsContext) -> ([u8; 16], [u8; 16]) {
    let ops = ctx.ops;
    let mut local = [0u8; 16];
    let mut remote = [0u8; 16];
    macro_rules! word {
        ($i:literal) => {
            // SAFETY: context field loads at constant offsets.
            let (l, r) = unsafe {
                (
                    core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[$i])),
                    core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[$i])),
                )
            };
            local[$i * 4..$i * 4 + 4].copy_from_slice(&l.to_ne_bytes());
            remote[$i * 4..$i * 4 + 4].copy_from_slice(&r.to_ne_bytes());
        };
    }
    word!(0);
    word!(1);
    word!(2);
    word!(3);
    (local, remote)
}
