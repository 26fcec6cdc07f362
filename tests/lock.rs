//! One writer per network namespace: a second daemon exits naming the
//! first, a hand `converge`/`cleanup` next to a daemon is refused unless
//! `--force` (or handed to the daemon with `--reload`), readers never wait,
//! and daemons in two namespaces never contend. Kernel state is read back
//! with `ip -j`; the lease file (which the daemon's own file does not
//! declare, so the daemon never touches it) proves what a forced converge
//! wrote.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::fixtures::{self, write_config};
use common::{LONG, Netns, Stack, UNDERLAY, code, output_within, stderr, stdout_stderr};
use nix::fcntl::{Flock, FlockArg};

const BIN: &str = env!("CARGO_BIN_EXE_netconverge");

/// flannel.1 with `peers` peers, a 60 s resync.
fn config(dir: &Path, name: &str, peers: usize, extra: &str) -> PathBuf {
    let text = fixtures::node_name("lock-node")
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4_24(peers)
        + &fixtures::daemon(60, "")
        + extra;
    write_config(dir, name, &text)
}

/// `netconverge -c cfg <args>` in `ns`, which must finish within [`LONG`]
/// (a second daemon that does not exit fails here instead of hanging).
fn nc(ns: &Netns, cfg: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, BIN, "-c"])
        .arg(cfg)
        .args(args)
        .env(common::STATE_DIR_ENV, ns.state_dir());
    output_within(&mut c, LONG)
}

fn has_route(ns: &Netns, dst: &str) -> bool {
    ns.ip_list(&["route", "show"])
        .iter()
        .any(|r| r["dst"] == dst)
}

