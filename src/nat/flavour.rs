//! Which iptables flavour the iptables backend writes, and why.
//!
//! Invariant: pure; the same host facts and setting give the same choice.
//! netconverge's own chains never count as "the host's nat rules", so
//! installing them can never flip the choice of a later pass.

use serde::Serialize;

use super::iptables::Flavour;
use crate::model::IptablesMode;
pub use crate::model::nat::FlavourChoice;

/// What one flavour's nat tables (both families) hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlavourFacts {
    /// The flavour's save/restore tools are installed.
    pub installed: bool,
    /// nat rules that are not netconverge's.
    pub foreign_rules: usize,
    /// kube-proxy chains (`KUBE-…`) are among them.
    pub kube: bool,
}

/// The host as the choice sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub nft: FlavourFacts,
    pub legacy: FlavourFacts,
    /// The flavour `iptables` itself is (the distribution's alternative).
    pub system: Option<Flavour>,
}

impl HostFacts {
    fn of(&self, f: Flavour) -> &FlavourFacts {
        match f {
            Flavour::Nft => &self.nft,
            Flavour::Legacy => &self.legacy,
        }
    }
}

/// Choose the flavour for `mode` on a host with `facts`.
pub fn choose(mode: IptablesMode, facts: &HostFacts) -> FlavourChoice {
    let counts = format!(
        "host nat rules: {} in iptables-nft, {} in iptables-legacy",
        facts.nft.foreign_rules, facts.legacy.foreign_rules
    );
    let pick = |flavour: Flavour, why: String| FlavourChoice {
        flavour,
        reason: why,
    };
    match mode {
        IptablesMode::Nft => {
            return pick(Flavour::Nft, format!("set by [nat] iptables ({counts})"));
        }
        IptablesMode::Legacy => {
            return pick(Flavour::Legacy, format!("set by [nat] iptables ({counts})"));
        }
        IptablesMode::Auto => {}
    }
    let (n, l) = (&facts.nft, &facts.legacy);
    let both = "; set [nat] iptables = \"nft\" or \"legacy\" to choose";
    match (n.foreign_rules > 0, l.foreign_rules > 0) {
        (true, false) => pick(
            Flavour::Nft,
            format!("auto: the host's nat rules live in iptables-nft ({counts})"),
        ),
        (false, true) => pick(
            Flavour::Legacy,
            format!("auto: the host's nat rules live in iptables-legacy ({counts})"),
        ),
        (true, true) => {
            let (flavour, why) = if n.kube != l.kube {
                let f = if n.kube {
                    Flavour::Nft
                } else {
                    Flavour::Legacy
                };
                (f, "kube-proxy's chains are there")
            } else if n.foreign_rules != l.foreign_rules {
                let f = if n.foreign_rules > l.foreign_rules {
                    Flavour::Nft
                } else {
                    Flavour::Legacy
                };
                (f, "it holds more of them")
            } else {
                (
                    facts.system.unwrap_or(Flavour::Nft),
                    "`iptables` is this flavour",
                )
            };
            pick(
                flavour,
                format!(
                    "auto: BOTH flavours hold nat rules ({counts}); using {flavour}: {why}{both}"
                ),
            )
        }
        (false, false) => {
            let installed: Vec<Flavour> = Flavour::ALL
                .into_iter()
                .filter(|f| facts.of(*f).installed)
                .collect();
            match (facts.system, installed.as_slice()) {
                (Some(s), _) if facts.of(s).installed => pick(
                    s,
                    format!("auto: no nat rules on the host; `iptables` is {s}"),
                ),
                (_, [only]) => pick(
                    *only,
                    format!("auto: no nat rules on the host; only {only} is installed"),
                ),
                _ => pick(
                    Flavour::Nft,
                    "auto: no nat rules on the host; iptables-nft by default".to_string(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(nft: usize, legacy: usize) -> HostFacts {
        let f = |n| FlavourFacts {
            installed: true,
            foreign_rules: n,
            kube: false,
        };
        HostFacts {
            nft: f(nft),
            legacy: f(legacy),
            system: Some(Flavour::Nft),
        }
    }

    #[test]
    fn follows_the_hosts_rules_then_the_alternative() {
        let c = choose(IptablesMode::Auto, &facts(0, 3));
        assert_eq!(c.flavour, Flavour::Legacy);
        assert!(c.reason.contains("live in iptables-legacy"), "{}", c.reason);
        assert_eq!(
            choose(IptablesMode::Auto, &facts(2, 0)).flavour,
            Flavour::Nft
        );
        let c = choose(IptablesMode::Auto, &facts(0, 0));
        assert_eq!(c.flavour, Flavour::Nft);
        assert!(
            c.reason.contains("`iptables` is iptables-nft"),
            "{}",
            c.reason
        );
        let mut kube_legacy = facts(10, 2);
        kube_legacy.legacy.kube = true;
        let c = choose(IptablesMode::Auto, &kube_legacy);
        assert_eq!(c.flavour, Flavour::Legacy);
        assert!(
            c.reason.contains("BOTH") && c.reason.contains("kube-proxy"),
            "{}",
            c.reason
        );
        assert_eq!(
            choose(IptablesMode::Auto, &facts(10, 2)).flavour,
            Flavour::Nft
        );
        let c = choose(IptablesMode::Legacy, &facts(5, 0));
        assert_eq!(c.flavour, Flavour::Legacy);
        assert!(
            c.reason.starts_with("set by [nat] iptables"),
            "{}",
            c.reason
        );
        let mut only_legacy = facts(0, 0);
        only_legacy.nft.installed = false;
        assert_eq!(
            choose(IptablesMode::Auto, &only_legacy).flavour,
            Flavour::Legacy
        );
    }
}
