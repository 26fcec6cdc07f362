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
#[path = "common/rules_watch.rs"]
mod rules_watch;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Netns, code, stdout};
use rules_watch::Watch;
use serde_json::Value;

const TABLE: &str = "netconverge";
const CHAIN: &str = "NETCONVERGE-POSTRTG";
const LONG: Duration = Duration::from_secs(30);

/// The no-gap tests need the CPU (the watcher must reach 200 Hz on a
/// 2-core machine): they take this lock exclusively, the others share it.
static CPU: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(|e| e.into_inner())
}

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

/// A node: the underlay veth with its address, nothing else.
fn node(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.ip(&[
        "link",
        "add",
        "nc-under",
        "type",
        "veth",
        "peer",
        "name",
        "nc-under-p",
    ]);
    ns.ip(&["link", "set", "nc-under", "up"]);
    ns.ip(&["link", "set", "nc-under-p", "up"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "nc-under"]);
    ns
}

/// A dual-stack NAT config (one IPv4 VXLAN device with `peers` peers; the
/// networks come from `[lease]`), written as `dir/<name>.toml`.
fn config(dir: &Path, name: &str, backend: Backend, mark: &str, peers: usize) -> PathBuf {
    let mut s = String::from(
        "node_name = \"nat-node\"\n\n\
         [[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"nc-under\"\n\n\
         [[address]]\ndev = \"flannel.1\"\ncidr = \"198.18.1.0/32\"\n",
    );
    for i in 0..peers {
        // /26 peer subnets in 198.19.0.0/16 (inside the /15 cluster network)
        s += &format!(
            "\n[[peer]]\ndev = \"flannel.1\"\nsubnet = \"198.19.{}.{}/26\"\nvtep_ip = \"192.0.2.{}\"\nvtep_mac = \"02:00:00:00:{:02x}:{:02x}\"\n",
            i / 4,
            (i % 4) * 64,
            i % 250 + 2,
            i >> 8,
            i & 0xff
        );
    }
    s += &format!(
        "\n[nat]\nbackend = \"{}\"\nmark = \"{mark}\"\n\n\
         [lease]\nnetwork = \"198.18.0.0/15\"\nsubnet = \"198.18.1.0/24\"\n\
         ipv6_network = \"fd00:42::/56\"\nipv6_subnet = \"fd00:42:0:1::/64\"\n\
         path = \"{}\"\nstate_dir = \"{}\"\n\n\
         [daemon]\nnetworkmanager = \"off\"\nresync_secs = 3600\ndebounce_ms = 10\n",
        backend.word(),
        dir.join("run/subnet.env").display(),
        dir.join("state").display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

fn run(ns: &Netns, cfg: &Path, args: &[&str]) -> Output {
    ns.netconverge(cfg, args)
}

fn assert_code(out: &Output, want: i32, what: &str) {
    assert_eq!(
        code(out),
        want,
        "{what}: stdout:\n{}\nstderr:\n{}",
        stdout(out),
        common::stderr(out)
    );
}

// ------------------------------------------------- independent expectations --

const NFT_V4: &str = r#"table ip netconverge {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "netconverge masq"
		ip saddr 198.18.1.0/24 ip daddr 198.18.0.0/15 return comment "netconverge masq"
		ip saddr 198.18.0.0/15 ip daddr 198.18.1.0/24 return comment "netconverge masq"
		ip saddr != 198.18.0.0/15 ip daddr 198.18.1.0/24 return comment "netconverge masq"
		ip saddr 198.18.0.0/15 ip daddr != 224.0.0.0/4 masquerade fully-random comment "netconverge masq"
		ip saddr != 198.18.0.0/15 ip daddr 198.18.0.0/15 masquerade fully-random comment "netconverge masq"
	}
}
"#;

const NFT_V6: &str = r#"table ip6 netconverge {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "netconverge masq"
		ip6 saddr fd00:42:0:1::/64 ip6 daddr fd00:42::/56 return comment "netconverge masq"
		ip6 saddr fd00:42::/56 ip6 daddr fd00:42:0:1::/64 return comment "netconverge masq"
		ip6 saddr != fd00:42::/56 ip6 daddr fd00:42:0:1::/64 return comment "netconverge masq"
		ip6 saddr fd00:42::/56 ip6 daddr != ff00::/8 masquerade fully-random comment "netconverge masq"
		ip6 saddr != fd00:42::/56 ip6 daddr fd00:42::/56 masquerade fully-random comment "netconverge masq"
	}
}
"#;

