//! The contract between the kernel programs and the collector.
//!
//! Every record in the `EVENTS` ring buffer starts with a `u32` kind. Connection records are a
//! fixed [`ConnEvent`]; data records are a [`DataHeader`] followed by `captured_len` payload
//! bytes. All types are `#[repr(C)]` with explicit padding so both sides agree byte for byte,
//! whichever capture path (socket layer or syscalls) produced them.
#![no_std]

/// A connection was opened (accepted or connected). Record: [`ConnEvent`].
pub const EVENT_CONN_OPEN: u32 = 1;
/// Bytes moved by one recv/send call. Record: [`DataHeader`] + payload.
pub const EVENT_DATA: u32 = 2;
/// A connection was closed. Record: [`ConnEvent`].
pub const EVENT_CONN_CLOSE: u32 = 3;
/// Socket-layer path: payload of one TCP packet of a traced connection. Record:
/// [`PacketHeader`] + payload. Userspace joins packets with calls into data records.
pub const EVENT_PACKET: u32 = 4;
/// Socket-layer path: one recv/send call on a traced connection (thread, time, sequence
/// range). Record: [`SockCallEvent`].
pub const EVENT_SOCK_CALL: u32 = 5;

/// Role of the traced process on a connection.
pub const ROLE_UNKNOWN: u32 = 0;
/// The process connected (it is the HTTP client).
pub const ROLE_CLIENT: u32 = 1;
/// The process accepted (it is the HTTP server).
pub const ROLE_SERVER: u32 = 2;

/// The traced process received these bytes.
pub const DIR_RECV: u32 = 0;
/// The traced process sent these bytes.
pub const DIR_SEND: u32 = 1;

/// Hard ceiling of payload bytes copied per data event. The verifier sees this bound; the
/// run-time limit (`CAPTURE_BYTES` global) may only lower it.
pub const MAX_CAPTURE_BYTES: usize = 8192;
/// Default payload prefix copied per call: a request line plus ordinary headers.
pub const DEFAULT_CAPTURE_BYTES: u32 = 2048;
/// When a call moves more than the captured prefix, its last bytes are copied too, so a chunked
/// body's terminator or the end of a message is still visible.
pub const TAIL_BYTES: usize = 16;

/// `DataHeader::flags`: the payload could not be read (the byte counts are still right).
pub const DATA_FLAG_READ_FAILED: u32 = 1;
/// `DataHeader::flags`: `tail` holds the last `tail_len` bytes of the call.
pub const DATA_FLAG_HAS_TAIL: u32 = 2;
/// `PacketHeader::flags`: seen on a listening socket, before the connection's own socket
/// existed (its first data packet completed the handshake); `cookie` is 0 and `peer_port`
/// names the connection with `seq`.
pub const PACKET_FLAG_ON_LISTENER: u32 = 4;

/// What a connection's first payload bytes say (kernel-side classification).
pub const PROTO_UNKNOWN: u32 = 0;
pub const PROTO_HTTP: u32 = 1;
/// Not HTTP/1.x: nothing more is copied, each packet or call costs one lookup.
pub const PROTO_OTHER: u32 = 2;

/// Does a connection's first payload start like HTTP/1.x? `Some(true/false)` once decided,
/// `None` while fewer than 4 bytes are known. Shared by both sides so they agree.
#[inline(always)]
pub fn classify_http_start(b: &[u8; 4], known: usize) -> Option<bool> {
    if known < 4 {
        return None;
    }
    Some(matches!(
        b,
        b"GET "
            | b"POST"
            | b"PUT "
            | b"HEAD"
            | b"DELE"
            | b"OPTI"
            | b"PATC"
            | b"CONN"
            | b"TRAC"
            | b"HTTP"
    ))
}

