//! Property tests of the kernel planner against the kernel model
//! (`netconverge::plan::simulate`), over generated desired states (VXLAN
//! devices v4/v6, addresses, peers, routes, adopt flags, nexthop modes, an
//! old route protocol) and generated observed states (empty host; converged
//! to the same or another file, then perturbed; foreign routes, devices,
//! addresses and nexthops at and beside declared places).
//!
//! Invariant under test: one plan, applied by a perfect kernel, converges
//! (re-planning is empty, nothing newly blocked); no op removes or changes
//! an object netconverge does not own; the plan is deterministic (also for
//! shuffled kernel dumps) and ordered by stage; `cleanup` removes all that
//! is ours and nothing else. No root needed: pure functions only.
//!
//! NAT and the lease are not generated (`desired.nat`/`lease` are `None`):
//! the model does not simulate their rendered rule sets and files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use netconverge::model::{
    AddressSpec, AddressState, DEVICE_MARK, Desired, EngineSpec, Family, FdbSpec, FdbState,
    LinkState, MAIN_TABLE, Mac, NeighborSpec, NeighborState, NexthopMode, NexthopState, Observed,
    PeerSpec, RouteSpec, RouteState, VxlanAttrs, VxlanSpec,
};
use netconverge::plan::simulate::{apply_to, simulate};
use netconverge::plan::{Op, Plan, cleanup_plan, plan};

const PROTO: u8 = 199;
/// A route protocol netconverge used before (in its record when `past`).
const OLD_PROTO: u8 = 198;
const V4: &str = "flannel.1";
const V6: &str = "flannel-v6.1";
const V4_OLD: &str = "flannel.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

// ---------------------------------------------------------------- desired --

#[derive(Debug, Clone)]
struct VxGen {
    vni_alt: bool,
    underlay_alt: bool,
    local_explicit: bool,
    learning: bool,
    gbp: bool,
    mtu_explicit: bool,
    adopt: bool,
    addr_alt: bool,
    /// Peer numbers (2..=5).
    peers: BTreeSet<u8>,
}

#[derive(Debug, Clone)]
struct RouteGen {
    /// Index into [`route_menu`].
    which: usize,
    metric: bool,
    adopt: bool,
}

#[derive(Debug, Clone)]
struct DesiredGen {
    v4: Option<VxGen>,
    v6: Option<VxGen>,
    routes: Vec<RouteGen>,
    nexthops: NexthopMode,
    /// Protocol 198 is in the record (routes carrying it are ours).
    past: bool,
    /// The IPv4 device is called `flannel.2` (a rename between files).
    v4_renamed: bool,
}

impl DesiredGen {
    fn v4_name(&self) -> &'static str {
        if self.v4_renamed { V4_OLD } else { V4 }
    }
}

fn vx_gen() -> impl Strategy<Value = VxGen> {
    (
        any::<[bool; 8]>(),
        proptest::collection::btree_set(2u8..=5, 0..=3),
    )
        .prop_map(|(b, peers)| VxGen {
            vni_alt: b[0],
            underlay_alt: b[1],
            local_explicit: b[2],
            learning: b[3],
            gbp: b[4] && b[5],
            mtu_explicit: b[5],
            adopt: b[6],
            addr_alt: b[7],
            peers,
        })
}

fn desired_gen() -> impl Strategy<Value = DesiredGen> {
    (
        proptest::option::weighted(0.8, vx_gen()),
        proptest::option::weighted(0.5, vx_gen()),
        proptest::collection::vec(
            (0..ROUTES, any::<bool>(), proptest::bool::weighted(0.2)).prop_map(
                |(which, metric, adopt)| RouteGen {
                    which,
                    metric,
                    adopt,
                },
            ),
            0..=2,
        ),
        prop_oneof![
            Just(NexthopMode::Auto),
            Just(NexthopMode::Off),
            Just(NexthopMode::On)
        ],
        any::<bool>(),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(v4, v6, routes, nexthops, past, v4_renamed)| DesiredGen {
            v4,
            v6,
            routes,
            nexthops,
            past,
            v4_renamed,
        })
}

const ROUTES: usize = 5;

/// (dst, via, dev, table) of the declarable `[[route]]`s; `dev` `None`
/// lets the kernel pick. `flannel.1` routes fall back to eth1 without it.
fn route_menu(i: usize, v4: Option<&str>) -> (IpNet, Option<IpAddr>, Option<String>, u32) {
    match i {
        0 => (
            net("0.0.0.0/0"),
            Some(ip("192.0.2.254")),
            Some("eth0".into()),
            MAIN_TABLE,
        ),
        1 => (
            net("198.19.0.0/16"),
            Some(ip("192.0.2.254")),
            None,
            MAIN_TABLE,
        ),
        2 => (
            net("198.18.100.0/24"),
            None,
            Some(v4.unwrap_or("eth1").into()),
            MAIN_TABLE,
        ),
        3 => (
            net("fd00:99::/64"),
            Some(ip("2001:db8::fe")),
            Some("eth0".into()),
            MAIN_TABLE,
        ),
        _ => (net("198.19.0.0/16"), None, Some("eth1".into()), 100),
    }
}

fn peer_subnet(family: Family, n: u8) -> IpNet {
    match family {
        Family::Ipv4 => net(&format!("198.18.{n}.0/24")),
        Family::Ipv6 => net(&format!("fd00:42:0:{n}::/64")),
    }
}

fn build_desired(g: &DesiredGen) -> Desired {
    let mut d = Desired {
        mac_seed: Some("node-a".into()),
        engine: EngineSpec {
            route_protocol: PROTO,
            nexthops: g.nexthops,
        },
        ..Desired::default()
    };
    for (family, name, spec) in [
        (Family::Ipv4, g.v4_name(), &g.v4),
        (Family::Ipv6, V6, &g.v6),
    ] {
        let Some(s) = spec else { continue };
        let underlay = if s.underlay_alt && family == Family::Ipv4 {
            "eth1"
        } else {
            "eth0"
        };
        let local = s.local_explicit.then(|| match (family, underlay) {
            (Family::Ipv4, "eth1") => ip("198.51.100.1"),
            (Family::Ipv4, _) => ip("192.0.2.1"),
            (Family::Ipv6, _) => ip("2001:db8::1"),
        });
        d.vxlans.push(VxlanSpec {
            name: name.into(),
            vni: if s.vni_alt { 2 } else { 1 },
            port: 8472,
            underlay: underlay.into(),
            family,
            local,
            mac: None,
            mtu: s.mtu_explicit.then_some(1400),
            learning: s.learning,
            gbp: s.gbp,
        });
        if s.adopt {
            d.adopt.vxlans.insert(name.into());
        }
        let cidr = match (family, s.addr_alt) {
            (Family::Ipv4, false) => net("198.18.1.0/32"),
            (Family::Ipv4, true) => net("198.18.1.1/32"),
            (Family::Ipv6, false) => net("fd00:42:0:1::/128"),
            (Family::Ipv6, true) => net("fd00:42:0:1::1/128"),
        };
        d.addresses.push(AddressSpec {
            dev: name.into(),
            cidr,
            origin: "address #1".into(),
        });
        for n in &s.peers {
            let subnet = peer_subnet(family, *n);
            let (vtep_ip, vtep_mac) = match family {
                Family::Ipv4 => (ip(&format!("192.0.2.{n}")), Mac([2, 0, 0, 0, 4, *n])),
                Family::Ipv6 => (ip(&format!("2001:db8::{n}")), Mac([2, 0, 0, 0, 6, *n])),
            };
            let origin = format!("peer {subnet}");
            d.peers.push(PeerSpec {
                dev: name.into(),
                subnet,
                vtep_ip,
                vtep_mac,
            });
            d.neighbors.push(NeighborSpec {
                dev: name.into(),
                ip: subnet.network(),
                mac: vtep_mac,
                origin: origin.clone(),
            });
            d.fdb.push(FdbSpec {
                dev: name.into(),
                mac: vtep_mac,
                dst: vtep_ip,
                origin: origin.clone(),
            });
            d.routes.push(RouteSpec {
                dst: subnet,
                via: Some(subnet.network()),
                dev: Some(name.into()),
                onlink: true,
                src: None,
                metric: None,
                table: MAIN_TABLE,
                origin,
            });
        }
    }
    let mut keys = BTreeSet::new();
    for (i, r) in g.routes.iter().enumerate() {
        let (dst, via, dev, table) = route_menu(r.which, g.v4.as_ref().map(|_| g.v4_name()));
        let metric = r.metric.then_some(100);
        // Validation refuses two routes at one place.
        if !keys.insert((table, dst, metric)) {
            continue;
        }
        if r.adopt {
            d.adopt.routes.insert((table, dst, metric));
        }
        d.routes.push(RouteSpec {
            dst,
            via,
            dev,
            onlink: false,
            src: None,
            metric,
            table,
            origin: format!("route #{}", i + 1),
        });
    }
    d
}

