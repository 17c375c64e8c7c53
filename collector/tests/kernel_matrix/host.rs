//! The host's half: put the binaries and fixtures on a work disk, boot one guest kernel under
//! qemu, read its report back and hold it to what that kernel must do.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{TempDir, go_server_binary, serial};

/// How long one guest may take (boot ~10 s; every check ~2–5 min under emulation).
const GUEST_DEADLINE: Duration = Duration::from_secs(25 * 60);

/// The cheapest variant `auto` must take on each Debian kernel: 6.12 has the 6.3
/// tracepoints; 6.1 and 5.10 have BPF trampolines (Debian, like Amazon Linux, builds them).
fn expected_auto(label: &str) -> &'static str {
    match label {
        "6.12" => "socket-tracepoint",
        _ => "socket-fentry",
    }
}

/// The images `cargo xtask test` prepared. Like a privileged test, missing images fail under
/// CI=true and skip loudly otherwise.
fn images() -> Option<PathBuf> {
    match std::env::var_os("COLLECTOR_TEST_KERNEL_VM").map(PathBuf::from) {
        Some(d) if d.join("kernels.json").exists() => Some(d),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true: COLLECTOR_TEST_KERNEL_VM must name the guest images (cargo xtask test sets it)"
        ),
        _ => {
            eprintln!("SKIPPED (no guest images): run through `cargo xtask test`");
            None
        }
    }
}

pub fn boot(label: &str) {
    let Some(images) = images() else { return };
    let _serial = serial();
    let kernels: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(images.join("kernels.json")).unwrap())
            .unwrap();
    let release = kernels
        .iter()
        .find(|k| k["label"] == label)
        .and_then(|k| k["release"].as_str())
        .unwrap_or_else(|| panic!("no {label} kernel in {}", images.display()))
        .to_owned();

    let work = TempDir::new("guest");
    let disk = work_disk(&work.0, label);
    let console = work.0.join("console.log");
    let started = Instant::now();
    let status = qemu(&images, &release, &disk, &console);
    let took = started.elapsed();
    let read = |file: &str| debugfs_cat(&disk, file);
    let log = read("guest.log");
    let exit = read("exit-code");
    eprintln!("--- guest {label} ({release}): {took:.0?}, qemu {status:?}, exit code {exit:?}");
    eprintln!("{log}");
    let report: Value = serde_json::from_str(&read("report.json")).unwrap_or_else(|e| {
        let console = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        panic!(
            "guest {label}: no report ({e}); console tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    eprintln!(
        "guest {label} report: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    assert_eq!(exit.trim(), "0", "guest {label}: its checks failed (above)");
    assert_eq!(
        report["auto"],
        expected_auto(label),
        "guest {label}: auto chose {}",
        report["auto"]
    );
    for row in summary_rows(label, &report) {
        eprintln!("{row}");
    }
    if label == crate::guest::NO_BTF_GUEST {
        let nobtf = &report["without_btf"];
        assert_eq!(
            nobtf["auto"], "syscall",
            "guest {label} without BTF: {nobtf}"
        );
        assert_eq!(
            nobtf["captured"], nobtf["sent"],
            "guest {label} without BTF: {nobtf}"
        );
    }
    // What dd pays: no hook of the default path may run for it. Wall-clock time in an
    // emulated guest varies by up to 2× between identical dd runs with nothing else running,
    // and dd's own CPU time with it (the emulator's translation, not scheduling: measured),
    // far too much to resolve 5 %; the kernel's own count of program runs is exact. The wall-clock ratio is
    // reported, not asserted (it swung from 1.4× to 4.1× between runs); the syscall path's
    // runs and their time must show (or the count measures nothing).
    let default = &report["paths"][expected_auto(label)];
    let runs = default["bpf_runs_per_dd_syscall"]
        .as_f64()
        .expect("runs counted");
    assert!(
        runs < 0.001,
        "guest {label}: the default path runs {runs:.3} programs per dd syscall"
    );
    let syscall = &report["paths"]["syscall"];
    assert!(
        syscall["bpf_runs_per_dd_syscall"].as_f64().unwrap_or(0.0) >= 1.0
            && syscall["bpf_ns_per_dd_syscall"].as_f64().unwrap_or(0.0) > 0.0,
        "guest {label}: the syscall path's cost to dd was not seen: {syscall}"
    );
}

/// One Markdown table row per variant: what the README's kernel-matrix table shows.
fn summary_rows(label: &str, report: &Value) -> Vec<String> {
    let kernel = report["kernel"].as_str().unwrap_or_default();
    let mut rows = Vec::new();
    for (variant, p) in report["paths"].as_object().into_iter().flatten() {
        if p["loads"] != true {
            rows.push(format!(
                "| {label} ({kernel}) | {variant} | refused | | | | | |"
            ));
            continue;
        }
        let worst = p["timings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let (c, s) = (
                    t["captured_ms"].as_f64().unwrap_or(0.0),
                    t["server_ms"].as_f64().unwrap_or(0.0),
                );
                (c - s) / s * 100.0
            })
            .fold(0.0f64, |a, b| if b.abs() > a.abs() { b } else { a });
        rows.push(format!(
            "| {label} ({kernel}) | {variant}{} | {}/{} | {worst:+.2} % | {}/{} | {:.2} | {:.0} ns | {:.2}× |",
            if report["auto"] == variant.as_str() { " (auto)" } else { "" },
            p["server_exchanges"],
            p["sent"],
            p["demo"]["linked"],
            p["demo"]["requests"],
            p["bpf_runs_per_dd_syscall"].as_f64().unwrap_or(-1.0),
            p["bpf_ns_per_dd_syscall"].as_f64().unwrap_or(-1.0),
            p["dd_ratio"].as_f64().unwrap_or(0.0),
        ));
    }
    rows
}

