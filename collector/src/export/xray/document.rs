//! X-Ray segment documents (devguide "segment documents"): the fields we fill, X-Ray's rules
//! for them (name characters and length, 250-character strings, ids), and the 64 kB limit —
//! a segment too large is split into independent subsegments.

use std::collections::BTreeMap;

use serde::Serialize;

/// A document may be at most 64 kB.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Other strings: at most 250 characters.
pub const MAX_STRING_CHARS: usize = 250;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Segment {
    pub name: String,
    pub id: String,
    /// Set on segments and on independent subsegments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    pub start_time: f64,
    pub end_time: f64,
    /// `"subsegment"` for a subsegment sent on its own.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(skip_serializing_if = "is_false")]
    pub error: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub throttle: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub fault: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsBlock>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsegments: Vec<Segment>,
}

/// The `aws` block: who made the segment (as the SDKs say it), and where it ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AwsBlock {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xray: Option<XrayBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eks: Option<EksBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Block>,
}

/// `aws.eks`, as the X-Ray SDKs' EKS plugin fills it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EksBlock {
    pub pod: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// `aws.ec2`, as the X-Ray SDKs' EC2 plugin fills it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ec2Block {
    pub instance_id: String,
    pub availability_zone: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XrayBlock {
    pub sdk: &'static str,
    pub sdk_version: &'static str,
    pub auto_instrumentation: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Http {
    pub request: HttpRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HttpResponse>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// Segments: client_ip came from X-Forwarded-For (not verified).
    #[serde(skip_serializing_if = "is_false")]
    pub x_forwarded_for: bool,
    /// Subsegments: the callee is traced (its segment names this subsegment its parent).
    #[serde(skip_serializing_if = "is_false")]
    pub traced: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpResponse {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// At most 250 characters.
pub fn bounded(s: &str) -> String {
    s.chars().take(MAX_STRING_CHARS).collect()
}

/// An annotation key X-Ray indexes: alphanumerics and `_` only.
pub fn annotation_key(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Epoch seconds with microseconds.
pub fn epoch_seconds(ns_since_epoch: f64) -> f64 {
    (ns_since_epoch * 1e6).round() / 1e6
}

impl Segment {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("segments always serialize")
    }

    /// The documents that carry this segment: itself, or — above 64 kB — itself with its
    /// subsegments moved out into independent subsegment documents.
    pub fn into_documents(mut self) -> Vec<String> {
        let whole = self.to_json();
        if whole.len() <= MAX_DOCUMENT_BYTES {
            return vec![whole];
        }
        let trace_id = self.trace_id.clone().unwrap_or_default();
        let mut docs = Vec::new();
        for mut sub in std::mem::take(&mut self.subsegments) {
            sub.kind = Some("subsegment");
            sub.trace_id = Some(trace_id.clone());
            sub.parent_id = Some(self.id.clone());
            docs.extend(sub.into_documents());
        }
        docs.insert(0, self.to_json());
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{
        ids::{is_span_id, is_trace_id, new_span_id, new_trace_id},
        span::{MAX_NAME_CHARS, sanitize_name},
    };

    fn segment(subsegments: usize) -> Segment {
        Segment {
            name: "svc".into(),
            id: new_span_id(),
            trace_id: Some(new_trace_id(0x6000_0000)),
            parent_id: None,
            start_time: 1_610_612_736.123456,
            end_time: 1_610_612_736.223456,
            kind: None,
            namespace: None,
            origin: None,
            http: Some(Http {
                request: HttpRequest {
                    method: "GET".into(),
                    url: bounded(&format!("http://b/{}", "x".repeat(400))),
                    user_agent: None,
                    client_ip: Some("127.0.0.1".into()),
                    x_forwarded_for: false,
                    traced: false,
                },
                response: Some(HttpResponse {
                    status: 200,
                    content_length: Some(3),
                }),
            }),
            error: false,
            throttle: false,
            fault: false,
            annotations: BTreeMap::new(),
            aws: None,
            subsegments: (0..subsegments)
                .map(|_| Segment {
                    name: "b".into(),
                    namespace: Some("remote"),
                    subsegments: vec![],
                    ..segment(0)
                })
                .collect(),
        }
    }

    #[test]
    fn a_segment_document_has_the_required_fields_in_x_ray_form() {
        let doc: serde_json::Value = serde_json::from_str(&segment(1).to_json()).unwrap();
        assert!(is_span_id(doc["id"].as_str().unwrap()));
        assert!(is_trace_id(doc["trace_id"].as_str().unwrap()));
        assert_eq!(doc["name"], "svc");
        assert!(doc["start_time"].is_f64() && doc["end_time"].is_f64());
        assert_eq!(doc["http"]["response"]["status"], 200);
        assert_eq!(doc["subsegments"][0]["namespace"], "remote");
        assert!(doc.get("in_progress").is_none());
        assert!(doc.get("error").is_none(), "false flags are left out");
        assert_eq!(
            doc["http"]["request"]["url"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            MAX_STRING_CHARS
        );
    }

    #[test]
    fn names_and_keys_follow_x_ray_rules() {
        assert_eq!(sanitize_name("python3"), "python3");
        assert_eq!(sanitize_name("my svc!(v2)"), "my svcv2");
        assert_eq!(sanitize_name("\u{1F600}"), "unknown");
        assert_eq!(sanitize_name(&"a".repeat(300)).len(), MAX_NAME_CHARS);
        assert_eq!(annotation_key("k8s.pod-name"), "k8s_pod_name");
        assert_eq!(epoch_seconds(1_610_612_736.1234567), 1_610_612_736.123457);
    }

    #[test]
    fn a_segment_over_64_kb_is_split_into_independent_subsegments() {
        let big = segment(400);
        let id = big.id.clone();
        let trace = big.trace_id.clone();
        assert!(big.to_json().len() > MAX_DOCUMENT_BYTES);
        let docs = big.into_documents();
        assert_eq!(docs.len(), 401);
        for d in &docs {
            assert!(d.len() <= MAX_DOCUMENT_BYTES);
        }
        let first: serde_json::Value = serde_json::from_str(&docs[0]).unwrap();
        assert!(first.get("subsegments").is_none());
        let sub: serde_json::Value = serde_json::from_str(&docs[1]).unwrap();
        assert_eq!(sub["type"], "subsegment");
        assert_eq!(sub["parent_id"], serde_json::Value::String(id));
        assert_eq!(sub["trace_id"].as_str(), trace.as_deref());

        assert_eq!(segment(3).into_documents().len(), 1);
    }
}
