#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! flannel's lease file (`subnet.env`) through the built binary and the
//! daemon. Write mode: READY=1 only once the file is right (checked on the
//! notify reader thread the instant READY arrives), the underlay's MTU flows
//! into the VXLAN device and the file, a deleted file comes back, hand
//! edits are named key by key by `--check`. Guard mode (`preserve`): a
//! valid file is backed up, a "rebooted" (deleted) file is restored before
//! READY=1, a corrupt file never overwrites the backup.
//!
//! Files are read by the test itself; MTUs with `ip -j`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{Daemon, Probe, eventually};
use common::fixtures;
use common::{LONG, Netns, Stack, UNDERLAY};

struct Paths {
    live: PathBuf,
    state: PathBuf,
    backup: PathBuf,
}

fn paths(dir: &Path) -> Paths {
    Paths {
        live: dir.join("run/flannel/subnet.env"),
        state: dir.join("state"),
        backup: dir.join("state/subnet.env"),
    }
}

/// A node (IPv4 underlay) with a config from [`config`] in a temp dir.
fn setup(
    tag: &str,
    mode: &str,
    lease_extra: &str,
    resync_secs: u32,
) -> (Netns, tempfile::TempDir, Paths, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mode, lease_extra, resync_secs);
    let p = paths(dir.path());
    (Netns::node(tag, Stack::V4), dir, p, cfg)
}

/// A node with one IPv4 VXLAN device, two peers and a `[lease]` in `mode`.
/// `lease_extra` adds keys to `[lease]`.
fn config(dir: &Path, mode: &str, lease_extra: &str, resync_secs: u32) -> PathBuf {
    let p = paths(dir);
    let lease = format!(
        "\n[lease]\nmode = \"{mode}\"\npath = \"{}\"\nstate_dir = \"{}\"\n{lease_extra}",
        p.live.display(),
        p.state.display()
    );
    let text = fixtures::node_name("lease-node")
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4_24(2)
        + &lease
        + &fixtures::daemon(resync_secs, "networkmanager = \"off\"\n");
    fixtures::write_config(dir, "netconverge.toml", &text)
}

const WRITE_KEYS: &str = "network = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n";

/// What flannel itself would write for this node, with `mtu` (written out
/// here by hand: an independent expectation, not our renderer).
fn flannel_file(mtu: u32) -> String {
    format!(
        "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n"
    )
}

/// `KEY=value` lines, as the CNI plugin reads them.
fn keys(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn mtu(ns: &Netns, dev: &str) -> u64 {
    ns.link(dev).unwrap()["mtu"].as_u64().unwrap()
}

/// A probe that reads `path` at the instant READY=1 arrives.
fn read_at_ready(path: PathBuf) -> Probe {
    Box::new(move |msg: &str| {
        if msg.lines().any(|l| l == "READY=1") {
            read(&path).unwrap_or_else(|| "<missing>".to_string())
        } else {
            String::new()
        }
    })
}

// ----------------------------------------------------------- write mode --

#[test]
fn write_mode_ready_only_with_the_right_file_and_underlay_mtu_flows_into_it() {
    // a long resync: the MTU change must come through the netlink event
    let (ns, _dir, p, cfg) = setup("lease-w", "write", WRITE_KEYS, 3600);
    let mut d = Daemon::start_probed(&ns, &cfg, &[], read_at_ready(p.live.clone()));
    d.wait_notify("READY=1", LONG);
    let at_ready = d.probed("READY=1").unwrap();
    assert_eq!(
        at_ready,
        flannel_file(1450),
        "file at the instant of READY=1"
    );
    assert_eq!(mtu(&ns, "flannel.1"), 1450);
    assert_eq!(
        keys(&at_ready)["FLANNEL_MTU"],
        mtu(&ns, "flannel.1").to_string(),
        "FLANNEL_MTU is the VXLAN device's MTU"
    );
    let mode = std::fs::metadata(&p.live).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o044,
        0o044,
        "the CNI plugin must be able to read it: {mode:o}"
    );

    // the underlay's MTU changes: device and file follow, without a resync
    for (under, want) in [(1400, 1350), (1500, 1450), (9000, 8950)] {
        ns.ip(&["link", "set", UNDERLAY, "mtu", &under.to_string()]);
        eventually(
            &format!("underlay mtu {under} → flannel.1 {want} and FLANNEL_MTU={want}"),
            LONG,
            || {
                mtu(&ns, "flannel.1") == want
                    && read(&p.live).as_deref() == Some(flannel_file(want as u32).as_str())
            },
        );
    }
    let logs = d.logs();
    assert!(!logs.contains("(periodic resync)"), "{logs}");
    assert!(logs.contains("(kernel events)"), "{logs}");
    assert!(
        logs.contains("FLANNEL_MTU 1450 → 1350"),
        "the pass names the key it changed:\n{logs}"
    );
    ns.netconverge_exits(&cfg, &["converge", "--check"], 0);
    assert_eq!(d.stop(), 0, "{}", d.logs());
    assert_eq!(
        read(&p.live).unwrap(),
        flannel_file(8950),
        "left in place on stop"
    );
}

