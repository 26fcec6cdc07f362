//! `netconverge run` repairs NAT drift from events, not the resync timer
//! (an hour away in every test): `nft flush ruleset`, a deleted table, a
//! hand-deleted rule (nftables backend), a flushed chain or a deleted jump
//! through iptables-nft (nf_tables notifications), and a flushed chain
//! through iptables-legacy (no notifications: the daemon's short poll).
//!
//! Every result is read by the test with `nft -j` / `iptables-save`; the
//! rules after a repair must equal the rules read before the drift.
//! The `#[ignore]`d `*_repair_latency` tests produce the BENCHMARKS.md
//! figures (see there for the command).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::fixtures;
use common::ruleset::{self, CHAIN, nft_rules};
use common::{LONG, Netns, Stack, cpu_exclusive};
use serde_json::Value;

/// Repairs are event-driven: far below the hour of the resync timer.
const REPAIR: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Nft,
    /// The iptables backend through the nft flavour of the tools.
    IptNft,
    /// The iptables backend through iptables-legacy.
    IptLegacy,
}

impl Backend {
    fn word(self) -> &'static str {
        match self {
            Backend::Nft => "nftables",
            Backend::IptNft | Backend::IptLegacy => "iptables",
        }
    }

    /// `iptables` / `iptables-save` of this flavour (the test's own reader).
    fn ipt(self, tool: &str) -> String {
        match self {
            Backend::IptLegacy => tool.replacen("tables", "tables-legacy", 1),
            _ => tool.replacen("tables", "tables-nft", 1),
        }
    }
}

/// One IPv4 VXLAN device with two peers, NAT for both families (networks
/// from `[lease]`), resync an hour away.
fn config(dir: &Path, backend: Backend) -> PathBuf {
    let text = fixtures::node_name("nat-ev")
        + &fixtures::vxlan_v4("nc-under")
        + &fixtures::peers_v4(2)
        + &format!(
            "\n[nat]\nbackend = \"{}\"\nmark = \"0x4000/0x4000\"\n",
            backend.word()
        )
        + &fixtures::lease(dir, Stack::Dual)
        + &fixtures::daemon(3600, "networkmanager = \"off\"\n");
    fixtures::write_config(dir, "netconverge.toml", &text)
}

/// The system's `iptables-*save`/`-restore` names pointing at the legacy
/// flavour, first in a `PATH` for the daemon (as `update-alternatives
/// --set iptables iptables-legacy` does).
fn legacy_path(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        let real = common::sh(&[
            "sh",
            "-c",
            &format!("command -v {}", tool.replacen("tables", "tables-legacy", 1)),
        ]);
        std::os::unix::fs::symlink(real.trim(), bin.join(tool)).unwrap();
    }
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// Our rules, both families, as the backend's own tools print them: the
/// expressions of our nftables chains, or our lines of `iptables-save`.
fn ours(ns: &Netns, backend: Backend) -> String {
    match backend {
        Backend::Nft => {
            let exprs = |word: &str| -> Vec<Value> {
                nft_rules(ns, word).into_iter().map(|(_, e)| e).collect()
            };
            serde_json::to_string(&[exprs("ip"), exprs("ip6")]).unwrap()
        }
        _ => {
            ruleset::ipt_ours(ns, &backend.ipt("iptables-save"))
                + &ruleset::ipt_ours(ns, &backend.ipt("ip6tables-save"))
        }
    }
}

/// Both families hold their two masquerade rules (read by [`ours`]).
fn complete(text: &str) -> bool {
    text.matches("MASQUERADE").count() + text.matches("\"masquerade\"").count() == 4
}

/// A node running the daemon for `backend`, READY, rules in place.
fn running(tag: &str, backend: Backend) -> (Netns, tempfile::TempDir, Daemon, String) {
    let ns = Netns::node(tag, Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), backend);
    let path = (backend == Backend::IptLegacy).then(|| legacy_path(dir.path()));
    let env: Vec<(&str, &str)> = path.iter().map(|p| ("PATH", p.as_str())).collect();
    let mut d = Daemon::start(&ns, &cfg, &env);
    d.wait_notify("READY=1", LONG);
    let good = ours(&ns, backend);
    assert!(complete(&good), "{good}\n{}", d.logs());
    (ns, dir, d, good)
}

