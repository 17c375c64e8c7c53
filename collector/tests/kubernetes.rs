//! Pod metadata from a REAL kube-apiserver (built by `cargo xtask test` from Debian's source
//! package) through kube-rs, for real processes placed in cgroups shaped like a kubelet's,
//! and the deploy/ manifests checked by that API server.

mod support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use support::{
    Collector, KillOnDrop, TempDir, curl, free_port,
    kube::{COLLECTOR_USER, Cluster, PodCgroup, apiserver_binary, create_pod, kubectl_as},
    privileged, python_http_server, serial, summary_counters, unique,
};

const NODE: &str = "test-node";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every manifest of deploy/ (and the least-privilege variant) is accepted by the API
/// server's own validation, and the RBAC grants nothing beyond get/list/watch on pods — read
/// from the manifests and asked of the API server's authorizer.
#[test]
fn manifests_are_valid_and_rbac_only_reads_pods() {
    let _serial = serial();
    let Some(binary) = apiserver_binary() else {
        return;
    };
    let cluster = Cluster::start(binary);
    let deploy = deploy_dir();
    let file = |name: &str| deploy.join(name).to_string_lossy().into_owned();
    // The namespace for real (a dry-run namespace would not exist for the objects in it).
    cluster.kubectl(&["apply", "-f", &file("00-namespace.yaml")], None);
    for manifest in [
        "00-namespace.yaml",
        "rbac.yaml",
        "configmap.yaml",
        "daemonset.yaml",
        "service.yaml",
        "least-privilege/daemonset.yaml",
    ] {
        let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", &file(manifest)], None);
        assert!(out.contains("(server dry run)"), "{manifest}: {out}");
    }

    // As users apply them: the whole directory.
    let out = cluster.kubectl(
        &["apply", "--dry-run=server", "-f", &deploy.to_string_lossy()],
        None,
    );
    assert_eq!(out.matches("(server dry run)").count(), 7, "{out}");

    // The ConfigMap's settings file is one the collector accepts.
    let cm = cluster.kubectl(
        &[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &file("configmap.yaml"),
        ],
        None,
    );
    let cm: serde_json::Value = serde_json::from_str(&cm).unwrap();
    let settings = TempDir::new("cm");
    let path = settings.0.join("collector.yaml");
    std::fs::write(&path, cm["data"]["collector.yaml"].as_str().unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["run", "-c"])
        .arg(&path)
        .arg("--print-config")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("exporter: auto  # config file"),
        "{printed}"
    );

    // What the manifests say: one rule, pods, get/list/watch.
    let json = cluster.kubectl(
        &[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &file("rbac.yaml"),
        ],
        None,
    );
    // One JSON object per document, back to back.
    let objects: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&json)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    );
    let roles: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 1, "one role");
    assert_eq!(
        roles[0]["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
    );
    for other in [
        "daemonset.yaml",
        "service.yaml",
        "configmap.yaml",
        "00-namespace.yaml",
    ] {
        let out = cluster.kubectl(
            &[
                "create",
                "--dry-run=client",
                "-o",
                "json",
                "-f",
                &file(other),
            ],
            None,
        );
        assert!(!out.contains("\"rules\""), "{other} grants permissions");
    }

    // What the authorizer says once applied: the service account reads pods, nothing else.
    cluster.kubectl(&["apply", "-f", &file("rbac.yaml")], None);
    // (kubectl exits 1 on "no": ask through the admin and read the answer instead.)
    let can = |verb: &str, resource: &str| {
        let mut args = vec!["auth", "can-i", verb];
        args.extend(resource.split(' '));
        args.extend(["--all-namespaces", "--as", COLLECTOR_USER]);
        let out = kubectl_as(&cluster.admin_kubeconfig, &args, None);
        match out {
            Ok(o) => o.trim() == "yes",
            // "no" on stdout, exit status 1.
            Err(e) => {
                assert!(e.lines().any(|l| l.trim() == "no"), "{e}");
                false
            }
        }
    };
    for verb in ["get", "list", "watch"] {
        assert!(can(verb, "pods"), "{verb} pods");
    }
    for (verb, resource) in [
        ("create", "pods"),
        ("delete", "pods"),
        ("patch", "pods"),
        ("get", "secrets"),
        ("list", "configmaps"),
        ("watch", "nodes"),
        ("create", "pods --subresource=exec"),
        ("get", "pods --subresource=log"),
        ("list", "deployments.apps"),
    ] {
        assert!(!can(verb, resource), "must not {verb} {resource}");
    }
}

