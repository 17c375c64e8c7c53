//! A real Kubernetes control plane for the enrichment tests: Debian's etcd and the
//! kube-apiserver that `cargo xtask test` builds from Debian's source package, on loopback
//! with TLS, static tokens and RBAC. kubectl drives it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{KillOnDrop, TempDir, free_port, wait_listening};

/// The identity the collector uses against the test API server: the DaemonSet's service
/// account, so the RBAC of deploy/ is what authorizes it.
pub const COLLECTOR_USER: &str = "system:serviceaccount:xray-collector:xray-collector";

/// The kube-apiserver binary (`COLLECTOR_TEST_KUBE_APISERVER`, set by `cargo xtask test`).
/// Fails under CI=true when missing; skips loudly otherwise.
pub fn apiserver_binary() -> Option<PathBuf> {
    match std::env::var_os("COLLECTOR_TEST_KUBE_APISERVER").map(PathBuf::from) {
        Some(p) if p.exists() => Some(p),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true: COLLECTOR_TEST_KUBE_APISERVER must name the kube-apiserver binary (cargo xtask test builds it)"
        ),
        _ => {
            eprintln!("SKIPPED (no kube-apiserver): run through `cargo xtask test`");
            None
        }
    }
}

pub struct Cluster {
    pub dir: TempDir,
    binary: PathBuf,
    pub port: u16,
    etcd_port: u16,
    etcd: Option<KillOnDrop>,
    apiserver: Option<KillOnDrop>,
    /// kubeconfig of the admin (system:masters).
    pub admin_kubeconfig: PathBuf,
    /// kubeconfig of the collector's service account.
    pub collector_kubeconfig: PathBuf,
}

