//! Each fixture is built from the layout its runtime or the kubelet documents (source cited);
//! ids and UIDs are made up.

use super::*;

const ID: &str = "3f9e4b1a7c2d8e6f0a5b9c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";
const UID: &str = "7b2c1d0e-4f5a-4b6c-8d9e-0f1a2b3c4d5e";
const UID_ESCAPED: &str = "7b2c1d0e_4f5a_4b6c_8d9e_0f1a2b3c4d5e";

fn both(text: &str) -> CgroupIdentity {
    parse_proc_cgroup(text)
}

fn expect_both(text: &str) {
    assert_eq!(
        both(text),
        CgroupIdentity {
            container_id: Some(ID.to_owned()),
            pod_uid: Some(UID.to_owned())
        },
        "{text}"
    );
}

/// cgroup v2, systemd driver, containerd. The kubelet's systemd driver turns the cgroup name
/// [kubepods, burstable, pod<uid>] into nested slices `kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod<uid>.slice`, escaping `-` in the UID as `_` (kubernetes
/// pkg/kubelet/cm/cgroup_manager_linux.go, `ToSystemd`/`escapeSystemdCgroupName`); containerd's
/// CRI plugin with `SystemdCgroup = true` gives runc the cgroupsPath
/// `<pod slice>:cri-containerd:<id>`, which runc's systemd driver makes the unit
/// `cri-containerd-<id>.scope` (runc libcontainer/cgroups/systemd, `getUnitName`:
/// `<prefix>-<name>.scope`).
#[test]
fn v2_systemd_containerd() {
    expect_both(&format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_ESCAPED}.slice/cri-containerd-{ID}.scope\n"
    ));
    // Guaranteed QoS: the pod slice sits directly under kubepods.slice (no QoS level).
    expect_both(&format!(
        "0::/kubepods.slice/kubepods-pod{UID_ESCAPED}.slice/cri-containerd-{ID}.scope\n"
    ));
}

/// cgroup v2, cgroupfs driver, containerd: the pod cgroup is `/kubepods/<qos>/pod<uid>`
/// (kubelet pod_container_manager_linux.go, `GetPodContainerName`: "pod" + UID under the QoS
/// cgroup) and containerd's CRI plugin places the container at `<pod cgroup>/<id>`.
#[test]
fn v2_cgroupfs_containerd() {
    expect_both(&format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"));
    expect_both(&format!("0::/kubepods/pod{UID}/{ID}\n"));
}

/// CRI-O: the systemd manager names the scope `crio-<id>.scope` and the cgroupfs manager the
/// directory `crio-<id>` (cri-o internal/config/cgmgr: `crioPrefix = "crio"`); its monitor
/// runs in `crio-conmon-<id>.scope`, which is not the container.
#[test]
fn crio_both_drivers_and_conmon() {
    expect_both(&format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_ESCAPED}.slice/crio-{ID}.scope\n"
    ));
    expect_both(&format!("0::/kubepods/burstable/pod{UID}/crio-{ID}\n"));
    assert_eq!(
        both(&format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_ESCAPED}.slice/crio-conmon-{ID}.scope\n"
        )),
        CgroupIdentity {
            container_id: None,
            pod_uid: Some(UID.to_owned())
        }
    );
}

/// Docker: `docker run` puts a container at `/docker/<id>` with the cgroupfs driver and in
/// `system.slice/docker-<id>.scope` with systemd (Docker docs, "Runtime metrics": "the
/// long ID of the container ... /sys/fs/cgroup/memory/docker/<longid>/" and
/// "system.slice/docker-<longid>.scope"). Under the kubelet (dockershim / cri-dockerd) the
/// parent is the pod cgroup.
#[test]
fn docker_plain_and_under_kubelet() {
    let plain = CgroupIdentity {
        container_id: Some(ID.to_owned()),
        pod_uid: None,
    };
    assert_eq!(both(&format!("0::/docker/{ID}\n")), plain);
    assert_eq!(
        both(&format!("0::/system.slice/docker-{ID}.scope\n")),
        plain
    );
    expect_both(&format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_ESCAPED}.slice/docker-{ID}.scope\n"
    ));
    expect_both(&format!("0::/kubepods/burstable/pod{UID}/{ID}\n"));
}

/// cgroup v1: one line per hierarchy, `hierarchy-ID:controller-list:cgroup-path`
/// (cgroups(7), "/proc/[pid]/cgroup"); a hybrid host adds the unified `0::` line, often `/`.
#[test]
fn v1_lines_and_hybrid() {
    let v1 = format!(
        "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
         11:hugetlb:/kubepods/burstable/pod{UID}/{ID}\n\
         10:memory:/kubepods/burstable/pod{UID}/{ID}\n\
         4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
         1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n\
         0::/\n"
    );
    expect_both(&v1);
    let v1_systemd = format!(
        "11:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_ESCAPED}.slice/cri-containerd-{ID}.scope\n\
         1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_ESCAPED}.slice/cri-containerd-{ID}.scope\n"
    );
    expect_both(&v1_systemd);
}

/// Seen from inside a private cgroup namespace (cgroup_namespaces(7)): paths are relative to
/// the reader's own cgroup, so they start with `/..`.
#[test]
fn paths_seen_from_a_cgroup_namespace() {
    expect_both(&format!(
        "0::/../../kubepods-besteffort-pod{UID_ESCAPED}.slice/cri-containerd-{ID}.scope\n"
    ));
}

#[test]
fn host_processes_and_garbage_name_nothing() {
    for text in [
        "0::/system.slice/kubelet.service\n",
        "0::/user.slice/user-0.slice/session-3.scope\n",
        "0::/\n",
        "",
        "garbage",
        "0::/kubepods/burstable/podnot-a-uid/abc\n",
        // 63 and 65 hex digits are not container ids
        "0::/docker/3f9e4b1a7c2d8e6f0a5b9c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4\n",
        "0::/docker/3f9e4b1a7c2d8e6f0a5b9c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f0\n",
    ] {
        assert_eq!(both(text), CgroupIdentity::default(), "{text:?}");
    }
}

#[test]
fn a_process_in_the_pod_cgroup_itself_has_only_the_pod() {
    assert_eq!(
        both(&format!("0::/kubepods/burstable/pod{UID}\n")),
        CgroupIdentity {
            container_id: None,
            pod_uid: Some(UID.to_owned())
        }
    );
}
