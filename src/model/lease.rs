//! The lease file as found on disk and the writes that change it, as plain
//! data. Invariant: no I/O here; rendering, parsing and planning live in
//! [`crate::plan::lease`], reading and writing in [`crate::lease`].

use std::path::PathBuf;

use super::LeaseSpec;

use serde::Serialize;

/// File name of the guard-mode backup inside `state_dir`.
pub const BACKUP_FILE_NAME: &str = "subnet.env";

/// How [`FileContent::NotAFile`] names a directory (the plan adds a hint for
/// it: a container bind mount of a missing file creates one).
pub const DIRECTORY: &str = "a directory";

/// One file as found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum FileContent {
    #[default]
    Missing,
    Text(String),
    /// A regular file that cannot be a lease file (not UTF-8, too large); why.
    /// Replacing it is safe.
    Unusable(String),
    /// A symbolic link: not followed, its target never read.
    Symlink,
    /// Not a regular file (`a directory`, `a FIFO`, `a device`, …): never
    /// opened for reading, and not replaced.
    NotAFile(String),
    /// The path cannot be read (e.g. a parent is not a directory); why.
    Unreadable(String),
}

/// The lease file (and guard-mode backup) as found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseObserved {
    pub live: FileContent,
    /// Guard mode only; always [`FileContent::Missing`] in write mode.
    pub backup: FileContent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeaseOp {
    /// Atomically replace the live file (write mode, or a guard-mode
    /// restore); its directory is created 0755 if missing.
    Write { path: PathBuf, contents: String },
    /// Atomically replace the guard-mode backup with a validated copy of the
    /// live file; `state_dir` is created 0700 if missing.
    Backup { path: PathBuf, contents: String },
}

/// Where the guard-mode backup of `spec` lives.
pub fn backup_path(spec: &LeaseSpec) -> PathBuf {
    spec.state_dir.join(BACKUP_FILE_NAME)
}
