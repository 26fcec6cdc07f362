//! Which kind of object a change or a blocked entry is about, and counts by
//! kind: the vocabulary of the daemon's metrics (`netconverge_objects`,
//! `netconverge_repairs_total`).
//!
//! Invariant: every [`Op`] has exactly one kind (an exhaustive match: a new
//! op does not compile until it has one), and every [`Blocked`] entry the
//! planner writes is counted under a kind with the number of objects it
//! stands for (a summary such as "3 routes, 2 neighbors on flannel.1" counts
//! 5); wording the classifier does not know lands in [`ObjectKind::Other`],
//! never nowhere. Pure, like the rest of the planner.

use super::{Blocked, ChangeKind, Op, Plan};

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
    /// A blocked entry whose wording is not known here (a planner message
    /// newer than this classifier).
    Other,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 10] = [
        ObjectKind::Device,
        ObjectKind::Address,
        ObjectKind::Neighbor,
        ObjectKind::Fdb,
        ObjectKind::Nexthop,
        ObjectKind::Route,
        ObjectKind::Nat,
        ObjectKind::Lease,
        ObjectKind::Cni,
        ObjectKind::Other,
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
            ObjectKind::Other => "other",
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

/// The objects `plan`'s blocked entries stand for, by kind.
pub fn blocked_by_kind(plan: &Plan) -> KindCounts {
    let mut out = KindCounts::default();
    for b in &plan.blocked {
        for (kind, n) in blocked_kinds(b) {
            out.add(kind, n);
        }
    }
    out
}

/// What one blocked entry stands for. The planner's wordings: `vxlan NAME`,
/// `route …`, `peer SUBNET dev DEV` (its route, neighbour and FDB entry are
/// not planned: counted as its route, the object that carries traffic),
/// `N routes with a gateway`, the summary `1 route, 3 neighbors, 2 fdb
/// entries on DEV`, `nat …`, `lease …`, `lease backup …`, `cni …`.
pub fn blocked_kinds(b: &Blocked) -> Vec<(ObjectKind, usize)> {
    let object = b.object.as_str();
    if let Some(list) = summary(object) {
        return list;
    }
    let first = object.split_whitespace().next().unwrap_or_default();
    let kind = match first {
        "vxlan" | "device" => ObjectKind::Device,
        "address" => ObjectKind::Address,
        "neighbor" => ObjectKind::Neighbor,
        "fdb" => ObjectKind::Fdb,
        "nexthop" => ObjectKind::Nexthop,
        "route" | "peer" => ObjectKind::Route,
        "nat" => ObjectKind::Nat,
        "lease" => ObjectKind::Lease,
        "cni" => ObjectKind::Cni,
        _ => ObjectKind::Other,
    };
    vec![(kind, 1)]
}

/// `1 route, 3 neighbors, 2 fdb entries on DEV` and `N routes with a
/// gateway`: counted parts, each `N noun…`.
fn summary(object: &str) -> Option<Vec<(ObjectKind, usize)>> {
    let list = object
        .rsplit_once(" on ")
        .map(|(l, _)| l)
        .or_else(|| object.strip_suffix(" with a gateway"))?;
    let mut out = Vec::new();
    for part in list.split(", ") {
        let (n, noun) = part.split_once(' ')?;
        let n: usize = n.parse().ok()?;
        let kind = match noun {
            "route" | "routes" => ObjectKind::Route,
            "address" | "addresses" => ObjectKind::Address,
            "neighbor" | "neighbors" => ObjectKind::Neighbor,
            "fdb entry" | "fdb entries" => ObjectKind::Fdb,
            "nexthop" | "nexthops" => ObjectKind::Nexthop,
            _ => ObjectKind::Other,
        };
        out.push((kind, n));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(object: &str) -> Blocked {
        Blocked {
            object: object.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn the_planners_wordings_are_counted_by_kind() {
        let cases: [(&str, Vec<(ObjectKind, usize)>); 9] = [
            ("vxlan flannel.1", vec![(ObjectKind::Device, 1)]),
            (
                "route 198.18.2.0/24 via 198.18.2.0 dev flannel.1 onlink table main",
                vec![(ObjectKind::Route, 1)],
            ),
            (
                "peer 198.18.2.0/24 dev flannel.1",
                vec![(ObjectKind::Route, 1)],
            ),
            ("1 route with a gateway", vec![(ObjectKind::Route, 1)]),
            ("40 routes with a gateway", vec![(ObjectKind::Route, 40)]),
            (
                "1 address, 3 neighbors, 2 fdb entries, 4 routes on flannel.1",
                vec![
                    (ObjectKind::Address, 1),
                    (ObjectKind::Neighbor, 3),
                    (ObjectKind::Fdb, 2),
                    (ObjectKind::Route, 4),
                ],
            ),
            (
                "lease /run/flannel/subnet.env",
                vec![(ObjectKind::Lease, 1)],
            ),
            (
                "cni /etc/cni/net.d/10-netconverge.conflist",
                vec![(ObjectKind::Cni, 1)],
            ),
            ("something new", vec![(ObjectKind::Other, 1)]),
        ];
        for (object, want) in cases {
            assert_eq!(blocked_kinds(&blocked(object)), want, "{object}");
        }
    }

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
