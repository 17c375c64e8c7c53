//! `--cgroup PATH`: trace one cgroup v2 subtree instead of the whole machine. The cgroup
//! programs (sock_ops, cgroup_skb) attach to that directory, and every other hook asks the
//! kernel whether the current task is under it (`bpf_current_task_under_cgroup` with the
//! directory in a cgroup array: no id or depth that a cgroup namespace could skew). Hosts
//! with nested cgroups need it, and it lets one machine run one collector per "node".
//!
//! A collector claims its cgroup with `flock`: exclusively on the directory, shared on each
//! ancestor up to the mount point. So two collectors never trace the same cgroup, nor one a
//! cgroup inside another's; the kernel drops the locks when the process ends, however it
//! ends. A collector without `--cgroup` claims nothing.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup v2 directory to trace, checked when the option is parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedCgroup {
    pub path: PathBuf,
    /// Where the hierarchy holding it is mounted.
    mount: PathBuf,
}

/// `--cgroup`'s value parser: the path must be a directory of a cgroup v2 hierarchy.
pub fn parse_cgroup(value: &str) -> Result<TracedCgroup, String> {
    let path = Path::new(value);
    let meta = std::fs::metadata(path).map_err(|e| format!("{value}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("{value} is not a directory"));
    }
    let fs_type = statfs_type(path).map_err(|e| format!("{value}: statfs: {e}"))?;
    let v2 = super::attach::cgroup2_mount().map_or_else(
        || "none is mounted".to_owned(),
        |m| format!("it is at {}", m.display()),
    );
    if fs_type != CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "{value} is not a cgroup v2 directory (filesystem type {fs_type:#x}); on a host with \
             v1 or hybrid cgroups give a directory of the v2 hierarchy ({v2})"
        ));
    }
    let path = path.canonicalize().map_err(|e| format!("{value}: {e}"))?;
    let mount = containing_mount(&path)
        .ok_or_else(|| format!("{value}: no cgroup v2 mount in /proc/self/mountinfo holds it"))?;
    Ok(TracedCgroup { path, mount })
}

/// The exclusive claim of a traced cgroup (with shared claims on its ancestors), held for
/// the collector's life.
pub struct CgroupClaim {
    _locks: Vec<File>,
}

/// Another collector traces this cgroup, one inside it, or one around it.
#[derive(Debug)]
pub struct CgroupHeld(pub String);

impl std::fmt::Display for CgroupHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CgroupHeld {}

impl TracedCgroup {
    pub fn claim(&self) -> Result<CgroupClaim, CgroupHeld> {
        let mut locks = vec![lock(&self.path, libc::LOCK_EX).map_err(|e| {
            CgroupHeld(format!(
                "--cgroup {}: another collector traces this cgroup or one inside it ({e})",
                self.path.display()
            ))
        })?];
        let mut dir = self.path.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.mount)) {
            locks.push(lock(d, libc::LOCK_SH).map_err(|e| {
                CgroupHeld(format!(
                    "--cgroup {}: another collector traces {}, which holds it ({e})",
                    self.path.display(),
                    d.display()
                ))
            })?);
            dir = d.parent();
        }
        Ok(CgroupClaim { _locks: locks })
    }
}

fn lock(dir: &Path, how: i32) -> std::io::Result<File> {
    let f = File::open(dir)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

fn statfs_type(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(st.f_type as i64)
}

/// The cgroup v2 mount point holding `path` (the longest one above it).
fn containing_mount(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_holding(&info, path)
}

fn mount_holding(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let point = PathBuf::from(pre.split_whitespace().nth(4)?);
            path.starts_with(&point).then_some(point)
        })
        .max_by_key(|point| point.components().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_is_the_longest_cgroup2_mount_point_above_the_path() {
        let info = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    50 31 0:38 /kubepods /host/cgroup rw - cgroup2 cgroup2 rw\n\
                    52 50 0:38 /kubepods/x /host/cgroup/x rw - cgroup2 cgroup2 rw\n\
                    51 31 0:40 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let at = |p: &str| mount_holding(info, Path::new(p)).map(|m| m.display().to_string());
        assert_eq!(
            at("/sys/fs/cgroup/unified/node-a").as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(at("/host/cgroup/pod1").as_deref(), Some("/host/cgroup"));
        assert_eq!(at("/host/cgroup/x/y").as_deref(), Some("/host/cgroup/x"));
        assert_eq!(at("/sys/fs/cgroup/cpu/x"), None);
    }

    #[test]
    fn paths_that_are_not_cgroup_v2_directories_are_refused_with_the_reason() {
        let missing = parse_cgroup("/nonexistent/cgroup").unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
        let file = parse_cgroup("/proc/self/status").unwrap_err();
        assert!(file.contains("not a directory"), "{file}");
        let other = parse_cgroup("/tmp").unwrap_err();
        assert!(other.contains("not a cgroup v2 directory"), "{other}");
    }
}
