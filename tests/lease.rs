#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The subnet lease file on a real filesystem (temp dirs, no root needed):
//! atomic rewrites, drift repair, guard mode, errors; and our output read by
//! an independent reader with the flannel CNI plugin's rules.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::only_change;
use netconverge::lease::{self, FileContent, LeaseError, LeaseObserved, LeaseOp};
use netconverge::model::{LeaseFamily, LeaseMode, LeaseSpec};
use netconverge::plan::{ChangeKind, Op, Plan};

fn family(network: &str, subnet: &str) -> LeaseFamily {
    LeaseFamily {
        network: network.parse().unwrap(),
        subnet: subnet.parse().unwrap(),
    }
}

/// Subnets 198.18.1.0/24 in 198.18.0.0/16 and fd00:42:0:1::/64 in fd00:42::/56.
fn spec(root: &Path, mode: LeaseMode, ipv4: bool, ipv6: bool) -> LeaseSpec {
    LeaseSpec {
        mode,
        ipv4: ipv4.then(|| family("198.18.0.0/16", "198.18.1.0/24")),
        ipv6: ipv6.then(|| family("fd00:42::/56", "fd00:42:0:1::/64")),
        mtu: None,
        ipmasq: true,
        path: root.join("run/flannel/subnet.env"),
        state_dir: root.join("var/lib/netconverge"),
    }
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn lease_op(op: &Op) -> &LeaseOp {
    match op {
        Op::Lease(op) => op,
        other => panic!("not a lease op: {other:?}"),
    }
}

/// observe → plan → apply every change; returns the plan that was applied.
fn converge(spec: &LeaseSpec, vxlan_mtu: Option<u32>) -> Plan {
    let observed = lease::observe(Some(spec)).unwrap();
    let plan = lease::plan(Some(spec), vxlan_mtu, &observed);
    for c in &plan.changes {
        lease::apply(lease_op(&c.op)).unwrap();
    }
    plan
}

fn in_sync(spec: &LeaseSpec, vxlan_mtu: Option<u32>) -> bool {
    let observed = lease::observe(Some(spec)).unwrap();
    lease::plan(Some(spec), vxlan_mtu, &observed).in_sync()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ------------------------------------------------- independent CNI reader --

/// Reads subnet.env with the rules the flannel CNI plugin documents, written
/// from that description only: lines split on the first `=`, CIDRs as Go's
/// `net.ParseCIDR` takes them, at least one NETWORK with its SUBNET, MTU an
/// integer, IPMASQ true only for the exact string `true`.
mod cni {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// `net.ParseCIDR` result: the address as written and the masked network.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cidr {
        pub ip: IpAddr,
        pub network: IpAddr,
        pub prefix: u32,
    }

    #[derive(Debug)]
    pub struct Env {
        pub network: Option<Cidr>,
        pub subnet: Option<Cidr>,
        pub ipv6_network: Option<Cidr>,
        pub ipv6_subnet: Option<Cidr>,
        pub mtu: i64,
        pub ipmasq: bool,
    }

    /// Go's IPv4 dotted quad: exactly four decimal fields, each ≤ 255,
    /// no leading zeros.
    fn ipv4(s: &str) -> Option<Ipv4Addr> {
        let mut octets = [0u8; 4];
        let mut fields = s.split('.');
        for o in &mut octets {
            let f = fields.next()?;
            if f.is_empty() || f.len() > 3 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            if f.len() > 1 && f.starts_with('0') {
                return None;
            }
            *o = f.parse::<u16>().ok().filter(|v| *v <= 255)? as u8;
        }
        fields.next().is_none().then(|| Ipv4Addr::from(octets))
    }

    pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
        let (addr, mask) = s.split_once('/').ok_or(format!("no '/' in {s:?}"))?;
        let (ip, bits) = if let Some(v4) = ipv4(addr) {
            (IpAddr::V4(v4), 32)
        } else if addr.contains(':') {
            let v6: Ipv6Addr = addr.parse().map_err(|_| format!("bad IPv6 {addr:?}"))?;
            (IpAddr::V6(v6), 128)
        } else {
            return Err(format!("bad address {addr:?}"));
        };
        if mask.is_empty() || !mask.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad prefix {mask:?}"));
        }
        let prefix: u32 = mask.parse().map_err(|_| format!("bad prefix {mask:?}"))?;
        if prefix > bits {
            return Err(format!("prefix {prefix} > {bits}"));
        }
        let network = match ip {
            IpAddr::V4(a) => {
                let m = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        };
        Ok(Cidr {
            ip,
            network,
            prefix,
        })
    }

    pub fn load(text: &str) -> Result<Env, String> {
        let mut kv: HashMap<&str, &str> = HashMap::new();
        for line in text.split('\n') {
            let mut parts = line.splitn(2, '=');
            let key = parts.next().unwrap_or("");
            if let Some(value) = parts.next() {
                kv.insert(key, value);
            }
        }
        let cidr = |k: &str| kv.get(k).map(|v| parse_cidr(v)).transpose();
        let env = Env {
            network: cidr("FLANNEL_NETWORK")?,
            subnet: cidr("FLANNEL_SUBNET")?,
            ipv6_network: cidr("FLANNEL_IPV6_NETWORK")?,
            ipv6_subnet: cidr("FLANNEL_IPV6_SUBNET")?,
            mtu: kv
                .get("FLANNEL_MTU")
                .ok_or("FLANNEL_MTU missing")?
                .parse()
                .map_err(|_| "FLANNEL_MTU not an integer")?,
            ipmasq: *kv.get("FLANNEL_IPMASQ").ok_or("FLANNEL_IPMASQ missing")? == "true",
        };
        let v4 = env.network.is_some() && env.subnet.is_some();
        let v6 = env.ipv6_network.is_some() && env.ipv6_subnet.is_some();
        if !v4 && !v6 {
            return Err("no network with its subnet".into());
        }
        Ok(env)
    }
}

