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

use common::{Netns, code, stderr, stdout};
use netconverge::model::Mac;
use serde_json::Value;

const NODE: &str = "node-a";

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("netconverge.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A namespace with a veth underlay `nc-under` (192.0.2.1/24, 2001:db8::1/64).
fn node(tag: &str, v6: bool) -> Netns {
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
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "nc-under"]);
    if v6 {
        ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "nc-under", "nodad"]);
    }
    ns.ip(&["link", "set", "nc-under", "up"]);
    ns.ip(&["link", "set", "nc-under-p", "up"]);
    ns
}

fn ipv4_config(peers: usize) -> String {
    let mut s = format!(
        r#"node_name = "{NODE}"

[[vxlan]]
name = "flannel.1"
vni = 1
underlay = "nc-under"

[[address]]
dev = "flannel.1"
cidr = "198.18.1.0/32"
"#
    );
    for i in 0..peers {
        s += &format!(
            r#"
[[peer]]
dev = "flannel.1"
subnet = "198.18.{n}.0/24"
vtep_ip = "192.0.2.{n}"
vtep_mac = "02:00:00:00:00:{n:02x}"
"#,
            n = i + 2
        );
    }
    s
}

fn converge(ns: &Netns, cfg: &Path) -> (i32, String) {
    let out = ns.netconverge(cfg, &["converge"]);
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "panic: {err}");
    (code(&out), format!("{}{}", stdout(&out), err))
}

fn check(ns: &Netns, cfg: &Path) -> (i32, String) {
    let out = ns.netconverge(cfg, &["converge", "--check"]);
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "panic: {err}");
    (code(&out), format!("{}{}", stdout(&out), err))
}

fn link(ns: &Netns, name: &str) -> Option<Value> {
    let all = ns.ip_json(&["-d", "link", "show"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == name)
        .cloned()
}

fn routes(ns: &Netns) -> Vec<Value> {
    ns.ip_json(&["route", "show", "dev", "flannel.1"])
        .as_array()
        .unwrap()
        .clone()
}

fn neighs(ns: &Netns) -> Vec<Value> {
    ns.ip_json(&["neigh", "show", "dev", "flannel.1"])
        .as_array()
        .unwrap()
        .clone()
}

fn fdbs(ns: &Netns) -> Vec<Value> {
    ns.bridge_json(&["fdb", "show", "dev", "flannel.1"])
        .as_array()
        .unwrap()
        .clone()
}

/// Everything converge must have built for `ipv4_config(peers)`.
fn assert_full_state(ns: &Netns, peers: usize) {
    let l = link(ns, "flannel.1").expect("flannel.1 exists");
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

    let n = neighs(ns);
    let f = fdbs(ns);
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
    let ns = node("conv", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(3));
    let (c, out) = check(&ns, &cfg);
    assert_eq!(c, 1, "--check on an empty node must report drift: {out}");
    assert!(out.contains("+ vxlan flannel.1"), "{out}");
    assert!(
        link(&ns, "flannel.1").is_none(),
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
    let ifindex = link(&ns, "flannel.1").unwrap()["ifindex"].clone();
    converge(&ns, &cfg);
    assert_eq!(
        link(&ns, "flannel.1").unwrap()["ifindex"],
        ifindex,
        "device must not be recreated"
    );
}

/// Each kind of drift made by hand: `--check` exits 1 naming it, `converge` repairs it.
#[test]
fn every_kind_of_drift_is_found_and_repaired() {
    let ns = node("drift", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(2));
    assert_eq!(converge(&ns, &cfg).0, 0);

    let cases: &[(&str, &[&str], &str)] = &[
        (
            "route deleted",
            &["route", "del", "198.18.2.0/24"],
            "route 198.18.2.0/24",
        ),
        (
            "route edited",
            &[
                "route",
                "replace",
                "198.18.3.0/24",
                "via",
                "198.18.3.0",
                "dev",
                "flannel.1",
                "onlink",
                "proto",
                "static",
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
        let (c, out) = check(&ns, &cfg);
        assert_eq!(c, 1, "{what}: --check must exit 1: {out}");
        assert!(
            out.contains(expect),
            "{what}: --check must name `{expect}`: {out}"
        );
        let (c, out) = converge(&ns, &cfg);
        assert_eq!(c, 0, "{what}: {out}");
        assert_full_state(&ns, 2);
        assert_eq!(check(&ns, &cfg).0, 0, "{what}: still drifting after repair");
    }

    // FDB entries through the bridge tool
    let mac = "02:00:00:00:00:02";
    common::sh(&[
        "bridge",
        "-n",
        &ns.name,
        "fdb",
        "del",
        mac,
        "dev",
        "flannel.1",
        "dst",
        "192.0.2.2",
        "self",
    ]);
    let (c, out) = check(&ns, &cfg);
    assert_eq!(c, 1);
    assert!(out.contains(&format!("fdb {mac}")), "{out}");
    common::sh(&[
        "bridge",
        "-n",
        &ns.name,
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
    let (c, out) = check(&ns, &cfg);
    assert_eq!(c, 1);
    assert!(out.contains("fdb 02:00:00:00:00:42"), "{out}");
    assert_eq!(converge(&ns, &cfg).0, 0);
    assert_full_state(&ns, 2);
}

#[test]
fn immutable_attribute_change_recreates_the_device() {
    let ns = node("immut", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(1));
    assert_eq!(converge(&ns, &cfg).0, 0);
    let cfg = write_config(&dir, &ipv4_config(1).replace("vni = 1", "vni = 7"));
    let (c, out) = check(&ns, &cfg);
    assert_eq!(c, 1);
    assert!(out.contains("vni 1 → 7"), "{out}");
    assert_eq!(converge(&ns, &cfg).0, 0);
    let l = link(&ns, "flannel.1").unwrap();
    assert_eq!(l["linkinfo"]["info_data"]["id"], 7);
    assert_eq!(
        routes(&ns).len(),
        1,
        "dependents replayed on the new device"
    );
}

#[test]
fn foreign_routes_devices_and_neighbours_are_untouched() {
    let ns = node("foreign", false);
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
            link(ns, "vx-user"),
            link(ns, "other0"),
        )
    };
    let before = snapshot(&ns);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(2));
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
    let ns = node("marker", false);
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
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(1));
    let (c, out) = check(&ns, &cfg);
    assert_eq!(c, 1);
    assert!(out.contains("- route 203.0.113.0/25"), "{out}");
    assert!(!out.contains("203.0.113.128/25"), "{out}");
    assert_eq!(converge(&ns, &cfg).0, 0);
    let r = ns.ip_json(&["route", "show", "dev", "nc-under"]);
    let dsts: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["dst"].as_str())
        .collect();
    assert!(!dsts.contains(&"203.0.113.0/25"), "{dsts:?}");
    assert!(dsts.contains(&"203.0.113.128/25"), "{dsts:?}");
}

#[test]
fn underlay_absent_converges_the_rest_and_exits_1() {
    let ns = node("absent", false);
    let dir = tempfile::tempdir().unwrap();
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
    let cfg = write_config(&dir, &text);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("underlay nc-gone absent"), "{out}");
    assert_full_state(&ns, 1);
    assert!(link(&ns, "vx-missing").is_none());
}

