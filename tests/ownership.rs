//! Ownership on a real kernel (issue 11): netconverge never takes what it
//! did not create (foreign routes, addresses, devices survive converge and
//! cleanup byte for byte, each reported as a conflict) unless the file says
//! `adopt = true`, and it always removes what it created — after a rename,
//! a route protocol change or with an edited file. Every test runs in its
//! own namespaces (record in its own temp dir) and reads the kernel back
//! with `ip -j` / `bridge -j`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::fixtures::{self, write_config};
use common::{Netns, Stack, UNDERLAY, code, stderr, stdout_stderr};
use serde_json::Value;

const NODE: &str = "node-a";

fn run(ns: &Netns, cfg: &Path, args: &[&str]) -> (i32, String) {
    let out = ns.netconverge(cfg, args);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    (code(&out), stdout_stderr(&out))
}

/// flannel.1 with peers 2 and 3 (198.18.{2,3}.0/24), plus `extra`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let text = fixtures::node_name(NODE)
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4_24(2)
        + extra;
    write_config(dir, "netconverge.toml", &text)
}

/// Every route of every table with `dst`, as `ip -j` prints it.
fn routes_to(ns: &Netns, dst: &str) -> Vec<Value> {
    ns.ip_list(&["-4", "route", "show", "table", "all", "to", dst])
        .into_iter()
        .filter(|r| r["type"] != "local" && r["type"] != "broadcast")
        .collect()
}

fn link_names(ns: &Netns) -> Vec<String> {
    ns.ip_list(&["link", "show"])
        .iter()
        .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn ifindex(ns: &Netns, dev: &str) -> u64 {
    ns.link(dev).unwrap_or_else(|| panic!("{dev} missing"))["ifindex"]
        .as_u64()
        .unwrap()
}

/// A DHCP default route and a static route on peer 2's pod prefix exist
/// before netconverge runs; the file declares a default route and peer 2.
/// Both are conflicts (named with proto, via, dev, table), survive converge
/// and cleanup byte-identical; peer 3 (no conflict) converges.
#[test]
fn foreign_routes_survive_converge_and_cleanup_as_conflicts() {
    let ns = Netns::node("own-foreign", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "\n[[route]]\ndst = \"0.0.0.0/0\"\nvia = \"192.0.2.253\"\ndev = \"nc-under\"\n",
    );
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.0.2.254",
        "dev",
        UNDERLAY,
        "proto",
        "dhcp",
    ]);
    ns.ip(&[
        "route",
        "add",
        "198.18.2.0/24",
        "via",
        "192.0.2.7",
        "dev",
        UNDERLAY,
        "proto",
        "static",
    ]);
    let before = (routes_to(&ns, "0.0.0.0/0"), routes_to(&ns, "198.18.2.0/24"));

    let (c, out) = run(&ns, &cfg, &["converge", "--check"]);
    assert_eq!(c, 1, "{out}");
    for want in [
        "! route 0.0.0.0/0 via 192.0.2.253 dev nc-under: blocked: conflict",
        "via 192.0.2.254 dev nc-under proto dhcp table main",
        "! route 198.18.2.0/24 via 198.18.2.0 dev flannel.1 onlink: blocked: conflict",
        "via 192.0.2.7 dev nc-under proto static table main",
    ] {
        assert!(out.contains(want), "--check must say `{want}`: {out}");
    }

    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 1, "blocked objects make converge exit 1: {out}");
    assert!(out.contains("proto dhcp"), "{out}");
    let after = (routes_to(&ns, "0.0.0.0/0"), routes_to(&ns, "198.18.2.0/24"));
    assert_eq!(
        before, after,
        "foreign routes must stay exactly as they were"
    );
    // positive control: the peer without a conflict converged
    let r3 = routes_to(&ns, "198.18.3.0/24");
    assert_eq!(r3.len(), 1, "{r3:?}");
    assert_eq!(r3[0]["protocol"], "199", "{r3:?}");

    let (_, out) = run(&ns, &cfg, &["cleanup", "--check"]);
    assert!(
        !out.contains("proto dhcp") && !out.contains("192.0.2.254"),
        "{out}"
    );
    let (c, out) = run(&ns, &cfg, &["cleanup"]);
    assert_eq!(c, 0, "{out}");
    let after = (routes_to(&ns, "0.0.0.0/0"), routes_to(&ns, "198.18.2.0/24"));
    assert_eq!(before, after, "cleanup must never remove a foreign route");
    assert!(ns.link("flannel.1").is_none(), "cleanup removed ours");
}

