//! The masquerade rule list, backend-neutral: [`NatSpec`] → typed [`Rule`]s
//! per family, in evaluation order.
//!
//! Invariant: pure and total; a family that is not configured (or
//! `masquerade = false`) yields no rules at all, never an error.

use std::fmt;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::model::{Family, NatFamily, NatSpec};

/// Comment carried by every rule (and the iptables jump) netconverge owns:
/// the kernel-side marker of an iptables chain of ours.
pub const COMMENT: &str = "netconverge masq";

/// Comment (userdata) of every nftables table netconverge creates: the
/// kernel-side marker that makes a table ours whatever its name.
pub const TABLE_COMMENT: &str = "managed by netconverge";

/// `[!] <net>`: an address match on the source or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AddrMatch {
    pub net: IpNet,
    pub negated: bool,
}

impl AddrMatch {
    pub fn is(net: IpNet) -> AddrMatch {
        AddrMatch {
            net: net.trunc(),
            negated: false,
        }
    }

    pub fn not(net: IpNet) -> AddrMatch {
        AddrMatch {
            net: net.trunc(),
            negated: true,
        }
    }
}

/// Packet mark match: `mark & mask == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MarkMatch {
    pub value: u32,
    pub mask: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Leave the packet alone (no NAT from this chain).
    Return,
    Masquerade {
        random_fully: bool,
    },
}

/// One rule: all present matches must hold, then the verdict applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub mark: Option<MarkMatch>,
    pub src: Option<AddrMatch>,
    pub dst: Option<AddrMatch>,
    pub verdict: Verdict,
}

/// The rules of one family, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FamilyRules {
    pub family: Family,
    pub rules: Vec<Rule>,
}

/// Multicast destinations are never masqueraded (flannel's rule 5 exception).
pub fn multicast(family: Family) -> IpNet {
    match family {
        Family::Ipv4 => IpNet::V4(Ipv4Net::new_assert([224, 0, 0, 0].into(), 4)),
        Family::Ipv6 => IpNet::V6(Ipv6Net::new_assert([0xff00, 0, 0, 0, 0, 0, 0, 0].into(), 8)),
    }
}

/// The configuration of `family`, when its rules are wanted at all.
pub fn family_spec(spec: &NatSpec, family: Family) -> Option<&NatFamily> {
    if !spec.masquerade {
        return None;
    }
    match family {
        Family::Ipv4 => spec.ipv4.as_ref(),
        Family::Ipv6 => spec.ipv6.as_ref(),
    }
}

/// Desired rules of `family`, `None` when netconverge should own no rules there.
pub fn desired(spec: Option<&NatSpec>, family: Family) -> Option<Vec<Rule>> {
    let spec = spec?;
    family_spec(spec, family).map(|f| family_rules(f, family, spec))
}

/// Every configured family's rules (IPv4 first); empty when masquerade is off.
pub fn render(spec: &NatSpec) -> Vec<FamilyRules> {
    [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .filter_map(|family| {
            family_spec(spec, family).map(|f| FamilyRules {
                family,
                rules: family_rules(f, family, spec),
            })
        })
        .collect()
}

/// flannel's FLANNEL-POSTRTG list for one family (the iptables flavour is
/// the reference semantics; its nftables flavour drifted from it).
pub fn family_rules(f: &NatFamily, family: Family, spec: &NatSpec) -> Vec<Rule> {
    let cluster = f.cluster;
    let pod = f.pod_subnet;
    let masq = Verdict::Masquerade {
        random_fully: spec.random_fully,
    };
    let (value, mask) = spec.mark;
    vec![
        // kube-proxy already decided (its masquerade-skip mark): Service
        // traffic it SNATs itself, or traffic it wants left alone.
        Rule {
            mark: Some(MarkMatch { value, mask }),
            src: None,
            dst: None,
            verdict: Verdict::Return,
        },
        // This node's pods talking to any pod of the cluster: pod-to-pod
        // keeps its source address so network policy and logs see the pod.
        Rule {
            mark: None,
            src: Some(AddrMatch::is(pod)),
            dst: Some(AddrMatch::is(cluster)),
            verdict: Verdict::Return,
        },
        // Other pods of the cluster reaching our pods (forwarded from the
        // overlay): unchanged.
        Rule {
            mark: None,
            src: Some(AddrMatch::is(cluster)),
            dst: Some(AddrMatch::is(pod)),
            verdict: Verdict::Return,
        },
        // Anything outside the cluster reaching our pods directly (node
        // ports, routed external clients): unchanged, replies go back the
        // same way.
        Rule {
            mark: None,
            src: Some(AddrMatch::not(cluster)),
            dst: Some(AddrMatch::is(pod)),
            verdict: Verdict::Return,
        },
        // Pods leaving the cluster (internet, LAN, the node network): hide
        // them behind the node's address; multicast is never masqueraded.
        Rule {
            mark: None,
            src: Some(AddrMatch::is(cluster)),
            dst: Some(AddrMatch::not(multicast(family))),
            verdict: masq,
        },
        // Hosts outside the cluster (the node itself, host-network pods)
        // reaching remote pods: masquerade so the remote pod can answer over
        // the overlay to an address it can route.
        Rule {
            mark: None,
            src: Some(AddrMatch::not(cluster)),
            dst: Some(AddrMatch::is(cluster)),
            verdict: masq,
        },
    ]
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Return => f.write_str("return"),
            Verdict::Masquerade { random_fully: true } => f.write_str("masquerade fully-random"),
            Verdict::Masquerade {
                random_fully: false,
            } => f.write_str("masquerade"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NatBackendKind;

    fn spec() -> NatSpec {
        NatSpec {
            backend: NatBackendKind::Nftables,
            masquerade: true,
            ipv4: Some(NatFamily {
                cluster: "198.18.0.0/16".parse().unwrap(),
                // host bits set on purpose: rendering must use the network
                pod_subnet: "198.18.1.1/24".parse().unwrap(),
            }),
            ipv6: None,
            random_fully: true,
            mark: (0x4000, 0x4000),
            nft_table: "netconverge".into(),
            iptables_chain: "NETCONVERGE-POSTRTG".into(),
            iptables: crate::model::IptablesMode::Auto,
            adopt: false,
        }
    }

    #[test]
    fn unconfigured_family_and_masquerade_off_give_no_rules() {
        let s = spec();
        assert_eq!(render(&s).len(), 1);
        assert_eq!(desired(Some(&s), Family::Ipv6), None);
        assert_eq!(desired(None, Family::Ipv4), None);
        let off = NatSpec {
            masquerade: false,
            ..s
        };
        assert!(render(&off).is_empty());
        assert_eq!(desired(Some(&off), Family::Ipv4), None);
    }

    #[test]
    fn subnets_are_truncated_to_their_network() {
        let rules = desired(Some(&spec()), Family::Ipv4).unwrap();
        assert_eq!(rules.len(), 6);
        let pod: IpNet = "198.18.1.0/24".parse().unwrap();
        assert_eq!(rules.get(1).and_then(|r| r.src).map(|m| m.net), Some(pod));
    }
}
