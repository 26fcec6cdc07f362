//! Planning of kernel objects: VXLAN devices, addresses, neighbours, FDB
//! entries, nexthop objects and routes.
//!
//! Invariant: removals and replacements are only ever planned for objects
//! netconverge owns — devices carrying its mark (ifalias, see
//! [`crate::model::DEVICE_MARK`]) and on them global addresses, permanent
//! neighbours and FDB entries; routes and nexthop objects carrying one of
//! its route protocols (the current one or one from its record). A foreign
//! object holding a declared place is a conflict (blocked), unless the file
//! says `adopt = true` for it. Every lookup is through an index built once,
//! so a plan is O(n log n).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::kind::{KindCounts, ObjectKind};
use super::{Blocked, Change, ChangeKind, NexthopOp, Op, Plan, RouteOp, Stage, VxlanCreate};
use crate::model::{
    AddressState, Desired, Family, FdbState, LinkState, MAIN_TABLE, Mac, NeighborState,
    NexthopMode, NexthopState, Observed, RTPROT_KERNEL, RTPROT_RA, RouteSpec, RouteState,
    VxlanSpec, effective_metric,
};

/// The name iproute2 gives a route protocol (`/etc/iproute2/rt_protos`),
/// for conflict messages.
fn proto_name(p: u8) -> String {
    let name = match p {
        0 => "unspec",
        1 => "redirect",
        RTPROT_KERNEL => "kernel",
        3 => "boot",
        4 => "static",
        8 => "gated",
        RTPROT_RA => "ra",
        10 => "mrt",
        11 => "zebra",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        17 => "mrouted",
        18 => "keepalived",
        42 => "babel",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        192 => "eigrp",
        _ => return p.to_string(),
    };
    name.to_string()
}

/// A VXLAN device netconverge created: its mark, or (devices created before
/// marks existed) the MAC it derives for that name when none is configured.
fn ours(l: &LinkState, desired: &Desired) -> bool {
    l.marked() || legacy_ours(l, desired)
}

fn legacy_ours(l: &LinkState, desired: &Desired) -> bool {
    l.kind == "vxlan"
        && desired.vxlan(&l.name).is_some_and(|v| {
            v.mac.is_none()
                && desired.mac_seed.is_some()
                && l.mac.is_some()
                && desired.vxlan_mac(v) == l.mac
        })
}

/// Route protocols whose routes and nexthops are netconverge's.
fn owned_protocols(desired: &Desired, observed: &Observed) -> BTreeSet<u8> {
    let mut p = observed.past_protocols.clone();
    p.insert(desired.engine.route_protocol);
    p
}

/// Whether `l` holds the identity the kernel gives a VXLAN device: (VNI,
/// port, receive flags such as GBP, family). It refuses a second device
/// with the same one ("A VXLAN device with the specified VNI already
/// exists", EEXIST).
fn holds_vni(l: &LinkState, vni: u32, port: u16, gbp: bool, family: Family) -> bool {
    l.kind == "vxlan"
        && l.vxlan.as_ref().is_some_and(|a| {
            a.vni == vni
                && a.port == port
                && a.gbp == gbp
                && a.local.map(|x| Family::of(&x)) == Some(family)
        })
}

/// A marked VXLAN device no declaration names that can become `v` by a
/// rename: same VNI and port (the kernel refuses a second device with
/// them, and a rename keeps every route through it).
fn renames<'o>(desired: &Desired, observed: &'o Observed) -> Vec<(&'o str, String)> {
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for v in &desired.vxlans {
        if observed.links.contains_key(&v.name) {
            continue;
        }
        let found = observed.links.values().find(|l| {
            l.kind == "vxlan"
                && l.marked()
                && desired.vxlan(&l.name).is_none()
                && !used.contains(l.name.as_str())
                && l.vxlan.as_ref().is_some_and(|a| {
                    a.vni == v.vni
                        && a.port == v.port
                        && a.local.map(|x| Family::of(&x)) == Some(v.family)
                })
        });
        if let Some(l) = found {
            used.insert(l.name.as_str());
            out.push((l.name.as_str(), v.name.clone()));
        }
    }
    out
}

/// `observed` as it will be after the renames: every object on a renamed
/// device under its new name.
fn renamed(observed: &Observed, renames: &[(&str, String)]) -> Observed {
    let map: BTreeMap<&str, &str> = renames.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let fix = |d: &mut String| {
        if let Some(n) = map.get(d.as_str()) {
            *d = (*n).to_string();
        }
    };
    let mut o = observed.clone();
    o.links = std::mem::take(&mut o.links)
        .into_values()
        .map(|mut l| {
            fix(&mut l.name);
            (l.name.clone(), l)
        })
        .collect();
    o.addresses.iter_mut().for_each(|a| fix(&mut a.dev));
    o.routes.iter_mut().for_each(|r| {
        if let Some(d) = r.dev.as_mut() {
            fix(d);
        }
    });
    o.nexthops.iter_mut().for_each(|n| {
        if let Some(d) = n.dev.as_mut() {
            fix(d);
        }
    });
    o.neighbors.iter_mut().for_each(|n| fix(&mut n.dev));
    o.fdb.iter_mut().for_each(|f| fix(&mut f.dev));
    o
}

/// Minimum MTU of an IPv4 link.
const MIN_MTU: u32 = 68;
/// Minimum MTU of an IPv6 link (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;

/// Whether any declared address, route or neighbour on `dev` is IPv6
/// (peers are already expanded into routes and neighbours).
fn carries_ipv6(desired: &Desired, dev: &str) -> bool {
    let v6 = Family::Ipv6;
    desired
        .addresses
        .iter()
        .any(|a| a.dev == dev && Family::of_net(&a.cidr) == v6)
        || desired
            .routes
            .iter()
            .any(|r| r.dev.as_deref() == Some(dev) && Family::of_net(&r.dst) == v6)
        || desired
            .neighbors
            .iter()
            .any(|n| n.dev == dev && Family::of(&n.ip) == v6)
}

pub(super) struct KernelPlan {
    pub plan: Plan,
    /// MTU each VXLAN device has (or will have) once converged; absent when blocked.
    pub mtus: BTreeMap<String, u32>,
}

impl KernelPlan {
    /// MTU for the lease file: the VXLAN device of the lease's first family
    /// (IPv4 first), as converged.
    pub fn lease_mtu(&self, desired: &Desired) -> Option<u32> {
        let lease = desired.lease.as_ref()?;
        let family = if lease.ipv4.is_some() {
            Family::Ipv4
        } else {
            Family::Ipv6
        };
        let dev = desired.pod_device(family)?;
        self.mtus.get(&dev.name).copied()
    }
}

/// State of a declared device during planning.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DevState {
    /// Exists and is kept: diff its contents against the kernel.
    Present,
    /// Will be created (or recreated): everything on it is added.
    Fresh,
    /// Cannot be converged now.
    Blocked,
}

/// When a device the file no longer declares (see [`Planner::retire`]) is
/// deleted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retirement {
    /// Last (stage RetireLinks): its routes have moved to the devices that
    /// replace it.
    Last,
    /// First (stage DeleteLinks): it stands in the way of this plan — it
    /// holds the identity of a device being created (the create would fail,
    /// EEXIST) or a foreign route through it holds a declared route's place
    /// (the place is freed only by deleting our device, never by touching
    /// the foreign route).
    First,
}

/// How an existing VXLAN device's attributes differ from its declaration.
struct VxlanDiff {
    /// Changes the kernel refuses in place: the device is recreated.
    immutable: Vec<String>,
    /// Changes made in place by `op`.
    in_place: Vec<String>,
    op: Op,
}

/// An observed object on a device that [`Planner::sweep`] may remove.
trait Swept {
    /// A kind of object netconverge creates: global addresses, permanent
    /// neighbours and FDB entries (the kernel's own dynamic ones are not).
    fn of_managed_kind(&self) -> bool;
    fn dev(&self) -> &str;
    /// The protocol mark the kernel keeps on the object, if the kind has
    /// one (`IFA_PROTO` on addresses): ours marks it ours on any device.
    fn protocol(&self) -> Option<u8> {
        None
    }
    fn object(&self) -> String;
    fn delete(&self) -> Op;
}

impl Swept for AddressState {
    fn of_managed_kind(&self) -> bool {
        self.global
    }
    fn dev(&self) -> &str {
        &self.dev
    }
    fn protocol(&self) -> Option<u8> {
        Some(self.protocol)
    }
    fn object(&self) -> String {
        format!("address {} dev {}", self.cidr, self.dev)
    }
    fn delete(&self) -> Op {
        Op::DelAddress {
            dev: self.dev.clone(),
            cidr: self.cidr,
        }
    }
}

