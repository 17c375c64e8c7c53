//! `collector doctor`: what this kernel and host allow, and what that means for capture.
//! The capture paths are predicted by loading each one (and unloading it at once), exactly as
//! `collector run --capture-path auto` would try them; everything else is read from files,
//! the environment and two network probes.

mod capture;

use std::path::Path;

pub use capture::run;

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
    pub meaning: &'static str,
}

fn check(what: &'static str, ok: bool, detail: impl Into<String>, meaning: &'static str) -> Check {
    Check {
        what,
        ok,
        detail: detail.into(),
        meaning,
    }
}

fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

/// The tracefs events directory, wherever it is mounted.
fn tracefs_events() -> Option<&'static str> {
    [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_dir())
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_owned()))
        })
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0)
}

/// Names of the capabilities the collector needs that `caps` lacks.
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    const NEEDED: [(u32, &str); 5] = [
        (39, "CAP_BPF"),
        (38, "CAP_PERFMON"),
        (21, "CAP_SYS_ADMIN"),
        (12, "CAP_NET_ADMIN"),
        (19, "CAP_SYS_PTRACE"),
    ];
    NEEDED
        .iter()
        .filter(|(bit, _)| caps & (1 << bit) == 0)
        .map(|(_, n)| *n)
        .collect()
}

/// "6.18.44-fc" → (6, 18).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Every check, in the order of the report.
pub fn checks() -> Vec<Check> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = kernel_version(release.trim());
    let at_least = |maj, min| version.is_some_and(|v| v >= (maj, min));
    let events = tracefs_events();
    let event = |e: &str| events.is_some_and(|d| Path::new(d).join(e).is_dir());
    let tracing_dir = events
        .map(|e| e.trim_end_matches("/events"))
        .unwrap_or("/sys/kernel/tracing");
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    let lockdown_mode = lockdown
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .unwrap_or("(not reported)");
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_owned))?
        });
    // The syscall path reads the numbers from the socket (tcp_sock) behind the fd.
    let link_offsets = crate::source::offsets::Offsets::from_kernel();
    let seq_groups = collector_common::OFFSETS_TCP_SEQ | collector_common::OFFSETS_FD_SOCKET;
    let missing = missing_caps(effective_caps());
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok();
    let credentials = [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_PROFILE",
    ]
    .into_iter()
    .find(|v| std::env::var_os(v).is_some())
    .or_else(|| {
        std::env::var_os("HOME")
            .is_some_and(|h| Path::new(&h).join(".aws/credentials").exists())
            .then_some("~/.aws/credentials")
    });

    vec![
        check(
            "kernel",
            version.is_some(),
            release.trim(),
            "ring buffers need 5.8+, sock_{recv,send}_length 6.3+",
        ),
        check(
            "BTF",
            exists("/sys/kernel/btf/vmlinux"),
            "/sys/kernel/btf/vmlinux",
            "struct offsets (tcp_sock, task_struct) and tp_btf programs",
        ),
        check(
            "BPF ring buffer",
            at_least(5, 8),
            "kernel 5.8+",
            "the only event channel: required",
        ),
        check(
            "tracefs",
            events.is_some(),
            tracing_dir,
            "tracepoint ids (the collector mounts it when missing)",
        ),
        check(
            "bpffs",
            exists("/sys/fs/bpf"),
            "/sys/fs/bpf",
            "mounted by the collector when missing",
        ),
        check(
            "cgroup v2",
            cgroup2.is_some(),
            cgroup2.clone().unwrap_or_else(|| "not mounted".into()),
            "sock_ops and cgroup_skb attach to its root",
        ),
        check(
            "sock_ops / cgroup_skb",
            cgroup2.is_some(),
            "cgroup-attached programs",
            "socket-layer path: connections and packet payloads",
        ),
        check(
            "links through Service NAT",
            link_offsets.has(seq_groups),
            if link_offsets.has(seq_groups) {
                "connections named by their initial sequence numbers".to_owned()
            } else {
                link_offsets.why_missing(seq_groups)
            },
            "joins both ends of a connection on this node through ClusterIP DNAT; without it \
             the syscall path joins by 4-tuple, which NAT rewrites (sock_ops reads them anyway)",
        ),
        check(
            "syscall tracepoints",
            event("syscalls/sys_enter_read"),
            "CONFIG_FTRACE_SYSCALLS",
            "syscall path (fallback, or --capture-path syscall)",
        ),
        check(
            "kprobes",
            exists(&format!("{tracing_dir}/kprobe_events")),
            "CONFIG_KPROBES",
            "socket-kprobe path, where neither the 6.3 tracepoints nor fentry load",
        ),
        check(
            "uprobes",
            exists(&format!("{tracing_dir}/uprobe_events")),
            "CONFIG_UPROBE_EVENTS",
            "not used yet (TLS libraries, later)",
        ),
        check(
            "lockdown",
            !lockdown_mode.contains("confidentiality"),
            lockdown_mode,
            "integrity refuses bpf_probe_write_user (not used); confidentiality refuses reading kernel memory",
        ),
        check(
            "capabilities",
            missing.is_empty(),
            if missing.is_empty() {
                "all needed".to_owned()
            } else {
                format!("missing {}", missing.join(", "))
            },
            "BPF, PERFMON, SYS_ADMIN, NET_ADMIN, SYS_PTRACE (or root)",
        ),
        check(
            "AWS region",
            region.is_some(),
            region.unwrap_or_else(|| "not set".into()),
            "needed by --exporter xray (or -n/--region)",
        ),
        check(
            "AWS credentials",
            credentials.is_some(),
            credentials.unwrap_or("none found in env or ~/.aws"),
            "needed by --exporter xray (IRSA, profile, env, instance metadata)",
        ),
    ]
}

