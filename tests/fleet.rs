#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! One fleet file, three nodes: namespaces node-a/b/c on a bridge underlay
//! (a fourth namespace is the switch), each node's underlay interface named
//! differently, each converged by the built binary with its own `--node`
//! from the shipped `examples/fleet/fleet.toml`. Checked with iproute2
//! only: every device sits on the interface holding the node's address and
//! carries the MAC derived from the node's name, every node's FDB points at
//! every other node's derived MAC, and every node reaches every other's VTEP
//! addresses over the overlay in IPv4 and IPv6. Then node-c leaves the
//! file: node-a's next converge leaves nothing of it behind, and keeps node-b.
//!
//! The nodes share this host's filesystem, so each config is the example
//! plus a `[lease]` with a path of its own (the fleet part is identical).

mod common;

use std::path::PathBuf;

use common::fixtures::write_config;
use common::{Netns, code, stdout_stderr};
use netconverge::model::Mac;

struct Node {
    name: &'static str,
    /// Its underlay interface: a different name on every node, so the
    /// underlay can only be found by address.
    underlay: &'static str,
    v4: &'static str,
    v6: &'static str,
    /// Its VTEP addresses (its subnets' network addresses).
    vtep: [&'static str; 2],
}

const NODES: [Node; 3] = [
    Node {
        name: "node-a",
        underlay: "eth-a",
        v4: "192.0.2.11",
        v6: "2001:db8::11",
        vtep: ["198.18.1.0", "fd00:42:0:1::"],
    },
    Node {
        name: "node-b",
        underlay: "ens-b",
        v4: "192.0.2.12",
        v6: "2001:db8::12",
        vtep: ["198.18.2.0", "fd00:42:0:2::"],
    },
    Node {
        name: "node-c",
        underlay: "enp-c",
        v4: "192.0.2.13",
        v6: "2001:db8::13",
        vtep: ["198.18.3.0", "fd00:42:0:3::"],
    },
];

fn config(dir: &std::path::Path) -> PathBuf {
    let example = format!("{}/examples/fleet/fleet.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(example).unwrap();
    let d = dir.display();
    write_config(
        dir,
        "fleet.toml",
        &format!("{text}\n[lease]\npath = \"{d}/subnet.env\"\nstate_dir = \"{d}/state\"\n"),
    )
}

#[test]
fn three_nodes_from_one_fleet_file_reach_each_other() {
    let switch = Netns::new("fleet-sw");
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    let nss: Vec<Netns> = NODES
        .iter()
        .map(|n| Netns::new(&format!("fleet-{}", &n.name[5..])))
        .collect();
    let dirs: Vec<tempfile::TempDir> = NODES.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    for ((n, ns), i) in NODES.iter().zip(&nss).zip(0..) {
        let leg = format!("sw-{i}");
        switch.ip(&[
            "link", "add", &leg, "type", "veth", "peer", "name", n.underlay, "netns", &ns.name,
        ]);
        switch.ip(&["link", "set", &leg, "master", "br0", "up"]);
        ns.ip(&["link", "set", n.underlay, "up"]);
        ns.ip(&["addr", "add", &format!("{}/24", n.v4), "dev", n.underlay]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", n.v6),
            "dev",
            n.underlay,
            "nodad",
        ]);
    }
    let cfgs: Vec<PathBuf> = dirs.iter().map(|d| config(d.path())).collect();
    // control: the underlay alone does not reach a VTEP address
    let out = nss[0].exec_output(&["ping", "-n", "-c", "1", "-W", "1", NODES[1].vtep[0]]);
    assert_ne!(code(&out), 0, "{}", stdout_stderr(&out));

    for ((n, ns), cfg) in NODES.iter().zip(&nss).zip(&cfgs) {
        ns.netconverge_exits(cfg, &["--node", n.name, "converge"], 0);
        ns.netconverge_exits(cfg, &["--node", n.name, "converge", "--check"], 0);
    }

    for (n, ns) in NODES.iter().zip(&nss) {
        for (dev, local) in [("flannel.1", n.v4), ("flannel-v6.1", n.v6)] {
            let l = ns
                .link(dev)
                .unwrap_or_else(|| panic!("{dev} on {}", n.name));
            assert_eq!(
                l["address"],
                Mac::derive(n.name, dev).to_string(),
                "{}: {l}",
                n.name
            );
            let data = &l["linkinfo"]["info_data"];
            assert_eq!(data["link"], n.underlay, "{}: {l}", n.name);
            let key = if dev == "flannel.1" {
                "local"
            } else {
                "local6"
            };
            assert_eq!(data[key], local, "{}: {l}", n.name);
            // every other node's derived MAC → its underlay address
            let fdb = ns.bridge_list(&["fdb", "show", "dev", dev]);
            for o in NODES.iter().filter(|o| o.name != n.name) {
                let (mac, dst) = (
                    Mac::derive(o.name, dev).to_string(),
                    if dev == "flannel.1" { o.v4 } else { o.v6 },
                );
                assert!(
                    fdb.iter().any(|e| e["mac"] == mac && e["dst"] == dst),
                    "{} has no fdb {mac} → {dst}: {fdb:?}",
                    n.name
                );
            }
        }
    }

    for (n, ns) in NODES.iter().zip(&nss) {
        for o in NODES.iter().filter(|o| o.name != n.name) {
            for dst in o.vtep {
                let out = ns.exec_output(&["ping", "-n", "-c", "2", "-i", "0.2", "-W", "5", dst]);
                assert_eq!(
                    code(&out),
                    0,
                    "{} → {} ({dst}) over the overlay: {}",
                    n.name,
                    o.name,
                    stdout_stderr(&out)
                );
            }
        }
    }

    // Shrink: node-c leaves the file; node-a's next converge removes every
    // object it had for node-c, and nothing else (node-b stays reachable).
    let example = std::fs::read_to_string(&cfgs[0]).unwrap();
    let start = example.find("[[fleet.node]]\nname = \"node-c\"").unwrap();
    let end = example[start..].find("\n\n").unwrap() + start;
    let shrunk = format!("{}{}", &example[..start], &example[end + 2..]);
    std::fs::write(&cfgs[0], shrunk).unwrap();
    let (a, c) = (&nss[0], &NODES[2]);
    a.netconverge_exits(&cfgs[0], &["--node", "node-a", "converge"], 0);
    let gone = [
        c.v4.to_string(),
        c.v6.to_string(),
        c.vtep[0].to_string(),
        c.vtep[1].to_string(),
        Mac::derive(c.name, "flannel.1").to_string(),
        Mac::derive(c.name, "flannel-v6.1").to_string(),
    ];
    let mut left = Vec::new();
    for dev in ["flannel.1", "flannel-v6.1"] {
        left.extend(a.bridge_list(&["fdb", "show", "dev", dev]));
        left.extend(a.ip_list(&["neigh", "show", "dev", dev]));
        left.extend(a.ip_list(&["route", "show", "dev", dev]));
        left.extend(a.ip_list(&["-6", "route", "show", "dev", dev]));
    }
    let text: Vec<String> = left.iter().map(ToString::to_string).collect();
    for g in &gone {
        assert!(
            !text
                .iter()
                .any(|t| t.contains(&format!("\"{g}\"")) || t.contains(&format!("\"{g}/"))),
            "node-c's {g} is still on node-a: {text:#?}"
        );
    }
    // positive control: node-b's objects are still there and it still answers
    assert!(
        text.iter()
            .any(|t| t.contains(&format!("\"{}\"", NODES[1].v4))),
        "{text:#?}"
    );
    let out = a.exec_output(&["ping", "-n", "-c", "1", "-W", "5", NODES[1].vtep[0]]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
}
