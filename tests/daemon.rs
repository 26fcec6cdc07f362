//! `netconverge run` on a real kernel: sd_notify protocol, underlay teardown
//! cycles, drift repair, overrun, reload, crash/restart, event filtering.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    let (ns, dir, _cfg, mut d) = ready("churn", Stack::V4, 3, &[]);
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
    // Positive control: the same daemon, watched the same way, does run a
    // pass for a change that is ours (netlink delivers in order, so the
    // churn above was read before this).
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    eventually(
        "a pass for a declared route",
        Duration::from_secs(5),
        || d.logs().matches("pass #").count() > passes_before,
    );
    eventually("route restored", Duration::from_secs(5), || {
        full_state(&ns, dir.path(), Stack::V4, 3)
    });
    assert_eq!(d.stop(), 0);
    // the stop line counts the events that were relevant: the control's
    // (and our own repair's) at least
    let logs = d.logs();
    let stop = logs
        .lines()
        .find(|l| l.contains("relevant event(s)"))
        .unwrap_or_else(|| panic!("no stop line:\n{logs}"));
    let n: u64 = stop
        .split(" pass(es), ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count in {stop:?}"));
    assert!(n >= 1, "the control's event was not counted: {stop}");
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

// ------------------------------------------------ never stall on systemd --

/// Fill `path`'s receive queue from `tx` until a send would block; returns
/// how many datagrams went in.
fn fill_queue(tx: &UnixDatagram, path: &Path) -> usize {
    let mut n = 0;
    loop {
        match tx.send_to(b"FILLER=1\n", path) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("filling the notify queue: {e}"),
        }
        assert!(n < 100_000, "the notify queue never filled");
    }
}

/// Every datagram waiting on `rx` (non-blocking).
fn drain_queue(rx: &UnixDatagram) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while let Ok(n) = rx.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn a_notify_socket_nobody_reads_stalls_nothing_ready_and_stopping_are_retried() {
    let ns = Netns::node("nstuck", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Stack::V4, 3);
    // systemd's end of NOTIFY_SOCKET, busy: its queue is full before the
    // daemon even starts, so every send the daemon makes would block
    let sock = dir.path().join("stuck.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_nonblocking(true).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    tx.set_nonblocking(true).unwrap();
    let filled = fill_queue(&tx, &sock);
    assert!(filled > 0);
    let sock_s = sock.to_str().unwrap();
    // pings every 25 ms: plenty of sends that would block
    let mut d = Daemon::start(
        &ns,
        &cfg,
        &[("NOTIFY_SOCKET", sock_s), ("WATCHDOG_USEC", "100000")],
    );
    eventually("converged with nobody reading", LONG, || {
        full_state(&ns, dir.path(), Stack::V4, 3)
    });
    std::thread::sleep(Duration::from_millis(300));
    // control: the queue is still full, the daemon's sends all met it
    assert_eq!(fill_queue(&tx, &sock), 0, "the queue drained by itself");
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    eventually(
        "drift repaired while notifications are stuck",
        Duration::from_secs(5),
        || full_state(&ns, dir.path(), Stack::V4, 3),
    );

    // the reader catches up: READY=1 (retried) and the latest status arrive
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !got.iter().any(|m: &String| m.contains("READY=1")) {
        assert!(
            Instant::now() < end,
            "READY=1 never retried: {got:?}\n{}",
            d.logs()
        );
        got.extend(drain_queue(&rx));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        got.iter().take(filled).all(|m| m == "FILLER=1\n"),
        "{got:?}"
    );
    assert!(
        got.iter().any(|m| m.contains("STATUS=converged")),
        "{got:?}"
    );

    // full again, then SIGTERM: served at once; STOPPING=1 goes out once
    // the reader resumes (a moment later)
    std::thread::sleep(Duration::from_millis(100));
    fill_queue(&tx, &sock);
    let reader = {
        let rx = rx.try_clone().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut got = Vec::new();
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                got.extend(drain_queue(&rx));
                std::thread::sleep(Duration::from_millis(10));
            }
            got
        })
    };
    assert_eq!(d.stop(), 0, "{}", d.logs());
    let got = reader.join().unwrap();
    assert!(
        got.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 not retried: {got:?}\n{}",
        d.logs()
    );
    assert!(full_state(&ns, dir.path(), Stack::V4, 3));
}

/// An `nft` in front of the real one that sleeps `delay` seconds (the
/// content of `dir/delay`, when present) before applying a batch: a NAT
/// tool wedged on a lock.
fn slow_nft(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = common::sh(&["sh", "-c", "command -v nft"]);
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *' -f '*) if [ -f {d}/delay ]; then touch {d}/slowed; sleep \"$(cat {d}/delay)\"; fi;; esac\nexec {real} \"$@\"\n",
        d = dir.display(),
        real = real.trim()
    );
    let path = bin.join("nft");
    std::fs::write(&path, script).unwrap();
    common::sh(&["chmod", "+x", path.to_str().unwrap()]);
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