/// A deleted or hand-edited file raises no netlink event: the daemon's
/// inotify watch on the directory triggers the repair. The resync is an hour
/// away, so only the watch can explain a prompt restore.
#[test]
fn write_mode_deleted_or_edited_file_is_restored_by_the_directory_watch() {
    let (ns, dir, p, cfg) = setup("lease-del", "write", WRITE_KEYS, 3600);
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    let ok = || read(&p.live).as_deref() == Some(flannel_file(1450).as_str());
    for round in 1..=3 {
        std::fs::remove_file(&p.live).unwrap();
        eventually(&format!("round {round}: deleted file restored"), LONG, ok);
        std::fs::write(&p.live, "FLANNEL_MTU=1\n").unwrap();
        eventually(&format!("round {round}: edited file restored"), LONG, ok);
    }
    // the whole directory goes (tmpfs cleared): recreated, and watched again
    std::fs::remove_dir_all(p.live.parent().unwrap()).unwrap();
    eventually("directory and file restored", LONG, ok);
    std::fs::remove_file(&p.live).unwrap();
    eventually("file restored after the watch was re-armed", LONG, ok);
    let logs = d.logs();
    assert!(logs.contains("lease file changed on disk"), "{logs}");
    assert!(
        !logs.contains("(periodic resync)"),
        "no resync may have done it: {logs}"
    );
    assert_eq!(d.stop(), 0);
    drop(dir);
}

#[test]
fn write_mode_check_names_the_drifted_keys_and_converge_repairs() {
    let (ns, _dir, p, cfg) = setup("lease-chk", "write", WRITE_KEYS, 3600);
    ns.netconverge_exits(&cfg, &["converge"], 0);
    assert_eq!(read(&p.live).unwrap(), flannel_file(1450));

    // someone edits the file: two values changed, one key gone, one added
    std::fs::write(
        &p.live,
        "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.9.1/24\nFLANNEL_MTU=9000\nFOO=bar\n",
    )
    .unwrap();
    let text = ns.netconverge_exits(&cfg, &["converge", "--check"], 1);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("~ lease {}:", p.live.display())))
        .unwrap_or_else(|| panic!("no lease change in:\n{text}"));
    for key in [
        "FLANNEL_SUBNET 198.18.9.1/24 → 198.18.1.1/24",
        "FLANNEL_MTU 9000 → 1450",
        "FLANNEL_IPMASQ missing",
        "FOO unexpected",
    ] {
        assert!(line.contains(key), "want {key:?} in {line:?}");
    }
    assert!(
        !line.contains("FLANNEL_NETWORK"),
        "an unchanged key is not drift: {line}"
    );
    assert!(
        text.contains("0 to add, 1 to change, 0 to remove, 0 blocked"),
        "{text}"
    );
    let json = ns.netconverge_exits(&cfg, &["converge", "--check", "--format", "json"], 1);
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["changes"][0]["kind"], "modify", "{j}");
    assert!(
        j["changes"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("FLANNEL_MTU"),
        "{j}"
    );

    ns.netconverge_exits(&cfg, &["converge"], 0);
    assert_eq!(read(&p.live).unwrap(), flannel_file(1450));
    ns.netconverge_exits(&cfg, &["converge", "--check"], 0);
}

// ----------------------------------------------------------- guard mode --

/// What k3s's embedded flannel writes (dual-stack, masquerading).
const K3S_FILE: &str = "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\n\
FLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\n\
FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

