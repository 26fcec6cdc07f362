use std::path::PathBuf;

use super::*;
use crate::model::LeaseFamily;
use crate::plan::{ChangeKind, Op, Plan};

const LIVE: &str = "/run/flannel/subnet.env";

fn fam4() -> LeaseFamily {
    LeaseFamily {
        network: "198.18.0.0/16".parse().unwrap(),
        subnet: "198.18.1.0/24".parse().unwrap(),
    }
}

fn fam6() -> LeaseFamily {
    LeaseFamily {
        network: "fd00:42::/56".parse().unwrap(),
        subnet: "fd00:42:0:1::/64".parse().unwrap(),
    }
}

fn spec(mode: LeaseMode, ipv4: bool, ipv6: bool) -> LeaseSpec {
    LeaseSpec {
        mode,
        ipv4: ipv4.then(fam4),
        ipv6: ipv6.then(fam6),
        mtu: None,
        ipmasq: true,
        path: PathBuf::from(LIVE),
        state_dir: PathBuf::from("/var/lib/netconverge"),
    }
}

fn text(s: &str) -> FileContent {
    FileContent::Text(s.to_string())
}

fn write_obs(live: FileContent) -> LeaseObserved {
    LeaseObserved {
        live,
        backup: FileContent::Missing,
    }
}

/// The single change of `plan`, checked to be a `Write` of `contents`.
fn single_write(plan: &Plan, kind: ChangeKind, contents: &str) -> String {
    assert!(plan.blocked.is_empty(), "{plan}");
    assert_eq!(plan.changes.len(), 1, "{plan}");
    let c = &plan.changes[0];
    assert_eq!(c.kind, kind, "{plan}");
    assert_eq!(c.object, format!("lease {LIVE}"));
    assert_eq!(
        c.op,
        Op::Lease(LeaseOp::Write {
            path: PathBuf::from(LIVE),
            contents: contents.to_string()
        })
    );
    c.reason.clone()
}

// ---------------------------------------------------------------- render --

#[test]
fn render_ipv4() {
    insta::assert_snapshot!(
        "render_ipv4",
        render(&spec(LeaseMode::Write, true, false), 1450)
    );
}

#[test]
fn render_ipv6_only() {
    let mut s = spec(LeaseMode::Write, false, true);
    s.ipmasq = false;
    insta::assert_snapshot!("render_ipv6_only", render(&s, 1430));
}

#[test]
fn render_dual_stack() {
    insta::assert_snapshot!(
        "render_dual_stack",
        render(&spec(LeaseMode::Write, true, true), 1450)
    );
}

#[test]
fn render_is_byte_identical_to_flannel_example() {
    let s = LeaseSpec {
        ipv4: Some(LeaseFamily {
            network: "10.42.0.0/16".parse().unwrap(),
            subnet: "10.42.1.0/24".parse().unwrap(),
        }),
        ipv6: Some(LeaseFamily {
            network: "2001:db8:42::/56".parse().unwrap(),
            subnet: "2001:db8:42:1::/64".parse().unwrap(),
        }),
        ..spec(LeaseMode::Write, false, false)
    };
    assert_eq!(
        render(&s, 1450),
        "FLANNEL_NETWORK=10.42.0.0/16\n\
         FLANNEL_SUBNET=10.42.1.1/24\n\
         FLANNEL_IPV6_NETWORK=2001:db8:42::/56\n\
         FLANNEL_IPV6_SUBNET=2001:db8:42:1::1/64\n\
         FLANNEL_MTU=1450\n\
         FLANNEL_IPMASQ=true\n"
    );
}

#[test]
fn render_masks_host_bits_it_was_given() {
    let mut s = spec(LeaseMode::Write, true, false);
    s.ipv4 = Some(LeaseFamily {
        network: "198.18.7.9/16".parse().unwrap(),
        subnet: "198.18.1.77/24".parse().unwrap(),
    });
    assert_eq!(
        render(&s, 1450),
        render(&spec(LeaseMode::Write, true, false), 1450)
    );
}

#[test]
fn first_usable_is_network_plus_one() {
    let f = |s: &str| first_usable(&s.parse().unwrap()).to_string();
    assert_eq!(f("198.18.1.0/24"), "198.18.1.1");
    assert_eq!(f("198.18.1.128/25"), "198.18.1.129");
    assert_eq!(f("fd00:42:0:1::/64"), "fd00:42:0:1::1");
    assert_eq!(f("198.18.1.4/31"), "198.18.1.4");
    assert_eq!(f("198.18.1.4/32"), "198.18.1.4");
    assert_eq!(f("fd00::7/128"), "fd00::7");
}

