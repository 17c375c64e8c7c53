//! Shared helpers of the privileged and end-to-end tests: running the real collector binary,
//! real servers and clients, and the CI rule that a privileged test never skips silently.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod kube;
pub mod matrix;
pub mod nodes;

use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Tests that load eBPF programs need root. Outside CI they are skipped with a loud message;
/// with `CI=true` a test that cannot load its programs fails.
pub fn privileged() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: this privileged test must run as root to load its eBPF programs");
    }
    eprintln!("SKIPPED (not root): privileged test; run `cargo xtask test` as root");
    false
}

/// The collector binary, running `collector run ARGS`, with its stdout lines collected.
pub struct Collector {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Starts the collector and waits until its hooks are attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_waiting(args, env, "capturing on")
    }

    /// Starts the collector and waits until its stderr says `ready`.
    pub fn start_waiting(args: &[&str], env: &[(&str, &str)], ready: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start collector");
        let lines = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let c = Self {
            child,
            lines,
            stderr,
        };
        // Loading takes seconds natively, far longer in an emulated kernel-matrix guest.
        c.wait_for_stderr(ready, Duration::from_secs(120));
        c
    }

    fn wait_for_stderr(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "collector did not report {needle:?} within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Parsed JSON stdout lines so far (non-JSON lines are a test failure).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.json_lines_handle().json_lines()
    }

    /// The stderr lines, still readable after the collector has been stopped.
    pub fn stderr_handle(&self) -> Lines {
        Lines(self.stderr.clone())
    }

    /// The stdout lines, still readable after the collector has been stopped.
    pub fn json_lines_handle(&self) -> Lines {
        Lines(self.lines.clone())
    }

    /// Polls the JSON lines until `done` holds or the timeout passes; returns the last lines.
    pub fn wait_json(
        &self,
        timeout: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let lines = self.json_lines();
            if done(&lines) || start.elapsed() > timeout {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and returns the exit status if the process ends within `within`.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends `signal` and waits for the exit; returns whether it exited successfully.
    pub fn stop(mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!(
                    "collector did not exit within 20 s of signal {signal}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stdout lines of a collector, kept after it exits.
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Every line as text (cheap, for large outputs).
    pub fn raw_lines(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(100));
        self.0.lock().unwrap().clone()
    }

    /// All lines joined, for stderr.
    pub fn text(&self) -> String {
        self.raw_lines().join("\n")
    }

    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        // The reader thread may still be taking the last lines from the closed pipe.
        std::thread::sleep(Duration::from_millis(100));
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A child process killed when dropped (servers under test).
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    /// SIGTERM first, so a server stops its own children (nginx's master stops its workers;
    /// a SIGKILL would orphan them), then SIGKILL if it lingers.
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:port.
pub fn wait_listening(port: u16, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `python3 -m http.server` serving `dir` on 127.0.0.1:port.
pub fn python_http_server(dir: &Path, port: u16) -> KillOnDrop {
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed (cargo xtask test installs it)");
    let server = KillOnDrop(child);
    wait_listening(port, Duration::from_secs(10));
    server
}

/// One request with curl; returns the HTTP status curl saw.
pub fn curl(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ])
        .output()
        .expect("curl must be installed (cargo xtask test installs it)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// One request with curl; returns the status and how long the handler slept (X-Slept-Us), ms.
pub fn curl_timed(url: &str) -> (u16, Option<f64>) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "10", url])
        .output()
        .expect("curl must be installed (cargo xtask test installs it)");
    let head = String::from_utf8_lossy(&out.stdout);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let slept = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-slept-us")
            .then(|| v.trim().parse::<f64>().ok())
            .flatten()
    });
    (status, slept.map(|us| us / 1e3))
}

/// A GET with curl, returning the whole response (status line, headers, body).
pub fn http_get(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of an unlabelled sample in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A name unique to this test run, for paths that identify one request.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos:x}", std::process::id())
}

/// A fresh temporary directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ids of the BPF objects of one kind (`prog`, `map`, `link`) loaded on the machine, via bpftool.
pub fn bpf_object_ids(kind: &str) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args([kind, "show", "--json"])
        .output()
        .expect("bpftool must be installed (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "bpftool {kind} show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let mut ids: Vec<u64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["id"].as_u64()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Tests in one binary that start a collector run one at a time: they compare the machine's
/// loaded BPF objects and must not see each other's.
pub static ONE_COLLECTOR_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_COLLECTOR_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The `name=value` counters of the collector's final `summary:` log line.
pub fn summary_counters(stderr: &str) -> std::collections::BTreeMap<String, u64> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("the collector printed no summary line; stderr:\n{stderr}"));
    line.split("summary:")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            // Log formatting may wrap the value in escape codes.
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            Some((k.to_owned(), digits.parse().ok()?))
        })
        .collect()
}

