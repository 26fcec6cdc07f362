#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! NAT through the built binary: `converge` installs flannel's masquerade
//! rules (nftables and iptables backends), `converge --check` finds edits
//! made by hand and names the rule, `converge` repairs them; the rules are
//! never missing, not for one sample of a ≥ 200 Hz watcher, while the daemon
//! is stopped, SIGKILLed mid-converge and restarted over and over; and
//! `cleanup` removes our table/chain and nothing else.
//!
//! Every result is read with `nft` / `iptables-save` run by the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::fixtures::{self, NatRules};
use common::rules_watch::{self, Watch};
use common::ruleset::{self, CHAIN, TABLE, nft_table, rules_in};
use common::{LONG, Netns, Stack, cpu_exclusive, cpu_shared};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Nft,
    Ipt,
}

impl Backend {
    fn word(self) -> &'static str {
        match self {
            Backend::Nft => "nftables",
            Backend::Ipt => "iptables",
        }
    }
}

/// A dual-stack NAT config (one IPv4 VXLAN device with `peers` peers; the
/// networks come from `[lease]`), written as `dir/<name>.toml`.
fn config(dir: &Path, name: &str, backend: Backend, mark: &str, peers: usize) -> PathBuf {
    let text = fixtures::node_name("nat-node")
        + &fixtures::vxlan_v4("nc-under")
        + &fixtures::peers_v4(peers)
        + &format!(
            "\n[nat]\nbackend = \"{}\"\nmark = \"{mark}\"\n",
            backend.word()
        )
        + &fixtures::lease(dir, Stack::Dual)
        + &fixtures::daemon(3600, "networkmanager = \"off\"\n");
    fixtures::write_config(dir, &format!("{name}.toml"), &text)
}

/// A node (IPv4 underlay) with a `backend` NAT config, two peers, mark
/// 0x4000, in a temp dir.
fn setup(tag: &str, backend: Backend) -> (Netns, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "node", backend, "0x4000/0x4000", 2);
    (Netns::node(tag, Stack::V4), dir, cfg)
}

// ------------------------------------------------- independent expectations --

static WANT: LazyLock<NatRules> = LazyLock::new(|| NatRules::new("198.18.0.0/15"));

// --------------------------------------------------------------- readers --

/// `(ip|ip6)tables-save` of `family` (`ipv4`, `ipv6`).
fn save_tool(family: &str) -> &'static str {
    if family == "ipv4" {
        "iptables-save"
    } else {
        "ip6tables-save"
    }
}

fn ipt_ours(ns: &Netns, family: &str) -> String {
    ruleset::ipt_ours(ns, save_tool(family))
}

fn ipt(ns: &Netns, family: &str, args: &[&str]) {
    let cli = if family == "ipv4" {
        "iptables"
    } else {
        "ip6tables"
    };
    ruleset::ipt_nat(ns, cli, args);
}

/// The `--check` text must report exactly one NAT change: `want` in it.
#[track_caller]
fn check_finds(ns: &Netns, cfg: &Path, want: &[&str]) -> String {
    let text = ns.netconverge_exits(cfg, &["converge", "--check"], 1);
    for w in want {
        assert!(text.contains(w), "want {w:?} in --check output:\n{text}");
    }
    assert!(
        text.contains("0 to add, 1 to change, 0 to remove, 0 blocked")
            || text.contains("1 to add, 0 to change, 0 to remove, 0 blocked"),
        "want exactly one change:\n{text}"
    );
    text
}

#[track_caller]
fn converge_ok(ns: &Netns, cfg: &Path) {
    ns.netconverge_exits(cfg, &["converge"], 0);
    let text = ns.netconverge_exits(cfg, &["converge", "--check"], 0);
    assert!(text.contains("in sync"), "{text}");
}

/// Our rules of both families as `backend`'s own tool prints them (`None`:
/// absent).
fn ours(ns: &Netns, backend: Backend) -> [Option<String>; 2] {
    match backend {
        Backend::Nft => [nft_table(ns, "ip"), nft_table(ns, "ip6")],
        Backend::Ipt => {
            [ipt_ours(ns, "ipv4"), ipt_ours(ns, "ipv6")].map(|t| (!t.is_empty()).then_some(t))
        }
    }
}

/// What [`ours`] must read once converged.
fn want(backend: Backend) -> [Option<String>; 2] {
    let [v4, v6] = match backend {
        Backend::Nft => [&WANT.nft_v4, &WANT.nft_v6],
        Backend::Ipt => [&WANT.ipt_v4, &WANT.ipt_v6],
    };
    [Some(v4.clone()), Some(v6.clone())]
}