// ----------------------------------------------------------------- parse --

#[test]
fn parse_reads_render_back() {
    let s = spec(LeaseMode::Write, true, true);
    let f = parse(&render(&s, 1450)).unwrap();
    let v4 = f.ipv4.unwrap();
    assert_eq!(v4.network, fam4().network);
    assert_eq!(v4.subnet.to_string(), "198.18.1.1/24");
    assert_eq!(v4.subnet.trunc(), fam4().subnet);
    let v6 = f.ipv6.unwrap();
    assert_eq!(v6.network, fam6().network);
    assert_eq!(v6.subnet.to_string(), "fd00:42:0:1::1/64");
    assert_eq!(f.mtu, 1450);
    assert!(f.ipmasq);
    assert!(f.unknown_keys.is_empty() && f.duplicate_keys.is_empty());
    assert!(f.malformed_lines.is_empty());
    let f = parse(&render(&spec(LeaseMode::Write, false, true), 1400)).unwrap();
    assert!(f.ipv4.is_none() && f.ipv6.is_some());
}

#[test]
fn parse_is_tolerant_like_the_cni_plugin() {
    let f = parse(
        "# written by hand\n\
         \n\
         FLANNEL_NETWORK=198.18.0.0/16\n\
         FLANNEL_SUBNET=198.18.1.1/24\n\
         FLANNEL_MTU=1500\n\
         FLANNEL_MTU=1450\n\
         FLANNEL_IPMASQ=True\n\
         FLANNEL_EXTRA=a=b\n\
         FLANNEL_EXTRA=c\n",
    )
    .unwrap();
    assert_eq!(f.mtu, 1450, "last value wins");
    assert!(!f.ipmasq, "only the exact string `true` is true");
    assert_eq!(f.unknown_keys, ["FLANNEL_EXTRA"]);
    assert_eq!(f.duplicate_keys, ["FLANNEL_MTU", "FLANNEL_EXTRA"]);
    assert_eq!(f.malformed_lines, [1]);
}

#[test]
fn parse_rejects_what_the_cni_plugin_rejects() {
    let base = "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    parse(base).unwrap();
    let err = |from: &str, to: &str| {
        let t = base.replace(from, to);
        assert_ne!(t, base);
        parse(&t).unwrap_err().to_string()
    };
    assert_eq!(err("FLANNEL_MTU=1450\n", ""), "FLANNEL_MTU missing");
    assert_eq!(err("FLANNEL_IPMASQ=true\n", ""), "FLANNEL_IPMASQ missing");
    assert_eq!(
        err("FLANNEL_SUBNET=198.18.1.1/24\n", ""),
        "FLANNEL_SUBNET missing"
    );
    assert_eq!(
        err("FLANNEL_NETWORK=198.18.0.0/16\n", ""),
        "FLANNEL_NETWORK missing"
    );
    assert_eq!(
        err(
            "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\n",
            ""
        ),
        "FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK missing"
    );
    assert_eq!(
        err("1450", "14x0"),
        "FLANNEL_MTU=\"14x0\": not a positive integer"
    );
    assert_eq!(
        err("1450", "0"),
        "FLANNEL_MTU=\"0\": not a positive integer"
    );
    assert_eq!(
        err("198.18.1.1/24", "198.18.1.1"),
        "FLANNEL_SUBNET=\"198.18.1.1\": not address/prefix"
    );
    assert_eq!(
        err("198.18.1.1/24", "198.18.01.1/24"),
        "FLANNEL_SUBNET=\"198.18.01.1/24\": not an IP address"
    );
    assert_eq!(
        err("198.18.1.1/24", "198.18.1.1/33"),
        "FLANNEL_SUBNET=\"198.18.1.1/33\": prefix length too long"
    );
    assert_eq!(
        err("198.18.1.1/24", "198.18.1.1/+24"),
        "FLANNEL_SUBNET=\"198.18.1.1/+24\": prefix length is not a decimal number"
    );
    assert_eq!(
        err("198.18.1.1/24", " 198.18.1.1/24"),
        "FLANNEL_SUBNET=\" 198.18.1.1/24\": not an IP address"
    );
    assert_eq!(
        err("198.18.0.0/16", "fd00:42::/56"),
        "FLANNEL_NETWORK=\"fd00:42::/56\": not an IPv4 network"
    );
}

// ------------------------------------------------------------ plan: write --

