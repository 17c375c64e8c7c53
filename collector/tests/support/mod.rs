//! Shared helpers of the privileged and end-to-end tests: running the real collector binary,
//! real servers and clients, and the CI rule that a privileged test never skips silently.
#![allow(dead_code, reason = "each test binary uses a different subset")]

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
        let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
            .arg("run")
            .args(args)
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
        c.wait_for_stderr("capturing on", Duration::from_secs(30));
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
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
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
    fn drop(&mut self) {
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
