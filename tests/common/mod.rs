//! Shared harness for root-needing integration tests: throwaway network
//! namespaces (with the usual `nc-under` underlay), iproute2 JSON readers,
//! and running the built binary inside a namespace. Submodules: config and
//! expected-rule texts ([`fixtures`]), the whole overlay read back
//! ([`overlay`]), NAT rule readers ([`ruleset`], [`rules_watch`]), the
//! daemon under test ([`daemon`]) and a real NetworkManager ([`nm`]).
//!
//! Every test that needs root calls [`require_root`] first: without root it
//! fails loudly (never passes silently). Nothing here reads kernel state
//! through the code under test.
// Every test crate root already allows the clippy lints tests need; what
// one crate does not use of this shared harness is not dead code.
#![allow(dead_code)]

pub mod daemon;
pub mod fixtures;
pub mod nm;
pub mod overlay;
pub mod rules_watch;
pub mod ruleset;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use netconverge::plan::{Change, Plan};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The veth every node namespace gets as its underlay (peer `nc-under-p`).
pub const UNDERLAY: &str = "nc-under";
/// The underlay's IPv4 and IPv6 addresses (the local VTEPs).
pub const UNDERLAY_V4: &str = "192.0.2.1";
pub const UNDERLAY_V6: &str = "2001:db8::1";

/// How long a test waits for what must happen (a daemon's pass, a notify
/// message, NetworkManager): generous for debug builds on a 2-core machine,
/// as speed is never what a test asserts.
pub const LONG: Duration = Duration::from_secs(30);

/// Which address families a node's overlay (and its underlay) has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    V4,
    V6,
    Dual,
}

impl Stack {
    pub fn v4(self) -> bool {
        self != Stack::V6
    }

    pub fn v6(self) -> bool {
        self != Stack::V4
    }
}

/// The environment variable that overrides `state_dir` (netconverge's record).
pub const STATE_DIR_ENV: &str = "NETCONVERGE_STATE_DIR";

/// The record directory of runs with `config`: next to it (every test has
/// its own temp dir), so parallel tests never share a record.
pub fn state_dir(config: &Path) -> std::path::PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("/nonexistent"))
        .join("netconverge-state")
}

/// Whether this process runs with effective uid 0 (read from /proc, no libc).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

