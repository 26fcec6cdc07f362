//! Pod masquerade rules (flannel's FLANNEL-POSTRTG semantics), through
//! nftables or iptables (nft or legacy flavour).
//!
//! Invariant: rendering ([`rules`], the backends' render/parse functions),
//! [`plan`] and [`cleanup`] are pure; only [`apply`] runs `nft` /
//! `iptables-restore`, always one atomic transaction per op. [`observe`] is
//! the backend factory: it picks the backend `[nat]` names (the null
//! backend without one) and reads its place into [`Named`]. netconverge's
//! NAT objects are recognised from the kernel alone (the nftables table
//! comment [`rules::TABLE_COMMENT`], the rule/jump comment [`rules::COMMENT`])
//! plus the [`record`] of adopted chains, never from the file: what the file
//! no longer names is still found and removed, and only after the new place
//! holds the family's rules. Anything with our name that is not ours is a
//! conflict, never wiped (unless `adopt = true`). Rules are never flushed
//! without being replaced in the same transaction, and nothing removes them
//! when netconverge stops.

mod exec;
pub mod flavour;
pub mod iptables;
pub mod nftables;
pub mod record;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::model::{Family, IptablesMode, NatBackendKind, NatSpec};

pub use crate::model::nat::{
    Flavour, FlavourChoice, Found, Guard, IptFamily, Named, NatObserved, NatOp, NftFamily, Place,
    Seen,
};
pub use crate::plan::nat::{cleanup, diff, named_place, object, plan, rules};
pub use iptables::NatTable;
pub use rules::{COMMENT, TABLE_COMMENT};

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

type NftList = Option<Result<Vec<(String, String)>, NatError>>;