/// `--check` names a conflict even while the device the declared route
/// would use cannot exist yet (no underlay address).
#[test]
fn conflict_is_named_before_the_device_exists() {
    let ns = Netns::new("own-nodev");
    ns.add_underlay();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    ns.ip(&[
        "route",
        "add",
        "198.18.3.0/24",
        "dev",
        UNDERLAY,
        "proto",
        "boot",
    ]);
    let (c, out) = run(&ns, &cfg, &["converge", "--check"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains(
            "! route 198.18.3.0/24 via 198.18.3.0 dev flannel.1 onlink: blocked: conflict"
        ) && out.contains("dev nc-under proto boot table main"),
        "{out}"
    );
    assert!(out.contains("! vxlan flannel.1"), "{out}");
}

/// A VXLAN device with the declared name that netconverge did not create,
/// with an address of its own: blocked, untouched by converge and cleanup.
/// With `adopt = true` it is taken over (marked, its contents converged)
/// and from then on cleanup removes it.
#[test]
fn foreign_vxlan_is_a_conflict_until_adopted() {
    let ns = Netns::node("own-vx", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "address",
        "02:aa:bb:cc:dd:01",
        "type",
        "vxlan",
        "id",
        "1",
        "dev",
        UNDERLAY,
        "local",
        "192.0.2.1",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "up"]);
    ns.ip(&["addr", "add", "198.18.99.1/24", "dev", "flannel.1"]);
    let snapshot = |ns: &Netns| {
        (
            ns.ip_json(&["-d", "link", "show", "flannel.1"]),
            ns.ip_json(&["addr", "show", "dev", "flannel.1"]),
            ns.ip_json(&["route", "show", "dev", "flannel.1"]),
        )
    };
    let before = snapshot(&ns);
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("! vxlan flannel.1: blocked: a vxlan device flannel.1 (vni 1, port 8472) exists that netconverge did not create"),
        "{out}"
    );
    let (c, out) = run(&ns, &cfg, &["cleanup"]);
    assert_eq!(c, 0, "{out}");
    assert_eq!(before, snapshot(&ns), "foreign device must stay as it was");

    // Adopt it (keeping its MAC: the peers point at it).
    let adopt = fixtures::node_name(NODE)
        + &fixtures::vxlan_v4(UNDERLAY).replace(
            "underlay = \"nc-under\"\n",
            "underlay = \"nc-under\"\nadopt = true\nmac = \"02:aa:bb:cc:dd:01\"\n",
        )
        + &fixtures::peers_v4_24(2);
    let cfg = write_config(dir.path(), "netconverge.toml", &adopt);
    let index = ifindex(&ns, "flannel.1");
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("~ vxlan flannel.1: adopt"), "{out}");
    assert_eq!(ifindex(&ns, "flannel.1"), index, "adopted in place");
    let l = ns.link("flannel.1").unwrap();
    assert_eq!(l["ifalias"], "netconverge", "{l}");
    let a = ns.ip_json(&["-4", "addr", "show", "dev", "flannel.1"]);
    assert_eq!(a[0]["addr_info"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a[0]["addr_info"][0]["local"], "198.18.1.0", "{a}");
    let (c, out) = run(&ns, &cfg, &["converge", "--check"]);
    assert_eq!(c, 0, "in sync after adoption: {out}");
    // adopted: now ours, and cleanup (with a file that no longer names it) removes it
    let cfg = write_config(dir.path(), "netconverge.toml", &fixtures::node_name(NODE));
    let (c, out) = run(&ns, &cfg, &["cleanup"]);
    assert_eq!(c, 0, "{out}");
    assert!(ns.link("flannel.1").is_none(), "{out}");
}

/// `ip monitor route` in the namespace until stopped.
struct Monitor {
    child: Child,
}

