//! Shared harness for root-needing integration tests: throwaway network
//! namespaces, iproute2 JSON readers, and running the built binary inside a
//! namespace.
//!
//! Every test that needs root calls [`require_root`] first: without root it
//! fails loudly (never passes silently).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod daemon;
pub mod nm;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fail loudly unless we can create network namespaces.
pub fn require_root() {
    // SAFETY-free: read the effective uid from /proc instead of libc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("");
    assert_eq!(
        euid, "0",
        "this test needs root (it creates network namespaces); run the suite as root, e.g. `sudo -E cargo test`"
    );
}

/// A network namespace that is deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("nct-{}-{}-{}", std::process::id(), n, tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace; returns its output (any status).
    pub fn exec_output(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        Command::new(full[0])
            .args(&full[1..])
            .output()
            .expect("spawn ip netns exec")
    }

    /// Run a command inside the namespace; panics with its stderr unless it succeeds.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.exec_output(args);
        assert!(
            out.status.success(),
            "`{}` failed in {}: {}{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS <args>`, must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        let out = Command::new("ip").args(&full).output().expect("spawn ip");
        assert!(
            out.status.success(),
            "`ip {}` failed: {}",
            full.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS -j <args>` parsed (an independent reader of kernel state).
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let s = self.ip(&full);
        if s.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("ip -j {}: {e}: {s}", args.join(" ")))
    }

    /// `bridge -n NS -j <args>` parsed.
    pub fn bridge_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-n", self.name.as_str(), "-j"];
        full.extend_from_slice(args);
        let out = Command::new("bridge")
            .args(&full)
            .output()
            .expect("spawn bridge");
        assert!(
            out.status.success(),
            "bridge {}: {}",
            full.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        if s.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&s).unwrap()
    }

    /// Run the netconverge binary inside the namespace.
    pub fn netconverge(&self, config: &Path, args: &[&str]) -> Output {
        let bin = env!("CARGO_BIN_EXE_netconverge");
        let cfg = config.to_str().unwrap();
        let mut full = vec![bin, "-c", cfg];
        full.extend_from_slice(args);
        self.exec_output(&full)
    }

    /// Run `f` on a thread that has entered this namespace (for in-process
    /// library calls; child processes spawned there inherit the namespace).
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Run a host command, must succeed.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code of a finished process, with its output in the panic message if killed.
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by signal: {out:?}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