impl Swept for NeighborState {
    fn of_managed_kind(&self) -> bool {
        self.permanent
    }
    fn dev(&self) -> &str {
        &self.dev
    }
    fn object(&self) -> String {
        format!(
            "neighbor {} dev {} lladdr {}",
            self.ip,
            self.dev,
            opt(self.mac)
        )
    }
    fn delete(&self) -> Op {
        Op::DelNeighbor {
            dev: self.dev.clone(),
            ip: self.ip,
        }
    }
}

impl Swept for FdbState {
    fn of_managed_kind(&self) -> bool {
        self.permanent
    }
    fn dev(&self) -> &str {
        &self.dev
    }
    fn object(&self) -> String {
        format!("fdb {} dev {} dst {}", self.mac, self.dev, opt(self.dst))
    }
    fn delete(&self) -> Op {
        Op::DelFdb {
            dev: self.dev.clone(),
            mac: self.mac,
            dst: self.dst,
        }
    }
}

/// FxHash (the `rustc-hash` crate): the planner's keys come from the local
/// config and the kernel, not from an adversary, so SipHash's flooding
/// resistance buys nothing, while its cost dominated lookups at 10 000 peers.
/// Only ever looked up, never iterated: the plan's order does not depend on it.
type HashMap<K, V> = rustc_hash::FxHashMap<K, V>;
type HashSet<K> = rustc_hash::FxHashSet<K>;

fn set_with_capacity<K>(n: usize) -> HashSet<K> {
    HashSet::with_capacity_and_hasher(n, rustc_hash::FxBuildHasher)
}

/// How routes with a gateway and a device are installed in this plan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteStyle {
    /// `ip route ... via GW dev DEV`.
    Classic,
    /// Through a shared nexthop object: `ip route ... nhid N`.
    Nexthops,
    /// Nexthop objects are required but the kernel has none.
    Unavailable,
}

/// What makes two routes share one nexthop object.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct NhKey<'a> {
    dev: &'a str,
    via: IpAddr,
    onlink: bool,
}

