//! Pod masquerade rules (flannel's FLANNEL-POSTRTG semantics).
//!
//! Invariant: rendering and diffing are pure; only the backends run `nft` /
//! `iptables-restore`, always as one atomic transaction, and never touch a
//! table or chain netconverge does not own. Rules are never flushed without
//! being replaced in the same transaction.
//!
//! STUB: interface only; implemented in the NAT issue.

use serde::Serialize;

use crate::model::NatSpec;
use crate::plan::Plan;

/// What the NAT backend found on the system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NatObserved {}

/// One atomic NAT transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NatOp {}

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("{0}")]
    Backend(String),
}

/// Pure: the changes that bring `observed` to `spec` (and anything blocked).
pub fn plan(spec: Option<&NatSpec>, observed: &NatObserved) -> Plan {
    let _ = (spec, observed);
    Plan::default()
}

/// Read the live rules of the configured backend.
pub fn observe(spec: Option<&NatSpec>) -> Result<NatObserved, NatError> {
    let _ = spec;
    Ok(NatObserved::default())
}

/// Run one transaction.
pub fn apply(op: &NatOp) -> Result<(), NatError> {
    match *op {}
}

/// Remove everything netconverge owns for NAT; returns what was removed.
pub fn cleanup(spec: &NatSpec) -> Result<Vec<String>, NatError> {
    let _ = spec;
    Ok(Vec::new())
}