// --------------------------------------------------------------- observed --

/// Outside changes to a state netconverge converged (indices wrap).
#[derive(Debug, Clone)]
enum Perturb {
    DelRoute(usize),
    DelAddress(usize),
    DelNeighbor(usize),
    DelFdb(usize),
    DelNexthop(usize),
    DelLink(usize),
    LinkMtu(usize),
    LinkDown(usize),
    LinkUnmark(usize),
    LinkMac(usize),
    NeighborMac(usize),
    NeighborNotPermanent(usize),
    /// Someone replaced one of our routes with theirs (proto static).
    RouteForeign(usize),
}

/// Objects netconverge did not create.
#[derive(Debug, Clone)]
enum Foreign {
    /// At a peer's place (family, peer number), through eth0 or our device.
    RouteAtPeer(bool, u8, u8, bool),
    /// At a declarable route's place (menu index, metric), through eth0.
    RouteAtDeclared(usize, bool, u8),
    /// Beside a peer's place: same dst, metric 50.
    RouteBeside(u8, u8),
    /// A route with the old protocol (ours only when it is in the record).
    OldProtoRoute(u8),
    Bridge,
    /// An unmarked VXLAN device (name index, vni alt, v6).
    Vxlan(u8, bool, bool),
    /// An address on eth0, with our protocol or none.
    UnderlayAddress(bool),
    /// A nexthop object (id in our range or not, protocol).
    Nexthop(bool, u8),
    Neighbor,
}

#[derive(Debug, Clone)]
struct ObservedGen {
    nexthop_objects: bool,
    eth0_mtu_low: bool,
    eth0_no_v6: bool,
    /// 0: empty host; 1: converged to the desired file; 2: to another.
    prior_kind: u8,
    prior: DesiredGen,
    /// The other file used route protocol 198 (`[engine] route_protocol`
    /// changed since; ours only if the record has it: `past`).
    prior_old_proto: bool,
    perturb: Vec<Perturb>,
    foreign: Vec<Foreign>,
}

fn perturb_gen() -> impl Strategy<Value = Perturb> {
    (0usize..13, 0usize..16).prop_map(|(k, i)| match k {
        0 => Perturb::DelRoute(i),
        1 => Perturb::DelAddress(i),
        2 => Perturb::DelNeighbor(i),
        3 => Perturb::DelFdb(i),
        4 => Perturb::DelNexthop(i),
        5 => Perturb::DelLink(i),
        6 => Perturb::LinkMtu(i),
        7 => Perturb::LinkDown(i),
        8 => Perturb::LinkUnmark(i),
        9 => Perturb::LinkMac(i),
        10 => Perturb::NeighborMac(i),
        11 => Perturb::NeighborNotPermanent(i),
        _ => Perturb::RouteForeign(i),
    })
}

fn foreign_gen() -> impl Strategy<Value = Foreign> {
    // 198: an old protocol of ours when the record has it.
    let proto = prop_oneof![
        Just(3u8),
        Just(4u8),
        Just(16u8),
        Just(42u8),
        Just(OLD_PROTO)
    ];
    (0u8..9, any::<[bool; 3]>(), 2u8..=5, 0usize..ROUTES, proto).prop_map(
        |(k, b, n, which, proto)| match k {
            0 => Foreign::RouteAtPeer(b[0], n, proto, b[1]),
            1 => Foreign::RouteAtDeclared(which, b[0], proto),
            2 => Foreign::RouteBeside(n, proto),
            3 => Foreign::OldProtoRoute(n),
            4 => Foreign::Bridge,
            // Any family, also under a declared name (a device of the other
            // family that the file adopts is recreated first:
            // `adopted_holder_of_the_other_family`).
            5 => Foreign::Vxlan(n % 3, b[0], b[1]),
            6 => Foreign::UnderlayAddress(b[0]),
            7 => Foreign::Nexthop(b[0], proto),
            _ => Foreign::Neighbor,
        },
    )
}

fn observed_gen() -> impl Strategy<Value = ObservedGen> {
    (
        any::<[bool; 3]>(),
        0u8..3,
        desired_gen(),
        proptest::bool::weighted(0.25),
        proptest::collection::vec(perturb_gen(), 0..=3),
        proptest::collection::vec(foreign_gen(), 0..=3),
    )
        .prop_map(
            |(b, prior_kind, prior, prior_old_proto, perturb, foreign)| ObservedGen {
                nexthop_objects: b[0],
                eth0_mtu_low: b[1],
                eth0_no_v6: b[2],
                prior_kind,
                prior,
                prior_old_proto,
                perturb,
                foreign,
            },
        )
}

fn link(name: &str, index: u32, kind: &str, mtu: u32, last: u8) -> LinkState {
    LinkState {
        name: name.into(),
        index,
        kind: kind.into(),
        mtu,
        mac: Some(Mac([2, 0xaa, 0, 0, 0, last])),
        up: true,
        vxlan: None,
        alias: None,
    }
}

fn address(dev: &str, cidr: &str, protocol: u8) -> AddressState {
    AddressState {
        dev: dev.into(),
        cidr: net(cidr),
        global: true,
        protocol,
    }
}

/// A host: lo, eth0 (192.0.2.1/24, 2001:db8::1/64), eth1 (198.51.100.1/24).
fn host(g: &ObservedGen, past: bool) -> Observed {
    let mut o = Observed {
        nexthop_objects: g.nexthop_objects,
        ..Observed::default()
    };
    o.links.insert("lo".into(), link("lo", 1, "", 65536, 1));
    let eth0_mtu = if g.eth0_mtu_low { 1300 } else { 1500 };
    o.links
        .insert("eth0".into(), link("eth0", 2, "veth", eth0_mtu, 2));
    o.links
        .insert("eth1".into(), link("eth1", 3, "veth", 1500, 3));
    o.addresses.push(address("eth0", "192.0.2.1/24", 0));
    if !g.eth0_no_v6 {
        o.addresses.push(address("eth0", "2001:db8::1/64", 0));
    }
    o.addresses.push(address("eth1", "198.51.100.1/24", 0));
    if past {
        o.past_protocols.insert(OLD_PROTO);
    }
    o
}

/// What a converged kernel looks like: up to three passes of plan+simulate.
fn converge(desired: &Desired, mut o: Observed) -> Observed {
    for _ in 0..3 {
        let p = plan(desired, &o);
        if p.is_empty() {
            break;
        }
        o = simulate(&o, &p);
    }
    o
}

fn pick<T>(v: &[T], i: usize) -> Option<&T> {
    if v.is_empty() {
        None
    } else {
        v.get(i % v.len())
    }
}

