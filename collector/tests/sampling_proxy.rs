//! The X-Ray daemon's sampling proxy on TCP: SDKs' two sampling calls are signed with the
//! collector's credentials and forwarded, X-Ray's answer comes back unchanged; nothing else is
//! signed or forwarded — every pod on a node can reach the port.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const FAKE_CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "AKIDTESTCOLLECTOR"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];

/// The collector with only its sampling proxy (no capture), forwarding to `fake_port`.
fn proxy_collector(fake_port: u16, tcp: u16, metrics: &str) -> Collector {
    let endpoint = format!("http://127.0.0.1:{fake_port}");
    let bind_tcp = format!("127.0.0.1:{tcp}");
    Collector::start_waiting(
        &[
            "--capture-path",
            "off",
            "--exporter",
            "stdout",
            "--region",
            "us-east-1",
            "--endpoint-url",
            &endpoint,
            "-b",
            "off",
            "-t",
            &bind_tcp,
            "--metrics-bind",
            metrics,
            "--sampling",
            "off",
        ],
        &FAKE_CREDENTIALS,
        "sampling proxy on",
    )
}

/// Every request the endpoint stand-in got.
fn endpoint_calls(fake_port: u16) -> Vec<serde_json::Value> {
    serde_json::from_str(
        &Command::new("curl")
            .arg("-s")
            .arg(format!("http://127.0.0.1:{fake_port}/calls"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap(),
    )
    .unwrap()
}

/// SDKs' sampling requests are signed with the collector's credentials (SigV4, `xray`) and
/// forwarded; X-Ray's answer comes back unchanged.
#[test]
fn the_sampling_proxy_signs_forwards_and_returns_the_answer_unchanged() {
    let Some(venv) = test_venv() else {
        return;
    };
    let (_fake, fake_port) = fake_sampling_endpoint(&venv, "0.25", "3");
    let tcp = free_port();
    let collector = proxy_collector(fake_port, tcp, "off");
    let direct = |path: &str, body: &str| {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "-d", body])
            .arg(format!("http://127.0.0.1:{fake_port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (status, rules) = exchange(tcp, post("/GetSamplingRules", "{}").as_bytes());
    assert_eq!(status, 200, "{rules}");
    let v: serde_json::Value =
        serde_json::from_str(&rules).unwrap_or_else(|e| panic!("{e}: {rules}"));
    assert_eq!(
        v["SamplingRuleRecords"][0]["SamplingRule"]["RuleName"],
        "test-rule"
    );
    // Byte for byte what the endpoint answers (but for its timestamps).
    let strip = |s: &str| {
        s.split("\"CreatedAt\"")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(strip(&rules), strip(&direct("/GetSamplingRules", "{}")));
    let (_, targets) = exchange(
        tcp,
        post("/SamplingTargets", r#"{"SamplingStatisticsDocuments":[]}"#).as_bytes(),
    );
    assert!(targets.contains("\"ReservoirQuota\": 3"), "{targets}");
    assert!(collector.stop(libc::SIGTERM).success());

    let calls = endpoint_calls(fake_port);
    let proxied: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c["authorization"].as_str().is_some_and(|a| !a.is_empty()))
        .collect();
    assert_eq!(proxied.len(), 2, "{calls:#?}");
    for c in proxied {
        let auth = c["authorization"].as_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTESTCOLLECTOR/")
                && auth.contains("/us-east-1/xray/aws4_request"),
            "{auth}"
        );
    }
}

/// Every other X-Ray API, other methods, oversized, malformed and chunked bodies, garbage and
/// a client that trickles its request: answered by the proxy (403, 400, 408), counted by
/// reason, and nothing of it reaches the endpoint, while the two sampling calls still work.
#[test]
fn the_sampling_proxy_signs_nothing_but_the_two_sampling_calls() {
    let Some(venv) = test_venv() else {
        return;
    };
    let (_fake, fake_port) = fake_sampling_endpoint(&venv, "0.25", "3");
    let tcp = free_port();
    let metrics_port = free_port();
    let collector = proxy_collector(fake_port, tcp, &format!("127.0.0.1:{metrics_port}"));
    // One byte a second: the request is never whole within the proxy's 10 s.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let start = Instant::now();
        for b in b"POST /GetSamplingRules HTTP/1.1\r\nHost: x\r\n".iter() {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        (answer, start.elapsed())
    });
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(100 * 1024));
    let refused: [(&str, Vec<u8>, u16); 12] = [
        ("api", post("/DeleteSamplingRule", r#"{"RuleName":"r"}"#).into_bytes(), 403),
        ("api", post("/BatchGetTraces", r#"{"TraceIds":["1-5f8a-1"]}"#).into_bytes(), 403),
        ("api", post("/PutTraceSegments", r#"{"TraceSegmentDocuments":[]}"#).into_bytes(), 403),
        ("api", post("/GetSamplingRules?NextToken=x", "{}").into_bytes(), 403),
        ("api", post("/CreateSamplingRule", r#"{"SamplingRule":{}}"#).into_bytes(), 403),
        ("method", request("GET", "/GetSamplingRules", "").into_bytes(), 403),
        ("method", request("DELETE", "/SamplingTargets", "{}").into_bytes(), 403),
        ("body_too_large", post("/SamplingTargets", &big).into_bytes(), 400),
        ("body_malformed", post("/SamplingTargets", "[1,2]").into_bytes(), 400),
        ("body_malformed", post("/GetSamplingRules", "not json").into_bytes(), 400),
        (
            "body_malformed",
            b"POST /SamplingTargets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "head_malformed",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (reason, bytes, want) in &refused {
        let (status, body) = exchange(tcp, bytes);
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
        assert_eq!(status, *want, "{reason}: {shown:?} answered {body}");
    }
    let (status, _) = exchange(tcp, post("/GetSamplingRules", "{}").as_bytes());
    assert_eq!(status, 200);
    let (status, _) = exchange(
        tcp,
        post("/SamplingTargets", r#"{"SamplingStatisticsDocuments":[]}"#).as_bytes(),
    );
    assert_eq!(status, 200);
    let (answer, took) = slow.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408") && took < Duration::from_secs(14),
        "the trickling client got {answer:?} after {took:?}"
    );

    let metrics = http_get(metrics_port, "/metrics");
    let count =
        |name: &str| sample(&metrics, &format!("collector_proxy_{name}_total")).unwrap_or(-1.0);
    assert_eq!(count("forwarded"), 2.0, "{metrics}");
    for reason in [
        "api",
        "method",
        "body_too_large",
        "body_malformed",
        "head_malformed",
    ] {
        let want = refused.iter().filter(|(r, _, _)| *r == reason).count() as f64;
        assert_eq!(count(&format!("refused_{reason}")), want, "{reason}");
    }
    assert_eq!(count("refused_client_timeout"), 1.0);
    assert!(collector.stop(libc::SIGTERM).success());
    let calls = endpoint_calls(fake_port);
    let paths: Vec<&str> = calls
        .iter()
        .map(|c| c["path"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        paths,
        ["/GetSamplingRules", "/SamplingTargets"],
        "{calls:#?}"
    );
}

fn post(path: &str, body: &str) -> String {
    request("POST", path, body)
}

fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends one request on a new connection; returns the answer's status and body.
fn exchange(port: u16, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The proxy may answer before reading all of an oversized body, and close.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Content-Length: ")?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return (status, body[..length].to_owned());
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (0, text),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}
