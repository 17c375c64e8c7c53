//! The kernel matrix's guests: one Debian bookworm root filesystem (debootstrap) holding the
//! apps the tests drive and Debian's own cloud kernels — bullseye's 5.10, bookworm's 6.1 and
//! the 6.12 of bookworm-security — each with its initramfs. Built once into a cache outside
//! the work tree (like the kube-apiserver) and booted read-only by the tests under
//! `qemu-system-x86_64 -accel tcg` (this host's /dev/kvm is a nested PVM under which a stock
//! kernel boots far slower than under qemu's own emulator). Debian's cloud kernels have no
//! 9p, so files go in and out on a second virtio disk made with `mkfs.ext4 -d` and read back
//! with `debugfs`: nothing is loop-mounted.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    setup::debian_packages,
    shell::{self, is_root, output},
};

/// What the guests run besides the kernels: the fixture servers' runtimes and a client.
const GUEST_PACKAGES: &[&str] = &[
    "python3",
    "nodejs",
    "nginx",
    "curl",
    // Program run counts (kernel.bpf_stats_enabled): which hooks fire for work that is not TCP.
    "bpftool",
    "kmod",
    "initramfs-tools",
    "linux-base",
    "procps",
    "iproute2",
    "util-linux",
];

/// (label, meta package, version prefix): the newest kernel package that meta package has
/// depended on, across the suites in `APT_SOURCES`.
const KERNELS: &[(&str, &str, &str)] = &[
    ("5.10", "linux-image-cloud-amd64", "5.10."),
    ("6.1", "linux-image-cloud-amd64", "6.1."),
    ("6.12", "linux-image-6.12-cloud-amd64", "6.12."),
];

/// The guest's apt sources: bookworm preferred; bullseye only for its 5.10 kernel.
const APT_SOURCES: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
";
const APT_PREFERENCES: &str = "\
Package: *
Pin: release n=bullseye
Pin-Priority: 100

Package: *
Pin: release n=bullseye-security
Pin-Priority: 100
";

/// PID 1 of every guest: mount what the collector and its tests use, then run the script on
/// the work disk (/dev/vdb), keep its output and exit code there, and power off.
const GUEST_INIT: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
hostname guest
mkdir -p /mnt/work
if mount -t ext4 /dev/vdb /mnt/work; then
    sh /mnt/work/run.sh > /mnt/work/guest.log 2>&1
    echo $? > /mnt/work/exit-code
    sync
    umount /mnt/work
else
    echo "guest-init: no work disk" > /dev/console
fi
echo o > /proc/sysrq-trigger
sleep 30
"#;

/// Bumped when the recipe changes in a way the inputs above do not show.
const RECIPE: u32 = 1;

/// The cached images' directory (built when missing): `root.img`, one `vmlinuz-*` and
/// `initrd.img-*` per kernel, and `kernels.json` naming them.
pub fn ensure() -> anyhow::Result<PathBuf> {
    qemu()?;
    let dir = cache_dir().join(format!("kernel-vm-{:016x}", recipe_hash()));
    if dir.join("kernels.json").exists() && dir.join("root.img").exists() {
        eprintln!("xtask: ok: kernel-matrix guest images ({})", dir.display());
        return Ok(dir);
    }
    if !is_root() {
        bail!("building the kernel-matrix guests needs root (debootstrap, chroot)");
    }
    shell::step(
        "building the kernel-matrix guests: debootstrap + Debian kernels 5.10, 6.1, 6.12 (once, ~5 min)",
        || build(&dir),
    )?;
    Ok(dir)
}

/// qemu-system-x86 from bookworm-backports: the machine's qemu-utils come from there, and
/// bookworm's own qemu-system-x86 (7.2) would remove them.
fn qemu() -> anyhow::Result<()> {
    debian_packages("guest image tools", &["debootstrap", "e2fsprogs"])?;
    if let Some(v) = output("qemu-system-x86_64", &["--version"]) {
        eprintln!(
            "xtask: ok: {}",
            v.lines().next().unwrap_or("qemu-system-x86_64")
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "qemu-system-x86 is missing; run as root: apt-get install -t bookworm-backports qemu-system-x86"
        );
    }
    shell::step("installing qemu-system-x86 from bookworm-backports", || {
        let list = "/etc/apt/sources.list.d/collector-tests-backports.list";
        if !Path::new(list).exists() {
            std::fs::write(
                list,
                "deb http://deb.debian.org/debian bookworm-backports main\n",
            )?;
        }
        shell::run(Command::new("apt-get").args(["update", "-q"]))?;
        shell::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(["-t", "bookworm-backports", "qemu-system-x86"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
        .join(".cache/collector-tests")
}

/// FNV-1a over everything the images are made from.
fn recipe_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    GUEST_PACKAGES.iter().for_each(|p| feed(p));
    KERNELS
        .iter()
        .for_each(|(a, b, c)| [a, b, c].iter().for_each(|s| feed(s)));
    feed(APT_SOURCES);
    feed(APT_PREFERENCES);
    feed(GUEST_INIT);
    feed(&RECIPE.to_string());
    h
}

fn build(dir: &Path) -> anyhow::Result<()> {
    let work = dir.with_extension("building");
    if work.exists() {
        unmount_chroot(&work.join("root"))?;
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let root = work.join("root");
    std::fs::create_dir_all(&work)?;
    shell::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(GUEST_PACKAGES.join(","))
            .arg("bookworm")
            .arg(&root)
            .arg("http://deb.debian.org/debian"),
    )
    .context("debootstrap of the guest root")?;
    std::fs::write(root.join("etc/apt/sources.list"), APT_SOURCES)?;
    std::fs::write(
        root.join("etc/apt/preferences.d/bullseye-kernel-only"),
        APT_PREFERENCES,
    )?;
    let installed = in_chroot(&root, || install_kernels(&root));
    unmount_chroot(&root)?;
    let kernels = installed?;

    // Smaller image: no package caches.
    let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));
    let _ = std::fs::remove_dir_all(root.join("var/lib/apt/lists"));
    let init = root.join("sbin/guest-init");
    std::fs::write(&init, GUEST_INIT)?;
    shell::run(Command::new("chmod").arg("755").arg(&init))?;
    let mut listed = Vec::new();
    for (label, release) in &kernels {
        for file in [
            format!("vmlinuz-{release}"),
            format!("initrd.img-{release}"),
        ] {
            std::fs::copy(root.join("boot").join(&file), work.join(&file))
                .with_context(|| format!("copying {file}"))?;
        }
        listed.push(serde_json::json!({"label": label, "release": release}));
    }
    shell::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "guestroot", "-d"])
            .arg(&root)
            .arg(work.join("root.img"))
            .arg("3G"),
    )
    .context("making the guest root image")?;
    std::fs::remove_dir_all(&root)?;
    std::fs::write(
        work.join("kernels.json"),
        serde_json::to_string_pretty(&listed)?,
    )?;
    std::fs::rename(&work, dir)
        .with_context(|| format!("moving the images to {}", dir.display()))?;
    Ok(())
}

