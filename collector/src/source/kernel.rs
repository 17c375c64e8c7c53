//! The thin layer that touches the kernel: load the object, attach the hooks of one capture
//! path, and hand ring buffer records to the caller. Dropping [`KernelSource`] detaches and
//! unloads everything (links, programs, maps), so nothing outlives the collector.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SockOps,
        TracePoint,
    },
};
use collector_common::Counter;
use tokio::io::unix::AsyncFd;

/// The compiled kernel programs, embedded at build time by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

/// Which kernel hooks produce the events. Both give later stages the same events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CapturePath {
    /// The socket layer where the kernel has it, else syscalls.
    Auto,
    /// sock_ops + cgroup_skb on the cgroup v2 root + tp_btf sock_{recv,send}_length (Linux
    /// 6.3+, BTF, cgroup v2): costs work that is not network I/O nothing.
    Socket,
    /// Classic syscall tracepoints (accept/connect/read/write/...): works on any kernel with
    /// CONFIG_FTRACE_SYSCALLS, but every read/write on the node pays the tracepoint dispatch.
    Syscall,
    /// No capture at all: only the X-Ray SDK relay and the exporters run.
    Off,
}

/// What the socket-layer path needs from this machine, found before loading.
struct SocketLayer {
    cgroup_root: std::path::PathBuf,
    btf: Btf,
    copied_seq_off: u32,
    write_seq_off: u32,
}

impl SocketLayer {
    fn probe() -> anyhow::Result<Self> {
        let cgroup_root = cgroup2_mount()
            .context("no cgroup v2 hierarchy is mounted (sock_ops and cgroup_skb attach to it)")?;
        let events = [
            "/sys/kernel/tracing/events/sock",
            "/sys/kernel/debug/tracing/events/sock",
        ];
        if !events
            .iter()
            .any(|d| std::path::Path::new(d).join("sock_recv_length").is_dir())
        {
            anyhow::bail!("the kernel has no sock_recv_length tracepoint (added in Linux 6.3)");
        }
        let ours = super::btf::Btf::from_sys_fs()?;
        let copied_seq_off = ours.member_offset("tcp_sock", "copied_seq")?;
        let write_seq_off = ours.member_offset("tcp_sock", "write_seq")?;
        let btf = Btf::from_sys_fs().context("loading the kernel BTF for tp_btf programs")?;
        Ok(Self {
            cgroup_root,
            btf,
            copied_seq_off,
            write_seq_off,
        })
    }
}

/// Offsets of `task_struct.group_leader` and `task_struct.comm`, from the kernel's BTF.
fn task_offsets() -> anyhow::Result<(u32, u32)> {
    let btf = super::btf::Btf::from_sys_fs()?;
    Ok((
        btf.member_offset("task_struct", "group_leader")?,
        btf.member_offset("task_struct", "comm")?,
    ))
}

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo. The last one wins:
/// in the DaemonSet the host's hierarchy is mounted over the container's own (namespaced)
/// /sys/fs/cgroup, and hooks must attach to the host's root to see every pod.
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(Into::into))?
    })
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

/// A process name as the kernel stores it: at most 15 bytes and a NUL.
pub fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// Socket-layer path: sock_ops first (connections), then packets, then calls, so no data
/// arrives for a connection that was not registered.
fn attach_socket_layer(
    ebpf: &mut Ebpf,
    s: &SocketLayer,
    attached: &mut Vec<String>,
) -> anyhow::Result<()> {
    let root = std::fs::File::open(&s.cgroup_root)
        .with_context(|| format!("opening the cgroup v2 root {}", s.cgroup_root.display()))?;
    let at = s.cgroup_root.display();
    // Multi-program mode, so CNI plugins and systemd keep their programs on the same cgroup.
    // On 5.7+ aya attaches through bpf_link_create, where cgroup links are always
    // multi-attach and the kernel refuses any flag; older kernels take BPF_F_ALLOW_MULTI.
    let mode = match aya::util::KernelVersion::current() {
        Ok(v) if v >= aya::util::KernelVersion::new(5, 7, 0) => CgroupAttachMode::Single,
        _ => CgroupAttachMode::AllowMultiple,
    };

    let prog: &mut SockOps = program(ebpf, "sock_ops_conn")?;
    prog.load()
        .map_err(|e| explain_load_error("sock_ops_conn", "sock_ops", e))?;
    prog.attach(&root, mode)
        .with_context(|| format!("attaching sock_ops to {at}"))?;
    attached.push(format!("sock_ops@{at}"));

    for (name, kind) in [
        ("skb_ingress", CgroupSkbAttachType::Ingress),
        ("skb_egress", CgroupSkbAttachType::Egress),
    ] {
        let prog: &mut CgroupSkb = program(ebpf, name)?;
        prog.load()
            .map_err(|e| explain_load_error(name, "cgroup_skb", e))?;
        prog.attach(&root, kind, mode)
            .with_context(|| format!("attaching {name} to {at}"))?;
        attached.push(format!("cgroup_skb/{name}@{at}"));
    }

    for (name, tp) in [
        ("sock_recv_call", "sock_recv_length"),
        ("sock_send_call", "sock_send_length"),
    ] {
        let prog: &mut BtfTracePoint = program(ebpf, name)?;
        prog.load(tp, &s.btf)
            .map_err(|e| explain_load_error(name, "tp_btf", e))?;
        prog.attach()
            .with_context(|| format!("attaching {name} to tp_btf/{tp}"))?;
        attached.push(format!("tp_btf/{tp}"));
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} is missing from the eBPF object"))?;
    Ok(prog.try_into()?)
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
    syscall_hook("syscall_enter_readv", "sys_enter_readv"),
    syscall_hook("syscall_exit_readv", "sys_exit_readv"),
    syscall_hook("syscall_enter_recvmsg", "sys_enter_recvmsg"),
    syscall_hook("syscall_exit_recvmsg", "sys_exit_recvmsg"),
    syscall_hook("syscall_enter_write", "sys_enter_write"),
    syscall_hook("syscall_exit_write", "sys_exit_write"),
    syscall_hook("syscall_enter_sendto", "sys_enter_sendto"),
    syscall_hook("syscall_exit_sendto", "sys_exit_sendto"),
    syscall_hook("syscall_enter_writev", "sys_enter_writev"),
    syscall_hook("syscall_exit_writev", "sys_exit_writev"),
    syscall_hook("syscall_enter_sendmsg", "sys_enter_sendmsg"),
    syscall_hook("syscall_exit_sendmsg", "sys_exit_sendmsg"),
    syscall_hook("syscall_enter_sendfile64", "sys_enter_sendfile64"),
    syscall_hook("syscall_exit_sendfile64", "sys_exit_sendfile64"),
    syscall_hook("syscall_enter_close", "sys_enter_close"),
];

