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
//!
//! Then the same with daemons: four nodes (and a pod namespace each), every
//! one running `netconverge run --node NAME` on ONE file; a node added to
//! the file + SIGHUP reaches every node, a node removed + SIGHUP leaves
//! nothing behind (IPv4, IPv6, dual-stack); and a node whose underlay (found
//! by address) gets its address only after the daemon started.

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

// ------------------------------------------------------ the fleet, run --
//
// Every node runs its own `netconverge run --node NAME` on ONE file (the
// same path, the same bytes). The nodes share this host's filesystem, so
// each daemon runs with a private mount of its own directory over the one
// directory the file names for the lease (`ip netns exec` gives every
// daemon a mount namespace of its own: the bind mount stays there), and its
// own state directory.

use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::{LONG, Stack};

/// A node of the grow-and-shrink fleet (index `i`: addresses .2i etc.).
struct Member {
    name: String,
    underlay: String,
    v4: String,
    v6: String,
    /// VTEP addresses (the subnets' network addresses).
    vtep: [String; 2],
    /// The address of a pod on this node (in a namespace of its own behind
    /// the node's `cni0` bridge).
    pod: [String; 2],
}

fn member(i: usize) -> Member {
    Member {
        name: format!("node-{i}"),
        underlay: format!("up{i}-if"),
        v4: format!("192.0.2.{}", 20 + i),
        v6: format!("2001:db8::{}", 20 + i),
        vtep: [format!("198.18.{i}.0"), format!("fd00:42:0:{i}::")],
        pod: [format!("198.18.{i}.5"), format!("fd00:42:0:{i}::5")],
    }
}

/// The one fleet file for `members` and `stack`; `lease_dir` is the
/// directory every daemon sees privately.
fn fleet_text(members: &[&Member], stack: Stack, lease_dir: &Path) -> String {
    let mut s = String::from("[fleet]\n");
    if stack.v4() {
        s += "network = \"198.18.0.0/16\"\n";
    }
    if stack.v6() {
        s += "ipv6_network = \"fd00:42::/48\"\n";
    }
    for m in members {
        s += &format!("\n[[fleet.node]]\nname = \"{}\"\n", m.name);
        if stack.v4() {
            s += &format!("address = \"{}\"\nsubnet = \"{}/24\"\n", m.v4, m.vtep[0]);
        }
        if stack.v6() {
            s += &format!(
                "ipv6_address = \"{}\"\nipv6_subnet = \"{}/64\"\n",
                m.v6, m.vtep[1]
            );
        }
    }
    s + &format!(
        "\n[lease]\npath = \"{}/subnet.env\"\n\n[daemon]\nresync_secs = 3600\nnetworkmanager = \"off\"\n",
        lease_dir.display()
    )
}

