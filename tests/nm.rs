//! netconverge next to a REAL NetworkManager (1.42, private D-Bus, confined
//! to namespaces by tests/common/nm.rs): NM tearing down and rebuilding the
//! underlay, the D-Bus path alone repairing when netlink is ignored, NM and
//! the bus restarting mid-run, no bus at all, and the coexistence warning.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::fixtures::{self, lease_path};
use common::nm::{CON, IF, NmSandbox};
use common::overlay::{Kernel, Overlay};
use common::{
    LONG, Netns, Stack, UNDERLAY, UNDERLAY_V4, UNDERLAY_V6, code, poll, stderr, stdout,
    stdout_stderr,
};
use netconverge::daemon::Hint;
use netconverge::daemon::nm;
use serde_json::Value;

const NODE: &str = "node-nm";
const PEERS: usize = 4;
const ACTIVATED: &str = "NetworkManager activated mgmt0-system: converging now";
const DEACTIVATED: &str = "NetworkManager: mgmt0-system deactivated";
const FOLLOWING: &str = "following underlay(s) mgmt0-system (activated)";

/// Dual-stack flannel devices on `underlay`, `PEERS` peers per family, a
/// lease file, and a resync/backoff so long that only events repair.
fn config(dir: &Path, underlay: &str, networkmanager: &str) -> PathBuf {
    let text = fixtures::node_name(NODE)
        + &fixtures::daemon(
            3600,
            &format!("backoff_max_secs = 3600\nnetworkmanager = \"{networkmanager}\"\n"),
        )
        + &fixtures::vxlan_v4(underlay)
        + &fixtures::vxlan_v6(underlay)
        + &fixtures::peers_v4(PEERS)
        + &fixtures::peers_v6(PEERS)
        + &fixtures::lease(dir, Stack::Dual);
    fixtures::write_config(dir, "netconverge.toml", &text)
}

/// Everything the config declares, read with iproute2; `Err` says what is
/// missing (for the failure message).
fn full_state(
    k: &impl Kernel,
    dir: &Path,
    underlay: &str,
    local: (&str, &str),
) -> Result<(), String> {
    let overlay = Overlay {
        node: NODE,
        underlay,
        stack: Stack::Dual,
        local,
        peers: PEERS,
        lease: lease_path(dir),
    };
    overlay.check(k)
}

/// mgmt0's addresses (see [`NmSandbox::add_mgmt0`]).
const NM_LOCAL: (&str, &str) = ("192.0.2.10", "2001:db8::10");

fn nm_state(sb: &NmSandbox, dir: &Path) -> Result<(), String> {
    full_state(sb, dir, IF, NM_LOCAL)
}

fn wait_state(sb: &NmSandbox, dir: &Path, what: &str, d: &Daemon) {
    if let Err(e) = poll(LONG, || nm_state(sb, dir)) {
        panic!(
            "{what}: state not back within {LONG:?}: {e}\ndaemon log:\n{}",
            d.logs()
        )
    }
}

/// A sandbox whose NetworkManager has brought up `mgmt0`.
fn sandbox() -> NmSandbox {
    let sb = NmSandbox::new();
    sb.add_mgmt0();
    sb
}

/// A daemon on `mgmt0` (config in `dir`, `networkmanager` setting, `env`)
/// that said READY=1 and built the full state; with `auto`, it also found
/// NetworkManager.
fn started(sb: &NmSandbox, dir: &Path, networkmanager: &str, env: &[(&str, &str)]) -> Daemon {
    let cfg = config(dir, IF, networkmanager);
    let mut d = start_daemon(sb, &cfg, env);
    d.wait_notify("READY=1", LONG);
    wait_state(sb, dir, "start", &d);
    if networkmanager == "auto" {
        eventually("follower found NetworkManager", LONG, || {
            d.logs().contains(FOLLOWING)
        });
    }
    d
}

