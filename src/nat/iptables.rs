//! Running the iptables tools: reading what is there, applying one rendered
//! transaction. The rendering and parsing are pure, in [`crate::plan::nat::iptables`]
//! (re-exported here).

use super::NatError;
use super::exec::{self, Package};
use crate::model::Family;

pub use crate::plan::nat::iptables::*;

/// The legacy nat table of this thread's namespace exists (reading it with
/// `iptables-legacy-save -t nat` would create it).
fn legacy_nat_exists(family: Family) -> bool {
    let file = match family {
        Family::Ipv4 => "/proc/thread-self/net/ip_tables_names",
        Family::Ipv6 => "/proc/thread-self/net/ip6_tables_names",
    };
    std::fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l.trim() == "nat"))
}

/// Read the nat table of `flavour`/`family`. `Ok(None)`: the flavour's
/// tools are not installed. `nft_has_nat`: whether nftables lists the
/// table iptables-nft keeps its nat rules in (`None`: unknown).
pub fn read_nat(
    flavour: Flavour,
    family: Family,
    nft_has_nat: Option<bool>,
) -> Result<Option<NatTable>, NatError> {
    let save = flavour.save(family);
    if exec::which(&save).is_none() {
        return Ok(None);
    }
    let exists = match flavour {
        Flavour::Legacy => legacy_nat_exists(family),
        Flavour::Nft => nft_has_nat.unwrap_or(true),
    };
    if !exists {
        return Ok(Some(NatTable::default()));
    }
    let text = exec::run(&save, &["-t", "nat"], None, Package::Iptables)?.ok()?;
    Ok(Some(parse_nat(&text)))
}

/// Run one restore input.
pub fn restore(flavour: Flavour, family: Family, input: &str) -> Result<(), NatError> {
    // -w: wait for the xtables lock (legacy flavour) instead of failing
    // when kube-proxy or firewalld holds it.
    exec::run(
        &flavour.restore(family),
        &["-w", "5", "--noflush"],
        Some(input),
        Package::Iptables,
    )?
    .ok()
    .map(drop)
}

/// The flavour `iptables` itself is (the distribution's alternative).
pub fn system_flavour() -> Option<Flavour> {
    let ran = exec::run("iptables", &["-V"], None, Package::Iptables).ok()?;
    let text = format!("{}{}", ran.stdout, ran.stderr);
    if text.contains("(legacy)") {
        Some(Flavour::Legacy)
    } else if text.contains("(nf_tables)") {
        Some(Flavour::Nft)
    } else {
        None
    }
}

/// Fail unless the tools of `flavour` for `families` are installed.
pub fn require(flavour: Flavour, families: &[Family]) -> Result<(), NatError> {
    let tools: Vec<String> = families
        .iter()
        .flat_map(|f| [flavour.save(*f), flavour.restore(*f)])
        .collect();
    let tools: Vec<&str> = tools.iter().map(String::as_str).collect();
    exec::require(&tools, Package::Iptables)
}
