//! The collector as the X-Ray daemon: a real X-Ray SDK app (aws-xray-sdk from PyPI) sends its
//! segments to the collector's UDP port, they reach the moto X-Ray API unchanged, and the
//! uninstrumented service it calls joins its trace; garbage datagrams are counted and dropped;
//! sampling rules from an X-Ray sampling endpoint hold. The sampling proxy: sampling_proxy.rs.

mod support;

use std::{
    net::UdpSocket,
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const FAKE_CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "AKIDTESTCOLLECTOR"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
];
const SAMPLE_ALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/sample_all.json");

/// A real SDK app's segments reach X-Ray unchanged through the collector; the eBPF-traced
/// service it calls joins its trace as the child of its subsegment; and the SDK app's own
/// requests yield no eBPF segment.
#[test]
fn sdk_segments_are_relayed_unchanged_and_ebpf_services_join_their_trace() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else {
        return;
    };
    let _serial = serial();
    let moto_port = free_port();
    let _moto = start_moto(&venv, moto_port);
    let udp = free_port();
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let bind = format!("127.0.0.1:{udp}");
    let collector = Collector::start_with_env(
        &[
            "--exporter",
            "xray",
            "--endpoint-url",
            &endpoint,
            "--region",
            "us-east-1",
            "--exclude-process",
            "curl",
            "--trace-hold-ms",
            "300",
            "--sampling-rules",
            SAMPLE_ALL,
            "-b",
            &bind,
            "-t",
            "off",
            "--metrics-bind",
            "off",
        ],
        &FAKE_CREDENTIALS,
    );
    let www = TempDir::new("sdk-callee");
    let callee_port = free_port();
    let _callee = python_http_server(&www.0, callee_port);
    let sent_log = www.0.join("sent.jsonl");
    let app_port = free_port();
    let _app = spawn_python(
        &venv,
        "sdk_app.py",
        &[
            app_port.to_string(),
            bind.clone(),
            callee_port.to_string(),
            sent_log.to_string_lossy().into_owned(),
        ],
    );
    wait_listening(app_port, Duration::from_secs(20));
    let start = now_epoch() - 1.0;
    let nonces: Vec<String> = (0..5).map(|i| unique(&format!("sdk{i}"))).collect();
    for n in &nonces {
        assert_eq!(curl(&format!("http://127.0.0.1:{app_port}/front-{n}")), 200);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let counters = summary_counters(&stderr.text());

    let sent: Vec<serde_json::Value> = std::fs::read_to_string(&sent_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sent.len(), 5, "one SDK segment per request");
    let traces = read_traces(&venv, moto_port, start, now_epoch() + 1.0);
    let docs: Vec<serde_json::Value> = traces
        .iter()
        .flat_map(|t| t["segments"].as_array().cloned().unwrap_or_default())
        .collect();
    for (n, sdk_doc) in nonces.iter().zip(&sent) {
        // Unchanged: the document X-Ray holds is the one the SDK sent.
        let stored = docs
            .iter()
            .find(|d| d["id"] == sdk_doc["id"])
            .unwrap_or_else(|| {
                panic!(
                    "SDK segment {} not at X-Ray; counters {counters:?}; at X-Ray: {docs:#?}",
                    sdk_doc["id"]
                )
            });
        assert_eq!(stored, sdk_doc);
        assert!(
            sdk_doc["http"]["request"]["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/front-{n}"))
        );
        // The callee's eBPF segment: same trace, child of the SDK subsegment that made the
        // call (the one whose id the SDK put in X-Amzn-Trace-Id).
        let call = &sdk_doc["subsegments"][0];
        let callee = docs
            .iter()
            .find(|d| {
                d["http"]["request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!("/callee-{n}")))
                    && d["namespace"].is_null()
            })
            .unwrap_or_else(|| panic!("no eBPF segment for /callee-{n}: {docs:#?}"));
        assert_eq!(callee["trace_id"], sdk_doc["trace_id"]);
        assert_eq!(callee["parent_id"], call["id"], "{callee:#}\n{sdk_doc:#}");
        assert_eq!(callee["aws"]["xray"]["sdk"], "ebpf-collector");
    }
    // No eBPF segment for the SDK app's own requests (nor for its calls).
    let duplicates: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| {
            d["aws"]["xray"]["sdk"] == "ebpf-collector" && d.to_string().contains("/front-")
        })
        .collect();
    assert!(duplicates.is_empty(), "{duplicates:#?}");
    assert!(
        counters["filter_dropped_sdk_duplicate"] >= 5,
        "{counters:?}"
    );
    assert_eq!(counters["udp_datagrams_accepted"], 5, "{counters:?}");
}

