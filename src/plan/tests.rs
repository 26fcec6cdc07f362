//! Planner snapshots from hand-written desired/observed states (no root).

use std::net::IpAddr;

use ipnet::IpNet;

use super::*;
use crate::model::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

fn vxlan(name: &str, family: Family) -> VxlanSpec {
    VxlanSpec {
        name: name.into(),
        vni: 1,
        port: 8472,
        underlay: "eth0".into(),
        family,
        local: None,
        mac: None,
        mtu: None,
        learning: false,
        gbp: false,
    }
}

/// flannel's three objects for one peer.
fn add_peer(d: &mut Desired, dev: &str, subnet: &str, vtep_ip: &str, vtep_mac: &str) {
    d.add_peer(PeerSpec {
        dev: dev.into(),
        subnet: net(subnet),
        vtep_ip: ip(vtep_ip),
        vtep_mac: mac(vtep_mac),
    });
}

/// A k3s-style IPv4 node with two peers.
fn ipv4_node() -> Desired {
    let mut d = Desired {
        mac_seed: Some("node-a".into()),
        vxlans: vec![vxlan("flannel.1", Family::Ipv4)],
        addresses: vec![AddressSpec {
            dev: "flannel.1".into(),
            cidr: net("198.18.1.0/32"),
            origin: "address #1".into(),
        }],
        ..Desired::default()
    };
    add_peer(
        &mut d,
        "flannel.1",
        "198.18.2.0/24",
        "192.0.2.2",
        "02:00:00:00:00:02",
    );
    add_peer(
        &mut d,
        "flannel.1",
        "198.18.3.0/24",
        "192.0.2.3",
        "02:00:00:00:00:03",
    );
    d
}

/// ipv4_node plus an IPv6 VXLAN with one peer.
fn dual_node() -> Desired {
    let mut d = ipv4_node();
    d.vxlans.push(vxlan("flannel-v6.1", Family::Ipv6));
    d.addresses.push(AddressSpec {
        dev: "flannel-v6.1".into(),
        cidr: net("fd00:42:0:1::/128"),
        origin: "address #2".into(),
    });
    add_peer(
        &mut d,
        "flannel-v6.1",
        "fd00:42:0:2::/64",
        "2001:db8::2",
        "02:00:00:00:06:02",
    );
    d
}

fn link(name: &str, index: u32, kind: &str, mtu: u32) -> LinkState {
    LinkState {
        name: name.into(),
        index,
        kind: kind.into(),
        mtu,
        mac: Some(mac("02:aa:00:00:00:01")),
        up: true,
        vxlan: None,
        alias: None,
    }
}

/// A host with `eth0` (veth, MTU 1500) carrying the given addresses.
fn host(addrs: &[&str]) -> Observed {
    let mut o = Observed::default();
    o.links.insert("lo".into(), link("lo", 1, "", 65536));
    o.links.insert("eth0".into(), link("eth0", 2, "veth", 1500));
    for a in addrs {
        o.addresses.push(AddressState {
            dev: "eth0".into(),
            cidr: net(a),
            global: true,
            protocol: 0,
        });
    }
    o
}

/// The kernel state a successful converge of `d` leaves on `base`.
fn converged(d: &Desired, base: &Observed) -> Observed {
    let mut o = base.clone();
    let under = base.links.get("eth0").unwrap();
    for (i, v) in d.vxlans.iter().enumerate() {
        let local = base.first_global_addr(&v.underlay, v.family).unwrap();
        o.links.insert(
            v.name.clone(),
            LinkState {
                name: v.name.clone(),
                index: 10 + i as u32,
                kind: "vxlan".into(),
                mtu: under.mtu - v.family.vxlan_overhead(),
                mac: d.vxlan_mac(v),
                up: true,
                vxlan: Some(VxlanAttrs {
                    vni: v.vni,
                    port: v.port,
                    local: Some(local),
                    underlay_index: Some(under.index),
                    learning: v.learning,
                    gbp: v.gbp,
                }),
                alias: Some(DEVICE_MARK.into()),
            },
        );
    }
    o.addresses
        .extend(d.addresses.iter().map(|a| a.state(ROUTE_PROTOCOL)));
    o.neighbors
        .extend(d.neighbors.iter().map(NeighborState::from));
    o.fdb.extend(d.fdb.iter().map(FdbState::from));
    o.routes
        .extend(d.routes.iter().map(|r| r.state(ROUTE_PROTOCOL, None)));
    o
}

fn dual_host() -> Observed {
    host(&["192.0.2.1/24", "2001:db8::1/64"])
}

#[test]
fn empty_to_full_ipv4() {
    let p = plan(&ipv4_node(), &host(&["192.0.2.1/24"]));
    insta::assert_snapshot!(p.to_string());
}

#[test]
fn empty_to_full_dual_stack_json() {
    let p = plan(&dual_node(), &dual_host());
    insta::assert_json_snapshot!(p);
    // ops are ordered by stage: link before its address, L2 before routes
    let stages: Vec<Stage> = p.changes.iter().map(|c| c.op.stage()).collect();
    let mut sorted = stages.clone();
    sorted.sort();
    assert_eq!(stages, sorted);
}

#[test]
fn converged_state_plans_nothing() {
    let d = dual_node();
    let o = converged(&d, &dual_host());
    let p = plan(&d, &o);
    assert!(p.in_sync(), "{p}");
}

#[test]
fn plan_is_deterministic_regardless_of_dump_order() {
    let d = dual_node();
    let mut o = converged(&d, &dual_host());
    // stale objects in two different kernel orders
    for i in 0..5u8 {
        o.neighbors.push(NeighborState {
            dev: "flannel.1".into(),
            ip: ip(&format!("198.18.9.{i}")),
            mac: Some(mac("02:00:00:00:09:09")),
            permanent: true,
        });
    }
    let a = plan(&d, &o);
    o.neighbors.reverse();
    let b = plan(&d, &o);
    assert_eq!(a, b);
}

