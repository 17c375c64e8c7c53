//! Makes sure, idempotently, that this machine can build and test the collector:
//! nightly + rust-src (eBPF crate), Debian's llvm-N-dev and bpf-linker built against the same
//! LLVM major N as nightly rustc, and the programs the end-to-end tests drive.
//! Each step checks first and only acts when something is missing, so a ready machine pays a
//! few quick commands. A step that cannot act (no root, no network) stops with the exact
//! command to run by hand.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell::{self, is_root, output};

const BPF_LINKER_VERSION: &str = "0.13";

pub fn build_chain() -> anyhow::Result<()> {
    nightly_with_rust_src()?;
    let llvm = nightly_llvm_major()?;
    debian_packages(
        &format!("LLVM {llvm} development files for bpf-linker"),
        &[
            &format!("llvm-{llvm}-dev"),
            &format!("libpolly-{llvm}-dev"),
            "libzstd-dev",
            "zlib1g-dev",
        ],
    )?;
    bpf_linker(llvm)
}

/// Programs the end-to-end tests run as real peers: (command, Debian package providing it).
/// Checked by command, since some (node) may come from elsewhere on a machine.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("bpftool", "bpftool"),
    ("python3", "python3"),
    ("node", "nodejs"),
    ("go", "golang-go"),
    ("javac", "openjdk-17-jdk-headless"),
    ("nginx", "nginx"),
    // The two-node harness: network namespaces, veth, Service NAT as kube-proxy writes it.
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("conntrack", "conntrack"),
];

/// The load generator of the capacity tests (holds a fixed rate, reports percentiles).
const OHA_VERSION: &str = "1.16";

pub fn test_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_PROGRAMS
        .iter()
        .filter(|(cmd, _)| output("sh", &["-c", &format!("command -v {cmd}")]).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = TEST_PROGRAMS.iter().map(|(c, _)| *c).collect();
        eprintln!("xtask: ok: end-to-end test programs ({})", names.join(" "));
    } else {
        debian_packages("end-to-end test programs", &missing)?;
    }
    if output("oha", &["--version"]).is_some_and(|v| v.contains(&format!(" {OHA_VERSION}."))) {
        eprintln!("xtask: ok: oha {OHA_VERSION} (load generator)");
        return Ok(());
    }
    shell::step(
        &format!("building the load generator oha {OHA_VERSION} (once)"),
        || {
            shell::run(Command::new("cargo").args([
                "install",
                "oha",
                "--locked",
                "--version",
                &format!("^{OHA_VERSION}"),
            ]))
            .with_context(|| {
                format!("run by hand: cargo install oha --locked --version ^{OHA_VERSION}")
            })
        },
    )
}

fn nightly_with_rust_src() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).context(
        "rustup is not available: install it from your distribution or rustup.rs, then rerun",
    )?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        shell::step(
            "installing the nightly toolchain (eBPF programs need it)",
            || {
                shell::run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]))
                .context("run by hand: rustup toolchain install nightly --component rust-src")
            },
        )?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        shell::step(
            "adding rust-src to nightly (build-std for the BPF target)",
            || {
                shell::run(Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "nightly",
                ]))
                .context("run by hand: rustup component add rust-src --toolchain nightly")
            },
        )?;
    }
    eprintln!("xtask: ok: nightly toolchain with rust-src");
    Ok(())
}

/// The LLVM major version of nightly rustc: bpf-linker must link the same one.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let vv = output("rustc", &["+nightly", "-vV"]).context("rustc +nightly -vV failed")?;
    parse_llvm_major(&vv).context("rustc +nightly -vV printed no LLVM version")
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    let v = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    v.split('.').next()?.trim().parse().ok()
}

pub fn debian_packages(why: &str, packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: ok: {why} ({})", packages.join(" "));
        return Ok(());
    }
    let by_hand = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "{why} are missing ({}); run as root: {by_hand}",
            missing.join(" ")
        );
    }
    shell::step(&format!("installing {why}: {}", missing.join(" ")), || {
        // The package lists may be absent or stale on a fresh machine: refresh when a
        // package has no install candidate.
        let needs_update = missing.iter().any(|p| {
            output("apt-cache", &["policy", p])
                .is_none_or(|s| s.contains("Candidate: (none)") || s.trim().is_empty())
        });
        if needs_update {
            shell::run(Command::new("apt-get").args(["update", "-q"])).with_context(|| {
                format!("apt-get update failed (network?); run by hand: {by_hand}")
            })?;
        }
        shell::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("run by hand: {by_hand}"))
    })
}

