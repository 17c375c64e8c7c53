//! Same-node links through Service NAT, and one collector per node (`--cgroup`), on the
//! two-node harness (`support/nodes.rs`): real processes, real kernel NAT (iptables DNAT of a
//! ClusterIP in the client's namespace), on both capture paths.

mod support;

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use support::{nodes::*, *};

/// A collector for one node: `--cgroup` of the node, its own metrics port, no relay.
fn node_collector(node: &Node, path: &str, metrics_port: u16) -> Collector {
    cgroup_collector(&node.cgroup, path, metrics_port)
}

fn cgroup_collector(cgroup: &std::path::Path, path: &str, metrics_port: u16) -> Collector {
    let cgroup = cgroup.display().to_string();
    let metrics = format!("127.0.0.1:{metrics_port}");
    Collector::start(&[
        "--cgroup",
        &cgroup,
        "--capture-path",
        path,
        "--format",
        "json",
        "--trace-hold-ms",
        "300",
        "-b",
        "off",
        "-t",
        "off",
        "--metrics-bind",
        &metrics,
    ])
}

fn url(d: &Value) -> &str {
    d["http"]["request"]["url"].as_str().unwrap_or_default()
}

fn last_part(u: &str) -> &str {
    u.rsplit('/').next().unwrap_or_default()
}

/// What one collector's documents say about B's requests of one run.
#[derive(Debug, Default)]
struct Links {
    /// B's segments for the run's nonces.
    callee: usize,
    /// …whose parent is the caller's call for the same nonce, in the caller's trace.
    linked: usize,
    /// …whose parent is any other span: never allowed.
    wrong: Vec<String>,
    /// Linked calls that sit inside the caller's request for the same nonce.
    nested: usize,
}

/// Checks every B segment whose URL holds `needle` in `docs` against the calls in
/// `calls_docs`.
fn links_at(docs: &[Value], calls_docs: &[Value], needle: &str) -> Links {
    // Every call by id: (its nonce, its trace, the nonce of the request holding it).
    let mut calls: HashMap<&str, (&str, &str, Option<&str>)> = HashMap::new();
    for d in calls_docs {
        let holder = url(d).contains("/call/").then(|| last_part(url(d)));
        for sub in d["subsegments"].as_array().into_iter().flatten() {
            calls.insert(
                sub["id"].as_str().unwrap_or_default(),
                (
                    last_part(url(sub)),
                    d["trace_id"].as_str().unwrap_or_default(),
                    holder,
                ),
            );
        }
    }
    let mut out = Links::default();
    for b in docs.iter().filter(|d| {
        d["subsegments"].as_array().is_none_or(|s| s.is_empty()) && url(d).contains(needle)
    }) {
        out.callee += 1;
        let nonce = last_part(url(b));
        let Some(parent) = b["parent_id"].as_str() else {
            continue;
        };
        match calls.get(parent) {
            Some((n, trace, holder)) if *n == nonce && Some(*trace) == b["trace_id"].as_str() => {
                out.linked += 1;
                out.nested += usize::from(*holder == Some(nonce));
            }
            other => out
                .wrong
                .push(format!("B {nonce} parented by {parent}: {other:?}")),
        }
    }
    out
}

/// B's segments of one run (`/work/<run>-…`).
fn links(docs: &[Value], calls_docs: &[Value], run: &str) -> Links {
    links_at(docs, calls_docs, &format!("/work/{run}-"))
}

