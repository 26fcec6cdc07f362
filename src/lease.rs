//! The flannel subnet lease file (`/run/flannel/subnet.env`).
//!
//! Invariant: rendering/parsing and diffing are pure; writes are atomic
//! (temp file, fsync, rename, fsync dir) so a reader never sees a partial file.
//!
//! STUB: interface only; implemented in the lease issue.

use serde::Serialize;

use crate::model::LeaseSpec;
use crate::plan::Plan;

/// The lease file (and guard-mode backup) as found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseObserved {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LeaseOp {}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{0}")]
    Io(String),
}

/// Pure: changes that make the file match. `vxlan_mtu` is the MTU the planner
/// resolved for the VXLAN device of the lease's first family (IPv4 first;
/// `None` when that device is blocked), used when the spec has no `mtu`.
pub fn plan(spec: Option<&LeaseSpec>, vxlan_mtu: Option<u32>, observed: &LeaseObserved) -> Plan {
    let _ = (spec, vxlan_mtu, observed);
    Plan::default()
}

pub fn observe(spec: Option<&LeaseSpec>) -> Result<LeaseObserved, LeaseError> {
    let _ = spec;
    Ok(LeaseObserved::default())
}

pub fn apply(op: &LeaseOp) -> Result<(), LeaseError> {
    match *op {}
}
