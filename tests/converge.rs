//! `netconverge converge` / `converge --check` on a real kernel, each test in
//! its own network namespace, results read back with iproute2 `-j`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};

use common::fixtures::{self, write_config};
use common::{Netns, Stack, UNDERLAY, code, stderr, stdout, stdout_stderr};
use netconverge::model::Mac;
use serde_json::Value;

const NODE: &str = "node-a";

/// `dir/netconverge.toml`.
fn config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    write_config(dir.path(), "netconverge.toml", text)
}

/// A node with the IPv4 underlay only (192.0.2.1/24), and `text` as its
/// config in a temp dir.
fn setup(tag: &str, text: &str) -> (Netns, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, text);
    (Netns::node(tag, Stack::V4), dir, cfg)
}

/// `flannel.1` on the underlay with `peers` /24 peers from 198.18.2.0/24 on.
fn ipv4_config(peers: usize) -> String {
    fixtures::node_name(NODE) + &fixtures::vxlan_v4(UNDERLAY) + &fixtures::peers_v4_24(peers)
}

/// Run the binary; exit code and all it printed (a panic fails the test).
fn run(ns: &Netns, cfg: &Path, args: &[&str]) -> (i32, String) {
    let out = ns.netconverge(cfg, args);
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "panic: {err}");
    (code(&out), stdout_stderr(&out))
}

fn converge(ns: &Netns, cfg: &Path) -> (i32, String) {
    run(ns, cfg, &["converge"])
}

fn check(ns: &Netns, cfg: &Path) -> (i32, String) {
    run(ns, cfg, &["converge", "--check"])
}

/// `--check` exits 1 (drift) and names `want`; returns all it printed.
#[track_caller]
fn check_finds(ns: &Netns, cfg: &Path, what: &str, want: &str) -> String {
    let (c, out) = check(ns, cfg);
    assert_eq!(c, 1, "{what}: --check must exit 1: {out}");
    assert!(
        out.contains(want),
        "{what}: --check must name `{want}`: {out}"
    );
    out
}

fn routes(ns: &Netns) -> Vec<Value> {
    ns.ip_list(&["route", "show", "dev", "flannel.1"])
}

/// Everything converge must have built for `ipv4_config(peers)`.
fn assert_full_state(ns: &Netns, peers: usize) {
    let l = ns.link("flannel.1").expect("flannel.1 exists");
    let info = &l["linkinfo"]["info_data"];
    assert_eq!(l["linkinfo"]["info_kind"], "vxlan", "{l}");
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["local"], "192.0.2.1");
    assert_eq!(info["link"], "nc-under");
    assert_eq!(info["learning"], false);
    assert_eq!(l["mtu"], 1450);
    assert_eq!(l["address"], Mac::derive(NODE, "flannel.1").to_string());
    assert!(
        l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{l}"
    );

    let addrs = ns.ip_json(&["-4", "addr", "show", "dev", "flannel.1"]);
    let a = &addrs[0]["addr_info"];
    assert_eq!(a.as_array().unwrap().len(), 1, "{addrs}");
    assert_eq!(a[0]["local"], "198.18.1.0");
    assert_eq!(a[0]["prefixlen"], 32);

    let n = ns.ip_list(&["neigh", "show", "dev", "flannel.1"]);
    let f = ns.bridge_list(&["fdb", "show", "dev", "flannel.1"]);
    let r = routes(ns);
    assert_eq!(
        n.iter().filter(|x| x["state"][0] == "PERMANENT").count(),
        peers,
        "{n:?}"
    );
    assert_eq!(f.len(), peers, "{f:?}");
    assert_eq!(r.len(), peers, "{r:?}");
    for i in 0..peers {
        let k = i + 2;
        let gw = format!("198.18.{k}.0");
        let mac = format!("02:00:00:00:00:{k:02x}");
        assert!(
            n.iter()
                .any(|x| x["dst"] == gw.as_str() && x["lladdr"] == mac.as_str()),
            "neigh {gw}: {n:?}"
        );
        let fe = f
            .iter()
            .find(|x| x["mac"] == mac.as_str())
            .unwrap_or_else(|| panic!("fdb {mac}: {f:?}"));
        assert_eq!(fe["dst"], format!("192.0.2.{k}"));
        assert_eq!(fe["state"], "permanent");
        assert!(
            fe["flags"].as_array().unwrap().iter().any(|x| x == "self"),
            "{fe}"
        );
        let re = r
            .iter()
            .find(|x| x["dst"] == format!("198.18.{k}.0/24"))
            .unwrap_or_else(|| panic!("route {k}: {r:?}"));
        assert_eq!(re["gateway"], gw.as_str());
        assert_eq!(re["protocol"], "199");
        assert!(
            re["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "onlink"),
            "{re}"
        );
    }
}

