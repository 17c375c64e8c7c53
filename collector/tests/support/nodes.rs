//! Two "nodes" on one machine, shaped like a cluster's: network namespaces joined by a veth
//! pair, pod addresses inside them, ClusterIPs that iptables DNATs in the client's namespace
//! (nat OUTPUT and PREROUTING, as kube-proxy writes them), and a cgroup v2 directory per
//! node that its processes start in (so their sockets belong to it), for one collector per
//! node with `--cgroup`. Only addresses inside the namespaces it makes, no route out of
//! them; everything is removed on drop, also when a test fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::KillOnDrop;

/// Node a's pods: the caller A and the callee B; node b's: a second callee.
pub const A_POD: &str = "10.250.1.10";
pub const B_POD: &str = "10.250.1.20";
pub const FAR_POD: &str = "10.250.2.10";
pub const B_PORT: u16 = 8081;
pub const FAR_PORT: u16 = 8082;
/// ClusterIP:80 → B (same node) and → the callee on node b.
pub const NAT_SAME: &str = "10.96.0.10:80";
pub const NAT_FAR: &str = "10.96.0.11:80";

pub struct Node {
    pub netns: String,
    pub cgroup: PathBuf,
}

impl Node {
    /// Starts `program` inside this node: in its network namespace and its cgroup (entered
    /// before the program runs, so every socket it makes is the node's).
    pub fn spawn(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> KillOnDrop {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@""#)
            .arg("sh")
            .arg(&self.cgroup)
            .arg(&self.netns)
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        KillOnDrop(c.spawn().expect("starting a process on a node"))
    }

    /// Runs `program` in this node's network namespace but outside its cgroup (a client no
    /// collector traces), and returns its stdout.
    pub fn run_untraced(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{program} {args:?} in {} failed: {}",
            self.netns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `addr` accepts connections from inside this node.
    pub fn wait_listening(&self, addr: &str, timeout: Duration) {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let start = Instant::now();
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.netns, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "nothing listens on {addr} in {}",
                self.netns
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct Nodes {
    pub a: Node,
    pub b: Node,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!("{args:?}: {e} (cargo xtask test installs iproute2 and iptables)")
        });
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Nodes {
    pub fn start(tag: &str) -> Self {
        // Interface names have at most 15 bytes; the pid and the tag keep tests and runs apart.
        let id = format!("{:x}", std::process::id() % 0xfffff);
        let name = |n: &str| format!("ct{id}{tag}{n}");
        let nodes = Self {
            a: Node {
                netns: name("a"),
                cgroup: super::kube::cgroup2_root().join(format!("collector-{}", name("a"))),
            },
            b: Node {
                netns: name("b"),
                cgroup: super::kube::cgroup2_root().join(format!("collector-{}", name("b"))),
            },
        };
        // Set up piece by piece after `nodes` exists, so a failure half-way is cleaned up.
        for n in [&nodes.a, &nodes.b] {
            sh(&["ip", "netns", "add", &n.netns]);
            std::fs::create_dir_all(&n.cgroup)
                .unwrap_or_else(|e| panic!("creating {}: {e}", n.cgroup.display()));
            sh(&["ip", "-n", &n.netns, "link", "set", "lo", "up"]);
        }
        let (na, nb) = (nodes.a.netns.as_str(), nodes.b.netns.as_str());
        let (va, vb) = (format!("{}v", na), format!("{}v", nb));
        sh(&[
            "ip", "link", "add", &va, "netns", na, "type", "veth", "peer", "name", &vb, "netns", nb,
        ]);
        for (ns, dev, addr, pods) in [
            (na, &va, "10.250.0.1/30", &[A_POD, B_POD][..]),
            (nb, &vb, "10.250.0.2/30", &[FAR_POD][..]),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            for pod in pods {
                sh(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{pod}/32"),
                    "dev",
                    "lo",
                ]);
            }
        }
        sh(&[
            "ip",
            "-n",
            na,
            "route",
            "add",
            "10.250.2.0/24",
            "via",
            "10.250.0.2",
            "src",
            A_POD,
        ]);
        sh(&[
            "ip",
            "-n",
            nb,
            "route",
            "add",
            "10.250.1.0/24",
            "via",
            "10.250.0.1",
            "src",
            FAR_POD,
        ]);
        // The Service range has a route (a node's default one), which DNAT replaces before
        // a packet leaves.
        sh(&[
            "ip",
            "-n",
            na,
            "route",
            "add",
            "10.96.0.0/16",
            "via",
            "10.250.0.2",
        ]);
        for (cluster_ip, pod) in [
            (NAT_SAME, format!("{B_POD}:{B_PORT}")),
            (NAT_FAR, format!("{FAR_POD}:{FAR_PORT}")),
        ] {
            let (ip, port) = cluster_ip.rsplit_once(':').unwrap();
            for chain in ["OUTPUT", "PREROUTING"] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    na,
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    chain,
                    "-d",
                    &format!("{ip}/32"),
                    "-p",
                    "tcp",
                    "--dport",
                    port,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &pod,
                ]);
            }
        }
        nodes
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            // Whatever still runs on the node goes with it.
            let _ = std::fs::write(n.cgroup.join("cgroup.kill"), "1");
            let start = Instant::now();
            while std::fs::read_to_string(n.cgroup.join("cgroup.procs"))
                .is_ok_and(|p| !p.trim().is_empty())
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            remove_cgroup(&n.cgroup);
            // The veth pair and the iptables rules go with the namespaces.
            let _ = Command::new("ip").args(["netns", "del", &n.netns]).status();
        }
    }
}

/// Removes a cgroup and the ones a test made inside it (a cgroup directory holds no files
/// that need removing: rmdir, deepest first).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
