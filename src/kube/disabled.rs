//! The [`super`] API in a build without the `kubernetes` feature.
//!
//! Invariant: every call fails with [`KubeError::Disabled`]; nothing here
//! ever returns Nodes, so nothing is ever converged from them.

use super::{KubeError, WatchState};
use crate::config::{KubeSpec, NodeView};

/// Never constructed: [`connect`] always fails.
#[derive(Clone)]
pub struct KubeClient {
    _never: (),
}

pub async fn connect(_spec: &KubeSpec) -> Result<KubeClient, KubeError> {
    Err(KubeError::Disabled)
}

impl KubeClient {
    pub async fn list(&self, _spec: &KubeSpec) -> Result<Vec<NodeView>, KubeError> {
        Err(KubeError::Disabled)
    }

    pub async fn patch_status(
        &self,
        _name: &str,
        _body: &serde_json::Value,
    ) -> Result<(), KubeError> {
        Err(KubeError::Disabled)
    }

    pub fn watch(&self, _spec: &KubeSpec) -> tokio::sync::watch::Receiver<WatchState> {
        tokio::sync::watch::channel(WatchState::default()).1
    }
}