#[test]
fn no_lease_section_plans_nothing() {
    let obs = write_obs(text("anything"));
    assert!(plan(None, Some(1450), &obs).in_sync());
}

#[test]
fn write_missing_file_is_added() {
    let s = spec(LeaseMode::Write, true, false);
    let p = plan(Some(&s), Some(1450), &write_obs(FileContent::Missing));
    let reason = single_write(&p, ChangeKind::Add, &render(&s, 1450));
    assert_eq!(reason, "missing");
    assert_eq!(p.to_string(), "+ lease /run/flannel/subnet.env: missing\n");
}

#[test]
fn write_in_sync_plans_nothing() {
    let s = spec(LeaseMode::Write, true, true);
    let obs = write_obs(text(&render(&s, 1450)));
    assert!(plan(Some(&s), Some(1450), &obs).in_sync());
}

#[test]
fn write_drift_names_exactly_the_keys_that_differ() {
    let s = spec(LeaseMode::Write, true, false);
    let want = render(&s, 1450);
    let reason = |live: &str| {
        let p = plan(Some(&s), Some(1450), &write_obs(text(live)));
        single_write(&p, ChangeKind::Modify, &want)
    };
    // stale MTU, and truncated before the last key
    assert_eq!(
        reason("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1500\n"),
        "FLANNEL_MTU 1500 → 1450; FLANNEL_IPMASQ missing"
    );
    // truncated mid-line
    let cut = &want[..want.find("FLANNEL_MTU=").unwrap() + 13];
    assert_eq!(reason(cut), "FLANNEL_MTU 1 → 1450; FLANNEL_IPMASQ missing");
    let cut = &want[..want.find("FLANNEL_MTU=").unwrap() + 5];
    assert_eq!(
        reason(cut),
        "FLANNEL_MTU missing; FLANNEL_IPMASQ missing; line 3 malformed"
    );
    // empty file
    assert_eq!(
        reason(""),
        "FLANNEL_NETWORK missing; FLANNEL_SUBNET missing; FLANNEL_MTU missing; FLANNEL_IPMASQ missing"
    );
    // hand-edited
    assert_eq!(
        reason(
            &want
                .replace("198.18.1.1/24", "198.18.1.0/24")
                .replace("=true", "=false")
        ),
        "FLANNEL_SUBNET 198.18.1.0/24 → 198.18.1.1/24; FLANNEL_IPMASQ false → true"
    );
    assert_eq!(
        reason(&want.replace("=1450", "=1450 ")),
        "FLANNEL_MTU \"1450 \" → 1450"
    );
    assert_eq!(
        reason(&format!(
            "{want}FLANNEL_IPV6_NETWORK=fd00:42::/56\n# note\n"
        )),
        "FLANNEL_IPV6_NETWORK unexpected; line 6 malformed"
    );
    assert_eq!(
        reason(&format!("FLANNEL_MTU=1450\n{want}")),
        "FLANNEL_MTU duplicated"
    );
    // only the layout differs
    assert_eq!(reason(want.trim_end()), "final newline missing");
    assert_eq!(
        reason(&format!("\n{want}")),
        "layout differs (key order, blank lines or line endings)"
    );
    // unparsable garbage
    assert_eq!(
        reason("\u{0}\u{1}garbage"),
        "FLANNEL_NETWORK missing; FLANNEL_SUBNET missing; FLANNEL_MTU missing; \
         FLANNEL_IPMASQ missing; line 1 malformed"
    );
}

#[test]
fn write_unusable_file_is_rewritten() {
    let s = spec(LeaseMode::Write, true, false);
    let obs = write_obs(FileContent::Unusable("not UTF-8 text".into()));
    let p = plan(Some(&s), Some(1450), &obs);
    assert_eq!(
        single_write(&p, ChangeKind::Modify, &render(&s, 1450)),
        "not UTF-8 text"
    );
}

#[test]
fn write_mtu_flows_from_the_vxlan_device() {
    let s = spec(LeaseMode::Write, true, true);
    let obs = write_obs(text(&render(&s, 1450)));
    assert!(plan(Some(&s), Some(1450), &obs).in_sync());
    let p = plan(Some(&s), Some(1400), &obs);
    let reason = single_write(&p, ChangeKind::Modify, &render(&s, 1400));
    assert_eq!(reason, "FLANNEL_MTU 1450 → 1400");
    assert_eq!(
        p.to_string(),
        "~ lease /run/flannel/subnet.env: FLANNEL_MTU 1450 → 1400\n"
    );
}

