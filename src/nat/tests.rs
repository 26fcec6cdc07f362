//! Snapshot tests of rendered rules and of plans for each kind of drift,
//! from hand-built observations (no root, no tools needed).

use super::*;
use crate::model::NatFamily;
use crate::nat::rules::Rule;
use crate::plan::{ChangeKind, Op, Plan};

fn fam(cluster: &str, pod: &str) -> NatFamily {
    NatFamily {
        cluster: cluster.parse().unwrap(),
        pod_subnet: pod.parse().unwrap(),
    }
}

fn v4() -> NatFamily {
    fam("198.18.0.0/16", "198.18.1.0/24")
}

fn v6() -> NatFamily {
    fam("fd00:42::/56", "fd00:42:0:1::/64")
}

fn spec(backend: NatBackendKind, ipv4: Option<NatFamily>, ipv6: Option<NatFamily>) -> NatSpec {
    NatSpec {
        backend,
        masquerade: true,
        ipv4,
        ipv6,
        random_fully: true,
        mark: (0x4000, 0x4000),
        nft_table: "netconverge".into(),
        iptables_chain: "NETCONVERGE-POSTRTG".into(),
        iptables: crate::model::IptablesMode::Auto,
        adopt: false,
    }
}

fn nft_dual() -> NatSpec {
    spec(NatBackendKind::Nftables, Some(v4()), Some(v6()))
}

fn ipt_dual() -> NatSpec {
    spec(NatBackendKind::Iptables, Some(v4()), Some(v6()))
}

/// The transaction of an op, verbatim (scripts and restore input are text).
fn batch_lines(op: &NatOp) -> String {
    match op {
        NatOp::Nftables { script, .. } => script.clone(),
        NatOp::Iptables {
            restore,
            adopted,
            forget,
            ..
        } => {
            let mut out = restore
                .clone()
                .unwrap_or_else(|| "(no kernel change)\n".into());
            if let Some(r) = adopted {
                out += &format!("(record adoption of {} rules)\n", r.len());
            }
            if *forget {
                out += "(forget any adoption record)\n";
            }
            out
        }
        NatOp::Stale {
            remove,
            replaced_by,
        } => {
            let guard = match replaced_by {
                Some(g) => format!("(only once {} is in sync)\n", g.family),
                None => String::new(),
            };
            guard + &batch_lines(remove)
        }
    }
}

/// Rendering of a whole spec: rule texts and the install transaction.
fn render_all(s: &NatSpec) -> String {
    let mut out = String::new();
    for fr in rules::render(s) {
        let (op, texts): (NatOp, Vec<String>) = match s.backend {
            NatBackendKind::Nftables => {
                let (_, _, op) =
                    nftables::plan_family(fr.family, &s.nft_table, &fr.rules, None, false)
                        .unwrap()
                        .unwrap();
                let texts = fr
                    .rules
                    .iter()
                    .map(|r| nftables::rule_text(fr.family, r, Some(rules::COMMENT)));
                (op, texts.collect())
            }
            NatBackendKind::Iptables => {
                let (_, _, op) = iptables::plan_family(
                    Flavour::Nft,
                    fr.family,
                    &s.iptables_chain,
                    &fr.rules,
                    None,
                    false,
                )
                .unwrap()
                .unwrap();
                let texts = fr
                    .rules
                    .iter()
                    .map(|r| iptables::rule_line(&s.iptables_chain, r));
                (op, texts.collect())
            }
        };
        out += &format!("## {}\n", fr.family);
        for t in texts {
            out += &format!("{t}\n");
        }
        out += "## transaction\n";
        out += &batch_lines(&op);
    }
    out
}

fn short_op(op: &NatOp) -> String {
    batch_lines(op)
}

/// A plan as `--check` prints it, followed by each change's transaction.
fn show(p: &Plan) -> String {
    let mut out = p.to_string();
    for c in &p.changes {
        let Op::Nat(op) = &c.op else { unreachable!() };
        out += &format!("--- {}\n{}", c.object, short_op(op));
    }
    out
}

