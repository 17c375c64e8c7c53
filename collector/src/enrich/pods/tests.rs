use super::*;

/// A pod as the API server returns it (trimmed to the fields that matter, plus some that do
/// not, which must be dropped).
fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).expect("valid Pod")
}

fn deployment_pod() -> Pod {
    pod(serde_json::json!({
        "metadata": {
            "name": "checkout-7d4b9c8f6d-x2x9q",
            "namespace": "shop",
            "uid": "7b2c1d0e-4f5a-4b6c-8d9e-0f1a2b3c4d5e",
            "labels": {"pod-template-hash": "7d4b9c8f6d", "team": "payments"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7d4b9c8f6d",
                "uid": "11111111-2222-3333-4444-555555555555", "controller": true
            }]
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "shop/checkout:1"}]},
        "status": {
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "image": "shop/checkout:1",
                "imageID": "sha256:00",
                "containerID": "containerd://3F9E4B1A7C2D8E6F0A5B9C4D3E2F1A0B9C8D7E6F5A4B3C2D1E0F9A8B7C6D5E4F"
            }],
            "initContainerStatuses": [{
                "name": "migrate", "ready": false, "restartCount": 0, "image": "x", "imageID": "y",
                "containerID": "cri-o://aa00000000000000000000000000000000000000000000000000000000000000"
            }]
        }
    }))
}

#[test]
fn a_pod_is_reduced_to_what_segments_use() {
    let meta = PodMeta::from_pod(&deployment_pod()).unwrap();
    assert_eq!(
        meta,
        PodMeta {
            uid: "7b2c1d0e-4f5a-4b6c-8d9e-0f1a2b3c4d5e".into(),
            namespace: "shop".into(),
            name: "checkout-7d4b9c8f6d-x2x9q".into(),
            node: "node-a".into(),
            service_name_annotation: None,
            app_name_label: None,
            excluded: false,
            ips: vec![],
            labels: std::sync::Arc::new(
                [("pod-template-hash", "7d4b9c8f6d"), ("team", "payments")]
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into(),
            ),
            workload: Some(("Deployment".into(), "checkout".into())),
            containers: vec![
                (
                    "3f9e4b1a7c2d8e6f0a5b9c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f".into(),
                    "app".into()
                ),
                (
                    "aa00000000000000000000000000000000000000000000000000000000000000".into(),
                    "migrate".into()
                ),
            ],
        }
    );
}

#[test]
fn annotation_and_label_are_kept_only_when_set() {
    let mut p = deployment_pod();
    p.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_ANNOTATION.into(), "checkout-api".into());
    p.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(APP_NAME_LABEL.into(), "checkout-app".into());
    let meta = PodMeta::from_pod(&p).unwrap();
    assert_eq!(
        meta.service_name_annotation.as_deref(),
        Some("checkout-api")
    );
    assert_eq!(meta.app_name_label.as_deref(), Some("checkout-app"));
    // Blank values do not count.
    p.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_ANNOTATION.into(), " ".into());
    assert_eq!(PodMeta::from_pod(&p).unwrap().service_name_annotation, None);
    assert!(!PodMeta::from_pod(&p).unwrap().excluded);
    p.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(EXCLUDE_ANNOTATION.into(), "True".into());
    assert!(PodMeta::from_pod(&p).unwrap().excluded);
}

#[test]
fn workloads_from_owner_references() {
    let cases = [
        (
            ("ReplicaSet", "web-5f6d7c8b9", Some("5f6d7c8b9")),
            ("Deployment", "web"),
        ),
        // A bare ReplicaSet (no template hash label) stays one.
        (
            ("ReplicaSet", "legacy-rs", None),
            ("ReplicaSet", "legacy-rs"),
        ),
        (
            ("ReplicaSet", "web-5f6d7c8b9", Some("other")),
            ("ReplicaSet", "web-5f6d7c8b9"),
        ),
        (("StatefulSet", "db", None), ("StatefulSet", "db")),
        (
            ("DaemonSet", "fluent-bit", None),
            ("DaemonSet", "fluent-bit"),
        ),
        (
            ("Job", "nightly-report-29430720", None),
            ("CronJob", "nightly-report"),
        ),
        (
            ("Job", "one-off-migration", None),
            ("Job", "one-off-migration"),
        ),
        (("Job", "short-123", None), ("Job", "short-123")),
    ];
    for ((kind, name, hash), (want_kind, want_name)) in cases {
        assert_eq!(
            workload_of(kind, name, hash),
            (want_kind.to_owned(), want_name.to_owned()),
            "{kind}/{name}"
        );
    }
    // No controller: no workload.
    let mut p = deployment_pod();
    p.metadata.owner_references = None;
    assert_eq!(PodMeta::from_pod(&p).unwrap().workload, None);
}

fn meta(uid: &str, containers: &[&str]) -> PodMeta {
    PodMeta {
        uid: uid.into(),
        name: format!("pod-{uid}"),
        containers: containers
            .iter()
            .map(|c| ((*c).to_owned(), "app".to_owned()))
            .collect(),
        ..PodMeta::default()
    }
}

#[test]
fn index_follows_updates_deletes_and_relists() {
    let mut index = PodIndex::default();
    index.apply(meta("u1", &[]));
    // Not yet in status: found by the UID from the cgroup path only.
    assert_eq!(index.find(Some("c1"), None), None);
    assert_eq!(index.find(Some("c1"), Some("u1")).unwrap().uid, "u1");
    index.apply(meta("u1", &["c1"]));
    assert_eq!(index.find(Some("c1"), None).unwrap().uid, "u1");
    // The container restarts with a new id: the old id no longer maps.
    index.apply(meta("u1", &["c2"]));
    assert_eq!(index.find(Some("c1"), None), None);
    assert_eq!(index.find(Some("c2"), None).unwrap().uid, "u1");
    index.apply(meta("u2", &["c3"]));
    index.delete("u1");
    assert_eq!(index.find(Some("c2"), Some("u1")), None);
    assert_eq!(index.len(), 1);

    // A relist replaces everything at its end: u2 vanished meanwhile, u3 appeared.
    index.relist_started();
    index.relist_item(meta("u3", &["c4"]));
    assert!(
        index.find(Some("c3"), None).is_some(),
        "old content serves until done"
    );
    index.relist_done();
    assert_eq!(index.find(Some("c3"), None), None);
    assert_eq!(index.find(Some("c4"), None).unwrap().uid, "u3");
    assert_eq!(index.stats.relists, 1);
}

#[test]
fn index_is_bounded() {
    let mut index = PodIndex::default();
    for i in 0..MAX_PODS + 10 {
        index.apply(meta(&format!("u{i}"), &[]));
    }
    assert_eq!(index.len(), MAX_PODS);
    assert_eq!(index.stats.rejected, 10);
    // Updates of known pods still apply.
    index.apply(meta("u0", &["c0"]));
    assert!(index.find(Some("c0"), None).is_some());
}