#[test]
fn write_spec_mtu_overrides_the_device() {
    let mut s = spec(LeaseMode::Write, true, false);
    s.mtu = Some(1370);
    let p = plan(Some(&s), Some(1450), &write_obs(FileContent::Missing));
    single_write(&p, ChangeKind::Add, &render(&s, 1370));
    // known even while the device is blocked
    let p = plan(Some(&s), None, &write_obs(FileContent::Missing));
    single_write(&p, ChangeKind::Add, &render(&s, 1370));
}

#[test]
fn write_unknown_mtu_is_blocked_never_guessed() {
    let s = spec(LeaseMode::Write, true, false);
    for live in [
        FileContent::Missing,
        text("FLANNEL_MTU=1500\n"),
        text(&render(&s, 1450)),
    ] {
        let p = plan(Some(&s), None, &write_obs(live));
        assert!(p.changes.is_empty(), "{p}");
        assert_eq!(
            p.to_string(),
            "! lease /run/flannel/subnet.env: blocked: MTU unknown (the VXLAN device is \
             blocked and [lease] sets no mtu); not written\n"
        );
    }
}

#[test]
fn write_without_any_family_is_blocked() {
    let s = spec(LeaseMode::Write, false, false);
    let p = plan(Some(&s), Some(1450), &write_obs(FileContent::Missing));
    assert!(p.changes.is_empty());
    assert_eq!(p.blocked.len(), 1);
}

#[test]
fn write_mode_ignores_a_backup() {
    let s = spec(LeaseMode::Write, true, false);
    let obs = LeaseObserved {
        live: text(&render(&s, 1450)),
        backup: text("stale"),
    };
    assert!(plan(Some(&s), Some(1450), &obs).in_sync());
}

// ------------------------------------------------------ plan: preserve --

fn valid(mtu: u32) -> String {
    render(&spec(LeaseMode::Write, true, false), mtu)
}

/// Guard mode declaring nothing to compare (no family, no mtu, device MTU
/// unknown): only validity matters. Comparisons: `guard_compares_*`.
fn guard(live: FileContent, backup: FileContent) -> Plan {
    let s = spec(LeaseMode::Preserve, false, false);
    let obs = LeaseObserved { live, backup };
    plan(Some(&s), None, &obs)
}

fn backup_op(contents: &str) -> Op {
    Op::Lease(LeaseOp::Backup {
        path: PathBuf::from("/var/lib/netconverge/subnet.env"),
        contents: contents.to_string(),
    })
}

#[test]
fn guard_saves_a_valid_live_file() {
    let p = guard(text(&valid(1450)), FileContent::Missing);
    assert!(p.blocked.is_empty());
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].kind, ChangeKind::Add);
    assert_eq!(p.changes[0].op, backup_op(&valid(1450)));
    assert_eq!(
        p.to_string(),
        "+ lease backup /var/lib/netconverge/subnet.env: missing; saved from the live file\n"
    );
}

#[test]
fn guard_refreshes_a_stale_backup() {
    let p = guard(text(&valid(1400)), text(&valid(1450)));
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].kind, ChangeKind::Modify);
    assert_eq!(p.changes[0].op, backup_op(&valid(1400)));
    assert_eq!(
        p.to_string(),
        "~ lease backup /var/lib/netconverge/subnet.env: refresh: FLANNEL_MTU 1450 → 1400\n"
    );
    let p = guard(text(&valid(1400)), text("junk"));
    assert_eq!(p.changes[0].op, backup_op(&valid(1400)));
    assert_eq!(
        p.changes[0].reason,
        "refresh: backup invalid (FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK missing)"
    );
    let p = guard(
        text(&valid(1400)),
        FileContent::Unusable("not UTF-8 text".into()),
    );
    assert_eq!(p.changes[0].op, backup_op(&valid(1400)));
}

#[test]
fn guard_in_sync_plans_nothing() {
    assert!(guard(text(&valid(1450)), text(&valid(1450))).in_sync());
}

#[test]
fn guard_restores_a_missing_live_file() {
    let p = guard(FileContent::Missing, text(&valid(1450)));
    assert!(p.blocked.is_empty());
    let reason = single_write(&p, ChangeKind::Add, &valid(1450));
    assert_eq!(
        reason,
        "missing; restore from backup /var/lib/netconverge/subnet.env"
    );
}

