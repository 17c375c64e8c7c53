//! One X-Ray daemon datagram: the header `{"format":"json","version":1}`, a newline, and one
//! segment (or independent subsegment) document. The daemon forwards the body unparsed; we
//! check that it is a JSON object with the fields X-Ray requires, so garbage never reaches
//! the upload queue, and read the few fields sampling and de-duplication use.

use serde::Deserialize;

/// The IPv4 UDP payload limit.
pub const MAX_DATAGRAM: usize = 65_507;

/// Why a datagram was dropped (each counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    Empty,
    NoHeader,
    BadHeader,
    NotJson,
    MissingField,
    TooLarge,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Reject::Empty,
        Reject::NoHeader,
        Reject::BadHeader,
        Reject::NotJson,
        Reject::MissingField,
        Reject::TooLarge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reject::Empty => "empty",
            Reject::NoHeader => "no_header",
            Reject::BadHeader => "bad_header",
            Reject::NotJson => "not_json",
            Reject::MissingField => "missing_field",
            Reject::TooLarge => "too_large",
        }
    }
}

/// An accepted document.
#[derive(Debug, PartialEq, Eq)]
pub struct SdkDocument<'a> {
    /// The body, forwarded unchanged.
    pub body: &'a str,
    pub trace_id: String,
    pub id: String,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    format: std::borrow::Cow<'a, str>,
    version: i64,
}

#[derive(Deserialize)]
struct Body {
    trace_id: Option<String>,
    id: Option<String>,
    name: Option<String>,
    start_time: Option<f64>,
}

pub fn parse(datagram: &[u8]) -> Result<SdkDocument<'_>, Reject> {
    if datagram.is_empty() {
        return Err(Reject::Empty);
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::TooLarge);
    }
    let newline = datagram
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(Reject::NoHeader)?;
    let header: Header<'_> =
        serde_json::from_slice(&datagram[..newline]).map_err(|_| Reject::NoHeader)?;
    if !header.format.eq_ignore_ascii_case("json") || header.version != 1 {
        return Err(Reject::BadHeader);
    }
    let body = std::str::from_utf8(&datagram[newline + 1..]).map_err(|_| Reject::NotJson)?;
    let parsed: Body = serde_json::from_str(body).map_err(|_| Reject::NotJson)?;
    // Segments and independent subsegments (`"type": "subsegment"`) both carry these.
    match parsed {
        Body {
            trace_id: Some(trace_id),
            id: Some(id),
            name: Some(_),
            start_time: Some(_),
            ..
        } if !trace_id.is_empty() && !id.is_empty() => Ok(SdkDocument {
            body: body.trim_end(),
            trace_id,
            id,
        }),
        _ => Err(Reject::MissingField),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "{\"format\": \"json\", \"version\": 1}\n";

    fn doc(body: &str) -> Vec<u8> {
        format!("{HEADER}{body}").into_bytes()
    }

    #[test]
    fn a_segment_is_accepted_and_its_body_forwarded_unchanged() {
        let body = r#"{"name":"api","id":"70de5b6f19ff9a0a","trace_id":"1-581cf771-a006649127e371903a2de979","start_time":1.478293361271E9,"end_time":1.478293361449E9}"#;
        let d = doc(body);
        let parsed = parse(&d).unwrap();
        assert_eq!(parsed.body, body);
        assert_eq!(parsed.trace_id, "1-581cf771-a006649127e371903a2de979");
        assert_eq!(parsed.id, "70de5b6f19ff9a0a");
        // An in-progress segment, and an independent subsegment, are documents too.
        assert!(
            parse(&doc(
                r#"{"name":"a","id":"1","trace_id":"1-2-3","start_time":1,"in_progress":true}"#
            ))
            .is_ok()
        );
        assert!(parse(&doc(r#"{"type":"subsegment","name":"q","id":"1","trace_id":"1-2-3","parent_id":"9","start_time":1,"end_time":2}"#)).is_ok());
        // The daemon's header check is case-insensitive on the format and tolerates spaces.
        assert!(parse(format!("{{\"format\":\"JSON\",\"version\":1}}\n{body}").as_bytes()).is_ok());
    }

    #[test]
    fn garbage_is_rejected_by_reason() {
        let big = vec![b'x'; 65_000];
        let mut too_large = doc("{}");
        too_large.resize(MAX_DATAGRAM + 1, b' ');
        let cases: Vec<(Vec<u8>, Reject)> = vec![
            (vec![], Reject::Empty),
            (b"{\"name\":\"a\"}".to_vec(), Reject::NoHeader),
            (b"not json\n{}".to_vec(), Reject::NoHeader),
            (
                b"{\"format\":\"json\",\"version\":2}\n{}".to_vec(),
                Reject::BadHeader,
            ),
            (
                b"{\"format\":\"xml\",\"version\":1}\n{}".to_vec(),
                Reject::BadHeader,
            ),
            (big.clone(), Reject::NoHeader),
            ([HEADER.as_bytes(), &big].concat(), Reject::NotJson),
            (doc("{\"name\": \"a\", "), Reject::NotJson),
            (doc("[1,2,3]"), Reject::NotJson),
            (doc("{\"name\":\"a\",\"id\":\"1\"}"), Reject::MissingField),
            (
                doc("{\"name\":\"a\",\"id\":\"\",\"trace_id\":\"1-2-3\",\"start_time\":1}"),
                Reject::MissingField,
            ),
            ([HEADER.as_bytes(), &[0xff, 0xfe]].concat(), Reject::NotJson),
            (too_large, Reject::TooLarge),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse(&bytes).unwrap_err(),
                want,
                "{:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
            );
        }
    }
}
