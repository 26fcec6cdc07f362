//! A model of the kernel's effect of each planned operation, for tests:
//! `simulate(observed, plan)` is the state a perfect `apply` would leave.
//!
//! Invariant: pure (no I/O), total (an op the kernel would refuse — EEXIST,
//! ENODEV, ENETDOWN, ESRCH — leaves the state as it was, as a failed request
//! does), and it models the cascades the planner relies on: deleting a
//! device deletes everything on it and every route and nexthop through it;
//! deleting a nexthop deletes the routes using it; removing a device's last
//! IPv4 address drops its classic IPv4 routes. NAT and lease operations are
//! not modelled (their observed state is rendered text owned by the NAT and
//! lease rooms): they leave `observed.nat`/`observed.lease` as they are.
//!
//! Kernel behaviour modelled, each with where it comes from:
//! - ifindex: a created device gets a new index, above every index in use
//!   (`dev_new_index` counts up; a recreated device never gets its old one).
//! - `ip link add type vxlan`: EEXIST when the name exists, or when a VXLAN
//!   device with the same VNI, port, local address family and GBP flag exists
//!   (`vxlan_dev_configure` → `vxlan_find_vni`); ENODEV without the
//!   underlay (the GBP flag is part of that identity too: the receive flags
//!   are compared). netconverge creates it up, with its mark as ifalias.
//!   The IPv6 link-local address the kernel adds is not modelled (never
//!   global, the planner ignores it).
//! - Routes are keyed by (table, dst, metric) with the kernel's default
//!   metric: none for IPv4 (reported without RTA_PRIORITY), 1024 for IPv6
//!   (reported as 1024). `replace` swaps the route at the key; `del` removes
//!   the route at the key whose given gateway/device or nhid match. A
//!   classic route whose device is absent fails (ENODEV), down fails
//!   (ENETDOWN, `fib_check_nh`); a route through a nexthop id that does not
//!   exist fails. Through a nexthop, the route reports the nexthop's
//!   gateway, device and onlink flag.
//! - Removing a device's last IPv4 address drops every classic IPv4 route
//!   through it (`fib_inetaddr_event` → `fib_disable_ip`), and routes whose
//!   `src` was that address when no device holds it any more
//!   (`fib_sync_down_addr`). Nexthop objects (and routes through them) only
//!   react to link events, not to address events.
//! - An IPv6 address cannot be added on a device with MTU below 1280, and
//!   lowering the MTU below 1280 removes the device's IPv6 addresses and
//!   routes (`addrconf_ifdown`).
//! - `ip link set type vxlan local L`: refused when L's family is not the
//!   device's (the local family is fixed at creation).
//! - Nexthop objects: `add` with a taken id fails (netconverge sends
//!   NLM_F_EXCL), as does one on an absent or down device.
//! - FDB: one destination per unicast MAC on a device (netconverge sends
//!   REPLACE for those); all-zero and multicast MACs get destinations
//!   appended (flood lists).
//! - Neighbours: `replace` sets the lladdr and makes the entry permanent.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Op, Plan, VxlanCreate};
use crate::model::{
    AddressState, DEVICE_MARK, Family, FdbState, LinkState, Mac, NeighborState, NexthopState,
    Observed, RouteState, VxlanAttrs,
};

/// IPv6's minimum link MTU (RFC 8200); below it the kernel disables IPv6
/// on the device.
const IPV6_MIN_MTU: u32 = 1280;

/// The state after every op of `plan`, in order.
pub fn simulate(observed: &Observed, plan: &Plan) -> Observed {
    let mut o = observed.clone();
    for c in &plan.changes {
        apply_to(&mut o, &c.op);
    }
    o
}