impl Cluster {
    pub fn start(binary: PathBuf) -> Self {
        let dir = TempDir::new("kube");
        let d = dir.0.clone();
        tls_material(&d);
        std::fs::write(
            d.join("tokens.csv"),
            format!(
                "admin-token,admin,admin,\"system:masters\"\ncollector-token,{COLLECTOR_USER},collector,\"system:serviceaccounts\"\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let etcd_port = free_port();
        let admin_kubeconfig = d.join("admin.kubeconfig");
        let collector_kubeconfig = d.join("collector.kubeconfig");
        write_kubeconfig(&admin_kubeconfig, &d, port, "admin-token");
        write_kubeconfig(&collector_kubeconfig, &d, port, "collector-token");
        let mut cluster = Self {
            dir,
            binary,
            port,
            etcd_port,
            etcd: None,
            apiserver: None,
            admin_kubeconfig,
            collector_kubeconfig,
        };
        cluster.start_etcd();
        cluster.start_apiserver();
        cluster
    }

    fn start_etcd(&mut self) {
        let d = &self.dir.0;
        let peer = free_port();
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(d.join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", self.etcd_port),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", self.etcd_port),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd (Debian's etcd-server)");
        self.etcd = Some(KillOnDrop(child));
        wait_listening(self.etcd_port, Duration::from_secs(30));
    }

    /// Starts (or restarts, on the same port and etcd) the API server; waits for /readyz.
    pub fn start_apiserver(&mut self) {
        let d = &self.dir.0;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("apiserver.log"))
            .unwrap();
        let p = |name: &str| d.join(name).to_string_lossy().into_owned();
        let child = Command::new(&self.binary)
            .args([
                &format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", self.port),
                &format!("--tls-cert-file={}", p("server.crt")),
                &format!("--tls-private-key-file={}", p("server.key")),
                &format!("--client-ca-file={}", p("ca.crt")),
                &format!("--token-auth-file={}", p("tokens.csv")),
                "--authorization-mode=RBAC",
                // As on EKS and kubeadm clusters: privileged pods are allowed.
                "--allow-privileged=true",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", p("sa.pub")),
                &format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/24",
                "--endpoint-reconciler-type=none",
                "--disable-admission-plugins=ServiceAccount",
                &format!("--cert-dir={}", p("certs")),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kube-apiserver");
        self.apiserver = Some(KillOnDrop(child));
        let start = Instant::now();
        loop {
            let ok = self
                .kubectl_output(&["get", "--raw", "/readyz"])
                .is_some_and(|o| o.trim() == "ok");
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready after 90 s; log tail:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn stop_apiserver(&mut self) {
        self.apiserver = None;
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.0.join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kubectl_output(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl as the admin, with `stdin`; panics with kubectl's message on failure.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        kubectl_as(&self.admin_kubeconfig, args, stdin)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}"))
    }
}

/// kubectl with a kubeconfig; Err carries stdout and stderr.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a serving certificate for 127.0.0.1/localhost, and a service-account key pair.
fn tls_material(d: &Path) {
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=collector-test-ca",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    openssl(d, &["genrsa", "-out", "sa.key", "2048"]);
    openssl(d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}

fn write_kubeconfig(path: &Path, dir: &Path, port: u16, token: &str) {
    let ca = dir.join("ca.crt");
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: test\n    user: u\ncurrent-context: c\n",
            ca.display()
        ),
    )
    .unwrap();
}

/// The cgroup v2 hierarchy the collector attaches to.
pub fn cgroup2_root() -> PathBuf {
    collector::source::kernel::cgroup2_mount().expect("a cgroup2 mount")
}

/// A cgroup of the test's making, shaped like a kubelet + containerd one:
/// `<root>/<test>/kubepods/besteffort/pod<uid>/<container id>` (cgroupfs driver) or
/// `<root>/<test>/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/
/// cri-containerd-<id>.scope` (systemd driver). Processes moved in are moved back out and the
/// directories removed on drop.
pub struct PodCgroup {
    top: PathBuf,
    pub leaf: PathBuf,
    pub container_id: String,
    pub pod_uid: String,
}

impl PodCgroup {
    pub fn new(tag: &str, systemd_driver: bool) -> Self {
        let nonce = super::unique(tag);
        let hex = |seed: &str, len: usize| {
            let mut out = String::new();
            let mut i = 0u64;
            while out.len() < len {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (seed, i).hash(&mut h);
                out.push_str(&format!("{:016x}", h.finish()));
                i += 1;
            }
            out.truncate(len);
            out
        };
        let container_id = hex(&nonce, 64);
        let u = hex(&format!("{nonce}-uid"), 32);
        let pod_uid = format!(
            "{}-{}-{}-{}-{}",
            &u[..8],
            &u[8..12],
            &u[12..16],
            &u[16..20],
            &u[20..]
        );
        let top = cgroup2_root().join(format!("collector-test-{}", &container_id[..12]));
        let leaf = if systemd_driver {
            top.join("kubepods.slice/kubepods-besteffort.slice")
                .join(format!(
                    "kubepods-besteffort-pod{}.slice",
                    pod_uid.replace('-', "_")
                ))
                .join(format!("cri-containerd-{container_id}.scope"))
        } else {
            top.join("kubepods/besteffort")
                .join(format!("pod{pod_uid}"))
                .join(&container_id)
        };
        std::fs::create_dir_all(&leaf)
            .unwrap_or_else(|e| panic!("creating {}: {e}", leaf.display()));
        Self {
            top,
            leaf,
            container_id,
            pod_uid,
        }
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.leaf.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.leaf.display()));
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let root = cgroup2_root().join("cgroup.procs");
        if let Ok(pids) = std::fs::read_to_string(self.leaf.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(&root, pid);
            }
        }
        let mut dir = self.leaf.clone();
        while dir.starts_with(&self.top) {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}

/// A pod on `node` whose container runs in `cgroup`, owned by the ReplicaSet of Deployment
/// `deployment`, its container status set through the status subresource (no kubelet here).
pub fn create_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    node: &str,
    deployment: &str,
    cgroup: &PodCgroup,
) {
    let hash = "5f6d7c8b9";
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"pod-template-hash": hash},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{deployment}-{hash}"),
                "uid": "11111111-2222-3333-4444-555555555555", "controller": true
            }]
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "example/app:1"}]}
    });
    cluster.kubectl(&["apply", "-f", "-"], Some(&pod.to_string()));
    // The pod's UID is the API server's; the cgroup path carries ours. Tests match by
    // container id, which is what the runtime reports.
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app", "ready": true, "restartCount": 0, "image": "example/app:1",
            "imageID": "sha256:0", "containerID": format!("containerd://{}", cgroup.container_id),
            "state": {"running": {}}
        }]
    }});
    cluster.kubectl(
        &[
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    );
}
