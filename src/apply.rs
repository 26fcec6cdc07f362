//! Operations → netlink (and the NAT / lease backends).
//!
//! Invariant: every operation is idempotent (EEXIST on add, and ENOENT /
//! ESRCH / ENODEV / EADDRNOTAVAIL or an absent device on delete count as
//! success); stages run in [`Stage`] order, the operations of one stage are
//! independent (pipelined in bulk, or concurrent within a bounded window);
//! one failure never stops the others and every failure is returned, with
//! its errno when there is one ([`Failure::errno`]: decisions are made on
//! that value, never on message text). An operation counts as applied only
//! on the kernel's word (an ACK, or a bulk barrier covering it): a lost
//! verdict is a failure. The objects on a device that could not be created
//! are not attempted: they are reported once, as waiting for it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use futures::{StreamExt, stream};
use rtnetlink::LinkUnspec;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::model::{LinkState, Observed};
use crate::netlink::bulk::{BulkError, BulkRequest};
use crate::netlink::messages::*;
use crate::netlink::nexthop::{NexthopMessage, NexthopNetlinkMessage};
use crate::netlink::{Errno, Handle, REQUEST_TIMEOUT, REQUEST_WINDOW, errno, error_text};
use crate::observe;
use crate::plan::{Change, Op, Plan, Stage, VxlanCreate};

/// One operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub object: String,
    /// What went wrong, for people.
    pub error: String,
    /// The errno behind it (the kernel's NACK, a system call's error, the
    /// one a backend tool reported), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<Errno>,
}

impl Failure {
    /// A missing privilege (EPERM/EACCES) rather than drift.
    pub fn permission_denied(&self) -> bool {
        self.errno.is_some_and(Errno::is_permission)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub applied: usize,
    pub failures: Vec<Failure>,
}

/// Why one operation did not take effect.
#[derive(Debug)]
enum OpError {
    Netlink(rtnetlink::Error),
    Bulk(BulkError),
    NoDevice(String),
    Invalid(String),
    Timeout,
    /// A backend (NAT tool, lease file, sysctl) failed, with the errno it
    /// reported if any.
    Backend {
        message: String,
        errno: Option<Errno>,
    },
    /// The kernel refused a VXLAN device (EEXIST) because another one
    /// already receives this VNI on this port (and address family).
    VniTaken {
        vni: u32,
        port: u16,
        holder: Option<String>,
    },
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Netlink(e) => f.write_str(&error_text(e)),
            OpError::Bulk(e) => write!(f, "{e}"),
            OpError::NoDevice(d) => write!(f, "device `{d}` does not exist"),
            OpError::Invalid(m) => f.write_str(m),
            OpError::Backend { message, .. } => f.write_str(message),
            OpError::Timeout => write!(
                f,
                "no reply from the kernel within {}s",
                REQUEST_TIMEOUT.as_secs()
            ),
            OpError::VniTaken { vni, port, holder } => write!(
                f,
                "VNI {vni} port {port} already used by {}",
                holder.as_deref().unwrap_or("another device")
            ),
        }
    }
}

impl From<rtnetlink::Error> for OpError {
    fn from(e: rtnetlink::Error) -> Self {
        OpError::Netlink(e)
    }
}

impl OpError {
    /// The errno behind the failure: a kernel NACK, a system call's error,
    /// ENODEV for a device found missing before asking the kernel.
    fn errno(&self) -> Option<Errno> {
        match self {
            OpError::Netlink(e) => errno(e),
            OpError::Bulk(e) => e.errno(),
            OpError::NoDevice(_) => Some(Errno::ENODEV),
            OpError::Backend { errno, .. } => *errno,
            OpError::VniTaken { .. } => Some(Errno::EEXIST),
            OpError::Invalid(_) | OpError::Timeout => None,
        }
    }

    fn nat(e: &crate::nat::NatError) -> OpError {
        OpError::Backend {
            message: e.to_string(),
            errno: nat_errno(e),
        }
    }

    fn lease(e: &crate::lease::LeaseError) -> OpError {
        use crate::lease::LeaseError as L;
        // Every lease error comes from an I/O call (NotAFile became an
        // observation, not an error).
        let errno = match e {
            L::Read { error, .. } | L::CreateDir { error, .. } | L::Write { error, .. } => {
                Errno::of_io(error)
            }
        };
        OpError::Backend {
            message: e.to_string(),
            errno,
        }
    }
}

/// The errno of a NAT backend failure. A tool that ran and failed reports
/// its errno only as the C library's text for it (`nft`: "... Operation not
/// permitted"; `iptables-restore`: "... Permission denied (you must be
/// root)"); it is recognised once, here, for the few that change what the
/// caller does.
fn nat_errno(e: &crate::nat::NatError) -> Option<Errno> {
    use crate::nat::NatError as N;
    match e {
        N::Spawn { source, .. } => Errno::of_io(source),
        N::Failed { stderr, .. } => errno_in_tool_output(stderr),
        _ => None,
    }
}

/// The errno whose `strerror` text a tool printed, among those callers act on.
fn errno_in_tool_output(text: &str) -> Option<Errno> {
    [
        Errno::EPERM,
        Errno::EACCES,
        Errno::EEXIST,
        Errno::ENOENT,
        Errno::EBUSY,
    ]
    .into_iter()
    .find(|e| {
        // strerror's text without the " (os error N)" std appends
        let text_of = e.to_string();
        let bare = text_of.split(" (os error").next().unwrap_or_default();
        !bare.is_empty() && text.contains(bare)
    })
}

