//! `cargo xtask bench --parts relay`: the X-Ray SDK relay's capacity. A load generator sends
//! SDK segment datagrams at fixed rates to a collector that only relays (capture off); a local
//! endpoint accepts PutTraceSegments and discards (moto is far too slow to be the sink).
//! Reported per rate: segments relayed per second, loss, collector CPU per segment and in
//! percent of a core, and peak RSS — against the X-Ray daemon's published 4,000 segments/s at
//! 38 % of a t2.micro and ~30 MB.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

/// A PutTraceSegments endpoint that counts documents and answers "all processed".
fn start_sink() -> anyhow::Result<(u16, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let docs = Arc::new(AtomicU64::new(0));
    let counter = docs.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                // One write per answer and no Nagle: the sink must not add delayed-ACK stalls.
                let _ = stream.set_nodelay(true);
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut out = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["TraceSegmentDocuments"].as_array().map(Vec::len))
                        .unwrap_or(0);
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    let answer = b"{\"UnprocessedTraceSegments\":[]}";
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        answer.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(answer);
                    if out.write_all(&response).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, docs))
}

/// A realistic SDK segment (Python SDK shape, ~600 bytes) with a unique id.
fn datagram(i: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let doc = json!({
        "id": format!("{:016x}", i), "trace_id": format!("1-{:08x}-{:024x}", now as u32, i),
        "name": "orders", "start_time": now - 0.02, "end_time": now, "in_progress": false,
        "http": {"request": {"url": "http://orders.shop.svc:8080/api/orders/42", "method": "GET",
                 "user_agent": "python-requests/2.31", "client_ip": "10.0.3.17"},
                 "response": {"status": 200, "content_length": 512}},
        "aws": {"xray": {"sdk": "X-Ray for Python", "sdk_version": "2.14.0"}},
        "service": {"runtime": "CPython", "runtime_version": "3.11.2"},
        "subsegments": [{"id": format!("{:016x}", i ^ 0xffff), "name": "postgres", "start_time": now - 0.015,
                         "end_time": now - 0.005, "namespace": "remote", "sql": {"database_type": "PostgreSQL"}}]
    });
    format!("{{\"format\":\"json\",\"version\":1}}\n{doc}").into_bytes()
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// One rate: returns its report row.
fn run_rate(root: &Path, rate: u64, seconds: u64) -> anyhow::Result<Value> {
    let (sink_port, received) = start_sink()?;
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let target = {
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let mut collector = Command::new(root.join("target/release/collector"))
        .args([
            "run",
            "--capture-path",
            "off",
            "--exporter",
            "xray",
            "--region",
            "us-east-1",
        ])
        .args(["--endpoint-url", &format!("http://127.0.0.1:{sink_port}")])
        .args([
            "-b",
            &target.to_string(),
            "-t",
            "off",
            "--metrics-bind",
            "off",
        ])
        .args(["--xray-queue-size", "200000", "--sampling", "off"])
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the collector")?;
    let pid = collector.id();
    std::thread::sleep(Duration::from_millis(1500));
    let rss_idle = rss_kb(pid);
    let ticks_per_sec = 100.0; // USER_HZ
    let cpu0 = cpu_ticks(pid);
    let start = Instant::now();
    let total = rate * seconds;
    let mut sent = 0u64;
    let mut rss_peak = rss_idle;
    // Built beforehand, so the generator keeps up with the rate.
    let datagrams: Vec<Vec<u8>> = (0..8192).map(datagram).collect();
    // Paced in 1 ms slices.
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let _ = udp.send_to(&datagrams[(sent % 8192) as usize], target);
            sent += 1;
        }
        if sent % 10_000 < 50 {
            rss_peak = rss_peak.max(rss_kb(pid));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Let the queue drain (up to 10 s).
    let drain = Instant::now();
    while received.load(Ordering::Relaxed) < sent && drain.elapsed() < Duration::from_secs(10) {
        rss_peak = rss_peak.max(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let busy_secs = start.elapsed().as_secs_f64();
    let cpu_secs = (cpu_ticks(pid) - cpu0) as f64 / ticks_per_sec;
    let relayed = received.load(Ordering::Relaxed);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = collector.wait();
    Ok(json!({
        "rate": rate, "sent": sent, "relayed": relayed, "lost": sent.saturating_sub(relayed),
        "offered_per_s": sent as f64 / send_secs,
        "relayed_per_s": relayed as f64 / busy_secs, "send_seconds": send_secs, "busy_seconds": busy_secs,
        "cpu_percent_of_core": 100.0 * cpu_secs / busy_secs,
        "cpu_us_per_segment": if relayed > 0 { cpu_secs * 1e6 / relayed as f64 } else { 0.0 },
        "rss_idle_mb": rss_idle as f64 / 1024.0, "rss_peak_mb": rss_peak as f64 / 1024.0,
    }))
}

pub fn run(root: &Path, rates: &[u64], seconds: u64) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for &rate in rates {
        let row = run_rate(root, rate, seconds)?;
        eprintln!(
            "xtask: relay {rate}/s (offered {:.0}/s): relayed {:.0}/s, lost {}, CPU {:.1} µs/segment ({:.0} % of a core), RSS {:.1} MB (idle {:.1})",
            row["offered_per_s"].as_f64().unwrap_or(0.0),
            row["relayed_per_s"].as_f64().unwrap_or(0.0),
            row["lost"],
            row["cpu_us_per_segment"].as_f64().unwrap_or(0.0),
            row["cpu_percent_of_core"].as_f64().unwrap_or(0.0),
            row["rss_peak_mb"].as_f64().unwrap_or(0.0),
            row["rss_idle_mb"].as_f64().unwrap_or(0.0),
        );
        rows.push(row);
    }
    Ok(json!({"relay": rows,
              "reference": "X-Ray daemon (README): 4,000 segments/s at 38 % of a t2.micro, ~30 MB RSS"}))
}
