//! `collector run`: wires the stages together and owns the main loop and shutdown.

use std::{io::BufWriter, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{ExporterKind, RunArgs},
    http::TrackerLimits,
    pipeline::Pipeline,
    source::{
        clock::{Clock, monotonic_now_ns},
        event::decode,
        kernel::{KernelSource, SourceOptions},
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
        "capturing on {}",
        source.attached().join(", ")
    );

    let stdout = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let clock = Clock::now();
    let mut pipeline = match args.exporter {
        ExporterKind::Events => Pipeline::events(stdout, args.format, clock),
        ExporterKind::Exchanges => {
            Pipeline::exchanges(stdout, args.format, clock, TrackerLimits::default())
        }
    };
    let mut decode_errors = 0u64;

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let interval = Duration::from_millis(args.drain_interval_ms);

    let mut drain = |source: &mut KernelSource, pipeline: &mut Pipeline<_>| {
        let mut result = Ok(());
        source.drain(|record| match decode(record) {
            Ok(event) => {
                if let Err(e) = pipeline.on_event(event)
                    && result.is_ok()
                {
                    result = Err(e);
                }
            }
            Err(e) => {
                decode_errors += 1;
                tracing::debug!("dropping an undecodable record: {e}");
            }
        });
        result?;
        pipeline.tick(monotonic_now_ns())?;
        pipeline.flush()
    };

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            () = source.wait(interval) => {}
        }
        if let Err(e) = drain(&mut source, &mut pipeline) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
    }

    // Stop: take what the kernel still holds, detach everything, finish open exchanges.
    let _ = drain(&mut source, &mut pipeline);
    let counters = source.counters();
    drop(source);
    pipeline
        .finish()
        .and_then(|()| pipeline.flush())
        .context("writing to stdout")?;
    tracing::info!(
        decode_errors,
        "stopped; kernel counters: {}; http: {:?}",
        counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        pipeline.http_stats()
    );
    Ok(())
}