fn bpf_linker(llvm: u32) -> anyhow::Result<()> {
    let installed = output("bpf-linker", &["--version"]);
    let version_ok = installed.as_deref().is_some_and(|v| {
        v.trim()
            .starts_with(&format!("bpf-linker {BPF_LINKER_VERSION}."))
    });
    let linked = version_ok.then(bpf_linker_llvm_major).flatten();
    match (version_ok, linked) {
        (true, Some(major)) if major == llvm => {
            eprintln!(
                "xtask: ok: bpf-linker {BPF_LINKER_VERSION} with LLVM {major} (= nightly rustc's)"
            );
            return Ok(());
        }
        (true, Some(major)) => eprintln!(
            "xtask: bpf-linker links LLVM {major} but nightly rustc uses LLVM {llvm}: they must \
             match, rebuilding it against LLVM {llvm}"
        ),
        (true, None) => eprintln!("xtask: cannot tell which LLVM bpf-linker links; rebuilding it"),
        (false, _) => {}
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    let feature = format!("llvm-{llvm}");
    let by_hand = format!(
        "LLVM_PREFIX={prefix} cargo install bpf-linker --version ^{BPF_LINKER_VERSION} \
         --no-default-features --features {feature} --force"
    );
    shell::step(
        &format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about 3 minutes, once)"
        ),
        || {
            shell::run(
                Command::new("cargo")
                    .args(["install", "bpf-linker", "--locked", "--force"])
                    .args(["--version", &format!("^{BPF_LINKER_VERSION}")])
                    .args(["--no-default-features", "--features", &feature])
                    .env("LLVM_PREFIX", &prefix),
            )
            .with_context(|| format!("run by hand: {by_hand}"))
        },
    )?;
    match bpf_linker_llvm_major() {
        Some(major) if major == llvm => Ok(()),
        other => bail!(
            "bpf-linker was built but links LLVM {other:?}, not {llvm}; run by hand: {by_hand}"
        ),
    }
}

/// The LLVM major bpf-linker is dynamically linked against (Debian's libLLVM.so.N).
fn bpf_linker_llvm_major() -> Option<u32> {
    let path = output("sh", &["-c", "command -v bpf-linker"])?;
    let ldd = output("ldd", &[path.trim()])?;
    ldd.split_whitespace().find_map(|word| {
        let rest = word
            .strip_prefix("libLLVM.so.")
            .or_else(|| word.strip_prefix("libLLVM-"))?;
        rest.split(['.', '-']).next()?.parse().ok()
    })
}

/// The Python environment of the tests: `moto[server]` (an X-Ray API peer) and boto3, and
/// `prometheus_client` (whose parser checks our `/metrics`), `aws-xray-sdk` (a real SDK app),
/// `opentelemetry-proto` (the official OTLP protobuf definitions, for the OTLP receiver),
/// in a venv outside the work tree so it survives clean clones. Returns the venv directory.
pub fn test_venv() -> anyhow::Result<std::path::PathBuf> {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let venv = home.join(".cache/collector-tests/venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import moto, boto3, flask, prometheus_client, aws_xray_sdk, \
                 opentelemetry.proto.collector.trace.v1.trace_service_pb2",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
        && venv.join("bin/moto_server").exists();
    if ready {
        eprintln!(
            "xtask: ok: moto X-Ray API for the tests ({})",
            venv.display()
        );
        return Ok(venv);
    }
    let by_hand = format!(
        "python3 -m venv {0} && {0}/bin/pip install 'moto[server]' prometheus_client aws-xray-sdk opentelemetry-proto",
        venv.display()
    );
    shell::step(
        "installing moto[server] into a venv for the X-Ray tests (once)",
        || {
            shell::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
                .with_context(|| format!("run by hand: {by_hand}"))?;
            shell::run(Command::new(venv.join("bin/pip")).args([
                "install",
                "-q",
                "moto[server]",
                "prometheus_client",
                "aws-xray-sdk",
                "opentelemetry-proto",
            ]))
            .with_context(|| format!("run by hand: {by_hand}"))
        },
    )?;
    Ok(venv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_major_is_read_from_rustc_verbose_version() {
        let vv = "rustc 1.97.0-nightly (abc 2026-11-20)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