/// The kernel's (model's) effect of one op on `o`.
pub fn apply_to(o: &mut Observed, op: &Op) {
    match op {
        Op::CreateVxlan(v) => create_vxlan(o, v),
        Op::DeleteLink { name } | Op::RetireLink { name } => delete_link(o, name),
        Op::RenameLink { from, to } => rename_link(o, from, to),
        Op::MarkLink { name } => {
            if let Some(l) = o.links.get_mut(name) {
                l.alias = Some(DEVICE_MARK.to_string());
            }
        }
        Op::SetVxlan {
            name,
            local,
            underlay,
            learning,
        } => set_vxlan(o, name, *local, underlay.as_deref(), *learning),
        Op::SetLink { name, mtu, mac, up } => set_link(o, name, *mtu, *mac, *up),
        Op::AddAddress {
            dev,
            cidr,
            protocol,
        } => add_address(o, dev, *cidr, *protocol),
        Op::DelAddress { dev, cidr } => del_address(o, dev, *cidr),
        Op::SetNeighbor { dev, ip, mac } => {
            if !o.links.contains_key(dev) {
                return;
            }
            o.neighbors.retain(|n| !(n.dev == *dev && n.ip == *ip));
            o.neighbors.push(NeighborState {
                dev: dev.clone(),
                ip: *ip,
                mac: Some(*mac),
                permanent: true,
            });
        }
        Op::DelNeighbor { dev, ip } => o.neighbors.retain(|n| !(n.dev == *dev && n.ip == *ip)),
        Op::AddFdb { dev, mac, dst } => add_fdb(o, dev, *mac, *dst),
        Op::DelFdb { dev, mac, dst } => o
            .fdb
            .retain(|f| !(f.dev == *dev && f.mac == *mac && f.dst == *dst)),
        Op::SetNexthop(n) => {
            let usable = o.links.get(&n.dev).is_some_and(|l| l.up);
            if !usable || o.nexthops.iter().any(|x| x.id == n.id) {
                return;
            }
            o.nexthops.push(NexthopState {
                id: n.id,
                via: Some(n.via),
                dev: Some(n.dev.clone()),
                onlink: n.onlink,
                protocol: n.protocol,
            });
        }
        Op::DelNexthop { id } => {
            o.nexthops.retain(|n| n.id != *id);
            o.routes.retain(|r| r.nhid != Some(*id));
        }
        Op::SetRoute(r) => set_route(o, r),
        Op::DelRoute(r) => {
            let key = route_key(r);
            if let Some(pos) = o
                .routes
                .iter()
                .position(|x| route_key(x) == key && del_matches(r, x))
            {
                o.routes.remove(pos);
            }
        }
        // Not modelled: see the module docs.
        Op::Nat(_) | Op::Lease(_) | Op::Cni(_) => {}
    }
}

/// `ip link set NAME type vxlan local … dev …` in place.
fn set_vxlan(
    o: &mut Observed,
    name: &str,
    local: Option<IpAddr>,
    underlay: Option<&str>,
    learning: Option<bool>,
) {
    let under_index = underlay.map(|u| o.links.get(u).map(|l| l.index));
    // An absent underlay: the kernel refuses the whole changelink.
    if under_index == Some(None) {
        return;
    }
    let Some(attrs) = o.links.get_mut(name).and_then(|l| l.vxlan.as_mut()) else {
        return;
    };
    // "New local address family does not match old" (EINVAL,
    // verified on Linux 6.18): the family is fixed at creation.
    let family = |a: &Option<IpAddr>| a.map(|x| Family::of(&x));
    if local.is_some() && attrs.local.is_some() && family(&local) != family(&attrs.local) {
        return;
    }
    if let Some(l) = local {
        attrs.local = Some(l);
    }
    if let Some(Some(i)) = under_index {
        attrs.underlay_index = Some(i);
    }
    if let Some(l) = learning {
        attrs.learning = l;
    }
}