/// Key of the syscall path's `CONNS` table: a connection by (tgid, fd). Userspace reclaims
/// the entries of processes that exited without closing their sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of `CONNS`: one connection traced on the syscall path.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    pub conn_id: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub role: u32,
    /// `PROTO_*`: decided from the first payload bytes.
    pub proto: u32,
    /// `CONN_OPEN_PENDING` (collector-ebpf) while the open waits to be reported.
    pub flags: u32,
    pub _pad0: u32,
}

/// Value of `SOCKS`: one socket on the socket-layer path, by socket cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    pub role: u32,
    /// `PROTO_*`, or `PROTO_IGNORED` (collector-ebpf) for sockets never traced.
    pub proto: u32,
    /// Sequence number up to which received bytes have been reported as calls. Hooks that
    /// see cumulative or repeated counts (`tcp_cleanup_rbuf` runs more than once in a
    /// `MSG_WAITALL` read, and for peeks) report only what lies beyond it.
    pub recv_end: u32,
    /// `SOCK_SELF` (collector-ebpf): one of the collector's own connections.
    pub flags: u32,
}

/// Address families carried in [`ConnEvent::family`].
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    /// [`EVENT_CONN_OPEN`] or [`EVENT_CONN_CLOSE`].
    pub kind: u32,
    /// [`ROLE_CLIENT`], [`ROLE_SERVER`] or [`ROLE_UNKNOWN`].
    pub role: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Unique per connection on this node while the collector runs (socket cookie on the
    /// socket-layer path, a generated id on the syscall path).
    pub conn_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub family: u16,
    /// Ports in host byte order; 0 when unknown.
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad0: u16,
    /// IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub comm: [u8; 16],
    /// Bytes received / sent over the connection (set on close).
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Socket-layer path, on open: TCP sequence number of the first payload byte received /
    /// sent (stream offset 0). Zero on the syscall path.
    pub recv_seq0: u32,
    pub send_seq0: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// [`EVENT_PACKET`].
    pub kind: u32,
    /// [`DIR_RECV`] (ingress) or [`DIR_SEND`] (egress).
    pub direction: u32,
    pub ts_ns: u64,
    /// Socket cookie (the connection id on this path).
    pub cookie: u64,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes in the packet (a GSO packet may hold many segments).
    pub len: u32,
    pub captured_len: u32,
    pub tail_len: u32,
    pub flags: u32,
    /// The sending peer's port, with [`PACKET_FLAG_ON_LISTENER`]; else 0.
    pub peer_port: u32,
    pub tail: [u8; TAIL_BYTES],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockCallEvent {
    /// [`EVENT_SOCK_CALL`].
    pub kind: u32,
    pub direction: u32,
    /// When the call returned.
    pub ts_ns: u64,
    pub cookie: u64,
    pub pid: u32,
    pub tid: u32,
    /// The call moved the sequence range `[seq_end - len, seq_end)`.
    pub seq_end: u32,
    pub len: u32,
    /// The calling task's name: on this path the connection events run in softirq.
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// [`EVENT_DATA`].
    pub kind: u32,
    /// [`DIR_RECV`] or [`DIR_SEND`].
    pub direction: u32,
    /// `bpf_ktime_get_ns` when the call returned.
    pub ts_ns: u64,
    pub conn_id: u64,
    /// Bytes moved in this direction before this call: the position of `payload[0]`.
    pub stream_offset: u64,
    pub pid: u32,
    pub tid: u32,
    /// Bytes the call moved.
    pub total_len: u32,
    /// Payload bytes following this header (≤ total_len, ≤ MAX_CAPTURE_BYTES).
    pub captured_len: u32,
    /// Valid bytes at the end of `tail` (when `DATA_FLAG_HAS_TAIL`).
    pub tail_len: u32,
    pub flags: u32,
    pub tail: [u8; TAIL_BYTES],
}

/// Kernel struct member offsets, read by the collector from the running kernel's BTF and
/// written into the programs' `OFFSETS` global at load time: the object never carries one
/// kernel's layout. A group of offsets is only used when its `OFFSETS_*` bit is set in
/// `valid` (0 is a real offset for some members, so it cannot mean "unknown").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
    /// `tcp_sock.copied_seq`, `tcp_sock.write_seq` ([`OFFSETS_TCP_SEQ`]).
    pub tcp_copied_seq: u32,
    pub tcp_write_seq: u32,
    /// `sock.__sk_common.skc_cookie` ([`OFFSETS_SK_COOKIE`]): generated by the socket-layer
    /// programs' first `bpf_get_socket_cookie`, read where that helper is not allowed.
    pub sk_cookie: u32,
    /// `task_struct.group_leader`, `task_struct.comm` ([`OFFSETS_TASK_COMM`]).
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// From a task and an fd to its socket ([`OFFSETS_FD_SOCKET`]): `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.max_fds`, `fdtable.fd`, `file.private_data`,
    /// `socket.file`, `socket.sk`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    /// `sock_common` members ([`OFFSETS_FD_SOCKET`]): family, state, local port (host
    /// order), remote port (network order), IPv4 and IPv6 addresses.
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
}

