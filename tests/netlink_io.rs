#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Kernel I/O of the engine (observe/apply over rtnetlink), each test in its
//! own network namespace, checked with iproute2's JSON output.
mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use common::Netns;
use ipnet::{IpNet, Ipv4Net};
use netconverge::apply::{self, ApplyReport};
use netconverge::model::{Desired, Family, Mac, Observed, RouteSpec, VxlanSpec};
use netconverge::netlink::Errno;
use netconverge::plan::{Change, ChangeKind, Op, Plan, RouteOp, VxlanCreate};
use netconverge::{netlink, observe};
use serde_json::Value;

const VX: &str = "nc.1";
const VX_MAC: Mac = Mac([0x02, 0xaa, 0, 0, 0, 0x01]);

/// Run `f` with a fresh rtnetlink handle on a thread inside `ns` (the
/// socket is created there, so it talks to that namespace).
fn block_in<R, F, Fut>(ns: &Netns, f: F) -> R
where
    F: FnOnce(netlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let handle = netlink::connect().unwrap();
            f(handle).await
        })
    })
}

fn apply_plan(ns: &Netns, plan: &Plan) -> ApplyReport {
    let plan = plan.clone();
    block_in(ns, move |h| async move {
        let observed = Observed {
            links: observe::dump_links(&h).await.unwrap(),
            ..Observed::default()
        };
        apply::apply(&h, &plan, &observed).await
    })
}

fn observe_in(ns: &Netns, desired: Desired) -> Observed {
    block_in(ns, move |h| async move {
        observe::observe(&h, &desired).await.unwrap()
    })
}

fn ch(object: impl Into<String>, op: Op) -> Change {
    Change {
        kind: ChangeKind::Add,
        object: object.into(),
        reason: "test".into(),
        op,
    }
}

fn plan_of(changes: Vec<Change>) -> Plan {
    Plan {
        changes,
        blocked: vec![],
        notes: vec![],
    }
}

fn assert_clean(r: &ApplyReport, applied: usize) {
    assert!(
        r.failures.is_empty(),
        "unexpected failures: {:#?}",
        r.failures
    );
    assert_eq!(r.applied, applied);
}

fn underlay(ns: &Netns, cidr: &str) {
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    ns.ip(&["link", "set", "ul0", "up"]);
    ns.ip(&["addr", "add", cidr, "dev", "ul0", "nodad"]);
}

fn create_vxlan(local: &str, mtu: u32) -> Change {
    let local: IpAddr = local.parse().unwrap();
    ch(
        format!("vxlan {VX}"),
        Op::CreateVxlan(VxlanCreate {
            name: VX.into(),
            vni: 1,
            port: 8472,
            underlay: "ul0".into(),
            family: Family::of(&local),
            local,
            mac: Some(VX_MAC),
            mtu,
            learning: false,
            gbp: false,
        }),
    )
}

