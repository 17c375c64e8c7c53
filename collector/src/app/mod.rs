//! `collector run`: wires the stages together and owns the main loop and shutdown.

mod counters;
mod exporters;

use std::{
    io::BufWriter,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    cli::{ExporterKind, RunArgs, SamplingMode},
    enrich::{EnrichConfig, Enricher, ProcCgroups, SharedMeta, ec2, kube_watch},
    export::xray::{self, XrayConfig},
    filter::{Filters, HealthChecks, Selection},
    guard::{self, Budget, Guard, measure},
    http::TrackerLimits,
    pipeline::Pipeline,
    relay,
    sampling::{self, Sampler},
    source::{
        Assembler,
        capture_path::Variant,
        cgroup::TracedCgroup,
        clock::{Clock, monotonic_now_ns},
        event::KernelEvent,
        join::JoinLimits,
        kernel::{CapturePath, KernelSource, SourceOptions},
        tables::TableStats,
    },
    status::{self, Status},
    trace::{TraceConfig, span::GroupStage},
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // First: a signal during set-up must stop the collector cleanly, not kill it.
    let mut signals = Signals::install()?;
    crate::http::redact::allow_query_params(args.allowed_query_params.clone());
    let status = Status::default();
    if let Some(bind) = args.metrics_bind.0 {
        match status::server::start(bind, status.clone()).await {
            Ok(addr) => {
                tracing::info!("metrics on http://{addr}/metrics (health: /healthz, /readyz)")
            }
            // Nobody asked for the default address: its being taken stops nothing.
            Err(e) if bind.to_string() == crate::cli::DEFAULT_METRICS_BIND => {
                tracing::warn!("{e:#}; running without /metrics")
            }
            Err(e) => return Err(e),
        }
    }
    let source_options = SourceOptions {
        capture_path: args.capture_path,
        capture_bytes: args.capture_bytes,
        ringbuf_bytes: args.ringbuf_bytes,
        exclude_processes: args.exclude_processes.clone(),
        cgroup: args.cgroup.clone(),
    };
    // Held until the collector exits: no second collector traces this cgroup meanwhile.
    let _cgroup_claim = args.cgroup.as_ref().map(TracedCgroup::claim).transpose()?;
    let mut source = if args.capture_path == CapturePath::Off {
        tracing::info!("capture off (--capture-path off): relaying X-Ray SDK segments only");
        None
    } else {
        Some(attach(&source_options)?)
    };
    let variant = source.as_ref().map(KernelSource::variant);
    // A re-attach (SIGUSR2) takes the variant that ran: the assembler is made for it.
    let source_options = SourceOptions {
        capture_path: variant.map_or(CapturePath::Off, Variant::forced),
        ..source_options
    };
    let mut assembler = match variant {
        Some(v) if v.is_socket_layer() => Assembler::socket_path(JoinLimits {
            capture_bytes: args.capture_bytes as usize,
            ..JoinLimits::default()
        }),
        _ => Assembler::syscall_path(),
    };

    let stdout = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let clock = Clock::now();
    let trace_config = TraceConfig {
        service_name: args.service_name.clone(),
        hold_ns: args.trace_hold_ms * 1_000_000,
        ..TraceConfig::default()
    };
    // Pod and node metadata, for the exporters that build traces.
    let shared = SharedMeta::default();
    let mut kube_stats = None;
    if args.exporter.traces() {
        kube_stats =
            kube_watch::start(args.kubernetes, args.node_name.clone(), shared.clone()).await;
        ec2::spawn(shared.clone());
    }
    let enricher = Enricher::new(
        EnrichConfig {
            cluster_name: args.cluster_name.clone(),
            node_name: args.node_name.clone(),
        },
        shared.clone(),
        ProcCgroups,
    );
    let xray_config = XrayConfig {
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
        queue_size: args.xray_queue_size as usize,
        latency: Some(status.export_latency().clone()),
    };
    // AWS settings: required by the exporters to X-Ray; elsewhere only when a region is
    // given (the sampling proxy and centralized sampling need them).
    let aws = if args.exporter.to_xray() {
        Some(xray::load_aws(&xray_config).await?)
    } else if args.region.is_some() {
        xray::load_aws(&xray_config).await.ok()
    } else {
        None
    };
    // The group stages, in the data's order.
    let mut stages: Vec<Box<dyn GroupStage>> = vec![
        Box::new(enricher),
        Box::new(Selection::new(filters(&args), shared.sdk_senders.clone())),
    ];
    if let Some(s) = sampler(&args, aws.as_ref(), &xray_config)? {
        stages.push(Box::new(s));
    }
    let mut delivery = exporters::Delivery::default();
    let mut pipeline = match args.exporter {
        ExporterKind::Events => Pipeline::events(stdout, args.format, clock),
        ExporterKind::Exchanges => {
            Pipeline::exchanges(stdout, args.format, clock, TrackerLimits::default())
        }
        _ => Pipeline::traces(
            exporters::start(&args, aws.as_ref(), &xray_config, &mut delivery).await?,
            clock,
            TrackerLimits::default(),
            trace_config,
            HealthChecks::new(filters(&args)),
            stages,
        ),
    };
    // The X-Ray daemon's job: SDK segments on UDP, sampling requests on TCP.
    let (sdk_docs_tx, sdk_docs) = std::sync::mpsc::sync_channel::<String>(SDK_DOCS_WAITING);
    let mut relay_stats = None;
    let mut proxy_stats = None;
    if args.exporter.traces() {
        let (udp, tcp) = relay_addresses(&args)?;
        if let Some(bind) = udp {
            let sink = match &delivery.xray {
                Some((q, _)) => relay::Sink::Queue(std::sync::Arc::new(q.clone())),
                None => relay::Sink::MainLoop(sdk_docs_tx),
            };
            match relay::start_udp(bind, sink, shared.clone(), shared.sdk_senders.clone()).await {
                Ok((addr, stats)) => {
                    tracing::info!("X-Ray SDK segments accepted on udp://{addr}");
                    relay_stats = Some(stats);
                }
                Err(e) if args.bind.is_none() => tracing::warn!("{e:#}; no SDK relay"),
                Err(e) => return Err(e),
            }
        }
        if let Some(bind) = tcp {
            match &aws {
                Some(sdk) => {
                    let upstream = relay::proxy::Upstream {
                        endpoint: xray::endpoint(&xray_config, sdk),
                        region: sdk.region().map_or("us-east-1".into(), |r| r.to_string()),
                        credentials: sdk
                            .credentials_provider()
                            .context("no AWS credentials provider")?,
                    };
                    match relay::proxy::start(bind, upstream).await {
                        Ok((addr, stats)) => {
                            tracing::info!("X-Ray SDK sampling proxy on tcp://{addr}");
                            proxy_stats = Some(stats);
                        }
                        Err(e) if args.bind_tcp.is_none() => {
                            tracing::warn!("{e:#}; no sampling proxy")
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => tracing::info!(
                    "no sampling proxy for X-Ray SDKs: it needs AWS settings (--exporter xray, or a region)"
                ),
            }
        }
    }
    status.set_ready(true, "");

    let interval = Duration::from_millis(args.drain_interval_ms);
    let mut events = Vec::new();
    let mut guard = Guard::new(Budget {
        max_cpu_percent: args.max_cpu_percent,
        max_rss_bytes: args.max_memory_mb << 20,
    });
    // Kernel counters of capture sessions already detached (kill switch).
    let mut kernel_before: Vec<(&'static str, u64)> = Vec::new();
    let mut last_check = Instant::now();
    let mut tables = TableStats::default();
    let mut checks = 0u64;

    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.usr1.recv() => {
                if let Some(mut s) = source.take() {
                    let _ = drain(&mut s, &mut assembler, &mut pipeline, &mut events);
                    counters::add_kernel(&mut kernel_before, &s.counters());
                    drop(s);
                    tracing::warn!(
                        "kill switch (SIGUSR1): probes detached, exporters keep running; SIGUSR2 attaches them again"
                    );
                }
            }
            _ = signals.usr2.recv() => {
                if source.is_none() {
                    match attach(&source_options) {
                        Ok(s) => source = Some(s),
                        Err(e) => tracing::error!("re-attaching (SIGUSR2) failed: {e:#}"),
                    }
                }
            }
            () = wait(&mut source, interval) => {}
        }
        let mut docs: Vec<String> = sdk_docs.try_iter().take(SDK_DOCS_WAITING).collect();
        if !docs.is_empty()
            && let Err(e) = pipeline.export_documents(&mut docs)
        {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
        let step = match source.as_mut() {
            Some(s) => drain(s, &mut assembler, &mut pipeline, &mut events),
            None => idle(&mut assembler, &mut pipeline, &mut events),
        };
        if let Err(e) = step {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            checks += 1;
            if checks.is_multiple_of(10) {
                guard::release_free_memory();
            }
            if let Some(on) = guard.check(measure(monotonic_now_ns())) {
                shed(source.as_mut(), on, &args);
            }
            let mut kernel = kernel_before.clone();
            if let Some(s) = &mut source {
                counters::add_kernel(&mut kernel, &s.counters());
                let closes = tables.maybe_sweep(s, last_check, monotonic_now_ns());
                if !closes.is_empty() {
                    // Their opens first.
                    s.drain(|record| assembler.push(record, &mut events));
                    events.extend(closes);
                }
            }
            status.publish(counters::collect(&counters::Sources {
                kernel: &kernel,
                assembler: &assembler,
                pipeline: &pipeline,
                shared: &shared,
                kube: kube_stats.as_ref(),
                delivery: &delivery,
                guard: &guard,
                capture_attached: source.is_some(),
                variant,
                relay: relay_stats.as_deref(),
                proxy: proxy_stats.as_deref(),
                tables: &tables,
            }));
        }
    }
    status.set_ready(false, "stopping");
    // A second signal exits at once (the kernel detaches our links when the process ends).
    signals.exit_on_next();

    // Stop: take what the kernel still holds, detach everything, finish open exchanges.
    let mut kernel = kernel_before;
    if let Some(mut s) = source.take() {
        let _ = drain(&mut s, &mut assembler, &mut pipeline, &mut events);
        counters::add_kernel(&mut kernel, &s.counters());
    }
    let stop_ns = monotonic_now_ns();
    assembler.finish(&mut events);
    for event in events.drain(..) {
        pipeline.on_event(event).context("writing to stdout")?;
    }
    pipeline
        .finish(stop_ns)
        .and_then(|()| pipeline.flush())
        .context("writing to stdout")?;
    // Deliver what is queued, within the deadline.
    delivery
        .close(Duration::from_secs(args.shutdown_timeout_secs))
        .await;
    let mut pairs = counters::collect(&counters::Sources {
        kernel: &kernel,
        assembler: &assembler,
        pipeline: &pipeline,
        shared: &shared,
        kube: kube_stats.as_ref(),
        delivery: &delivery,
        guard: &guard,
        capture_attached: false,
        variant,
        relay: relay_stats.as_deref(),
        proxy: proxy_stats.as_deref(),
        tables: &tables,
    });
    pairs.extend(delivery.undelivered());
    status.publish(pairs.clone());
    tracing::info!("stopped; summary: {}", counters::line(&pairs));
    Ok(())
}

/// SDK documents waiting for the main loop (stdout exporter); beyond, they are counted as
/// dropped by the relay.
const SDK_DOCS_WAITING: usize = 65_536;

/// The relay's UDP and TCP addresses: flags (or their environment variables), else
/// AWS_XRAY_DAEMON_ADDRESS, else 127.0.0.1:2000 for both.
fn relay_addresses(
    args: &RunArgs,
) -> anyhow::Result<(Option<std::net::SocketAddr>, Option<std::net::SocketAddr>)> {
    let from_env = match std::env::var("AWS_XRAY_DAEMON_ADDRESS") {
        Ok(v) if !v.trim().is_empty() => {
            Some(relay::daemon_address(&v).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let default: std::net::SocketAddr = "127.0.0.1:2000".parse().expect("valid");
    let udp = args
        .bind
        .map(|b| b.0)
        .unwrap_or(Some(from_env.map_or(default, |(u, _)| u)));
    let tcp = args
        .bind_tcp
        .map(|b| b.0)
        .unwrap_or(Some(from_env.map_or(default, |(_, t)| t)));
    Ok((udp, tcp))
}

/// Sampling of our traces: local rules from a file, X-Ray's centralized rules (polled), or
/// none — by default only for the xray exporter.
fn sampler(
    args: &RunArgs,
    aws: Option<&aws_config::SdkConfig>,
    xray_config: &XrayConfig,
) -> anyhow::Result<Option<Sampler>> {
    let on = match args.sampling {
        SamplingMode::Off => false,
        SamplingMode::On => true,
        SamplingMode::Auto => args.exporter.to_xray(),
    };
    if !on || !args.exporter.traces() {
        return Ok(None);
    }
    if let Some(path) = &args.sampling_rules {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--sampling-rules {}", path.display()))?;
        let rules = sampling::rules::parse_local(&text)
            .map_err(|e| anyhow::anyhow!("--sampling-rules {}: {e}", path.display()))?;
        tracing::info!(rules = rules.len(), "local sampling rules");
        return Ok(Some(Sampler::with_rules(rules)));
    }
    let rules = std::sync::Arc::new(std::sync::Mutex::new(sampling::default_rules()));
    match aws {
        Some(sdk) => {
            let _ = xray_config;
            sampling::poller::spawn(aws_sdk_xray::Client::new(sdk), rules.clone());
        }
        None => tracing::info!(
            "sampling by the default rule (1/s, then 5 %): no AWS settings to fetch X-Ray's rules"
        ),
    }
    Ok(Some(Sampler::new(rules)))
}

fn filters(args: &RunArgs) -> Filters {
    Filters {
        include_namespaces: args.include_namespaces.clone(),
        exclude_namespaces: args.exclude_namespaces.clone(),
        include_pod_labels: args.include_pod_labels.clone(),
        exclude_pod_labels: args.exclude_pod_labels.clone(),
        include_processes: args.include_processes.clone(),
        include_ports: args.include_ports.clone(),
        exclude_ports: args.exclude_ports.clone(),
        trace_kube_probes: args.trace_kube_probes,
    }
}

fn attach(options: &SourceOptions) -> anyhow::Result<KernelSource> {
    let source = KernelSource::load(options)?;
    tracing::info!(
        hooks = source.attached().len(),
        path = %source.variant(),
        "capturing on {}",
        source.attached().join(", ")
    );
    Ok(source)
}

fn shed(source: Option<&mut KernelSource>, on: bool, args: &RunArgs) {
    if on {
        tracing::warn!(
            max_cpu_percent = args.max_cpu_percent,
            max_memory_mb = args.max_memory_mb,
            "over budget: shedding load (traced connections' data is counted, not captured)"
        );
    } else {
        tracing::info!("back under budget: capture resumes");
    }
    if let Some(s) = source
        && let Err(e) = s.set_shedding(on)
    {
        tracing::error!("{e:#}");
    }
}

async fn wait(source: &mut Option<KernelSource>, interval: Duration) {
    match source {
        Some(s) => s.wait(interval).await,
        None => tokio::time::sleep(interval).await,
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let on = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Self {
            term: on(SignalKind::terminate(), "SIGTERM")?,
            int: on(SignalKind::interrupt(), "SIGINT")?,
            usr1: on(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: on(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }

    fn exit_on_next(self) {
        let Self {
            mut term, mut int, ..
        } = self;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("second signal: exiting now, without flushing");
            std::process::exit(130);
        });
    }
}

/// One pass of the loop: ring buffer → events → stages → exporter.
fn drain<W: std::io::Write>(
    source: &mut KernelSource,
    assembler: &mut Assembler,
    pipeline: &mut Pipeline<W>,
    events: &mut Vec<KernelEvent>,
) -> std::io::Result<()> {
    source.drain(|record| assembler.push(record, events));
    idle(assembler, pipeline, events)
}

/// The periodic work of the stages, with or without a kernel source.
fn idle<W: std::io::Write>(
    assembler: &mut Assembler,
    pipeline: &mut Pipeline<W>,
    events: &mut Vec<KernelEvent>,
) -> std::io::Result<()> {
    let now = monotonic_now_ns();
    assembler.tick(now, events);
    for event in events.drain(..) {
        pipeline.on_event(event)?;
    }
    pipeline.tick(now)?;
    pipeline.flush()
}