/// After a hand edit: `--check` names it (see [`check_finds`]), `converge`
/// repairs it, and both families' rules read back exactly as expected.
#[track_caller]
fn found_and_repaired(ns: &Netns, cfg: &Path, backend: Backend, want_in_check: &[&str]) {
    check_finds(ns, cfg, want_in_check);
    converge_ok(ns, cfg);
    assert_eq!(ours(ns, backend), want(backend), "not repaired");
}

// ------------------------------------------------------- converge/check --

#[test]
fn nftables_rules_installed_and_hand_edits_found_by_check_and_repaired() {
    let _cpu = cpu_shared();
    let (ns, _dir, cfg) = setup("nat-nft", Backend::Nft);
    // nothing there yet: --check says so, in JSON too
    let json = ns.netconverge_exits(&cfg, &["converge", "--check", "--format", "json"], 1);
    let j: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["in_sync"], false);
    let objects: Vec<&str> = j["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["object"].as_str().unwrap())
        .collect();
    assert!(
        objects.contains(&"nat ipv4 (nftables table ip netconverge)")
            && objects.contains(&"nat ipv6 (nftables table ip6 netconverge)"),
        "{objects:?}"
    );

    converge_ok(&ns, &cfg);
    assert_eq!(ours(&ns, Backend::Nft), want(Backend::Nft));
    let handles = ruleset::nft_rules(&ns, "ip");
    assert_eq!(handles.len(), 6);
    let chain = format!("ip|{TABLE}|postrouting");

    // 1. a masquerade rule deleted by hand
    let last = handles.last().unwrap().0;
    ruleset::nft(&ns, &format!("delete|rule|{chain}|handle|{last}"));
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Nft,
        &["~ nat ipv4 (nftables table ip netconverge): missing rule \
             `ip saddr != 198.18.0.0/15 ip daddr 198.18.0.0/15 masquerade fully-random comment \"netconverge masq\"`"],
    );

    // 2. a rule appended by hand to our IPv6 chain
    ruleset::nft(
        &ns,
        &format!("add|rule|ip6|{TABLE}|postrouting|ip6|saddr|2001:db8:ff::/48|accept"),
    );
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Nft,
        &[
            "~ nat ipv6 (nftables table ip6 netconverge): extra rule",
            "2001:db8:ff::",
        ],
    );

    // 3. the mark rule edited in place (another kube-proxy mark)
    let first = ruleset::nft_rules(&ns, "ip")[0].0;
    let rule = r#"meta mark and 0x8000 == 0x8000 return comment "netconverge masq""#;
    ruleset::nft(&ns, &format!("replace|rule|{chain}|handle|{first}|{rule}"));
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Nft,
        &[
            "~ nat ipv4 (nftables table ip netconverge): rule 1 edited",
            "0x00008000",
        ],
    );

    // 4. the whole table deleted
    ruleset::nft(&ns, &format!("delete|table|ip|{TABLE}"));
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Nft,
        &["+ nat ipv4 (nftables table ip netconverge): missing"],
    );
}

#[test]
fn iptables_rules_installed_and_hand_edits_found_by_check_and_repaired() {
    let _cpu = cpu_shared();
    let (ns, _dir, cfg) = setup("nat-ipt", Backend::Ipt);
    converge_ok(&ns, &cfg);
    assert_eq!(ours(&ns, Backend::Ipt), want(Backend::Ipt));
    // the iptables backend creates no nftables table of its own
    assert!(nft_table(&ns, "ip").is_none());

    // 1. a MASQUERADE rule deleted by hand
    ipt(&ns, "ipv4", &["-D", CHAIN, "6"]);
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Ipt,
        &[
            "~ nat ipv4 (iptables-nft chain NETCONVERGE-POSTRTG): missing rule \
             `-A NETCONVERGE-POSTRTG ! -s 198.18.0.0/15 -d 198.18.0.0/15 -m comment --comment \"netconverge masq\" -j MASQUERADE --random-fully`",
        ],
    );

    // 2. the jump from POSTROUTING deleted
    ipt(
        &ns,
        "ipv4",
        &ruleset::commented(&["-D", "POSTROUTING"], &[CHAIN]),
    );
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Ipt,
        &[
            "nat ipv4 (iptables-nft chain NETCONVERGE-POSTRTG)",
            "POSTROUTING",
        ],
    );

    // 3. a rule inserted by hand at the top of our IPv6 chain
    ipt(
        &ns,
        "ipv6",
        &["-I", CHAIN, "1", "-s", "2001:db8:ff::/48", "-j", "RETURN"],
    );
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Ipt,
        &[
            "~ nat ipv6 (ip6tables-nft chain NETCONVERGE-POSTRTG): extra rule `-A NETCONVERGE-POSTRTG -s 2001:db8:ff::/48 -j RETURN`",
        ],
    );

    // 4. the chain flushed
    ipt(&ns, "ipv4", &["-F", CHAIN]);
    found_and_repaired(
        &ns,
        &cfg,
        Backend::Ipt,
        &[
            "nat ipv4 (iptables-nft chain NETCONVERGE-POSTRTG)",
            "missing rule",
        ],
    );
}

