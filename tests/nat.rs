#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! NAT backends against the real kernel, in throwaway network namespaces:
//! install, idempotence (handles / counters untouched), every drift found
//! and repaired, foreign rules untouched, cleanup, both iptables flavours,
//! the no-gap proof, and real masqueraded traffic.
//!
//! The library runs inside the namespace (`ns.enter`); results are checked
//! with `nft` / `iptables-save` run by the test itself (`ns.exec`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use common::fixtures::NatRules;
use common::rules_watch::{self, Watch};
use common::ruleset::{self, CHAIN, TABLE, commented, nft_table, nft_tables};
use common::{Netns, cpu_exclusive, cpu_shared, only_change};
use netconverge::model::{Family, IptablesMode, NatBackendKind, NatFamily, NatSpec};
use netconverge::nat::{self, NatObserved};
use netconverge::plan::{ChangeKind, Op, Plan};

// ------------------------------------------------------------- flavours --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// nftables.
    Nft,
    /// iptables, flavour chosen by `iptables = "auto"` (iptables-nft here).
    IptSystem,
    /// `iptables = "nft"`.
    IptNft,
    /// `iptables = "legacy"`.
    IptLegacy,
}

/// Adoption records of this test process go to a temp dir, not the host's
/// /var/lib/netconverge (entries are per namespace anyway).
static STATE: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let d = tempfile::tempdir().unwrap();
    nat::record::set_dir(d.path().to_path_buf());
    d
});

impl Flavour {
    fn kind(self) -> NatBackendKind {
        match self {
            Flavour::Nft => NatBackendKind::Nftables,
            _ => NatBackendKind::Iptables,
        }
    }

    fn mode(self) -> IptablesMode {
        match self {
            Flavour::IptLegacy => IptablesMode::Legacy,
            Flavour::IptNft => IptablesMode::Nft,
            _ => IptablesMode::Auto,
        }
    }

    /// The iptables-nft/legacy flavour this stands for.
    fn ipt(self) -> nat::Flavour {
        match self {
            Flavour::IptLegacy => nat::Flavour::Legacy,
            _ => nat::Flavour::Nft,
        }
    }

    /// The iptables command line tool of this flavour, for making drift.
    fn cli(self, family: Family) -> String {
        let base = if family == Family::Ipv4 {
            "iptables"
        } else {
            "ip6tables"
        };
        match self {
            Flavour::IptLegacy => format!("{base}-legacy"),
            Flavour::IptNft => format!("{base}-nft"),
            _ => base.to_string(),
        }
    }

    fn save(self, family: Family) -> String {
        format!("{}-save", self.cli(family))
    }
}

fn observe(spec: Option<&NatSpec>) -> NatObserved {
    LazyLock::force(&STATE);
    nat::observe(spec).unwrap()
}

/// The NAT part of `cleanup` from a fresh observation (inside the
/// namespace), applied; returns its lines (`object: reason`).
fn cleanup(spec: Option<&NatSpec>) -> Vec<String> {
    let plan = nat::cleanup(&observe(spec));
    apply_all(&plan);
    plan.changes
        .iter()
        .map(|c| format!("{}: {}", c.object, c.reason))
        .collect()
}

/// Apply every change of `plan` in plan order (stage order already: adds
/// and repairs before removals of leftovers).
fn apply_all(plan: &Plan) {
    for c in &plan.changes {
        let Op::Nat(op) = &c.op else {
            panic!("non-NAT op {c:?}")
        };
        nat::apply(op).unwrap_or_else(|e| panic!("{}: {e}", c.object));
    }
}

// ----------------------------------------------------------------- specs --

fn family(cluster: &str, pod_subnet: &str) -> NatFamily {
    NatFamily {
        cluster: cluster.parse().unwrap(),
        pod_subnet: pod_subnet.parse().unwrap(),
    }
}

/// Pod subnets 198.18.1.0/24 in 198.18.0.0/16 and fd00:42:0:1::/64 in
/// fd00:42::/56: what [`WANT`] expects.
fn spec(flavour: Flavour, ipv4: bool, ipv6: bool) -> NatSpec {
    NatSpec {
        backend: flavour.kind(),
        masquerade: true,
        ipv4: ipv4.then(|| family("198.18.0.0/16", "198.18.1.0/24")),
        ipv6: ipv6.then(|| family("fd00:42::/56", "fd00:42:0:1::/64")),
        random_fully: true,
        mark: (0x4000, 0x4000),
        nft_table: TABLE.into(),
        iptables_chain: CHAIN.into(),
        iptables: flavour.mode(),
        adopt: false,
    }
}

/// Observe and plan inside the namespace (no writes).
fn check(ns: &Netns, spec: &NatSpec) -> Plan {
    let spec = spec.clone();
    ns.enter(move || nat::plan(Some(&spec), &observe(Some(&spec))))
}

/// One converge pass inside the namespace: observe, plan, apply every
/// change, then verify that a fresh observation plans nothing. Returns the
/// plan that was applied.
fn converge(ns: &Netns, spec: &NatSpec) -> Plan {
    converge_opt(ns, Some(spec))
}

/// [`converge`] for any file (`None`: no `[nat]`).
fn converge_opt(ns: &Netns, spec: Option<&NatSpec>) -> Plan {
    let spec = spec.cloned();
    ns.enter(move || {
        let plan = nat::plan(spec.as_ref(), &observe(spec.as_ref()));
        apply_all(&plan);
        let after = nat::plan(spec.as_ref(), &observe(spec.as_ref()));
        assert!(
            after.in_sync(),
            "not converged after applying:\n{plan}\nstill:\n{after}"
        );
        plan
    })
}

// ------------------------------------------------- independent expectations --

static WANT: LazyLock<NatRules> = LazyLock::new(|| NatRules::new("198.18.0.0/16"));

// --------------------------------------------------------------- readers --

fn nft_word(family: Family) -> &'static str {
    if family == Family::Ipv4 { "ip" } else { "ip6" }
}

/// Handles of the rules in our chain, in order.
fn nft_handles(ns: &Netns, family: Family) -> Vec<u64> {
    let rules = ruleset::nft_rules(ns, nft_word(family));
    rules.into_iter().map(|(handle, _)| handle).collect()
}