/// Service A of one runtime on node a, listening on A_POD:`port`, with routes nat (the
/// ClusterIP to B), direct (B's pod IP), farnat and far (the callee on node b).
fn start_a(nodes: &Nodes, runtime: &str, port: u16, dir: &TempDir) -> KillOnDrop {
    let listen = format!("{A_POD}:{port}");
    let routes =
        format!("nat={NAT_SAME},direct={B_POD}:{B_PORT},farnat={NAT_FAR},far={FAR_POD}:{FAR_PORT}");
    let apps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps");
    match runtime {
        "python" => nodes.a.spawn(
            "python3".as_ref(),
            &[apps.join("demo_a.py").to_str().unwrap(), &listen, &routes],
            &[],
        ),
        "node" => nodes.a.spawn(
            "node".as_ref(),
            &[apps.join("demo_a.js").to_str().unwrap(), &listen, &routes],
            &[],
        ),
        "go" => nodes
            .a
            .spawn(&go_server_binary(), &[&listen], &[("ROUTES", &routes)]),
        "nginx" => {
            let conf = nginx_a(dir, &listen);
            nodes
                .a
                .spawn("nginx".as_ref(), &["-e", "stderr", "-c", &conf], &[])
        }
        other => panic!("no runtime {other}"),
    }
}

/// nginx as A: `/call/<route>/<nonce>` proxied to `/work/<nonce>` through keep-alive
/// upstreams, one per route.
fn nginx_a(dir: &TempDir, listen: &str) -> String {
    let d = dir.0.display();
    let mut upstreams = String::new();
    let mut locations = String::new();
    for (route, addr) in [
        ("nat", NAT_SAME.to_owned()),
        ("direct", format!("{B_POD}:{B_PORT}")),
        ("farnat", NAT_FAR.to_owned()),
        ("far", format!("{FAR_POD}:{FAR_PORT}")),
    ] {
        upstreams.push_str(&format!(
            "upstream {route} {{ server {addr}; keepalive 16; }}\n"
        ));
        locations.push_str(&format!(
            "location /call/{route}/ {{ proxy_pass http://{route}/work/; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n"
        ));
    }
    std::fs::create_dir_all(dir.0.join("tmp")).unwrap();
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n\
         fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
         {upstreams} server {{ listen {listen}; {locations} }} }}\n"
    );
    let path = dir.0.join("nginx-a.conf");
    std::fs::write(&path, conf).unwrap();
    path.display().to_string()
}

