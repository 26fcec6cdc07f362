//! Pod masquerade rules (flannel's FLANNEL-POSTRTG semantics), through
//! nftables or iptables (nft or legacy flavour).
//!
//! Invariant: rendering ([`rules`], the backends' render/parse functions)
//! and [`plan`] are pure; only [`apply`] and [`cleanup`] run `nft` /
//! `iptables-restore`, always one atomic transaction per op. netconverge's
//! NAT objects are recognised from the kernel alone (the nftables table
//! comment [`rules::TABLE_COMMENT`], the rule/jump comment [`rules::COMMENT`])
//! plus the [`record`] of adopted chains, never from the file: what the file
//! no longer names is still found and removed, and only after the new place
//! holds the family's rules. Anything with our name that is not ours is a
//! conflict, never wiped (unless `adopt = true`). Rules are never flushed
//! without being replaced in the same transaction, and nothing removes them
//! when netconverge stops.

pub mod diff;
mod exec;
pub mod flavour;
pub mod iptables;
pub mod nftables;
pub mod record;
pub mod rules;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::model::{Family, IptablesMode, NatBackendKind, NatSpec};
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

pub use crate::model::nat::{
    FamilyObserved, Flavour, FlavourChoice, Found, Guard, IptFamily, NatObserved, NatOp, NftFamily,
    Place,
};
pub use iptables::NatTable;
pub use rules::{COMMENT, TABLE_COMMENT};

impl FamilyObserved {
    fn is_present(&self) -> bool {
        matches!(
            self,
            FamilyObserved::Nftables(_) | FamilyObserved::Iptables(_)
        )
    }