fn perturb(o: &mut Observed, p: &Perturb) {
    let link_name = |o: &Observed, i: usize| -> Option<String> {
        let names: Vec<&String> = o
            .links
            .keys()
            .filter(|n| n.starts_with("flannel"))
            .collect();
        pick(&names, i).map(|n| (*n).clone())
    };
    match p {
        Perturb::DelRoute(i) => {
            if let Some(r) = pick(&o.routes, *i).cloned() {
                apply_to(o, &Op::DelRoute(r));
            }
        }
        Perturb::DelAddress(i) => {
            if let Some(a) = pick(&o.addresses, *i).cloned() {
                apply_to(
                    o,
                    &Op::DelAddress {
                        dev: a.dev,
                        cidr: a.cidr,
                    },
                );
            }
        }
        Perturb::DelNeighbor(i) => {
            if let Some(n) = pick(&o.neighbors, *i).cloned() {
                apply_to(
                    o,
                    &Op::DelNeighbor {
                        dev: n.dev,
                        ip: n.ip,
                    },
                );
            }
        }
        Perturb::DelFdb(i) => {
            if let Some(f) = pick(&o.fdb, *i).cloned() {
                apply_to(
                    o,
                    &Op::DelFdb {
                        dev: f.dev,
                        mac: f.mac,
                        dst: f.dst,
                    },
                );
            }
        }
        Perturb::DelNexthop(i) => {
            if let Some(n) = pick(&o.nexthops, *i).cloned() {
                apply_to(o, &Op::DelNexthop { id: n.id });
            }
        }
        Perturb::DelLink(i) => {
            if let Some(name) = link_name(o, *i) {
                apply_to(o, &Op::DeleteLink { name });
            }
        }
        Perturb::LinkMtu(i) => {
            if let Some(name) = link_name(o, *i) {
                apply_to(
                    o,
                    &Op::SetLink {
                        name,
                        mtu: Some(1350),
                        mac: None,
                        up: None,
                    },
                );
            }
        }
        Perturb::LinkDown(i) => {
            if let Some(name) = link_name(o, *i) {
                apply_to(
                    o,
                    &Op::SetLink {
                        name,
                        mtu: None,
                        mac: None,
                        up: Some(false),
                    },
                );
            }
        }
        Perturb::LinkUnmark(i) => {
            if let Some(l) = link_name(o, *i).and_then(|n| o.links.get_mut(&n)) {
                l.alias = None;
            }
        }
        Perturb::LinkMac(i) => {
            if let Some(name) = link_name(o, *i) {
                apply_to(
                    o,
                    &Op::SetLink {
                        name,
                        mtu: None,
                        mac: Some(Mac([2, 0xbb, 0, 0, 0, 1])),
                        up: None,
                    },
                );
            }
        }
        Perturb::NeighborMac(i) => {
            let n = o.neighbors.len().max(1);
            if let Some(x) = o.neighbors.get_mut(i % n) {
                x.mac = Some(Mac([2, 0xcc, 0, 0, 0, 1]));
            }
        }
        Perturb::NeighborNotPermanent(i) => {
            let n = o.neighbors.len().max(1);
            if let Some(x) = o.neighbors.get_mut(i % n) {
                x.permanent = false;
            }
        }
        Perturb::RouteForeign(i) => {
            let n = o.routes.len().max(1);
            if let Some(x) = o.routes.get_mut(i % n) {
                // `ip route replace ... proto static` by an operator: a
                // classic route now, whatever it was.
                x.protocol = 4;
                x.nhid = None;
            }
        }
    }
}

fn foreign_route(dst: IpNet, metric: Option<u32>, dev: &str, protocol: u8) -> RouteState {
    let via = match dst {
        IpNet::V4(_) => ip("192.0.2.254"),
        IpNet::V6(_) => ip("2001:db8::fe"),
    };
    let on_eth0 = dev == "eth0";
    RouteState {
        table: MAIN_TABLE,
        dst,
        via: on_eth0.then_some(via),
        dev: Some(dev.into()),
        onlink: false,
        src: None,
        metric,
        protocol,
        nhid: None,
    }
}

fn add_foreign(o: &mut Observed, f: &Foreign) {
    let next_index = |o: &Observed| o.links.values().map(|l| l.index).max().unwrap_or(0) + 1;
    match f {
        Foreign::RouteAtPeer(v6, n, proto, through_ours) => {
            let family = if *v6 { Family::Ipv6 } else { Family::Ipv4 };
            let ours = if *v6 { V6 } else { V4 };
            let dev = if *through_ours && o.links.contains_key(ours) {
                ours
            } else {
                "eth0"
            };
            let r = foreign_route(peer_subnet(family, *n), None, dev, *proto);
            apply_to(o, &Op::SetRoute(r));
        }
        Foreign::RouteAtDeclared(which, metric, proto) => {
            let (dst, _, _, table) = route_menu(*which, Some(V4));
            let mut r = foreign_route(dst, metric.then_some(100), "eth0", *proto);
            r.table = table;
            apply_to(o, &Op::SetRoute(r));
        }
        Foreign::RouteBeside(n, proto) => {
            let r = foreign_route(peer_subnet(Family::Ipv4, *n), Some(50), "eth0", *proto);
            apply_to(o, &Op::SetRoute(r));
        }
        Foreign::OldProtoRoute(n) => {
            let dev = if o.links.contains_key(V4) { V4 } else { "eth0" };
            let r = foreign_route(net(&format!("198.19.{n}.0/24")), None, dev, OLD_PROTO);
            apply_to(o, &Op::SetRoute(r));
        }
        Foreign::Bridge => {
            if !o.links.contains_key("br0") {
                let i = next_index(o);
                o.links
                    .insert("br0".into(), link("br0", i, "bridge", 1500, 9));
                o.addresses.push(address("br0", "198.18.50.1/24", 0));
                o.neighbors.push(NeighborState {
                    dev: "br0".into(),
                    ip: ip("198.18.50.2"),
                    mac: Some(Mac([2, 0xdd, 0, 0, 0, 2])),
                    permanent: true,
                });
                o.fdb.push(FdbState {
                    dev: "br0".into(),
                    mac: Mac([2, 0xdd, 0, 0, 0, 3]),
                    dst: None,
                    permanent: true,
                });
            }
        }
        Foreign::Vxlan(name, vni_alt, v6) => {
            let v6 = *v6;
            let name = match name {
                0 => "vx-foreign",
                1 => V4,
                _ => V6,
            };
            let vni = if *vni_alt { 2 } else { 1 };
            let local = if v6 {
                ip("2001:db8::1")
            } else {
                ip("192.0.2.1")
            };
            let family = Family::of(&local);
            let taken = o.links.values().any(|l| {
                l.vxlan.as_ref().is_some_and(|a| {
                    a.vni == vni && !a.gbp && a.local.map(|x| Family::of(&x)) == Some(family)
                })
            });
            if taken || o.links.contains_key(name) {
                return;
            }
            let i = next_index(o);
            let mut l = link(name, i, "vxlan", 1450, 0x10);
            l.vxlan = Some(VxlanAttrs {
                vni,
                port: 8472,
                local: Some(local),
                underlay_index: Some(2),
                learning: false,
                gbp: false,
            });
            o.links.insert(name.into(), l);
            let cidr = if v6 {
                "fd00:77::1/64"
            } else {
                "198.18.77.1/24"
            };
            o.addresses.push(address(name, cidr, 0));
            o.fdb.push(FdbState {
                dev: name.into(),
                mac: Mac([2, 0xee, 0, 0, 0, 7]),
                dst: Some(local),
                permanent: true,
            });
        }
        Foreign::UnderlayAddress(ours) => {
            let (cidr, proto) = if *ours {
                ("192.0.2.77/24", PROTO)
            } else {
                ("192.0.2.78/24", 0)
            };
            apply_to(
                o,
                &Op::AddAddress {
                    dev: "eth0".into(),
                    cidr: net(cidr),
                    protocol: proto,
                },
            );
        }
        Foreign::Nexthop(in_our_range, proto) => {
            let id = if *in_our_range { 199_000_001 } else { 77 };
            if o.nexthops.iter().any(|n| n.id == id) || !o.nexthop_objects {
                return;
            }
            o.nexthops.push(NexthopState {
                id,
                via: Some(ip("192.0.2.254")),
                dev: Some("eth0".into()),
                onlink: false,
                protocol: *proto,
            });
        }
        Foreign::Neighbor => {
            if !o.neighbors.iter().any(|n| n.dev == "eth0") {
                o.neighbors.push(NeighborState {
                    dev: "eth0".into(),
                    ip: ip("192.0.2.254"),
                    mac: Some(Mac([2, 0xdd, 0, 0, 0, 1])),
                    permanent: false,
                });
            }
        }
    }
}