/// The fixture servers of the end-to-end tests (tests/apps/).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    Python,
    Node,
    Go,
    Java,
    Nginx,
}

fn apps_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// The Go fixture, built into cargo's per-target temp dir unless a build newer than its
/// source is there (a kernel-matrix guest has the host's build and no Go).
pub fn go_server_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("go_server");
            let source = apps_dir().join("go_server.go");
            let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified());
            if let (Ok(built), Ok(written)) = (modified(&out), modified(&source))
                && built >= written
            {
                return out;
            }
            let status = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(&source)
                .env("GO111MODULE", "off")
                .status()
                .expect("go must be installed (cargo xtask test installs golang-go)");
            assert!(status.success(), "building the Go fixture failed");
            out
        })
        .clone()
}

/// A running fixture server, and what it needs to stay up.
pub struct Server {
    pub app: App,
    pub port: u16,
    pub process: KillOnDrop,
    /// nginx: its files; the backend it proxies to.
    pub dir: Option<TempDir>,
    pub backend: Option<Box<Server>>,
}

pub fn start_server(app: App) -> Server {
    let port = free_port();
    let quiet = |mut c: Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        KillOnDrop(
            c.spawn()
                .unwrap_or_else(|e| panic!("starting {app:?}: {e}")),
        )
    };
    let (process, dir, backend) = match app {
        App::Python => {
            let mut c = Command::new("python3");
            c.arg(apps_dir().join("python_server.py"))
                .arg(port.to_string());
            (quiet(c), None, None)
        }
        App::Node => {
            let mut c = Command::new("node");
            c.arg(apps_dir().join("node_server.js"))
                .arg(port.to_string());
            (quiet(c), None, None)
        }
        App::Go => {
            let mut c = Command::new(go_server_binary());
            c.arg(port.to_string());
            (quiet(c), None, None)
        }
        App::Java => {
            let mut c = Command::new("java");
            // No Nagle delay between the head and body writes of a keep-alive response.
            c.arg("-Dsun.net.httpserver.nodelay=true");
            c.arg(apps_dir().join("JavaServer.java"))
                .arg(port.to_string());
            (quiet(c), None, None)
        }
        App::Nginx => {
            let backend = start_server(App::Python);
            let dir = TempDir::new("nginx");
            for sub in ["www", "tmp"] {
                std::fs::create_dir_all(dir.0.join(sub)).unwrap();
            }
            std::fs::write(dir.0.join("www/big.bin"), vec![b'x'; BIG_FILE_BYTES]).unwrap();
            let conf = std::fs::read_to_string(apps_dir().join("nginx.conf.in"))
                .unwrap()
                .replace("@DIR@", dir.0.to_str().unwrap())
                .replace("@PORT@", &port.to_string())
                .replace("@BACKEND@", &backend.port.to_string());
            std::fs::write(dir.0.join("nginx.conf"), conf).unwrap();
            let mut c = Command::new("nginx");
            c.arg("-c")
                .arg(dir.0.join("nginx.conf"))
                .arg("-p")
                .arg(&dir.0);
            (quiet(c), Some(dir), Some(Box::new(backend)))
        }
    };
    wait_listening(port, Duration::from_secs(30));
    Server {
        app,
        port,
        process,
        dir,
        backend,
    }
}

/// The static file nginx serves with sendfile.
pub const BIG_FILE_BYTES: usize = 5 * 1024 * 1024;

/// Sends `paths` as GET requests on ONE keep-alive connection; every `pipeline`-th group of
/// `depth` requests is written at once before reading their responses (pipelining).
/// Returns the status of every response, in order.
pub fn keep_alive_client(port: u16, paths: &[String], pipeline: usize, depth: usize) -> Vec<u16> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut statuses = Vec::with_capacity(paths.len());
    let mut i = 0;
    let mut group = 0;
    while i < paths.len() {
        let n = if pipeline > 0 && group % pipeline == pipeline - 1 {
            depth
        } else {
            1
        };
        let batch = &paths[i..(i + n).min(paths.len())];
        let mut out = Vec::new();
        for p in batch {
            out.extend_from_slice(
                format!("GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: e2e-keepalive\r\n\r\n")
                    .as_bytes(),
            );
        }
        writer.write_all(&out).unwrap();
        for _ in batch {
            let mut status_line = String::new();
            reader.read_line(&mut status_line).unwrap();
            let status = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            statuses.push(status);
        }
        i += batch.len();
        group += 1;
    }
    statuses
}

/// One exchange line of `collector run --exporter exchanges --format json`.
#[derive(Clone, Debug)]
pub struct SeenExchange {
    pub role: String,
    pub comm: String,
    pub pid: u64,
    pub method: String,
    pub url: String,
    pub status: Option<u64>,
    pub duration_ms: f64,
    pub response_body_bytes: u64,
    pub flags: serde_json::Value,
}