const IPT_V4: &str = r#":NETCONVERGE-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "netconverge masq" -j NETCONVERGE-POSTRTG
-A NETCONVERGE-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG -s 198.18.1.0/24 -d 198.18.0.0/15 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG -s 198.18.0.0/15 -d 198.18.1.0/24 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG ! -s 198.18.0.0/15 -d 198.18.1.0/24 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG -s 198.18.0.0/15 ! -d 224.0.0.0/4 -m comment --comment "netconverge masq" -j MASQUERADE --random-fully
-A NETCONVERGE-POSTRTG ! -s 198.18.0.0/15 -d 198.18.0.0/15 -m comment --comment "netconverge masq" -j MASQUERADE --random-fully
"#;

const IPT_V6: &str = r#":NETCONVERGE-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "netconverge masq" -j NETCONVERGE-POSTRTG
-A NETCONVERGE-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG -s fd00:42:0:1::/64 -d fd00:42::/56 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG -s fd00:42::/56 -d fd00:42:0:1::/64 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG ! -s fd00:42::/56 -d fd00:42:0:1::/64 -m comment --comment "netconverge masq" -j RETURN
-A NETCONVERGE-POSTRTG -s fd00:42::/56 ! -d ff00::/8 -m comment --comment "netconverge masq" -j MASQUERADE --random-fully
-A NETCONVERGE-POSTRTG ! -s fd00:42::/56 -d fd00:42::/56 -m comment --comment "netconverge masq" -j MASQUERADE --random-fully
"#;

// --------------------------------------------------------------- readers --

/// `nft list table <family> netconverge`, `None` when absent.
fn nft_table(ns: &Netns, family: &str) -> Option<String> {
    let out = ns.exec_output(&["nft", "list", "table", family, TABLE]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rules of our chain from `nft -j list ruleset`: (handle, JSON expr).
fn nft_rules(ns: &Netns, family: &str) -> Vec<(u64, Value)> {
    let v: Value = serde_json::from_str(&ns.exec(&["nft", "-j", "list", "ruleset"])).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["family"] == family && r["table"] == TABLE && r["chain"] == "postrouting")
        .map(|r| (r["handle"].as_u64().unwrap(), r["expr"].clone()))
        .collect()
}

fn save_tool(family: &str) -> &'static str {
    if family == "ipv4" {
        "iptables-save"
    } else {
        "ip6tables-save"
    }
}

fn ipt_tool(family: &str) -> &'static str {
    if family == "ipv4" {
        "iptables"
    } else {
        "ip6tables"
    }
}

