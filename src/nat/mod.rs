//! Pod masquerade rules (flannel's FLANNEL-POSTRTG semantics), through
//! nftables or iptables.
//!
//! Invariant: rendering ([`rules`], the backends' render/parse functions)
//! and [`plan`] are pure; only a [`NatBackend`] runs `nft` /
//! `iptables-restore`, always as one atomic transaction, and never touches a
//! table or chain netconverge does not own. Rules are never flushed without
//! being replaced in the same transaction, and nothing removes them when
//! netconverge stops: only a plan for `masquerade = false` (or an
//! unconfigured family) and the explicit [`cleanup`] do.

pub mod diff;
mod exec;
pub mod iptables;
pub mod nftables;
pub mod rules;

#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::model::{Family, NatBackendKind, NatSpec};
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

pub use iptables::{IptFamily, IptablesBackend, IptablesTools};
pub use nftables::{NftBackend, NftFamily};

/// What a backend found for one family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FamilyObserved {
    /// Not looked at (no NAT configuration).
    #[default]
    NotObserved,
    /// The backend could not be read (tool missing, permission, parse error).
    Unavailable { reason: String },
    /// Nothing of ours exists for this family.
    Absent,
    /// Our nftables table exists.
    Nftables(NftFamily),
    /// Our iptables chain and/or a jump to it exists.
    Iptables(IptFamily),
}

impl FamilyObserved {
    fn is_present(&self) -> bool {
        matches!(
            self,
            FamilyObserved::Nftables(_) | FamilyObserved::Iptables(_)
        )
    }
}

/// What the NAT backend found on the system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NatObserved {
    /// Backend that was read; `None` when nothing was observed.
    pub backend: Option<NatBackendKind>,
    /// nftables table or iptables chain name that was looked for.
    pub name: String,
    pub ipv4: FamilyObserved,
    pub ipv6: FamilyObserved,
}

impl NatObserved {
    pub fn family(&self, family: Family) -> &FamilyObserved {
        match family {
            Family::Ipv4 => &self.ipv4,
            Family::Ipv6 => &self.ipv6,
        }
    }
}

/// One atomic NAT transaction, fully rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum NatOp {
    /// One `nft -j -f -` batch.
    Nftables {
        family: Family,
        table: String,
        batch: ::nftables::schema::Nftables<'static>,
    },
    /// One `iptables-restore --noflush` (or `ip6tables-restore`) input.
    Iptables {
        family: Family,
        chain: String,
        restore: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("`{tool}` not found: {hint}")]
    Missing { tool: String, hint: &'static str },
    #[error("cannot run `{tool}`: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot understand `{command}` output: {detail}")]
    Parse { command: String, detail: String },
    #[error("cannot read the current rules: {reason}")]
    Unreadable { reason: String },
    #[error("an {op} operation cannot run on the {backend} backend")]
    WrongBackend {
        op: &'static str,
        backend: &'static str,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<NatError>),
}

impl NatError {
    /// `Ok` when `errors` is empty, else the error (or all of them).
    fn collect(mut errors: Vec<NatError>) -> Result<(), NatError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(NatError::Several(errors)),
        }
    }
}

/// A NAT backend: reads and writes only netconverge's own table/chain.
pub trait NatBackend: Send + Sync {
    fn kind(&self) -> NatBackendKind;
    /// Read both families (errors are recorded per family, for `plan`).
    fn observe(&self, spec: &NatSpec) -> NatObserved;
    /// Run one transaction.
    fn apply(&self, op: &NatOp) -> Result<(), NatError>;
    /// Remove everything netconverge owns for NAT, in both families;
    /// returns what was removed.
    fn cleanup(&self, spec: &NatSpec) -> Result<Vec<String>, NatError>;
    /// Are the tools this spec needs installed?
    fn check(&self, spec: &NatSpec) -> Result<(), NatError>;
}

/// The backend for `kind`, using the system's tools from `PATH`.
pub fn backend(kind: NatBackendKind) -> Box<dyn NatBackend> {
    match kind {
        NatBackendKind::Nftables => Box::new(NftBackend::default()),
        NatBackendKind::Iptables => Box::new(IptablesBackend::default()),
    }
}

/// `nat ipv4 (nftables table ip netconverge)`.
fn object(kind: NatBackendKind, family: Family, name: &str) -> String {
    let what = match kind {
        NatBackendKind::Nftables => nftables::table_label(family, name),
        NatBackendKind::Iptables => iptables::chain_label(family, name),
    };
    format!("nat {family} ({what})")
}