pub const OFFSETS_TCP_SEQ: u32 = 1;
pub const OFFSETS_SK_COOKIE: u32 = 2;
pub const OFFSETS_TASK_COMM: u32 = 4;
pub const OFFSETS_FD_SOCKET: u32 = 8;

impl KernelOffsets {
    pub const NONE: Self = Self {
        valid: 0,
        tcp_copied_seq: 0,
        tcp_write_seq: 0,
        sk_cookie: 0,
        task_group_leader: 0,
        task_comm: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_private_data: 0,
        socket_file: 0,
        socket_sk: 0,
        sk_family: 0,
        sk_state: 0,
        sk_num: 0,
        sk_dport: 0,
        sk_daddr: 0,
        sk_rcv_saddr: 0,
        sk_v6_daddr: 0,
        sk_v6_rcv_saddr: 0,
    };
}

pub const CONN_EVENT_SIZE: usize = core::mem::size_of::<ConnEvent>();
pub const DATA_HEADER_SIZE: usize = core::mem::size_of::<DataHeader>();
pub const PACKET_HEADER_SIZE: usize = core::mem::size_of::<PacketHeader>();
pub const SOCK_CALL_EVENT_SIZE: usize = core::mem::size_of::<SockCallEvent>();

/// Index of each kernel-side counter in the per-CPU `COUNTERS` array. Every failure in the
/// kernel programs increments one `Errors*` counter naming its reason (none is discarded);
/// userspace sums them over CPUs and exports them as `kernel_<name>`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A ring buffer record could not be written (buffer full): the event is lost.
    ErrorsRingbufFull = 0,
    /// Reading user memory for the payload failed; the event carries the byte count only.
    ErrorsPayloadRead = 1,
    /// A connection table refused an entry: a connection is not tracked.
    ErrorsConnTableFull = 2,
    /// The in-flight syscall table refused an entry: a call on a tracked socket was missed.
    ErrorsPendingTableFull = 3,
    /// Reading a socket address from user memory failed.
    ErrorsAddrRead = 4,
    ConnOpened = 5,
    ConnClosed = 6,
    DataEvents = 7,
    /// Connections whose first bytes were not HTTP/1.x (no longer copied).
    NotHttp = 8,
    PacketEvents = 9,
    CallEvents = 10,
    /// Reading a kernel struct field (sequence numbers, socket cookie) failed.
    ErrorsKernelRead = 11,
    /// Data of traced connections not captured while the collector sheds load (over its CPU
    /// or memory budget, or capture paused).
    Shed = 12,
    /// Removing a table entry failed (it was already gone: another CPU removed it, or an
    /// LRU table evicted it).
    ErrorsMapDelete = 13,
    /// Loading packet bytes (cgroup_skb) failed: the packet is not captured.
    ErrorsPacketLoad = 14,
    /// sock_ops could not ask for a socket's state callbacks: its close will not be seen
    /// there (the socket is left to its table's LRU eviction).
    ErrorsCbFlags = 15,
}

