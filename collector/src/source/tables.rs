//! The kernel's connection tables seen from userspace: how many entries are live (gauges),
//! and the syscall path's entries of processes that exited without closing their sockets —
//! the kernel closes those fds at exit, not through close(2), so the programs never learn of
//! it — reclaimed.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData};
use collector_common::{ConnState, SockKey, SockState};

use super::{
    event::{ConnRecord, KernelEvent, Role},
    kernel::KernelSource,
};

/// How often the tables are walked: a walk costs one system call per live entry. While
/// processes exit with connections open, every second: each reclaimed connection is memory
/// later stages hold until its close comes.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
const SWEEP_WHILE_RECLAIMING: Duration = Duration::from_secs(1);

/// No walk goes past this many keys: a table the kernel changes under the walk can send
/// `get_next_key` back to its start.
const MAX_WALK: usize = 2 * 65_536;

/// Levels and totals of the sweeps, as `kernel_*` in `/metrics`.
#[derive(Debug, Default)]
pub struct TableStats {
    /// Live entries of the socket-layer table (`SOCKS`) at the last sweep.
    pub live_socks: u64,
    /// Live entries of the syscall path's table (`CONNS`) at the last sweep.
    pub live_conns: u64,
    /// `CONNS` entries of exited processes removed.
    pub conns_reclaimed: u64,
    last: Option<Instant>,
    /// The last sweep reclaimed something: the next comes sooner.
    reclaimed_last: bool,
    /// Set when reclaiming is off: pids in the tables are not ours to look up.
    warned: bool,
}

impl TableStats {
    pub fn pairs(&self) -> [(&'static str, u64); 3] {
        [
            ("kernel_live_socks", self.live_socks),
            ("kernel_live_conns", self.live_conns),
            ("kernel_conns_reclaimed", self.conns_reclaimed),
        ]
    }

    /// Sweeps when [`SWEEP_EVERY`] has passed since the last sweep; returns the close of
    /// each reclaimed connection, stamped `now_ns`, so later stages let go of it too. Their
    /// opens may still wait in the ring buffer: the caller drains it before passing these on.
    pub fn maybe_sweep(
        &mut self,
        source: &mut KernelSource,
        now: Instant,
        now_ns: u64,
    ) -> Vec<KernelEvent> {
        let mut out = Vec::new();
        let every = if self.reclaimed_last {
            SWEEP_WHILE_RECLAIMING
        } else {
            SWEEP_EVERY
        };
        if self.last.is_some_and(|t| now.duration_since(t) < every) {
            return out;
        }
        self.last = Some(now);
        let before = self.conns_reclaimed;
        let reclaim = host_pid_namespace();
        if !reclaim && !self.warned {
            self.warned = true;
            tracing::warn!(
                "not in the host's PID namespace (hostPID): entries of exited processes are \
                 left to the kernel table's LRU eviction"
            );
        }
        let exited: &dyn Fn(u32) -> bool = &process_exited;
        if let Err(e) = source.sweep(self, reclaim.then_some(exited), now_ns, &mut out) {
            tracing::warn!("sweeping the kernel tables: {e:#}");
        }
        self.reclaimed_last = self.conns_reclaimed > before;
        out
    }
}

impl KernelSource {
    /// Counts the live entries of both tables and, given `exited`, removes the `CONNS`
    /// entries of processes it says have exited, closing their connections in `out`.
    fn sweep(
        &mut self,
        stats: &mut TableStats,
        exited: Option<&dyn Fn(u32) -> bool>,
        now_ns: u64,
        out: &mut Vec<KernelEvent>,
    ) -> anyhow::Result<()> {
        let socks: BpfHashMap<&MapData, u64, SockState> =
            BpfHashMap::try_from(self.ebpf.map("SOCKS").context("SOCKS map missing")?)?;
        stats.live_socks = socks.keys().take(MAX_WALK).count() as u64;
        let mut conns: BpfHashMap<&mut MapData, SockKey, ConnState> =
            BpfHashMap::try_from(self.ebpf.map_mut("CONNS").context("CONNS map missing")?)?;
        let keys: Vec<SockKey> = conns.keys().take(MAX_WALK).filter_map(Result::ok).collect();
        stats.live_conns = keys.len() as u64;
        let Some(exited) = exited else {
            return Ok(());
        };
        let mut dead: HashMap<u32, bool> = HashMap::new();
        let gone: Vec<SockKey> = keys
            .into_iter()
            .filter(|k| *dead.entry(k.tgid).or_insert_with(|| exited(k.tgid)))
            .collect();
        for key in &gone {
            // Already gone (closed meanwhile, or evicted) is fine.
            let Ok(state) = conns.get(key, 0) else {
                continue;
            };
            if conns.remove(key).is_ok() {
                stats.conns_reclaimed += 1;
                stats.live_conns -= 1;
                out.push(KernelEvent::ConnClose(reclaimed(key, &state, now_ns)));
            }
        }
        let mut pending: BpfHashMap<&mut MapData, SockKey, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("OPENS_PENDING")
                .context("OPENS_PENDING map missing")?,
        )?;
        for key in &gone {
            // Most have no deferred open.
            let _ = pending.remove(key);
        }
        Ok(())
    }
}

/// The close of a connection whose process exited, as the kernel would have reported it.
fn reclaimed(key: &SockKey, state: &ConnState, now_ns: u64) -> ConnRecord {
    ConnRecord {
        ts_ns: now_ns,
        conn_id: state.conn_id,
        role: Role::from_raw(state.role),
        pid: key.tgid,
        tid: key.tgid,
        comm: String::new(),
        local: None,
        remote: None,
        rx_bytes: state.rx_bytes,
        tx_bytes: state.tx_bytes,
        recv_seq0: 0,
        send_seq0: 0,
    }
}

/// Has the process `tgid` exited? Gone from /proc, or a zombie (its fds are closed already).
fn process_exited(tgid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tgid}/stat")) {
        Ok(stat) => process_state_is_dead(&stat),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The state field of `/proc/<pid>/stat` (after the command name, which may hold spaces and
/// parentheses) says zombie or dead.
fn process_state_is_dead(stat: &str) -> bool {
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// Are the pids the kernel programs record (the initial PID namespace's) the ones /proc shows
/// here? Only then can a pid be looked up. `NSpid` lists one pid per nested namespace.
fn host_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|pids| pids.split_whitespace().count() == 1)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_or_dead_process_has_exited_a_running_one_not() {
        assert!(process_state_is_dead("42 (a) b) Z 1 42 42 0"));
        assert!(process_state_is_dead("42 (x) X 1"));
        assert!(!process_state_is_dead("42 (sleep) S 1 42"));
        assert!(!process_state_is_dead("42 (name with ) Z in it) R 1"));
        assert!(!process_state_is_dead("garbage"));
    }

    #[test]
    fn this_process_is_alive() {
        assert!(!process_exited(std::process::id()));
        assert!(process_exited(u32::MAX - 1));
    }
}
