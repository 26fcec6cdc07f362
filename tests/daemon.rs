//! `netconverge run` on a real kernel: sd_notify protocol, underlay teardown
//! cycles, drift repair, overrun, reload, crash/restart, event filtering.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Netns;
use common::daemon::{Daemon, eventually};
use netconverge::model::Mac;
use serde_json::Value;

const NODE: &str = "node-d";
const LONG: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq)]
enum Stack {
    V4,
    V6,
    Dual,
}

impl Stack {
    fn v4(self) -> bool {
        self != Stack::V6
    }
    fn v6(self) -> bool {
        self != Stack::V4
    }
}

fn add_underlay(ns: &Netns, stack: Stack, with_addr: bool) {
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
    if with_addr {
        add_underlay_addr(ns, stack);
    }
}

fn add_underlay_addr(ns: &Netns, stack: Stack) {
    if stack.v4() {
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "nc-under"]);
    }
    if stack.v6() {
        ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "nc-under", "nodad"]);
    }
}

/// A config for `stack` with `peers` peers per family, a lease file and
/// a long resync (so repairs prove the event path, not the timer).
fn config(dir: &Path, stack: Stack, peers: usize, extra: &str) -> PathBuf {
    let mut s = format!(
        "node_name = \"{NODE}\"\n{extra}\n[daemon]\nresync_secs = 3600\ndebounce_ms = 10\n"
    );
    let mut lease = String::from("\n[lease]\n");
    if stack.v4() {
        s += "\n[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"nc-under\"\n";
        s += "\n[[address]]\ndev = \"flannel.1\"\ncidr = \"198.18.1.0/32\"\n";
        lease += "network = \"198.18.0.0/15\"\nsubnet = \"198.18.1.0/24\"\n";
        for i in 0..peers {
            // /26 peer subnets in 198.19.0.0/16: up to 1024 peers
            s += &format!(
                "\n[[peer]]\ndev = \"flannel.1\"\nsubnet = \"198.19.{}.{}/26\"\nvtep_ip = \"192.0.2.{}\"\nvtep_mac = \"02:00:00:00:{:02x}:{:02x}\"\n",
                i / 4,
                (i % 4) * 64,
                i % 250 + 2,
                i >> 8,
                i & 0xff
            );
        }
    }
    if stack.v6() {
        s += "\n[[vxlan]]\nname = \"flannel-v6.1\"\nvni = 1\nunderlay = \"nc-under\"\nfamily = \"ipv6\"\n";
        s += "\n[[address]]\ndev = \"flannel-v6.1\"\ncidr = \"fd00:42:0:1::/128\"\n";
        lease += "ipv6_network = \"fd00:42::/56\"\nipv6_subnet = \"fd00:42:0:1::/64\"\n";
        for i in 0..peers {
            s += &format!(
                "\n[[peer]]\ndev = \"flannel-v6.1\"\nsubnet = \"fd00:42:0:{:x}::/64\"\nvtep_ip = \"2001:db8::{:x}\"\nvtep_mac = \"02:00:00:06:{:02x}:{:02x}\"\n",
                i + 2,
                i + 2,
                i >> 8,
                i & 0xff
            );
        }
    }
    lease += &format!(
        "path = \"{}\"\nstate_dir = \"{}\"\n",
        dir.join("run/subnet.env").display(),
        dir.join("state").display()
    );
    s += &lease;
    let p = dir.join("netconverge.toml");
    std::fs::write(&p, s).unwrap();
    p
}

fn lease_path(dir: &Path) -> PathBuf {
    dir.join("run/subnet.env")
}

fn link(ns: &Netns, name: &str) -> Option<Value> {
    let all = ns.ip_json(&["-d", "link", "show"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == name)
        .cloned()
}

fn count(ns: &Netns, what: &[&str]) -> usize {
    ns.ip_json(what).as_array().unwrap().len()
}

/// The full state for `stack` with `peers` peers is in the kernel and the file.
fn full_state(ns: &Netns, dir: &Path, stack: Stack, peers: usize) -> bool {
    missing(ns, dir, stack, peers).is_none()
}

/// What is missing from the full state, if anything.
fn missing(ns: &Netns, dir: &Path, stack: Stack, peers: usize) -> Option<String> {
    let mut devs = vec![];
    if stack.v4() {
        devs.push(("flannel.1", 1450, "-4"));
    }
    if stack.v6() {
        devs.push(("flannel-v6.1", 1430, "-6"));
    }
    for (dev, mtu, fam) in devs {
        let Some(l) = link(ns, dev) else {
            return Some(format!("{dev} absent"));
        };
        if l["mtu"] != mtu || l["address"] != Mac::derive(NODE, dev).to_string() {
            return Some(format!("{dev}: mtu/mac {} {}", l["mtu"], l["address"]));
        }
        let n = count(ns, &[fam, "route", "show", "dev", dev, "proto", "199"]);
        if n != peers {
            return Some(format!("{dev}: {n} routes"));
        }
        let n = count(ns, &[fam, "neigh", "show", "dev", dev, "nud", "permanent"]);
        if n != peers {
            return Some(format!("{dev}: {n} permanent neighbours"));
        }
        // entries with a VTEP destination (not the device's own multicast addresses)
        let fdb = ns.bridge_json(&["fdb", "show", "dev", dev]);
        let n = fdb
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f.get("dst").is_some())
            .count();
        if n != peers {
            return Some(format!("{dev}: {n} fdb entries"));
        }
        let addrs = ns.ip_json(&[fam, "addr", "show", "dev", dev, "scope", "global"]);
        // iproute2 prints addresses its filter dropped as `{}`: count real ones
        let n: usize = addrs
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a["addr_info"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| i.get("local").is_some())
                    .count()
            })
            .sum();
        if n != 1 {
            return Some(format!("{dev}: {n} global addresses"));
        }
    }
    match std::fs::read_to_string(lease_path(dir)) {
        Ok(s) if s.contains("FLANNEL_MTU=") => None,
        other => Some(format!("lease: {other:?}")),
    }
}

