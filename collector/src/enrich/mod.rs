//! Stage 5, enrichment: span groups learn which pod, container, workload and node their
//! process runs in (pid → cgroup → container id → pod), and where the node runs (EC2).
//!
//! Everything here is a pure function of the pod index and of `/proc` text; the Kubernetes
//! watch (`kube_watch`) and the instance metadata query (`ec2`) only fill the shared state.

pub mod cgroup;
pub mod ec2;
pub mod kube_watch;
pub mod pods;
pub mod sdk_senders;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use cgroup::{CgroupIdentity, parse_proc_cgroup};

use pods::{PodIndex, PodMeta};

use crate::counters::counters;
use sdk_senders::SdkSenders;

use crate::trace::{
    process::proc_file,
    span::{Ec2Resource, GroupStage, PodResource, Resource, RootService, SpanGroup, sanitize_name},
};

/// Where a pod's service runs, as X-Ray names it (the SDKs' EKS plugin's `origin`); also the
/// service type sampling rules match.
pub const ORIGIN_EKS: &str = "AWS::EKS::Container";
/// Where a service on an EC2 instance outside Kubernetes runs.
pub const ORIGIN_EC2: &str = "AWS::EC2::Instance";

/// State shared with the background tasks that fill it.
#[derive(Clone, Default)]
pub struct SharedMeta {
    pub pods: Arc<Mutex<PodIndex>>,
    /// Where the node runs, learned once from the instance metadata service.
    pub ec2: Arc<RwLock<Option<Ec2Resource>>>,
    /// Processes and pods that send their own X-Ray SDK segments (the UDP relay marks them).
    pub sdk_senders: SdkSenders,
}

/// How to read a process's cgroup membership (the real one reads /proc).
pub trait CgroupReader {
    fn read(&mut self, pid: u32) -> Option<String>;
    /// Whether the process still exists (cache entries of exited ones are evicted).
    fn alive(&mut self, pid: u32) -> bool;
    /// The process's name (as in /proc/PID/comm).
    fn name(&mut self, pid: u32) -> String;
}

pub struct ProcCgroups;

impl CgroupReader for ProcCgroups {
    fn read(&mut self, pid: u32) -> Option<String> {
        std::fs::read_to_string(proc_file(pid, "cgroup")).ok()
    }

    fn alive(&mut self, pid: u32) -> bool {
        proc_file(pid, "stat").exists()
    }

    fn name(&mut self, pid: u32) -> String {
        crate::trace::process::comm(pid)
    }
}

#[derive(Clone, Debug, Default)]
pub struct EnrichConfig {
    pub cluster_name: Option<String>,
    /// This node's name (NODE_NAME).
    pub node_name: Option<String>,
}

counters! {
    /// What enrichment found, per span group (a call sent on its own is counted with the
    /// request it belongs to).
    pub struct EnrichStats("enrich") {
        /// The group's process was mapped to a pod.
        pub with_pod,
        /// A process in a container whose pod is not (yet) known.
        pub container_without_pod,
        /// A process outside containers.
        pub host_processes,
        /// pid cache entries evicted because the process exited.
        pub pids_evicted,
        /// pid cache cleared because it was full.
        pub pid_cache_resets,
    }
}

/// Processes remembered at once; beyond, the cache starts over (counted).
pub const MAX_PIDS: usize = 16_384;
/// How often exited processes are evicted from the cache.
const SWEEP_EVERY_NS: u64 = 10_000_000_000;

pub struct Enricher<R: CgroupReader> {
    config: EnrichConfig,
    shared: SharedMeta,
    reader: R,
    /// Per process: its cgroup identity and name.
    by_pid: HashMap<u32, (CgroupIdentity, String)>,
    last_sweep_ns: u64,
    pub stats: EnrichStats,
}

impl<R: CgroupReader> Enricher<R> {
    pub fn new(config: EnrichConfig, shared: SharedMeta, reader: R) -> Self {
        Self {
            config,
            shared,
            reader,
            by_pid: HashMap::new(),
            last_sweep_ns: 0,
            stats: EnrichStats::default(),
        }
    }