/// `ip link set NAME mtu … address … up`.
fn set_link(o: &mut Observed, name: &str, mtu: Option<u32>, mac: Option<Mac>, up: Option<bool>) {
    let Some(l) = o.links.get_mut(name) else {
        return;
    };
    if let Some(m) = mac {
        l.mac = Some(m);
    }
    if let Some(u) = up {
        l.up = u;
    }
    if let Some(m) = mtu {
        l.mtu = m;
        if m < IPV6_MIN_MTU {
            disable_ipv6(o, name);
        }
    }
    if up == Some(false) {
        // A device going down loses its routes (`fib_disable_ip`,
        // `rt6_disable_ip`) and its nexthops' routes stay dead;
        // netconverge never plans it, modelled for completeness.
        o.routes.retain(|r| r.dev.as_deref() != Some(name));
    }
}

/// `bridge fdb append/replace`: one destination per unicast MAC, the
/// all-zero and multicast MACs collect destinations.
fn add_fdb(o: &mut Observed, dev: &str, mac: Mac, dst: IpAddr) {
    if !o.links.contains_key(dev) {
        return;
    }
    if mac.is_zero() || mac.is_multicast() {
        if o.fdb
            .iter()
            .any(|f| f.dev == dev && f.mac == mac && f.dst == Some(dst))
        {
            return;
        }
    } else {
        o.fdb.retain(|f| !(f.dev == dev && f.mac == mac));
    }
    o.fdb.push(FdbState {
        dev: dev.to_string(),
        mac,
        dst: Some(dst),
        permanent: true,
    });
}

/// The kernel's default metric: 0 for IPv4, 1024 for IPv6.
fn effective_metric(dst: &IpNet, metric: Option<u32>) -> u32 {
    match (metric, dst) {
        (Some(m), _) => m,
        (None, IpNet::V4(_)) => 0,
        (None, IpNet::V6(_)) => 1024,
    }
}

fn route_key(r: &RouteState) -> (u32, IpNet, u32) {
    (r.table, r.dst.trunc(), effective_metric(&r.dst, r.metric))
}

/// `ip route del` matches the attributes it is given (protocol unspec).
fn del_matches(del: &RouteState, r: &RouteState) -> bool {
    match del.nhid {
        Some(id) => r.nhid == Some(id),
        None => {
            del.via.is_none_or(|v| r.via == Some(v))
                && del.dev.as_ref().is_none_or(|d| r.dev.as_ref() == Some(d))
        }
    }
}

fn create_vxlan(o: &mut Observed, v: &VxlanCreate) {
    let Some(under) = o.links.get(&v.underlay).map(|l| l.index) else {
        return;
    };
    let taken = o.links.values().any(|l| {
        l.vxlan.as_ref().is_some_and(|a| {
            a.vni == v.vni
                && a.port == v.port
                && a.gbp == v.gbp
                && a.local.map(|x| Family::of(&x)) == Some(v.family)
        })
    });
    if taken || o.links.contains_key(&v.name) {
        return;
    }
    let index = o.links.values().map(|l| l.index).max().unwrap_or(0) + 1;
    o.links.insert(
        v.name.clone(),
        LinkState {
            name: v.name.clone(),
            index,
            kind: "vxlan".to_string(),
            mtu: v.mtu,
            // Without a configured/derived MAC the kernel picks a random
            // one; any fixed value stands for it (the planner then does not
            // compare MACs).
            mac: Some(
                v.mac
                    .unwrap_or(crate::model::Mac([0x02, 0, 0, 0, 0xee, 0xee])),
            ),
            up: true,
            vxlan: Some(VxlanAttrs {
                vni: v.vni,
                port: v.port,
                local: Some(v.local),
                underlay_index: Some(under),
                learning: v.learning,
                gbp: v.gbp,
            }),
            alias: Some(DEVICE_MARK.to_string()),
        },
    );
}

fn delete_link(o: &mut Observed, name: &str) {
    if o.links.remove(name).is_none() {
        return;
    }
    let on = |d: &Option<String>| d.as_deref() == Some(name);
    let gone: BTreeSet<u32> = o
        .nexthops
        .iter()
        .filter(|n| on(&n.dev))
        .map(|n| n.id)
        .collect();
    o.nexthops.retain(|n| !on(&n.dev));
    o.routes
        .retain(|r| !on(&r.dev) && !r.nhid.is_some_and(|id| gone.contains(&id)));
    o.addresses.retain(|a| a.dev != name);
    o.neighbors.retain(|n| n.dev != name);
    o.fdb.retain(|f| f.dev != name);
}