/// Fail loudly unless we can create network namespaces.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (it creates network namespaces); run the suite as root (`bash .ci/test`)"
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

    /// A node: a namespace with the underlay veth (see [`Netns::add_underlay`])
    /// and its addresses for `stack`.
    pub fn node(tag: &str, stack: Stack) -> Netns {
        let ns = Netns::new(tag);
        ns.add_underlay();
        ns.add_underlay_addrs(stack);
        ns
    }

    /// The veth pair [`UNDERLAY`] / `nc-under-p`, both up, no addresses.
    pub fn add_underlay(&self) {
        self.ip(&[
            "link",
            "add",
            UNDERLAY,
            "type",
            "veth",
            "peer",
            "name",
            "nc-under-p",
        ]);
        self.ip(&["link", "set", UNDERLAY, "up"]);
        self.ip(&["link", "set", "nc-under-p", "up"]);
    }

    /// [`UNDERLAY_V4`]/24 and [`UNDERLAY_V6`]/64 on the underlay, as `stack` has them.
    pub fn add_underlay_addrs(&self, stack: Stack) {
        if stack.v4() {
            let a = format!("{UNDERLAY_V4}/24");
            self.ip(&["addr", "add", &a, "dev", UNDERLAY]);
        }
        if stack.v6() {
            let a = format!("{UNDERLAY_V6}/64");
            self.ip(&["addr", "add", &a, "dev", UNDERLAY, "nodad"]);
        }
    }

    /// Run a command inside the namespace; returns its output (any status).
    pub fn exec_output(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        // A netconverge binary started here never writes the host's
        // /var/lib/netconverge (an explicit env in `args` still wins).
        Command::new(full[0])
            .args(&full[1..])
            .env(STATE_DIR_ENV, self.state_dir())
            .output()
            .expect("spawn ip netns exec")
    }

    /// Run a command inside the namespace; panics with its stderr unless it succeeds.
    /// Where netconverge binaries run through [`Netns::exec_output`] keep
    /// their record (removed with the namespace).
    pub fn state_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-state", self.name))
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.exec_output(args);
        succeeded(&out, &format!("`{}` in {}", args.join(" "), self.name))
    }

    /// `ip -n NS <args>`, must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        self.tool("ip", args)
    }

    /// `bridge -n NS <args>`, must succeed.
    pub fn bridge(&self, args: &[&str]) -> String {
        self.tool("bridge", args)
    }

    /// `ip -n NS -j <args>` parsed (an independent reader of kernel state).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        json(&self.ip(&[&["-j"][..], args].concat()), args)
    }

    /// `bridge -n NS -j <args>` parsed.
    pub fn bridge_json(&self, args: &[&str]) -> Value {
        json(&self.bridge(&[&["-j"][..], args].concat()), args)
    }

    /// Delete the FDB entry `mac` → `dst` of VXLAN device `dev` (drift by hand).
    pub fn fdb_del(&self, dev: &str, mac: &str, dst: &str) {
        self.bridge(&["fdb", "del", mac, "dev", dev, "dst", dst, "self"]);
    }

    /// The objects `ip -j <args>` lists (routes, neighbours, links…).
    pub fn ip_list(&self, args: &[&str]) -> Vec<Value> {
        list(self.ip_json(args))
    }

    /// The entries `bridge -j <args>` lists.
    pub fn bridge_list(&self, args: &[&str]) -> Vec<Value> {
        list(self.bridge_json(args))
    }

    /// Link `name` with its details (`ip -d -j link show`), if it exists.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.ip_list(&["-d", "link", "show"])
            .into_iter()
            .find(|l| l["ifname"] == name)
    }

    /// Run the netconverge binary inside the namespace, with the record
    /// kept next to the config ([`state_dir`]).
    pub fn netconverge(&self, config: &Path, args: &[&str]) -> Output {
        let bin = env!("CARGO_BIN_EXE_netconverge");
        let cfg = config.to_str().unwrap();
        let mut full = vec!["ip", "netns", "exec", self.name.as_str(), bin, "-c", cfg];
        full.extend_from_slice(args);
        Command::new(full[0])
            .args(&full[1..])
            .env(STATE_DIR_ENV, state_dir(config))
            .output()
            .expect("spawn ip netns exec")
    }

    /// Run the netconverge binary inside the namespace; panics (with all it
    /// printed) unless it exits with `want`. Returns its stdout.
    #[track_caller]
    pub fn netconverge_exits(&self, config: &Path, args: &[&str], want: i32) -> String {
        let out = self.netconverge(config, args);
        assert_eq!(
            code(&out),
            want,
            "`netconverge {}`: stdout:\n{}\nstderr:\n{}",
            args.join(" "),
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
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

    /// `<tool> -n NS <args>` (iproute2's own namespace switch), must succeed.
    fn tool(&self, tool: &str, args: &[&str]) -> String {
        sh(&[&[tool, "-n", self.name.as_str()][..], args].concat())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.state_dir());
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
    succeeded(&out, &format!("`{}`", args.join(" ")))
}

/// The stdout of a command that must have succeeded (`what` names it).
fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// iproute2 JSON output; nothing at all means an empty list.
fn json(s: &str, args: &[&str]) -> Value {
    if s.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(s).unwrap_or_else(|e| panic!("-j {}: {e}: {s}", args.join(" ")))
}

/// The elements of a JSON list (panics on anything else).
pub fn list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("not a JSON list: {other}"),
    }
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

/// stdout then stderr, for messages and searches over both.
pub fn stdout_stderr(out: &Output) -> String {
    stdout(out) + &stderr(out)
}

/// One `#[test]` per variant of a parameterized test body:
/// `variants!(body: test_name => argument, …);` (exported: every test crate
/// reaches it as `variants!`).
#[macro_export]
macro_rules! variants {
    ($body:ident: $($name:ident => $arg:expr),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $body($arg);
            }
        )+
    };
}

/// Poll `f` every few milliseconds until it is `Ok`; after `timeout`, the
/// last `Err` (what was still wrong).
pub fn poll(timeout: Duration, mut f: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The only change of `plan` (panics unless there is exactly one).
pub fn only_change(plan: &Plan) -> &Change {
    assert_eq!(plan.changes.len(), 1, "want exactly one change:\n{plan}");
    &plan.changes[0]
}

/// Tests that prove a sampling rate (the no-gap watchers) need the CPU of a
/// 2-core machine to themselves: they take [`cpu_exclusive`], every other
/// test of the same binary [`cpu_shared`].
static CPU: RwLock<()> = RwLock::new(());

pub fn cpu_shared() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(|e| e.into_inner())
}

pub fn cpu_exclusive() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(|e| e.into_inner())
}

/// Run `cmd` to completion with its output captured, but give up after
/// `timeout`: the child is killed and the test fails (a command that must
/// not block, e.g. on a FIFO or a second daemon that should have exited).
#[track_caller]
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .expect("spawn");
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?} (killed); stderr:\n{}",
                std::fs::read_to_string(&e).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    }
}
