//! Decoding ring buffer records into owned events. Pure: tested without root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use collector_common::{
    AF_INET, AF_INET6, CONN_EVENT_SIZE, ConnEvent, DATA_FLAG_HAS_TAIL, DATA_FLAG_READ_FAILED,
    DATA_HEADER_SIZE, DIR_RECV, DIR_SEND, DataHeader, EVENT_CONN_CLOSE, EVENT_CONN_OPEN,
    EVENT_DATA, EVENT_PACKET, EVENT_SOCK_CALL, PACKET_FLAG_ON_LISTENER, PACKET_HEADER_SIZE,
    PacketHeader, ROLE_CLIENT, ROLE_SERVER, SOCK_CALL_EVENT_SIZE, SockCallEvent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Server,
    Unknown,
}

impl Role {
    /// A kernel record's `ROLE_*`.
    pub fn from_raw(role: u32) -> Self {
        match role {
            ROLE_CLIENT => Role::Client,
            ROLE_SERVER => Role::Server,
            _ => Role::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Recv,
    Send,
}

/// A connection opened or closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    pub ts_ns: u64,
    pub conn_id: u64,
    pub role: Role,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Sequence numbers of stream offset 0 (the initial sequence numbers + 1): the
    /// socket-layer path joins packets with them (see `join`), and both paths name the
    /// connection by them ([`ConnRecord::isns`]). 0: not known.
    pub recv_seq0: u32,
    pub send_seq0: u32,
}

/// A TCP connection's initial sequence numbers, the client's and the server's (as the first
/// payload byte's: ISN + 1). Both ends see the same pair, and Service NAT (kube-proxy's
/// DNAT, Cilium's socket LB) rewrites addresses and ports but never these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Isns {
    pub client: u32,
    pub server: u32,
}

impl ConnRecord {
    /// The connection's [`Isns`], when the kernel side read both.
    pub fn isns(&self) -> Option<Isns> {
        let (client, server) = match self.role {
            Role::Client => (self.send_seq0, self.recv_seq0),
            Role::Server => (self.recv_seq0, self.send_seq0),
            Role::Unknown => return None,
        };
        (client != 0 && server != 0).then_some(Isns { client, server })
    }
}

/// Bytes one recv/send call moved on a traced connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRecord {
    pub ts_ns: u64,
    pub conn_id: u64,
    pub direction: Direction,
    pub pid: u32,
    pub tid: u32,
    /// Position of `payload[0]` in this direction's byte stream.
    pub stream_offset: u64,
    /// Bytes the call moved; `payload` holds a prefix of them.
    pub total_len: u32,
    pub payload: Vec<u8>,
    /// The call's last bytes, when the payload prefix does not reach them.
    pub tail: Option<Vec<u8>>,
    /// The kernel could not copy the payload (the counts are still right).
    pub payload_missing: bool,
}

/// The one event stream every later stage sees, whichever capture path ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    ConnOpen(ConnRecord),
    Data(DataRecord),
    ConnClose(ConnRecord),
}

/// Socket-layer path: one TCP packet's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    pub ts_ns: u64,
    pub cookie: u64,
    pub direction: Direction,
    pub seq: u32,
    pub len: u32,
    pub payload: Vec<u8>,
    pub tail: Option<Vec<u8>>,
    /// A connection's first data packet seen on its listener, before the connection had a
    /// socket (`cookie` 0): the sender's port, which with `seq` names the connection.
    pub on_listener_from_port: Option<u16>,
}

/// Socket-layer path: one recv/send call, `[seq_end - len, seq_end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub ts_ns: u64,
    pub cookie: u64,
    pub direction: Direction,
    pub pid: u32,
    pub tid: u32,
    pub seq_end: u32,
    pub len: u32,
    pub comm: String,
}

/// A decoded ring buffer record: a finished event, or a socket-layer piece for the join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Event(KernelEvent),
    Packet(PacketRecord),
    Call(CallRecord),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record claims {claimed} payload bytes but carries {actual}")]
    PayloadLength { claimed: usize, actual: usize },
}