impl Monitor {
    fn start(ns: &Netns) -> Monitor {
        let child = Command::new("ip")
            .args(["-n", &ns.name, "monitor", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // let it subscribe before anything happens
        std::thread::sleep(std::time::Duration::from_millis(300));
        Monitor { child }
    }

    fn stop(mut self) -> String {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = self.child.kill();
        let mut s = String::new();
        let _ = self.child.stdout.take().unwrap().read_to_string(&mut s);
        let _ = self.child.wait();
        s
    }
}

/// Migrating a flannel node: flannel.1 and its proto-boot peer routes,
/// neighbours and FDB entries exist (as flannel leaves them). With
/// `adopt = true` (and flannel's MAC) netconverge takes them over in place:
/// same ifindex, no route ever deleted, the routes now carry proto 199.
#[test]
fn flannel_node_is_adopted_without_a_gap() {
    let ns = Netns::node("own-flannel", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "address",
        "02:aa:bb:cc:dd:02",
        "type",
        "vxlan",
        "id",
        "1",
        "dev",
        UNDERLAY,
        "local",
        "192.0.2.1",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
    ns.ip(&["addr", "add", "198.18.1.0/32", "dev", "flannel.1"]);
    for k in [2, 3] {
        let gw = format!("198.18.{k}.0");
        let mac = format!("02:00:00:00:00:{k:02x}");
        ns.ip(&[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ]);
        ns.bridge(&[
            "fdb",
            "append",
            &mac,
            "dev",
            "flannel.1",
            "dst",
            &format!("192.0.2.{k}"),
            "self",
            "permanent",
        ]);
        ns.ip(&[
            "route",
            "add",
            &format!("{gw}/24"),
            "via",
            &gw,
            "dev",
            "flannel.1",
            "onlink",
            "proto",
            "boot",
        ]);
    }
    let text = fixtures::node_name(NODE)
        + &fixtures::vxlan_v4(UNDERLAY).replace(
            "underlay = \"nc-under\"\n",
            "underlay = \"nc-under\"\nadopt = true\nmac = \"02:aa:bb:cc:dd:02\"\n",
        )
        + &fixtures::peers_v4_24(2)
        + "\n[engine]\nnexthops = \"off\"\n";
    let cfg = write_config(dir.path(), "netconverge.toml", &text);
    let (c, out) = run(&ns, &cfg, &["converge", "--check"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("~ route 198.18.2.0/24 via 198.18.2.0 dev flannel.1 onlink: adopt (created by proto boot"),
        "the diff must show the adoption: {out}"
    );
    let index = ifindex(&ns, "flannel.1");
    let mon = Monitor::start(&ns);
    let (c, out) = run(&ns, &cfg, &["converge"]);
    let events = mon.stop();
    assert_eq!(c, 0, "{out}");
    assert_eq!(ifindex(&ns, "flannel.1"), index);
    assert!(
        !events.lines().any(|l| l.starts_with("Deleted")),
        "no route may be deleted during adoption: {events}"
    );
    // positive control: the monitor saw the replacements
    assert!(events.contains("198.18.2.0/24"), "{events}");
    for k in [2, 3] {
        let r = routes_to(&ns, &format!("198.18.{k}.0/24"));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["protocol"], "199", "{r:?}");
        assert_eq!(r[0]["dev"], "flannel.1", "{r:?}");
    }
}

/// Two nodes joined by the underlay, each with its overlay converged.
struct Pair {
    a: Netns,
    b: Netns,
    dir: tempfile::TempDir,
    cfg_a: PathBuf,
    cfg_b: PathBuf,
}

fn node_config(name: &str, dev: &str, vni: u32, k: u32, peer: u32) -> String {
    format!(
        "node_name = \"{name}\"\n\
         \n[[vxlan]]\nname = \"{dev}\"\nvni = {vni}\nunderlay = \"nc-under\"\nmac = \"02:00:00:00:00:{k:02x}\"\n\
         \n[[address]]\ndev = \"{dev}\"\ncidr = \"198.18.{k}.0/32\"\n",
    ) + &fixtures::peer(
        dev,
        &format!("198.18.{peer}.0/24"),
        &format!("192.0.2.{peer}"),
        &format!("02:00:00:00:00:{peer:02x}"),
    )
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let a = Netns::new(&format!("{tag}-a"));
        let b = Netns::new(&format!("{tag}-b"));
        a.ip(&[
            "link", "add", "nc-under", "type", "veth", "peer", "name", "nc-under", "netns", &b.name,
        ]);
        for (ns, k) in [(&a, 1), (&b, 2)] {
            ns.ip(&["link", "set", "nc-under", "up"]);
            ns.ip(&["addr", "add", &format!("192.0.2.{k}/24"), "dev", "nc-under"]);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let cfg_a = write_config(
            &dir.path().join("a"),
            "a.toml",
            &node_config("node-a", "flannel.1", 1, 1, 2),
        );
        let cfg_b = write_config(
            &dir.path().join("b"),
            "b.toml",
            &node_config("node-b", "flannel.1", 1, 2, 1),
        );
        for (ns, cfg) in [(&a, &cfg_a), (&b, &cfg_b)] {
            let (c, out) = run(ns, cfg, &["converge"]);
            assert_eq!(c, 0, "{out}");
        }
        Pair {
            a,
            b,
            dir,
            cfg_a,
            cfg_b,
        }
    }
}

/// Renaming `[[vxlan]]` flannel.1 → flannel.2 (same VNI and port) renames
/// the device in place: same ifindex, everything on it stays, and a pinger
/// across the overlay loses nothing while the rename is applied.
#[test]
fn rename_same_vni_keeps_the_overlay_up() {
    let p = Pair::new("own-ren");
    // a second device of ours on node A, kept through the rename
    let second = "\n[[vxlan]]\nname = \"vx-two\"\nvni = 7\nunderlay = \"nc-under\"\n";
    let cfg = write_config(
        p.cfg_a.parent().unwrap(),
        "a.toml",
        &(node_config("node-a", "flannel.1", 1, 1, 2) + second),
    );
    assert_eq!(run(&p.a, &cfg, &["converge"]).0, 0);
    let second_index = ifindex(&p.a, "vx-two");
    // the overlay works before
    p.a.exec(&["ping", "-c", "1", "-W", "5", "198.18.2.0"]);
    let index = ifindex(&p.a, "flannel.1");
    let mut pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.a.name,
            "ping",
            "-c",
            "400",
            "-i",
            "0.01",
            "-W",
            "1",
            "198.18.2.0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let cfg = write_config(
        p.cfg_a.parent().unwrap(),
        "a.toml",
        &(node_config("node-a", "flannel.2", 1, 1, 2) + second),
    );
    let (c, out) = run(&p.a, &cfg, &["converge"]);
    let still_pinging = pinger.try_wait().unwrap().is_none();
    let result = pinger.wait_with_output().unwrap();
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("~ vxlan flannel.1: rename to flannel.2"),
        "{out}"
    );
    assert!(
        still_pinging,
        "the rename must happen while the pinger runs"
    );
    let text = String::from_utf8_lossy(&result.stdout).to_string();
    assert!(
        text.contains("400 packets transmitted, 400 received"),
        "no loss during the rename: {text}"
    );
    assert_eq!(ifindex(&p.a, "flannel.2"), index, "renamed, not recreated");
    assert_eq!(
        ifindex(&p.a, "vx-two"),
        second_index,
        "the other device untouched"
    );
    assert!(!link_names(&p.a).contains(&"flannel.1".to_string()));
    let r = routes_to(&p.a, "198.18.2.0/24");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["dev"], "flannel.2", "{r:?}");
    let (c, out) = run(&p.a, &cfg, &["converge", "--check"]);
    assert_eq!(c, 0, "{out}");
    let _ = (&p.b, &p.cfg_b, &p.dir);
}