#[test]
fn cni_reader_rejects_broken_files() {
    let good = "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    cni::load(good).unwrap();
    for (from, to) in [
        ("FLANNEL_MTU=1450\n", ""),
        ("FLANNEL_IPMASQ=true\n", ""),
        ("FLANNEL_SUBNET=198.18.1.1/24\n", ""),
        ("1450", "1450 "),
        ("198.18.1.1/24", "198.18.01.1/24"),
        ("198.18.1.1/24", "198.18.1.1"),
        ("198.18.1.1/24", "198.18.1.1/33"),
        ("198.18.1.1/24", "198.18.1.256/24"),
    ] {
        let t = good.replace(from, to);
        assert!(cni::load(&t).is_err(), "accepted {t:?}");
    }
    assert!(!cni::load(&good.replace("=true", "=True")).unwrap().ipmasq);
}

#[test]
fn cni_plugin_rules_accept_our_output() {
    let root = Path::new("/nonexistent");
    for (v4, v6, ipmasq, mtu) in [
        (true, false, true, 1450),
        (false, true, false, 1430),
        (true, true, true, 1400),
    ] {
        let mut s = spec(root, LeaseMode::Write, v4, v6);
        s.ipmasq = ipmasq;
        let text = lease::render(&s, mtu);
        assert!(text.ends_with('\n') && !text.ends_with("\n\n"), "{text:?}");
        let env = cni::load(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(env.mtu, i64::from(mtu));
        assert_eq!(env.ipmasq, ipmasq);
        let check = |net: Option<cni::Cidr>, sub: Option<cni::Cidr>, fam: Option<LeaseFamily>| {
            let Some(fam) = fam else {
                assert!(net.is_none() && sub.is_none(), "{text}");
                return;
            };
            let (net, sub) = (net.unwrap(), sub.unwrap());
            assert_eq!(net.ip, fam.network.network());
            assert_eq!(net.prefix, u32::from(fam.network.prefix_len()));
            // FLANNEL_SUBNET: the subnet's first usable address, its prefix.
            assert_eq!(sub.network, fam.subnet.network());
            assert_eq!(sub.prefix, u32::from(fam.subnet.prefix_len()));
            let first = match (sub.ip, fam.subnet.network()) {
                (std::net::IpAddr::V4(a), std::net::IpAddr::V4(n)) => {
                    u128::from(u32::from(a)) == u128::from(u32::from(n)) + 1
                }
                (std::net::IpAddr::V6(a), std::net::IpAddr::V6(n)) => {
                    u128::from(a) == u128::from(n) + 1
                }
                _ => false,
            };
            assert!(
                first,
                "{:?} is not the first host of {}",
                sub.ip, fam.subnet
            );
        };
        check(env.network, env.subnet, s.ipv4);
        check(env.ipv6_network, env.ipv6_subnet, s.ipv6);
    }
}

// ------------------------------------------------------------- atomicity --

#[test]
fn readers_never_see_a_partial_empty_or_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), LeaseMode::Write, true, true);
    let a = lease::render(&s, 1450);
    let b = lease::render(&spec(dir.path(), LeaseMode::Write, true, false), 1400);
    assert_ne!(a.len(), b.len());
    let write = |contents: &str| {
        lease::apply(&LeaseOp::Write {
            path: s.path.clone(),
            contents: contents.to_string(),
        })
        .unwrap();
    };
    write(&a);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let reader = {
        let (stop, reads, seen) = (stop.clone(), reads.clone(), seen.clone());
        let (path, a, b) = (s.path.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let got = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read failed: {e}"));
                if got == a {
                    seen[0].store(true, Ordering::Relaxed);
                } else if got == b {
                    seen[1].store(true, Ordering::Relaxed);
                } else {
                    panic!("reader saw {got:?}");
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut writes = 0usize;
    // Keep rewriting until both sides did plenty; the cap only ends a broken run.
    while writes < 50_000 && !reader.is_finished() {
        write(if writes % 2 == 0 { &b } else { &a });
        writes += 1;
        let both_seen = seen.iter().all(|s| s.load(Ordering::Relaxed));
        if writes >= 1000 && reads.load(Ordering::Relaxed) >= 1000 && both_seen {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let reads = reads.load(Ordering::Relaxed);
    assert!(writes >= 1000, "{writes} writes");
    assert!(reads >= 1000, "only {reads} reads during {writes} writes");
    assert!(
        seen.iter().all(|s| s.load(Ordering::Relaxed)),
        "reader never saw a rewrite"
    );
    // No temp file left behind.
    assert_eq!(dir_entries(s.path.parent().unwrap()), ["subnet.env"]);
}

#[test]
fn concurrent_writers_leave_one_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), LeaseMode::Write, true, false);
    let a = lease::render(&s, 1450);
    let b = lease::render(&s, 1400);
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|contents| {
            let path = s.path.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    lease::apply(&LeaseOp::Write {
                        path: path.clone(),
                        contents: contents.clone(),
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let got = fs::read_to_string(&s.path).unwrap();
    assert!(got == a || got == b, "{got:?}");
    assert_eq!(dir_entries(s.path.parent().unwrap()), ["subnet.env"]);
}

// ------------------------------------------------------ write-mode drift --

#[test]
fn write_mode_creates_the_file_and_its_directories() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), LeaseMode::Write, true, true);
    assert_eq!(lease::observe(Some(&s)).unwrap(), LeaseObserved::default());
    let p = converge(&s, Some(1450));
    let c = only_change(&p);
    assert_eq!((&c.kind, c.reason.as_str()), (&ChangeKind::Add, "missing"));
    assert_eq!(
        fs::read_to_string(&s.path).unwrap(),
        "FLANNEL_NETWORK=198.18.0.0/16\n\
         FLANNEL_SUBNET=198.18.1.1/24\n\
         FLANNEL_IPV6_NETWORK=fd00:42::/56\n\
         FLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\n\
         FLANNEL_MTU=1450\n\
         FLANNEL_IPMASQ=true\n"
    );
    assert_eq!(mode_of(&s.path), 0o644);
    assert_eq!(mode_of(&dir.path().join("run")), 0o755);
    assert_eq!(mode_of(&dir.path().join("run/flannel")), 0o755);
    assert!(in_sync(&s, Some(1450)));
    // No state_dir in write mode.
    assert!(!s.state_dir.exists());
}

#[test]
fn write_mode_repairs_drift_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), LeaseMode::Write, true, false);
    let want = lease::render(&s, 1450);
    converge(&s, Some(1450));
    let cases: [(&str, String, &str); 5] = [
        (
            "truncated",
            want[..want.find("FLANNEL_MTU").unwrap() + 13].to_string(),
            "FLANNEL_MTU 1 → 1450; FLANNEL_IPMASQ missing",
        ),
        (
            "hand-edited",
            want.replace("198.18.1.1/24", "198.18.1.254/24"),
            "FLANNEL_SUBNET 198.18.1.254/24 → 198.18.1.1/24",
        ),
        (
            "stale MTU",
            want.replace("=1450", "=1500"),
            "FLANNEL_MTU 1500 → 1450",
        ),
        (
            "unparsable",
            "\u{7f}ELF garbage".to_string(),
            "FLANNEL_NETWORK missing; FLANNEL_SUBNET missing; FLANNEL_MTU missing; \
             FLANNEL_IPMASQ missing; line 1 malformed",
        ),
        (
            "emptied",
            String::new(),
            "FLANNEL_NETWORK missing; FLANNEL_SUBNET missing; FLANNEL_MTU missing; \
             FLANNEL_IPMASQ missing",
        ),
    ];
    for (what, broken, reason) in cases {
        fs::write(&s.path, &broken).unwrap();
        fs::set_permissions(&s.path, fs::Permissions::from_mode(0o600)).unwrap();
        let p = converge(&s, Some(1450));
        let c = only_change(&p);
        assert_eq!(c.kind, ChangeKind::Modify, "{what}");
        assert_eq!(c.object, format!("lease {}", s.path.display()));
        assert_eq!(c.reason, reason, "{what}");
        assert_eq!(fs::read_to_string(&s.path).unwrap(), want, "{what}");
        assert_eq!(mode_of(&s.path), 0o644, "{what}");
        assert!(in_sync(&s, Some(1450)), "{what}");
    }
    // Not UTF-8 at all.
    fs::write(&s.path, [0xff, 0xfe, 0x00]).unwrap();
    let obs = lease::observe(Some(&s)).unwrap();
    assert_eq!(obs.live, FileContent::Unusable("not UTF-8 text".into()));
    let p = converge(&s, Some(1450));
    assert_eq!(p.changes[0].reason, "not UTF-8 text");
    assert_eq!(fs::read_to_string(&s.path).unwrap(), want);
    // Deleted.
    fs::remove_file(&s.path).unwrap();
    let p = converge(&s, Some(1450));
    assert_eq!(p.changes[0].kind, ChangeKind::Add);
    assert_eq!(fs::read_to_string(&s.path).unwrap(), want);
}