fn peer_mac(i: u32) -> Mac {
    Mac([0x02, 0x42, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

fn route_op(dst: IpNet, via: Option<IpAddr>, dev: &str) -> RouteOp {
    RouteOp {
        table: 254,
        dst,
        via,
        dev: Some(dev.into()),
        onlink: via.is_some(),
        src: None,
        metric: None,
        protocol: 199,
        nhid: None,
    }
}

/// flannel's three objects for one remote node, in flannel's order.
fn peer(subnet: IpNet, vtep: IpAddr, mac: Mac) -> Vec<Change> {
    let gw = subnet.network();
    vec![
        ch(
            format!("neighbor {gw}"),
            Op::SetNeighbor {
                dev: VX.into(),
                ip: gw,
                mac,
            },
        ),
        ch(
            format!("fdb {mac}"),
            Op::AddFdb {
                dev: VX.into(),
                mac,
                dst: vtep,
            },
        ),
        ch(
            format!("route {subnet}"),
            Op::SetRoute(route_op(subnet, Some(gw), VX)),
        ),
    ]
}

fn v4_peer(i: u32) -> Vec<Change> {
    peer(
        format!("198.18.{i}.0/24").parse().unwrap(),
        format!("192.0.2.{i}").parse().unwrap(),
        peer_mac(i),
    )
}

/// vxlan over 192.0.2.1, its /32 address, peers 2..=4.
fn v4_plan() -> Plan {
    let mut changes = vec![
        create_vxlan("192.0.2.1", 1450),
        ch(
            "address 198.18.1.0/32",
            Op::AddAddress {
                dev: VX.into(),
                cidr: "198.18.1.0/32".parse().unwrap(),
                protocol: 0,
            },
        ),
    ];
    for i in 2..=4 {
        changes.extend(v4_peer(i));
    }
    // Plan order is irrelevant: apply runs by stage (routes would fail if
    // they ran before the device existed).
    changes.reverse();
    plan_of(changes)
}

fn by<'a>(arr: &'a Value, key: &str, val: &str) -> Option<&'a Value> {
    arr.as_array().unwrap().iter().find(|e| e[key] == val)
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn check_vxlan(ns: &Netns, local_key: &str, local: &str, mtu: u64) {
    let link = &ns.ip_json(&["-d", "link", "show", VX])[0];
    let info = &link["linkinfo"];
    assert_eq!(info["info_kind"], "vxlan", "{link}");
    let d = &info["info_data"];
    assert_eq!(d["id"], 1, "{d}");
    assert_eq!(d["port"], 8472, "{d}");
    assert_eq!(d[local_key], local, "{d}");
    assert_eq!(d["link"], "ul0", "{d}");
    assert_eq!(d["learning"], false, "{d}");
    assert_eq!(link["address"], VX_MAC.to_string());
    assert_eq!(link["mtu"], mtu);
    assert!(strs(&link["flags"]).contains(&"UP"), "{link}");
    let ra = ns.exec(&["cat", &format!("/proc/sys/net/ipv6/conf/{VX}/accept_ra")]);
    assert_eq!(ra.trim(), "0");
}

fn check_peer(ns: &Netns, subnet: &str, gw: &str, vtep: &str, mac: Mac) {
    let routes = ns.ip_json(&["route", "show", "table", "all"]);
    let r = by(&routes, "dst", subnet).unwrap_or_else(|| panic!("no route {subnet}: {routes}"));
    assert_eq!(r["gateway"], gw, "{r}");
    assert_eq!(r["dev"], VX, "{r}");
    assert_eq!(r["protocol"], "199", "{r}");
    assert!(strs(&r["flags"]).contains(&"onlink"), "{r}");

    let neigh = ns.ip_json(&["neigh", "show", "dev", VX]);
    let n = by(&neigh, "dst", gw).unwrap_or_else(|| panic!("no neighbour {gw}: {neigh}"));
    assert_eq!(n["lladdr"], mac.to_string(), "{n}");
    assert_eq!(strs(&n["state"]), ["PERMANENT"], "{n}");

    let fdb = ns.bridge_json(&["fdb", "show", "dev", VX]);
    let f = by(&fdb, "mac", &mac.to_string()).unwrap_or_else(|| panic!("no fdb {mac}: {fdb}"));
    assert_eq!(f["dst"], vtep, "{f}");
    assert!(strs(&f["flags"]).contains(&"self"), "{f}");
    assert_eq!(f["state"], "permanent", "{f}");
}

#[test]
fn ipv4_vxlan_with_three_peers() {
    let ns = Netns::new("nl-v4");
    underlay(&ns, "192.0.2.1/24");
    let plan = v4_plan();
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());

    check_vxlan(&ns, "local", "192.0.2.1", 1450);
    let addrs = ns.ip_json(&["addr", "show", "dev", VX]);
    let a = by(&addrs[0]["addr_info"], "local", "198.18.1.0").expect("address");
    assert_eq!(a["prefixlen"], 32);
    for i in 2..=4 {
        check_peer(
            &ns,
            &format!("198.18.{i}.0/24"),
            &format!("198.18.{i}.0"),
            &format!("192.0.2.{i}"),
            peer_mac(i),
        );
    }
}

#[test]
fn ipv6_vxlan_with_ipv6_fdb_and_routes() {
    let ns = Netns::new("nl-v6");
    underlay(&ns, "2001:db8::1/64");
    let mut changes = vec![
        create_vxlan("2001:db8::1", 1430),
        ch(
            "address fd00:0:0:1::/128",
            Op::AddAddress {
                dev: VX.into(),
                cidr: "fd00:0:0:1::/128".parse().unwrap(),
                protocol: 0,
            },
        ),
    ];
    for i in 2..=4 {
        changes.extend(peer(
            format!("fd00:0:0:{i}::/64").parse().unwrap(),
            format!("2001:db8::{i}").parse().unwrap(),
            peer_mac(i),
        ));
    }
    let plan = plan_of(changes);
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());

    check_vxlan(&ns, "local6", "2001:db8::1", 1430);
    let addrs = ns.ip_json(&["-6", "addr", "show", "dev", VX]);
    let a = by(&addrs[0]["addr_info"], "local", "fd00:0:0:1::").expect("address");
    assert_eq!(a["prefixlen"], 128);
    assert!(a.get("tentative").is_none(), "added without DAD: {a}");
    for i in 2..=4 {
        check_peer(
            &ns,
            &format!("fd00:0:0:{i}::/64"),
            &format!("fd00:0:0:{i}::"),
            &format!("2001:db8::{i}"),
            peer_mac(i),
        );
    }

    // Read back through observe: IPv6 local, routes (the kernel reports
    // IPv6 metric 1024 when none was given), neighbours, FDB.
    let mut desired = desired_v4();
    desired.vxlans[0].family = Family::Ipv6;
    let obs = observe_in(&ns, desired);
    let attrs = obs.links[VX].vxlan.clone().unwrap();
    assert_eq!(attrs.local, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(obs.links[VX].mtu, 1430);
    for i in 2..=4 {
        let dst: IpNet = format!("fd00:0:0:{i}::/64").parse().unwrap();
        let r = obs
            .routes
            .iter()
            .find(|r| r.dst == dst)
            .unwrap_or_else(|| panic!("{dst}: {:?}", obs.routes));
        assert_eq!(r.via, Some(dst.addr()));
        assert_eq!(
            (r.dev.as_deref(), r.onlink, r.protocol, r.table, r.metric),
            (Some(VX), true, 199, 254, Some(1024))
        );
        let f = obs.fdb.iter().find(|f| f.mac == peer_mac(i)).unwrap();
        assert_eq!(f.dst, Some(format!("2001:db8::{i}").parse().unwrap()));
        let n = obs.neighbors.iter().find(|n| n.ip == dst.addr()).unwrap();
        assert_eq!((n.mac, n.permanent), (Some(peer_mac(i)), true));
    }
    assert!(
        obs.addresses
            .iter()
            .any(|a| a.dev == VX && a.global && a.cidr.to_string() == "fd00:0:0:1::/128")
    );
}

fn state_snapshot(ns: &Netns) -> (Value, Value, Value, Value) {
    (
        ns.ip_json(&["route", "show", "table", "all", "dev", VX]),
        ns.ip_json(&["neigh", "show", "dev", VX]),
        ns.bridge_json(&["fdb", "show", "dev", VX]),
        ns.ip_json(&["addr", "show", "dev", VX])[0]["addr_info"].clone(),
    )
}

#[test]
fn same_plan_twice_is_idempotent() {
    let ns = Netns::new("nl-twice");
    underlay(&ns, "192.0.2.1/24");
    let plan = v4_plan();
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());
    let before = state_snapshot(&ns);
    let index = ns.ip_json(&["link", "show", VX])[0]["ifindex"].clone();
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());
    assert_eq!(state_snapshot(&ns), before);
    assert_eq!(
        ns.ip_json(&["link", "show", VX])[0]["ifindex"],
        index,
        "device not recreated"
    );
}

