//! `cargo xtask bench`: what the collector costs, measured side by side in one run.
//!
//! Servers (nginx with a 1 KiB static file, Go net/http) on loopback, keep-alive, loaded by
//! oha at saturation and at fixed rates; each measurement repeated, collector off and on
//! interleaved; CPUs pinned (server on CPU 0, load generator and collector on CPU 1: this
//! machine has two). Then the cost to work that is not HTTP: a `dd bs=1` syscall loop on both
//! capture paths, a bulk TCP transfer (iperf3) and Redis (redis-benchmark). Prints a table
//! and writes `target/bench/latest.json`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{setup, shell};

pub struct BenchOptions {
    pub reps: usize,
    pub seconds: u64,
    pub rates: Vec<u32>,
    /// Run the HTTP servers part.
    pub servers: bool,
    /// Run the not-HTTP part (dd, iperf3, redis).
    pub not_http: bool,
}

const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";
const CONNECTIONS: &str = "32";

/// A child stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned(cpu: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_090)
}

fn wait_listening(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The collector under test (release build), pinned next to the load generator.
struct Collector {
    proc: Proc,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start(root: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut child = pinned(CLIENT_CPU, root.join("target/release/collector"))
            .arg("run")
            .args([
                "--exclude-process",
                "oha",
                "--exclude-process",
                "redis-benchmark",
                "--exclude-process",
                "iperf3",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the collector")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        let c = Self {
            proc: Proc(child),
            stderr,
        };
        let start = Instant::now();
        while !c
            .stderr
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("capturing on"))
        {
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "collector did not start: {}",
                    c.stderr.lock().expect("lock").join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// user + system CPU time so far, in µs.
    fn cpu_us(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        let ticks: u64 = fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        ticks * 1_000_000 / 100 // CLK_TCK
    }

    /// Peak resident set, kB.
    fn peak_rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmHWM:")
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Stops it and returns the counters of its `summary:` line.
    fn stop(self) -> BTreeMap<String, u64> {
        let stderr = self.stderr.clone();
        drop(self.proc);
        std::thread::sleep(Duration::from_millis(100));
        let lines = stderr.lock().expect("lock").clone();
        lines
            .iter()
            .rev()
            .find_map(|l| l.split_once("summary:").map(|(_, s)| s.to_owned()))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| {
                kv.split_once('=')
                    .and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            })
            .collect()
    }
}

/// One load run's figures.
#[derive(Clone, Debug, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    collector_cpu_us_per_req: Option<f64>,
    bpf_ns_per_req: Option<f64>,
    drops: Option<u64>,
    captured: Option<u64>,
    peak_rss_kb: Option<u64>,
}

/// oha against `url` for `seconds`, at `rate` requests/s (None: saturation).
fn oha(url: &str, rate: Option<u32>, seconds: u64) -> anyhow::Result<Sample> {
    let mut c = pinned(CLIENT_CPU, "oha");
    c.args([
        "-z",
        &format!("{seconds}s"),
        "-c",
        CONNECTIONS,
        "--no-tui",
        "--output-format",
        "json",
    ]);
    if let Some(r) = rate {
        c.args(["-q", &r.to_string()]);
    }
    let out = c.arg(url).output().context("running oha")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "oha printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let requests = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    Ok(Sample {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: v["latencyPercentiles"]["p50"].as_f64().unwrap_or(0.0) * 1e3,
        p99_ms: v["latencyPercentiles"]["p99"].as_f64().unwrap_or(0.0) * 1e3,
        requests,
        ..Sample::default()
    })
}

const OUR_PROGRAMS: &[&str] = &[
    "sock_ops_conn",
    "skb_ingress",
    "skb_egress",
    "sock_recv_call",
    "sock_send_call",
    "syscall_",
];

