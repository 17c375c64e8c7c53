//! The kernel matrix, privileged: Debian's own cloud kernels (bullseye's 5.10, bookworm's 6.1,
//! bookworm-security's 6.12 — what EKS nodes run, on Amazon Linux 2 / 2023 and Bottlerocket)
//! booted once each under qemu, with every check inside: which capture variants load (doctor,
//! by loading), that `auto` takes the cheapest, and per variant the HTTP matrix, the A → B
//! demo's links and what a process doing no networking pays (`dd bs=1`). The guests' images
//! come from `cargo xtask test` (xtask/src/kernel_vm.rs), cached outside the work tree.
//!
//! This test binary is also what runs inside each guest (`in_guest`, ignored on the host):
//! the host puts it, the collector and the fixtures on a second disk at their own paths.

#[path = "../support/mod.rs"]
mod support;

mod guest;
mod host;

use support::privileged;

#[test]
fn debian_bullseye_5_10() {
    if privileged() {
        host::boot("5.10");
    }
}

#[test]
fn debian_bookworm_6_1() {
    if privileged() {
        host::boot("6.1");
    }
}

#[test]
fn debian_bookworm_6_12() {
    if privileged() {
        host::boot("6.12");
    }
}

#[test]
#[ignore = "runs inside the kernel-matrix guests (host::boot starts it there)"]
fn in_guest() {
    guest::run();
}