impl<'a> NhKey<'a> {
    /// Routes with both a gateway and a device go through nexthop objects
    /// (the kernel requires a device for a gateway nexthop).
    fn of_spec(r: &'a RouteSpec) -> Option<NhKey<'a>> {
        Some(NhKey {
            dev: r.dev.as_deref()?,
            via: r.via?,
            onlink: r.onlink,
        })
    }

    fn of_state(n: &'a NexthopState) -> Option<NhKey<'a>> {
        Some(NhKey {
            dev: n.dev.as_deref()?,
            via: n.via?,
            onlink: n.onlink,
        })
    }
}

/// Ids netconverge allocates for its nexthop objects: a block of a million
/// per route protocol (199000001–199999999 for protocol 199), so ids are
/// recognizable, and ids taken by anyone are skipped.
pub const NEXTHOP_IDS_PER_PROTOCOL: u32 = 1_000_000;

fn nexthop_id_range(protocol: u8) -> (u32, u32) {
    let base = u32::from(protocol) * NEXTHOP_IDS_PER_PROTOCOL;
    (base + 1, base + NEXTHOP_IDS_PER_PROTOCOL - 1)
}

/// Object texts are formatted tens of thousands of times from empty:
/// one allocation each, sized for a typical line, instead of regrowing.
fn text(args: std::fmt::Arguments<'_>) -> String {
    let mut s = String::with_capacity(80);
    let _ = s.write_fmt(args);
    s
}

fn missing(origin: &str) -> String {
    let mut s = String::with_capacity(origin.len() + 10);
    s.push_str("missing (");
    s.push_str(origin);
    s.push(')');
    s
}

fn describe_nexthop(id: u32, via: Option<IpAddr>, dev: Option<&str>, onlink: bool) -> String {
    let mut s = text(format_args!("nexthop {id}"));
    if let Some(v) = via {
        let _ = write!(s, " via {v}");
    }
    if let Some(d) = dev {
        let _ = write!(s, " dev {d}");
    }
    if onlink {
        s.push_str(" onlink");
    }
    s
}

type RouteKey = (u32, IpNet, u32);

fn route_key_spec(r: &RouteSpec) -> RouteKey {
    (r.table, r.dst, effective_metric(&r.dst, r.metric))
}

fn route_key_state(r: &RouteState) -> RouteKey {
    (r.table, r.dst, effective_metric(&r.dst, r.metric))
}

fn describe_route(
    dst: &IpNet,
    via: Option<IpAddr>,
    dev: Option<&str>,
    onlink: bool,
    table: u32,
    metric: Option<u32>,
) -> String {
    let mut s = text(format_args!("route {dst}"));
    if let Some(v) = via {
        let _ = write!(s, " via {v}");
    }
    if let Some(d) = dev {
        let _ = write!(s, " dev {d}");
    }
    if onlink {
        s.push_str(" onlink");
    }
    if table != MAIN_TABLE {
        let _ = write!(s, " table {table}");
    }
    if let Some(m) = metric {
        let _ = write!(s, " metric {m}");
    }
    s
}

fn describe_route_state(r: &RouteState) -> String {
    let mut s = describe_route(&r.dst, r.via, r.dev.as_deref(), r.onlink, r.table, r.metric);
    if let Some(id) = r.nhid {
        let _ = write!(s, " nhid {id}");
    }
    s
}

fn route_op_from_spec(r: &RouteSpec, protocol: u8) -> RouteOp {
    RouteOp {
        table: r.table,
        dst: r.dst,
        via: r.via,
        dev: r.dev.clone(),
        onlink: r.onlink,
        src: r.src,
        metric: r.metric,
        protocol,
        nhid: None,
    }
}

fn table_name(t: u32) -> String {
    match t {
        MAIN_TABLE => "main".to_string(),
        253 => "default".to_string(),
        t => t.to_string(),
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

struct Planner<'a> {
    desired: &'a Desired,
    observed: &'a Observed,
    changes: Vec<Change>,
    blocked: Vec<Blocked>,
    devs: BTreeMap<&'a str, DevState>,
    mtus: BTreeMap<String, u32>,
    /// Dependents skipped per blocked device, for one summary line each.
    /// (Keyed by the noun, so the summary lists them alphabetically.)
    skipped: BTreeMap<&'a str, BTreeMap<&'static str, (ObjectKind, usize)>>,
    style: RouteStyle,
    /// The nexthop id of every (device, gateway, onlink) the desired routes use.
    nh_ids: HashMap<NhKey<'a>, u32>,
    /// Owned nexthop ids that stay (in use, or under a route left alone).
    nh_keep: HashSet<u32>,
    /// Route protocols whose routes and nexthops are ours.
    protocols: BTreeSet<u8>,
    /// Declared routes whose place a foreign route holds (blocked).
    conflicts: HashSet<RouteKey>,
    /// Local VTEP address of every declared device that is not blocked.
    locals: BTreeMap<&'a str, IpAddr>,
    /// Peers whose `vtep_ip` is this node's own (dev, subnet): blocked.
    self_peers: BTreeSet<(&'a str, IpNet)>,
    /// Devices of ours the file no longer declares, and when they go.
    retired: BTreeMap<&'a str, Retirement>,
}

impl<'a> Planner<'a> {
    fn change(&mut self, kind: ChangeKind, object: String, reason: String, op: Op) {
        self.changes.push(Change {
            kind,
            object,
            reason,
            op,
        });
    }

    /// State of a device some object lives on. Devices that are not declared
    /// VXLANs (underlays, other existing links) are present if the kernel has them.
    fn dev_state(&self, dev: &str) -> DevState {
        match self.devs.get(dev) {
            Some(s) => *s,
            None if self.observed.links.contains_key(dev) => DevState::Present,
            None => DevState::Blocked,
        }
    }

    /// Record a dependent object that cannot be planned because its device is
    /// blocked or absent. Returns `true` if the object must be skipped.
    fn skip_if_blocked(&mut self, dev: &'a str, kind: ObjectKind) -> bool {
        if self.dev_state(dev) != DevState::Blocked {
            return false;
        }
        self.skipped
            .entry(dev)
            .or_default()
            .entry(kind.noun())
            .or_insert((kind, 0))
            .1 += 1;
        true
    }

    fn vxlans(&mut self) {
        let desired = self.desired;
        // Devices the file adopts with another identity first: once their
        // recreate is planned (deleted before any create), the others'
        // holder checks know they hold nothing (`recreates_adopted`).
        let (first, rest): (Vec<&'a VxlanSpec>, Vec<&'a VxlanSpec>) =
            desired.vxlans.iter().partition(|v| {
                self.observed
                    .links
                    .get(&v.name)
                    .is_some_and(|l| self.adopts_with_new_identity(l))
            });
        for v in first.into_iter().chain(rest) {
            let state = self.vxlan(v);
            self.devs.insert(v.name.as_str(), state);
        }
    }

    /// Devices netconverge created that the file no longer declares (and
    /// that no rename reuses): deleted last, with everything on them, once
    /// what replaces them is in place — or first (stage DeleteLinks) when
    /// one stands in the way of this plan (see [`Retirement::First`]).
    /// Runs after [`Self::vxlans`] (it needs the planned creates) and
    /// before [`Self::route_conflicts`].
    fn retire(&mut self) {
        let observed = self.observed;
        for l in observed.links.values() {
            if l.kind == "vxlan" && l.marked() && self.desired.vxlan(&l.name).is_none() {
                self.retired.insert(l.name.as_str(), Retirement::Last);
            }
        }
        if self.retired.is_empty() {
            return;
        }
        let mut first = self.retired_in_the_way();
        for (name, when) in &mut self.retired {
            if first.contains_key(name) {
                *when = Retirement::First;
            }
        }
        let names: Vec<&str> = self.retired.keys().copied().collect();
        for name in names {
            let (reason, op) = match first.remove(name) {
                None => (
                    "not declared (created by netconverge); deleted once what replaces it is in place"
                        .to_string(),
                    Op::RetireLink {
                        name: name.to_string(),
                    },
                ),
                Some(why) => (
                    format!("not declared (created by netconverge); deleted first: {why}"),
                    Op::DeleteLink {
                        name: name.to_string(),
                    },
                ),
            };
            self.change(ChangeKind::Remove, format!("vxlan {name}"), reason, op);
        }
    }

    /// The retired devices that must go before the rest of the plan: one
    /// that holds the (VNI, port, GBP, family) of a device this plan
    /// creates, or one that carries a foreign route at a declared route's
    /// place (not adopted).
    /// Each with why, for the plan's reason.
    fn retired_in_the_way(&self) -> BTreeMap<&'a str, String> {
        let observed = self.observed;
        let creates: Vec<&VxlanCreate> = self
            .changes
            .iter()
            .filter_map(|c| match &c.op {
                Op::CreateVxlan(v) => Some(v),
                _ => None,
            })
            .collect();
        let mut first: BTreeMap<&'a str, String> = BTreeMap::new();
        for name in self.retired.keys() {
            let Some(l) = observed.links.get(*name) else {
                continue;
            };
            if let Some(v) = creates
                .iter()
                .find(|v| holds_vni(l, v.vni, v.port, v.gbp, v.family))
            {
                first.insert(
                    name,
                    format!(
                        "it holds vni {} port {}, which vxlan {} is created with (the kernel refuses a second device with them)",
                        v.vni, v.port, v.name
                    ),
                );
            }
        }
        let holders: HashMap<RouteKey, &'a RouteState> = observed
            .routes
            .iter()
            .filter(|r| {
                !self.protocols.contains(&r.protocol)
                    && r.dev
                        .as_deref()
                        .is_some_and(|d| self.retired.contains_key(d))
            })
            .map(|r| (route_key_state(r), r))
            .collect();
        if holders.is_empty() {
            return first;
        }
        for r in &self.desired.routes {
            let Some(h) = holders.get(&route_key_spec(r)) else {
                continue;
            };
            let Some(d) = h.dev.as_deref().filter(|_| !self.adopts(r, h)) else {
                continue;
            };
            if let Some((name, _)) = self.retired.get_key_value(d) {
                first.entry(name).or_insert_with(|| {
                    format!(
                        "{} proto {} (not created by netconverge) holds the place of {} ({}); it goes only with this device, never on its own",
                        describe_route_state(h),
                        proto_name(h.protocol),
                        describe_route(&r.dst, r.via, r.dev.as_deref(), r.onlink, r.table, r.metric),
                        r.origin
                    )
                });
            }
        }
        first
    }

    /// Whether `dev` is a retired device deleted before the rest of the
    /// plan: everything on it is gone by then.
    fn retired_first(&self, dev: Option<&str>) -> bool {
        dev.is_some_and(|d| self.retired.get(d) == Some(&Retirement::First))
    }

    /// Plan one declared VXLAN device: blocked if it has no place (underlay,
    /// local address, MTU) or a foreign device holds it; else created, or
    /// adopted/marked and changed (recreated only for attributes the kernel
    /// cannot change in place).
    fn vxlan(&mut self, v: &'a VxlanSpec) -> DevState {
        let object = format!("vxlan {}", v.name);
        let Some((under, local, mtu)) = self.vxlan_place(v, &object) else {
            return DevState::Blocked;
        };
        let mac = self.desired.vxlan_mac(v);
        let create = VxlanCreate {
            name: v.name.clone(),
            vni: v.vni,
            port: v.port,
            underlay: v.underlay.clone(),
            family: v.family,
            local,
            mac,
            mtu,
            learning: v.learning,
            gbp: v.gbp,
        };
        let Some(cur) = self.observed.links.get(&v.name) else {
            return self.vxlan_missing(v, object, create);
        };
        let Some(attrs) = self.vxlan_claim(v, &object, cur) else {
            return DevState::Blocked;
        };
        let diff = self.vxlan_diff(v, attrs, under, local);
        if !diff.immutable.is_empty() {
            let why = diff.immutable.join(", ");
            // Checked before deleting ours: the create would fail and the
            // overlay lose a working device for nothing.
            let extra = format!("; vxlan {} is left as it is ({why})", v.name);
            if self.foreign_holder(v, &object, &extra) {
                return DevState::Blocked;
            }
        }
        self.mtus.insert(v.name.clone(), mtu);
        self.locals.insert(v.name.as_str(), local);
        if !diff.immutable.is_empty() {
            let why = diff.immutable.join(", ");
            self.change(
                ChangeKind::Remove,
                object.clone(),
                format!("{why}: immutable, recreating"),
                Op::DeleteLink {
                    name: v.name.clone(),
                },
            );
            self.change(
                ChangeKind::Add,
                object,
                format!("recreate ({why})"),
                Op::CreateVxlan(create),
            );
            return DevState::Fresh;
        }
        if !diff.in_place.is_empty() {
            self.change(
                ChangeKind::Modify,
                object,
                format!("{} (in place)", diff.in_place.join(", ")),
                diff.op,
            );
        }
        self.mutable(v, cur, mtu, mac);
        DevState::Present
    }

    fn block(&mut self, kind: ObjectKind, object: &str, reason: String) {
        self.blocked.push(Blocked::new(kind, object, reason));
    }

    /// Where the device goes: its underlay, local VTEP address and MTU —
    /// or `None` (reported as blocked) when the host offers no place yet.
    fn vxlan_place(&mut self, v: &VxlanSpec, object: &str) -> Option<(&'a LinkState, IpAddr, u32)> {
        let observed = self.observed;
        let Some(under) = observed.links.get(&v.underlay) else {
            self.block(
                ObjectKind::Device,
                object,
                format!("underlay {} absent", v.underlay),
            );
            return None;
        };
        let Some(local) = v.local.or_else(|| self.derived_local(v)) else {
            self.block(
                ObjectKind::Device,
                object,
                format!(
                    "underlay {} has no global {} address{}",
                    v.underlay,
                    v.family,
                    if v.family == Family::Ipv6 {
                        " (IPv4-only host?)"
                    } else {
                        ""
                    }
                ),
            );
            return None;
        };
        let mtu = match v.mtu {
            Some(m) => m,
            None => self.derived_mtu(v, under, object)?,
        };
        Some((under, local, mtu))
    }

    /// The local address of a device declared without one: its underlay's
    /// first global address of its family that stays — not one this plan
    /// removes as stale (the device would get a local address the host no
    /// longer has).
    fn derived_local(&self, v: &VxlanSpec) -> Option<IpAddr> {
        self.observed
            .addresses
            .iter()
            .find(|a| {
                a.dev == v.underlay
                    && a.global
                    && Family::of_net(&a.cidr) == v.family
                    && !self.removes_address(a)
            })
            .map(|a| a.cidr.addr())
    }

    /// Whether [`Self::addresses`] removes `a` as stale (the same rule as
    /// its sweep: undeclared and ours).
    fn removes_address(&self, a: &AddressState) -> bool {
        self.stale_reason(a).is_some()
            && !self
                .desired
                .addresses
                .iter()
                .any(|d| d.dev == a.dev && d.cidr == a.cidr)
    }

    /// The MTU of a device declared without one: the underlay's minus the
    /// VXLAN overhead, unless that leaves too little (blocked).
    fn derived_mtu(&mut self, v: &VxlanSpec, under: &LinkState, object: &str) -> Option<u32> {
        let m = under.mtu.saturating_sub(v.family.vxlan_overhead());
        if m < MIN_MTU {
            self.block(
                ObjectKind::Device,
                object,
                format!(
                    "underlay {} MTU {} leaves no room for VXLAN overhead",
                    v.underlay, under.mtu
                ),
            );
            return None;
        }
        // Validation refuses a declared MTU below IPv6's minimum;
        // a derived one is only known here. The kernel would refuse
        // (or drop) every IPv6 object on the device, every pass.
        // Scanned only in this rare case.
        if m < IPV6_MIN_MTU && carries_ipv6(self.desired, &v.name) {
            self.block(
                ObjectKind::Device,
                object,
                format!(
                    "underlay {} MTU {} leaves {m} after VXLAN overhead, below IPv6's minimum {IPV6_MIN_MTU}, and IPv6 is declared on it; raise the underlay MTU to at least {}",
                    v.underlay,
                    under.mtu,
                    IPV6_MIN_MTU + v.family.vxlan_overhead()
                ),
            );
            return None;
        }
        Some(m)
    }

    /// Whether a VXLAN device netconverge does not own holds `v`'s identity
    /// (see [`holds_vni`]): the create would fail, so `v` is blocked with
    /// the holder named (never removed). `extra` ends the reason.
    fn foreign_holder(&mut self, v: &VxlanSpec, object: &str, extra: &str) -> bool {
        let holder = self.observed.links.values().find(|l| {
            l.name != v.name
                && !ours(l, self.desired)
                && holds_vni(l, v.vni, v.port, v.gbp, v.family)
                && !self.recreates_adopted(l)
        });
        let Some(h) = holder else {
            return false;
        };
        self.block(
            ObjectKind::Device,
            object,
            format!(
                "vxlan {} (not created by netconverge) already uses vni {} port {}{}: netconverge never removes a device it does not own — delete it, or name it here with adopt = true to take it over{extra}",
                h.name,
                v.vni,
                v.port,
                if v.gbp { " gbp" } else { "" }
            ),
        );
        true
    }

    /// Whether `l` is a device the file takes over (`adopt = true`) with
    /// another identity (VNI, port, GBP, family) than it has now.
    fn adopts_with_new_identity(&self, l: &LinkState) -> bool {
        !ours(l, self.desired)
            && self.desired.adopt.vxlans.contains(&l.name)
            && self
                .desired
                .vxlan(&l.name)
                .is_some_and(|s| !holds_vni(l, s.vni, s.port, s.gbp, s.family))
    }

    /// Whether this plan already deletes `l` to recreate it (planned first,
    /// see [`Self::vxlans`]; stage DeleteLinks runs before any create), so
    /// it holds no identity by the time other devices are created.
    fn recreates_adopted(&self, l: &LinkState) -> bool {
        self.adopts_with_new_identity(l)
            && self
                .changes
                .iter()
                .any(|c| matches!(&c.op, Op::DeleteLink { name } if *name == l.name))
    }

    /// A declared device the kernel does not have: created, unless a
    /// foreign device holds its VNI and port (the kernel refuses a second
    /// device with them; the holder is a conflict, never removed).
    fn vxlan_missing(&mut self, v: &'a VxlanSpec, object: String, create: VxlanCreate) -> DevState {
        if self.foreign_holder(v, &object, "") {
            return DevState::Blocked;
        }
        let (local, mtu) = (create.local, create.mtu);
        self.mtus.insert(v.name.clone(), mtu);
        self.locals.insert(v.name.as_str(), local);
        let mut reason = format!(
            "missing (vni {}, port {}, underlay {}, local {local}",
            v.vni, v.port, v.underlay
        );
        if let Some(m) = create.mac {
            let _ = write!(reason, ", mac {m}");
        }
        let _ = write!(reason, ", mtu {mtu})");
        self.change(ChangeKind::Add, object, reason, Op::CreateVxlan(create));
        DevState::Fresh
    }

    /// An existing device under the declared name: its VXLAN attributes if
    /// it is ours (or adopted, then marked), else `None` (blocked: a
    /// non-VXLAN device, or a foreign VXLAN the file does not adopt).
    fn vxlan_claim(
        &mut self,
        v: &VxlanSpec,
        object: &str,
        cur: &'a LinkState,
    ) -> Option<&'a crate::model::VxlanAttrs> {
        let Some(attrs) = cur.vxlan.as_ref().filter(|_| cur.kind == "vxlan") else {
            self.block(
                ObjectKind::Device,
                object,
                format!(
                    "a {} device named {} exists; netconverge never removes devices it does not own — rename or delete it",
                    if cur.kind.is_empty() { "non-VXLAN" } else { cur.kind.as_str() },
                    v.name
                ),
            );
            return None;
        };
        let adopting = !ours(cur, self.desired);
        if adopting && !self.desired.adopt.vxlans.contains(&v.name) {
            self.block(
                ObjectKind::Device,
                object,
                format!(
                    "a vxlan device {} (vni {}, port {}) exists that netconverge did not create (no `{}` ifalias): it is left as it is, with everything on it — delete it, or set adopt = true on this [[vxlan]] to take it over",
                    v.name,
                    attrs.vni,
                    attrs.port,
                    crate::model::DEVICE_MARK
                ),
            );
            return None;
        }
        if !cur.marked() {
            let reason = if adopting {
                format!(
                    "adopt (not created by netconverge; vni {}, port {}, local {})",
                    attrs.vni,
                    attrs.port,
                    opt(attrs.local)
                )
            } else {
                "mark as netconverge's (created by a version without device marks)".to_string()
            };
            self.change(
                ChangeKind::Modify,
                object.to_string(),
                reason,
                Op::MarkLink {
                    name: v.name.clone(),
                },
            );
        }
        Some(attrs)
    }

    /// How the device's VXLAN attributes differ from the declaration.
    /// Attributes the kernel refuses to change in place (vni, port, gbp,
    /// the family of local);
    /// local, underlay and learning it changes in place (Linux 6.18
    /// verified), so the device, its ifindex and every route stay.
    fn vxlan_diff(
        &self,
        v: &VxlanSpec,
        attrs: &crate::model::VxlanAttrs,
        under: &LinkState,
        local: IpAddr,
    ) -> VxlanDiff {
        let mut immutable = Vec::new();
        let mut in_place = Vec::new();
        if attrs.vni != v.vni {
            immutable.push(format!("vni {} → {}", attrs.vni, v.vni));
        }
        if attrs.port != v.port {
            immutable.push(format!("port {} → {}", attrs.port, v.port));
        }
        // The kernel refuses a local of the other family in place ("New
        // local address family does not match old", EINVAL): recreate.
        let family = attrs.local.map(|x| Family::of(&x));
        if family.is_some_and(|f| f != v.family) {
            immutable.push(format!("family {} → {}", opt(family), v.family));
        }
        let set_local = (attrs.local != Some(local)).then(|| {
            in_place.push(format!("local {} → {local}", opt(attrs.local)));
            local
        });
        if attrs.underlay_index != Some(under.index) {
            let was = attrs
                .underlay_index
                .and_then(|i| self.observed.link_by_index(i))
                .map_or_else(
                    || opt(attrs.underlay_index.map(|i| format!("ifindex {i}"))),
                    |l| format!("{} (ifindex {})", l.name, l.index),
                );
            in_place.push(format!(
                "underlay {was} → {} (ifindex {})",
                v.underlay, under.index
            ));
        }
        let set_underlay = (attrs.underlay_index != Some(under.index)).then(|| v.underlay.clone());
        if attrs.gbp != v.gbp {
            immutable.push(format!("gbp {} → {}", on_off(attrs.gbp), on_off(v.gbp)));
        }
        let set_learning = (attrs.learning != v.learning).then(|| {
            in_place.push(format!(
                "learning {} → {}",
                on_off(attrs.learning),
                on_off(v.learning)
            ));
            v.learning
        });
        VxlanDiff {
            immutable,
            in_place,
            op: Op::SetVxlan {
                name: v.name.clone(),
                local: set_local,
                underlay: set_underlay,
                learning: set_learning,
            },
        }
    }

    fn mutable(&mut self, v: &VxlanSpec, cur: &LinkState, mtu: u32, mac: Option<Mac>) {
        let mut reasons = Vec::new();
        let set_mtu = (cur.mtu != mtu).then(|| {
            reasons.push(format!("mtu {} → {mtu}", cur.mtu));
            mtu
        });
        let set_mac = mac.filter(|m| cur.mac != Some(*m)).inspect(|m| {
            reasons.push(format!("mac {} → {m}", opt(cur.mac)));
        });
        let set_up = (!cur.up).then(|| {
            reasons.push("down → up".to_string());
            true
        });
        if !reasons.is_empty() {
            self.change(
                ChangeKind::Modify,
                format!("vxlan {}", v.name),
                reasons.join(", "),
                Op::SetLink {
                    name: v.name.clone(),
                    mtu: set_mtu,
                    mac: set_mac,
                    up: set_up,
                },
            );
        }
    }

    /// Peers whose `vtep_ip` is this node's own local VTEP address (a
    /// derived `local` makes this possible after validation): their FDB
    /// entry would send the overlay's traffic back to this node.
    fn self_peers(&mut self) {
        let desired = self.desired;
        for p in &desired.peers {
            let Some(local) = self.locals.get(p.dev.as_str()) else {
                continue;
            };
            if *local != p.vtep_ip {
                continue;
            }
            self.self_peers.insert((p.dev.as_str(), p.subnet));
            let underlay = desired.vxlan(&p.dev).map_or("?", |v| v.underlay.as_str());
            // Counted as its route: the object that carries traffic.
            self.blocked.push(Blocked::new(
                ObjectKind::Route,
                format!("peer {} dev {}", p.subnet, p.dev),
                format!(
                    "vtep_ip {} is this node's own underlay address (local of {} on {underlay}): remove this [[peer]] (a node is not its own peer) or fix its vtep_ip",
                    p.vtep_ip, p.dev
                ),
            ));
        }
    }

    fn is_self_peer_route(&self, r: &RouteSpec) -> bool {
        !self.self_peers.is_empty()
            && r.via == Some(r.dst.network())
            && r.dev
                .as_deref()
                .is_some_and(|d| self.self_peers.contains(&(d, r.dst)))
    }

    fn is_self_peer_object(
        &self,
        dev: &str,
        pred: impl Fn(&crate::model::PeerSpec) -> bool,
    ) -> bool {
        !self.self_peers.is_empty()
            && self
                .desired
                .peers
                .iter()
                .any(|p| p.dev == dev && self.self_peers.contains(&(dev, p.subnet)) && pred(p))
    }

    /// Declared routes whose (table, dst, metric) a route netconverge did
    /// not create holds: blocked with the holder described, never replaced
    /// — unless adopted. Runs before everything that plans routes, and
    /// whatever state the route's device is in (even absent): the conflict
    /// is there either way.
    fn route_conflicts(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        if observed.routes.is_empty() {
            return;
        }
        let foreign: HashMap<RouteKey, &RouteState> = observed
            .routes
            .iter()
            .filter(|r| !self.protocols.contains(&r.protocol))
            .filter(|r| {
                // Routes on a device being recreated, or retired first,
                // vanish with it.
                !r.dev
                    .as_deref()
                    .is_some_and(|d| self.devs.get(d) == Some(&DevState::Fresh))
                    && !self.retired_first(r.dev.as_deref())
            })
            .map(|r| (route_key_state(r), r))
            .collect();
        if foreign.is_empty() {
            return;
        }
        for r in &desired.routes {
            let key = route_key_spec(r);
            let Some(holder) = foreign.get(&key) else {
                continue;
            };
            if self.adopts(r, holder) {
                continue;
            }
            self.conflicts.insert(key);
            let what_to_do = if r.origin.starts_with("peer ") {
                "set adopt = true on this [[peer]] (or on its [[vxlan]] for a route through that device) to take it over"
            } else {
                "set adopt = true on this [[route]] to take it over"
            };
            self.blocked.push(Blocked::new(
                ObjectKind::Route,
                describe_route(&r.dst, r.via, r.dev.as_deref(), r.onlink, r.table, r.metric),
                format!(
                    "conflict ({}): the place is held by {} proto {} table {}, not created by netconverge; it is never replaced or removed — delete it (ip route del {}{}), or {what_to_do}",
                    r.origin,
                    describe_route_state(holder),
                    proto_name(holder.protocol),
                    table_name(holder.table),
                    holder.dst,
                    if holder.table == MAIN_TABLE {
                        String::new()
                    } else {
                        format!(" table {}", holder.table)
                    },
                ),
            ));
        }
    }

    /// The file allows taking over the foreign route `holder` at `r`'s
    /// place: the route itself is adopted, or the device both go through
    /// (an adopted device brings its own routes, not other devices').
    fn adopts(&self, r: &RouteSpec, holder: &RouteState) -> bool {
        let adopt = &self.desired.adopt;
        adopt.routes.contains(&(r.table, r.dst, r.metric))
            || r.dev
                .as_deref()
                .is_some_and(|d| adopt.vxlans.contains(d) && holder.dev.as_deref() == Some(d))
    }

    fn is_owned(&self, dev: &str) -> bool {
        self.devs.get(dev) == Some(&DevState::Present)
    }

    fn addresses(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        let have: BTreeSet<(&str, IpNet)> = self
            .observed
            .addresses
            .iter()
            .map(|a| (a.dev.as_str(), a.cidr))
            .collect();
        let mut want: BTreeSet<(&str, IpNet)> = BTreeSet::new();
        for a in &desired.addresses {
            want.insert((a.dev.as_str(), a.cidr));
            if self.skip_if_blocked(&a.dev, ObjectKind::Address) {
                continue;
            }
            let fresh = self.dev_state(&a.dev) == DevState::Fresh;
            if fresh || !have.contains(&(a.dev.as_str(), a.cidr)) {
                self.change(
                    ChangeKind::Add,
                    format!("address {} dev {}", a.cidr, a.dev),
                    missing(&a.origin),
                    Op::AddAddress {
                        dev: a.dev.clone(),
                        cidr: a.cidr,
                        protocol: desired.engine.route_protocol,
                    },
                );
            }
        }
        let kept = self.addresses_foreign_routes_need(&want);
        for a in &kept {
            self.block(
                ObjectKind::Address,
                &a.object(),
                format!("not declared, but {}", kept_for_foreign_routes(&a.dev)),
            );
        }
        self.sweep(&observed.addresses, |a| {
            want.contains(&(a.dev.as_str(), a.cidr)) || kept.iter().any(|k| std::ptr::eq(*k, a))
        });
    }

    /// Stale addresses of ours that foreign routes need (see
    /// [`addresses_foreign_routes_need`]), on devices we do not own.
    fn addresses_foreign_routes_need(
        &self,
        want: &BTreeSet<(&str, IpNet)>,
    ) -> Vec<&'a AddressState> {
        let stale = |a: &AddressState| {
            a.of_managed_kind()
                && !self.is_owned(&a.dev)
                && !want.contains(&(a.dev.as_str(), a.cidr))
                && self.stale_reason(a).is_some()
        };
        addresses_foreign_routes_need(self.observed, &self.protocols, stale)
    }

    fn neighbors(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        let have: HashMap<(&str, IpAddr), &crate::model::NeighborState> = observed
            .neighbors
            .iter()
            .map(|n| ((n.dev.as_str(), n.ip), n))
            .collect();
        let mut want: HashSet<(&str, IpAddr)> = set_with_capacity(desired.neighbors.len());
        for n in &desired.neighbors {
            if self.is_self_peer_object(&n.dev, |p| {
                p.subnet.network() == n.ip && p.vtep_mac == n.mac
            }) {
                continue;
            }
            want.insert((n.dev.as_str(), n.ip));
            if self.skip_if_blocked(&n.dev, ObjectKind::Neighbor) {
                continue;
            }
            let cur = match self.dev_state(&n.dev) {
                DevState::Fresh => None,
                _ => have.get(&(n.dev.as_str(), n.ip)),
            };
            let (kind, reason) = match cur {
                None => (ChangeKind::Add, missing(&n.origin)),
                Some(c) if c.mac != Some(n.mac) => (
                    ChangeKind::Modify,
                    format!("lladdr {} → {}", opt(c.mac), n.mac),
                ),
                Some(c) if !c.permanent => (ChangeKind::Modify, "not permanent".to_string()),
                Some(_) => continue,
            };
            self.change(
                kind,
                text(format_args!(
                    "neighbor {} dev {} lladdr {}",
                    n.ip, n.dev, n.mac
                )),
                reason,
                Op::SetNeighbor {
                    dev: n.dev.clone(),
                    ip: n.ip,
                    mac: n.mac,
                },
            );
        }
        self.sweep(&observed.neighbors, |n| {
            want.contains(&(n.dev.as_str(), n.ip))
        });
    }

    fn fdb(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        let have: HashSet<(&str, Mac, Option<IpAddr>)> = observed
            .fdb
            .iter()
            .map(|f| (f.dev.as_str(), f.mac, f.dst))
            .collect();
        let mut want: HashSet<(&str, Mac, Option<IpAddr>)> = set_with_capacity(desired.fdb.len());
        for f in &desired.fdb {
            if self.is_self_peer_object(&f.dev, |p| p.vtep_ip == f.dst && p.vtep_mac == f.mac) {
                continue;
            }
            want.insert((f.dev.as_str(), f.mac, Some(f.dst)));
            if self.skip_if_blocked(&f.dev, ObjectKind::Fdb) {
                continue;
            }
            let fresh = self.dev_state(&f.dev) == DevState::Fresh;
            if fresh || !have.contains(&(f.dev.as_str(), f.mac, Some(f.dst))) {
                self.change(
                    ChangeKind::Add,
                    text(format_args!("fdb {} dev {} dst {}", f.mac, f.dev, f.dst)),
                    missing(&f.origin),
                    Op::AddFdb {
                        dev: f.dev.clone(),
                        mac: f.mac,
                        dst: f.dst,
                    },
                );
            }
        }
        self.sweep(&observed.fdb, |f| {
            want.contains(&(f.dev.as_str(), f.mac, f.dst))
        });
    }

    /// The one sweep for stale objects on devices (addresses, neighbours,
    /// FDB entries): every observed object of a kind netconverge creates
    /// that is not `declared` and that is ours — on a device we own, or (an
    /// address) marked with one of our protocols elsewhere — is removed.
    /// One rule for all three, so ownership cannot drift between them.
    fn sweep<T: Swept>(&mut self, observed: &[T], declared: impl Fn(&T) -> bool) {
        let mut stale = Vec::new();
        for o in observed {
            if !o.of_managed_kind() || declared(o) {
                continue;
            }
            let Some(reason) = self.stale_reason(o) else {
                continue;
            };
            stale.push(Change {
                kind: ChangeKind::Remove,
                object: o.object(),
                reason,
                op: o.delete(),
            });
        }
        self.push_sorted(stale);
    }

    /// Why an undeclared object is ours to remove, or `None` if it is not.
    fn stale_reason<T: Swept>(&self, o: &T) -> Option<String> {
        let dev = o.dev();
        if self.is_owned(dev) {
            return Some(format!("not declared (owned device {dev})"));
        }
        // Elsewhere (an underlay), only what carries our mark; not on a
        // device of ours being retired (the object goes with it).
        let p = o.protocol()?;
        (self.protocols.contains(&p)
            && self.desired.vxlan(dev).is_none()
            && !self.observed.links.get(dev).is_some_and(LinkState::marked))
        .then(|| format!("not declared (address protocol {p})"))
    }

    /// How routes with a gateway are installed, from `[engine] nexthops`
    /// and what the kernel supports.
    fn route_style(&self) -> RouteStyle {
        match (self.desired.engine.nexthops, self.observed.nexthop_objects) {
            (NexthopMode::Off, _) | (NexthopMode::Auto, false) => RouteStyle::Classic,
            (NexthopMode::Auto | NexthopMode::On, true) => RouteStyle::Nexthops,
            (NexthopMode::On, false) => RouteStyle::Unavailable,
        }
    }

    /// Give every distinct (device, gateway, onlink) of the desired routes a
    /// nexthop id (its owned nexthop's, else the lowest free one of
    /// netconverge's range) and plan the missing ones. Runs before
    /// [`Self::routes`], which looks the ids up.
    fn nexthops(&mut self) {
        if self.style != RouteStyle::Nexthops {
            return;
        }
        let (desired, observed) = (self.desired, self.observed);
        let proto = desired.engine.route_protocol;
        // Owned nexthops by what they are; with duplicates the lowest id
        // wins and the others become unused.
        let mut owned: HashMap<NhKey<'a>, u32> =
            HashMap::with_capacity_and_hasher(observed.nexthops.len(), Default::default());
        for n in &observed.nexthops {
            if let (true, Some(key)) = (n.protocol == proto, NhKey::of_state(n)) {
                owned
                    .entry(key)
                    .and_modify(|id| *id = (*id).min(n.id))
                    .or_insert(n.id);
            }
        }
        let taken: HashSet<u32> = observed.nexthops.iter().map(|n| n.id).collect();
        let (mut next, last) = nexthop_id_range(proto);
        self.nh_ids.reserve(desired.routes.len());
        self.nh_keep.reserve(desired.routes.len());
        for r in &desired.routes {
            let Some(key) = NhKey::of_spec(r) else {
                continue;
            };
            if self.nh_ids.contains_key(&key)
                || self.conflicts.contains(&route_key_spec(r))
                || self.is_self_peer_route(r)
            {
                continue;
            }
            let existing = owned.get(&key).copied();
            let id = match existing {
                Some(id) => id,
                None => {
                    while next <= last && taken.contains(&next) {
                        next += 1;
                    }
                    if next > last {
                        // Its routes report it (no id for them).
                        continue;
                    }
                    next += 1;
                    next - 1
                }
            };
            self.nh_ids.insert(key, id);
            self.nh_keep.insert(id);
            let reason = match (self.dev_state(key.dev), existing) {
                (DevState::Blocked, _) | (DevState::Present, Some(_)) => continue,
                (DevState::Fresh, Some(_)) => format!("recreate with {} ({})", key.dev, r.origin),
                (_, None) => missing(&r.origin),
            };
            self.change(
                ChangeKind::Add,
                describe_nexthop(id, Some(key.via), Some(key.dev), key.onlink),
                reason,
                Op::SetNexthop(NexthopOp {
                    id,
                    via: key.via,
                    dev: key.dev.to_string(),
                    onlink: key.onlink,
                    protocol: proto,
                }),
            );
        }
    }

    /// Owned nexthops no route keeps: removed once the routes moved off
    /// them. Those on a device being (re)created vanish with it.
    fn stale_nexthops(&mut self) {
        let proto = self.desired.engine.route_protocol;
        let mut stale = Vec::new();
        for n in &self.observed.nexthops {
            let gone_with_dev = n
                .dev
                .as_deref()
                .is_some_and(|d| self.devs.get(d) == Some(&DevState::Fresh))
                || self.retired_first(n.dev.as_deref());
            if !self.protocols.contains(&n.protocol)
                || self.nh_keep.contains(&n.id)
                || gone_with_dev
            {
                continue;
            }
            let reason = if n.protocol == proto {
                format!("unused (nexthop protocol {proto})")
            } else {
                format!("old nexthop protocol {} (now {proto})", n.protocol)
            };
            stale.push(Change {
                kind: ChangeKind::Remove,
                object: describe_nexthop(n.id, n.via, n.dev.as_deref(), n.onlink),
                reason,
                op: Op::DelNexthop { id: n.id },
            });
        }
        self.push_sorted(stale);
    }

    fn routes(&mut self) {
        let (desired, observed) = (self.desired, self.observed);
        let have: HashMap<RouteKey, &RouteState> = observed
            .routes
            .iter()
            .map(|r| (route_key_state(r), r))
            .collect();
        let mut want: HashSet<RouteKey> = set_with_capacity(desired.routes.len());
        let mut unavailable = 0usize;
        for r in &desired.routes {
            if self.is_self_peer_route(r) {
                continue;
            }
            want.insert(route_key_spec(r));
            if self.conflicts.contains(&route_key_spec(r)) {
                // Blocked (reported by `route_conflicts`); the holder stays.
                continue;
            }
            if !self.route(r, &have) {
                unavailable += 1;
            }
        }
        self.report_unavailable(unavailable);
        self.stale_routes(&want);
    }

    /// Plan one declared route against the kernel's route at its place.
    /// `false`: it needs a nexthop object that cannot be had (no free id,
    /// or a kernel without them), counted for one summary line.
    fn route(&mut self, r: &'a RouteSpec, have: &HashMap<RouteKey, &RouteState>) -> bool {
        let proto = self.desired.engine.route_protocol;
        let blocked = r
            .dev
            .as_deref()
            .is_some_and(|d| self.skip_if_blocked(d, ObjectKind::Route));
        let nhid = match (self.style, NhKey::of_spec(r)) {
            (RouteStyle::Nexthops, Some(k)) => match self.nh_ids.get(&k) {
                Some(id) => Some(*id),
                // No free id left.
                None => return false,
            },
            (RouteStyle::Unavailable, Some(_)) if !blocked => return false,
            _ => None,
        };
        let fresh = r
            .dev
            .as_deref()
            .is_some_and(|d| self.dev_state(d) == DevState::Fresh);
        let cur = if fresh {
            None
        } else {
            // A route on a device retired first is gone before this one.
            have.get(&route_key_spec(r))
                .copied()
                .filter(|c| !self.retired_first(c.dev.as_deref()))
        };
        if blocked {
            // Left as it is, and so is the nexthop it uses.
            if let Some(id) = cur.and_then(|c| c.nhid) {
                self.nh_keep.insert(id);
            }
            return true;
        }
        // Built only for a change: an in-sync route costs no formatting.
        let describe = || {
            let mut s =
                describe_route(&r.dst, r.via, r.dev.as_deref(), r.onlink, r.table, r.metric);
            if let Some(id) = nhid {
                let _ = write!(s, " nhid {id}");
            }
            s
        };
        let op = || {
            let mut op = route_op_from_spec(r, proto);
            op.nhid = nhid;
            Op::SetRoute(op)
        };
        let Some(c) = cur else {
            self.change(ChangeKind::Add, describe(), missing(&r.origin), op());
            return true;
        };
        let diffs = self.route_diffs(r, c, nhid);
        if !diffs.is_empty() {
            self.change(ChangeKind::Modify, describe(), diffs.join(", "), op());
        }
        true
    }

    /// How the kernel's route `c` at `r`'s place differs from `r` (to be
    /// installed through nexthop `nhid`, if any).
    fn route_diffs(&self, r: &RouteSpec, c: &RouteState, nhid: Option<u32>) -> Vec<String> {
        let proto = self.desired.engine.route_protocol;
        let mut diffs = Vec::new();
        if c.nhid != nhid {
            diffs.push(format!("nhid {} → {}", opt(c.nhid), opt(nhid)));
        }
        // Through our nexthop, gateway/device/onlink are the nexthop's
        // (planned on its own); compared only for classic routes.
        if nhid.is_none() {
            if c.via != r.via {
                diffs.push(format!("via {} → {}", opt(c.via), opt(r.via)));
            }
            // A route without `dev` lets the kernel pick the device; only a
            // declared device is compared.
            if r.dev.is_some() && c.dev != r.dev {
                diffs.push(format!(
                    "dev {} → {}",
                    opt(c.dev.as_deref()),
                    opt(r.dev.as_deref())
                ));
            }
            if c.onlink != r.onlink {
                diffs.push(format!(
                    "onlink {} → {}",
                    on_off(c.onlink),
                    on_off(r.onlink)
                ));
            }
        }
        if c.src != r.src {
            diffs.push(format!("src {} → {}", opt(c.src), opt(r.src)));
        }
        if !self.protocols.contains(&c.protocol) {
            // Only reached when adopted (`route_conflicts`).
            diffs.insert(
                0,
                format!(
                    "adopt (created by proto {}, not netconverge)",
                    proto_name(c.protocol)
                ),
            );
        } else if c.protocol != proto {
            diffs.push(format!("proto {} → {proto}", c.protocol));
        }
        diffs
    }

    /// One blocked line for every route with a gateway that could not get
    /// a nexthop object.
    fn report_unavailable(&mut self, unavailable: usize) {
        if unavailable == 0 {
            return;
        }
        let reason = if self.style == RouteStyle::Unavailable {
            "[engine] nexthops = \"on\", but this kernel has no nexthop objects (Linux ≥ 5.3 has them): set nexthops = \"auto\" to fall back to classic routes".to_string()
        } else {
            let (first, last) = nexthop_id_range(self.desired.engine.route_protocol);
            format!("no free nexthop id left in {first}–{last}")
        };
        let mut counts = KindCounts::default();
        counts.add(ObjectKind::Route, unavailable);
        let object = if unavailable == 1 {
            "1 route with a gateway".to_string()
        } else {
            format!("{unavailable} routes with a gateway")
        };
        self.blocked.push(Blocked::of(counts, object, reason));
    }

    /// Our routes no declaration `want`s: removed.
    fn stale_routes(&mut self, want: &HashSet<RouteKey>) {
        let proto = self.desired.engine.route_protocol;
        let mut stale = Vec::new();
        for r in &self.observed.routes {
            if want.contains(&route_key_state(r)) {
                continue;
            }
            // The strict rule: a route is ours only if it carries one of
            // our protocols, also on a device we created (another daemon
            // may route through it).
            if !self.protocols.contains(&r.protocol) {
                continue;
            }
            let reason = if r.protocol == proto {
                format!("not declared (route protocol {proto})")
            } else {
                format!("old route protocol {} (now {proto})", r.protocol)
            };
            stale.push(Change {
                kind: ChangeKind::Remove,
                object: describe_route_state(r),
                reason,
                op: Op::DelRoute(r.clone()),
            });
        }
        self.push_sorted(stale);
    }

    /// Removals come from kernel dumps whose order is not ours to promise;
    /// sort them so the plan is deterministic.
    fn push_sorted(&mut self, mut stale: Vec<Change>) {
        stale.sort_by(|a, b| a.object.cmp(&b.object));
        self.changes.extend(stale);
    }

    fn summarize_skipped(&mut self) {
        for (dev, kinds) in std::mem::take(&mut self.skipped) {
            let mut counts = KindCounts::default();
            let what: Vec<String> = kinds
                .iter()
                .map(|(k, (kind, n))| {
                    counts.add(*kind, *n);
                    if *n == 1 {
                        format!("1 {k}")
                    } else if k.ends_with('y') {
                        format!("{n} {}ies", k.trim_end_matches('y'))
                    } else if k.ends_with('s') {
                        format!("{n} {k}es")
                    } else {
                        format!("{n} {k}s")
                    }
                })
                .collect();
            let reason = if self.desired.vxlan(dev).is_some() {
                format!("waiting for vxlan {dev}")
            } else {
                format!("device {dev} absent")
            };
            self.blocked.push(Blocked::of(
                counts,
                format!("{} on {dev}", what.join(", ")),
                reason,
            ));
        }
    }
}

/// Reorder `changes` by stage, stably (within a stage: the order they were
/// planned in), in place: a counting sort of indices, then the permutation
/// applied by swaps. Sorting 40 000 changes must not need a second copy of
/// them (it would be most of the daemon's peak memory).
fn sort_by_stage(changes: &mut [Change]) {
    let stages: Vec<Stage> = changes.iter().map(|c| c.op.stage()).collect();
    let mut counts: BTreeMap<Stage, usize> = BTreeMap::new();
    for s in &stages {
        *counts.entry(*s).or_insert(0) += 1;
    }
    let mut next: BTreeMap<Stage, usize> = BTreeMap::new();
    let mut offset = 0;
    for (s, n) in counts {
        next.insert(s, offset);
        offset += n;
    }
    // dest[i]: where the change now at i belongs
    let mut dest: Vec<usize> = Vec::with_capacity(stages.len());
    for s in &stages {
        let slot = next.entry(*s).or_insert(0);
        dest.push(*slot);
        *slot += 1;
    }
    for i in 0..dest.len() {
        // Follow the cycle through i until the element at i belongs there.
        while let Some(&d) = dest.get(i) {
            if d == i {
                break;
            }
            changes.swap(i, d);
            dest.swap(i, d);
        }
    }
}

pub(super) fn plan_kernel(desired: &Desired, observed: &Observed) -> KernelPlan {
    // A declared device missing under its name but present, ours, under an
    // old name with the same VNI and port is renamed in place; the rest of
    // the plan then sees it under its new name.
    let renames = renames(desired, observed);
    if renames.is_empty() {
        return plan_view(desired, observed, Vec::new());
    }
    let view = renamed(observed, &renames);
    let changes = renames
        .into_iter()
        .map(|(from, to)| Change {
            kind: ChangeKind::Modify,
            object: format!("vxlan {from}"),
            reason: format!("rename to {to} (same vni and port; everything on it stays)"),
            op: Op::RenameLink {
                from: from.to_string(),
                to,
            },
        })
        .collect();
    plan_view(desired, &view, changes)
}

fn plan_view(desired: &Desired, observed: &Observed, first: Vec<Change>) -> KernelPlan {
    // Upper bound of additions (removals may add more); untouched capacity
    // costs no memory.
    let bound = 3 * desired.vxlans.len()
        + desired.addresses.len()
        + desired.neighbors.len()
        + desired.fdb.len()
        + 2 * desired.routes.len();
    let mut changes = first;
    changes.reserve(bound);
    let mut p = Planner {
        desired,
        observed,
        changes,
        blocked: Vec::new(),
        devs: BTreeMap::new(),
        mtus: BTreeMap::new(),
        skipped: BTreeMap::new(),
        style: RouteStyle::Classic,
        nh_ids: HashMap::default(),
        nh_keep: HashSet::default(),
        protocols: owned_protocols(desired, observed),
        conflicts: HashSet::default(),
        locals: BTreeMap::new(),
        self_peers: BTreeSet::new(),
        retired: BTreeMap::new(),
    };
    p.style = p.route_style();
    p.vxlans();
    p.retire();
    p.self_peers();
    p.route_conflicts();
    p.addresses();
    p.neighbors();
    p.fdb();
    p.nexthops();
    p.routes();
    p.stale_nexthops();
    p.summarize_skipped();
    // Stable: stage order, and within a stage the order above (declaration
    // order for additions, sorted for removals).
    sort_by_stage(&mut p.changes);
    KernelPlan {
        plan: Plan {
            changes: p.changes,
            blocked: p.blocked,
            notes: Vec::new(),
        },
        mtus: p.mtus,
    }
}

/// Of the addresses `remove` picks, the IPv4 ones that must stay: removing
/// them would leave their device without an IPv4 address, and the kernel
/// then silently drops every classic IPv4 route through it (no
/// RTM_DELROUTE) — foreign routes too. Never removing a foreign route
/// includes that cascade.
fn addresses_foreign_routes_need<'o>(
    observed: &'o Observed,
    protocols: &BTreeSet<u8>,
    remove: impl Fn(&AddressState) -> bool,
) -> Vec<&'o AddressState> {
    let v4_on = |dev: &str| -> Vec<&'o AddressState> {
        observed
            .addresses
            .iter()
            .filter(|a| a.dev == dev && matches!(a.cidr, IpNet::V4(_)))
            .collect()
    };
    let mut devs: Vec<&str> = observed
        .addresses
        .iter()
        .filter(|a| matches!(a.cidr, IpNet::V4(_)) && remove(a))
        .map(|a| a.dev.as_str())
        .collect();
    devs.sort_unstable();
    devs.dedup();
    let mut out = Vec::new();
    for dev in devs {
        let on = v4_on(dev);
        if on.iter().any(|a| !remove(a)) {
            continue;
        }
        let foreign_routes = observed.routes.iter().any(|r| {
            r.dev.as_deref() == Some(dev)
                && r.nhid.is_none()
                && matches!(r.dst, IpNet::V4(_))
                && !protocols.contains(&r.protocol)
        });
        if foreign_routes {
            out.extend(on.into_iter().filter(|a| remove(a)));
        }
    }
    out
}

