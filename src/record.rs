//! netconverge's record in `state_dir`: what it created that the kernel
//! cannot mark on the object itself.
//!
//! Invariant: the record only ever grows before the kernel does — a route
//! protocol is written (atomically: temp file, fsync, rename) before the
//! first route or nexthop carrying it is created, so a crash can leave a
//! protocol recorded that was never used, never the reverse. Devices are
//! not recorded: they carry [`crate::model::DEVICE_MARK`] in their ifalias.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Desired;

/// File name of the record inside `state_dir`.
pub const FILE: &str = "kernel-record.json";

pub use crate::model::DEFAULT_STATE_DIR;

/// Environment override of `state_dir` (tests give every run its own).
pub const STATE_DIR_ENV: &str = "NETCONVERGE_STATE_DIR";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("reading netconverge's record {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "netconverge's record {path} is not valid ({error}): fix or delete it (deleting forgets which old route protocols to sweep)"
    )]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("writing netconverge's record: {0}")]
    Write(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Every route/nexthop protocol netconverge has created objects with.
    #[serde(default)]
    pub route_protocols: BTreeSet<u8>,
}

/// The directory of the record: `$NETCONVERGE_STATE_DIR` if set, else the
/// file's `state_dir`; `None` when neither is set (no record is kept).
pub fn state_dir(desired: &Desired) -> Option<PathBuf> {
    match std::env::var_os(STATE_DIR_ENV) {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => Some(desired.state_dir.clone()).filter(|d| !d.as_os_str().is_empty()),
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The record in `dir`; empty when there is none yet.
pub fn load(dir: &Path) -> Result<Record, RecordError> {
    let path = path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| RecordError::Parse {
            path: path.clone(),
            error,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(error) => Err(RecordError::Read { path, error }),
    }
}

/// Record `protocol` as used (before anything carrying it is created).
/// Writes only when it is new.
pub fn remember_protocol(dir: &Path, protocol: u8) -> Result<(), RecordError> {
    let mut rec = load(dir)?;
    if !rec.route_protocols.insert(protocol) {
        return Ok(());
    }
    let mut text =
        serde_json::to_vec_pretty(&rec).map_err(|e| RecordError::Write(e.to_string()))?;
    text.push(b'\n');
    crate::lease::atomic::write_atomic(&path(dir), &text, 0o755)
        .map_err(|e| RecordError::Write(e.to_string()))
}

/// Past protocols of the record in `dir` other than `current`.
pub fn past_protocols(dir: &Path, current: u8) -> Result<BTreeSet<u8>, RecordError> {
    let mut p = load(dir)?.route_protocols;
    p.remove(&current);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_protocols_once_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let d = dir.path().join("sub");
        assert_eq!(load(&d).ok(), Some(Record::default()));
        assert!(remember_protocol(&d, 199).is_ok());
        assert!(remember_protocol(&d, 200).is_ok());
        assert!(remember_protocol(&d, 199).is_ok());
        let past = past_protocols(&d, 200).ok();
        assert_eq!(past, Some([199].into_iter().collect()));
        assert!(std::fs::write(path(&d), "nonsense").is_ok());
        assert!(matches!(load(&d), Err(RecordError::Parse { .. })));
    }
}
