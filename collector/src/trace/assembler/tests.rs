use super::*;
use crate::http::{Exchange, ExchangeFlags, head::RequestHead, head::ResponseHead};

/// Process facts for tests: names by pid, and which pids are Go.
#[derive(Default)]
struct Procs {
    go: Vec<u32>,
}

impl ProcessInfo for Procs {
    fn name(&mut self, pid: u32) -> String {
        format!("svc{pid}")
    }
    fn moves_work_between_threads(&mut self, pid: u32) -> bool {
        self.go.contains(&pid)
    }
}

const MS: u64 = 1_000_000;

fn assembler(go: Vec<u32>) -> TraceAssembler<Procs> {
    TraceAssembler::new(
        TraceConfig::default(),
        Clock::with_offset_ns(1_700_000_000_000_000_000),
        Procs { go },
    )
}

struct Call {
    conn: u64,
    index: u64,
    role: Role,
    pid: u32,
    tid: u32,
    start: u64,
    end: u64,
    target: String,
    headers: RequestHead,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    status: u16,
}

fn call(
    conn: u64,
    role: Role,
    pid: u32,
    tid: u32,
    start_ms: u64,
    end_ms: u64,
    target: &str,
) -> Call {
    Call {
        conn,
        index: 0,
        role,
        pid,
        tid,
        start: start_ms * MS,
        end: end_ms * MS,
        target: target.into(),
        headers: RequestHead::default(),
        local: None,
        remote: None,
        status: 200,
    }
}

impl Call {
    fn between(mut self, local: &str, remote: &str) -> Self {
        self.local = Some(local.parse().unwrap());
        self.remote = Some(remote.parse().unwrap());
        self
    }
    fn amzn(mut self, h: &str) -> Self {
        self.headers.x_amzn_trace_id = Some(h.into());
        self
    }
    fn request(&self) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: self.target.clone(),
            host: Some("host:80".into()),
            ..self.headers.clone()
        }
    }
    fn conn_meta(&self) -> ConnMeta {
        ConnMeta {
            role: Some(self.role),
            comm: String::new(),
            local: self.local,
            remote: self.remote,
        }
    }
    fn started(&self) -> HttpOut {
        HttpOut::Started {
            start: RequestStart {
                conn_id: self.conn,
                index: self.index,
                role: self.role,
                pid: self.pid,
                tid: self.tid,
                start_ns: self.start,
                request: self.request(),
            },
            conn: self.conn_meta(),
        }
    }
    fn done(&self) -> HttpOut {
        HttpOut::Done(ConnExchange {
            exchange: Exchange {
                conn_id: self.conn,
                index: self.index,
                role: self.role,
                pid: self.pid,
                tid: self.tid,
                request: self.request(),
                response: Some(ResponseHead {
                    status: self.status,
                    content_length: Some(2),
                    ..ResponseHead::default()
                }),
                start_ns: self.start,
                end_ns: self.end,
                request_body_bytes: 0,
                response_body_bytes: 2,
                flags: ExchangeFlags::default(),
            },
            conn: self.conn_meta(),
        })
    }
}

/// Feeds starts and ends in time order, then builds every document.
fn run(a: &mut TraceAssembler<Procs>, calls: &[Call]) -> Vec<Segment> {
    let mut events: Vec<(u64, u8, HttpOut)> = Vec::new();
    for c in calls {
        events.push((c.start, 0, c.started()));
        events.push((c.end, 1, c.done()));
    }
    events.sort_by_key(|(t, order, _)| (*t, *order));
    for (_, _, e) in events {
        a.on_http(e);
    }
    let mut out = Vec::new();
    a.finish(&mut out);
    out
}

