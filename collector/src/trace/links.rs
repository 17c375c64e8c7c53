//! Same-node links: both ends of a TCP connection traced on this node, found by what the two
//! sockets agree on. That is the connection's initial sequence numbers ([`Isns`]): Service
//! NAT (kube-proxy's DNAT of a ClusterIP to a pod IP) rewrites the client's view of the
//! address and port, so the two ends' 4-tuples differ, but never the sequence numbers. The
//! 4-tuple is the key only when the kernel could not read them. With the request's index on
//! the connection, a key names one exchange.
//!
//! A pair of sequence numbers seen on two connections of the same role while both are
//! remembered (numbers that wrapped into a pair still in use, or a collision) links nothing:
//! a wrong parent is worse than none. A 4-tuple, reused by every new connection from the same
//! port, goes to the latest connection, as before sequence numbers were read.

use std::{collections::HashMap, net::SocketAddr};

use crate::{http::ConnMeta, source::event::Isns, source::event::Role};

/// (connection id, request index on it): a request of the trace stage.
pub type Key = (u64, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ConnKey {
    Isns(Isns),
    /// (client address, server address), as the client's socket and the server's see them.
    Tuple(SocketAddr, SocketAddr),
}

impl ConnKey {
    fn of(role: Role, conn: &ConnMeta) -> Option<Self> {
        if let Some(isns) = conn.isns {
            return Some(Self::Isns(isns));
        }
        let (local, remote) = (conn.local?, conn.remote?);
        match role {
            Role::Client => Some(Self::Tuple(local, remote)),
            Role::Server => Some(Self::Tuple(remote, local)),
            Role::Unknown => None,
        }
    }
}

#[derive(Default)]
struct Ends {
    client: Option<Key>,
    server: Option<Key>,
    /// Two connections of one role claimed this key: it links nothing any more.
    collided: bool,
}

/// What a server's request finds at its link key.
#[derive(Debug, PartialEq, Eq)]
pub enum Caller {
    Found(Key),
    None,
    /// The key was claimed twice (counted once, when it happened).
    Collided,
}

#[derive(Default)]
pub struct Links {
    ends: HashMap<(ConnKey, u64), Ends>,
}

impl Links {
    /// Remembers a request's end of its connection; says whether that made its key collide.
    pub fn insert(&mut self, key: Key, role: Role, conn: &ConnMeta, index: u64) -> bool {
        let Some(k) = ConnKey::of(role, conn) else {
            return false;
        };
        let is_client = match role {
            Role::Client => true,
            Role::Server => false,
            Role::Unknown => return false,
        };
        let ends = self.ends.entry((k, index)).or_default();
        let side = if is_client {
            &mut ends.client
        } else {
            &mut ends.server
        };
        // A 4-tuple is reused by design (a new connection from the same port after the old
        // one closed, whose unfinished request may linger): the latest connection wins there.
        // Two live connections with the same pair of sequence numbers cannot be told apart.
        let collides = matches!(k, ConnKey::Isns(_)) && side.is_some_and(|old| old.0 != key.0);
        *side = Some(key);
        if collides && !ends.collided {
            ends.collided = true;
            return true;
        }
        false
    }

    /// The client request at the other end of a server request's connection.
    pub fn caller(&self, conn: &ConnMeta, index: u64) -> Caller {
        let Some(k) = ConnKey::of(Role::Server, conn) else {
            return Caller::None;
        };
        match self.ends.get(&(k, index)) {
            Some(e) if e.collided => Caller::Collided,
            Some(Ends {
                client: Some(c), ..
            }) => Caller::Found(*c),
            _ => Caller::None,
        }
    }

    /// Forgets a request's end; the key goes with its last end.
    pub fn remove(&mut self, key: Key, role: Role, conn: &ConnMeta, index: u64) {
        let Some(k) = ConnKey::of(role, conn) else {
            return;
        };
        let Some(ends) = self.ends.get_mut(&(k, index)) else {
            return;
        };
        let side = match role {
            Role::Client => &mut ends.client,
            Role::Server => &mut ends.server,
            Role::Unknown => return,
        };
        if *side == Some(key) {
            *side = None;
        }
        if ends.client.is_none() && ends.server.is_none() {
            self.ends.remove(&(k, index));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(local: &str, remote: &str, isns: Option<(u32, u32)>) -> ConnMeta {
        ConnMeta {
            local: Some(local.parse().unwrap()),
            remote: Some(remote.parse().unwrap()),
            isns: isns.map(|(client, server)| Isns { client, server }),
            ..ConnMeta::default()
        }
    }

    #[test]
    fn through_service_nat_the_sequence_numbers_join_what_the_tuples_cannot() {
        let mut links = Links::default();
        // The client's socket sees the ClusterIP; the server's the pod IP.
        let client = meta("10.1.0.5:40000", "10.96.0.10:80", Some((7, 9)));
        let server = meta("10.1.0.7:8080", "10.1.0.5:40000", Some((7, 9)));
        assert!(!links.insert((1, 0), Role::Client, &client, 0));
        assert_eq!(links.caller(&server, 0), Caller::Found((1, 0)));
        assert_eq!(links.caller(&server, 1), Caller::None);
        // Without sequence numbers the tuples do not match through NAT: no link, no guess.
        let mut tuples = Links::default();
        tuples.insert(
            (1, 0),
            Role::Client,
            &meta("10.1.0.5:40000", "10.96.0.10:80", None),
            0,
        );
        let plain_server = meta("10.1.0.7:8080", "10.1.0.5:40000", None);
        assert_eq!(tuples.caller(&plain_server, 0), Caller::None);
        // Without NAT the tuple still joins when the numbers are unknown.
        tuples.insert(
            (2, 0),
            Role::Client,
            &meta("10.1.0.5:40001", "10.1.0.7:8080", None),
            0,
        );
        let direct = meta("10.1.0.7:8080", "10.1.0.5:40001", None);
        assert_eq!(tuples.caller(&direct, 0), Caller::Found((2, 0)));
    }

    #[test]
    fn a_pair_seen_on_two_connections_links_nothing_until_both_are_forgotten() {
        let mut links = Links::default();
        let a = meta("10.1.0.5:40000", "10.96.0.10:80", Some((7, 9)));
        let b = meta("10.1.0.6:40000", "10.96.0.10:80", Some((7, 9)));
        let server = meta("10.1.0.7:8080", "10.1.0.5:40000", Some((7, 9)));
        assert!(!links.insert((1, 0), Role::Client, &a, 0));
        // The same connection's request again (a re-insert) is no collision.
        assert!(!links.insert((1, 0), Role::Client, &a, 0));
        assert!(links.insert((2, 0), Role::Client, &b, 0));
        assert!(!links.insert((3, 0), Role::Client, &b, 0), "counted once");
        assert_eq!(links.caller(&server, 0), Caller::Collided);
        // Two servers on one key collide too.
        let mut servers = Links::default();
        servers.insert((1, 0), Role::Client, &a, 0);
        assert!(!servers.insert((5, 0), Role::Server, &server, 0));
        assert!(servers.insert((6, 0), Role::Server, &server, 0));
        assert_eq!(servers.caller(&server, 0), Caller::Collided);
        // A reused 4-tuple is no collision: the latest connection wins.
        let mut tuples = Links::default();
        let (old, new) = (
            meta("10.1.0.5:40000", "10.1.0.7:8080", None),
            meta("10.1.0.5:40000", "10.1.0.7:8080", None),
        );
        assert!(!tuples.insert((1, 0), Role::Client, &old, 0));
        assert!(!tuples.insert((2, 0), Role::Client, &new, 0));
        let tuple_server = meta("10.1.0.7:8080", "10.1.0.5:40000", None);
        assert_eq!(tuples.caller(&tuple_server, 0), Caller::Found((2, 0)));
        for (k, role, m) in [
            ((1, 0), Role::Client, &a),
            ((2, 0), Role::Client, &b),
            ((3, 0), Role::Client, &b),
        ] {
            links.remove(k, role, m, 0);
        }
        assert!(links.is_empty(), "the key goes with its last end");
        links.insert((4, 0), Role::Client, &a, 0);
        assert_eq!(links.caller(&server, 0), Caller::Found((4, 0)));
    }
}