/// What the network allows: the Kubernetes API (in-cluster or kubeconfig) and the X-Ray
/// endpoint, each asked with a 3 s deadline.
pub async fn network_checks() -> Vec<Check> {
    let deadline = std::time::Duration::from_secs(3);
    let kube = match tokio::time::timeout(deadline, kube_version()).await {
        Ok(Ok(v)) => check(
            "Kubernetes API",
            true,
            format!("reachable, {v}"),
            "pod metadata: segments named after workloads",
        ),
        Ok(Err(e)) => check(
            "Kubernetes API",
            false,
            e,
            "host mode: services named after processes",
        ),
        Err(_) => check(
            "Kubernetes API",
            false,
            "no answer within 3 s",
            "host mode until it answers",
        ),
    };
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok();
    let endpoint = std::env::var("COLLECTOR_XRAY_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL_XRAY"))
        .ok()
        .or_else(|| region.map(|r| format!("https://xray.{r}.amazonaws.com")));
    let xray = match endpoint {
        None => check(
            "X-Ray endpoint",
            false,
            "no region, no endpoint URL",
            "--exporter xray needs one",
        ),
        Some(url) => {
            let authority = url
                .split("://")
                .nth(1)
                .unwrap_or(&url)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let addr = if authority.contains(':') {
                authority.clone()
            } else if url.starts_with("http://") {
                format!("{authority}:80")
            } else {
                format!("{authority}:443")
            };
            match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => check(
                    "X-Ray endpoint",
                    true,
                    format!("{url} reachable"),
                    "segments can be uploaded",
                ),
                Ok(Err(e)) => check(
                    "X-Ray endpoint",
                    false,
                    format!("{url}: {e}"),
                    "--exporter xray will retry and queue",
                ),
                Err(_) => check(
                    "X-Ray endpoint",
                    false,
                    format!("{url}: no answer within 3 s"),
                    "--exporter xray will retry and queue",
                ),
            }
        }
    };
    vec![kube, xray, destination_check(deadline).await]
}

/// Where `--exporter auto` would send spans: X-Ray's answer to GetTraceSegmentDestination
/// (asked only with a region set; in its own task, so that an SDK that cannot start — no CA
/// certificates on the host — is a line of the report, not a crash).
async fn destination_check(deadline: std::time::Duration) -> Check {
    const WHAT: &str = "trace destination";
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok();
    let Some(region) = region else {
        return check(
            WHAT,
            false,
            "no region",
            "--exporter auto needs AWS settings to ask X-Ray",
        );
    };
    let config = crate::export::xray::XrayConfig {
        region: Some(region),
        endpoint_url: std::env::var("COLLECTOR_XRAY_ENDPOINT_URL").ok(),
        queue_size: 0,
        latency: None,
    };
    let task = tokio::spawn(tokio::time::timeout(deadline, async move {
        let sdk = crate::export::xray::load_aws(&config)
            .await
            .map_err(|e| format!("{e:#}"))?;
        aws_sdk_xray::Client::new(&sdk)
            .get_trace_segment_destination()
            .send()
            .await
            .map_err(|e| aws_sdk_xray::error::DisplayErrorContext(e).to_string())
    }));
    let asked = match task.await {
        Ok(asked) => asked,
        Err(e) => Ok(Err(format!("the AWS SDK failed: {e}"))),
    };
    match asked {
        Ok(Ok(out)) => {
            let otlp = crate::export::destination::means_otlp(out.destination(), out.status());
            check(
                WHAT,
                true,
                format!(
                    "GetTraceSegmentDestination: {}",
                    out.destination().map_or("(none)", |d| d.as_str())
                ),
                if otlp {
                    "--exporter auto sends OTLP to X-Ray's OTLP endpoint (Transaction Search on)"
                } else {
                    "--exporter auto uses PutTraceSegments"
                },
            )
        }
        Ok(Err(e)) => {
            let meaning = if e.contains("AccessDenied") {
                "--exporter auto uses PutTraceSegments (grant xray:GetTraceSegmentDestination)"
            } else {
                "--exporter auto uses PutTraceSegments until X-Ray answers"
            };
            check(WHAT, false, e, meaning)
        }
        Err(_) => check(
            WHAT,
            false,
            "no answer within 3 s",
            "--exporter auto uses PutTraceSegments until X-Ray answers",
        ),
    }
}

async fn kube_version() -> Result<String, String> {
    let config = kube::Config::infer()
        .await
        .map_err(|_| "no in-cluster service account, no kubeconfig".to_owned())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let v = client
        .apiserver_version()
        .await
        .map_err(|e| e.to_string())?;
    Ok(v.git_version)
}

pub fn report(checks: &[Check]) -> String {
    let mut out =
        String::from("| check | available | detail | what it means |\n|---|---|---|---|\n");
    for c in checks {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.what,
            if c.ok { "yes" } else { "no" },
            c.detail,
            c.meaning
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_and_capabilities_are_read() {
        assert_eq!(kernel_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(kernel_version("junk"), None);
        assert!(missing_caps(u64::MAX).is_empty());
        assert_eq!(missing_caps(0).len(), 5);
        assert_eq!(missing_caps(!(1 << 39)), vec!["CAP_BPF"]);
    }
}