/// A (pid 1) serves /a on thread 11 and calls B (pid 2) on the same node over 10.0.0.1:5000 → 10.0.0.2:80.
fn a_calls_b() -> Vec<Call> {
    vec![
        call(1, Role::Server, 1, 11, 0, 100, "/a"),
        call(2, Role::Client, 1, 11, 10, 90, "/b").between("10.0.0.1:5000", "10.0.0.2:80"),
        call(3, Role::Server, 2, 21, 12, 88, "/b").between("10.0.0.2:80", "10.0.0.1:5000"),
    ]
}

#[test]
fn a_call_from_a_thread_per_request_server_nests_under_its_request_and_links_the_callee() {
    let mut a = assembler(vec![]);
    let docs = run(&mut a, &a_calls_b());
    assert_eq!(docs.len(), 2, "{docs:#?}");
    let b = docs.iter().find(|d| d.name == "svc2").unwrap();
    let a_seg = docs.iter().find(|d| d.name == "svc1").unwrap();
    assert_eq!(a_seg.subsegments.len(), 1);
    let sub = &a_seg.subsegments[0];
    assert_eq!(sub.namespace, Some("remote"));
    assert_eq!(sub.name, "host");
    assert!(
        sub.http.as_ref().unwrap().request.traced,
        "B is traced: the subsegment says so"
    );
    assert_eq!(b.trace_id, a_seg.trace_id, "B joins A's trace");
    assert_eq!(
        b.parent_id.as_deref(),
        Some(sub.id.as_str()),
        "B's parent is A's subsegment"
    );
    assert_eq!(a_seg.parent_id, None);
    assert_eq!(
        (a.stats.parented_by_thread, a.stats.linked_same_node),
        (1, 1)
    );
    assert!((a_seg.end_time - a_seg.start_time - 0.1).abs() < 1e-6);
}

/// Node-like: a second inbound request on the same thread overlaps A's call.
fn two_in_flight() -> Vec<Call> {
    let mut calls = a_calls_b();
    calls.push(call(4, Role::Server, 1, 11, 5, 60, "/other"));
    calls
}

#[test]
fn with_two_requests_in_flight_on_the_thread_the_call_stays_unparented() {
    let mut a = assembler(vec![]);
    let docs = run(&mut a, &two_in_flight());
    assert_eq!(a.stats.unparented_ambiguous, 1);
    assert_eq!(a.stats.parented_by_thread, 0);
    for d in docs.iter().filter(|d| d.name == "svc1" && d.http.is_some()) {
        assert!(
            d.subsegments.is_empty(),
            "no inbound request may claim the call: {d:#?}"
        );
    }
    // The call is its own segment, and B still links to it.
    let own = docs
        .iter()
        .find(|d| d.http.is_none())
        .expect("the call's own segment");
    let b = docs.iter().find(|d| d.name == "svc2").unwrap();
    assert_eq!(b.trace_id, own.trace_id);
    assert_eq!(b.parent_id.as_deref(), Some(own.subsegments[0].id.as_str()));
}

#[test]
fn a_runtime_that_moves_work_between_threads_never_parents_by_thread() {
    let mut a = assembler(vec![1]);
    let docs = run(&mut a, &a_calls_b());
    assert_eq!(a.stats.unparented_thread_hopping, 1);
    let a_seg = docs
        .iter()
        .find(|d| d.name == "svc1" && d.http.is_some())
        .unwrap();
    assert!(a_seg.subsegments.is_empty());
}

const FORWARDED_ROOT: &str = "1-5759e988-bd862e3fe1be46a994272793";

/// A → B where A's call leaves from another thread carrying the trace header A received.
fn forwarded_header() -> Vec<Call> {
    let root = FORWARDED_ROOT;
    let mut calls = a_calls_b();
    calls[0] = call(1, Role::Server, 1, 11, 0, 100, "/a")
        .amzn(&format!("Root={root};Parent=53995c3f42cd8ad8;Sampled=1"));
    calls[1] = call(2, Role::Client, 1, 99, 10, 90, "/b")
        .between("10.0.0.1:5000", "10.0.0.2:80")
        .amzn(&format!("Root={root};Parent=1111111111111111;Sampled=1"));
    calls[2] = call(3, Role::Server, 2, 21, 12, 88, "/b")
        .between("10.0.0.2:80", "10.0.0.1:5000")
        .amzn(&format!("Root={root};Parent=1111111111111111;Sampled=1"));
    calls
}