// -------------------------------------------------------------- cleanup --

/// Foreign NAT state both backends must leave alone: an nftables table
/// with a masquerade rule and an iptables chain (both families) with a
/// MASQUERADE rule and a jump from POSTROUTING.
fn add_foreign(ns: &Netns) {
    ruleset::nft_file(
        ns,
        "table inet foreign {\n\
         \tchain post {\n\
         \t\ttype nat hook postrouting priority srcnat + 5; policy accept;\n\
         \t\tip saddr 198.18.7.0/24 oifname \"nc-under\" counter masquerade\n\
         \t\tip6 saddr fd00:99::/64 counter return\n\
         \t}\n}\n",
    );
    for (family, src) in [("ipv4", "198.18.8.0/24"), ("ipv6", "fd00:98::/64")] {
        ipt(ns, family, &["-N", "FOREIGN-POSTRTG"]);
        ipt(
            ns,
            family,
            &["-A", "FOREIGN-POSTRTG", "-s", src, "-j", "MASQUERADE"],
        );
        ipt(ns, family, &["-A", "POSTROUTING", "-j", "FOREIGN-POSTRTG"]);
    }
}

/// Everything foreign, byte for byte.
fn foreign_snapshot(ns: &Netns) -> Vec<String> {
    let snap = vec![
        ns.exec(&["nft", "-a", "list", "table", "inet", "foreign"]),
        ruleset::ipt_foreign(ns, "iptables-save"),
        ruleset::ipt_foreign(ns, "ip6tables-save"),
    ];
    assert!(snap[0].contains("masquerade"), "{snap:?}");
    assert!(
        snap[1].contains("-A FOREIGN-POSTRTG -s 198.18.8.0/24"),
        "{snap:?}"
    );
    assert!(
        snap[2].contains("-A POSTROUTING -j FOREIGN-POSTRTG"),
        "{snap:?}"
    );
    snap
}

fn ours_present(ns: &Netns, backend: Backend) -> [bool; 2] {
    ours(ns, backend).map(|o| o.is_some())
}

fn cleanup_removes_only_ours(backend: Backend) {
    let _cpu = cpu_shared();
    let (ns, _dir, cfg) = setup(&format!("nat-clean-{}", backend.word()), backend);
    add_foreign(&ns);
    let before = foreign_snapshot(&ns);
    converge_ok(&ns, &cfg);
    assert_eq!(ours_present(&ns, backend), [true, true]);
    assert_eq!(
        foreign_snapshot(&ns),
        before,
        "converge touched foreign rules"
    );

    let nat_lines = match backend {
        Backend::Nft => vec![
            "- nat ipv4 (nftables table ip netconverge): cleanup",
            "- nat ipv6 (nftables table ip6 netconverge): cleanup",
        ],
        Backend::Ipt => vec![
            "- nat ipv4 (iptables-nft chain NETCONVERGE-POSTRTG): cleanup, with \
             1 jump(s) from iptables-nft POSTROUTING to NETCONVERGE-POSTRTG",
            "- nat ipv6 (ip6tables-nft chain NETCONVERGE-POSTRTG): cleanup, with \
             1 jump(s) from ip6tables-nft POSTROUTING to NETCONVERGE-POSTRTG",
        ],
    };

    // --check lists exactly what cleanup will remove, and removes nothing
    let text = ns.netconverge_exits(&cfg, &["cleanup", "--check"], 0);
    let preview = text.clone();
    assert!(text.contains("- vxlan flannel.1: cleanup"), "{text}");
    for l in &nat_lines {
        assert!(
            text.contains(l),
            "cleanup --check does not list {l:?}:\n{text}"
        );
    }
    assert_eq!(ours_present(&ns, backend), [true, true]);
    assert!(ns.link("flannel.1").is_some());

    let text = ns.netconverge_exits(&cfg, &["cleanup"], 0);
    for l in &nat_lines {
        assert!(text.contains(l), "want {l:?} in:\n{text}");
    }
    // one plan: cleanup printed (and did) exactly what --check listed
    let lines = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("- "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines(&text),
        lines(&preview),
        "cleanup differs from its --check"
    );
    assert_eq!(ours_present(&ns, backend), [false, false]);
    assert_eq!(ipt_ours(&ns, "ipv4"), "");
    assert_eq!(ipt_ours(&ns, "ipv6"), "");
    ruleset::assert_no_nft_table_of_ours(&ns);
    assert!(ns.link("flannel.1").is_none());
    assert_eq!(
        foreign_snapshot(&ns),
        before,
        "cleanup touched foreign rules"
    );

    // a second cleanup has nothing left to remove
    let text = ns.netconverge_exits(&cfg, &["cleanup"], 0);
    assert!(!text.contains("cleanup"), "{text}");
    assert_eq!(foreign_snapshot(&ns), before);
}

