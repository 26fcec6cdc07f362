//! kube-rs behind [`super`]'s API: credentials in the documented order,
//! paged list, the Node watch task, the status PATCH.
//!
//! Invariant: every request is bounded ([`super::REQUEST_TIMEOUT`]) or is
//! the watch itself; no error ends the watch task, it backs off and relists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use super::{KubeError, REQUEST_TIMEOUT, WatchState};
use crate::config::{KubeSpec, NodeView};

/// A connected API client.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
}

/// The credentials, in this order: `[fleet.kubernetes] kubeconfig`; the
/// in-cluster service account (a DaemonSet); `$KUBECONFIG`, then
/// `~/.kube/config`. (kube's `Config::infer` tries the kubeconfig first,
/// so the order is spelled out here.)
pub async fn connect(spec: &KubeSpec) -> Result<KubeClient, KubeError> {
    let opts = KubeConfigOptions::default();
    let config = match &spec.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(incluster) => kube::Config::from_kubeconfig(&opts).await.map_err(|e| {
                KubeError::Config(format!(
                    "not in a cluster ({incluster}), and no kubeconfig ({e}); set [fleet.kubernetes] kubeconfig"
                ))
            })?,
        },
    };
    let client = kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
    Ok(KubeClient { client })
}

fn view(node: &Node, spec: &KubeSpec) -> Option<NodeView> {
    // Through JSON: the same extraction as the unit tests' fixtures.
    serde_json::to_value(node)
        .ok()
        .and_then(|v| NodeView::from_json(&v, spec))
}

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(KubeError::Api(e.to_string())),
        Err(_) => Err(KubeError::Timeout),
    }
}

/// Backoff between watch restarts: doubling from 0.5 s to 30 s.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl KubeClient {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Every Node (pages of 500), as views.
    pub async fn list(&self, spec: &KubeSpec) -> Result<Vec<NodeView>, KubeError> {
        let api = self.nodes();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().limit(500);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = bounded(api.list(&lp)).await?;
            out.extend(page.items.iter().filter_map(|n| view(n, spec)));
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// A strategic-merge PATCH of `nodes/<name>/status` (what flannel sends).
    pub async fn patch_status(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<(), KubeError> {
        let api = self.nodes();
        bounded(api.patch_status(name, &PatchParams::default(), &Patch::Strategic(body)))
            .await
            .map(|_| ())
    }

    /// Starts the watch task; it runs until the receiver is dropped.
    pub fn watch(&self, spec: &KubeSpec) -> tokio::sync::watch::Receiver<WatchState> {
        let (tx, rx) = tokio::sync::watch::channel(WatchState::default());
        let (api, spec) = (self.nodes(), spec.clone());
        tokio::spawn(watch_task(api, spec, tx));
        rx
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The Node views the task keeps (what it last published).
struct Kept {
    nodes: BTreeMap<String, NodeView>,
}

impl Kept {
    fn publish(&self, tx: &tokio::sync::watch::Sender<WatchState>) {
        let nodes: Vec<NodeView> = self.nodes.values().cloned().collect();
        tx.send_modify(|s| {
            s.nodes = Some(Arc::new(nodes));
            s.generation += 1;
            s.unreachable = None;
        });
    }
}

async fn watch_task(api: Api<Node>, spec: KubeSpec, tx: tokio::sync::watch::Sender<WatchState>) {
    let mut kept = Kept {
        nodes: BTreeMap::new(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
        // Init…InitDone: filled here, published whole at InitDone.
        let mut listing: Option<BTreeMap<String, NodeView>> = None;
        let error = loop {
            let Some(ev) = stream.next().await else {
                break "the watch ended".to_string();
            };
            match ev {
                Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(n)) => {
                    if let (Some(l), Some(v)) = (listing.as_mut(), view(&n, &spec)) {
                        l.insert(v.name.clone(), v);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(l) = listing.take() {
                        info!("kubernetes: listed {} Node(s)", l.len());
                        kept.nodes = l;
                        kept.publish(&tx);
                        backoff = BACKOFF_MIN;
                    }
                }
                Ok(watcher::Event::Apply(n)) => {
                    if let Some(v) = view(&n, &spec)
                        && kept.nodes.get(&v.name) != Some(&v)
                    {
                        debug!("kubernetes: Node {} changed", v.name);
                        kept.nodes.insert(v.name.clone(), v);
                        kept.publish(&tx);
                    }
                }
                Ok(watcher::Event::Delete(n)) => {
                    let name = n.metadata.name.unwrap_or_default();
                    if kept.nodes.remove(&name).is_some() {
                        debug!("kubernetes: Node {name} deleted");
                        kept.publish(&tx);
                    }
                }
                Err(watcher::Error::WatchError(e)) if e.code == 410 => {
                    // The watcher relists by itself (Init … InitDone).
                    debug!("kubernetes: watch expired (410 Gone): relisting");
                }
                Err(e) => break e.to_string(),
            }
            if tx.is_closed() {
                return;
            }
        };
        if tx.is_closed() {
            return;
        }
        warn!(
            "kubernetes: {error}; keeping the last known Nodes, retrying in {} ms",
            backoff.as_millis()
        );
        tx.send_modify(|s| {
            if s.unreachable.is_none() {
                s.unreachable = Some(format!("since {}: {error}", now_rfc3339()));
            }
        });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