#[test]
fn a_trace_id_the_app_forwarded_is_a_sound_parent_even_across_threads() {
    let root = FORWARDED_ROOT;
    let mut a = assembler(vec![1]);
    let docs = run(&mut a, &forwarded_header());
    assert_eq!(a.stats.parented_by_forwarded_header, 1);
    let a_seg = docs.iter().find(|d| d.name == "svc1").unwrap();
    assert_eq!(a_seg.trace_id.as_deref(), Some(root));
    assert_eq!(
        a_seg.parent_id.as_deref(),
        Some("53995c3f42cd8ad8"),
        "the incoming Parent is honoured"
    );
    assert_eq!(a_seg.subsegments.len(), 1);
    let b = docs.iter().find(|d| d.name == "svc2").unwrap();
    assert_eq!(
        b.parent_id.as_deref(),
        Some("1111111111111111"),
        "B's own header wins"
    );
}

#[test]
fn sampled_0_is_not_exported_and_neither_is_what_follows_it() {
    let mut calls = a_calls_b();
    calls[0] = call(1, Role::Server, 1, 11, 0, 100, "/a")
        .amzn("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0");
    let mut a = assembler(vec![]);
    let docs = run(&mut a, &calls);
    assert!(docs.is_empty(), "{docs:#?}");
    assert_eq!(a.stats.not_sampled, 3);
}

fn old_w3c() -> Call {
    let mut c = call(1, Role::Server, 1, 11, 0, 10, "/w3c");
    c.headers.traceparent = Some("00-00000001e8720b39541901950019ee5a-53995c3f42cd8ad8-01".into());
    c
}

#[test]
fn an_old_w3c_trace_id_starts_a_fresh_trace_and_is_kept_as_an_annotation() {
    let mut a = assembler(vec![]);
    let docs = run(&mut a, &[old_w3c()]);
    assert_eq!(docs.len(), 1);
    assert!(
        docs[0]
            .trace_id
            .as_deref()
            .unwrap()
            .starts_with(&format!("1-{:08x}-", 1_700_000_000u32))
    );
    assert!(docs[0].annotations.contains_key("w3c_traceparent"));
}

fn late_call() -> Vec<Call> {
    vec![
        call(1, Role::Server, 1, 11, 0, 50, "/a"),
        call(2, Role::Client, 1, 11, 10, 900, "/slow-background"),
    ]
}

#[test]
fn a_call_that_ends_after_its_request_is_sent_as_an_independent_subsegment() {
    let mut a = assembler(vec![]);
    let docs = run(&mut a, &late_call());
    let a_seg = &docs[0];
    let sub = &docs[1];
    assert_eq!(sub.kind, Some("subsegment"));
    assert_eq!(sub.trace_id, a_seg.trace_id);
    assert_eq!(sub.parent_id.as_deref(), Some(a_seg.id.as_str()));
}

#[test]
fn status_codes_set_error_throttle_and_fault() {
    for (status, flags) in [
        (200, (false, false, false)),
        (404, (true, false, false)),
        (429, (true, true, false)),
        (503, (false, false, true)),
    ] {
        let mut c = call(1, Role::Server, 1, 11, 0, 10, "/s");
        c.status = status;
        let mut a = assembler(vec![]);
        let d = &run(&mut a, &[c])[0];
        assert_eq!((d.error, d.throttle, d.fault), flags, "{status}");
    }
}

