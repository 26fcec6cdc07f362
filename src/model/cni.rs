//! The CNI conflist as found on disk and the write that changes it, as
//! plain data. Invariant: no I/O here; rendering and planning live in
//! [`crate::plan::cni`], reading and writing in [`crate::cni`].

use std::path::PathBuf;

use serde::Serialize;

use super::lease::FileContent;

/// The conflist as found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CniObserved {
    pub file: FileContent,
    /// Other CNI config files in the same directory whose names sort before
    /// ours: containerd (`max_conf_num = 1`) loads only the first one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CniOp {
    /// Atomically replace the conflist; its directory is created 0755.
    Write { path: PathBuf, contents: String },
}