fn ipt_ours(ns: &Netns, flavour: Flavour, family: Family) -> String {
    ruleset::ipt_ours(ns, &flavour.save(family))
}

fn ipt_foreign(ns: &Netns, flavour: Flavour, family: Family) -> String {
    ruleset::ipt_foreign(ns, &flavour.save(family))
}

fn ipt(ns: &Netns, flavour: Flavour, family: Family, args: &[&str]) {
    ruleset::ipt_nat(ns, &flavour.cli(family), args);
}

fn one_change(plan: &Plan) -> (&ChangeKind, &str, &str) {
    let c = only_change(plan);
    (&c.kind, c.object.as_str(), c.reason.as_str())
}

// ------------------------------------------------------------- nftables --

#[test]
fn nft_dual_stack_installs_then_second_converge_touches_nothing() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-nft");
    let s = spec(Flavour::Nft, true, true);
    let first = converge(&ns, &s);
    assert_eq!(first.changes.len(), 2, "{first}");
    assert!(
        first.changes.iter().all(|c| c.kind == ChangeKind::Add),
        "{first}"
    );
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(WANT.nft_v4.as_str()));
    assert_eq!(nft_table(&ns, "ip6").as_deref(), Some(WANT.nft_v6.as_str()));

    let handles = (
        nft_handles(&ns, Family::Ipv4),
        nft_handles(&ns, Family::Ipv6),
    );
    assert_eq!(handles.0.len(), 6);
    let ruleset = ns.exec(&["nft", "-j", "list", "ruleset"]);
    let second = converge(&ns, &s);
    assert!(second.changes.is_empty(), "{second}");
    assert_eq!(
        (
            nft_handles(&ns, Family::Ipv4),
            nft_handles(&ns, Family::Ipv6)
        ),
        handles
    );
    assert_eq!(ns.exec(&["nft", "-j", "list", "ruleset"]), ruleset);
}

#[test]
fn nft_single_family_and_removal_when_config_shrinks() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-nft1");
    converge(&ns, &spec(Flavour::Nft, true, false));
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(WANT.nft_v4.as_str()));
    assert_eq!(nft_table(&ns, "ip6"), None);

    let ns6 = Netns::new("nat-nft6");
    converge(&ns6, &spec(Flavour::Nft, false, true));
    assert_eq!(nft_table(&ns6, "ip"), None);
    assert_eq!(
        nft_table(&ns6, "ip6").as_deref(),
        Some(WANT.nft_v6.as_str())
    );

    // dual → IPv4 only: our IPv6 table goes, IPv4 stays untouched
    converge(&ns, &spec(Flavour::Nft, true, true));
    let v4_handles = nft_handles(&ns, Family::Ipv4);
    let p = converge(&ns, &spec(Flavour::Nft, true, false));
    let (kind, object, reason) = one_change(&p);
    assert_eq!(
        (kind, object, reason),
        (
            &ChangeKind::Remove,
            "nat ipv6 (nftables table ip6 netconverge)",
            "ipv6 not configured"
        )
    );
    assert_eq!(nft_table(&ns, "ip6"), None);
    assert_eq!(nft_handles(&ns, Family::Ipv4), v4_handles);

    // masquerade = false: nothing of ours left
    let off = NatSpec {
        masquerade: false,
        ..spec(Flavour::Nft, true, true)
    };
    let p = converge(&ns, &off);
    assert_eq!(p.changes.len(), 1, "{p}");
    assert_eq!(p.changes[0].kind, ChangeKind::Remove);
    assert_eq!(nft_tables(&ns).trim(), "");
}

#[test]
fn nft_every_drift_is_found_and_repaired() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-nftd");
    let s = spec(Flavour::Nft, true, false);
    converge(&ns, &s);
    let chain = format!("ip|{TABLE}|postrouting");
    let mark_rule = r#"meta mark & 0x4000 == 0x4000 return comment "netconverge masq""#;
    let masq_rule = r#"ip saddr 198.18.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "netconverge masq""#;
    let edited_rule =
        r#"ip saddr 198.18.9.0/24 ip daddr 198.18.0.0/16 return comment "netconverge masq""#;
    // each drift: `nft` commands (arguments separated by `|`), given the
    // handles of our chain's rules
    type Drift<'a> = Box<dyn Fn(&[u64]) -> Vec<String> + 'a>;
    let fixed = |cmds: &'static [&'static str]| -> Drift {
        Box::new(move |_| cmds.iter().map(|c| c.to_string()).collect())
    };
    let cases: Vec<(&str, Drift, ChangeKind, &str)> = vec![
        (
            "rule deleted",
            Box::new(|h| vec![format!("delete|rule|{chain}|handle|{}", h[1])]),
            ChangeKind::Modify,
            "missing rule `ip saddr 198.18.1.0/24 ip daddr 198.18.0.0/16 return",
        ),
        (
            "reordered",
            Box::new(|h| {
                vec![
                    format!("delete|rule|{chain}|handle|{}", h[0]),
                    format!("add|rule|{chain}|{mark_rule}"),
                ]
            }),
            ChangeKind::Modify,
            "rules reordered",
        ),
        (
            "duplicated",
            Box::new(|_| vec![format!("add|rule|{chain}|{masq_rule}")]),
            ChangeKind::Modify,
            "duplicate rule `ip saddr 198.18.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
        ),
        (
            "edited",
            Box::new(|h| {
                vec![format!(
                    "replace|rule|{chain}|handle|{}|{edited_rule}",
                    h[1]
                )]
            }),
            ChangeKind::Modify,
            "rule 2 edited: `ip saddr 198.18.9.0/24",
        ),
        (
            "foreign rule in our chain",
            fixed(&["insert|rule|ip|netconverge|postrouting|counter|accept"]),
            ChangeKind::Modify,
            "extra rule `unrecognized",
        ),
        (
            "chain priority changed",
            fixed(&[
                "delete|chain|ip|netconverge|postrouting",
                "add|chain|ip|netconverge|postrouting|{ type nat hook postrouting priority 0; }",
            ]),
            ChangeKind::Modify,
            "chain postrouting is `type nat hook postrouting priority 0; policy accept`",
        ),
        (
            "chain deleted",
            fixed(&["delete|chain|ip|netconverge|postrouting"]),
            ChangeKind::Modify,
            "chain postrouting missing",
        ),
        (
            "table made dormant",
            fixed(&["add|table|ip|netconverge|{ flags dormant; }"]),
            ChangeKind::Modify,
            "table has flags set",
        ),
        (
            "whole table deleted",
            fixed(&["delete|table|ip|netconverge"]),
            ChangeKind::Add,
            "missing",
        ),
    ];
    for (name, drift, want_kind, want_reason) in cases {
        for cmd in drift(&nft_handles(&ns, Family::Ipv4)) {
            ruleset::nft(&ns, &cmd);
        }
        assert_ne!(
            nft_table(&ns, "ip").as_deref(),
            Some(WANT.nft_v4.as_str()),
            "{name}: drift had no effect"
        );
        let p = check(&ns, &s);
        let (kind, object, reason) = one_change(&p);
        assert_eq!(kind, &want_kind, "{name}: {p}");
        assert_eq!(object, "nat ipv4 (nftables table ip netconverge)");
        assert!(
            reason.contains(want_reason),
            "{name}: reason {reason:?} lacks {want_reason:?}"
        );
        converge(&ns, &s);
        assert_eq!(
            nft_table(&ns, "ip").as_deref(),
            Some(WANT.nft_v4.as_str()),
            "{name}: not repaired"
        );
    }
}

