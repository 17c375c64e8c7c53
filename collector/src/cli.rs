//! Command line: `collector run`, `collector version`.

use clap::{Args, Parser, Subcommand};

pub use crate::logging::LogFormat;
use crate::{
    export::{OutputFormat, otlp::settings},
    source::kernel::CapturePath,
};

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
    /// What this kernel and host allow, and what that means for capture: each capture path is
    /// loaded and unloaded to see whether this kernel takes it (exits 1 when none does).
    Doctor {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExporterKind {
    /// X-Ray segment documents on stdout: a readable block per trace (JSON with --format json).
    Stdout,
    /// PutTraceSegments to AWS X-Ray (credentials and region from the default AWS chain).
    Xray,
    /// OTLP/HTTP protobuf to any OpenTelemetry backend (`--otlp-endpoint`).
    Otlp,
    /// OTLP to X-Ray's OTLP endpoint, SigV4-signed (accounts with Transaction Search on);
    /// X-Ray SDK documents still go to PutTraceSegments.
    XrayOtlp,
    /// `xray-otlp` or `xray`, as X-Ray's GetTraceSegmentDestination says (asked at start and
    /// every 10 minutes): for the DaemonSet.
    Auto,
    /// One line per HTTP exchange: role, process, method, URL, status, duration, sizes.
    Exchanges,
    /// One line per kernel event (connection opened/closed, bytes moved): a debug view.
    Events,
}

impl ExporterKind {
    /// Builds traces (span groups), and so enriches, samples and relays SDK documents.
    pub fn traces(self) -> bool {
        !matches!(self, Self::Events | Self::Exchanges)
    }

    /// Sends to X-Ray (and so needs AWS settings).
    pub fn to_xray(self) -> bool {
        matches!(self, Self::Xray | Self::XrayOtlp | Self::Auto)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML file of settings: keys are these options' long names (`capture-bytes: 4096`).
    /// Flags and environment variables override it.
    #[arg(short = 'c', long, env = "COLLECTOR_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Print every setting, its value and where it came from (flag, environment, config
    /// file, default), then exit.
    #[arg(long)]
    pub print_config: bool,

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

    /// Trace only the processes of this cgroup v2 directory and its descendants (e.g. one
    /// collector per node on a host with nested cgroups): the cgroup programs attach there
    /// instead of the hierarchy's root. Two collectors never claim the same cgroup, nor one
    /// inside another's.
    #[arg(long, env = "COLLECTOR_CGROUP", value_parser = crate::source::cgroup::parse_cgroup)]
    pub cgroup: Option<crate::source::cgroup::TracedCgroup>,

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

    /// OTLP endpoint of the `otlp` exporter (or of `xray-otlp`, instead of the region's): the
    /// full URL, `/v1/traces` added when it has no path (default
    /// http://localhost:4318/v1/traces, or OTEL_EXPORTER_OTLP_ENDPOINT's `/v1/traces`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_parser = settings::parse_endpoint)]
    pub otlp_endpoint: Option<http::Uri>,

    /// Base URL of the OTLP endpoint (`/v1/traces` is added), as the OpenTelemetry SDKs read
    /// OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = settings::parse_base_endpoint)]
    pub otlp_base_endpoint: Option<http::Uri>,

    /// Headers of every OTLP request: `key=value,key2=value2`, values percent-encoded (API
    /// keys: their values are never printed).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", value_parser = settings::parse_headers)]
    pub otlp_headers: Option<settings::Headers>,

    /// How long one OTLP request may take, in milliseconds.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub otlp_timeout_ms: u64,

    /// Compression of OTLP request bodies.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_COMPRESSION",
        value_enum,
        default_value = "gzip"
    )]
    pub otlp_compression: settings::Compression,

    /// The OTLP protocol: only `http/protobuf` is spoken (a gRPC setting is refused rather
    /// than sent to the wrong port).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf",
          value_parser = settings::parse_protocol)]
    pub otlp_protocol: String,

    /// Span groups held for an OTLP endpoint at most; beyond, the oldest are dropped (counted).
    #[arg(long, env = "COLLECTOR_OTLP_QUEUE_SIZE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub otlp_queue_size: u64,

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

    /// Query parameters kept in URLs, by name (repeatable, or comma-separated); every other
    /// parameter is dropped as soon as the request is parsed.
    #[arg(
        long = "allowed-query-params",
        env = "COLLECTOR_ALLOWED_QUERY_PARAMS",
        value_delimiter = ','
    )]
    pub allowed_query_params: Vec<String>,

    /// How often the ring buffer is drained, in milliseconds.
    #[arg(long, env = "COLLECTOR_DRAIN_INTERVAL_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub drain_interval_ms: u64,

    /// UDP address for X-Ray SDK segments, as the X-Ray daemon's `-b` (default: from
    /// AWS_XRAY_DAEMON_ADDRESS, else 127.0.0.1:2000; `off` to disable).
    #[arg(short = 'b', long, env = "COLLECTOR_BIND", value_parser = parse_bind)]
    pub bind: Option<Bind>,

    /// TCP address of the sampling proxy for X-Ray SDKs, as the daemon's `-t` (default: from
    /// AWS_XRAY_DAEMON_ADDRESS, else 127.0.0.1:2000; `off` to disable).
    #[arg(short = 't', long, env = "COLLECTOR_BIND_TCP", value_parser = parse_bind)]
    pub bind_tcp: Option<Bind>,

    /// Sampling of the traces the collector makes: `auto` applies it to the xray exporter
    /// only (stdout shows everything), `on` to every trace exporter, `off` to none.
    #[arg(long, env = "COLLECTOR_SAMPLING", value_enum, default_value = "auto")]
    pub sampling: SamplingMode,

    /// Local sampling rules (the X-Ray SDKs' JSON format, version 2) instead of X-Ray's
    /// centralized rules.
    #[arg(long, env = "COLLECTOR_SAMPLING_RULES")]
    pub sampling_rules: Option<std::path::PathBuf>,

    /// Where `/metrics` (Prometheus), `/healthz` and `/readyz` are served (`off` to disable).
    #[arg(long, env = "COLLECTOR_METRICS_BIND", default_value = DEFAULT_METRICS_BIND, value_parser = parse_bind)]
    pub metrics_bind: Bind,

    /// CPU budget, in percent of one core: beyond it capture sheds load (0 = none).
    #[arg(long, env = "COLLECTOR_MAX_CPU_PERCENT", default_value_t = 0.0,
          value_parser = parse_percent)]
    pub max_cpu_percent: f64,

    /// Memory budget (resident), in MiB: beyond it capture sheds load (0 = none).
    #[arg(long, env = "COLLECTOR_MAX_MEMORY_MB", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub max_memory_mb: u64,

    /// Trace only these Kubernetes namespaces (repeatable, or comma-separated; default: all).
    #[arg(long, env = "COLLECTOR_INCLUDE_NAMESPACES", value_delimiter = ',')]
    pub include_namespaces: Vec<String>,

    /// Never trace these Kubernetes namespaces (repeatable, or comma-separated).
    #[arg(long, env = "COLLECTOR_EXCLUDE_NAMESPACES", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,

    /// Trace only pods matching this label selector (`app=web,tier!=batch,canary`).
    #[arg(long, env = "COLLECTOR_INCLUDE_POD_LABELS", value_parser = parse_selector)]
    pub include_pod_labels: Option<crate::filter::Selector>,

    /// Never trace pods matching this label selector.
    #[arg(long, env = "COLLECTOR_EXCLUDE_POD_LABELS", value_parser = parse_selector)]
    pub exclude_pod_labels: Option<crate::filter::Selector>,

    /// Trace only processes with these names (as in /proc/PID/comm; default: all).
    #[arg(
        long = "include-process",
        env = "COLLECTOR_INCLUDE_PROCESSES",
        value_delimiter = ','
    )]
    pub include_processes: Vec<String>,

    /// Trace only requests served on (or calls made to) these TCP ports (default: all).
    #[arg(
        long = "include-port",
        env = "COLLECTOR_INCLUDE_PORTS",
        value_delimiter = ','
    )]
    pub include_ports: Vec<u16>,

    /// Never trace requests served on (or calls made to) these TCP ports.
    #[arg(
        long = "exclude-port",
        env = "COLLECTOR_EXCLUDE_PORTS",
        value_delimiter = ','
    )]
    pub exclude_ports: Vec<u16>,

    /// Trace Kubernetes health checks too (requests with User-Agent `kube-probe/*`, dropped by
    /// default).
    #[arg(long, env = "COLLECTOR_TRACE_KUBE_PROBES")]
    pub trace_kube_probes: bool,

    /// Log format: `text` (human) or `json` (one object per line).
    #[arg(long, env = "COLLECTOR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(short = 'l', long, env = "COLLECTOR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplingMode {
    Auto,
    On,
    Off,
}