fn start_daemon(sb: &NmSandbox, cfg: &Path, extra: &[(&str, &str)]) -> Daemon {
    let bus = sb.bus_address();
    let mut env = vec![("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str())];
    env.extend_from_slice(extra);
    Daemon::start_with(&sb.prefix(), cfg, &env)
}

fn count(d: &Daemon, needle: &str) -> usize {
    d.logs().matches(needle).count()
}

/// The bus is gone: reconnect attempts (at 1 s, 2 s) are logged as still
/// failing, while `first` (the first failure's line) is not repeated.
fn assert_quiet_bus_retries(d: &Daemon, first: &str) {
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(count(d, first), 1, "{}", d.logs());
    assert!(
        d.logs().contains("system D-Bus still not reachable"),
        "no retry?\n{}",
        d.logs()
    );
}

/// SIGTERM: a clean exit, and no panic in the whole log.
fn stop(mut d: Daemon) {
    let logs = d.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn nm_rebuild_cycles_restore_full_state_using_nm_signals() {
    let sb = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let mut d = started(&sb, dir.path(), "auto", &[]);
    for i in 1..=20 {
        let before = sb.ifindex(IF).unwrap();
        sb.nmcli(&[
            "connection",
            "modify",
            CON,
            "ipv4.dns",
            &format!("198.51.100.{i}"),
        ]);
        sb.down_up();
        assert_ne!(
            sb.ifindex(IF).unwrap(),
            before,
            "cycle {i}: NetworkManager did not rebuild {IF}"
        );
        let resolv = sb.exec(&["cat", "/run/NetworkManager/resolv.conf"]);
        assert!(
            resolv.contains(&format!("198.51.100.{i}")),
            "cycle {i}: {resolv}"
        );
        wait_state(&sb, dir.path(), &format!("cycle {i}"), &d);
        // the signals of this very cycle arrived and were acted on
        eventually(&format!("cycle {i}: NM signals logged"), LONG, || {
            count(&d, DEACTIVATED) >= i && count(&d, ACTIVATED) >= i
        });
    }
    assert_eq!(
        count(&d, DEACTIVATED),
        20,
        "one Deactivated per teardown:\n{}",
        d.logs()
    );
    assert_eq!(count(&d, ACTIVATED), 20, "{}", d.logs());
    assert!(
        d.logs().contains("reason 39: user requested"),
        "{}",
        d.logs()
    );
    // STATUS explained the vanished underlay while it was gone
    d.drain();
    assert!(
        d.messages
            .iter()
            .any(|m| m.contains("STATUS=") && m.contains("deactivated by NetworkManager")),
        "{:?}",
        d.messages
    );
    assert!(
        d.logs().contains("(urgent"),
        "no pass triggered by NetworkManager:\n{}",
        d.logs()
    );
    stop(d);
    sb.finish();
}

/// With every netlink notification ignored (test knob) and the daemon
/// paused across the rebuild, nothing but the NM hints can trigger a pass.
fn rebuild_while_paused(sb: &NmSandbox, d: &Daemon, dir: &Path) {
    d.signal("-STOP");
    sb.down_up();
    let broken = nm_state(sb, dir);
    d.signal("-CONT");
    assert!(broken.is_err(), "the rebuild left the overlay intact?");
}

#[test]
fn dbus_alone_repairs_when_netlink_is_ignored() {
    let sb = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let knob = [("NETCONVERGE_TEST_IGNORE_NETLINK", "1")];
    let d = started(&sb, dir.path(), "auto", &knob);
    for i in 1..=5 {
        rebuild_while_paused(&sb, &d, dir.path());
        wait_state(&sb, dir.path(), &format!("cycle {i}"), &d);
        assert!(count(&d, ACTIVATED) >= i, "{}", d.logs());
    }
    assert!(d.logs().contains("ignoring every netlink notification"));
    stop(d);

    // control: the same without NetworkManager hints is never repaired,
    // so the repairs above came from D-Bus alone
    let dir2 = tempfile::tempdir().unwrap();
    let d = started(&sb, dir2.path(), "off", &knob);
    rebuild_while_paused(&sb, &d, dir2.path());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        nm_state(&sb, dir2.path()).is_err(),
        "repaired without NetworkManager: the knob does not suppress netlink\n{}",
        d.logs()
    );
    assert!(!d.logs().contains("NetworkManager:"), "{}", d.logs());
    stop(d);
    sb.finish();
}

#[test]
fn nm_and_bus_restart_mid_run() {
    let mut sb = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let mut d = started(&sb, dir.path(), "auto", &[]);

    // NetworkManager stops (SIGTERM by PID): logged once, netlink goes on
    sb.stop_nm();
    eventually("NM departure logged", LONG, || {
        d.logs()
            .contains("NetworkManager left the bus; continuing with netlink alone")
    });
    sb.ip(&["route", "del", "198.19.0.64/26"]);
    sb.ip(&["-6", "neigh", "del", "fd00:42:0:3::", "dev", "flannel-v6.1"]);
    wait_state(&sb, dir.path(), "drift without NetworkManager", &d);
    let left = "NetworkManager left the bus; continuing with netlink alone";
    assert_eq!(count(&d, left), 1, "{}", d.logs());

    // it comes back: the follower picks it up and uses its signals again
    sb.start_nm();
    sb.wait_activated(IF);
    eventually("NM return logged", LONG, || {
        d.logs().contains("NetworkManager appeared on the bus")
    });
    let (deact, act) = (count(&d, DEACTIVATED), count(&d, ACTIVATED));
    sb.down_up();
    wait_state(&sb, dir.path(), "rebuild after NM restart", &d);
    eventually("signals of the new NM used", LONG, || {
        count(&d, DEACTIVATED) > deact && count(&d, ACTIVATED) > act
    });

    // the bus itself goes away (NM first, as a system shutdown would)
    sb.stop_nm();
    sb.stop_bus();
    eventually("bus loss logged", LONG, || {
        d.logs().contains("system D-Bus connection lost")
    });
    // several reconnect attempts (1 s, 2 s backoff) log nothing new
    assert_quiet_bus_retries(&d, "system D-Bus connection lost");
    assert_eq!(count(&d, "system D-Bus not reachable"), 0, "{}", d.logs());
    sb.ip(&["route", "del", "198.19.0.128/26"]);
    wait_state(&sb, dir.path(), "drift without a bus", &d);

    sb.start_bus();
    sb.start_nm();
    sb.wait_activated(IF);
    eventually("reconnected", LONG, || {
        d.logs().contains("system D-Bus reachable again")
            && d.logs()
                .matches("following underlay(s) mgmt0-system")
                .count()
                >= 3
    });
    let (deact, act) = (count(&d, DEACTIVATED), count(&d, ACTIVATED));
    sb.down_up();
    wait_state(&sb, dir.path(), "rebuild after bus restart", &d);
    eventually("signals after reconnect used", LONG, || {
        count(&d, DEACTIVATED) > deact && count(&d, ACTIVATED) > act
    });
    assert!(d.child.as_mut().unwrap().try_wait().unwrap().is_none());
    // NetworkManager left twice (stop, then stop before the bus): one line each
    assert_eq!(count(&d, left), 2, "{}", d.logs());
    stop(d);
    sb.finish();
}

#[test]
fn reload_switches_networkmanager_following_on_and_off() {
    let sb = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let mut d = started(&sb, dir.path(), "off", &[]);
    sb.down_up();
    wait_state(&sb, dir.path(), "off: netlink alone", &d);
    assert!(!d.logs().contains("NetworkManager"), "{}", d.logs());

    config(dir.path(), IF, "auto");
    d.signal("-HUP");
    d.wait_notify("RELOADING=1", LONG);
    d.wait_notify("READY=1", LONG);
    eventually("follower started by the reload", LONG, || {
        d.logs().contains(FOLLOWING)
    });
    sb.down_up();
    wait_state(&sb, dir.path(), "auto after reload", &d);
    eventually("hints used", LONG, || count(&d, ACTIVATED) == 1);

    config(dir.path(), IF, "off");
    d.signal("-HUP");
    d.wait_notify("RELOADING=1", LONG);
    d.wait_notify("READY=1", LONG);
    sb.down_up();
    wait_state(&sb, dir.path(), "off again", &d);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&d, ACTIVATED),
        1,
        "follower still running:\n{}",
        d.logs()
    );
    assert_eq!(count(&d, DEACTIVATED), 1, "{}", d.logs());
    stop(d);
    sb.finish();
}

