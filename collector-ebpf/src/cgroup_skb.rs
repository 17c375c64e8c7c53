//! Socket-layer path, payload: cgroup_skb ingress/egress on the cgroup v2 root sees every
//! packet of every local socket. For a traced HTTP connection it copies the TCP payload's
//! first bytes (and last bytes) with the sequence number; for anything else it does one map
//! lookup and returns. Always returns 1: 0 would drop the user's packet.

use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::cgroup_skb, programs::SkBuffContext};
use collector_common::{
    Counter, DATA_FLAG_HAS_TAIL, DIR_RECV, DIR_SEND, EVENT_PACKET, MAX_CAPTURE_BYTES,
    PACKET_FLAG_ON_LISTENER, PACKET_HEADER_SIZE, PROTO_OTHER, PROTO_UNKNOWN, PacketHeader,
    TAIL_BYTES,
};

use crate::{
    emit::{capture_limit, output_scratch, scratch, still_http},
    maps::{Outcome, PROTO_IGNORED, SOCKS, count, counted, shedding},
};

const IPPROTO_TCP: u8 = 6;

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    counted(try_skb(&ctx, DIR_RECV));
    1
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    counted(try_skb(&ctx, DIR_SEND));
    1
}

/// A `T` at `offset` in the packet.
#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: usize) -> Result<T, Counter> {
    ctx.load(offset).map_err(|_| Counter::ErrorsPacketLoad)
}

/// `TCP_LISTEN` in `include/net/tcp_states.h`.
const TCP_LISTEN: u32 = 10;

/// Whether the packet is on a listening socket. A connection's first data packet meets the
/// listener, not the connection's socket, when it is also what completes the handshake (the
/// handshake's last ACK was dropped because the accept queue was full, or lost):
/// `tcp_v4_rcv` filters it on the listener before it creates the connection's socket.
#[inline(always)]
fn on_listener(ctx: &SkBuffContext) -> bool {
    // SAFETY: a context field read; the verifier checks the access.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    // SAFETY: non-null: a socket the verifier lets us read `state` of.
    !sk.is_null() && unsafe { (*sk).state } == TCP_LISTEN
}

#[inline(always)]
fn try_skb(ctx: &SkBuffContext, direction: u32) -> Outcome {
    // SAFETY: __sk_buff context pointer, as the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    // A packet on a listener has no socket entry yet: userspace gives it to the connection
    // that sock_ops opens next with the same peer port and first sequence number.
    let mut listener_proto = PROTO_UNKNOWN;
    let (proto, cookie, flags) = match SOCKS.get_ptr_mut(cookie) {
        // SAFETY: map value pointer valid for this program run.
        Some(state) => (unsafe { &mut (*state).proto }, cookie, 0),
        None if direction == DIR_RECV && on_listener(ctx) => {
            (&mut listener_proto, 0, PACKET_FLAG_ON_LISTENER)
        }
        None => return Ok(()),
    };
    if *proto == PROTO_OTHER || *proto == PROTO_IGNORED {
        return Ok(());
    }
    if shedding() {
        count(Counter::Shed);
        return Ok(());
    }

    // The data of a cgroup_skb program starts at the IP header.
    let vihl: u8 = load(ctx, 0)?;
    let tcp = match vihl >> 4 {
        4 if load::<u8>(ctx, 9)? == IPPROTO_TCP => ((vihl & 0xf) as usize) * 4,
        6 if load::<u8>(ctx, 6)? == IPPROTO_TCP => 40,
        _ => return Ok(()),
    };
    let seq = u32::from_be(load::<u32>(ctx, tcp + 4)?);
    let doff = ((load::<u8>(ctx, tcp + 12)? >> 4) as usize) * 4;
    let payload_off = tcp + doff;
    let skb_len = ctx.len() as usize;
    if skb_len <= payload_off {
        return Ok(()); // no payload: SYN, ACK, FIN
    }
    let len = (skb_len - payload_off) as u64;

    if *proto == PROTO_UNKNOWN {
        let mut first = [0u8; 4];
        let known = if len >= 4 && ctx.load_bytes(payload_off, &mut first).is_ok() {
            4
        } else {
            0
        };
        if !still_http(proto, &first, known) {
            return Ok(());
        }
    }

    let Some(scratch) = scratch() else {
        return Ok(());
    };
    let want = capture_limit(len);
    let mut captured = 0u32;
    if want > 0 {
        // bpf_skb_load_bytes refuses a length that may be 0: force it into [1, MAX] where the
        // verifier can see it. LLVM knows want ≥ 1 and would fold the mask away, so the value
        // takes a volatile round trip first.
        let mut slot = want as usize;
        // SAFETY: a stack slot we own.
        let opaque = unsafe {
            core::ptr::write_volatile(&mut slot, want as usize);
            core::ptr::read_volatile(&slot)
        };
        let n = (opaque.wrapping_sub(1) & (MAX_CAPTURE_BYTES - 1)) + 1;
        // The raw helper: aya's load_bytes re-clamps the length to the skb, which brings the
        // zero back. n ≤ the payload length, so the read stays inside the packet.
        // SAFETY: n ≤ MAX_CAPTURE_BYTES: inside the scratch buffer.
        let rc = unsafe {
            aya_ebpf::helpers::bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                payload_off as u32,
                scratch.buf.as_mut_ptr().add(PACKET_HEADER_SIZE) as *mut _,
                n as u32,
            )
        };
        if rc == 0 {
            captured = n as u32;
        } else {
            count(Counter::ErrorsPayloadRead);
        }
    }
    let mut tail = [0u8; TAIL_BYTES];
    let mut flags = flags;
    if len > want && len >= TAIL_BYTES as u64 {
        // SAFETY: a constant-size read into a stack buffer of that size.
        let rc = unsafe {
            aya_ebpf::helpers::bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                (skb_len - TAIL_BYTES) as u32,
                tail.as_mut_ptr() as *mut _,
                TAIL_BYTES as u32,
            )
        };
        if rc == 0 {
            flags |= DATA_FLAG_HAS_TAIL;
        } else {
            count(Counter::ErrorsPacketLoad);
        }
    }
    let header = PacketHeader {
        kind: EVENT_PACKET,
        direction,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        cookie,
        seq,
        len: len as u32,
        captured_len: captured,
        tail_len: if flags & DATA_FLAG_HAS_TAIL != 0 {
            TAIL_BYTES as u32
        } else {
            0
        },
        flags,
        peer_port: if flags & PACKET_FLAG_ON_LISTENER != 0 {
            u32::from(u16::from_be(load::<u16>(ctx, tcp)?))
        } else {
            0
        },
        tail,
    };
    // SAFETY: the scratch buffer is 8-byte aligned (map value) and large enough.
    unsafe { (scratch.buf.as_mut_ptr() as *mut PacketHeader).write(header) };
    output_scratch(
        scratch,
        PACKET_HEADER_SIZE + captured as usize,
        Counter::PacketEvents,
    );
    Ok(())
}
