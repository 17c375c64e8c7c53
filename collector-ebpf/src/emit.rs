//! Writing records into the `EVENTS` ring buffer, the same way for every capture path.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
};
use collector_common::{
    ConnEvent, Counter, DATA_FLAG_HAS_TAIL, DATA_FLAG_READ_FAILED, DATA_HEADER_SIZE, DataHeader,
    EVENT_DATA, MAX_CAPTURE_BYTES, PROTO_HTTP, PROTO_OTHER, PROTO_UNKNOWN, TAIL_BYTES,
    classify_http_start,
};

use crate::maps::{
    CAPTURE_BYTES, EVENTS, SCRATCH, Scratch, WAKEUP_BYTES, count, current_process_comm,
    setting_u32, setting_u64,
};

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// iovec entries walked per call (readv/writev/recvmsg/sendmsg). Node writes a chunked
/// response as 3 entries per chunk plus the head: 16 covers a head and five chunks.
const MAX_IOV: u64 = 16;

/// Records are submitted without waking the reader, which drains on a short timer; only when
/// the buffer fills past `WAKEUP_BYTES` is the reader woken early, so it never overflows
/// waiting for its timer.
#[inline(always)]
pub fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > setting_u64(&WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Decides, from a connection's first bytes, whether it speaks HTTP/1.x. Returns false when
/// it does not: the caller stops, and from then on the connection costs one lookup.
#[inline(always)]
pub fn still_http(proto: &mut u32, first: &[u8; 4], known: usize) -> bool {
    if *proto != PROTO_UNKNOWN {
        return *proto != PROTO_OTHER;
    }
    match classify_http_start(first, known) {
        Some(true) => *proto = PROTO_HTTP,
        Some(false) => {
            *proto = PROTO_OTHER;
            count(Counter::NotHttp);
            return false;
        }
        None => {}
    }
    true
}

/// The payload bound for this call: the run-time setting, never above the compiled bound.
#[inline(always)]
pub fn capture_limit(total_len: u64) -> u64 {
    let limit = setting_u32(&CAPTURE_BYTES) as u64;
    let n = if total_len < limit { total_len } else { limit };
    if n > MAX_CAPTURE_BYTES as u64 {
        MAX_CAPTURE_BYTES as u64
    } else {
        n
    }
}

#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Copies a header-plus-payload record of `len` bytes from the scratch buffer to the ring.
#[inline(always)]
pub fn output_scratch(scratch: &Scratch, len: usize, ok: Counter) {
    let mut len = len;
    if len > DATA_HEADER_SIZE + MAX_CAPTURE_BYTES {
        len = DATA_HEADER_SIZE + MAX_CAPTURE_BYTES;
    }
    // SAFETY: `len` is bounded by the scratch size.
    let record = unsafe { core::slice::from_raw_parts(scratch.buf.as_ptr(), len) };
    if EVENTS.output::<[u8]>(record, wakeup_flag()).is_err() {
        count(Counter::ErrorsRingbufFull);
    } else {
        count(ok);
    }
}

/// Address and identity of a connection, as the hook that saw it knows them.
pub struct ConnInfo {
    pub kind: u32,
    pub role: u32,
    pub conn_id: u64,
    /// Set where the current task is the connection's process; 0 where it is not (softirq).
    pub with_task: bool,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub recv_seq0: u32,
    pub send_seq0: u32,
}

#[inline(always)]
pub fn emit_conn(info: &ConnInfo) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Counter::ErrorsRingbufFull);
        return;
    };
    let pid_tgid = if info.with_task {
        bpf_get_current_pid_tgid()
    } else {
        0
    };
    entry.write(ConnEvent {
        kind: info.kind,
        role: info.role,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: info.conn_id,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        family: info.family,
        local_port: info.local_port,
        remote_port: info.remote_port,
        _pad0: 0,
        local_addr: info.local_addr,
        remote_addr: info.remote_addr,
        comm: if info.with_task {
            current_process_comm()
        } else {
            [0; 16]
        },
        rx_bytes: info.rx_bytes,
        tx_bytes: info.tx_bytes,
        recv_seq0: info.recv_seq0,
        send_seq0: info.send_seq0,
    });
    entry.submit(wakeup_flag());
}

