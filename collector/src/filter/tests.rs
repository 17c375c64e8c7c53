use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn selectors_parse_and_match_like_kubectl() {
    let l = labels(&[("app", "web"), ("tier", "front"), ("canary", "")]);
    for (sel, want) in [
        ("app=web", true),
        ("app==web", true),
        ("app=api", false),
        ("app!=api", true),
        ("app!=web", false),
        ("canary", true),
        ("!canary", false),
        ("!missing", true),
        ("missing!=x", true),
        ("app=web,tier=front", true),
        ("app=web,tier=back", false),
        ("tier in (front, back)", true),
        ("tier notin (front,back)", false),
        ("app in (api),tier=front", false),
        ("app.kubernetes.io/name", false),
    ] {
        let s: Selector = sel.parse().unwrap_or_else(|e| panic!("{sel}: {e}"));
        assert_eq!(s.matches(&l), want, "{sel}");
    }
    for bad in ["", "a=b,", "=x", "tier in front", "a b", "k in (x"] {
        let err = bad.parse::<Selector>().unwrap_err();
        assert!(err.contains("label selector"), "{bad}: {err}");
    }
}

fn subject<'a>(
    port: u16,
    pod: Option<(&'a str, &'a BTreeMap<String, String>, bool)>,
) -> Subject<'a> {
    Subject {
        port,
        process: "python3",
        pod,
    }
}

#[test]
fn defaults_drop_kube_probes_and_opted_out_pods_only() {
    let f = Filters::default();
    let l = labels(&[("app", "web")]);
    assert!(f.drops_request(Some("kube-probe/1.29")));
    assert!(!f.drops_request(Some("curl/8.0")));
    assert!(!f.drops_request(None));
    assert_eq!(
        f.decide(&subject(8080, Some(("shop", &l, true)))),
        Err(Dropped::OptedOut)
    );
    assert_eq!(f.decide(&subject(8080, Some(("shop", &l, false)))), Ok(()));
    assert_eq!(f.decide(&subject(8080, None)), Ok(()));
    let traced = Filters {
        trace_kube_probes: true,
        ..Filters::default()
    };
    assert!(!traced.drops_request(Some("kube-probe/1.29")));
}

#[test]
fn includes_and_excludes() {
    let web = labels(&[("app", "web")]);
    let batch = labels(&[("app", "batch")]);
    let f = Filters {
        include_namespaces: vec!["shop".into()],
        exclude_pod_labels: Some("app=batch".parse().unwrap()),
        exclude_ports: vec![9090],
        ..Filters::default()
    };
    assert_eq!(f.decide(&subject(80, Some(("shop", &web, false)))), Ok(()));
    assert_eq!(
        f.decide(&subject(80, Some(("kube-system", &web, false)))),
        Err(Dropped::Namespace)
    );
    assert_eq!(
        f.decide(&subject(80, None)),
        Err(Dropped::Namespace),
        "host process"
    );
    assert_eq!(
        f.decide(&subject(80, Some(("shop", &batch, false)))),
        Err(Dropped::PodLabels)
    );
    assert_eq!(
        f.decide(&subject(9090, Some(("shop", &web, false)))),
        Err(Dropped::Port)
    );

    let ports = Filters {
        include_ports: vec![8080],
        ..Filters::default()
    };
    assert_eq!(ports.decide(&subject(8080, None)), Ok(()));
    assert_eq!(ports.decide(&subject(9090, None)), Err(Dropped::Port));

    let g = Filters {
        exclude_namespaces: vec!["kube-system".into()],
        include_pod_labels: Some("app in (web)".parse().unwrap()),
        include_processes: vec!["python3".into()],
        ..Filters::default()
    };
    assert_eq!(g.decide(&subject(80, Some(("shop", &web, false)))), Ok(()));
    assert_eq!(
        g.decide(&subject(80, Some(("kube-system", &web, false)))),
        Err(Dropped::Namespace)
    );
    assert_eq!(
        g.decide(&subject(80, Some(("shop", &batch, false)))),
        Err(Dropped::PodLabels)
    );
    let mut node = subject(80, Some(("shop", &web, false)));
    node.process = "node";
    assert_eq!(g.decide(&node), Err(Dropped::Process));
}

fn pod_group(namespace: &str, opted_out: bool) -> SpanGroup {
    let mut g = crate::trace::span::fixtures::server_group("svc", 10);
    g.process = "python3".into();
    g.resource.pod = Some(crate::trace::span::PodResource {
        name: "p".into(),
        namespace: namespace.into(),
        uid: "uid-1".into(),
        labels: std::sync::Arc::new(labels(&[("team", "payments")])),
        opted_out,
        ..Default::default()
    });
    g
}

#[test]
fn groups_of_opted_out_pods_sdk_senders_and_excluded_namespaces_are_dropped_and_counted() {
    let senders = SdkSenders::default();
    let mut s = Selection::new(
        Filters {
            exclude_namespaces: vec!["kube-system".into()],
            exclude_pod_labels: Some("team=ads".parse().unwrap()),
            ..Filters::default()
        },
        senders.clone(),
    );
    assert!(s.keep(&mut pod_group("shop", false)));
    assert!(!s.keep(&mut pod_group("shop", true)));
    assert!(!s.keep(&mut pod_group("kube-system", false)));
    senders.mark(
        crate::enrich::sdk_senders::Sender::Pod("uid-1".into()),
        std::time::Instant::now(),
    );
    assert!(
        !s.keep(&mut pod_group("shop", false)),
        "the SDK's own segments win"
    );
    assert_eq!(
        (
            s.stats.excluded_by_annotation,
            s.stats.dropped_namespace,
            s.stats.dropped_sdk_duplicate
        ),
        (1, 1, 1)
    );
    assert!(
        s.stats
            .pairs()
            .contains(&("filter_excluded_by_annotation", 1))
    );
}

#[test]
fn calls_to_an_excluded_port_leave_their_group_and_the_request_stays() {
    let mut s = Selection::new(
        Filters {
            exclude_ports: vec![6379],
            ..Filters::default()
        },
        SdkSenders::default(),
    );
    let mut g = pod_group("shop", false);
    let mut call = g.spans[0].clone();
    call.kind = crate::trace::SpanKind::Client;
    for port in [6379, 80] {
        g.spans.push(crate::trace::Span {
            port,
            ..call.clone()
        });
    }
    assert!(s.keep(&mut g));
    let ports: Vec<u16> = g.spans.iter().map(|s| s.port).collect();
    assert_eq!(ports, vec![8080, 80]);
}