variants!(cleanup_removes_only_ours:
    cleanup_removes_only_our_nftables_tables => Backend::Nft,
    cleanup_removes_only_our_iptables_chains => Backend::Ipt,
);

// --------------------------------------------------- no gap, lifecycle --

/// Count of masquerade rules in our chain of each family, from
/// `nft -j list ruleset` output.
fn nft_masquerades(v: &Value) -> [usize; 2] {
    let count = |family: &str| {
        rules_in(v)
            .filter(|r| r["family"] == family && r["table"] == TABLE && r["chain"] == "postrouting")
            .filter(|r| {
                r["expr"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|s| s.get("masquerade").is_some()))
            })
            .count()
    };
    [count("ip"), count("ip6")]
}

/// Watch both families' nftables masquerade rules with one reader.
fn nft_both_families() -> rules_watch::Check {
    Box::new(|out: &Output| {
        if !out.status.success() {
            return Err(format!(
                "nft failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
        match nft_masquerades(&v) {
            [2, 2] => Ok(()),
            n => Err(format!("masquerade rules (ip, ip6): {n:?}, want [2, 2]")),
        }
    })
}

fn watcher(ns: &Netns, backend: Backend) -> Watch {
    match backend {
        Backend::Nft => Watch::start(
            &ns.name,
            &["nft", "-j", "list", "ruleset"],
            nft_both_families(),
        ),
        // one reader per sample keeps the rate up: IPv4, the family whose
        // chain shares the `nat` table with everyone else's
        Backend::Ipt => Watch::start(
            &ns.name,
            &["iptables-save", "-t", "nat"],
            rules_watch::iptables_masquerades(CHAIN, 2),
        ),
    }
}

/// The kube-proxy mark in our IPv4 rules, read independently.
fn live_mark(ns: &Netns, backend: Backend) -> Option<&'static str> {
    let text = match backend {
        Backend::Nft => nft_table(ns, "ip").unwrap_or_default(),
        Backend::Ipt => ipt_ours(ns, "ipv4"),
    };
    if text.contains("0x00004000") || text.contains("0x4000/0x4000") {
        Some("0x4000")
    } else if text.contains("0x00008000") || text.contains("0x8000/0x8000") {
        Some("0x8000")
    } else {
        None
    }
}

fn peer_routes(ns: &Netns) -> usize {
    ns.ip_list(&["route", "show", "proto", "199"]).len()
}

const PEERS: usize = 500;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    /// SIGKILL this fraction of a full start-to-READY into the run.
    Kill(f64),
    /// SIGKILL the moment the VXLAN device appears: applying has begun,
    /// its peers and the NAT transaction are still ahead or in flight.
    /// (The kernel part of a converge takes milliseconds since bulk netlink
    /// writes, so fractions of the run alone rarely land inside it.)
    KillOnDevice,
    /// SIGKILL the daemon and its NAT tool together (as systemd kills the
    /// whole cgroup) the moment the tool applying a NAT transaction runs.
    KillInNatApply,
}

/// A child of `parent` that is applying a NAT transaction (`nft -f -`,
/// `ip[6]tables-<flavour>-restore`): its PID and command line. Reads the children
/// lists of `parent`'s threads (the tools are spawned from a blocking pool).
fn nat_apply_child(parent: u32) -> Option<(u32, String)> {
    for task in std::fs::read_dir(format!("/proc/{parent}/task"))
        .ok()?
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            let applying = (cmd.starts_with("nft ") && cmd.contains(" -f "))
                || cmd.contains("tables-nft-restore")
                || cmd.contains("tables-legacy-restore");
            if applying {
                return Some((pid.parse().unwrap(), cmd.trim().to_string()));
            }
        }
    }
    None
}