pub fn exchanges(lines: &[serde_json::Value]) -> Vec<SeenExchange> {
    lines
        .iter()
        .map(|l| SeenExchange {
            role: l["role"].as_str().unwrap_or_default().to_owned(),
            comm: l["comm"].as_str().unwrap_or_default().to_owned(),
            pid: l["pid"].as_u64().unwrap_or_default(),
            method: l["method"].as_str().unwrap_or_default().to_owned(),
            url: l["url"].as_str().unwrap_or_default().to_owned(),
            status: l["status"].as_u64(),
            duration_ms: l["duration_ms"].as_f64().unwrap_or(-1.0),
            response_body_bytes: l["response_body_bytes"].as_u64().unwrap_or_default(),
            flags: l["flags"].clone(),
        })
        .collect()
}

/// The venv with moto[server] and boto3 that `cargo xtask test` prepares. Like a privileged
/// test, a test needing it fails under CI=true when it is missing, and skips loudly otherwise.
pub fn test_venv() -> Option<std::path::PathBuf> {
    match std::env::var_os("COLLECTOR_TEST_VENV").map(std::path::PathBuf::from) {
        Some(v) if v.join("bin/moto_server").exists() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "CI=true: COLLECTOR_TEST_VENV must name the moto venv (cargo xtask test sets it)"
            )
        }
        _ => {
            eprintln!("SKIPPED (no moto venv): run through `cargo xtask test`");
            None
        }
    }
}

/// A script of tests/apps run by the test venv's Python, its output discarded.
pub fn spawn_python(venv: &Path, script: &str, args: &[String]) -> KillOnDrop {
    spawn_python_with_env(venv, script, args, &[])
}

pub fn spawn_python_with_env(
    venv: &Path,
    script: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> KillOnDrop {
    let child = Command::new(venv.join("bin/python"))
        .arg(apps_dir().join(script))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    KillOnDrop(child)
}

/// The X-Ray sampling endpoint stand-in (moto has no sampling API): one catch-all rule of
/// `rate` and `reservoir`; it records every request it gets (GET /calls lists them).
pub fn fake_sampling_endpoint(venv: &Path, rate: &str, reservoir: &str) -> (KillOnDrop, u16) {
    let port = free_port();
    let server = spawn_python(
        venv,
        "fake_xray_sampling.py",
        &[port.to_string(), rate.into(), reservoir.into()],
    );
    wait_listening(port, Duration::from_secs(10));
    (server, port)
}

/// A moto X-Ray API on 127.0.0.1:port.
pub fn start_moto(venv: &Path, port: u16) -> KillOnDrop {
    let child = Command::new(venv.join("bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server");
    let server = KillOnDrop(child);
    wait_listening(port, Duration::from_secs(30));
    server
}

/// Every trace moto holds for [start, end] (epoch seconds), via boto3.
pub fn read_traces(venv: &Path, port: u16, start: f64, end: f64) -> Vec<serde_json::Value> {
    let out = Command::new(venv.join("bin/python"))
        .arg(apps_dir().join("xray_read.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(start.to_string())
        .arg(end.to_string())
        .output()
        .expect("xray_read.py");
    assert!(
        out.status.success(),
        "reading traces failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("xray_read.py prints JSON")
}

pub fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The demo's services: B (sleeps a random 0–200 ms, reports it) and A (calls B).
pub struct Demo {
    pub a_port: u16,
    pub b_port: u16,
    _a: KillOnDrop,
    _b: KillOnDrop,
}

pub fn start_demo(node_a: bool) -> Demo {
    let (a_port, b_port) = (free_port(), free_port());
    let quiet = |mut c: Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        KillOnDrop(c.spawn().expect("demo service"))
    };
    let mut b = Command::new("python3");
    b.arg(apps_dir().join("demo_b.py")).arg(b_port.to_string());
    let b = quiet(b);
    let mut a = if node_a {
        let mut c = Command::new("node");
        c.arg(apps_dir().join("demo_a.js"));
        c
    } else {
        let mut c = Command::new("python3");
        c.arg(apps_dir().join("demo_a.py"));
        c
    };
    a.arg(a_port.to_string()).arg(b_port.to_string());
    let a = quiet(a);
    wait_listening(a_port, Duration::from_secs(15));
    wait_listening(b_port, Duration::from_secs(15));
    Demo {
        a_port,
        b_port,
        _a: a,
        _b: b,
    }
}

/// One request through A with curl; returns B's reported sleep in ms.
pub fn call_through_a(a_port: u16, nonce: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .arg(format!("http://127.0.0.1:{a_port}/call/{nonce}"))
        .output()
        .expect("curl");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("A answered {:?}: {e}", String::from_utf8_lossy(&out.stdout)));
    body["slept_ms"].as_f64().expect("slept_ms")
}
