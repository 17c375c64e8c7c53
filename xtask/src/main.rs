//! `cargo xtask`: the project's front door. Every command first makes sure the machine can
//! build the eBPF programs (see `setup`), then does its job.

mod bench;
mod bench_relay;
mod demo;
mod kernel_vm;
mod kube_apiserver;

mod setup;
mod shell;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build needs (idempotent), and nothing else.
    Setup,
    /// Build and run the collector as root: `cargo xtask run [-- ARGS]` (ARGS go to `collector run`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite: unit, privileged integration and end-to-end tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and clippy -D warnings on the userspace and the eBPF crates.
    Lint,
    /// Only the kernel matrix (part of `test`): Debian's 5.10, 6.1 and 6.12 kernels booted
    /// under qemu with every capture check inside (extra ARGS go to `cargo test`).
    KernelMatrix {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// What the collector costs, measured side by side in one run (see xtask/src/bench.rs).
    Bench {
        /// Repetitions of each measurement (collector off/on interleaved).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Seconds of load per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Fixed rates (req/s) besides saturation.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000, 30000])]
        rates: Vec<u32>,
        /// Parts to run: servers, not-http, relay.
        #[arg(long, value_delimiter = ',', default_values_t = ["servers".to_owned(), "not-http".to_owned(), "relay".to_owned()])]
        parts: Vec<String>,
        /// Rates of SDK segments per second for the relay part.
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 40_000, 80_000])]
        relay_rates: Vec<u64>,
    },
    /// The demo, no SDK: service A calls service B for each request; the collector traces
    /// both and prints the linked traces (extra ARGS go to `collector run`).
    Demo {
        /// Requests to send through A.
        #[arg(long, default_value_t = 5)]
        requests: u32,
        /// Service A's runtime: python (a thread per request) or node (one event loop).
        #[arg(long, default_value = "python")]
        a: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let root = shell::workspace_root();
    std::env::set_current_dir(&root)?;
    shell::put_cargo_bin_on_path();
    match command {
        Command::Setup => setup::build_chain(),
        Command::Run { args } => {
            setup::build_chain()?;
            shell::step("building the collector", || {
                shell::cargo(&["build", "--bins"])
            })?;
            let bin = root.join("target/debug/collector");
            let mut cmd = if shell::is_root() {
                std::process::Command::new(&bin)
            } else {
                eprintln!("xtask: the collector loads eBPF programs; running it with sudo");
                let mut c = std::process::Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            // `cargo xtask run -- --format json` means `collector run --format json`.
            let is_subcommand = args.first().is_some_and(|a| {
                matches!(
                    a.as_str(),
                    "run" | "doctor" | "version" | "help" | "--help" | "-h" | "--version"
                )
            });
            if !is_subcommand {
                cmd.arg("run");
            }
            cmd.args(&args);
            shell::exec(cmd)
        }
        Command::KernelMatrix { args } => {
            setup::build_chain()?;
            setup::test_tools()?;
            let guests = kernel_vm::ensure()?;
            shell::step("building", || shell::cargo(&["build", "--tests", "--bins"]))?;
            // SAFETY: single-threaded at this point; the variable is read by the tests.
            unsafe { std::env::set_var("COLLECTOR_TEST_KERNEL_VM", &guests) };
            let mut test_args = vec!["test", "--no-fail-fast", "--test", "kernel_matrix", "--"];
            test_args.extend(args.iter().map(String::as_str));
            test_args.push("--nocapture");
            shell::cargo(&test_args)
        }
        Command::Test { args } => {
            setup::build_chain()?;
            setup::test_tools()?;
            let venv = setup::test_venv()?;
            let apiserver = kube_apiserver::ensure()?;
            let guests = kernel_vm::ensure()?;
            shell::step("building", || shell::cargo(&["build", "--tests", "--bins"]))?;
            let mut test_args = vec!["test", "--no-fail-fast"];
            test_args.extend(args.iter().map(String::as_str));
            // SAFETY: single-threaded at this point; the variable is read by the tests.
            unsafe {
                std::env::set_var("COLLECTOR_TEST_VENV", &venv);
                std::env::set_var("COLLECTOR_TEST_KUBE_APISERVER", &apiserver);
                std::env::set_var("COLLECTOR_TEST_KERNEL_VM", &guests);
            }
            shell::cargo(&test_args)
        }
        Command::Bench {
            reps,
            seconds,
            rates,
            parts,
            relay_rates,
        } => {
            let servers = parts.iter().any(|p| p == "servers");
            let not_http = parts.iter().any(|p| p == "not-http");
            if servers || not_http {
                bench::run(
                    &root,
                    &bench::BenchOptions {
                        reps,
                        seconds,
                        rates,
                        servers,
                        not_http,
                    },
                )?;
            }
            if parts.iter().any(|p| p == "relay") {
                setup::build_chain()?;
                shell::step("building the collector (release)", || {
                    shell::cargo(&["build", "--release", "--bins"])
                })?;
                let report = bench_relay::run(&root, &relay_rates, seconds)?;
                let path = root.join("target/bench/relay.json");
                std::fs::create_dir_all(root.join("target/bench"))?;
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
                eprintln!("xtask: relay report in {}", path.display());
            }
            Ok(())
        }

        Command::Demo { requests, a, args } => {
            setup::build_chain()?;
            shell::step("building the collector", || {
                shell::cargo(&["build", "--bins"])
            })?;
            demo::run(&root, requests, &a, &args)
        }
        Command::Lint => {
            setup::build_chain()?;
            shell::cargo(&["fmt", "--all", "--", "--check"])?;
            shell::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            // The eBPF crate only builds for the BPF target, with nightly.
            shell::run(
                std::process::Command::new("cargo")
                    .args([
                        "+nightly",
                        "clippy",
                        "--package",
                        "collector-ebpf",
                        "--release",
                    ])
                    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                    .args(["--", "-D", "warnings"]),
            )
        }
    }
}
