//! Operations → netlink (and the NAT / lease backends).
//!
//! Invariant: every operation is idempotent (EEXIST on add, and ENOENT /
//! ESRCH / ENODEV / EADDRNOTAVAIL or an absent device on delete count as
//! success); stages run in [`Stage`] order, the operations of one stage are
//! independent (pipelined in bulk, or concurrent within a bounded window);
//! one failure never stops the others and every failure is returned.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::{StreamExt, stream};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::bulk::{BulkError, BulkRequest};
use crate::model::{Mac, Observed};
use crate::netlink::{Handle, REQUEST_TIMEOUT, REQUEST_WINDOW, errno, error_text};
use crate::nexthop::{NexthopMessage, NexthopNetlinkMessage};
use crate::observe;
use crate::plan::{Change, Op, Plan, RouteOp, Stage, VxlanCreate};

/// One operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub object: String,
    pub error: String,
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
    Other(String),
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Netlink(e) => f.write_str(&error_text(e)),
            OpError::Bulk(e) => write!(f, "{e}"),
            OpError::NoDevice(d) => write!(f, "device `{d}` does not exist"),
            OpError::Invalid(m) | OpError::Other(m) => f.write_str(m),
            OpError::Timeout => write!(
                f,
                "no reply from the kernel within {}s",
                REQUEST_TIMEOUT.as_secs()
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
    /// The errno of a kernel NACK (positive).
    fn errno(&self) -> Option<i32> {
        match self {
            OpError::Netlink(e) => errno(e),
            OpError::Bulk(BulkError::Nack(code)) => Some(*code),
            _ => None,
        }
    }
}

/// Run `plan` against the kernel. `observed` supplies device indexes; they
/// are re-read after link deletions/creations (new devices, new indexes).
///
/// Links, NAT and the lease go one request at a time (concurrently within
/// a bounded window); every other kernel object goes through the bulk
/// socket ([`crate::bulk`]): thousands of requests in a few datagrams, the
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
    for (stage, changes) in stages {
        let index = &links;
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
        for (i, c, result) in results {
            match result {
                Ok(()) => report.applied += 1,
                Err(e) => failures.push((
                    i,
                    Failure {
                        object: c.object.clone(),
                        error: e.to_string(),
                    },
                )),
            }
        }
        if matches!(stage, Stage::DeleteLinks | Stage::CreateLinks) {
            match observe::dump_links(handle).await {
                Ok(fresh) => links = fresh.into_values().map(|l| (l.name, l.index)).collect(),
                // Later operations on the new devices then fail on their own.
                Err(e) => tracing::warn!("re-reading links after {stage:?}: {e}"),
            }
        }
    }
    failures.sort_by_key(|(i, _)| *i);
    report.failures = failures.into_iter().map(|(_, f)| f).collect();
    report
}

type Outcome<'a> = (usize, &'a Change, Result<(), OpError>);

/// The object kinds that go through the bulk socket.
fn is_bulk(op: &Op) -> bool {
    !matches!(
        op,
        Op::CreateVxlan(_) | Op::DeleteLink { .. } | Op::SetLink { .. } | Op::Nat(_) | Op::Lease(_)
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
        for ((i, c), v) in sent.into_iter().zip(verdicts) {
            out.push((i, c, settle(&c.op, v.map_err(OpError::Bulk))));
        }
    }
    out
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
    let Some(code) = e.errno() else {
        return false;
    };
    if is_delete(op) {
        matches!(code, libc::ENOENT | libc::ESRCH | libc::ENODEV)
            || (code == libc::EADDRNOTAVAIL && matches!(op, Op::DelAddress { .. }))
    } else {
        code == libc::EEXIST
            && matches!(
                op,
                Op::CreateVxlan(_)
                    | Op::AddAddress { .. }
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
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            disable_accept_ra(&v.name)
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
                .map_err(|e| OpError::Other(format!("NAT task failed: {e}")))?
                .map_err(|e| OpError::Other(e.to_string()))
        }
        // One small file, synchronous and quick: on this thread.
        Op::Lease(l) => crate::lease::apply(l).map_err(|e| OpError::Other(e.to_string())),
        // Object kinds go in bulk (`is_bulk`); one alone still works.
        other => {
            let req = bulk_request(links, other)?;
            let verdict = handle.bulk().run(std::slice::from_ref(&req)).await;
            verdict
                .into_iter()
                .next()
                .unwrap_or(Ok(()))
                .map_err(OpError::Bulk)
        }
    }
}

