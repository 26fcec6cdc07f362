//! The Kubernetes event source of `run` (`[fleet] source = "kubernetes"`).
//!
//! Invariant: no pass runs before the first complete list of Nodes has
//! been turned into a valid desired state ([`KubeSource::ready`]); after
//! that the desired state changes only when a *full* Node set (the watch
//! task never sends a partial one) selects differently, so the API being
//! unreachable leaves the kernel with the last known peers. This node's
//! annotations are PATCHed after a pass that converged, only the keys that
//! differ, one request at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::config::kube::{OwnNode, publish_patch, select};
use crate::config::{KubeSpec, NodeView, Selection};
use crate::kube::{KubeClient, KubeError, WatchState, device_macs};
use crate::metrics::SourceState;
use crate::model::{Family, Mac, Observed};

pub(super) type PatchResult = (serde_json::Value, Result<(), KubeError>);

/// This source's name in `netconverge_source_state`.
const SOURCE_KUBE: &str = "kubernetes";

/// The API connection of a running daemon.
pub struct KubeSource {
    spec: KubeSpec,
    client: KubeClient,
    rx: tokio::sync::watch::Receiver<WatchState>,
    /// The last selection made from a full Node set.
    selection: Option<Selection>,
    /// A desired state built from `selection` is in place.
    installed: bool,
    /// `selection` changed since the desired state was built.
    dirty: bool,
    seen: u64,
    pub unreachable: Option<String>,
    /// Why the last selection gave no desired state (shown in STATUS).
    pub problem: Option<String>,
    patch_tx: tokio::sync::mpsc::Sender<PatchResult>,
    patch_rx: tokio::sync::mpsc::Receiver<PatchResult>,
    /// The body in flight or last accepted (not re-sent while unchanged).
    sent: Option<serde_json::Value>,
    in_flight: bool,
}

/// What a change of the watch state means for the daemon.
pub enum Change {
    /// A new selection: rebuild the desired state (debounced pass).
    Nodes,
    /// Only the reachability changed (STATUS).
    Status,
    /// The watch task is gone (never expected).
    Closed,
}

impl KubeSource {
    /// Connects and starts the watch (the first list starts at once).
    pub async fn start(spec: KubeSpec) -> Result<KubeSource, KubeError> {
        let client = crate::kube::connect(&spec).await?;
        let rx = client.watch(&spec);
        let (patch_tx, patch_rx) = tokio::sync::mpsc::channel(1);
        info!(
            "kubernetes: watching Nodes as `{}` ({})",
            spec.node_name,
            if spec.publish {
                "publishing its annotations"
            } else {
                "read-only"
            }
        );
        Ok(KubeSource {
            spec,
            client,
            rx,
            selection: None,
            installed: false,
            dirty: false,
            seen: 0,
            unreachable: None,
            problem: None,
            patch_tx,
            patch_rx,
            sent: None,
            in_flight: false,
        })
    }

    /// A new watch after the task ended.
    fn restart(&mut self) {
        self.rx = self.client.watch(&self.spec);
        self.seen = 0;
    }

    /// A desired state from the API is in place: passes may run.
    pub fn ready(&self) -> bool {
        self.installed
    }

    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// The selection the desired state is to be built from.
    pub fn selection(&self) -> Option<&Selection> {
        self.selection.as_ref()
    }

    /// The desired state was (re)built from [`Self::selection`]: `Ok` when
    /// it is in place, `Err` with why not (kept until the next change).
    pub fn built(&mut self, result: Result<(), String>) {
        self.dirty = false;
        match result {
            Ok(()) => {
                self.installed = true;
                self.problem = None;
            }
            Err(e) => self.problem = Some(e),
        }
    }

    /// Waits for the watch state to change or the PATCH in flight to end.
    pub(super) async fn next(src: &mut Option<KubeSource>) -> super::Event {
        match src.as_mut() {
            Some(k) => tokio::select! {
                r = k.rx.changed() => super::Event::Kube(r.is_ok()),
                r = k.patch_rx.recv() => super::Event::KubePatched(r),
            },
            None => std::future::pending().await,
        }
    }

    /// Takes the newest watch state.
    pub fn on_change(&mut self, alive: bool) -> Change {
        let m = crate::metrics::get();
        if !alive {
            m.set_source(SOURCE_KUBE, SourceState::Disconnected);
            return Change::Closed;
        }
        let st = self.rx.borrow_and_update().clone();
        let was = self.unreachable.is_some();
        self.unreachable = st.unreachable.clone();
        // Connected once a full list arrived and while the watch is healthy.
        let state = if self.unreachable.is_none() && st.nodes.is_some() {
            SourceState::Connected
        } else {
            SourceState::Disconnected
        };
        m.set_source(SOURCE_KUBE, state);
        match (&self.unreachable, was) {
            (Some(u), false) => warn!("kubernetes: unreachable {u}; the last known peers stay"),
            (None, true) => info!("kubernetes: reachable again"),
            _ => {}
        }
        match st.nodes {
            Some(nodes) if st.generation != self.seen => {
                self.seen = st.generation;
                let sel = self.judge(&nodes);
                if self.selection.as_ref() != Some(&sel) {
                    self.selection = Some(sel);
                    self.dirty = true;
                    // our own PATCH may be what changed: compare again
                    self.sent = None;
                    return Change::Nodes;
                }
                Change::Status
            }
            _ => Change::Status,
        }
    }

