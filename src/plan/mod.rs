//! The planner: a pure, deterministic function from (desired, observed) to an
//! ordered list of operations, each with a human reason.
//!
//! Invariant: no I/O, no clock, no randomness; the same inputs give the same
//! plan byte for byte (snapshot-tested). Objects netconverge does not own are
//! never the subject of a removal.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{Desired, Family, Mac, Observed};

/// A fully resolved VXLAN device, ready to be created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanCreate {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub underlay: String,
    pub family: Family,
    pub local: IpAddr,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub learning: bool,
    pub gbp: bool,
}

/// A route as netconverge installs or removes it: the same shape the kernel
/// reports (installed routes always carry netconverge's protocol marker).
pub type RouteOp = crate::model::RouteState;

/// A gateway nexthop object as netconverge creates it
/// (`ip nexthop add id ID via VIA dev DEV [onlink] proto PROTOCOL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NexthopOp {
    pub id: u32,
    pub via: IpAddr,
    pub dev: String,
    pub onlink: bool,
    pub protocol: u8,
}

/// One kernel/file/rule-set operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateVxlan(VxlanCreate),
    DeleteLink {
        name: String,
    },
    /// Rename a device netconverge created (its ifindex, and so everything
    /// on it and every route through it, stays).
    RenameLink {
        from: String,
        to: String,
    },
    /// Delete a device netconverge created that the file no longer
    /// declares, after the new state is in place.
    RetireLink {
        name: String,
    },
    /// Put netconverge's mark ([`crate::model::DEVICE_MARK`]) on a device
    /// (adoption, or one created by a version without marks).
    MarkLink {
        name: String,
    },
    /// Change a VXLAN device's attributes the kernel accepts in place
    /// (`ip link set NAME type vxlan local L dev U [no]learning`).
    SetVxlan {
        name: String,
        local: Option<IpAddr>,
        underlay: Option<String>,
        learning: Option<bool>,
    },
    SetLink {
        name: String,
        mtu: Option<u32>,
        mac: Option<Mac>,
        up: Option<bool>,
    },
    /// Add an address marked with `protocol` (`IFA_PROTO`).
    AddAddress {
        dev: String,
        cidr: IpNet,
        protocol: u8,
    },
    DelAddress {
        dev: String,
        cidr: IpNet,
    },
    /// Add or replace a permanent neighbour.
    SetNeighbor {
        dev: String,
        ip: IpAddr,
        mac: Mac,
    },
    DelNeighbor {
        dev: String,
        ip: IpAddr,
    },
    /// Append a permanent `self` FDB entry.
    AddFdb {
        dev: String,
        mac: Mac,
        dst: IpAddr,
    },
    DelFdb {
        dev: String,
        mac: Mac,
        dst: Option<IpAddr>,
    },
    /// Create a nexthop object under an id that was free when observed
    /// (never overwrites one: a taken id fails and the next round re-plans).
    SetNexthop(NexthopOp),
    /// Remove a nexthop object (the kernel drops routes still using it).
    DelNexthop {
        id: u32,
    },
    /// Add or replace a route.
    SetRoute(RouteOp),
    DelRoute(RouteOp),
    Nat(crate::model::nat::NatOp),
    Lease(crate::model::lease::LeaseOp),
    Cni(crate::model::cni::CniOp),
}

/// The order in which operations run; within a stage they are independent
/// and may run concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Stage {
    /// First: every later operation names devices by their new names.
    RenameLinks,
    RemoveStale,
    DeleteLinks,
    CreateLinks,
    SetLinks,
    Addresses,
    /// After the new addresses: removing a device's last IPv4 address makes
    /// the kernel drop every IPv4 route through it.
    PruneAddresses,
    L2,
    /// After L2 (the kernel never has to ARP for a gateway), before the
    /// routes that use them.
    Nexthops,
    Routes,
    /// After the routes moved off them: deleting a nexthop deletes every
    /// route still using it.
    PruneNexthops,
    /// Devices no longer declared go last: their routes have moved to the
    /// devices that replace them, so the overlay is never without routes.
    /// (One that stands in the way of the plan — it holds the VNI of a
    /// device being created, or a foreign route through it holds a declared
    /// place — goes first instead, as a `DeleteLink`.)
    RetireLinks,
    Nat,
    /// After every NAT install/repair: netconverge's NAT objects at places
    /// the file no longer names (old name, backend or flavour) go only once
    /// the new place holds the rules.
    NatStale,
    Lease,
    Cni,
}