#[test]
fn guard_never_copies_an_invalid_live_file() {
    let truncated = &valid(1450)[..40];
    for backup in [text(&valid(1450)), FileContent::Missing, text("junk")] {
        let p = guard(text(truncated), backup.clone());
        assert!(p.changes.is_empty(), "{p}");
        assert_eq!(p.blocked.len(), 1, "{p}");
        assert!(
            p.blocked[0]
                .reason
                .starts_with("invalid (FLANNEL_SUBNET missing); written by flannel"),
            "{p}"
        );
    }
    let p = guard(text(truncated), text(&valid(1450)));
    assert!(
        p.blocked[0]
            .reason
            .ends_with("backup /var/lib/netconverge/subnet.env kept")
    );
    let p = guard(
        FileContent::Unusable("not UTF-8 text".into()),
        text(&valid(1450)),
    );
    assert!(p.changes.is_empty());
    assert!(p.blocked[0].reason.starts_with("invalid (not UTF-8 text)"));
}

#[test]
fn guard_without_file_or_backup_is_blocked() {
    let p = guard(FileContent::Missing, FileContent::Missing);
    assert_eq!(
        p.to_string(),
        "! lease /run/flannel/subnet.env: blocked: no lease file and no backup yet\n"
    );
    let p = guard(FileContent::Missing, text("FLANNEL_MTU=1450\n"));
    assert!(p.changes.is_empty());
    assert_eq!(
        p.blocked[0].reason,
        "no lease file, and backup /var/lib/netconverge/subnet.env is invalid \
         (FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK missing)"
    );
}

#[test]
fn lease_op_serializes_inside_op() {
    let op = Op::Lease(LeaseOp::Write {
        path: PathBuf::from(LIVE),
        contents: "x\n".into(),
    });
    assert_eq!(
        serde_json::to_string(&op).unwrap(),
        r#"{"op":"lease","kind":"write","path":"/run/flannel/subnet.env","contents":"x\n"}"#
    );
    assert_eq!(op.stage(), crate::plan::Stage::Lease);
}

// ------------------------------------- unusable paths block the lease only --

#[test]
fn paths_that_are_not_regular_files_block_the_lease_never_fail_the_pass() {
    let w = spec(LeaseMode::Write, true, false);
    let g = spec(LeaseMode::Preserve, true, false);
    let mut out = String::new();
    for live in [
        FileContent::NotAFile("a directory".into()),
        FileContent::NotAFile("a FIFO".into()),
        FileContent::NotAFile("a device".into()),
        FileContent::Unreadable("Not a directory (os error 20)".into()),
    ] {
        let p = plan(Some(&w), Some(1450), &write_obs(live.clone()));
        assert!(p.changes.is_empty(), "{p}");
        out += &p.to_string();
        let p = plan(
            Some(&g),
            Some(1450),
            &LeaseObserved {
                live,
                backup: text(&valid(1450)),
            },
        );
        assert!(p.changes.is_empty(), "{p}");
        out += &p.to_string();
    }
    // A backup path that cannot be written: the live file is not "saved".
    let p = plan(
        Some(&g),
        Some(1450),
        &LeaseObserved {
            live: text(&valid(1450)),
            backup: FileContent::NotAFile("a directory".into()),
        },
    );
    assert!(p.changes.is_empty(), "{p}");
    out += &p.to_string();
    insta::assert_snapshot!(out);
}

#[test]
fn a_symlink_is_drift_replaced_in_write_mode_reported_in_guard_mode() {
    let w = spec(LeaseMode::Write, true, false);
    let p = plan(Some(&w), Some(1450), &write_obs(FileContent::Symlink));
    let reason = single_write(&p, ChangeKind::Modify, &render(&w, 1450));
    assert_eq!(
        reason,
        "a symbolic link (not followed); replaced by a regular file"
    );
    let g = spec(LeaseMode::Preserve, true, false);
    let p = plan(
        Some(&g),
        Some(1450),
        &LeaseObserved {
            live: FileContent::Symlink,
            backup: text(&valid(1450)),
        },
    );
    assert!(p.changes.is_empty(), "{p}");
    assert_eq!(
        p.to_string(),
        "! lease /run/flannel/subnet.env: blocked: invalid (a symbolic link, not followed; \
         its target is not read); written by flannel (mode = \"preserve\"), left as is; \
         backup /var/lib/netconverge/subnet.env kept\n"
    );
    // A symlinked backup is ours to replace (rename replaces the link).
    let p = plan(
        Some(&g),
        Some(1450),
        &LeaseObserved {
            live: text(&valid(1450)),
            backup: FileContent::Symlink,
        },
    );
    assert_eq!(p.changes.len(), 1, "{p}");
    assert_eq!(p.changes[0].op, backup_op(&valid(1450)));
}