    /// Present and netconverge's.
    fn is_ours(&self) -> bool {
        match self {
            FamilyObserved::Nftables(t) => t.is_ours(),
            FamilyObserved::Iptables(c) => c.ownership().is_some(),
            _ => false,
        }
    }
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
    #[error("cannot write the NAT record {path}: {detail}")]
    Record { path: String, detail: String },
    #[error("{old} kept: {new} is not in place yet ({detail})")]
    NotReplaced {
        old: String,
        new: String,
        detail: String,
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
        let seen = observed.family(family);
        let want = rules::desired(spec, family);
        match (spec, want, &named) {
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
    for f in &observed.found {
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
            continue;
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
            continue;
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
    plan
}

// ------------------------------------------------------------ observing --

/// The last flavour choice logged (logged again only when it changes).
static LOGGED_CHOICE: Mutex<Option<FlavourChoice>> = Mutex::new(None);

fn log_choice(choice: &FlavourChoice) {
    let Ok(mut last) = LOGGED_CHOICE.lock() else {
        return;
    };
    if last.as_ref() == Some(choice) {
        return;
    }
    if choice.reason.contains("BOTH") {
        tracing::warn!("nat: using {}: {}", choice.flavour, choice.reason);
    } else {
        tracing::info!("nat: using {}: {}", choice.flavour, choice.reason);
    }
    *last = Some(choice.clone());
}

type IptScan = BTreeMap<(Flavour, Family), Result<Option<NatTable>, String>>;

/// Chains of `table` that are netconverge's, with why.
fn owned_chains(
    table: &NatTable,
    flavour: Flavour,
    family: Family,
    entries: &[record::Entry],
) -> Vec<(String, IptFamily, &'static str)> {
    table
        .chains
        .iter()
        .filter_map(|c| {
            let view = table.family_view(c, record::recorded(entries, flavour, family, c));
            view.ownership().map(|why| (c.clone(), view, why))
        })
        .collect()
}

fn host_facts(scan: &IptScan, entries: &[record::Entry], need_system: bool) -> flavour::HostFacts {
    let mut facts = flavour::HostFacts::default();
    for ((flavour, family), r) in scan {
        let f = match flavour {
            Flavour::Nft => &mut facts.nft,
            Flavour::Legacy => &mut facts.legacy,
        };
        if let Ok(Some(t)) = r {
            f.installed = true;
            let ours: Vec<String> = owned_chains(t, *flavour, *family, entries)
                .into_iter()
                .map(|(c, _, _)| c)
                .collect();
            f.foreign_rules += t.foreign_rules(&ours);
            f.kube |= t.has_kube();
        }
    }
    if need_system {
        facts.system = iptables::system_flavour();
    }
    facts
}

/// Read everything NAT: the place the file names (both families), and
/// every table/chain of netconverge's elsewhere (in nftables and both
/// iptables flavours). Read failures at the named place are recorded per
/// family, for `plan`; elsewhere, an unreadable backend hides nothing we
/// could remove anyway.
pub fn observe(spec: Option<&NatSpec>) -> Result<NatObserved, NatError> {
    let entries = record::load();
    let tables = nftables::installed().then(nftables::list_tables);
    let has_nat = |word: &str| match &tables {
        Some(Ok(t)) => Some(t.iter().any(|(f, n)| f == word && n == "nat")),
        _ => None,
    };
    let mut scan: IptScan = BTreeMap::new();
    for flavour in Flavour::ALL {
        for family in [Family::Ipv4, Family::Ipv6] {
            let word = nftables::family_word(family);
            let r = iptables::read_nat(flavour, family, has_nat(word)).map_err(|e| e.to_string());
            scan.insert((flavour, family), r);
        }
    }
    let mut out = NatObserved::default();
    if let Some(s) = spec {
        out.backend = Some(s.backend);
        if s.backend == NatBackendKind::Iptables {
            out.name = s.iptables_chain.clone();
            let facts = host_facts(&scan, &entries, s.iptables == IptablesMode::Auto);
            let choice = flavour::choose(s.iptables, &facts);
            log_choice(&choice);
            out.iptables = Some(choice);
        } else {
            out.name = s.nft_table.clone();
        }
    }
    let named = named_place(spec, &out);
    for family in [Family::Ipv4, Family::Ipv6] {
        let seen = match (&named, &tables) {
            (None, _) => FamilyObserved::NotObserved,
            (Some(Place::Nftables { .. }), None) => FamilyObserved::Unavailable {
                reason: exec::Package::Nftables.hint().to_string(),
            },
            (Some(Place::Nftables { .. }), Some(Err(e))) => FamilyObserved::Unavailable {
                reason: e.to_string(),
            },
            (Some(Place::Nftables { table }), Some(Ok(list))) => {
                let word = nftables::family_word(family);
                if list.iter().any(|(f, n)| f == word && n == table) {
                    match nftables::read_table(family, table) {
                        Ok(Some(t)) => FamilyObserved::Nftables(t),
                        Ok(None) => FamilyObserved::Absent,
                        Err(e) => FamilyObserved::Unavailable {
                            reason: e.to_string(),
                        },
                    }
                } else {
                    FamilyObserved::Absent
                }
            }
            (Some(Place::Iptables { flavour, chain }), _) => match scan.get(&(*flavour, family)) {
                Some(Ok(Some(t))) => {
                    let view =
                        t.family_view(chain, record::recorded(&entries, *flavour, family, chain));
                    if view.is_absent() {
                        FamilyObserved::Absent
                    } else {
                        FamilyObserved::Iptables(view)
                    }
                }
                Some(Err(e)) => FamilyObserved::Unavailable { reason: e.clone() },
                _ => FamilyObserved::Unavailable {
                    reason: format!(
                        "`{}` not found: {}",
                        flavour.save(family),
                        exec::Package::Iptables.hint()
                    ),
                },
            },
        };
        match family {
            Family::Ipv4 => out.ipv4 = seen,
            Family::Ipv6 => out.ipv6 = seen,
        }
    }
    // netconverge's objects elsewhere
    if let Some(Ok(list)) = &tables {
        for (word, name) in list {
            let family = match word.as_str() {
                "ip" => Family::Ipv4,
                "ip6" => Family::Ipv6,
                _ => continue,
            };
            if nftables::RESERVED.contains(&name.as_str())
                || named
                    == Some(Place::Nftables {
                        table: name.clone(),
                    })
            {
                continue;
            }
            let why = match nftables::is_marked(word, name) {
                Ok(true) => Some(format!("table comment {TABLE_COMMENT:?}")),
                // The default name, made before tables were marked.
                Ok(false) if name == "netconverge" => nftables::read_table(family, name)
                    .ok()
                    .flatten()
                    .filter(NftFamily::made_by_older_netconverge)
                    .map(|_| {
                        "made by an older netconverge: its rules carry its comment".to_string()
                    }),
                Ok(false) => None,
                Err(e) => {
                    tracing::debug!("nat: cannot read nftables table {word} {name}: {e}");
                    None
                }
            };
            if let Some(why) = why {
                out.found.push(Found {
                    family,
                    place: Place::Nftables {
                        table: name.clone(),
                    },
                    why,
                    items: vec![nftables::table_label(family, name)],
                    removal: nftables::remove_op(family, name),
                });
            }
        }
    }
    for ((flavour, family), r) in &scan {
        let Ok(Some(t)) = r else { continue };
        for (chain, view, why) in owned_chains(t, *flavour, *family, &entries) {
            let place = Place::Iptables {
                flavour: *flavour,
                chain: chain.clone(),
            };
            if named.as_ref() == Some(&place) {
                continue;
            }
            out.found.push(Found {
                family: *family,
                place,
                why: why.to_string(),
                items: iptables::removal_items(*flavour, *family, &chain, &view),
                removal: iptables::remove_op(*flavour, *family, &chain, &view),
            });
        }
    }
    out.found
        .sort_by(|a, b| (a.family, &a.place).cmp(&(b.family, &b.place)));
    Ok(out)
}

// -------------------------------------------------------------- writing --

/// Run one transaction with the system's tools (in the calling thread's
/// network namespace).
pub fn apply(op: &NatOp) -> Result<(), NatError> {
    match op {
        NatOp::Nftables { script, .. } => nftables::run_script(script),
        NatOp::Iptables {
            flavour,
            family,
            chain,
            restore,
            adopted,
            forget,
        } => {
            if let Some(rules) = adopted {
                record::adopt(*flavour, *family, chain, rules)?;
            }
            if let Some(input) = restore {
                iptables::restore(*flavour, *family, input)?;
            }
            if *forget {
                record::forget(*flavour, *family, chain)?;
            }
            Ok(())
        }
        NatOp::Stale {
            remove,
            replaced_by,
        } => {
            if let Some(g) = replaced_by {
                check_in_place(g, remove)?;
            }
            apply(remove)
        }
    }
}

fn op_label(op: &NatOp) -> String {
    match op {
        NatOp::Nftables { family, table, .. } => nftables::table_label(*family, table),
        NatOp::Iptables {
            flavour,
            family,
            chain,
            ..
        } => iptables::chain_label(*flavour, *family, chain),
        NatOp::Stale { remove, .. } => op_label(remove),
    }
}

/// Fresh look: is `g.family` in sync at its named place?
fn check_in_place(g: &Guard, old: &NatOp) -> Result<(), NatError> {
    let observed = observe(Some(&g.spec))?;
    let Some(place) = named_place(Some(&g.spec), &observed) else {
        return Err(NatError::NotReplaced {
            old: op_label(old),
            new: "the new place".to_string(),
            detail: "no iptables flavour".to_string(),
        });
    };
    let new = object(&place, g.family);
    let p = plan(Some(&g.spec), &observed);
    let pending: Vec<String> = p
        .changes
        .iter()
        .filter(|c| c.object == new)
        .map(|c| c.reason.clone())
        .chain(
            p.blocked
                .iter()
                .filter(|b| b.object == new)
                .map(|b| b.reason.clone()),
        )
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(NatError::NotReplaced {
            old: op_label(old),
            new,
            detail: pending.join("; "),
        })
    }
}

/// What [`cleanup`] removes: every NAT object of netconverge's, at the
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

/// Remove everything [`cleanup_ops`] lists; returns what was removed.
pub fn cleanup(spec: Option<&NatSpec>, observed: &NatObserved) -> Result<Vec<String>, NatError> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for (items, op) in cleanup_ops(spec, observed) {
        match apply(&op) {
            Ok(()) => removed.extend(items),
            Err(e) => errors.push(e),
        }
    }
    NatError::collect(errors).map(|()| removed)
}

/// Fail with a message naming the package to install unless the backend's
/// tools are in `PATH` (always `Ok` when `masquerade = false`).
pub fn check_backend(spec: &NatSpec) -> Result<(), NatError> {
    if !spec.masquerade {
        return Ok(());
    }
    let families: Vec<Family> = [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .filter(|f| rules::family_spec(spec, *f).is_some())
        .collect();
    match (spec.backend, spec.iptables) {
        (NatBackendKind::Nftables, _) => nftables::require(),
        (NatBackendKind::Iptables, IptablesMode::Nft) => iptables::require(Flavour::Nft, &families),
        (NatBackendKind::Iptables, IptablesMode::Legacy) => {
            iptables::require(Flavour::Legacy, &families)
        }
        (NatBackendKind::Iptables, IptablesMode::Auto) => {
            iptables::require(Flavour::Nft, &families)
                .or_else(|_| iptables::require(Flavour::Legacy, &families))
        }
    }
}
