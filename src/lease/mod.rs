//! The flannel subnet lease file (`/run/flannel/subnet.env`), read by the
//! flannel CNI plugin for every pod.
//!
//! Invariant: rendering, parsing and planning are pure; [`apply`] replaces
//! files atomically (a reader never sees a partial, empty or missing file),
//! and a file is never written with an MTU that is not known.
//!
//! Two modes ([`LeaseMode`]):
//! - `write`: netconverge owns the content. Desired = [`render`] with the
//!   spec's `mtu`, else the VXLAN device's; with neither the lease is
//!   *blocked* (never a guessed MTU). Any difference is one change on
//!   `lease <path>` naming the keys that differ.
//! - `preserve` (k3s's embedded flannel writes the file): netconverge keeps a
//!   last-known-good copy at `<state_dir>/subnet.env`, refreshes it from a
//!   valid live file, and restores a *missing* live file from it. A live file
//!   that is present but invalid is reported as **blocked**, not as a change:
//!   its content is flannel's, so netconverge neither overwrites it nor
//!   copies it over the good backup, and there is no operation that could
//!   resolve it (a warning-only change would keep every plan non-empty).
//!
//!   The live file (and a backup about to be restored) must agree with what
//!   `[lease]` declares: the declared families' networks and subnets, and the
//!   MTU (`[lease] mtu`, else the converged VXLAN device's). A file that
//!   disagrees is **blocked** with the keys that differ; it is never copied
//!   over the backup, and a disagreeing backup is never restored.
//!
//! Every path is read with `O_NOFOLLOW | O_NONBLOCK`, regular files only, so
//! observing never blocks on a FIFO and never reads (or prints) the target
//! of a symlink. A path netconverge cannot use (a directory — what a
//! container bind-mount of a missing file creates —, a FIFO, a device, an
//! unreadable path) blocks the lease only: the rest of the pass converges.
//! A symlink is drift: in write mode the atomic rename replaces the link
//! itself (never its target); in guard mode it is reported.
//!
//! Without a `[lease]` section the file is not netconverge's: nothing is
//! planned, and it is never removed.

pub(crate) mod atomic;
#[cfg(test)]
mod tests;

use std::fs::{self, FileType, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

pub use crate::plan::lease::file::{
    KEY_IPMASQ, KEY_IPV6_NETWORK, KEY_IPV6_SUBNET, KEY_MTU, KEY_NETWORK, KEY_SUBNET, LeaseFile,
    LeaseFileFamily, LeaseParseError, first_usable, parse, render,
};

use crate::model::lease::DIRECTORY;
pub use crate::model::lease::{BACKUP_FILE_NAME, FileContent, LeaseObserved, LeaseOp, backup_path};
use crate::model::{LeaseMode, LeaseSpec};
pub use crate::plan::lease::plan;

/// Mode of a created directory holding the live file (the CNI plugin reads it).
pub const LIVE_DIR_MODE: u32 = 0o755;
/// Mode of a created `state_dir` (netconverge's own state).
pub const STATE_DIR_MODE: u32 = 0o700;

/// Larger than any real lease file; bounds what a misplaced file costs.
const MAX_LEN: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Only for a missing privilege: every other problem with a path is an
    /// observation (see [`FileContent`]) that blocks the lease alone.
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot create directory {}: {error}", path.display())]
    CreateDir { path: PathBuf, error: io::Error },
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
}

/// Read the live file and, in guard mode, the backup. Only a missing
/// privilege is an error; everything else is a [`FileContent`].
pub fn observe(spec: Option<&LeaseSpec>) -> Result<LeaseObserved, LeaseError> {
    let Some(spec) = spec else {
        return Ok(LeaseObserved::default());
    };
    let live = read_content(&spec.path)?;
    let backup = match spec.mode {
        LeaseMode::Write => FileContent::Missing,
        LeaseMode::Preserve => read_content(&backup_path(spec))?,
    };
    Ok(LeaseObserved { live, backup })
}

pub(crate) fn read_content(path: &Path) -> Result<FileContent, LeaseError> {
    // A missing privilege is the caller's problem (exit 3); anything else
    // about this path is an observation that blocks the lease only.
    let seen = |error: io::Error| match error.kind() {
        io::ErrorKind::NotFound => Ok(FileContent::Missing),
        io::ErrorKind::PermissionDenied => Err(LeaseError::Read {
            path: path.to_path_buf(),
            error,
        }),
        _ if error.raw_os_error() == Some(libc::ELOOP) => Ok(FileContent::Symlink),
        _ => Ok(FileContent::Unreadable(error.to_string())),
    };
    // lstat first: a device is never opened (opening one can have effects).
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => return seen(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(FileContent::Symlink);
    }
    if !meta.is_file() {
        return Ok(FileContent::NotAFile(
            describe(meta.file_type()).to_string(),
        ));
    }
    // Swapped since the lstat: O_NOFOLLOW fails on a symlink (ELOOP),
    // O_NONBLOCK keeps a FIFO from blocking, fstat below catches the rest.
    // A writer's rename never leaves the path missing, so NotFound means deleted.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => return seen(e),
    };
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(m) => return Ok(FileContent::NotAFile(describe(m.file_type()).to_string())),
        Err(e) => return seen(e),
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_LEN + 1).read_to_end(&mut bytes) {
        return seen(e);
    }
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_LEN {
        return Ok(FileContent::Unusable(format!(
            "larger than {MAX_LEN} bytes"
        )));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => FileContent::Text(text),
        Err(_) => FileContent::Unusable("not UTF-8 text".to_string()),
    })
}

fn describe(t: FileType) -> &'static str {
    if t.is_dir() {
        DIRECTORY
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// Run one operation. Writes are atomic: see the module invariant.
pub fn apply(op: &LeaseOp) -> Result<(), LeaseError> {
    match op {
        LeaseOp::Write { path, contents } => {
            atomic::write_atomic(path, contents.as_bytes(), LIVE_DIR_MODE)
        }
        LeaseOp::Backup { path, contents } => {
            atomic::write_atomic(path, contents.as_bytes(), STATE_DIR_MODE)
        }
    }
}