const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
const DEL: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// The request of an object operation, with the flags iproute2 would use
/// (`ip neigh replace`, `ip route replace`, `ip addr add`, ...).
fn bulk_request(links: &HashMap<String, u32>, op: &Op) -> Result<BulkRequest, OpError> {
    use RouteNetlinkMessage as M;
    let route = |m, flags| Ok(BulkRequest::Route(m, flags));
    match op {
        Op::AddAddress { dev, cidr } => route(
            M::NewAddress(address_add_message(
                index(links, dev)?,
                cidr.addr(),
                cidr.prefix_len(),
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
        | Op::Nat(_)
        | Op::Lease(_) => Err(OpError::Invalid(
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
        Err(e) => Err(OpError::Other(format!("{}: {e}", path.display()))),
    }
}

// ------------------------------------------------------- message builders --

/// `ip link add NAME [address MAC] mtu MTU up type vxlan id VNI dev UNDERLAY
/// local LOCAL dstport PORT [no]learning [gbp]`.
pub(crate) fn vxlan_message(v: &VxlanCreate, underlay: u32) -> LinkMessage {
    let mut b = LinkVxlan::new(&v.name, v.vni)
        .dev(underlay)
        .port(v.port)
        .learning(v.learning);
    b = match v.local {
        IpAddr::V4(a) => b.local(a),
        IpAddr::V6(a) => b.local6(a),
    };
    if v.gbp {
        b = b.gbp();
    }
    if let Some(mac) = v.mac {
        b = b.address(mac.0.to_vec());
    }
    b.mtu(v.mtu).up().build()
}

/// `ip link set` of only the given fields.
pub(crate) fn set_link_message(
    index: u32,
    mtu: Option<u32>,
    mac: Option<Mac>,
    up: Option<bool>,
) -> LinkMessage {
    let mut b = LinkUnspec::new_with_index(index);
    if let Some(mtu) = mtu {
        b = b.mtu(mtu);
    }
    if let Some(mac) = mac {
        b = b.address(mac.0.to_vec());
    }
    b = match up {
        Some(true) => b.up(),
        Some(false) => b.down(),
        None => b,
    };
    b.build()
}

/// `ip addr add CIDR dev INDEX` (IFA_LOCAL, IFA_ADDRESS, IFA_BROADCAST for
/// IPv4, like iproute2); IPv6 without duplicate address detection: a
/// node-unique /128 on the overlay, which DAD would only delay (and routes
/// using it as `src`).
pub(crate) fn address_add_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    match ip {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, prefix_len)
            .build(),
        IpAddr::V6(a) => {
            let mut m = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, prefix_len)
                .build();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m
        }
    }
}

/// A permanent ARP/NDP entry (`ip neigh replace IP lladdr MAC dev INDEX
/// nud permanent`).
pub(crate) fn neighbour_set_message(index: u32, ip: IpAddr, mac: Mac) -> NeighbourMessage {
    let mut msg = neighbour_message(index, ip);
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg
}

/// An address with IFA_LOCAL and IFA_ADDRESS both set (what `ip addr`
/// sends), for deletion.
pub(crate) fn address_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(ip);
    msg.header.index = index;
    msg.header.prefix_len = prefix_len;
    msg.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
    msg
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// An ARP/NDP entry key, for deletion.
pub(crate) fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(ip);
    msg.header.ifindex = index;
    msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::from(ip))];
    msg
}

/// A permanent `self` FDB entry of a VXLAN device (`bridge fdb ... dev D
/// self permanent dst DST`).
pub(crate) fn fdb_message(index: u32, mac: Mac, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes = vec![NeighbourAttribute::LinkLayerAddress(mac.0.to_vec())];
    if let Some(dst) = dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    }
    msg
}

/// Flags of an FDB add. The kernel keeps one destination per unicast MAC
/// and ignores APPEND for it (an existing entry would silently keep its old
/// destination), so unicast entries are replaced; all-zero and multicast
/// MACs (flood lists) get destinations appended, like `bridge fdb append`.
pub(crate) fn fdb_add_flags(mac: &Mac) -> u16 {
    let mode = if mac.is_zero() || mac.is_multicast() {
        NLM_F_APPEND
    } else {
        NLM_F_REPLACE
    };
    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | mode
}

fn invalid(e: impl fmt::Display) -> String {
    e.to_string()
}

/// `ip route replace DST [via VIA] [dev DEV] [onlink] [src SRC] [metric M]
/// table T proto P` (scope link for a direct IPv4 route, like iproute2), or
/// with `nhid N` in place of via/dev/onlink for a route through a nexthop
/// object.
pub(crate) fn route_message(r: &RouteOp, oif: Option<u32>) -> Result<RouteMessage, String> {
    let dst = r.dst.trunc();
    let scope = if r.via.is_none() && r.nhid.is_none() && r.dst.addr().is_ipv4() {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(invalid)?
        .table_id(r.table)
        .protocol(RouteProtocol::from(r.protocol))
        .scope(scope)
        .kind(RouteType::Unicast);
    if r.nhid.is_none() {
        if let Some(via) = r.via {
            b = b.gateway(via).map_err(invalid)?;
        }
        if let Some(oif) = oif {
            b = b.output_interface(oif);
        }
        if r.onlink {
            b = b.onlink();
        }
    }
    if let Some(src) = r.src {
        b = b.pref_source(src).map_err(invalid)?;
    }
    if let Some(metric) = r.metric {
        b = b.priority(metric);
    }
    let mut msg = b.build();
    if let Some(id) = r.nhid {
        msg.attributes.push(RouteAttribute::NhId(id));
    }
    Ok(msg)
}

/// `ip route del DST table T [via VIA] [dev DEV] [metric M]` (or `nhid N`:
/// the kernel matches an IPv4 route through a nexthop object only by its
/// id): protocol, scope and type are wildcards, like iproute2's delete.
pub(crate) fn route_del_message(r: &RouteOp, oif: Option<u32>) -> Result<RouteMessage, String> {
    let dst = r.dst.trunc();
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(invalid)?
        .table_id(r.table)
        .protocol(RouteProtocol::Unspec)
        .scope(RouteScope::NoWhere)
        .kind(RouteType::Unspec);
    if r.nhid.is_none() {
        if let Some(via) = r.via {
            b = b.gateway(via).map_err(invalid)?;
        }
        if let Some(oif) = oif {
            b = b.output_interface(oif);
        }
    }
    if let Some(metric) = r.metric {
        b = b.priority(metric);
    }
    let mut msg = b.build();
    if let Some(id) = r.nhid {
        msg.attributes.push(RouteAttribute::NhId(id));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo};
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags};

    use crate::model::Family;

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
        OpError::Bulk(BulkError::Nack(code))
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
        let v6 = address_add_message(3, "fd00::1".parse().unwrap(), 128);
        assert!(v6.header.flags.contains(AddressHeaderFlags::Nodad));
        let v4 = address_add_message(3, "198.18.1.1".parse().unwrap(), 24);
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
}