#[test]
fn ipv4_only_underlay_with_ipv6_vxlan_is_blocked_without_panic() {
    let ns = node("v4only", false);
    let dir = tempfile::tempdir().unwrap();
    let mut text = ipv4_config(1);
    text += r#"
[[vxlan]]
name = "flannel-v6.1"
vni = 1
underlay = "nc-under"
family = "ipv6"

[[address]]
dev = "flannel-v6.1"
cidr = "fd00:42:0:1::/128"
"#;
    let cfg = write_config(&dir, &text);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("no global ipv6 address"), "{out}");
    assert_full_state(&ns, 1);
    // the address appears later: the next converge completes the job
    ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "nc-under", "nodad"]);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 0, "{out}");
    let l = link(&ns, "flannel-v6.1").unwrap();
    assert_eq!(l["linkinfo"]["info_data"]["local6"], "2001:db8::1");
    assert_eq!(l["mtu"], 1430, "IPv6 underlay overhead is 70");
}

#[test]
fn underlay_deleted_and_recreated_is_restored_with_the_same_mac() {
    let ns = node("recreate", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(3));
    assert_eq!(converge(&ns, &cfg).0, 0);
    let mac = link(&ns, "flannel.1").unwrap()["address"].clone();
    ns.ip(&["link", "del", "nc-under"]);
    assert!(
        link(&ns, "flannel.1").is_none(),
        "the kernel deletes the bound VXLAN"
    );
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 1, "underlay absent: {out}");
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
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "nc-under"]);
    ns.ip(&["link", "set", "nc-under", "up"]);
    let (c, out) = converge(&ns, &cfg);
    assert_eq!(c, 0, "{out}");
    assert_full_state(&ns, 3);
    assert_eq!(link(&ns, "flannel.1").unwrap()["address"], mac);
}

#[test]
fn invalid_config_exits_2_and_applies_nothing() {
    let ns = node("invalid", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &ipv4_config(1)
            .replace("vni = 1", "vni = 0")
            .replace("underlay =", "underlya ="),
    );
    let out = ns.netconverge(&cfg, &["converge"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("netconverge.toml:"),
        "errors carry file:line:col: {err}"
    );
    assert!(err.contains("vni"), "{err}");
    assert!(err.contains("underlay"), "suggestion expected: {err}");
    assert!(link(&ns, "flannel.1").is_none(), "nothing may be applied");
}

#[test]
fn check_json_and_show_are_machine_readable() {
    let ns = node("json", false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(2));
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
    let ns = node("cleanup", false);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        "nc-under",
        "proto",
        "static",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &ipv4_config(2));
    assert_eq!(converge(&ns, &cfg).0, 0);
    let out = ns.netconverge(&cfg, &["cleanup"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(link(&ns, "flannel.1").is_none());
    assert!(link(&ns, "nc-under").is_some());
    let r = ns.ip_json(&["route", "show", "dev", "nc-under"]);
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .any(|x| x["dst"] == "203.0.113.0/24"),
        "{r}"
    );
}