/// Renaming with another VNI: the new device and its routes exist before
/// the old device goes (no route is ever deleted on the way), and nothing
/// of the old one is left; `--check` listed it as a leftover first.
#[test]
fn rename_other_vni_creates_before_it_deletes() {
    let ns = Netns::node("own-ren2", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::node_name(NODE)
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4_24(2)
        + "\n[engine]\nnexthops = \"off\"\n";
    let cfg = write_config(dir.path(), "netconverge.toml", &text);
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 0, "{out}");
    let renamed = text
        .replace("flannel.1", "flannel.2")
        .replace("vni = 1", "vni = 2");
    let cfg = write_config(dir.path(), "netconverge.toml", &renamed);
    let (c, out) = run(&ns, &cfg, &["converge", "--check"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("- vxlan flannel.1: not declared (created by netconverge)"),
        "--check lists the leftover: {out}"
    );
    let mon = Monitor::start(&ns);
    let (c, out) = run(&ns, &cfg, &["converge"]);
    let events = mon.stop();
    assert_eq!(c, 0, "{out}");
    assert!(
        !events.lines().any(|l| l.starts_with("Deleted 198.18.")),
        "no peer route may be deleted: {events}"
    );
    assert!(events.contains("dev flannel.2"), "{events}");
    assert!(ns.link("flannel.1").is_none(), "old device removed");
    for k in [2, 3] {
        let r = routes_to(&ns, &format!("198.18.{k}.0/24"));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["dev"], "flannel.2", "{r:?}");
    }
}