#[test]
fn guard_mode_backs_up_restores_before_ready_and_never_saves_a_corrupt_file() {
    // resync 1 s: a corrupted file raises no event either
    let (ns, dir, p, cfg) = setup("lease-g", "preserve", "", 1);

    // 1. k3s wrote a valid file: the daemon saves it before READY=1
    std::fs::create_dir_all(p.live.parent().unwrap()).unwrap();
    std::fs::write(&p.live, K3S_FILE).unwrap();
    let mut d = Daemon::start_probed(&ns, &cfg, &[], read_at_ready(p.backup.clone()));
    d.wait_notify("READY=1", LONG);
    assert_eq!(d.probed("READY=1").unwrap(), K3S_FILE, "backup at READY=1");
    let mode = std::fs::metadata(&p.state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "state_dir is netconverge's own");
    assert_eq!(read(&p.live).unwrap(), K3S_FILE, "live file untouched");
    assert_eq!(d.stop(), 0);

    // 2. "reboot": /run is empty again; the daemon starts before k3s and
    //    restores the file before it says READY=1
    std::fs::remove_dir_all(dir.path().join("run")).unwrap();
    let mut d = Daemon::start_probed(&ns, &cfg, &[], read_at_ready(p.live.clone()));
    d.wait_notify("READY=1", LONG);
    assert_eq!(
        d.probed("READY=1").unwrap(),
        K3S_FILE,
        "live file at the instant of READY=1"
    );
    let want = format!(
        "+ lease {}: missing; restore from backup {}",
        p.live.display(),
        p.backup.display()
    );
    assert!(d.logs().contains(&want), "want {want:?} in:\n{}", d.logs());

    // 3. the live file is corrupted while the daemon runs: left as is,
    //    reported, and never copied over the good backup
    let corrupt = "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=garbage\n";
    std::fs::write(&p.live, corrupt).unwrap();
    eventually("a pass reports the corrupt file", LONG, || {
        d.logs()
            .contains(&format!("blocked: lease {}: invalid", p.live.display()))
    });
    // reported, and never holding readiness (k3s, ordered after us, writes it)
    d.wait_notify("waiting for flannel: invalid", LONG);
    // a few more passes
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(read(&p.backup).unwrap(), K3S_FILE, "backup overwritten");
    assert_eq!(read(&p.live).unwrap(), corrupt, "flannel's file rewritten");
    assert_eq!(d.stop(), 0);
    let text = ns.netconverge_exits(&cfg, &["converge", "--check"], 1);
    assert!(
        text.contains(&format!(
            "! lease {}: blocked: invalid (FLANNEL_SUBNET=\"garbage\"",
            p.live.display()
        )) && text.contains(&format!("backup {} kept", p.backup.display())),
        "{text}"
    );
    // blocked is not converged
    ns.netconverge_exits(&cfg, &["converge"], 1);
    assert_eq!(read(&p.backup).unwrap(), K3S_FILE);

    // 4. k3s rewrites a valid but different file (that agrees with the
    //    device's MTU): --check names the keys that differ from the backup,
    //    converge refreshes the backup
    let newer = K3S_FILE.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false");
    std::fs::write(&p.live, &newer).unwrap();
    let text = ns.netconverge_exits(&cfg, &["converge", "--check"], 1);
    let want = format!(
        "~ lease backup {}: refresh: FLANNEL_IPMASQ true → false",
        p.backup.display()
    );
    assert!(text.contains(&want), "want {want:?} in:\n{text}");
    assert_eq!(
        read(&p.backup).unwrap(),
        K3S_FILE,
        "--check changed nothing"
    );
    ns.netconverge_exits(&cfg, &["converge"], 0);
    assert_eq!(read(&p.backup).unwrap(), newer);
    assert_eq!(
        read(&p.live).unwrap(),
        newer,
        "guard mode never rewrites a valid file"
    );
}

/// Only k3s's flannel writes the file, and k3s starts after our READY=1:
/// waiting for it would deadlock the node (see tests/daemon.rs for more).
#[test]
fn guard_mode_without_file_or_backup_is_ready_and_says_what_is_missing() {
    let (ns, _dir, p, cfg) = setup("lease-g0", "preserve", "", 3600);
    let mut d = Daemon::start(&ns, &cfg, &[]);
    let status = d.wait_notify("waiting for flannel", LONG);
    assert!(
        status.contains("no lease file and no backup yet"),
        "{status}"
    );
    d.wait_notify("READY=1", LONG);
    assert!(read(&p.live).is_none() && read(&p.backup).is_none());
    assert_eq!(d.stop(), 0);
}

// ------------------------------------------------ one bad file, the rest --

