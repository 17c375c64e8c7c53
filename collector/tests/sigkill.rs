//! Privileged: the collector SIGKILLed in the middle of 5,000 requests/s, 20 times in a row on
//! each capture path. The load generator sees no error, no program, map or link of ours is left
//! (bpftool), and each restarted collector traces again within 5 s of being started.

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

const ROUNDS: u32 = 20;

/// The BPF objects loaded on the machine, by kind.
fn loaded() -> [Vec<u64>; 3] {
    ["prog", "map", "link"].map(bpf_object_ids)
}

/// Objects loaded now that were not before: ours. (Objects of before may go meanwhile: an
/// earlier test's collector is freed by the kernel once its last reference goes.)
fn left_since(before: &[Vec<u64>; 3]) -> [Vec<u64>; 3] {
    let now = loaded();
    std::array::from_fn(|k| {
        now[k]
            .iter()
            .filter(|id| !before[k].contains(id))
            .copied()
            .collect()
    })
}

fn killed_under_load(capture_path: &str) {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let before = loaded();
    let server = start_server(App::Nginx);
    // Longer than the rounds take; stopped (SIGINT: it still reports) once they are done.
    let oha = Command::new("oha")
        .args(["-z", "300s", "-q", "5000", "-c", "16", "--no-tui"])
        .args(["--output-format", "json"])
        .arg(format!(
            "http://127.0.0.1:{}/ok/{}",
            server.port,
            unique("kill")
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut oha = KillOnDrop(oha);
    let mut restart_ms = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        let collector = Collector::start(&[
            "--capture-path",
            capture_path,
            "--exporter",
            "exchanges",
            "--format",
            "json",
            "--exclude-process",
            "oha",
            "--metrics-bind",
            "off",
        ]);
        // Traces again: a request of its own, captured within 5 s of the start.
        let nonce = unique(&format!("round-{round}"));
        let mut seen = false;
        while !seen && started.elapsed() < Duration::from_secs(5) {
            curl(&format!("http://127.0.0.1:{}/ok/{nonce}", server.port));
            seen = collector
                .wait_json(Duration::from_millis(500), |lines| {
                    exchanges(lines).iter().any(|e| e.url.contains(&nonce))
                })
                .iter()
                .any(|l| l["url"].as_str().is_some_and(|u| u.contains(&nonce)));
        }
        assert!(
            seen,
            "{capture_path}, round {round}: nothing traced within 5 s of the start; stderr:\n{}",
            collector.stderr()
        );
        restart_ms.push(started.elapsed().as_millis());
        // Killed at a different moment of its work each round.
        std::thread::sleep(Duration::from_millis(200 + 97 * u64::from(round % 7)));
        let status = collector.stop(libc::SIGKILL);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        // The kernel frees a dead process's objects once their last reference goes.
        let gone = Instant::now();
        let mut left = left_since(&before);
        while left.iter().any(|ids| !ids.is_empty()) && gone.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            left = left_since(&before);
        }
        assert_eq!(
            left,
            [Vec::<u64>::new(), vec![], vec![]],
            "{capture_path}, round {round}: programs, maps and links left after SIGKILL"
        );
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(oha.pid() as i32, libc::SIGINT) };
    let mut out = Vec::new();
    std::io::Read::read_to_end(oha.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    oha.0.wait().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("oha's report: {e}: {}", String::from_utf8_lossy(&out)));
    let ok = report["statusCodeDistribution"]["200"]
        .as_u64()
        .unwrap_or(0);
    // Requests in flight when oha itself is stopped are its own, not errors of the app.
    let errors: Vec<(&String, &serde_json::Value)> = report["errorDistribution"]
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| !k.contains("aborted")).collect())
        .unwrap_or_default();
    eprintln!(
        "{capture_path}: {ROUNDS} rounds, {ok} requests answered 200, errors {errors:?}, \
         restart to first trace {restart_ms:?} ms"
    );
    assert!(ok >= 20_000, "the load did not run: {report}");
    assert!(
        errors.is_empty()
            && report["statusCodeDistribution"]
                .as_object()
                .is_some_and(|m| m.keys().all(|k| k == "200")),
        "the load generator saw errors: {report}"
    );
}

#[test]
fn socket_path_sigkill_under_load_20_times() {
    killed_under_load("auto");
}

#[test]
fn syscall_path_sigkill_under_load_20_times() {
    killed_under_load("syscall");
}
