//! Running commands with clear messages.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin`; make sure the build finds it there
/// even when that directory is not on the caller's PATH.
pub fn put_cargo_bin_on_path() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(bin) = cargo_home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
        .expect("PATH entries are joinable");
    // SAFETY: called at start-up, before xtask starts any thread.
    unsafe { std::env::set_var("PATH", joined) };
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` as one named step, printing what it does and how long it took.
pub fn step<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("xtask: {what} ...");
    let start = Instant::now();
    let out = f().with_context(|| format!("{what} failed"))?;
    eprintln!("xtask: {what}: done in {:.1?}", start.elapsed());
    Ok(out)
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}

/// Runs a long-lived child in the foreground: Ctrl-C reaches it (same process group) and it
/// shuts down cleanly; xtask ignores the signal and waits for it instead of orphaning it.
pub fn exec(mut cmd: Command) -> anyhow::Result<()> {
    // SAFETY: plain signal disposition change, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    run(&mut cmd)
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

/// Output of a command that is expected to succeed; `None` when it cannot be run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