#[test]
fn ready_only_after_device_peers_and_lease_exist_then_status_watchdog_stopping() {
    let ns = Netns::new("ready");
    add_underlay(&ns, Stack::V4, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 50, "");
    let mut d = Daemon::start(&ns, &cfg, &[("WATCHDOG_USEC", "200000")]);
    d.wait_notify("READY=1", LONG);
    // at the instant READY=1 arrived, everything must already be there
    assert!(
        full_state(&ns, dir.path(), Stack::V4, 50),
        "READY=1 before convergence:\n{}",
        d.logs()
    );
    let lease = std::fs::read_to_string(lease_path(dir.path())).unwrap();
    assert!(
        lease.contains("FLANNEL_SUBNET=198.18.1.1/24") && lease.contains("FLANNEL_MTU=1450"),
        "{lease}"
    );
    assert!(
        d.messages
            .iter()
            .any(|m| m.contains("STATUS=converged: 1 device(s), 50 peer(s), lease ok")),
        "{:?}",
        d.messages
    );
    // watchdog pings keep coming (every 100 ms)
    let before = d
        .messages
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    for _ in 0..3 {
        d.wait_notify("WATCHDOG=1", Duration::from_secs(2));
    }
    assert!(
        d.messages
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count()
            >= before + 3
    );
    // STOPPING=1 on SIGTERM, clean exit, state left in place
    assert_eq!(d.stop(), 0, "{}", d.logs());
    d.drain();
    assert!(
        d.messages.iter().any(|m| m.contains("STOPPING=1")),
        "{:?}",
        d.messages
    );
    assert!(
        full_state(&ns, dir.path(), Stack::V4, 50),
        "state must survive the stop"
    );
}

#[test]
fn blocked_underlay_holds_readiness_and_status_says_why() {
    let ns = Netns::new("blocked");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 3, "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    let status = d.wait_notify("STATUS=waiting", LONG);
    assert!(status.contains("underlay nc-under absent"), "{status}");
    assert!(
        !d.messages.iter().any(|m| m.contains("READY=1")),
        "READY=1 while blocked"
    );
    // the underlay shows up: converge without waiting for a resync
    add_underlay(&ns, Stack::V4, true);
    d.wait_notify("READY=1", LONG);
    assert!(full_state(&ns, dir.path(), Stack::V4, 3));
}

