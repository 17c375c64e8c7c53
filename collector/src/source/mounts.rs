//! The pseudo file systems the kernel programs need: tracefs (tracepoint ids) and bpffs.
//! A container or a minimal host may not have them mounted; we mount them ourselves.

use std::{ffi::CString, path::Path};

use anyhow::{Context as _, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
const BPFFS: &str = "/sys/fs/bpf";
const TRACEFS_MAGIC: i64 = 0x7472_6163;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts tracefs and bpffs where they are missing. Returns what it mounted, for the log.
pub fn ensure_kernel_filesystems() -> anyhow::Result<Vec<&'static str>> {
    let mut mounted = Vec::new();
    // aya finds tracepoints under /sys/kernel/tracing or the old debugfs location.
    if !Path::new(TRACEFS).join("events").is_dir()
        && !Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        mount_if_needed("tracefs", TRACEFS, TRACEFS_MAGIC)
            .context("tracepoints need tracefs (CONFIG_TRACING)")?;
        mounted.push(TRACEFS);
    }
    if fs_magic(BPFFS) != Some(BPF_FS_MAGIC) {
        mount_if_needed("bpf", BPFFS, BPF_FS_MAGIC).context("pinning maps needs bpffs")?;
        mounted.push(BPFFS);
    }
    Ok(mounted)
}

fn fs_magic(path: &str) -> Option<i64> {
    let c = CString::new(path).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

fn mount_if_needed(fstype: &str, target: &str, magic: i64) -> anyhow::Result<()> {
    if fs_magic(target) == Some(magic) {
        return Ok(());
    }
    if !Path::new(target).is_dir() {
        bail!("{target} does not exist; cannot mount {fstype} there");
    }
    let src = CString::new(fstype)?;
    let dst = CString::new(target)?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("mount -t {fstype} {fstype} {target} failed: {err} (needs CAP_SYS_ADMIN)");
    }
    Ok(())
}