fn build_observed(g: &ObservedGen, desired: &Desired, past: bool) -> Observed {
    let mut o = host(g, past);
    match g.prior_kind {
        0 => {}
        1 => o = converge(desired, o),
        _ => {
            let mut prior = build_desired(&g.prior);
            if g.prior_old_proto {
                prior.engine.route_protocol = OLD_PROTO;
            }
            o = converge(&prior, o);
        }
    }
    for p in &g.perturb {
        perturb(&mut o, p);
    }
    for f in &g.foreign {
        add_foreign(&mut o, f);
    }
    o
}

// ------------------------------------------------------------- properties --

/// The route protocols whose objects are ours.
fn owned_protocols(o: &Observed) -> BTreeSet<u8> {
    let mut p = o.past_protocols.clone();
    p.insert(PROTO);
    p
}

/// Devices netconverge owns or may take over in `o`: marked, created by a
/// version without marks (derived MAC), or declared with `adopt = true`.
fn owned_devices(d: &Desired, o: &Observed) -> BTreeSet<String> {
    o.links
        .values()
        .filter(|l| {
            let declared = d.vxlan(&l.name);
            l.marked()
                || (l.kind == "vxlan"
                    && declared.is_some_and(|v| {
                        d.adopt.vxlans.contains(&v.name)
                            || (v.mac.is_none() && d.vxlan_mac(v) == l.mac)
                    }))
        })
        .map(|l| l.name.clone())
        .collect()
}

/// Every object of `o` that is not netconverge's and that nothing it does
/// may take with it: links, addresses, neighbours and FDB entries off its
/// devices, routes and nexthops without its protocols (not adopted, not
/// through one of its devices that `plan` deletes or renames — the kernel
/// drops or moves those with the device, by design).
#[derive(Debug, PartialEq)]
struct ForeignSet {
    links: Vec<LinkState>,
    addresses: Vec<AddressState>,
    neighbors: Vec<NeighborState>,
    fdb: Vec<FdbState>,
    routes: Vec<RouteState>,
    nexthops: Vec<NexthopState>,
}

/// The kernel's default metric: 0 for IPv4, 1024 for IPv6.
fn metric(dst: &IpNet, m: Option<u32>) -> u32 {
    m.unwrap_or(match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    })
}

fn foreign_set(d: &Desired, o: &Observed, p: &Plan) -> ForeignSet {
    let owned = owned_devices(d, o);
    let protos = owned_protocols(o);
    let mut moved: BTreeSet<&str> = BTreeSet::new();
    for c in &p.changes {
        match &c.op {
            Op::DeleteLink { name } | Op::RetireLink { name } => {
                moved.insert(name);
            }
            Op::RenameLink { from, .. } => {
                moved.insert(from);
            }
            _ => {}
        }
    }
    let off_ours = |dev: &str| !owned.contains(dev);
    let untouched_dev = |dev: Option<&String>| dev.is_none_or(|d| !moved.contains(d.as_str()));
    let adopted = |r: &RouteState| {
        d.adopt.routes.iter().any(|(t, dst, m)| {
            *t == r.table && *dst == r.dst && metric(dst, *m) == metric(dst, r.metric)
        }) || r.dev.as_ref().is_some_and(|x| d.adopt.vxlans.contains(x))
    };
    ForeignSet {
        links: o
            .links
            .values()
            .filter(|l| off_ours(&l.name))
            .cloned()
            .collect(),
        addresses: o
            .addresses
            .iter()
            .filter(|a| off_ours(&a.dev) && !protos.contains(&a.protocol))
            .cloned()
            .collect(),
        neighbors: o
            .neighbors
            .iter()
            .filter(|n| off_ours(&n.dev))
            .cloned()
            .collect(),
        fdb: o.fdb.iter().filter(|f| off_ours(&f.dev)).cloned().collect(),
        routes: o
            .routes
            .iter()
            .filter(|r| {
                !protos.contains(&r.protocol) && !adopted(r) && untouched_dev(r.dev.as_ref())
            })
            .cloned()
            .collect(),
        nexthops: o
            .nexthops
            .iter()
            .filter(|n| !protos.contains(&n.protocol) && untouched_dev(n.dev.as_ref()))
            .cloned()
            .collect(),
    }
}

/// Every object of `set` is in `o`, byte for byte.
fn assert_all_present(set: &ForeignSet, o: &Observed, what: &str) -> Result<(), TestCaseError> {
    for l in &set.links {
        prop_assert_eq!(
            o.links.get(&l.name),
            Some(l),
            "{}: foreign link changed",
            what
        );
    }
    for a in &set.addresses {
        prop_assert!(
            o.addresses.contains(a),
            "{}: foreign address gone: {:?}",
            what,
            a
        );
    }
    for n in &set.neighbors {
        prop_assert!(
            o.neighbors.contains(n),
            "{}: foreign neighbor gone: {:?}",
            what,
            n
        );
    }
    for f in &set.fdb {
        prop_assert!(o.fdb.contains(f), "{}: foreign fdb gone: {:?}", what, f);
    }
    for r in &set.routes {
        prop_assert!(
            o.routes.contains(r),
            "{}: foreign route gone or changed: {:?}",
            what,
            r
        );
    }
    for n in &set.nexthops {
        prop_assert!(
            o.nexthops.contains(n),
            "{}: foreign nexthop gone: {:?}",
            what,
            n
        );
    }
    Ok(())
}

/// `o` with every kernel dump in another order. Addresses keep their
/// order per device: "the underlay's first global address" is kernel order,
/// which a dump preserves.
fn shuffled(o: &Observed, seed: u64) -> Observed {
    fn key<T: Hash>(seed: u64, t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        t.hash(&mut h);
        h.finish()
    }
    fn shuffle<T>(v: &mut Vec<T>, seed: u64) {
        let mut keyed: Vec<(u64, T)> = std::mem::take(v)
            .into_iter()
            .enumerate()
            .map(|(i, t)| (key(seed, &i), t))
            .collect();
        keyed.sort_by_key(|(k, _)| *k);
        *v = keyed.into_iter().map(|(_, t)| t).collect();
    }
    let mut s = o.clone();
    s.addresses.sort_by_key(|a| key(seed, &a.dev));
    shuffle(&mut s.routes, seed);
    shuffle(&mut s.nexthops, seed);
    shuffle(&mut s.neighbors, seed);
    shuffle(&mut s.fdb, seed);
    s
}

fn blocked_set(p: &Plan) -> BTreeSet<(String, String)> {
    p.blocked
        .iter()
        .map(|b| (b.object.clone(), b.reason.clone()))
        .collect()
}

fn check_stage_order(p: &Plan) -> Result<(), TestCaseError> {
    for w in p.changes.windows(2) {
        if let [a, b] = w {
            prop_assert!(
                a.op.stage() <= b.op.stage(),
                "out of stage order: {:?} ({:?}) before {:?} ({:?})",
                a.object,
                a.op.stage(),
                b.object,
                b.op.stage()
            );
        }
    }
    Ok(())
}

/// Nothing netconverge owns is left in `o`, but for what the cleanup plan
/// `c` keeps and says so (an address foreign routes need).
fn assert_nothing_ours(d: &Desired, o: &Observed, c: &Plan) -> Result<(), TestCaseError> {
    let protos = owned_protocols(o);
    for l in o.links.values() {
        let legacy = l.kind == "vxlan"
            && d.vxlan(&l.name)
                .is_some_and(|v| v.mac.is_none() && d.vxlan_mac(v) == l.mac);
        prop_assert!(!l.marked() && !legacy, "cleanup left device {}", l.name);
    }
    for r in &o.routes {
        prop_assert!(!protos.contains(&r.protocol), "cleanup left route {:?}", r);
    }
    for n in &o.nexthops {
        prop_assert!(
            !protos.contains(&n.protocol),
            "cleanup left nexthop {:?}",
            n
        );
    }
    for a in &o.addresses {
        let reported = c
            .blocked
            .iter()
            .any(|b| b.object == format!("address {} dev {}", a.cidr, a.dev));
        prop_assert!(
            !protos.contains(&a.protocol) || reported,
            "cleanup left address {:?} without saying so",
            a
        );
    }
    Ok(())
}

