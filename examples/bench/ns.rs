//! Private network namespaces for the benchmark: created with a veth
//! underlay, deleted on drop; commands and threads run inside them.
//!
//! Invariant: nothing the benchmark does touches the host's namespace except
//! `ip netns add/del` of its own `ncb-<pid>-<n>` namespaces.

use std::fs::File;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

use crate::fleet;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with `lo` up and the underlay `nc-ul0` (veth, up)
    /// carrying 192.0.2.1/24 (and 2001:db8::1/64 when `v6`) unless `bare`.
    pub fn new(v6: bool, bare: bool) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("ncb-{}-{n}", std::process::id());
        host(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.add_underlay()?;
        if !bare {
            ns.add_underlay_addr(v6)?;
        }
        Ok(ns)
    }

    pub fn add_underlay(&self) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            fleet::UNDERLAY,
            "type",
            "veth",
            "peer",
            "name",
            "nc-ul1",
        ])?;
        self.ip(&["link", "set", fleet::UNDERLAY, "up"])?;
        self.ip(&["link", "set", "nc-ul1", "up"])?;
        Ok(())
    }

    pub fn add_underlay_addr(&self, v6: bool) -> Result<()> {
        self.ip(&["addr", "add", "192.0.2.1/24", "dev", fleet::UNDERLAY])?;
        if v6 {
            self.ip(&[
                "addr",
                "add",
                "2001:db8::1/64",
                "dev",
                fleet::UNDERLAY,
                "nodad",
            ])?;
        }
        Ok(())
    }

    /// `ip -n NS ARGS`, must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        host(&full)
    }

    /// Run `f` on a thread that entered this namespace (child processes it
    /// spawns are created there too).
    pub fn enter<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).with_context(|| format!("open {path}"))?;
            setns(fd, CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", self.name))?
    }

    /// Run a command inside the namespace and time it (process start to
    /// exit); fails unless it exits 0.
    pub fn timed(&self, args: &[&str], stdin: Option<&str>) -> Result<(Duration, Output)> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.map(str::to_owned);
        self.enter(move || timed_here(&args, stdin.as_deref()))
    }

    /// Start a long-running process inside the namespace.
    pub fn spawn(&self, args: &[String], env: &[(String, String)], log: File) -> Result<Child> {
        let args = args.to_vec();
        let env = env.to_vec();
        self.enter(move || {
            let (prog, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
            let mut cmd = Command::new(prog);
            cmd.args(rest)
                .envs(env)
                .env_remove("JOURNAL_STREAM")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            Ok(cmd.spawn()?)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn timed_here(args: &[String], stdin: Option<&str>) -> Result<(Duration, Output)> {
    use std::io::Write as _;
    let (prog, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {prog}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((took, out))
}

/// Run a host command, must succeed; returns stdout.
pub fn host(args: &[&str]) -> Result<String> {
    let (prog, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let out = Command::new(prog)
        .args(rest)
        .output()
        .with_context(|| format!("spawn {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