fn want(s: &NatSpec, family: Family) -> Vec<Rule> {
    rules::desired(Some(s), family).unwrap()
}

/// The observation of a perfectly converged nftables family.
fn nft_seen(s: &NatSpec, family: Family) -> NftFamily {
    NftFamily {
        chain: Some("type nat hook postrouting priority 100; policy accept".into()),
        marker: true,
        table_flags: false,
        foreign: vec![],
        rules: want(s, family)
            .iter()
            .map(|r| nftables::rule_text(family, r, Some(rules::COMMENT)))
            .collect(),
    }
}

fn ipt_seen(s: &NatSpec, family: Family) -> IptFamily {
    IptFamily {
        chain: true,
        rules: want(s, family)
            .iter()
            .map(|r| iptables::rule_line(&s.iptables_chain, r))
            .collect(),
        jumps: vec![iptables::jump_line(&s.iptables_chain)],
        jump_positions: vec![1],
        recorded: false,
    }
}

/// What a family held, in the tests' shorthand (mapped onto the backend's
/// own [`Seen`] by [`observed`]).
#[derive(Clone)]
enum FamilyObserved {
    Unavailable { reason: String },
    Absent,
    Nftables(NftFamily),
    Iptables(IptFamily),
}

fn seen_nft(f: FamilyObserved) -> Seen<NftFamily> {
    match f {
        FamilyObserved::Unavailable { reason } => Seen::Unavailable { reason },
        FamilyObserved::Absent => Seen::Absent,
        FamilyObserved::Nftables(t) => Seen::Present(t),
        FamilyObserved::Iptables(_) => unreachable!("an iptables chain in an nftables place"),
    }
}

fn seen_ipt(f: FamilyObserved) -> Seen<IptFamily> {
    match f {
        FamilyObserved::Unavailable { reason } => Seen::Unavailable { reason },
        FamilyObserved::Absent => Seen::Absent,
        FamilyObserved::Iptables(t) => Seen::Present(t),
        FamilyObserved::Nftables(_) => unreachable!("an nftables table in an iptables place"),
    }
}

fn observed(
    kind: NatBackendKind,
    name: &str,
    ipv4: FamilyObserved,
    ipv6: FamilyObserved,
) -> NatObserved {
    let named = match kind {
        NatBackendKind::Nftables => Named::Nftables {
            table: name.into(),
            ipv4: seen_nft(ipv4),
            ipv6: seen_nft(ipv6),
        },
        NatBackendKind::Iptables => Named::Iptables {
            choice: FlavourChoice {
                flavour: Flavour::Nft,
                reason: "auto: no nat rules on the host; `iptables` is iptables-nft".into(),
            },
            chain: name.into(),
            ipv4: seen_ipt(ipv4),
            ipv6: seen_ipt(ipv6),
        },
    };
    NatObserved {
        named,
        found: vec![],
    }
}

/// `o` with its IPv4 family absent.
fn ipv4_absent(o: &mut NatObserved) {
    match &mut o.named {
        Named::Nftables { ipv4, .. } => *ipv4 = Seen::Absent,
        Named::Iptables { ipv4, .. } => *ipv4 = Seen::Absent,
        Named::Null => {}
    }
}

fn nft_obs(ipv4: NftFamily) -> NatObserved {
    observed(
        NatBackendKind::Nftables,
        "netconverge",
        FamilyObserved::Nftables(ipv4),
        FamilyObserved::Absent,
    )
}

fn ipt_obs(ipv4: IptFamily) -> NatObserved {
    observed(
        NatBackendKind::Iptables,
        "NETCONVERGE-POSTRTG",
        FamilyObserved::Iptables(ipv4),
        FamilyObserved::Absent,
    )
}

// ------------------------------------------------------------- rendering --

#[test]
fn render_nftables_ipv4() {
    insta::assert_snapshot!(render_all(&spec(
        NatBackendKind::Nftables,
        Some(v4()),
        None
    )));
}