/// Our lines of `iptables-save -t nat` (chain declaration, jump, rules).
fn ipt_ours(ns: &Netns, family: &str) -> String {
    ns.exec(&[save_tool(family), "-t", "nat"])
        .lines()
        .filter(|l| l.contains(CHAIN))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Every line of `iptables-save -c` (all tables, with counters) that is
/// not ours and not a comment (the comments carry a timestamp).
fn ipt_foreign(ns: &Netns, family: &str) -> String {
    ns.exec(&[save_tool(family), "-c"])
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains(CHAIN))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn ipt(ns: &Netns, family: &str, args: &[&str]) {
    let mut full = vec![ipt_tool(family), "-w", "-t", "nat"];
    full.extend_from_slice(args);
    ns.exec(&full);
}

fn nft_file(ns: &Netns, text: &str) {
    let path = std::env::temp_dir().join(format!(
        "nct-nat-e2e-{}-{}.nft",
        std::process::id(),
        ns.name
    ));
    std::fs::write(&path, text).unwrap();
    ns.exec(&["nft", "-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
}

/// The `--check` text must report exactly one NAT change: `want` in it.
fn check_finds(ns: &Netns, cfg: &Path, want: &[&str]) -> String {
    let out = run(ns, cfg, &["converge", "--check"]);
    assert_code(&out, 1, "check after a hand edit");
    let text = stdout(&out);
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

fn converge_ok(ns: &Netns, cfg: &Path) {
    let out = run(ns, cfg, &["converge"]);
    assert_code(&out, 0, "converge");
    let out = run(ns, cfg, &["converge", "--check"]);
    assert_code(&out, 0, "check after converge");
    assert!(stdout(&out).contains("in sync"), "{}", stdout(&out));
}

// ------------------------------------------------------- converge/check --

#[test]
fn nftables_rules_installed_and_hand_edits_found_by_check_and_repaired() {
    let _cpu = shared();
    let ns = node("nat-nft");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "node", Backend::Nft, "0x4000/0x4000", 2);
    // nothing there yet: --check says so, in JSON too
    let out = run(&ns, &cfg, &["converge", "--check", "--format", "json"]);
    assert_code(&out, 1, "check before converge");
    let j: Value = serde_json::from_str(&stdout(&out)).unwrap();
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
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(NFT_V4));
    assert_eq!(nft_table(&ns, "ip6").as_deref(), Some(NFT_V6));
    let handles = nft_rules(&ns, "ip");
    assert_eq!(handles.len(), 6);

    // 1. a masquerade rule deleted by hand
    let last = handles.last().unwrap().0.to_string();
    ns.exec(&[
        "nft",
        "delete",
        "rule",
        "ip",
        TABLE,
        "postrouting",
        "handle",
        &last,
    ]);
    check_finds(
        &ns,
        &cfg,
        &["~ nat ipv4 (nftables table ip netconverge): missing rule \
             `ip saddr != 198.18.0.0/15 ip daddr 198.18.0.0/15 masquerade fully-random comment \"netconverge masq\"`"],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(NFT_V4));

    // 2. a rule appended by hand to our IPv6 chain
    ns.exec(&[
        "nft",
        "add",
        "rule",
        "ip6",
        TABLE,
        "postrouting",
        "ip6",
        "saddr",
        "2001:db8:ff::/48",
        "accept",
    ]);
    check_finds(
        &ns,
        &cfg,
        &[
            "~ nat ipv6 (nftables table ip6 netconverge): extra rule",
            "2001:db8:ff::",
        ],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(nft_table(&ns, "ip6").as_deref(), Some(NFT_V6));

    // 3. the mark rule edited in place (another kube-proxy mark)
    let first = nft_rules(&ns, "ip")[0].0.to_string();
    ns.exec(&[
        "nft",
        "replace",
        "rule",
        "ip",
        TABLE,
        "postrouting",
        "handle",
        &first,
        "meta",
        "mark",
        "and",
        "0x8000",
        "==",
        "0x8000",
        "return",
        "comment",
        "\"netconverge masq\"",
    ]);
    check_finds(
        &ns,
        &cfg,
        &[
            "~ nat ipv4 (nftables table ip netconverge): rule 1 edited",
            "0x00008000",
        ],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(NFT_V4));

    // 4. the whole table deleted
    ns.exec(&["nft", "delete", "table", "ip", TABLE]);
    check_finds(
        &ns,
        &cfg,
        &["+ nat ipv4 (nftables table ip netconverge): missing"],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(nft_table(&ns, "ip").as_deref(), Some(NFT_V4));
    assert_eq!(nft_table(&ns, "ip6").as_deref(), Some(NFT_V6));
}

#[test]
fn iptables_rules_installed_and_hand_edits_found_by_check_and_repaired() {
    let _cpu = shared();
    let ns = node("nat-ipt");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "node", Backend::Ipt, "0x4000/0x4000", 2);
    converge_ok(&ns, &cfg);
    assert_eq!(ipt_ours(&ns, "ipv4"), IPT_V4);
    assert_eq!(ipt_ours(&ns, "ipv6"), IPT_V6);
    // the iptables backend creates no nftables table of its own
    assert!(nft_table(&ns, "ip").is_none());

    // 1. a MASQUERADE rule deleted by hand
    ipt(&ns, "ipv4", &["-D", CHAIN, "6"]);
    check_finds(
        &ns,
        &cfg,
        &[
            "~ nat ipv4 (iptables chain NETCONVERGE-POSTRTG): missing rule \
             `-A NETCONVERGE-POSTRTG ! -s 198.18.0.0/15 -d 198.18.0.0/15 -m comment --comment \"netconverge masq\" -j MASQUERADE --random-fully`",
        ],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(ipt_ours(&ns, "ipv4"), IPT_V4);

    // 2. the jump from POSTROUTING deleted
    ipt(
        &ns,
        "ipv4",
        &[
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "netconverge masq",
            "-j",
            CHAIN,
        ],
    );
    check_finds(
        &ns,
        &cfg,
        &[
            "nat ipv4 (iptables chain NETCONVERGE-POSTRTG)",
            "POSTROUTING",
        ],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(ipt_ours(&ns, "ipv4"), IPT_V4);

    // 3. a rule inserted by hand at the top of our IPv6 chain
    ipt(
        &ns,
        "ipv6",
        &["-I", CHAIN, "1", "-s", "2001:db8:ff::/48", "-j", "RETURN"],
    );
    check_finds(
        &ns,
        &cfg,
        &[
            "~ nat ipv6 (ip6tables chain NETCONVERGE-POSTRTG): extra rule `-A NETCONVERGE-POSTRTG -s 2001:db8:ff::/48 -j RETURN`",
        ],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(ipt_ours(&ns, "ipv6"), IPT_V6);

    // 4. the chain flushed
    ipt(&ns, "ipv4", &["-F", CHAIN]);
    check_finds(
        &ns,
        &cfg,
        &[
            "nat ipv4 (iptables chain NETCONVERGE-POSTRTG)",
            "missing rule",
        ],
    );
    converge_ok(&ns, &cfg);
    assert_eq!(ipt_ours(&ns, "ipv4"), IPT_V4);
}

// -------------------------------------------------------------- cleanup --

/// Foreign NAT state both backends must leave alone: an nftables table
/// with a masquerade rule and an iptables chain (both families) with a
/// MASQUERADE rule and a jump from POSTROUTING.
fn add_foreign(ns: &Netns) {
    nft_file(
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
        ipt_foreign(ns, "ipv4"),
        ipt_foreign(ns, "ipv6"),
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
    match backend {
        Backend::Nft => [
            nft_table(ns, "ip").is_some(),
            nft_table(ns, "ip6").is_some(),
        ],
        Backend::Ipt => [
            !ipt_ours(ns, "ipv4").is_empty(),
            !ipt_ours(ns, "ipv6").is_empty(),
        ],
    }
}

fn cleanup_removes_only_ours(backend: Backend) {
    let _cpu = shared();
    let ns = node(&format!("nat-clean-{}", backend.word()));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "node", backend, "0x4000/0x4000", 2);
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
            "- nftables table ip netconverge: cleanup",
            "- nftables table ip6 netconverge: cleanup",
        ],
        Backend::Ipt => vec![
            "- iptables chain NETCONVERGE-POSTRTG: cleanup",
            "- 1 jump(s) from ipv4 POSTROUTING to NETCONVERGE-POSTRTG: cleanup",
            "- ip6tables chain NETCONVERGE-POSTRTG: cleanup",
            "- 1 jump(s) from ipv6 POSTROUTING to NETCONVERGE-POSTRTG: cleanup",
        ],
    };

    // --check lists exactly what cleanup will remove, and removes nothing
    let out = run(&ns, &cfg, &["cleanup", "--check"]);
    assert_code(&out, 0, "cleanup --check");
    let text = stdout(&out);
    assert!(text.contains("- vxlan flannel.1: cleanup"), "{text}");
    for l in &nat_lines {
        assert!(
            text.contains(l),
            "cleanup --check does not list {l:?}:\n{text}"
        );
    }
    assert_eq!(ours_present(&ns, backend), [true, true]);
    assert!(
        ns.ip_json(&["link", "show", "dev", "flannel.1"])
            .as_array()
            .unwrap()
            .len()
            == 1
    );

    let out = run(&ns, &cfg, &["cleanup"]);
    assert_code(&out, 0, "cleanup");
    let text = stdout(&out);
    for l in &nat_lines {
        assert!(text.contains(l), "want {l:?} in:\n{text}");
    }
    assert_eq!(ours_present(&ns, backend), [false, false]);
    assert_eq!(ipt_ours(&ns, "ipv4"), "");
    assert_eq!(ipt_ours(&ns, "ipv6"), "");
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("ip netconverge\n") && !tables.contains("ip6 netconverge\n"),
        "{tables}"
    );
    let links = ns.ip_json(&["link", "show"]);
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"] == "flannel.1"),
        "{links}"
    );
    assert_eq!(
        foreign_snapshot(&ns),
        before,
        "cleanup touched foreign rules"
    );

    // a second cleanup has nothing left to remove
    let out = run(&ns, &cfg, &["cleanup"]);
    assert_code(&out, 0, "second cleanup");
    assert!(!stdout(&out).contains("cleanup"), "{}", stdout(&out));
    assert_eq!(foreign_snapshot(&ns), before);
}

#[test]
fn cleanup_removes_only_our_nftables_tables() {
    cleanup_removes_only_ours(Backend::Nft);
}

#[test]
fn cleanup_removes_only_our_iptables_chains() {
    cleanup_removes_only_ours(Backend::Ipt);
}

// --------------------------------------------------- no gap, lifecycle --

/// Count of masquerade rules in our chain of each family, from
/// `nft -j list ruleset` output.
fn nft_masquerades(v: &Value) -> [usize; 2] {
    let count = |family: &str| {
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
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
    ns.ip_json(&["route", "show", "proto", "199"])
        .as_array()
        .unwrap()
        .len()
}

const PEERS: usize = 500;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    /// SIGKILL this fraction of a full start-to-READY into the run.
    Kill(f64),
    /// SIGKILL the daemon and its NAT tool together (as systemd kills the
    /// whole cgroup) the moment the tool applying a NAT transaction runs.
    KillInNatApply,
}

/// A child of `parent` that is applying a NAT transaction (`nft -j -f -`,
/// `ip[6]tables-restore`): its PID and command line. Reads the children
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
            let applying =
                (cmd.starts_with("nft ") && cmd.contains(" -f ")) || cmd.contains("tables-restore");
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
    let _cpu = exclusive();
    let ns = node(&format!("nat-life-{}", backend.word()));
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
    let w = watcher(&ns, backend);
    match backend {
        Backend::Nft => ns.exec(&["nft", "flush", "chain", "ip", TABLE, "postrouting"]),
        Backend::Ipt => ns.exec(&["iptables", "-w", "-t", "nat", "-F", CHAIN]),
    };
    std::thread::sleep(Duration::from_millis(50));
    converge_ok(&ns, &cfgs[0].0);
    let control = w.stop();
    eprintln!("{backend:?} control: {control:?} ({:.0} Hz)", control.hz());
    assert!(
        control.bad > 0,
        "the watcher missed a 50 ms gap: {control:?}"
    );

    let rounds = [
        Stop::Term,
        Stop::Kill(0.2),
        Stop::Kill(0.5),
        Stop::Term,
        Stop::Kill(0.7),
        Stop::Kill(0.85),
        Stop::Term,
        Stop::Kill(0.95),
        Stop::Kill(0.35),
        Stop::Kill(0.6),
        Stop::Term,
        Stop::Kill(0.05),
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
            Stop::Kill(f) => {
                assert!(!full.is_zero(), "a Term round must come first");
                std::thread::sleep(full.mul_f64(f).saturating_sub(start.elapsed()));
                d.kill9();
                let routes = peer_routes(&ns);
                let nat = live_mark(&ns, backend);
                let dev = ns
                    .ip_json(&["link", "show"])
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["ifname"] == "flannel.1");
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
    let report = w.stop();
    eprintln!("{backend:?} lifecycle:\n  {}", log.join("\n  "));
    eprintln!("{backend:?}: {report:?} ({:.0} Hz)", report.hz());
    report.assert_no_gap(200.0);
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
    let out = run(&ns, &cfgs[0].0, &["converge", "--check"]);
    assert_code(&out, 0, "check after the lifecycle");
    assert_eq!(live_mark(&ns, backend), Some("0x4000"));
}

#[test]
fn no_gap_across_daemon_stop_kill_restart_nftables() {
    no_gap_across_the_daemon_lifecycle(Backend::Nft);
}

#[test]
fn no_gap_across_daemon_stop_kill_restart_iptables() {
    no_gap_across_the_daemon_lifecycle(Backend::Ipt);
}