#[test]
fn watchdog_pings_keep_coming_during_a_long_and_a_wedged_pass() {
    let ns = Netns::node("wdog", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::node_name(NODE)
        + &fixtures::daemon(3600, "networkmanager = \"off\"\nbackoff_max_secs = 2\n")
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4(1000)
        + "\n[nat]\nbackend = \"nftables\"\n"
        + &fixtures::lease(dir.path(), Stack::V4);
    let cfg = fixtures::write_config(dir.path(), "netconverge.toml", &text);
    // every NAT transaction takes 3 s: longer than the whole watchdog
    // interval, and longer than the pass timeout (half of it)
    std::fs::write(dir.path().join("delay"), "3").unwrap();
    let path = slow_nft(dir.path());
    let mut d = Daemon::start(&ns, &cfg, &[("WATCHDOG_USEC", "2000000"), ("PATH", &path)]);
    let start = Instant::now();
    d.collect_for(Duration::from_secs(7));
    assert!(
        dir.path().join("slowed").exists(),
        "the NAT tool was never slowed: the pass was not long\n{}",
        d.logs()
    );
    let pings: Vec<Instant> = d
        .messages
        .iter()
        .zip(&d.arrivals)
        .filter(|(m, _)| m.contains("WATCHDOG=1"))
        .map(|(_, t)| *t)
        .collect();
    let mut marks = vec![start];
    marks.extend(&pings);
    let worst = marks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        pings.len() >= 10 && worst < Duration::from_secs(1),
        "{} pings, largest gap {worst:?} (watchdog 2 s: must stay under half)\n{}",
        pings.len(),
        d.logs()
    );
    // the first pass (1000 peers) came to its NAT transaction and was abandoned
    assert!(d.logs().contains("timed out after 1000 ms"), "{}", d.logs());
    assert!(ns.link("flannel.1").is_some());
    // the tool recovers: the retry converges (NAT included) and says READY
    std::fs::remove_file(dir.path().join("delay")).unwrap();
    if !d.messages.iter().any(|m| m.contains("READY=1")) {
        d.wait_notify("READY=1", LONG);
    }
    assert!(ruleset_has_our_table(&ns), "{}", d.logs());
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

fn ruleset_has_our_table(ns: &Netns) -> bool {
    ns.exec_output(&["nft", "list", "table", "ip", "netconverge"])
        .status
        .success()
}

// ------------------------------------------- guard mode never deadlocks k3s --

/// The config of [`config`] with the lease in guard mode (`preserve`).
fn guard_config(dir: &Path) -> PathBuf {
    let s = fixtures::node_name(NODE)
        + &fixtures::daemon(3600, "networkmanager = \"off\"\nready = \"converged\"\n")
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4(3)
        + &fixtures::lease(dir, Stack::V4)
        + "mode = \"preserve\"\n";
    fixtures::write_config(dir, "netconverge.toml", &s)
}

fn overlay_without_lease(ns: &Netns) -> bool {
    ns.link("flannel.1").is_some() && ns.ip_list(&["route", "show", "proto", "199"]).len() == 3
}

/// k3s (ordered after us) writes the lease file: READY=1 must not wait for
/// it, STATUS says what is missing, and the guard keeps working afterwards.
fn guard_mode_ready_without(live: Option<&str>) {
    let ns = Netns::node(
        if live.is_some() { "gcorrupt" } else { "gfirst" },
        Stack::V4,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = guard_config(dir.path());
    let lease = lease_path(dir.path());
    if let Some(text) = live {
        std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
        std::fs::write(&lease, text).unwrap();
    }
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    assert!(overlay_without_lease(&ns), "READY=1 before the overlay");
    let status = d
        .messages
        .iter()
        .rev()
        .find(|m| m.contains("STATUS="))
        .cloned()
        .unwrap_or_default();
    assert!(
        status.contains("STATUS=converged") && status.contains("waiting for flannel"),
        "{status}"
    );
    let backup = dir.path().join("state/subnet.env");
    match live {
        // flannel's (invalid) content is left alone, never backed up
        Some(text) => {
            assert!(status.contains("invalid"), "{status}");
            assert_eq!(std::fs::read_to_string(&lease).unwrap(), text);
            assert!(!backup.exists());
        }
        None => {
            assert!(
                status.contains("no lease file and no backup yet"),
                "{status}"
            );
            assert!(!lease.exists());
        }
    }
    // flannel starts and writes the file: the guard takes its backup
    let good = "FLANNEL_NETWORK=198.18.0.0/15\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    std::fs::write(&lease, good).unwrap();
    eventually("backup taken from flannel's file", LONG, || {
        std::fs::read_to_string(&backup).is_ok_and(|b| b == good)
    });
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn guard_mode_first_boot_without_lease_file_still_reaches_ready() {
    guard_mode_ready_without(None);
}

#[test]
fn guard_mode_corrupt_lease_file_still_reaches_ready() {
    guard_mode_ready_without(Some("FLANNEL_NETWORK=garbage\n\u{1}\n"));
}
