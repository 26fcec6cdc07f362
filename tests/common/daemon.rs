//! A `netconverge run` under test: started in a namespace with NOTIFY_SOCKET
//! pointing at a datagram socket this harness bound (exactly what systemd
//! reads), logs captured to a file, stopped by PID.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Netns;

/// Runs on the notify reader thread for every message, the instant it is
/// received (before the test sees it): reads some state "at the moment"
/// READY=1 arrives. Its result is stored next to the message.
pub type Probe = Box<dyn FnMut(&str) -> String + Send>;

pub struct Daemon {
    pub child: Option<Child>,
    /// `(message, probe result)` for every message, when started with a probe.
    probed: Arc<Mutex<Vec<(String, String)>>>,
    /// Fed by a thread that reads the notify socket continuously, as systemd
    /// does: the kernel queues only a few datagrams, and behind a full queue
    /// the daemon's messages wait (it never blocks on them: see the
    /// stuck-socket test in tests/daemon.rs).
    rx: Receiver<(String, Instant)>,
    pub log: PathBuf,
    /// Every notify message received so far, in order.
    pub messages: Vec<String>,
    /// When each of [`Daemon::messages`] arrived (read at once by a thread).
    pub arrivals: Vec<Instant>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Start `netconverge -c config run` in `ns` with extra env vars.
    pub fn start(ns: &Netns, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let prefix = [
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            ns.name.clone(),
        ];
        Daemon::start_with(&prefix, config, env)
    }

    /// Start the daemon through an arbitrary command prefix (e.g. nsenter).
    pub fn start_with(prefix: &[String], config: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_inner(prefix, config, &[], env, None)
    }

    /// [`Daemon::start_with`] with `args` after `run` (e.g. `--node NAME`).
    pub fn start_run_args(
        prefix: &[String],
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start_inner(prefix, config, args, env, None)
    }

    /// Like [`Daemon::start`], running `probe` on each notify message as it
    /// arrives (see [`Probe`]); results in [`Daemon::probed`].
    pub fn start_probed(ns: &Netns, config: &Path, env: &[(&str, &str)], probe: Probe) -> Daemon {
        let prefix = [
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            ns.name.clone(),
        ];
        Daemon::start_inner(&prefix, config, &[], env, Some(probe))
    }

    fn start_inner(
        prefix: &[String],
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        mut probe: Option<Probe>,
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        let log = dir.path().join("daemon.log");
        let logf = std::fs::File::create(&log).unwrap();
        // systemd sets WATCHDOG_PID to the main PID; `sh -c 'exec'` keeps the
        // PID through `ip netns exec`/`nsenter` (which exec, not fork).
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$@\"",
            "sh",
        ])
        .args(prefix)
        .args([env!("CARGO_BIN_EXE_netconverge"), "-v", "-c"])
        .arg(config)
        .arg("run")
        .args(args)
        .env("NOTIFY_SOCKET", &sock_path)
        .env(super::STATE_DIR_ENV, super::state_dir(config))
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let (tx, rx) = channel();
        let probed = Arc::new(Mutex::new(Vec::new()));
        let probed_w = probed.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(p) = probe.as_mut() {
                    let seen = p(&msg);
                    probed_w.lock().unwrap().push((msg.clone(), seen));
                }
                if tx.send((msg, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child: Some(child),
            probed,
            rx,
            log,
            messages: Vec::new(),
            arrivals: Vec::new(),
            _dir: dir,
        }
    }

    /// What the probe saw for the first message containing `needle`.
    pub fn probed(&self, needle: &str) -> Option<String> {
        self.probed
            .lock()
            .unwrap()
            .iter()
            .find(|(m, _)| m.contains(needle))
            .map(|(_, seen)| seen.clone())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Receive notify messages until one contains `needle` (returns it).
    pub fn wait_notify(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notify message containing {needle:?} within {timeout:?}; got {:?}\nlog:\n{}",
                self.messages,
                self.logs()
            );
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((m, at)) => {
                    self.messages.push(m.clone());
                    self.arrivals.push(at);
                    if m.contains(needle) {
                        return m;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("notify reader stopped"),
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) while waiting for {needle:?}:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Collect every message arriving within `period` (the daemon must stay
    /// up all along).
    pub fn collect_for(&mut self, period: Duration) {
        let end = Instant::now() + period;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Ok((m, at)) = self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                self.messages.push(m);
                self.arrivals.push(at);
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited ({status}):\n{}", self.logs());
            }
        }
    }

    /// Collect what has arrived without blocking.
    pub fn drain(&mut self) {
        while let Ok((m, at)) = self.rx.try_recv() {
            self.messages.push(m);
            self.arrivals.push(at);
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        super::sh(&["kill", sig, &self.pid().to_string()]);
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "daemon did not stop within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Poll `f` until it returns true (or panic with `what` after `timeout`).
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