/// `[engine] route_protocol` 199 → 200: the old routes and nexthops are
/// swept after the new ones exist; nothing of protocol 199 is left, and a
/// cleanup afterwards removes the undeclared old-protocol route too.
#[test]
fn protocol_change_leaves_nothing_behind() {
    let ns = Netns::node("own-proto", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let base =
        fixtures::node_name(NODE) + &fixtures::vxlan_v4(UNDERLAY) + &fixtures::peers_v4_24(2);
    let routes = "\n[[route]]\ndst = \"203.0.113.0/24\"\nvia = \"192.0.2.254\"\ndev = \"nc-under\"\ntable = 100\n";
    let cfg = write_config(dir.path(), "netconverge.toml", &(base.clone() + routes));
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 0, "{out}");
    let count = |ns: &Netns, proto: &str| {
        let nh = ns
            .ip_list(&["nexthop", "show"])
            .into_iter()
            .filter(|n| n["protocol"] == proto)
            .count();
        let r = ns
            .ip_list(&["-4", "route", "show", "table", "all"])
            .into_iter()
            .filter(|r| r["protocol"] == proto)
            .count();
        (nh, r)
    };
    let (nh199, r199) = count(&ns, "199");
    assert!(
        nh199 >= 2 && r199 >= 3,
        "positive control: ({nh199}, {r199})"
    );

    // protocol 200, and the table-100 route dropped from the file
    let cfg = write_config(
        dir.path(),
        "netconverge.toml",
        &(base + "\n[engine]\nroute_protocol = 200\n"),
    );
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 0, "{out}");
    assert_eq!(count(&ns, "199"), (0, 0), "old protocol left behind: {out}");
    let (nh200, r200) = count(&ns, "200");
    assert!(nh200 >= 2 && r200 >= 2, "({nh200}, {r200})");
    // the record (per test, next to the config) knows both protocols
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(common::state_dir(&cfg).join("kernel-record.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["route_protocols"],
        serde_json::json!([199, 200]),
        "{record}"
    );
    let (c, out) = run(&ns, &cfg, &["converge", "--check"]);
    assert_eq!(c, 0, "{out}");
}

