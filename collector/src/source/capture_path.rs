//! The capture paths, in order of what they cost the node, and what `--capture-path` asks
//! for. Which one runs is decided by loading, never by kernel version numbers: a path the
//! running kernel refuses is skipped with its reason, and the next one is tried.

/// `--capture-path`: one variant, the socket-layer variants, or all of them in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CapturePath {
    /// The cheapest variant this kernel loads, socket layer first, syscalls last.
    Auto,
    /// The cheapest socket-layer variant this kernel loads; never syscall tracepoints.
    Socket,
    /// Socket layer with the `sock_recv_length`/`sock_send_length` tracepoints (6.3+).
    SocketTracepoint,
    /// Socket layer with fentry/fexit on the TCP receive/send functions (BPF trampolines).
    SocketFentry,
    /// Socket layer with kprobes on the TCP receive/send functions.
    SocketKprobe,
    /// Classic syscall tracepoints: every read/write on the node pays their dispatch.
    Syscall,
    /// No capture at all: only the X-Ray SDK relay and the exporters run.
    Off,
}

/// One way of capturing that either loads on this kernel or does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    SocketTracepoint,
    SocketFentry,
    SocketKprobe,
    Syscall,
}

impl Variant {
    /// Cheapest first. The socket-layer variants share sock_ops and cgroup_skb (connections
    /// and packets, nothing for other work) and differ in the hooks that see each call:
    /// tracepoints cost least; fentry/fexit about the same through a BPF trampoline; kprobes
    /// take a breakpoint trap per call (and a return probe per send). Syscall tracepoints put
    /// every syscall of every task on the slow path.
    pub const ORDER: [Variant; 4] = [
        Variant::SocketTracepoint,
        Variant::SocketFentry,
        Variant::SocketKprobe,
        Variant::Syscall,
    ];

    /// The name `--capture-path` and the logs use.
    pub const fn name(self) -> &'static str {
        match self {
            Variant::SocketTracepoint => "socket-tracepoint",
            Variant::SocketFentry => "socket-fentry",
            Variant::SocketKprobe => "socket-kprobe",
            Variant::Syscall => "syscall",
        }
    }

    /// The `--capture-path` that names exactly this variant.
    pub const fn forced(self) -> CapturePath {
        match self {
            Variant::SocketTracepoint => CapturePath::SocketTracepoint,
            Variant::SocketFentry => CapturePath::SocketFentry,
            Variant::SocketKprobe => CapturePath::SocketKprobe,
            Variant::Syscall => CapturePath::Syscall,
        }
    }

    pub const fn is_socket_layer(self) -> bool {
        !matches!(self, Variant::Syscall)
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl CapturePath {
    /// The variants to try, in order.
    pub fn candidates(self) -> Vec<Variant> {
        let only = |v| vec![v];
        match self {
            CapturePath::Auto => Variant::ORDER.to_vec(),
            CapturePath::Socket => Variant::ORDER
                .into_iter()
                .filter(|v| v.is_socket_layer())
                .collect(),
            CapturePath::SocketTracepoint => only(Variant::SocketTracepoint),
            CapturePath::SocketFentry => only(Variant::SocketFentry),
            CapturePath::SocketKprobe => only(Variant::SocketKprobe),
            CapturePath::Syscall => only(Variant::Syscall),
            CapturePath::Off => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_every_variant_cheapest_first_and_socket_never_falls_to_syscalls() {
        assert_eq!(CapturePath::Auto.candidates(), Variant::ORDER);
        assert_eq!(
            CapturePath::Socket.candidates(),
            [
                Variant::SocketTracepoint,
                Variant::SocketFentry,
                Variant::SocketKprobe
            ]
        );
        assert_eq!(
            CapturePath::SocketKprobe.candidates(),
            [Variant::SocketKprobe]
        );
        assert!(CapturePath::Off.candidates().is_empty());
        for v in Variant::ORDER {
            let forced = <CapturePath as clap::ValueEnum>::from_str(v.name(), false).unwrap();
            assert_eq!(forced.candidates(), [v], "--capture-path {v}");
            assert_eq!(v.forced(), forced);
        }
    }
}
