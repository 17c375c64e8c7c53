//! The span exporters of `collector run`: which one `--exporter` names, its delivery queues
//! (closed and drained at stop), and what `/metrics` says about them.

use std::time::Duration;

use anyhow::Context as _;

use crate::{
    cli::{ExporterKind, RunArgs},
    export::{
        SpanExporter,
        destination::{self, Destination, Routed},
        otlp::{self, OtlpConfig, OtlpQueue, SigV4, settings},
        traces::TracePrinter,
        xray::{self, XrayConfig, XrayQueue},
    },
};

/// The network exporters running, for the relay, the counters and the stop.
#[derive(Default)]
pub struct Delivery {
    pub xray: Option<(XrayQueue, tokio::task::JoinHandle<()>)>,
    pub otlp: Option<(OtlpQueue, tokio::task::JoinHandle<()>)>,
    /// `xray-otlp` and `auto`: where spans go now.
    pub destination: Option<Destination>,
}

impl Delivery {
    /// Their counters, and which way spans go.
    pub fn pairs(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Some((q, _)) = &self.xray {
            out.extend(q.0.stats().pairs("xray"));
            out.push(("xray_queue_depth".into(), q.0.len() as u64));
        }
        if let Some((q, _)) = &self.otlp {
            out.extend(q.pairs());
        }
        if let Some(d) = &self.destination {
            out.push(("export_xray_otlp".into(), u64::from(d.is_otlp())));
        }
        out
    }

    /// What is still queued when the collector exits.
    pub fn undelivered(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Some((q, _)) = &self.xray {
            out.push(("xray_undelivered_at_exit".into(), q.0.len() as u64));
        }
        if let Some((q, _)) = &self.otlp {
            out.push(("otlp_undelivered_at_exit".into(), q.queue.len() as u64));
        }
        out
    }

    /// Delivers what is queued, within `deadline` for all queues together.
    pub async fn close(&mut self, deadline: Duration) {
        if let Some((q, _)) = &self.xray {
            q.0.close();
        }
        if let Some((q, _)) = &self.otlp {
            q.queue.close();
        }
        let stop = tokio::time::Instant::now() + deadline;
        if let Some((q, task)) = &mut self.xray
            && tokio::time::timeout_at(stop, task).await.is_err()
        {
            tracing::warn!(
                "{} segment documents not delivered within {deadline:?}",
                q.0.len()
            );
        }
        if let Some((q, task)) = &mut self.otlp
            && tokio::time::timeout_at(stop, task).await.is_err()
        {
            tracing::warn!(
                "{} span groups not delivered within {deadline:?}",
                q.queue.len()
            );
        }
    }
}

/// The span exporter `--exporter` names (trace exporters only), with its queues started.
pub async fn start(
    args: &RunArgs,
    aws: Option<&aws_config::SdkConfig>,
    xray_config: &XrayConfig,
    delivery: &mut Delivery,
) -> anyhow::Result<Box<dyn SpanExporter>> {
    let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    // The latency histogram is PutTraceSegments' (its name says so): OTLP calls stay out.
    let otlp_config = |sigv4: Option<SigV4>, endpoint: http::Uri| OtlpConfig {
        endpoint,
        headers: args.otlp_headers.clone().unwrap_or_default().0,
        timeout: Duration::from_millis(args.otlp_timeout_ms),
        gzip: args.otlp_compression == settings::Compression::Gzip,
        sigv4,
        queue_size: args.otlp_queue_size as usize,
        latency: None,
    };
    Ok(match args.exporter {
        ExporterKind::Otlp => {
            let endpoint = args
                .otlp_endpoint
                .clone()
                .or_else(|| args.otlp_base_endpoint.clone())
                .unwrap_or_else(|| {
                    "http://localhost:4318/v1/traces"
                        .parse()
                        .expect("valid URL")
                });
            tracing::info!("spans go to the OTLP endpoint {endpoint}");
            let (q, task) = otlp::start(otlp_config(None, endpoint))?;
            delivery.otlp = Some((q.clone(), task));
            Box::new(q)
        }
        ExporterKind::Xray => {
            let (q, task) = xray::start(xray_config, aws.context("AWS settings")?);
            delivery.xray = Some((q.clone(), task));
            Box::new(q)
        }
        ExporterKind::XrayOtlp | ExporterKind::Auto => {
            let sdk = aws.context("AWS settings")?;
            let region = sdk.region().map_or(String::new(), |r| r.to_string());
            anyhow::ensure!(
                settings::valid_region(&region),
                "--region {region:?} is not an AWS region name (like us-east-1)"
            );
            let endpoint = args
                .otlp_endpoint
                .clone()
                .map_or_else(|| xray_otlp_endpoint(&xray::endpoint(xray_config, sdk)), Ok)?;
            let sigv4 = SigV4 {
                region: region.clone(),
                credentials: sdk
                    .credentials_provider()
                    .context("no AWS credentials provider")?,
            };
            let config = otlp_config(Some(sigv4), endpoint);
            let is_otlp = args.exporter == ExporterKind::XrayOtlp;
            if is_otlp {
                otlp::probe(&config).await?;
                tracing::info!("spans go to X-Ray's OTLP endpoint {}", config.endpoint);
            }
            let (oq, otask) = otlp::start(config)?;
            let (xq, xtask) = xray::start(xray_config, sdk);
            let destination = Destination::otlp(is_otlp);
            if args.exporter == ExporterKind::Auto {
                destination::follow(aws_sdk_xray::Client::new(sdk), destination.clone()).await;
            }
            delivery.otlp = Some((oq.clone(), otask));
            delivery.xray = Some((xq.clone(), xtask));
            delivery.destination = Some(destination.clone());
            Box::new(Routed {
                xray: xq,
                otlp: oq,
                destination,
            })
        }
        ExporterKind::Stdout | ExporterKind::Events | ExporterKind::Exchanges => {
            Box::new(TracePrinter::new(stdout, args.format))
        }
    })
}

/// `https://xray.<region>.amazonaws.com/v1/traces`, or the X-Ray endpoint's `/v1/traces`.
fn xray_otlp_endpoint(xray_endpoint: &str) -> anyhow::Result<http::Uri> {
    format!("{}/v1/traces", xray_endpoint.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("X-Ray endpoint {xray_endpoint:?}"))
}