#[test]
fn converge_from_empty_then_nothing_to_do() {
    let (ns, _dir, cfg) = setup("conv", &ipv4_config(3));
    check_finds(&ns, &cfg, "empty node", "+ vxlan flannel.1");
    assert!(
        ns.link("flannel.1").is_none(),
        "--check must not change anything"
    );

    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 0, "{out}");
    assert_full_state(&ns, 3);

    let (c, out) = check(&ns, &cfg);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("in sync"), "{out}");
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("converged: 0 change(s) applied"),
        "second converge must change nothing: {out}"
    );
    let ifindex = ns.link("flannel.1").unwrap()["ifindex"].clone();
    converge(&ns, &cfg);
    assert_eq!(
        ns.link("flannel.1").unwrap()["ifindex"],
        ifindex,
        "device must not be recreated"
    );
}

/// Each kind of drift made by hand: `--check` exits 1 naming it, `converge` repairs it.
#[test]
fn every_kind_of_drift_is_found_and_repaired() {
    let (ns, _dir, cfg) = setup("drift", &ipv4_config(2));
    assert_eq!(converge(&ns, &cfg).0, 0);

    let cases: &[(&str, &[&str], &str)] = &[
        (
            "route deleted",
            &["route", "del", "198.18.2.0/24"],
            "route 198.18.2.0/24",
        ),
        (
            // Still ours (our protocol): a route another protocol put there
            // is a conflict, never repaired (tests/ownership.rs).
            "route edited",
            &[
                "route",
                "replace",
                "198.18.3.0/24",
                "dev",
                "flannel.1",
                "proto",
                "199",
            ],
            "route 198.18.3.0/24",
        ),
        (
            "neighbour deleted",
            &["neigh", "del", "198.18.2.0", "dev", "flannel.1"],
            "neighbor 198.18.2.0",
        ),
        (
            "neighbour lladdr changed",
            &[
                "neigh",
                "replace",
                "198.18.3.0",
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
            "neighbor 198.18.3.0",
        ),
        (
            "stale neighbour added",
            &[
                "neigh",
                "add",
                "198.18.9.0",
                "lladdr",
                "02:00:00:00:00:09",
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
            "neighbor 198.18.9.0",
        ),
        (
            "address deleted",
            &["addr", "del", "198.18.1.0/32", "dev", "flannel.1"],
            "address 198.18.1.0/32",
        ),
        (
            "stale address",
            &["addr", "add", "198.18.77.1/24", "dev", "flannel.1"],
            "address 198.18.77.1/24",
        ),
        (
            "mtu changed",
            &["link", "set", "flannel.1", "mtu", "1400"],
            "vxlan flannel.1",
        ),
        (
            "device down",
            &["link", "set", "flannel.1", "down"],
            "vxlan flannel.1",
        ),
        (
            "mac changed",
            &["link", "set", "flannel.1", "address", "02:de:ad:be:ef:01"],
            "vxlan flannel.1",
        ),
        (
            "device deleted",
            &["link", "del", "flannel.1"],
            "vxlan flannel.1",
        ),
    ];
    for (what, cmd, expect) in cases {
        ns.ip(cmd);
        check_finds(&ns, &cfg, what, expect);
        let (c, out) = converge(&ns, &cfg);
        assert_eq!(c, 0, "{what}: {out}");
        assert_full_state(&ns, 2);
        assert_eq!(check(&ns, &cfg).0, 0, "{what}: still drifting after repair");
    }

    // FDB entries through the bridge tool
    let mac = "02:00:00:00:00:02";
    ns.fdb_del("flannel.1", mac, "192.0.2.2");
    check_finds(&ns, &cfg, "fdb deleted", &format!("fdb {mac}"));
    ns.bridge(&[
        "fdb",
        "append",
        "02:00:00:00:00:42",
        "dev",
        "flannel.1",
        "dst",
        "192.0.2.42",
        "self",
        "permanent",
    ]);
    check_finds(&ns, &cfg, "fdb added", "fdb 02:00:00:00:00:42");
    assert_eq!(converge(&ns, &cfg).0, 0);
    assert_full_state(&ns, 2);
}

#[test]
fn immutable_attribute_change_recreates_the_device() {
    let (ns, dir, cfg) = setup("immut", &ipv4_config(1));
    assert_eq!(converge(&ns, &cfg).0, 0);
    let cfg = config(&dir, &ipv4_config(1).replace("vni = 1", "vni = 7"));
    check_finds(&ns, &cfg, "vni changed", "vni 1 → 7");
    assert_eq!(converge(&ns, &cfg).0, 0);
    let l = ns.link("flannel.1").unwrap();
    assert_eq!(l["linkinfo"]["info_data"]["id"], 7);
    assert_eq!(
        routes(&ns).len(),
        1,
        "dependents replayed on the new device"
    );
}

#[test]
fn foreign_routes_devices_and_neighbours_are_untouched() {
    let (ns, _dir, cfg) = setup("foreign", &ipv4_config(2));
    ns.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "other0"]);
    ns.ip(&["link", "set", "other0", "up"]);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "198.51.100.254",
        "dev",
        "other0",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "198.18.200.0/24",
        "dev",
        "other0",
        "table",
        "100",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "198.51.100.7",
        "lladdr",
        "02:00:00:00:07:07",
        "dev",
        "other0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "link",
        "add",
        "vx-user",
        "type",
        "vxlan",
        "id",
        "99",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
    ]);
    let snapshot = |ns: &Netns| {
        (
            (),
            ns.ip_json(&["route", "show", "table", "all", "dev", "other0"]),
            ns.ip_json(&["neigh", "show", "dev", "other0"]),
            ns.link("vx-user"),
            ns.link("other0"),
        )
    };
    let before = snapshot(&ns);
    assert_eq!(converge(&ns, &cfg).0, 0);
    assert_eq!(check(&ns, &cfg).0, 0);
    let after = snapshot(&ns);
    assert_eq!(before.1, after.1, "foreign routes changed");
    assert_eq!(before.2, after.2, "foreign neighbours changed");
    assert_eq!(before.3, after.3, "foreign vxlan changed");
    assert_eq!(before.4, after.4, "foreign link changed");
}

