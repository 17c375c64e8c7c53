//! The OTLP exporters end to end, against a real OTLP/HTTP receiver that decodes with the
//! official protobuf definitions (the `opentelemetry-proto` package from PyPI, behind a small
//! HTTP server: tests/apps/otlp_receiver.py): the demo's spans and their links, SigV4 for
//! X-Ray's OTLP endpoint checked with botocore, `auto` following GetTraceSegmentDestination,
//! an outage, and X-Ray SDK documents converted to spans.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde_json::Value;
use support::*;

const FAKE_CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "AKIDTESTCOLLECTOR"),
    ("AWS_SECRET_ACCESS_KEY", "secret-for-tests"),
];

struct Receiver {
    port: u16,
    _proc: KillOnDrop,
}

fn receiver(venv: &std::path::Path, port: u16, extra: &[&str]) -> Receiver {
    let mut args = vec![port.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = spawn_python_with_env(venv, "otlp_receiver.py", &args, &FAKE_CREDENTIALS);
    wait_listening(port, Duration::from_secs(20));
    Receiver { port, _proc: proc }
}

impl Receiver {
    fn state(&self) -> Value {
        let text = http_get(self.port, "/spans");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("receiver answered {text:?}: {e}"))
    }

    fn spans(&self) -> Vec<Value> {
        self.state()["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn otlp_collector(endpoint: &str, extra: &[&str], env: &[(&str, &str)]) -> Collector {
    let mut args = vec![
        "--exporter",
        "otlp",
        "--otlp-endpoint",
        endpoint,
        "--exclude-process",
        "curl",
        "--trace-hold-ms",
        "300",
        "-t",
        "off",
    ];
    args.extend_from_slice(extra);
    Collector::start_with_env(&args, env)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    attr(span, key).as_str().unwrap_or_default()
}

fn service(span: &Value) -> &str {
    span["resource"]["service.name"]
        .as_str()
        .unwrap_or_default()
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// The demo (A → B) with `--exporter otlp`: every request one server span of A, its call one
/// client span under it, B's server span the call's child, all in one trace; resources say
/// which service and process; the headers from OTEL_EXPORTER_OTLP_HEADERS arrive; no secret
/// from the URLs is in any attribute.
#[test]
fn the_demo_arrives_as_linked_server_and_client_spans_with_their_resources() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else { return };
    let _serial = serial();
    let r = receiver(&venv, free_port(), &[]);
    let demo = start_demo(false);
    let endpoint = format!("http://127.0.0.1:{}", r.port);
    let collector = otlp_collector(
        &endpoint,
        &[],
        &[("OTEL_EXPORTER_OTLP_HEADERS", "x-test-token=abc%20def")],
    );
    const N: usize = 8;
    let run = unique("otlp");
    for i in 0..N {
        let url = format!(
            "http://127.0.0.1:{}/call/{run}-{i}?api_key=SECRET-{i}",
            demo.a_port
        );
        assert_eq!(curl(&url), 200);
    }
    std::thread::sleep(Duration::from_millis(800));
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let summary = summary_counters(&stderr.text());
    let spans: Vec<Value> = r
        .spans()
        .into_iter()
        .filter(|s| serde_json::to_string(s).unwrap().contains(&run))
        .collect();
    let all = serde_json::to_string(&spans).unwrap();
    assert!(
        !all.contains("SECRET-"),
        "a query secret was exported: {all}"
    );
    for i in 0..N {
        let n = format!("{run}-{i}");
        let of = |kind: u64, svc: &str, path: &str| -> Vec<&Value> {
            spans
                .iter()
                .filter(|s| s["kind"] == kind && service(s) == svc)
                .filter(|s| {
                    let url = format!("{}{}", text(s, "url.path"), text(s, "url.full"));
                    url.contains(path) && url.ends_with(&n)
                })
                .collect()
        };
        let (a, call, b) = (
            of(SERVER, "service-a", "/call/"),
            of(CLIENT, "service-a", "/work/"),
            of(SERVER, "service-b", "/work/"),
        );
        assert_eq!((a.len(), call.len(), b.len()), (1, 1, 1), "{n}: {spans:#?}");
        let (a, call, b) = (a[0], call[0], b[0]);
        assert_eq!(call["parent_span_id"], a["span_id"], "the call is A's");
        assert_eq!(
            b["parent_span_id"], call["span_id"],
            "B is the call's child"
        );
        assert_eq!(a["trace_id"], b["trace_id"]);
        assert_eq!(call["trace_id"], a["trace_id"]);
        assert_eq!(a["parent_span_id"], "", "A is the root");
        assert_eq!(attr(a, "http.request.method"), "GET");
        assert_eq!(attr(a, "http.response.status_code"), 200);
        assert_eq!(attr(b, "server.port"), demo.b_port);
        assert!(text(call, "url.full").starts_with("http://"), "{call}");
        for s in [a, call, b] {
            assert!(s["resource"]["process.pid"].as_i64().unwrap() > 0, "{s}");
            assert_eq!(s["resource"]["telemetry.sdk.name"], "ebpf-collector");
            assert!(s["end"].as_u64().unwrap() > s["start"].as_u64().unwrap());
            assert_eq!(s["scope"], "ebpf-collector");
        }
    }
    let state = r.state();
    let requests = state["requests"].as_array().unwrap();
    assert!(!requests.is_empty());
    for q in requests {
        assert_eq!(q["content_type"], "application/x-protobuf");
        assert_eq!(q["encoding"], "gzip");
        assert_eq!(q["headers"]["x-test-token"], "abc def");
    }
    assert_eq!(
        summary["otlp_sent"],
        r.spans().len() as u64,
        "every span sent arrived: {summary:?}"
    );
    assert!(summary["otlp_sent"] >= 3 * N as u64, "{summary:?}");
}

/// `--exporter xray-otlp`: every request is signed for `xray` in the region, and a botocore
/// signer recomputing the signature from the same credentials agrees; trace ids arrive as
/// the W3C form of the X-Ray ids. A region the endpoint does not sign for, or no
/// credentials, stops start-up with a clear error instead of dropping spans later.
#[test]
fn xray_otlp_is_signed_as_botocore_signs_and_a_bad_region_or_no_credentials_stop_start_up() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else { return };
    let _serial = serial();
    let r = receiver(&venv, free_port(), &["--sigv4", "us-east-1"]);
    let endpoint = format!("http://127.0.0.1:{}", r.port);
    let args = |region: &'static str| {
        vec![
            "--exporter".to_owned(),
            "xray-otlp".into(),
            "--region".into(),
            region.into(),
            "--endpoint-url".into(),
            endpoint.clone(),
            "--exclude-process".into(),
            "curl".into(),
            "--trace-hold-ms".into(),
            "300".into(),
            "--sampling".into(),
            "off".into(),
            "-b".into(),
            "off".into(),
            "-t".into(),
            "off".into(),
            "--metrics-bind".into(),
            "off".into(),
        ]
    };
    let argv = args("us-east-1");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let collector = Collector::start_with_env(&argv, &FAKE_CREDENTIALS);
    let www = TempDir::new("xray-otlp");
    let port = free_port();
    let _server = python_http_server(&www.0, port);
    let run = unique("signed");
    for i in 0..5 {
        curl(&format!("http://127.0.0.1:{port}/{run}-{i}"));
    }
    std::thread::sleep(Duration::from_millis(800));
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let summary = summary_counters(&stderr.text());
    let state = r.state();
    let requests = state["requests"].as_array().unwrap();
    assert!(!requests.is_empty());
    for q in requests {
        assert_eq!(q["signature_ok"], true, "{q}");
        let auth = q["authorization"].as_str().unwrap();
        assert!(
            auth.contains("AKIDTESTCOLLECTOR/") && auth.contains("/us-east-1/xray/aws4_request"),
            "{auth}"
        );
    }
    let ours: Vec<&Value> = state["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| text(s, "url.path").contains(&run))
        .collect();
    assert_eq!(ours.len(), 5, "{summary:?}");
    for s in ours {
        let id = s["trace_id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        let epoch = u64::from_str_radix(&id[..8], 16).unwrap();
        assert!(
            epoch.abs_diff(now_epoch() as u64) < 600,
            "X-Ray's time-based id: {id}"
        );
    }

    // The endpoint signs for us-east-1: eu-west-1's signature is refused at start-up.
    let argv = args("eu-west-1");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("run")
        .args(&argv)
        .args(["--capture-path", "off"])
        .envs(FAKE_CREDENTIALS)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("HTTP 403") && err.contains("--region"),
        "{err}"
    );
    // No credentials anywhere (no environment, no profile, no metadata service).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("run")
        .args(&argv)
        .args(["--capture-path", "off"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("credentials"), "{err}");
}

/// `--exporter auto` asks GetTraceSegmentDestination: `XRay` → PutTraceSegments,
/// `CloudWatchLogs` → X-Ray's OTLP endpoint; `/metrics` says which.
#[test]
fn auto_picks_put_trace_segments_or_otlp_from_get_trace_segment_destination() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else { return };
    let _serial = serial();
    for (destination, otlp) in [("XRay", false), ("CloudWatchLogs", true)] {
        let r = receiver(&venv, free_port(), &["--destination", destination]);
        let endpoint = format!("http://127.0.0.1:{}", r.port);
        let metrics = free_port();
        let metrics_bind = format!("127.0.0.1:{metrics}");
        let collector = Collector::start_with_env(
            &[
                "--exporter",
                "auto",
                "--region",
                "us-east-1",
                "--endpoint-url",
                &endpoint,
                "--exclude-process",
                "curl",
                "--trace-hold-ms",
                "300",
                "--sampling",
                "off",
                "-b",
                "off",
                "-t",
                "off",
                "--metrics-bind",
                &metrics_bind,
            ],
            &FAKE_CREDENTIALS,
        );
        let started = std::time::Instant::now();
        let gauge = loop {
            let text = http_get(metrics, "/metrics");
            if let Some(v) = sample(&text, "collector_export_xray_otlp") {
                break v;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{text}");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(gauge, if otlp { 1.0 } else { 0.0 }, "{destination}");
        // `collector doctor` says the same.
        let doctor = std::process::Command::new(env!("CARGO_BIN_EXE_collector"))
            .args(["doctor", "--json"])
            .env("AWS_REGION", "us-east-1")
            .env("COLLECTOR_XRAY_ENDPOINT_URL", &endpoint)
            .envs(FAKE_CREDENTIALS)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&doctor.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json: {e}: {}",
                String::from_utf8_lossy(&doctor.stdout)
            )
        });
        let line = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "trace destination")
            .unwrap_or_else(|| panic!("{report:#}"));
        assert!(
            line["detail"].as_str().unwrap().contains(destination),
            "{line}"
        );
        assert!(
            line["meaning"].as_str().unwrap().contains(if otlp {
                "OTLP"
            } else {
                "PutTraceSegments"
            }),
            "{line}"
        );
        let www = TempDir::new("auto");
        let port = free_port();
        let _server = python_http_server(&www.0, port);
        let run = unique("auto");
        for i in 0..3 {
            curl(&format!("http://127.0.0.1:{port}/{run}-{i}"));
        }
        std::thread::sleep(Duration::from_millis(800));
        assert!(collector.stop(libc::SIGTERM).success());
        let state = r.state();
        let spans = state["spans"].as_array().unwrap();
        let docs = state["documents"].as_array().unwrap();
        let ours = |list: &[Value]| list.iter().filter(|v| v.to_string().contains(&run)).count();
        let (via_otlp, via_put) = (ours(spans), ours(docs));
        assert_eq!(
            (via_otlp, via_put),
            if otlp { (3, 0) } else { (0, 3) },
            "{destination}"
        );
    }
}