pub const DEFAULT_METRICS_BIND: &str = "127.0.0.1:9464";

/// A listen address, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bind(pub Option<std::net::SocketAddr>);

fn parse_bind(s: &str) -> Result<Bind, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Bind(None));
    }
    s.parse()
        .map(|a| Bind(Some(a)))
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:9464 (or `off`)"))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=10_000.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage between 0 and 10000")),
    }
}

fn parse_selector(s: &str) -> Result<crate::filter::Selector, String> {
    s.parse()
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
    fn bad_otlp_settings_are_rejected_naming_the_setting() {
        for (flag, value, named) in [
            (
                "--otlp-endpoint",
                "collector:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            ("--otlp-headers", "no-equals", "OTEL_EXPORTER_OTLP_HEADERS"),
            ("--otlp-timeout-ms", "0", "--otlp-timeout-ms"),
            ("--otlp-compression", "zstd", "--otlp-compression"),
            ("--otlp-protocol", "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ] {
            let err = Cli::try_parse_from(["collector", "run", flag, value]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(named), "{flag}: {err}");
        }
        let ok = Cli::try_parse_from(["collector", "run", "--exporter", "xray-otlp"]).unwrap();
        let Command::Run(args) = ok.command else {
            panic!()
        };
        assert!(args.exporter.to_xray() && args.exporter.traces());
        assert_eq!(args.otlp_compression, settings::Compression::Gzip);
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
