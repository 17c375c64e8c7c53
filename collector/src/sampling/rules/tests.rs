use super::*;

#[test]
fn wildcards_match_like_the_sdks() {
    for (p, t, want) in [
        ("*", "anything", true),
        ("/api/*", "/api/users/7", true),
        ("/api/*", "/apix", false),
        ("/api/?", "/api/7", true),
        ("/api/?", "/api/77", false),
        ("GET", "get", true),
        ("*.example.com", "shop.EXAMPLE.com", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
        ("", "", true),
        ("", "x", false),
        ("**", "", true),
    ] {
        assert_eq!(wildcard(p, t), want, "{p} ~ {t}");
    }
}

fn req<'a>(path: &'a str) -> Request<'a> {
    Request {
        service_name: "checkout",
        service_type: "AWS::EKS::Container",
        host: "shop.example.com",
        method: "GET",
        url_path: path,
    }
}

#[test]
fn rules_match_on_every_field() {
    let mut r = Rule::catch_all("r", 0, 0.0);
    assert!(r.matches(&req("/x")));
    r.url_path = "/health*".into();
    assert!(!r.matches(&req("/x")) && r.matches(&req("/healthz")));
    r.service_type = "AWS::EC2::Instance".into();
    assert!(!r.matches(&req("/healthz")));
    r.service_type = "*".into();
    r.service_name = "check*".into();
    r.http_method = "POST".into();
    assert!(!r.matches(&req("/healthz")));
}

#[test]
fn a_local_reservoir_samples_its_size_each_second_then_the_rate() {
    let mut s = RuleState::new(Rule::catch_all("d", 2, 0.1), Quota::Local);
    let take = |s: &mut RuleState, sec, random| s.decide(sec, random);
    assert!(take(&mut s, 100, 0.99));
    assert!(take(&mut s, 100, 0.99));
    assert!(!take(&mut s, 100, 0.99), "reservoir used up, 0.99 ≥ 10 %");
    assert!(take(&mut s, 100, 0.05), "0.05 < 10 %");
    assert!(take(&mut s, 101, 0.99), "a new second refills");
    assert_eq!(s.take_statistics(), (5, 4, 0));
}

#[test]
fn centralized_rules_borrow_one_a_second_until_a_quota_arrives() {
    let mut s = RuleState::new(Rule::catch_all("c", 50, 0.0), Quota::Borrow);
    assert!(s.decide(10, 0.5));
    assert!(!s.decide(10, 0.5));
    assert_eq!(s.take_statistics(), (2, 1, 1));
    s.quota = Quota::Assigned {
        per_second: 3,
        until: 20,
    };
    assert!((0..3).all(|_| s.decide(11, 0.5)));
    assert!(!s.decide(11, 0.5));
    // The quota expired: back to borrowing.
    assert!(s.decide(20, 0.5));
    assert!(!s.decide(20, 0.5));
    // A rule with no reservoir never borrows.
    let mut none = RuleState::new(Rule::catch_all("z", 0, 0.0), Quota::Borrow);
    assert!(!none.decide(10, 0.5));
}

#[test]
fn one_thousand_requests_in_ten_seconds_at_zero_percent_with_one_a_second() {
    let mut s = RuleState::new(Rule::catch_all("d", 1, 0.0), Quota::Local);
    let sampled = (0..1000u64)
        .filter(|i| s.decide(1_000 + i / 100, 0.5))
        .count();
    assert_eq!(sampled, 10);
}

#[test]
fn local_rules_files_parse_or_say_what_is_wrong() {
    let rules = parse_local(
        r#"{"version":2,"rules":[{"description":"api","host":"*","http_method":"GET","url_path":"/api/*","fixed_target":2,"rate":0.5}],
            "default":{"fixed_target":1,"rate":0.05}}"#,
    )
    .unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!((rules[0].reservoir_size, rules[0].fixed_rate), (2, 0.5));
    assert_eq!(rules[0].url_path, "/api/*");
    assert_eq!((rules[1].reservoir_size, rules[1].fixed_rate), (1, 0.05));
    for (bad, want) in [
        ("{", "not JSON"),
        (
            r#"{"version":1,"default":{"fixed_target":1,"rate":0.1}}"#,
            "version",
        ),
        (r#"{"version":2}"#, "`default` is required"),
        (
            r#"{"version":2,"default":{"fixed_target":1,"rate":2}}"#,
            "default: `rate` 2",
        ),
        (
            r#"{"version":2,"default":{"fixed_target":-1,"rate":0.1}}"#,
            "fixed_target",
        ),
        (
            r#"{"version":2,"rules":[{"rate":0.1}],"default":{"fixed_target":1,"rate":0.1}}"#,
            "rules[0]: `fixed_target`",
        ),
    ] {
        let e = parse_local(bad).unwrap_err();
        assert!(e.contains(want), "{bad}: {e}");
    }
}
