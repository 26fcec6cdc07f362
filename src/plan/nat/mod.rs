//! NAT planning: the desired masquerade rules ([`rules`]), their rendering
//! and parsing per backend ([`nftables`], [`iptables`]) and the plan that
//! brings what was observed to them.
//!
//! Invariant: pure. Nothing here runs `nft`/`iptables`; [`crate::nat`] does,
//! for observe and apply. At most one change per family at the place the file
//! names, then the removal of every leftover of ours elsewhere, each only
//! once the new place holds the family's rules.

pub mod diff;
pub mod iptables;
pub mod nftables;
pub mod rules;

use crate::model::nat::{
    Flavour, Found, Guard, IptFamily, Named, NatObserved, NatOp, NftFamily, Place, Seen,
};
use crate::model::{Family, NatBackendKind, NatSpec};
use crate::plan::kind::ObjectKind;
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

/// `nat ipv4 (nftables table ip netconverge)`.
pub fn object(place: &Place, family: Family) -> String {
    format!("nat {family} ({})", place.label(family))
}

/// One NAT backend at the place the file names: the only code that knows
/// how its state is planned, owned and removed. [`Named`] binds each place
/// to its own kind of state, so no backend ever sees the other's.
trait Backend {
    type State;
    fn place(&self) -> Place;
    /// The change (if any) that makes `family` hold `want`; `seen == None`:
    /// nothing there. `Err` is blocked (a conflict).
    fn plan_family(
        &self,
        family: Family,
        want: &[rules::Rule],
        seen: Option<&Self::State>,
        adopt: bool,
    ) -> Result<Option<(ChangeKind, String, NatOp)>, String>;
    fn is_ours(state: &Self::State) -> bool;
    /// What removing it removes (printable) and the one transaction doing it.
    fn removal(&self, family: Family, state: &Self::State) -> (Vec<String>, NatOp);
}

/// nftables: one table per family.
struct Nft<'a>(&'a str);

impl Backend for Nft<'_> {
    type State = NftFamily;

    fn place(&self) -> Place {
        Place::Nftables {
            table: self.0.to_string(),
        }
    }

    fn plan_family(
        &self,
        family: Family,
        want: &[rules::Rule],
        seen: Option<&NftFamily>,
        adopt: bool,
    ) -> Result<Option<(ChangeKind, String, NatOp)>, String> {
        nftables::plan_family(family, self.0, want, seen, adopt)
    }

    fn is_ours(state: &NftFamily) -> bool {
        state.is_ours()
    }

    fn removal(&self, family: Family, _: &NftFamily) -> (Vec<String>, NatOp) {
        (
            vec![nftables::table_label(family, self.0)],
            nftables::remove_op(family, self.0),
        )
    }
}

/// iptables (one flavour): a chain per family and its jump from POSTROUTING.
struct Ipt<'a> {
    flavour: Flavour,
    chain: &'a str,
}

impl Backend for Ipt<'_> {
    type State = IptFamily;

    fn place(&self) -> Place {
        Place::Iptables {
            flavour: self.flavour,
            chain: self.chain.to_string(),
        }
    }

    fn plan_family(
        &self,
        family: Family,
        want: &[rules::Rule],
        seen: Option<&IptFamily>,
        adopt: bool,
    ) -> Result<Option<(ChangeKind, String, NatOp)>, String> {
        iptables::plan_family(self.flavour, family, self.chain, want, seen, adopt)
    }

    fn is_ours(state: &IptFamily) -> bool {
        state.ownership().is_some()
    }

    fn removal(&self, family: Family, state: &IptFamily) -> (Vec<String>, NatOp) {
        (
            iptables::removal_items(self.flavour, family, self.chain, state),
            iptables::remove_op(self.flavour, family, self.chain, state),
        )
    }
}

/// Does the observation describe the place `spec` names? (An observation
/// made for another file plans nothing at its place.)
fn names(spec: &NatSpec, named: &Named) -> bool {
    match named {
        Named::Null => false,
        Named::Nftables { table, .. } => {
            spec.backend == NatBackendKind::Nftables && spec.nft_table == *table
        }
        Named::Iptables { chain, .. } => {
            spec.backend == NatBackendKind::Iptables && spec.iptables_chain == *chain
        }
    }
}

/// The place `[nat]` names when it could not be observed (no flavour known).
fn spec_label(spec: &NatSpec, family: Family) -> String {
    match spec.backend {
        NatBackendKind::Nftables => format!(
            "nat {family} ({})",
            nftables::table_label(family, &spec.nft_table)
        ),
        NatBackendKind::Iptables => {
            format!("nat {family} (iptables chain {})", spec.iptables_chain)
        }
    }
}