fn load(nodes: &Nodes, port: u16, route: &str, prefix: &str, clients: u32, per: u32) -> u64 {
    let base = format!("http://{A_POD}:{port}/call/{route}");
    let out = nodes.a.run_untraced(
        "python3",
        &[
            &nonce_load(),
            "get",
            &base,
            prefix,
            &clients.to_string(),
            &per.to_string(),
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("nonce_load prints JSON");
    assert_eq!(v["failures"], 0, "requests through A failed: {v}");
    v["ok"].as_u64().unwrap()
}

fn nonce_load() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps/nonce_load.py")
        .display()
        .to_string()
}

fn start_bs(nodes: &Nodes, min_ms: &str, max_ms: &str) -> (KillOnDrop, KillOnDrop) {
    let demo_b = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/demo_b.py");
    let demo_b = demo_b.to_str().unwrap();
    let b = nodes.a.spawn(
        "python3".as_ref(),
        &[demo_b, &format!("{B_POD}:{B_PORT}"), min_ms, max_ms],
        &[],
    );
    let far = nodes.b.spawn(
        "python3".as_ref(),
        &[demo_b, &format!("{FAR_POD}:{FAR_PORT}"), min_ms, max_ms],
        &[],
    );
    nodes
        .a
        .wait_listening(&format!("{B_POD}:{B_PORT}"), Duration::from_secs(15));
    nodes
        .b
        .wait_listening(&format!("{FAR_POD}:{FAR_PORT}"), Duration::from_secs(15));
    (b, far)
}

/// Every A runtime calls B through the ClusterIP and directly (same node: every call linked,
/// none wrong), and the callee on node b (its collector cannot see A: nothing linked). Each
/// collector exports only its node's segments; stopping one leaves the other tracing.
fn same_node_links_through_nat(path: &str) {
    let _serial = serial();
    let nodes = Nodes::start(&path[..2]);
    let _bs = start_bs(&nodes, "5", "60");
    let (ma, mb) = (free_port(), free_port());
    let collector_a = node_collector(&nodes.a, path, ma);
    let collector_b = node_collector(&nodes.b, path, mb);
    let run = unique("nat");
    let dir = TempDir::new("nat-nginx");
    let mut last_a = None;
    for (i, runtime) in ["python", "node", "go", "nginx"].into_iter().enumerate() {
        drop(last_a.take());
        let port = 8090 + i as u16;
        last_a = Some(start_a(&nodes, runtime, port, &dir));
        nodes
            .a
            .wait_listening(&format!("{A_POD}:{port}"), Duration::from_secs(20));
        assert_eq!(
            load(&nodes, port, "nat", &format!("{run}-{runtime}-nat"), 8, 25),
            200
        );
        for route in ["direct", "farnat", "far"] {
            let prefix = format!("{run}-{runtime}-{route}");
            assert_eq!(load(&nodes, port, route, &prefix, 8, 5), 40);
        }
    }
    // The kernel really translated: conntrack holds ClusterIP connections answered by B.
    let tracked = nodes.a.run_untraced(
        "conntrack",
        &["-L", "-d", NAT_SAME.split(':').next().unwrap()],
    );
    assert!(
        tracked.contains(&format!("src={B_POD}")),
        "no DNAT to B in conntrack:\n{tracked}"
    );
    // Stopping node a's collector leaves node b's tracing.
    std::thread::sleep(Duration::from_millis(800));
    let docs_a = collector_a.json_lines_handle();
    assert!(collector_a.stop(libc::SIGTERM).success());
    let after = format!("{run}-after");
    assert_eq!(load(&nodes, 8093, "far", &after, 4, 5), 20);
    std::thread::sleep(Duration::from_millis(800));
    let docs_b = collector_b.json_lines_handle();
    assert!(collector_b.stop(libc::SIGTERM).success());
    let (docs_a, docs_b) = (docs_a.json_lines(), docs_b.json_lines());

    for runtime in ["python", "node", "go", "nginx"] {
        for route in ["nat", "direct"] {
            let l = links(&docs_a, &docs_a, &format!("{run}-{runtime}-{route}"));
            eprintln!(
                "{path} {runtime} A → B ({route}): {}/{} of B's segments linked to A's call, {} \
                 of them nested in A's request, {} wrong",
                l.linked,
                l.callee,
                l.nested,
                l.wrong.len()
            );
            let sent = if route == "nat" { 200 } else { 40 };
            assert!(l.wrong.is_empty(), "{runtime} {route}: {:?}", l.wrong);
            assert_eq!(
                (l.callee, l.linked),
                (sent, sent),
                "{runtime} {route}: {l:?}"
            );
        }
        for route in ["farnat", "far"] {
            let prefix = format!("{run}-{runtime}-{route}");
            let seen_by_b = links(&docs_b, &docs_a, &prefix);
            assert_eq!(seen_by_b.callee, 40, "node b's collector traces its callee");
            assert_eq!(
                (seen_by_b.linked, seen_by_b.wrong.len()),
                (0, 0),
                "node b's collector cannot see A's calls: nothing may be linked ({seen_by_b:?})"
            );
            let seen_by_a = links(&docs_a, &docs_a, &prefix);
            assert_eq!(
                seen_by_a.callee, 0,
                "node a's collector saw node b's callee"
            );
        }
    }
    assert!(
        docs_b.iter().all(|d| !url(d).contains("/call/")),
        "node b's collector exported a segment of node a's A"
    );
    assert_eq!(links(&docs_b, &docs_b, &after).callee, 20);
}

#[test]
fn through_a_cluster_ip_every_call_on_one_node_links_on_the_socket_layer() {
    if !privileged() {
        return;
    }
    same_node_links_through_nat("auto");
}

#[test]
fn through_a_cluster_ip_every_call_on_one_node_links_on_the_syscall_path() {
    if !privileged() {
        return;
    }
    same_node_links_through_nat("syscall");
}

/// The value of a counter on a collector's /metrics (0 before its first count: a counter is
/// exported once it moved; a misspelt name fails the counts it should match).
fn counter(port: u16, name: &str) -> u64 {
    let text = http_get(port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "/metrics: {text}");
    sample(&text, &format!("collector_{name}_total")).unwrap_or(0.0) as u64
}

/// Through the NAT: connections closed before their first byte, responses cut by a reset,
/// and 10,000 connections in about 10 s, from a traced client — nothing wrong linked, and
/// every connection's end counted.
fn bad_connections_through_nat(path: &str) {
    let _serial = serial();
    let nodes = Nodes::start(&format!("x{}", &path[..1]));
    let _bs = start_bs(&nodes, "0", "0");
    let port = free_port();
    let collector = node_collector(&nodes.a, path, port);
    let run = unique("bad");
    // The clients run inside node a's cgroup: traced, their calls are the callers.
    let client = |args: &[&str]| {
        let out = TempDir::new("bad-client");
        let file = out.0.join("out.json");
        let mut full = vec!["-c".to_owned()];
        full.push(format!(
            "python3 {} {} > {}",
            nonce_load(),
            args.join(" "),
            file.display()
        ));
        let mut p = nodes.a.spawn(
            "sh".as_ref(),
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
        );
        let status = p.0.wait().unwrap();
        assert!(status.success(), "client {args:?} failed");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        v
    };
    // Each kind of bad connection on its own, so a lost end says which kind lost it.
    let mut before = settled_ends(port);
    let mut phase = |what: &str, connections: u64| {
        let now = settled_ends(port);
        let delta = Ends {
            opened: now.opened - before.opened,
            closed: now.closed - before.closed,
            http_opened: now.http_opened - before.http_opened,
            http_closed: now.http_closed - before.http_closed,
        };
        eprintln!("{path}: {connections} connections {what}: {delta:?}");
        // Both ends of each: the client's and B's.
        assert_eq!(
            (delta.opened, delta.closed),
            (2 * connections, 2 * connections),
            "{what}: kernel ends"
        );
        assert_eq!(delta.http_opened, delta.http_closed, "{what}: http ends");
        before = now;
    };
    let abandoned = client(&["abandon", NAT_SAME, "200"]);
    assert_eq!(abandoned["ok"], 200, "{abandoned}");
    phase("closed before their first byte", 200);
    // B answers half a response, then resets.
    let reset = client(&["get", &format!("http://{NAT_SAME}/reset"), &run, "4", "25"]);
    assert_eq!(
        reset["ok"], 0,
        "every reset request fails at the client: {reset}"
    );
    phase("reset in the middle of a response", 100);
    let t0 = std::time::Instant::now();
    let churn = client(&["churn", NAT_SAME, &format!("{run}-churn"), "8", "1250"]);
    eprintln!(
        "{path}: 10,000 connections through the NAT in {:?}",
        t0.elapsed()
    );
    assert_eq!(churn["ok"], 10_000, "{churn}");
    phase("of one request each", 10_000);
    let collisions = counter(port, "trace_link_key_collisions");
    let docs = collector.json_lines_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let docs = docs.json_lines();
    let l = links(&docs, &docs, &format!("{run}-churn"));
    let reset_links = links_at(&docs, &docs, &format!("/reset/{run}-"));
    eprintln!(
        "{path}: churn {}/{} linked, {} wrong; reset {}/{} linked, {} wrong; key collisions \
         {collisions}",
        l.linked,
        l.callee,
        l.wrong.len(),
        reset_links.linked,
        reset_links.callee,
        reset_links.wrong.len(),
    );
    assert!(reset_links.wrong.is_empty(), "{:?}", reset_links.wrong);
    assert!(l.wrong.is_empty(), "{:?}", l.wrong);
    // Every B segment exported is linked. Under a loaded CI machine (18 s for the 10,000,
    // against 5 s idle) one exchange of 10,000 was once missing from the export, with every
    // connection end counted: at most 1 % may be missing here; "every request shows up"
    // belongs to the capture tests.
    assert_eq!(l.linked, l.callee, "every B segment exported is linked");
    assert!(l.callee >= 9_900, "{l:?}");
    assert_eq!(collisions, 0);
}

/// Connection ends a collector counted, in the kernel and in its HTTP stage.
#[derive(Debug, Clone, Copy)]
struct Ends {
    opened: u64,
    closed: u64,
    http_opened: u64,
    http_closed: u64,
}

/// The counts once every connection opened is closed and they stopped moving (the collector
/// publishes them every second), or after 15 s, whatever they are then.
fn settled_ends(port: u16) -> Ends {
    let read = || Ends {
        opened: counter(port, "kernel_conn_opened"),
        closed: counter(port, "kernel_conn_closed"),
        http_opened: counter(port, "http_conns_opened"),
        http_closed: counter(port, "http_conns_closed"),
    };
    let start = std::time::Instant::now();
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(1100));
        let now = read();
        let still = (now.opened, now.closed, now.http_opened, now.http_closed)
            == (last.opened, last.closed, last.http_opened, last.http_closed);
        if (still && now.opened == now.closed && now.http_opened == now.http_closed)
            || start.elapsed() > Duration::from_secs(15)
        {
            return now;
        }
        last = now;
    }
}

