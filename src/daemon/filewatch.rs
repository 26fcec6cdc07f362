//! Watches the directories of every file the engine writes
//! ([`crate::model::Desired::written_files`]: the lease file `subnet.env`,
//! …) with one inotify instance, so a file deleted, truncated or edited by
//! hand is repaired at once: no netlink event announces it, and waiting for
//! the periodic resync would leave pods without it for up to a minute.
//!
//! Invariant: a hint only, like every event source — it makes a pass happen
//! sooner, and the pass re-reads the files. Failing to watch is logged and
//! the periodic resync still covers the files. A directory is watched once
//! it exists (the first pass creates it); one that vanishes is watched again
//! after the pass that recreates it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};
use tracing::debug;

pub struct FileWatch {
    /// Directory → the names in it of the files watched.
    dirs: BTreeMap<PathBuf, BTreeSet<OsString>>,
    /// Created at the first arming.
    stream: Option<EventStream<[u8; 4096]>>,
    /// The directories watched now, by watch descriptor.
    armed: HashMap<WatchDescriptor, PathBuf>,
}

impl FileWatch {
    /// An unarmed watch for `paths` (armed by [`FileWatch::arm`]).
    pub fn new(paths: &[PathBuf]) -> FileWatch {
        let mut dirs: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
        for p in paths {
            if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
                dirs.entry(dir.to_path_buf())
                    .or_default()
                    .insert(name.to_os_string());
            }
        }
        FileWatch {
            dirs,
            stream: None,
            armed: HashMap::new(),
        }
    }

    fn is_armed(&self, dir: &Path) -> bool {
        self.armed.values().any(|d| d == dir)
    }

    /// Start watching every directory that exists and is not watched yet.
    /// Returns `true` when one was armed just now: a change made between
    /// the pass that created the directory and this moment raised no event,
    /// so the caller must run one more pass to look.
    pub fn arm(&mut self) -> bool {
        let todo: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !self.is_armed(d) && d.is_dir())
            .cloned()
            .collect();
        if todo.is_empty() {
            return false;
        }
        if self.stream.is_none() {
            match Inotify::init().and_then(|ino| ino.into_event_stream([0u8; 4096])) {
                Ok(s) => self.stream = Some(s),
                Err(e) => {
                    debug!("cannot watch written files: {e}; the periodic resync covers them");
                    return false;
                }
            }
        }
        let Some(stream) = self.stream.as_ref() else {
            return false;
        };
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let mut armed = false;
        for dir in todo {
            match stream.watches().add(&dir, mask) {
                Ok(wd) => {
                    debug!("watching {} for changes of written files", dir.display());
                    self.armed.insert(wd, dir);
                    armed = true;
                }
                Err(e) => debug!(
                    "cannot watch {}: {e}; the periodic resync covers its files",
                    dir.display()
                ),
            }
        }
        armed
    }

    /// Wait for a change that concerns a watched file; returns its path.
    /// Pending forever while nothing is armed. A vanished directory disarms
    /// its watch (re-armed after the pass that recreates it) and counts as a
    /// change (of the directory).
    pub async fn changed(&mut self) -> PathBuf {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return std::future::pending().await;
            };
            if self.armed.is_empty() {
                return std::future::pending().await;
            }
            let ev = match stream.next().await {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    debug!("file watch failed: {e}; re-arming after the next pass");
                    self.stream = None;
                    self.armed.clear();
                    return PathBuf::new();
                }
                None => {
                    self.stream = None;
                    self.armed.clear();
                    return PathBuf::new();
                }
            };
            if ev
                .mask
                .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED)
            {
                // Gone (or moved away: stop following it there). The
                // IGNORED that follows a DELETE_SELF finds nothing armed.
                if let Some(dir) = self.armed.remove(&ev.wd) {
                    if ev.mask.contains(EventMask::MOVE_SELF) {
                        let _ = stream.watches().remove(ev.wd);
                    }
                    return dir;
                }
                continue;
            }
            let Some(dir) = self.armed.get(&ev.wd) else {
                continue;
            };
            let ours = self
                .dirs
                .get(dir)
                .is_some_and(|names| ev.name.as_deref().is_some_and(|n| names.contains(n)));
            if let (true, Some(name)) = (ours, ev.name) {
                return dir.join(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn changed_within(w: &mut FileWatch, rt: &tokio::runtime::Runtime, ms: u64) -> bool {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(ms), w.changed())
                .await
                .is_ok()
        })
    }

    fn next_change(w: &mut FileWatch, rt: &tokio::runtime::Runtime) -> PathBuf {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), w.changed())
                .await
                .unwrap()
        })
    }

    #[test]
    fn every_written_file_is_watched_and_a_recreated_directory_is_rearmed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        let mut w = rt.block_on(async {
            let mut w = FileWatch::new(&[a.join("subnet.env"), b.join("10-x.conflist")]);
            assert!(w.arm(), "a exists");
            assert!(!w.arm(), "nothing new to arm");
            w
        });
        // unrelated file: no change (positive control below)
        std::fs::write(a.join("other"), "x").unwrap();
        assert!(!changed_within(&mut w, &rt, 200));
        std::fs::write(a.join("subnet.env"), "x").unwrap();
        assert_eq!(next_change(&mut w, &rt), a.join("subnet.env"));
        // (CREATE, then CLOSE_WRITE: the daemon coalesces them)
        while changed_within(&mut w, &rt, 200) {}
        // b appears: armed at the next arm, and watched
        std::fs::create_dir(&b).unwrap();
        assert!(rt.block_on(async { w.arm() }));
        std::fs::write(b.join("10-x.conflist"), "{}").unwrap();
        assert_eq!(next_change(&mut w, &rt), b.join("10-x.conflist"));
        while changed_within(&mut w, &rt, 200) {}
        // a vanishes: a change, then re-armed once recreated
        std::fs::remove_dir_all(&a).unwrap();
        assert!(changed_within(&mut w, &rt, 2000));
        // (the daemon polls the watch during the pass: drain the rest)
        while changed_within(&mut w, &rt, 200) {}
        assert!(!rt.block_on(async { w.arm() }), "a is gone");
        std::fs::create_dir(&a).unwrap();
        assert!(rt.block_on(async { w.arm() }), "a is back");
        std::fs::write(a.join("subnet.env"), "y").unwrap();
        assert!(changed_within(&mut w, &rt, 2000));
    }
}
