//! What every part that talks to AWS shares (the X-Ray exporter, the OTLP exporter's SigV4
//! signing, the sampling proxy, the instance metadata query): infrastructure, so no stage has
//! to import another stage for it.

use anyhow::Context as _;
use aws_credential_types::provider::{ProvideCredentials as _, SharedCredentialsProvider};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::{Client, connect::HttpConnector};

/// The AWS SDKs' HTTP client: rustls on ring (no aws-lc C build).
pub fn https_client() -> aws_sdk_xray::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// A plain HTTP/1.1 client for requests we build ourselves (https, or http for local
/// endpoints), trusting the system's CA certificates.
pub type HyperClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn hyper_client() -> anyhow::Result<HyperClient> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .context("loading the system's CA certificates")?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// Signs `request` (SigV4, headers) for `service` in `region`; sets `host` first, which the
/// signature covers.
pub async fn sign(
    request: &mut http::Request<Full<Bytes>>,
    body: &[u8],
    service: &str,
    region: &str,
    credentials: &SharedCredentialsProvider,
) -> anyhow::Result<()> {
    let credentials = credentials
        .provide_credentials()
        .await
        .context("no AWS credentials to sign with")?;
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(std::time::SystemTime::now())
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()?
        .into();
    let host = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    request.headers_mut().insert("host", host.parse()?);
    let uri = request.uri().to_string();
    let method = request.method().as_str().to_owned();
    let signable = aws_sigv4::http_request::SignableRequest::new(
        &method,
        &uri,
        request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        aws_sigv4::http_request::SignableBody::Bytes(body),
    )?;
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}
