//! End to end, privileged: real servers in five runtimes traced unmodified on 127.0.0.1, on
//! both capture paths this kernel runs. For every server exactly the requests sent are
//! captured (count, method, path, status; keep-alive, pipelined, chunked), each duration is
//! within max(1 ms, 2 %) of the server's known delay, and the clients' side (curl) is
//! captured too. The kernel-matrix guests run the same checks (support/matrix.rs).

mod support;

use std::time::Duration;

use support::{matrix::MatrixSize, *};

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