#[test]
fn render_nftables_ipv6() {
    insta::assert_snapshot!(render_all(&spec(
        NatBackendKind::Nftables,
        None,
        Some(v6())
    )));
}

#[test]
fn render_nftables_dual_stack() {
    insta::assert_snapshot!(render_all(&nft_dual()));
}

#[test]
fn render_iptables_ipv4() {
    insta::assert_snapshot!(render_all(&spec(
        NatBackendKind::Iptables,
        Some(v4()),
        None
    )));
}

#[test]
fn render_iptables_ipv6() {
    insta::assert_snapshot!(render_all(&spec(
        NatBackendKind::Iptables,
        None,
        Some(v6())
    )));
}

#[test]
fn render_without_random_fully() {
    let mut out = String::new();
    for backend in [NatBackendKind::Nftables, NatBackendKind::Iptables] {
        let s = NatSpec {
            random_fully: false,
            ..spec(backend, Some(v4()), None)
        };
        out += &render_all(&s);
    }
    insta::assert_snapshot!(out);
}

#[test]
fn render_custom_mark() {
    let mut out = String::new();
    for mark in [(0x8000, 0xc000), (0x1, 0xffff_ffff)] {
        for backend in [NatBackendKind::Nftables, NatBackendKind::Iptables] {
            let s = NatSpec {
                mark,
                ..spec(backend, Some(v4()), None)
            };
            let r = want(&s, Family::Ipv4);
            let first = r.first().unwrap();
            out += &match backend {
                NatBackendKind::Nftables => {
                    format!(
                        "{}\n",
                        nftables::rule_text(Family::Ipv4, first, Some(rules::COMMENT))
                    )
                }
                NatBackendKind::Iptables => {
                    format!("{}\n", iptables::rule_line(&s.iptables_chain, first))
                }
            };
        }
    }
    insta::assert_snapshot!(out);
}

/// Captured from `nft -j list table ip netconverge` (nft 1.0.6) after our
/// install: single NAT flags come back as a string, host prefixes as plain
/// addresses; both must parse to the rules we render.
#[test]
fn parses_real_nft_output() {
    let json = include_str!("testdata/nft-list-table-ip.json");
    let mut seen = nftables::parse_table(Family::Ipv4, json).unwrap();
    // the marker comes from the text listing (nft 1.0.6 JSON lacks it)
    seen.marker = true;
    let s = spec(NatBackendKind::Nftables, Some(v4()), None);
    assert_eq!(seen, nft_seen(&s, Family::Ipv4));
    let mut host = s.clone();
    host.ipv4 = Some(fam("198.18.0.0/16", "198.18.1.7/32"));
    let json = json.replace(
        r#"{"prefix": {"addr": "198.18.1.0", "len": 24}}"#,
        r#""198.18.1.7""#,
    );
    let mut seen = nftables::parse_table(Family::Ipv4, &json).unwrap();
    seen.marker = true;
    assert_eq!(seen, nft_seen(&host, Family::Ipv4));
}

#[test]
fn unknown_statements_are_shown_not_dropped() {
    let json = r#"{"nftables": [{"table": {"family": "ip", "name": "netconverge", "handle": 1, "flags": "dormant"}},
      {"chain": {"family": "ip", "table": "netconverge", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 0, "policy": "accept"}},
      {"chain": {"family": "ip", "table": "netconverge", "name": "extra", "handle": 2}},
      {"set": {"family": "ip", "table": "netconverge", "name": "s", "type": "ipv4_addr", "handle": 3}},
      {"rule": {"family": "ip", "table": "netconverge", "chain": "postrouting", "handle": 4,
        "expr": [{"counter": {"packets": 1, "bytes": 2}}, {"masquerade": null}]}},
      {"rule": {"family": "ip", "table": "netconverge", "chain": "extra", "handle": 5, "expr": [{"accept": null}]}}]}"#;
    let seen = nftables::parse_table(Family::Ipv4, json).unwrap();
    insta::assert_debug_snapshot!(seen);
}

// -------------------------------------------------------------- planning --