fn removal_reason(spec: Option<&NatSpec>, family: Family) -> String {
    match spec {
        None => "nat not configured".to_string(),
        Some(s) if !s.masquerade => "masquerade = false".to_string(),
        Some(_) => format!("{family} not configured"),
    }
}

/// The place the file names for its rules, as observed (`None`: the null
/// backend, or an observation of another place).
pub fn named_place(spec: Option<&NatSpec>, observed: &NatObserved) -> Option<Place> {
    spec.filter(|s| names(s, &observed.named))
        .and(observed.named.place())
}

/// One family at the place the file names: install/repair it, remove it
/// when no longer wanted, or block. A family whose new place is blocked is
/// pushed to `new_place_blocked`, so its leftovers elsewhere stay.
fn plan_family_at<B: Backend>(
    b: &B,
    spec: &NatSpec,
    family: Family,
    seen: &Seen<B::State>,
    new_place_blocked: &mut Vec<Family>,
    plan: &mut Plan,
) {
    let obj = object(&b.place(), family);
    let mut block = |reason: String, plan: &mut Plan| {
        new_place_blocked.push(family);
        plan.blocked
            .push(Blocked::new(ObjectKind::Nat, obj.clone(), reason));
    };
    let present = match seen {
        Seen::Present(s) => Some(s),
        Seen::Absent => None,
        Seen::Unavailable { reason } => {
            if rules::desired(Some(spec), family).is_some() {
                block(format!("cannot read current rules: {reason}"), plan);
            }
            return;
        }
    };
    match (rules::desired(Some(spec), family), present) {
        (Some(want), _) => match b.plan_family(family, &want, present, spec.adopt) {
            Ok(Some((kind, reason, op))) => plan.changes.push(Change {
                kind,
                object: obj.clone(),
                reason,
                op: Op::Nat(op),
            }),
            Ok(None) => {}
            Err(reason) => block(reason, plan),
        },
        (None, Some(s)) if B::is_ours(s) => plan.changes.push(Change {
            kind: ChangeKind::Remove,
            object: obj.clone(),
            reason: removal_reason(Some(spec), family),
            op: Op::Nat(NatOp::Stale {
                remove: Box::new(b.removal(family, s).1),
                replaced_by: None,
            }),
        }),
        (None, Some(_)) => plan.blocked.push(Blocked::new(
            ObjectKind::Nat,
            obj.clone(),
            format!(
                "conflict: has netconverge's name but was not created by \
                 netconverge, and {}; it is left alone: rename it or choose \
                 another name in [nat]",
                removal_reason(Some(spec), family)
            ),
        )),
        (None, None) => {}
    }
}

/// Both families at one backend's place.
fn plan_at<B: Backend>(
    b: &B,
    spec: &NatSpec,
    ipv4: &Seen<B::State>,
    ipv6: &Seen<B::State>,
    new_place_blocked: &mut Vec<Family>,
    plan: &mut Plan,
) {
    for (family, seen) in [(Family::Ipv4, ipv4), (Family::Ipv6, ipv6)] {
        plan_family_at(b, spec, family, seen, new_place_blocked, plan);
    }
}

/// `[nat]` names a place that was not observed: every wanted family is
/// blocked (nothing is known there, so nothing is changed).
fn plan_unobserved(spec: &NatSpec, new_place_blocked: &mut Vec<Family>, plan: &mut Plan) {
    for family in [Family::Ipv4, Family::Ipv6] {
        if rules::desired(Some(spec), family).is_some() {
            new_place_blocked.push(family);
            plan.blocked.push(Blocked::new(
                ObjectKind::Nat,
                spec_label(spec, family),
                "rules not observed".to_string(),
            ));
        }
    }
}

