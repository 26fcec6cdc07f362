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

use common::daemon::{Daemon, eventually};
use common::fixtures::{self, lease_path};
use common::overlay::Overlay;
use common::{LONG, Netns, Stack, UNDERLAY, UNDERLAY_V4, UNDERLAY_V6};

const NODE: &str = "node-d";

/// A config for `stack` with `peers` peers per family, a lease file and
/// a long resync (so repairs prove the event path, not the timer).
fn config(dir: &Path, stack: Stack, peers: usize) -> PathBuf {
    let mut s = fixtures::node_name(NODE) + &fixtures::daemon(3600, "");
    if stack.v4() {
        s += &(fixtures::vxlan_v4(UNDERLAY) + &fixtures::peers_v4(peers));
    }
    if stack.v6() {
        s += &(fixtures::vxlan_v6(UNDERLAY) + &fixtures::peers_v6(peers));
    }
    s += &fixtures::lease(dir, stack);
    fixtures::write_config(dir, "netconverge.toml", &s)
}

/// The full state for `stack` with `peers` peers in the kernel and the
/// file; `Err` says what is missing.
fn state(ns: &Netns, dir: &Path, stack: Stack, peers: usize) -> Result<(), String> {
    let overlay = Overlay {
        node: NODE,
        underlay: UNDERLAY,
        stack,
        local: (UNDERLAY_V4, UNDERLAY_V6),
        peers,
        lease: lease_path(dir),
    };
    overlay.check(ns)
}

fn full_state(ns: &Netns, dir: &Path, stack: Stack, peers: usize) -> bool {
    state(ns, dir, stack, peers).is_ok()
}

/// A node with the underlay for `stack`, and a daemon (extra `env`)
/// started on a config with `peers` peers that has said READY=1.
fn ready(
    tag: &str,
    stack: Stack,
    peers: usize,
    env: &[(&str, &str)],
) -> (Netns, tempfile::TempDir, PathBuf, Daemon) {
    let ns = Netns::node(tag, stack);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), stack, peers);
    let mut d = Daemon::start(&ns, &cfg, env);
    d.wait_notify("READY=1", LONG);
    (ns, dir, cfg, d)
}

#[test]
fn ready_only_after_device_peers_and_lease_exist_then_status_watchdog_stopping() {
    let (ns, dir, _cfg, mut d) = ready("ready", Stack::V4, 50, &[("WATCHDOG_USEC", "200000")]);
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
    let cfg = config(dir.path(), Stack::V4, 3);
    let mut d = Daemon::start(&ns, &cfg, &[]);
    let status = d.wait_notify("STATUS=waiting", LONG);
    assert!(status.contains("underlay nc-under absent"), "{status}");
    assert!(
        !d.messages.iter().any(|m| m.contains("READY=1")),
        "READY=1 while blocked"
    );
    // the underlay shows up: converge without waiting for a resync
    ns.add_underlay();
    ns.add_underlay_addrs(Stack::V4);
    d.wait_notify("READY=1", LONG);
    assert!(full_state(&ns, dir.path(), Stack::V4, 3));
}

fn teardown_100_cycles(stack: Stack) {
    let tag = match stack {
        Stack::V4 => "td4",
        Stack::V6 => "td6",
        Stack::Dual => "td46",
    };
    let (ns, dir, _cfg, mut d) = ready(tag, stack, 5, &[]);
    for i in 0..100 {
        // NetworkManager-style rebuild: the kernel drops everything bound to it
        ns.ip(&["link", "del", "nc-under"]);
        if stack.v4() {
            eventually("vxlan gone with its underlay", LONG, || {
                ns.link("flannel.1").is_none()
            });
        }
        ns.add_underlay();
        // the address arrives a moment later
        std::thread::sleep(Duration::from_millis(if i % 10 == 0 { 30 } else { 2 }));
        ns.add_underlay_addrs(stack);
        if let Err(e) = common::poll(LONG, || state(&ns, dir.path(), stack, 5)) {
            let logs = d.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            panic!(
                "cycle {i}: full state not back within {LONG:?}: {e}\nlinks: {}\nroutes: {}\nneigh: {}\nfdb: {}\nlease: {:?}\nlog tail (newest first):\n{}",
                ns.ip(&["-d", "link"]),
                ns.ip(&["route", "show", "table", "all"]),
                ns.ip(&["neigh"]),
                ns.bridge(&["fdb", "show"]),
                std::fs::read_to_string(lease_path(dir.path())),
                tail.join("\n")
            );
        }
    }
    assert!(d.logs().lines().all(|l| !l.contains("panicked")));
    assert_eq!(d.stop(), 0);
}

variants!(teardown_100_cycles:
    underlay_teardown_100_cycles_ipv4 => Stack::V4,
    underlay_teardown_100_cycles_ipv6 => Stack::V6,
    underlay_teardown_100_cycles_dual_stack => Stack::Dual,
);

#[test]
fn drift_is_repaired_by_events_not_the_resync_timer() {
    let (ns, dir, _cfg, mut d) = ready("ddrift", Stack::V4, 3, &[]);
    let ok = || full_state(&ns, dir.path(), Stack::V4, 3);
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    eventually("route restored", Duration::from_secs(5), ok);
    ns.ip(&["neigh", "del", "198.19.0.64", "dev", "flannel.1"]);
    eventually("neighbour restored", Duration::from_secs(5), ok);
    let mac = "02:00:00:00:00:02";
    ns.fdb_del("flannel.1", mac, "192.0.2.4");
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
    let (ns, _dir, _cfg, mut d) = ready("churn", Stack::V4, 3, &[]);
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
    // a tiny notification buffer: any storm overflows it
    let rcvbuf = ("NETCONVERGE_MONITOR_RCVBUF", "4096");
    let (ns, dir, _cfg, mut d) = ready("overrun", Stack::V4, 3, &[rcvbuf]);
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
    let (ns, dir, cfg, mut d) = ready("reload", Stack::V4, 2, &[]);
    // valid: one more peer
    config(dir.path(), Stack::V4, 3);
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
    let ns = Netns::node("kill9", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 1000);
    let mut d = Daemon::start(&ns, &cfg, &[]);
    // kill as soon as the device exists: the pass is under way
    eventually("device created", LONG, || ns.link("flannel.1").is_some());
    d.kill9();
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    assert!(full_state(&ns, dir.path(), Stack::V4, 1000));
    assert_eq!(d.stop(), 0);
}