/// Segments of the process served by `port` for one request path, waiting up to `timeout` for
/// one that `want` accepts (requests are repeated: metadata may still be on its way).
fn segment_until(
    collector: &Collector,
    port: u16,
    timeout: Duration,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    let mut last = None;
    loop {
        let path = unique("req");
        curl(&format!("http://127.0.0.1:{port}/{path}"));
        let seen = collector.wait_json(Duration::from_secs(5), |lines| {
            lines.iter().any(|l| is_server_segment_for(l, &path))
        });
        let seg = seen.into_iter().find(|l| is_server_segment_for(l, &path));
        if let Some(seg) = seg {
            if want(&seg) {
                return seg;
            }
            last = Some(seg);
        }
        assert!(
            start.elapsed() < timeout,
            "no wanted segment within {timeout:?}; last: {last:#?}\nstderr:\n{}",
            collector.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_server_segment_for(line: &serde_json::Value, path: &str) -> bool {
    line["http"]["request"]["url"]
        .as_str()
        .is_some_and(|u| u.ends_with(&format!("/{path}")))
        && line.get("namespace").is_none()
}

fn start_collector(cluster: &Cluster) -> Collector {
    let kubeconfig = cluster.collector_kubeconfig.to_string_lossy().into_owned();
    Collector::start_with_env(
        &[
            "--exporter",
            "stdout",
            "--format",
            "json",
            "--trace-hold-ms",
            "100",
            "--cluster-name",
            "test-cluster",
            "--node-name",
            NODE,
        ],
        &[
            ("KUBECONFIG", &kubeconfig),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
}

/// A control plane with the collector's RBAC applied and a fresh namespace, and two python
/// servers each moved into a cgroup shaped like a pod's (`a` by the systemd driver when
/// `a_systemd`, `b` by the other).
struct World {
    cluster: Cluster,
    ns: String,
    port_a: u16,
    port_b: u16,
    cgroup_a: PodCgroup,
    cgroup_b: PodCgroup,
    _servers: (KillOnDrop, KillOnDrop),
    _www: TempDir,
}

impl World {
    fn start(binary: PathBuf, a_systemd: bool) -> Self {
        let cluster = Cluster::start(binary);
        let deploy = deploy_dir();
        for f in ["00-namespace.yaml", "rbac.yaml"] {
            cluster.kubectl(&["apply", "-f", &deploy.join(f).to_string_lossy()], None);
        }
        let ns = unique("shop").replace('_', "-");
        cluster.kubectl(&["create", "namespace", &ns], None);
        let www = TempDir::new("kube-www");
        let (port_a, port_b) = (free_port(), free_port());
        let server_a = python_http_server(&www.0, port_a);
        let server_b = python_http_server(&www.0, port_b);
        let cgroup_a = PodCgroup::new("a", a_systemd);
        let cgroup_b = PodCgroup::new("b", !a_systemd);
        cgroup_a.add(server_a.pid());
        cgroup_b.add(server_b.pid());
        Self {
            cluster,
            ns,
            port_a,
            port_b,
            cgroup_a,
            cgroup_b,
            _servers: (server_a, server_b),
            _www: www,
        }
    }
}

/// A pod on this node appears, changes and is deleted; a pod on another node is never cached.
#[test]
fn pods_of_this_node_name_the_processes_in_their_containers() {
    let _serial = serial();
    let Some(binary) = apiserver_binary() else {
        return;
    };
    if !privileged() {
        return;
    }
    // Bound by name (not `_`): the servers and files live to the end of the test.
    let World {
        cluster,
        ns,
        port_a,
        port_b,
        cgroup_a,
        cgroup_b,
        _servers,
        _www,
    } = World::start(binary, false);
    let pod_a = "web-5f6d7c8b9-x2x9q";
    create_pod(&cluster, &ns, pod_a, NODE, "web", &cgroup_a);
    create_pod(
        &cluster,
        &ns,
        "api-5f6d7c8b9-k8k8k",
        "other-node",
        "api",
        &cgroup_b,
    );
    // The rest of the cluster: pods on other nodes, which the watch never brings here.
    let others: Vec<serde_json::Value> = (0..300)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("elsewhere-{i}"), "namespace": ns},
                "spec": {"nodeName": format!("node-{}", i % 7), "containers": [{"name": "c", "image": "x"}]}
            })
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": others});
    cluster.kubectl(&["apply", "-f", "-"], Some(&list.to_string()));

    let collector = start_collector(&cluster);
    // Appearing: the workload names the segment, the pod fills aws.eks and the annotations.
    let seg = segment_until(&collector, port_a, Duration::from_secs(30), |s| {
        s["name"] == "web"
    });
    assert_eq!(seg["origin"], "AWS::EKS::Container");
    assert_eq!(
        seg["aws"]["eks"],
        serde_json::json!({"pod": pod_a, "cluster_name": "test-cluster", "container_id": cgroup_a.container_id})
    );
    for (k, v) in [
        ("k8s_namespace", ns.as_str()),
        ("k8s_pod", pod_a),
        ("k8s_container", "app"),
        ("k8s_workload", "web"),
        ("k8s_workload_kind", "Deployment"),
        ("k8s_node", NODE),
    ] {
        assert_eq!(seg["annotations"][k], v, "{k} in {seg:#}");
    }
    // Another node's pod: never cached, so its process keeps the process name.
    let other = segment_until(&collector, port_b, Duration::from_secs(10), |_| true);
    assert_eq!(other["name"], "python3", "{other:#}");
    assert!(other["aws"].get("eks").is_none(), "{other:#}");

    // Changing: the app.kubernetes.io/name label outranks the workload.
    cluster.kubectl(
        &[
            "label",
            "pod",
            pod_a,
            "-n",
            &ns,
            "app.kubernetes.io/name=storefront",
        ],
        None,
    );
    segment_until(&collector, port_a, Duration::from_secs(30), |s| {
        s["name"] == "storefront"
    });

    // Deleted: back to the process name.
    cluster.kubectl(
        &[
            "delete",
            "pod",
            pod_a,
            "-n",
            &ns,
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    let gone = segment_until(&collector, port_a, Duration::from_secs(30), |s| {
        s["name"] == "python3"
    });
    assert!(gone["aws"].get("eks").is_none(), "{gone:#}");

    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let counters = summary_counters(&stderr.text());
    assert_eq!(
        counters["kube_pods_cached"], 0,
        "other nodes' pods were never cached"
    );
    assert!(
        counters["kube_pod_events"] < 10,
        "only this node's pod moved: {counters:?}"
    );
    assert!(counters["kube_pod_events"] >= 3, "{counters:?}");
    assert!(counters["enrich_with_pod"] >= 2, "{counters:?}");
}

/// The API server stops for 20 s: tracing goes on (with the metadata already known), and a
/// pod created after the restart is picked up.
#[test]
fn an_api_outage_does_not_stop_tracing_and_metadata_catches_up() {
    let _serial = serial();
    let Some(binary) = apiserver_binary() else {
        return;
    };
    if !privileged() {
        return;
    }
    // Bound by name (not `_`): the servers and files live to the end of the test.
    let World {
        mut cluster,
        ns,
        port_a,
        port_b,
        cgroup_a,
        cgroup_b,
        _servers,
        _www,
    } = World::start(binary, true);
    create_pod(&cluster, &ns, "web-5f6d7c8b9-aaaaa", NODE, "web", &cgroup_a);

    let collector = start_collector(&cluster);
    segment_until(&collector, port_a, Duration::from_secs(30), |s| {
        s["name"] == "web"
    });

    cluster.stop_apiserver();
    let outage = Instant::now();
    let mut paths = Vec::new();
    while outage.elapsed() < Duration::from_secs(20) {
        let path = unique("outage");
        assert_eq!(curl(&format!("http://127.0.0.1:{port_a}/{path}")), 404);
        paths.push(path);
        std::thread::sleep(Duration::from_millis(500));
    }
    let lines = collector.wait_json(Duration::from_secs(5), |lines| {
        paths
            .iter()
            .all(|p| lines.iter().any(|l| is_server_segment_for(l, p)))
    });
    for p in &paths {
        let seg = lines
            .iter()
            .find(|l| is_server_segment_for(l, p))
            .unwrap_or_else(|| panic!("request {p} during the outage was not traced"));
        assert_eq!(seg["name"], "web", "metadata known before the outage stays");
    }

    cluster.start_apiserver();
    let restarted = Instant::now();
    create_pod(&cluster, &ns, "api-5f6d7c8b9-bbbbb", NODE, "api", &cgroup_b);
    segment_until(&collector, port_b, Duration::from_secs(90), |s| {
        s["name"] == "api"
    });
    eprintln!(
        "{} requests traced during a 20 s outage; new pod's metadata {:.1?} after the restart",
        paths.len(),
        restarted.elapsed()
    );
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let counters = summary_counters(&stderr.text());
    assert!(
        counters["kube_watch_errors"] > 0,
        "the outage was seen: {counters:?}"
    );
    assert!(stderr.text().contains("Kubernetes API reachable again"));
}

/// Outside Kubernetes (no service account, no kubeconfig): one line says so, no warnings or
/// errors, and services keep their process names.
#[test]
fn host_mode_says_so_once_and_names_services_after_processes() {
    let _serial = serial();
    if !privileged() {
        return;
    }
    let home = TempDir::new("no-kube-home");
    let dir = TempDir::new("host-www");
    let port = free_port();
    let _server = python_http_server(&dir.0, port);
    let home_path = home.0.to_string_lossy().into_owned();
    let collector = Collector::start_with_env(
        &[
            "--exporter",
            "stdout",
            "--format",
            "json",
            "--trace-hold-ms",
            "100",
        ],
        &[("HOME", &home_path), ("KUBECONFIG", "")],
    );
    let seg = segment_until(&collector, port, Duration::from_secs(10), |_| true);
    assert_eq!(seg["name"], "python3");
    assert!(seg["aws"].get("eks").is_none());
    assert_ne!(seg["origin"], "AWS::EKS::Container");
    let stderr = collector.stderr_handle();
    assert!(collector.stop(libc::SIGTERM).success());
    let text = stderr.text();
    let kube_lines: Vec<&str> = text.lines().filter(|l| l.contains("Kubernetes")).collect();
    assert_eq!(kube_lines.len(), 1, "{text}");
    assert!(kube_lines[0].contains("host mode"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "{text}"
    );
}
