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

use common::fixtures::write_config;
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