/// Cleanup with an edited file (the vxlan renamed and a route dropped)
/// removes everything netconverge created — the old device, its routes,
/// old-protocol routes — and nothing foreign.
#[test]
fn cleanup_with_an_edited_file_removes_all_of_ours() {
    let ns = Netns::node("own-clean", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let routes = "\n[[route]]\ndst = \"203.0.113.0/24\"\nvia = \"192.0.2.254\"\ndev = \"nc-under\"\ntable = 100\n\
                  \n[[address]]\ndev = \"nc-under\"\ncidr = \"192.0.2.50/24\"\n";
    let cfg = config(dir.path(), routes);
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 0, "{out}");
    let underlay_addrs = |ns: &Netns| -> Vec<Value> {
        ns.ip_json(&["-4", "addr", "show", "dev", UNDERLAY])[0]["addr_info"]
            .as_array()
            .unwrap()
            .clone()
    };
    // (iproute2 6.1 does not print IFA_PROTO: the mark shows in what
    // cleanup removes below, and what it keeps)
    let added = underlay_addrs(&ns);
    assert!(
        added.iter().any(|a| a["local"] == "192.0.2.50"),
        "{added:?}"
    );
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/25",
        "via",
        "192.0.2.254",
        "dev",
        UNDERLAY,
        "proto",
        "static",
    ]);
    let foreign = routes_to(&ns, "203.0.113.0/25");
    // the file now has only another device and no routes
    let edited = fixtures::node_name(NODE)
        + "\n[[vxlan]]\nname = \"vx-other\"\nvni = 7\nunderlay = \"nc-under\"\n\
           \n[engine]\nroute_protocol = 201\n";
    let cfg = write_config(dir.path(), "netconverge.toml", &edited);
    let (c, out) = run(&ns, &cfg, &["cleanup", "--check"]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("- vxlan flannel.1: cleanup"), "{out}");
    assert!(
        out.lines().any(|l| l
            .starts_with("- route 203.0.113.0/24 via 192.0.2.254 dev nc-under table 100")
            && l.ends_with("cleanup (old route protocol 199)")),
        "{out}"
    );
    assert!(!out.contains("203.0.113.0/25"), "{out}");
    assert!(
        out.contains("- address 192.0.2.50/24 dev nc-under: cleanup (address protocol 199)"),
        "{out}"
    );
    assert!(
        !out.contains("192.0.2.1/24"),
        "the harness's address is not ours: {out}"
    );
    let (c, out) = run(&ns, &cfg, &["cleanup"]);
    assert_eq!(c, 0, "{out}");
    let left = underlay_addrs(&ns);
    assert!(left.iter().all(|a| a["local"] != "192.0.2.50"), "{left:?}");
    assert!(left.iter().any(|a| a["local"] == "192.0.2.1"), "{left:?}");
    assert!(ns.link("flannel.1").is_none(), "{out}");
    assert!(routes_to(&ns, "203.0.113.0/24").is_empty());
    assert!(ns.ip_list(&["nexthop", "show"]).is_empty());
    assert_eq!(routes_to(&ns, "203.0.113.0/25"), foreign);
}

/// A new underlay address (`local` derived) is applied in place: same
/// ifindex, the peer routes are never deleted.
#[test]
fn underlay_address_change_keeps_the_device_and_its_routes() {
    let ns = Netns::node("own-local", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "\n[engine]\nnexthops = \"off\"\n");
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 0, "{out}");
    let index = ifindex(&ns, "flannel.1");
    // DHCP renumbered the underlay
    ns.ip(&["addr", "del", "192.0.2.1/24", "dev", UNDERLAY]);
    ns.ip(&["addr", "add", "192.0.2.9/24", "dev", UNDERLAY]);
    let mon = Monitor::start(&ns);
    let (c, out) = run(&ns, &cfg, &["converge"]);
    let events = mon.stop();
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("local 192.0.2.1 → 192.0.2.9 (in place)"),
        "{out}"
    );
    let l = ns.link("flannel.1").unwrap();
    assert_eq!(l["linkinfo"]["info_data"]["local"], "192.0.2.9", "{l}");
    assert_eq!(ifindex(&ns, "flannel.1"), index, "changed in place");
    assert!(
        !events.lines().any(|l| l.starts_with("Deleted 198.18.")),
        "{events}"
    );
    for k in [2, 3] {
        assert_eq!(routes_to(&ns, &format!("198.18.{k}.0/24")).len(), 1);
    }
}

