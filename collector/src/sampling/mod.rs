//! Sampling of the traces the collector makes (SDK segments arrive already sampled by their
//! SDK). One decision per trace, made when its first segment is ready, on the trace root's
//! service, origin, host, method and path, and followed by every segment of that trace; an
//! incoming `Sampled=1` (or `0`, which the trace stage already honours) wins. Rules come from
//! a local file in the SDKs' format, or from X-Ray (`poller.rs`); without either, the SDKs'
//! default: one request per second, then 5 %.

pub mod poller;
pub mod rules;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use rules::{Quota, Request, Rule, RuleState};

use crate::counters::counters;
use crate::trace::span::{GroupStage, SpanGroup, TraceRoot};

/// The rules in priority order, shared with the poller that refreshes them.
pub type SharedRules = Arc<Mutex<Vec<RuleState>>>;

counters! {
    pub struct SamplingStats("sampling") {
        pub traces_sampled,
        pub traces_not_sampled,
        pub traces_forced,
        pub segments_dropped,
        /// Rules in effect that came from X-Ray (a level: 0 until the first GetSamplingRules).
        pub rules_from_xray,
    }
}

/// Decisions remembered at once (traces whose segments may still come).
const MAX_DECISIONS: usize = 200_000;

pub struct Sampler {
    rules: SharedRules,
    decisions: HashMap<String, bool>,
    order: VecDeque<String>,
    stats: SamplingStats,
}

/// The SDKs' default: 1 request/s, then 5 %.
pub fn default_rules() -> Vec<RuleState> {
    vec![RuleState::new(
        Rule::catch_all("Default", 1, 0.05),
        Quota::Local,
    )]
}

impl Sampler {
    pub fn new(rules: SharedRules) -> Self {
        Self {
            rules,
            decisions: HashMap::new(),
            order: VecDeque::new(),
            stats: SamplingStats::default(),
        }
    }

    /// Local rules (a file), or the default until X-Ray's arrive.
    pub fn with_rules(rules: Vec<Rule>) -> Self {
        Self::new(Arc::new(Mutex::new(
            rules
                .into_iter()
                .map(|r| RuleState::new(r, Quota::Local))
                .collect(),
        )))
    }

    pub fn stats(&self) -> SamplingStats {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let from_xray = rules.iter().filter(|r| r.quota != Quota::Local).count();
        SamplingStats {
            rules_from_xray: from_xray as u64,
            ..self.stats
        }
    }

    /// Whether a group is kept: on its trace's root request and the root's service as
    /// enrichment named it (else the group's own service).
    pub fn keep_group(&mut self, group: &SpanGroup, now_secs: u64) -> bool {
        let (name, origin) = match &group.root_service {
            Some(r) => (r.name.as_str(), r.origin),
            None => (group.service.as_str(), ""),
        };
        self.keep(group.trace_id(), &group.root, name, origin, now_secs)
    }

    /// Whether a group of `trace_id` is kept. The first group of a trace decides for all.
    pub fn keep(
        &mut self,
        trace_id: &str,
        root: &TraceRoot,
        service_name: &str,
        service_type: &str,
        now_secs: u64,
    ) -> bool {
        if let Some(&d) = self.decisions.get(trace_id) {
            if !d {
                self.stats.segments_dropped += 1;
            }
            return d;
        }
        let decision = match root.forced {
            Some(d) => {
                self.stats.traces_forced += 1;
                d
            }
            None => {
                let request = Request {
                    service_name,
                    service_type,
                    host: &root.host,
                    method: &root.method,
                    url_path: &root.path,
                };
                let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
                match rules.iter_mut().find(|r| r.rule.matches(&request)) {
                    Some(rule) => rule.decide(now_secs, rand::random::<f64>()),
                    None => false,
                }
            }
        };
        if decision {
            self.stats.traces_sampled += 1;
        } else {
            self.stats.traces_not_sampled += 1;
            self.stats.segments_dropped += 1;
        }
        if self.order.len() >= MAX_DECISIONS
            && let Some(old) = self.order.pop_front()
        {
            self.decisions.remove(&old);
        }
        self.order.push_back(trace_id.to_owned());
        self.decisions.insert(trace_id.to_owned(), decision);
        decision
    }
}

impl GroupStage for Sampler {
    fn process(&mut self, groups: &mut Vec<SpanGroup>, wall_secs: u64) {
        groups.retain(|g| self.keep_group(g, wall_secs));
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats().pairs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(forced: Option<bool>) -> TraceRoot {
        TraceRoot {
            pid: 1,
            host: "h".into(),
            method: "GET".into(),
            path: "/x".into(),
            forced,
        }
    }

    #[test]
    fn one_decision_per_trace_followed_by_all_its_segments() {
        let mut s = Sampler::with_rules(vec![Rule::catch_all("d", 1, 0.0)]);
        assert!(
            s.keep("t1", &root(None), "svc", "", 5),
            "the reservoir's one"
        );
        assert!(!s.keep("t2", &root(None), "svc", "", 5));
        // Later segments of each trace follow the first decision.
        assert!(s.keep("t1", &root(None), "svc", "", 5));
        assert!(
            !s.keep("t2", &root(None), "svc", "", 6),
            "t2 stays out in a new second"
        );
        // The caller's decision wins.
        assert!(s.keep("t3", &root(Some(true)), "svc", "", 5));
        assert_eq!(
            s.stats,
            SamplingStats {
                traces_sampled: 2,
                traces_not_sampled: 1,
                traces_forced: 1,
                segments_dropped: 2,
                rules_from_xray: 0,
            }
        );
    }

    #[test]
    fn the_first_matching_rule_by_priority_decides() {
        let mut health = Rule::catch_all("health", 0, 0.0);
        health.priority = 1;
        health.url_path = "/health*".into();
        let mut s = Sampler::with_rules(vec![health, Rule::catch_all("all", 0, 1.0)]);
        let mut r = root(None);
        r.path = "/healthz".into();
        assert!(!s.keep("a", &r, "svc", "", 1));
        r.path = "/orders".into();
        assert!(s.keep("b", &r, "svc", "", 1));
    }
}
