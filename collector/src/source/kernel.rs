//! The thin layer that touches the kernel: load the object, attach the hooks of the cheapest
//! capture variant the kernel accepts (`capture_path.rs`, `attach.rs`), and hand ring buffer
//! records to the caller. Dropping [`KernelSource`] detaches and
//! unloads everything (links, programs, maps), so nothing outlives the collector.

use std::time::Duration;

use anyhow::Context as _;
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
};
use collector_common::{Counter, OFFSETS_SK_COOKIE, OFFSETS_TASK_COMM, OFFSETS_TCP_SEQ};
use tokio::io::unix::AsyncFd;

pub use super::attach::cgroup2_mount;
pub use super::capture_path::CapturePath;
use super::{
    attach::{SocketLayer, attach},
    capture_path::Variant,
    cgroup::TracedCgroup,
    offsets::Offsets,
};

/// The compiled kernel programs, embedded at build time by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

impl SocketLayer {
    /// What the socket-layer variants need before anything is loaded.
    fn probe(offsets: &Offsets, cgroup: Option<&TracedCgroup>) -> anyhow::Result<Self> {
        let cgroup_root = match cgroup {
            Some(c) => c.path.clone(),
            None => cgroup2_mount().context(
                "no cgroup v2 hierarchy is mounted (sock_ops and cgroup_skb attach to it)",
            )?,
        };
        let needed = OFFSETS_TCP_SEQ | OFFSETS_SK_COOKIE;
        if !offsets.has(needed) {
            anyhow::bail!(
                "the socket layer needs tcp_sock and sock_common offsets from the kernel's \
                 BTF: {}",
                offsets.why_missing(needed)
            );
        }
        let btf = Btf::from_sys_fs().context("loading the kernel BTF (CONFIG_DEBUG_INFO_BTF)")?;
        Ok(Self {
            cgroup_root,
            btf,
            has_tcp_sendpage: offsets.has_tcp_sendpage,
        })
    }
}

/// Fills the kernel's table of excluded process names (NUL-padded 16-byte `comm`s).
fn exclude_processes(ebpf: &mut Ebpf, names: &[String]) -> anyhow::Result<()> {
    let mut map: aya::maps::HashMap<_, [u8; 16], u8> = aya::maps::HashMap::try_from(
        ebpf.map_mut("EXCLUDED_COMMS")
            .context("EXCLUDED_COMMS map missing")?,
    )?;
    for name in names {
        map.insert(comm_key(name), 1, 0)
            .with_context(|| format!("excluding process {name:?}"))?;
    }
    Ok(())
}

/// `--cgroup`: the directory goes in the cgroup array the hooks ask about the current task
/// (the kernel keeps its own reference; the descriptor may close after).
fn traced_cgroup(ebpf: &mut Ebpf, cgroup: &TracedCgroup) -> anyhow::Result<()> {
    let dir = std::fs::File::open(&cgroup.path)
        .with_context(|| format!("--cgroup {}", cgroup.path.display()))?;
    let mut map = aya::maps::CgroupArray::try_from(
        ebpf.map_mut("TRACED_CGROUP")
            .context("TRACED_CGROUP map missing")?,
    )?;
    map.set(0, dir, 0).with_context(|| {
        format!(
            "--cgroup {}: setting the traced cgroup",
            cgroup.path.display()
        )
    })
}

/// A process name as the kernel stores it: at most 15 bytes and a NUL.
pub fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub capture_path: CapturePath,
    /// Payload prefix copied per call.
    pub capture_bytes: u32,
    /// Ring buffer size; a power of two, at least one page.
    pub ringbuf_bytes: u32,
    /// Process names whose connections are never traced.
    pub exclude_processes: Vec<String>,
    /// Trace only this cgroup's processes (`--cgroup`); else every process.
    pub cgroup: Option<TracedCgroup>,
}

impl SourceOptions {
    /// What `collector doctor` loads each variant with: a small ring buffer, no exclusions.
    pub fn probe() -> Self {
        Self {
            capture_path: CapturePath::Auto,
            capture_bytes: collector_common::DEFAULT_CAPTURE_BYTES,
            ringbuf_bytes: 64 * 1024,
            exclude_processes: Vec::new(),
            cgroup: None,
        }
    }
}

pub struct KernelSource {
    /// Owns programs, links and maps: dropping it detaches everything.
    pub(super) ebpf: Ebpf,
    /// The variant that runs.
    variant: Variant,
    events: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    shed: aya::maps::Array<MapData, u32>,
    attached: Vec<String>,
}

/// A variant the kernel refused, and why.
#[derive(Debug)]
pub struct Refusal {
    pub variant: Variant,
    pub why: anyhow::Error,
}

