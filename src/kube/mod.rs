//! The Kubernetes API for `[fleet] source = "kubernetes"`: one list of the
//! Nodes (`converge`, `--check`, `show`), a watch that keeps them (`run`),
//! and the strategic-merge PATCH of this node's status annotations.
//!
//! Invariant: this module only reads and reports; it never decides what a
//! Node means (that is [`crate::config::kube`]) and never removes a peer
//! by itself. The watch publishes a full Node set only after a complete
//! list (`InitDone`), so a partial view (a list cut short, an outage) never
//! reaches the daemon: while the API is unreachable the last full set
//! stays, and [`WatchState::unreachable`] says since when. Any error
//! restarts the watch from a fresh list after a backoff, so the first state
//! after an outage is a full relist (Nodes deleted meanwhile disappear).
//!
//! Without the `kubernetes` cargo feature the same API exists and every
//! call fails with [`KubeError::Disabled`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{KubeSpec, NodeView, Selection};
use crate::model::{Family, Mac, Observed};

#[cfg(feature = "kubernetes")]
mod client;
#[cfg(feature = "kubernetes")]
pub use client::{KubeClient, connect};

#[cfg(not(feature = "kubernetes"))]
mod disabled;
#[cfg(not(feature = "kubernetes"))]
pub use disabled::{KubeClient, connect};

/// How long one list (one-shot commands) or one PATCH may take.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes credentials: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("Kubernetes API: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("this netconverge was built without Kubernetes support (cargo feature `kubernetes`)")]
    Disabled,
}

/// What the watch knows, replaced as a whole on each change (a
/// `tokio::sync::watch` value: the daemon reads only the newest).
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    /// The Nodes after the last complete list plus the watch events since;
    /// `None` until the first list completed.
    pub nodes: Option<Arc<Vec<NodeView>>>,
    /// Counts changes of `nodes` (a relist that changed nothing counts too:
    /// it is the sign the API is back).
    pub generation: u64,
    /// `Some("since <RFC 3339>: <error>")` while the API is unreachable.
    pub unreachable: Option<String>,
}

/// The VXLAN devices' MACs per family as the kernel has them, for the
/// published `backend-data` (the device's real MAC, like flannel).
pub fn device_macs(spec: &KubeSpec, observed: &Observed) -> BTreeMap<Family, Mac> {
    spec.families
        .iter()
        .filter_map(|kf| {
            observed
                .links
                .get(&kf.device)
                .and_then(|l| l.mac)
                .map(|m| (kf.family, m))
        })
        .collect()
}

/// One list of the Nodes, judged (`converge`, `converge --check`, `show`).
pub async fn select_once(spec: &KubeSpec) -> Result<Selection, KubeError> {
    let client = connect(spec).await?;
    let nodes = client.list(spec).await?;
    Ok(crate::config::kube::select(spec, &nodes))
}

/// After a one-shot `converge`: PATCH this node's annotations where they
/// differ (`Ok(None)`: nothing to change, or `publish = false`).
pub async fn publish_once(
    spec: &KubeSpec,
    selection: &Selection,
    observed: &Observed,
) -> Result<Option<serde_json::Value>, KubeError> {
    let Some(own) = selection.me.as_ref().filter(|_| spec.publish) else {
        return Ok(None);
    };
    let macs = device_macs(spec, observed);
    let Some(body) = crate::config::kube::publish_patch(spec, own, &macs) else {
        return Ok(None);
    };
    let client = connect(spec).await?;
    client.patch_status(&spec.node_name, &body).await?;
    Ok(Some(body))
}