#[test]
fn documents_wait_for_the_hold_and_finished_requests_are_forgotten_after_keep() {
    let mut a = assembler(vec![]);
    let c = call(1, Role::Server, 1, 11, 0, 10, "/h");
    a.on_http(c.started());
    a.on_http(c.done());
    let mut out = Vec::new();
    a.tick(10 * MS + a.config.hold_ns - 1, &mut out);
    assert!(out.is_empty());
    a.tick(10 * MS + a.config.hold_ns, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(a.remembered(), 1);
    a.tick(10 * MS + a.config.keep_ns + 1, &mut out);
    assert_eq!(a.remembered(), 0);
}

/// Every scenario above (and a request with enough calls to split at 64 kB), as the JSON
/// documents the exporters send, byte for byte; random ids are replaced by their order of
/// first appearance. This is the output a change to the trace stage must keep. After a
/// deliberate change to it: `UPDATE_GOLDEN=1 cargo test -p collector --lib golden`, and
/// review the diff of the file.
#[test]
fn documents_match_the_golden_file() {
    let statuses: Vec<Call> = [404, 429, 503]
        .into_iter()
        .enumerate()
        .map(|(i, status)| {
            let i = i as u64;
            let mut c = call(i + 1, Role::Server, 1, 11, i * 20, i * 20 + 10, "/s");
            c.status = status;
            c
        })
        .collect();
    let mut split = vec![call(1, Role::Server, 1, 11, 0, 1000, "/fan-out")];
    let long = "x".repeat(200);
    split.extend((0..160).map(|i| {
        call(
            2 + i,
            Role::Client,
            1,
            11,
            1 + i,
            2 + i,
            &format!("/{long}/{i}"),
        )
    }));
    let scenarios: Vec<(&str, Vec<u32>, Vec<Call>)> = vec![
        ("a calls b", vec![], a_calls_b()),
        ("two requests in flight", vec![], two_in_flight()),
        ("a moves work between threads", vec![1], a_calls_b()),
        ("forwarded header", vec![1], forwarded_header()),
        ("old w3c traceparent", vec![], vec![old_w3c()]),
        ("late call", vec![], late_call()),
        (
            "unparented call",
            vec![],
            vec![call(1, Role::Client, 1, 11, 0, 5, "/alone")],
        ),
        ("statuses", vec![], statuses),
        ("split at 64 kB", vec![], split),
    ];
    let mut text = String::new();
    for (name, go, calls) in scenarios {
        let docs: Vec<String> = run(&mut assembler(go), &calls)
            .into_iter()
            .flat_map(Segment::into_documents)
            .collect();
        text.push_str(&format!("# {name}: {} documents\n", docs.len()));
        text.push_str(&placeholder_ids(&docs.join("\n")));
        text.push('\n');
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/trace/assembler/golden.jsonl"
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let want = std::fs::read_to_string(path).expect("the golden file");
    for (i, (got, want)) in text.lines().zip(want.lines()).enumerate() {
        assert_eq!(got, want, "line {} of {path}", i + 1);
    }
    assert_eq!(
        text.lines().count(),
        want.lines().count(),
        "lines in {path}"
    );
}

/// Replaces each generated trace or segment id in JSON text by `<tN>` / `<sN>`, numbered in
/// order of first appearance; ids the fixtures chose themselves stay.
fn placeholder_ids(json: &str) -> String {
    let fixed = [FORWARDED_ROOT, "53995c3f42cd8ad8", "1111111111111111"];
    let mut seen: HashMap<String, String> = HashMap::new();
    let (mut traces, mut spans) = (0, 0);
    let parts: Vec<String> = json
        .split('"')
        .map(|part| {
            let generated = !fixed.contains(&part);
            if generated && crate::trace::ids::is_trace_id(part) {
                seen.entry(part.into())
                    .or_insert_with(|| {
                        traces += 1;
                        format!("<t{traces}>")
                    })
                    .clone()
            } else if generated && crate::trace::ids::is_span_id(part) {
                seen.entry(part.into())
                    .or_insert_with(|| {
                        spans += 1;
                        format!("<s{spans}>")
                    })
                    .clone()
            } else {
                part.to_owned()
            }
        })
        .collect();
    parts.join("\"")
}
