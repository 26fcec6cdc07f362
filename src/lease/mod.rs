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
mod file;
#[cfg(test)]
mod tests;

use std::fs::{self, FileType, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

pub use file::{
    KEY_IPMASQ, KEY_IPV6_NETWORK, KEY_IPV6_SUBNET, KEY_MTU, KEY_NETWORK, KEY_SUBNET, LeaseFile,
    LeaseFileFamily, LeaseParseError, first_usable, parse, render,
};

pub use crate::model::lease::{BACKUP_FILE_NAME, FileContent, LeaseObserved, LeaseOp};
use crate::model::{LeaseMode, LeaseSpec};
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

/// Mode of a created directory holding the live file (the CNI plugin reads it).
pub const LIVE_DIR_MODE: u32 = 0o755;
/// Mode of a created `state_dir` (netconverge's own state).
pub const STATE_DIR_MODE: u32 = 0o700;

/// Larger than any real lease file; bounds what a misplaced file costs.
const MAX_LEN: u64 = 64 * 1024;
/// IPv6's minimum link MTU (RFC 8200): pods given less have no IPv6.
const IPV6_MIN_MTU: u32 = 1280;

/// Where the guard-mode backup of `spec` lives.
pub fn backup_path(spec: &LeaseSpec) -> PathBuf {
    spec.state_dir.join(BACKUP_FILE_NAME)
}

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

fn object(path: &Path) -> String {
    format!("lease {}", path.display())
}

/// Pure: changes that make the file match. `vxlan_mtu` is the MTU the planner
/// resolved for the VXLAN device of the lease's first family (IPv4 first;
/// `None` when that device is blocked), used when the spec has no `mtu` (in
/// guard mode: to compare with the file's).
pub fn plan(spec: Option<&LeaseSpec>, vxlan_mtu: Option<u32>, observed: &LeaseObserved) -> Plan {
    let mut plan = Plan::default();
    match spec {
        None => {}
        Some(spec) => match spec.mode {
            LeaseMode::Write => plan_write(spec, vxlan_mtu, observed, &mut plan),
            LeaseMode::Preserve => plan_preserve(spec, vxlan_mtu, observed, &mut plan),
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
    if mtu < IPV6_MIN_MTU && spec.ipv6.is_some() {
        plan.blocked.push(blocked(&format!(
            "MTU {mtu} is below IPv6's minimum {IPV6_MIN_MTU} and the lease declares IPv6 pods; not written"
        )));
        return;
    }
    let desired = render(spec, mtu);
    let (kind, reason) = match &observed.live {
        FileContent::Missing => (ChangeKind::Add, "missing".to_string()),
        FileContent::Text(text) if *text == desired => return,
        FileContent::Text(text) => (ChangeKind::Modify, file::describe_drift(text, &desired)),
        FileContent::Unusable(why) => (ChangeKind::Modify, why.clone()),
        // rename(2) replaces the link itself, never its target.
        FileContent::Symlink => (
            ChangeKind::Modify,
            "a symbolic link (not followed); replaced by a regular file".to_string(),
        ),
        FileContent::NotAFile(what) => {
            let hint = if what == DIRECTORY {
                " (a container bind mount of a missing file creates one)"
            } else {
                ""
            };
            plan.blocked.push(blocked(&format!(
                "{what}, not a regular file{hint}; not written"
            )));
            return;
        }
        FileContent::Unreadable(why) => {
            plan.blocked
                .push(blocked(&format!("cannot read ({why}); not written")));
            return;
        }
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
    Valid(&'a str, LeaseFile),
    /// Bad content, or a symlink: reported, and replaceable by a write.
    Invalid(String),
    /// Not a regular file, or unreadable: a write would fail too.
    Stuck(String),
}

fn check(content: &FileContent) -> Checked<'_> {
    match content {
        FileContent::Missing => Checked::Missing,
        FileContent::Unusable(why) => Checked::Invalid(why.clone()),
        FileContent::Symlink => {
            Checked::Invalid("a symbolic link, not followed; its target is not read".to_string())
        }
        FileContent::NotAFile(what) => Checked::Stuck(format!("{what}, not a regular file")),
        FileContent::Unreadable(why) => Checked::Stuck(format!("cannot read ({why})")),
        FileContent::Text(text) => match parse(text) {
            Ok(parsed) => Checked::Valid(text, parsed),
            Err(e) => Checked::Invalid(e.to_string()),
        },
    }
}

/// Where `file` disagrees with what `spec` declares (declared families, and
/// the MTU `[lease] mtu` or the VXLAN device gives), e.g.
/// `FLANNEL_SUBNET 198.18.9.1/24, declared 198.18.1.0/24`; `None` if it agrees.
/// Undeclared families are not compared: guard mode may declare less than
/// flannel writes.
fn disagreement(spec: &LeaseSpec, vxlan_mtu: Option<u32>, file: &LeaseFile) -> Option<String> {
    let mut items = Vec::new();
    for (declared, found, key_net, key_sub) in [
        (&spec.ipv4, &file.ipv4, KEY_NETWORK, KEY_SUBNET),
        (&spec.ipv6, &file.ipv6, KEY_IPV6_NETWORK, KEY_IPV6_SUBNET),
    ] {
        let Some(want) = declared else { continue };
        let Some(got) = found else {
            items.push(format!(
                "{key_sub} missing, declared {}",
                want.subnet.trunc()
            ));
            continue;
        };
        if got.network.trunc() != want.network.trunc() {
            items.push(format!(
                "{key_net} {}, declared {}",
                got.network,
                want.network.trunc()
            ));
        }
        if got.subnet.trunc() != want.subnet.trunc() {
            items.push(format!(
                "{key_sub} {}, declared {}",
                got.subnet,
                want.subnet.trunc()
            ));
        }
    }
    let mtu = match (spec.mtu, vxlan_mtu) {
        (Some(m), _) => Some((m, "[lease] mtu")),
        (None, Some(m)) => Some((m, "the VXLAN device's")),
        (None, None) => None,
    };
    if let Some((want, from)) = mtu {
        if file.mtu != want {
            items.push(format!("{KEY_MTU} {}, {from} is {want}", file.mtu));
        }
    }
    (!items.is_empty()).then(|| items.join("; "))
}

fn plan_preserve(
    spec: &LeaseSpec,
    vxlan_mtu: Option<u32>,
    observed: &LeaseObserved,
    plan: &mut Plan,
) {
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
    let live = check(&observed.live);
    // A valid file for another subnet or MTU is flannel's mistake (or ours
    // being stale): neither taken as the last-known-good nor "in sync".
    if let Checked::Valid(_, parsed) = &live {
        if let Some(why) = disagreement(spec, vxlan_mtu, parsed) {
            plan.blocked.push(blocked(format!(
                "differs from [lease]: {why}; written by flannel (mode = \"preserve\"), left as is; backup not refreshed"
            )));
            return;
        }
    }
    match (live, check(&observed.backup)) {
        (Checked::Valid(live, _), Checked::Valid(saved, _)) if live == saved => {}
        (Checked::Valid(live, _), Checked::Valid(saved, _)) => plan.changes.push(save(
            ChangeKind::Modify,
            format!("refresh: {}", file::describe_drift(saved, live)),
            live,
        )),
        (Checked::Valid(live, _), Checked::Missing) => plan.changes.push(save(
            ChangeKind::Add,
            "missing; saved from the live file".to_string(),
            live,
        )),
        (Checked::Valid(live, _), Checked::Invalid(why)) => plan.changes.push(save(
            ChangeKind::Modify,
            format!("refresh: backup invalid ({why})"),
            live,
        )),
        (Checked::Valid(..), Checked::Stuck(why)) => plan.blocked.push(Blocked {
            object: backup_object.clone(),
            reason: format!("{why}; the live file is not saved"),
        }),
        (Checked::Missing, Checked::Valid(saved, parsed)) => {
            match disagreement(spec, vxlan_mtu, &parsed) {
                Some(why) => plan.blocked.push(blocked(format!(
                    "no lease file, and backup {} differs from [lease] ({why}); not restored",
                    backup.display()
                ))),
                None => plan.changes.push(Change {
                    kind: ChangeKind::Add,
                    object,
                    reason: format!("missing; restore from backup {}", backup.display()),
                    op: Op::Lease(LeaseOp::Write {
                        path: spec.path.clone(),
                        contents: saved.to_string(),
                    }),
                }),
            }
        }
        (Checked::Missing, Checked::Missing) => {
            plan.blocked
                .push(blocked("no lease file and no backup yet".to_string()));
        }
        (Checked::Missing, Checked::Invalid(why) | Checked::Stuck(why)) => {
            plan.blocked.push(blocked(format!(
                "no lease file, and backup {} is invalid ({why})",
                backup.display()
            )));
        }
        (Checked::Invalid(why) | Checked::Stuck(why), saved) => {
            let kept = match saved {
                Checked::Valid(..) => format!("backup {} kept", backup.display()),
                Checked::Missing | Checked::Invalid(_) | Checked::Stuck(_) => {
                    "no valid backup".to_string()
                }
            };
            plan.blocked.push(blocked(format!(
                "invalid ({why}); written by flannel (mode = \"preserve\"), left as is; {kept}"
            )));
        }
    }
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

fn read_content(path: &Path) -> Result<FileContent, LeaseError> {
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

const DIRECTORY: &str = "a directory";

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