#[test]
fn a_second_daemon_in_the_same_namespace_exits_naming_the_first() {
    let ns = Netns::node("lock2d", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let a = config(dir.path(), "a.toml", 1, "");
    // another file: two daemons on different files is what fought forever
    let b = config(dir.path(), "b.toml", 2, "");
    let mut d = Daemon::start(&ns, &a, &[]);
    d.wait_notify("READY=1", LONG);

    let out = nc(&ns, &b, &["run"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 4, "{}", stdout_stderr(&out));
    assert!(err.contains(&format!("pid {}", d.pid())), "{err}");
    assert!(
        err.contains(a.to_str().unwrap()),
        "names the holder's config: {err}"
    );
    assert!(
        err.contains("already manages this network namespace"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // the second daemon changed nothing: b's extra peer is not there
    assert!(!has_route(&ns, "198.18.3.0/24"));
    assert!(has_route(&ns, "198.18.2.0/24"), "the first daemon's state");

    // positive control: once the first one is gone, the lock is free
    assert_eq!(d.stop(), 0, "{}", d.logs());
    let mut d2 = Daemon::start(&ns, &b, &[]);
    d2.wait_notify("READY=1", LONG);
    assert!(has_route(&ns, "198.18.3.0/24"));
    assert_eq!(d2.stop(), 0, "{}", d2.logs());
}

#[test]
fn a_hand_converge_next_to_a_daemon_is_refused_unless_forced() {
    let ns = Netns::node("lockhand", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let a = config(dir.path(), "a.toml", 1, "");
    let with_lease = config(
        dir.path(),
        "b.toml",
        1,
        &fixtures::lease(dir.path(), Stack::V4),
    );
    let lease = fixtures::lease_path(dir.path());
    let mut d = Daemon::start(&ns, &a, &[]);
    d.wait_notify("READY=1", LONG);
    let pid = d.pid().to_string();

    let out = nc(&ns, &with_lease, &["converge"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 4, "{}", stdout_stderr(&out));
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(err.contains("systemctl reload netconverge"), "{err}");
    assert!(err.contains(&format!("kill -HUP {pid}")), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(!lease.exists(), "a refused converge wrote nothing");

    let out = nc(&ns, &a, &["cleanup"]);
    assert_eq!(code(&out), 4, "{}", stdout_stderr(&out));
    assert!(
        stderr(&out).contains("systemctl stop netconverge"),
        "{}",
        stderr(&out)
    );
    assert!(
        ns.link("flannel.1").is_some(),
        "a refused cleanup removed nothing"
    );

    // readers never take the lock
    for args in [
        &["converge", "--check"][..],
        &["cleanup", "--check"],
        &["show"],
    ] {
        let out = nc(&ns, &a, args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stdout_stderr(&out));
    }

    // --force: converges next to the daemon (the daemon's file has no
    // [lease], so it leaves the file alone)
    let out = nc(&ns, &with_lease, &["converge", "--force"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(lease.exists(), "the forced converge wrote the lease file");

    // the daemon kept the lock and is still in charge
    assert_eq!(code(&nc(&ns, &a, &["converge"])), 4);
    assert_eq!(d.stop(), 0, "{}", d.logs());
    // and without a daemon a plain converge takes the lock and works
    let out = nc(&ns, &a, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
}

#[test]
fn converge_reload_hands_the_file_to_the_daemon() {
    let ns = Netns::node("lockrl", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let a = config(dir.path(), "a.toml", 1, "");
    let mut d = Daemon::start(&ns, &a, &[]);
    d.wait_notify("READY=1", LONG);
    assert!(!has_route(&ns, "198.18.3.0/24"));

    // another file: a reload would load the daemon's, so it is refused
    let other = config(dir.path(), "other.toml", 2, "");
    let out = nc(&ns, &other, &["converge", "--reload"]);
    assert_eq!(code(&out), 4, "{}", stdout_stderr(&out));
    assert!(stderr(&out).contains("another file"), "{}", stderr(&out));
    assert!(!has_route(&ns, "198.18.3.0/24"));

    // the operator edits the daemon's file and asks it to reload
    config(dir.path(), "a.toml", 2, "");
    let out = nc(&ns, &a, &["converge", "--reload"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert!(
        stderr(&out).contains(&format!("asked the daemon (pid {}) to reload", d.pid())),
        "{}",
        stderr(&out)
    );
    eventually("the daemon reloaded and added the new peer", LONG, || {
        has_route(&ns, "198.18.3.0/24")
    });
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn daemons_in_two_namespaces_both_run() {
    let n1 = Netns::node("lockns1", Stack::V4);
    let n2 = Netns::node("lockns2", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "a.toml", 1, "");
    let mut d1 = Daemon::start(&n1, &cfg, &[]);
    let mut d2 = Daemon::start(&n2, &cfg, &[]);
    d1.wait_notify("READY=1", LONG);
    d2.wait_notify("READY=1", LONG);
    for ns in [&n1, &n2] {
        assert!(has_route(ns, "198.18.2.0/24"), "{}", ns.name);
    }
    // and a hand converge in a third namespace is not refused by either
    let n3 = Netns::node("lockns3", Stack::V4);
    let out = nc(&n3, &cfg, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    // both are still running (exit 0 on SIGTERM, not 4 long ago)
    assert_eq!(d1.stop(), 0, "{}", d1.logs());
    assert_eq!(d2.stop(), 0, "{}", d2.logs());
}

#[test]
fn the_lock_dies_with_its_holder() {
    // kill -9 releases the lock: the kernel drops it with the process
    let ns = Netns::node("lockk9", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "a.toml", 1, "");
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    assert_eq!(code(&nc(&ns, &cfg, &["converge"])), 4, "held while alive");
    d.kill9();
    let out = nc(&ns, &cfg, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
}

/// Hold `ns`'s lock from this test process, as a holder running `command`
/// would (the lock file is keyed by the namespace's inode).
fn hold_lock(ns: &Netns, command: &str) -> Flock<std::fs::File> {
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.name))
        .unwrap()
        .ino();
    std::fs::create_dir_all("/run/netconverge").unwrap();
    let path = format!("/run/netconverge/netns-{ino}.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    let mut held = Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    held.set_len(0).unwrap();
    write!(held, "pid=1\ncommand={command}\nconfig=/the/holders.toml\n").unwrap();
    held
}

#[test]
fn a_one_shot_holder_is_waited_for_a_daemon_is_not() {
    let ns = Netns::node("lockwait", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "a.toml", 1, "");

    // a daemon holder: refused at once, naming what the file says
    let held = hold_lock(&ns, "run");
    let out = nc(&ns, &cfg, &["converge"]);
    assert_eq!(code(&out), 4, "{}", stdout_stderr(&out));
    assert!(
        stderr(&out).contains("netconverge daemon (pid 1, config /the/holders.toml)"),
        "{}",
        stderr(&out)
    );
    drop(held);

    // a one-shot holder (another converge) that finishes within a second
    let held = hold_lock(&ns, "converge");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(held);
    });
    let out = nc(&ns, &cfg, &["converge"]);
    release.join().unwrap();
    assert_eq!(
        code(&out),
        0,
        "waited, then converged: {}",
        stdout_stderr(&out)
    );
    assert!(ns.link("flannel.1").is_some());
}
