//! `collector run`: wires the stages together and owns the main loop and shutdown.

use std::{io::BufWriter, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{ExporterKind, RunArgs},
    export::events::EventPrinter,
    source::{
        clock::Clock,
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

    let ExporterKind::Events = args.exporter;
    let stdout = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut printer = EventPrinter::new(stdout, args.format, Clock::now());
    let mut decode_errors = 0u64;

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let interval = Duration::from_millis(args.drain_interval_ms);

    let mut drain = |source: &mut KernelSource, printer: &mut EventPrinter<_>| {
        let mut write_error = None;
        source.drain(|record| match decode(record) {
            Ok(event) => {
                if let Err(e) = printer.on_event(&event) {
                    write_error.get_or_insert(e);
                }
            }
            Err(e) => {
                decode_errors += 1;
                tracing::debug!("dropping an undecodable record: {e}");
            }
        });
        write_error.map_or_else(|| printer.flush(), Err)
    };

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            () = source.wait(interval) => {}
        }
        if let Err(e) = drain(&mut source, &mut printer) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing to stdout");
        }
    }

    // Stop: take what the kernel still holds, then detach everything.
    let _ = drain(&mut source, &mut printer);
    let counters = source.counters();
    drop(source);
    tracing::info!(
        decode_errors,
        conns_not_remembered = printer.conns_not_remembered,
        "stopped; kernel counters: {}",
        counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