/// Run `plan` against the kernel. `observed` supplies device indexes; they
/// are re-read after link deletions/creations (new devices, new indexes).
///
/// Links, NAT and the lease go one request at a time (concurrently within
/// a bounded window); every other kernel object goes through the bulk
/// socket ([`crate::netlink::bulk`]): thousands of requests in a few datagrams, the
/// kernel answering only failures.
pub async fn apply(handle: &Handle, plan: &Plan, observed: &Observed) -> ApplyReport {
    let mut links: HashMap<String, u32> = observed
        .links
        .values()
        .map(|l| (l.name.clone(), l.index))
        .collect();
    let mut stages: BTreeMap<Stage, Vec<(usize, &Change)>> = BTreeMap::new();
    for (i, c) in plan.changes.iter().enumerate() {
        stages.entry(c.op.stage()).or_default().push((i, c));
    }

    let mut report = ApplyReport::default();
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    let mut waiting = Waiting::default();
    for (stage, changes) in stages {
        let index = &links;
        let changes = waiting.hold(changes);
        let (bulk, single): (Vec<_>, Vec<_>) =
            changes.into_iter().partition(|(_, c)| is_bulk(&c.op));
        let mut results = run_bulk(handle, index, bulk).await;
        results.extend(
            stream::iter(single)
                .map(|(i, c)| async move { (i, c, run(handle, index, &c.op).await) })
                .buffer_unordered(REQUEST_WINDOW)
                .collect::<Vec<_>>()
                .await,
        );
        let mut not_created = Vec::new();
        for (i, c, result) in results {
            match result {
                Ok(()) => report.applied += 1,
                Err(e) => {
                    if let Op::CreateVxlan(v) = &c.op {
                        not_created.push((i, v.name.as_str()));
                    }
                    failures.push((
                        i,
                        Failure {
                            object: c.object.clone(),
                            error: e.to_string(),
                            errno: e.errno(),
                        },
                    ));
                }
            }
        }
        if matches!(
            stage,
            Stage::RenameLinks | Stage::DeleteLinks | Stage::CreateLinks
        ) {
            match observe::dump_links(handle).await {
                Ok(fresh) => links = fresh.into_values().map(|l| (l.name, l.index)).collect(),
                // Later operations on the new devices then fail on their own.
                Err(e) => tracing::warn!("re-reading links after {stage:?}: {e}"),
            }
        }
        // A device whose creation failed and that does not exist: what
        // would go on it waits for it (instead of failing one by one).
        for (i, name) in not_created {
            if !links.contains_key(name) {
                waiting.devices.entry(name.to_string()).or_insert((i, 0));
            }
        }
    }
    // (stable: a device's failure stays ahead of what waits for it)
    failures.extend(waiting.failures());
    failures.sort_by_key(|(i, _)| *i);
    report.failures = failures.into_iter().map(|(_, f)| f).collect();
    report
}

type Outcome<'a> = (usize, &'a Change, Result<(), OpError>);

/// Devices that could not be created in this apply, and the operations
/// held back because they need one of them.
#[derive(Debug, Default)]
struct Waiting {
    /// device → (index of its failed creation in the plan, how many
    /// operations are held back for it)
    devices: BTreeMap<String, (usize, usize)>,
    /// Nexthop objects held back (id → device): the routes through them
    /// wait too.
    nexthops: HashMap<u32, String>,
}

impl Waiting {
    /// The changes of a stage that can run; the others are counted.
    /// Deletions always run (nothing to delete on a missing device counts
    /// as done).
    fn hold<'a>(&mut self, changes: Vec<(usize, &'a Change)>) -> Vec<(usize, &'a Change)> {
        if self.devices.is_empty() {
            return changes;
        }
        let mut run = Vec::with_capacity(changes.len());
        for (i, c) in changes {
            let needs = match &c.op {
                _ if is_delete(&c.op) => None,
                // through a nexthop object held back: its device
                Op::SetRoute(r) => r
                    .nhid
                    .and_then(|id| self.nexthops.get(&id).cloned())
                    .or_else(|| r.dev.clone()),
                op => device_of(op).map(str::to_owned),
            };
            match needs.as_deref().and_then(|d| self.devices.get_mut(d)) {
                Some((_, held)) => {
                    *held += 1;
                    if let Op::SetNexthop(n) = &c.op {
                        self.nexthops.insert(n.id, n.dev.clone());
                    }
                }
                None => run.push((i, c)),
            }
        }
        run
    }

    /// One failure per device with held operations, placed right after
    /// the device's own.
    fn failures(&self) -> impl Iterator<Item = (usize, Failure)> + '_ {
        self.devices.iter().filter_map(|(dev, &(create, n))| {
            let what = if n == 1 { "object" } else { "objects" };
            (n > 0).then(|| {
                (
                    create,
                    Failure {
                        object: format!("{n} {what} on {dev}"),
                        error: format!("waiting for vxlan {dev}"),
                        errno: None,
                    },
                )
            })
        })
    }
}

/// The device an operation puts something on (or changes).
fn device_of(op: &Op) -> Option<&str> {
    match op {
        Op::SetLink { name, .. } | Op::DeleteLink { name } => Some(name),
        Op::AddAddress { dev, .. }
        | Op::DelAddress { dev, .. }
        | Op::SetNeighbor { dev, .. }
        | Op::DelNeighbor { dev, .. }
        | Op::AddFdb { dev, .. }
        | Op::DelFdb { dev, .. } => Some(dev),
        Op::SetNexthop(n) => Some(&n.dev),
        Op::SetRoute(r) | Op::DelRoute(r) => r.dev.as_deref(),
        // (An operation not listed runs, and reports its own failure.)
        _ => None,
    }
}