/// The receiver is down for 30 s, then answers 503 with Retry-After twice, then a partial
/// success: memory stays bounded (a 50-group queue), and the counters add up exactly —
/// every span queued is sent, unprocessed, or dropped, and the receiver holds the sent ones.
#[test]
fn an_outage_then_503s_then_a_partial_success_lose_nothing_uncounted() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else { return };
    let _serial = serial();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let collector = otlp_collector(&endpoint, &["--otlp-queue-size", "50", "-b", "off"], &[]);
    let www = TempDir::new("outage");
    let server_port = free_port();
    let _server = python_http_server(&www.0, server_port);
    let run = unique("outage");
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(30) {
        curl(&format!("http://127.0.0.1:{server_port}/{run}-{i}"));
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = r#"[{"status": 503, "retry_after": 1, "times": 2}, {"reject": 2, "times": 1}]"#;
    let r = receiver(&venv, port, &["--script", script]);
    std::thread::sleep(Duration::from_secs(35));
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let c = summary_counters(&stderr.text());
    let state = r.state();
    let requests = state["requests"].as_array().unwrap();
    eprintln!(
        "{i} requests during 30 s down: queued {} sent {} unprocessed {} dropped (queue full) {} retries {}",
        c["otlp_queued"],
        c["otlp_sent"],
        c["otlp_unprocessed"],
        c["otlp_dropped_queue_full"],
        c["otlp_retries"]
    );
    let answered: Vec<u64> = requests
        .iter()
        .map(|q| q["answered"].as_u64().unwrap())
        .collect();
    assert_eq!(&answered[..2], [503, 503], "{answered:?}");
    assert!(
        c["otlp_retries"] >= 3,
        "the outage and the 503s were retried: {c:?}"
    );
    assert_eq!(c["otlp_unprocessed"], 2, "{c:?}");
    assert!(
        c["otlp_dropped_queue_full"] > 0,
        "{i} requests into 50 slots: {c:?}"
    );
    assert_eq!(
        c["otlp_queued"],
        c["otlp_sent"]
            + c["otlp_unprocessed"]
            + c["otlp_dropped_queue_full"]
            + c["otlp_dropped_rejected"],
        "{c:?}"
    );
    assert_eq!(c["otlp_dropped_rejected"], 0, "{c:?}");
    let arrived = r.spans().len() as u64;
    assert_eq!(arrived, c["otlp_sent"], "{c:?}");
    assert_eq!(c["otlp_queue_depth"], 0);
    assert!(
        arrived >= 48,
        "the last 50 groups waited in the queue: {c:?}"
    );
}

