//! A connection's first data packet when it met the listener rather than the connection's
//! own socket: the packet that completes the handshake (its last ACK was dropped because the
//! accept queue was full, or lost) is filtered on the listener before the kernel makes the
//! connection's socket, so it carries no connection cookie. It is held here, named by the
//! sender's port and its sequence number, until sock_ops opens the connection whose peer
//! port and first received sequence number match.

use std::collections::HashMap;

use super::PacketRecord;

/// Packets held at once; beyond, the oldest goes (counted by the caller).
const MAX_HELD: usize = 1024;
/// The connection's open follows its packet within the same softirq; a packet still held
/// after this long belongs to a connection the accept queue dropped again (its retransmit
/// replaces it) or one not traced.
const MAX_AGE_NS: u64 = 1_000_000_000;

#[derive(Default)]
pub struct ListenerPackets {
    /// By (sender's port, sequence number of the first byte).
    held: HashMap<(u16, u32), PacketRecord>,
}

impl ListenerPackets {
    /// Holds the packet; returns how many older packets were let go to stay bounded.
    pub fn hold(&mut self, port: u16, p: PacketRecord) -> u64 {
        self.held.insert((port, p.seq), p);
        if self.held.len() <= MAX_HELD {
            return 0;
        }
        // Only when full: the scan is bounded by MAX_HELD.
        let oldest = self
            .held
            .iter()
            .min_by_key(|(_, p)| p.ts_ns)
            .map(|(k, _)| *k);
        oldest.and_then(|k| self.held.remove(&k)).map_or(0, |_| 1)
    }

    /// The packet that opened the connection from `port` whose first byte is `seq`.
    pub fn take(&mut self, port: u16, seq: u32) -> Option<PacketRecord> {
        self.held.remove(&(port, seq))
    }

    /// Lets go of packets older than the age bound; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> u64 {
        let before = self.held.len();
        self.held
            .retain(|_, p| now_ns.saturating_sub(p.ts_ns) < MAX_AGE_NS);
        (before - self.held.len()) as u64
    }
}
