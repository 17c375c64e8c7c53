//! The thin layer that talks to the Kubernetes API: a watch on the pods of this node
//! (`spec.nodeName=<node>`), reduced to `PodMeta` as events arrive and applied to the shared
//! index. kube-runtime's watcher lists, then watches with bookmarks, relists after `410 Gone`
//! and retries with backoff while the API is unreachable; tracing never waits for it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};

use super::{
    SharedMeta,
    pods::{PodIndex, PodMeta},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    /// Use the Kubernetes API when a service account or kubeconfig is found, else host mode.
    Auto,
    /// Never contact the Kubernetes API (host mode).
    Off,
}

/// Watch errors (API unreachable, refused, …) since start.
#[derive(Clone, Default)]
pub struct WatchStats {
    pub errors: Arc<AtomicU64>,
}

/// Starts the watch when a Kubernetes configuration is found (in-cluster service account, or
/// `KUBECONFIG` / `~/.kube/config`); otherwise says once that this is host mode.
pub async fn start(
    mode: KubeMode,
    node_name: Option<String>,
    shared: SharedMeta,
) -> Option<WatchStats> {
    if mode == KubeMode::Off {
        tracing::info!("Kubernetes metadata off (--kubernetes off): host mode");
        return None;
    }
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(e) => {
            tracing::debug!("Kubernetes configuration not found: {e}");
            tracing::info!(
                "not in Kubernetes (no in-cluster service account, no kubeconfig): host mode, services are named after their processes"
            );
            return None;
        }
    };
    let node = match node_name.filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => {
            // The kubelet registers the node under the host name unless told otherwise.
            let host = hostname();
            tracing::warn!(
                "NODE_NAME is not set (the DaemonSet sets it from spec.nodeName); assuming node {host:?}"
            );
            host
        }
    };
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("Kubernetes client could not be built ({e}); host mode");
            return None;
        }
    };
    let stats = WatchStats::default();
    tokio::spawn(watch(client, node, shared.pods.clone(), stats.clone()));
    Some(stats)
}

async fn watch(
    client: Client,
    node: String,
    pods: Arc<std::sync::Mutex<PodIndex>>,
    stats: WatchStats,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    tracing::info!(node = %node, "watching this node's pods");
    let mut healthy = true;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if healthy {
                    tracing::warn!(
                        "Kubernetes API: {e}; retrying with backoff, tracing goes on (pod metadata fills in when the API is back)"
                    );
                    healthy = false;
                }
                continue;
            }
        };
        if !healthy {
            tracing::info!("Kubernetes API reachable again");
            healthy = true;
        }
        let mut index = pods.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(pod) => {
                if let Some(meta) = PodMeta::from_pod(&pod) {
                    index.apply(meta);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    index.delete(uid);
                }
            }
            watcher::Event::Init => index.relist_started(),
            watcher::Event::InitApply(pod) => {
                if let Some(meta) = PodMeta::from_pod(&pod) {
                    index.relist_item(meta);
                }
            }
            watcher::Event::InitDone => {
                index.relist_done();
                tracing::debug!(pods = index.len(), "pods of this node listed");
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
