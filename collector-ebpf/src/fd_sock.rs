//! Syscall path: from a task's fd to its `struct sock`, to learn what accept/connect alone do
//! not say — the local address and port, and the initial sequence numbers — so the two ends of
//! a connection on this node can be joined as on the socket-layer path. Runs once per
//! connection (at accept/connect), never per read or write. Offsets come from BTF.

use aya_ebpf::helpers::bpf_get_current_task;
use collector_common::{AF_INET, AF_INET6, OFFSETS_FD_SOCKET, OFFSETS_TCP_SEQ};

use crate::{maps::offsets_valid, offset, sock_calls::read_kernel};

const TCP_ESTABLISHED: u8 = 1;
/// The peer already sent its FIN; nothing was read or written yet on a fresh socket.
const TCP_CLOSE_WAIT: u8 = 8;

/// What a connection's socket says about itself.
pub struct SockInfo {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// First payload byte to receive / send (0 when not yet known: a connect in progress).
    pub recv_seq0: u32,
    pub send_seq0: u32,
    /// This kernel's BTF gave the sequence counters' offsets (else the numbers stay 0).
    pub seq_readable: bool,
}

/// The socket behind `fd` of the current task, if it is one.
#[inline(always)]
pub fn sock_info(fd: u32) -> Option<SockInfo> {
    if !offsets_valid(OFFSETS_FD_SOCKET) {
        return None;
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read_kernel(task, offset!(task_files)).ok()?;
    let fdt: *const u8 = read_kernel(files, offset!(files_fdt)).ok()?;
    let max_fds: u32 = read_kernel(fdt, offset!(fdt_max_fds)).ok()?;
    if fd >= max_fds {
        return None;
    }
    let fds: *const u8 = read_kernel(fdt, offset!(fdt_fd)).ok()?;
    let file: *const u8 = read_kernel(fds, fd.wrapping_mul(8)).ok()?;
    let socket: *const u8 = read_kernel(file, offset!(file_private_data)).ok()?;
    // A socket's file points back at it; any other file's private data does not.
    let back: *const u8 = read_kernel(socket, offset!(socket_file)).ok()?;
    if back != file {
        return None;
    }
    let sk: *const u8 = read_kernel(socket, offset!(socket_sk)).ok()?;
    let family: u16 = read_kernel(sk, offset!(sk_family)).ok()?;
    let mut local_addr = [0u8; 16];
    let mut remote_addr = [0u8; 16];
    if family == AF_INET {
        let l: [u8; 4] = read_kernel(sk, offset!(sk_rcv_saddr)).ok()?;
        let r: [u8; 4] = read_kernel(sk, offset!(sk_daddr)).ok()?;
        local_addr[..4].copy_from_slice(&l);
        remote_addr[..4].copy_from_slice(&r);
    } else if family == AF_INET6 {
        local_addr = read_kernel(sk, offset!(sk_v6_rcv_saddr)).ok()?;
        remote_addr = read_kernel(sk, offset!(sk_v6_daddr)).ok()?;
    } else {
        return None;
    }
    let state: u8 = read_kernel(sk, offset!(sk_state)).ok()?;
    let (mut recv_seq0, mut send_seq0) = (0, 0);
    let seq_readable = offsets_valid(OFFSETS_TCP_SEQ);
    // Before the first read and write the counters stand at the first payload byte.
    if (state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT) && seq_readable {
        recv_seq0 = read_kernel(sk, offset!(tcp_copied_seq)).unwrap_or(0);
        send_seq0 = read_kernel(sk, offset!(tcp_write_seq)).unwrap_or(0);
    }
    Some(SockInfo {
        family,
        local_port: read_kernel(sk, offset!(sk_num)).ok()?,
        remote_port: u16::from_be(read_kernel(sk, offset!(sk_dport)).ok()?),
        local_addr,
        remote_addr,
        recv_seq0,
        send_seq0,
        seq_readable,
    })
}
