use which::which;

/// The eBPF object depends on the `bpf-linker` binary, which cargo does not know about: rebuild
/// when it changes (it is reinstalled by `cargo xtask` when its LLVM does not match rustc's).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
