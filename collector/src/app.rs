//! `collector run`: wires the stages together and owns the main loop and shutdown.

use std::{io::BufWriter, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{ExporterKind, RunArgs},
    http::TrackerLimits,
    pipeline::Pipeline,
    source::{
        Assembler,
        clock::{Clock, monotonic_now_ns},
        join::JoinLimits,
        kernel::{CapturePath, KernelSource, SourceOptions},
    },
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut source = KernelSource::load(&SourceOptions {
        capture_path: args.capture_path,
        capture_bytes: args.capture_bytes,
        ringbuf_bytes: args.ringbuf_bytes,
    })?;
    tracing::info!(
        hooks = source.attached().len(),
        path = ?source.path(),
        "capturing on {}",
        source.attached().join(", ")
    );
    let mut assembler = match source.path() {
        CapturePath::Socket => Assembler::socket_path(JoinLimits {
            capture_bytes: args.capture_bytes as usize,
            ..JoinLimits::default()
        }),
        _ => Assembler::syscall_path(),
    };

    let stdout = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let clock = Clock::now();
    let mut pipeline = match args.exporter {
        ExporterKind::Events => Pipeline::events(stdout, args.format, clock),
        ExporterKind::Exchanges => {
            Pipeline::exchanges(stdout, args.format, clock, TrackerLimits::default())
        }
    };

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let interval = Duration::from_millis(args.drain_interval_ms);
    let mut events = Vec::new();

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            () = source.wait(interval) => {}
        }
        if let Err(e) = drain(&mut source, &mut assembler, &mut pipeline, &mut events) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
    }

    // Stop: take what the kernel still holds, detach everything, finish open exchanges.
    let _ = drain(&mut source, &mut assembler, &mut pipeline, &mut events);
    let counters = source.counters();
    drop(source);
    assembler.finish(&mut events);
    for event in events.drain(..) {
        pipeline.on_event(event).context("writing to stdout")?;
    }
    pipeline
        .finish()
        .and_then(|()| pipeline.flush())
        .context("writing to stdout")?;
    tracing::info!(
        decode_errors = assembler.decode_errors,
        "stopped; kernel counters: {}; join: {:?}; http: {:?}",
        counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        assembler.join_stats(),
        pipeline.http_stats()
    );
    Ok(())
}

/// One pass of the loop: ring buffer → events → stages → exporter.
fn drain<W: std::io::Write>(
    source: &mut KernelSource,
    assembler: &mut Assembler,
    pipeline: &mut Pipeline<W>,
    events: &mut Vec<crate::source::event::KernelEvent>,
) -> std::io::Result<()> {
    source.drain(|record| assembler.push(record, events));
    let now = monotonic_now_ns();
    assembler.tick(now, events);
    for event in events.drain(..) {
        pipeline.on_event(event)?;
    }
    pipeline.tick(now)?;
    pipeline.flush()
}
