//! The thin layer that touches the kernel: load the object, attach the hooks of one capture
//! path, and hand ring buffer records to the caller. Dropping [`KernelSource`] detaches and
//! unloads everything (links, programs, maps), so nothing outlives the collector.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use collector_common::Counter;
use tokio::io::unix::AsyncFd;

/// The compiled kernel programs, embedded at build time by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

/// Which kernel hooks produce the events. Both emit the same records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CapturePath {
    /// The best path this kernel offers.
    Auto,
    /// Classic syscall tracepoints (accept/connect/read/write/...): works on any kernel with
    /// CONFIG_FTRACE_SYSCALLS, but every read/write on the node pays the tracepoint dispatch.
    Syscall,
}

/// One classic tracepoint and the program attached to it.
struct Hook {
    program: &'static str,
    category: &'static str,
    name: &'static str,
}

const fn syscall_hook(program: &'static str, name: &'static str) -> Hook {
    Hook {
        program,
        category: "syscalls",
        name,
    }
}

const SYSCALL_HOOKS: &[Hook] = &[
    syscall_hook("syscall_enter_accept4", "sys_enter_accept4"),
    syscall_hook("syscall_exit_accept4", "sys_exit_accept4"),
    syscall_hook("syscall_enter_accept", "sys_enter_accept"),
    syscall_hook("syscall_exit_accept", "sys_exit_accept"),
    syscall_hook("syscall_enter_connect", "sys_enter_connect"),
    syscall_hook("syscall_exit_connect", "sys_exit_connect"),
    syscall_hook("syscall_enter_read", "sys_enter_read"),
    syscall_hook("syscall_exit_read", "sys_exit_read"),
    syscall_hook("syscall_enter_recvfrom", "sys_enter_recvfrom"),
    syscall_hook("syscall_exit_recvfrom", "sys_exit_recvfrom"),
    syscall_hook("syscall_enter_write", "sys_enter_write"),
    syscall_hook("syscall_exit_write", "sys_exit_write"),
    syscall_hook("syscall_enter_sendto", "sys_enter_sendto"),
    syscall_hook("syscall_exit_sendto", "sys_exit_sendto"),
    syscall_hook("syscall_enter_close", "sys_enter_close"),
];

#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub capture_path: CapturePath,
    /// Payload prefix copied per call.
    pub capture_bytes: u32,
    /// Ring buffer size; a power of two, at least one page.
    pub ringbuf_bytes: u32,
}

pub struct KernelSource {
    /// Owns programs, links and maps: dropping it detaches everything.
    _ebpf: Ebpf,
    events: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    attached: Vec<String>,
}

impl KernelSource {
    /// Loads the programs and attaches the hooks of the chosen capture path.
    pub fn load(opts: &SourceOptions) -> anyhow::Result<Self> {
        for fs in super::mounts::ensure_kernel_filesystems()? {
            tracing::info!("mounted {fs}");
        }
        let self_tgid = std::process::id();
        // Ring buffer wakeups only when a quarter full: the reader drains on its timer.
        let wakeup_bytes = u64::from(opts.ringbuf_bytes / 4);
        let mut ebpf = EbpfLoader::new()
            .override_global("CAPTURE_BYTES", &opts.capture_bytes, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("SELF_TGID", &self_tgid, true)
            .map_max_entries("EVENTS", opts.ringbuf_bytes)
            .load(EBPF_OBJECT)
            .context(
                "creating the eBPF maps failed: the kernel needs BPF ring buffers (5.8+) and \
                 the collector needs CAP_BPF and CAP_PERFMON (or root)",
            )?;

        let mut attached = Vec::new();
        match opts.capture_path {
            CapturePath::Auto | CapturePath::Syscall => {
                for hook in SYSCALL_HOOKS {
                    attach_tracepoint(&mut ebpf, hook)?;
                    attached.push(format!("tracepoint/{}/{}", hook.category, hook.name));
                }
            }
        }

        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        // SAFETY: the RingBuf owns its map fd and keeps it open while the AsyncFd owns it.
        let events = unsafe { AsyncFd::register(events) }.context("polling the ring buffer")?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        Ok(Self {
            _ebpf: ebpf,
            events,
            counters,
            attached,
        })
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

fn attach_tracepoint(ebpf: &mut Ebpf, hook: &Hook) -> anyhow::Result<()> {
    let Hook {
        program,
        category,
        name,
    } = hook;
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} is missing from the eBPF object"))?
        .try_into()?;
    prog.load()
        .map_err(|e| explain_load_error(program, "tracepoint", e))?;
    prog.attach(category, name).map_err(|e| {
        let hint = if std::path::Path::new("/sys/kernel/tracing/events")
            .join(category)
            .is_dir()
            || std::path::Path::new("/sys/kernel/debug/tracing/events")
                .join(category)
                .is_dir()
        {
            format!("the tracepoint {category}/{name} exists but attaching failed")
        } else {
            format!(
                "this kernel has no {category} tracepoints (syscall tracepoints need \
                 CONFIG_FTRACE_SYSCALLS)"
            )
        };
        anyhow!("attaching {program} to tracepoint {category}/{name}: {e}: {hint}")
    })?;
    Ok(())
}

/// Names the missing kernel feature and keeps the verifier log when a load fails.
fn explain_load_error(program: &str, kind: &str, err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let feature = match io_error.raw_os_error() {
                Some(libc::EPERM) => {
                    "permission denied: needs root or CAP_BPF + CAP_PERFMON, and a kernel that \
                     allows this program type (lockdown or a hardened config may refuse it)"
                }
                Some(libc::EINVAL) => {
                    "the kernel does not support this program type or one of its helpers"
                }
                Some(libc::E2BIG) | Some(libc::ENOSPC) => {
                    "the program is too large for this kernel"
                }
                Some(libc::EACCES) => "the verifier rejected the program",
                _ => "the kernel refused the program",
            };
            anyhow!(
                "loading {kind} program {program} failed: {io_error}: {feature}\n\
                 verifier log:\n{verifier_log}"
            )
        }
        other => anyhow!("loading {kind} program {program} failed: {other}"),
    }
}