impl Op {
    pub fn stage(&self) -> Stage {
        match self {
            Op::DelRoute(_) | Op::DelNeighbor { .. } | Op::DelFdb { .. } => Stage::RemoveStale,
            // After the new addresses (see `Stage::PruneAddresses`).
            Op::DelAddress { .. } => Stage::PruneAddresses,
            Op::DeleteLink { .. } => Stage::DeleteLinks,
            Op::RenameLink { .. } => Stage::RenameLinks,
            Op::RetireLink { .. } => Stage::RetireLinks,
            Op::MarkLink { .. } | Op::SetVxlan { .. } => Stage::SetLinks,
            Op::CreateVxlan(_) => Stage::CreateLinks,
            Op::SetLink { .. } => Stage::SetLinks,
            Op::AddAddress { .. } => Stage::Addresses,
            Op::SetNeighbor { .. } | Op::AddFdb { .. } => Stage::L2,
            Op::SetNexthop(_) => Stage::Nexthops,
            Op::SetRoute(_) => Stage::Routes,
            Op::DelNexthop { .. } => Stage::PruneNexthops,
            Op::Nat(n) if n.is_stale_removal() => Stage::NatStale,
            Op::Nat(_) => Stage::Nat,
            Op::Lease(_) => Stage::Lease,
            Op::Cni(_) => Stage::Cni,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Add,
    Remove,
    Modify,
}

impl ChangeKind {
    pub fn sigil(self) -> char {
        match self {
            ChangeKind::Add => '+',
            ChangeKind::Remove => '-',
            ChangeKind::Modify => '~',
        }
    }
}

/// One line of the diff and the operation that resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The object, printable: `vxlan flannel.1`, `route 198.18.2.0/24 table main`.
    pub object: String,
    /// Why: `missing`, `mtu 1500 → 1450`, `not declared (owned device)`.
    pub reason: String,
    #[serde(skip)]
    pub op: Op,
}

/// An object that cannot be converged now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub object: String,
    pub reason: String,
    /// The objects it stands for, by kind (one, or a summary's parts), set
    /// where the planner makes it: the metrics count these, never the text.
    #[serde(skip)]
    pub counts: kind::KindCounts,
}

impl Blocked {
    /// One object of `kind`.
    pub fn new(
        kind: kind::ObjectKind,
        object: impl Into<String>,
        reason: impl Into<String>,
    ) -> Blocked {
        let mut counts = kind::KindCounts::default();
        counts.add(kind, 1);
        Blocked::of(counts, object, reason)
    }

    /// A summary entry standing for `counts` objects.
    pub fn of(
        counts: kind::KindCounts,
        object: impl Into<String>,
        reason: impl Into<String>,
    ) -> Blocked {
        Blocked {
            object: object.into(),
            reason: reason.into(),
            counts,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub blocked: Vec<Blocked>,
    /// Facts the diff states without being a change (e.g. which iptables
    /// flavour NAT uses, and why); printed as `# ` lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn in_sync(&self) -> bool {
        self.changes.is_empty() && self.blocked.is_empty()
    }

    /// Append another plan (NAT, lease) after this one.
    pub fn extend(&mut self, other: Plan) {
        self.changes.extend(other.changes);
        self.blocked.extend(other.blocked);
        self.notes.extend(other.notes);
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{} {}: {}", c.kind.sigil(), c.object, c.reason)?;
        }
        for b in &self.blocked {
            writeln!(f, "! {}: blocked: {}", b.object, b.reason)?;
        }
        for n in &self.notes {
            writeln!(f, "# {n}")?;
        }
        Ok(())
    }
}

pub mod cni;
mod kernel;
pub mod kind;
pub mod lease;
pub mod nat;
// A model of the kernel for property tests (tests/properties.rs).
pub mod simulate;
#[cfg(test)]
mod tests;

/// Compute the ordered plan for everything in `desired`. Pure and
/// deterministic: kernel objects first (in [`Stage`] order), then NAT, then
/// the lease file.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let kernel = kernel::plan_kernel(desired, observed);
    let lease_mtu = kernel.lease_mtu(desired);
    let cni_mtu = cni::vxlan_mtu(desired, &kernel.mtus);
    let mut out = kernel.plan;
    out.extend(nat::plan(desired.nat.as_ref(), &observed.nat));
    out.extend(lease::plan(
        desired.lease.as_ref(),
        lease_mtu,
        &observed.lease,
    ));
    out.extend(cni::plan(desired.cni.as_ref(), cni_mtu, &observed.cni));
    out
}

/// Removal of everything netconverge owns in the kernel (for `cleanup`),
/// recognised without the file: VXLAN devices carrying its mark, whatever
/// their name (the kernel drops their addresses, neighbours, FDB entries
/// and routes with them), and routes and nexthops elsewhere that carry one
/// of its route protocols (the current one and those in its record).
/// Then every NAT table/chain of netconverge's, wherever it is
/// ([`nat::cleanup`]). Nothing foreign is ever in it. The lease file is left
/// for the pods that still read it. An ordinary plan: `cleanup` applies and
/// verifies it like any other, and `cleanup --check` prints it.
pub fn cleanup_plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut out = kernel::cleanup(desired, observed);
    out.extend(nat::cleanup(&observed.nat));
    out
}
