//! X-Ray sampling rules and their arithmetic: first match by priority on service name, service
//! type (origin), host, HTTP method and URL path (wildcards `*` and `?`, case-insensitive);
//! then the rule's reservoir (requests per second that are always sampled) and its fixed rate
//! for the rest. Centralized rules get their reservoir share from GetSamplingTargets (a quota
//! with a TTL); until then the SDKs' behaviour: borrow one request per second, then the rate.

/// What a root request is matched on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request<'a> {
    pub service_name: &'a str,
    pub service_type: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub url_path: &'a str,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub priority: i32,
    pub fixed_rate: f64,
    /// Requests per second always sampled. For centralized rules this is the size shared by
    /// every client; each gets its quota from GetSamplingTargets.
    pub reservoir_size: u64,
    pub service_name: String,
    pub service_type: String,
    pub host: String,
    pub http_method: String,
    pub url_path: String,
}

impl Rule {
    /// A rule matching everything (the default rule's shape).
    pub fn catch_all(name: &str, reservoir_size: u64, fixed_rate: f64) -> Self {
        Self {
            name: name.to_owned(),
            priority: 10_000,
            fixed_rate,
            reservoir_size,
            service_name: "*".into(),
            service_type: "*".into(),
            host: "*".into(),
            http_method: "*".into(),
            url_path: "*".into(),
        }
    }

    pub fn matches(&self, r: &Request<'_>) -> bool {
        wildcard(&self.service_name, r.service_name)
            && wildcard(&self.service_type, r.service_type)
            && wildcard(&self.host, r.host)
            && wildcard(&self.http_method, r.method)
            && wildcard(&self.url_path, r.url_path)
    }
}

/// `*` any run of characters, `?` one character; case-insensitive.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// How a rule's reservoir is filled this second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Quota {
    /// Local rules: the whole reservoir is ours.
    Local,
    /// Centralized, before any target: one request per second is borrowed.
    Borrow,
    /// Centralized, from GetSamplingTargets: our share until the TTL (epoch seconds).
    Assigned { per_second: u64, until: u64 },
}

/// A rule with its reservoir, and the statistics GetSamplingTargets reports.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleState {
    pub rule: Rule,
    pub quota: Quota,
    second: u64,
    used_this_second: u64,
    pub requests: u64,
    pub sampled: u64,
    pub borrowed: u64,
}

impl RuleState {
    pub fn new(rule: Rule, quota: Quota) -> Self {
        Self {
            rule,
            quota,
            second: 0,
            used_this_second: 0,
            requests: 0,
            sampled: 0,
            borrowed: 0,
        }
    }

    /// The decision for one request at `now_secs`; `random` in [0, 1).
    pub fn decide(&mut self, now_secs: u64, random: f64) -> bool {
        self.requests += 1;
        if self.second != now_secs {
            self.second = now_secs;
            self.used_this_second = 0;
        }
        let (per_second, borrowing) = match self.quota {
            Quota::Local => (self.rule.reservoir_size, false),
            Quota::Assigned { per_second, until } if now_secs < until => (per_second, false),
            // No quota yet, or it expired: borrow one a second, as the SDKs do.
            _ => (u64::from(self.rule.reservoir_size > 0), true),
        };
        if self.used_this_second < per_second {
            self.used_this_second += 1;
            self.sampled += 1;
            if borrowing {
                self.borrowed += 1;
            }
            return true;
        }
        if random < self.rule.fixed_rate {
            self.sampled += 1;
            return true;
        }
        false
    }

    /// Statistics since the last report (GetSamplingTargets), resetting them.
    pub fn take_statistics(&mut self) -> (u64, u64, u64) {
        (
            std::mem::take(&mut self.requests),
            std::mem::take(&mut self.sampled),
            std::mem::take(&mut self.borrowed),
        )
    }
}

/// The SDKs' local rules file (version 2): `rules` (host, http_method, url_path, fixed_target,
/// rate; optionally service_name) and `default` (fixed_target, rate).
pub fn parse_local(json: &str) -> Result<Vec<Rule>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    if v["version"] != 2 {
        return Err("`version` must be 2 (the X-Ray SDKs' local rules format)".into());
    }
    let num = |r: &serde_json::Value, k: &str| -> Result<f64, String> {
        r[k].as_f64()
            .ok_or_else(|| format!("`{k}` must be a number"))
    };
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("*").to_owned();
    let rate = |r: &serde_json::Value| -> Result<f64, String> {
        let x = num(r, "rate")?;
        (0.0..=1.0)
            .contains(&x)
            .then_some(x)
            .ok_or_else(|| format!("`rate` {x} is not between 0 and 1"))
    };
    let target = |r: &serde_json::Value| -> Result<u64, String> {
        let x = num(r, "fixed_target")?;
        (x >= 0.0 && x.fract() == 0.0)
            .then_some(x as u64)
            .ok_or_else(|| format!("`fixed_target` {x} is not a whole number ≥ 0"))
    };
    let mut rules = Vec::new();
    for (i, r) in v["rules"].as_array().into_iter().flatten().enumerate() {
        rules.push(Rule {
            name: format!("local-{}", i + 1),
            priority: i as i32 + 1,
            fixed_rate: rate(r).map_err(|e| format!("rules[{i}]: {e}"))?,
            reservoir_size: target(r).map_err(|e| format!("rules[{i}]: {e}"))?,
            service_name: text(r, "service_name"),
            service_type: "*".into(),
            host: text(r, "host"),
            http_method: text(r, "http_method"),
            url_path: text(r, "url_path"),
        });
    }
    let d = &v["default"];
    if d.is_null() {
        return Err("`default` is required".into());
    }
    rules.push(Rule::catch_all(
        "local-default",
        target(d).map_err(|e| format!("default: {e}"))?,
        rate(d).map_err(|e| format!("default: {e}"))?,
    ));
    Ok(rules)
}

#[cfg(test)]
mod tests;