#[test]
fn route_with_our_marker_elsewhere_is_ours_but_others_are_not() {
    let (ns, _dir, cfg) = setup("marker", &ipv4_config(1));
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/25",
        "dev",
        "nc-under",
        "proto",
        "199",
    ]);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.128/25",
        "dev",
        "nc-under",
        "proto",
        "static",
    ]);
    let out = check_finds(&ns, &cfg, "marked route", "- route 203.0.113.0/25");
    assert!(!out.contains("203.0.113.128/25"), "{out}");
    assert_eq!(converge(&ns, &cfg).0, 0);
    let r = ns.ip_list(&["route", "show", "dev", "nc-under"]);
    let dsts: Vec<&str> = r.iter().filter_map(|x| x["dst"].as_str()).collect();
    assert!(!dsts.contains(&"203.0.113.0/25"), "{dsts:?}");
    assert!(dsts.contains(&"203.0.113.128/25"), "{dsts:?}");
}

#[test]
fn underlay_absent_converges_the_rest_and_exits_1() {
    let mut text = ipv4_config(1);
    text += r#"
[[vxlan]]
name = "vx-missing"
vni = 2
underlay = "nc-gone"

[[peer]]
dev = "vx-missing"
subnet = "198.18.100.0/24"
vtep_ip = "192.0.2.100"
vtep_mac = "02:00:00:00:01:00"
"#;
    let (ns, _dir, cfg) = setup("absent", &text);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("underlay nc-gone absent"), "{out}");
    assert_full_state(&ns, 1);
    assert!(ns.link("vx-missing").is_none());
}

