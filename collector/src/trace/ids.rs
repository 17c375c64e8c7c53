//! X-Ray ids: trace ids `1-<8 hex epoch seconds>-<24 hex random>` and 16-hex segment ids,
//! random parts from a CSPRNG (the devguide's "Trace ID Security").

use rand::Rng as _;

pub fn new_trace_id(epoch_secs: u64) -> String {
    let random: [u8; 12] = rand::rng().random();
    format!("1-{:08x}-{}", epoch_secs as u32, hex(&random))
}

pub fn new_span_id() -> String {
    loop {
        let v: u64 = rand::rng().random();
        if v != 0 {
            return format!("{v:016x}");
        }
    }
}

pub fn is_trace_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 35
        && s.starts_with("1-")
        && b[10] == b'-'
        && b[2..10]
            .iter()
            .chain(&b[11..])
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

pub fn is_span_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// The epoch seconds in a trace id.
pub fn trace_id_epoch(id: &str) -> Option<u64> {
    u64::from_str_radix(id.get(2..10)?, 16).ok()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_the_x_ray_form_and_differ() {
        let t = new_trace_id(0x5759e988);
        assert!(is_trace_id(&t), "{t}");
        assert!(t.starts_with("1-5759e988-"));
        assert_eq!(trace_id_epoch(&t), Some(0x5759e988));
        assert_ne!(new_trace_id(1), new_trace_id(1));
        let s = new_span_id();
        assert!(is_span_id(&s), "{s}");
        assert_ne!(new_span_id(), new_span_id());
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert!(!is_trace_id("1-5759e988-bd862e3fe1be46a99427279"));
        assert!(!is_trace_id("2-5759e988-bd862e3fe1be46a994272793"));
        assert!(!is_trace_id("1-5759E988-bd862e3fe1be46a994272793"));
        assert!(!is_span_id("53995c3f42cd8ad"));
        assert!(!is_span_id("53995c3f42cd8adg"));
    }
}
