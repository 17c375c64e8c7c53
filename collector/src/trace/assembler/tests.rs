use super::fixtures::*;
use super::*;

fn by_service<'a>(groups: &'a [SpanGroup], service: &str) -> &'a SpanGroup {
    groups
        .iter()
        .find(|g| g.service == service && g.first().kind == SpanKind::Server)
        .unwrap_or_else(|| panic!("no server span of {service}: {groups:#?}"))
}

#[test]
fn a_call_from_a_thread_per_request_server_nests_under_its_request_and_links_the_callee() {
    let mut a = assembler(vec![]);
    let groups = run(&mut a, &a_calls_b());
    assert_eq!(groups.len(), 2, "{groups:#?}");
    let b = by_service(&groups, "svc2");
    let a_group = by_service(&groups, "svc1");
    assert_eq!(a_group.spans.len(), 2, "A's request and its call");
    let (server, call) = (&a_group.spans[0], &a_group.spans[1]);
    assert_eq!(call.kind, SpanKind::Client);
    assert_eq!(call.http.host, "host");
    assert_eq!(call.parent_id.as_deref(), Some(server.span_id.as_str()));
    assert!(call.callee_traced, "B is traced: the call says so");
    assert_eq!(b.trace_id(), a_group.trace_id(), "B joins A's trace");
    assert_eq!(
        b.first().parent_id.as_deref(),
        Some(call.span_id.as_str()),
        "B's parent is A's call"
    );
    assert_eq!(server.parent_id, None);
    assert_eq!(b.root, a_group.root, "one root request for the whole trace");
    assert_eq!(
        (a.stats.parented_by_thread, a.stats.linked_same_node),
        (1, 1)
    );
    assert_eq!(server.end_ns - server.start_ns, 100 * MS);
    assert_eq!((server.port, b.first().port), (0, 80));
}

#[test]
fn through_service_nat_the_callee_links_by_the_connections_sequence_numbers() {
    let mut a = assembler(vec![]);
    let groups = run(&mut a, &a_calls_b_through_nat());
    let (a_group, b) = (by_service(&groups, "svc1"), by_service(&groups, "svc2"));
    let call = &a_group.spans[1];
    assert_eq!(b.trace_id(), a_group.trace_id());
    assert_eq!(b.first().parent_id.as_deref(), Some(call.span_id.as_str()));
    assert!(call.callee_traced);
    assert_eq!(a.stats.linked_same_node, 1);
}

#[test]
fn a_sequence_number_pair_on_two_connections_at_once_links_neither() {
    let mut a = assembler(vec![]);
    let mut calls = a_calls_b_through_nat();
    // A second caller whose connection claims the same pair (a collision, or a wrap).
    calls.push(
        call(4, Role::Client, 5, 51, 20, 80, "/b")
            .between("10.0.0.5:6000", "10.96.0.10:80")
            .isns(0x1234_5678, 0x9abc_def0),
    );
    let groups = run(&mut a, &calls);
    let b = by_service(&groups, "svc2");
    assert_eq!(
        b.first().parent_id,
        None,
        "no guess between the two callers"
    );
    assert!(
        groups
            .iter()
            .all(|g| g.service == "svc2" || g.trace_id() != b.trace_id())
    );
    assert_eq!(
        (a.stats.link_key_collisions, a.stats.unlinked_key_collision),
        (1, 1)
    );
    assert_eq!(a.stats.linked_same_node, 0);
}

#[test]
fn with_two_requests_in_flight_on_the_thread_the_call_stays_unparented() {
    let mut a = assembler(vec![]);
    let groups = run(&mut a, &two_in_flight());
    assert_eq!(a.stats.unparented_ambiguous, 1);
    assert_eq!(a.stats.parented_by_thread, 0);
    for g in groups.iter().filter(|g| g.first().kind == SpanKind::Server) {
        assert_eq!(
            g.spans.len(),
            1,
            "no inbound request may claim the call: {g:#?}"
        );
    }
    // The call is the root of its own trace, and B still links to it.
    let own = groups
        .iter()
        .find(|g| g.first().kind == SpanKind::Client)
        .expect("the call on its own");
    assert_eq!(own.first().parent_id, None);
    assert_eq!(own.service, "svc1", "the calling service");
    let b = by_service(&groups, "svc2");
    assert_eq!(b.trace_id(), own.trace_id());
    assert_eq!(
        b.first().parent_id.as_deref(),
        Some(own.first().span_id.as_str())
    );
}

#[test]
fn a_runtime_that_moves_work_between_threads_never_parents_by_thread() {
    let mut a = assembler(vec![1]);
    let groups = run(&mut a, &a_calls_b());
    assert_eq!(a.stats.unparented_thread_hopping, 1);
    assert_eq!(by_service(&groups, "svc1").spans.len(), 1);
}

#[test]
fn a_trace_id_the_app_forwarded_is_a_sound_parent_even_across_threads() {
    let mut a = assembler(vec![1]);
    let groups = run(&mut a, &forwarded_header());
    assert_eq!(a.stats.parented_by_forwarded_header, 1);
    let a_group = by_service(&groups, "svc1");
    assert_eq!(a_group.trace_id(), FORWARDED_ROOT);
    assert_eq!(
        a_group.first().parent_id.as_deref(),
        Some("53995c3f42cd8ad8"),
        "the incoming Parent is honoured"
    );
    assert_eq!(a_group.spans.len(), 2);
    assert_eq!(a_group.root.forced, Some(true));
    let b = by_service(&groups, "svc2");
    assert_eq!(
        b.first().parent_id.as_deref(),
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
    let groups = run(&mut a, &calls);
    assert!(groups.is_empty(), "{groups:#?}");
    assert_eq!(a.stats.not_sampled, 3);
}

#[test]
fn an_old_w3c_trace_id_starts_a_fresh_trace_and_is_kept_as_a_note() {
    let mut a = assembler(vec![]);
    let groups = run(&mut a, &[old_w3c()]);
    assert_eq!(groups.len(), 1);
    assert!(
        groups[0]
            .trace_id()
            .starts_with(&format!("1-{:08x}-", 1_700_000_000u32))
    );
    assert!(matches!(
        groups[0].first().notes.as_slice(),
        [Note::RejectedTraceparent(tp)] if tp.starts_with("00-00000001e8720b39")
    ));
}

#[test]
fn a_call_that_ends_after_its_request_is_sent_on_its_own() {
    let mut a = assembler(vec![]);
    let groups = run(&mut a, &late_call());
    let (request, call) = (&groups[0], &groups[1]);
    assert!(call.is_late_call());
    assert_eq!(call.trace_id(), request.trace_id());
    assert_eq!(
        call.first().parent_id.as_deref(),
        Some(request.first().span_id.as_str())
    );
    assert_eq!(a.stats.subsegments_independent, 1);
}

#[test]
fn the_root_request_is_what_sampling_decides_on() {
    let mut a = assembler(vec![]);
    let groups = run(&mut a, &[call(1, Role::Server, 7, 11, 0, 10, "/p?q=1")]);
    assert_eq!(
        *groups[0].root,
        TraceRoot {
            pid: 7,
            host: "host".into(),
            method: "GET".into(),
            path: "/p".into(),
            forced: None,
        }
    );
    let s = groups[0].first();
    assert_eq!((s.http.status, s.http.response_bytes), (Some(200), Some(2)));
    assert_eq!(s.start_ns, 1_700_000_000_000_000_000);
}

#[test]
fn spans_wait_for_the_hold_and_finished_requests_are_forgotten_after_keep() {
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