/// The object kinds that go through the bulk socket.
fn is_bulk(op: &Op) -> bool {
    !matches!(
        op,
        Op::CreateVxlan(_)
            | Op::DeleteLink { .. }
            | Op::SetLink { .. }
            | Op::RenameLink { .. }
            | Op::RetireLink { .. }
            | Op::MarkLink { .. }
            | Op::SetVxlan { .. }
            | Op::Nat(_)
            | Op::Lease(_)
            | Op::Cni(_)
    )
}

/// The object operations of one stage through the bulk socket, one window
/// of requests built at a time (40 000 prebuilt messages would be most of a
/// pass's peak memory).
async fn run_bulk<'a>(
    handle: &Handle,
    links: &HashMap<String, u32>,
    changes: Vec<(usize, &'a Change)>,
) -> Vec<Outcome<'a>> {
    let mut out = Vec::with_capacity(changes.len());
    let window = handle.bulk().window();
    for chunk in changes.chunks(window) {
        let mut requests = Vec::with_capacity(chunk.len());
        let mut sent = Vec::with_capacity(chunk.len());
        for &(i, c) in chunk {
            match bulk_request(links, &c.op) {
                Ok(r) => {
                    requests.push(r);
                    sent.push((i, c));
                }
                Err(e) => out.push((i, c, settle(&c.op, Err(e)))),
            }
        }
        if requests.is_empty() {
            continue;
        }
        let verdicts = handle.bulk().run(&requests).await;
        for (i, c, v) in pair_verdicts(sent, verdicts) {
            out.push((i, c, settle(&c.op, v.map_err(OpError::Bulk))));
        }
    }
    out
}

/// Each sent operation with its verdict, in order. One the bulk socket did
/// not answer for has an unknown outcome: a failure, never applied.
fn pair_verdicts(
    sent: Vec<(usize, &Change)>,
    verdicts: Vec<Result<(), BulkError>>,
) -> Vec<(usize, &Change, Result<(), BulkError>)> {
    let mut verdicts = verdicts.into_iter();
    sent.into_iter()
        .map(|(i, c)| {
            let v = verdicts.next().unwrap_or_else(|| Err(no_verdict()));
            (i, c, v)
        })
        .collect()
}

fn no_verdict() -> BulkError {
    BulkError::Lost("no verdict for this request".into())
}

/// One operation, bounded in time, with the idempotency rules applied.
async fn run(handle: &Handle, links: &HashMap<String, u32>, op: &Op) -> Result<(), OpError> {
    let result = match tokio::time::timeout(REQUEST_TIMEOUT, execute(handle, links, op)).await {
        Ok(r) => r,
        Err(_) => Err(OpError::Timeout),
    };
    settle(op, result)
}

fn settle(op: &Op, result: Result<(), OpError>) -> Result<(), OpError> {
    match result {
        Err(e) if tolerated(op, &e) => Ok(()),
        other => other,
    }
}

fn is_delete(op: &Op) -> bool {
    matches!(
        op,
        Op::DeleteLink { .. }
            | Op::RetireLink { .. }
            | Op::DelAddress { .. }
            | Op::DelNeighbor { .. }
            | Op::DelFdb { .. }
            | Op::DelRoute(_)
            | Op::DelNexthop { .. }
    )
}

/// Errors that mean the kernel already is as the operation wants it.
/// (EEXIST on a nexthop create is not one: the id was taken by someone
/// else since it was observed.)
fn tolerated(op: &Op, e: &OpError) -> bool {
    if let OpError::NoDevice(_) = e {
        // A missing device carries no addresses, neighbours, FDB entries,
        // nexthops or routes: whatever was to be deleted is gone.
        return is_delete(op);
    }
    // Only the kernel's own answer: a backend's errno (a NAT tool, the
    // lease file) says nothing about the object being in place.
    let code = match e {
        OpError::Netlink(_) | OpError::Bulk(_) => e.errno(),
        _ => None,
    };
    let Some(code) = code else {
        return false;
    };
    if is_delete(op) {
        matches!(code, Errno::ENOENT | Errno::ESRCH | Errno::ENODEV)
            || (code == Errno::EADDRNOTAVAIL && matches!(op, Op::DelAddress { .. }))
    } else {
        // (A VXLAN device's EEXIST is sorted out where it is created: the
        // name, or its VNI and port held by another device.)
        code == Errno::EEXIST
            && matches!(
                op,
                Op::AddAddress { .. }
                    | Op::SetNeighbor { .. }
                    | Op::AddFdb { .. }
                    | Op::SetRoute(_)
            )
    }
}

fn index(links: &HashMap<String, u32>, dev: &str) -> Result<u32, OpError> {
    links
        .get(dev)
        .copied()
        .ok_or_else(|| OpError::NoDevice(dev.to_string()))
}

