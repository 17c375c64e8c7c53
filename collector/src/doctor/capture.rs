//! The capture part of `collector doctor`: each variant loaded and unloaded, cheapest first,
//! the verdict `--capture-path auto` would reach, and the whole report (`run`).

use super::{Check, check, checks, network_checks, report};
use crate::source::{
    capture_path::Variant,
    kernel::{KernelSource, SourceOptions, first_line},
    offsets::Offsets,
};

/// `collector doctor [--json]`: the report, the capture verdict, exit 1 when capture is
/// impossible.
pub fn run(json: bool) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Loading first: it mounts tracefs and bpffs where missing, which the checks then see.
    let results = {
        let _in_runtime = runtime.enter();
        capture_checks(&SourceOptions::probe())
    };
    let mut checks = checks();
    checks.extend(capture_rows(&results));
    checks.extend(runtime.block_on(network_checks()));
    let verdict = capture_verdict(&checks, &results);
    if json {
        let rows: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| serde_json::json!({"check": c.what, "ok": c.ok, "detail": c.detail, "meaning": c.meaning}))
            .collect();
        let capture: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(v, r)| {
                let value = match r {
                    Ok(()) => serde_json::Value::Null,
                    Err(e) => format!("{e:#}").into(),
                };
                (
                    v.name().to_owned(),
                    serde_json::json!({"loads": r.is_ok(), "refused": value}),
                )
            })
            .collect();
        let chosen = results
            .iter()
            .find(|(_, r)| r.is_ok())
            .map(|(v, _)| v.name());
        println!(
            "{}",
            serde_json::json!({"checks": rows, "capture": capture, "auto": chosen,
                "verdict": verdict.as_ref().unwrap_or_else(|e| e)})
        );
    } else {
        print!("{}", report(&checks));
        let why = refusals(&results);
        if !why.is_empty() {
            println!("\nwhy capture paths were refused:\n{why}");
        }
        println!("\n{}", verdict.as_ref().unwrap_or_else(|e| e));
    }
    if verdict.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// One row per capture variant, cheapest first: does it load and attach here? Each is
/// loaded and dropped again (which detaches it) before the next; must run in a tokio runtime.
pub fn capture_checks(opts: &SourceOptions) -> Vec<(Variant, Result<(), anyhow::Error>)> {
    if let Err(e) = crate::source::mounts::ensure_kernel_filesystems() {
        return Variant::ORDER
            .into_iter()
            .map(|v| (v, Err(anyhow::anyhow!("mounting tracefs/bpffs: {e:#}"))))
            .collect();
    }
    let offsets = Offsets::from_kernel();
    Variant::ORDER
        .into_iter()
        .map(|v| (v, KernelSource::try_variant(v, opts, &offsets).map(drop)))
        .collect()
}

/// The table rows for [`capture_checks`].
pub fn capture_rows(results: &[(Variant, Result<(), anyhow::Error>)]) -> Vec<Check> {
    results
        .iter()
        .map(|(v, r)| {
            check(
                v.name(),
                r.is_ok(),
                match r {
                    Ok(()) => "loads and attaches".to_owned(),
                    Err(e) => format!("refused: {}", first_line(e).replace('|', "/")),
                },
                variant_meaning(*v),
            )
        })
        .collect()
}

fn variant_meaning(v: Variant) -> &'static str {
    match v {
        Variant::SocketTracepoint => {
            "socket layer + sock_{recv,send}_length tracepoints (6.3+): other work pays nothing"
        }
        Variant::SocketFentry => {
            "socket layer + fentry/fexit on tcp_cleanup_rbuf/tcp_sendmsg: other work pays nothing"
        }
        Variant::SocketKprobe => {
            "socket layer + kprobes on the same functions: TCP calls pay a trap, other work nothing"
        }
        Variant::Syscall => "syscall tracepoints: every syscall on the node pays their dispatch",
    }
}

/// The capture path `--capture-path auto` takes here: the first variant that loaded.
pub fn capture_verdict(
    checks: &[Check],
    results: &[(Variant, Result<(), anyhow::Error>)],
) -> Result<String, String> {
    let ok = |w: &str| checks.iter().any(|c| c.what == w && c.ok);
    if let Some((v, _)) = results.iter().find(|(_, r)| r.is_ok()) {
        let fallback = if v.is_socket_layer() {
            ""
        } else {
            " — no socket-layer variant loads here (see why above), so every syscall on the \
             node pays the tracepoint dispatch"
        };
        return Ok(format!(
            "capture: {v} (what --capture-path auto uses){fallback}"
        ));
    }
    if !ok("BPF ring buffer") || !ok("capabilities") {
        return Err(
            "capture is impossible: needs Linux 5.8+ ring buffers and the capabilities listed"
                .into(),
        );
    }
    Err("capture is impossible: no capture path loads on this kernel (see why above)".into())
}

/// Why each refused variant was refused: the error and the end of the verifier log.
pub fn refusals(results: &[(Variant, Result<(), anyhow::Error>)]) -> String {
    let mut out = String::new();
    for (v, r) in results {
        if let Err(e) = r {
            let text = format!("{e:#}");
            let mut lines = text.lines();
            out.push_str(&format!("{v}: {}\n", lines.next().unwrap_or_default()));
            let rest: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
            for l in &rest[rest.len().saturating_sub(3)..] {
                out.push_str(&format!("    {l}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_is_the_first_variant_that_loaded() {
        let c = |what, ok| Check {
            what,
            ok,
            detail: String::new(),
            meaning: "",
        };
        let base = vec![c("BPF ring buffer", true), c("capabilities", true)];
        let refused = || {
            Err(anyhow::anyhow!(
                "refused: program of this type cannot use helper"
            ))
        };
        let results = vec![
            (Variant::SocketTracepoint, refused()),
            (Variant::SocketFentry, Ok(())),
            (Variant::SocketKprobe, Ok(())),
            (Variant::Syscall, Ok(())),
        ];
        assert!(
            capture_verdict(&base, &results)
                .unwrap()
                .starts_with("capture: socket-fentry")
        );
        let rows = capture_rows(&results);
        assert_eq!(rows.len(), 4);
        assert!(!rows[0].ok && rows[0].detail.contains("cannot use helper"));
        assert!(refusals(&results).starts_with("socket-tracepoint: refused"));

        let only_syscalls: Vec<_> = Variant::ORDER
            .into_iter()
            .map(|v| {
                (
                    v,
                    if v.is_socket_layer() {
                        refused()
                    } else {
                        Ok(())
                    },
                )
            })
            .collect();
        let verdict = capture_verdict(&base, &only_syscalls).unwrap();
        assert!(verdict.contains("syscall") && verdict.contains("no socket-layer variant"));

        let none: Vec<_> = Variant::ORDER.into_iter().map(|v| (v, refused())).collect();
        assert!(capture_verdict(&base, &none).is_err());
        assert!(capture_verdict(&[c("BPF ring buffer", false)], &none).is_err());
    }
}
