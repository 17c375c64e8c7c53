//! What every part that talks to AWS shares (the X-Ray exporter, the instance metadata
//! query): infrastructure, so no stage has to import another stage for it.

/// The AWS SDKs' HTTP client: rustls on ring (no aws-lc C build).
pub fn https_client() -> aws_sdk_xray::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}