#[test]
fn each_kind_of_drift() {
    let d = ipv4_node();
    let mut o = converged(&d, &host(&["192.0.2.1/24"]));
    // mutable link attributes
    let l = o.links.get_mut("flannel.1").unwrap();
    l.mtu = 1500;
    l.up = false;
    l.mac = Some(mac("02:de:ad:be:ef:01"));
    // address removed by hand, a foreign one added to the owned device
    o.addresses.retain(|a| a.dev != "flannel.1");
    o.addresses.push(AddressState {
        dev: "flannel.1".into(),
        cidr: net("198.18.77.1/24"),
        global: true,
        protocol: 0,
    });
    // neighbour with a wrong MAC, one deleted, one stale
    o.neighbors[0].mac = Some(mac("02:00:00:00:00:99"));
    o.neighbors.remove(1);
    o.neighbors.push(NeighborState {
        dev: "flannel.1".into(),
        ip: ip("198.18.9.0"),
        mac: Some(mac("02:00:00:00:00:09")),
        permanent: true,
    });
    // fdb deleted, a stale one
    o.fdb.remove(0);
    o.fdb.push(FdbState {
        dev: "flannel.1".into(),
        mac: mac("02:00:00:00:00:09"),
        dst: Some(ip("192.0.2.9")),
        permanent: true,
    });
    // route edited (not onlink), one deleted, one added by hand (proto
    // static: not ours, left alone even on our device)
    o.routes[0].onlink = false;
    o.routes.remove(1);
    o.routes.push(RouteState {
        table: MAIN_TABLE,
        dst: net("198.18.9.0/24"),
        via: Some(ip("198.18.9.0")),
        dev: Some("flannel.1".into()),
        onlink: true,
        src: None,
        metric: None,
        protocol: 4,
        nhid: None,
    });
    insta::assert_snapshot!(plan(&d, &o).to_string());
}

#[test]
fn immutable_change_recreates_and_replays_dependents() {
    let d = ipv4_node();
    let mut o = converged(&d, &host(&["192.0.2.1/24"]));
    let attrs = o
        .links
        .get_mut("flannel.1")
        .unwrap()
        .vxlan
        .as_mut()
        .unwrap();
    attrs.vni = 2;
    attrs.port = 4789;
    insta::assert_snapshot!(plan(&d, &o).to_string());
}

#[test]
fn underlay_recreated_new_ifindex_changes_vxlan_in_place() {
    let d = ipv4_node();
    let mut o = converged(&d, &host(&["192.0.2.1/24"]));
    // NetworkManager rebuilt eth0: new ifindex; our (stale) device still points at 2
    o.links.get_mut("eth0").unwrap().index = 42;
    insta::assert_snapshot!(plan(&d, &o).to_string());
}

#[test]
fn underlay_missing_blocks_dependents_only() {
    let mut d = ipv4_node();
    // a route elsewhere that does not depend on the VXLAN still converges
    d.routes.push(RouteSpec {
        dst: net("198.51.100.0/24"),
        via: Some(ip("192.0.2.254")),
        dev: Some("lo".into()),
        onlink: true,
        src: None,
        metric: Some(100),
        table: 100,
        origin: "route #1".into(),
    });
    let mut o = Observed::default();
    o.links.insert("lo".into(), link("lo", 1, "", 65536));
    let p = plan(&d, &o);
    insta::assert_snapshot!(p.to_string());
    assert!(!p.blocked.is_empty());
    // each blocked entry carries what it stands for, summaries included
    use crate::plan::kind::{ObjectKind, blocked_by_kind};
    let peers = d.peers.len();
    let by_kind = blocked_by_kind(&p);
    assert_eq!(by_kind.get(ObjectKind::Device), 1, "{p}");
    assert_eq!(by_kind.get(ObjectKind::Address), d.addresses.len(), "{p}");
    assert!(by_kind.get(ObjectKind::Route) >= peers, "{p}");
}

#[test]
fn ipv4_only_underlay_with_ipv6_vxlan_is_blocked_not_a_panic() {
    // flannel's crash: indexing an empty IPv6 address list
    let p = plan(&dual_node(), &host(&["192.0.2.1/24"]));
    insta::assert_snapshot!(p.to_string());
    assert!(p.changes.iter().any(|c| c.object == "vxlan flannel.1"));
    assert!(p.changes.iter().all(|c| !c.object.contains("flannel-v6.1")));
}