#[test]
fn plan_nft_in_sync_is_empty_and_dual_stack_absent_adds_both() {
    let s = nft_dual();
    let obs = observed(
        NatBackendKind::Nftables,
        "netconverge",
        FamilyObserved::Nftables(nft_seen(&s, Family::Ipv4)),
        FamilyObserved::Nftables(nft_seen(&s, Family::Ipv6)),
    );
    assert!(plan(Some(&s), &obs).in_sync());
    let absent = observed(
        NatBackendKind::Nftables,
        "netconverge",
        FamilyObserved::Absent,
        FamilyObserved::Absent,
    );
    insta::assert_snapshot!(show(&plan(Some(&s), &absent)));
}

/// Every kind of nftables drift, each a single-family observation.
#[test]
fn plan_nft_drift() {
    let s = spec(NatBackendKind::Nftables, Some(v4()), None);
    let good = nft_seen(&s, Family::Ipv4);
    let edit = |f: &dyn Fn(&mut NftFamily)| {
        let mut x = good.clone();
        f(&mut x);
        nft_obs(x)
    };
    let cases: Vec<(&str, NatObserved)> = vec![
        ("rule deleted", edit(&|x| drop(x.rules.remove(1)))),
        ("reordered", edit(&|x| x.rules.swap(0, 4))),
        ("duplicated", edit(&|x| x.rules.push(x.rules[4].clone()))),
        (
            "edited",
            edit(&|x| x.rules[1] = x.rules[1].replace("198.18.1.0/24", "198.18.9.0/24")),
        ),
        (
            "foreign rule",
            edit(&|x| {
                x.rules
                    .insert(0, r#"unrecognized [{"accept": null}]"#.into())
            }),
        ),
        (
            "chain deleted",
            edit(&|x| (x.chain, x.rules) = (None, vec![])),
        ),
        (
            "chain priority",
            edit(&|x| x.chain = Some("type nat hook postrouting priority 0; policy accept".into())),
        ),
        ("dormant", edit(&|x| x.table_flags = true)),
        ("table deleted", nft_obs(good.clone()).tap(ipv4_absent)),
    ];
    let mut out = String::new();
    for (name, obs) in cases {
        let p = plan(Some(&s), &obs);
        assert_eq!(p.changes.len(), 1, "{name}: {p}");
        out += &format!("=== {name}\n{}\n", show(&p));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn plan_iptables_drift() {
    let s = spec(NatBackendKind::Iptables, Some(v4()), None);
    let good = ipt_seen(&s, Family::Ipv4);
    assert!(plan(Some(&s), &ipt_obs(good.clone())).in_sync());
    let jump = iptables::jump_line(&s.iptables_chain);
    let edit = |f: &dyn Fn(&mut IptFamily)| {
        let mut x = good.clone();
        f(&mut x);
        ipt_obs(x)
    };
    let cases: Vec<(&str, NatObserved)> = vec![
        ("absent", ipt_obs(good.clone()).tap(ipv4_absent)),
        ("rule deleted", edit(&|x| drop(x.rules.remove(2)))),
        ("reordered", edit(&|x| x.rules.swap(3, 5))),
        ("duplicated", edit(&|x| x.rules.push(x.rules[0].clone()))),
        (
            "edited",
            edit(&|x| x.rules[0] = x.rules[0].replace("0x4000/0x4000", "0x8000/0x8000")),
        ),
        ("jump removed", edit(&|x| x.jumps.clear())),
        ("jump duplicated", edit(&|x| x.jumps.push(jump.clone()))),
        (
            "jump edited",
            edit(&|x| x.jumps = vec![format!("-A POSTROUTING -o eth0 -j {}", s.iptables_chain)]),
        ),
        ("chain emptied", edit(&|x| x.rules.clear())),
    ];
    let mut out = String::new();
    for (name, obs) in cases {
        let p = plan(Some(&s), &obs);
        assert_eq!(p.changes.len(), 1, "{name}: {p}");
        out += &format!("=== {name}\n{}\n", show(&p));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn plan_removals_and_blocked() {
    let mut out = String::new();
    let mut case = |name: &str, spec: Option<&NatSpec>, obs: &NatObserved| {
        out += &format!("=== {name}\n{}\n", show(&plan(spec, obs)));
    };
    let n = nft_dual();
    let both = observed(
        NatBackendKind::Nftables,
        "netconverge",
        FamilyObserved::Nftables(nft_seen(&n, Family::Ipv4)),
        FamilyObserved::Nftables(nft_seen(&n, Family::Ipv6)),
    );
    let off = NatSpec {
        masquerade: false,
        ..n.clone()
    };
    case("nft masquerade = false", Some(&off), &both);
    let v4_only = NatSpec {
        ipv6: None,
        ..n.clone()
    };
    case("nft ipv6 dropped from the config", Some(&v4_only), &both);
    case("no nat config, our tables seen", None, &both);
    let i = ipt_dual();
    let ipt_both = observed(
        NatBackendKind::Iptables,
        "NETCONVERGE-POSTRTG",
        FamilyObserved::Iptables(ipt_seen(&i, Family::Ipv4)),
        FamilyObserved::Iptables(IptFamily {
            jumps: vec![iptables::jump_line("NETCONVERGE-POSTRTG"); 2],
            ..ipt_seen(&i, Family::Ipv6)
        }),
    );
    case(
        "iptables masquerade = false",
        Some(&NatSpec {
            masquerade: false,
            ..i.clone()
        }),
        &ipt_both,
    );
    let unavailable = observed(
        NatBackendKind::Iptables,
        "NETCONVERGE-POSTRTG",
        FamilyObserved::Unavailable {
            reason: "`iptables-save` not found: install the iptables package".into(),
        },
        FamilyObserved::Absent,
    );
    case("backend unavailable", Some(&i), &unavailable);
    case("not observed", Some(&i), &NatObserved::default());
    let other = observed(
        NatBackendKind::Nftables,
        "netconverge",
        FamilyObserved::Nftables(nft_seen(&n, Family::Ipv4)),
        FamilyObserved::Absent,
    );
    case("observed with the other backend", Some(&i), &other);
    // Nothing to do and nothing to say: off, absent, unavailable.
    let quiet = observed(
        NatBackendKind::Iptables,
        "NETCONVERGE-POSTRTG",
        FamilyObserved::Absent,
        FamilyObserved::Unavailable { reason: "x".into() },
    );
    assert!(
        plan(
            Some(&NatSpec {
                masquerade: false,
                ..i.clone()
            }),
            &quiet
        )
        .in_sync()
    );
    assert!(plan(None, &NatObserved::default()).in_sync());
    insta::assert_snapshot!(out);
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl<T> Tap for T {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

fn flannel_lines(chain: &str, s: &NatSpec, family: Family) -> Vec<String> {
    want(s, family)
        .iter()
        .map(|r| iptables::rule_line(chain, r).replace("netconverge masq", "flanneld masq"))
        .collect()
}

/// Never take what isn't ours: every table/chain of our name that
/// netconverge did not create is a conflict, unless `adopt = true`;
/// flannel's chain, equal but for its comments, is adopted as it is.
#[test]
fn plan_ownership_and_adoption() {
    let mut out = String::new();
    let mut case = |name: &str, spec: &NatSpec, obs: &NatObserved| {
        let p = plan(Some(spec), obs);
        out += &format!("=== {name}\n{}\n", show(&p));
        p
    };
    let n = spec(NatBackendKind::Nftables, Some(v4()), None);
    let adopt_n = NatSpec {
        adopt: true,
        ..n.clone()
    };
    let good = nft_seen(&n, Family::Ipv4);
    let users = NftFamily {
        marker: false,
        chain: Some("type filter hook postrouting priority 0; policy drop".into()),
        rules: vec!["unrecognized [{\"drop\": null}]".into()],
        foreign: vec!["set `blocklist`".into()],
        table_flags: false,
    };
    let p = case(
        "nft: a user's table of our name",
        &n,
        &nft_obs(users.clone()),
    );
    assert!(p.changes.is_empty() && p.blocked.len() == 1, "{p}");
    let p = case("nft: the same with adopt = true", &adopt_n, &nft_obs(users));
    assert_eq!(p.changes.len(), 1, "{p}");
    let older = NftFamily {
        marker: false,
        ..good.clone()
    };
    assert!(older.made_by_older_netconverge());
    let p = case(
        "nft: unmarked, made by an older netconverge",
        &n,
        &nft_obs(older),
    );
    assert_eq!(p.changes.len(), 1, "{p}");
    let with_set = NftFamily {
        foreign: vec!["set `s`".into()],
        ..good.clone()
    };
    let p = case("nft: ours, with a user's set in it", &n, &nft_obs(with_set));
    assert!(p.changes.is_empty() && p.blocked.len() == 1, "{p}");
    let other_family = observed(
        NatBackendKind::Nftables,
        "netconverge",
        FamilyObserved::Nftables(good.clone()),
        FamilyObserved::Nftables(NftFamily {
            marker: false,
            chain: None,
            rules: vec![],
            foreign: vec!["chain `mine`".into()],
            table_flags: false,
        }),
    );
    let p = case(
        "nft: a user's table of our name in a family we do not configure",
        &n,
        &other_family,
    );
    assert!(p.changes.is_empty() && p.blocked.len() == 1, "{p}");

    let i = spec(NatBackendKind::Iptables, Some(v4()), None);
    let adopt_i = NatSpec {
        adopt: true,
        ..i.clone()
    };
    let users = IptFamily {
        chain: true,
        rules: vec!["-A NETCONVERGE-POSTRTG -o eth0 -j MASQUERADE".into()],
        jumps: vec!["-A POSTROUTING -j NETCONVERGE-POSTRTG".into()],
        jump_positions: vec![3],
        recorded: false,
    };
    let p = case(
        "iptables: a user's chain of our name",
        &i,
        &ipt_obs(users.clone()),
    );
    assert!(p.changes.is_empty() && p.blocked.len() == 1, "{p}");
    let p = case(
        "iptables: the same with adopt = true (jump kept)",
        &adopt_i,
        &ipt_obs(users),
    );
    assert_eq!(p.changes.len(), 1, "{p}");

    let f = NatSpec {
        iptables_chain: "FLANNEL-POSTRTG".into(),
        ..i.clone()
    };
    let flannel = IptFamily {
        chain: true,
        rules: flannel_lines("FLANNEL-POSTRTG", &f, Family::Ipv4),
        jumps: vec![
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#.into(),
        ],
        jump_positions: vec![2],
        recorded: false,
    };
    let obs = observed(
        NatBackendKind::Iptables,
        "FLANNEL-POSTRTG",
        FamilyObserved::Iptables(flannel.clone()),
        FamilyObserved::Absent,
    );
    let p = case("iptables: flannel's chain, adopted as it is", &f, &obs);
    assert_eq!(p.changes.len(), 1, "{p}");
    let c = &p.changes[0];
    let Op::Nat(NatOp::Iptables {
        restore, adopted, ..
    }) = &c.op
    else {
        panic!("{p}")
    };
    assert_eq!(restore, &None, "no kernel change: rules and jump stay");
    assert_eq!(adopted.as_ref(), Some(&flannel.rules));
    // once recorded: in sync, never "rule 1–6 edited"
    let recorded = IptFamily {
        recorded: true,
        ..flannel.clone()
    };
    let obs = observed(
        NatBackendKind::Iptables,
        "FLANNEL-POSTRTG",
        FamilyObserved::Iptables(recorded),
        FamilyObserved::Absent,
    );
    assert!(plan(Some(&f), &obs).in_sync());
    // flannel's chain with another node's subnets: a conflict
    let stale = IptFamily {
        rules: flannel
            .rules
            .iter()
            .map(|r| r.replace("198.18.1.0/24", "198.18.7.0/24"))
            .collect(),
        ..flannel
    };
    let obs = observed(
        NatBackendKind::Iptables,
        "FLANNEL-POSTRTG",
        FamilyObserved::Iptables(stale),
        FamilyObserved::Absent,
    );
    let p = case("iptables: flannel's chain with other subnets", &f, &obs);
    assert!(p.changes.is_empty() && p.blocked.len() == 1, "{p}");
    insta::assert_snapshot!(out);
}

/// Always remove what was ours: leftovers at other places go in a stage
/// after the install, guarded by the new place being in sync; a blocked
/// new place keeps them.
#[test]
fn plan_leftovers_go_after_the_new_place() {
    let n = nft_dual();
    let i = ipt_dual();
    let old_nft = |family| Found {
        family,
        place: Place::Nftables {
            table: "netconverge".into(),
        },
        why: "table comment \"managed by netconverge\"".into(),
        items: vec![nftables::table_label(family, "netconverge")],
        removal: nftables::remove_op(family, "netconverge"),
    };
    let mut out = String::new();
    // nftables → iptables: the new chains are added, the old tables go after
    let mut obs = observed(
        NatBackendKind::Iptables,
        "NETCONVERGE-POSTRTG",
        FamilyObserved::Absent,
        FamilyObserved::Absent,
    );
    obs.found = vec![old_nft(Family::Ipv4), old_nft(Family::Ipv6)];
    let p = plan(Some(&i), &obs);
    out += &format!("=== backend switch nftables → iptables\n{}\n", show(&p));
    let stages: Vec<_> = p.changes.iter().map(|c| (c.kind, c.op.stage())).collect();
    use crate::plan::Stage;
    assert_eq!(
        stages,
        [
            (ChangeKind::Add, Stage::Nat),
            (ChangeKind::Add, Stage::Nat),
            (ChangeKind::Remove, Stage::NatStale),
            (ChangeKind::Remove, Stage::NatStale)
        ],
        "{p}"
    );
    assert!(p.notes.iter().any(|n| n.contains("iptables-nft")), "{p}");
    // [nat] removed: both go, no guard
    let none = NatObserved {
        found: vec![old_nft(Family::Ipv4)],
        ..Default::default()
    };
    let p = plan(None, &none);
    out += &format!("=== [nat] removed\n{}\n", show(&p));
    assert_eq!(p.changes.len(), 1);
    // renamed table, but the new name is a user's table: the old one stays
    let renamed = NatSpec {
        nft_table: "nc2".into(),
        ..n.clone()
    };
    let mut obs = observed(
        NatBackendKind::Nftables,
        "nc2",
        FamilyObserved::Nftables(NftFamily {
            marker: false,
            chain: None,
            rules: vec![],
            foreign: vec![],
            table_flags: false,
        }),
        FamilyObserved::Absent,
    );
    obs.found = vec![old_nft(Family::Ipv4), old_nft(Family::Ipv6)];
    let p = plan(Some(&renamed), &obs);
    out += &format!("=== renamed onto a user's table\n{}\n", show(&p));
    assert_eq!(p.blocked.len(), 2, "{p}");
    assert_eq!(p.changes.len(), 2, "{p}");
    insta::assert_snapshot!(out);
}

#[test]
fn config_keys_iptables_and_adopt_reach_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.toml");
    std::fs::write(
        &path,
        "node_name = \"n\"\n[nat]\nbackend = \"iptables\"\niptables = \"legacy\"\nadopt = true\n\
         chain = \"FLANNEL-POSTRTG\"\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n",
    )
    .unwrap();
    let d = crate::config::load(&path).unwrap();
    let n = d.nat.unwrap();
    assert_eq!(n.iptables, crate::model::IptablesMode::Legacy);
    assert!(n.adopt);
    std::fs::write(
        &path,
        "node_name = \"n\"\n[nat]\niptables = \"both\"\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n",
    )
    .unwrap();
    let e = crate::config::load(&path).unwrap_err().to_string();
    assert!(e.contains("n.toml:3:") && e.contains("auto"), "{e}");
}