/// Read every flavour's nat table, both families: the flavour choice and
/// the leftovers both need all four, so they are read once.
fn scan_iptables(tables: &NftList) -> IptScan {
    let has_nat = |word: &str| match tables {
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
    scan
}

/// What one family's nftables table `table` holds; a read failure is
/// recorded (for `plan` to block on), never hidden as "absent".
fn observe_nft(family: Family, table: &str, tables: &NftList) -> Seen<NftFamily> {
    match tables {
        None => Seen::Unavailable {
            reason: exec::Package::Nftables.hint().to_string(),
        },
        Some(Err(e)) => Seen::Unavailable {
            reason: e.to_string(),
        },
        Some(Ok(list)) => {
            let word = nftables::family_word(family);
            if !list.iter().any(|(f, n)| f == word && n == table) {
                return Seen::Absent;
            }
            match nftables::read_table(family, table) {
                Ok(Some(t)) => Seen::Present(t),
                Ok(None) => Seen::Absent,
                Err(e) => Seen::Unavailable {
                    reason: e.to_string(),
                },
            }
        }
    }
}

/// What one family holds at iptables chain `chain` of `flavour`.
fn observe_ipt(
    flavour: Flavour,
    family: Family,
    chain: &str,
    scan: &IptScan,
    entries: &[record::Entry],
) -> Seen<IptFamily> {
    match scan.get(&(flavour, family)) {
        Some(Ok(Some(t))) => {
            let view = t.family_view(chain, record::recorded(entries, flavour, family, chain));
            if view.is_absent() {
                Seen::Absent
            } else {
                Seen::Present(view)
            }
        }
        Some(Err(e)) => Seen::Unavailable { reason: e.clone() },
        _ => Seen::Unavailable {
            reason: format!(
                "`{}` not found: {}",
                flavour.save(family),
                exec::Package::Iptables.hint()
            ),
        },
    }
}

/// The backend factory: the place `spec` names (the null backend without
/// `[nat]`) and what each family holds there.
fn observe_named(
    spec: Option<&NatSpec>,
    tables: &NftList,
    scan: &IptScan,
    entries: &[record::Entry],
) -> Named {
    let Some(s) = spec else {
        return Named::Null;
    };
    match s.backend {
        NatBackendKind::Nftables => Named::Nftables {
            table: s.nft_table.clone(),
            ipv4: observe_nft(Family::Ipv4, &s.nft_table, tables),
            ipv6: observe_nft(Family::Ipv6, &s.nft_table, tables),
        },
        NatBackendKind::Iptables => {
            let facts = host_facts(scan, entries, s.iptables == IptablesMode::Auto);
            let choice = flavour::choose(s.iptables, &facts);
            log_choice(&choice);
            let f = choice.flavour;
            let chain = &s.iptables_chain;
            Named::Iptables {
                ipv4: observe_ipt(f, Family::Ipv4, chain, scan, entries),
                ipv6: observe_ipt(f, Family::Ipv6, chain, scan, entries),
                chain: chain.clone(),
                choice,
            }
        }
    }
}

/// Why nftables table `word name` is netconverge's, if it is: its comment,
/// or (default name only) rules made by an older netconverge.
fn nft_ownership(word: &str, name: &str, family: Family) -> Option<String> {
    match nftables::is_marked(word, name) {
        Ok(true) => Some(format!("table comment {TABLE_COMMENT:?}")),
        // The default name, made before tables were marked.
        Ok(false) if name == "netconverge" => nftables::read_table(family, name)
            .ok()
            .flatten()
            .filter(NftFamily::made_by_older_netconverge)
            .map(|_| "made by an older netconverge: its rules carry its comment".to_string()),
        Ok(false) => None,
        Err(e) => {
            tracing::debug!("nat: cannot read nftables table {word} {name}: {e}");
            None
        }
    }
}

/// netconverge's nftables tables other than the named one.
fn found_nftables(list: &[(String, String)], named: Option<&Place>) -> Vec<Found> {
    let mut out = Vec::new();
    for (word, name) in list {
        let family = match word.as_str() {
            "ip" => Family::Ipv4,
            "ip6" => Family::Ipv6,
            _ => continue,
        };
        let place = Place::Nftables {
            table: name.clone(),
        };
        if nftables::RESERVED.contains(&name.as_str()) || named == Some(&place) {
            continue;
        }
        if let Some(why) = nft_ownership(word, name, family) {
            out.push(Found {
                family,
                place,
                why,
                items: vec![nftables::table_label(family, name)],
                removal: nftables::remove_op(family, name),
            });
        }
    }
    out
}

/// netconverge's iptables chains (any flavour) other than the named one.
fn found_iptables(scan: &IptScan, entries: &[record::Entry], named: Option<&Place>) -> Vec<Found> {
    let mut out = Vec::new();
    for ((flavour, family), r) in scan {
        let Ok(Some(t)) = r else { continue };
        for (chain, view, why) in owned_chains(t, *flavour, *family, entries) {
            let place = Place::Iptables {
                flavour: *flavour,
                chain: chain.clone(),
            };
            if named == Some(&place) {
                continue;
            }
            out.push(Found {
                family: *family,
                place,
                why: why.to_string(),
                items: iptables::removal_items(*flavour, *family, &chain, &view),
                removal: iptables::remove_op(*flavour, *family, &chain, &view),
            });
        }
    }
    out
}

/// Read everything NAT: the place the file names (both families), and
/// every table/chain of netconverge's elsewhere (in nftables and both
/// iptables flavours). Read failures at the named place are recorded per
/// family, for `plan`; elsewhere, an unreadable backend hides nothing we
/// could remove anyway.
pub fn observe(spec: Option<&NatSpec>) -> Result<NatObserved, NatError> {
    let entries = record::load();
    let tables: NftList = nftables::installed().then(nftables::list_tables);
    let scan = scan_iptables(&tables);
    let named = observe_named(spec, &tables, &scan, &entries);
    let place = named.place();
    let mut found = Vec::new();
    if let Some(Ok(list)) = &tables {
        found.extend(found_nftables(list, place.as_ref()));
    }
    found.extend(found_iptables(&scan, &entries, place.as_ref()));
    found.sort_by(|a, b| (a.family, &a.place).cmp(&(b.family, &b.place)));
    Ok(NatObserved { named, found })
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
