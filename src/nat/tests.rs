//! Snapshot tests of rendered rules and of plans for each kind of drift,
//! from hand-built observations (no root, no tools needed).

use super::*;
use crate::model::NatFamily;
use crate::nat::rules::Rule;

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
    }
}

fn nft_dual() -> NatSpec {
    spec(NatBackendKind::Nftables, Some(v4()), Some(v6()))
}

fn ipt_dual() -> NatSpec {
    spec(NatBackendKind::Iptables, Some(v4()), Some(v6()))
}

/// One line per batch command, compact JSON: readable and diffable.
fn batch_lines(op: &NatOp) -> String {
    match op {
        NatOp::Nftables { batch, .. } => {
            let v = serde_json::to_value(batch).unwrap();
            v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.to_string() + "\n")
                .collect()
        }
        NatOp::Iptables { restore, .. } => restore.clone(),
    }
}

/// Rendering of a whole spec: rule texts and the install transaction.
fn render_all(s: &NatSpec) -> String {
    let mut out = String::new();
    for fr in rules::render(s) {
        let (op, texts): (NatOp, Vec<String>) = match s.backend {
            NatBackendKind::Nftables => {
                let (_, _, op) =
                    nftables::plan_family(fr.family, &s.nft_table, &fr.rules, None).unwrap();
                let texts = fr
                    .rules
                    .iter()
                    .map(|r| nftables::rule_text(fr.family, r, Some(rules::COMMENT)));
                (op, texts.collect())
            }
            NatBackendKind::Iptables => {
                let (_, _, op) =
                    iptables::plan_family(fr.family, &s.iptables_chain, &fr.rules, None).unwrap();
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

/// A transaction, short: nft rules as their canonical text (parsed back
/// from the batch), other commands as JSON; iptables input verbatim.
fn short_op(op: &NatOp) -> String {
    let NatOp::Nftables { family, batch, .. } = op else {
        return batch_lines(op);
    };
    let mut out = String::new();
    for o in batch.objects.iter() {
        use ::nftables::schema::{NfCmd, NfListObject, NfObject};
        match o {
            NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r))) => {
                let rule = nftables::parse_rule(*family, &r.expr).unwrap();
                out += &format!(
                    "add rule: {}\n",
                    nftables::rule_text(*family, &rule, r.comment.as_deref())
                );
            }
            other => out += &format!("{}\n", serde_json::to_string(other).unwrap()),
        }
    }
    out
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
    }
}

fn observed(
    kind: NatBackendKind,
    name: &str,
    ipv4: FamilyObserved,
    ipv6: FamilyObserved,
) -> NatObserved {
    NatObserved {
        backend: Some(kind),
        name: name.into(),
        ipv4,
        ipv6,
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
                    let stmts =
                        serde_json::to_string(&nftables::rule_statements(Family::Ipv4, first))
                            .unwrap();
                    format!(
                        "{}\n{stmts}\n",
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

#[test]
fn nft_statements_parse_back_to_the_same_rule() {
    for s in [
        nft_dual(),
        NatSpec {
            random_fully: false,
            mark: (1, u32::MAX),
            ..nft_dual()
        },
    ] {
        for fr in rules::render(&s) {
            for r in &fr.rules {
                let stmts = nftables::rule_statements(fr.family, r);
                // through JSON, as nft would hand them back
                let json = serde_json::to_string(&stmts).unwrap();
                let back: Vec<::nftables::stmt::Statement> = serde_json::from_str(&json).unwrap();
                assert_eq!(nftables::parse_rule(fr.family, &back).as_ref(), Some(r));
            }
        }
    }
}

/// Captured from `nft -j list table ip netconverge` (nft 1.0.6) after our
/// install: single NAT flags come back as a string, host prefixes as plain
/// addresses; both must parse to the rules we render.
#[test]
fn parses_real_nft_output() {
    let json = include_str!("testdata/nft-list-table-ip.json");
    let seen = nftables::parse_table(Family::Ipv4, json).unwrap();
    let s = spec(NatBackendKind::Nftables, Some(v4()), None);
    assert_eq!(seen, nft_seen(&s, Family::Ipv4));
    let mut host = s.clone();
    host.ipv4 = Some(fam("198.18.0.0/16", "198.18.1.7/32"));
    let json = json.replace(
        r#"{"prefix": {"addr": "198.18.1.0", "len": 24}}"#,
        r#""198.18.1.7""#,
    );
    assert_eq!(
        nftables::parse_table(Family::Ipv4, &json).unwrap(),
        nft_seen(&host, Family::Ipv4)
    );
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
        (
            "foreign chain",
            edit(&|x| x.foreign.push("chain `extra`".into())),
        ),
        (
            "table deleted",
            nft_obs(good.clone()).tap(|o| o.ipv4 = FamilyObserved::Absent),
        ),
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
        (
            "absent",
            ipt_obs(good.clone()).tap(|o| o.ipv4 = FamilyObserved::Absent),
        ),
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

#[test]
fn missing_tool_blocks_the_family_with_the_package_to_install() {
    let s = nft_dual();
    let nft = NftBackend {
        nft: "/nonexistent/nft".into(),
    };
    let p = plan(Some(&s), &nft.observe(&s));
    assert!(p.changes.is_empty(), "{p}");
    assert_eq!(p.blocked.len(), 2, "{p}");
    assert!(p.to_string().contains("apt install nftables"), "{p}");
    assert!(
        nft.check(&s)
            .unwrap_err()
            .to_string()
            .contains("pkgs.nftables")
    );
    // Cleanup cannot pretend it removed anything.
    assert!(nft.cleanup(&s).is_err());

    let ipt = IptablesBackend::new(IptablesTools {
        restore6: "/nonexistent/ip6tables-restore".into(),
        ..IptablesTools::system()
    });
    let v4_only = spec(NatBackendKind::Iptables, Some(v4()), None);
    let dual = ipt_dual();
    let err = ipt.check(&dual).unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/ip6tables-restore") && err.contains("apt install iptables"),
        "{err}"
    );
    // The IPv6 tools are only needed when IPv6 is configured (and the
    // system ones are a test-machine given, so only assert the error path
    // above and the family filter here).
    let only6_missing = ipt
        .check(&v4_only)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(!only6_missing.contains("ip6tables"), "{only6_missing}");
}
