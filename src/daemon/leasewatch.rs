//! Watches the directory of the lease file (`subnet.env`) with inotify, so a
//! file deleted, truncated or edited by hand is repaired at once: no netlink
//! event announces it, and waiting for the periodic resync would leave pods
//! without it for up to a minute.
//!
//! Invariant: a hint only, like every event source — it makes a pass happen
//! sooner, and the pass re-reads the file. Failing to watch is logged and the
//! periodic resync still covers the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchMask};
use tracing::debug;

pub struct LeaseWatch {
    /// Directory and file name watched; `None` without a `[lease]` section.
    target: Option<(PathBuf, OsString)>,
    stream: Option<EventStream<[u8; 4096]>>,
}

impl LeaseWatch {
    /// An unarmed watch for `path` (armed by [`LeaseWatch::arm`] once the
    /// directory exists: the first pass creates it).
    pub fn new(path: Option<&Path>) -> LeaseWatch {
        let target =
            path.and_then(|p| Some((p.parent()?.to_path_buf(), p.file_name()?.to_os_string())));
        LeaseWatch {
            target,
            stream: None,
        }
    }

    /// Start watching if not yet watching and the directory exists.
    /// Returns `true` when the watch was armed just now: a change made
    /// between the pass that created the directory and this moment raised
    /// no event, so the caller must run one more pass to look.
    pub fn arm(&mut self) -> bool {
        if self.stream.is_some() {
            return false;
        }
        let Some((dir, _)) = &self.target else {
            return false;
        };
        if !dir.is_dir() {
            return false;
        }
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let armed = Inotify::init().and_then(|ino| {
            ino.watches().add(dir, mask)?;
            ino.into_event_stream([0u8; 4096])
        });
        match armed {
            Ok(s) => {
                debug!("watching {} for lease file changes", dir.display());
                self.stream = Some(s);
                true
            }
            Err(e) => {
                debug!(
                    "cannot watch {}: {e}; the periodic resync covers the lease file",
                    dir.display()
                );
                false
            }
        }
    }

    /// Wait for a change that concerns the lease file. Pending forever while
    /// unarmed. A vanished directory disarms the watch (re-armed after the
    /// pass that recreates it) and counts as a change.
    pub async fn changed(&mut self) {
        loop {
            let (Some(stream), Some((_, name))) = (self.stream.as_mut(), self.target.as_ref())
            else {
                return std::future::pending().await;
            };
            match stream.next().await {
                Some(Ok(ev)) => {
                    if ev.mask.intersects(
                        EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED,
                    ) {
                        self.stream = None;
                        return;
                    }
                    if ev.name.as_deref() == Some(name.as_os_str()) {
                        return;
                    }
                }
                Some(Err(e)) => {
                    debug!("lease watch failed: {e}; re-arming after the next pass");
                    self.stream = None;
                    return;
                }
                None => {
                    self.stream = None;
                    return;
                }
            }
        }
    }
}
