//! The systemd notification protocol (`NOTIFY_SOCKET`), sent without ever
//! blocking the daemon's loop.
//!
//! Invariant: no send waits. A datagram socket blocks its sender while the
//! receiver's queue is full (PID 1 busy, a harness that stopped reading);
//! here every send is non-blocking, and what could not be queued is kept:
//! a `STATUS=` is replaced by the next one (it is a display, only the latest
//! matters), every other message (`READY=1`, `RELOADING=1`, `STOPPING=1`)
//! is retried in order, from the loop's own timer, until it is sent.
//! `WATCHDOG=1` is never queued: a ping that cannot be sent is simply
//! superseded by the next one.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::debug;

/// First delay before a message that could not be sent is retried.
pub const RETRY_START: Duration = Duration::from_millis(20);
/// Retries slow down to this (a socket nobody ever reads costs one
/// `sendto` per interval).
pub const RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Queued {
    /// Replaced by the next status while unsent.
    Status(String),
    /// Retried until sent.
    Must(String),
}

impl Queued {
    fn text(&self) -> &str {
        match self {
            Queued::Status(s) | Queued::Must(s) => s,
        }
    }
}

/// Where and how to reach systemd; `None` socket: not under systemd (every
/// message is dropped, nothing is queued).
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    queue: VecDeque<Queued>,
    retry: Duration,
}

/// Outcome of one non-blocking send.
enum Sent {
    Done,
    /// The receiver's queue is full, or it is not there (yet): try later.
    Later(io::Error),
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|p| match open(&p) {
            Ok(t) => Some(t),
            Err(e) => {
                debug!("NOTIFY_SOCKET {p:?}: {e}; not notifying systemd");
                None
            }
        });
        Notifier {
            target,
            queue: VecDeque::new(),
            retry: RETRY_START,
        }
    }

    /// A notifier that sends nothing (tests, no systemd).
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            queue: VecDeque::new(),
            retry: RETRY_START,
        }
    }

    /// Show `status`; an older status still waiting to be sent is dropped.
    pub fn status(&mut self, status: &str) {
        if self.target.is_none() {
            return;
        }
        self.queue.retain(|q| !matches!(q, Queued::Status(_)));
        self.queue
            .push_back(Queued::Status(format!("STATUS={status}\n")));
        self.flush();
    }

    /// Send `message` (`READY=1`, …; several lines allowed), retrying until
    /// it is sent.
    pub fn must(&mut self, message: &str) {
        if self.target.is_none() {
            return;
        }
        let mut m = message.to_string();
        if !m.ends_with('\n') {
            m.push('\n');
        }
        self.queue.push_back(Queued::Must(m));
        self.flush();
    }

    /// One watchdog ping; dropped if it cannot be sent right now.
    pub fn watchdog(&mut self) {
        // queued messages first: a ping must not overtake READY=1
        self.flush();
        if !self.queue.is_empty() {
            return;
        }
        if let Some(Sent::Later(e)) = self.send("WATCHDOG=1\n") {
            debug!("watchdog ping not sent ({e}); the next one follows");
        }
    }

    /// Send what is queued, in order, up to the first that cannot be sent.
    /// Returns `true` when nothing is left.
    pub fn flush(&mut self) -> bool {
        while let Some(front) = self.queue.front() {
            match self.send(front.text()) {
                None | Some(Sent::Done) => {
                    self.queue.pop_front();
                    self.retry = RETRY_START;
                }
                Some(Sent::Later(e)) => {
                    debug!(
                        "sd_notify {:?} not sent yet ({e}); retrying in {:?}",
                        front.text().trim_end(),
                        self.retry
                    );
                    return false;
                }
            }
        }
        true
    }

    /// Something waits for a retry: the loop calls [`Notifier::retry`] after
    /// [`Notifier::retry_delay`].
    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn retry_delay(&self) -> Duration {
        self.retry
    }

    /// The retry timer fired: try again, slowing down while it fails.
    pub fn retry(&mut self) {
        if !self.flush() {
            self.retry = (self.retry * 2).min(RETRY_MAX);
        }
    }

    /// The messages still waiting, oldest first (for tests and the stop log).
    pub fn queued(&self) -> Vec<&str> {
        self.queue.iter().map(|q| q.text().trim_end()).collect()
    }

    fn send(&self, text: &str) -> Option<Sent> {
        let (sock, addr) = self.target.as_ref()?;
        Some(match sock.send_to_addr(text.as_bytes(), addr) {
            Ok(_) => Sent::Done,
            Err(e) => Sent::Later(e),
        })
    }
}

/// A non-blocking unbound datagram socket and the address of `path`.
fn open(path: &OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    // The whole point: a full receiver queue answers EAGAIN instead of
    // parking the daemon in the kernel.
    sock.set_nonblocking(true)?;
    Ok((sock, addr))
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`),
/// when it is meant for this process (`WATCHDOG_PID` unset or ours — the
/// rule of `sd_watchdog_enabled(3)`).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notifier sending to a fresh socket whose queue the test controls.
    fn pair() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let n = Notifier {
            target: Some(open(path.as_os_str()).unwrap()),
            queue: VecDeque::new(),
            retry: RETRY_START,
        };
        (dir, rx, n)
    }

    /// Fill the receiver's queue with filler datagrams until a send would
    /// block; returns how many went in.
    fn fill(n: &Notifier) -> usize {
        let (sock, addr) = n.target.as_ref().unwrap();
        let mut k = 0;
        while sock.send_to_addr(b"FILLER=1\n", addr).is_ok() {
            k += 1;
            assert!(k < 100_000, "the queue never filled");
        }
        k
    }

    fn drain(rx: &UnixDatagram) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(len) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(buf.get(..len).unwrap()).into_owned());
        }
        out
    }

    #[test]
    fn full_queue_never_blocks_statuses_collapse_ready_is_kept() {
        let (_dir, rx, mut n) = pair();
        let filled = fill(&n);
        assert!(filled > 0);
        // none of these may block (the test would hang)
        n.status("one");
        n.must("READY=1");
        n.status("two");
        n.watchdog();
        n.status("three");
        assert_eq!(n.queued(), vec!["READY=1", "STATUS=three"]);
        n.retry();
        assert!(n.pending());
        assert!(n.retry_delay() > RETRY_START, "retries slow down");
        // the reader catches up: READY first, then only the last status
        let got = drain(&rx);
        assert_eq!(got.len(), filled, "{got:?}");
        n.retry();
        assert!(!n.pending());
        assert_eq!(drain(&rx), vec!["READY=1\n", "STATUS=three\n"]);
        assert_eq!(n.retry_delay(), RETRY_START);
        n.watchdog();
        assert_eq!(drain(&rx), vec!["WATCHDOG=1\n"]);
    }

    #[test]
    fn without_socket_nothing_is_queued() {
        let mut n = Notifier::disabled();
        n.must("READY=1");
        n.status("x");
        assert!(!n.pending());
    }
}