/// A real aws-xray-sdk app's documents, relayed with `--exporter otlp`, arrive as spans: the
/// segment a server span of `sdk-app`, its subsegment a child, the traced callee (eBPF) the
/// child of that subsegment — one trace.
#[test]
fn relayed_sdk_documents_arrive_as_spans_in_the_right_trace_under_the_right_parents() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else { return };
    let _serial = serial();
    let r = receiver(&venv, free_port(), &[]);
    let endpoint = format!("http://127.0.0.1:{}", r.port);
    let udp = format!("127.0.0.1:{}", free_port());
    let collector = otlp_collector(&endpoint, &["-b", &udp, "--metrics-bind", "off"], &[]);
    let www = TempDir::new("sdk-otlp");
    let callee_port = free_port();
    let _callee = python_http_server(&www.0, callee_port);
    let app_port = free_port();
    let log = www.0.join("sent.jsonl");
    let _app = spawn_python_with_env(
        &venv,
        "sdk_app.py",
        &[
            app_port.to_string(),
            udp.clone(),
            callee_port.to_string(),
            log.to_string_lossy().into_owned(),
        ],
        &[],
    );
    wait_listening(app_port, Duration::from_secs(20));
    let nonces: Vec<String> = (0..3).map(|i| unique(&format!("sdk{i}"))).collect();
    for n in &nonces {
        assert_eq!(curl(&format!("http://127.0.0.1:{app_port}/front-{n}")), 200);
    }
    std::thread::sleep(Duration::from_millis(2000));
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let c = summary_counters(&stderr.text());
    assert_eq!(c["otlp_sdk_documents_converted"], 3, "{c:?}");
    let spans = r.spans();
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s))
        .collect();
    for n in &nonces {
        let segment = spans
            .iter()
            .find(|s| {
                service(s) == "sdk-app" && text(s, "url.path").contains(&format!("front-{n}"))
            })
            .unwrap_or_else(|| panic!("no SDK segment for {n}: {spans:#?}"));
        assert_eq!(segment["kind"], SERVER);
        let callee = spans
            .iter()
            .find(|s| s["kind"] == SERVER && text(s, "url.path").contains(&format!("callee-{n}")))
            .expect("the eBPF span of the callee");
        let parent = by_id[callee["parent_span_id"].as_str().unwrap()];
        assert_eq!(
            parent["name"], "call-callee",
            "the callee's parent is the subsegment"
        );
        assert_eq!(parent["parent_span_id"], segment["span_id"]);
        let traces: BTreeMap<&str, ()> = [segment, parent, callee]
            .iter()
            .map(|s| (s["trace_id"].as_str().unwrap(), ()))
            .collect();
        assert_eq!(traces.len(), 1, "one trace");
    }
}