impl Counter {
    pub const ALL: [Counter; 16] = [
        Counter::ErrorsRingbufFull,
        Counter::ErrorsPayloadRead,
        Counter::ErrorsConnTableFull,
        Counter::ErrorsPendingTableFull,
        Counter::ErrorsAddrRead,
        Counter::ConnOpened,
        Counter::ConnClosed,
        Counter::DataEvents,
        Counter::NotHttp,
        Counter::PacketEvents,
        Counter::CallEvents,
        Counter::ErrorsKernelRead,
        Counter::Shed,
        Counter::ErrorsMapDelete,
        Counter::ErrorsPacketLoad,
        Counter::ErrorsCbFlags,
    ];
    /// Size of the `COUNTERS` map.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Counter::ErrorsRingbufFull => "errors_ringbuf_full",
            Counter::ErrorsPayloadRead => "errors_payload_read",
            Counter::ErrorsConnTableFull => "errors_conn_table_full",
            Counter::ErrorsPendingTableFull => "errors_pending_table_full",
            Counter::ErrorsAddrRead => "errors_addr_read",
            Counter::ConnOpened => "conn_opened",
            Counter::ConnClosed => "conn_closed",
            Counter::DataEvents => "data_events",
            Counter::NotHttp => "not_http_conns",
            Counter::PacketEvents => "packet_events",
            Counter::CallEvents => "call_events",
            Counter::ErrorsKernelRead => "errors_kernel_read",
            Counter::Shed => "shed_events",
            Counter::ErrorsMapDelete => "errors_map_delete",
            Counter::ErrorsPacketLoad => "errors_packet_load",
            Counter::ErrorsCbFlags => "errors_cb_flags",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type is repr(C), Copy, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ConnEvent {}
    unsafe impl aya::Pod for super::DataHeader {}
    unsafe impl aya::Pod for super::PacketHeader {}
    unsafe impl aya::Pod for super::SockCallEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::SockState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_no_implicit_padding_and_keep_8_byte_alignment() {
        // Sum of field sizes equals the struct size: no hidden padding the two sides could
        // disagree on.
        assert_eq!(
            CONN_EVENT_SIZE,
            4 + 4 + 8 + 8 + 4 + 4 + 2 * 4 + 16 * 3 + 8 + 8 + 4 + 4
        );
        assert_eq!(DATA_HEADER_SIZE, 4 + 4 + 8 + 8 + 8 + 4 * 6 + TAIL_BYTES);
        assert_eq!(CONN_EVENT_SIZE % 8, 0);
        assert_eq!(DATA_HEADER_SIZE % 8, 0);
        assert_eq!(PACKET_HEADER_SIZE, 4 + 4 + 8 + 8 + 4 * 6 + TAIL_BYTES);
        assert_eq!(SOCK_CALL_EVENT_SIZE, 4 + 4 + 8 + 8 + 4 * 4 + 16);
        assert_eq!(PACKET_HEADER_SIZE % 8, 0);
        assert_eq!(SOCK_CALL_EVENT_SIZE % 8, 0);
        assert_eq!(core::mem::size_of::<ConnState>(), 8 * 3 + 4 * 4);
        assert_eq!(core::mem::size_of::<SockState>(), 4 * 4);
        assert_eq!(core::mem::size_of::<SockKey>(), 4 * 2);
    }

    #[test]
    fn http_is_told_from_other_protocols_by_four_bytes() {
        assert_eq!(classify_http_start(b"GET ", 4), Some(true));
        assert_eq!(classify_http_start(b"HTTP", 4), Some(true));
        assert_eq!(classify_http_start(b"\x16\x03\x01\x02", 4), Some(false));
        assert_eq!(classify_http_start(b"*1\r\n", 4), Some(false));
        assert_eq!(classify_http_start(b"GE\0\0", 2), None);
    }

    #[test]
    fn counter_indices_match_their_position() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