    /// Adds what is known of the group's process: its name, pod, node and EC2 instance,
    /// the service name they give, and the trace root's service (for sampling).
    pub fn enrich(&mut self, group: &mut SpanGroup) {
        if group.pid == 0 {
            return;
        }
        let (identity, process) = self.identity(group.pid);
        let pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        let pod = pods.find(
            identity.container_id.as_deref(),
            identity.pod_uid.as_deref(),
        );
        let container_id = identity.container_id.as_deref();
        let counted = !group.is_late_call();
        match pod {
            Some(pod) => {
                if counted {
                    self.stats.with_pod += 1;
                }
                if let Some(name) = service_name(pod, container_id) {
                    group.service = sanitize_name(&name);
                }
                group.resource.pod = Some(pod_resource(pod, container_id));
            }
            None if counted && (container_id.is_some() || identity.pod_uid.is_some()) => {
                self.stats.container_without_pod += 1;
            }
            None if counted => self.stats.host_processes += 1,
            None => {}
        }
        group.resource.node = pod
            .map(|p| p.node.as_str())
            .filter(|n| !n.is_empty())
            .or(self.config.node_name.as_deref())
            .map(str::to_owned);
        drop(pods);
        group.process = process;
        group.resource.cluster.clone_from(&self.config.cluster_name);
        group.resource.ec2 = self
            .shared
            .ec2
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        group.root_service = Some(if group.root.pid == group.pid {
            RootService {
                name: group.service.clone(),
                origin: origin(&group.resource),
            }
        } else {
            self.service_of(group.root.pid)
        });
    }

    /// The service name and origin of another process (a trace's root, for sampling rules).
    fn service_of(&mut self, pid: u32) -> RootService {
        let (identity, process) = self.identity(pid);
        let pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        match pods.find(
            identity.container_id.as_deref(),
            identity.pod_uid.as_deref(),
        ) {
            Some(pod) => RootService {
                name: sanitize_name(
                    &service_name(pod, identity.container_id.as_deref()).unwrap_or(process),
                ),
                origin: ORIGIN_EKS,
            },
            None => RootService {
                name: sanitize_name(&process),
                origin: "",
            },
        }
    }

    /// Evicts processes that exited (call regularly; does the work every 10 s).
    pub fn tick(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_sweep_ns) < SWEEP_EVERY_NS {
            return;
        }
        self.last_sweep_ns = now_ns;
        let before = self.by_pid.len();
        let reader = &mut self.reader;
        self.by_pid.retain(|pid, _| reader.alive(*pid));
        self.stats.pids_evicted += (before - self.by_pid.len()) as u64;
    }

    pub fn cached_pids(&self) -> usize {
        self.by_pid.len()
    }

    fn identity(&mut self, pid: u32) -> (CgroupIdentity, String) {
        if let Some(found) = self.by_pid.get(&pid) {
            return found.clone();
        }
        let id = self
            .reader
            .read(pid)
            .map(|text| parse_proc_cgroup(&text))
            .unwrap_or_default();
        let name = self.reader.name(pid);
        if self.by_pid.len() >= MAX_PIDS {
            self.by_pid.clear();
            self.stats.pid_cache_resets += 1;
        }
        self.by_pid.insert(pid, (id.clone(), name.clone()));
        (id, name)
    }
}

impl<R: CgroupReader> GroupStage for Enricher<R> {
    fn process(&mut self, groups: &mut Vec<SpanGroup>, _wall_secs: u64) {
        groups.iter_mut().for_each(|g| self.enrich(g));
    }

    fn tick(&mut self, now_ns: u64) {
        Enricher::tick(self, now_ns);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats.pairs()
    }

    fn levels(&self) -> Vec<(&'static str, u64)> {
        vec![("enrich_pids_cached", self.by_pid.len() as u64)]
    }
}

/// The service name, first match wins: our pod annotation, the `app.kubernetes.io/name`
/// label, the workload, the container; else the name the segment already has (process name
/// or `--service-name`).
pub fn service_name(pod: &PodMeta, container_id: Option<&str>) -> Option<String> {
    pod.service_name_annotation
        .clone()
        .or_else(|| pod.app_name_label.clone())
        .or_else(|| pod.workload.as_ref().map(|(_, name)| name.clone()))
        .or_else(|| {
            container_id
                .and_then(|id| pod.container_name(id))
                .map(str::to_owned)
        })
}

fn pod_resource(pod: &PodMeta, container_id: Option<&str>) -> PodResource {
    PodResource {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        uid: pod.uid.clone(),
        container_id: container_id.map(str::to_owned),
        container: container_id
            .and_then(|id| pod.container_name(id))
            .map(str::to_owned),
        workload: pod.workload.clone(),
        labels: pod.labels.clone(),
        opted_out: pod.excluded,
    }
}

/// `AWS::EKS::Container` for a pod, else `AWS::EC2::Instance` on EC2, else none.
pub fn origin(resource: &Resource) -> &'static str {
    if resource.pod.is_some() {
        ORIGIN_EKS
    } else if resource.ec2.is_some() {
        ORIGIN_EC2
    } else {
        ""
    }
}

#[cfg(test)]
mod tests;
