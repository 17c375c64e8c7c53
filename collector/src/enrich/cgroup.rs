//! Which container (and pod) a process runs in, from its `/proc/<pid>/cgroup`.
//!
//! The container runtime names the cgroup of each container after its id, and the kubelet
//! names the pod's cgroup after the pod's UID; the layout depends on the runtime (containerd,
//! CRI-O, Docker), on the cgroup driver (systemd or cgroupfs) and on the cgroup version. We
//! look at the path's components from the leaf up, so paths seen from inside a cgroup
//! namespace (`/../../kubepods-…`) parse the same as full ones.

/// What a cgroup path says about the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// The 64-hex-digit container id (as in a pod's `status.containerStatuses[].containerID`
    /// after the `<runtime>://` scheme).
    pub container_id: Option<String>,
    /// The pod UID (with dashes, as in `metadata.uid`).
    pub pod_uid: Option<String>,
}

/// Parses the text of `/proc/<pid>/cgroup` (v1: one `id:controllers:path` line per hierarchy;
/// v2: a single `0::path`). The unified (v2) line is preferred; on v1 the first hierarchy
/// that names a container wins.
pub fn parse_proc_cgroup(text: &str) -> CgroupIdentity {
    let mut paths: Vec<(bool, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((id == "0" && controllers.is_empty(), path))
        })
        .collect();
    // Unified hierarchy first, then v1 hierarchies in file order.
    paths.sort_by_key(|(unified, _)| !unified);
    let mut best = CgroupIdentity::default();
    for (_, path) in paths {
        let found = parse_path(path);
        if found.container_id.is_some() {
            return found;
        }
        if best.pod_uid.is_none() {
            best.pod_uid = found.pod_uid;
        }
    }
    best
}

/// One cgroup path.
pub fn parse_path(path: &str) -> CgroupIdentity {
    let mut id = CgroupIdentity::default();
    for component in path.rsplit('/') {
        if id.container_id.is_none() && id.pod_uid.is_none() {
            id.container_id = container_id(component);
        }
        if id.pod_uid.is_none() {
            id.pod_uid = pod_uid(component);
        }
        if id.pod_uid.is_some() {
            break;
        }
    }
    id
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-<id>`, `docker-<id>.scope`,
/// `libpod-<id>.scope`, or a bare `<id>`. CRI-O's `crio-conmon-<id>` is its monitor process,
/// not the container.
fn container_id(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|prefix| name.strip_prefix(prefix))
    .unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// `pod<uid>` (cgroupfs driver) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice`
/// (systemd driver, which escapes the UID's dashes as underscores).
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    let shape_ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let prefix_ok = name.starts_with("pod") || name.starts_with("kubepods-");
    (shape_ok && prefix_ok).then(|| uid.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