/// A node namespace on the switch: its underlay (named its own way) with
/// its addresses; and a pod namespace behind the node's `cni0` bridge
/// (gateway: the subnet's first address, as flannel's CNI sets it up), the
/// node forwarding for it.
fn join(switch: &Netns, m: &Member, i: usize, stack: Stack) -> (Netns, Netns) {
    let ns = Netns::new(&format!("fl{i}"));
    let pod = Netns::new(&format!("flpod{i}"));
    let leg = format!("swp{i}");
    switch.ip(&[
        "link",
        "add",
        &leg,
        "type",
        "veth",
        "peer",
        "name",
        &m.underlay,
        "netns",
        &ns.name,
    ]);
    switch.ip(&["link", "set", &leg, "master", "br0", "up"]);
    ns.ip(&["link", "set", &m.underlay, "up"]);
    ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    ns.ip(&["link", "set", "cni0", "up"]);
    ns.ip(&[
        "link", "add", "vethpod", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    ns.ip(&["link", "set", "vethpod", "master", "cni0", "up"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    if stack.v4() {
        ns.ip(&["addr", "add", &format!("{}/24", m.v4), "dev", &m.underlay]);
        let gw = format!("198.18.{i}.1");
        ns.ip(&["addr", "add", &format!("{gw}/24"), "dev", "cni0"]);
        pod.ip(&["addr", "add", &format!("{}/24", m.pod[0]), "dev", "eth0"]);
        pod.ip(&["route", "add", "default", "via", &gw]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    }
    if stack.v6() {
        let (u, gw) = (format!("{}/64", m.v6), format!("fd00:42:0:{i}::1"));
        ns.ip(&["addr", "add", &u, "dev", &m.underlay, "nodad"]);
        ns.ip(&["addr", "add", &format!("{gw}/64"), "dev", "cni0", "nodad"]);
        let p = format!("{}/64", m.pod[1]);
        pod.ip(&["addr", "add", &p, "dev", "eth0", "nodad"]);
        pod.ip(&["-6", "route", "add", "default", "via", &gw]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    }
    (ns, pod)
}

/// `netconverge run --node NAME` in `ns` on `cfg`, with `own` (its private
/// directory) mounted over `lease_dir`.
fn start(ns: &Netns, m: &Member, cfg: &Path, lease_dir: &Path, own: &Path) -> Daemon {
    let prefix: Vec<String> = [
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sh",
        "-c",
        "mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"",
        "sh",
    ]
    .iter()
    .map(ToString::to_string)
    .chain([own.display().to_string(), lease_dir.display().to_string()])
    .collect();
    let state = own.join("state");
    Daemon::start_run_args(
        &prefix,
        cfg,
        &["--node", &m.name],
        &[(common::STATE_DIR_ENV, state.to_str().unwrap())],
    )
}

fn families(stack: Stack) -> Vec<(usize, &'static str)> {
    let mut f = Vec::new();
    if stack.v4() {
        f.push((0, "flannel.1"));
    }
    if stack.v6() {
        f.push((1, "flannel-v6.1"));
    }
    f
}

/// Every node of `members` has every other's FDB entry (derived MAC → its
/// underlay address) and reaches its VTEP address, and every pod reaches
/// every other node's pod.
fn check_mesh(members: &[(&Member, &Netns, &Netns)], stack: Stack) {
    for (m, ns, pod) in members {
        for (fam, dev) in families(stack) {
            let fdb = ns.bridge_list(&["fdb", "show", "dev", dev]);
            for (o, _, _) in members.iter().filter(|(o, _, _)| o.name != m.name) {
                let mac = Mac::derive(&o.name, dev).to_string();
                let dst = if fam == 0 { &o.v4 } else { &o.v6 };
                assert!(
                    fdb.iter()
                        .any(|e| e["mac"] == mac && e["dst"] == dst.as_str()),
                    "{} has no fdb {mac} → {dst} on {dev}: {fdb:?}",
                    m.name
                );
                for (from, to) in [(ns, &o.vtep[fam]), (pod, &o.pod[fam])] {
                    let out = from.exec_output(&["ping", "-n", "-c", "1", "-W", "5", to]);
                    assert_eq!(
                        code(&out),
                        0,
                        "{} → {} ({to}) over the overlay: {}",
                        m.name,
                        o.name,
                        stdout_stderr(&out)
                    );
                }
            }
        }
    }
}

/// Nothing of `gone` (addresses, VTEPs, MACs) on `ns`'s overlay devices.
fn nothing_of(ns: &Netns, node: &str, gone: &Member, stack: Stack) -> Vec<String> {
    let mut left = Vec::new();
    for (_, dev) in families(stack) {
        left.extend(ns.bridge_list(&["fdb", "show", "dev", dev]));
        left.extend(ns.ip_list(&["neigh", "show", "dev", dev]));
        left.extend(ns.ip_list(&["route", "show", "dev", dev]));
        left.extend(ns.ip_list(&["-6", "route", "show", "dev", dev]));
    }
    left.extend(ns.ip_list(&["nexthop", "show"]));
    let text: Vec<String> = left.iter().map(ToString::to_string).collect();
    let mut needles = vec![gone.v4.clone(), gone.v6.clone()];
    needles.extend(gone.vtep.iter().cloned());
    for (_, dev) in families(stack) {
        needles.push(Mac::derive(&gone.name, dev).to_string());
    }
    for n in &needles {
        assert!(
            !text
                .iter()
                .any(|t| t.contains(&format!("\"{n}\"")) || t.contains(&format!("\"{n}/"))),
            "{}'s {n} is still on {node}: {text:#?}",
            gone.name
        );
    }
    text
}

fn reload(d: &mut Daemon) {
    d.signal("-HUP");
    d.wait_notify("RELOADING=1", LONG);
    d.wait_notify("READY=1", LONG);
}

/// Three nodes on one file, then a fourth added to it and SIGHUP to all:
/// every node has the new peer; then one removed and SIGHUP: nothing of it
/// remains on any node, and the others still reach each other.
fn grow_and_shrink(stack: Stack) {
    let switch = Netns::new("flsw");
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    let members: Vec<Member> = (1..=4).map(member).collect();
    let (nss, pods): (Vec<Netns>, Vec<Netns>) = members
        .iter()
        .zip(1..)
        .map(|(m, i)| join(&switch, m, i, stack))
        .unzip();
    let shared = tempfile::tempdir().unwrap();
    let lease_dir = shared.path().join("lease");
    std::fs::create_dir(&lease_dir).unwrap();
    let owns: Vec<PathBuf> = members
        .iter()
        .map(|m| {
            let d = shared.path().join(&m.name);
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    let all: Vec<&Member> = members.iter().collect();
    let cfg = write_config(
        shared.path(),
        "fleet.toml",
        &fleet_text(&all[..3], stack, &lease_dir),
    );
    // control: without netconverge, no VTEP and no other pod is reachable
    let (_, first) = families(stack)[0];
    let fam = usize::from(first != "flannel.1");
    let out = nss[0].exec_output(&["ping", "-n", "-c", "1", "-W", "1", &members[1].vtep[fam]]);
    assert_ne!(code(&out), 0, "{}", stdout_stderr(&out));
    let out = pods[0].exec_output(&["ping", "-n", "-c", "1", "-W", "1", &members[1].pod[fam]]);
    assert_ne!(code(&out), 0, "{}", stdout_stderr(&out));

    let mut ds: Vec<Daemon> = (0..3)
        .map(|i| start(&nss[i], &members[i], &cfg, &lease_dir, &owns[i]))
        .collect();
    for d in &mut ds {
        d.wait_notify("READY=1", LONG);
    }
    // each node's lease is its own (private mounts): node-1's subnet in its file
    if stack.v4() {
        let lease = std::fs::read_to_string(owns[0].join("subnet.env")).unwrap();
        assert!(lease.contains("FLANNEL_SUBNET=198.18.1.1/24"), "{lease}");
    }
    let pairs = |idx: &[usize]| -> Vec<(&Member, &Netns, &Netns)> {
        idx.iter()
            .map(|&i| (&members[i], &nss[i], &pods[i]))
            .collect()
    };
    check_mesh(&pairs(&[0, 1, 2]), stack);
    // node-4 is not known yet (positive control for the grow below)
    let text = nothing_of(&nss[0], "node-1", &members[3], stack);
    assert!(!text.is_empty());

    // Grow: one edit to the file, node-4 starts on it, SIGHUP to the rest.
    std::fs::write(&cfg, fleet_text(&all, stack, &lease_dir)).unwrap();
    ds.push(start(&nss[3], &members[3], &cfg, &lease_dir, &owns[3]));
    ds[3].wait_notify("READY=1", LONG);
    for d in &mut ds[..3] {
        reload(d);
    }
    check_mesh(&pairs(&[0, 1, 2, 3]), stack);

    // Shrink: node-3 leaves the file (and stops); SIGHUP to the rest.
    let without: Vec<&Member> = [0, 1, 3].iter().map(|&i| &members[i]).collect();
    std::fs::write(&cfg, fleet_text(&without, stack, &lease_dir)).unwrap();
    assert_eq!(ds[2].stop(), 0, "{}", ds[2].logs());
    for i in [0, 1, 3] {
        reload(&mut ds[i]);
    }
    for i in [0, 1, 3] {
        let text = nothing_of(&nss[i], &members[i].name, &members[2], stack);
        // positive control: the other peers' objects are there
        let other = if i == 0 { &members[1] } else { &members[0] };
        let addr = if stack.v4() { &other.v4 } else { &other.v6 };
        assert!(
            text.iter().any(|t| t.contains(&format!("\"{addr}\""))),
            "{}: {text:#?}",
            members[i].name
        );
    }
    check_mesh(&pairs(&[0, 1, 3]), stack);
    for i in [0, 1, 3] {
        assert_eq!(ds[i].stop(), 0, "{}", ds[i].logs());
    }
}

#[test]
fn grow_and_shrink_one_fleet_file_with_sighup_ipv4() {
    grow_and_shrink(Stack::V4);
}

#[test]
fn grow_and_shrink_one_fleet_file_with_sighup_ipv6() {
    grow_and_shrink(Stack::V6);
}

#[test]
fn grow_and_shrink_one_fleet_file_with_sighup_dual_stack() {
    grow_and_shrink(Stack::Dual);
}

/// A fleet node whose underlay is found by address and gets that address
/// only after the daemon started (DHCP at boot), with the resync an hour and
/// the retry backoff grown long: the address event itself makes the pass
/// (not a retry), and from then on the underlay's own events are followed
/// (its MTU change reaches the device without any timer).
#[test]
fn an_underlay_found_by_address_is_followed_from_its_first_event() {
    let ns = Netns::new("fladdr");
    ns.ip(&[
        "link",
        "add",
        "eth-late",
        "type",
        "veth",
        "peer",
        "name",
        "eth-late-p",
    ]);
    ns.ip(&["link", "set", "eth-late", "up"]);
    ns.ip(&["link", "set", "eth-late-p", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let (me, other) = (member(1), member(2));
    let text = fleet_text(&[&me, &other], Stack::V4, dir.path())
        + "backoff_max_secs = 3600\nready = \"converged\"\n";
    let cfg = write_config(dir.path(), "fleet.toml", &text);
    let mut d = Daemon::start_run_args(
        &[
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            ns.name.clone(),
        ],
        &cfg,
        &["--node", &me.name],
        &[],
    );
    let status = d.wait_notify("STATUS=waiting", LONG);
    assert!(status.contains("interface with 192.0.2.21"), "{status}");
    // Blocked passes are retried after 0.1, 0.2, … 6.4 s: after pass #7
    // the next retry is 6.4 s away, so a pass now is the event's.
    eventually("blocked pass #7", Duration::from_secs(60), || {
        d.logs().contains("pass #7 (retry)")
    });
    assert!(ns.link("flannel.1").is_none());
    ns.ip(&["addr", "add", &format!("{}/24", me.v4), "dev", "eth-late"]);
    d.wait_notify("READY=1", LONG);
    let link = ns.link("flannel.1").unwrap();
    assert_eq!(link["linkinfo"]["info_data"]["link"], "eth-late", "{link}");
    let logs = d.logs();
    let created = logs
        .lines()
        .find(|l| l.contains("pass #") && l.contains("vxlan flannel.1"))
        .unwrap_or_else(|| panic!("no pass created flannel.1:\n{logs}"));
    assert!(created.contains("(kernel events)"), "{created}\n{logs}");
    // the resolved underlay is followed: its MTU change is an event (once
    // the pass after arming the lease watch has found everything in sync,
    // nothing else is due for an hour)
    assert_eq!(link["mtu"], 1450, "{link}");
    eventually("a pass in sync after READY", LONG, || {
        d.logs().contains(": in sync (")
    });
    ns.ip(&["link", "set", "eth-late", "mtu", "1400"]);
    eventually(
        "flannel.1 follows its underlay's MTU",
        Duration::from_secs(30),
        || ns.link("flannel.1").is_some_and(|l| l["mtu"] == 1350),
    );
    assert_eq!(d.stop(), 0, "{}", d.logs());
}
