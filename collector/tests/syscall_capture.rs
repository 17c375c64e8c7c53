//! Privileged: the syscall tracepoints are attached and see a real server's traffic.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn collector_sees_python_server_read_the_request_and_write_the_status_line() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let collector = Collector::start(&[
        "--capture-path",
        "syscall",
        "--exporter",
        "events",
        "--format",
        "json",
    ]);

    let dir = TempDir::new("www");
    let path = unique("hello");
    std::fs::write(dir.0.join(&path), b"hello\n").unwrap();
    let port = free_port();
    let server = python_http_server(&dir.0, port);
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/{path}")), 200);

    let request_line = format!("GET /{path} HTTP/1.1");
    let server_pid = server.pid() as u64;
    let seen = |lines: &[serde_json::Value], direction: &str, starts: &str| {
        lines.iter().any(|l| {
            l["event"] == "data"
                && l["pid"] == server_pid
                && l["direction"] == direction
                && l["first_line"]
                    .as_str()
                    .is_some_and(|f| f.starts_with(starts))
        })
    };
    let lines = collector.wait_json(Duration::from_secs(10), |lines| {
        seen(lines, "recv", &request_line) && seen(lines, "send", "HTTP/1.0 200")
    });
    let dump = || {
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        seen(&lines, "recv", &request_line),
        "no line shows pid {server_pid} reading {request_line:?}:\n{}",
        dump()
    );
    assert!(
        seen(&lines, "send", "HTTP/1.0 200"),
        "no line shows pid {server_pid} writing a HTTP/1.0 200 status line:\n{}",
        dump()
    );
    // The server side is known to be the server: its connection was seen being accepted.
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "open" && l["pid"] == server_pid && l["role"] == "server")
    );
    assert!(collector.stop(libc::SIGTERM).success());
}

#[test]
fn stopping_the_collector_leaves_no_program_map_or_link_behind() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let before = ["prog", "map", "link"].map(bpf_object_ids);
    let collector = Collector::start(&["--capture-path", "syscall"]);
    let during = ["prog", "map", "link"].map(bpf_object_ids);
    for (i, kind) in ["prog", "map", "link"].iter().enumerate() {
        assert!(
            during[i].len() > before[i].len(),
            "the running collector should have added {kind}s (before {:?}, during {:?})",
            before[i],
            during[i]
        );
    }
    assert!(
        collector.stop(libc::SIGTERM).success(),
        "SIGTERM must exit 0"
    );
    assert_eq!(
        before,
        settled_ids(&before),
        "BPF objects left behind after SIGTERM"
    );

    let collector = Collector::start(&["--capture-path", "syscall"]);
    assert!(collector.stop(libc::SIGINT).success(), "SIGINT must exit 0");
    assert_eq!(
        before,
        settled_ids(&before),
        "BPF objects left behind after SIGINT"
    );
}

/// The kernel frees a map from a work queue shortly after its last fd closes: give it up to
/// two seconds to reach `expected`, then return what is loaded.
fn settled_ids(expected: &[Vec<u64>; 3]) -> [Vec<u64>; 3] {
    let start = std::time::Instant::now();
    loop {
        let now = ["prog", "map", "link"].map(bpf_object_ids);
        if &now == expected || start.elapsed() > Duration::from_secs(2) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
