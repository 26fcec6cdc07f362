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
//! Without a `[lease]` section the file is not netconverge's: nothing is
//! planned, and it is never removed.

pub(crate) mod atomic;
mod file;
#[cfg(test)]
mod tests;

use std::fs::{self, File, FileType};
use std::io::{self, Read as _};
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use file::{
    KEY_IPMASQ, KEY_IPV6_NETWORK, KEY_IPV6_SUBNET, KEY_MTU, KEY_NETWORK, KEY_SUBNET, LeaseFile,
    LeaseFileFamily, LeaseParseError, first_usable, parse, render,
};

use crate::model::{LeaseMode, LeaseSpec};
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

/// File name of the guard-mode backup inside `state_dir`.
pub const BACKUP_FILE_NAME: &str = "subnet.env";

/// Mode of a created directory holding the live file (the CNI plugin reads it).
pub const LIVE_DIR_MODE: u32 = 0o755;
/// Mode of a created `state_dir` (netconverge's own state).
pub const STATE_DIR_MODE: u32 = 0o700;

/// Larger than any real lease file; bounds what a misplaced file costs.
const MAX_LEN: u64 = 64 * 1024;

/// Where the guard-mode backup of `spec` lives.
pub fn backup_path(spec: &LeaseSpec) -> PathBuf {
    spec.state_dir.join(BACKUP_FILE_NAME)
}

/// One file as found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum FileContent {
    #[default]
    Missing,
    Text(String),
    /// A regular file that cannot be a lease file (not UTF-8, too large); why.
    Unusable(String),
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

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{} is {what}, not a regular file", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("cannot create directory {}: {error}", path.display())]
    CreateDir { path: PathBuf, error: io::Error },
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
}

fn object(path: &Path) -> String {
    format!("lease {}", path.display())
}

/// Pure: changes that make the file match. `vxlan_mtu` is the MTU the planner
/// resolved for the VXLAN device of the lease's first family (IPv4 first;
/// `None` when that device is blocked), used when the spec has no `mtu`.
pub fn plan(spec: Option<&LeaseSpec>, vxlan_mtu: Option<u32>, observed: &LeaseObserved) -> Plan {
    let mut plan = Plan::default();
    match spec {
        None => {}
        Some(spec) => match spec.mode {
            LeaseMode::Write => plan_write(spec, vxlan_mtu, observed, &mut plan),
            LeaseMode::Preserve => plan_preserve(spec, observed, &mut plan),
        },
    }
    plan
}

fn plan_write(spec: &LeaseSpec, vxlan_mtu: Option<u32>, observed: &LeaseObserved, plan: &mut Plan) {
    let object = object(&spec.path);
    let blocked = |reason: &str| Blocked {
        object: object.clone(),
        reason: reason.to_string(),
    };
    if spec.ipv4.is_none() && spec.ipv6.is_none() {
        plan.blocked.push(blocked(
            "no address family configured; the CNI plugin would reject the file",
        ));
        return;
    }
    let Some(mtu) = spec.mtu.or(vxlan_mtu) else {
        plan.blocked.push(blocked(
            "MTU unknown (the VXLAN device is blocked and [lease] sets no mtu); not written",
        ));
        return;
    };
    let desired = render(spec, mtu);
    let (kind, reason) = match &observed.live {
        FileContent::Missing => (ChangeKind::Add, "missing".to_string()),
        FileContent::Text(text) if *text == desired => return,
        FileContent::Text(text) => (ChangeKind::Modify, file::describe_drift(text, &desired)),
        FileContent::Unusable(why) => (ChangeKind::Modify, why.clone()),
    };
    plan.changes.push(Change {
        kind,
        object,
        reason,
        op: Op::Lease(LeaseOp::Write {
            path: spec.path.clone(),
            contents: desired,
        }),
    });
}

/// A file checked with the CNI plugin's rules.
enum Checked<'a> {
    Missing,
    Valid(&'a str),
    Invalid(String),
}

fn check(content: &FileContent) -> Checked<'_> {
    match content {
        FileContent::Missing => Checked::Missing,
        FileContent::Unusable(why) => Checked::Invalid(why.clone()),
        FileContent::Text(text) => match parse(text) {
            Ok(_) => Checked::Valid(text),
            Err(e) => Checked::Invalid(e.to_string()),
        },
    }
}

fn plan_preserve(spec: &LeaseSpec, observed: &LeaseObserved, plan: &mut Plan) {
    let object = object(&spec.path);
    let backup = backup_path(spec);
    let backup_object = format!("lease backup {}", backup.display());
    let save = |kind, reason: String, contents: &str| Change {
        kind,
        object: backup_object.clone(),
        reason,
        op: Op::Lease(LeaseOp::Backup {
            path: backup.clone(),
            contents: contents.to_string(),
        }),
    };
    let blocked = |reason: String| Blocked {
        object: object.clone(),
        reason,
    };
    match (check(&observed.live), check(&observed.backup)) {
        (Checked::Valid(live), Checked::Valid(saved)) if live == saved => {}
        (Checked::Valid(live), Checked::Valid(saved)) => plan.changes.push(save(
            ChangeKind::Modify,
            format!("refresh: {}", file::describe_drift(saved, live)),
            live,
        )),
        (Checked::Valid(live), Checked::Missing) => plan.changes.push(save(
            ChangeKind::Add,
            "missing; saved from the live file".to_string(),
            live,
        )),
        (Checked::Valid(live), Checked::Invalid(why)) => plan.changes.push(save(
            ChangeKind::Modify,
            format!("refresh: backup invalid ({why})"),
            live,
        )),
        (Checked::Missing, Checked::Valid(saved)) => plan.changes.push(Change {
            kind: ChangeKind::Add,
            object,
            reason: format!("missing; restore from backup {}", backup.display()),
            op: Op::Lease(LeaseOp::Write {
                path: spec.path.clone(),
                contents: saved.to_string(),
            }),
        }),
        (Checked::Missing, Checked::Missing) => {
            plan.blocked
                .push(blocked("no lease file and no backup yet".to_string()));
        }
        (Checked::Missing, Checked::Invalid(why)) => plan.blocked.push(blocked(format!(
            "no lease file, and backup {} is invalid ({why})",
            backup.display()
        ))),
        (Checked::Invalid(why), saved) => {
            let kept = match saved {
                Checked::Valid(_) => format!("backup {} kept", backup.display()),
                Checked::Missing | Checked::Invalid(_) => "no valid backup".to_string(),
            };
            plan.blocked.push(blocked(format!(
                "invalid ({why}); written by flannel (mode = \"preserve\"), left as is; {kept}"
            )));
        }
    }
}

/// Read the live file and, in guard mode, the backup. A missing file is an
/// observation; any other failure is an error naming the path.
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

fn read_content(path: &Path) -> Result<FileContent, LeaseError> {
    let read_err = |error| LeaseError::Read {
        path: path.to_path_buf(),
        error,
    };
    // Checked before opening: opening a FIFO would block the daemon.
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileContent::Missing),
        Err(e) => return Err(read_err(e)),
    };
    if !meta.is_file() {
        return Err(LeaseError::NotAFile {
            path: path.to_path_buf(),
            what: describe(meta.file_type()),
        });
    }
    let file = match File::open(path) {
        Ok(file) => file,
        // Replaced between the two calls: a writer's rename never leaves the
        // path missing, so it was deleted.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileContent::Missing),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
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
        "a directory"
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