#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub capture_path: CapturePath,
    /// Payload prefix copied per call.
    pub capture_bytes: u32,
    /// Ring buffer size; a power of two, at least one page.
    pub ringbuf_bytes: u32,
    /// Process names whose connections are never traced.
    pub exclude_processes: Vec<String>,
}

pub struct KernelSource {
    /// Owns programs, links and maps: dropping it detaches everything.
    _ebpf: Ebpf,
    /// The path that runs (never `Auto`).
    path: CapturePath,
    events: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    shed: aya::maps::Array<MapData, u32>,
    attached: Vec<String>,
}

impl KernelSource {
    /// Loads the programs and attaches the hooks of the chosen capture path.
    pub fn load(opts: &SourceOptions) -> anyhow::Result<Self> {
        for fs in super::mounts::ensure_kernel_filesystems()? {
            tracing::info!("mounted {fs}");
        }
        let socket_layer = match opts.capture_path {
            CapturePath::Syscall => None,
            CapturePath::Off => anyhow::bail!("capture is off: nothing to load"),
            CapturePath::Socket => {
                Some(SocketLayer::probe().context("the socket-layer path is unavailable")?)
            }
            CapturePath::Auto => match SocketLayer::probe() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        "socket-layer capture unavailable ({e:#}); using syscall tracepoints"
                    );
                    None
                }
            },
        };
        let (copied_seq_off, write_seq_off) = socket_layer
            .as_ref()
            .map_or((0, 0), |s| (s.copied_seq_off, s.write_seq_off));
        // Process names come from the main thread (task->group_leader->comm); without BTF the
        // kernel side falls back to the current thread's name.
        let (leader_off, comm_off) = match task_offsets() {
            Ok(offsets) => offsets,
            Err(e) => {
                tracing::warn!("process names will be thread names: {e:#}");
                (0, 0)
            }
        };
        let self_tgid = std::process::id();
        // Ring buffer wakeups only when a quarter full: the reader drains on its timer.
        let wakeup_bytes = u64::from(opts.ringbuf_bytes / 4);
        let mut ebpf = EbpfLoader::new()
            .override_global("CAPTURE_BYTES", &opts.capture_bytes, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("SELF_TGID", &self_tgid, true)
            .override_global("TCP_COPIED_SEQ_OFF", &copied_seq_off, true)
            .override_global("TCP_WRITE_SEQ_OFF", &write_seq_off, true)
            .override_global("TASK_GROUP_LEADER_OFF", &leader_off, true)
            .override_global("TASK_COMM_OFF", &comm_off, true)
            .map_max_entries("EVENTS", opts.ringbuf_bytes)
            .load(EBPF_OBJECT)
            .context(
                "creating the eBPF maps failed: the kernel needs BPF ring buffers (5.8+) and \
                 the collector needs CAP_BPF and CAP_PERFMON (or root)",
            )?;

        exclude_processes(&mut ebpf, &opts.exclude_processes)?;
        let mut attached = Vec::new();
        let path = match socket_layer {
            Some(s) => {
                attach_socket_layer(&mut ebpf, &s, &mut attached)?;
                CapturePath::Socket
            }
            None => {
                for hook in SYSCALL_HOOKS {
                    attach_tracepoint(&mut ebpf, hook)?;
                    attached.push(format!("tracepoint/{}/{}", hook.category, hook.name));
                }
                CapturePath::Syscall
            }
        };

        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        // SAFETY: the RingBuf owns its map fd and keeps it open while the AsyncFd owns it.
        let events = unsafe { AsyncFd::register(events) }.context("polling the ring buffer")?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        let shed = aya::maps::Array::try_from(ebpf.take_map("SHED").context("SHED map missing")?)?;
        Ok(Self {
            _ebpf: ebpf,
            path,
            events,
            counters,
            shed,
            attached,
        })
    }

    /// The capture path that runs: `Socket` or `Syscall`.
    pub fn path(&self) -> CapturePath {
        self.path
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

fn attach_tracepoint(ebpf: &mut Ebpf, hook: &Hook) -> anyhow::Result<()> {
    let Hook {
        program,
        category,
        name,
    } = hook;
    let prog: &mut TracePoint = self::program(ebpf, program)?;
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