/// Total eBPF run time of the collector's programs so far (bpf stats must be on).
fn bpf_run_time_ns() -> u64 {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output();
    let Ok(out) = out else { return 0 };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["name"].as_str().is_some_and(|n| {
                OUR_PROGRAMS
                    .iter()
                    .any(|o| n.starts_with(&o[..o.len().min(15)]))
            })
        })
        .filter_map(|p| p["run_time_ns"].as_u64())
        .sum()
}

fn set_bpf_stats(on: bool) {
    let _ = std::fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    );
}

/// `collector run` arguments and environment.
type CollectorArgs<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// One measurement with the collector on (`collector` args) or off (`None`).
fn measure(
    root: &Path,
    url: &str,
    rate: Option<u32>,
    seconds: u64,
    collector: Option<CollectorArgs<'_>>,

    bpf_stats: bool,
) -> anyhow::Result<Sample> {
    let Some((args, env)) = collector else {
        return oha(url, rate, seconds);
    };
    set_bpf_stats(bpf_stats);
    let c = Collector::start(root, args, env)?;
    let (cpu0, bpf0) = (c.cpu_us(), bpf_run_time_ns());
    let mut s = oha(url, rate, seconds)?;
    // Let the collector take the last events before reading its CPU.
    std::thread::sleep(Duration::from_millis(300));
    let (cpu1, bpf1) = (c.cpu_us(), bpf_run_time_ns());
    s.peak_rss_kb = Some(c.peak_rss_kb());
    let summary = c.stop();
    set_bpf_stats(false);
    let req = s.requests.max(1) as f64;
    s.collector_cpu_us_per_req = Some((cpu1 - cpu0) as f64 / req);
    if bpf_stats {
        s.bpf_ns_per_req = Some((bpf1 - bpf0) as f64 / req);
    }
    s.drops = Some(
        summary
            .get("kernel_errors_ringbuf_full")
            .copied()
            .unwrap_or(0),
    );
    s.captured = Some(summary.get("http_exchanges").copied().unwrap_or(0));
    Ok(s)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn stat(v: Vec<f64>) -> Value {
    let (min, max) = spread(&v);
    json!({"median": median(v.clone()), "min": min, "max": max, "n": v.len()})
}

struct Server {
    name: &'static str,
    url: String,
    _procs: Vec<Proc>,
    _dir: PathBuf,
}

fn start_nginx(dir: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(dir.join("www/1k"), vec![b'x'; 1024])?;
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; sendfile on; keepalive_requests 1000000;\n\
             client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
             uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
             server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}\n"
        ),
    )?;
    let child = pinned(SERVER_CPU, "nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let p = Proc(child);
    wait_listening(port)?;
    Ok(Server {
        name: "nginx",
        url: format!("http://127.0.0.1:{port}/1k"),
        _procs: vec![p],
        _dir: dir.to_owned(),
    })
}

fn start_go(root: &Path, dir: &Path) -> anyhow::Result<Server> {
    let port = free_port();
    let bin = dir.join("go_server");
    shell::run(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(root.join("collector/tests/apps/go_server.go"))
            .env("GO111MODULE", "off"),
    )?;
    let child = pinned(SERVER_CPU, &bin)
        .arg(port.to_string())
        .env("GOMAXPROCS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the Go server")?;
    let p = Proc(child);
    wait_listening(port)?;
    Ok(Server {
        name: "go",
        url: format!("http://127.0.0.1:{port}/ok/bench"),
        _procs: vec![p],
        _dir: dir.to_owned(),
    })
}