impl KernelSource {
    /// Loads and attaches the cheapest variant of `opts.capture_path` the kernel accepts.
    /// Each refused variant is logged with its reason before the next is tried.
    pub fn load(opts: &SourceOptions) -> anyhow::Result<Self> {
        for fs in super::mounts::ensure_kernel_filesystems()? {
            tracing::info!("mounted {fs}");
        }
        let offsets = Offsets::from_kernel();
        if !offsets.has(OFFSETS_TASK_COMM) {
            tracing::warn!(
                "process names will be thread names: {}",
                offsets.why_missing(OFFSETS_TASK_COMM)
            );
        }
        let candidates = opts.capture_path.candidates();
        let mut refused: Vec<Refusal> = Vec::new();
        for (i, &variant) in candidates.iter().enumerate() {
            match Self::try_variant(variant, opts, &offsets) {
                Ok(source) => return Ok(source),
                Err(why) => {
                    if let Some(next) = candidates.get(i + 1) {
                        tracing::warn!(
                            "capture path {variant} unavailable, trying {next}: {}",
                            first_line(&why)
                        );
                        tracing::debug!("{variant}: {why:#}");
                    }
                    refused.push(Refusal { variant, why });
                }
            }
        }
        let reasons: Vec<String> = refused
            .iter()
            .map(|r| format!("{}: {:#}", r.variant, r.why))
            .collect();
        anyhow::bail!(
            "no capture path of --capture-path {:?} loads on this kernel (`collector doctor` \
             explains):\n{}",
            opts.capture_path,
            reasons.join("\n")
        )
    }

    /// Loads and attaches exactly `variant`; dropping the result detaches it again. What
    /// `collector doctor` uses to predict, by loading, which variant would run.
    /// Process names come from the main thread (task->group_leader->comm) where `offsets`
    /// has the task group; else the kernel side uses the current thread's name.
    pub fn try_variant(
        variant: Variant,
        opts: &SourceOptions,
        offsets: &Offsets,
    ) -> anyhow::Result<Self> {
        let socket = if variant.is_socket_layer() {
            Some(SocketLayer::probe(offsets, opts.cgroup.as_ref())?)
        } else {
            None
        };
        let self_tgid = std::process::id();
        // Ring buffer wakeups only when a quarter full: the reader drains on its timer.
        let wakeup_bytes = u64::from(opts.ringbuf_bytes / 4);
        let cgroup_set = u32::from(opts.cgroup.is_some());
        let mut ebpf = EbpfLoader::new()
            .override_global("CAPTURE_BYTES", &opts.capture_bytes, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("SELF_TGID", &self_tgid, true)
            .override_global("TRACED_CGROUP_SET", &cgroup_set, true)
            .override_global("OFFSETS", &offsets.values, true)
            .map_max_entries("EVENTS", opts.ringbuf_bytes)
            .load(EBPF_OBJECT)
            .context(
                "creating the eBPF maps failed: the kernel needs BPF ring buffers (5.8+) and \
                 the collector needs CAP_BPF and CAP_PERFMON (or root)",
            )?;
        exclude_processes(&mut ebpf, &opts.exclude_processes)?;
        if let Some(c) = &opts.cgroup {
            traced_cgroup(&mut ebpf, c)?;
        }
        let mut attached = Vec::new();
        attach(&mut ebpf, variant, socket.as_ref(), &mut attached)?;

        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        // SAFETY: the RingBuf owns its map fd and keeps it open while the AsyncFd owns it.
        let events = unsafe { AsyncFd::register(events) }.context("polling the ring buffer")?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        let shed = aya::maps::Array::try_from(ebpf.take_map("SHED").context("SHED map missing")?)?;
        Ok(Self {
            ebpf,
            variant,
            events,
            counters,
            shed,
            attached,
        })
    }

    /// The variant that runs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The hooks attached, for the start-up log.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Waits until the kernel signals a full-ish ring buffer or `max_wait` passes. Records are
    /// submitted without wakeups, so the timer is the usual way in.
    pub async fn wait(&mut self, max_wait: Duration) {
        tokio::select! {
            guard = self.events.readable_mut() => {
                if let Ok(mut guard) = guard {
                    guard.clear_ready();
                }
            }
            () = tokio::time::sleep(max_wait) => {}
        }
    }

    /// Hands every record now in the ring buffer to `on_record`; returns how many.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) -> usize {
        let ring = self.events.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            on_record(&item);
            n += 1;
        }
        n
    }

    /// Kernel-side counters, summed over CPUs.
    /// While set, the kernel counts traced connections' data instead of copying it.
    pub fn set_shedding(&mut self, on: bool) -> anyhow::Result<()> {
        self.shed
            .set(0, u32::from(on), 0)
            .context("writing the SHED switch")
    }

    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        Counter::ALL
            .iter()
            .map(|c| {
                let total = self
                    .counters
                    .get(&(*c as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (c.name(), total)
            })
            .collect()
    }
}

/// The first line of an error chain's message (the verifier log follows on later lines).
pub fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}