fn case() -> impl Strategy<Value = (DesiredGen, ObservedGen, u64)> {
    (desired_gen(), observed_gen(), any::<u64>())
}

/// 256 cases from a fixed seed: the same cases on every run (a CI failure
/// reproduces locally). `PROPTEST_RNG_SEED=<n>` (or `=random`) and
/// `PROPTEST_CASES=<n>` explore further.
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = match std::env::var("PROPTEST_RNG_SEED") {
        Ok(_) => base.rng_seed,
        Err(_) => proptest::test_runner::RngSeed::Fixed(0x006e_6574_636f_6e76),
    };
    let cases = match std::env::var("PROPTEST_CASES") {
        Ok(_) => base.cases,
        Err(_) => 256,
    };
    ProptestConfig {
        cases,
        rng_seed,
        // Shrunk failures are written up as #[ignore]d tests, not files.
        failure_persistence: None,
        ..base
    }
}

proptest! {
    #![proptest_config(config())]

    /// One plan, applied by the kernel model, converges: re-planning has no
    /// changes and nothing that was not blocked before is blocked now.
    #[test]
    fn one_pass_converges((dg, og, _) in case()) {
        let d = build_desired(&dg);
        let o = build_observed(&og, &d, dg.past);
        let p = plan(&d, &o);
        prop_assume!(known_bug(&d, &o, &p).is_none());
        let after = simulate(&o, &p);
        let again = plan(&d, &after);
        prop_assert!(
            again.changes.is_empty(),
            "not converged after one pass.\nfirst plan:\n{}\nsecond plan:\n{}",
            p,
            again
        );
        let new_blocked: Vec<_> = blocked_set(&again).difference(&blocked_set(&p)).cloned().collect();
        prop_assert!(new_blocked.is_empty(), "newly blocked: {:?}\nfirst plan:\n{}", new_blocked, p);
    }

    /// No op removes or changes an object netconverge does not own.
    #[test]
    fn foreign_objects_are_untouched((dg, og, _) in case()) {
        let d = build_desired(&dg);
        let o = build_observed(&og, &d, dg.past);
        let p = plan(&d, &o);
        prop_assume!(known_bug(&d, &o, &p).is_none());
        let after = simulate(&o, &p);
        assert_all_present(&foreign_set(&d, &o, &p), &after, &format!("plan\n{p}"))?;
    }

    /// Same inputs, same plan, whatever order the kernel dumped in; and
    /// ordered by stage.
    #[test]
    fn plan_is_deterministic_and_staged((dg, og, seed) in case()) {
        let d = build_desired(&dg);
        let o = build_observed(&og, &d, dg.past);
        let p = plan(&d, &o);
        check_stage_order(&p)?;
        prop_assert_eq!(&plan(&d, &o), &p);
        let s = shuffled(&o, seed);
        let ps = plan(&d, &s);
        prop_assert_eq!(ps.to_string(), p.to_string());
        prop_assert_eq!(&ps, &p);
        let c = cleanup_plan(&d, &o);
        check_stage_order(&c)?;
        prop_assert_eq!(&cleanup_plan(&d, &s), &c);
    }

    /// `cleanup` removes everything netconverge owns (after converging, and
    /// in a perturbed state) and nothing else; a second cleanup is empty.
    #[test]
    fn cleanup_removes_ours_and_nothing_else((dg, og, _) in case()) {
        let d = build_desired(&dg);
        for o in [build_observed(&og, &d, dg.past), converge(&d, build_observed(&og, &d, dg.past))] {
            let c = cleanup_plan(&d, &o);
            prop_assume!(known_bug(&d, &o, &c).is_none());
            let after = simulate(&o, &c);
            assert_nothing_ours(&d, &after, &c)?;
            assert_all_present(&foreign_set(&d, &o, &c), &after, &format!("cleanup\n{c}"))?;
            prop_assert!(cleanup_plan(&d, &after).changes.is_empty());
        }
    }
}

/// Positive controls: the properties can fail. A model that forgets a
/// cascade leaves a plan unconverged, and a foreign route taken over is
/// detected.
#[test]
fn controls_the_checks_can_fail() {
    let dg = DesiredGen {
        v4: Some(VxGen {
            vni_alt: false,
            underlay_alt: false,
            local_explicit: false,
            learning: false,
            gbp: false,
            mtu_explicit: false,
            adopt: false,
            addr_alt: false,
            peers: [2u8].into_iter().collect(),
        }),
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Off,
        past: false,
        v4_renamed: false,
    };
    let d = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 1,
        prior: dg.clone(),
        prior_old_proto: false,
        perturb: Vec::new(),
        foreign: Vec::new(),
    };
    let o = build_observed(&og, &d, false);
    assert!(plan(&d, &o).in_sync(), "converged state:\n{}", plan(&d, &o));
    assert!(o.routes.iter().any(|r| r.protocol == PROTO), "{o:#?}");
    // A kernel that loses the peer route: re-planning is not empty.
    let mut lost = o.clone();
    lost.routes.clear();
    assert!(!plan(&d, &lost).changes.is_empty());
    // A foreign route replaced by one of ours is detected as changed.
    let mut with_foreign = o.clone();
    add_foreign(
        &mut with_foreign,
        &Foreign::RouteAtPeer(false, 2, 16, false),
    );
    let set = foreign_set(&d, &with_foreign, &Plan::default());
    assert_eq!(set.routes.len(), 1);
    let mut taken = with_foreign.clone();
    for r in &mut taken.routes {
        r.protocol = PROTO;
    }
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let caught = runner.run(&Just(()), |()| assert_all_present(&set, &taken, "control"));
    assert!(
        caught.is_err(),
        "a taken-over foreign route must be reported"
    );
    // The marked device is ours, the underlay is not.
    let owned = owned_devices(&d, &o);
    assert!(owned.contains(V4) && !owned.contains("eth0"));
    assert_eq!(
        o.links.get(V4).and_then(|l| l.alias.as_deref()),
        Some(DEVICE_MARK)
    );
}

/// The known planner bug `p` hits in `o`, if any (each has an
/// `#[ignore]`d test below). The properties skip those cases (proptest
/// counts them as rejects) so that they keep looking for other bugs.
fn known_bug(_: &Desired, _: &Observed, _: &Plan) -> Option<&'static str> {
    // None open: the last one (our last IPv4 address on a foreign device
    // carrying foreign routes) is fixed; see its regression test below.
    None
}

/// Regression test for a planner bug (found by `one_pass_converges`; fixed:
/// the recreate path checks the holder too): a VXLAN device of ours
/// whose VNI (or port, gbp) changed is deleted and recreated
/// (`Planner::vxlan`, the `immutable` path) without the check that the
/// missing-device path makes: whether a device netconverge does not own
/// already holds the new (VNI, port, family). The kernel refuses the create
/// ("A VXLAN device with the specified VNI already exists", verified on
/// Linux 6.18 with another underlay), so the pass deletes a working device
/// with all its routes for nothing; only the next pass reports the
/// conflict. Expected: blocked with the holder named, device left alone.
#[test]
fn recreate_checks_foreign_vni_holder() {
    let vx = VxGen {
        vni_alt: true,
        underlay_alt: false,
        local_explicit: false,
        learning: false,
        gbp: false,
        mtu_explicit: false,
        adopt: false,
        addr_alt: false,
        peers: [2u8].into_iter().collect(),
    };
    let prior = DesiredGen {
        v4: Some(vx.clone()),
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Off,
        past: false,
        v4_renamed: false,
    };
    // Now vni 1, which the unmarked vxlan "vx-foreign" holds.
    let dg = DesiredGen {
        v4: Some(VxGen {
            vni_alt: false,
            ..vx
        }),
        ..prior.clone()
    };
    let d = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 2,
        prior,
        prior_old_proto: false,
        perturb: Vec::new(),
        foreign: vec![Foreign::Vxlan(0, false, false)],
    };
    let o = build_observed(&og, &d, false);
    let p = plan(&d, &o);
    assert!(
        !p.changes
            .iter()
            .any(|c| matches!(c.op, Op::DeleteLink { .. })),
        "deletes our device although the create must fail:\n{p}"
    );
    assert!(
        p.blocked.iter().any(|b| b.reason.contains("vx-foreign")),
        "the holder is not named:\n{p}"
    );
}

