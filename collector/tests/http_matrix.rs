//! End to end, privileged: real servers in five runtimes traced unmodified on 127.0.0.1, on
//! both capture paths this kernel runs. For every server exactly the requests sent are
//! captured (count, method, path, status; keep-alive, pipelined, chunked), each duration is
//! within max(1 ms, 2 %) of the server's known delay, and the clients' side (curl) is
//! captured too. The kernel-matrix guests run the same checks (support/matrix.rs).

mod support;

use std::{process::Command, time::Duration};

use support::{
    matrix::MatrixSize,
    nodes::{B_POD, B_PORT, Nodes},
    *,
};

const SIZE: MatrixSize = MatrixSize {
    warm: 20,
    keep_alive: 1000,
    delays: &[200, 300, 400],
    // 2 % of the delays already leaves 4–8 ms for the apps' native ~2 ms.
    own_work_ms: 0.0,
};

fn run_matrix(app: App, path: &str) {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let collector = Collector::start(&[
        "--capture-path",
        path,
        "--exporter",
        "exchanges",
        "--format",
        "json",
    ]);
    let traffic = matrix::drive(app, &SIZE);
    // Let the last calls reach the ring buffer, then stop: the collector flushes on SIGTERM.
    std::thread::sleep(Duration::from_millis(300));
    let stderr_before_stop = collector.stderr();
    let lines = collector.json_lines_handle();
    assert!(
        collector.stop(libc::SIGTERM).success(),
        "collector failed:\n{stderr_before_stop}"
    );
    match matrix::check(&traffic, &exchanges(&lines.json_lines()), &SIZE) {
        Ok(timings) => {
            for t in timings {
                eprintln!(
                    "{app:?}/{path}: {} server-side {:.3} ms, captured {:.3} ms",
                    t.url, t.server_ms, t.captured_ms
                );
            }
        }
        Err(e) => panic!("{app:?}/{path}:\n{e}\ncollector stderr:\n{stderr_before_stop}"),
    }
}

macro_rules! matrix {
    ($($name:ident: $app:expr, $path:literal;)*) => {$(
        #[test]
        fn $name() {
            run_matrix($app, $path);
        }
    )*};
}

matrix! {
    python_http_server_on_the_socket_path: App::Python, "socket";
    python_http_server_on_the_syscall_path: App::Python, "syscall";
    node_http_on_the_socket_path: App::Node, "socket";
    node_http_on_the_syscall_path: App::Node, "syscall";
    go_net_http_on_the_socket_path: App::Go, "socket";
    go_net_http_on_the_syscall_path: App::Go, "syscall";
    java_httpserver_on_the_socket_path: App::Java, "socket";
    java_httpserver_on_the_syscall_path: App::Java, "syscall";
    nginx_static_and_proxy_on_the_socket_path: App::Nginx, "socket";
    nginx_static_and_proxy_on_the_syscall_path: App::Nginx, "syscall";
}

/// A connection whose handshake's last ACK is lost (or dropped because the accept queue was
/// full, as under a burst of connections to a small backlog) is completed by its first data
/// packet, which the kernel filters on the listening socket: the request must still be
/// captured. iptables in a network namespace drops each connection's second packet (that ACK).
#[test]
fn a_request_whose_first_packet_completes_the_handshake_is_captured() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let nodes = Nodes::start("hs");
    let ns = nodes.a.netns.as_str();
    let port = B_PORT.to_string();
    let rule = [
        "INPUT",
        "-p",
        "tcp",
        "-d",
        B_POD,
        "--dport",
        &port,
        "-m",
        "connbytes",
        "--connbytes",
        "2:2",
        "--connbytes-dir",
        "original",
        "--connbytes-mode",
        "packets",
        "-j",
        "DROP",
    ];
    let ok = Command::new("ip")
        .args(["netns", "exec", ns, "iptables", "-A"])
        .args(rule)
        .status()
        .expect("iptables");
    assert!(ok.success(), "adding the iptables rule in {ns}");
    let dir = TempDir::new("handshake");
    let run = unique("hs");
    for i in 0..5 {
        std::fs::write(dir.0.join(format!("{run}-{i}")), "ok").unwrap();
    }
    let collector = Collector::start(&[
        "--capture-path",
        "socket",
        "--exporter",
        "exchanges",
        "--format",
        "json",
    ]);
    let dir_arg = dir.0.display().to_string();
    let _server = nodes.a.spawn(
        "python3".as_ref(),
        &[
            "-m",
            "http.server",
            &port,
            "--bind",
            B_POD,
            "--directory",
            &dir_arg,
        ],
        &[],
    );
    nodes
        .a
        .wait_listening(&format!("{B_POD}:{B_PORT}"), Duration::from_secs(10));
    let dropped_before = dropped_acks(ns);
    for i in 0..5 {
        let url = format!("http://{B_POD}:{B_PORT}/{run}-{i}");
        let body = nodes.a.run_untraced("curl", &["-sf", "-m", "10", &url]);
        assert_eq!(body, "ok", "{url}");
    }
    let dropped = dropped_acks(ns) - dropped_before;
    assert!(
        dropped >= 5,
        "the handshakes' last ACKs were dropped: {dropped}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let lines = collector.json_lines_handle();
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let seen = exchanges(&lines.json_lines());
    let summary = summary_counters(&stderr.text());
    for i in 0..5 {
        let url = format!("http://{B_POD}:{B_PORT}/{run}-{i}");
        assert!(
            seen.iter()
                .any(|e| e.role == "server" && e.url == url && e.status == Some(200)),
            "no server exchange for {url}; summary: {summary:?}"
        );
    }
    assert!(summary["join_listener_packets"] >= 5, "{summary:?}");
}

/// Packets the rule of the handshake test dropped so far.
fn dropped_acks(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "iptables", "-L", "INPUT", "-v", "-x", "-n",
        ])
        .output()
        .expect("iptables -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("connbytes"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