/// Garbage on the X-Ray port is counted by reason and dropped; the listener keeps serving.
/// (Capture off: no root needed.)
#[test]
fn garbage_datagrams_are_counted_and_the_listener_keeps_serving() {
    let udp = free_port();
    let bind = format!("127.0.0.1:{udp}");
    let collector = Collector::start_waiting(
        &[
            "--capture-path",
            "off",
            "--exporter",
            "stdout",
            "--format",
            "json",
            "-b",
            &bind,
            "-t",
            "off",
            "--metrics-bind",
            "off",
        ],
        &[],
        "X-Ray SDK segments accepted",
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let noise: Vec<u8> = (0..65_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        b"{\"name\":\"no header\",\"id\":\"1\"}".to_vec(),
        b"{\"format\":\"json\",\"version\":2}\n{\"name\":\"a\",\"id\":\"1\",\"trace_id\":\"1-2-3\",\"start_time\":1}".to_vec(),
        noise,
        b"{\"format\":\"json\",\"version\":1}\n{\"name\": \"broken".to_vec(),
    ];
    for g in &garbage {
        socket.send_to(g, &bind).unwrap();
    }
    let good = r#"{"name":"after-garbage","id":"70de5b6f19ff9a0a","trace_id":"1-581cf771-a006649127e371903a2de979","start_time":1478293361.271,"end_time":1478293361.449}"#;
    socket
        .send_to(
            format!("{{\"format\":\"json\",\"version\":1}}\n{good}").as_bytes(),
            &bind,
        )
        .unwrap();
    let lines = collector.wait_json(Duration::from_secs(5), |l| !l.is_empty());
    assert_eq!(
        lines,
        vec![serde_json::from_str::<serde_json::Value>(good).unwrap()]
    );
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let c = summary_counters(&stderr.text());
    for (k, want) in [
        ("udp_datagrams_received", 6),
        ("udp_datagrams_accepted", 1),
        ("udp_rejected_empty", 1),
        ("udp_rejected_no_header", 2),
        ("udp_rejected_bad_header", 1),
        ("udp_rejected_not_json", 1),
    ] {
        assert_eq!(c[k], want, "{k}: {c:?}");
    }
    assert!(
        stderr
            .text()
            .contains("dropped a datagram on the X-Ray port")
    );
}

/// Centralized rules from an X-Ray sampling endpoint: a 0 % rule with a reservoir of one
/// request a second lets about 10 of 1,000 requests over 10 s through; a caller's
/// `Sampled=1` is always obeyed.
#[test]
fn sampling_rules_and_incoming_decisions_hold_end_to_end() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else {
        return;
    };
    let _serial = serial();
    let (_fake, fake_port) = fake_sampling_endpoint(&venv, "0.0", "1");
    let endpoint = format!("http://127.0.0.1:{fake_port}");
    let metrics = free_port();
    let collector = Collector::start_with_env(
        &[
            "--exporter",
            "stdout",
            "--format",
            "json",
            "--sampling",
            "on",
            "--region",
            "us-east-1",
            "--endpoint-url",
            &endpoint,
            "--exclude-process",
            "oha",
            "--exclude-process",
            "curl",
            "--trace-hold-ms",
            "200",
            "-b",
            "off",
            "-t",
            "off",
            "--metrics-bind",
            &format!("127.0.0.1:{metrics}"),
        ],
        &FAKE_CREDENTIALS,
    );
    // The first GetSamplingRules may come after capture starts; until then the default
    // (1/s, then 5 %) applies, so the traffic waits for X-Ray's rule to be in effect.
    let start = Instant::now();
    while sample(
        &http_get(metrics, "/metrics"),
        "collector_sampling_rules_from_xray",
    )
    .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "X-Ray's sampling rule not in effect after 30 s:\n{}",
            collector.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let www = TempDir::new("sampled");
    let port = free_port();
    let _server = python_http_server(&www.0, port);
    let start = Instant::now();
    let oha = Command::new("oha")
        .args(["-n", "1000", "-q", "100", "-c", "4", "--no-tui"])
        .arg(format!("http://127.0.0.1:{port}/sampled"))
        .output()
        .unwrap();
    assert!(oha.status.success());
    let seconds = start.elapsed().as_secs_f64();
    // Incoming decisions win: 50 requests, each its own trace, marked Sampled=1.
    for i in 0..50 {
        let header = format!(
            "X-Amzn-Trace-Id: Root=1-{:08x}-{:024x};Sampled=1",
            now_epoch() as u32,
            0xabc000 + i
        );
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-H", &header])
            .arg(format!("http://127.0.0.1:{port}/forced-{i}"))
            .status()
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let stdout = collector.json_lines_handle();
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let segments = stdout.json_lines();
    let url = |s: &serde_json::Value| {
        s["http"]["request"]["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let sampled = segments
        .iter()
        .filter(|s| url(s).ends_with("/sampled"))
        .count();
    let forced = segments
        .iter()
        .filter(|s| url(s).contains("/forced-"))
        .count();
    eprintln!(
        "1,000 requests over {seconds:.1} s: {sampled} sampled; {forced} of 50 Sampled=1 exported"
    );
    let expected = seconds.ceil() as usize;
    assert!(
        (expected.saturating_sub(2)..=expected + 2).contains(&sampled),
        "{sampled} traces sampled over {seconds:.1} s with 1/s and 0 %"
    );
    assert_eq!(forced, 50);
    let c = summary_counters(&stderr.text());
    assert_eq!(c["sampling_traces_forced"], 50, "{c:?}");
}
