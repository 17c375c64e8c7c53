//! Incoming trace context: `X-Amzn-Trace-Id` (Root, Parent, Sampled; Lineage and unknown
//! keys passed through) and W3C `traceparent`, mapped to X-Ray ids.

use super::ids::{is_span_id, is_trace_id};

/// A W3C trace id maps to X-Ray only when its first 8 hex, as epoch seconds, lie within the
/// last 28 days and at most 5 minutes ahead (the OpenTelemetry X-Ray exporter's rule).
const MAX_AGE_SECS: u64 = 28 * 24 * 3600;
const MAX_SKEW_SECS: u64 = 5 * 60;

/// Trace context a request arrived with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: Option<String>,
    pub parent_id: Option<String>,
    /// `Some(false)` for Sampled=0 (not exported); `None` when undecided (`?` or absent).
    pub sampled: Option<bool>,
    /// Passed through untouched.
    pub lineage: Option<String>,
    /// A `traceparent` that could not become an X-Ray id, kept as an annotation.
    pub rejected_traceparent: Option<String>,
}

/// `Root=1-…;Parent=…;Sampled=1` — keys case-insensitive, whitespace tolerated.
pub fn parse_amzn(value: &str) -> Incoming {
    let mut out = Incoming::default();
    for part in value.split(';') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("root") && is_trace_id(v) {
            out.trace_id = Some(v.to_owned());
        } else if k.eq_ignore_ascii_case("parent") && is_span_id(v) {
            out.parent_id = Some(v.to_owned());
        } else if k.eq_ignore_ascii_case("sampled") {
            out.sampled = match v {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            };
        } else if k.eq_ignore_ascii_case("lineage") {
            out.lineage = Some(v.to_owned());
        }
    }
    out
}

/// `00-<32 hex trace>-<16 hex parent>-<2 hex flags>`.
pub fn parse_traceparent(value: &str, now_secs: u64) -> Incoming {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let valid = parts.len() >= 4
        && parts[0].len() == 2
        && parts[0] != "ff"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts[1..4].iter().all(|p| {
            p.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16);
    if !valid {
        return Incoming {
            rejected_traceparent: Some(value.to_owned()),
            ..Incoming::default()
        };
    }
    let epoch = u64::from_str_radix(&parts[1][..8], 16).unwrap_or(0);
    let recent = epoch + MAX_AGE_SECS >= now_secs && epoch <= now_secs + MAX_SKEW_SECS;
    if !recent {
        return Incoming {
            rejected_traceparent: Some(value.to_owned()),
            ..Incoming::default()
        };
    }
    let flags = u8::from_str_radix(parts[3], 16).unwrap_or(0);
    Incoming {
        trace_id: Some(format!("1-{}-{}", &parts[1][..8], &parts[1][8..])),
        parent_id: Some(parts[2].to_owned()),
        sampled: Some(flags & 1 == 1),
        lineage: None,
        rejected_traceparent: None,
    }
}

/// X-Amzn-Trace-Id wins; else traceparent; else nothing.
pub fn incoming(amzn: Option<&str>, traceparent: Option<&str>, now_secs: u64) -> Incoming {
    if let Some(h) = amzn.map(parse_amzn)
        && h.trace_id.is_some()
    {
        return h;
    }
    match traceparent {
        Some(tp) => parse_traceparent(tp, now_secs),
        None => Incoming::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 0x6000_0000;

    #[test]
    fn an_amzn_header_gives_root_parent_sampled_and_lineage() {
        let h = parse_amzn(
            "Root=1-5759e988-bd862e3fe1be46a994272793; parent=53995c3f42cd8ad8;Sampled=0;Lineage=a87bd80c:1|68fd508a:5;Self=x",
        );
        assert_eq!(
            h.trace_id.as_deref(),
            Some("1-5759e988-bd862e3fe1be46a994272793")
        );
        assert_eq!(h.parent_id.as_deref(), Some("53995c3f42cd8ad8"));
        assert_eq!(h.sampled, Some(false));
        assert_eq!(h.lineage.as_deref(), Some("a87bd80c:1|68fd508a:5"));
        assert_eq!(
            parse_amzn("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=?").sampled,
            None
        );
        assert_eq!(parse_amzn("Root=garbage").trace_id, None);
    }

    #[test]
    fn a_recent_traceparent_maps_to_an_x_ray_id() {
        let tp = format!(
            "00-{:08x}1e8720b39541901950019ee5-53995c3f42cd8ad8-01",
            NOW - 3600
        );
        let h = parse_traceparent(&tp, NOW);
        assert_eq!(
            h.trace_id,
            Some(format!("1-{:08x}-1e8720b39541901950019ee5", NOW - 3600))
        );
        assert_eq!(h.parent_id.as_deref(), Some("53995c3f42cd8ad8"));
        assert_eq!(h.sampled, Some(true));
    }

    #[test]
    fn an_old_future_or_malformed_traceparent_is_kept_aside() {
        for epoch in [NOW - 29 * 24 * 3600, NOW + 6 * 60] {
            let tp = format!("00-{epoch:08x}1e8720b39541901950019ee5-53995c3f42cd8ad8-00");
            let h = parse_traceparent(&tp, NOW);
            assert_eq!(h.trace_id, None);
            assert_eq!(h.rejected_traceparent, Some(tp));
        }
        assert_eq!(
            parse_traceparent("00-xyz", NOW)
                .rejected_traceparent
                .as_deref(),
            Some("00-xyz")
        );
        // Random W3C ids (a random first word) are the common case of "not an epoch".
        let random = "00-4efaaf4d1e8720b39541901950019ee5-53995c3f42cd8ad8-01";
        assert_eq!(parse_traceparent(random, NOW).trace_id, None);
    }

    #[test]
    fn the_amzn_header_wins_over_traceparent() {
        let tp = format!("00-{NOW:08x}1e8720b39541901950019ee5-53995c3f42cd8ad8-01");
        let h = incoming(
            Some("Root=1-5759e988-bd862e3fe1be46a994272793"),
            Some(&tp),
            NOW,
        );
        assert_eq!(
            h.trace_id.as_deref(),
            Some("1-5759e988-bd862e3fe1be46a994272793")
        );
        assert_eq!(
            incoming(None, Some(&tp), NOW).parent_id.as_deref(),
            Some("53995c3f42cd8ad8")
        );
        assert_eq!(incoming(None, None, NOW), Incoming::default());
    }
}
