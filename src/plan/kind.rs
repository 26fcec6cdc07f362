//! Which kind of object a change or a blocked entry is about, and counts by
//! kind: the vocabulary of the daemon's metrics (`netconverge_objects`,
//! `netconverge_repairs_total`).
//!
//! Invariant: every [`Op`] has exactly one kind (an exhaustive match: a new
//! op does not compile until it has one), and every [`super::Blocked`]
//! entry carries the objects it stands for by kind, set by the planner where
//! it is made (a summary such as "3 routes, 2 neighbors on flannel.1"
//! counts 5) — never read back from its text. Pure, like the rest of the
//! planner.

use super::{ChangeKind, Op, Plan};

/// The kinds of object netconverge converges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A VXLAN device (create, rename, set, mark, retire).
    Device,
    Address,
    Neighbor,
    Fdb,
    Nexthop,
    Route,
    /// One NAT family's rule set.
    Nat,
    /// The flannel lease file (and its backup).
    Lease,
    /// The CNI conflist.
    Cni,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 9] = [
        ObjectKind::Device,
        ObjectKind::Address,
        ObjectKind::Neighbor,
        ObjectKind::Fdb,
        ObjectKind::Nexthop,
        ObjectKind::Route,
        ObjectKind::Nat,
        ObjectKind::Lease,
        ObjectKind::Cni,
    ];

    /// The label value (`kind="route"`).
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Device => "device",
            ObjectKind::Address => "address",
            ObjectKind::Neighbor => "neighbor",
            ObjectKind::Fdb => "fdb",
            ObjectKind::Nexthop => "nexthop",
            ObjectKind::Route => "route",
            ObjectKind::Nat => "nat",
            ObjectKind::Lease => "lease",
            ObjectKind::Cni => "cni",
        }
    }

    /// The noun the plan's summaries use (`3 fdb entries on flannel.1`).
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Device => "device",
            ObjectKind::Address => "address",
            ObjectKind::Neighbor => "neighbor",
            ObjectKind::Fdb => "fdb entry",
            ObjectKind::Nexthop => "nexthop",
            ObjectKind::Route => "route",
            ObjectKind::Nat => "nat rule set",
            ObjectKind::Lease => "lease file",
            ObjectKind::Cni => "cni conflist",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Op {
    /// The kind of object this operation changes.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Op::CreateVxlan(_)
            | Op::DeleteLink { .. }
            | Op::RenameLink { .. }
            | Op::RetireLink { .. }
            | Op::MarkLink { .. }
            | Op::SetVxlan { .. }
            | Op::SetLink { .. } => ObjectKind::Device,
            Op::AddAddress { .. } | Op::DelAddress { .. } => ObjectKind::Address,
            Op::SetNeighbor { .. } | Op::DelNeighbor { .. } => ObjectKind::Neighbor,
            Op::AddFdb { .. } | Op::DelFdb { .. } => ObjectKind::Fdb,
            Op::SetNexthop(_) | Op::DelNexthop { .. } => ObjectKind::Nexthop,
            Op::SetRoute(_) | Op::DelRoute(_) => ObjectKind::Route,
            Op::Nat(_) => ObjectKind::Nat,
            Op::Lease(_) => ObjectKind::Lease,
            Op::Cni(_) => ObjectKind::Cni,
        }
    }
}

/// A count per [`ObjectKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts([usize; ObjectKind::ALL.len()]);

impl KindCounts {
    pub fn get(&self, kind: ObjectKind) -> usize {
        self.0.get(kind.index()).copied().unwrap_or(0)
    }

    pub fn add(&mut self, kind: ObjectKind, n: usize) {
        if let Some(c) = self.0.get_mut(kind.index()) {
            *c = c.saturating_add(n);
        }
    }

    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }

    /// `(kind, count)` for every kind, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (ObjectKind, usize)> + '_ {
        ObjectKind::ALL.iter().map(|k| (*k, self.get(*k)))
    }
}

/// The changes of `plan` by kind; `removals` selects whether removals
/// (stale objects of ours) are counted.
pub fn changes_by_kind<'a>(
    changes: impl IntoIterator<Item = &'a super::Change>,
    removals: bool,
) -> KindCounts {
    let mut out = KindCounts::default();
    for c in changes {
        if removals || c.kind != ChangeKind::Remove {
            out.add(c.op.kind(), 1);
        }
    }
    out
}

/// The objects `plan`'s blocked entries stand for, by kind (each entry
/// carries its counts from where the planner made it).
pub fn blocked_by_kind(plan: &Plan) -> KindCounts {
    let mut out = KindCounts::default();
    for b in &plan.blocked {
        for (kind, n) in b.counts.iter() {
            out.add(kind, n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_skip_removals_when_asked() {
        use super::super::Change;
        let change = |kind, op| Change {
            kind,
            object: String::new(),
            reason: String::new(),
            op,
        };
        let changes = [
            change(ChangeKind::Add, Op::DelNexthop { id: 1 }),
            change(ChangeKind::Remove, Op::DelNexthop { id: 2 }),
            change(
                ChangeKind::Modify,
                Op::MarkLink {
                    name: "flannel.1".into(),
                },
            ),
        ];
        let all = changes_by_kind(&changes, true);
        assert_eq!(all.get(ObjectKind::Nexthop), 2);
        assert_eq!(all.get(ObjectKind::Device), 1);
        assert_eq!(all.total(), 3);
        let kept = changes_by_kind(&changes, false);
        assert_eq!(kept.get(ObjectKind::Nexthop), 1);
        assert_eq!(kept.iter().count(), ObjectKind::ALL.len());
    }
}
