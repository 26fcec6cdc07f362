//! The command line itself: validate needs no root, no kernel and no
//! machine-id; exit codes; version, completions, man page.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::fixtures::{self, write_config};
use common::{code, stderr, stdout};

const BIN: &str = env!("CARGO_BIN_EXE_netconverge");

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (code(&out), stdout(&out), stderr(&out))
}

/// `netconverge -c <config> <args>`, the config being `text` written as
/// `<name>` in a temp dir.
fn run_on(name: &str, text: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), name, text);
    run(&[&["-c", cfg.to_str().unwrap()][..], args].concat(), env)
}

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_shipped_example_validates() {
    for ex in [
        "k3s-node.toml",
        "dual-stack.toml",
        "pair/node-a.toml",
        "pair/node-b.toml",
    ] {
        let (code, out, err) = run(&["-c", &example(ex), "validate"], &[]);
        assert_eq!(code, 0, "{ex}: {out}{err}");
    }
}

#[test]
fn validate_needs_no_root_and_no_machine_id() {
    // as the NixOS build sandbox runs it: unprivileged, no /etc/machine-id
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::copy(example("k3s-node.toml"), &cfg).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut c = if common::is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    let out = c
        .args(["-c", cfg.to_str().unwrap(), "validate"])
        .env("NETCONVERGE_MACHINE_ID_FILE", "/nonexistent")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn converge_without_any_mac_seed_is_a_config_error() {
    let (code, _, err) = run_on(
        "c.toml",
        "[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"eth0\"\n",
        &["converge", "--check"],
        &[("NETCONVERGE_MACHINE_ID_FILE", "/nonexistent")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node_name"), "{err}");
}

#[test]
fn invalid_config_reports_all_errors_with_positions_and_exit_2() {
    let (code, out, err) = run_on(
        "bad.toml",
        "[[vxlan]]\nname = \"a-name-longer-than-15\"\nvni = 0\nunderlya = \"eth0\"\n",
        &["validate"],
        &[],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("bad.toml:2:9"), "name position: {err}");
    assert!(err.contains("bad.toml:3:7"), "vni position: {err}");
    assert!(err.contains("underlay"), "suggestion: {err}");
    assert!(err.contains("nothing was applied"), "{err}");
}

#[test]
fn missing_file_and_bad_usage_exit_2() {
    let (code, _, err) = run(&["-c", "/nonexistent/netconverge.toml", "validate"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read config"), "{err}");
    let (code, _, _) = run(&["no-such-command"], &[]);
    assert_eq!(code, 2);
}

#[test]
fn version_completions_and_man_page() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("netconverge ") && out.contains("(git "),
        "{out}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = run(&["completions", shell], &[]);
        assert_eq!(code, 0);
        assert!(out.contains("converge"), "{shell}: {out}");
    }
    let (code, out, _) = run(&["man"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(".TH netconverge"), "{out}");
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("Exit codes:"), "{out}");
}

#[test]
fn validate_warns_when_the_nat_backend_binary_is_missing() {
    let (code, _, err) = run_on(
        "c.toml",
        "[nat]\nbackend = \"nftables\"\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n",
        &["validate"],
        &[("PATH", "/nonexistent")],
    );
    assert_eq!(
        code, 0,
        "a missing backend is a warning at validate time: {err}"
    );
    assert!(
        err.contains("`nft` not found") && err.contains("nftables"),
        "{err}"
    );
}

/// One fleet file, checked for each of its nodes by name: `--node` beats
/// NETCONVERGE_NODE, and a name the fleet lacks is a config error (exit 2)
/// with its position and what to do.
#[test]
fn validate_fleet_for_each_node() {
    let fleet = example("fleet/fleet.toml");
    for node in ["node-a", "node-b", "node-c"] {
        let (code, out, err) = run(&["-c", &fleet, "validate", "--node", node], &[]);
        assert_eq!(code, 0, "{node}: {out}{err}");
        assert!(out.contains(": ok"), "{out}");
    }
    // the flag wins over the environment, the environment over the hostname
    let env = [("NETCONVERGE_NODE", "node-x")];
    let (code, _, err) = run(&["-c", &fleet, "--node", "node-b", "validate"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["-c", &fleet, "validate"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("fleet.toml:18:1: error: this node, `node-x` (from NETCONVERGE_NODE), is not in the fleet"),
        "{err}"
    );
    let (code, _, err) = run(&["-c", &fleet, "validate", "--node", "node-d"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("(from --node), is not in the fleet"), "{err}");
    assert!(err.contains("help: did you mean `node-a`?"), "{err}");
}

// ------------------------------------------------------------------ output --

/// A pipe whose reader is already closed: every write to it is EPIPE.
fn closed_pipe() -> std::os::fd::OwnedFd {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    writer
}

fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap()
}

/// `cmd` with stdout going to `sink`; (exit code, stderr).
fn with_stdout(mut cmd: Command, sink: impl Into<std::process::Stdio>) -> (i32, String) {
    let out = cmd
        .stdout(sink)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (code(&out), stderr(&out))
}

fn bin(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    c
}

/// Every print path that needs no kernel: a full disk is one error line and
/// exit 3, a closed pipe is silence and the usual exit code; never a panic.
#[test]
fn output_to_a_full_disk_or_a_closed_pipe_never_panics() {
    let ex = example("k3s-node.toml");
    let commands: [&[&str]; 6] = [
        &["-c", &ex, "validate"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["man"],
        &["--help"],
        &["--version"],
    ];
    for args in commands {
        let (code, err) = with_stdout(bin(args), dev_full());
        assert_eq!(code, 3, "{args:?} > /dev/full: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            err.lines().collect::<Vec<_>>(),
            ["netconverge: cannot write to stdout: No space left on device (os error 28)"],
            "{args:?}: exactly one line"
        );
        let (code, err) = with_stdout(bin(args), closed_pipe());
        assert_eq!(code, 0, "{args:?} | closed pipe: {err}");
        assert_eq!(err, "", "{args:?}: a closed pipe is not an error to report");
    }
    // positive control: the same commands print when they can
    for args in commands {
        let out = bin(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_broken_stderr_keeps_the_exit_code() {
    // a config error reported to a full stderr: still exit 2, no panic (101)
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "bad.toml", "[[vxlan]]\nvni = 0\n");
    let out = bin(&["-c", cfg.to_str().unwrap(), "validate"])
        .stderr(dev_full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin(&["no-such-command"])
        .stderr(dev_full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `show`, `converge --check` and `cleanup --check` in a namespace: the
/// kernel-reading print paths.
#[test]
fn kernel_commands_print_to_a_full_disk_or_a_closed_pipe_without_panicking() {
    let ns = common::Netns::node("output", common::Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::node_name("out-node")
        + &fixtures::vxlan_v4(common::UNDERLAY)
        + &fixtures::peers_v4_24(3);
    let cfg = write_config(dir.path(), "c.toml", &text);
    let cfg = cfg.to_str().unwrap();
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, BIN, "-c", cfg])
            .args(args)
            .env(common::STATE_DIR_ENV, ns.state_dir());
        c
    };
    // before converging: --check has drift (exit 1) to print
    let drift: [(&[&str], i32); 4] = [
        (&["converge", "--check"], 1),
        (&["converge", "--check", "--format", "json"], 1),
        (&["show"], 0),
        (&["show", "--format", "json"], 0),
    ];
    for (args, want) in drift {
        let (code, err) = with_stdout(in_ns(args), dev_full());
        assert_eq!(code, 3, "{args:?} > /dev/full: {err}");
        assert!(err.contains("No space left on device"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let (code, err) = with_stdout(in_ns(args), closed_pipe());
        assert_eq!(code, want, "{args:?} | closed pipe: exit as usual: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
    // converge into a closed pipe still converges and exits 0
    let (code, err) = with_stdout(in_ns(&["converge"]), closed_pipe());
    assert_eq!(code, 0, "{err}");
    assert!(
        ns.link("flannel.1").is_some(),
        "converged despite the closed pipe"
    );
    // cleanup --check has something to list now
    let (code, err) = with_stdout(in_ns(&["cleanup", "--check"]), dev_full());
    assert_eq!(code, 3, "{err}");
    let (code, err) = with_stdout(in_ns(&["cleanup", "--check"]), closed_pipe());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A daemon whose log stream breaks (journald restarted, a full disk behind
/// a redirect) keeps repairing: its stdout/stderr here are /dev/full or a
/// pipe nobody reads.
fn daemon_keeps_running_with_a_broken_log_stream(full: bool) {
    let ns = common::Netns::node(if full { "logfull" } else { "logpipe" }, common::Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::node_name("log-node")
        + &fixtures::vxlan_v4(common::UNDERLAY)
        + &fixtures::peers_v4_24(2)
        + &fixtures::daemon(60, "");
    let cfg = write_config(dir.path(), "c.toml", &text);
    let sink = |_: ()| -> std::process::Stdio {
        if full {
            dev_full().into()
        } else {
            closed_pipe().into()
        }
    };
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN, "-vv", "-c"])
        .arg(&cfg)
        .arg("run")
        .env(common::STATE_DIR_ENV, ns.state_dir())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(sink(()))
        .stderr(sink(()))
        .spawn()
        .unwrap();
    // killed (by PID) if an assertion below fails: never leak a daemon
    let mut child = KillOnDrop(child);
    let child = &mut child.0;
    let route = |dst: &str| {
        ns.ip_list(&["route", "show"])
            .iter()
            .any(|r| r["dst"] == dst)
    };
    let alive = |c: &mut std::process::Child| c.try_wait().unwrap().is_none();
    common::daemon::eventually("first pass", common::LONG, || {
        route("198.18.2.0/24") && route("198.18.3.0/24")
    });
    // drift after the logs have failed many times (-vv logs every event)
    ns.ip(&["route", "del", "198.18.3.0/24"]);
    common::daemon::eventually("drift repaired", common::LONG, || route("198.18.3.0/24"));
    assert!(alive(child), "the daemon is still running");
    common::sh(&["kill", "-TERM", &child.id().to_string()]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

crate::variants!(daemon_keeps_running_with_a_broken_log_stream:
    daemon_keeps_running_when_its_log_stream_is_full => true,
    daemon_keeps_running_when_its_log_pipe_is_closed => false,
);

// -------------------------------------------------------------- privileges --

/// `netconverge -c cfg <args>` as uid 65534 without capabilities, in `ns`.
fn unprivileged(ns: &common::Netns, cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut full = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        BIN,
        "-c",
        cfg.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    ns.exec_output(&full)
}

#[test]
fn missing_privileges_exit_3_naming_cap_net_admin() {
    let ns = common::Netns::node("priv", common::Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let base = fixtures::node_name("priv-node")
        + &fixtures::vxlan_v4(common::UNDERLAY)
        + &fixtures::peers_v4_24(1);
    let plain = write_config(dir.path(), "plain.toml", &base);
    let nat = write_config(
        dir.path(),
        "nat.toml",
        &(base.clone()
            + "\n[nat]\nbackend = \"nftables\"\nnetwork = \"198.18.0.0/15\"\nsubnet = \"198.18.1.0/24\"\n"),
    );
    for cfg in [&plain, &nat] {
        std::fs::set_permissions(cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    // in sync as root first (positive control: exit 0 with privileges)
    ns.netconverge_exits(&nat, &["converge"], 0);
    ns.netconverge_exits(&nat, &["converge", "--check"], 0);

    let cases: [(&std::path::Path, &[&str]); 7] = [
        // in sync, but converge is a writer: it must not claim success
        (&plain, &["converge"]),
        (&plain, &["cleanup"]),
        (&plain, &["run"]),
        // readers with [nat]: nft cannot be read without the capability
        (&nat, &["converge", "--check"]),
        (&nat, &["cleanup", "--check"]),
        (&nat, &["show"]),
        (&nat, &["converge"]),
    ];
    for (cfg, args) in cases {
        let out = unprivileged(&ns, cfg, args);
        let err = stderr(&out);
        assert_eq!(
            code(&out),
            3,
            "{args:?} on {cfg:?}: {}",
            common::stdout_stderr(&out)
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains("CAP_NET_ADMIN"), "{args:?}: {err}");
        assert!(
            stdout(&out).is_empty(),
            "{args:?}: no half-read state printed"
        );
    }
    // nothing was changed by the refused writers
    assert!(ns.link("flannel.1").is_some());
    // reading links and routes needs no capability: these still work
    let out = unprivileged(&ns, &plain, &["converge", "--check"]);
    assert_eq!(code(&out), 0, "{}", common::stdout_stderr(&out));
    let out = unprivileged(&ns, &plain, &["validate"]);
    assert_eq!(code(&out), 0, "{}", common::stdout_stderr(&out));
}

// ------------------------------------------------------------ config files --

/// `netconverge -c path validate` with a 2 GiB address-space limit (a
/// loader that reads /dev/zero dies instead of eating the machine) that
/// must end within 30 s (a loader that blocks on a FIFO is killed).
fn validate_guarded(path: &std::path::Path) -> (i32, String) {
    let mut c = Command::new("prlimit");
    c.arg("--as=2147483648")
        .arg(BIN)
        .arg("-c")
        .arg(path)
        .arg("validate");
    let out = common::output_within(&mut c, common::LONG);
    (code(&out), stderr(&out))
}

#[test]
fn only_regular_config_files_of_at_most_64_mib_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    common::sh(&["mkfifo", fifo.to_str().unwrap()]);
    let sub = dir.path().join("a-directory.toml");
    std::fs::create_dir(&sub).unwrap();
    let big = dir.path().join("big.toml");
    // sparse: 64 MiB + 1 byte, taking no disk space
    std::fs::File::create(&big)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let zero_link = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero_link).unwrap();
    let cases: [(&std::path::Path, &str); 5] = [
        (&fifo, "a FIFO"),
        (std::path::Path::new("/dev/zero"), "a character device"),
        (&zero_link, "a character device"),
        (&sub, "a directory"),
        (&big, "64 MiB"),
    ];
    for (path, what) in cases {
        let (code, err) = validate_guarded(path);
        assert_eq!(code, 2, "{path:?}: {err}");
        assert!(err.contains(what), "{path:?}: {err}");
        assert!(err.contains("nothing was applied"), "{path:?}: {err}");
        if what != "64 MiB" {
            assert!(err.contains("not a regular file"), "{path:?}: {err}");
        }
    }
    // a symlink to a regular file is fine (NixOS links /etc into the store)
    let real = write_config(
        dir.path(),
        "real.toml",
        &(fixtures::node_name("n") + &fixtures::vxlan_v4("eth0")),
    );
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let (code, err) = validate_guarded(&link);
    assert_eq!(code, 0, "{err}");
    // exactly 64 MiB is still accepted by the size check (then parsed: NULs)
    let (code, err) = validate_guarded(&{
        let p = dir.path().join("limit.toml");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        p
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        !err.contains("64 MiB"),
        "at the limit is not over it: {err}"
    );
}

#[test]
fn invalid_utf8_has_a_position_and_a_help_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("latin1.toml");
    // "# café" in Latin-1: the é is byte 0xE9 at line 2, column 6
    std::fs::write(&cfg, b"node_name = \"n\"\n# caf\xe9\n").unwrap();
    let (code, err) = validate_guarded(&cfg);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("latin1.toml:2:6: error:"), "{err}");
    assert!(err.contains("UTF-8") && err.contains("0xE9"), "{err}");
    assert!(!err.contains("-c/--config"), "the path was right: {err}");
    // columns count characters: a multi-byte character before it counts once
    let mut bytes = "x = \"ü".as_bytes().to_vec();
    bytes.push(0xff);
    std::fs::write(&cfg, &bytes).unwrap();
    let (_, err) = validate_guarded(&cfg);
    assert!(err.contains("latin1.toml:1:7: error:"), "{err}");
}

/// The daemon reloads through the same loader: a FIFO put in place of the
/// file is rejected (logged), not waited on; the daemon still stops.
#[test]
fn a_reload_from_a_fifo_is_rejected_and_the_daemon_stays_responsive() {
    let ns = common::Netns::node("fiforl", common::Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::node_name("fifo-node")
        + &fixtures::vxlan_v4(common::UNDERLAY)
        + &fixtures::peers_v4_24(1)
        + &fixtures::daemon(60, "");
    let cfg = write_config(dir.path(), "c.toml", &text);
    let mut d = common::daemon::Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", common::LONG);
    let fifo = dir.path().join("fifo");
    common::sh(&["mkfifo", fifo.to_str().unwrap()]);
    std::fs::rename(&fifo, &cfg).unwrap();
    d.signal("-HUP");
    common::daemon::eventually("reload rejected", common::LONG, || {
        d.logs().contains("reload rejected")
    });
    assert!(d.logs().contains("FIFO"), "{}", d.logs());
    // still repairing drift with the old file
    ns.ip(&["route", "del", "198.18.2.0/24"]);
    common::daemon::eventually("drift repaired", common::LONG, || {
        ns.ip_list(&["route", "show"])
            .iter()
            .any(|r| r["dst"] == "198.18.2.0/24")
    });
    assert_eq!(d.stop(), 0, "{}", d.logs());
}