/// Regression test for a planner bug (found by `one_pass_converges`, fixed:
/// stale addresses now go in `Stage::PruneAddresses`): changing the address of a
/// VXLAN device (flannel's 198.18.1.1/32 → 198.18.1.0/32, e.g. a new pod
/// subnet) plans `DelAddress` of the old one in stage `RemoveStale`, before
/// `AddAddress` of the new one (stage `Addresses`). Removing a device's last
/// IPv4 address makes the kernel drop every classic IPv4 route through it
/// (verified on Linux 6.18: `ip addr del` of the only address on a veth
/// removes `198.18.2.0/24 via 198.18.2.0 dev v0 onlink proto 199`, keeps
/// the route through nexthop id 7). The plan does not re-add the peer
/// routes (they were present when observed), so after one pass every peer
/// route is gone until the next pass. `Stage::PruneAddresses` exists for
/// exactly this ("After the new addresses: removing a device's last IPv4
/// address makes the kernel drop every IPv4 route through it") but
/// `Op::stage` never returned it. End to end (`netconverge converge` in a namespace,
/// `nexthops = "off"`, address 198.18.1.1/32 → 198.18.1.0/32): "converged:
/// 4 change(s) applied" for a 2-change plan — the engine's verify round
/// re-adds the route, so every classic peer route is missing between the
/// rounds (routes through nexthop objects survive address events).
#[test]
fn address_change_keeps_peer_routes() {
    let mut vx = VxGen {
        vni_alt: false,
        underlay_alt: false,
        local_explicit: false,
        learning: false,
        gbp: false,
        mtu_explicit: false,
        adopt: false,
        addr_alt: true,
        peers: [2u8].into_iter().collect(),
    };
    let prior = DesiredGen {
        v4: Some(vx.clone()),
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Off,
        past: false,
        v4_renamed: false,
    };
    vx.addr_alt = false;
    let dg = DesiredGen {
        v4: Some(vx),
        ..prior.clone()
    };
    let d = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 2,
        prior,
        prior_old_proto: false,
        perturb: Vec::new(),
        foreign: Vec::new(),
    };
    let o = build_observed(&og, &d, false);
    let p = plan(&d, &o);
    let after = simulate(&o, &p);
    let again = plan(&d, &after);
    assert!(
        again.changes.is_empty(),
        "first plan:\n{p}\nsecond plan:\n{again}"
    );
}

/// Regression test for a planner bug (found by `one_pass_converges`,
/// through an adopted device; fixed: a family change is immutable):
/// a `[[vxlan]]` whose `family` changes (ipv4 → ipv6, same name and VNI:
/// moving flannel.1 to an IPv6 underlay) is planned as an in-place
/// `SetVxlan` of `local`, which the kernel refuses ("New local address
/// family does not match old", EINVAL, verified on Linux 6.18 with
/// `ip link set vxa type vxlan local 2001:db8::1` on an IPv4 device). Every
/// pass plans and fails the same change; the device never converges.
/// Expected: a family change is immutable (recreate), like vni/port/gbp.
#[test]
fn family_change_recreates() {
    let vx = VxGen {
        vni_alt: false,
        underlay_alt: false,
        local_explicit: false,
        learning: false,
        gbp: false,
        mtu_explicit: false,
        adopt: false,
        addr_alt: false,
        peers: BTreeSet::new(),
    };
    let dg = DesiredGen {
        v4: Some(vx),
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Off,
        past: false,
        v4_renamed: false,
    };
    let prior = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 1,
        prior: dg.clone(),
        prior_old_proto: false,
        perturb: Vec::new(),
        foreign: Vec::new(),
    };
    let o = build_observed(&og, &prior, false);
    // The same device, now on eth0's IPv6 address.
    let mut d = prior.clone();
    for v in &mut d.vxlans {
        v.family = Family::Ipv6;
    }
    let p = plan(&d, &o);
    let after = simulate(&o, &p);
    let again = plan(&d, &after);
    assert!(
        again.changes.is_empty(),
        "first plan:\n{p}\nsecond plan:\n{again}"
    );
}

/// Planner bug (found by `one_pass_converges`): a VXLAN device without
/// `local` takes its underlay's first global address of its family — even
/// when that address is one of netconverge's (address protocol 199, no
/// longer declared) that the same plan removes as stale. The device is
/// created (or changed) with a local address the host no longer has; the
/// next pass blocks it ("underlay eth0 has no global ipv4 address") or
/// moves it again. Expected: the derived local skips addresses the plan
/// removes.
#[test]
fn local_is_not_an_address_being_removed() {
    let dg = DesiredGen {
        v4: Some(VxGen {
            vni_alt: false,
            underlay_alt: false,
            local_explicit: false,
            learning: false,
            gbp: false,
            mtu_explicit: false,
            adopt: false,
            addr_alt: false,
            peers: BTreeSet::new(),
        }),
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Off,
        past: false,
        v4_renamed: false,
    };
    let d = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 0,
        prior: dg.clone(),
        prior_old_proto: false,
        perturb: Vec::new(),
        foreign: Vec::new(),
    };
    let mut o = build_observed(&og, &d, false);
    // eth0 holds only an address netconverge once added (an `[[address]]
    // dev = "eth0"` the file no longer has), first in kernel order.
    o.addresses.retain(|a| a.dev != "eth0");
    add_foreign(&mut o, &Foreign::UnderlayAddress(true));
    o.addresses.push(address("eth0", "192.0.2.1/24", 0));
    let p = plan(&d, &o);
    assert!(
        !p.changes.iter().any(|c| matches!(&c.op,
            Op::CreateVxlan(v) if v.local == ip("192.0.2.77"))),
        "the device is created on the address this plan removes:\n{p}"
    );
}

/// The generators reach the states the properties are about: a sample of
/// 256 cases has plans with changes, blocked objects, conflicts with
/// foreign routes, removals, recreations, renames, nexthops and adoption,
/// and few cases skipped as known bugs. (A generator that stopped producing
/// them would make the properties pass vacuously.)
#[test]
fn generators_cover_the_interesting_states() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let strategy = case();
    let mut seen: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut count = |k: &'static str, yes: bool| {
        if yes {
            *seen.entry(k).or_insert(0) += 1;
        }
    };
    for _ in 0..256 {
        let (dg, og, _) = strategy.new_tree(&mut runner).unwrap().current();
        let d = build_desired(&dg);
        let o = build_observed(&og, &d, dg.past);
        let p = plan(&d, &o);
        let has = |f: &dyn Fn(&Op) -> bool| p.changes.iter().any(|c| f(&c.op));
        count("changes", !p.changes.is_empty());
        count("in sync", p.in_sync());
        count("blocked", !p.blocked.is_empty());
        count(
            "conflict",
            p.blocked.iter().any(|b| b.reason.starts_with("conflict")),
        );
        count(
            "foreign route",
            o.routes.iter().any(|r| r.protocol != PROTO),
        );
        count("delete", has(&|op| matches!(op, Op::DeleteLink { .. })));
        count("retire", has(&|op| matches!(op, Op::RetireLink { .. })));
        count("rename", has(&|op| matches!(op, Op::RenameLink { .. })));
        count("set vxlan", has(&|op| matches!(op, Op::SetVxlan { .. })));
        count("mark", has(&|op| matches!(op, Op::MarkLink { .. })));
        count("nexthop", has(&|op| matches!(op, Op::SetNexthop(_))));
        count(
            "del nexthop",
            has(&|op| matches!(op, Op::DelNexthop { .. })),
        );
        count("del route", has(&|op| matches!(op, Op::DelRoute(_))));
        count(
            "del address",
            has(&|op| matches!(op, Op::DelAddress { .. })),
        );
        count(
            "old protocol",
            p.changes.iter().any(|c| c.reason.starts_with("old ")),
        );
        count("known bug", known_bug(&d, &o, &p).is_some());
    }
    eprintln!("{seen:#?}");
    assert!(seen.get("known bug").copied().unwrap_or(0) < 64, "{seen:?}");
    for k in [
        "changes",
        "in sync",
        "blocked",
        "conflict",
        "foreign route",
        "delete",
        "retire",
        "rename",
        "set vxlan",
        "mark",
        "nexthop",
        "del nexthop",
        "del route",
        "del address",
        "old protocol",
    ] {
        assert!(
            seen.get(k).copied().unwrap_or(0) >= 3,
            "only {:?} cases with {k}",
            seen.get(k)
        );
    }
}

