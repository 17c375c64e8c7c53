//! Operating the collector: settings and their precedence, redaction of secrets in every
//! output, `/metrics` under real traffic, filters, the kill switch, load shedding, and a stop
//! under load that exports every captured exchange and leaves nothing attached.

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use support::*;

fn collector_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_collector"))
}

/// `collector run --print-config` with the given flags, environment and config file text.
fn print_config(flags: &[&str], env: &[(&str, &str)], file: &str) -> std::process::Output {
    let dir = TempDir::new("config");
    let path = dir.0.join("collector.yaml");
    std::fs::write(&path, file).unwrap();
    collector_bin()
        .args(["run", "-c"])
        .arg(&path)
        .args(flags)
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn settings_come_from_flag_then_environment_then_file_then_default() {
    let out = print_config(
        &["--capture-bytes", "1024"],
        &[("COLLECTOR_TRACE_HOLD_MS", "700"), ("NODE_NAME", "node-7")],
        "capture-bytes: 4096\ntrace-hold-ms: 250\nexporter: exchanges\nnode-name: from-file\n\
         exclude-process: [sshd, chronyd]\nmetrics-bind: 'off'\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "capture-bytes: 1024  # flag",
        "trace-hold-ms: 700  # environment",
        "node-name: node-7  # environment",
        "exporter: exchanges  # config file",
        "exclude-process: sshd,chronyd  # config file",
        "metrics-bind: off  # config file",
        "format: text  # default",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[test]
fn a_bad_config_stops_start_up_naming_the_key() {
    for (file, want) in [
        (
            "exporter: xray\nbogus-option: 1\n",
            "unknown key `bogus-option`",
        ),
        (
            "capture-bytes: 999999\n",
            "key `capture-bytes`: invalid value '999999'",
        ),
        (
            "metrics-bind: nowhere\n",
            "key `metrics-bind`: invalid value 'nowhere'",
        ),
        ("exclude-pod-labels: 'a in b'\n", "key `exclude-pod-labels`"),
    ] {
        let out = print_config(&[], &[], file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(want), "{file}: {stderr}");
        assert!(stderr.contains("collector.yaml"), "{stderr}");
    }
    // The environment names the file too.
    let out = collector_bin()
        .args(["run", "--print-config"])
        .env("COLLECTOR_CONFIG", "/nonexistent/c.yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/c.yaml: cannot read"));
}

const SECRETS: [&str; 5] = [
    "authZ-9f8e7d6c5b4a",
    "cookie-1a2b3c4d5e6f",
    "proxyauth-0a9b8c7d6e",
    "querytoken-5f4e3d2c1b",
    "setcookie-6e5d4c3b2a",
];

fn secret_server(port: u16) -> KillOnDrop {
    let child = Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/secret_server.py"))
        .arg(port.to_string())
        .arg(SECRETS[4])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = KillOnDrop(child);
    wait_listening(port, Duration::from_secs(10));
    server
}

fn send_secrets(port: u16, tag: &str) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {}", SECRETS[0])])
        .args(["-H", &format!("Cookie: session={}", SECRETS[1])])
        .args(["-H", &format!("Proxy-Authorization: Basic {}", SECRETS[2])])
        .arg(format!(
            "http://127.0.0.1:{port}/{tag}?token={}&page=2",
            SECRETS[3]
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

/// Secrets planted in each sensitive header, in a query string and in a response cookie never
/// appear in any exporter's output, in the logs (at debug level) or in `/metrics`.
#[test]
fn planted_secrets_appear_in_no_output_log_or_metric() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let port = free_port();
    let _server = secret_server(port);
    for exporter_args in [
        &["--exporter", "stdout", "--format", "json"][..],
        &["--exporter", "stdout", "--format", "text"][..],
        &["--exporter", "exchanges", "--format", "json"][..],
        &["--exporter", "events"][..],
    ] {
        let metrics_port = free_port();
        let bind = format!("127.0.0.1:{metrics_port}");
        let mut args = exporter_args.to_vec();
        args.extend([
            "--trace-hold-ms",
            "100",
            "-l",
            "debug",
            "--metrics-bind",
            &bind,
        ]);
        let collector = Collector::start(&args);
        let tag = unique("secret");
        for _ in 0..3 {
            send_secrets(port, &tag);
        }
        // The request is seen (so the test can fail), with the query parameter dropped.
        let stdout = collector.json_lines_handle();
        let start = std::time::Instant::now();
        while !stdout.raw_lines().iter().any(|l| l.contains(&tag)) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{exporter_args:?}: request not seen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500)); // a metrics publication
        let metrics = http_get(metrics_port, "/metrics");
        let stderr = collector.stderr_handle();
        assert!(collector.stop(libc::SIGTERM).success());
        let outputs = [
            ("stdout", stdout.raw_lines().join("\n")),
            ("log", stderr.text()),
            ("metrics", metrics),
        ];
        for (what, text) in &outputs {
            assert!(!text.is_empty(), "{exporter_args:?}: {what} is empty");
            for secret in SECRETS {
                assert!(
                    !text.contains(secret),
                    "{exporter_args:?}: {secret} leaked into {what}:\n{text}"
                );
            }
        }
    }
}

/// A GET on 127.0.0.1:port; the whole response text (head and body).
/// `/metrics` during real traffic: it parses as OpenMetrics text (Python's prometheus_client
/// parser) and its counters move; `/healthz` and `/readyz` answer; logs can be JSON.
#[test]
fn metrics_move_with_traffic_and_parse() {
    if !privileged() {
        return;
    }
    let Some(venv) = test_venv() else {
        return;
    };
    let _serial = serial();
    let dir = TempDir::new("metrics-www");
    let port = free_port();
    let _server = python_http_server(&dir.0, port);
    let metrics_port = free_port();
    let collector = Collector::start(&[
        "--exporter",
        "stdout",
        "--format",
        "json",
        "--trace-hold-ms",
        "100",
        "--metrics-bind",
        &format!("127.0.0.1:{metrics_port}"),
        "--log-format",
        "json",
    ]);
    for i in 0..20 {
        curl(&format!("http://127.0.0.1:{port}/first-{i}"));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let first = http_get(metrics_port, "/metrics");
    for i in 0..30 {
        curl(&format!("http://127.0.0.1:{port}/second-{i}"));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let second = http_get(metrics_port, "/metrics");
    assert!(http_get(metrics_port, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(metrics_port, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(http_get(metrics_port, "/nothing").starts_with("HTTP/1.1 404"));

    let body = |r: &str| r.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    let (first, second) = (body(&first), body(&second));
    for name in [
        "collector_http_exchanges_total",
        "collector_trace_segments_total",
    ] {
        let (a, b) = (
            sample(&first, name).unwrap(),
            sample(&second, name).unwrap(),
        );
        assert!(a >= 20.0 && b >= a + 30.0, "{name}: {a} then {b}\n{second}");
    }
    assert_eq!(sample(&second, "collector_capture_attached"), Some(1.0));
    // Levels are published too: the server's pid is cached by enrichment.
    for name in [
        "collector_http_conns_open",
        "collector_trace_requests_remembered",
    ] {
        assert!(sample(&second, name).is_some(), "{name} missing:\n{second}");
    }
    assert!(sample(&second, "collector_enrich_pids_cached").is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&second, "collector_kernel_errors_ringbuf_full_total"),
        Some(0.0)
    );

    // A real parser accepts it.
    let parsed = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sys; from prometheus_client.openmetrics.parser import text_string_to_metric_families as p; \
             print(sum(1 for _ in p(sys.stdin.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(second.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        parsed.status.success(),
        "not valid OpenMetrics: {}\n{second}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families: usize = String::from_utf8_lossy(&parsed.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(families > 40, "{families} metric families");

    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    for line in stderr.raw_lines() {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("--log-format json wrote a non-JSON line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
    }
}

/// Health checks are not traced by default; excluded ports are not traced.
#[test]
fn kube_probes_and_excluded_ports_are_filtered() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("filter-www");
    let (port, excluded) = (free_port(), free_port());
    let _a = python_http_server(&dir.0, port);
    let _b = python_http_server(&dir.0, excluded);
    let collector = Collector::start(&[
        "--exporter",
        "stdout",
        "--format",
        "json",
        "--trace-hold-ms",
        "100",
        "--exclude-port",
        &excluded.to_string(),
    ]);
    let probe = unique("probe");
    let normal = unique("normal");
    let hidden = unique("hidden");
    let ua = |agent: &str, url: &str| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-A", agent, url])
            .status()
            .unwrap();
    };
    ua(
        "kube-probe/1.29",
        &format!("http://127.0.0.1:{port}/{probe}"),
    );
    ua("curl/8", &format!("http://127.0.0.1:{excluded}/{hidden}"));
    ua("curl/8", &format!("http://127.0.0.1:{port}/{normal}"));
    let lines = collector.wait_json(Duration::from_secs(10), |l| {
        l.iter().any(|s| s.to_string().contains(&normal))
    });
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    assert!(text.iter().any(|l| l.contains(&normal)), "{text:?}");
    assert!(
        !text.iter().any(|l| l.contains(&probe)),
        "kube-probe traced: {text:?}"
    );
    assert!(
        !text.iter().any(|l| l.contains(&hidden)),
        "excluded port traced: {text:?}"
    );
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let c = summary_counters(&stderr.text());
    // Each request has two ends: curl's call and the server's request.
    assert_eq!(
        (c["filter_dropped_kube_probe"], c["filter_dropped_port"]),
        (2, 2),
        "{c:?}"
    );
}

/// SIGUSR1 detaches every probe while the collector (and its exporters) keep running;
/// SIGUSR2 attaches them again.
#[test]
fn the_kill_switch_detaches_and_reattaches_the_probes() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let before = bpf_object_ids("prog");
    let dir = TempDir::new("kill-www");
    let port = free_port();
    let _server = python_http_server(&dir.0, port);
    let collector = Collector::start(&[
        "--exporter",
        "stdout",
        "--format",
        "json",
        "--trace-hold-ms",
        "100",
    ]);
    assert!(bpf_object_ids("prog").len() > before.len());
    let seen = |tag: &str| {
        curl(&format!("http://127.0.0.1:{port}/{tag}"));
        let lines = collector.wait_json(Duration::from_secs(3), |l| {
            l.iter().any(|s| s.to_string().contains(tag))
        });
        lines.iter().any(|s| s.to_string().contains(tag))
    };
    assert!(seen(&unique("on")));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(collector.pid() as i32, libc::SIGUSR1) };
    let start = std::time::Instant::now();
    while bpf_object_ids("prog") != before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "programs still loaded after SIGUSR1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!seen(&unique("off")), "traced while detached");
    unsafe { libc::kill(collector.pid() as i32, libc::SIGUSR2) };
    std::thread::sleep(Duration::from_millis(1000));
    assert!(seen(&unique("again")), "not traced after SIGUSR2");
    assert!(collector.stop(libc::SIGTERM).success());
}

/// Far over its CPU budget, the collector sheds: the kernel counts instead of copying.
#[test]
fn over_its_cpu_budget_the_collector_sheds_load() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let collector = Collector::start(&[
        "--exporter",
        "exchanges",
        "--format",
        "json",
        "--exclude-process",
        "oha",
        "--max-cpu-percent",
        "0.5",
    ]);
    let server = start_server(App::Nginx);
    let out = Command::new("oha")
        .args(["-z", "6s", "-q", "3000", "-c", "8", "--no-tui"])
        .arg(format!("http://127.0.0.1:{}/ok/shed", server.port))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let text = stderr.text();
    let c = summary_counters(&text);
    assert!(c["guard_shed_started"] >= 1, "{c:?}");
    assert!(c["kernel_shed_events"] > 0, "{c:?}");
    assert!(text.contains("over budget: shedding load"), "{text}");
}

/// SIGTERM in the middle of 5,000 requests/s: every exchange captured is exported (open
/// ones ended at the stop, marked), and no program stays loaded.
#[test]
fn sigterm_under_load_exports_every_captured_exchange() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let before = bpf_object_ids("prog");
    let collector = Collector::start(&[
        "--exporter",
        "stdout",
        "--format",
        "json",
        "--exclude-process",
        "oha",
    ]);
    let server = start_server(App::Nginx);
    let oha = Command::new("oha")
        .args(["-z", "8s", "-q", "5000", "-c", "16", "--no-tui"])
        .arg(format!(
            "http://127.0.0.1:{}/ok/{}",
            server.port,
            unique("stop")
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut oha = KillOnDrop(oha);
    std::thread::sleep(Duration::from_secs(4));
    let stdout = collector.json_lines_handle();
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success(), "exit status");
    let after = bpf_object_ids("prog");
    let _ = oha.0.wait();
    let segments = stdout.json_lines();
    let c = summary_counters(&stderr.text());
    let ended_at_stop = segments
        .iter()
        .filter(|s| s["annotations"]["ended_at_collector_stop"] == true)
        .count();
    eprintln!(
        "{} exchanges captured, {} segments exported, {ended_at_stop} ended at the stop",
        c["http_exchanges"],
        segments.len()
    );
    assert!(c["http_exchanges"] >= 10_000, "load did not run: {c:?}");
    assert_eq!(segments.len() as u64, c["http_exchanges"], "{c:?}");
    // Programs of before may have gone meanwhile (an earlier test's, freed late); none may
    // be new.
    let left: Vec<&u64> = after.iter().filter(|id| !before.contains(id)).collect();
    assert!(left.is_empty(), "programs left loaded: {left:?}");
}

/// While the first SIGTERM waits for queued segments to be delivered (to an endpoint that
/// never answers), a second signal exits at once. (Capture off: no root needed.)
#[test]
fn a_second_signal_exits_at_once_while_the_first_is_flushing() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s); // accepted, never answered
        }
    });
    let udp = free_port();
    let bind = format!("127.0.0.1:{udp}");
    let mut collector = Collector::start_waiting(
        &[
            "--capture-path",
            "off",
            "--exporter",
            "xray",
            "--region",
            "us-east-1",
            "--endpoint-url",
            &endpoint,
            "-b",
            &bind,
            "-t",
            "off",
            "--metrics-bind",
            "off",
            "--shutdown-timeout-secs",
            "60",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
        "X-Ray SDK segments accepted",
    );
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..60 {
        let doc = format!(
            "{{\"format\":\"json\",\"version\":1}}\n{{\"name\":\"a\",\"id\":\"{i:016x}\",\"trace_id\":\"1-5759e988-bd862e3fe1be46a994272793\",\"start_time\":1,\"end_time\":2}}"
        );
        socket.send_to(doc.as_bytes(), &bind).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        collector
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(2))
            .is_none(),
        "the first signal flushes (the endpoint holds the upload)"
    );
    let status = collector
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(2))
        .expect("the second signal exits at once");
    assert_eq!(status.code(), Some(130));
    assert!(collector.stderr().contains("second signal"));
}