#[test]
fn bad_connections_through_nat_link_nothing_wrong_and_every_end_is_counted_on_the_socket_layer() {
    if !privileged() {
        return;
    }
    bad_connections_through_nat("auto");
}

#[test]
fn bad_connections_through_nat_link_nothing_wrong_and_every_end_is_counted_on_the_syscall_path() {
    if !privileged() {
        return;
    }
    bad_connections_through_nat("syscall");
}

/// `--cgroup` refuses, with exit status 2 and the reason: a missing path, one that is not a
/// cgroup v2 directory, and one another collector holds (itself, or around or inside it).
#[test]
fn unusable_cgroups_are_start_up_errors() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    // `timeout`: a collector that wrongly starts would otherwise run on (status 124 then).
    let run = |cgroup: &str| {
        let out = std::process::Command::new("timeout")
            .args([
                "30",
                env!("CARGO_BIN_EXE_collector"),
                "run",
                "--cgroup",
                cgroup,
                "-b",
                "off",
                "-t",
                "off",
                "--metrics-bind",
                "off",
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (path, why) in [
        ("/nonexistent/cgroup", "No such file"),
        ("/proc/self/status", "not a directory"),
        ("/tmp", "not a cgroup v2 directory"),
    ] {
        let (code, err) = run(path);
        assert_eq!(code, Some(2), "{path}: {err}");
        assert!(err.contains(why), "{path}: {err}");
    }
    let nodes = Nodes::start("cg");
    let inner = nodes.a.cgroup.join("inner");
    std::fs::create_dir(&inner).unwrap();
    // A collector holds node a: that cgroup and one inside it are refused, node b is not.
    let holder = node_collector(&nodes.a, "auto", free_port());
    for path in [&nodes.a.cgroup, &inner] {
        let (code, err) = run(path.to_str().unwrap());
        assert_eq!(code, Some(2), "{}: {err}", path.display());
        assert!(err.contains("another collector"), "{err}");
    }
    let beside = node_collector(&nodes.b, "auto", free_port());
    drop((holder, beside));
    // One holds the inner cgroup: the one around it is refused; once it ends, it is free.
    let inner_holder = cgroup_collector(&inner, "auto", free_port());
    let (code, err) = run(nodes.a.cgroup.to_str().unwrap());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another collector"), "{err}");
    drop(inner_holder);
    let again = node_collector(&nodes.a, "auto", free_port());
    drop(again);
}