#[test]
fn nft_foreign_tables_untouched_and_cleanup_removes_only_ours() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-nftf");
    let foreign = r#"
table ip usernat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 198.18.7.0/24 oifname "veth9" counter masquerade
	}
}
table ip6 netconverge2 {
	chain postrouting {
		type nat hook postrouting priority srcnat - 1; policy accept;
		ip6 saddr fd00:99::/64 counter return
	}
}
table inet filter {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr 198.18.0.0/16 counter accept
	}
}
"#;
    ruleset::nft_file(&ns, foreign);
    let snapshot = |ns: &Netns| {
        ["ip|usernat", "ip6|netconverge2", "inet|filter"]
            .map(|t| ruleset::nft(ns, &format!("-a|list|table|{t}")))
    };
    let before = snapshot(&ns);
    assert!(before[0].contains("masquerade"), "{before:?}");

    let s = spec(Flavour::Nft, true, true);
    converge(&ns, &s);
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(WANT.nft_v4.as_str()));
    assert_eq!(snapshot(&ns), before);

    let removed = ns.enter({
        let s = s.clone();
        move || cleanup(Some(&s))
    });
    assert_eq!(
        removed,
        [
            "nat ipv4 (nftables table ip netconverge): cleanup",
            "nat ipv6 (nftables table ip6 netconverge): cleanup"
        ]
    );
    assert_eq!(snapshot(&ns), before);
    ruleset::assert_no_nft_table_of_ours(&ns);
    let again = ns.enter(move || cleanup(Some(&s)));
    assert!(again.is_empty(), "{again:?}");
}

// ------------------------------------------------------------- iptables --

const IPT_FLAVOURS: [Flavour; 2] = [Flavour::IptNft, Flavour::IptLegacy];

/// Send one UDP datagram from `src` (a cluster address) out of the
/// namespace so that our MASQUERADE rule counts a packet.
fn send_udp(ns: &Netns, src: &str, dst: &str) {
    let py = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{src}', 0)); s.sendto(b'x', ('{dst}', 9))"
    );
    ns.exec(&[python(), "-c", &py]);
}

#[test]
fn iptables_dual_stack_installs_then_second_converge_touches_nothing() {
    let _cpu = cpu_shared();
    for flavour in IPT_FLAVOURS {
        let ns = Netns::new("nat-ipt");
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ns.ip(&["link", "set", "v0", "up"]);
        ns.ip(&["link", "set", "v1", "up"]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "v0"]);
        ns.ip(&["addr", "add", "198.18.1.5/32", "dev", "v0"]);

        let s = spec(flavour, true, true);
        let first = converge(&ns, &s);
        assert_eq!(first.changes.len(), 2, "{flavour:?}: {first}");
        assert_eq!(
            ipt_ours(&ns, flavour, Family::Ipv4),
            WANT.ipt_v4,
            "{flavour:?}"
        );
        assert_eq!(
            ipt_ours(&ns, flavour, Family::Ipv6),
            WANT.ipt_v6,
            "{flavour:?}"
        );

        // Make our MASQUERADE rule count traffic: a re-applied chain would
        // start again from [0:0].
        send_udp(&ns, "198.18.1.5", "192.0.2.2");
        let counted = ns.exec(&[&flavour.save(Family::Ipv4), "-c", "-t", "nat"]);
        let masq = counted
            .lines()
            .find(|l| l.contains(&format!("-A {CHAIN} -s 198.18.0.0/16 ! -d 224.0.0.0/4")))
            .unwrap();
        assert!(
            !masq.starts_with("[0:0]"),
            "{flavour:?}: traffic not counted: {masq}"
        );

        let strip = |s: String| {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let before = (
            strip(ns.exec(&[&flavour.save(Family::Ipv4), "-c"])),
            strip(ns.exec(&[&flavour.save(Family::Ipv6), "-c"])),
        );
        let second = converge(&ns, &s);
        assert!(second.changes.is_empty(), "{flavour:?}: {second}");
        let after = (
            strip(ns.exec(&[&flavour.save(Family::Ipv4), "-c"])),
            strip(ns.exec(&[&flavour.save(Family::Ipv6), "-c"])),
        );
        assert_eq!(after, before, "{flavour:?}");
    }
}

#[test]
fn iptables_single_family_and_removal() {
    let _cpu = cpu_shared();
    for flavour in IPT_FLAVOURS {
        let ns4 = Netns::new("nat-ipt4");
        converge(&ns4, &spec(flavour, true, false));
        assert_eq!(
            ipt_ours(&ns4, flavour, Family::Ipv4),
            WANT.ipt_v4,
            "{flavour:?}"
        );
        assert_eq!(ipt_ours(&ns4, flavour, Family::Ipv6), "", "{flavour:?}");

        let ns6 = Netns::new("nat-ipt6");
        converge(&ns6, &spec(flavour, false, true));
        assert_eq!(ipt_ours(&ns6, flavour, Family::Ipv4), "", "{flavour:?}");
        assert_eq!(
            ipt_ours(&ns6, flavour, Family::Ipv6),
            WANT.ipt_v6,
            "{flavour:?}"
        );

        let off = NatSpec {
            masquerade: false,
            ..spec(flavour, true, true)
        };
        let p = converge(&ns6, &off);
        let (kind, object, reason) = one_change(&p);
        assert_eq!(
            (kind, object, reason),
            (
                &ChangeKind::Remove,
                &*format!(
                    "nat ipv6 ({}-{} chain NETCONVERGE-POSTRTG)",
                    "ip6tables",
                    flavour.ipt().word()
                ),
                "masquerade = false"
            )
        );
        assert_eq!(ipt_ours(&ns6, flavour, Family::Ipv6), "", "{flavour:?}");
    }
}

