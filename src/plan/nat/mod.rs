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

use crate::model::nat::{FamilyObserved, Found, Guard, NatObserved, NatOp, Place};
use crate::model::{Family, NatBackendKind, NatSpec};
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

impl FamilyObserved {
    pub(crate) fn is_present(&self) -> bool {
        matches!(
            self,
            FamilyObserved::Nftables(_) | FamilyObserved::Iptables(_)
        )
    }

    /// Present and netconverge's.
    pub(crate) fn is_ours(&self) -> bool {
        match self {
            FamilyObserved::Nftables(t) => t.is_ours(),
            FamilyObserved::Iptables(c) => c.ownership().is_some(),
            _ => false,
        }
    }
}

/// `nat ipv4 (nftables table ip netconverge)`.
pub fn object(place: &Place, family: Family) -> String {
    format!("nat {family} ({})", place.label(family))
}

fn removal_reason(spec: Option<&NatSpec>, family: Family) -> String {
    match spec {
        None => "nat not configured".to_string(),
        Some(s) if !s.masquerade => "masquerade = false".to_string(),
        Some(_) => format!("{family} not configured"),
    }
}

/// The place the file names for its rules (`None`: no `[nat]`, or the
/// iptables flavour could not be chosen).
pub fn named_place(spec: Option<&NatSpec>, observed: &NatObserved) -> Option<Place> {
    let spec = spec?;
    match spec.backend {
        NatBackendKind::Nftables => Some(Place::Nftables {
            table: spec.nft_table.clone(),
        }),
        NatBackendKind::Iptables => observed.iptables.as_ref().map(|c| Place::Iptables {
            flavour: c.flavour,
            chain: spec.iptables_chain.clone(),
        }),
    }
}

fn removal_of(
    place: &Place,
    family: Family,
    seen: &FamilyObserved,
) -> Option<(Vec<String>, NatOp)> {
    match (place, seen) {
        (Place::Nftables { table }, FamilyObserved::Nftables(_)) => Some((
            vec![nftables::table_label(family, table)],
            nftables::remove_op(family, table),
        )),
        (Place::Iptables { flavour, chain }, FamilyObserved::Iptables(c)) => Some((
            iptables::removal_items(*flavour, family, chain, c),
            iptables::remove_op(*flavour, family, chain, c),
        )),
        _ => None,
    }
}

/// The plan of one family at the place the file names: `Err` is blocked.
fn plan_named(
    spec: &NatSpec,
    place: &Place,
    family: Family,
    want: &[rules::Rule],
    seen: &FamilyObserved,
) -> Result<Option<(ChangeKind, String, NatOp)>, String> {
    match (place, seen) {
        (_, FamilyObserved::NotObserved) => Err("rules not observed".to_string()),
        (_, FamilyObserved::Unavailable { reason }) => {
            Err(format!("cannot read current rules: {reason}"))
        }
        (Place::Nftables { table }, FamilyObserved::Absent) => {
            nftables::plan_family(family, table, want, None, spec.adopt)
        }
        (Place::Nftables { table }, FamilyObserved::Nftables(s)) => {
            nftables::plan_family(family, table, want, Some(s), spec.adopt)
        }
        (Place::Iptables { flavour, chain }, FamilyObserved::Absent) => {
            iptables::plan_family(*flavour, family, chain, want, None, spec.adopt)
        }
        (Place::Iptables { flavour, chain }, FamilyObserved::Iptables(s)) => {
            iptables::plan_family(*flavour, family, chain, want, Some(s), spec.adopt)
        }
        _ => Err("observed through the other backend".to_string()),
    }
}

/// One family at the place the file names: install/repair it, remove it
/// when no longer wanted, or block. A family whose new place is blocked is
/// pushed to `new_place_blocked`, so its leftovers elsewhere stay.
fn plan_named_family(
    spec: Option<&NatSpec>,
    observed: &NatObserved,
    named: Option<&Place>,
    family: Family,
    new_place_blocked: &mut Vec<Family>,
    plan: &mut Plan,
) {
    let seen = observed.family(family);
    let want = rules::desired(spec, family);
    match (spec, want, named) {
        (Some(s), Some(_), None) => {
            new_place_blocked.push(family);
            plan.blocked.push(Blocked {
                object: format!("nat {family} (iptables chain {})", s.iptables_chain),
                reason: "no iptables flavour could be chosen".to_string(),
            });
        }
        (Some(s), Some(want), Some(place)) => {
            let obj = object(place, family);
            match plan_named(s, place, family, &want, seen) {
                Ok(Some((kind, reason, op))) => plan.changes.push(Change {
                    kind,
                    object: obj,
                    reason,
                    op: Op::Nat(op),
                }),
                Ok(None) => {}
                Err(reason) => {
                    new_place_blocked.push(family);
                    plan.blocked.push(Blocked {
                        object: obj,
                        reason,
                    });
                }
            }
        }
        (_, None, Some(place)) if seen.is_present() => {
            let obj = object(place, family);
            match removal_of(place, family, seen).filter(|_| seen.is_ours()) {
                Some((_, op)) => plan.changes.push(Change {
                    kind: ChangeKind::Remove,
                    object: obj,
                    reason: removal_reason(spec, family),
                    op: Op::Nat(NatOp::Stale {
                        remove: Box::new(op),
                        replaced_by: None,
                    }),
                }),
                None => plan.blocked.push(Blocked {
                    object: obj,
                    reason: format!(
                        "conflict: has netconverge's name but was not created by \
                         netconverge, and {}; it is left alone: rename it or choose \
                         another name in [nat]",
                        removal_reason(spec, family)
                    ),
                }),
            }
        }
        _ => {}
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
    let target = named
        .as_ref()
        .filter(|_| rules::desired(spec, f.family).is_some());
    let Some(target) = target else {
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
    };
    let new = target.label(f.family);
    if new_place_blocked.contains(&f.family) {
        plan.blocked.push(Blocked {
            object: obj,
            reason: format!(
                "left over (netconverge's: {}); kept until {new} is in place",
                f.why
            ),
        });
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
/// then the removal of every leftover of ours elsewhere.
pub fn plan(spec: Option<&NatSpec>, observed: &NatObserved) -> Plan {
    let mut plan = Plan::default();
    if let (Some(s), Some(c)) = (spec, &observed.iptables) {
        if s.backend == NatBackendKind::Iptables {
            plan.notes
                .push(format!("nat: iptables flavour {}: {}", c.flavour, c.reason));
        }
    }
    let named = named_place(spec, observed);
    // Families whose new place is blocked: their leftovers stay.
    let mut new_place_blocked: Vec<Family> = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        plan_named_family(
            spec,
            observed,
            named.as_ref(),
            family,
            &mut new_place_blocked,
            &mut plan,
        );
    }
    for f in &observed.found {
        plan_found(spec, named.as_ref(), f, &new_place_blocked, &mut plan);
    }
    plan
}

/// What [`crate::nat::cleanup`] removes: every NAT object of netconverge's, at the
/// named place and anywhere else, and nothing that is not ours.
pub fn cleanup_ops(spec: Option<&NatSpec>, observed: &NatObserved) -> Vec<(Vec<String>, NatOp)> {
    let mut out = Vec::new();
    if let Some(place) = named_place(spec, observed) {
        for family in [Family::Ipv4, Family::Ipv6] {
            let seen = observed.family(family);
            if seen.is_ours() {
                out.extend(removal_of(&place, family, seen));
            }
        }
    }
    out.extend(
        observed
            .found
            .iter()
            .map(|f| (f.items.clone(), f.removal.clone())),
    );
    out
}
