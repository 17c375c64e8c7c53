//! Command line: `collector run`, `collector version`.

use clap::{Args, Parser, Subcommand};

use crate::{export::OutputFormat, source::kernel::CapturePath};

#[derive(Debug, Parser)]
#[command(
    name = "collector",
    version,
    about = "eBPF trace collector for AWS X-Ray"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture and export until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// What this kernel and host allow, and what that means for capture (exits 1 when capture
    /// is impossible).
    Doctor,
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExporterKind {
    /// X-Ray segment documents on stdout: a readable block per trace (JSON with --format json).
    Stdout,
    /// PutTraceSegments to AWS X-Ray (credentials and region from the default AWS chain).
    Xray,
    /// One line per HTTP exchange: role, process, method, URL, status, duration, sizes.
    Exchanges,
    /// One line per kernel event (connection opened/closed, bytes moved): a debug view.
    Events,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where captured data goes.
    #[arg(long, env = "COLLECTOR_EXPORTER", value_enum, default_value = "stdout")]
    pub exporter: ExporterKind,

    /// Output format of the stdout exporters.
    #[arg(long, env = "COLLECTOR_FORMAT", value_enum, default_value = "text")]
    pub format: OutputFormat,

    /// Which kernel hooks capture traffic.
    #[arg(
        long,
        env = "COLLECTOR_CAPTURE_PATH",
        value_enum,
        default_value = "auto"
    )]
    pub capture_path: CapturePath,

    /// Payload bytes copied per recv/send call (the rest is counted, not copied).
    #[arg(long, env = "COLLECTOR_CAPTURE_BYTES", default_value_t = collector_common::DEFAULT_CAPTURE_BYTES,
          value_parser = clap::value_parser!(u32).range(1..=collector_common::MAX_CAPTURE_BYTES as i64))]
    pub capture_bytes: u32,

    /// Size of the kernel→collector ring buffer in bytes (a power of two, ≥ 4096).
    #[arg(long, env = "COLLECTOR_RINGBUF_BYTES", default_value_t = 8 << 20, value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,

    /// Segment name for every traced service (default: the process name).
    #[arg(long, env = "COLLECTOR_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// Kubernetes pod metadata: `auto` uses the API when a service account or kubeconfig is
    /// found (else host mode), `off` never contacts it.
    #[arg(long, env = "COLLECTOR_KUBERNETES", value_enum, default_value = "auto")]
    pub kubernetes: crate::enrich::kube_watch::KubeMode,

    /// This node's name (the DaemonSet sets it from the Downward API's spec.nodeName): only
    /// pods on this node are watched.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// EKS cluster name for segments' aws.eks.cluster_name.
    #[arg(long, env = "COLLECTOR_CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// AWS region of the X-Ray endpoint.
    #[arg(short = 'n', long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// X-Ray endpoint URL (default: the region's; also read from AWS_ENDPOINT_URL_XRAY).
    #[arg(long, env = "COLLECTOR_XRAY_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,

    /// Segment documents held for X-Ray at most; beyond, the oldest are dropped (counted).
    #[arg(long, env = "COLLECTOR_XRAY_QUEUE_SIZE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(50..=1_000_000))]
    pub xray_queue_size: u64,

    /// How long after an exchange ends its segment is built (links arriving in that time
    /// are made), in milliseconds.
    #[arg(long, env = "COLLECTOR_TRACE_HOLD_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub trace_hold_ms: u64,

    /// At stop, how long queued segments may take to be delivered, in seconds.
    #[arg(long, env = "COLLECTOR_SHUTDOWN_TIMEOUT_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_timeout_secs: u64,

    /// Never trace connections of processes with this name (as in /proc/PID/comm; names are
    /// cut to 15 bytes like the kernel's). Repeatable, or comma-separated.
    #[arg(
        long = "exclude-process",
        env = "COLLECTOR_EXCLUDE_PROCESSES",
        value_delimiter = ','
    )]
    pub exclude_processes: Vec<String>,

    /// How often the ring buffer is drained, in milliseconds.
    #[arg(long, env = "COLLECTOR_DRAIN_INTERVAL_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub drain_interval_ms: u64,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(short = 'l', long, env = "COLLECTOR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two ≥ 4096"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_defaults_to_the_stdout_exporter_on_the_best_path() {
        let cli = Cli::try_parse_from(["collector", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.exporter, ExporterKind::Stdout);
        assert_eq!(args.capture_path, CapturePath::Auto);
        assert_eq!(args.capture_bytes, collector_common::DEFAULT_CAPTURE_BYTES);
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_flag_named() {
        let err = Cli::try_parse_from(["collector", "run", "--ringbuf-bytes", "5000"]).unwrap_err();
        assert!(err.to_string().contains("--ringbuf-bytes"), "{err}");
        assert!(err.to_string().contains("power of two"), "{err}");
        let err = Cli::try_parse_from(["collector", "run", "--capture-bytes", "0"]).unwrap_err();
        assert!(err.to_string().contains("--capture-bytes"), "{err}");
    }
}