#[test]
fn write_mode_follows_the_vxlan_mtu_and_never_guesses() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), LeaseMode::Write, true, true);
    converge(&s, Some(1450));
    let p = converge(&s, Some(1400));
    assert_eq!(
        p.to_string(),
        format!("~ lease {}: FLANNEL_MTU 1450 → 1400\n", s.path.display())
    );
    assert!(
        fs::read_to_string(&s.path)
            .unwrap()
            .contains("\nFLANNEL_MTU=1400\n")
    );
    // Device blocked: nothing written, the last good file stays.
    let before = fs::read_to_string(&s.path).unwrap();
    let p = converge(&s, None);
    assert!(p.changes.is_empty());
    assert_eq!(p.blocked.len(), 1);
    assert_eq!(fs::read_to_string(&s.path).unwrap(), before);
    // Blocked with no file: still nothing written.
    fs::remove_file(&s.path).unwrap();
    let p = converge(&s, None);
    assert!(p.changes.is_empty() && p.blocked.len() == 1);
    assert!(!s.path.exists());
}

// ------------------------------------------------------------ guard mode --

#[test]
fn guard_mode_backs_up_restores_and_never_saves_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), LeaseMode::Preserve, false, false);
    let backup = s.state_dir.join("subnet.env");
    // k3s's flannel has not started yet.
    let p = converge(&s, None);
    assert!(p.changes.is_empty());
    assert_eq!(p.blocked[0].reason, "no lease file and no backup yet");

    // k3s writes its file; netconverge saves it.
    let k3s = lease::render(&spec(dir.path(), LeaseMode::Write, true, true), 1450);
    fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    fs::write(&s.path, &k3s).unwrap();
    let p = converge(&s, None);
    let c = only_change(&p);
    assert_eq!(c.kind, ChangeKind::Add);
    assert_eq!(c.object, format!("lease backup {}", backup.display()));
    assert!(matches!(lease_op(&c.op), LeaseOp::Backup { .. }));
    assert_eq!(fs::read_to_string(&backup).unwrap(), k3s);
    assert_eq!(mode_of(&backup), 0o644);
    assert_eq!(mode_of(&s.state_dir), 0o700);
    assert!(in_sync(&s, None));
    assert_eq!(
        fs::read_to_string(&s.path).unwrap(),
        k3s,
        "live file untouched"
    );

    // Reboot: /run is empty. The file comes back from the backup.
    fs::remove_dir_all(dir.path().join("run")).unwrap();
    let p = converge(&s, None);
    let c = only_change(&p);
    assert_eq!(c.kind, ChangeKind::Add);
    assert_eq!(
        c.reason,
        format!("missing; restore from backup {}", backup.display())
    );
    assert_eq!(fs::read(&s.path).unwrap(), k3s.as_bytes());
    assert_eq!(mode_of(&s.path), 0o644);
    assert_eq!(mode_of(&dir.path().join("run")), 0o755);
    assert_eq!(mode_of(s.path.parent().unwrap()), 0o755);
    assert!(in_sync(&s, None));

    // A broken live file is reported, neither saved nor overwritten.
    let broken = &k3s[..k3s.find("FLANNEL_MTU").unwrap()];
    fs::write(&s.path, broken).unwrap();
    let p = converge(&s, None);
    assert!(p.changes.is_empty(), "{p}");
    assert_eq!(p.blocked.len(), 1);
    assert!(p.blocked[0].reason.contains("FLANNEL_MTU missing"), "{p}");
    assert_eq!(fs::read_to_string(&backup).unwrap(), k3s);
    assert_eq!(fs::read_to_string(&s.path).unwrap(), broken);

    // k3s rewrites it with another MTU: the backup follows.
    let newer = lease::render(&spec(dir.path(), LeaseMode::Write, true, true), 1400);
    fs::write(&s.path, &newer).unwrap();
    let p = converge(&s, None);
    assert_eq!(only_change(&p).reason, "refresh: FLANNEL_MTU 1450 → 1400");
    assert_eq!(fs::read_to_string(&backup).unwrap(), newer);
    assert_eq!(dir_entries(&s.state_dir), ["subnet.env"]);
}