#[test]
fn foreign_objects_are_untouched() {
    let d = ipv4_node();
    let mut o = converged(&d, &host(&["192.0.2.1/24"]));
    // a foreign device that happens to be VXLAN, with routes
    let mut other = link("vx-user", 7, "vxlan", 1450);
    other.vxlan = Some(VxlanAttrs {
        vni: 99,
        port: 4789,
        local: None,
        underlay_index: None,
        learning: true,
        gbp: false,
    });
    o.links.insert("vx-user".into(), other);
    let foreign_route = |dst: &str, dev: &str, protocol: u8| RouteState {
        table: MAIN_TABLE,
        dst: net(dst),
        via: None,
        dev: Some(dev.into()),
        onlink: false,
        src: None,
        metric: None,
        protocol,
        nhid: None,
    };
    // static route on the underlay, a user's route on the other VXLAN, the
    // kernel's connected route on our device, an RA route on our device
    o.routes.push(foreign_route("203.0.113.0/24", "eth0", 4));
    o.routes.push(foreign_route("198.19.0.0/16", "vx-user", 3));
    o.routes
        .push(foreign_route("198.18.1.0/24", "flannel.1", 2));
    o.routes.push(foreign_route("fd00:99::/64", "flannel.1", 9));
    // non-permanent neighbours on our device (kernel-managed), permanent on eth0
    o.neighbors.push(NeighborState {
        dev: "flannel.1".into(),
        ip: ip("198.18.8.8"),
        mac: Some(mac("02:00:00:00:08:08")),
        permanent: false,
    });
    o.neighbors.push(NeighborState {
        dev: "eth0".into(),
        ip: ip("192.0.2.77"),
        mac: Some(mac("02:00:00:00:07:07")),
        permanent: true,
    });
    // IPv6 link-local on our device
    o.addresses.push(AddressState {
        dev: "flannel.1".into(),
        cidr: net("fe80::1/64"),
        global: false,
        protocol: 0,
    });
    // learned fdb entry on our device
    o.fdb.push(FdbState {
        dev: "flannel.1".into(),
        mac: mac("02:00:00:00:05:05"),
        dst: Some(ip("192.0.2.5")),
        permanent: false,
    });
    let p = plan(&d, &o);
    assert!(p.in_sync(), "foreign objects must not be touched:\n{p}");

    // but a route carrying our marker anywhere is ours
    o.routes
        .push(foreign_route("203.0.113.128/25", "eth0", ROUTE_PROTOCOL));
    insta::assert_snapshot!(plan(&d, &o).to_string());
}

#[test]
fn device_with_our_name_but_not_vxlan_is_blocked() {
    let d = ipv4_node();
    let mut o = host(&["192.0.2.1/24"]);
    o.links
        .insert("flannel.1".into(), link("flannel.1", 5, "bridge", 1500));
    insta::assert_snapshot!(plan(&d, &o).to_string());
}

#[test]
fn explicit_local_mtu_and_mac_are_used() {
    let mut d = ipv4_node();
    let v = d.vxlans.get_mut(0).unwrap();
    v.local = Some(ip("192.0.2.100"));
    v.mtu = Some(1400);
    v.mac = Some(mac("02:11:22:33:44:55"));
    let p = plan(&d, &host(&["192.0.2.1/24"]));
    let Some(Op::CreateVxlan(c)) = p.changes.first().map(|c| &c.op) else {
        panic!("first op must create the device: {p}")
    };
    assert_eq!(c.local, ip("192.0.2.100"));
    assert_eq!(c.mtu, 1400);
    assert_eq!(c.mac, Some(mac("02:11:22:33:44:55")));
}

#[test]
fn ipv6_mtu_overhead_is_70() {
    let mut d = Desired {
        mac_seed: Some("n".into()),
        vxlans: vec![vxlan("flannel-v6.1", Family::Ipv6)],
        ..Desired::default()
    };
    d.lease = None;
    let p = plan(&d, &host(&["2001:db8::1/64"]));
    let Some(Op::CreateVxlan(c)) = p.changes.first().map(|c| &c.op) else {
        panic!("{p}")
    };
    assert_eq!(c.mtu, 1430);
}

#[test]
fn cleanup_removes_only_owned() {
    let d = ipv4_node();
    let mut o = converged(&d, &host(&["192.0.2.1/24"]));
    o.routes.push(RouteState {
        table: MAIN_TABLE,
        dst: net("203.0.113.0/24"),
        via: None,
        dev: Some("eth0".into()),
        onlink: false,
        src: None,
        metric: None,
        protocol: 4,
        nhid: None,
    });
    o.routes.push(RouteState {
        table: 100,
        dst: net("203.0.113.128/25"),
        via: None,
        dev: Some("eth0".into()),
        onlink: false,
        src: None,
        metric: None,
        protocol: ROUTE_PROTOCOL,
        nhid: None,
    });
    insta::assert_snapshot!(cleanup_plan(&d, &o).to_string());
}

#[test]
fn ten_thousand_peers_plan_in_sync() {
    let mut d = ipv4_node();
    for i in 0..10_000u32 {
        let a = 64 + (i >> 14);
        let b = (i >> 6) & 0xff;
        let c = (i & 0x3f) << 2;
        add_peer(
            &mut d,
            "flannel.1",
            &format!("100.{a}.{b}.{c}/30"),
            "192.0.2.2",
            &format!(
                "02:00:00:{:02x}:{:02x}:{:02x}",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff
            ),
        );
    }
    let o = converged(&d, &host(&["192.0.2.1/24"]));
    assert!(plan(&d, &o).in_sync());
    let empty = plan(&d, &host(&["192.0.2.1/24"]));
    assert_eq!(empty.changes.len(), 2 + 3 * 10_002);
}

/// Routes through kernel nexthop objects (`[engine] nexthops`).
mod nexthops {
    use super::*;

    const NH: u32 = 199_000_001;

    fn node(mode: NexthopMode) -> Desired {
        let mut d = ipv4_node();
        d.engine.nexthops = mode;
        d
    }

    /// A kernel with nexthop objects (Linux ≥ 5.3).
    fn nh_host() -> Observed {
        let mut o = host(&["192.0.2.1/24"]);
        o.nexthop_objects = true;
        o
    }

    fn nexthop(id: u32, via: &str, dev: &str, protocol: u8) -> NexthopState {
        NexthopState {
            id,
            via: Some(ip(via)),
            dev: Some(dev.into()),
            onlink: true,
            protocol,
        }
    }