/// After `drift` (which must really remove something), the rules read back
/// exactly as before, well before any resync.
#[track_caller]
fn repaired(ns: &Netns, d: &Daemon, backend: Backend, good: &str, what: &str, drift: impl Fn()) {
    drift();
    let start = Instant::now();
    let mut seen_broken = false;
    loop {
        let now = ours(ns, backend);
        if now == good {
            break;
        }
        seen_broken = true;
        assert!(
            start.elapsed() < REPAIR,
            "{what}: not repaired within {REPAIR:?}; rules now:\n{now}\nwant:\n{good}\nlog:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // the drift was real when it is caught in the act; when the repair
    // beat the first read, the daemon's log shows the repair
    assert!(
        seen_broken || d.logs().matches("+ nat ").count() + d.logs().matches("~ nat ").count() > 0,
        "{what}: drift never seen"
    );
}

#[test]
fn nftables_flush_ruleset_deleted_table_and_hand_edit_repaired_by_events() {
    let (ns, _dir, mut d, good) = running("nev-nft", Backend::Nft);
    repaired(&ns, &d, Backend::Nft, &good, "nft flush ruleset", || {
        ns.exec(&["nft", "flush", "ruleset"]);
    });
    repaired(&ns, &d, Backend::Nft, &good, "table deleted", || {
        ns.exec(&["nft", "delete", "table", "ip6", "netconverge"]);
    });
    repaired(&ns, &d, Backend::Nft, &good, "rule deleted by hand", || {
        let (handle, _) = nft_rules(&ns, "ip").pop().unwrap();
        ruleset::nft(
            &ns,
            &format!("delete|rule|ip|netconverge|postrouting|handle|{handle}"),
        );
    });
    // foreign tables come and go: no pass. Wait for the passes that follow
    // our own repair writes to be over first.
    let mut passes = d.logs().matches("pass #").count();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = d.logs().matches("pass #").count();
        if now == passes {
            break;
        }
        passes = now;
    }
    ruleset::nft(&ns, "add|table|ip|foreign");
    ruleset::nft(&ns, "add|chain|ip|foreign|c");
    ruleset::nft(&ns, "delete|table|ip|foreign");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.logs().matches("pass #").count(),
        passes,
        "foreign tables triggered a pass:\n{}",
        d.logs()
    );
    // control: the same socket, read in order, still triggers for ours
    repaired(&ns, &d, Backend::Nft, &good, "table deleted after", || {
        ns.exec(&["nft", "delete", "table", "ip", "netconverge"]);
    });
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn iptables_nft_chain_flush_and_deleted_jump_repaired_by_events() {
    let (ns, _dir, mut d, good) = running("nev-iptn", Backend::IptNft);
    let ipt = Backend::IptNft.ipt("iptables");
    let ip6t = Backend::IptNft.ipt("ip6tables");
    repaired(&ns, &d, Backend::IptNft, &good, "chain flushed", || {
        ruleset::ipt_nat(&ns, &ipt, &["-F", CHAIN]);
    });
    repaired(&ns, &d, Backend::IptNft, &good, "jump deleted", || {
        ruleset::ipt_nat(
            &ns,
            &ip6t,
            &ruleset::commented(&["-D", "POSTROUTING"], &[CHAIN]),
        );
    });
    repaired(&ns, &d, Backend::IptNft, &good, "nft flush ruleset", || {
        ns.exec(&["nft", "flush", "ruleset"]);
    });
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn iptables_legacy_chain_flush_repaired_by_the_short_poll() {
    let (ns, _dir, mut d, good) = running("nev-iptl", Backend::IptLegacy);
    // control: the rules really are legacy ones (the nft flavour sees none
    // of ours), and the daemon knows it has no events for them
    assert_eq!(
        ruleset::ipt_ours(&ns, &Backend::IptNft.ipt("iptables-save")),
        ""
    );
    assert!(
        d.logs()
            .contains("iptables-legacy has no change notifications"),
        "{}",
        d.logs()
    );
    let ipt = Backend::IptLegacy.ipt("iptables");
    repaired(
        &ns,
        &d,
        Backend::IptLegacy,
        &good,
        "legacy chain flushed",
        || {
            ruleset::ipt_nat(&ns, &ipt, &["-F", CHAIN]);
        },
    );
    // at once again: the daemon's previous read showed the same flushed
    // chain, only the comparison with the repaired state catches this one
    repaired(&ns, &d, Backend::IptLegacy, &good, "flushed again", || {
        ruleset::ipt_nat(&ns, &ipt, &["-F", CHAIN]);
    });
    let ip6t = Backend::IptLegacy.ipt("ip6tables");
    repaired(
        &ns,
        &d,
        Backend::IptLegacy,
        &good,
        "legacy jump deleted",
        || {
            ruleset::ipt_nat(
                &ns,
                &ip6t,
                &ruleset::commented(&["-D", "POSTROUTING"], &[CHAIN]),
            );
        },
    );
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

// ------------------------------------------------------------ latency --

/// Repair latencies in ms, sorted.
fn summary(name: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let (p50, p90, max) = (at(0.5), at(0.9), at(1.0));
    println!(
        "{name}: n={} median {p50:.1} ms, p90 {p90:.1} ms, max {max:.1} ms",
        ms.len()
    );
    p50
}

/// From just after `drift` returned to the first read (by the test's own
/// tool) that shows the repair, in ms.
fn latency(d: &Daemon, drift: impl Fn(), back: impl Fn() -> bool) -> f64 {
    drift();
    let start = Instant::now();
    while !back() {
        assert!(
            start.elapsed() < REPAIR,
            "not repaired within {REPAIR:?}:\n{}",
            d.logs()
        );
    }
    start.elapsed().as_secs_f64() * 1000.0
}

/// Alternate a route deletion (the baseline) and `nat_drift` on one
/// daemon, `ROUNDS` times each, both read back the same way (one
/// `ip netns exec` of the reader per sample).
fn repair_latency(backend: Backend, tag: &str, nat_drift: &dyn Fn(&Netns)) {
    const ROUNDS: usize = 30;
    let _cpu = cpu_exclusive();
    let (ns, _dir, mut d, good) = running(tag, backend);
    let route_back = || {
        ns.exec_output(&["ip", "-j", "route", "show", "198.19.0.0/26"])
            .stdout
            .len()
            > 4
    };
    let nat_back = || complete(&ours(&ns, backend));
    let (mut route, mut nat) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        route.push(latency(
            &d,
            || {
                ns.ip(&["route", "del", "198.19.0.0/26"]);
            },
            route_back,
        ));
        std::thread::sleep(Duration::from_millis(200));
        nat.push(latency(&d, || nat_drift(&ns), nat_back));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(ours(&ns, backend), good);
    }
    let r = summary("route deleted (baseline)", route);
    let n = summary(&format!("{tag}: NAT drift"), nat);
    println!("{tag}: ratio NAT / route (medians) = {:.2}", n / r);
    assert_eq!(d.stop(), 0);
}

#[test]
#[ignore = "measurement for BENCHMARKS.md"]
fn nft_flush_ruleset_repair_latency() {
    repair_latency(Backend::Nft, "nft-flush-ruleset", &|ns| {
        ns.exec(&["nft", "flush", "ruleset"]);
    });
}

#[test]
#[ignore = "measurement for BENCHMARKS.md"]
fn iptables_nft_chain_flush_repair_latency() {
    repair_latency(Backend::IptNft, "iptables-nft-F", &|ns| {
        ruleset::ipt_nat(ns, "iptables-nft", &["-F", CHAIN]);
    });
}

#[test]
#[ignore = "measurement for BENCHMARKS.md"]
fn iptables_legacy_chain_flush_repair_latency() {
    repair_latency(Backend::IptLegacy, "iptables-legacy-F", &|ns| {
        ruleset::ipt_nat(ns, "iptables-legacy", &["-F", CHAIN]);
    });
}
