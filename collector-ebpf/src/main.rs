//! Kernel programs of the collector. One module per hook family; each program is a thin entry
//! that calls a `try_` function and counts its failures in `COUNTERS`. The `try_` functions
//! are `#[inline(always)]`: outlined, their `Result` would come back through a stack pointer,
//! which the verifier refuses.
#![no_std]
#![no_main]

mod cgroup_skb;
mod emit;
mod fd_sock;
mod maps;
mod sock_calls;
mod sock_ops;
mod sock_state;
mod syscalls;
mod tcp_fentry;
mod tcp_kprobe;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