/// Changing the VXLAN device's own address (198.18.1.0/32 → 198.18.1.1/32)
/// with classic routes (`nexthops = "off"`): the new address is added
/// before the stale one goes (stage PruneAddresses), so the device never
/// loses its last IPv4 address — which would make the kernel drop every
/// classic IPv4 route through it, silently (the engine's verify round used
/// to put them back, after a gap: "converged: 6 change(s) applied" for a
/// 2-change plan). No peer route is ever deleted.
#[test]
fn vxlan_address_change_keeps_classic_peer_routes() {
    let ns = Netns::node("own-addr", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "\n[engine]\nnexthops = \"off\"\n");
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 0, "{out}");
    for k in [2, 3] {
        let r = routes_to(&ns, &format!("198.18.{k}.0/24"));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].get("nhid").is_none(), "classic route: {r:?}");
    }
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("cidr = \"198.18.1.0/32\"", "cidr = \"198.18.1.1/32\"");
    let cfg = write_config(dir.path(), "netconverge.toml", &text);
    let mon = Monitor::start(&ns);
    let (c, out) = run(&ns, &cfg, &["converge"]);
    let events = mon.stop();
    assert_eq!(c, 0, "{out}");
    // The kernel sends no RTM_DELROUTE for the routes it drops with the
    // last address; what shows is the verify round adding them back. So:
    // no event at all on a peer route, and only the plan's two changes
    // applied (no repair round).
    let peer_events: Vec<&str> = events
        .lines()
        .filter(|l| {
            let l = l.trim_start_matches("Deleted ");
            l.starts_with("198.18.2.0/24") || l.starts_with("198.18.3.0/24")
        })
        .collect();
    assert!(
        peer_events.is_empty(),
        "no peer route may be deleted (or dropped and re-added): {events}"
    );
    assert!(out.contains("converged: 2 change(s) applied"), "{out}");
    let addrs: Vec<String> = ns
        .ip_list(&["-4", "addr", "show", "dev", "flannel.1"])
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect();
    assert_eq!(addrs, ["198.18.1.1/32"], "the address changed");
    for k in [2, 3] {
        let r = routes_to(&ns, &format!("198.18.{k}.0/24"));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["dev"], "flannel.1", "{r:?}");
    }
}

/// A peer whose vtep_ip is this node's own (derived) local address is
/// blocked with a reason; the other peers converge.
#[test]
fn peer_with_own_vtep_is_blocked() {
    let ns = Netns::node("own-self", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &fixtures::peer(
            "flannel.1",
            "198.18.9.0/24",
            "192.0.2.1",
            "02:00:00:00:00:09",
        ),
    );
    let (c, out) = run(&ns, &cfg, &["converge"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("! peer 198.18.9.0/24 dev flannel.1: blocked: vtep_ip 192.0.2.1 is this node's own underlay address"),
        "{out}"
    );
    let f = ns.bridge_list(&["fdb", "show", "dev", "flannel.1"]);
    assert!(f.iter().all(|e| e["dst"] != "192.0.2.1"), "{f:?}");
    assert!(f.iter().any(|e| e["dst"] == "192.0.2.2"), "{f:?}");
    assert!(routes_to(&ns, "198.18.9.0/24").is_empty());
}

/// The daemon, on reload (SIGHUP) of a file that renames flannel.1 →
/// flannel.2 with the same VNI: the device is renamed in place (same
/// ifindex, routes and entries kept) and nothing is left under the old name.
#[test]
fn daemon_reload_with_a_renamed_vxlan_renames_in_place() {
    use common::daemon::{Daemon, eventually};
    let ns = Netns::node("own-hup", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", common::LONG);
    let index = ifindex(&ns, "flannel.1");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("flannel.1", "flannel.2");
    write_config(dir.path(), "netconverge.toml", &text);
    d.signal("-HUP");
    d.wait_notify("RELOADING=1", common::LONG);
    eventually("flannel.2 converged", common::LONG, || {
        ns.link("flannel.2").is_some()
            && routes_to(&ns, "198.18.3.0/24")
                .first()
                .is_some_and(|r| r["dev"] == "flannel.2")
    });
    assert_eq!(ifindex(&ns, "flannel.2"), index, "{}", d.logs());
    assert!(ns.link("flannel.1").is_none(), "{}", d.logs());
    let n = ns.ip_list(&["neigh", "show", "dev", "flannel.2"]);
    let f = ns.bridge_list(&["fdb", "show", "dev", "flannel.2"]);
    assert_eq!(
        n.iter().filter(|x| x["state"][0] == "PERMANENT").count(),
        2,
        "{n:?}"
    );
    assert_eq!(
        f.iter().filter(|x| x["state"] == "permanent").count(),
        2,
        "{f:?}"
    );
    assert_eq!(d.stop(), 0);
}