#[test]
fn iptables_every_drift_is_found_and_repaired() {
    let _cpu = cpu_shared();
    let jump = |op| commented(&[op, "POSTROUTING"], &[CHAIN]);
    for flavour in IPT_FLAVOURS {
        let ns = Netns::new("nat-iptd");
        let s = spec(flavour, true, false);
        converge(&ns, &s);
        let f = Family::Ipv4;
        let ipt = |ns: &Netns, args: &[&str]| ipt(ns, flavour, f, args);
        type Drift<'a> = Box<dyn Fn(&Netns) + 'a>;
        let cases: Vec<(&str, Drift, ChangeKind, &str)> = vec![
            (
                "rule deleted",
                Box::new(|ns| ipt(ns, &["-D", CHAIN, "3"])),
                ChangeKind::Modify,
                "missing rule `-A NETCONVERGE-POSTRTG -s 198.18.0.0/16 -d 198.18.1.0/24",
            ),
            (
                "reordered",
                Box::new(|ns| {
                    ipt(ns, &["-D", CHAIN, "1"]);
                    let mark = ["-A", CHAIN, "-m", "mark", "--mark", "0x4000/0x4000"];
                    ipt(ns, &commented(&mark, &["RETURN"]));
                }),
                ChangeKind::Modify,
                "rules reordered",
            ),
            (
                "duplicated",
                Box::new(|ns| {
                    let masq = ["-A", CHAIN, "-s", "198.18.0.0/16", "!", "-d", "224.0.0.0/4"];
                    ipt(ns, &commented(&masq, &["MASQUERADE", "--random-fully"]));
                }),
                ChangeKind::Modify,
                "duplicate rule `-A NETCONVERGE-POSTRTG -s 198.18.0.0/16 ! -d 224.0.0.0/4",
            ),
            (
                "edited",
                Box::new(|ns| {
                    let edited = [
                        "-R",
                        CHAIN,
                        "2",
                        "-s",
                        "198.18.9.0/24",
                        "-d",
                        "198.18.0.0/16",
                    ];
                    ipt(ns, &commented(&edited, &["RETURN"]));
                }),
                ChangeKind::Modify,
                "rule 2 edited: `-A NETCONVERGE-POSTRTG -s 198.18.9.0/24",
            ),
            (
                "jump removed",
                Box::new(|ns| ipt(ns, &jump("-D"))),
                ChangeKind::Modify,
                "jump from POSTROUTING missing",
            ),
            (
                "jump duplicated",
                Box::new(|ns| ipt(ns, &jump("-I"))),
                ChangeKind::Modify,
                "jump from POSTROUTING duplicated (2 copies)",
            ),
            (
                "jump edited",
                Box::new(|ns| {
                    ipt(ns, &jump("-D"));
                    ipt(ns, &["-A", "POSTROUTING", "-o", "lo", "-j", CHAIN]);
                }),
                ChangeKind::Modify,
                "unexpected jump from POSTROUTING `-A POSTROUTING -o lo -j NETCONVERGE-POSTRTG`",
            ),
            (
                "chain and jump deleted",
                Box::new(|ns| {
                    ipt(ns, &jump("-D"));
                    ipt(ns, &["-F", CHAIN]);
                    ipt(ns, &["-X", CHAIN]);
                }),
                ChangeKind::Add,
                "missing",
            ),
        ];
        for (name, drift, want_kind, want_reason) in cases {
            drift(&ns);
            assert_ne!(
                ipt_ours(&ns, flavour, f),
                WANT.ipt_v4,
                "{flavour:?} {name}: drift had no effect"
            );
            let p = check(&ns, &s);
            let (kind, object, reason) = one_change(&p);
            assert_eq!(kind, &want_kind, "{flavour:?} {name}: {p}");
            assert_eq!(
                object,
                format!(
                    "nat ipv4 (iptables-{} chain NETCONVERGE-POSTRTG)",
                    flavour.ipt().word()
                )
            );
            assert!(
                reason.contains(want_reason),
                "{flavour:?} {name}: reason {reason:?} lacks {want_reason:?}"
            );
            converge(&ns, &s);
            assert_eq!(
                ipt_ours(&ns, flavour, f),
                WANT.ipt_v4,
                "{flavour:?} {name}: not repaired"
            );
        }
    }
}

