#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! What validation (and the planner, where only the kernel knows) refuses,
//! through the built binary on a real kernel: an empty/truncated file on a
//! daemon reload removes nothing, an IPv6 route with `metric = 0` converges
//! once and stays in sync (the kernel stores 1024), and a derived MTU below
//! 1280 blocks an IPv6 device instead of failing every pass.
//!
//! Kernel state is read with `ip -j`.

mod common;

use std::path::Path;

use common::daemon::{Daemon, eventually};
use common::{LONG, Netns, Stack, UNDERLAY, fixtures};

fn peer_routes(ns: &Netns) -> usize {
    ns.ip_list(&["-4", "route", "show", "dev", "flannel.1"])
        .into_iter()
        .filter(|r| r["dst"].as_str().is_some_and(|d| d.starts_with("198.18.")))
        .count()
}

#[test]
fn a_truncated_config_on_reload_is_refused_and_removes_nothing() {
    let ns = Netns::node("val-trunc", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::node_name("val-node")
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4_24(2)
        + &fixtures::daemon(3600, "networkmanager = \"off\"\n");
    let cfg = fixtures::write_config(dir.path(), "netconverge.toml", &text);
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    assert!(ns.link("flannel.1").is_some());
    assert_eq!(peer_routes(&ns), 2);

    // The file is truncated to nothing (a failed copy, a full disk) and
    // the daemon is told to reload.
    std::fs::write(&cfg, "").unwrap();
    d.signal("-HUP");
    let s = d.wait_notify("reload failed", LONG);
    assert!(s.contains("declares nothing"), "{s}");
    assert!(ns.link("flannel.1").is_some(), "device removed");
    assert_eq!(peer_routes(&ns), 2, "routes removed");
    // Positive control: the daemon still runs the previous config.
    ns.ip(&["route", "del", "198.18.2.0/24"]);
    eventually("the previous config repairs a route", LONG, || {
        peer_routes(&ns) == 2
    });
    assert_eq!(d.stop(), 0, "{}", d.logs());

    // The CLI refuses it with exit 2, pointing to cleanup.
    let out = ns.netconverge(&cfg, &["converge"]);
    assert_eq!(common::code(&out), 2, "{}", common::stdout_stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains(":1:1: error: the configuration declares nothing") && err.contains("cleanup"),
        "{err}"
    );
    assert!(ns.link("flannel.1").is_some(), "device removed");
}

fn v6_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let text = fixtures::node_name("val-node")
        + &fixtures::vxlan_v6(UNDERLAY)
        + extra
        + &fixtures::daemon(3600, "networkmanager = \"off\"\n");
    fixtures::write_config(dir, "netconverge.toml", &text)
}

#[test]
fn an_ipv6_route_with_metric_0_converges_once() {
    let ns = Netns::node("val-metric", Stack::Dual);
    let dir = tempfile::tempdir().unwrap();
    let cfg = v6_config(
        dir.path(),
        "\n[[route]]\ndst = \"fd00:43::/64\"\ndev = \"flannel-v6.1\"\nmetric = 0\n",
    );
    ns.netconverge_exits(&cfg, &["converge"], 0);
    let routes: Vec<_> = ns
        .ip_list(&["-6", "route", "show", "dev", "flannel-v6.1"])
        .into_iter()
        .filter(|r| r["dst"] == "fd00:43::/64")
        .collect();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["metric"], 1024, "the kernel's metric");
    // Stays in sync: no remove-and-re-add of the same route every pass.
    let text = ns.netconverge_exits(&cfg, &["converge", "--check"], 0);
    assert!(!text.contains("fd00:43::/64"), "{text}");
    ns.netconverge_exits(&cfg, &["converge", "--check"], 0);
}

#[test]
fn a_derived_mtu_below_1280_blocks_the_ipv6_device_only() {
    let ns = Netns::node("val-mtu", Stack::Dual);
    // 1300 − 70 = 1230 for the IPv6 VXLAN, 1300 − 50 = 1250 for the IPv4 one.
    ns.ip(&["link", "set", UNDERLAY, "mtu", "1300"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = v6_config(dir.path(), &fixtures::vxlan_v4(UNDERLAY));
    let out = ns.netconverge_exits(&cfg, &["converge"], 1);
    assert!(
        out.contains("! vxlan flannel-v6.1: blocked: underlay nc-under MTU 1300 leaves 1230"),
        "{out}"
    );
    assert!(
        ns.link("flannel-v6.1").is_none(),
        "created with unusable IPv6"
    );
    assert_eq!(
        ns.link("flannel.1").unwrap()["mtu"],
        1250,
        "the rest converges"
    );
    // Positive control: with room for IPv6 the device is created.
    ns.ip(&["link", "set", UNDERLAY, "mtu", "1350"]);
    ns.netconverge_exits(&cfg, &["converge"], 0);
    assert_eq!(ns.link("flannel-v6.1").unwrap()["mtu"], 1280);
    let addrs = ns.ip_list(&["-6", "addr", "show", "dev", "flannel-v6.1"]);
    let has = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == "fd00:42:0:1::");
    assert!(has, "{addrs:?}");
}

/// validate and the kernel agree on every name: each is tried with
/// `ip link add` (the independent judge) and with the config parser.
#[test]
fn validate_accepts_exactly_the_names_the_kernel_accepts() {
    let ns = Netns::new("val-names");
    let names = [
        "flannel.1",
        "vx\u{e9}",   // é = C3 A9: accepted
        "vx\u{85}",   // C2 85: a control byte, not whitespace to the kernel
        "vx\u{2003}", // EM SPACE = E2 80 83: Unicode whitespace, not the kernel's
        "vx\u{e0}",   // à = C3 A0: 0xA0 is whitespace to the kernel
        "vx\u{a0}",   // NO-BREAK SPACE = C2 A0
        "\u{5a0}x",   // Hebrew point = D6 A0
        "a b",
        "a\tb",
        "a:b",
        "a/b",
        "..",
        "fifteen-bytes.1",
        "sixteen-bytes.12",
    ];
    let mut disagree = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let peer = format!("nc-peer{i}");
        let kernel = ns
            .exec_output(&[
                "ip", "link", "add", name, "type", "veth", "peer", "name", &peer,
            ])
            .status
            .success();
        let toml = format!(
            "[[vxlan]]\nname = \"{}\"\nvni = 1\nunderlay = \"eth0\"\n",
            toml_escape(name)
        );
        let ours = netconverge::config::parse(&toml, "t.toml").is_ok();
        if kernel != ours {
            disagree.push(format!("{name:?}: kernel {kernel}, validate {ours}"));
        }
    }
    assert!(disagree.is_empty(), "{disagree:#?}");
    // Positive control: the kernel really refused some and took others.
    let links: Vec<String> = ns
        .ip_list(&["link", "show"])
        .into_iter()
        .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(links.iter().any(|l| l == "vx\u{e9}"), "{links:?}");
    assert!(!links.iter().any(|l| l == "vx\u{e0}"), "{links:?}");
}

/// `s` inside a TOML basic string: control characters as `\uXXXX`.
fn toml_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => format!("\\{c}"),
            c if c.is_control() => format!("\\u{:04X}", u32::from(c)),
            c => c.to_string(),
        })
        .collect()
}
