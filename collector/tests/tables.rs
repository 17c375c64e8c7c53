//! Privileged: the kernel's connection tables (65,536 entries) never fill for good. 300,000
//! short connections of an excluded process, and 200,000 connections left open by 1,000
//! processes that exit without closing them, on both capture paths: afterwards a traced
//! request is still captured, the live-entry gauges are back near zero, and the collector's
//! RSS grew by less than 10 MB.

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

const SHORT: u32 = 300_000;
const EXIT_PROCS: u32 = 1_000;
const PER_PROC: u32 = 200;

fn churn(args: &[&str]) -> std::process::Child {
    Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/apps/table_churn.py"
        ))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}

fn finish(child: std::process::Child, what: &str, timeout: Duration) -> String {
    let start = Instant::now();
    let mut child = KillOnDrop(child);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
            assert!(status.success(), "{what} failed ({status}): {out}");
            return out;
        }
        assert!(
            start.elapsed() < timeout,
            "{what} still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn metrics(port: u16) -> String {
    let r = http_get(port, "/metrics");
    r.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// A GET from a traced client to a traced server, found among the collector's exchanges.
fn traced_request_is_captured(collector: &Collector, port: u16, tag: &str) {
    let path = unique(tag);
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/{path}")), 404);
    let lines = collector.wait_json(Duration::from_secs(15), |lines| {
        exchanges(lines)
            .iter()
            .any(|e| e.role == "server" && e.url.contains(&path))
    });
    assert!(
        exchanges(&lines)
            .iter()
            .any(|e| e.role == "server" && e.url.contains(&path)),
        "the request for /{path} was not captured; stderr:\n{}",
        collector.stderr()
    );
}

fn tables_never_fill(capture_path: &str) {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("tables-www");
    let port = free_port();
    let _server = python_http_server(&dir.0, port);
    let metrics_port = free_port();
    let collector = Collector::start(&[
        "--capture-path",
        capture_path,
        "--exporter",
        "exchanges",
        "--format",
        "json",
        "--exclude-process",
        "churn-short",
        "--metrics-bind",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    traced_request_is_captured(&collector, port, "before");
    // A sweep has run and the first exchanges are in: the baseline.
    std::thread::sleep(Duration::from_secs(6));
    let rss_before = rss_kb(collector.pid());

    let started = Instant::now();
    let short = churn(&["short", &SHORT.to_string()]);
    let exits = churn(&["exits", &EXIT_PROCS.to_string(), &PER_PROC.to_string()]);
    let exits_out = finish(exits, "the exiting processes", Duration::from_secs(300));
    let short_out = finish(short, "the excluded churn", Duration::from_secs(300));
    eprintln!(
        "{capture_path}: churn took {:.1} s: {} {}",
        started.elapsed().as_secs_f64(),
        short_out.trim(),
        exits_out.trim()
    );

    // Back near zero once the closes are in and a sweep has reclaimed what exits left.
    let gauge = |text: &str, name: &str| sample(text, name).unwrap_or(f64::MAX);
    let start = Instant::now();
    let mut text = metrics(metrics_port);
    while (gauge(&text, "collector_kernel_live_socks") > 100.0
        || gauge(&text, "collector_kernel_live_conns") > 100.0)
        && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_secs(1));
        text = metrics(metrics_port);
    }
    let named = |prefix: &str| {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .collect::<Vec<_>>()
            .join("; ")
    };
    eprintln!(
        "{capture_path}: after {:.0} s: {}; {}",
        start.elapsed().as_secs_f64(),
        named("collector_kernel_live"),
        named("collector_kernel_conns_reclaimed"),
    );
    eprintln!(
        "{capture_path}: errors: {}",
        named("collector_kernel_errors")
    );
    for name in ["collector_kernel_live_socks", "collector_kernel_live_conns"] {
        assert!(gauge(&text, name) <= 100.0, "{name} stays high:\n{text}");
    }
    if capture_path == "syscall" {
        // 200,000 connections of exited processes: most are reclaimed, the rest evicted.
        let reclaimed = gauge(&text, "collector_kernel_conns_reclaimed_total");
        assert!(reclaimed >= 10_000.0, "only {reclaimed} reclaimed:\n{text}");
    }
    traced_request_is_captured(&collector, port, "after");
    // Freed memory goes back to the system at the collector's next trim (every 10 s).
    let start = Instant::now();
    let mut rss_after = rss_kb(collector.pid());
    while rss_after >= rss_before + 10 * 1024 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(1));
        rss_after = rss_kb(collector.pid());
    }
    eprintln!(
        "{capture_path}: RSS {rss_before} kB before, {rss_after} kB {:.0} s after",
        start.elapsed().as_secs_f64()
    );
    assert!(
        rss_after < rss_before + 10 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert!(collector.stop(libc::SIGTERM).success());
}

#[test]
fn socket_path_tables_never_fill() {
    tables_never_fill("auto");
}

#[test]
fn syscall_path_tables_never_fill() {
    tables_never_fill("syscall");
}