/// Links, NAT and the lease: one request (or backend call) each.
async fn execute(handle: &Handle, links: &HashMap<String, u32>, op: &Op) -> Result<(), OpError> {
    match op {
        Op::CreateVxlan(v) => {
            let underlay = index(links, &v.underlay)?;
            match handle
                .link()
                .add(vxlan_message(v, underlay))
                .execute()
                .await
            {
                // Marked only when this request created it: an existing
                // device of that name is never claimed here (the planner
                // blocks foreign ones; adoption is its own operation).
                Ok(()) => {
                    let mark = mark_message(LinkUnspec::new_with_name(&v.name).build());
                    handle.link().change(mark).execute().await?;
                }
                Err(e) if errno(&e) == Some(Errno::EEXIST) => vxlan_exists(handle, v, e).await?,
                Err(e) => return Err(e.into()),
            }
            disable_accept_ra(&v.name)
        }
        Op::MarkLink { name } => {
            let msg = mark_message(LinkUnspec::new_with_index(index(links, name)?).build());
            Ok(handle.link().change(msg).execute().await?)
        }
        Op::RenameLink { from, to } => {
            let msg = LinkUnspec::new_with_index(index(links, from)?)
                .name(to.clone())
                .build();
            Ok(handle.link().change(msg).execute().await?)
        }
        Op::RetireLink { name } => Ok(handle.link().del(index(links, name)?).execute().await?),
        Op::SetVxlan {
            name,
            local,
            underlay,
            learning,
        } => {
            let under = underlay.as_deref().map(|u| index(links, u)).transpose()?;
            let msg = vxlan_change_message(index(links, name)?, *local, under, *learning);
            Ok(handle.link().change(msg).execute().await?)
        }
        Op::DeleteLink { name } => Ok(handle.link().del(index(links, name)?).execute().await?),
        Op::SetLink { name, mtu, mac, up } => {
            let msg = set_link_message(index(links, name)?, *mtu, *mac, *up);
            Ok(handle.link().change(msg).execute().await?)
        }
        // A NAT tool can wait on a lock for long (`-w`, a busy nft): on the
        // blocking pool, so the daemon's loop keeps serving signals and the
        // watchdog meanwhile. Pool threads are spawned from this thread and
        // share its network namespace, as in `engine::observe_all`.
        Op::Nat(n) => {
            let n = n.clone();
            tokio::task::spawn_blocking(move || crate::nat::apply(&n))
                .await
                .map_err(|e| OpError::Backend {
                    message: format!("NAT task failed: {e}"),
                    errno: None,
                })?
                .map_err(|e| OpError::nat(&e))
        }
        // One small file, synchronous and quick: on this thread.
        Op::Lease(l) => crate::lease::apply(l).map_err(|e| OpError::lease(&e)),
        Op::Cni(c) => crate::cni::apply(c).map_err(|e| OpError::lease(&e)),
        // Object kinds go in bulk (`is_bulk`); one alone still works.
        other => {
            let req = bulk_request(links, other)?;
            let verdict = handle.bulk().run(std::slice::from_ref(&req)).await;
            verdict
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(no_verdict()))
                .map_err(OpError::Bulk)
        }
    }
}

/// The kernel answered EEXIST to a VXLAN device: either the name exists
/// (created since it was observed: the next round compares it, as for any
/// existing device), or another device already receives this VNI on this
/// port, which is what the kernel means when the name is free.
async fn vxlan_exists(
    handle: &Handle,
    v: &VxlanCreate,
    e: rtnetlink::Error,
) -> Result<(), OpError> {
    match observe::dump_links(handle).await {
        Ok(links) if links.contains_key(&v.name) => Ok(()),
        Ok(links) => Err(OpError::VniTaken {
            vni: v.vni,
            port: v.port,
            holder: vni_holder(v, &links).map(str::to_owned),
        }),
        Err(dump) => {
            tracing::debug!("re-reading links after EEXIST on {}: {dump}", v.name);
            Err(e.into())
        }
    }
}

/// The device that keeps `v` from being created: a VXLAN device with the
/// same VNI and port, preferably also in the same address family with the
/// same receive flags (what the kernel compares).
fn vni_holder<'a>(v: &VxlanCreate, links: &'a BTreeMap<String, LinkState>) -> Option<&'a str> {
    let same_vni = || {
        links.values().filter(|l| {
            l.name != v.name
                && l.vxlan
                    .as_ref()
                    .is_some_and(|x| x.vni == v.vni && x.port == v.port)
        })
    };
    let same_family = |l: &&LinkState| {
        l.vxlan.as_ref().is_some_and(|x| {
            x.gbp == v.gbp
                && x.local
                    .map_or(v.local.is_ipv4(), |a| a.is_ipv6() == v.local.is_ipv6())
        })
    };
    same_vni()
        .find(same_family)
        .or_else(|| same_vni().next())
        .map(|l| l.name.as_str())
}