fn rename_link(o: &mut Observed, from: &str, to: &str) {
    if o.links.contains_key(to) {
        return;
    }
    let Some(mut l) = o.links.remove(from) else {
        return;
    };
    l.name = to.to_string();
    o.links.insert(to.to_string(), l);
    let fix = |d: &mut String| {
        if d == from {
            *d = to.to_string();
        }
    };
    o.addresses.iter_mut().for_each(|a| fix(&mut a.dev));
    o.neighbors.iter_mut().for_each(|n| fix(&mut n.dev));
    o.fdb.iter_mut().for_each(|f| fix(&mut f.dev));
    o.routes
        .iter_mut()
        .filter_map(|r| r.dev.as_mut())
        .for_each(fix);
    o.nexthops
        .iter_mut()
        .filter_map(|n| n.dev.as_mut())
        .for_each(fix);
}

fn add_address(o: &mut Observed, dev: &str, cidr: IpNet, protocol: u8) {
    let Some(l) = o.links.get(dev) else {
        return;
    };
    if matches!(cidr, IpNet::V6(_)) && l.mtu < IPV6_MIN_MTU {
        return;
    }
    // NLM_F_EXCL: an existing address fails.
    if o.addresses.iter().any(|a| a.dev == dev && a.cidr == cidr) {
        return;
    }
    let addr = cidr.addr();
    let link_scope = match addr {
        IpAddr::V4(a) => a.is_loopback() || a.is_link_local(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unicast_link_local(),
    };
    o.addresses.push(AddressState {
        dev: dev.to_string(),
        cidr,
        global: !link_scope,
        protocol,
    });
}

fn del_address(o: &mut Observed, dev: &str, cidr: IpNet) {
    let Some(pos) = o
        .addresses
        .iter()
        .position(|a| a.dev == dev && a.cidr == cidr)
    else {
        return;
    };
    o.addresses.remove(pos);
    if let IpNet::V4(_) = cidr {
        let last = !o
            .addresses
            .iter()
            .any(|a| a.dev == dev && matches!(a.cidr, IpNet::V4(_)));
        if last {
            o.routes.retain(|r| {
                !(r.nhid.is_none()
                    && matches!(r.dst, IpNet::V4(_))
                    && r.dev.as_deref() == Some(dev))
            });
        }
        let held = o.addresses.iter().any(|a| a.cidr.addr() == cidr.addr());
        if !held {
            o.routes.retain(|r| r.src != Some(cidr.addr()));
        }
    }
}

fn disable_ipv6(o: &mut Observed, dev: &str) {
    o.addresses
        .retain(|a| !(a.dev == dev && matches!(a.cidr, IpNet::V6(_))));
    o.routes
        .retain(|r| !(r.dev.as_deref() == Some(dev) && matches!(r.dst, IpNet::V6(_))));
}

fn set_route(o: &mut Observed, r: &RouteState) {
    let mut new = r.clone();
    new.dst = r.dst.trunc();
    if let IpNet::V6(_) = r.dst {
        // IPv6 routes always carry a priority; the kernel reports 1024
        // for one added without.
        new.metric = Some(effective_metric(&r.dst, r.metric));
    }
    match r.nhid {
        Some(id) => {
            let Some(nh) = o.nexthops.iter().find(|n| n.id == id) else {
                return;
            };
            new.via = nh.via;
            new.dev = nh.dev.clone();
            new.onlink = nh.onlink;
        }
        None => {
            if let Some(d) = &r.dev {
                if !o.links.get(d).is_some_and(|l| l.up) {
                    return;
                }
            }
        }
    }
    let key = route_key(&new);
    o.routes.retain(|x| route_key(x) != key);
    o.routes.push(new);
}