fn del_changes(subnet: &str, gw: &str, vtep: &str, mac: Mac, dev: &str) -> Vec<Change> {
    let gw: IpAddr = gw.parse().unwrap();
    vec![
        ch(
            format!("neighbor {gw}"),
            Op::DelNeighbor {
                dev: dev.into(),
                ip: gw,
            },
        ),
        ch(
            format!("fdb {mac}"),
            Op::DelFdb {
                dev: dev.into(),
                mac,
                dst: Some(vtep.parse().unwrap()),
            },
        ),
        ch(
            format!("route {subnet}"),
            Op::DelRoute(route_op(subnet.parse().unwrap(), Some(gw), dev)),
        ),
    ]
}

#[test]
fn deletes_remove_present_objects_and_tolerate_absent_ones() {
    let ns = Netns::new("nl-del");
    underlay(&ns, "192.0.2.1/24");
    let plan = v4_plan();
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());

    // The kernel flushes every IPv4 route through a device when its last
    // IPv4 address goes (fib_disable_ip): keep a second one.
    ns.ip(&["addr", "add", "198.18.1.1/32", "dev", VX]);
    // Peer 2 exists; peer 9 never did; `gone0` is no device at all.
    let mut changes = del_changes("198.18.2.0/24", "198.18.2.0", "192.0.2.2", peer_mac(2), VX);
    changes.extend(del_changes(
        "198.18.9.0/24",
        "198.18.9.0",
        "192.0.2.9",
        peer_mac(9),
        VX,
    ));
    changes.extend(del_changes(
        "198.18.9.0/24",
        "198.18.9.0",
        "192.0.2.9",
        peer_mac(9),
        "gone0",
    ));
    changes.push(ch(
        "fdb any dst",
        Op::DelFdb {
            dev: VX.into(),
            mac: peer_mac(10),
            dst: None,
        },
    ));
    for (dev, cidr) in [
        (VX, "198.18.1.0/32"),
        (VX, "198.18.77.0/32"),
        ("gone0", "198.18.1.0/32"),
    ] {
        changes.push(ch(
            format!("address {cidr} on {dev}"),
            Op::DelAddress {
                dev: dev.into(),
                cidr: cidr.parse().unwrap(),
            },
        ));
    }
    changes.push(ch(
        "link gone1",
        Op::DeleteLink {
            name: "gone1".into(),
        },
    ));
    let del = plan_of(changes);
    assert_clean(&apply_plan(&ns, &del), del.changes.len());

    let (routes, neigh, fdb, addrs) = state_snapshot(&ns);
    assert!(by(&routes, "dst", "198.18.2.0/24").is_none(), "{routes}");
    assert!(by(&routes, "dst", "198.18.3.0/24").is_some(), "{routes}");
    assert!(by(&neigh, "dst", "198.18.2.0").is_none(), "{neigh}");
    assert_eq!(neigh.as_array().unwrap().len(), 2, "{neigh}");
    assert!(by(&fdb, "mac", &peer_mac(2).to_string()).is_none(), "{fdb}");
    assert_eq!(fdb.as_array().unwrap().len(), 2, "{fdb}");
    assert!(by(&addrs, "local", "198.18.1.0").is_none(), "{addrs}");
    assert!(by(&addrs, "local", "198.18.1.1").is_some(), "{addrs}");

    // Deleting the device, then deleting it again.
    let drop = plan_of(vec![ch(
        format!("vxlan {VX}"),
        Op::DeleteLink { name: VX.into() },
    )]);
    assert_clean(&apply_plan(&ns, &drop), 1);
    assert!(!ns.ip(&["link", "show"]).contains(VX));
    assert_clean(&apply_plan(&ns, &drop), 1);
}

#[test]
fn one_failure_is_reported_and_the_rest_applied() {
    let ns = Netns::new("nl-fail");
    underlay(&ns, "192.0.2.1/24");
    let mut changes = vec![
        create_vxlan("192.0.2.1", 1450),
        ch(
            "route 198.18.50.0/24",
            Op::SetRoute(route_op(
                "198.18.50.0/24".parse().unwrap(),
                None,
                "missing0",
            )),
        ),
        ch(
            format!("link {VX} mtu"),
            Op::SetLink {
                name: VX.into(),
                mtu: Some(9000),
                mac: None,
                up: None,
            },
        ),
    ];
    changes.extend(v4_peer(2));
    let plan = plan_of(changes);
    let report = apply_plan(&ns, &plan);
    assert_eq!(report.applied, plan.changes.len() - 2, "{report:#?}");
    let failures: Vec<(&str, &str)> = report
        .failures
        .iter()
        .map(|f| (f.object.as_str(), f.error.as_str()))
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].0, "route 198.18.50.0/24");
    assert!(failures[0].1.contains("missing0"), "{failures:?}");
    // MTU above underlay − overhead: the kernel's own errno text.
    assert_eq!(failures[1].0, format!("link {VX} mtu"));
    assert!(failures[1].1.contains("Invalid argument"), "{failures:?}");
    check_peer(&ns, "198.18.2.0/24", "198.18.2.0", "192.0.2.2", peer_mac(2));
    assert_eq!(ns.ip_json(&["link", "show", VX])[0]["mtu"], 1450);
}