#[test]
fn no_bus_at_start_converges_on_netlink_alone() {
    let ns = Netns::node("nobus", Stack::Dual);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), UNDERLAY, "auto");
    let mut d = Daemon::start(
        &ns,
        &cfg,
        &[(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/netconverge-test/bus",
        )],
    );
    d.wait_notify("READY=1", LONG);
    let local = (UNDERLAY_V4, UNDERLAY_V6);
    full_state(&ns, dir.path(), UNDERLAY, local).unwrap();
    // retries at 1 s and 2 s happen, the log line does not repeat
    assert_quiet_bus_retries(&d, "system D-Bus not reachable");
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    eventually("drift repaired", LONG, || {
        full_state(&ns, dir.path(), UNDERLAY, local).is_ok()
    });
    stop(d);
}

fn single_vxlan_config(dir: &Path, name: &str, networkmanager: &str) -> PathBuf {
    // distinct VNIs: the kernel refuses two VXLANs with the same VNI, port and device
    let vni = 7 + name.len();
    let subnet = format!("198.19.{vni}.0/24");
    let text = fixtures::node_name(NODE)
        + &format!("\n[daemon]\nnetworkmanager = \"{networkmanager}\"\n")
        + &format!("\n[[vxlan]]\nname = \"{name}\"\nvni = {vni}\nunderlay = \"{IF}\"\n")
        + &fixtures::peer(name, &subnet, "192.0.2.20", "02:00:00:00:00:01");
    fixtures::write_config(dir, &format!("{name}-{networkmanager}.toml"), &text)
}

