//! What of a request may be kept. Query strings are dropped as soon as the request line is
//! parsed, except the parameters an operator allows by name (`--allowed-query-params`); header
//! values are never kept beyond the few the stages use (see `head.rs`), so `Authorization`,
//! `Cookie`, `Set-Cookie` and `Proxy-Authorization` never reach any output.

use std::sync::OnceLock;

static ALLOWED_QUERY_PARAMS: OnceLock<Vec<String>> = OnceLock::new();

/// Set once at start-up (before capture); the default allows none.
pub fn allow_query_params(names: Vec<String>) {
    let _ = ALLOWED_QUERY_PARAMS.set(names);
}

/// The request target without its fragment, and with only the allowed query parameters.
pub fn redact_target(target: &str) -> String {
    redact_with(
        target,
        ALLOWED_QUERY_PARAMS.get().map(Vec::as_slice).unwrap_or(&[]),
    )
}

pub fn redact_with(target: &str, allowed: &[String]) -> String {
    let target = target.split('#').next().unwrap_or_default();
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !name.is_empty() && allowed.iter().any(|a| a == name)
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// A request line (`GET /x?token=… HTTP/1.1`) with its target redacted; other text as is.
pub fn redact_request_line(line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version)) if version.starts_with("HTTP/") => {
            format!("{method} {} {version}", redact_target(target))
        }
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_dropped_unless_allowed() {
        let allowed = ["page".to_owned(), "lang".to_owned()];
        for (target, want) in [
            ("/a?token=s3cret&page=2", "/a?page=2"),
            ("/a?token=s3cret", "/a"),
            ("/a?page=1&lang=en&sig=x#frag", "/a?page=1&lang=en"),
            ("/a#section?token=x", "/a"),
            ("/plain", "/plain"),
            ("/a?=x&page", "/a?page"),
            ("http://proxy.example/a?token=x", "http://proxy.example/a"),
        ] {
            assert_eq!(redact_with(target, &allowed), want, "{target}");
        }
        assert_eq!(redact_with("/a?page=2", &[]), "/a");
    }

    #[test]
    fn request_lines_are_redacted_and_other_lines_kept() {
        assert_eq!(
            redact_request_line("GET /login?password=hunter2 HTTP/1.1"),
            "GET /login HTTP/1.1"
        );
        assert_eq!(redact_request_line("HTTP/1.1 200 OK"), "HTTP/1.1 200 OK");
    }
}
