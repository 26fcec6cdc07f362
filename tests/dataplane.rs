#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! A real two-node dataplane through the built binary: namespaces "node-a"
//! and "node-b" joined by the veth underlay `nc-under`, each converged from
//! the shipped `examples/pair/node-{a,b}.toml` (only the lease `path` and
//! `state_dir` are moved to a temp dir), with a "pod" namespace behind each
//! node on a `cni0` bridge, as flannel's CNI plugin sets it up. Pod-a pings
//! pod-b in IPv4 and IPv6, and the test proves the packets crossed the
//! VXLAN: the devices' counters move, the encapsulated UDP shows up on the
//! peer's underlay (an nftables counter), and without the FDB entry the
//! same ping fails.

mod common;

use std::path::{Path, PathBuf};

use common::daemon::{Daemon, eventually};
use common::fixtures::write_config;
use common::ruleset::{nft_file, rules_in};
use common::{LONG, Netns, code, stdout, stdout_stderr};
use netconverge::model::Mac;
use serde_json::Value;

/// One family's view of the pair: devices and the addresses pods use.
#[derive(Clone, Copy, Debug)]
struct Fam {
    name: &'static str,
    dev: &'static str,
    /// pod-a's and pod-b's addresses.
    pod: [&'static str; 2],
    /// nodes' underlay addresses (VTEPs).
    vtep: [&'static str; 2],
    /// nftables family word of the underlay.
    nft: &'static str,
}

const V4: Fam = Fam {
    name: "ipv4",
    dev: "flannel.1",
    pod: ["198.18.1.2", "198.18.2.2"],
    vtep: ["192.0.2.1", "192.0.2.2"],
    nft: "ip",
};

const V6: Fam = Fam {
    name: "ipv6",
    dev: "flannel-v6.1",
    pod: ["fd00:42:0:1::2", "fd00:42:0:2::2"],
    vtep: ["2001:db8::1", "2001:db8::2"],
    nft: "ip6",
};

const NODES: [&str; 2] = ["node-a", "node-b"];

/// A shipped pair example with only `path` and `state_dir` rewritten into
/// `dir` (so the test never touches /run/netconverge-example).
fn pair_config(node: &str, dir: &Path) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/pair/{node}.toml"));
    let text = std::fs::read_to_string(&shipped).unwrap();
    let (mut paths, mut states) = (0, 0);
    let out: String = text
        .lines()
        .map(|l| {
            if l.starts_with("path = ") {
                paths += 1;
                format!("path = \"{}\"", dir.join("subnet.env").display())
            } else if l.starts_with("state_dir = ") {
                states += 1;
                format!("state_dir = \"{}\"", dir.join("state").display())
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert_eq!((paths, states), (1, 1), "{shipped:?}: layout changed");
    write_config(dir, &format!("{node}.toml"), &out)
}

struct Node {
    ns: Netns,
    pod: Netns,
    cfg: PathBuf,
    dir: tempfile::TempDir,
}

struct Cluster {
    nodes: [Node; 2],
}

impl Cluster {
    /// Underlay, pods and bridges; nothing of netconverge's yet.
    fn new(tag: &str) -> Cluster {
        let mk = |i: usize| {
            let node = NODES[i];
            let ns = Netns::new(&format!("{tag}-{node}"));
            let pod = Netns::new(&format!("{tag}-pod-{}", &node[5..]));
            let dir = tempfile::tempdir().unwrap();
            let cfg = pair_config(node, dir.path());
            Node { ns, pod, cfg, dir }
        };
        let nodes = [mk(0), mk(1)];
        let [a, b] = &nodes;
        a.ns.ip(&[
            "link", "add", "nc-under", "type", "veth", "peer", "name", "nc-under", "netns",
            &b.ns.name,
        ]);
        for (i, n) in nodes.iter().enumerate() {
            let k = i + 1;
            let ns = &n.ns;
            ns.ip(&["link", "set", "nc-under", "up"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", V4.vtep[i]),
                "dev",
                "nc-under",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/64", V6.vtep[i]),
                "dev",
                "nc-under",
                "nodad",
            ]);
            // flannel's CNI bridge: the pod subnet's first address
            ns.ip(&["link", "add", "cni0", "type", "bridge"]);
            ns.ip(&["link", "set", "cni0", "up"]);
            ns.ip(&["addr", "add", &format!("198.18.{k}.1/24"), "dev", "cni0"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd00:42:0:{k}::1/64"),
                "dev",
                "cni0",
                "nodad",
            ]);
            ns.ip(&[
                "link",
                "add",
                "veth-pod",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &n.pod.name,
            ]);
            ns.ip(&["link", "set", "veth-pod", "master", "cni0", "up"]);
            ns.exec(&[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ]);
            let pod = &n.pod;
            pod.ip(&["link", "set", "eth0", "up"]);
            pod.ip(&["addr", "add", &format!("{}/24", V4.pod[i]), "dev", "eth0"]);
            pod.ip(&[
                "addr",
                "add",
                &format!("{}/64", V6.pod[i]),
                "dev",
                "eth0",
                "nodad",
            ]);
            pod.ip(&["route", "add", "default", "via", &format!("198.18.{k}.1")]);
            pod.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:42:0:{k}::1"),
            ]);
        }
        Cluster { nodes }
    }

    fn converge_all(&self) {
        for n in &self.nodes {
            let out = n.ns.netconverge(&n.cfg, &["converge"]);
            assert_eq!(code(&out), 0, "converge in {}: {out:?}", n.ns.name);
            assert!(stdout(&out).contains("converged:"), "{out:?}");
            let out = n.ns.netconverge(&n.cfg, &["converge", "--check"]);
            assert_eq!(code(&out), 0, "check after converge: {out:?}");
        }
    }

    fn a(&self) -> &Node {
        &self.nodes[0]
    }

    fn b(&self) -> &Node {
        &self.nodes[1]
    }
}

/// `ping` from `pod` to `dst`: `count` echo requests; true when any reply came.
fn ping(pod: &Netns, dst: &str, count: u32, wait_secs: u32) -> (bool, String) {
    let out = pod.exec_output(&[
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        &wait_secs.to_string(),
        dst,
    ]);
    (out.status.success(), stdout_stderr(&out))
}

/// `received` from ping's summary line.
fn received(ping_output: &str) -> u64 {
    let line = ping_output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary: {ping_output}"));
    let part = line.split(',').nth(1).unwrap();
    part.split_whitespace().next().unwrap().parse().unwrap()
}

/// (tx, rx) `counter` (`packets`, `dropped`…) of `dev`, from `ip -s -j link show`.
fn stats(ns: &Netns, dev: &str, counter: &str) -> (u64, u64) {
    let v = ns.ip_json(&["-s", "link", "show", "dev", dev]);
    let s = &v[0]["stats64"];
    (
        s["tx"][counter].as_u64().unwrap(),
        s["rx"][counter].as_u64().unwrap(),
    )
}

/// (tx packets, rx packets) of `dev`.
fn counters(ns: &Netns, dev: &str) -> (u64, u64) {
    stats(ns, dev, "packets")
}

/// A foreign nftables table on a node that counts VXLAN (UDP 8472) packets
/// arriving on the underlay, per family: what really went over the wire.
fn install_wire_counter(ns: &Netns) {
    let rules = "table netdev wire {\n\
        \tchain ingress {\n\
        \t\ttype filter hook ingress device \"nc-under\" priority 0; policy accept;\n\
        \t\tip protocol udp udp dport 8472 counter comment \"vxlan4\"\n\
        \t\tip6 nexthdr udp udp dport 8472 counter comment \"vxlan6\"\n\
        \t}\n}\n";
    nft_file(ns, rules);
}

/// Packets the wire counter of `fam` saw.
fn wire_packets(ns: &Netns, fam: Fam) -> u64 {
    let comment = if fam.nft == "ip" { "vxlan4" } else { "vxlan6" };
    let v: Value =
        serde_json::from_str(&ns.exec(&["nft", "-j", "list", "table", "netdev", "wire"])).unwrap();
    rules_in(&v)
        .find(|r| r["comment"] == comment)
        .and_then(|r| {
            r["expr"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|e| e.get("counter"))
        })
        .map(|c| c["packets"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no {comment} counter: {v}"))
}

/// Ping pod-a → pod-b in `fam` and prove the echo requests and replies went
/// through both nodes' VXLAN devices and over the underlay as UDP 8472.
fn ping_crosses_the_vxlan(c: &Cluster, fam: Fam) {
    const N: u32 = 5;
    let (a, b) = (c.a(), c.b());
    // the first echo may wait for neighbour resolution between pod and node
    let (ok, text) = ping(&a.pod, fam.pod[1], 1, 5);
    assert!(
        ok,
        "{} warm-up ping pod-a → pod-b failed:\n{text}",
        fam.name
    );

    let a0 = counters(&a.ns, fam.dev);
    let b0 = counters(&b.ns, fam.dev);
    let wa0 = wire_packets(&a.ns, fam);
    let wb0 = wire_packets(&b.ns, fam);
    let (ok, text) = ping(&a.pod, fam.pod[1], N, 3);
    assert!(ok, "{} ping pod-a → pod-b failed:\n{text}", fam.name);
    let got = received(&text);
    assert_eq!(got, u64::from(N), "{} lost replies:\n{text}", fam.name);
    let a1 = counters(&a.ns, fam.dev);
    let b1 = counters(&b.ns, fam.dev);
    let wa1 = wire_packets(&a.ns, fam);
    let wb1 = wire_packets(&b.ns, fam);
    // requests: out of node-a's VTEP, into node-b's; replies the other way;
    // and each node saw them as VXLAN packets on its underlay
    for (what, before, after) in [
        ("node-a tx", a0.0, a1.0),
        ("node-b rx", b0.1, b1.1),
        ("node-b tx", b0.0, b1.0),
        ("node-a rx", a0.1, a1.1),
        ("node-b wire", wb0, wb1),
        ("node-a wire", wa0, wa1),
    ] {
        assert!(
            after - before >= u64::from(N),
            "{} {}: {what} packets {before} → {after}",
            fam.name,
            fam.dev
        );
    }
}

#[test]
fn pods_on_two_nodes_ping_each_other_across_the_vxlan_ipv4_and_ipv6() {
    let c = Cluster::new("dp");
    // before netconverge: pod-b is unreachable (no route across the underlay)
    let (ok, text) = ping(&c.a().pod, V4.pod[1], 1, 1);
    assert!(!ok, "pod-b reachable before any converge:\n{text}");
    c.converge_all();
    for n in &c.nodes {
        install_wire_counter(&n.ns);
    }

    // the pair agrees, read with iproute2: each node's FDB entry and
    // neighbour point at the MAC the other node's device really has
    for (i, fam) in [(0usize, V4), (1, V4), (0, V6), (1, V6)] {
        let (me, other) = (&c.nodes[i], &c.nodes[1 - i]);
        let other_mac = other.ns.link(fam.dev).unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            other_mac,
            Mac::derive(NODES[1 - i], fam.dev).to_string(),
            "{}: MAC not derived from node_name",
            fam.dev
        );
        let fdb = me.ns.bridge_list(&["fdb", "show", "dev", fam.dev]);
        assert!(
            fdb.iter()
                .any(|f| f["mac"] == other_mac.as_str() && f["dst"] == fam.vtep[1 - i]),
            "{}: no fdb {other_mac} dst {} on {}: {fdb:?}",
            NODES[i],
            fam.vtep[1 - i],
            fam.dev
        );
        let neigh = me.ns.ip_list(&["neigh", "show", "dev", fam.dev]);
        assert!(
            neigh.iter().any(|n| n["lladdr"] == other_mac.as_str()),
            "{}: no neighbour → {other_mac}: {neigh:?}",
            NODES[i]
        );
    }
    // the lease file tells the CNI plugin what the bridge was given
    let lease = std::fs::read_to_string(c.a().dir.path().join("subnet.env")).unwrap();
    assert!(lease.contains("FLANNEL_SUBNET=198.18.1.1/24\n"), "{lease}");
    assert!(
        lease.contains("FLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\n"),
        "{lease}"
    );

    ping_crosses_the_vxlan(&c, V4);
    ping_crosses_the_vxlan(&c, V6);
    // and the other way round
    let (ok, text) = ping(&c.b().pod, V4.pod[0], 2, 3);
    assert!(ok, "pod-b → pod-a:\n{text}");
    let (ok, text) = ping(&c.b().pod, V6.pod[0], 2, 3);
    assert!(ok, "pod-b → pod-a (IPv6):\n{text}");
}

#[test]
fn without_the_fdb_entry_the_ping_fails_and_converge_restores_it() {
    let c = Cluster::new("fdb");
    c.converge_all();
    let a = c.a();
    for fam in [V4, V6] {
        let (ok, text) = ping(&a.pod, fam.pod[1], 1, 5);
        assert!(ok, "{}: {text}", fam.name);
        let mac = Mac::derive("node-b", fam.dev).to_string();
        a.ns.fdb_del(fam.dev, &mac, fam.vtep[1]);
        let fdb = a.ns.bridge_list(&["fdb", "show", "dev", fam.dev]);
        assert!(!fdb.iter().any(|f| f["mac"] == mac.as_str()), "{fdb:?}");
        let (tx_drop0, _) = stats(&a.ns, fam.dev, "dropped");
        let (ok, text) = ping(&a.pod, fam.pod[1], 2, 1);
        assert!(
            !ok,
            "{}: ping succeeded without the FDB entry:\n{text}",
            fam.name
        );
        // the VXLAN device had nowhere to send them
        let (tx_drop1, _) = stats(&a.ns, fam.dev, "dropped");
        assert!(
            tx_drop1 >= tx_drop0 + 2,
            "{}: tx_dropped {tx_drop0} → {tx_drop1}",
            fam.name
        );

        let out = a.ns.netconverge(&a.cfg, &["converge", "--check"]);
        assert_eq!(code(&out), 1, "{out:?}");
        let want = format!("+ fdb {mac} dev {} dst {}: missing", fam.dev, fam.vtep[1]);
        assert!(
            stdout(&out).contains(&want),
            "want {want:?} in:\n{}",
            stdout(&out)
        );
        assert!(
            stdout(&out).contains("1 to add, 0 to change, 0 to remove"),
            "{}",
            stdout(&out)
        );

        let out = a.ns.netconverge(&a.cfg, &["converge"]);
        assert_eq!(code(&out), 0, "{out:?}");
        let (ok, text) = ping(&a.pod, fam.pod[1], 3, 3);
        assert!(ok, "{}: not repaired:\n{text}", fam.name);
        assert_eq!(received(&text), 3, "{text}");
    }
}

#[test]
fn daemons_on_both_nodes_heal_the_dataplane_after_the_vtep_is_deleted() {
    let c = Cluster::new("heal");
    let mut daemons: Vec<Daemon> = c
        .nodes
        .iter()
        .map(|n| Daemon::start(&n.ns, &n.cfg, &[]))
        .collect();
    for d in &mut daemons {
        d.wait_notify("READY=1", LONG);
    }
    let (a, b) = (c.a(), c.b());
    for fam in [V4, V6] {
        let (ok, text) = ping(&a.pod, fam.pod[1], 1, 5);
        assert!(ok, "{}: {text}", fam.name);
    }
    // someone deletes node-a's VTEPs: the kernel drops their addresses,
    // routes, neighbours and FDB entries with them
    let old = a.ns.link(V4.dev).unwrap()["ifindex"].clone();
    a.ns.ip(&["link", "del", V4.dev]);
    a.ns.ip(&["link", "del", V6.dev]);
    eventually("node-a's daemon recreates both devices", LONG, || {
        a.ns.link(V4.dev).is_some_and(|l| l["ifindex"] != old) && a.ns.link(V6.dev).is_some()
    });
    for fam in [V4, V6] {
        // converged again: the pods reach each other without a manual step
        eventually(
            &format!("{} ping after the daemon's repair", fam.name),
            LONG,
            || ping(&a.pod, fam.pod[1], 1, 1).0,
        );
        let (ok, text) = ping(&b.pod, fam.pod[0], 2, 3);
        assert!(ok, "{}: pod-b → pod-a after repair:\n{text}", fam.name);
    }
    for n in &c.nodes {
        let out = n.ns.netconverge(&n.cfg, &["converge", "--check"]);
        assert_eq!(code(&out), 0, "{}: {out:?}", n.ns.name);
    }
    for d in &mut daemons {
        assert_eq!(d.stop(), 0, "{}", d.logs());
        let logs = d.logs();
        assert!(!logs.contains("panicked"), "{logs}");
        // logs captured to a file (as by a supervisor other than journald)
        // are plain text: colours are for terminals only
        assert!(logs.contains("ready after pass #"), "{logs}");
        assert!(
            !logs.contains('\x1b'),
            "terminal escapes in a log file:\n{logs:?}"
        );
    }
}
