//! Centralized sampling: the rules from GetSamplingRules (every 5 minutes) and this
//! collector's reservoir quotas from GetSamplingTargets (every 10 s, reporting what each rule
//! saw). Until the first rules arrive — or while X-Ray is unreachable — the default applies.
//! Rules the SDKs ignore are ignored too: a ResourceARN other than `*`, or attributes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_xray::{primitives::DateTime, types::SamplingStatisticsDocument};

use super::{
    SharedRules,
    rules::{Quota, Rule, RuleState},
};

const RULES_EVERY: Duration = Duration::from_secs(300);
const TARGETS_EVERY: Duration = Duration::from_secs(10);

pub fn spawn(client: aws_sdk_xray::Client, rules: SharedRules) {
    // 24 hex digits identifying this collector to X-Ray.
    let client_id = format!("{:024x}", rand::random::<u128>() >> 32);
    tokio::spawn(async move {
        let mut next_rules = tokio::time::Instant::now();
        let mut failures = 0u32;
        loop {
            if tokio::time::Instant::now() >= next_rules {
                match fetch_rules(&client).await {
                    Ok(fetched) => {
                        tracing::info!(rules = fetched.len(), "sampling rules from X-Ray");
                        replace(&rules, fetched);
                        next_rules += RULES_EVERY;
                        failures = 0;
                    }
                    Err(e) => {
                        if failures == 0 {
                            tracing::warn!(
                                "GetSamplingRules failed ({e}); sampling keeps its current rules and retries"
                            );
                        }
                        failures += 1;
                        next_rules = tokio::time::Instant::now() + TARGETS_EVERY;
                    }
                }
            }
            tokio::time::sleep(TARGETS_EVERY).await;
            if let Err(e) = report_and_get_targets(&client, &rules, &client_id).await {
                tracing::debug!("GetSamplingTargets failed: {e}");
            }
        }
    });
}

async fn fetch_rules(client: &aws_sdk_xray::Client) -> Result<Vec<Rule>, String> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .get_sampling_rules()
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| aws_sdk_xray::error::DisplayErrorContext(e).to_string())?;
        for record in page.sampling_rule_records() {
            let Some(r) = record.sampling_rule() else {
                continue;
            };
            if r.resource_arn() != "*"
                || r.attributes().is_some_and(|a| !a.is_empty())
                || r.version() != 1
            {
                continue;
            }
            out.push(Rule {
                name: r.rule_name().unwrap_or_default().to_owned(),
                priority: r.priority(),
                fixed_rate: r.fixed_rate().clamp(0.0, 1.0),
                reservoir_size: r.reservoir_size().max(0) as u64,
                service_name: r.service_name().to_owned(),
                service_type: r.service_type().to_owned(),
                host: r.host().to_owned(),
                http_method: r.http_method().to_owned(),
                url_path: r.url_path().to_owned(),
            });
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    out.sort_by_key(|r| r.priority);
    Ok(out)
}

/// New rules replace the old; a rule that stays keeps its quota.
fn replace(shared: &SharedRules, fetched: Vec<Rule>) {
    if fetched.is_empty() {
        return;
    }
    let mut rules = shared.lock().unwrap_or_else(|e| e.into_inner());
    let old: Vec<RuleState> = std::mem::take(&mut *rules);
    *rules = fetched
        .into_iter()
        .map(|rule| {
            let quota = old
                .iter()
                .find(|o| o.rule.name == rule.name && o.quota != Quota::Local)
                .map_or(Quota::Borrow, |o| o.quota);
            RuleState::new(rule, quota)
        })
        .collect();
}

async fn report_and_get_targets(
    client: &aws_sdk_xray::Client,
    shared: &SharedRules,
    client_id: &str,
) -> Result<(), String> {
    let now = SystemTime::now();
    let docs: Vec<SamplingStatisticsDocument> = {
        let mut rules = shared.lock().unwrap_or_else(|e| e.into_inner());
        rules
            .iter_mut()
            .filter(|r| r.quota != Quota::Local)
            .take(25)
            .filter_map(|r| {
                let (requests, sampled, borrowed) = r.take_statistics();
                SamplingStatisticsDocument::builder()
                    .rule_name(&r.rule.name)
                    .client_id(client_id)
                    .timestamp(DateTime::from(now))
                    .request_count(requests.min(i32::MAX as u64) as i32)
                    .sampled_count(sampled.min(i32::MAX as u64) as i32)
                    .borrow_count(borrowed.min(i32::MAX as u64) as i32)
                    .build()
                    .ok()
            })
            .collect()
    };
    if docs.is_empty() {
        return Ok(());
    }
    let out = client
        .get_sampling_targets()
        .set_sampling_statistics_documents(Some(docs))
        .send()
        .await
        .map_err(|e| aws_sdk_xray::error::DisplayErrorContext(e).to_string())?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut rules = shared.lock().unwrap_or_else(|e| e.into_inner());
    for target in out.sampling_target_documents() {
        let Some(rule) = rules
            .iter_mut()
            .find(|r| Some(r.rule.name.as_str()) == target.rule_name())
        else {
            continue;
        };
        rule.rule.fixed_rate = target.fixed_rate().clamp(0.0, 1.0);
        if let Some(quota) = target.reservoir_quota() {
            let until = target
                .reservoir_quota_ttl()
                .map_or(now_secs + 60, |t| t.secs().max(0) as u64);
            rule.quota = Quota::Assigned {
                per_second: quota.max(0) as u64,
                until,
            };
        }
    }
    Ok(())
}