#[test]
fn set_link_changes_only_given_fields() {
    let ns = Netns::new("nl-set");
    underlay(&ns, "192.0.2.1/24");
    assert_clean(
        &apply_plan(&ns, &plan_of(vec![create_vxlan("192.0.2.1", 1450)])),
        1,
    );
    let mac = Mac([0x02, 0xaa, 0, 0, 0, 0x99]);
    let set = |mtu, mac, up| {
        plan_of(vec![ch(
            "set",
            Op::SetLink {
                name: VX.into(),
                mtu,
                mac,
                up,
            },
        )])
    };
    assert_clean(
        &apply_plan(&ns, &set(Some(1400), Some(mac), Some(false))),
        1,
    );
    let link = &ns.ip_json(&["link", "show", VX])[0];
    assert_eq!(
        (link["mtu"].as_u64(), link["address"].as_str()),
        (Some(1400), Some("02:aa:00:00:00:99"))
    );
    assert!(!strs(&link["flags"]).contains(&"UP"), "{link}");
    assert_clean(&apply_plan(&ns, &set(None, None, Some(true))), 1);
    let link = &ns.ip_json(&["link", "show", VX])[0];
    assert!(strs(&link["flags"]).contains(&"UP"), "{link}");
    assert_eq!(link["mtu"], 1400);
}

fn desired_v4() -> Desired {
    Desired {
        vxlans: vec![VxlanSpec {
            name: VX.into(),
            vni: 1,
            port: 8472,
            underlay: "ul0".into(),
            family: Family::Ipv4,
            local: None,
            mac: Some(VX_MAC),
            mtu: None,
            learning: false,
            gbp: false,
        }],
        routes: vec![RouteSpec {
            dst: "198.18.9.0/24".parse().unwrap(),
            via: None,
            dev: Some("ul0".into()),
            onlink: false,
            src: None,
            metric: None,
            table: 254,
            origin: "route #1".into(),
        }],
        ..Desired::default()
    }
}

#[test]
fn observe_reads_back_what_apply_wrote_and_filters_foreign_objects() {
    let ns = Netns::new("nl-obs");
    underlay(&ns, "192.0.2.1/24");
    let plan = v4_plan();
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());
    // Foreign objects: only some of them match an observation rule.
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.254",
        "dev",
        "ul0",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "198.18.9.0/24",
        "dev",
        "ul0",
        "proto",
        "static",
    ]); // desired (table, dst)
    ns.ip(&[
        "route",
        "add",
        "198.51.100.128/25",
        "dev",
        "ul0",
        "proto",
        "199",
    ]); // our marker
    ns.ip(&[
        "route",
        "add",
        "198.18.20.0/24",
        "dev",
        "ul0",
        "table",
        "1000",
        "proto",
        "199",
    ]);
    ns.ip(&[
        "route",
        "add",
        "198.18.21.0/24",
        "dev",
        "ul0",
        "table",
        "1000",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "192.0.2.77",
        "lladdr",
        "02:cc:00:00:00:77",
        "dev",
        "ul0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "198.18.7.0",
        "lladdr",
        "02:cc:00:00:00:07",
        "dev",
        VX,
        "nud",
        "reachable",
    ]);
    ns.ip(&[
        "link",
        "add",
        "other.2",
        "type",
        "vxlan",
        "id",
        "2",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
    ]);
    ns.exec(&[
        "bridge",
        "fdb",
        "append",
        "02:cc:00:00:00:02",
        "dev",
        "other.2",
        "dst",
        "192.0.2.8",
        "self",
        "permanent",
    ]);

    let obs = observe_in(&ns, desired_v4());

    // Links: all of them, as `ip -d link` reports them.
    let ip_links = ns.ip_json(&["-d", "link", "show"]);
    let names: BTreeSet<&str> = ip_links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert_eq!(
        obs.links
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        names
    );
    let ip_vx = by(&ip_links, "ifname", VX).unwrap();
    let ul0 = by(&ip_links, "ifname", "ul0").unwrap()["ifindex"]
        .as_u64()
        .unwrap() as u32;
    let vx = &obs.links[VX];
    assert_eq!(u64::from(vx.index), ip_vx["ifindex"].as_u64().unwrap());
    assert_eq!((vx.kind.as_str(), vx.mtu, vx.up), ("vxlan", 1450, true));
    assert_eq!(vx.mac, Some(VX_MAC));
    let attrs = vx.vxlan.as_ref().expect("vxlan attributes");
    assert_eq!((attrs.vni, attrs.port), (1, 8472));
    assert_eq!(attrs.local, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    assert_eq!(attrs.underlay_index, Some(ul0));
    assert!(!attrs.learning && !attrs.gbp);
    assert_eq!(obs.links["ul0"].kind, "veth");
    assert!(obs.links["ul0"].vxlan.is_none());
    assert_eq!(
        obs.links["other.2"].vxlan.as_ref().unwrap().underlay_index,
        None
    );

    // Addresses: all devices; scope global ↔ `global`.
    let ip_addrs = ns.ip_json(&["addr", "show"]);
    let mut expected = BTreeSet::new();
    for l in ip_addrs.as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            let cidr = format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]);
            expected.insert((
                l["ifname"].as_str().unwrap().to_string(),
                cidr,
                a["scope"] == "global",
            ));
        }
    }
    let got: BTreeSet<_> = obs
        .addresses
        .iter()
        .map(|a| (a.dev.clone(), a.cidr.to_string(), a.global))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        obs.first_global_addr("ul0", Family::Ipv4),
        Some("192.0.2.1".parse().unwrap())
    );

    // Routes: kept iff on the owned device, with our protocol, or at a
    // desired (table, dst); fields as `ip route` reports them.
    let dsts: BTreeSet<String> = obs
        .routes
        .iter()
        .map(|r| format!("{} t{}", r.dst, r.table))
        .collect();
    for want in [
        "198.18.2.0/24 t254",
        "198.18.3.0/24 t254",
        "198.18.4.0/24 t254",
        "198.18.9.0/24 t254",
        "198.51.100.128/25 t254",
        "198.18.20.0/24 t1000",
    ] {
        assert!(dsts.contains(want), "{want} missing from {dsts:?}");
    }
    for unwanted in [
        "198.51.100.0/24 t254",
        "198.18.21.0/24 t1000",
        "192.0.2.0/24 t254",
    ] {
        assert!(!dsts.contains(unwanted), "{unwanted} in {dsts:?}");
    }
    assert!(obs.routes.iter().all(|r| r.table != 255), "local table");
    let ip_routes = ns.ip_json(&["route", "show", "table", "all"]);
    for r in &obs.routes {
        let kept = r.dev.as_deref() == Some(VX)
            || r.protocol == 199
            || r.dst.to_string() == "198.18.9.0/24";
        assert!(kept, "{r:?}");
        if r.dst.addr().is_ipv6() {
            continue;
        }
        let ip = ip_routes
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                let table_ok = match &e["table"] {
                    Value::Null => r.table == 254,
                    t => t.as_str() == Some(&r.table.to_string()),
                };
                table_ok && e["dst"].as_str() == Some(&r.dst.to_string())
            })
            .unwrap_or_else(|| panic!("{r:?} not in ip route"));
        assert_eq!(ip["dev"].as_str(), r.dev.as_deref(), "{r:?} vs {ip}");
        assert_eq!(
            ip["gateway"].as_str().map(str::to_string),
            r.via.map(|v| v.to_string()),
            "{ip}"
        );
        assert_eq!(strs(&ip["flags"]).contains(&"onlink"), r.onlink, "{ip}");
        assert_eq!(ip["metric"].as_u64(), r.metric.map(u64::from), "{ip}");
        let proto = match r.protocol {
            2 => "kernel".to_string(),
            4 => "static".to_string(),
            p => p.to_string(),
        };
        assert_eq!(ip["protocol"], proto, "{ip}");
    }

    // Neighbours: only on devices the desired state references.
    let ip_neigh = ns.ip_json(&["neigh", "show", "dev", VX]);
    let got: BTreeSet<(String, Option<String>, bool)> = obs
        .neighbors
        .iter()
        .map(|n| {
            assert_eq!(n.dev, VX, "{n:?}");
            (n.ip.to_string(), n.mac.map(|m| m.to_string()), n.permanent)
        })
        .collect();
    let expected: BTreeSet<(String, Option<String>, bool)> = ip_neigh
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["dst"].as_str().unwrap().to_string(),
                n["lladdr"].as_str().map(str::to_string),
                strs(&n["state"]).contains(&"PERMANENT"),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 4, "3 peers + 1 hand-made");
    assert!(got.contains(&("198.18.7.0".into(), Some("02:cc:00:00:00:07".into()), false)));

    // FDB: only the declared vxlan device's own entries.
    let ip_fdb = ns.bridge_json(&["fdb", "show", "dev", VX]);
    let got: BTreeSet<(String, Option<String>, bool)> = obs
        .fdb
        .iter()
        .map(|f| {
            assert_eq!(f.dev, VX, "{f:?}");
            (f.mac.to_string(), f.dst.map(|d| d.to_string()), f.permanent)
        })
        .collect();
    let expected: BTreeSet<(String, Option<String>, bool)> = ip_fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["mac"].as_str().unwrap().to_string(),
                f["dst"].as_str().map(str::to_string),
                f["state"] == "permanent",
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 3);
    assert_eq!(obs.nat, Default::default());
    assert_eq!(obs.lease, Default::default());
}

