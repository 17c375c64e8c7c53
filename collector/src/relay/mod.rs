//! The X-Ray daemon's job, for apps that use an X-Ray SDK: segment documents arrive on UDP
//! (`-b/--bind`, default 127.0.0.1:2000) and join the same upload queue as the eBPF segments;
//! sampling requests arrive on TCP (`-t/--bind-tcp`) and are signed and forwarded to X-Ray
//! (`proxy.rs`). A malformed datagram is counted and dropped; the listener never stops.

pub mod datagram;
pub mod proxy;
pub mod senders;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use datagram::{MAX_DATAGRAM, Reject};
use senders::SenderResolver;

use crate::{
    enrich::{SharedMeta, sdk_senders::SdkSenders},
    logging::Throttle,
};

/// A queue that takes SDK documents as they are (the X-Ray exporter's: PutTraceSegments
/// accepts them unchanged). Pushing never waits.
pub trait DocumentQueue: Send + Sync {
    fn push(&self, doc: String);
}

/// Where accepted documents go: an exporter's queue directly, or the main loop (stdout).
#[derive(Clone)]
pub enum Sink {
    Queue(Arc<dyn DocumentQueue>),
    MainLoop(SyncSender<String>),
}

#[derive(Default)]
pub struct RelayStats {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: [AtomicU64; Reject::ALL.len()],
    /// Accepted but the way to the exporter was full.
    pub dropped_full: AtomicU64,
}

impl RelayStats {
    pub fn pairs(&self) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![
            ("udp_datagrams_received".to_owned(), g(&self.received)),
            ("udp_datagrams_accepted".to_owned(), g(&self.accepted)),
            ("udp_dropped_full".to_owned(), g(&self.dropped_full)),
        ];
        for (r, n) in Reject::ALL.iter().zip(&self.rejected) {
            v.push((format!("udp_rejected_{}", r.name()), g(n)));
        }
        v
    }
}

/// Binds the UDP socket now (a bad or taken address fails start-up) and serves in the
/// background.
pub async fn start_udp(
    bind: SocketAddr,
    sink: Sink,
    shared: SharedMeta,
    senders: SdkSenders,
) -> anyhow::Result<(SocketAddr, Arc<RelayStats>)> {
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("--bind {bind}: cannot listen for X-Ray SDK segments: {e}"))?;
    let local = socket.local_addr()?;
    receive_buffer(&socket, RECEIVE_BUFFER_BYTES);
    let stats = Arc::new(RelayStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut resolver = SenderResolver::new(shared.pods.clone());
        let mut throttle = Throttle::new(Duration::from_secs(10));
        loop {
            let Ok((n, src)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            s.received.fetch_add(1, Ordering::Relaxed);
            match datagram::parse(&buf[..n]) {
                Ok(doc) => {
                    s.accepted.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if let Some(sender) = resolver.resolve(src, now) {
                        senders.mark(sender, now);
                    }
                    match &sink {
                        Sink::Queue(q) => q.push(doc.body.to_owned()),
                        Sink::MainLoop(tx) => match tx.try_send(doc.body.to_owned()) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                                s.dropped_full.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                    }
                }
                Err(reason) => {
                    s.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
                    if let Some(held_back) = throttle.allow(Instant::now()) {
                        tracing::warn!(
                            from = %src,
                            bytes = n,
                            held_back,
                            "dropped a datagram on the X-Ray port: {}",
                            reason.name().replace('_', " ")
                        );
                    }
                }
            }
        }
    });
    Ok((local, stats))
}

/// Datagrams waiting in the kernel for the listener: bursts of SDK segments must not
/// overflow the default (~200 kB, a few hundred datagrams).
const RECEIVE_BUFFER_BYTES: i32 = 16 << 20;

/// SO_RCVBUFFORCE (privileged: beyond net.core.rmem_max), else SO_RCVBUF.
fn receive_buffer(socket: &tokio::net::UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd as _;
    let fd = socket.as_raw_fd();
    let set = |opt| {
        // SAFETY: setsockopt on our own socket with a pointer to a live i32.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const bytes).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 {
        set(libc::SO_RCVBUF);
    }
}

/// Addresses from `AWS_XRAY_DAEMON_ADDRESS` (as the SDKs read it): `host:port` for both, or
/// `udp:host:port tcp:host:port`.
pub fn daemon_address(value: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let parse = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|_| format!("AWS_XRAY_DAEMON_ADDRESS: {s:?} is not ip:port"))
    };
    let parts: Vec<&str> = value.split_whitespace().collect();
    match parts.as_slice() {
        [one] => {
            let a = parse(one)?;
            Ok((a, a))
        }
        [a, b] => {
            let mut udp = None;
            let mut tcp = None;
            for p in [a, b] {
                if let Some(v) = p.strip_prefix("udp:") {
                    udp = Some(parse(v)?);
                } else if let Some(v) = p.strip_prefix("tcp:") {
                    tcp = Some(parse(v)?);
                }
            }
            match (udp, tcp) {
                (Some(u), Some(t)) => Ok((u, t)),
                _ => Err(format!(
                    "AWS_XRAY_DAEMON_ADDRESS: {value:?} is not `udp:ip:port tcp:ip:port`"
                )),
            }
        }
        _ => Err(format!("AWS_XRAY_DAEMON_ADDRESS: {value:?} is not ip:port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_address_variable_is_understood_as_the_sdks_read_it() {
        let a: SocketAddr = "10.0.0.5:2000".parse().unwrap();
        assert_eq!(daemon_address("10.0.0.5:2000"), Ok((a, a)));
        assert_eq!(
            daemon_address("tcp:127.0.0.1:3000 udp:127.0.0.2:4000"),
            Ok((
                "127.0.0.2:4000".parse().unwrap(),
                "127.0.0.1:3000".parse().unwrap()
            ))
        );
        assert!(daemon_address("localhost").is_err());
        assert!(daemon_address("udp:1.2.3.4:1 foo").is_err());
    }
}
