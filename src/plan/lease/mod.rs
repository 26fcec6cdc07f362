//! Lease planning: rendering and parsing subnet.env ([`file`]) and the
//! changes that make the file (and, in guard mode, its backup) match.
//!
//! Invariant: pure; [`crate::lease`] reads the files for observe and writes
//! them for apply.

pub mod file;

use std::path::Path;

use file::{
    KEY_IPV6_NETWORK, KEY_IPV6_SUBNET, KEY_MTU, KEY_NETWORK, KEY_SUBNET, LeaseFile, parse, render,
};

use crate::model::lease::{DIRECTORY, FileContent, LeaseObserved, LeaseOp, backup_path};
use crate::model::{LeaseMode, LeaseSpec};
use crate::plan::kind::ObjectKind;
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

/// IPv6's minimum link MTU (RFC 8200): pods given less have no IPv6.
const IPV6_MIN_MTU: u32 = 1280;

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
    let blocked =
        |reason: &str| Blocked::new(ObjectKind::Lease, object.clone(), reason.to_string());
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
    let blocked = |reason: String| Blocked::new(ObjectKind::Lease, object.clone(), reason);
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
        (Checked::Valid(..), Checked::Stuck(why)) => plan.blocked.push(Blocked::new(
            ObjectKind::Lease,
            backup_object.clone(),
            format!("{why}; the live file is not saved"),
        )),
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
