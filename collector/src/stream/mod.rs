//! Stage 2, connection streams: each direction of a connection as an ordered byte stream.
//!
//! Calls arrive as [`Chunk`]s placed by their stream offset. Bytes already delivered
//! (retransmissions, overlaps) are trimmed, chunks that arrive early wait in a small bounded
//! window, and a hole that does not fill becomes an explicit [`StreamItem::Gap`] — never
//! silently glued over.

use crate::counters::counters;
use std::collections::BTreeMap;

/// Out-of-order chunks held per direction before the hole in front of them is declared a gap.
const MAX_PENDING: usize = 32;

/// Bytes one call moved, placed in its direction's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Stream offset of the first byte.
    pub offset: u64,
    /// Bytes the call moved.
    pub len: u64,
    /// The first bytes (≤ `len`); the rest were counted, not copied.
    pub bytes: Vec<u8>,
    /// The last bytes of the call, when `bytes` does not reach them.
    pub tail: Option<Vec<u8>>,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Drops the first `n` bytes (already delivered).
    fn trim_front(&mut self, n: u64) {
        let n = n.min(self.len);
        let known = (n as usize).min(self.bytes.len());
        self.bytes.drain(..known);
        self.offset += n;
        self.len -= n;
        if self
            .tail
            .as_ref()
            .is_some_and(|t| t.len() as u64 > self.len)
        {
            self.tail = None;
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    Data(Chunk),
    /// `len` bytes at `offset` were never seen (lost events or a capture that started late).
    Gap {
        offset: u64,
        len: u64,
    },
}

counters! {
    pub struct StreamStats("stream") {
        /// Chunks entirely made of bytes already delivered.
        pub duplicate_chunks,
        /// Bytes trimmed from chunks that overlapped delivered bytes.
        pub overlap_bytes,
        pub gaps,
        pub gap_bytes,
    }
}

/// One direction of one connection. Both capture paths count offsets from the first byte
/// after the connection was established, so the stream starts at 0.
#[derive(Debug, Default)]
pub struct DirectionStream {
    /// Offset of the next byte to deliver.
    next: u64,
    pending: BTreeMap<u64, Chunk>,
    pub stats: StreamStats,
}

impl DirectionStream {
    /// Places a chunk; appends what can now be delivered, in order, to `out`.
    pub fn push(&mut self, chunk: Chunk, out: &mut Vec<StreamItem>) {
        let next = self.next;
        if chunk.len == 0 {
            return;
        }
        if chunk.end() <= next {
            self.stats.duplicate_chunks += 1;
            return;
        }
        if chunk.offset > next {
            // Early: wait for the bytes in front of it. Keep the longest chunk per offset.
            let keep = self
                .pending
                .get(&chunk.offset)
                .is_none_or(|c| c.len < chunk.len);
            if keep {
                self.pending.insert(chunk.offset, chunk);
            }
            if self.pending.len() > MAX_PENDING {
                self.skip_to_pending(out);
            }
            return;
        }
        self.deliver(chunk, out);
        self.drain_pending(out);
    }

    /// Declares the hole before the earliest waiting chunk a gap and delivers what follows.
    /// Called when the window is full and when a connection goes quiet or closes.
    pub fn skip_to_pending(&mut self, out: &mut Vec<StreamItem>) {
        let Some((&first, _)) = self.pending.iter().next() else {
            return;
        };
        let next = self.next;
        if first > next {
            out.push(StreamItem::Gap {
                offset: next,
                len: first - next,
            });
            self.stats.gaps += 1;
            self.stats.gap_bytes += first - next;
            self.next = first;
        }
        self.drain_pending(out);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Kernel time of the earliest-placed chunk waiting behind a hole.
    pub fn oldest_pending_ts(&self) -> Option<u64> {
        self.pending.values().map(|c| c.ts_ns).min()
    }

    fn deliver(&mut self, mut chunk: Chunk, out: &mut Vec<StreamItem>) {
        let next = self.next;
        if chunk.offset < next {
            let overlap = next - chunk.offset;
            self.stats.overlap_bytes += overlap;
            chunk.trim_front(overlap);
        }
        self.next = chunk.end();
        out.push(StreamItem::Data(chunk));
    }

    fn drain_pending(&mut self, out: &mut Vec<StreamItem>) {
        while let Some(entry) = self.pending.first_entry() {
            let next = self.next;
            if *entry.key() > next {
                break;
            }
            let chunk = entry.remove();
            if chunk.end() <= next {
                self.stats.duplicate_chunks += 1;
                continue;
            }
            self.deliver(chunk, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, bytes: &[u8]) -> Chunk {
        Chunk {
            offset,
            len: bytes.len() as u64,
            bytes: bytes.to_vec(),
            tail: None,
            ts_ns: offset,
            pid: 1,
            tid: 1,
        }
    }

    fn data(items: &[StreamItem]) -> Vec<u8> {
        items
            .iter()
            .flat_map(|i| match i {
                StreamItem::Data(c) => c.bytes.clone(),
                StreamItem::Gap { .. } => b"<gap>".to_vec(),
            })
            .collect()
    }

    #[test]
    fn in_order_chunks_pass_through() {
        let mut s = DirectionStream::default();
        let mut out = Vec::new();
        s.push(chunk(0, b"GET "), &mut out);
        s.push(chunk(4, b"/ HTTP/1.1"), &mut out);
        assert_eq!(data(&out), b"GET / HTTP/1.1");
    }

    #[test]
    fn out_of_order_chunks_are_reordered() {
        let mut s = DirectionStream::default();
        let mut out = Vec::new();
        s.push(chunk(0, b"ab"), &mut out);
        s.push(chunk(4, b"ef"), &mut out);
        s.push(chunk(2, b"cd"), &mut out);
        assert_eq!(data(&out), b"abcdef");
        assert!(!s.has_pending());
    }

    #[test]
    fn retransmitted_and_overlapping_bytes_are_not_duplicated() {
        let mut s = DirectionStream::default();
        let mut out = Vec::new();
        s.push(chunk(0, b"abcd"), &mut out);
        s.push(chunk(0, b"abcd"), &mut out); // retransmission
        s.push(chunk(2, b"cdef"), &mut out); // overlap
        assert_eq!(data(&out), b"abcdef");
        assert_eq!(s.stats.duplicate_chunks, 1);
        assert_eq!(s.stats.overlap_bytes, 2);
    }

    #[test]
    fn a_hole_that_does_not_fill_becomes_a_gap() {
        let mut s = DirectionStream::default();
        let mut out = Vec::new();
        s.push(chunk(0, b"ab"), &mut out);
        s.push(chunk(10, b"kl"), &mut out);
        assert_eq!(data(&out), b"ab");
        s.skip_to_pending(&mut out);
        assert_eq!(data(&out), b"ab<gap>kl");
        assert_eq!(out[1], StreamItem::Gap { offset: 2, len: 8 });
        assert_eq!((s.stats.gaps, s.stats.gap_bytes), (1, 8));
    }

    #[test]
    fn the_pending_window_is_bounded() {
        let mut s = DirectionStream::default();
        let mut out = Vec::new();
        s.push(chunk(0, b"a"), &mut out);
        for i in 0..=MAX_PENDING as u64 {
            s.push(chunk(10 + i, b"x"), &mut out);
        }
        assert!(s.pending.len() <= MAX_PENDING);
        assert_eq!(s.stats.gaps, 1);
    }
}