/// The peers' routes on flannel.1, read with `ip -j`.
fn peer_routes(ns: &Netns) -> Vec<String> {
    let mut v: Vec<String> = ns
        .ip_list(&["-4", "route", "show", "dev", "flannel.1"])
        .into_iter()
        .filter(|r| {
            r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"))
        })
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_lease_path_that_is_a_directory_fifo_or_device_blocks_only_the_lease() {
    for (tag, what) in [
        ("dir", "a directory"),
        ("fifo", "a FIFO"),
        ("dev", "a device"),
    ] {
        let (ns, _dir, p, cfg) = setup(&format!("lease-{tag}"), "write", WRITE_KEYS, 3600);
        std::fs::create_dir_all(p.live.parent().unwrap()).unwrap();
        let made = match tag {
            "dir" => std::fs::create_dir(&p.live).is_ok(),
            "fifo" => std::process::Command::new("mkfifo")
                .arg(&p.live)
                .status()
                .unwrap()
                .success(),
            _ => std::process::Command::new("mknod")
                .arg(&p.live)
                .args(["c", "1", "3"])
                .status()
                .unwrap()
                .success(),
        };
        assert!(made, "{tag}");
        // exit 1 (blocked), not 3; everything else converged
        let out = ns.netconverge_exits(&cfg, &["converge"], 1);
        let want = format!(
            "! lease {}: blocked: {what}, not a regular file",
            p.live.display()
        );
        assert!(out.contains(&want), "{tag}: want {want:?} in:\n{out}");
        assert_eq!(mtu(&ns, "flannel.1"), 1450, "{tag}: device created");
        assert_eq!(
            peer_routes(&ns),
            ["198.18.2.0/24", "198.18.3.0/24"],
            "{tag}: peer routes installed"
        );
        let text = ns.netconverge_exits(&cfg, &["converge", "--check"], 1);
        assert!(
            text.contains("0 to add, 0 to change, 0 to remove, 1 blocked"),
            "{tag}: only the lease differs:\n{text}"
        );
        let ft = std::fs::symlink_metadata(&p.live).unwrap().file_type();
        assert!(!ft.is_file(), "{tag}: replaced");
        if tag == "dir" {
            // The daemon converges the rest and reports the lease, instead
            // of failing every pass: a peer route deleted by hand comes back.
            let mut d = Daemon::start(&ns, &cfg, &[]);
            let status = d.wait_notify("STATUS=waiting", LONG);
            assert!(status.contains("lease"), "{status}");
            ns.ip(&["route", "del", "198.18.2.0/24"]);
            eventually("the deleted peer route is repaired", LONG, || {
                peer_routes(&ns).len() == 2
            });
            assert_eq!(d.stop(), 0, "{}", d.logs());
        }
        // Positive control: once the obstacle is gone the file is written.
        if tag == "dir" {
            std::fs::remove_dir(&p.live).unwrap();
        } else {
            std::fs::remove_file(&p.live).unwrap();
        }
        ns.netconverge_exits(&cfg, &["converge"], 0);
        assert_eq!(read(&p.live).unwrap(), flannel_file(1450), "{tag}");
    }
}

/// Looks like a Kubernetes secret; not one key of it may ever be printed.
const SECRET: &str = "FLANNEL_NETWORK=198.18.0.0/16\nAWS_SECRET_ACCESS_KEY=hunter2-wJalrXUtnFEMI\n\
tls.key=LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t\n";
const SECRET_WORDS: [&str; 4] = ["AWS_SECRET", "hunter2", "tls.key", "LS0tLS1"];

fn assert_no_secret(what: &str, text: &str) {
    for w in SECRET_WORDS {
        assert!(
            !text.contains(w),
            "{what} printed {w:?} from the symlink's target:\n{text}"
        );
    }
}

#[test]
fn show_and_check_never_print_a_symlinks_target() {
    for mode in ["write", "preserve"] {
        let (ns, dir, p, cfg) = setup(&format!("lease-ln-{}", &mode[..1]), mode, WRITE_KEYS, 3600);
        let secret = dir.path().join("secret.env");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::create_dir_all(p.live.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&secret, &p.live).unwrap();
        for args in [
            &["show"][..],
            &["show", "--format", "json"],
            &["converge", "--check"],
            &["converge", "--check", "--format", "json"],
        ] {
            let out = ns.netconverge(&cfg, args);
            assert_no_secret(&args.join(" "), &common::stdout_stderr(&out));
        }
        let text = ns.netconverge_exits(&cfg, &["converge", "--check"], 1);
        let live = p.live.display();
        if mode == "write" {
            let want = format!(
                "~ lease {live}: a symbolic link (not followed); replaced by a regular file"
            );
            assert!(text.contains(&want), "want {want:?} in:\n{text}");
            let out = ns.netconverge_exits(&cfg, &["converge"], 0);
            assert_no_secret("converge", &out);
            let ft = std::fs::symlink_metadata(&p.live).unwrap().file_type();
            assert!(ft.is_file(), "the link itself was replaced");
            assert_eq!(read(&p.live).unwrap(), flannel_file(1450));
        } else {
            let want = format!("! lease {live}: blocked: invalid (a symbolic link, not followed");
            assert!(text.contains(&want), "want {want:?} in:\n{text}");
            ns.netconverge_exits(&cfg, &["converge"], 1);
            assert!(
                std::fs::symlink_metadata(&p.live)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            assert!(read(&p.backup).is_none(), "foreign content never saved");
        }
        assert_eq!(read(&secret).unwrap(), SECRET, "the target is untouched");
    }
}

// ------------------------------------- guard mode compares with [lease] --

#[test]
fn guard_mode_reports_a_foreign_subnet_and_a_stale_mtu_and_keeps_the_backup() {
    let (ns, dir, p, cfg) = setup("lease-gcmp", "preserve", WRITE_KEYS, 3600);
    let live = p.live.display().to_string();
    std::fs::create_dir_all(p.live.parent().unwrap()).unwrap();

    // flannel writes another node's subnet: drift, nothing saved
    let foreign = flannel_file(1450).replace("198.18.1.1/24", "198.18.9.1/24");
    std::fs::write(&p.live, &foreign).unwrap();
    let text = ns.netconverge_exits(&cfg, &["converge", "--check"], 1);
    let want = format!(
        "! lease {live}: blocked: differs from [lease]: FLANNEL_SUBNET 198.18.9.1/24, declared 198.18.1.0/24"
    );
    assert!(text.contains(&want), "want {want:?} in:\n{text}");
    ns.netconverge_exits(&cfg, &["converge"], 1);
    assert!(read(&p.backup).is_none(), "a disagreeing file was saved");
    assert_eq!(
        read(&p.live).unwrap(),
        foreign,
        "flannel's file is left as is"
    );

    // Control: the right file is saved.
    std::fs::write(&p.live, flannel_file(1450)).unwrap();
    ns.netconverge_exits(&cfg, &["converge"], 0);
    assert_eq!(read(&p.backup).unwrap(), flannel_file(1450));

    // flannel goes wrong again: the good backup is not overwritten
    std::fs::write(&p.live, &foreign).unwrap();
    ns.netconverge_exits(&cfg, &["converge"], 1);
    assert_eq!(read(&p.backup).unwrap(), flannel_file(1450));

    // Reboot: restored from the backup (MTU agrees with the device).
    std::fs::remove_dir_all(dir.path().join("run")).unwrap();
    ns.netconverge_exits(&cfg, &["converge"], 0);
    assert_eq!(read(&p.live).unwrap(), flannel_file(1450));

    // The underlay shrinks: the device converges to 1350, and the restored
    // file's 1450 is drift, not "in sync".
    ns.ip(&["link", "set", UNDERLAY, "mtu", "1400"]);
    let out = ns.netconverge_exits(&cfg, &["converge"], 1);
    assert_eq!(mtu(&ns, "flannel.1"), 1350, "device converged");
    let want = format!(
        "! lease {live}: blocked: differs from [lease]: FLANNEL_MTU 1450, the VXLAN device's is 1350"
    );
    assert!(out.contains(&want), "want {want:?} in:\n{out}");
    assert_eq!(read(&p.backup).unwrap(), flannel_file(1450), "backup kept");

    // ... and the stale backup is not restored after the next reboot.
    std::fs::remove_dir_all(dir.path().join("run")).unwrap();
    let out = ns.netconverge_exits(&cfg, &["converge"], 1);
    assert!(
        out.contains(
            "differs from [lease] (FLANNEL_MTU 1450, the VXLAN device's is 1350); not restored"
        ),
        "{out}"
    );
    assert!(read(&p.live).is_none(), "a stale backup was restored");

    // Control: flannel writes the new MTU; it is taken and saved.
    std::fs::create_dir_all(p.live.parent().unwrap()).unwrap();
    std::fs::write(&p.live, flannel_file(1350)).unwrap();
    ns.netconverge_exits(&cfg, &["converge"], 0);
    assert_eq!(read(&p.backup).unwrap(), flannel_file(1350));
}
