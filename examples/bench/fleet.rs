//! Synthetic fleets for the benchmarks: one node's desired state with N
//! peers, and the same objects as iproute2 batch files.
//!
//! Invariant: pure and deterministic; every address lies in a range the
//! project reserves for benchmarks (pods 100.64.0.0/10 and fd00::/8,
//! underlays 192.0.2.0/24 and 2001:db8::/32).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netconverge::model::{
    AddressSpec, Desired, EngineSpec, Family, Mac, NexthopMode, PeerSpec, ROUTE_PROTOCOL, VxlanSpec,
};

pub const UNDERLAY: &str = "nc-ul0";
pub const VX4: &str = "flannel.1";
pub const VX6: &str = "flannel-v6.1";
pub const LOCAL4: &str = "192.0.2.1";
pub const LOCAL6: &str = "2001:db8::1";
pub const NODE: &str = "bench-node";

/// One remote node of one family.
#[derive(Debug, Clone)]
pub struct Peer {
    pub dev: &'static str,
    pub subnet: IpNet,
    pub vtep_ip: IpAddr,
    pub vtep_mac: Mac,
}

/// Peer `i` (0-based) of an IPv4 overlay of `n` peers: pod subnet the
/// i-th /24 of 100.64.0.0/10 (16 384 of them; beyond 16 383 peers the i-th
/// /26, 65 536 of them), VTEP in 192.0.2.0/24 (shared: FDB entries are keyed
/// by MAC, a repeated destination costs the kernel nothing).
pub fn peer4(i: u32, n: u32) -> Peer {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let prefix = if n > 16_383 { 26 } else { 24 };
    let net = Ipv4Addr::from(base + ((i + 1) << (32 - prefix)));
    Peer {
        dev: VX4,
        subnet: IpNet::V4(Ipv4Net::new(net, prefix).unwrap_or_default()),
        vtep_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2 + (i % 250) as u8)),
        vtep_mac: mac(4, i),
    }
}

/// Peer `i` of the IPv6 overlay: fd00:64:<i>::/64 via a VTEP in 2001:db8::/32.
pub fn peer6(i: u32) -> Peer {
    let hi = ((i + 1) >> 16) as u16;
    let lo = ((i + 1) & 0xffff) as u16;
    let net = Ipv6Addr::new(0xfd00, 0x64, hi, lo, 0, 0, 0, 0);
    Peer {
        dev: VX6,
        subnet: IpNet::V6(Ipv6Net::new(net, 64).unwrap_or_default()),
        vtep_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, hi, lo, 0, 0, 2)),
        vtep_mac: mac(6, i),
    }
}

fn mac(family: u8, i: u32) -> Mac {
    let [_, b, c, d] = i.to_be_bytes();
    Mac([0x02, 0x42, family, b, c, d])
}

pub fn peers(n: u32, dual: bool) -> Vec<Peer> {
    let mut out: Vec<Peer> = (0..n).map(|i| peer4(i, n)).collect();
    if dual {
        out.extend((0..n).map(peer6));
    }
    out
}

fn vxlan(name: &str, family: Family) -> VxlanSpec {
    VxlanSpec {
        name: name.into(),
        vni: 1,
        port: 8472,
        underlay: UNDERLAY.into(),
        family,
        local: None,
        mac: None,
        mtu: None,
        learning: false,
        gbp: false,
    }
}

/// This node (pod subnet 100.64.0.0/24, fd00:64::/64) with `n` peers per family.
pub fn desired(n: u32, dual: bool, nexthops: NexthopMode) -> Desired {
    let mut d = Desired {
        mac_seed: Some(NODE.into()),
        vxlans: vec![vxlan(VX4, Family::Ipv4)],
        addresses: vec![AddressSpec {
            dev: VX4.into(),
            cidr: "100.64.0.0/32".parse().unwrap_or_else(|_| IpNet::default()),
            origin: "address #1".into(),
        }],
        engine: EngineSpec {
            nexthops,
            ..EngineSpec::default()
        },
        ..Desired::default()
    };
    if dual {
        d.vxlans.push(vxlan(VX6, Family::Ipv6));
        d.addresses.push(AddressSpec {
            dev: VX6.into(),
            cidr: "fd00:64::/128".parse().unwrap_or_else(|_| IpNet::default()),
            origin: "address #2".into(),
        });
    }
    for p in peers(n, dual) {
        d.add_peer(PeerSpec {
            dev: p.dev.into(),
            subnet: p.subnet,
            vtep_ip: p.vtep_ip,
            vtep_mac: p.vtep_mac,
        });
    }
    d
}

/// The config file declaring [`desired`].
pub fn config_toml(n: u32, dual: bool, nexthops: &str) -> String {
    let mut s = format!(
        "node_name = \"{NODE}\"\n\n[engine]\nnexthops = \"{nexthops}\"\n\n\
         [[vxlan]]\nname = \"{VX4}\"\nvni = 1\nunderlay = \"{UNDERLAY}\"\n\n\
         [[address]]\ndev = \"{VX4}\"\ncidr = \"100.64.0.0/32\"\n"
    );
    if dual {
        let _ = write!(
            s,
            "\n[[vxlan]]\nname = \"{VX6}\"\nvni = 1\nunderlay = \"{UNDERLAY}\"\nfamily = \"ipv6\"\n\n\
             [[address]]\ndev = \"{VX6}\"\ncidr = \"fd00:64::/128\"\n"
        );
    }
    for p in peers(n, dual) {
        let _ = write!(
            s,
            "\n[[peer]]\ndev = \"{}\"\nsubnet = \"{}\"\nvtep_ip = \"{}\"\nvtep_mac = \"{}\"\n",
            p.dev, p.subnet, p.vtep_ip, p.vtep_mac
        );
    }
    s
}