pub fn run(root: &Path, opts: &BenchOptions) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    setup::build_chain()?;
    setup::test_tools()?;
    setup::debian_packages(
        "benchmark peers",
        &["iperf3", "redis-server", "redis-tools"],
    )?;
    let venv = setup::test_venv()?;
    shell::step("building the collector (release)", || {
        shell::cargo(&["build", "--release", "--bins"])
    })?;
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work)?;
    let started = Instant::now();
    let mut report = json!({
        "machine": machine(),
        "settings": {"reps": opts.reps, "seconds": opts.seconds, "connections": CONNECTIONS,
                     "pinning": "server on CPU 0; load generator and collector on CPU 1"},
        "scenarios": [],
    });

    let on: &[&str] = &[];
    let mut rows = Vec::new();
    let servers: &[&str] = if opts.servers { &["nginx", "go"] } else { &[] };
    for &server in servers {
        let dir = work.join(server);
        let srv = if server == "nginx" {
            start_nginx(&dir)?
        } else {
            start_go(root, &dir)?
        };
        let mut rates: Vec<Option<u32>> = vec![None];
        rates.extend(opts.rates.iter().map(|r| Some(*r)));
        for rate in rates {
            let (mut off, mut with) = (Vec::new(), Vec::new());
            for rep in 0..opts.reps {
                // Interleaved, alternating which goes first.
                if rep % 2 == 0 {
                    off.push(measure(root, &srv.url, rate, opts.seconds, None, false)?);
                    with.push(measure(
                        root,
                        &srv.url,
                        rate,
                        opts.seconds,
                        Some((on, &[])),
                        false,
                    )?);
                } else {
                    with.push(measure(
                        root,
                        &srv.url,
                        rate,
                        opts.seconds,
                        Some((on, &[])),
                        false,
                    )?);
                    off.push(measure(root, &srv.url, rate, opts.seconds, None, false)?);
                }
            }
            // eBPF run time in separate repetitions: bpf stats cost ~47 ns per run themselves.
            let stats: Vec<Sample> = (0..opts.reps.min(3))
                .map(|_| measure(root, &srv.url, rate, opts.seconds, Some((on, &[])), true))
                .collect::<anyhow::Result<_>>()?;
            let row = scenario(srv.name, "stdout", rate, &off, &with, &stats);
            eprintln!("bench: {}", row_text(&row));
            rows.push(row);
        }
        // One extra scenario: the X-Ray exporter to a local moto server.
        let moto_port = free_port();
        let _moto = Proc(
            Command::new(venv.join("bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_listening(moto_port)?;
        let endpoint = format!("http://127.0.0.1:{moto_port}");
        let xray_args: Vec<&str> = vec![
            "--exporter",
            "xray",
            "--endpoint-url",
            &endpoint,
            "--region",
            "us-east-1",
        ];
        let env: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "bench"),
            ("AWS_SECRET_ACCESS_KEY", "bench"),
        ];
        let rate = opts.rates.first().copied();
        let (mut off, mut with) = (Vec::new(), Vec::new());
        for _ in 0..opts.reps {
            off.push(measure(root, &srv.url, rate, opts.seconds, None, false)?);
            with.push(measure(
                root,
                &srv.url,
                rate,
                opts.seconds,
                Some((&xray_args, env)),
                false,
            )?);
        }
        let row = scenario(srv.name, "xray→moto", rate, &off, &with, &[]);
        eprintln!("bench: {}", row_text(&row));
        rows.push(row);
    }
    report["scenarios"] = Value::Array(rows.clone());
    if opts.not_http {
        report["not_http"] = not_http(root, opts)?;
    }

    report["duration_s"] = json!(started.elapsed().as_secs());

    let path = work.join("latest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", table(&report));
    eprintln!(
        "xtask: bench written to {} ({} s)",
        path.display(),
        started.elapsed().as_secs()
    );
    Ok(())
}