// ---------------------------------------------------------------- errors --

/// Observe + plan, which must not fail: unusable paths are observations.
fn observe_plan(spec: &LeaseSpec, vxlan_mtu: Option<u32>) -> (LeaseObserved, Plan) {
    let observed = lease::observe(Some(spec)).expect("an unusable path is not an error");
    let plan = lease::plan(Some(spec), vxlan_mtu, &observed);
    (observed, plan)
}

fn blocked_only(p: &Plan) -> String {
    assert!(p.changes.is_empty(), "{p}");
    assert_eq!(p.blocked.len(), 1, "{p}");
    p.blocked[0].reason.clone()
}

#[test]
fn unusable_paths_block_the_lease_never_fail_the_observation() {
    let dir = tempfile::tempdir().unwrap();
    let w = spec(dir.path(), LeaseMode::Write, true, false);
    let g = LeaseSpec {
        mode: LeaseMode::Preserve,
        ..w.clone()
    };
    let good = lease::render(&w, 1450);

    // The live path is a directory (a bind mount of a missing file).
    fs::create_dir_all(&w.path).unwrap();
    let (o, p) = observe_plan(&w, Some(1450));
    assert_eq!(o.live, FileContent::NotAFile("a directory".into()));
    assert!(blocked_only(&p).starts_with("a directory, not a regular file"));
    let (_, p) = observe_plan(&g, Some(1450));
    assert!(blocked_only(&p).starts_with("invalid (a directory"), "{p}");
    // Applying anyway fails with the path, and leaves no temp file.
    let e = lease::apply(&LeaseOp::Write {
        path: w.path.clone(),
        contents: good.clone(),
    })
    .unwrap_err();
    assert!(matches!(e, LeaseError::Write { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot write {}: ", w.path.display())),
        "{e}"
    );
    assert_eq!(
        dir_entries(w.path.parent().unwrap()),
        ["subnet.env"],
        "temp file left"
    );
    fs::remove_dir(&w.path).unwrap();

    // A character device (what /dev/null is): never opened, blocked.
    fs::create_dir_all(w.path.parent().unwrap()).unwrap();
    let st = std::process::Command::new("mknod")
        .arg(&w.path)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod needs root");
    let (o, p) = observe_plan(&w, Some(1450));
    assert_eq!(o.live, FileContent::NotAFile("a device".into()));
    assert_eq!(
        blocked_only(&p),
        "a device, not a regular file; not written"
    );
    fs::remove_file(&w.path).unwrap();

    // The backup path is a directory: the valid live file cannot be saved.
    fs::write(&g.path, &good).unwrap();
    let backup = g.state_dir.join("subnet.env");
    fs::create_dir_all(&backup).unwrap();
    let (o, p) = observe_plan(&g, Some(1450));
    assert_eq!(o.backup, FileContent::NotAFile("a directory".into()));
    assert!(p.changes.is_empty(), "{p}");
    assert_eq!(
        p.blocked[0].object,
        format!("lease backup {}", backup.display())
    );
    fs::remove_dir_all(&g.state_dir).unwrap();

    // state_dir is a regular file.
    fs::write(&g.state_dir, "").unwrap();
    let (o, p) = observe_plan(&g, Some(1450));
    assert!(
        matches!(&o.backup, FileContent::Unreadable(why) if why.contains("Not a directory")),
        "{o:?}"
    );
    assert_eq!(
        p.blocked[0].object,
        format!("lease backup {}", backup.display())
    );
    let e = lease::apply(&LeaseOp::Backup {
        path: backup.clone(),
        contents: good.clone(),
    })
    .unwrap_err();
    assert!(
        e.to_string().contains(&g.state_dir.display().to_string()),
        "{e}"
    );

    // The live file's directory is a regular file.
    let blocked_dir = dir.path().join("file");
    fs::write(&blocked_dir, "").unwrap();
    let w2 = LeaseSpec {
        path: blocked_dir.join("flannel/subnet.env"),
        ..w.clone()
    };
    let (_, p) = observe_plan(&w2, Some(1450));
    assert!(blocked_only(&p).starts_with("cannot read ("), "{p}");
    let e = lease::apply(&LeaseOp::Write {
        path: w2.path.clone(),
        contents: good.clone(),
    })
    .unwrap_err();
    assert!(matches!(e, LeaseError::CreateDir { .. }), "{e:?}");

    // A path without a file name.
    let e = lease::apply(&LeaseOp::Write {
        path: PathBuf::from("/"),
        contents: good,
    })
    .unwrap_err();
    assert!(matches!(e, LeaseError::Write { .. }), "{e:?}");
}

#[test]
fn a_fifo_is_reported_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), LeaseMode::Write, true, false);
    fs::create_dir_all(s.path.parent().unwrap()).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&s.path)
        .status()
        .unwrap();
    assert!(status.success());
    let (o, p) = observe_plan(&s, Some(1450));
    assert_eq!(o.live, FileContent::NotAFile("a FIFO".into()));
    assert_eq!(blocked_only(&p), "a FIFO, not a regular file; not written");
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\ndata:\n  tls.key: c2VjcmV0LWtleQ==\n";

