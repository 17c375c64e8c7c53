//! A connection's first data packet when it met the listener rather than the connection's
//! own socket: the packet that completes the handshake (its last ACK was dropped because the
//! accept queue was full, or lost) is filtered on the listener before the kernel makes the
//! connection's socket, so it carries no connection cookie. It is held here, named by the
//! sender's port and its sequence number, until sock_ops opens the connection whose peer
//! port and first received sequence number match.

use std::collections::{HashMap, VecDeque};

use super::PacketRecord;

/// Packets held at once; beyond, the oldest goes (counted by the caller).
const MAX_HELD: usize = 1024;
/// The connection's open follows its packet within the same softirq; a packet still held
/// after this long belongs to a connection the accept queue dropped again (its retransmit
/// replaces it) or one not traced.
const MAX_AGE_NS: u64 = 1_000_000_000;

type Key = (u16, u32);

#[derive(Default)]
pub struct ListenerPackets {
    held: HashMap<Key, PacketRecord>,
    order: VecDeque<(Key, u64)>,
}

impl ListenerPackets {
    /// Holds the packet; returns how many older packets were let go to stay bounded.
    pub fn hold(&mut self, port: u16, p: PacketRecord) -> u64 {
        let key = (port, p.seq);
        self.order.push_back((key, p.ts_ns));
        self.held.insert(key, p);
        let mut dropped = 0;
        // `order` also keeps keys of packets already taken: bounded too.
        while self.held.len() > MAX_HELD || self.order.len() > 2 * MAX_HELD {
            dropped += u64::from(self.pop_oldest());
        }
        dropped
    }

    /// The packet that opened the connection from `port` whose first byte is `seq`.
    pub fn take(&mut self, port: u16, seq: u32) -> Option<PacketRecord> {
        self.held.remove(&(port, seq))
    }

    /// Lets go of packets older than the age bound; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> u64 {
        let mut expired = 0;
        while let Some(&(_, ts)) = self.order.front() {
            if now_ns.saturating_sub(ts) < MAX_AGE_NS {
                break;
            }
            expired += u64::from(self.pop_oldest());
        }
        expired
    }

    /// Removes the oldest entry of `order`; true when it still named a held packet (a
    /// retransmit re-queues its key, and a taken packet leaves a stale one behind).
    fn pop_oldest(&mut self) -> bool {
        let Some((key, ts)) = self.order.pop_front() else {
            return false;
        };
        match self.held.get(&key) {
            Some(p) if p.ts_ns == ts => {
                self.held.remove(&key);
                true
            }
            _ => false,
        }
    }
}