#[test]
fn ipv4_only_underlay_with_ipv6_vxlan_is_blocked_without_panic() {
    let text = ipv4_config(1) + &fixtures::vxlan_v6(UNDERLAY);
    let (ns, _dir, cfg) = setup("v4only", &text);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("no global ipv6 address"), "{out}");
    assert_full_state(&ns, 1);
    // the address appears later: the next converge completes the job
    ns.add_underlay_addrs(Stack::V6);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 0, "{out}");
    let l = ns.link("flannel-v6.1").unwrap();
    assert_eq!(l["linkinfo"]["info_data"]["local6"], "2001:db8::1");
    assert_eq!(l["mtu"], 1430, "IPv6 underlay overhead is 70");
}

#[test]
fn underlay_deleted_and_recreated_is_restored_with_the_same_mac() {
    let (ns, _dir, cfg) = setup("recreate", &ipv4_config(3));
    assert_eq!(converge(&ns, &cfg).0, 0);
    let mac = ns.link("flannel.1").unwrap()["address"].clone();
    ns.ip(&["link", "del", "nc-under"]);
    assert!(
        ns.link("flannel.1").is_none(),
        "the kernel deletes the bound VXLAN"
    );
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 1, "underlay absent: {out}");
    ns.add_underlay();
    ns.add_underlay_addrs(Stack::V4);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 0, "{out}");
    assert_full_state(&ns, 3);
    assert_eq!(ns.link("flannel.1").unwrap()["address"], mac);
}

#[test]
fn invalid_config_exits_2_and_applies_nothing() {
    let text = ipv4_config(1)
        .replace("vni = 1", "vni = 0")
        .replace("underlay =", "underlya =");
    let (ns, _dir, cfg) = setup("invalid", &text);
    let out = ns.netconverge(&cfg, &["converge"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("netconverge.toml:"),
        "errors carry file:line:col: {err}"
    );
    assert!(err.contains("vni"), "{err}");
    assert!(err.contains("underlay"), "suggestion expected: {err}");
    assert!(ns.link("flannel.1").is_none(), "nothing may be applied");
}

#[test]
fn check_json_and_show_are_machine_readable() {
    let (ns, _dir, cfg) = setup("json", &ipv4_config(2));
    let out = ns.netconverge(&cfg, &["converge", "--check", "--format", "json"]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["in_sync"], false);
    assert!(
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "add" && c["object"] == "vxlan flannel.1")
    );
    assert_eq!(converge(&ns, &cfg).0, 0);
    let out = ns.netconverge(&cfg, &["show", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["vxlan"][0]["name"], "flannel.1");
    assert_eq!(v["route"].as_array().unwrap().len(), 2);
    let out = ns.netconverge(&cfg, &["show"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let t: toml::Table = stdout(&out).parse().unwrap();
    assert_eq!(t["vxlan"][0]["mtu"].as_integer(), Some(1450));
}

#[test]
fn cleanup_removes_only_what_netconverge_owns() {
    let (ns, _dir, cfg) = setup("cleanup", &ipv4_config(2));
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        "nc-under",
        "proto",
        "static",
    ]);
    assert_eq!(converge(&ns, &cfg).0, 0);
    let out = ns.netconverge(&cfg, &["cleanup"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(ns.link("flannel.1").is_none());
    assert!(ns.link("nc-under").is_some());
    let r = ns.ip_list(&["route", "show", "dev", "nc-under"]);
    assert!(r.iter().any(|x| x["dst"] == "203.0.113.0/24"), "{r:?}");
}
