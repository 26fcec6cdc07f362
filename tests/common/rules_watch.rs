//! A watcher that polls a live rule set from inside a network namespace as
//! fast as it can, and counts every sample in which a check failed: the
//! "no instant without our masquerade rules" proof.
//!
//! It depends on nothing but the namespace's name and a command line, so it
//! keeps sampling across anything the test does meanwhile (library calls,
//! killing and restarting the netconverge binary).
//!
//! Use: `let w = Watch::start(&ns.name, &["nft", "-j", "list", "table", "ip", "t"], check)`;
//! …do things…; `w.stop().assert_no_gap(200.0)`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Decides whether one sample (the reader's full output) is acceptable;
/// `Err` explains what was missing.
pub type CheckFn = dyn Fn(&Output) -> Result<(), String> + Send + Sync + 'static;
pub type Check = Box<CheckFn>;

/// What the watcher saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub samples: u64,
    pub bad: u64,
    /// The first failing sample's explanation.
    pub first_bad: Option<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn hz(&self) -> f64 {
        self.samples as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// No failing sample, and the sampling rate really reached `min_hz`
    /// (otherwise a short gap could have slipped between two samples).
    pub fn assert_no_gap(&self, min_hz: f64) {
        assert_eq!(
            self.bad, 0,
            "watcher saw {} bad samples of {}: first: {:?}",
            self.bad, self.samples, self.first_bad
        );
        self.assert_rate(min_hz);
    }

    pub fn assert_rate(&self, min_hz: f64) {
        assert!(
            self.hz() >= min_hz,
            "watcher reached only {:.0} Hz ({} samples in {:?}), need {min_hz} Hz",
            self.hz(),
            self.samples,
            self.elapsed
        );
    }
}

pub struct Watch {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Report>>,
}

/// Sampler threads: each sample is a fork+exec of the reader, mostly
/// latency, so two interleaved samplers double the rate on a small machine.
pub const SAMPLERS: usize = 2;

impl Watch {
    /// Start polling `cmd` inside network namespace `netns` (a name under
    /// /run/netns) from [`SAMPLERS`] threads. Returns once every sampler took
    /// a first sample that passed the check (panics otherwise: the watch
    /// must start from a good state).
    pub fn start(netns: &str, cmd: &[&str], check: Check) -> Watch {
        let check: Arc<CheckFn> = Arc::from(check);
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let handles: Vec<JoinHandle<Report>> = (0..SAMPLERS)
            .map(|_| {
                let (path, cmd, check, stop, ready) = (
                    format!("/run/netns/{netns}"),
                    cmd.clone(),
                    check.clone(),
                    stop.clone(),
                    ready_tx.clone(),
                );
                std::thread::spawn(move || sampler(&path, &cmd, &*check, &stop, &ready))
            })
            .collect();
        let mut watch = Watch { stop, handles };
        for _ in 0..SAMPLERS {
            if let Err(why) = ready_rx.recv().expect("watcher thread died") {
                watch.stop.store(true, Ordering::SeqCst);
                watch.handles.drain(..).for_each(|h| drop(h.join()));
                panic!("watcher's first sample already failed: {why}");
            }
        }
        watch
    }

    /// Stop sampling (after the samples in flight) and return the combined report.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Report {
            samples: 0,
            bad: 0,
            first_bad: None,
            elapsed: Duration::ZERO,
        };
        for h in self.handles.drain(..) {
            let r = h.join().expect("watcher thread panicked");
            total.samples += r.samples;
            total.bad += r.bad;
            total.first_bad = total.first_bad.or(r.first_bad);
            total.elapsed = total.elapsed.max(r.elapsed);
        }
        total
    }
}

fn sampler(
    netns_path: &str,
    cmd: &[String],
    check: &CheckFn,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Report {
    // The thread enters the namespace once; every reader it spawns inherits
    // it (much cheaper than `ip netns exec` per sample).
    let fd = std::fs::File::open(netns_path).expect("open netns");
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let sample = || -> Result<(), String> {
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawn {}: {e}", cmd[0]))?;
        check(&out)
    };
    let mut r = Report {
        samples: 0,
        bad: 0,
        first_bad: None,
        elapsed: Duration::ZERO,
    };
    let first = sample();
    let ok = first.is_ok();
    let _ = ready.send(first);
    if !ok {
        return r;
    }
    let start = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        r.samples += 1;
        if let Err(why) = sample() {
            r.bad += 1;
            r.first_bad.get_or_insert(why);
        }
    }
    r.elapsed = start.elapsed();
    r
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Check for `nft -j list table <family> <table>`: the listing succeeded and
/// chain `chain` holds exactly `masquerades` masquerade rules.
pub fn nft_masquerades(chain: &'static str, masquerades: usize) -> Check {
    Box::new(move |out: &Output| {
        if !out.status.success() {
            return Err(format!(
                "nft failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("nft output is not JSON: {e}"))?;
        let n = v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["chain"] == chain)
            .filter(|r| {
                r["expr"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|s| s.get("masquerade").is_some()))
            })
            .count();
        if n == masquerades {
            Ok(())
        } else {
            Err(format!(
                "{n} masquerade rules in {chain}, want {masquerades}"
            ))
        }
    })
}

/// Check for `iptables-save -t nat`: chain `chain` holds exactly
/// `masquerades` MASQUERADE rules and POSTROUTING jumps to it.
pub fn iptables_masquerades(chain: &'static str, masquerades: usize) -> Check {
    Box::new(move |out: &Output| {
        if !out.status.success() {
            return Err(format!(
                "save failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let ours = format!("-A {chain} ");
        let n = text
            .lines()
            .filter(|l| l.starts_with(&ours) && l.contains(" -j MASQUERADE"))
            .count();
        let jump = text
            .lines()
            .any(|l| l.starts_with("-A POSTROUTING ") && l.ends_with(&format!(" -j {chain}")));
        match (n == masquerades, jump) {
            (true, true) => Ok(()),
            (_, false) => Err(format!("no jump from POSTROUTING to {chain}")),
            (false, _) => Err(format!(
                "{n} MASQUERADE rules in {chain}, want {masquerades}"
            )),
        }
    })
}