/// One leftover of ours elsewhere: removed at once when its family is not
/// wanted, else only once the new place holds the rules (the `Guard`), and
/// kept while that place is blocked, so masquerade never lapses.
fn plan_found(
    spec: Option<&NatSpec>,
    named: Option<&Place>,
    f: &Found,
    new_place_blocked: &[Family],
    plan: &mut Plan,
) {
    let obj = object(&f.place, f.family);
    let wanted = rules::desired(spec, f.family).is_some();
    if !wanted {
        plan.changes.push(Change {
            kind: ChangeKind::Remove,
            object: obj,
            reason: format!(
                "{} (netconverge's: {})",
                removal_reason(spec, f.family),
                f.why
            ),
            op: Op::Nat(NatOp::Stale {
                remove: Box::new(f.removal.clone()),
                replaced_by: None,
            }),
        });
        return;
    }
    let new = match (named, spec) {
        (Some(place), _) => place.label(f.family),
        (None, Some(s)) => spec_label(s, f.family),
        (None, None) => return,
    };
    if new_place_blocked.contains(&f.family) || named.is_none() {
        plan.blocked.push(Blocked::new(
            ObjectKind::Nat,
            obj,
            format!(
                "left over (netconverge's: {}); kept until {new} is in place",
                f.why
            ),
        ));
        return;
    }
    let spec = spec.cloned();
    plan.changes.push(Change {
        kind: ChangeKind::Remove,
        object: obj,
        reason: format!(
            "left over (netconverge's: {}); replaced by {new}, removed once that holds the rules",
            f.why
        ),
        op: Op::Nat(NatOp::Stale {
            remove: Box::new(f.removal.clone()),
            replaced_by: spec.map(|spec| {
                Box::new(Guard {
                    spec,
                    family: f.family,
                })
            }),
        }),
    });
}

/// Pure: the changes that bring `observed` to `spec` (and anything
/// blocked): at most one change per family at the place the file names,
/// then the removal of every leftover of ours elsewhere. The backend is the
/// one [`Named`] holds; the null backend plans nothing at a named place.
pub fn plan(spec: Option<&NatSpec>, observed: &NatObserved) -> Plan {
    let mut plan = Plan::default();
    // Families whose new place is blocked: their leftovers stay.
    let mut blocked: Vec<Family> = Vec::new();
    match (spec, &observed.named) {
        (None, _) => {}
        (Some(s), named) if !names(s, named) => plan_unobserved(s, &mut blocked, &mut plan),
        (Some(_), Named::Null) => {}
        (Some(s), Named::Nftables { table, ipv4, ipv6 }) => {
            plan_at(&Nft(table), s, ipv4, ipv6, &mut blocked, &mut plan);
        }
        (
            Some(s),
            Named::Iptables {
                choice,
                chain,
                ipv4,
                ipv6,
            },
        ) => {
            plan.notes.push(format!(
                "nat: iptables flavour {}: {}",
                choice.flavour, choice.reason
            ));
            let b = Ipt {
                flavour: choice.flavour,
                chain,
            };
            plan_at(&b, s, ipv4, ipv6, &mut blocked, &mut plan);
        }
    }
    let named = named_place(spec, observed);
    for f in &observed.found {
        plan_found(spec, named.as_ref(), f, &blocked, &mut plan);
    }
    plan
}

/// netconverge's own objects at one backend's place, with their removals.
fn ours_at<B: Backend>(
    b: &B,
    seen: [(Family, &Seen<B::State>); 2],
) -> Vec<(Family, Place, Vec<String>, NatOp)> {
    seen.into_iter()
        .filter_map(|(family, s)| match s {
            Seen::Present(state) if B::is_ours(state) => {
                let (items, op) = b.removal(family, state);
                Some((family, b.place(), items, op))
            }
            _ => None,
        })
        .collect()
}

/// `cleanup`'s NAT part, an ordinary plan: the removal of every NAT object
/// of netconverge's, at the named place and anywhere else, one change per
/// transaction; nothing that is not ours.
pub fn cleanup(observed: &NatObserved) -> Plan {
    let named = match &observed.named {
        Named::Null => Vec::new(),
        Named::Nftables { table, ipv4, ipv6 } => {
            ours_at(&Nft(table), [(Family::Ipv4, ipv4), (Family::Ipv6, ipv6)])
        }
        Named::Iptables {
            choice,
            chain,
            ipv4,
            ipv6,
        } => ours_at(
            &Ipt {
                flavour: choice.flavour,
                chain,
            },
            [(Family::Ipv4, ipv4), (Family::Ipv6, ipv6)],
        ),
    };
    let found = observed.found.iter().map(|f| {
        (
            f.family,
            f.place.clone(),
            f.items.clone(),
            f.removal.clone(),
        )
    });
    let mut plan = Plan::default();
    for (family, place, items, op) in named.into_iter().chain(found) {
        let label = place.label(family);
        let also: Vec<String> = items.into_iter().filter(|i| *i != label).collect();
        let reason = if also.is_empty() {
            "cleanup".to_string()
        } else {
            format!("cleanup, with {}", also.join(", "))
        };
        plan.changes.push(Change {
            kind: ChangeKind::Remove,
            object: object(&place, family),
            reason,
            op: Op::Nat(op),
        });
    }
    plan
}