#[test]
fn scale_2000_peers_in_one_plan() {
    const PEERS: u32 = 2000;
    let ns = Netns::new("nl-scale");
    underlay(&ns, "192.0.2.1/24");
    let mut changes = vec![create_vxlan("192.0.2.1", 1450)];
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    for i in 0..PEERS {
        let subnet = Ipv4Net::new(Ipv4Addr::from(base + (i << 8)), 24).unwrap();
        let vtep = Ipv4Addr::new(192, 0, 2, 2 + (i % 250) as u8);
        changes.extend(peer(IpNet::V4(subnet), IpAddr::V4(vtep), peer_mac(i + 1)));
    }
    let plan = plan_of(changes);
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());

    let routes = ns.ip_json(&["route", "show", "dev", VX, "proto", "199"]);
    assert_eq!(routes.as_array().unwrap().len(), PEERS as usize);
    assert!(
        by(&routes, "dst", "100.71.207.0/24").is_some(),
        "last peer (1999 << 8)"
    );
    let neigh = ns.ip_json(&["neigh", "show", "dev", VX, "nud", "permanent"]);
    assert_eq!(neigh.as_array().unwrap().len(), PEERS as usize);
    let fdb = ns.bridge_json(&["fdb", "show", "dev", VX]);
    assert_eq!(fdb.as_array().unwrap().len(), PEERS as usize);

    let obs = observe_in(&ns, desired_v4());
    assert_eq!(
        obs.routes.iter().filter(|r| r.protocol == 199).count(),
        PEERS as usize
    );
    assert_eq!(obs.neighbors.len(), PEERS as usize);
    assert_eq!(obs.fdb.len(), PEERS as usize);

    // And again: every object already there.
    assert_clean(&apply_plan(&ns, &plan), plan.changes.len());
}

