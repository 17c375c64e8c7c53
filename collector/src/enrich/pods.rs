//! The pods of this node, reduced to what segments use, indexed by container id and pod UID.
//! A pure store fed with watch events: the Kubernetes client lives in `kube_watch`.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

/// All of our pod annotations share this prefix (see the README's "Kubernetes" section).
pub const ANNOTATION_PREFIX: &str = "xray-collector.io/";
/// Pod annotation: the segment name for every container of the pod.
pub const SERVICE_NAME_ANNOTATION: &str = "xray-collector.io/service-name";
/// Pod annotation: `"true"` opts every container of the pod out of tracing (node agents,
/// meshes' sidecars, the collector itself).
pub const EXCLUDE_ANNOTATION: &str = "xray-collector.io/exclude";
/// The well-known label naming the application (Kubernetes "Recommended Labels").
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

/// What segments need of a pod; everything else of the Pod object is dropped on arrival, so
/// the cache's size depends on the pods of this node only, not on their specs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// `xray-collector.io/service-name`.
    pub service_name_annotation: Option<String>,
    /// `app.kubernetes.io/name`.
    pub app_name_label: Option<String>,
    /// `xray-collector.io/exclude: "true"`.
    pub excluded: bool,
    /// The pod's labels (for label-selector filters; shared with every span group of the pod).
    pub labels: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    /// (kind, name): Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, ...
    pub workload: Option<(String, String)>,
    /// (container id without scheme, container name).
    pub containers: Vec<(String, String)>,
    /// The pod's IPs (`status.podIPs`), unless it shares the node's network.
    pub ips: Vec<String>,
}

impl PodMeta {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let labels = meta.labels.as_ref();
        let owner = meta
            .owner_references
            .as_ref()
            .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)));
        let workload = owner.map(|o| {
            let template_hash = labels.and_then(|l| l.get("pod-template-hash"));
            workload_of(&o.kind, &o.name, template_hash.map(String::as_str))
        });
        let containers = pod
            .status
            .iter()
            .flat_map(|s| {
                let all = [
                    &s.container_statuses,
                    &s.init_container_statuses,
                    &s.ephemeral_container_statuses,
                ];
                all.into_iter().flatten().flatten()
            })
            .filter_map(|c| {
                let id = c.container_id.as_deref()?;
                let id = id.split_once("://").map_or(id, |(_, id)| id);
                (!id.is_empty()).then(|| (id.to_ascii_lowercase(), c.name.clone()))
            })
            .collect();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let ips = pod
            .status
            .iter()
            .flat_map(|s| {
                s.pod_ips
                    .iter()
                    .flatten()
                    .map(|ip| ip.ip.clone())
                    .chain(s.pod_ip.clone())
            })
            .filter(|_| !host_network)
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        Some(Self {
            ips,
            uid,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            service_name_annotation: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(SERVICE_NAME_ANNOTATION))
                .filter(|v| !v.trim().is_empty())
                .cloned(),
            labels: std::sync::Arc::new(labels.cloned().unwrap_or_default()),
            excluded: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(EXCLUDE_ANNOTATION))
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            app_name_label: labels
                .and_then(|l| l.get(APP_NAME_LABEL))
                .filter(|v| !v.trim().is_empty())
                .cloned(),
            workload,
            containers,
        })
    }

    /// The container's name, by container id.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(id, _)| id == container_id)
            .map(|(_, name)| name.as_str())
    }
}

/// The workload behind a pod's controlling owner, without watching owners: a ReplicaSet made
/// by a Deployment is named `<deployment>-<pod-template-hash>` and its pods carry that hash as
/// a label; a Job made by a CronJob is named `<cronjob>-<scheduled minutes since the epoch>`.
pub fn workload_of(kind: &str, name: &str, template_hash: Option<&str>) -> (String, String) {
    match kind {
        "ReplicaSet" => match template_hash.and_then(|h| name.strip_suffix(h)?.strip_suffix('-')) {
            Some(deployment) if !deployment.is_empty() => {
                ("Deployment".to_owned(), deployment.to_owned())
            }
            _ => (kind.to_owned(), name.to_owned()),
        },
        "Job" => match name.rsplit_once('-') {
            Some((cronjob, minutes))
                if !cronjob.is_empty()
                    && minutes.len() >= 8
                    && minutes.bytes().all(|b| b.is_ascii_digit()) =>
            {
                ("CronJob".to_owned(), cronjob.to_owned())
            }
            _ => (kind.to_owned(), name.to_owned()),
        },
        _ => (kind.to_owned(), name.to_owned()),
    }
}

/// Pods by UID, with an index by container id. Relists replace the whole content at once.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_uid: HashMap<String, PodMeta>,
    by_container: HashMap<String, String>,
    /// Pods listed since the current relist began (swapped in when it completes).
    relisting: Option<Vec<PodMeta>>,
    pub stats: PodIndexStats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodIndexStats {
    pub applied: u64,
    pub deleted: u64,
    pub relists: u64,
    /// Pods without a UID (never from a real API server), or beyond the cap.
    pub rejected: u64,
}

/// A node runs at most a few hundred pods (kubelet's default max-pods is 110); far beyond is a
/// misconfigured selector, and the cache stops growing.
pub const MAX_PODS: usize = 5_000;

impl PodIndex {
    pub fn apply(&mut self, pod: PodMeta) {
        if !self.by_uid.contains_key(&pod.uid) && self.by_uid.len() >= MAX_PODS {
            self.stats.rejected += 1;
            return;
        }
        self.stats.applied += 1;
        self.unindex(&pod.uid);
        for (id, _) in &pod.containers {
            self.by_container.insert(id.clone(), pod.uid.clone());
        }
        self.by_uid.insert(pod.uid.clone(), pod);
    }

    pub fn delete(&mut self, uid: &str) {
        self.stats.deleted += 1;
        self.unindex(uid);
        self.by_uid.remove(uid);
    }

    pub fn relist_started(&mut self) {
        self.relisting = Some(Vec::new());
    }

    pub fn relist_item(&mut self, pod: PodMeta) {
        match &mut self.relisting {
            Some(list) if list.len() < MAX_PODS => list.push(pod),
            Some(_) => self.stats.rejected += 1,
            // An item outside a relist: apply it as an update.
            None => self.apply(pod),
        }
    }

    /// The relist is complete: pods not listed are gone.
    pub fn relist_done(&mut self) {
        let Some(list) = self.relisting.take() else {
            return;
        };
        self.stats.relists += 1;
        self.by_uid.clear();
        self.by_container.clear();
        for pod in list {
            self.apply(pod);
        }
    }

    fn unindex(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.get(uid) {
            for (id, _) in &old.containers {
                if self.by_container.get(id).is_some_and(|u| u == uid) {
                    self.by_container.remove(id);
                }
            }
        }
    }

    /// The pod with this IP (pods on the node's own network have none here).
    pub fn find_by_ip(&self, ip: &str) -> Option<&PodMeta> {
        self.by_uid.values().find(|p| p.ips.iter().any(|i| i == ip))
    }

    /// The pod running a container: by container id, else by the pod UID from the cgroup path
    /// (a container just started may not be in the pod's status yet).
    pub fn find(&self, container_id: Option<&str>, pod_uid: Option<&str>) -> Option<&PodMeta> {
        container_id
            .and_then(|id| self.by_container.get(id))
            .and_then(|uid| self.by_uid.get(uid))
            .or_else(|| pod_uid.and_then(|uid| self.by_uid.get(uid)))
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

#[cfg(test)]
mod tests;