/// The daemon at a lower CPU priority (`nice` execs, so the PID is the
/// daemon's), so the watcher keeps its share of a 2-core machine while a
/// debug build converges hundreds of peers. Priority changes no
/// transaction's atomicity, which is what is tested.
fn niced_daemon(ns: &Netns, cfg: &Path) -> Daemon {
    let prefix = ["nice", "-n", "10", "ip", "netns", "exec", &ns.name].map(String::from);
    Daemon::start_with(&prefix, cfg, &[])
}

fn no_gap_across_the_daemon_lifecycle(backend: Backend) {
    let _cpu = cpu_exclusive();
    let ns = Netns::node(&format!("nat-life-{}", backend.word()), Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    // two configs that differ in the first rule: every start that follows
    // the other one rewrites both chains (same two masquerade rules)
    let cfgs = [
        (
            config(dir.path(), "a", backend, "0x4000/0x4000", PEERS),
            "0x4000",
        ),
        (
            config(dir.path(), "b", backend, "0x8000/0x8000", PEERS),
            "0x8000",
        ),
    ];
    converge_ok(&ns, &cfgs[0].0);

    // control: a hand-made flush-then-refill is seen, so the watcher can fail
    let cli = (backend == Backend::Ipt).then_some("iptables");
    let what = format!("{backend:?}");
    ruleset::assert_watch_sees_a_gap(&ns, watcher(&ns, backend), cli, &what, || {
        converge_ok(&ns, &cfgs[0].0);
    });

    let rounds = [
        Stop::Term,
        Stop::Kill(0.2),
        Stop::Kill(0.5),
        Stop::Term,
        Stop::Kill(0.7),
        Stop::Kill(0.85),
        Stop::Term,
        Stop::Kill(0.95),
        Stop::KillOnDevice,
        Stop::Kill(0.6),
        Stop::Term,
        Stop::KillOnDevice,
        Stop::Kill(0.9),
        Stop::KillInNatApply,
        Stop::KillInNatApply,
        Stop::KillInNatApply,
        Stop::KillInNatApply,
    ];
    let w = watcher(&ns, backend);
    // a full start-to-READY, measured on the Term rounds
    let mut full = Duration::ZERO;
    let mut mid = 0;
    let mut in_nat = 0;
    let mut log = Vec::new();
    for (i, stop) in rounds.iter().enumerate() {
        // always the other config than the rules in place: every start
        // has a NAT transaction to make
        let (cfg, mark) = &cfgs[usize::from(live_mark(&ns, backend) == Some("0x4000"))];
        // make the daemon redo the whole device and its peers before NAT
        // (absent when the last kill came before it was created)
        let _ = ns.exec_output(&["ip", "link", "del", "flannel.1"]);
        let start = Instant::now();
        let mut d = niced_daemon(&ns, cfg);
        match *stop {
            Stop::Term => {
                d.wait_notify("READY=1", LONG);
                full = full.max(start.elapsed());
                assert_eq!(live_mark(&ns, backend), Some(*mark), "round {i}");
                assert_eq!(peer_routes(&ns), PEERS, "round {i}");
                assert_eq!(d.stop(), 0, "round {i}: {}", d.logs());
                log.push(format!("{i}: term after {:?}", start.elapsed()));
            }
            Stop::Kill(_) | Stop::KillOnDevice => {
                assert!(!full.is_zero(), "a Term round must come first");
                if let Stop::Kill(f) = *stop {
                    std::thread::sleep(full.mul_f64(f).saturating_sub(start.elapsed()));
                } else {
                    let end = Instant::now() + LONG;
                    while !std::process::Command::new("ip")
                        .args(["-n", &ns.name, "link", "show", "flannel.1"])
                        .output()
                        .unwrap()
                        .status
                        .success()
                    {
                        assert!(Instant::now() < end, "round {i}: no device within {LONG:?}");
                    }
                }
                d.kill9();
                let routes = peer_routes(&ns);
                let nat = live_mark(&ns, backend);
                let dev = ns.link("flannel.1").is_some();
                // started applying, not finished: killed mid-converge
                let unfinished = routes < PEERS || nat != Some(*mark);
                if dev && unfinished {
                    mid += 1;
                }
                log.push(format!(
                    "{i}: kill at {:?}: device {dev}, {routes}/{PEERS} routes, mark {nat:?} (want {mark})",
                    start.elapsed()
                ));
            }
            Stop::KillInNatApply => {
                let pid = d.pid();
                let end = Instant::now() + LONG;
                let tool = loop {
                    if let Some(t) = nat_apply_child(pid) {
                        break Some(t);
                    }
                    if Instant::now() > end
                        || d.child.as_mut().unwrap().try_wait().unwrap().is_some()
                    {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                if let Some((tool_pid, _)) = &tool {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &tool_pid.to_string()])
                        .output();
                }
                d.kill9();
                match tool {
                    Some((_, cmd)) => {
                        in_nat += 1;
                        log.push(format!(
                            "{i}: killed with `{cmd}` at {:?}: mark {:?} (want {mark})",
                            start.elapsed(),
                            live_mark(&ns, backend)
                        ));
                    }
                    None => log.push(format!("{i}: no NAT transaction seen to kill")),
                }
            }
        }
    }
    // a last start from whatever the kills left: in sync again
    let mut d = niced_daemon(&ns, &cfgs[0].0);
    d.wait_notify("READY=1", LONG);
    assert_eq!(d.stop(), 0, "{}", d.logs());
    eprintln!("{backend:?} lifecycle:\n  {}", log.join("\n  "));
    ruleset::assert_no_gap(w, &what);
    assert!(
        mid >= 1,
        "no SIGKILL landed mid-converge, the test proved less than it claims:\n{}",
        log.join("\n")
    );
    assert!(
        in_nat >= 1,
        "never caught a NAT transaction in flight:\n{}",
        log.join("\n")
    );
    // in sync after the lifecycle
    ns.netconverge_exits(&cfgs[0].0, &["converge", "--check"], 0);
    assert_eq!(live_mark(&ns, backend), Some("0x4000"));
}

variants!(no_gap_across_the_daemon_lifecycle:
    no_gap_across_daemon_stop_kill_restart_nftables => Backend::Nft,
    no_gap_across_daemon_stop_kill_restart_iptables => Backend::Ipt,
);

// ------------------------------------------- ownership across every file --

/// The binary under test: this build, or `NETCONVERGE_TEST_BIN` (to prove
/// a test fails with an older build).
fn bin() -> String {
    std::env::var("NETCONVERGE_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_netconverge").to_string())
}