#[test]
fn validate_and_check_warn_when_nm_manages_an_owned_device() {
    let sb = NmSandbox::new();
    sb.add_mgmt0();
    let dir = tempfile::tempdir().unwrap();
    // NetworkManager may manage mgmt0*: a VXLAN called mgmt0-vx is fair game to it
    let managed = single_vxlan_config(dir.path(), "mgmt0-vx", "auto");
    let out = sb.netconverge(&managed, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    // an operator hands it to NetworkManager (`nmcli device set … managed yes`)
    eventually("NetworkManager sees mgmt0-vx", LONG, || {
        sb.device_state("mgmt0-vx").is_some()
    });
    sb.nmcli(&["device", "set", "mgmt0-vx", "managed", "yes"]);
    let nm_managed = |dev: &str| {
        sb.exec(&["nmcli", "-g", "GENERAL.NM-MANAGED", "device", "show", dev])
            .trim()
            == "yes"
    };
    eventually("NetworkManager manages mgmt0-vx", LONG, || {
        nm_managed("mgmt0-vx")
    });

    let warning = "warning: NetworkManager manages mgmt0-vx, which netconverge owns";
    let out = sb.netconverge(&managed, &["validate"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    assert!(stderr(&out).contains("unmanaged-devices=interface-name:mgmt0-vx"));
    assert!(
        !stdout(&out).contains("warning"),
        "warnings go to stderr only"
    );
    let out = sb.netconverge(&managed, &["converge", "--check"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    assert!(stdout(&out).contains("in sync"), "{}", stdout(&out));
    let out = sb.netconverge(&managed, &["converge", "--check", "--format", "json"]);
    assert_eq!(code(&out), 0);
    assert!(stderr(&out).contains(warning));
    serde_json::from_str::<Value>(&stdout(&out)).expect("stdout stays pure JSON");
    // networkmanager = "off": netconverge does not ask
    let off = single_vxlan_config(dir.path(), "mgmt0-vx", "off");
    let out = sb.netconverge(&off, &["validate"]);
    assert_eq!(code(&out), 0);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // a device NetworkManager leaves alone (unmanaged-devices): silence
    let unmanaged = single_vxlan_config(dir.path(), "flannel.1", "auto");
    let out = sb.netconverge(&unmanaged, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    eventually("NetworkManager sees flannel.1", LONG, || {
        sb.device_state("flannel.1").is_some()
    });
    assert!(!nm_managed("flannel.1"), "flannel.1 must be unmanaged");
    for args in [&["validate"][..], &["converge", "--check"][..]] {
        let out = sb.netconverge(&unmanaged, args);
        assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
        assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    }
    sb.finish();
}

#[test]
fn validate_without_any_bus_is_silent_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = single_vxlan_config(dir.path(), "flannel.1", "auto");
    let bin = env!("CARGO_BIN_EXE_netconverge");
    for addr in [None, Some("unix:path=/nonexistent/netconverge-test/bus")] {
        let mut c = Command::new(bin);
        c.args(["-c", cfg.to_str().unwrap(), "validate"]);
        match addr {
            Some(a) => c.env("DBUS_SYSTEM_BUS_ADDRESS", a),
            None => c.env_remove("DBUS_SYSTEM_BUS_ADDRESS"),
        };
        let out = c.output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(stdout(&out).contains(": ok"));
        assert_eq!(stderr(&out), "", "validate must be silent without a bus");
    }
}

/// The follower as a library, against the real NetworkManager: the exact
/// hint sequence for NM appearing, activating, a rebuild, and leaving.
#[test]
fn follower_hints_from_real_networkmanager() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("netconverge=debug")
        .with_test_writer()
        .try_init();
    let mut sb = NmSandbox::without_nm();
    // the follower's runtime runs on its own thread, as in the daemon
    let (hint_tx, hints) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let address = sb.bus_address();
    let follower = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let underlays: BTreeSet<String> = [IF.to_string()].into();
            let mut w = nm::spawn_on(Some(address), underlays);
            let mut stop = stop_rx;
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    h = w.recv() => match h {
                        Some(h) => hint_tx.send(h).unwrap(),
                        None => return,
                    },
                }
            }
        });
    });
    let next = |what: &str| -> Hint {
        hints
            .recv_timeout(LONG)
            .unwrap_or_else(|_| panic!("no hint within {LONG:?} ({what})"))
    };
    // let it connect to the bus (NetworkManager not there yet)
    std::thread::sleep(Duration::from_millis(500));
    sb.start_nm();
    assert_eq!(next("NM up"), Hint::NmUp);
    sb.add_mgmt0();
    assert_eq!(next("first activation"), Hint::Activated(IF.into()));
    sb.down_up();
    assert_eq!(next("teardown"), Hint::Deactivated(IF.into()));
    assert_eq!(next("rebuild"), Hint::Activated(IF.into()));
    // someone else deletes the link under NetworkManager
    sb.ip(&["link", "del", IF]);
    assert_eq!(next("external deletion"), Hint::Deactivated(IF.into()));
    sb.nmcli(&["--wait", "30", "connection", "up", CON]);
    sb.wait_activated(IF);
    assert_eq!(next("back up"), Hint::Activated(IF.into()));
    // NetworkManager quitting unexports the (intact) device: no Deactivated
    sb.stop_nm();
    assert_eq!(next("NM down"), Hint::NmDown);
    // nothing else was queued: exactly one hint per event
    let extra = hints.recv_timeout(Duration::from_millis(500));
    assert!(extra.is_err(), "unexpected extra hint: {extra:?}");
    stop_tx.send(()).unwrap();
    follower.join().unwrap();
    sb.finish();
}