fn removal_reason(spec: Option<&NatSpec>, family: Family) -> String {
    match spec {
        None => "nat not configured".to_string(),
        Some(s) if !s.masquerade => "masquerade = false".to_string(),
        Some(_) => format!("{family} not configured"),
    }
}

/// Pure: the changes that bring `observed` to `spec` (and anything blocked):
/// at most one change per family, whose op rewrites that family at once.
pub fn plan(spec: Option<&NatSpec>, observed: &NatObserved) -> Plan {
    let mut plan = Plan::default();
    for family in [Family::Ipv4, Family::Ipv6] {
        let seen = observed.family(family);
        let want = rules::desired(spec, family);
        match (spec, want) {
            (_, None) => {
                if !seen.is_present() {
                    continue;
                }
                // Removal targets what observe looked at, by its own name.
                let (kind, op) = match seen {
                    FamilyObserved::Iptables(s) => (
                        NatBackendKind::Iptables,
                        iptables::remove_op(family, &observed.name, s),
                    ),
                    _ => (
                        NatBackendKind::Nftables,
                        nftables::remove_op(family, &observed.name),
                    ),
                };
                plan.changes.push(Change {
                    kind: ChangeKind::Remove,
                    object: object(kind, family, &observed.name),
                    reason: removal_reason(spec, family),
                    op: Op::Nat(op),
                });
            }
            (Some(spec), Some(want)) => {
                let name = match spec.backend {
                    NatBackendKind::Nftables => &spec.nft_table,
                    NatBackendKind::Iptables => &spec.iptables_chain,
                };
                let obj = object(spec.backend, family, name);
                let blocked = |reason: String| Blocked {
                    object: obj.clone(),
                    reason,
                };
                let change = match (spec.backend, seen) {
                    (_, FamilyObserved::NotObserved) => {
                        Err(blocked("rules not observed".to_string()))
                    }
                    (_, FamilyObserved::Unavailable { reason }) => {
                        Err(blocked(format!("cannot read current rules: {reason}")))
                    }
                    (NatBackendKind::Nftables, FamilyObserved::Absent) => {
                        Ok(nftables::plan_family(family, name, &want, None))
                    }
                    (NatBackendKind::Nftables, FamilyObserved::Nftables(s)) => {
                        Ok(nftables::plan_family(family, name, &want, Some(s)))
                    }
                    (NatBackendKind::Iptables, FamilyObserved::Absent) => {
                        Ok(iptables::plan_family(family, name, &want, None))
                    }
                    (NatBackendKind::Iptables, FamilyObserved::Iptables(s)) => {
                        Ok(iptables::plan_family(family, name, &want, Some(s)))
                    }
                    (_, FamilyObserved::Nftables(_) | FamilyObserved::Iptables(_)) => {
                        Err(blocked("observed through the other backend".to_string()))
                    }
                };
                match change {
                    Ok(Some((kind, reason, op))) => plan.changes.push(Change {
                        kind,
                        object: obj,
                        reason,
                        op: Op::Nat(op),
                    }),
                    Ok(None) => {}
                    Err(b) => plan.blocked.push(b),
                }
            }
            // `desired` is `None` without a spec.
            (None, Some(_)) => {}
        }
    }
    plan
}

/// Read the live rules of the configured backend. Without a spec nothing is
/// read (the backend's tools may not even be installed). Read failures are
/// recorded per family in the result, so the plan can report them.
pub fn observe(spec: Option<&NatSpec>) -> Result<NatObserved, NatError> {
    Ok(match spec {
        Some(s) => backend(s.backend).observe(s),
        None => NatObserved::default(),
    })
}

/// Run one transaction with the system's tools.
pub fn apply(op: &NatOp) -> Result<(), NatError> {
    match op {
        NatOp::Nftables { .. } => NftBackend::default().apply(op),
        NatOp::Iptables { .. } => IptablesBackend::default().apply(op),
    }
}

/// Remove everything netconverge owns for NAT (our nftables tables, or our
/// iptables chains and the jumps to them, both families) and nothing else.
/// Returns what was removed.
pub fn cleanup(spec: &NatSpec) -> Result<Vec<String>, NatError> {
    backend(spec.backend).cleanup(spec)
}

/// Fail with a message naming the package to install unless the backend's
/// tools are in `PATH` (always `Ok` when `masquerade = false`).
pub fn check_backend(spec: &NatSpec) -> Result<(), NatError> {
    if !spec.masquerade {
        return Ok(());
    }
    backend(spec.backend).check(spec)
}
