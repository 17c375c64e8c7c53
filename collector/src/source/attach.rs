//! Attaching one capture variant's hooks to a loaded object. Every step that the kernel may
//! refuse returns an error naming the hook and the feature, so a refused variant can be
//! skipped with its reason and the next one tried.

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, FExit, KProbe,
        ProgramError, SockOps, TracePoint,
    },
};

use super::capture_path::Variant;

/// What the socket-layer variants need from this machine, found before loading.
pub struct SocketLayer {
    pub cgroup_root: std::path::PathBuf,
    /// The kernel's BTF, for tp_btf and fentry/fexit programs (aya resolves their targets).
    pub btf: Btf,
    /// Functions the kernel has (sendfile goes through `tcp_sendpage` before 6.5 only).
    pub has_tcp_sendpage: bool,
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

/// Attaches `variant`'s hooks; `attached` names each one as it is attached.
pub fn attach(
    ebpf: &mut Ebpf,
    variant: Variant,
    socket: Option<&SocketLayer>,
    attached: &mut Vec<String>,
) -> anyhow::Result<()> {
    match (variant, socket) {
        (Variant::Syscall, _) => {
            for hook in SYSCALL_HOOKS {
                attach_tracepoint(ebpf, hook)?;
                attached.push(format!("tracepoint/syscalls/{}", hook.1));
            }
            Ok(())
        }
        (_, Some(s)) => {
            attach_socket_layer(ebpf, s, attached)?;
            attach_calls(ebpf, variant, s, attached)
        }
        (_, None) => Err(anyhow!("{variant}: the socket layer was not probed")),
    }
}

/// sock_ops first (connections; after the connect-time marks), then packets, then calls, so
/// no data arrives for a connection that was not registered.
fn attach_socket_layer(
    ebpf: &mut Ebpf,
    s: &SocketLayer,
    attached: &mut Vec<String>,
) -> anyhow::Result<()> {
    btf_tracepoint(
        ebpf,
        "sock_connecting",
        "inet_sock_set_state",
        &s.btf,
        attached,
    )?;
    let root = std::fs::File::open(&s.cgroup_root).with_context(|| {
        format!(
            "opening the cgroup v2 directory {} (the cgroup programs attach there)",
            s.cgroup_root.display()
        )
    })?;
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
    Ok(())
}

/// The hooks that see each recv and send call, as `variant` takes them.
fn attach_calls(
    ebpf: &mut Ebpf,
    variant: Variant,
    s: &SocketLayer,
    attached: &mut Vec<String>,
) -> anyhow::Result<()> {
    match variant {
        Variant::SocketTracepoint => {
            for (name, tp) in [
                ("sock_recv_call", "sock_recv_length"),
                ("sock_send_call", "sock_send_length"),
            ] {
                btf_tracepoint(ebpf, name, tp, &s.btf, attached)?;
            }
        }
        Variant::SocketFentry => {
            let prog: &mut FEntry = program(ebpf, "tcp_recv_fentry")?;
            prog.load("tcp_cleanup_rbuf", &s.btf)
                .map_err(|e| explain_load_error("tcp_recv_fentry", "fentry", e))?;
            prog.attach().context("attaching fentry/tcp_cleanup_rbuf")?;
            attached.push("fentry/tcp_cleanup_rbuf".into());
            let mut sends = vec![("tcp_send_fexit", "tcp_sendmsg")];
            if s.has_tcp_sendpage {
                sends.push(("tcp_sendpage_fexit", "tcp_sendpage"));
            }
            for (name, function) in sends {
                let prog: &mut FExit = program(ebpf, name)?;
                prog.load(function, &s.btf)
                    .map_err(|e| explain_load_error(name, "fexit", e))?;
                prog.attach()
                    .with_context(|| format!("attaching fexit/{function}"))?;
                attached.push(format!("fexit/{function}"));
            }
        }
        Variant::SocketKprobe => {
            let mut probes = vec![
                ("tcp_recv_kprobe", "tcp_cleanup_rbuf"),
                ("tcp_send_kprobe", "tcp_sendmsg"),
                ("tcp_send_kretprobe", "tcp_sendmsg"),
            ];
            if s.has_tcp_sendpage {
                probes.push(("tcp_sendpage_kprobe", "tcp_sendpage"));
                probes.push(("tcp_sendpage_kretprobe", "tcp_sendpage"));
            }
            for (name, function) in probes {
                let prog: &mut KProbe = program(ebpf, name)?;
                prog.load()
                    .map_err(|e| explain_load_error(name, "kprobe", e))?;
                prog.attach(function, 0).with_context(|| {
                    format!("attaching {name} to {function} (kprobes need CONFIG_KPROBES)")
                })?;
                attached.push(format!("kprobe/{function}"));
            }
        }
        Variant::Syscall => unreachable!("attach() handles the syscall path"),
    }
    Ok(())
}

fn btf_tracepoint(
    ebpf: &mut Ebpf,
    name: &str,
    tp: &str,
    btf: &Btf,
    attached: &mut Vec<String>,
) -> anyhow::Result<()> {
    let prog: &mut BtfTracePoint = program(ebpf, name)?;
    prog.load(tp, btf)
        .map_err(|e| explain_load_error(name, "tp_btf", e))?;
    prog.attach()
        .with_context(|| format!("attaching {name} to tp_btf/{tp}"))?;
    attached.push(format!("tp_btf/{tp}"));
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

/// (program, syscall tracepoint): the syscall path.
const SYSCALL_HOOKS: &[(&str, &str)] = &[
    ("syscall_enter_accept4", "sys_enter_accept4"),
    ("syscall_exit_accept4", "sys_exit_accept4"),
    ("syscall_enter_accept", "sys_enter_accept"),
    ("syscall_exit_accept", "sys_exit_accept"),
    ("syscall_enter_connect", "sys_enter_connect"),
    ("syscall_exit_connect", "sys_exit_connect"),
    ("syscall_enter_read", "sys_enter_read"),
    ("syscall_exit_read", "sys_exit_read"),
    ("syscall_enter_recvfrom", "sys_enter_recvfrom"),
    ("syscall_exit_recvfrom", "sys_exit_recvfrom"),
    ("syscall_enter_readv", "sys_enter_readv"),
    ("syscall_exit_readv", "sys_exit_readv"),
    ("syscall_enter_recvmsg", "sys_enter_recvmsg"),
    ("syscall_exit_recvmsg", "sys_exit_recvmsg"),
    ("syscall_enter_write", "sys_enter_write"),
    ("syscall_exit_write", "sys_exit_write"),
    ("syscall_enter_sendto", "sys_enter_sendto"),
    ("syscall_exit_sendto", "sys_exit_sendto"),
    ("syscall_enter_writev", "sys_enter_writev"),
    ("syscall_exit_writev", "sys_exit_writev"),
    ("syscall_enter_sendmsg", "sys_enter_sendmsg"),
    ("syscall_exit_sendmsg", "sys_exit_sendmsg"),
    ("syscall_enter_sendfile64", "sys_enter_sendfile64"),
    ("syscall_exit_sendfile64", "sys_exit_sendfile64"),
    ("syscall_enter_close", "sys_enter_close"),
];

fn attach_tracepoint(ebpf: &mut Ebpf, (program, name): &(&str, &str)) -> anyhow::Result<()> {
    let category = "syscalls";
    let prog: &mut TracePoint = self::program(ebpf, program)?;
    prog.load()
        .map_err(|e| explain_load_error(program, "tracepoint", e))?;
    prog.attach(category, name).map_err(|e| {
        let hint = if [
            "/sys/kernel/tracing/events",
            "/sys/kernel/debug/tracing/events",
        ]
        .iter()
        .any(|d| std::path::Path::new(d).join(category).is_dir())
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
            // SAFETY: no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            let feature = match io_error.raw_os_error() {
                Some(libc::EPERM) if root => {
                    "this kernel does not allow this program type (not built in, or refused by \
                     its lockdown or a hardened config)"
                }
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
                // 524 is the kernel's ENOTSUPP.
                Some(524) | Some(libc::EOPNOTSUPP) => {
                    "the kernel cannot attach this program type here (no BPF trampoline?)"
                }
                _ => "the kernel refused the program",
            };
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                anyhow!("loading {kind} program {program} failed: {io_error}: {feature}")
            } else {
                anyhow!(
                    "loading {kind} program {program} failed: {io_error}: {feature}\n\
                     verifier log:\n{log}"
                )
            }
        }
        other => anyhow!("loading {kind} program {program} failed: {other}"),
    }
}