/// Planner bug (found by `one_pass_converges`): a declared route's place
/// held by a foreign route (an operator's `ip route replace ... proto
/// static`) through a netconverge device that the same plan retires (the
/// file renamed the device and changed its VNI: no rename, a retirement)
/// is reported as a conflict — "never replaced or removed — delete it" —
/// although the kernel drops the holder with the retired device at the end
/// of the same pass; the route is only added in the next pass.
/// `route_conflicts` already skips holders on devices being recreated
/// (`DevState::Fresh`), not on retired ones.
#[test]
fn conflict_through_a_retired_device() {
    let vx = VxGen {
        vni_alt: false,
        underlay_alt: false,
        local_explicit: false,
        learning: false,
        gbp: false,
        mtu_explicit: false,
        adopt: false,
        addr_alt: false,
        peers: [2u8].into_iter().collect(),
    };
    let prior = DesiredGen {
        v4: Some(vx.clone()),
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Off,
        past: false,
        v4_renamed: false,
    };
    // flannel.1 (vni 1) becomes flannel.2 with vni 2.
    let dg = DesiredGen {
        v4: Some(VxGen {
            vni_alt: true,
            ..vx
        }),
        v4_renamed: true,
        ..prior.clone()
    };
    let d = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 2,
        prior,
        // The peer route through flannel.1, replaced with proto static.
        prior_old_proto: false,
        perturb: vec![Perturb::RouteForeign(0)],
        foreign: Vec::new(),
    };
    let o = build_observed(&og, &d, false);
    assert!(o.routes.iter().any(|r| r.protocol == 4), "{o:#?}");
    let p = plan(&d, &o);
    let after = simulate(&o, &p);
    let again = plan(&d, &after);
    assert!(
        again.changes.is_empty(),
        "first plan:\n{p}\nsecond plan:\n{again}"
    );
}

/// Planner bug (found by `one_pass_converges`), the same shape as
/// `recreate_checks_foreign_vni_holder` with our own device as the holder:
/// the file had flannel.1 (vni 2) and flannel.2 (vni 1), now only
/// flannel.1 with vni 1. flannel.1 is deleted and recreated in stages
/// DeleteLinks/CreateLinks, but flannel.2, which holds vni 1, is retired
/// only in the last stage (RetireLinks), so the create fails with EEXIST
/// and the overlay has no flannel.1 until the next pass. Expected: a
/// retired device that holds the (VNI, port, family) of a device being
/// created goes before the create (or the create waits for it).
#[test]
fn recreate_waits_for_the_retired_holder() {
    let vx = VxGen {
        vni_alt: true,
        underlay_alt: false,
        local_explicit: false,
        learning: false,
        gbp: false,
        mtu_explicit: false,
        adopt: false,
        addr_alt: false,
        peers: BTreeSet::new(),
    };
    let dg = DesiredGen {
        v4: Some(VxGen {
            vni_alt: false,
            ..vx.clone()
        }),
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Off,
        past: false,
        v4_renamed: false,
    };
    let d = build_desired(&dg);
    let host_gen = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 0,
        prior: dg.clone(),
        prior_old_proto: false,
        perturb: Vec::new(),
        foreign: Vec::new(),
    };
    // flannel.2 with vni 1, then flannel.1 with vni 2, both ours.
    let old2 = build_desired(&DesiredGen {
        v4: Some(VxGen {
            vni_alt: false,
            ..vx.clone()
        }),
        v4_renamed: true,
        ..dg.clone()
    });
    let old1 = build_desired(&DesiredGen {
        v4: Some(vx),
        ..dg.clone()
    });
    let mut both = old2.clone();
    both.vxlans.extend(old1.vxlans.iter().cloned());
    let o = converge(&both, build_observed(&host_gen, &d, false));
    assert_eq!(o.links.values().filter(|l| l.marked()).count(), 2, "{o:#?}");
    let p = plan(&d, &o);
    let after = simulate(&o, &p);
    let again = plan(&d, &after);
    assert!(
        again.changes.is_empty(),
        "first plan:\n{p}\nsecond plan:\n{again}"
    );
}

/// Planner bug (found by `one_pass_converges` once the generator let a
/// foreign device under a declared name have the other family): the file
/// declares flannel.1 (IPv4, vni 1) and flannel-v6.1 (IPv6, vni 1, adopt =
/// true); the kernel has a foreign flannel-v6.1 with an IPv4 local and
/// vni 1. flannel-v6.1 is adopted and recreated as IPv6 (stage DeleteLinks,
/// before any create), but flannel.1's create was already blocked: its
/// holder check (`Planner::foreign_holder`) sees flannel-v6.1 as a foreign
/// holder of (vni 1, port 8472, IPv4), not as a device this plan deletes.
/// flannel.1 appears a pass later. Expected: a holder the same plan
/// deletes (an adopted device being recreated) does not block.
/// Fixed: a device the file adopts with another identity is recreated
/// first and is no holder (`Planner::recreates_adopted`).
#[test]
fn adopted_holder_of_the_other_family() {
    let vx = VxGen {
        vni_alt: false,
        underlay_alt: false,
        local_explicit: false,
        learning: false,
        gbp: false,
        mtu_explicit: false,
        adopt: false,
        addr_alt: false,
        peers: BTreeSet::new(),
    };
    let dg = DesiredGen {
        v4: Some(vx.clone()),
        v6: Some(VxGen { adopt: true, ..vx }),
        routes: Vec::new(),
        nexthops: NexthopMode::Auto,
        past: false,
        v4_renamed: false,
    };
    let d = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 0,
        prior: DesiredGen {
            v4: None,
            v6: None,
            ..dg.clone()
        },
        prior_old_proto: false,
        perturb: Vec::new(),
        foreign: Vec::new(),
    };
    let mut o = build_observed(&og, &d, false);
    // flannel-v6.1 with an IPv4 local (the generator no longer makes it).
    add_foreign(&mut o, &Foreign::Vxlan(2, false, false));
    assert!(
        o.links
            .get(V6)
            .and_then(|l| l.vxlan.as_ref())
            .is_some_and(|a| a.local == Some(ip("192.0.2.1"))),
        "{o:#?}"
    );
    let p = plan(&d, &o);
    let after = simulate(&o, &p);
    let again = plan(&d, &after);
    assert!(
        again.changes.is_empty(),
        "first plan:\n{p}\nsecond plan:\n{again}"
    );
}