/// The collector, this test binary (both without debug info) and the fixtures, each at its
/// own absolute path under `disk/`, plus the guest's script; returns the disk image.
fn work_disk(dir: &Path, label: &str) -> PathBuf {
    let mirror = dir.join("disk");
    let place = |path: &Path| {
        let to = mirror.join(path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        to
    };
    let test_exe = std::env::current_exe().unwrap();
    let collector = PathBuf::from(env!("CARGO_BIN_EXE_collector"));
    for bin in [&collector, &test_exe] {
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bin)
            .arg(place(bin))
            .status()
            .expect("objcopy (binutils)");
        assert!(status.success(), "stripping {}", bin.display());
    }
    let go = go_server_binary();
    std::fs::copy(&go, place(&go)).unwrap();
    let apps = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps");
    let apps_to = place(&apps);
    std::fs::create_dir_all(&apps_to).unwrap();
    for f in std::fs::read_dir(&apps).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, apps_to.join(f.file_name().unwrap())).unwrap();
    }
    let links: Vec<String> = [&collector, &test_exe, &go, &apps]
        .iter()
        .map(|p| {
            let p = p.display();
            format!("mkdir -p \"$(dirname {p})\" && ln -sfn /mnt/work{p} {p}")
        })
        .collect();
    let script = format!(
        "set -u\n{}\nexport CI=true RUST_BACKTRACE=1 COLLECTOR_GUEST_KERNEL={label} \
         COLLECTOR_GUEST_REPORT=/mnt/work/report.json\ncd /tmp\n\
         {} --ignored --exact in_guest --nocapture --test-threads 1\n",
        links.join("\n"),
        test_exe.display()
    );
    std::fs::write(mirror.join("run.sh"), script).unwrap();

    let image = dir.join("work.img");
    let used_mb = dir_bytes(&mirror) / (1 << 20);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "work", "-d"])
        .arg(&mirror)
        .arg(&image)
        .arg(format!("{}M", used_mb + 256))
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 -d for the work disk");
    image
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// Boots `release` with the root image as a throw-away snapshot and the work disk writable;
/// returns qemu's exit status once the guest powers off (or is killed at the deadline).
fn qemu(images: &Path, release: &str, disk: &Path, console: &Path) -> std::process::ExitStatus {
    let mut child = Command::new("qemu-system-x86_64")
        // TCG: under this host's nested-PVM /dev/kvm a stock kernel boots far slower.
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3072"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(images.join(format!("vmlinuz-{release}")))
        .arg("-initrd")
        .arg(images.join(format!("initrd.img-{release}")))
        .args([
            "-append",
            "root=/dev/vda rw console=ttyS0 init=/sbin/guest-init quiet panic=-1",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,snapshot=on",
            images.join("root.img").display()
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(console).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 (cargo xtask test installs it)");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > GUEST_DEADLINE {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A file of the work disk's root, read without mounting it.
fn debugfs_cat(image: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{file}"))
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
