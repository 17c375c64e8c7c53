//! `--cgroup PATH`: trace one cgroup v2 subtree instead of the whole machine. The cgroup
//! programs (sock_ops, cgroup_skb) attach to that directory, and every other hook asks the
//! kernel whether the current task is under it (`TRACED_CGROUP_ID` at its level). Hosts with
//! nested cgroups need it, and it lets one machine run one collector per "node".
//!
//! A collector claims its cgroup with `flock`: exclusively on the directory, shared on each
//! ancestor below the hierarchy's root. So two collectors never trace the same cgroup, nor
//! one a cgroup inside another's; the kernel drops the locks when the process ends, however
//! it ends. A collector without `--cgroup` claims nothing.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup v2 directory to trace, checked when the option is parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedCgroup {
    pub path: PathBuf,
    /// The cgroup's id: its directory's inode number (what `bpf_get_current_cgroup_id` says).
    pub id: u64,
    /// Its depth below the hierarchy's root (the root is 0).
    pub level: u32,
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
    let (mount, root) = containing_mount(&path)
        .ok_or_else(|| format!("{value}: no cgroup v2 mount in /proc/self/mountinfo holds it"))?;
    let below = path.strip_prefix(&mount).expect("the mount holds it");
    let level = root.components().count() - 1 + below.components().count();
    Ok(TracedCgroup {
        id: meta.ino(),
        level: u32::try_from(level).map_err(|_| format!("{value}: too deep"))?,
        path,
        mount,
    })
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
        while let Some(d) = dir.filter(|d| d.starts_with(&self.mount) && *d != self.mount) {
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

/// The cgroup v2 mount holding `path` (the longest mount point above it), with the root of
/// the hierarchy that mount shows (`/` unless it is a bind or namespaced mount).
fn containing_mount(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts_holding(&info, path)
}

fn mounts_holding(mountinfo: &str, path: &Path) -> Option<(PathBuf, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut f = pre.split_whitespace();
            let root = PathBuf::from(f.nth(3)?);
            let point = PathBuf::from(f.next()?);
            path.starts_with(&point).then_some((point, root))
        })
        .max_by_key(|(point, _)| point.components().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_counts_from_the_hierarchys_root_through_namespaced_mounts() {
        let info = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    50 31 0:38 /kubepods /host/cgroup rw - cgroup2 cgroup2 rw\n\
                    51 31 0:40 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let (point, root) =
            mounts_holding(info, Path::new("/sys/fs/cgroup/unified/node-a")).unwrap();
        assert_eq!(
            (point.to_str(), root.to_str()),
            (Some("/sys/fs/cgroup/unified"), Some("/"))
        );
        let (point, root) = mounts_holding(info, Path::new("/host/cgroup/pod1")).unwrap();
        assert_eq!(
            (point.to_str(), root.to_str()),
            (Some("/host/cgroup"), Some("/kubepods"))
        );
        assert_eq!(
            mounts_holding(info, Path::new("/sys/fs/cgroup/cpu/x")),
            None
        );
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