/// The same peer objects as iproute2 batch input: (`ip -batch`, `bridge -batch`).
/// With `nexthops`, routes go through nexthop objects (ids from 1).
pub fn iproute2_batches(n: u32, dual: bool, nexthops: bool) -> (String, String) {
    let (mut ip, mut bridge) = (String::new(), String::new());
    let all = peers(n, dual);
    for p in &all {
        let gw = p.subnet.network();
        let _ = writeln!(
            ip,
            "neigh replace {gw} lladdr {} dev {} nud permanent",
            p.vtep_mac, p.dev
        );
        let _ = writeln!(
            bridge,
            "fdb append {} dev {} dst {} self permanent",
            p.vtep_mac, p.dev, p.vtep_ip
        );
    }
    for (i, p) in all.iter().enumerate() {
        let gw = p.subnet.network();
        if nexthops {
            let _ = writeln!(
                ip,
                "nexthop replace id {} via {gw} dev {} onlink proto 199",
                i + 1,
                p.dev
            );
        }
    }
    for (i, p) in all.iter().enumerate() {
        let gw = p.subnet.network();
        if nexthops {
            let _ = writeln!(ip, "route replace {} nhid {} proto 199", p.subnet, i + 1);
        } else {
            let _ = writeln!(
                ip,
                "route replace {} via {gw} dev {} onlink proto 199",
                p.subnet, p.dev
            );
        }
    }
    (ip, bridge)
}

/// What the kernel looks like once `d` is converged (as observe reports
/// it): the underlay, the VXLAN devices, every object; routes through
/// nexthop objects (ids from 199000001) when `nexthops`.
pub fn converged(d: &Desired, nexthops: bool) -> netconverge::model::Observed {
    use netconverge::model::{
        AddressState, FdbState, LinkState, NeighborState, NexthopState, Observed, VxlanAttrs,
    };
    let mut o = Observed {
        nexthop_objects: nexthops,
        ..Observed::default()
    };
    let under = LinkState {
        name: UNDERLAY.into(),
        index: 2,
        kind: "veth".into(),
        mtu: 1500,
        mac: Some(Mac([2, 0, 0, 0, 0, 1])),
        up: true,
        vxlan: None,
        alias: None,
    };
    o.links.insert(UNDERLAY.into(), under);
    for (cidr, global) in [(LOCAL4, true), (LOCAL6, true)] {
        if let Ok(ip) = cidr.parse::<IpAddr>() {
            o.addresses.push(AddressState {
                dev: UNDERLAY.into(),
                cidr: IpNet::new(ip, if ip.is_ipv4() { 24 } else { 64 }).unwrap_or_default(),
                global,
                protocol: 0,
            });
        }
    }
    for (i, v) in d.vxlans.iter().enumerate() {
        let local = if v.family == Family::Ipv4 {
            LOCAL4
        } else {
            LOCAL6
        };
        o.links.insert(
            v.name.clone(),
            LinkState {
                name: v.name.clone(),
                index: 10 + i as u32,
                kind: "vxlan".into(),
                mtu: 1500 - v.family.vxlan_overhead(),
                mac: d.vxlan_mac(v),
                up: true,
                vxlan: Some(VxlanAttrs {
                    vni: v.vni,
                    port: v.port,
                    local: local.parse().ok(),
                    underlay_index: Some(2),
                    learning: v.learning,
                    gbp: v.gbp,
                }),
                alias: Some(netconverge::model::DEVICE_MARK.into()),
            },
        );
    }
    o.addresses
        .extend(d.addresses.iter().map(|a| a.state(ROUTE_PROTOCOL)));
    o.neighbors
        .extend(d.neighbors.iter().map(NeighborState::from));
    o.fdb.extend(d.fdb.iter().map(FdbState::from));
    for (i, r) in d.routes.iter().enumerate() {
        let nhid = nexthops.then_some(199_000_001 + i as u32);
        if let (Some(id), Some(via)) = (nhid, r.via) {
            o.nexthops.push(NexthopState {
                id,
                via: Some(via),
                dev: r.dev.clone(),
                onlink: r.onlink,
                protocol: ROUTE_PROTOCOL,
            });
        }
        o.routes.push(r.state(ROUTE_PROTOCOL, nhid));
    }
    o
}

/// A node with only its underlay (nothing converged yet).
pub fn empty(d: &Desired, nexthops: bool) -> netconverge::model::Observed {
    let mut o = converged(d, nexthops);
    o.links.retain(|name, _| name == UNDERLAY);
    o.addresses.retain(|a| a.dev == UNDERLAY);
    o.neighbors.clear();
    o.fdb.clear();
    o.routes.clear();
    o.nexthops.clear();
    o
}
