//! Builds the kernel programs (`collector-ebpf`) with the nightly toolchain and bpf-linker, so
//! a plain `cargo build` on stable produces a collector with its eBPF object embedded.
//! `cargo xtask` installs what this needs; see README.md.

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("collector/ has a parent")
        .join("collector-ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "collector-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             They need the nightly toolchain with rust-src and bpf-linker; \
             `cargo xtask run` or `cargo xtask test` installs both."
        )
    })
}