/// Why an address [`addresses_foreign_routes_need`] keeps is kept.
fn kept_for_foreign_routes(dev: &str) -> String {
    format!(
        "kept: it is the last IPv4 address of {dev}, which netconverge does not own, \
         and the kernel would drop the foreign routes through {dev} with it; remove \
         them or the address by hand"
    )
}

pub(super) fn cleanup(desired: &Desired, observed: &Observed) -> Plan {
    let mut plan = Plan::default();
    let protocols = owned_protocols(desired, observed);
    let proto = desired.engine.route_protocol;
    let mut removed: BTreeSet<&str> = BTreeSet::new();
    for l in observed.links.values() {
        if l.kind != "vxlan" {
            continue;
        }
        if ours(l, desired) {
            removed.insert(l.name.as_str());
            plan.changes.push(Change {
                kind: ChangeKind::Remove,
                object: format!("vxlan {}", l.name),
                reason: "cleanup (created by netconverge, with everything on it)".to_string(),
                op: Op::DeleteLink {
                    name: l.name.clone(),
                },
            });
        } else if desired.vxlan(&l.name).is_some() {
            plan.blocked.push(Blocked::new(
                ObjectKind::Device,
                format!("vxlan {}", l.name),
                "not created by netconverge: left as it is",
            ));
        }
    }
    let label = |p: u8| {
        if p == proto {
            format!("cleanup (route protocol {p})")
        } else {
            format!("cleanup (old route protocol {p})")
        }
    };
    let mut routes: Vec<Change> = observed
        .routes
        .iter()
        .filter(|r| {
            protocols.contains(&r.protocol)
                && !r.dev.as_deref().is_some_and(|d| removed.contains(d))
        })
        .map(|r| Change {
            kind: ChangeKind::Remove,
            object: describe_route_state(r),
            reason: label(r.protocol),
            op: Op::DelRoute(r.clone()),
        })
        .collect();
    routes.sort_by(|a, b| a.object.cmp(&b.object));
    plan.changes.extend(routes);
    let ours_to_remove =
        |a: &AddressState| protocols.contains(&a.protocol) && !removed.contains(a.dev.as_str());
    let kept = addresses_foreign_routes_need(observed, &protocols, ours_to_remove);
    for a in &kept {
        plan.blocked.push(Blocked::new(
            ObjectKind::Address,
            format!("address {} dev {}", a.cidr, a.dev),
            kept_for_foreign_routes(&a.dev),
        ));
    }
    let mut addresses: Vec<Change> = observed
        .addresses
        .iter()
        .filter(|a| ours_to_remove(a) && !kept.iter().any(|k| std::ptr::eq(*k, *a)))
        .map(|a| Change {
            kind: ChangeKind::Remove,
            object: format!("address {} dev {}", a.cidr, a.dev),
            reason: format!("cleanup (address protocol {})", a.protocol),
            op: Op::DelAddress {
                dev: a.dev.clone(),
                cidr: a.cidr,
            },
        })
        .collect();
    addresses.sort_by(|a, b| a.object.cmp(&b.object));
    plan.changes.extend(addresses);
    // Nexthops after the routes (deleting one deletes the routes using it);
    // those on removed devices go with them.
    let mut nexthops: Vec<Change> = observed
        .nexthops
        .iter()
        .filter(|n| {
            protocols.contains(&n.protocol)
                && !n.dev.as_deref().is_some_and(|d| removed.contains(d))
        })
        .map(|n| Change {
            kind: ChangeKind::Remove,
            object: describe_nexthop(n.id, n.via, n.dev.as_deref(), n.onlink),
            reason: label(n.protocol).replace("route protocol", "nexthop protocol"),
            op: Op::DelNexthop { id: n.id },
        })
        .collect();
    nexthops.sort_by(|a, b| a.object.cmp(&b.object));
    plan.changes.extend(nexthops);
    plan.changes.sort_by_key(|c| c.op.stage());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_by_stage_is_stable_and_in_place() {
        let ops = [
            Op::SetRoute(route_op_from_spec(
                &RouteSpec {
                    dst: "198.18.2.0/24".parse().unwrap_or_default(),
                    via: None,
                    dev: None,
                    onlink: false,
                    src: None,
                    metric: None,
                    table: MAIN_TABLE,
                    origin: String::new(),
                },
                199,
            )),
            Op::DelNexthop { id: 1 },
            Op::DeleteLink { name: "x".into() },
            Op::DelNeighbor {
                dev: "x".into(),
                ip: "198.18.2.0".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            },
        ];
        // 1 000 changes, stages cycling; `object` records the planned order.
        let mut changes: Vec<Change> = (0..1000)
            .filter_map(|i| {
                let op = ops.get((i * 7 + i / 3) % ops.len())?.clone();
                Some(Change {
                    kind: ChangeKind::Add,
                    object: format!("{i:04}"),
                    reason: String::new(),
                    op,
                })
            })
            .collect();
        let mut want = changes.clone();
        want.sort_by_key(|c| c.op.stage());
        sort_by_stage(&mut changes);
        assert_eq!(changes, want);
    }
}