    fn judge(&self, nodes: &Arc<Vec<NodeView>>) -> Selection {
        let sel = select(&self.spec, nodes);
        for s in &sel.skipped {
            if s.warn {
                warn!("kubernetes: {s}");
            } else {
                debug!("kubernetes: {s}");
            }
        }
        debug!(
            "kubernetes: {} Node(s) listed, {} in the fleet, {} skipped",
            nodes.len(),
            sel.nodes.len(),
            sel.skipped.len()
        );
        sel
    }

    /// After a pass that converged: PATCH this node's annotations where
    /// they differ from what the devices and the Node say.
    pub fn publish(&mut self, observed: &Observed) {
        if !self.spec.publish || self.in_flight {
            return;
        }
        let Some(own) = self.selection.as_ref().and_then(|s| s.me.as_ref()) else {
            return;
        };
        let macs = device_macs(&self.spec, observed);
        if macs.len() < self.spec.families.len() {
            return;
        }
        let Some(body) = patch_body(&self.spec, own, &macs) else {
            return;
        };
        if self.sent.as_ref() == Some(&body) {
            return;
        }
        info!(
            "kubernetes: publishing {body} on Node {}",
            self.spec.node_name
        );
        self.sent = Some(body.clone());
        self.in_flight = true;
        let (client, name, tx) = (
            self.client.clone(),
            self.spec.node_name.clone(),
            self.patch_tx.clone(),
        );
        tokio::spawn(async move {
            let r = client.patch_status(&name, &body).await;
            let _ = tx.send((body, r)).await;
        });
    }

    pub fn on_patched(&mut self, r: Option<PatchResult>) {
        self.in_flight = false;
        match r {
            Some((_, Ok(()))) => debug!("kubernetes: annotations published"),
            Some((body, Err(e))) => {
                warn!(
                    "kubernetes: cannot PATCH nodes/{}/status with {body}: {e}",
                    self.spec.node_name
                );
                // retried after the next pass
                self.sent = None;
            }
            None => {}
        }
    }

    /// For STATUS=.
    pub fn note(&self) -> Option<String> {
        match (&self.unreachable, &self.problem, self.installed) {
            (Some(u), _, _) => Some(format!("kubernetes: unreachable {u}")),
            (None, Some(p), _) => Some(format!("kubernetes: {p}")),
            (None, None, false) => Some("kubernetes: waiting for the first list of Nodes".into()),
            _ => None,
        }
    }
}

/// [`publish_patch`] for this node (a seam for tests).
pub fn patch_body(
    spec: &KubeSpec,
    own: &OwnNode,
    macs: &BTreeMap<Family, Mac>,
) -> Option<serde_json::Value> {
    publish_patch(spec, own, macs)
}

// The daemon's side: kept here so the Kubernetes source is one file.
impl super::Daemon {
    /// The Node watch changed: a new selection makes a (debounced) pass
    /// due, which first rebuilds the desired state ([`Self::rebuild_from_kube`]).
    pub(super) fn on_kube(&mut self, alive: bool) {
        let Some(k) = self.kube.as_mut() else { return };
        match k.on_change(alive) {
            Change::Nodes => {
                self.relevant_events += 1;
                self.rec.on_event(std::time::Instant::now());
            }
            Change::Status => {}
            Change::Closed => {
                warn!("kubernetes: the watch task ended; restarting it");
                k.restart();
            }
        }
        self.refresh_status();
    }

    /// Before a pass: rebuild the desired state if the selection changed.
    /// `false`: no desired state from the API yet, so no pass may run.
    pub(super) fn rebuild_from_kube(&mut self) -> bool {
        let Some(k) = self.kube.as_ref() else {
            return true;
        };
        if !k.dirty() {
            return k.ready();
        }
        let result = (self.loader)(k.selection());
        let built = match result {
            Ok(new) => {
                if new != *self.desired {
                    info!(
                        "kubernetes: the fleet changed: {} device(s), {} peer(s)",
                        new.vxlans.len(),
                        new.peers.len()
                    );
                    self.install_from_kube(new);
                }
                Ok(())
            }
            Err(errors) => {
                for e in &errors.0 {
                    warn!("kubernetes: the Nodes give no valid state: {e}");
                }
                let first = errors
                    .0
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                Err(format!("{first} (keeping the previous state)"))
            }
        };
        let ready = match self.kube.as_mut() {
            Some(k) => {
                k.built(built);
                k.ready()
            }
            None => true,
        };
        self.refresh_status();
        ready
    }

    fn install_from_kube(&mut self, new: crate::model::Desired) {
        self.interest = super::Interest::new(&new);
        self.src.files = super::FileWatch::new(&new.written_files());
        if new.nat != self.desired.nat {
            self.src.nat = super::NatWatch::new(new.nat.as_ref(), super::monitor_rcvbuf());
        }
        if new.daemon != self.desired.daemon {
            self.rec.reconfigure(&new.daemon, std::time::Instant::now());
        }
        self.src.nm = super::nm::reconfigure(self.src.nm.take(), &new);
        self.desired = Arc::new(new);
    }

    /// STATUS=: the last pass's line, then the notes (NetworkManager, a
    /// failed reload, the API's reachability).
    pub(super) fn refresh_status(&mut self) {
        let mut s = if self.base_status.is_empty() {
            "starting".to_string()
        } else {
            self.base_status.clone()
        };
        for n in [
            self.note.clone(),
            self.kube.as_ref().and_then(KubeSource::note),
        ]
        .into_iter()
        .flatten()
        {
            s.push_str("; ");
            s.push_str(&n);
        }
        self.sd.status(s);
    }
}
