//! The CNI network configuration list (`[cni]`): reading it and writing it.
//!
//! Invariant: the file is read exactly like the lease file (`O_NOFOLLOW |
//! O_NONBLOCK`, regular files only, bounded; a directory, FIFO or device at
//! the path blocks only this file) and written with the lease's atomic
//! writer, so containerd never sees a partial, empty or missing conflist.
//! What to write, and whether the file drifted, is decided by the pure
//! planner in [`crate::plan::cni`].

use std::fs;
use std::path::Path;

use crate::lease::LeaseError;
use crate::model::CniSpec;
pub use crate::model::cni::{CniObserved, CniOp};

/// Mode of a created `/etc/cni/net.d` (containerd reads it).
pub const DIR_MODE: u32 = 0o755;

/// Read the conflist and list the config files that would shadow it. Only
/// a missing privilege is an error.
pub fn observe(spec: Option<&CniSpec>) -> Result<CniObserved, LeaseError> {
    let Some(spec) = spec else {
        return Ok(CniObserved::default());
    };
    Ok(CniObserved {
        file: crate::lease::read_content(&spec.path)?,
        earlier: shadowing(&spec.path),
    })
}

/// Names of `*.conf`, `*.conflist`, `*.json` next to `path` that sort before
/// it (libcni's `ConfFiles` order: by name). Best effort: an unreadable
/// directory shows up as the file's own observation.
fn shadowing(path: &Path) -> Vec<String> {
    let (Some(dir), Some(own)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.as_os_str() < own)
        .filter_map(|n| n.into_string().ok())
        .filter(|n| {
            Path::new(n)
                .extension()
                .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
        })
        .collect();
    out.sort();
    out
}

/// Run one operation (atomic: see the module invariant).
pub fn apply(op: &CniOp) -> Result<(), LeaseError> {
    match op {
        CniOp::Write { path, contents } => {
            crate::lease::atomic::write_atomic(path, contents.as_bytes(), DIR_MODE)
        }
    }
}
