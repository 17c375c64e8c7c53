//! Stage 6, with sampling: what not to trace. Process-name exclusion and the collector's own
//! traffic are filtered in the kernel; Kubernetes health checks (`User-Agent: kube-probe/…`)
//! as soon as an exchange is parsed; the rest per span group once enrichment has found its
//! pod (`Selection`). Defaults drop health checks and pods that opt out by annotation, and
//! the spans of processes that send their own X-Ray SDK segments (the SDK's win).

use std::{collections::BTreeMap, str::FromStr};

use crate::{
    counters::counters,
    enrich::sdk_senders::SdkSenders,
    http::HttpOut,
    trace::{SpanGroup, span::GroupStage},
};

/// A Kubernetes label selector: comma-separated requirements `k=v`, `k==v`, `k!=v`, `k`,
/// `!k`, `k in (a,b)`, `k notin (a,b)` (the syntax of `kubectl -l`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut reqs = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        for part in parts.into_iter().map(str::trim) {
            let bad = || format!("label selector {s:?}: cannot parse {part:?}");
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(valid_key(key.trim()).ok_or_else(bad)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotIn(valid_key(k.trim()).ok_or_else(bad)?, vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::In(valid_key(k.trim()).ok_or_else(bad)?, vec![v.trim().into()])
            } else if let Some((k, set)) = split_set(part, " notin ") {
                Requirement::NotIn(valid_key(k).ok_or_else(bad)?, set.ok_or_else(bad)?)
            } else if let Some((k, set)) = split_set(part, " in ") {
                Requirement::In(valid_key(k).ok_or_else(bad)?, set.ok_or_else(bad)?)
            } else {
                Requirement::Exists(valid_key(part).ok_or_else(bad)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }
}

fn valid_key(k: &str) -> Option<String> {
    (!k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)))
    .then(|| k.to_owned())
}

fn split_set<'a>(part: &'a str, op: &str) -> Option<(&'a str, Option<Vec<String>>)> {
    let (k, rest) = part.split_once(op)?;
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')');
    Some((
        k.trim(),
        inner.map(|i| i.split(',').map(|v| v.trim().to_owned()).collect()),
    ))
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// The operator's filters.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub include_pod_labels: Option<Selector>,
    pub exclude_pod_labels: Option<Selector>,
    pub include_processes: Vec<String>,
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    pub trace_kube_probes: bool,
}

/// Why a span group was filtered out (each counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    Port,
    Process,
    Namespace,
    PodLabels,
    OptedOut,
}

/// What a decision looks at.
pub struct Subject<'a> {
    pub port: u16,
    pub process: &'a str,
    /// (namespace, labels, opted out) of the pod, when the process runs in a known pod.
    pub pod: Option<(&'a str, &'a BTreeMap<String, String>, bool)>,
}

impl Filters {
    /// Exchanges dropped as soon as they are parsed, on both ends (the kubelet's client side
    /// is traced too): Kubernetes health checks.
    pub fn drops_request(&self, user_agent: Option<&str>) -> bool {
        !self.trace_kube_probes && user_agent.is_some_and(|ua| ua.starts_with("kube-probe/"))
    }

    pub fn decide(&self, s: &Subject<'_>) -> Result<(), Dropped> {
        if s.port != 0 && self.exclude_ports.contains(&s.port) {
            return Err(Dropped::Port);
        }
        if !self.include_ports.is_empty() && !self.include_ports.contains(&s.port) {
            return Err(Dropped::Port);
        }
        if !self.include_processes.is_empty()
            && !self.include_processes.iter().any(|p| p == s.process)
        {
            return Err(Dropped::Process);
        }
        let namespace = s.pod.map(|(ns, _, _)| ns);
        if !self.include_namespaces.is_empty()
            && !namespace.is_some_and(|ns| self.include_namespaces.iter().any(|n| n == ns))
        {
            return Err(Dropped::Namespace);
        }
        if namespace.is_some_and(|ns| self.exclude_namespaces.iter().any(|n| n == ns)) {
            return Err(Dropped::Namespace);
        }
        let empty = BTreeMap::new();
        let labels = s.pod.map_or(&empty, |(_, l, _)| l);
        if let Some(sel) = &self.include_pod_labels
            && (s.pod.is_none() || !sel.matches(labels))
        {
            return Err(Dropped::PodLabels);
        }
        if let Some(sel) = &self.exclude_pod_labels
            && s.pod.is_some()
            && sel.matches(labels)
        {
            return Err(Dropped::PodLabels);
        }
        if s.pod.is_some_and(|(_, _, opted_out)| opted_out) {
            return Err(Dropped::OptedOut);
        }
        Ok(())
    }
}