/// Planner bug (found by `foreign_objects_are_untouched` and
/// `cleanup_removes_ours_and_nothing_else` at 2 000 cases; older than the
/// fixes above): flannel.1 lost its mark (an unmarked device under a
/// declared name is not ours) but still carries our address 198.18.1.0/32
/// (protocol 199) and a foreign classic route (proto static) through it.
/// The plan (the file no longer declares anything) and cleanup remove the
/// address as ours — the device's last IPv4 address, so the kernel drops
/// the foreign route with it (`fib_disable_ip`, no RTM_DELROUTE). Expected:
/// a policy decision — keep our last address there while foreign routes
/// need it (and say so), or report it; not a silent loss of a foreign route.
/// Fixed: the address stays, reported as blocked with the reason.
#[test]
fn our_address_on_a_foreign_device_carries_foreign_routes() {
    let dg = DesiredGen {
        v4: None,
        v6: None,
        routes: Vec::new(),
        nexthops: NexthopMode::Auto,
        past: false,
        v4_renamed: false,
    };
    let d = build_desired(&dg);
    let og = ObservedGen {
        nexthop_objects: false,
        eth0_mtu_low: false,
        eth0_no_v6: false,
        prior_kind: 2,
        prior: DesiredGen {
            v4: Some(VxGen {
                vni_alt: false,
                underlay_alt: false,
                local_explicit: false,
                learning: false,
                gbp: false,
                mtu_explicit: false,
                adopt: false,
                addr_alt: false,
                peers: BTreeSet::new(),
            }),
            ..dg.clone()
        },
        prior_old_proto: false,
        perturb: vec![Perturb::LinkUnmark(0)],
        foreign: vec![Foreign::RouteAtPeer(false, 2, 3, true)],
    };
    let o = build_observed(&og, &d, false);
    assert!(
        o.routes
            .iter()
            .any(|r| r.protocol == 3 && r.dev.as_deref() == Some(V4)),
        "{o:#?}"
    );
    for (what, p) in [("plan", plan(&d, &o)), ("cleanup", cleanup_plan(&d, &o))] {
        let after = simulate(&o, &p);
        let set = foreign_set(&d, &o, &p);
        let lost: Vec<_> = set
            .routes
            .iter()
            .filter(|r| !after.routes.contains(r))
            .collect();
        assert!(lost.is_empty(), "{what} loses {lost:?}:\n{p}");
    }
}

// ------------------------------------------------------ the model itself --

fn model_host() -> Observed {
    host(
        &ObservedGen {
            nexthop_objects: true,
            eth0_mtu_low: false,
            eth0_no_v6: false,
            prior_kind: 0,
            prior: DesiredGen {
                v4: None,
                v6: None,
                routes: Vec::new(),
                nexthops: NexthopMode::Auto,
                past: false,
                v4_renamed: false,
            },
            prior_old_proto: false,
            perturb: Vec::new(),
            foreign: Vec::new(),
        },
        false,
    )
}

/// A converged node with one IPv4 and one IPv6 peer, each through a
/// nexthop object, plus a foreign classic route through flannel.1.
fn model_node() -> (Desired, Observed) {
    let vx = VxGen {
        vni_alt: false,
        underlay_alt: false,
        local_explicit: false,
        learning: false,
        gbp: false,
        mtu_explicit: false,
        adopt: false,
        addr_alt: false,
        peers: [2u8].into_iter().collect(),
    };
    let d = build_desired(&DesiredGen {
        v4: Some(vx.clone()),
        v6: Some(vx),
        routes: Vec::new(),
        nexthops: NexthopMode::Auto,
        past: false,
        v4_renamed: false,
    });
    let mut o = converge(&d, model_host());
    add_foreign(&mut o, &Foreign::RouteAtDeclared(2, false, 4));
    (d, o)
}

#[test]
fn model_deleting_a_device_takes_everything_on_it() {
    let (d, o) = model_node();
    assert_eq!(o.nexthops.len(), 2, "{o:#?}");
    assert!(o.routes.iter().any(|r| r.nhid.is_some()));
    let mut s = o.clone();
    apply_to(&mut s, &Op::DeleteLink { name: V4.into() });
    assert!(!s.links.contains_key(V4));
    assert!(s.addresses.iter().all(|a| a.dev != V4));
    assert!(s.neighbors.iter().all(|n| n.dev != V4));
    assert!(s.fdb.iter().all(|f| f.dev != V4));
    assert!(s.nexthops.iter().all(|n| n.dev.as_deref() == Some(V6)));
    assert_eq!(s.nexthops.len(), 1);
    assert!(s.routes.iter().all(|r| r.dev.as_deref() != Some(V4)));
    // The IPv6 device keeps its objects.
    assert!(s.routes.iter().any(|r| r.dev.as_deref() == Some(V6)));
    assert!(s.fdb.iter().any(|f| f.dev == V6));
    // Recreated: a new ifindex.
    let old = o.links.get(V4).unwrap().index;
    let p = plan(&d, &s);
    let s2 = simulate(&s, &p);
    let new = s2.links.get(V4).unwrap().index;
    assert!(new > old, "{old} → {new}");
}

#[test]
fn model_nexthop_deletion_takes_its_routes_and_the_last_ipv4_address_classic_ones() {
    let (_, o) = model_node();
    let id = o
        .nexthops
        .iter()
        .find(|n| n.dev.as_deref() == Some(V4))
        .unwrap()
        .id;
    let mut s = o.clone();
    apply_to(&mut s, &Op::DelNexthop { id });
    assert!(s.routes.iter().all(|r| r.nhid != Some(id)));
    assert_eq!(s.routes.len(), o.routes.len() - 1);
    // Classic IPv4 routes through flannel.1 (the foreign one) go with its
    // last IPv4 address; the one through the nexthop object stays.
    let mut s = o.clone();
    let a = s.addresses.iter().find(|a| a.dev == V4).unwrap().clone();
    apply_to(
        &mut s,
        &Op::DelAddress {
            dev: a.dev,
            cidr: a.cidr,
        },
    );
    assert!(
        s.routes
            .iter()
            .filter(|r| r.dev.as_deref() == Some(V4))
            .all(|r| r.nhid.is_some())
    );
    assert!(s.routes.iter().any(|r| r.nhid == Some(id)));
}

#[test]
fn model_metrics_renames_and_refusals() {
    let (d, o) = model_node();
    // IPv6 routes carry metric 1024 when added without one.
    let v6 = o
        .routes
        .iter()
        .find(|r| r.dst == peer_subnet(Family::Ipv6, 2));
    assert_eq!(v6.map(|r| r.metric), Some(Some(1024)));
    let v4 = o
        .routes
        .iter()
        .find(|r| r.dst == peer_subnet(Family::Ipv4, 2));
    assert_eq!(v4.map(|r| r.metric), Some(None));
    // A rename moves everything, ifindex kept.
    let mut s = o.clone();
    apply_to(
        &mut s,
        &Op::RenameLink {
            from: V4.into(),
            to: "flannel.9".into(),
        },
    );
    assert_eq!(
        s.links.get("flannel.9").map(|l| l.index),
        o.links.get(V4).map(|l| l.index)
    );
    assert!(s.routes.iter().all(|r| r.dev.as_deref() != Some(V4)));
    assert!(s.nexthops.iter().all(|n| n.dev.as_deref() != Some(V4)));
    assert!(
        s.nexthops
            .iter()
            .any(|n| n.dev.as_deref() == Some("flannel.9"))
    );
    // A taken nexthop id, a second device with the same VNI and port, and
    // a local of another family are refused: nothing changes.
    let mut s = o.clone();
    let n = o.nexthops.first().unwrap();
    apply_to(
        &mut s,
        &Op::SetNexthop(netconverge::plan::NexthopOp {
            id: n.id,
            via: ip("192.0.2.99"),
            dev: "eth0".into(),
            onlink: false,
            protocol: PROTO,
        }),
    );
    let p = plan(&d, &model_host());
    for c in &p.changes {
        if let Op::CreateVxlan(v) = &c.op {
            let mut v = v.clone();
            v.name = "other".into();
            apply_to(&mut s, &Op::CreateVxlan(v));
        }
    }
    apply_to(
        &mut s,
        &Op::SetVxlan {
            name: V4.into(),
            local: Some(ip("2001:db8::1")),
            underlay: None,
            learning: None,
        },
    );
    assert_eq!(s, o);
}