#[test]
fn iptables_foreign_chains_untouched_and_cleanup_removes_only_ours() {
    let _cpu = cpu_shared();
    for flavour in IPT_FLAVOURS {
        let ns = Netns::new("nat-iptf");
        for f in [Family::Ipv4, Family::Ipv6] {
            let ipt = |args: &[&str]| ipt(&ns, flavour, f, args);
            ipt(&["-N", "KUBE-POSTROUTING"]);
            let not_marked = ["-m", "mark", "!", "--mark", "0x4000/0x4000"];
            ipt(&[
                &["-A", "KUBE-POSTROUTING"][..],
                &not_marked,
                &["-j", "RETURN"],
            ]
            .concat());
            ipt(&[
                "-A",
                "KUBE-POSTROUTING",
                "-j",
                "MARK",
                "--xor-mark",
                "0x4000",
            ]);
            ipt(&[
                "-A",
                "KUBE-POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "kubernetes service traffic requiring SNAT",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ]);
            ipt(&[
                "-A",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "kubernetes postrouting rules",
                "-j",
                "KUBE-POSTROUTING",
            ]);
            ipt(&["-N", "KUBE-MARK-MASQ"]);
            ipt(&["-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", "0x4000"]);
            let cli = flavour.cli(f);
            ns.exec(&[
                &cli, "-w", "-t", "filter", "-A", "FORWARD", "-i", "lo", "-j", "ACCEPT",
            ]);
        }
        let foreign = |ns: &Netns| {
            (
                ipt_foreign(ns, flavour, Family::Ipv4),
                ipt_foreign(ns, flavour, Family::Ipv6),
            )
        };
        let before = foreign(&ns);
        assert!(before.0.contains("KUBE-POSTROUTING") && before.1.contains("KUBE-MARK-MASQ"));

        let s = spec(flavour, true, true);
        converge(&ns, &s);
        assert_eq!(
            ipt_ours(&ns, flavour, Family::Ipv4),
            WANT.ipt_v4,
            "{flavour:?}"
        );
        assert_eq!(
            foreign(&ns),
            before,
            "{flavour:?}: foreign rules changed by converge"
        );

        let removed = ns.enter({
            let s = s.clone();
            move || cleanup(Some(&s))
        });
        assert_eq!(
            removed,
            [("ipv4", "iptables"), ("ipv6", "ip6tables")]
                .into_iter()
                .map(|(f, b)| {
                    let t = format!("{b}-{}", flavour.ipt().word());
                    format!(
                        "nat {f} ({t} chain NETCONVERGE-POSTRTG): cleanup, with \
                         1 jump(s) from {t} POSTROUTING to NETCONVERGE-POSTRTG"
                    )
                })
                .collect::<Vec<_>>(),
            "{flavour:?}"
        );
        assert_eq!(
            foreign(&ns),
            before,
            "{flavour:?}: foreign rules changed by cleanup"
        );
        assert_eq!(ipt_ours(&ns, flavour, Family::Ipv4), "", "{flavour:?}");
        assert_eq!(ipt_ours(&ns, flavour, Family::Ipv6), "", "{flavour:?}");
        let again = ns.enter(move || cleanup(Some(&s)));
        assert!(again.is_empty(), "{flavour:?}: {again:?}");
    }
}

// ---------------------------------------------------------------- no gap --

/// Spec whose first rule differs (another kube-proxy mark): applying it and
/// the real spec alternately rewrites the chain each time, while both keep
/// the same two masquerade rules.
fn edited(s: &NatSpec) -> NatSpec {
    NatSpec {
        mark: (0x8000, 0x8000),
        ..s.clone()
    }
}

fn watch_cmd(flavour: Flavour) -> Vec<String> {
    match flavour {
        Flavour::Nft => ["nft", "-j", "list", "table", "ip", TABLE]
            .map(String::from)
            .to_vec(),
        f => vec![f.save(Family::Ipv4), "-t".into(), "nat".into()],
    }
}

fn watcher(ns: &Netns, flavour: Flavour) -> Watch {
    let cmd = watch_cmd(flavour);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let check = match flavour {
        Flavour::Nft => rules_watch::nft_masquerades("postrouting", 2),
        _ => rules_watch::iptables_masquerades(CHAIN, 2),
    };
    Watch::start(&ns.name, &cmd, check)
}

fn no_gap(flavour: Flavour) {
    let _cpu = cpu_exclusive();
    let ns = Netns::new("nat-gap");
    let s = spec(flavour, true, false);
    converge(&ns, &s);

    // Control: a non-atomic flush-then-refill is caught, so the watcher
    // can fail.
    let cli = (flavour != Flavour::Nft).then(|| flavour.cli(Family::Ipv4));
    let what = format!("{flavour:?}");
    ruleset::assert_watch_sees_a_gap(&ns, watcher(&ns, flavour), cli.as_deref(), &what, || {
        converge(&ns, &s);
    });

    // The proof: 100 rewrites of the chain (50 drifts, 50 repairs), each
    // one transaction through the library, and never a missing rule.
    let w = watcher(&ns, flavour);
    let rewrites = ns.enter({
        let s = s.clone();
        move || {
            let mut n = 0;
            for _ in 0..50 {
                for target in [edited(&s), s.clone()] {
                    let plan = nat::plan(Some(&target), &observe(Some(&target)));
                    assert_eq!(plan.changes.len(), 1, "{plan}");
                    for c in &plan.changes {
                        let Op::Nat(op) = &c.op else { panic!() };
                        nat::apply(op).unwrap();
                        n += 1;
                    }
                    // Leave the CPU to the watcher between rewrites: the
                    // rate it reaches is what makes the proof meaningful.
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
            n
        }
    });
    assert_eq!(rewrites, 100);
    ruleset::assert_no_gap(w, &what);
    assert!(check(&ns, &s).in_sync());
}

variants!(no_gap:
    no_gap_nftables => Flavour::Nft,
    no_gap_iptables_nft => Flavour::IptNft,
    no_gap_iptables_legacy => Flavour::IptLegacy,
);

// --------------------------------------------------------- real traffic --

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

const UDP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    try:
        s.sendto(peer[0].encode(), peer)
    except OSError:
        pass  # no route back (unmasqueraded source): the client times out
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
for _ in range(5):
    s.sendto(b"who am i", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(2048).decode())
        sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
"#;

/// A UDP server that answers with the source address it saw; killed by PID
/// on drop.
struct Server(Child);

impl Server {
    fn start(ns: &Netns, addr: &str, port: u16) -> Server {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                python(),
                "-c",
                UDP_SERVER,
                addr,
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ask the server at `addr:port` from inside `ns`; `None` when no answer.
fn whoami(ns: &Netns, addr: &str, port: u16) -> Option<String> {
    let out = ns.exec_output(&[python(), "-c", UDP_CLIENT, addr, &port.to_string()]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// pod (198.18.1.2) → node (router, NAT) → outside (192.0.2.2, no route
/// back to the cluster) and → peer (198.18.2.2, another cluster subnet).
fn masquerade_traffic(flavour: Flavour) {
    let _cpu = cpu_shared();
    let pod = Netns::new("pod");
    let node = Netns::new("node");
    let outside = Netns::new("out");
    let peer = Netns::new("peer");
    node.ip(&[
        "link", "add", "n-pod", "type", "veth", "peer", "name", "p0", "netns", &pod.name,
    ]);
    node.ip(&[
        "link",
        "add",
        "n-out",
        "type",
        "veth",
        "peer",
        "name",
        "o0",
        "netns",
        &outside.name,
    ]);
    node.ip(&[
        "link", "add", "n-peer", "type", "veth", "peer", "name", "r0", "netns", &peer.name,
    ]);
    for (ns, dev, addr) in [
        (&node, "n-pod", "198.18.1.1/24"),
        (&node, "n-out", "192.0.2.1/24"),
        (&node, "n-peer", "198.18.2.1/24"),
        (&pod, "p0", "198.18.1.2/24"),
        (&outside, "o0", "192.0.2.2/24"),
        (&peer, "r0", "198.18.2.2/24"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    pod.ip(&["route", "add", "default", "via", "198.18.1.1"]);
    peer.ip(&["route", "add", "default", "via", "198.18.2.1"]);
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    let _out_srv = Server::start(&outside, "192.0.2.2", 5353);
    let _peer_srv = Server::start(&peer, "198.18.2.2", 5353);

    // Without NAT the outside cannot answer: the test can fail.
    assert_eq!(
        whoami(&pod, "192.0.2.2", 5353),
        None,
        "{flavour:?}: answered without NAT"
    );

    converge(&node, &spec(flavour, true, false));
    assert_eq!(
        whoami(&pod, "192.0.2.2", 5353).as_deref(),
        Some("192.0.2.1"),
        "{flavour:?}: not masqueraded"
    );
    assert_eq!(
        whoami(&pod, "198.18.2.2", 5353).as_deref(),
        Some("198.18.1.2"),
        "{flavour:?}: pod-to-cluster traffic must keep its source"
    );
}

variants!(masquerade_traffic:
    traffic_is_masqueraded_only_when_leaving_the_cluster_nftables => Flavour::Nft,
    traffic_is_masqueraded_only_when_leaving_the_cluster_iptables => Flavour::IptSystem,
    traffic_is_masqueraded_only_when_leaving_the_cluster_iptables_legacy => Flavour::IptLegacy,
);

#[test]
fn backend_tools_are_found_on_this_machine() {
    for f in [
        Flavour::Nft,
        Flavour::IptSystem,
        Flavour::IptNft,
        Flavour::IptLegacy,
    ] {
        nat::check_backend(&spec(f, true, true)).unwrap();
    }
}

// ------------------------------------------- ownership across every file --

fn nft_names(ns: &Netns) -> String {
    nft_tables(ns)
        .lines()
        .filter(|l| !l.ends_with(" nat") && !l.ends_with(" filter"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Removing `[nat]`, renaming the table or chain, switching backend and
/// iptables flavour: each converge leaves the new place holding the rules
/// and nothing of the old one, all in one pass (the leftovers go in the
/// stage after the install, once the new place is verified in sync).
#[test]
fn every_earlier_place_is_removed_once_the_new_one_holds_the_rules() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-move");
    let v4 = |ns: &Netns, f: Flavour, chain: &str| {
        keep(&ns.exec(&[&f.save(Family::Ipv4), "-t", "nat"]), chain)
    };
    converge(&ns, &spec(Flavour::Nft, true, true));
    assert_eq!(
        nft_names(&ns),
        "table ip netconverge\ntable ip6 netconverge\n"
    );

    // renamed table
    let renamed = NatSpec {
        nft_table: "nc2".into(),
        ..spec(Flavour::Nft, true, true)
    };
    let p = converge(&ns, &renamed);
    let removed: Vec<&str> = p
        .changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Remove)
        .map(|c| c.object.as_str())
        .collect();
    assert_eq!(
        removed,
        [
            "nat ipv4 (nftables table ip netconverge)",
            "nat ipv6 (nftables table ip6 netconverge)"
        ],
        "{p}"
    );
    assert_eq!(nft_names(&ns), "table ip nc2\ntable ip6 nc2\n");

    // nftables → iptables-nft
    let p = converge(&ns, &spec(Flavour::IptNft, true, true));
    assert_eq!(p.changes.len(), 4, "{p}");
    assert_eq!(nft_names(&ns), "");
    assert_eq!(ipt_ours(&ns, Flavour::IptNft, Family::Ipv4), WANT.ipt_v4);
    assert_eq!(ipt_ours(&ns, Flavour::IptNft, Family::Ipv6), WANT.ipt_v6);

    // iptables-nft → iptables-legacy
    converge(&ns, &spec(Flavour::IptLegacy, true, true));
    assert_eq!(ipt_ours(&ns, Flavour::IptNft, Family::Ipv4), "");
    assert_eq!(ipt_ours(&ns, Flavour::IptNft, Family::Ipv6), "");
    assert_eq!(ipt_ours(&ns, Flavour::IptLegacy, Family::Ipv4), WANT.ipt_v4);

    // renamed chain
    let rc = NatSpec {
        iptables_chain: "NC-MASQ".into(),
        ..spec(Flavour::IptLegacy, true, true)
    };
    converge(&ns, &rc);
    assert_eq!(ipt_ours(&ns, Flavour::IptLegacy, Family::Ipv4), "");
    assert_eq!(ipt_ours(&ns, Flavour::IptLegacy, Family::Ipv6), "");
    assert_eq!(v4(&ns, Flavour::IptLegacy, "NC-MASQ").lines().count(), 8);

    // back to nftables, IPv4 only
    converge(&ns, &spec(Flavour::Nft, true, false));
    assert_eq!(v4(&ns, Flavour::IptLegacy, "NC-MASQ"), "");
    assert_eq!(
        keep(&ns.exec(&["ip6tables-legacy-save", "-t", "nat"]), "NC-MASQ"),
        ""
    );
    assert_eq!(nft_names(&ns), "table ip netconverge\n");

    // [nat] removed from the file
    let p = converge_opt(&ns, None);
    assert_eq!(
        only_change(&p).reason,
        "nat not configured (netconverge's: table comment \"managed by netconverge\")"
    );
    assert_eq!(nft_names(&ns), "");
    assert!(converge_opt(&ns, None).changes.is_empty());
}

fn keep(text: &str, word: &str) -> String {
    text.lines()
        .filter(|l| l.contains(word))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A user's nftables table of our name (a set, a chain of its own) in
/// both families, and a user's iptables chain of our name in both
/// flavours: `plan` names each as a conflict, converge and cleanup change
/// nothing (read back byte for byte); `adopt = true` is the positive
/// control that does replace them.
#[test]
fn tables_and_chains_of_our_name_that_are_not_ours_are_never_wiped() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-conf");
    ruleset::nft_file(
        &ns,
        r#"
table ip netconverge {
	set blocklist {
		type ipv4_addr
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 198.18.7.0/24 counter masquerade
	}
}
table ip6 netconverge {
	chain mine {
	}
}
"#,
    );
    let ruleset = |ns: &Netns| ns.exec(&["nft", "-j", "list", "ruleset"]);
    let before = ruleset(&ns);
    let v4_only = spec(Flavour::Nft, true, false);
    let p = check(&ns, &v4_only);
    assert!(p.changes.is_empty(), "{p}");
    let text = p.to_string();
    assert_eq!(p.blocked.len(), 2, "{text}");
    assert!(
        text.contains("! nat ipv4 (nftables table ip netconverge): blocked: conflict: nftables table ip netconverge exists and was not created by netconverge")
            && text.contains("set `blocklist`")
            && text.contains("`[nat] adopt = true`"),
        "{text}"
    );
    assert!(
        text.contains("! nat ipv6 (nftables table ip6 netconverge): blocked: conflict"),
        "{text}"
    );
    ns.enter({
        let s = v4_only.clone();
        move || apply_all(&nat::plan(Some(&s), &observe(Some(&s))))
    });
    assert!(ns.enter(|| cleanup(None)).is_empty());
    let s = v4_only.clone();
    assert!(ns.enter(move || cleanup(Some(&s))).is_empty());
    assert_eq!(ruleset(&ns), before, "a table that is not ours was changed");

    // positive control: adopting replaces them
    let adopt = NatSpec {
        adopt: true,
        ..spec(Flavour::Nft, true, true)
    };
    let p = converge(&ns, &adopt);
    assert!(p.to_string().contains("adopting (adopt = true)"), "{p}");
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(WANT.nft_v4.as_str()));
    assert_eq!(nft_table(&ns, "ip6").as_deref(), Some(WANT.nft_v6.as_str()));

    for flavour in IPT_FLAVOURS {
        let ns = Netns::new("nat-confi");
        for f in [Family::Ipv4, Family::Ipv6] {
            ipt(&ns, flavour, f, &["-N", CHAIN]);
            ipt(
                &ns,
                flavour,
                f,
                &["-A", CHAIN, "-o", "lo", "-j", "MASQUERADE"],
            );
            ipt(&ns, flavour, f, &["-A", "POSTROUTING", "-j", CHAIN]);
        }
        let saved = |ns: &Netns| {
            [Family::Ipv4, Family::Ipv6].map(|f| ruleset::ipt_nat_save(ns, &flavour.save(f)))
        };
        let before = saved(&ns);
        let s = spec(flavour, true, true);
        let p = check(&ns, &s);
        assert!(p.changes.is_empty(), "{flavour:?}: {p}");
        assert_eq!(p.blocked.len(), 2, "{flavour:?}: {p}");
        assert!(
            p.to_string().contains("was not created by netconverge (1 rule(s), the first `-A NETCONVERGE-POSTRTG -o lo -j MASQUERADE`"),
            "{flavour:?}: {p}"
        );
        let s2 = s.clone();
        assert!(ns.enter(move || cleanup(Some(&s2))).is_empty());
        assert!(ns.enter(|| cleanup(None)).is_empty());
        assert_eq!(
            saved(&ns),
            before,
            "{flavour:?}: a chain that is not ours was changed"
        );
        // positive control
        let adopt = NatSpec { adopt: true, ..s };
        converge(&ns, &adopt);
        let after = ipt_ours(&ns, flavour, Family::Ipv4);
        assert!(!after.contains("-o lo"), "{flavour:?}: {after}");
        assert!(
            after.contains("-A POSTROUTING -j NETCONVERGE-POSTRTG"),
            "{flavour:?}: jump kept: {after}"
        );
    }
}

/// Switching the backend onto a place that is a conflict keeps the old
/// rules (masquerade never lapses) and says why.
#[test]
fn old_place_stays_while_the_new_one_is_blocked() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-keep");
    converge(&ns, &spec(Flavour::Nft, true, false));
    ipt(&ns, Flavour::IptNft, Family::Ipv4, &["-N", CHAIN]);
    let s = spec(Flavour::IptNft, true, false);
    let p = ns.enter({
        let s = s.clone();
        move || {
            let p = nat::plan(Some(&s), &observe(Some(&s)));
            apply_all(&p);
            p
        }
    });
    assert!(p.changes.is_empty(), "{p}");
    let text = p.to_string();
    assert!(
        text.contains("! nat ipv4 (nftables table ip netconverge): blocked: left over")
            && text.contains("kept until iptables-nft chain NETCONVERGE-POSTRTG is in place"),
        "{text}"
    );
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(WANT.nft_v4.as_str()));
    // the conflict resolved: the new chain goes in, then the old table goes
    ipt(&ns, Flavour::IptNft, Family::Ipv4, &["-X", CHAIN]);
    let p = converge(&ns, &s);
    assert_eq!(p.changes.len(), 2, "{p}");
    assert_eq!(nft_names(&ns), "");
}

/// A table made by a netconverge from before table markers (our chain,
/// rules with our comment, no table comment) is recognised and marked.
#[test]
fn unmarked_table_of_an_older_netconverge_is_marked() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-old");
    let old = WANT
        .nft_v4
        .replace("\tcomment \"managed by netconverge\"\n", "");
    assert_ne!(old, WANT.nft_v4);
    ruleset::nft_file(&ns, &old);
    let p = converge(&ns, &spec(Flavour::Nft, true, false));
    assert!(
        only_change(&p)
            .reason
            .starts_with("made by an older netconverge"),
        "{p}"
    );
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(WANT.nft_v4.as_str()));
    // and without the file, it is found by the same content
    ruleset::nft(&ns, "delete|table|ip|netconverge");
    ruleset::nft_file(&ns, &old);
    assert_eq!(
        ns.enter(|| cleanup(None)),
        ["nat ipv4 (nftables table ip netconverge): cleanup"]
    );
    assert_eq!(nft_names(&ns), "");
}

/// `iptables = "auto"` follows the host's nat rules (kube-proxy's chain
/// in iptables-legacy here, while `iptables` is iptables-nft) and says so.
#[test]
fn auto_flavour_follows_the_hosts_nat_rules_and_says_why() {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-auto");
    let s = spec(Flavour::IptSystem, true, false);
    // nothing on the host: the `iptables` alternative
    let p = check(&ns, &s);
    assert!(
        p.notes.iter().any(|n| n
            .contains("iptables-nft: auto: no nat rules on the host; `iptables` is iptables-nft")),
        "{p}"
    );
    ruleset::ipt_nat(&ns, "iptables-legacy", &["-N", "KUBE-POSTROUTING"]);
    ruleset::ipt_nat(
        &ns,
        "iptables-legacy",
        &["-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"],
    );
    let obs = ns.enter({
        let s = s.clone();
        move || observe(Some(&s))
    });
    let choice = obs.named.flavour_choice().cloned().unwrap();
    assert_eq!(choice.flavour, nat::Flavour::Legacy, "{choice:?}");
    assert!(
        choice.reason.contains("live in iptables-legacy"),
        "{choice:?}"
    );
    let p = converge(&ns, &s);
    assert!(
        p.to_string().contains("nat ipv4 (iptables-legacy chain"),
        "{p}"
    );
    assert_eq!(ipt_ours(&ns, Flavour::IptLegacy, Family::Ipv4), WANT.ipt_v4);
    assert_eq!(ipt_ours(&ns, Flavour::IptNft, Family::Ipv4), "");
}

/// flannel's own FLANNEL-POSTRTG layout (built with iptables-restore),
/// adopted with `chain = "FLANNEL-POSTRTG"`: one "adopted" line per family,
/// no rule edited, no jump moved; the nat table reads back byte for byte;
/// and once adopted, removing `[nat]` removes the chain and its jump only.
fn flannel_chain_is_adopted_as_it_is(flavour: Flavour) {
    let _cpu = cpu_shared();
    let ns = Netns::new("nat-flannel");
    ruleset::ipt_restore(
        &ns,
        &format!("{}-restore", flavour.cli(Family::Ipv4)),
        &ruleset::flannel_layout("198.18.1.0/24", "198.18.0.0/16", "224.0.0.0/4"),
    );
    ruleset::ipt_restore(
        &ns,
        &format!("{}-restore", flavour.cli(Family::Ipv6)),
        &ruleset::flannel_layout("fd00:42:0:1::/64", "fd00:42::/56", "ff00::/8"),
    );
    let saved = |ns: &Netns| {
        [Family::Ipv4, Family::Ipv6].map(|f| ruleset::ipt_nat_save(ns, &flavour.save(f)))
    };
    let before = saved(&ns);
    assert!(
        before[0].contains("-A FLANNEL-POSTRTG ! -s 198.18.0.0/16 -d 198.18.0.0/16"),
        "{before:?}"
    );
    let s = NatSpec {
        iptables_chain: "FLANNEL-POSTRTG".into(),
        ..spec(flavour, true, true)
    };
    let p = check(&ns, &s);
    assert_eq!(p.changes.len(), 2, "{flavour:?}: {p}");
    let text = p.to_string();
    for c in &p.changes {
        assert_eq!(c.kind, ChangeKind::Modify, "{text}");
        assert!(
            c.reason.starts_with(
                "adopted: not created by netconverge, but its 6 rules are netconverge's"
            ),
            "{text}"
        );
        assert!(
            c.reason
                .contains("its jump stays at POSTROUTING position 2"),
            "{text}"
        );
    }
    assert!(
        !text.contains("edited") && !text.contains("jump from POSTROUTING"),
        "{text}"
    );
    converge(&ns, &s);
    assert_eq!(
        saved(&ns),
        before,
        "{flavour:?}: adoption changed the kernel"
    );
    assert!(check(&ns, &s).in_sync());

    // adopted: without [nat], the chain and its jump go, nothing else
    let p = converge_opt(&ns, None);
    assert_eq!(p.changes.len(), 2, "{flavour:?}: {p}");
    let after = saved(&ns);
    for (b, a) in before.iter().zip(&after) {
        let want: String = b
            .lines()
            .filter(|l| !l.contains("FLANNEL-POSTRTG"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(a, &want, "{flavour:?}");
        assert!(a.contains("-A POSTROUTING -o lo -j MASQUERADE"), "{a}");
    }
}

variants!(flannel_chain_is_adopted_as_it_is:
    flannel_chain_adopted_iptables_nft => Flavour::IptNft,
    flannel_chain_adopted_iptables_legacy => Flavour::IptLegacy,
);

/// A backend switch, nftables ↔ iptables-nft (both visible to `nft list
/// ruleset`), never leaves one sample without our two masquerade rules:
/// the new place is filled before the old one goes. Control: a switch done
/// by hand the naive way (old removed, 50 ms, new added) is caught.
#[test]
fn backend_switch_never_leaves_pods_without_masquerade() {
    let _cpu = cpu_exclusive();
    let ns = Netns::new("nat-swgap");
    let n = spec(Flavour::Nft, true, false);
    let i = spec(Flavour::IptNft, true, false);
    converge(&ns, &n);
    let masquerades = || -> rules_watch::Check {
        Box::new(|out: &std::process::Output| {
            let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
            let count = text.lines().filter(|l| l.contains("masquerade")).count();
            if out.status.success() && count >= 2 {
                Ok(())
            } else {
                Err(format!("{count} masquerade rule(s)"))
            }
        })
    };
    let cmd = ["nft", "list", "ruleset"];
    let w = Watch::start(&ns.name, &cmd, masquerades());
    ruleset::nft(&ns, &format!("delete|table|ip|{TABLE}"));
    std::thread::sleep(Duration::from_millis(50));
    converge(&ns, &i);
    let control = w.stop();
    eprintln!("naive switch control: {control:?} ({:.0} Hz)", control.hz());
    assert!(
        control.bad > 0,
        "the watcher missed a 50 ms gap: {control:?}"
    );

    let w = Watch::start(&ns.name, &cmd, masquerades());
    for _ in 0..10 {
        for target in [&n, &i] {
            let p = converge(&ns, target);
            assert_eq!(p.changes.len(), 2, "{p}");
            std::thread::sleep(Duration::from_millis(15));
        }
    }
    ruleset::assert_no_gap(w, "backend switch");
    assert_eq!(nft_names(&ns), "");
}