#[test]
fn a_symlink_is_never_followed_and_replaced_atomically_in_write_mode() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.yaml");
    fs::write(&secret, SECRET).unwrap();
    let w = spec(dir.path(), LeaseMode::Write, true, false);
    fs::create_dir_all(w.path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&secret, &w.path).unwrap();

    let (o, p) = observe_plan(&w, Some(1450));
    assert_eq!(o.live, FileContent::Symlink);
    let shown = format!("{p}{}{o:?}", serde_json::to_string(&o).unwrap());
    for word in ["tls.key", "Secret", "apiVersion", "c2VjcmV0"] {
        assert!(!shown.contains(word), "foreign content {word:?} in {shown}");
    }
    let c = only_change(&p);
    assert_eq!(c.kind, ChangeKind::Modify);
    assert_eq!(
        c.reason,
        "a symbolic link (not followed); replaced by a regular file"
    );
    lease::apply(lease_op(&c.op)).unwrap();
    // The link was replaced by our file; its target is untouched.
    assert!(fs::symlink_metadata(&w.path).unwrap().file_type().is_file());
    assert_eq!(
        fs::read_to_string(&w.path).unwrap(),
        lease::render(&w, 1450)
    );
    assert_eq!(fs::read_to_string(&secret).unwrap(), SECRET);
    assert!(in_sync(&w, Some(1450)));

    // Guard mode: reported, left as is, never read, backup kept.
    let g = LeaseSpec {
        mode: LeaseMode::Preserve,
        ..w.clone()
    };
    converge(&g, Some(1450));
    let backup = g.state_dir.join("subnet.env");
    assert_eq!(
        fs::read_to_string(&backup).unwrap(),
        lease::render(&w, 1450)
    );
    fs::remove_file(&g.path).unwrap();
    std::os::unix::fs::symlink(&secret, &g.path).unwrap();
    let (o, p) = observe_plan(&g, Some(1450));
    assert_eq!(o.live, FileContent::Symlink);
    let reason = blocked_only(&p);
    assert!(reason.contains("a symbolic link, not followed"), "{reason}");
    assert!(!reason.contains("tls.key"));
    assert!(
        fs::symlink_metadata(&g.path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_to_string(&backup).unwrap(),
        lease::render(&w, 1450)
    );
}