const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
const DEL: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// The request of an object operation, with the flags iproute2 would use
/// (`ip neigh replace`, `ip route replace`, `ip addr add`, ...).
fn bulk_request(links: &HashMap<String, u32>, op: &Op) -> Result<BulkRequest, OpError> {
    use RouteNetlinkMessage as M;
    let route = |m, flags| Ok(BulkRequest::Route(m, flags));
    match op {
        Op::AddAddress {
            dev,
            cidr,
            protocol,
        } => route(
            M::NewAddress(address_add_message(
                index(links, dev)?,
                cidr.addr(),
                cidr.prefix_len(),
                *protocol,
            )),
            ADD | NLM_F_EXCL,
        ),
        Op::DelAddress { dev, cidr } => route(
            M::DelAddress(address_message(
                index(links, dev)?,
                cidr.addr(),
                cidr.prefix_len(),
            )),
            DEL,
        ),
        Op::SetNeighbor { dev, ip, mac } => route(
            M::NewNeighbour(neighbour_set_message(index(links, dev)?, *ip, *mac)),
            ADD | NLM_F_REPLACE,
        ),
        Op::DelNeighbor { dev, ip } => route(
            M::DelNeighbour(neighbour_message(index(links, dev)?, *ip)),
            DEL,
        ),
        Op::AddFdb { dev, mac, dst } => route(
            M::NewNeighbour(fdb_message(index(links, dev)?, *mac, Some(*dst))),
            fdb_add_flags(mac),
        ),
        Op::DelFdb { dev, mac, dst } => route(
            M::DelNeighbour(fdb_message(index(links, dev)?, *mac, *dst)),
            DEL,
        ),
        Op::SetNexthop(n) => Ok(BulkRequest::Nexthop(
            NexthopNetlinkMessage::New(NexthopMessage::gateway(
                n.id,
                n.via,
                index(links, &n.dev)?,
                n.onlink,
                n.protocol,
            )),
            // Never overwrite: an id taken since it was observed fails.
            ADD | NLM_F_EXCL,
        )),
        Op::DelNexthop { id } => Ok(BulkRequest::Nexthop(
            NexthopNetlinkMessage::Del(NexthopMessage::id_only(*id)),
            DEL,
        )),
        Op::SetRoute(r) => {
            // Through a nexthop object the device is the nexthop's.
            let oif = match r.nhid {
                Some(_) => None,
                None => r.dev.as_deref().map(|d| index(links, d)).transpose()?,
            };
            let msg = route_message(r, oif).map_err(OpError::Invalid)?;
            route(M::NewRoute(msg), ADD | NLM_F_REPLACE)
        }
        Op::DelRoute(r) => {
            let oif = match r.nhid {
                Some(_) => None,
                None => r.dev.as_deref().map(|d| index(links, d)).transpose()?,
            };
            let msg = route_del_message(r, oif).map_err(OpError::Invalid)?;
            route(M::DelRoute(msg), DEL)
        }
        Op::CreateVxlan(_)
        | Op::DeleteLink { .. }
        | Op::SetLink { .. }
        | Op::RenameLink { .. }
        | Op::RetireLink { .. }
        | Op::MarkLink { .. }
        | Op::SetVxlan { .. }
        | Op::Nat(_)
        | Op::Lease(_)
        | Op::Cni(_) => Err(OpError::Invalid(
            "not an object operation for the bulk socket".into(),
        )),
    }
}

