//! Which processes send their own SDK segments. A document's UDP source tells: on this host's
//! loopback, the process owning the source port (from /proc/net/udp and the processes' fds);
//! from a pod, the pod owning the source IP. Their eBPF segments are then dropped — the SDK's
//! own segment wins — while uninstrumented services around them still join the SDK's trace
//! through the trace header it propagates.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    enrich::{pods::PodIndex, sdk_senders::Sender},
    trace::process::proc_root,
};

/// Resolves datagram sources to senders, caching answers (and the absence of one, briefly).
pub struct SenderResolver {
    pods: Arc<Mutex<PodIndex>>,
    cache: HashMap<SocketAddr, (Option<Sender>, Instant)>,
}

const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Sources remembered at once; beyond, the cache starts over.
const MAX_ENTRIES: usize = 4096;

impl SenderResolver {
    pub fn new(pods: Arc<Mutex<PodIndex>>) -> Self {
        Self {
            pods,
            cache: HashMap::new(),
        }
    }

    pub fn resolve(&mut self, src: SocketAddr, now: Instant) -> Option<Sender> {
        if let Some((found, at)) = self.cache.get(&src)
            && (found.is_some() || now.duration_since(*at) < NEGATIVE_TTL)
        {
            return found.clone();
        }
        let found = if src.ip().is_loopback() {
            udp_socket_owner(src).map(Sender::Pid)
        } else {
            let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            pods.find_by_ip(&src.ip().to_string())
                .map(|p| Sender::Pod(p.uid.clone()))
        };
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(src, (found.clone(), now));
        found
    }
}

/// The process owning the UDP socket bound to `src` on this host: its inode from
/// /proc/net/udp(6), then the process holding `socket:[inode]`.
fn udp_socket_owner(src: SocketAddr) -> Option<u32> {
    let table = match src.ip() {
        IpAddr::V4(_) => "udp",
        IpAddr::V6(_) => "udp6",
    };
    // Our own network namespace's table: the one the datagram arrived in.
    let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).ok()?;
    let inode = socket_inode(&text, src.port())?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir(proc_root()).ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the socket whose local port is `port`, from /proc/net/udp text.
pub fn socket_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let (_, p) = local.rsplit_once(':')?;
        (u16::from_str_radix(p, 16).ok()? == port)
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inode_of_a_local_port_is_read_from_proc_net_udp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                      1: 0100007F:A2B4 0100007F:07D0 01 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 0\n\
                      2: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0\n";
        assert_eq!(socket_inode(table, 0xA2B4), Some(123_456));
        assert_eq!(socket_inode(table, 68), Some(777));
        assert_eq!(socket_inode(table, 9), None);
    }

    #[test]
    fn this_process_owns_its_own_udp_socket() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        assert_eq!(udp_socket_owner(addr), Some(std::process::id()));
    }
}
