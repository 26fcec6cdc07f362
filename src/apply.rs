//! Operations → netlink / nft / files.
//!
//! Invariant: every operation is idempotent (EEXIST on add and ENOENT on
//! delete count as success); one failure never stops the others; all failures
//! are returned.
//!
//! STUB: implemented in the core engine issue.

use crate::model::Observed;
use crate::plan::Plan;

/// One operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub object: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub applied: usize,
    pub failures: Vec<Failure>,
}

pub async fn apply(handle: &rtnetlink::Handle, plan: &Plan, observed: &Observed) -> ApplyReport {
    let _ = (handle, plan, observed);
    ApplyReport::default()
}
