//! One writer per network namespace: an exclusive `flock` on
//! `/run/netconverge/netns-<inode>.lock`, keyed by the inode of
//! `/proc/self/ns/net`, held by every process that changes kernel state
//! (`run` for its whole life, `converge`/`cleanup` for one pass).
//!
//! Invariant: at most one netconverge process writes a namespace's overlay
//! at a time; two daemons never fight, and a hand converge never races a
//! daemon unless the operator says `--force`. Readers (`converge --check`,
//! `cleanup --check`, `show`, `validate`) never take the lock. The lock is
//! the kernel's: it is released when the holder exits, however it exits, so
//! a stale file never blocks anyone. The file's content (pid, command,
//! config) only names the holder in messages; it is never trusted for
//! anything else.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the lock files live (tmpfs: gone at reboot, like the locks).
pub const LOCK_DIR: &str = "/run/netconverge";

/// How long a process waits for a one-shot holder (`converge`/`cleanup`,
/// a single pass) before giving up. A daemon holder is never waited for:
/// it does not let go.
const ONE_SHOT_WAIT: Duration = Duration::from_secs(10);

/// What the lock holder is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Daemon,
    Converge,
    Cleanup,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Daemon => "run",
            Role::Converge => "converge",
            Role::Cleanup => "cleanup",
        }
    }
}

/// The holder, as its lock file describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// `run`, `converge` or `cleanup`.
    pub command: String,
    /// Absolute path of the holder's config file.
    pub config: String,
    /// Inode of the holder's pid namespace: its pid means something to us
    /// (can be signalled) only when this is ours.
    pub pidns: Option<u64>,
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => h.pid = v.trim().parse().ok(),
                Some(("command", v)) => h.command = v.trim().to_string(),
                Some(("config", v)) => h.config = v.trim().to_string(),
                Some(("pidns", v)) => h.pidns = v.trim().parse().ok(),
                _ => {}
            }
        }
        h
    }

    /// Whether the holder is a daemon (`netconverge run`).
    pub fn is_daemon(&self) -> bool {
        self.command == Role::Daemon.as_str()
    }

    /// The holder's pid if it lives in our pid namespace (so `kill` reaches it).
    pub fn local_pid(&self) -> Option<u32> {
        match (self.pid, self.pidns, ns_inode("pid")) {
            (Some(pid), Some(theirs), Some(ours)) if theirs == ours => Some(pid),
            _ => None,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.command.as_str() {
            "" => write!(f, "netconverge")?,
            "run" => write!(f, "netconverge daemon")?,
            other => write!(f, "netconverge {other}")?,
        }
        let pid = self.pid.map(|p| format!("pid {p}"));
        let config = (!self.config.is_empty()).then(|| format!("config {}", self.config));
        let parts: Vec<String> = pid.into_iter().chain(config).collect();
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("{holder} already manages this network namespace (lock {})", path.display())]
    Busy { path: PathBuf, holder: Holder },
    #[error("cannot take the lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct Lock {
    _file: Flock<File>,
}

/// The lock file for the network namespace this process is in.
pub fn lock_path() -> std::io::Result<PathBuf> {
    let ino = ns_inode("net").ok_or_else(|| {
        std::io::Error::other("cannot read the inode of /proc/self/ns/net (is /proc mounted?)")
    })?;
    Ok(Path::new(LOCK_DIR).join(format!("netns-{ino}.lock")))
}

/// Inode of `/proc/self/ns/<kind>` (unique per live namespace).
fn ns_inode(kind: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/self/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

/// Take the lock for this namespace as `role` working on `config`. A
/// one-shot holder is waited for (briefly); a daemon holder is not.
pub fn acquire(role: Role, config: &Path) -> Result<Lock, LockError> {
    let path = lock_path().map_err(|source| LockError::Io {
        path: PathBuf::from(LOCK_DIR),
        source,
    })?;
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(LOCK_DIR)
        .map_err(io)?;
    let start = Instant::now();
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // a symlink planted in /run must not make us truncate its target
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut held) => {
                write_holder(&mut held, role, config).map_err(io)?;
                return Ok(Lock { _file: held });
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let holder = read_holder(&mut file);
                if holder.is_daemon() || start.elapsed() >= ONE_SHOT_WAIT {
                    return Err(LockError::Busy { path, holder });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => return Err(io(std::io::Error::from(e))),
        }
    }
}

fn write_holder(file: &mut File, role: Role, config: &Path) -> std::io::Result<()> {
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let mut text = format!(
        "pid={}\ncommand={}\nconfig={}\n",
        std::process::id(),
        role.as_str(),
        // one line per key: a newline in a path must not forge another key
        config.display().to_string().replace('\n', "?"),
    );
    if let Some(ino) = ns_inode("pid") {
        text.push_str(&format!("pidns={ino}\n"));
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())
}

/// What the holder wrote. It writes right after locking: an empty file is
/// a holder that has not written yet, so look again a few times.
fn read_holder(file: &mut File) -> Holder {
    for _ in 0..20 {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.take(4096).read_to_string(&mut text));
        if read.is_ok() && text.contains("command=") {
            return Holder::parse(&text);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Holder::default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn holder_round_trips_and_is_described() {
        let h = Holder::parse("pid=42\ncommand=run\nconfig=/etc/a.toml\npidns=7\njunk\n");
        assert_eq!(h.pid, Some(42));
        assert!(h.is_daemon());
        assert_eq!(h.pidns, Some(7));
        assert_eq!(
            h.to_string(),
            "netconverge daemon (pid 42, config /etc/a.toml)"
        );
        let c = Holder::parse("pid=5\ncommand=converge\nconfig=/x\n");
        assert!(!c.is_daemon());
        assert_eq!(c.to_string(), "netconverge converge (pid 5, config /x)");
        assert_eq!(Holder::parse("").to_string(), "netconverge");
    }
}
