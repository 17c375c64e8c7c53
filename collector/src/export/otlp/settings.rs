//! The OTLP exporters' settings as flags and the OpenTelemetry SDKs' environment variables
//! (`OTEL_EXPORTER_OTLP_*`). A bad value stops start-up naming the setting (clap exits 2).

/// A valid value of `--otlp-headers`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers(pub http::HeaderMap);

/// `--otlp-endpoint` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full URL; a URL without a
/// path gets `/v1/traces`.
pub fn parse_endpoint(s: &str) -> Result<http::Uri, String> {
    let uri = url(s, "--otlp-endpoint / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")?;
    if matches!(uri.path(), "" | "/") {
        return with_traces_path(&uri);
    }
    Ok(uri)
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL, to which `v1/traces` is added.
pub fn parse_base_endpoint(s: &str) -> Result<http::Uri, String> {
    with_traces_path(&url(s, "OTEL_EXPORTER_OTLP_ENDPOINT")?)
}

fn with_traces_path(base: &http::Uri) -> Result<http::Uri, String> {
    let s = base.to_string();
    format!("{}/v1/traces", s.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("{s}: {e}"))
}

fn url(s: &str, setting: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a URL ({e}) for {setting}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!(
            "{s:?} is not an http:// or https:// URL with a host, for {setting}"
        )),
    }
}

/// `key=value,key2=value2`, values percent-decoded (the OpenTelemetry SDKs' format).
pub fn parse_headers(s: &str) -> Result<Headers, String> {
    const SETTING: &str = "--otlp-headers / OTEL_EXPORTER_OTLP_HEADERS";
    let mut map = http::HeaderMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value, in {SETTING}"))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name, in {SETTING}", k.trim()))?;
        let value = percent_decode(v.trim())
            .and_then(|v| http::HeaderValue::from_str(&v).ok())
            .ok_or_else(|| {
                format!(
                    "the value of {:?} is not a header value, in {SETTING}",
                    k.trim()
                )
            })?;
        let mut value = value;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(Headers(map))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: only `http/protobuf` is spoken.
pub fn parse_protocol(s: &str) -> Result<String, String> {
    match s.trim() {
        "http/protobuf" => Ok(s.trim().to_owned()),
        other => Err(format!(
            "{other:?}: only http/protobuf is supported (OTEL_EXPORTER_OTLP_PROTOCOL / --otlp-protocol)"
        )),
    }
}

/// `--otlp-compression` / `OTEL_EXPORTER_OTLP_COMPRESSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    Gzip,
    None,
}

/// An AWS region as the endpoints name them (`us-east-1`, `us-gov-west-1`, `cn-north-1`).
pub fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_when_they_have_none() {
        assert_eq!(
            parse_endpoint("http://collector:4318").unwrap().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            parse_endpoint("https://x.example/otlp/v1/traces")
                .unwrap()
                .path(),
            "/otlp/v1/traces"
        );
        assert_eq!(
            parse_base_endpoint("http://c:4318/otlp/")
                .unwrap()
                .to_string(),
            "http://c:4318/otlp/v1/traces"
        );
        for bad in ["collector:4318", "ftp://x/", "http://", "not a url"] {
            let e = parse_endpoint(bad).unwrap_err();
            assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{e}");
        }
    }

    #[test]
    fn headers_are_key_value_pairs_with_percent_decoded_values() {
        let h = parse_headers("x-honeycomb-team=abc%20def, Authorization=Basic%3Dxyz").unwrap();
        assert_eq!(h.0["x-honeycomb-team"], "abc def");
        assert_eq!(h.0["authorization"], "Basic=xyz");
        assert!(parse_headers("").unwrap().0.is_empty());
        for bad in ["novalue", "bad key=v", "k=%zz", "k=a\u{7f}"] {
            let e = parse_headers(bad).unwrap_err();
            assert!(e.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_http_protobuf_and_real_region_names_are_accepted() {
        assert!(parse_protocol("http/protobuf").is_ok());
        assert!(
            parse_protocol("grpc")
                .unwrap_err()
                .contains("http/protobuf")
        );
        assert!(valid_region("us-east-1") && valid_region("us-gov-west-1"));
        for bad in ["", "moon", "us-east", "US-EAST-1", "us-east-1a", "us--1"] {
            assert!(!valid_region(bad), "{bad}");
        }
    }
}
