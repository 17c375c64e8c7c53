//! `cargo xtask demo`: the AWS blog post's demo without an SDK. Service B sleeps a random
//! 0–200 ms and returns the sleep; service A calls B for each request it gets. The collector
//! traces both, unmodified, and prints the linked traces.

use std::{
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_080)
}

fn wait_listening(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(15) {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(root: &Path, requests: u32, a: &str, args: &[String]) -> anyhow::Result<()> {
    if !crate::shell::is_root() {
        bail!("the demo loads eBPF programs: run it as root");
    }
    let apps = root.join("collector/tests/apps");
    let (a_port, b_port) = (free_port(), free_port());
    let spawn = |mut c: Command| -> anyhow::Result<Killed> {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        Ok(Killed(
            c.spawn().with_context(|| format!("starting {c:?}"))?,
        ))
    };
    let mut b = Command::new("python3");
    b.arg(apps.join("demo_b.py")).arg(b_port.to_string());
    let _b = spawn(b)?;
    let mut a_cmd = match a {
        "node" => {
            let mut c = Command::new("node");
            c.arg(apps.join("demo_a.js"));
            c
        }
        _ => {
            let mut c = Command::new("python3");
            c.arg(apps.join("demo_a.py"));
            c
        }
    };
    a_cmd.arg(a_port.to_string()).arg(b_port.to_string());
    let _a = spawn(a_cmd)?;
    wait_listening(a_port)?;
    wait_listening(b_port)?;

    eprintln!("xtask: service A ({a}) on 127.0.0.1:{a_port} calls service B on 127.0.0.1:{b_port}");
    let mut collector = Command::new(root.join("target/debug/collector"));
    collector
        .arg("run")
        .args(["--exclude-process", "curl"])
        .args(args);
    let mut collector = collector.spawn().context("starting the collector")?;
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..requests {
        let nonce = format!("demo-{}-{i}", std::process::id());
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{a_port}/call/{nonce}"))
            .output()
            .context("curl")?;
        eprintln!(
            "xtask: GET /call/{nonce} → {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child; the collector flushes and exits on SIGTERM.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    collector.wait()?;
    Ok(())
}
