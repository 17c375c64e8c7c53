//! Stage 5, enrichment: segments learn which pod, container, workload and node served them
//! (pid → cgroup → container id → pod), and where the node runs (EC2).
//!
//! Everything here is a pure function of the pod index and of `/proc` text; the Kubernetes
//! watch (`kube_watch`) and the instance metadata query (`ec2`) only fill the shared state.

pub mod cgroup;
pub mod ec2;
pub mod kube_watch;
pub mod pods;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use crate::{
    filter::{Dropped, Filters, Subject},
    http::HttpOut,
};
use cgroup::{CgroupIdentity, parse_proc_cgroup};

use crate::relay::senders::SdkSenders;
use pods::{PodIndex, PodMeta};

use crate::trace::{
    document::{AwsBlock, Ec2Block, EksBlock, Segment, annotation_key, bounded, sanitize_name},
    process::proc_file,
};

/// `origin` of segments served by a pod (as the X-Ray SDKs' EKS plugin sets it).
pub const ORIGIN_EKS: &str = "AWS::EKS::Container";
/// `origin` of segments served on an EC2 instance outside Kubernetes.
pub const ORIGIN_EC2: &str = "AWS::EC2::Instance";

/// Where the node runs, learned once from the instance metadata service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ec2Meta {
    pub instance_id: String,
    pub availability_zone: String,
}

/// State shared with the background tasks that fill it.
#[derive(Clone, Default)]
pub struct SharedMeta {
    pub pods: Arc<Mutex<PodIndex>>,
    pub ec2: Arc<RwLock<Option<Ec2Meta>>>,
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
    pub filters: Filters,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrichStats {
    /// Segments whose process was mapped to a pod.
    pub with_pod: u64,
    /// Segments of a process in a container whose pod is not (yet) known.
    pub container_without_pod: u64,
    /// Segments of processes outside containers.
    pub host_processes: u64,
    /// Segments dropped: their pod opts out (`xray-collector.io/exclude: "true"`).
    pub excluded_by_annotation: u64,
    /// Segments dropped because their process sends its own SDK segments (the SDK wins).
    pub dropped_sdk_duplicate: u64,
    /// Segments dropped by the filters, by reason.
    pub dropped_kube_probe: u64,
    pub dropped_port: u64,
    pub dropped_process: u64,
    pub dropped_namespace: u64,
    pub dropped_pod_labels: u64,
    /// pid cache entries evicted because the process exited.
    pub pids_evicted: u64,
    /// pid cache cleared because it was full.
    pub pid_cache_resets: u64,
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

    /// Adds what is known of the segment's process; false when the segment must be dropped
    /// (filtered out, or its pod opted out). Subsegments sent on their own keep their names:
    /// they are calls, named after the host called.
    pub fn enrich(&mut self, segment: &mut Segment) -> bool {
        if segment.pid == 0 {
            return true;
        }
        let (identity, process) = self.identity(segment.pid);
        let pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        let pod = pods.find(
            identity.container_id.as_deref(),
            identity.pod_uid.as_deref(),
        );
        let subject = Subject {
            port: segment.port,
            process: &process,
            pod: pod.map(|p| (p.namespace.as_str(), &p.labels, p.excluded)),
        };
        let instrumented = self.shared.sdk_senders.is_instrumented(
            segment.pid,
            pod.map(|p| p.uid.as_str()),
            std::time::Instant::now(),
        );
        if instrumented {
            self.stats.dropped_sdk_duplicate += 1;
            return false;
        }
        if let Err(reason) = self.config.filters.decide(&subject) {
            let counter = match reason {
                Dropped::Port => &mut self.stats.dropped_port,
                Dropped::Process => &mut self.stats.dropped_process,
                Dropped::Namespace => &mut self.stats.dropped_namespace,
                Dropped::PodLabels => &mut self.stats.dropped_pod_labels,
                Dropped::OptedOut => &mut self.stats.excluded_by_annotation,
            };
            *counter += 1;
            return false;
        }
        let ports = &self.config.filters.exclude_ports;
        if !ports.is_empty() {
            segment.subsegments.retain(|s| !ports.contains(&s.port));
        }
        if segment.kind.is_some() {
            return true;
        }
        match pod {
            Some(pod) => {
                self.stats.with_pod += 1;
                apply_pod(segment, pod, identity.container_id.as_deref(), &self.config);
            }
            None if identity.container_id.is_some() || identity.pod_uid.is_some() => {
                self.stats.container_without_pod += 1;
            }
            None => self.stats.host_processes += 1,
        }
        drop(pods);
        if let Some(ec2) = self
            .shared
            .ec2
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let aws = segment.aws.get_or_insert_with(AwsBlock::default);
            aws.ec2 = Some(Ec2Block {
                instance_id: bounded(&ec2.instance_id),
                availability_zone: bounded(&ec2.availability_zone),
            });
            segment.origin.get_or_insert_with(|| ORIGIN_EC2.to_owned());
        }
        true
    }

    /// The service name and origin segments of this process get (for sampling rules).
    pub fn service_of(&mut self, pid: u32) -> (String, &'static str) {
        let (identity, process) = self.identity(pid);
        let pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        match pods.find(
            identity.container_id.as_deref(),
            identity.pod_uid.as_deref(),
        ) {
            Some(pod) => (
                sanitize_name(
                    &service_name(pod, identity.container_id.as_deref()).unwrap_or(process),
                ),
                ORIGIN_EKS,
            ),
            None => (sanitize_name(&process), ""),
        }
    }

    /// Whether an exchange of the HTTP stage goes on to the trace stage (health checks do
    /// not, unless asked for).
    pub fn keep(&mut self, event: &HttpOut) -> bool {
        let request = match event {
            HttpOut::Started { start, .. } => &start.request,
            HttpOut::Done(e) => &e.exchange.request,
        };
        if self
            .config
            .filters
            .drops_request(request.user_agent.as_deref())
        {
            if matches!(event, HttpOut::Done(_)) {
                self.stats.dropped_kube_probe += 1;
            }
            return false;
        }
        true
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

fn apply_pod(
    segment: &mut Segment,
    pod: &PodMeta,
    container_id: Option<&str>,
    config: &EnrichConfig,
) {
    if let Some(name) = service_name(pod, container_id) {
        segment.name = sanitize_name(&name);
    }
    segment.origin = Some(ORIGIN_EKS.to_owned());
    let aws = segment.aws.get_or_insert_with(AwsBlock::default);
    aws.eks = Some(EksBlock {
        pod: bounded(&pod.name),
        cluster_name: config.cluster_name.as_deref().map(bounded),
        container_id: container_id.map(bounded),
    });
    let container = container_id.and_then(|id| pod.container_name(id));
    let node = Some(pod.node.as_str())
        .filter(|n| !n.is_empty())
        .or(config.node_name.as_deref());
    let mut annotate = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            segment
                .annotations
                .insert(annotation_key(key), bounded(v).into());
        }
    };
    annotate("k8s_namespace", Some(&pod.namespace));
    annotate("k8s_pod", Some(&pod.name));
    annotate("k8s_container", container);
    annotate(
        "k8s_workload",
        pod.workload.as_ref().map(|(_, n)| n.as_str()),
    );
    annotate(
        "k8s_workload_kind",
        pod.workload.as_ref().map(|(k, _)| k.as_str()),
    );
    annotate("k8s_node", node);
}

#[cfg(test)]
mod tests;