counters! {
    /// Exchanges dropped as they were parsed.
    pub struct ProbeStats("filter") {
        /// Kubernetes health checks.
        pub dropped_kube_probe,
    }
}

/// Health checks leave before the trace stage: they would be most of a quiet service's spans.
pub struct HealthChecks {
    filters: Filters,
    pub stats: ProbeStats,
}

impl HealthChecks {
    pub fn new(filters: Filters) -> Self {
        Self {
            filters,
            stats: ProbeStats::default(),
        }
    }

    /// Whether an exchange of the HTTP stage goes on to the trace stage (health checks do
    /// not, unless asked for).
    pub fn keep_exchange(&mut self, event: &HttpOut) -> bool {
        let request = match event {
            HttpOut::Started { start, .. } => &start.request,
            HttpOut::Done(e) => &e.exchange.request,
        };
        if self.filters.drops_request(request.user_agent.as_deref()) {
            if matches!(event, HttpOut::Done(_)) {
                self.stats.dropped_kube_probe += 1;
            }
            return false;
        }
        true
    }
}

counters! {
    /// What the filters dropped, by reason (span groups).
    pub struct FilterStats("filter") {
        pub dropped_port,
        pub dropped_process,
        pub dropped_namespace,
        pub dropped_pod_labels,
        /// Their pod opts out (`xray-collector.io/exclude: "true"`).
        pub excluded_by_annotation,
        /// Their process sends its own SDK segments.
        pub dropped_sdk_duplicate,
    }
}

/// The filters applied to exchanges and span groups.
pub struct Selection {
    filters: Filters,
    sdk_senders: SdkSenders,
    pub stats: FilterStats,
}

impl Selection {
    pub fn new(filters: Filters, sdk_senders: SdkSenders) -> Self {
        Self {
            filters,
            sdk_senders,
            stats: FilterStats::default(),
        }
    }

    /// Whether an enriched group goes out; calls to excluded ports leave their group.
    pub fn keep(&mut self, group: &mut SpanGroup) -> bool {
        if group.pid == 0 {
            return true;
        }
        let pod = group.resource.pod.as_ref();
        let instrumented = self.sdk_senders.is_instrumented(
            group.pid,
            pod.map(|p| p.uid.as_str()),
            std::time::Instant::now(),
        );
        if instrumented {
            self.stats.dropped_sdk_duplicate += 1;
            return false;
        }
        let subject = Subject {
            port: group.first().port,
            process: &group.process,
            pod: pod.map(|p| (p.namespace.as_str(), &*p.labels, p.opted_out)),
        };
        if let Err(reason) = self.filters.decide(&subject) {
            *match reason {
                Dropped::Port => &mut self.stats.dropped_port,
                Dropped::Process => &mut self.stats.dropped_process,
                Dropped::Namespace => &mut self.stats.dropped_namespace,
                Dropped::PodLabels => &mut self.stats.dropped_pod_labels,
                Dropped::OptedOut => &mut self.stats.excluded_by_annotation,
            } += 1;
            return false;
        }
        let ports = &self.filters.exclude_ports;
        if !ports.is_empty() && group.spans.len() > 1 {
            let mut first = true;
            group
                .spans
                .retain(|s| std::mem::take(&mut first) || !ports.contains(&s.port));
        }
        true
    }
}

impl GroupStage for Selection {
    fn process(&mut self, groups: &mut Vec<SpanGroup>, _wall_secs: u64) {
        groups.retain_mut(|g| self.keep(g));
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats.pairs()
    }
}

#[cfg(test)]
mod tests;
