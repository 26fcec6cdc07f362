//! The flannel subnet lease file (`/run/flannel/subnet.env`).
//!
//! Invariant: rendering/parsing and diffing are pure; writes are atomic
//! (temp file, fsync, rename, fsync dir) so a reader never sees a partial file.
//!
//! STUB: interface only; implemented in the lease issue.

use serde::Serialize;

use crate::model::LeaseSpec;
use crate::plan::Change;

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

/// Pure: changes that make the file match. `mtu` is the converged MTU of the
/// VXLAN device of the lease's first family (used when the spec has none).
pub fn plan(spec: Option<&LeaseSpec>, mtu: Option<u32>, observed: &LeaseObserved) -> Vec<Change> {
    let _ = (spec, mtu, observed);
    Vec::new()
}

pub fn observe(spec: Option<&LeaseSpec>) -> Result<LeaseObserved, LeaseError> {
    let _ = spec;
    Ok(LeaseObserved::default())
}

pub fn apply(op: &LeaseOp) -> Result<(), LeaseError> {
    match *op {}
}