fn scenario(
    server: &str,
    sink: &str,
    rate: Option<u32>,
    off: &[Sample],
    with: &[Sample],
    stats: &[Sample],
) -> Value {
    let ratio = |f: fn(&Sample) -> f64| -> Vec<f64> {
        off.iter()
            .zip(with)
            .map(|(o, w)| if f(o) > 0.0 { f(w) / f(o) } else { f64::NAN })
            .collect()
    };
    json!({
        "server": server,
        "sink": sink,
        "rate": rate.map_or("saturation".to_owned(), |r| r.to_string()),
        "rps_off": stat(off.iter().map(|s| s.rps).collect()),
        "rps_on": stat(with.iter().map(|s| s.rps).collect()),
        "throughput_ratio": stat(ratio(|s| s.rps)),
        "p50_ratio": stat(ratio(|s| s.p50_ms)),
        "p99_ratio": stat(ratio(|s| s.p99_ms)),
        "p99_ms_off": stat(off.iter().map(|s| s.p99_ms).collect()),
        "p99_ms_on": stat(with.iter().map(|s| s.p99_ms).collect()),
        "collector_cpu_us_per_req": stat(with.iter().filter_map(|s| s.collector_cpu_us_per_req).collect()),
        "bpf_ns_per_req": stat(stats.iter().filter_map(|s| s.bpf_ns_per_req).collect()),
        "drops": with.iter().filter_map(|s| s.drops).sum::<u64>(),
        "captured_per_request": stat(with.iter().map(|s| s.captured.unwrap_or(0) as f64 / s.requests.max(1) as f64).collect()),
        "peak_rss_mb": stat(with.iter().filter_map(|s| s.peak_rss_kb).map(|k| k as f64 / 1024.0).collect()),
    })
}

fn m(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

fn row_text(r: &Value) -> String {
    format!(
        "{:<6} {:<10} {:>10} | rps off {:>8.0} on {:>8.0} | ratio {:.3} [{:.3}-{:.3}] | p50 {:.3} p99 {:.3} | cpu {:.2} µs + bpf {:.2} µs /req | drops {} | captured {:.3} | rss {:.1} MB",
        r["server"].as_str().unwrap_or(""),
        r["sink"].as_str().unwrap_or(""),
        r["rate"].as_str().unwrap_or(""),
        m(&r["rps_off"]),
        m(&r["rps_on"]),
        m(&r["throughput_ratio"]),
        r["throughput_ratio"]["min"].as_f64().unwrap_or(f64::NAN),
        r["throughput_ratio"]["max"].as_f64().unwrap_or(f64::NAN),
        m(&r["p50_ratio"]),
        m(&r["p99_ratio"]),
        m(&r["collector_cpu_us_per_req"]),
        m(&r["bpf_ns_per_req"]) / 1e3,
        r["drops"],
        m(&r["captured_per_request"]),
        m(&r["peak_rss_mb"]),
    )
}

fn table(report: &Value) -> String {
    let mut out = String::from(
        "| server | sink | rate (req/s) | req/s off → on | throughput on/off [min–max] | p50 on/off | p99 on/off | collector CPU µs/req | eBPF µs/req | drops | captured/sent | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in report["scenarios"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} → {:.0} | {:.3} [{:.3}–{:.3}] | {:.3} | {:.3} | {:.2} | {} | {} | {:.3} | {:.1} |\n",
            r["server"].as_str().unwrap_or(""),
            r["sink"].as_str().unwrap_or(""),
            r["rate"].as_str().unwrap_or(""),
            m(&r["rps_off"]),
            m(&r["rps_on"]),
            m(&r["throughput_ratio"]),
            r["throughput_ratio"]["min"].as_f64().unwrap_or(f64::NAN),
            r["throughput_ratio"]["max"].as_f64().unwrap_or(f64::NAN),
            m(&r["p50_ratio"]),
            m(&r["p99_ratio"]),
            m(&r["collector_cpu_us_per_req"]),
            if r["bpf_ns_per_req"]["n"].as_u64() == Some(0) { "—".to_owned() } else { format!("{:.2}", m(&r["bpf_ns_per_req"]) / 1e3) },
            r["drops"],
            m(&r["captured_per_request"]),
            m(&r["peak_rss_mb"]),
        ));
    }
    let n = &report["not_http"];
    if n.is_null() {
        return out;
    }
    out.push_str(&format!(

        "\nNot HTTP: `dd bs=1` syscall loop (best of {}): +{:.1} ns/syscall on the socket-layer path, +{:.1} ns/syscall on the syscall path (baseline {:.1} ns); iperf3 bulk TCP on/off {:.3}; redis-benchmark SET on/off {:.3}, GET on/off {:.3}.\n",
        n["dd_reps"], n["dd_added_ns_socket"].as_f64().unwrap_or(f64::NAN), n["dd_added_ns_syscall"].as_f64().unwrap_or(f64::NAN),
        n["dd_ns_per_syscall_off"].as_f64().unwrap_or(f64::NAN), m(&n["iperf3_ratio"]), m(&n["redis_set_ratio"]), m(&n["redis_get_ratio"]),
    ));
    out
}