/// Decodes one ring buffer record.
pub fn decode(record: &[u8]) -> Result<Record, DecodeError> {
    let kind = u32::from_ne_bytes(
        record
            .get(..4)
            .ok_or(DecodeError::Short(record.len()))?
            .try_into()
            .expect("4 bytes"),
    );
    match kind {
        EVENT_CONN_OPEN | EVENT_CONN_CLOSE => {
            let raw: ConnEvent = read_pod(record, CONN_EVENT_SIZE)?;
            let conn = conn_record(&raw);
            Ok(Record::Event(if kind == EVENT_CONN_OPEN {
                KernelEvent::ConnOpen(conn)
            } else {
                KernelEvent::ConnClose(conn)
            }))
        }
        EVENT_DATA => {
            let raw: DataHeader = read_pod(record, DATA_HEADER_SIZE)?;
            let (payload, tail) = payload_and_tail(
                &record[DATA_HEADER_SIZE..],
                raw.captured_len,
                raw.flags,
                &raw.tail,
                raw.tail_len,
            )?;
            Ok(Record::Event(KernelEvent::Data(DataRecord {
                ts_ns: raw.ts_ns,
                conn_id: raw.conn_id,
                direction: direction(raw.direction),
                pid: raw.pid,
                tid: raw.tid,
                stream_offset: raw.stream_offset,
                total_len: raw.total_len,
                payload,
                tail,
                payload_missing: raw.flags & DATA_FLAG_READ_FAILED != 0,
            })))
        }
        EVENT_PACKET => {
            let raw: PacketHeader = read_pod(record, PACKET_HEADER_SIZE)?;
            let (payload, tail) = payload_and_tail(
                &record[PACKET_HEADER_SIZE..],
                raw.captured_len,
                raw.flags,
                &raw.tail,
                raw.tail_len,
            )?;
            Ok(Record::Packet(PacketRecord {
                ts_ns: raw.ts_ns,
                cookie: raw.cookie,
                direction: direction(raw.direction),
                seq: raw.seq,
                len: raw.len,
                payload,
                tail,
                on_listener_from_port: (raw.flags & PACKET_FLAG_ON_LISTENER != 0)
                    .then_some(raw.peer_port as u16),
            }))
        }
        EVENT_SOCK_CALL => {
            let raw: SockCallEvent = read_pod(record, SOCK_CALL_EVENT_SIZE)?;
            Ok(Record::Call(CallRecord {
                ts_ns: raw.ts_ns,
                cookie: raw.cookie,
                direction: direction(raw.direction),
                pid: raw.pid,
                tid: raw.tid,
                seq_end: raw.seq_end,
                len: raw.len,
                comm: comm_string(&raw.comm),
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The payload that follows a header, and the tail bytes when the header says it has them.
fn payload_and_tail(
    body: &[u8],
    captured_len: u32,
    flags: u32,
    tail: &[u8; collector_common::TAIL_BYTES],
    tail_len: u32,
) -> Result<(Vec<u8>, Option<Vec<u8>>), DecodeError> {
    let captured = captured_len as usize;
    if body.len() < captured {
        return Err(DecodeError::PayloadLength {
            claimed: captured,
            actual: body.len(),
        });
    }
    let tail_len = (tail_len as usize).min(tail.len());
    let tail = (flags & DATA_FLAG_HAS_TAIL != 0).then(|| tail[tail.len() - tail_len..].to_vec());
    Ok((body[..captured].to_vec(), tail))
}

fn direction(raw: u32) -> Direction {
    if raw == DIR_SEND {
        Direction::Send
    } else {
        debug_assert_eq!(raw, DIR_RECV);
        Direction::Recv
    }
}

fn read_pod<T: Copy>(record: &[u8], size: usize) -> Result<T, DecodeError> {
    if record.len() < size {
        return Err(DecodeError::Short(record.len()));
    }
    // SAFETY: T is one of the repr(C) Pod records of collector-common, `size` is its size and
    // the slice holds at least that many bytes; read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

fn conn_record(raw: &ConnEvent) -> ConnRecord {
    ConnRecord {
        ts_ns: raw.ts_ns,
        conn_id: raw.conn_id,
        role: Role::from_raw(raw.role),
        pid: raw.pid,
        tid: raw.tid,
        comm: comm_string(&raw.comm),
        local: socket_addr(raw.family, &raw.local_addr, raw.local_port),
        remote: socket_addr(raw.family, &raw.remote_addr, raw.remote_port),
        rx_bytes: raw.rx_bytes,
        tx_bytes: raw.tx_bytes,
        recv_seq0: raw.recv_seq0,
        send_seq0: raw.send_seq0,
    }
}

/// The kernel's `comm`: NUL-terminated, at most 16 bytes.
pub fn comm_string(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn socket_addr(family: u16, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*addr)),
        _ => return None,
    };
    (port != 0 || !ip.is_unspecified()).then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use collector_common::{DATA_FLAG_HAS_TAIL, TAIL_BYTES};

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over the repr(C) records.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn data_header(captured: u32, total: u32) -> DataHeader {
        DataHeader {
            kind: EVENT_DATA,
            direction: DIR_RECV,
            ts_ns: 42,
            conn_id: 7,
            stream_offset: 100,
            pid: 10,
            tid: 11,
            total_len: total,
            captured_len: captured,
            tail_len: 0,
            flags: 0,
            tail: [0; TAIL_BYTES],
        }
    }

    #[test]
    fn a_data_record_keeps_its_payload_and_counts() {
        let mut rec = bytes_of(&data_header(5, 5));
        rec.extend_from_slice(b"GET /");
        let Record::Event(KernelEvent::Data(d)) = decode(&rec).unwrap() else {
            panic!("not data")
        };
        assert_eq!(d.payload, b"GET /");
        assert_eq!(
            (d.pid, d.tid, d.stream_offset, d.total_len),
            (10, 11, 100, 5)
        );
        assert_eq!(d.direction, Direction::Recv);
        assert_eq!(d.tail, None);
    }

    #[test]
    fn a_tail_is_decoded_only_when_flagged() {
        let mut h = data_header(0, 5000);
        h.flags = DATA_FLAG_HAS_TAIL;
        h.tail_len = TAIL_BYTES as u32;
        h.tail = *b"0123456789\r\n0\r\n\r";
        let Record::Event(KernelEvent::Data(d)) = decode(&bytes_of(&h)).unwrap() else {
            panic!()
        };
        assert_eq!(d.tail.as_deref(), Some(&b"0123456789\r\n0\r\n\r"[..]));
    }

    #[test]
    fn a_record_shorter_than_its_claimed_payload_is_rejected() {
        let mut rec = bytes_of(&data_header(10, 10));
        rec.extend_from_slice(b"GET");
        assert_eq!(
            decode(&rec),
            Err(DecodeError::PayloadLength {
                claimed: 10,
                actual: 3
            })
        );
    }

    #[test]
    fn garbage_records_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
        assert_eq!(decode(&[1, 0, 0, 0, 1]), Err(DecodeError::Short(5)));
    }

    #[test]
    fn a_connection_record_carries_role_comm_and_ipv4_peer() {
        let mut raw = ConnEvent {
            kind: EVENT_CONN_OPEN,
            role: ROLE_SERVER,
            ts_ns: 1,
            conn_id: 2,
            pid: 3,
            tid: 4,
            family: AF_INET,
            local_port: 0,
            remote_port: 5555,
            _pad0: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            comm: [0; 16],
            rx_bytes: 0,
            tx_bytes: 0,
            recv_seq0: 0,
            send_seq0: 0,
        };
        raw.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.comm[..7].copy_from_slice(b"python3");
        let Record::Event(KernelEvent::ConnOpen(c)) = decode(&bytes_of(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!(c.role, Role::Server);
        assert_eq!(c.comm, "python3");
        assert_eq!(c.remote, Some("127.0.0.1:5555".parse().unwrap()));
        assert_eq!(c.local, None);
    }
}
