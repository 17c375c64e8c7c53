//! The struct member offsets the kernel programs use, read from the running kernel's BTF
//! into one [`KernelOffsets`] global. Each group is marked valid only when all its members
//! were found; what is missing is kept to explain a path the kernel cannot run.

use collector_common::{
    KernelOffsets, OFFSETS_FD_SOCKET, OFFSETS_SK_COOKIE, OFFSETS_TASK_COMM, OFFSETS_TCP_SEQ,
};

use super::btf::Btf;

pub struct Offsets {
    pub values: KernelOffsets,
    /// Why each missing group is missing (BTF unreadable, a member renamed, ...).
    pub missing: Vec<(u32, String)>,
    /// Whether sendfile/splice to TCP still goes through `tcp_sendpage` (before 6.5).
    pub has_tcp_sendpage: bool,
}

impl Offsets {
    /// Reads every group from /sys/kernel/btf/vmlinux.
    pub fn from_kernel() -> Self {
        match Btf::from_sys_fs() {
            Ok(btf) => Self::from_btf(&btf),
            Err(e) => Self {
                values: KernelOffsets::NONE,
                missing: [
                    OFFSETS_TCP_SEQ,
                    OFFSETS_SK_COOKIE,
                    OFFSETS_TASK_COMM,
                    OFFSETS_FD_SOCKET,
                ]
                .into_iter()
                .map(|g| (g, format!("{e:#}")))
                .collect(),
                has_tcp_sendpage: false,
            },
        }
    }

    pub fn from_btf(btf: &Btf) -> Self {
        let mut values = KernelOffsets::NONE;
        let mut missing = Vec::new();
        let mut group =
            |bit: u32, read: &mut dyn FnMut(&mut KernelOffsets) -> anyhow::Result<()>| match read(
                &mut values,
            ) {
                Ok(()) => values.valid |= bit,
                Err(e) => missing.push((bit, format!("{e:#}"))),
            };
        group(OFFSETS_TCP_SEQ, &mut |v| {
            v.tcp_copied_seq = btf.member_offset("tcp_sock", "copied_seq")?;
            v.tcp_write_seq = btf.member_offset("tcp_sock", "write_seq")?;
            Ok(())
        });
        let common = || btf.member_offset("sock", "__sk_common");
        let sk = |member: &str| -> anyhow::Result<u32> {
            Ok(common()? + btf.member_offset("sock_common", member)?)
        };
        group(OFFSETS_SK_COOKIE, &mut |v| {
            v.sk_cookie = sk("skc_cookie")?;
            Ok(())
        });
        group(OFFSETS_TASK_COMM, &mut |v| {
            v.task_group_leader = btf.member_offset("task_struct", "group_leader")?;
            v.task_comm = btf.member_offset("task_struct", "comm")?;
            Ok(())
        });
        group(OFFSETS_FD_SOCKET, &mut |v| {
            v.task_files = btf.member_offset("task_struct", "files")?;
            v.files_fdt = btf.member_offset("files_struct", "fdt")?;
            v.fdt_max_fds = btf.member_offset("fdtable", "max_fds")?;
            v.fdt_fd = btf.member_offset("fdtable", "fd")?;
            v.file_private_data = btf.member_offset("file", "private_data")?;
            v.socket_file = btf.member_offset("socket", "file")?;
            v.socket_sk = btf.member_offset("socket", "sk")?;
            v.sk_family = sk("skc_family")?;
            v.sk_state = sk("skc_state")?;
            v.sk_num = sk("skc_num")?;
            v.sk_dport = sk("skc_dport")?;
            v.sk_daddr = sk("skc_daddr")?;
            v.sk_rcv_saddr = sk("skc_rcv_saddr")?;
            v.sk_v6_daddr = sk("skc_v6_daddr")?;
            v.sk_v6_rcv_saddr = sk("skc_v6_rcv_saddr")?;
            Ok(())
        });
        Self {
            values,
            missing,
            has_tcp_sendpage: btf.has_function("tcp_sendpage"),
        }
    }

    pub fn has(&self, groups: u32) -> bool {
        self.values.valid & groups == groups
    }

    /// Why `groups` are not all known, for an error message.
    pub fn why_missing(&self, groups: u32) -> String {
        let mut reasons: Vec<&str> = Vec::new();
        for (g, why) in &self.missing {
            if groups & g != 0 && !reasons.contains(&why.as_str()) {
                reasons.push(why);
            }
        }
        reasons.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_gives_every_group() {
        // Readable without root; skipped only where the kernel has no BTF at all.
        let Ok(btf) = Btf::from_sys_fs() else { return };
        let o = Offsets::from_btf(&btf);
        assert!(
            o.has(OFFSETS_TCP_SEQ | OFFSETS_SK_COOKIE | OFFSETS_TASK_COMM | OFFSETS_FD_SOCKET),
            "{:?}",
            o.missing
        );
        // The sock_common members sit at the start of struct sock.
        assert!(o.values.sk_cookie > 0 && o.values.sk_cookie < 256);
        assert_ne!(o.values.sk_daddr, o.values.sk_rcv_saddr);
    }

    #[test]
    fn unreadable_btf_leaves_every_group_invalid_and_says_why() {
        let o =
            Offsets::from_btf(&Btf::parse(&crate::source::btf::tests::blob(&[], b"\0")).unwrap());
        assert_eq!(o.values.valid, 0);
        assert!(o.why_missing(OFFSETS_TCP_SEQ).contains("tcp_sock"));
    }
}