#[test]
fn write_mode_never_hands_ipv6_pods_an_mtu_below_1280() {
    let s = spec(LeaseMode::Write, true, true);
    let p = plan(Some(&s), Some(1230), &write_obs(FileContent::Missing));
    assert!(p.changes.is_empty(), "{p}");
    assert_eq!(
        p.to_string(),
        "! lease /run/flannel/subnet.env: blocked: MTU 1230 is below IPv6's minimum 1280 \
         and the lease declares IPv6 pods; not written\n"
    );
    // Controls: IPv4-only pods may have it; 1280 is enough.
    let s4 = spec(LeaseMode::Write, true, false);
    single_write(
        &plan(Some(&s4), Some(1230), &write_obs(FileContent::Missing)),
        ChangeKind::Add,
        &render(&s4, 1230),
    );
    single_write(
        &plan(Some(&s), Some(1280), &write_obs(FileContent::Missing)),
        ChangeKind::Add,
        &render(&s, 1280),
    );
}

/// What flannel writes for fam4 with another subnet/network.
fn flannel(network: &str, subnet: &str, mtu: u32) -> String {
    format!(
        "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
    )
}

#[test]
fn guard_compares_the_live_file_with_the_declaration() {
    let g = spec(LeaseMode::Preserve, true, false);
    let obs = |live: &str, backup: FileContent| LeaseObserved {
        live: text(live),
        backup,
    };
    let mut out = String::new();
    // flannel took another subnet (and network): drift, backup untouched.
    let other = flannel("198.19.0.0/16", "198.19.7.1/24", 1450);
    for backup in [text(&valid(1450)), FileContent::Missing] {
        let p = plan(Some(&g), Some(1450), &obs(&other, backup));
        assert!(p.changes.is_empty(), "never saved over the backup: {p}");
        out += &p.to_string();
    }
    // Same subnet, MTU other than the converged device's.
    let p = plan(Some(&g), Some(1400), &obs(&valid(1450), text(&valid(1450))));
    assert!(p.changes.is_empty(), "{p}");
    out += &p.to_string();
    // `[lease] mtu` wins over the device.
    let mut gm = g.clone();
    gm.mtu = Some(1370);
    let p = plan(
        Some(&gm),
        Some(1450),
        &obs(&valid(1450), FileContent::Missing),
    );
    out += &p.to_string();
    // A declared family the file lacks.
    let g46 = spec(LeaseMode::Preserve, true, true);
    let p = plan(
        Some(&g46),
        Some(1450),
        &obs(&valid(1450), FileContent::Missing),
    );
    out += &p.to_string();
    insta::assert_snapshot!(out);

    // Controls: agreeing files are saved / in sync; the gateway address and
    // host bits in the network do not matter, the subnet does.
    let p = plan(
        Some(&g),
        Some(1450),
        &obs(&valid(1450), FileContent::Missing),
    );
    assert_eq!(p.changes.len(), 1, "{p}");
    assert_eq!(p.changes[0].op, backup_op(&valid(1450)));
    let same = flannel("198.18.3.4/16", "198.18.1.1/24", 1450);
    assert!(
        plan(Some(&g), Some(1450), &obs(&same, text(&same))).in_sync(),
        "host bits are not drift"
    );
    // Undeclared families and an unknown MTU are not compared.
    let bare = spec(LeaseMode::Preserve, false, false);
    assert!(plan(Some(&bare), None, &obs(&other, text(&other))).in_sync());
}

#[test]
fn guard_never_restores_a_backup_that_disagrees() {
    let g = spec(LeaseMode::Preserve, true, false);
    // The device was converged to 1400 since the backup was taken.
    let p = plan(
        Some(&g),
        Some(1400),
        &LeaseObserved {
            live: FileContent::Missing,
            backup: text(&valid(1450)),
        },
    );
    assert!(p.changes.is_empty(), "{p}");
    assert_eq!(
        p.to_string(),
        "! lease /run/flannel/subnet.env: blocked: no lease file, and backup \
         /var/lib/netconverge/subnet.env differs from [lease] (FLANNEL_MTU 1450, the VXLAN \
         device's is 1400); not restored\n"
    );
    // Control: an agreeing backup is restored.
    let p = plan(
        Some(&g),
        Some(1450),
        &LeaseObserved {
            live: FileContent::Missing,
            backup: text(&valid(1450)),
        },
    );
    single_write(&p, ChangeKind::Add, &valid(1450));
}