/// The cost to work that is not HTTP.
fn not_http(root: &Path, opts: &BenchOptions) -> anyhow::Result<Value> {
    // dd: 2M reads + 2M writes of one byte, pinned, best of N, off/on interleaved.
    let dd = || -> anyhow::Result<f64> {
        // On the core the collector is not pinned to: its drain ticks must not land in the loop.
        let out = pinned(SERVER_CPU, "dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=2000000"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let secs = text
            .lines()
            .find_map(|l| {
                l.split(", ")
                    .nth(2)
                    .and_then(|s| s.trim_end_matches(" s").parse::<f64>().ok())
            })
            .with_context(|| format!("dd said: {text}"))?;
        Ok(secs * 1e9 / 4e6)
    };
    let (mut off, mut socket, mut syscall) = (Vec::new(), Vec::new(), Vec::new());
    let reps = opts.reps.max(5);
    for _ in 0..reps {
        off.push(dd()?);
        for (path, into) in [("socket", &mut socket), ("syscall", &mut syscall)] {
            let c = Collector::start(root, &["--capture-path", path], &[])?;
            into.push(dd()?);
            c.stop();
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);

    // iperf3 bulk transfer and redis-benchmark, off vs on (default path).
    let (mut iperf, mut set, mut get) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        let (o, w) = (iperf3(None, root)?, iperf3(Some(()), root)?);
        iperf.push(w / o);
        let ((os, og), (ws, wg)) = (redis(None, root)?, redis(Some(()), root)?);
        set.push(ws / os);
        get.push(wg / og);
    }
    Ok(json!({
        "dd_reps": reps,
        "dd_ns_per_syscall_off": best(&off),
        "dd_added_ns_socket": best(&socket) - best(&off),
        "dd_added_ns_syscall": best(&syscall) - best(&off),
        "iperf3_ratio": stat(iperf),
        "redis_set_ratio": stat(set),
        "redis_get_ratio": stat(get),
    }))
}

fn iperf3(collector: Option<()>, root: &Path) -> anyhow::Result<f64> {
    let port = free_port();
    let _server = Proc(
        pinned(SERVER_CPU, "iperf3")
            .args(["-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let c = collector
        .map(|()| Collector::start(root, &[], &[]))
        .transpose()?;
    let out = pinned(CLIENT_CPU, "iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", "5", "-J"])
        .output()?;
    drop(c);
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 bits_per_second")
}

fn redis(collector: Option<()>, root: &Path) -> anyhow::Result<(f64, f64)> {
    let port = free_port();
    let _server = Proc(
        pinned(SERVER_CPU, "redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_listening(port)?;
    let c = collector
        .map(|()| Collector::start(root, &[], &[]))
        .transpose()?;
    let out = pinned(CLIENT_CPU, "redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "-n",
            "200000",
            "-t",
            "set,get",
            "--csv",
        ])
        .output()?;
    drop(c);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |name: &str| -> anyhow::Result<f64> {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{name}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .with_context(|| format!("redis-benchmark said: {text}"))
    };
    Ok((rps("SET")?, rps("GET")?))
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo").lines().find_map(|l| {
        l.strip_prefix("model name")
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
    });
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_kb": read("/proc/meminfo").lines().next().unwrap_or_default().split_whitespace().nth(1),
    })
}
