//! Writing records into the `EVENTS` ring buffer, the same way for every capture path.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user_buf,
};
use collector_common::{
    ConnEvent, Counter, DATA_FLAG_HAS_TAIL, DATA_FLAG_READ_FAILED, DATA_HEADER_SIZE, DataHeader,
    EVENT_DATA, MAX_CAPTURE_BYTES, TAIL_BYTES,
};

use crate::maps::{CAPTURE_BYTES, EVENTS, SCRATCH, WAKEUP_BYTES, count, setting_u32, setting_u64};

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Records are submitted without waking the reader, which drains on a short timer; only when
/// the buffer fills past `WAKEUP_BYTES` is the reader woken early, so it never overflows
/// waiting for its timer.
#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > setting_u64(&WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Address and identity of a connection, as the hook that saw it knows them.
pub struct ConnInfo {
    pub kind: u32,
    pub role: u32,
    pub conn_id: u64,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[inline(always)]
pub fn emit_conn(info: &ConnInfo) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
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
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        rx_bytes: info.rx_bytes,
        tx_bytes: info.tx_bytes,
    });
    entry.submit(wakeup_flag());
}

/// Emits one data record for `total_len` bytes that a call moved through the user buffer
/// `buf`, copying a bounded prefix (and the last bytes when the prefix does not reach them).
#[inline(always)]
pub fn emit_user_data(conn_id: u64, direction: u32, stream_offset: u64, total_len: u64, buf: u64) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch value is ours for the duration of this program.
    let scratch = unsafe { &mut *scratch };

    let limit = setting_u32(&CAPTURE_BYTES) as u64;
    let mut n = if total_len < limit { total_len } else { limit };
    if n > MAX_CAPTURE_BYTES as u64 {
        n = MAX_CAPTURE_BYTES as u64;
    }
    let mut flags = 0u32;
    let mut captured = 0u32;
    if n > 0 {
        // SAFETY: `n` ≤ MAX_CAPTURE_BYTES, so the slice lies inside the scratch buffer.
        let dst = unsafe {
            core::slice::from_raw_parts_mut(
                scratch.buf.as_mut_ptr().add(DATA_HEADER_SIZE),
                n as usize,
            )
        };
        // SAFETY: reading user memory through the checked helper.
        match unsafe { bpf_probe_read_user_buf(buf as *const u8, dst) } {
            Ok(()) => captured = n as u32,
            Err(_) => {
                flags |= DATA_FLAG_READ_FAILED;
                count(Counter::PayloadReadFailed);
            }
        }
    }

    let mut tail = [0u8; TAIL_BYTES];
    let mut tail_len = 0u32;
    if total_len > n && total_len >= TAIL_BYTES as u64 {
        let src = buf + total_len - TAIL_BYTES as u64;
        // SAFETY: as above; a failure only leaves the tail out.
        if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut tail) }.is_ok() {
            tail_len = TAIL_BYTES as u32;
            flags |= DATA_FLAG_HAS_TAIL;
        }
    }

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
        captured_len: captured,
        tail_len,
        flags,
        tail,
    };
    // SAFETY: the scratch buffer is 8-byte aligned (map value) and large enough.
    unsafe { (scratch.buf.as_mut_ptr() as *mut DataHeader).write(header) };

    let mut len = DATA_HEADER_SIZE + captured as usize;
    if len > DATA_HEADER_SIZE + MAX_CAPTURE_BYTES {
        len = DATA_HEADER_SIZE + MAX_CAPTURE_BYTES;
    }
    // SAFETY: `len` is bounded by the scratch size.
    let record = unsafe { core::slice::from_raw_parts(scratch.buf.as_ptr(), len) };
    if EVENTS.output::<[u8]>(record, wakeup_flag()).is_err() {
        count(Counter::RingbufFull);
    } else {
        count(Counter::DataEvents);
    }
}