/// Where the bytes a call moved can be read from.
#[derive(Clone, Copy)]
pub enum Payload {
    /// One user buffer.
    User(u64),
    /// An array of `struct iovec` with this many entries.
    Iov(u64, u64),
    /// Nothing to copy (sendfile: the bytes came from a file).
    None,
}

/// Emits one data record for `total_len` bytes a call moved, copying a bounded prefix (and
/// the last bytes, when the prefix does not reach them).
#[inline(always)]
pub fn emit_data(
    conn_id: u64,
    direction: u32,
    stream_offset: u64,
    total_len: u64,
    payload: Payload,
) {
    let Some(scratch) = scratch() else { return };
    let want = capture_limit(total_len);
    let mut flags = 0u32;
    let mut tail = [0u8; TAIL_BYTES];
    let mut tail_len = 0u32;
    let captured = match payload {
        Payload::User(buf) => {
            let mut got = 0;
            if want > 0 {
                // SAFETY: `want` ≤ MAX_CAPTURE_BYTES: the slice lies inside the scratch buffer.
                let dst = unsafe {
                    core::slice::from_raw_parts_mut(
                        scratch.buf.as_mut_ptr().add(DATA_HEADER_SIZE),
                        want as usize,
                    )
                };
                // SAFETY: user memory read through the checked helper.
                match unsafe { bpf_probe_read_user_buf(buf as *const u8, dst) } {
                    Ok(()) => got = want,
                    Err(_) => {
                        flags |= DATA_FLAG_READ_FAILED;
                        count(Counter::ErrorsPayloadRead);
                    }
                }
            }
            if total_len > want && total_len >= TAIL_BYTES as u64 {
                let src = buf + total_len - TAIL_BYTES as u64;
                // SAFETY: as above; a failure only leaves the tail out.
                if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut tail) }.is_ok() {
                    tail_len = TAIL_BYTES as u32;
                    flags |= DATA_FLAG_HAS_TAIL;
                }
            }
            got
        }
        Payload::Iov(iov, iovcnt) => {
            let (got, has_tail) = copy_iov(scratch, iov, iovcnt, want, total_len, &mut tail);
            if has_tail {
                tail_len = TAIL_BYTES as u32;
                flags |= DATA_FLAG_HAS_TAIL;
            }
            got
        }
        Payload::None => 0,
    };

    let pid_tgid = bpf_get_current_pid_tgid();
    let header = DataHeader {
        kind: EVENT_DATA,
        direction,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_id,
        stream_offset,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        total_len: total_len as u32,
        captured_len: captured as u32,
        tail_len,
        flags,
        tail,
    };
    // SAFETY: the scratch buffer is 8-byte aligned (map value) and large enough.
    unsafe { (scratch.buf.as_mut_ptr() as *mut DataHeader).write(header) };
    output_scratch(
        scratch,
        DATA_HEADER_SIZE + captured as usize,
        Counter::DataEvents,
    );
}