/// Runs `f` with /proc, /sys and /dev of the host bound into the chroot (apt and the kernel
/// packages' initramfs hooks need them).
fn in_chroot<T>(root: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    for fs in ["proc", "sys", "dev"] {
        shell::run(
            Command::new("mount")
                .arg("--bind")
                .arg(format!("/{fs}"))
                .arg(root.join(fs)),
        )?;
    }
    f()
}

/// Unmounts everything under `root`, deepest first, until nothing is left: mounts can be
/// stacked (debootstrap's own /proc under our bind) and one `umount` removes only the top,
/// and `mkfs.ext4 -d` must never copy a live /proc into the image.
fn unmount_chroot(root: &Path) -> anyhow::Result<()> {
    for attempt in 0..8 {
        let mut mounted = mounts_under(root)?;
        if mounted.is_empty() {
            return Ok(());
        }
        mounted.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounted {
            let mut umount = Command::new("umount");
            if attempt >= 4 {
                // Still busy after four tries: detach it; the image is made from files only.
                umount.arg("--lazy");
            }
            // A failure shows in the next look at the mount table.
            if !umount.arg(&m).status().is_ok_and(|s| s.success()) {
                eprintln!("xtask: umount {m} failed; retrying");
            }
        }
    }
    let left = mounts_under(root)?;
    if left.is_empty() {
        return Ok(());
    }
    bail!("still mounted in the guest root: {}", left.join(", "))
}

/// Mount points at or below `root`, from /proc/self/mountinfo (field 5).
fn mounts_under(root: &Path) -> anyhow::Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let root = root.to_string_lossy();
    Ok(table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| {
            m.strip_prefix(&*root)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map(str::to_owned)
        .collect())
}

/// Installs each kernel of `KERNELS` in the chroot; returns (label, release) pairs.
fn install_kernels(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let chroot = |args: &[&str]| {
        let mut c = Command::new("chroot");
        c.arg(root)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    shell::run(&mut chroot(&["apt-get", "update", "-q"]))?;
    let mut packages = Vec::new();
    let mut kernels = Vec::new();
    for (label, meta, prefix) in KERNELS {
        let out = chroot(&["apt-cache", "show", meta]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let package = newest_dependency(&text, prefix)
            .with_context(|| format!("no {meta} {prefix}x in the guest's apt sources"))?;
        let release = package
            .strip_prefix("linux-image-")
            .context("not a linux-image package")?
            .to_owned();
        eprintln!("xtask: guest kernel {label}: {package}");
        packages.push(package);
        kernels.push(((*label).to_owned(), release));
    }
    let mut args = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages.iter().map(String::as_str));
    shell::run(&mut chroot(&args)).context("installing the guest kernels")?;
    Ok(kernels)
}

/// From `apt-cache show META` stanzas: the `linux-image-*` dependency of the highest version
/// starting with `prefix` (ABI numbers compared numerically).
fn newest_dependency(stanzas: &str, prefix: &str) -> Option<String> {
    stanzas
        .split("\n\n")
        .filter_map(|s| {
            let field = |name: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let version = field("Version:")?;
            if !version.starts_with(prefix) {
                return None;
            }
            let dep = field("Depends:")?
                .split(',')
                .map(|d| d.split_whitespace().next().unwrap_or_default().to_owned())
                .find(|d| d.starts_with("linux-image-"))?;
            Some((version_key(&version), dep))
        })
        .max()
        .map(|(_, dep)| dep)
}

/// "6.1.192-3" → [6, 1, 192, 3]: enough to order Debian's kernel versions.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_kernel_of_a_series_is_chosen_from_apt_stanzas() {
        let show = "Package: linux-image-cloud-amd64\nVersion: 6.1.176-1\nDepends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)\n\n\
                    Package: linux-image-cloud-amd64\nVersion: 6.1.192-3\nDepends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n\n\
                    Package: linux-image-cloud-amd64\nVersion: 5.10.262-1\nDepends: linux-image-5.10.0-46-cloud-amd64 (= 5.10.262-1)\n";
        assert_eq!(
            newest_dependency(show, "6.1.").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            newest_dependency(show, "5.10.").as_deref(),
            Some("linux-image-5.10.0-46-cloud-amd64")
        );
        assert_eq!(newest_dependency(show, "6.12."), None);
        assert!(version_key("6.12.117-1") > version_key("6.12.99-2"));
    }
}