fn teardown_cycles(stack: Stack, cycles: usize) {
    let ns = Netns::new(match stack {
        Stack::V4 => "td4",
        Stack::V6 => "td6",
        Stack::Dual => "td46",
    });
    add_underlay(&ns, stack, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), stack, 5, "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    for i in 0..cycles {
        // NetworkManager-style rebuild: the kernel drops everything bound to it
        ns.ip(&["link", "del", "nc-under"]);
        if stack.v4() {
            eventually("vxlan gone with its underlay", LONG, || {
                link(&ns, "flannel.1").is_none()
            });
        }
        add_underlay(&ns, stack, false);
        // the address arrives a moment later
        std::thread::sleep(Duration::from_millis(if i % 10 == 0 { 30 } else { 2 }));
        add_underlay_addr(&ns, stack);
        let start = std::time::Instant::now();
        while !full_state(&ns, dir.path(), stack, 5) {
            if start.elapsed() > LONG {
                let logs = d.logs();
                let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                panic!(
                    "cycle {i}: full state not back within {LONG:?}: {:?}\nlinks: {}\nroutes: {}\nneigh: {}\nfdb: {}\nlease: {:?}\nlog tail (newest first):\n{}",
                    missing(&ns, dir.path(), stack, 5),
                    ns.ip(&["-d", "link"]),
                    ns.ip(&["route", "show", "table", "all"]),
                    ns.ip(&["neigh"]),
                    ns.exec(&["bridge", "fdb", "show"]),
                    std::fs::read_to_string(lease_path(dir.path())),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(d.logs().lines().all(|l| !l.contains("panicked")));
    assert_eq!(d.stop(), 0);
}

#[test]
fn underlay_teardown_100_cycles_ipv4() {
    teardown_cycles(Stack::V4, 100);
}

#[test]
fn underlay_teardown_100_cycles_ipv6() {
    teardown_cycles(Stack::V6, 100);
}

#[test]
fn underlay_teardown_100_cycles_dual_stack() {
    teardown_cycles(Stack::Dual, 100);
}

#[test]
fn drift_is_repaired_by_events_not_the_resync_timer() {
    let ns = Netns::new("ddrift");
    add_underlay(&ns, Stack::V4, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 3, "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    let ok = || full_state(&ns, dir.path(), Stack::V4, 3);
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    eventually("route restored", Duration::from_secs(5), ok);
    ns.ip(&["neigh", "del", "198.19.0.64", "dev", "flannel.1"]);
    eventually("neighbour restored", Duration::from_secs(5), ok);
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
        "192.0.2.4",
        "self",
    ]);
    eventually("fdb restored", Duration::from_secs(5), ok);
    ns.ip(&["link", "set", "flannel.1", "mtu", "1300"]);
    eventually("mtu restored", Duration::from_secs(5), ok);
    std::fs::remove_file(lease_path(dir.path())).unwrap();
    // a deleted file raises no netlink event: the next pass (any trigger) restores it
    ns.ip(&["link", "set", "flannel.1", "down"]);
    eventually(
        "lease file and link state restored",
        Duration::from_secs(5),
        ok,
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn unmanaged_veth_churn_triggers_no_converge_pass() {
    let ns = Netns::new("churn");
    add_underlay(&ns, Stack::V4, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 3, "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    std::thread::sleep(Duration::from_millis(300));
    let passes_before = d.logs().matches("pass #").count();
    for i in 0..50 {
        let a = format!("veth{i}");
        let b = format!("vethp{i}");
        ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ns.ip(&[
            "addr",
            "add",
            &format!("198.51.100.{}/32", i + 1),
            "dev",
            &a,
        ]);
        ns.ip(&["link", "set", &a, "up"]);
        ns.ip(&["route", "add", &format!("203.0.113.{i}/32"), "dev", &a]);
        ns.ip(&["link", "del", &a]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let logs = d.logs();
    assert_eq!(
        logs.matches("pass #").count(),
        passes_before,
        "unrelated churn caused passes:\n{logs}"
    );
    assert_eq!(d.stop(), 0);
    assert!(
        d.logs().contains("0 relevant event(s)") || d.logs().contains("relevant event"),
        "{}",
        d.logs()
    );
}

#[test]
fn netlink_overrun_triggers_resync_and_converges() {
    let ns = Netns::new("overrun");
    add_underlay(&ns, Stack::V4, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 3, "");
    // a tiny notification buffer: any storm overflows it
    let mut d = Daemon::start(&ns, &cfg, &[("NETCONVERGE_MONITOR_RCVBUF", "4096")]);
    d.wait_notify("READY=1", LONG);
    // stop the daemon from reading while the storm fills its buffer
    d.signal("-STOP");
    let batch = dir.path().join("storm.batch");
    let mut s = String::new();
    for i in 0..3000 {
        s += &format!(
            "route add 100.64.{}.{}/32 dev nc-under-p\n",
            i / 250,
            i % 250
        );
    }
    std::fs::write(&batch, s).unwrap();
    ns.ip(&["-batch", batch.to_str().unwrap()]);
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    d.signal("-CONT");
    eventually("repaired after overrun", LONG, || {
        full_state(&ns, dir.path(), Stack::V4, 3)
    });
    eventually("overrun logged", Duration::from_secs(5), || {
        d.logs().contains("overrun")
    });
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn reload_valid_and_invalid_config() {
    let ns = Netns::new("reload");
    add_underlay(&ns, Stack::V4, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 2, "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    // valid: one more peer
    config(dir.path(), Stack::V4, 3, "");
    d.signal("-HUP");
    let m = d.wait_notify("RELOADING=1", LONG);
    assert!(m.contains("MONOTONIC_USEC="), "{m}");
    d.wait_notify("READY=1", LONG);
    assert!(full_state(&ns, dir.path(), Stack::V4, 3), "{}", d.logs());
    // invalid: keeps running on the previous state, says so
    std::fs::write(
        &cfg,
        "node_name = \"x\"\n[[vxlan]]\nname = \"flannel.1\"\nvni = 0\n",
    )
    .unwrap();
    d.signal("-HUP");
    let s = d.wait_notify("reload failed", LONG);
    assert!(s.contains("STATUS="), "{s}");
    assert!(full_state(&ns, dir.path(), Stack::V4, 3));
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    eventually("old config still enforced", Duration::from_secs(5), || {
        full_state(&ns, dir.path(), Stack::V4, 3)
    });
    assert_eq!(d.stop(), 0);
}

#[test]
fn kill9_mid_converge_then_restart_converges() {
    let ns = Netns::new("kill9");
    add_underlay(&ns, Stack::V4, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 1000, "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    // kill as soon as the device exists: the pass is under way
    eventually("device created", LONG, || link(&ns, "flannel.1").is_some());
    d.kill9();
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    assert!(full_state(&ns, dir.path(), Stack::V4, 1000));
    assert_eq!(d.stop(), 0);
}