#[test]
fn fdb_flood_entries_append_and_unicast_entries_follow_their_vtep() {
    let ns = Netns::new("nl-fdb");
    underlay(&ns, "192.0.2.1/24");
    assert_clean(
        &apply_plan(&ns, &plan_of(vec![create_vxlan("192.0.2.1", 1450)])),
        1,
    );
    let add = |mac: Mac, dst: &str| {
        ch(
            format!("fdb {mac} {dst}"),
            Op::AddFdb {
                dev: VX.into(),
                mac,
                dst: dst.parse().unwrap(),
            },
        )
    };
    let unicast = peer_mac(5);
    let plan = plan_of(vec![
        add(Mac::ZERO, "192.0.2.2"),
        add(Mac::ZERO, "192.0.2.3"),
        add(unicast, "192.0.2.5"),
    ]);
    assert_clean(&apply_plan(&ns, &plan), 3);
    // The peer's VTEP moved: the entry follows without a delete first.
    assert_clean(
        &apply_plan(&ns, &plan_of(vec![add(unicast, "192.0.2.6")])),
        1,
    );

    let entries = |ns: &Netns| -> BTreeSet<(String, String)> {
        ns.bridge_json(&["fdb", "show", "dev", VX])
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["mac"].as_str().unwrap().into(),
                    f["dst"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let zero = Mac::ZERO.to_string();
    let want: BTreeSet<(String, String)> = [
        (zero.clone(), "192.0.2.2".to_string()),
        (zero.clone(), "192.0.2.3".to_string()),
        (unicast.to_string(), "192.0.2.6".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(entries(&ns), want);

    // Deleting one destination of a flood entry keeps the other.
    let del = plan_of(vec![ch(
        "fdb del",
        Op::DelFdb {
            dev: VX.into(),
            mac: Mac::ZERO,
            dst: Some("192.0.2.2".parse().unwrap()),
        },
    )]);
    assert_clean(&apply_plan(&ns, &del), 1);
    let left = entries(&ns);
    assert!(
        left.contains(&(zero.clone(), "192.0.2.3".into())),
        "{left:?}"
    );
    assert!(!left.contains(&(zero, "192.0.2.2".into())), "{left:?}");
}

/// A kernel NACK reaches the report as its errno, a typed value (what the
/// CLI's exit code 3 and every other decision is made on), next to the
/// kernel's own text.
#[test]
fn failures_carry_the_kernels_errno() {
    let ns = Netns::new("nl-errno");
    underlay(&ns, "192.0.2.1/24");
    let plan = plan_of(vec![
        create_vxlan("192.0.2.1", 1450),
        ch(
            format!("link {VX} mtu"),
            Op::SetLink {
                name: VX.into(),
                mtu: Some(9000),
                mac: None,
                up: None,
            },
        ),
        ch(
            "route 198.18.50.0/24",
            Op::SetRoute(route_op(
                "198.18.50.0/24".parse().unwrap(),
                None,
                "missing0",
            )),
        ),
    ]);
    let report = apply_plan(&ns, &plan);
    let got: Vec<(&str, Option<Errno>)> = report
        .failures
        .iter()
        .map(|f| (f.object.as_str(), f.errno))
        .collect();
    assert_eq!(
        got,
        [
            ("link nc.1 mtu", Some(Errno::EINVAL)),
            ("route 198.18.50.0/24", Some(Errno::ENODEV)),
        ],
        "{report:#?}"
    );
    assert!(report.failures[0].error.contains("Invalid argument"));
    assert!(!report.failures.iter().any(|f| f.permission_denied()));
    // the JSON report carries the number
    let json = serde_json::to_value(&report.failures[0]).unwrap();
    assert_eq!(json["errno"], libc::EINVAL, "{json}");
    // positive control of the MTU refusal: the device exists and kept its MTU
    assert_eq!(ns.ip_json(&["link", "show", VX])[0]["mtu"], 1450);
}

/// The foreign VXLAN device of the conflict tests: VNI 1, port 8472, over
/// the same underlay and local address as ours (what flannel's leftover or
/// another overlay would be).
fn foreign_vxlan(ns: &Netns) {
    ns.ip(&[
        "link",
        "add",
        "vx-foreign",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "local",
        "192.0.2.1",
        "dev",
        "ul0",
    ]);
}

/// A VXLAN device refused because another device holds its VNI and port:
/// the report says exactly that, once, and what would go on the device is
/// reported once as waiting for it (not one "does not exist" per object,
/// nor an EINVAL per route through a missing nexthop). The foreign device
/// is left as it was.
#[test]
fn vni_taken_by_a_foreign_device_is_reported_as_such() {
    let ns = Netns::new("nl-vni");
    underlay(&ns, "192.0.2.1/24");
    foreign_vxlan(&ns);
    let before = ns.ip_json(&["-d", "link", "show", "vx-foreign"]);
    let mut changes = vec![ch(
        "address 198.18.1.0/32",
        Op::AddAddress {
            dev: VX.into(),
            cidr: "198.18.1.0/32".parse().unwrap(),
            protocol: netconverge::model::ROUTE_PROTOCOL,
        },
    )];
    for i in 2..=4 {
        changes.extend(v4_peer(i));
    }
    // a nexthop object on the device and a route through it (its dev left
    // out: the route waits because its nexthop does)
    changes.push(ch(
        "nexthop 199000005",
        Op::SetNexthop(netconverge::plan::NexthopOp {
            id: 199_000_005,
            via: "198.18.5.0".parse().unwrap(),
            dev: VX.into(),
            onlink: true,
            protocol: 199,
        }),
    ));
    changes.push(ch(
        "route 198.18.5.0/24",
        Op::SetRoute(RouteOp {
            nhid: Some(199_000_005),
            dev: None,
            via: None,
            onlink: false,
            ..route_op("198.18.5.0/24".parse().unwrap(), None, VX)
        }),
    ));
    // something independent of the device still goes in
    changes.push(ch(
        "address 198.18.77.1/32 dev ul0",
        Op::AddAddress {
            dev: "ul0".into(),
            cidr: "198.18.77.1/32".parse().unwrap(),
            protocol: netconverge::model::ROUTE_PROTOCOL,
        },
    ));
    changes.push(create_vxlan("192.0.2.1", 1450));
    let dependents = changes.len() - 2;
    let plan = plan_of(changes);
    let report = apply_plan(&ns, &plan);

    let got: Vec<(&str, &str)> = report
        .failures
        .iter()
        .map(|f| (f.object.as_str(), f.error.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                format!("vxlan {VX}").as_str(),
                "VNI 1 port 8472 already used by vx-foreign"
            ),
            (
                format!("{dependents} objects on {VX}").as_str(),
                format!("waiting for vxlan {VX}").as_str()
            ),
        ],
        "{report:#?}"
    );
    assert_eq!(report.failures[0].errno, Some(Errno::EEXIST));
    assert_eq!(report.applied, 1, "the underlay address: {report:#?}");
    assert!(ns.link(VX).is_none(), "{VX} must not exist");
    assert_eq!(
        ns.ip_json(&["-d", "link", "show", "vx-foreign"]),
        before,
        "the foreign device is left alone"
    );
    let ul0 = ns.ip_json(&["addr", "show", "dev", "ul0"]);
    assert!(ul0.to_string().contains("198.18.77.1"), "{ul0}");

    // Positive control: with the VNI free, the same plan applies entirely.
    ns.ip(&["link", "del", "vx-foreign"]);
    let report = apply_plan(&ns, &plan);
    assert_clean(&report, plan.changes.len());
    check_peer(&ns, "198.18.2.0/24", "198.18.2.0", "192.0.2.2", peer_mac(2));
}

/// The same conflict through the CLI: one line names the holder, one line
/// the objects waiting; nothing failed or was attempted, exit 1 (not
/// converged).
#[test]
fn converge_names_the_device_holding_the_vni() {
    let ns = Netns::new("cli-vni");
    underlay(&ns, "192.0.2.1/24");
    foreign_vxlan(&ns);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("n.toml");
    let mut text = "node_name = \"n1\"\n\n[[vxlan]]\nname = \"flannel.1\"\nvni = 1\n\
                    underlay = \"ul0\"\n\n[[address]]\ndev = \"flannel.1\"\n\
                    cidr = \"198.18.1.0/32\"\n"
        .to_string();
    for k in 2..=3 {
        text += &format!(
            "\n[[peer]]\ndev = \"flannel.1\"\nsubnet = \"198.18.{k}.0/24\"\n\
             vtep_ip = \"192.0.2.{k}\"\nvtep_mac = \"02:00:00:00:00:0{k}\"\n"
        );
    }
    std::fs::write(&config, text).unwrap();
    // The planner sees the holder in the observed links and blocks the
    // device before any request (so `--check` names it too); the apply-time
    // EEXIST path for a holder that appears after planning is the test above.
    for args in [&["converge", "--check"][..], &["converge"][..]] {
        let out = ns.netconverge(&config, args);
        let all = common::stdout_stderr(&out);
        assert!(
            all.lines().any(
                |l| l.starts_with("! vxlan flannel.1: blocked: vxlan vx-foreign")
                    && l.contains("already uses vni 1 port 8472")
            ),
            "{args:?}: {all}"
        );
        assert!(
            all.contains("on flannel.1: blocked: waiting for vxlan flannel.1"),
            "{args:?}: {all}"
        );
        assert!(!all.contains("failed:"), "{args:?}: {all}");
        assert!(!all.contains("does not exist"), "{args:?}: {all}");
        assert_eq!(common::code(&out), 1, "{args:?}: {all}");
    }
    let out = ns.netconverge(&config, &["converge"]);
    let all = common::stdout_stderr(&out);
    assert!(!all.contains("does not exist"), "{all}");
    assert_eq!(common::code(&out), 1, "{all}");
    assert!(ns.link("flannel.1").is_none());
    assert!(ns.link("vx-foreign").is_some());
}

/// Addresses: `n` global /32s on `dev` (one `ip -batch`).
fn many_addresses(ns: &Netns, dev: &str, n: u32) -> BTreeSet<IpNet> {
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("addrs");
    let want: BTreeSet<IpNet> = (0..n)
        .map(|i| {
            format!("198.18.{}.{}/32", 100 + (i >> 8), i & 0xff)
                .parse()
                .unwrap()
        })
        .collect();
    let text: String = want
        .iter()
        .map(|a| format!("addr add {a} dev {dev}\n"))
        .collect();
    std::fs::write(&batch, text).unwrap();
    ns.ip(&["-batch", batch.to_str().unwrap()]);
    want
}

/// A process that adds and deletes objects in `ns` in a loop until dropped.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
    _dir: tempfile::TempDir,
}

impl Churn {
    fn start(ns: &Netns, batch: String) -> Churn {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn");
        std::fs::write(&path, batch).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let name = ns.name.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rounds = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args(["-n", &name, "-batch", path.to_str().unwrap()])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                rounds += 1;
                // Quiet windows between rounds: dumps that start in one get
                // through (on a loaded machine a dump can outlast any gap a
                // continuous churn leaves), those that overlap a round are
                // still interrupted (the positive control below).
                std::thread::sleep(std::time::Duration::from_millis(40));
            }
            rounds
        });
        Churn {
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Stop; how many rounds of changes ran.
    fn stop(mut self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Dumps while another process keeps changing addresses and routes in the
/// same namespace: every dump the engine returns is a consistent snapshot
/// (each stable object exactly once), because a dump the kernel marks as
/// interrupted (NLM_F_DUMP_INTR) is run again, and one that never gets
/// through is an error, not a result. The churn adds and removes
/// host-scope addresses, which IPv4 puts at the head of the device's list:
/// each one moves every stable address, which is what an interrupted dump
/// resumes by, so a trusted interrupted dump misses or doubles them.
#[test]
fn dumps_interrupted_by_concurrent_changes_are_retried_never_trusted() {
    let ns = Netns::new("nl-intr");
    ns.ip(&["link", "add", "b0", "type", "veth", "peer", "name", "b1"]);
    ns.ip(&["link", "set", "b0", "up"]);
    ns.ip(&["link", "set", "b1", "up"]);
    let stable = many_addresses(&ns, "b0", 3000);
    let mut routes = String::new();
    for i in 0..1000u32 {
        routes += &format!(
            "route add 198.19.{}.{}/32 dev b0 proto 199\n",
            i >> 8,
            i & 0xff
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes"), &routes).unwrap();
    ns.ip(&["-batch", dir.path().join("routes").to_str().unwrap()]);
    let stable_routes: BTreeSet<IpNet> = (0..1000u32)
        .map(|i| {
            format!("198.19.{}.{}/32", i >> 8, i & 0xff)
                .parse()
                .unwrap()
        })
        .collect();

    let mut churn = String::new();
    for i in 0..100u32 {
        churn += &format!("addr add 198.18.99.{i}/32 dev b0 scope host\n");
        churn += &format!("route add 198.17.0.{i}/32 dev b0 proto 199\n");
        churn += &format!("addr del 198.18.99.{i}/32 dev b0\n");
        churn += &format!("route del 198.17.0.{i}/32 dev b0\n");
    }
    let churn = Churn::start(&ns, churn);
    const DUMPS: usize = 60;
    let (results, interrupted) = block_in(&ns, |h| async move {
        let names = observe::link_names(&observe::dump_links(&h).await.unwrap());
        let filter = observe::RouteFilter {
            protocol: 199,
            ..Default::default()
        };
        let mut results = Vec::new();
        for _ in 0..DUMPS {
            let addrs = observe::dump_addresses(&h, &names).await;
            let routes = observe::dump_routes(&h, &names, &[], &filter).await;
            results.push((addrs, routes));
        }
        (results, h.bulk().interrupted_dumps())
    });
    let rounds = churn.stop();
    assert!(rounds > 0, "the churn must have run");
    // Positive control: the kernel did interrupt dumps during this test.
    assert!(
        interrupted > 0,
        "no dump was interrupted: the test proves nothing"
    );

    let mut complete = 0;
    for (k, (addrs, routes)) in results.into_iter().enumerate() {
        match addrs {
            Ok(addrs) => {
                let ours: Vec<IpNet> = addrs
                    .iter()
                    .filter(|a| stable.contains(&a.cidr))
                    .map(|a| a.cidr)
                    .collect();
                let unique: BTreeSet<IpNet> = ours.iter().copied().collect();
                assert_eq!(ours.len(), unique.len(), "dump {k}: an address twice");
                let missing: Vec<_> = stable.difference(&unique).take(5).collect();
                assert!(missing.is_empty(), "dump {k}: missing e.g. {missing:?}");
                complete += 1;
            }
            Err(e) => assert!(
                e.to_string().contains("NLM_F_DUMP_INTR"),
                "dump {k}: only persistent interruption may fail a dump: {e}"
            ),
        }
        match routes {
            Ok(routes) => {
                let ours: Vec<IpNet> = routes
                    .iter()
                    .filter(|r| stable_routes.contains(&r.dst))
                    .map(|r| r.dst)
                    .collect();
                let unique: BTreeSet<IpNet> = ours.iter().copied().collect();
                assert_eq!(ours.len(), unique.len(), "dump {k}: a route twice");
                assert_eq!(unique, stable_routes, "dump {k}: routes");
            }
            Err(e) => assert!(e.to_string().contains("NLM_F_DUMP_INTR"), "dump {k}: {e}"),
        }
    }
    eprintln!(
        "{complete} of {DUMPS} address dumps complete, {interrupted} attempts interrupted, \
         {rounds} churn rounds"
    );
    assert!(
        complete > 0,
        "every dump failed: {interrupted} interruptions"
    );
    // Quiet again: a dump goes through at once and is complete.
    let (addrs, interrupted_after) = block_in(&ns, |h| async move {
        let names = observe::link_names(&observe::dump_links(&h).await.unwrap());
        let a = observe::dump_addresses(&h, &names).await.unwrap();
        (a, h.bulk().interrupted_dumps())
    });
    assert_eq!(interrupted_after, 0);
    assert_eq!(
        addrs.iter().filter(|a| stable.contains(&a.cidr)).count(),
        stable.len()
    );
}

/// Without CAP_NET_ADMIN the kernel answers EPERM: the JSON report carries
/// it as `errno` 1 and the exit code 3 (missing privilege) is decided on
/// it. Control: the same file with the capability converges.
#[test]
fn a_missing_capability_is_an_errno_and_exit_3() {
    let ns = Netns::new("cli-eperm");
    underlay(&ns, "192.0.2.1/24");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("n.toml");
    std::fs::write(
        &config,
        "node_name = \"n1\"\n\n[[vxlan]]\nname = \"flannel.1\"\nvni = 1\n\
         underlay = \"ul0\"\n\n[[address]]\ndev = \"flannel.1\"\ncidr = \"198.18.1.0/32\"\n",
    )
    .unwrap();
    // A user namespace of its own: the process holds CAP_NET_ADMIN there
    // (so the CLI's upfront capability check passes), but not over this
    // network namespace, so the kernel itself answers EPERM and the exit
    // code must come from the errno. (Without the capability at all the
    // CLI refuses before any request: tests/cli.rs.)
    let out = ns.exec_output(&[
        "unshare",
        "--user",
        "--map-root-user",
        "--",
        env!("CARGO_BIN_EXE_netconverge"),
        "-c",
        config.to_str().unwrap(),
        "converge",
        "--format",
        "json",
    ]);
    let text = common::stdout(&out);
    assert_eq!(common::code(&out), 3, "{}", common::stdout_stderr(&out));
    let json: Value = serde_json::from_str(&text).unwrap();
    let failures = json["failures"].as_array().unwrap();
    assert_eq!(failures[0]["object"], "vxlan flannel.1", "{json}");
    assert_eq!(failures[0]["errno"], libc::EPERM, "{json}");
    assert!(ns.link("flannel.1").is_none());

    let out = ns.netconverge(&config, &["converge"]);
    assert_eq!(common::code(&out), 0, "{}", common::stdout_stderr(&out));
    assert!(ns.link("flannel.1").is_some());
}