/// Run the binary in `ns` with `cfg`; panics (with all it printed) unless
/// it exits with `want`. Returns its stdout.
#[track_caller]
fn nc_exits(ns: &Netns, cfg: &Path, args: &[&str], want: i32) -> String {
    let b = bin();
    let c = cfg.to_str().unwrap();
    let out = ns.exec_output(&[&[b.as_str(), "-c", c][..], args].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code().unwrap_or(-1),
        want,
        "`netconverge {}`:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The node config without `[nat]` (`nat`: the `[nat]` section to use).
fn config_with(dir: &Path, name: &str, nat: &str) -> PathBuf {
    let text = fixtures::node_name("nat-node")
        + &fixtures::vxlan_v4("nc-under")
        + &fixtures::peers_v4(2)
        + nat
        + &fixtures::lease(dir, Stack::Dual)
        + &fixtures::daemon(3600, "networkmanager = \"off\"\n");
    fixtures::write_config(dir, &format!("{name}.toml"), &text)
}

/// Our tables, sorted: `nft list tables` lists them in creation order,
/// which two families' tables created concurrently do not fix.
fn our_nft_tables(ns: &Netns) -> String {
    let mut ours: Vec<String> = ruleset::nft_tables(ns)
        .lines()
        .filter(|l| l.contains("netconverge"))
        .map(|l| format!("{l}\n"))
        .collect();
    ours.sort();
    ours.concat()
}

/// `[nat]` removed from the file: `--check` shows the leftovers as `-`
/// lines, `cleanup --check` lists them, `converge` removes them; then the
/// backend switched (nftables → iptables) removes the old tables in the
/// same converge, and `cleanup` with a file naming the other backend still
/// removes what is there.
#[test]
fn nat_removed_or_switched_in_the_file_leaves_nothing_behind() {
    let _cpu = cpu_shared();
    let ns = Netns::node("nat-gone", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let nft = config_with(dir.path(), "nft", "\n[nat]\nbackend = \"nftables\"\n");
    let ipt = config_with(dir.path(), "ipt", "\n[nat]\nbackend = \"iptables\"\n");
    let none = config_with(dir.path(), "none", "");
    nc_exits(&ns, &nft, &["converge"], 0);
    assert_eq!(
        our_nft_tables(&ns),
        "table ip netconverge\ntable ip6 netconverge\n"
    );

    let text = nc_exits(&ns, &none, &["converge", "--check"], 1);
    assert!(
        text.contains("- nat ipv4 (nftables table ip netconverge): nat not configured")
            && text.contains("- nat ipv6 (nftables table ip6 netconverge): nat not configured"),
        "{text}"
    );
    let text = nc_exits(&ns, &none, &["cleanup", "--check"], 0);
    assert!(
        text.contains("- nat ipv4 (nftables table ip netconverge): cleanup"),
        "{text}"
    );
    assert_eq!(
        our_nft_tables(&ns).lines().count(),
        2,
        "--check changed something"
    );
    nc_exits(&ns, &none, &["converge"], 0);
    assert_eq!(our_nft_tables(&ns), "");
    assert!(nc_exits(&ns, &none, &["converge", "--check"], 0).contains("in sync"));

    // nftables → iptables: one converge installs the chain, drops the tables
    nc_exits(&ns, &nft, &["converge"], 0);
    let text = nc_exits(&ns, &ipt, &["converge", "--check"], 1);
    assert!(
        text.contains("+ nat ipv4 (iptables-nft chain NETCONVERGE-POSTRTG)")
            && text.contains("- nat ipv4 (nftables table ip netconverge): left over"),
        "{text}"
    );
    nc_exits(&ns, &ipt, &["converge"], 0);
    assert_eq!(our_nft_tables(&ns), "");
    assert_eq!(ipt_ours(&ns, "ipv4"), WANT.ipt_v4);
    assert!(nc_exits(&ns, &ipt, &["converge", "--check"], 0).contains("in sync"));

    // cleanup with a file that names the other backend
    let text = nc_exits(&ns, &nft, &["cleanup", "--check"], 0);
    assert!(
        text.contains("- nat ipv4 (iptables-nft chain NETCONVERGE-POSTRTG): cleanup"),
        "{text}"
    );
    nc_exits(&ns, &nft, &["cleanup"], 0);
    assert_eq!(ipt_ours(&ns, "ipv4"), "");
    assert_eq!(ipt_ours(&ns, "ipv6"), "");
}

/// A user's table of our name is a conflict: `converge` exits 1 naming it
/// with `!`, and neither converge nor cleanup changes it.
#[test]
fn a_users_table_of_our_name_is_a_conflict_not_wiped() {
    let _cpu = cpu_shared();
    let ns = Netns::node("nat-theirs", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let nft = config_with(dir.path(), "nft", "\n[nat]\nbackend = \"nftables\"\n");
    ruleset::nft_file(
        &ns,
        "table ip netconverge {\n\tset allow {\n\t\ttype ipv4_addr\n\t}\n\
         \tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr 198.18.7.0/24 counter masquerade\n\t}\n}\n",
    );
    let before = ns.exec(&["nft", "-j", "list", "table", "ip", "netconverge"]);
    let text = nc_exits(&ns, &nft, &["converge"], 1);
    assert!(
        text.contains("! nat ipv4 (nftables table ip netconverge): blocked: conflict")
            && text.contains("set `allow`"),
        "{text}"
    );
    nc_exits(&ns, &nft, &["cleanup"], 0);
    assert_eq!(
        ns.exec(&["nft", "-j", "list", "table", "ip", "netconverge"]),
        before
    );
    // the IPv6 table (free) is ours and cleanup removed it
    assert_eq!(our_nft_tables(&ns), "table ip netconverge\n");
}

/// The iptables flavour is chosen from where the host's nat rules live
/// (kube-proxy's chain in iptables-legacy, `iptables` being iptables-nft),
/// and `--check`, `show` and the log say which and why.
#[test]
fn iptables_flavour_follows_the_host_and_is_shown() {
    let _cpu = cpu_shared();
    let ns = Netns::node("nat-flav", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let ipt = config_with(dir.path(), "ipt", "\n[nat]\nbackend = \"iptables\"\n");
    ruleset::ipt_nat(&ns, "iptables-legacy", &["-N", "KUBE-POSTROUTING"]);
    ruleset::ipt_nat(
        &ns,
        "iptables-legacy",
        &["-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"],
    );
    let text = nc_exits(&ns, &ipt, &["converge", "--check"], 1);
    assert!(
        text.contains("# nat: iptables flavour iptables-legacy: auto: the host's nat rules live in iptables-legacy"),
        "{text}"
    );
    let text = nc_exits(&ns, &ipt, &["converge"], 0);
    assert!(
        text.contains("iptables-legacy chain NETCONVERGE-POSTRTG"),
        "{text}"
    );
    assert_eq!(ruleset::ipt_ours(&ns, "iptables-legacy-save"), WANT.ipt_v4);
    assert_eq!(ruleset::ipt_ours(&ns, "iptables-nft-save"), "");
    let text = nc_exits(&ns, &ipt, &["show", "--format", "json"], 0);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["nat"]["named"]["backend"], "iptables", "{text}");
    assert_eq!(v["nat"]["named"]["choice"]["flavour"], "legacy", "{text}");
    let text = nc_exits(&ns, &ipt, &["converge", "--check"], 0);
    assert!(
        text.contains("# nat: iptables flavour iptables-legacy") && text.contains("in sync"),
        "{text}"
    );
}

/// flannel's FLANNEL-POSTRTG (built by iptables-restore) adopted through
/// the binary: `--check` says "adopted", no rule edited, no jump moved;
/// the nat table reads back unchanged after `converge`. The flavour is
/// found by `iptables = "auto"` (flannel's rules are the host's nat rules).
fn flannel_chain_adopted_through_the_binary(flavour: &str) {
    let _cpu = cpu_shared();
    let ns = Netns::node("nat-flan", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(
        dir.path(),
        "flannel",
        "\n[nat]\nbackend = \"iptables\"\nchain = \"FLANNEL-POSTRTG\"\n",
    );
    ruleset::ipt_restore(
        &ns,
        &format!("iptables-{flavour}-restore"),
        &ruleset::flannel_layout("198.18.1.0/24", "198.18.0.0/15", "224.0.0.0/4"),
    );
    ruleset::ipt_restore(
        &ns,
        &format!("ip6tables-{flavour}-restore"),
        &ruleset::flannel_layout("fd00:42:0:1::/64", "fd00:42::/56", "ff00::/8"),
    );
    let saved = |ns: &Netns| {
        ["iptables", "ip6tables"].map(|b| ruleset::ipt_nat_save(ns, &format!("{b}-{flavour}-save")))
    };
    let before = saved(&ns);
    let text = nc_exits(&ns, &cfg, &["converge", "--check"], 1);
    assert!(
        text.contains(&format!(
            "~ nat ipv4 (iptables-{flavour} chain FLANNEL-POSTRTG): adopted"
        )) && text.contains(&format!(
            "~ nat ipv6 (ip6tables-{flavour} chain FLANNEL-POSTRTG): adopted"
        )) && text.contains("its jump stays at POSTROUTING position 2"),
        "{text}"
    );
    assert!(
        !text.contains("edited") && !text.contains("jump from POSTROUTING"),
        "{text}"
    );
    // `state_dir` from the file (no env override): both records live there
    // (a decoy STATE_DIRECTORY must not attract the NAT record).
    let state = dir.path().join("nc-state");
    let decoy = dir.path().join("decoy");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("state_dir = \"{}\"\n{text}", state.display())).unwrap();
    let b = bin();
    let c = cfg.to_str().unwrap();
    let decoy_env = format!("STATE_DIRECTORY={}", decoy.display());
    let env = ["env", "NETCONVERGE_STATE_DIR=", decoy_env.as_str()];
    let out = ns.exec_output(&[&env[..], &[b.as_str(), "-c", c, "converge"]].concat());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(saved(&ns), before, "adoption changed the kernel");
    let out = ns.exec_output(&[&env[..], &[b.as_str(), "-c", c, "converge", "--check"]].concat());
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("in sync"),
        "{out:?}"
    );
    // (the kernel objects' record, kernel-record.json, lives beside it)
    let records: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("nat-adopted-"))
        .collect();
    assert_eq!(records.len(), 1, "one adoption record for this namespace");
    assert!(
        state.join("kernel-record.json").exists(),
        "kernel record beside it"
    );
    assert!(
        !decoy.exists(),
        "a record went to STATE_DIRECTORY, not state_dir"
    );
}

variants!(flannel_chain_adopted_through_the_binary:
    flannel_chain_adopted_through_the_binary_nft => "nft",
    flannel_chain_adopted_through_the_binary_legacy => "legacy",
);