/// Copies up to `want` bytes spread over an iovec array into the scratch payload, and the
/// call's last bytes into `tail` when they lie in one entry. Returns (bytes copied, tail?).
#[inline(always)]
fn copy_iov(
    scratch: &mut Scratch,
    iov: u64,
    iovcnt: u64,
    want: u64,
    total_len: u64,
    tail: &mut [u8; TAIL_BYTES],
) -> (u64, bool) {
    // SAFETY (all volatile accesses below): fields of the per-CPU scratch value we own.
    unsafe {
        core::ptr::write_volatile(&mut scratch.iov_pos, 0);
        core::ptr::write_volatile(&mut scratch.iov_seen, 0);
        core::ptr::write_volatile(&mut scratch.iov_tail_got, 0);
    }
    for i in 0..MAX_IOV {
        let pos = unsafe { core::ptr::read_volatile(&scratch.iov_pos) };
        let seen = unsafe { core::ptr::read_volatile(&scratch.iov_seen) };
        if i >= iovcnt || seen >= total_len || pos > MAX_CAPTURE_BYTES as u64 {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; } — the user ABI, 16 bytes.
        // SAFETY: user memory read through the checked helper.
        let Ok(base) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const u64) }) else {
            break;
        };
        // SAFETY: as above.
        let Ok(len) = (unsafe { bpf_probe_read_user((iov + i * 16 + 8) as *const u64) }) else {
            break;
        };
        let len = if len > total_len - seen {
            total_len - seen
        } else {
            len
        };
        if pos < want && pos < MAX_CAPTURE_BYTES as u64 {
            let room = want - pos;
            let mut n = if len < room { len } else { room };
            if n > MAX_CAPTURE_BYTES as u64 {
                n = MAX_CAPTURE_BYTES as u64;
            }
            // SAFETY: pos < MAX and n ≤ MAX: inside the doubled scratch payload area.
            let dst = unsafe {
                core::slice::from_raw_parts_mut(
                    scratch
                        .buf
                        .as_mut_ptr()
                        .add(DATA_HEADER_SIZE + pos as usize),
                    n as usize,
                )
            };
            // SAFETY: user memory read through the checked helper (a zero size is allowed).
            if unsafe { bpf_probe_read_user_buf(base as *const u8, dst) }.is_err() {
                count(Counter::ErrorsPayloadRead);
                break;
            }
            unsafe { core::ptr::write_volatile(&mut scratch.iov_pos, pos + n) };
        }
        // The call's last TAIL_BYTES bytes, from every entry that holds some of them (Node
        // writes a chunk's CRLF and the last chunk as entries of a few bytes each).
        if total_len > want && total_len >= TAIL_BYTES as u64 {
            copy_tail_part(scratch, base, seen, len, total_len);
        }
        unsafe { core::ptr::write_volatile(&mut scratch.iov_seen, seen + len) };
    }
    let pos = unsafe { core::ptr::read_volatile(&scratch.iov_pos) };
    let has_tail = unsafe { core::ptr::read_volatile(&scratch.iov_tail_got) } == TAIL_BYTES as u64;
    if has_tail {
        tail.copy_from_slice(&scratch.iov_tail[..TAIL_BYTES]);
    }
    (if pos > want { want } else { pos }, has_tail)
}

/// Copies the part of one iovec entry (`len` bytes at user address `base`, `seen` bytes into
/// the call) that falls in the call's last TAIL_BYTES bytes into `scratch.iov_tail`.
#[inline(always)]
fn copy_tail_part(scratch: &mut Scratch, base: u64, seen: u64, len: u64, total_len: u64) {
    let tail_start = total_len - TAIL_BYTES as u64;
    if seen + len <= tail_start || len == 0 {
        return;
    }
    let from = if seen > tail_start { seen } else { tail_start };
    // Bounds the verifier can see on their own: offset < TAIL_BYTES, length ≤ TAIL_BYTES.
    let off = ((from - tail_start) as usize) & (TAIL_BYTES - 1);
    let mut n = (seen + len - from) as usize;
    if n > TAIL_BYTES {
        n = TAIL_BYTES;
    }
    let n = n & (2 * TAIL_BYTES - 1);
    if n > TAIL_BYTES {
        return;
    }
    // SAFETY: off + n < 2 * TAIL_BYTES: inside `iov_tail`.
    let dst = unsafe { core::slice::from_raw_parts_mut(scratch.iov_tail.as_mut_ptr().add(off), n) };
    // SAFETY: user memory read through the checked helper.
    if unsafe { bpf_probe_read_user_buf((base + (from - seen)) as *const u8, dst) }.is_ok() {
        // SAFETY: a field of the per-CPU scratch value we own.
        unsafe {
            let got = core::ptr::read_volatile(&scratch.iov_tail_got);
            core::ptr::write_volatile(&mut scratch.iov_tail_got, got + n as u64);
        }
    }
}

/// The first four bytes of a call's data, to tell HTTP from other protocols.
#[inline(always)]
pub fn first_bytes(payload: Payload, total_len: u64) -> ([u8; 4], usize) {
    let mut b = [0u8; 4];
    if total_len < 4 {
        return (b, total_len as usize);
    }
    let src = match payload {
        Payload::User(buf) => buf,
        Payload::Iov(iov, iovcnt) if iovcnt > 0 => {
            // SAFETY: user memory read through the checked helper.
            let Ok(len) = (unsafe { bpf_probe_read_user((iov + 8) as *const u64) }) else {
                return (b, 0);
            };
            if len < 4 {
                return (b, 0);
            }
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(iov as *const u64) } {
                Ok(base) => base,
                Err(_) => return (b, 0),
            }
        }
        _ => return (b, 0),
    };
    // SAFETY: as above.
    match unsafe { bpf_probe_read_user(src as *const [u8; 4]) } {
        Ok(v) => {
            b = v;
            (b, 4)
        }
        Err(_) => (b, 0),
    }
}