/// IPv6 router advertisements must not configure the overlay device.
/// Absent when IPv6 is disabled: nothing to do then.
fn disable_accept_ra(dev: &str) -> Result<(), OpError> {
    if dev.is_empty() || dev.contains('/') || dev == "." || dev == ".." {
        return Err(OpError::Invalid(format!("`{dev}` is not a device name")));
    }
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(dev)
        .join("accept_ra");
    match std::fs::write(&path, "0") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OpError::Backend {
            message: format!("{}: {e}", path.display()),
            errno: Errno::of_io(&e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
    use rtnetlink::packet_route::link::{
        InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    };
    use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourState};
    use rtnetlink::packet_route::route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteProtocol, RouteScope,
    };

    use crate::model::{Family, Mac};
    use crate::plan::RouteOp;
    use rtnetlink::packet_core::NLM_F_APPEND;

    fn nack(code: i32) -> OpError {
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-code);
        OpError::Netlink(rtnetlink::Error::NetlinkError(m))
    }

    fn route_op() -> RouteOp {
        RouteOp {
            table: 254,
            dst: "198.18.2.0/24".parse().unwrap(),
            via: Some("198.18.2.0".parse().unwrap()),
            dev: Some("flannel.1".into()),
            onlink: true,
            src: None,
            metric: None,
            protocol: 199,
            nhid: None,
        }
    }

    #[test]
    fn idempotency_rules() {
        let add = Op::AddFdb {
            dev: "v".into(),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            dst: "192.0.2.2".parse().unwrap(),
        };
        let del = Op::DelRoute(route_op());
        let del_addr = Op::DelAddress {
            dev: "v".into(),
            cidr: "198.18.1.0/32".parse().unwrap(),
        };
        assert!(tolerated(&add, &nack(libc::EEXIST)));
        assert!(!tolerated(&add, &nack(libc::ENOENT)));
        assert!(!tolerated(&add, &OpError::NoDevice("v".into())));
        assert!(tolerated(&del, &nack(libc::ESRCH)));
        assert!(tolerated(&del, &nack(libc::ENODEV)));
        assert!(tolerated(&del, &OpError::NoDevice("v".into())));
        assert!(!tolerated(&del, &nack(libc::EEXIST)));
        assert!(!tolerated(&del, &nack(libc::EADDRNOTAVAIL)));
        assert!(tolerated(&del_addr, &nack(libc::EADDRNOTAVAIL)));
        assert!(!tolerated(&del, &nack(libc::EPERM)));
        assert!(!tolerated(&del, &OpError::Timeout));
        let set = Op::SetLink {
            name: "v".into(),
            mtu: Some(1),
            mac: None,
            up: None,
        };
        assert!(
            !tolerated(&set, &nack(libc::EEXIST)),
            "nothing is added by a set"
        );
    }

    #[test]
    fn vxlan_create_carries_every_attribute() {
        let v = VxlanCreate {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            underlay: "eth0".into(),
            family: Family::Ipv4,
            local: "192.0.2.1".parse().unwrap(),
            mac: Some(Mac([2, 0, 0, 0, 0, 1])),
            mtu: 1450,
            learning: false,
            gbp: true,
        };
        let msg = vxlan_message(&v, 3);
        assert!(msg.header.flags.contains(LinkFlags::Up));
        assert!(
            msg.attributes
                .contains(&LinkAttribute::IfName("flannel.1".into()))
        );
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(
            msg.attributes
                .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]))
        );
        let data = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Vxlan(d)) => Some(d.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap();
        for want in [
            InfoVxlan::Id(1),
            InfoVxlan::Link(3),
            InfoVxlan::Port(8472),
            InfoVxlan::Learning(false),
            InfoVxlan::Local("192.0.2.1".parse().unwrap()),
            InfoVxlan::Gbp,
        ] {
            assert!(data.contains(&want), "{want:?} missing from {data:?}");
        }
        let v6 = VxlanCreate {
            local: "2001:db8::1".parse().unwrap(),
            gbp: false,
            ..v
        };
        let msg = vxlan_message(&v6, 3);
        let text = format!("{msg:?}");
        assert!(
            text.contains("Local6(2001:db8::1)") && !text.contains("Gbp"),
            "{text}"
        );
    }

    #[test]
    fn set_link_sets_only_given_fields() {
        let msg = set_link_message(4, None, None, Some(false));
        assert!(msg.attributes.is_empty());
        assert!(
            msg.header.change_mask.contains(LinkFlags::Up)
                && !msg.header.flags.contains(LinkFlags::Up)
        );
        let msg = set_link_message(4, Some(1400), None, None);
        assert_eq!(msg.attributes, vec![LinkAttribute::Mtu(1400)]);
        assert!(msg.header.change_mask.is_empty());
    }

    #[test]
    fn route_messages() {
        let msg = route_message(&route_op(), Some(7)).unwrap();
        assert_eq!(msg.header.table, 254);
        assert_eq!(u8::from(msg.header.protocol), 199);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
        assert!(msg.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                    "198.18.2.0".parse().unwrap()
                )))
        );
        let direct = RouteOp {
            via: None,
            onlink: false,
            table: 1000,
            metric: Some(20),
            src: Some("198.18.1.0".parse().unwrap()),
            ..route_op()
        };
        let msg = route_message(&direct, Some(7)).unwrap();
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(msg.attributes.contains(&RouteAttribute::Priority(20)));
        assert!(
            msg.attributes
                .contains(&RouteAttribute::PrefSource(RouteAddress::Inet(
                    "198.18.1.0".parse().unwrap()
                )))
        );
        let del = route_del_message(&direct, Some(7)).unwrap();
        assert_eq!(del.header.protocol, RouteProtocol::Unspec);
        assert_eq!(del.header.scope, RouteScope::NoWhere);
        assert!(
            !del.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::PrefSource(_)))
        );
        let bad = RouteOp {
            via: Some("2001:db8::1".parse().unwrap()),
            dst: "fd00::/64".parse().unwrap(),
            src: Some("198.18.1.0".parse().unwrap()),
            ..route_op()
        };
        assert!(
            route_message(&bad, None).is_err(),
            "IPv4 src on an IPv6 route"
        );
    }

    #[test]
    fn fdb_flags_append_only_for_flood_entries() {
        assert_eq!(fdb_add_flags(&Mac::ZERO) & NLM_F_APPEND, NLM_F_APPEND);
        let unicast = fdb_add_flags(&Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            unicast & (NLM_F_REPLACE | NLM_F_CREATE),
            NLM_F_REPLACE | NLM_F_CREATE
        );
        let msg = fdb_message(3, Mac([2, 0, 0, 0, 0, 1]), None);
        assert_eq!(msg.attributes.len(), 1);
        assert!(msg.header.flags.contains(NeighbourFlags::Own));
    }

    fn bulk_nack(code: i32) -> OpError {
        OpError::Bulk(BulkError::Nack(Errno::new(code)))
    }

    #[test]
    fn nexthop_idempotency_never_hides_a_taken_id() {
        let create = Op::SetNexthop(crate::plan::NexthopOp {
            id: 199_000_001,
            via: "198.18.2.0".parse().unwrap(),
            dev: "v".into(),
            onlink: true,
            protocol: 199,
        });
        let delete = Op::DelNexthop { id: 199_000_001 };
        assert!(
            !tolerated(&create, &bulk_nack(libc::EEXIST)),
            "someone else's id: a failure, the next round re-plans"
        );
        assert!(tolerated(&delete, &bulk_nack(libc::ENOENT)));
        assert!(tolerated(&delete, &OpError::NoDevice("v".into())));
        assert!(!tolerated(
            &delete,
            &OpError::Bulk(BulkError::Lost("x".into()))
        ));
        assert!(tolerated(
            &Op::SetRoute(route_op()),
            &bulk_nack(libc::EEXIST)
        ));
    }

    fn links() -> HashMap<String, u32> {
        [("v".to_string(), 7)].into_iter().collect()
    }

    fn flags_of(r: &BulkRequest) -> u16 {
        match r {
            BulkRequest::Route(_, f) | BulkRequest::Nexthop(_, f) => *f,
        }
    }

    #[test]
    fn bulk_requests_use_iproute2_semantics() {
        let l = links();
        let nh = bulk_request(
            &l,
            &Op::SetNexthop(crate::plan::NexthopOp {
                id: 5,
                via: "198.18.2.0".parse().unwrap(),
                dev: "v".into(),
                onlink: true,
                protocol: 199,
            }),
        )
        .unwrap();
        assert_eq!(
            flags_of(&nh) & (NLM_F_CREATE | NLM_F_EXCL),
            NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(
            flags_of(&nh) & NLM_F_REPLACE,
            0,
            "never overwrite a nexthop"
        );
        let BulkRequest::Nexthop(NexthopNetlinkMessage::New(m), _) = nh else {
            panic!("{nh:?}")
        };
        assert_eq!((m.id(), m.oif(), m.onlink()), (Some(5), Some(7), true));

        let neigh = bulk_request(
            &l,
            &Op::SetNeighbor {
                dev: "v".into(),
                ip: "198.18.2.0".parse().unwrap(),
                mac: Mac([2, 0, 0, 0, 0, 9]),
            },
        )
        .unwrap();
        assert_eq!(flags_of(&neigh) & NLM_F_REPLACE, NLM_F_REPLACE);
        let BulkRequest::Route(RouteNetlinkMessage::NewNeighbour(n), _) = neigh else {
            panic!("{neigh:?}")
        };
        assert_eq!(n.header.state, NeighbourState::Permanent);
        assert!(
            n.attributes
                .contains(&NeighbourAttribute::LinkLayerAddress(vec![
                    2, 0, 0, 0, 0, 9
                ]))
        );

        let missing = bulk_request(
            &l,
            &Op::DelFdb {
                dev: "gone".into(),
                mac: Mac([2, 0, 0, 0, 0, 9]),
                dst: None,
            },
        );
        assert!(matches!(missing, Err(OpError::NoDevice(_))));
        assert!(bulk_request(&l, &Op::DeleteLink { name: "v".into() }).is_err());
    }

    #[test]
    fn ipv6_addresses_skip_dad_and_ipv4_ones_carry_a_broadcast() {
        let v6 = address_add_message(3, "fd00::1".parse().unwrap(), 128, 0);
        assert!(v6.header.flags.contains(AddressHeaderFlags::Nodad));
        let v4 = address_add_message(3, "198.18.1.1".parse().unwrap(), 24, 0);
        assert!(!v4.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            v4.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Broadcast(_)))
        );
    }

    #[test]
    fn routes_through_a_nexthop_carry_only_its_id() {
        let r = RouteOp {
            nhid: Some(199_000_001),
            ..route_op()
        };
        for msg in [
            route_message(&r, None).unwrap(),
            route_del_message(&r, None).unwrap(),
        ] {
            assert!(msg.attributes.contains(&RouteAttribute::NhId(199_000_001)));
            assert!(
                !msg.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_))),
                "the kernel refuses a gateway next to nhid: {msg:?}"
            );
            assert!(!msg.header.flags.contains(RouteFlags::Onlink));
        }
        let add = route_message(&r, None).unwrap();
        assert_eq!(add.header.scope, RouteScope::Universe);
        assert_eq!(u8::from(add.header.protocol), 199);
    }

    fn change(object: &str, op: Op) -> Change {
        Change {
            kind: crate::plan::ChangeKind::Add,
            object: object.into(),
            reason: "test".into(),
            op,
        }
    }

    fn address(dev: &str) -> Op {
        Op::AddAddress {
            dev: dev.into(),
            cidr: "198.18.1.0/32".parse().unwrap(),
            protocol: crate::model::ROUTE_PROTOCOL,
        }
    }

    #[test]
    fn a_missing_bulk_verdict_is_a_failure_never_applied() {
        let changes: Vec<Change> = (0..3).map(|_| change("a", address("v"))).collect();
        let sent: Vec<(usize, &Change)> = changes.iter().enumerate().collect();
        // one verdict for three requests
        let paired = pair_verdicts(sent.clone(), vec![Ok(())]);
        assert_eq!(paired.len(), 3, "every request is accounted for");
        assert!(paired[0].2.is_ok());
        for (i, _, v) in &paired[1..] {
            assert!(
                matches!(v, Err(BulkError::Lost(_))),
                "request {i} had no verdict: {v:?}"
            );
        }
        assert!(
            pair_verdicts(sent, vec![])
                .iter()
                .all(|(_, _, v)| v.is_err()),
            "no verdicts at all: nothing applied"
        );
        // and a lost outcome is never taken for "already there"
        assert!(!tolerated(&address("v"), &OpError::Bulk(no_verdict())));
    }

    fn nexthop(id: u32, dev: &str) -> Op {
        Op::SetNexthop(crate::plan::NexthopOp {
            id,
            via: "198.18.2.0".parse().unwrap(),
            dev: dev.into(),
            onlink: true,
            protocol: 199,
        })
    }

    #[test]
    fn what_needs_a_device_that_was_not_created_waits_for_it_once() {
        let through_nexthop = RouteOp {
            nhid: Some(7),
            dev: None,
            via: None,
            ..route_op()
        };
        let changes = [
            change("address", address("flannel.1")),
            change("address elsewhere", address("eth0")),
            change("nexthop", nexthop(7, "flannel.1")),
            change("route via nexthop", Op::SetRoute(through_nexthop)),
            change("route", Op::SetRoute(route_op())),
            change("stale route", Op::DelRoute(route_op())),
            change("nexthop elsewhere", nexthop(8, "eth0")),
        ];
        let mut w = Waiting::default();
        let all: Vec<(usize, &Change)> = changes.iter().enumerate().collect();
        assert_eq!(w.hold(all.clone()).len(), all.len(), "nothing waits yet");
        w.devices.insert("flannel.1".into(), (42, 0));
        // stage by stage, like apply (nexthops before the routes)
        let mut run: Vec<&str> = Vec::new();
        for stage in [&all[..2], &all[2..3], &all[6..], &all[3..6]] {
            run.extend(
                w.hold(stage.to_vec())
                    .iter()
                    .map(|(_, c)| c.object.as_str()),
            );
        }
        assert_eq!(
            run,
            ["address elsewhere", "nexthop elsewhere", "stale route"],
            "deletions and other devices go ahead"
        );
        let failures: Vec<(usize, Failure)> = w.failures().collect();
        assert_eq!(
            failures,
            [(
                42,
                Failure {
                    object: "4 objects on flannel.1".into(),
                    error: "waiting for vxlan flannel.1".into(),
                    errno: None,
                }
            )]
        );
        // a device nothing waited for reports nothing
        w.devices.insert("other".into(), (43, 0));
        assert_eq!(w.failures().count(), 1);
    }

    fn vxlan_link(name: &str, vni: u32, port: u16, local: &str, gbp: bool) -> LinkState {
        let mut info = vec![InfoVxlan::Id(vni), InfoVxlan::Port(port)];
        match local.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => info.push(InfoVxlan::Local(a)),
            IpAddr::V6(a) => info.push(InfoVxlan::Local6(a)),
        }
        if gbp {
            info.push(InfoVxlan::Gbp);
        }
        let mut msg = LinkMessage::default();
        msg.header.index = vni + 100;
        msg.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(rtnetlink::packet_route::link::InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(info)),
            ]),
        ];
        LinkState::try_from(&msg).unwrap()
    }

    #[test]
    fn the_holder_of_a_vni_is_the_device_the_kernel_compares_with() {
        let v = VxlanCreate {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            underlay: "eth0".into(),
            family: crate::model::Family::Ipv4,
            local: "192.0.2.1".parse().unwrap(),
            mac: None,
            mtu: 1450,
            learning: false,
            gbp: false,
        };
        let links = |ls: Vec<LinkState>| -> BTreeMap<String, LinkState> {
            ls.into_iter().map(|l| (l.name.clone(), l)).collect()
        };
        let all = links(vec![
            vxlan_link("a-v6", 1, 8472, "2001:db8::1", false),
            vxlan_link("b-other-port", 1, 4789, "192.0.2.1", false),
            vxlan_link("c-gbp", 1, 8472, "192.0.2.1", true),
            vxlan_link("d-holder", 1, 8472, "192.0.2.9", false),
        ]);
        assert_eq!(vni_holder(&v, &all), Some("d-holder"));
        let loose = links(vec![vxlan_link("a-v6", 1, 8472, "2001:db8::1", false)]);
        assert_eq!(vni_holder(&v, &loose), Some("a-v6"), "the best guess");
        let none = links(vec![
            vxlan_link("b-other-port", 1, 4789, "192.0.2.1", false),
            vxlan_link("flannel.1", 1, 8472, "192.0.2.1", false),
        ]);
        assert_eq!(vni_holder(&v, &none), None);
        let e = OpError::VniTaken {
            vni: 1,
            port: 8472,
            holder: Some("vx-foreign".into()),
        };
        assert_eq!(e.to_string(), "VNI 1 port 8472 already used by vx-foreign");
        assert_eq!(e.errno(), Some(Errno::EEXIST));
        assert!(
            !tolerated(&Op::CreateVxlan(v), &e),
            "a conflict, not a device in place"
        );
    }

    #[test]
    fn errnos_come_from_values_and_tools_reports() {
        use crate::nat::NatError;
        let failed = |stderr: &str| NatError::Failed {
            command: "nft -j -f -".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        let nft = failed("netlink: Error: cache initialization failed: Operation not permitted");
        assert_eq!(nat_errno(&nft), Some(Errno::EPERM));
        let ipt = failed(
            "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: \
             Permission denied (you must be root)",
        );
        assert_eq!(nat_errno(&ipt), Some(Errno::EACCES));
        assert_eq!(
            nat_errno(&failed("Error: syntax error, unexpected junk")),
            None
        );
        let spawn = NatError::Spawn {
            tool: "nft".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(nat_errno(&spawn), Some(Errno::EACCES));
        let lease = crate::lease::LeaseError::Write {
            path: "/run/flannel/subnet.env".into(),
            error: std::io::Error::from_raw_os_error(libc::EROFS),
        };
        let e = OpError::lease(&lease);
        assert_eq!(e.errno(), Some(Errno::new(libc::EROFS)));
        assert!(e.to_string().contains("Read-only file system"), "{e}");
        // a backend's EEXIST is not the kernel saying the object is there
        let backend = OpError::Backend {
            message: "x".into(),
            errno: Some(Errno::EEXIST),
        };
        assert!(!tolerated(&address("v"), &backend));

        // permission is decided on the value, not the words
        let f = |errno| Failure {
            object: "route".into(),
            error: "Operation not permitted (os error 1)".into(),
            errno,
        };
        assert!(f(Some(Errno::EPERM)).permission_denied());
        assert!(f(Some(Errno::EACCES)).permission_denied());
        assert!(!f(None).permission_denied());
        assert!(!f(Some(Errno::EEXIST)).permission_denied());
    }
}