    /// What a converge with nexthop objects leaves: one owned nexthop per
    /// gateway (ids from `first`), every gateway route through it, with the
    /// gateway/device the kernel reports in compat mode.
    fn converged_nh(d: &Desired, first: u32) -> Observed {
        let mut o = converged(d, &nh_host());
        let mut next = first;
        for r in o.routes.iter_mut() {
            let (Some(via), Some(dev)) = (r.via, r.dev.clone()) else {
                continue;
            };
            o.nexthops
                .push(nexthop(next, &via.to_string(), &dev, ROUTE_PROTOCOL));
            r.nhid = Some(next);
            next += 1;
        }
        o
    }

    fn stages(p: &Plan) -> Vec<Stage> {
        p.changes.iter().map(|c| c.op.stage()).collect()
    }

    #[test]
    fn empty_to_full_with_nexthops() {
        let p = plan(&node(NexthopMode::Auto), &nh_host());
        insta::assert_snapshot!(p.to_string());
        let mut sorted = stages(&p);
        sorted.sort();
        assert_eq!(stages(&p), sorted);
        let route = p
            .changes
            .iter()
            .find_map(|c| match &c.op {
                Op::SetRoute(r) => Some(r),
                _ => None,
            })
            .unwrap();
        assert_eq!(route.nhid, Some(NH));
    }

    #[test]
    fn converged_with_nexthops_plans_nothing() {
        let d = node(NexthopMode::On);
        let p = plan(&d, &converged_nh(&d, NH));
        assert!(p.in_sync(), "{p}");
        // owned ids are reused wherever they are, not re-derived
        let p = plan(&d, &converged_nh(&d, NH + 500));
        assert!(p.in_sync(), "{p}");
    }

    #[test]
    fn auto_without_kernel_support_is_exactly_classic() {
        let o = host(&["192.0.2.1/24"]);
        assert!(!o.nexthop_objects);
        assert_eq!(
            plan(&node(NexthopMode::Auto), &o),
            plan(&node(NexthopMode::Off), &o)
        );
        // ... and so is "off" on a kernel that has them
        let mut classic = plan(&node(NexthopMode::Off), &nh_host());
        let on_old_kernel = plan(&node(NexthopMode::Off), &o);
        assert_eq!(classic, on_old_kernel);
        classic
            .changes
            .retain(|c| matches!(c.op, Op::SetNexthop(_)));
        assert!(classic.changes.is_empty());
    }

    #[test]
    fn on_without_kernel_support_blocks_gateway_routes_only() {
        let p = plan(&node(NexthopMode::On), &host(&["192.0.2.1/24"]));
        insta::assert_snapshot!(p.to_string());
        assert!(
            p.changes
                .iter()
                .all(|c| !matches!(c.op, Op::SetRoute(_) | Op::SetNexthop(_)))
        );
    }

    #[test]
    fn new_ids_skip_every_taken_id_and_foreign_nexthops_stay() {
        let mut d = node(NexthopMode::Auto);
        let mut o = converged_nh(&d, NH + 1);
        // A foreign nexthop on the first free id, one with exactly our
        // gateway/device (not ours: never reused), a foreign group.
        o.nexthops.push(nexthop(NH, "198.18.4.0", "flannel.1", 4));
        o.nexthops
            .push(nexthop(NH + 3, "198.18.4.0", "flannel.1", 4));
        o.nexthops.push(NexthopState {
            id: 7,
            via: None,
            dev: None,
            onlink: false,
            protocol: 0,
        });
        add_peer(
            &mut d,
            "flannel.1",
            "198.18.4.0/24",
            "192.0.2.4",
            "02:00:00:00:00:04",
        );
        add_peer(
            &mut d,
            "flannel.1",
            "198.18.5.0/24",
            "192.0.2.5",
            "02:00:00:00:00:05",
        );
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(
            p.changes
                .iter()
                .all(|c| !matches!(c.op, Op::DelNexthop { .. })),
            "foreign nexthops are never removed: {p}"
        );
    }

    #[test]
    fn classic_to_nexthops_moves_routes_after_creating_them() {
        let d = node(NexthopMode::Auto);
        let mut o = converged(&d, &nh_host());
        o.nexthop_objects = true;
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert_eq!(
            stages(&p),
            [
                Stage::Nexthops,
                Stage::Nexthops,
                Stage::Routes,
                Stage::Routes
            ]
        );
    }

    #[test]
    fn nexthops_to_classic_removes_them_after_the_routes_moved() {
        let d = node(NexthopMode::Auto);
        let o = converged_nh(&d, NH);
        let p = plan(&node(NexthopMode::Off), &o);
        insta::assert_snapshot!(p.to_string());
        assert_eq!(
            stages(&p),
            [
                Stage::Routes,
                Stage::Routes,
                Stage::PruneNexthops,
                Stage::PruneNexthops
            ]
        );
    }

    #[test]
    fn each_kind_of_nexthop_drift() {
        let mut d = node(NexthopMode::Auto);
        let mut o = converged_nh(&d, NH);
        // Peer 3 left the cluster: its route and nexthop are stale. Peer 2's
        // route was pointed at someone else's nexthop by hand, and a
        // duplicate of its nexthop appeared (higher id: unused).
        d.neighbors.retain(|n| n.ip != ip("198.18.3.0"));
        d.fdb.retain(|f| f.dst != ip("192.0.2.3"));
        d.routes.retain(|r| r.dst != net("198.18.3.0/24"));
        o.nexthops
            .push(nexthop(NH + 50, "198.18.2.0", "flannel.1", 4));
        o.nexthops
            .push(nexthop(NH + 60, "198.18.2.0", "flannel.1", ROUTE_PROTOCOL));
        o.routes[0].nhid = Some(NH + 50);
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        let del = p
            .changes
            .iter()
            .find_map(|c| match &c.op {
                Op::DelRoute(r) => Some(r),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            del.nhid,
            Some(NH + 1),
            "the kernel matches an IPv4 route through a nexthop only by its id"
        );
    }

    #[test]
    fn recreated_vxlan_gets_its_nexthops_back_under_the_same_ids() {
        let d = node(NexthopMode::Auto);
        let mut o = converged_nh(&d, NH + 10);
        // gbp cannot change in place
        let l = o.links.get_mut("flannel.1").unwrap();
        l.vxlan.as_mut().unwrap().gbp = true;
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
    }

    #[test]
    fn blocked_device_keeps_its_nexthops() {
        let d = node(NexthopMode::Auto);
        let mut o = converged_nh(&d, NH);
        o.links.get_mut("flannel.1").unwrap().kind = "bridge".into();
        let p = plan(&d, &o);
        assert!(
            p.changes.iter().all(|c| !matches!(
                c.op,
                Op::DelNexthop { .. } | Op::SetNexthop(_) | Op::DelRoute(_)
            )),
            "{p}"
        );
        assert!(!p.blocked.is_empty());
    }

    #[test]
    fn cleanup_removes_owned_nexthops_too() {
        let d = node(NexthopMode::Auto);
        let mut o = converged_nh(&d, NH);
        o.nexthops
            .push(nexthop(NH + 9, "192.0.2.254", "eth0", ROUTE_PROTOCOL));
        o.nexthops.push(nexthop(NH + 8, "192.0.2.253", "eth0", 4));
        insta::assert_snapshot!(cleanup_plan(&d, &o).to_string());
    }

    #[test]
    fn dual_stack_ten_thousand_peers_in_sync_with_nexthops() {
        let mut d = dual_node();
        d.engine.nexthops = NexthopMode::Auto;
        for i in 0..10_000u32 {
            add_peer(
                &mut d,
                "flannel.1",
                &format!("100.{}.{}.0/24", 64 + (i >> 8), i & 0xff),
                "192.0.2.2",
                &format!("02:01:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
            );
        }
        let mut base = dual_host();
        base.nexthop_objects = true;
        let mut o = converged(&d, &base);
        for (i, r) in o.routes.iter_mut().enumerate() {
            let id = NH + i as u32;
            o.nexthops.push(nexthop(
                id,
                &r.via.unwrap().to_string(),
                r.dev.as_deref().unwrap(),
                ROUTE_PROTOCOL,
            ));
            r.nhid = Some(id);
        }
        assert!(plan(&d, &o).in_sync());
        let empty = plan(&d, &base);
        let nexthops = empty
            .changes
            .iter()
            .filter(|c| matches!(c.op, Op::SetNexthop(_)))
            .count();
        assert_eq!(nexthops, 10_003);
    }
}

/// Ownership (issue 11): foreign objects are conflicts, never taken;
/// everything netconverge created is recognised without the file.
mod ownership {
    use super::*;

    fn foreign_route(dst: &str, via: &str, dev: &str, protocol: u8) -> RouteState {
        RouteState {
            table: MAIN_TABLE,
            dst: net(dst),
            via: Some(ip(via)),
            dev: Some(dev.into()),
            onlink: false,
            src: None,
            metric: None,
            protocol,
            nhid: None,
        }
    }

    fn default_route(d: &mut Desired) {
        d.routes.push(RouteSpec {
            dst: net("0.0.0.0/0"),
            via: Some(ip("192.0.2.254")),
            dev: Some("eth0".into()),
            onlink: false,
            src: None,
            metric: None,
            table: MAIN_TABLE,
            origin: "route #1".into(),
        });
    }

    fn ops(p: &Plan) -> Vec<&Op> {
        p.changes.iter().map(|c| &c.op).collect()
    }

    #[test]
    fn foreign_routes_at_declared_places_are_conflicts() {
        let mut d = ipv4_node();
        default_route(&mut d);
        let mut o = converged(&d, &host(&["192.0.2.1/24"]));
        // DHCP's default route, and a static route on peer 2's pod prefix
        o.routes
            .retain(|r| r.dst != net("0.0.0.0/0") && r.dst != net("198.18.2.0/24"));
        o.routes
            .push(foreign_route("0.0.0.0/0", "192.0.2.253", "eth0", 16));
        o.routes
            .push(foreign_route("198.18.2.0/24", "192.0.2.7", "eth0", 4));
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(p.changes.is_empty(), "nothing replaced: {p}");
        assert_eq!(p.blocked.len(), 2);
        // and cleanup never names them
        let c = cleanup_plan(&d, &o);
        assert!(
            c.changes
                .iter()
                .all(|c| !matches!(&c.op, Op::DelRoute(r) if r.protocol != ROUTE_PROTOCOL)),
            "{c}"
        );
    }

    #[test]
    fn conflict_is_named_while_the_device_does_not_exist_yet() {
        let d = ipv4_node();
        // no underlay address yet: flannel.1 cannot be created
        let mut o = host(&[]);
        o.routes
            .push(foreign_route("198.18.3.0/24", "192.0.2.7", "eth0", 3));
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(
            p.blocked
                .iter()
                .any(|b| b.object.starts_with("route 198.18.3.0/24")
                    && b.reason.contains("proto boot")
                    && b.reason.contains("dev eth0"))
        );
    }

    #[test]
    fn adopted_route_is_replaced_and_says_so() {
        let mut d = ipv4_node();
        default_route(&mut d);
        d.adopt.routes.insert((MAIN_TABLE, net("0.0.0.0/0"), None));
        let mut o = converged(&d, &host(&["192.0.2.1/24"]));
        o.routes.retain(|r| r.dst != net("0.0.0.0/0"));
        o.routes
            .push(foreign_route("0.0.0.0/0", "192.0.2.253", "eth0", 16));
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(p.blocked.is_empty());
    }

    #[test]
    fn adopting_the_vxlan_does_not_take_routes_on_other_devices_but_adopting_the_peer_does() {
        let mut d = ipv4_node();
        d.adopt.vxlans.insert("flannel.1".into());
        let mut o = converged(&d, &host(&["192.0.2.1/24"]));
        o.routes.retain(|r| r.dst != net("198.18.2.0/24"));
        o.routes
            .push(foreign_route("198.18.2.0/24", "192.0.2.7", "eth0", 4));
        let p = plan(&d, &o);
        assert_eq!(p.blocked.len(), 1, "{p}");
        d.adopt
            .routes
            .insert((MAIN_TABLE, net("198.18.2.0/24"), None));
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(p.blocked.is_empty(), "{p}");
    }

    #[test]
    fn undeclared_address_of_ours_on_an_underlay_is_removed_foreign_ones_stay() {
        let d = ipv4_node();
        let mut o = converged(&d, &host(&["192.0.2.1/24", "192.0.2.60/24"]));
        o.addresses.push(AddressState {
            dev: "eth0".into(),
            cidr: net("192.0.2.50/24"),
            global: true,
            protocol: ROUTE_PROTOCOL,
        });
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert_eq!(
            ops(&p),
            [&Op::DelAddress {
                dev: "eth0".into(),
                cidr: net("192.0.2.50/24")
            }]
        );
    }

    #[test]
    fn vxlan_not_created_by_us_is_blocked_and_kept_with_its_address() {
        let d = ipv4_node();
        let mut o = converged(&d, &host(&["192.0.2.1/24"]));
        let l = o.links.get_mut("flannel.1").unwrap();
        l.alias = None;
        l.mac = Some(mac("02:aa:bb:cc:dd:ee"));
        o.addresses.push(AddressState {
            dev: "flannel.1".into(),
            cidr: net("198.18.99.1/24"),
            global: true,
            protocol: 0,
        });
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(p.changes.is_empty(), "{p}");
        let c = cleanup_plan(&d, &o);
        insta::assert_snapshot!("foreign_vxlan_cleanup", c.to_string());
        assert!(
            c.changes
                .iter()
                .all(|c| !matches!(c.op, Op::DeleteLink { .. }))
        );
    }

    /// Migrating a flannel node: flannel.1 and its proto-boot peer routes
    /// exist; `adopt = true` takes them over in place (no gap).
    #[test]
    fn adopting_flannel_device_and_its_boot_routes() {
        let mut d = ipv4_node();
        d.vxlans[0].mac = Some(mac("02:f1:a2:00:00:01"));
        d.adopt.vxlans.insert("flannel.1".into());
        let mut o = converged(&d, &host(&["192.0.2.1/24"]));
        o.links.get_mut("flannel.1").unwrap().alias = None;
        for r in &mut o.routes {
            r.protocol = 3;
        }
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(p.blocked.is_empty(), "{p}");
        assert!(
            ops(&p)
                .iter()
                .all(|op| matches!(op, Op::MarkLink { .. } | Op::SetRoute(_))),
            "only a mark and in-place replacements: {p}"
        );
    }

    #[test]
    fn device_of_an_older_version_is_recognised_by_its_derived_mac_and_marked() {
        let d = ipv4_node();
        let mut o = converged(&d, &host(&["192.0.2.1/24"]));
        o.links.get_mut("flannel.1").unwrap().alias = None;
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert_eq!(
            ops(&p),
            [&Op::MarkLink {
                name: "flannel.1".into()
            }]
        );
    }

    #[test]
    fn renamed_vxlan_same_vni_is_renamed_in_place() {
        let old = ipv4_node();
        let o = converged(&old, &host(&["192.0.2.1/24"]));
        let mut d = old.clone();
        rename(&mut d, "flannel.2");
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert_eq!(
            p.changes.first().map(|c| &c.op),
            Some(&Op::RenameLink {
                from: "flannel.1".into(),
                to: "flannel.2".into()
            })
        );
        assert!(
            ops(&p).iter().all(|op| !matches!(
                op,
                Op::DelRoute(_) | Op::DeleteLink { .. } | Op::RetireLink { .. }
            )),
            "{p}"
        );
    }

    fn rename(d: &mut Desired, to: &str) {
        d.vxlans[0].name = to.into();
        for a in &mut d.addresses {
            a.dev = to.into();
        }
        for n in &mut d.neighbors {
            n.dev = to.into();
        }
        for f in &mut d.fdb {
            f.dev = to.into();
        }
        for r in &mut d.routes {
            r.dev = Some(to.into());
        }
        for p in &mut d.peers {
            p.dev = to.into();
        }
    }

    #[test]
    fn renamed_vxlan_other_vni_moves_routes_before_the_old_device_goes() {
        let old = ipv4_node();
        let o = converged(&old, &host(&["192.0.2.1/24"]));
        let mut d = old.clone();
        rename(&mut d, "flannel.2");
        d.vxlans[0].vni = 2;
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        let stages: Vec<Stage> = p.changes.iter().map(|c| c.op.stage()).collect();
        assert_eq!(stages.last(), Some(&Stage::RetireLinks));
        assert!(
            !ops(&p).iter().any(|op| matches!(op, Op::DelRoute(_))),
            "{p}"
        );
    }

    #[test]
    fn undeclared_device_of_ours_is_a_leftover_and_cleanup_removes_it_without_the_file() {
        let old = ipv4_node();
        let o = converged(&old, &host(&["192.0.2.1/24"]));
        // the edited file no longer has any [[vxlan]]
        let d = Desired {
            mac_seed: old.mac_seed.clone(),
            ..Desired::default()
        };
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        let c = cleanup_plan(&d, &o);
        insta::assert_snapshot!("edited_file_cleanup", c.to_string());
        assert!(c.changes.iter().any(|c| c.op
            == Op::DeleteLink {
                name: "flannel.1".into()
            }));
    }

    #[test]
    fn protocol_change_sweeps_old_routes_and_nexthops_after_the_new_ones() {
        let mut old = ipv4_node();
        old.engine.nexthops = NexthopMode::Auto;
        let mut o = converged(&old, &host(&["192.0.2.1/24"]));
        o.nexthop_objects = true;
        for (id, r) in (199_000_001..).zip(o.routes.iter_mut()) {
            o.nexthops.push(NexthopState {
                id,
                via: r.via,
                dev: r.dev.clone(),
                onlink: true,
                protocol: 199,
            });
            r.nhid = Some(id);
        }
        // an undeclared route of the old protocol elsewhere
        let mut extra = foreign_route("203.0.113.0/24", "192.0.2.254", "eth0", 199);
        extra.table = 100;
        o.routes.push(extra);
        o.past_protocols.insert(199);
        let mut d = old.clone();
        d.engine.route_protocol = 200;
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        let stages: Vec<Stage> = p.changes.iter().map(|c| c.op.stage()).collect();
        let first_prune = stages.iter().position(|s| *s == Stage::PruneNexthops);
        let last_route = stages.iter().rposition(|s| *s == Stage::Routes);
        assert!(first_prune > last_route, "{p}");
        let c = cleanup_plan(&d, &o);
        insta::assert_snapshot!("protocol_change_cleanup", c.to_string());
    }

    #[test]
    fn new_local_is_changed_in_place() {
        let d = ipv4_node();
        let mut o = converged(&d, &host(&["192.0.2.5/24"]));
        let l = o.links.get_mut("flannel.1").unwrap();
        l.vxlan.as_mut().unwrap().local = Some(ip("192.0.2.1"));
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert_eq!(
            ops(&p),
            [&Op::SetVxlan {
                name: "flannel.1".into(),
                local: Some(ip("192.0.2.5")),
                underlay: None,
                learning: None,
            }]
        );
    }

    /// After `plan`, as the kernel model leaves it, re-planning is empty.
    fn assert_one_pass(d: &Desired, o: &Observed, p: &Plan) {
        let after = simulate::simulate(o, p);
        let again = plan(d, &after);
        assert!(again.changes.is_empty(), "first:\n{p}\nagain:\n{again}");
    }

    #[test]
    fn foreign_route_through_a_retired_device_is_not_a_conflict_the_device_goes_first() {
        // flannel.1 (vni 1) becomes flannel.2 (vni 2): no rename, flannel.1
        // is retired. An operator replaced a peer route through it with
        // proto static: it holds a declared place, and goes only with our
        // device — so flannel.1 is deleted first, not last.
        let old = ipv4_node();
        let mut o = converged(&old, &host(&["192.0.2.1/24"]));
        let held = o
            .routes
            .iter_mut()
            .find(|r| r.dst == net("198.18.2.0/24"))
            .unwrap();
        held.protocol = 4;
        let mut d = old.clone();
        rename(&mut d, "flannel.2");
        d.vxlans[0].vni = 2;
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(p.blocked.is_empty(), "{p}");
        assert!(
            ops(&p).contains(&&Op::DeleteLink {
                name: "flannel.1".into()
            }),
            "{p}"
        );
        assert!(
            !ops(&p)
                .iter()
                .any(|op| matches!(op, Op::RetireLink { .. } | Op::DelRoute(_))),
            "{p}"
        );
        assert_one_pass(&d, &o, &p);
    }

    #[test]
    fn retired_device_holding_the_vni_of_a_recreated_one_goes_first() {
        // The file had flannel.1 (vni 2) and flannel.2 (vni 1); now only
        // flannel.1, with vni 1. flannel.2 holds vni 1 until it is deleted,
        // so it goes before the create (the kernel refuses a second device
        // with the same VNI and port: EEXIST).
        let d = ipv4_node();
        let mut old = ipv4_node();
        old.vxlans[0].vni = 2;
        let mut second = vxlan("flannel.2", Family::Ipv4);
        second.vni = 1;
        old.vxlans.push(second);
        let o = converged(&old, &host(&["192.0.2.1/24"]));
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        let stage_of = |name: &str| {
            p.changes
                .iter()
                .find(|c| c.object == format!("vxlan {name}") && c.kind == ChangeKind::Remove)
                .map(|c| c.op.stage())
        };
        assert_eq!(stage_of("flannel.2"), Some(Stage::DeleteLinks), "{p}");
        assert_eq!(stage_of("flannel.1"), Some(Stage::DeleteLinks), "{p}");
        assert_one_pass(&d, &o, &p);
        // Control: a retired device holding another VNI still goes last.
        let mut old = ipv4_node();
        let mut second = vxlan("flannel.2", Family::Ipv4);
        second.vni = 3;
        old.vxlans.push(second);
        let o = converged(&old, &host(&["192.0.2.1/24"]));
        let p = plan(&d, &o);
        assert_eq!(
            ops(&p),
            [&Op::RetireLink {
                name: "flannel.2".into()
            }]
        );
    }

    #[test]
    fn derived_local_is_not_an_underlay_address_this_plan_removes() {
        // eth0's first address is one of ours the file no longer declares
        // (removed as stale): the device takes the next one.
        let d = ipv4_node();
        let mut o = host(&["192.0.2.1/24"]);
        o.addresses.insert(
            0,
            AddressState {
                dev: "eth0".into(),
                cidr: net("192.0.2.77/24"),
                global: true,
                protocol: ROUTE_PROTOCOL,
            },
        );
        let p = plan(&d, &o);
        insta::assert_snapshot!(p.to_string());
        assert!(
            p.changes
                .iter()
                .any(|c| matches!(&c.op, Op::CreateVxlan(v) if v.local == ip("192.0.2.1"))),
            "{p}"
        );
        assert_one_pass(&d, &o, &p);
        // Control: declared, the same address stays and is the local.
        let mut d2 = d.clone();
        d2.addresses.push(AddressSpec {
            dev: "eth0".into(),
            cidr: net("192.0.2.77/24"),
            origin: "address #2".into(),
        });
        let p = plan(&d2, &o);
        assert!(
            p.changes
                .iter()
                .any(|c| matches!(&c.op, Op::CreateVxlan(v) if v.local == ip("192.0.2.77"))),
            "{p}"
        );
    }

    #[test]
    fn peer_with_this_nodes_own_vtep_is_blocked() {
        let mut d = ipv4_node();
        add_peer(
            &mut d,
            "flannel.1",
            "198.18.4.0/24",
            "192.0.2.1",
            "02:00:00:00:00:04",
        );
        let p = plan(&d, &host(&["192.0.2.1/24"]));
        insta::assert_snapshot!(p.to_string());
        assert!(!p.to_string().contains("198.18.4.0 "), "{p}");
        assert!(
            p.blocked
                .iter()
                .any(|b| b.object == "peer 198.18.4.0/24 dev flannel.1")
        );
    }
}

#[test]
fn derived_mtu_below_1280_blocks_a_device_with_ipv6_only() {
    // underlay 1300 − 70 = 1230: the kernel would refuse the IPv6 address
    // and drop the IPv6 routes every pass. Validation cannot see this.
    let d = dual_node();
    let mut o = host(&["192.0.2.1/24", "2001:db8::1/64"]);
    o.links.insert("eth0".into(), link("eth0", 2, "veth", 1300));
    let p = plan(&d, &o);
    let b = p
        .blocked
        .iter()
        .find(|b| b.object == "vxlan flannel-v6.1")
        .unwrap_or_else(|| panic!("not blocked:\n{p}"));
    assert!(
        b.reason.contains("1230") && b.reason.contains("1280"),
        "{b:?}"
    );
    assert!(p.changes.iter().all(|c| !c.object.contains("flannel-v6.1")));
    // Control: the IPv4 device on the same underlay (1250) is created.
    assert!(
        p.changes.iter().any(|c| c.object == "vxlan flannel.1"),
        "{p}"
    );
    // Control: 1350 − 70 = 1280 is enough.
    o.links.insert("eth0".into(), link("eth0", 2, "veth", 1350));
    let p = plan(&d, &o);
    assert!(p.blocked.is_empty(), "{p}");
}

/// An unmarked VXLAN device `name` holding (vni 1, port 8472, ipv4) with `gbp`.
fn foreign_vxlan(o: &mut Observed, name: &str, gbp: bool) {
    let mut l = link(name, 30, "vxlan", 1450);
    l.vxlan = Some(VxlanAttrs {
        vni: 1,
        port: 8472,
        local: Some(ip("192.0.2.1")),
        underlay_index: Some(2),
        learning: false,
        gbp,
    });
    o.links.insert(name.into(), l);
}

#[test]
fn foreign_vni_holder_counts_gbp_like_the_kernel() {
    // The kernel's identity of a VXLAN device includes its receive flags
    // (GBP): a foreign vni-1 device with GBP does not stop ours without it.
    let d = ipv4_node();
    let mut o = host(&["192.0.2.1/24"]);
    foreign_vxlan(&mut o, "vx-foreign", true);
    let p = plan(&d, &o);
    assert!(p.blocked.is_empty(), "{p}");
    assert!(
        p.changes
            .iter()
            .any(|c| matches!(&c.op, Op::CreateVxlan(v) if v.name == "flannel.1")),
        "{p}"
    );
    // Control: the same holder without GBP blocks the create.
    let mut o = host(&["192.0.2.1/24"]);
    foreign_vxlan(&mut o, "vx-foreign", false);
    let p = plan(&d, &o);
    assert!(
        p.blocked
            .iter()
            .any(|b| b.object == "vxlan flannel.1" && b.reason.contains("vx-foreign")),
        "{p}"
    );
    assert!(p.changes.is_empty(), "{p}");
}

#[test]
fn recreate_for_a_vni_a_foreign_device_holds_is_blocked_and_keeps_ours() {
    let d = ipv4_node();
    let o0 = host(&["192.0.2.1/24"]);
    let mut o = converged(&d, &o0);
    // Ours runs vni 2; the file now says vni 1, which vx-foreign holds.
    if let Some(a) = o.links.get_mut("flannel.1").and_then(|l| l.vxlan.as_mut()) {
        a.vni = 2;
    }
    foreign_vxlan(&mut o, "vx-foreign", false);
    let p = plan(&d, &o);
    assert!(
        p.changes.iter().all(|c| !matches!(
            c.op,
            Op::DeleteLink { .. } | Op::CreateVxlan(_) | Op::DelRoute(_)
        )),
        "{p}"
    );
    assert!(
        p.blocked
            .iter()
            .any(|b| b.object == "vxlan flannel.1" && b.reason.contains("vx-foreign")),
        "{p}"
    );
    // Control: without the holder the device is recreated.
    o.links.remove("vx-foreign");
    let p = plan(&d, &o);
    assert!(
        p.changes
            .iter()
            .any(|c| matches!(&c.op, Op::DeleteLink { name } if name == "flannel.1")),
        "{p}"
    );
}
