#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Routes through kernel nexthop objects (`[engine] nexthops`), converged by
//! the engine in a throwaway namespace and read back with `ip -j nexthop` and
//! `ip -j route`.
mod common;

use std::net::IpAddr;

use common::Netns;
use ipnet::IpNet;
use netconverge::engine::{self, Outcome};
use netconverge::model::{
    AddressSpec, Desired, Family, MAIN_TABLE, Mac, NexthopMode, Observed, PeerSpec, RouteSpec,
    VxlanSpec,
};
use netconverge::plan::{Op, Plan};
use netconverge::{apply, netlink, observe, plan};
use serde_json::Value;

const VX4: &str = "nc.4";
const VX6: &str = "nc.6";
/// First id of netconverge's block for protocol 199.
const NH: u64 = 199_000_001;

fn node(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "ul0"]);
    ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "ul0", "nodad"]);
    ns.ip(&["link", "set", "ul0", "up"]);
    ns.ip(&["link", "set", "ul1", "up"]);
    ns
}

fn vxlan(name: &str, family: Family) -> VxlanSpec {
    VxlanSpec {
        name: name.into(),
        vni: if family == Family::Ipv4 { 4 } else { 6 },
        port: 8472,
        underlay: "ul0".into(),
        family,
        local: None,
        mac: None,
        mtu: None,
        learning: false,
        gbp: false,
    }
}

fn peer(d: &mut Desired, dev: &str, subnet: &str, vtep: &str, i: u8) {
    let peer = PeerSpec {
        dev: dev.into(),
        subnet: subnet.parse().unwrap(),
        vtep_ip: vtep.parse().unwrap(),
        vtep_mac: Mac([0x02, 0x42, 0, 0, dev.len() as u8, i]),
    };
    // Objects only: these tests never declared the peers themselves.
    d.add_peer_objects(peer.expand());
}

/// An IPv4 overlay with peers 2..=`last` (and an IPv6 one with two peers
/// when `dual`).
fn desired(mode: NexthopMode, last: u8, dual: bool) -> Desired {
    let mut d = Desired {
        mac_seed: Some("nexthop-test".into()),
        vxlans: vec![vxlan(VX4, Family::Ipv4)],
        addresses: vec![AddressSpec {
            dev: VX4.into(),
            cidr: "198.18.1.0/32".parse().unwrap(),
            origin: "address #1".into(),
        }],
        ..Desired::default()
    };
    d.engine.nexthops = mode;
    for i in 2..=last {
        peer(
            &mut d,
            VX4,
            &format!("198.18.{i}.0/24"),
            &format!("192.0.2.{i}"),
            i,
        );
    }
    if dual {
        d.vxlans.push(vxlan(VX6, Family::Ipv6));
        d.addresses.push(AddressSpec {
            dev: VX6.into(),
            cidr: "fd00:0:0:1::/128".parse().unwrap(),
            origin: "address #2".into(),
        });
        for i in 2..=3 {
            peer(
                &mut d,
                VX6,
                &format!("fd00:0:0:{i}::/64"),
                &format!("2001:db8::{i}"),
                i,
            );
        }
    }
    d
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn converge(ns: &Netns, d: &Desired) -> Outcome {
    let d = d.clone();
    ns.enter(move || {
        runtime().block_on(async move {
            let h = netlink::connect().unwrap();
            engine::converge(&h, &d, 3).await.unwrap()
        })
    })
}

fn check(ns: &Netns, d: &Desired) -> Plan {
    let d = d.clone();
    ns.enter(move || {
        runtime().block_on(async move {
            let h = netlink::connect().unwrap();
            engine::check(&h, &d).await.unwrap()
        })
    })
}

fn assert_converged(o: &Outcome) {
    assert!(
        o.converged() && o.failures.is_empty(),
        "not converged: {:#?}\nremaining:\n{}",
        o.failures,
        o.remaining
    );
}

fn nexthops(ns: &Netns) -> Vec<Value> {
    ns.ip_json(&["nexthop", "show"]).as_array().unwrap().clone()
}

fn routes(ns: &Netns, family: &str, dev: &str) -> Vec<Value> {
    ns.ip_json(&[family, "route", "show", "dev", dev])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] == "199")
        .cloned()
        .collect()
}

fn flags(v: &Value) -> Vec<&str> {
    v["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every route of `dev` goes through an owned nexthop whose gateway is the
/// subnet's network address, on `dev`, onlink: one nexthop per route.
fn assert_through_nexthops(ns: &Netns, family: &str, dev: &str, count: usize) {
    let nhs = nexthops(ns);
    let rs = routes(ns, family, dev);
    assert_eq!(rs.len(), count, "{rs:#?}");
    let mut ids = Vec::new();
    for r in &rs {
        let id = r["nhid"]
            .as_u64()
            .unwrap_or_else(|| panic!("route without nhid: {r}"));
        let nh = nhs
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("route {r} uses missing nexthop {id}: {nhs:#?}"));
        let dst: IpNet = r["dst"].as_str().unwrap().parse().unwrap();
        assert_eq!(nh["gateway"], dst.network().to_string(), "{nh}");
        assert_eq!(nh["dev"], dev, "{nh}");
        assert_eq!(nh["protocol"], "199", "{nh}");
        assert!(flags(nh).contains(&"onlink"), "{nh}");
        assert!(
            (NH..NH + 1_000_000).contains(&id),
            "id {id} outside our block"
        );
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "one nexthop per gateway");
}

#[test]
fn auto_installs_routes_through_nexthop_objects_and_is_then_in_sync() {
    let ns = node("nh-auto");
    let d = desired(NexthopMode::Auto, 6, true);
    let out = converge(&ns, &d);
    assert_converged(&out);
    assert_through_nexthops(&ns, "-4", VX4, 5);
    assert_through_nexthops(&ns, "-6", VX6, 2);
    // ids are allocated from the start of the block, in declaration order
    let r = &ns.ip_json(&["route", "show", "198.18.2.0/24"])[0];
    assert_eq!(r["nhid"], NH, "{r}");
    // neighbours and FDB entries are there before the routes need them
    assert_eq!(
        ns.ip_json(&["neigh", "show", "dev", VX4])
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let p = check(&ns, &d);
    assert!(p.in_sync(), "second look must find nothing:\n{p}");
    // converging again changes nothing (no id churn)
    let before = nexthops(&ns);
    assert_converged(&converge(&ns, &d));
    assert_eq!(nexthops(&ns), before);
}

#[test]
fn switching_off_and_on_converts_routes_and_removes_only_our_nexthops() {
    let ns = node("nh-switch");
    // A foreign nexthop sitting on the first id of our block, and one with
    // exactly the gateway of a peer (not ours: never reused nor removed).
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        &NH.to_string(),
        "via",
        "192.0.2.254",
        "dev",
        "ul0",
    ]);
    ns.ip(&[
        "link",
        "add",
        VX4,
        "type",
        "vxlan",
        "id",
        "4",
        "dev",
        "ul0",
        "local",
        "192.0.2.1",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", VX4, "up"]);
    // The foreign nexthop needs the device first: made as netconverge
    // makes it (with its mark), so it is netconverge's device.
    ns.ip(&["link", "set", VX4, "alias", "netconverge"]);
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        "77",
        "via",
        "198.18.2.0",
        "dev",
        VX4,
        "onlink",
        "proto",
        "static",
    ]);

    let auto = desired(NexthopMode::Auto, 4, false);
    assert_converged(&converge(&ns, &auto));
    assert_through_nexthops(&ns, "-4", VX4, 3);
    let r = &ns.ip_json(&["route", "show", "198.18.2.0/24"])[0];
    assert_eq!(r["nhid"], NH + 1, "taken ids are skipped: {r}");
    let foreign = |ns: &Netns| {
        let mut f: Vec<Value> = nexthops(ns)
            .into_iter()
            .filter(|n| n["protocol"] != "199")
            .collect();
        f.sort_by_key(|n| n["id"].as_u64());
        f
    };
    let foreign_before = foreign(&ns);
    assert_eq!(foreign_before.len(), 2);

    // off: classic routes, our nexthops gone, foreign ones untouched
    let off = desired(NexthopMode::Off, 4, false);
    assert_converged(&converge(&ns, &off));
    let rs = routes(&ns, "-4", VX4);
    assert_eq!(rs.len(), 3);
    for r in &rs {
        assert!(r.get("nhid").is_none(), "classic route expected: {r}");
        let dst: IpNet = r["dst"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["gateway"], dst.network().to_string(), "{r}");
        assert!(flags(r).contains(&"onlink"), "{r}");
    }
    assert!(nexthops(&ns).iter().all(|n| n["protocol"] != "199"));
    assert_eq!(foreign(&ns), foreign_before);
    assert!(check(&ns, &off).in_sync());

    // and back
    assert_converged(&converge(&ns, &auto));
    assert_through_nexthops(&ns, "-4", VX4, 3);
    assert_eq!(foreign(&ns), foreign_before);
}

#[test]
fn drift_of_nexthops_and_routes_is_repaired() {
    let ns = node("nh-drift");
    let d = desired(NexthopMode::On, 5, false);
    assert_converged(&converge(&ns, &d));
    let id_of = |ns: &Netns, dst: &str| ns.ip_json(&["route", "show", dst])[0]["nhid"].as_u64();

    // Deleting a nexthop silently takes its IPv4 route with it.
    let gone = id_of(&ns, "198.18.2.0/24").unwrap();
    ns.ip(&["nexthop", "del", "id", &gone.to_string()]);
    assert!(
        ns.ip_json(&["route", "show", "198.18.2.0/24"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A route turned classic by hand, one pointed at a foreign nexthop.
    ns.ip(&[
        "route",
        "replace",
        "198.18.3.0/24",
        "via",
        "198.18.3.0",
        "dev",
        VX4,
        "onlink",
        "proto",
        "199",
    ]);
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        "5",
        "via",
        "198.18.4.0",
        "dev",
        VX4,
        "onlink",
    ]);
    ns.ip(&[
        "route",
        "replace",
        "198.18.4.0/24",
        "nhid",
        "5",
        "proto",
        "199",
    ]);
    // A stale nexthop of ours.
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        &(NH + 500).to_string(),
        "via",
        "198.18.99.0",
        "dev",
        VX4,
        "onlink",
        "proto",
        "199",
    ]);

    let p = check(&ns, &d);
    let text = p.to_string();
    assert!(
        text.contains(&format!("+ nexthop {gone} via 198.18.2.0")),
        "{text}"
    );
    assert!(
        text.contains("~ route 198.18.3.0/24") && text.contains("nhid none →"),
        "{text}"
    );
    assert!(text.contains("nhid 5 →"), "{text}");
    assert!(text.contains(&format!("- nexthop {}", NH + 500)), "{text}");

    assert_converged(&converge(&ns, &d));
    assert_through_nexthops(&ns, "-4", VX4, 4);
    assert_eq!(id_of(&ns, "198.18.2.0/24"), Some(gone), "same id back");
    let ours: Vec<u64> = nexthops(&ns)
        .iter()
        .filter(|n| n["protocol"] == "199")
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ours.len(), 4, "{ours:?}");
    assert!(
        nexthops(&ns).iter().any(|n| n["id"] == 5),
        "foreign nexthop kept"
    );
}

#[test]
fn an_id_taken_after_observation_fails_without_overwriting_then_reconverges() {
    let ns = node("nh-race");
    let d = desired(NexthopMode::Auto, 3, false);
    let (plan, observed) = {
        let d = d.clone();
        ns.enter(move || {
            runtime().block_on(async move {
                let h = netlink::connect().unwrap();
                let o = observe::observe(&h, &d).await.unwrap();
                (plan::plan(&d, &o), o)
            })
        })
    };
    let planned: Vec<u32> = plan
        .changes
        .iter()
        .filter_map(|c| match &c.op {
            Op::SetNexthop(n) => Some(n.id),
            _ => None,
        })
        .collect();
    assert_eq!(planned, [NH as u32, NH as u32 + 1]);
    // Someone else takes the first planned id in between.
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        &NH.to_string(),
        "via",
        "192.0.2.254",
        "dev",
        "ul0",
        "proto",
        "static",
    ]);
    let report = {
        let plan = plan.clone();
        ns.enter(move || {
            runtime().block_on(async move {
                let h = netlink::connect().unwrap();
                // the device did not exist when observed: re-read links
                let mut o: Observed = observed;
                o.links = observe::dump_links(&h).await.unwrap();
                apply::apply(&h, &plan, &o).await
            })
        })
    };
    let failed: Vec<&str> = report.failures.iter().map(|f| f.object.as_str()).collect();
    assert!(
        failed
            .iter()
            .any(|o| o.starts_with(&format!("nexthop {NH} "))),
        "{:#?}",
        report.failures
    );
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.error.contains("File exists")),
        "{:#?}",
        report.failures
    );
    let foreign = &ns.ip_json(&["nexthop", "show", "id", &NH.to_string()])[0];
    assert_eq!(
        foreign["gateway"], "192.0.2.254",
        "not overwritten: {foreign}"
    );
    assert_eq!(foreign["protocol"], "static");

    // The next pass re-plans with a free id.
    assert_converged(&converge(&ns, &d));
    assert_through_nexthops(&ns, "-4", VX4, 2);
    let foreign = &ns.ip_json(&["nexthop", "show", "id", &NH.to_string()])[0];
    assert_eq!(foreign["gateway"], "192.0.2.254");
}

#[test]
fn cleanup_removes_our_nexthops_and_routes_only() {
    let ns = node("nh-cleanup");
    let mut d = desired(NexthopMode::Auto, 3, false);
    // a route elsewhere through a nexthop of ours
    d.routes.push(RouteSpec {
        dst: "198.51.100.0/24".parse().unwrap(),
        via: Some("192.0.2.254".parse().unwrap()),
        dev: Some("ul0".into()),
        onlink: false,
        src: None,
        metric: None,
        table: MAIN_TABLE,
        origin: "route #1".into(),
    });
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        "9",
        "via",
        "192.0.2.253",
        "dev",
        "ul0",
    ]);
    assert_converged(&converge(&ns, &d));
    let r = &ns.ip_json(&["route", "show", "198.51.100.0/24"])[0];
    let id = r["nhid"]
        .as_u64()
        .expect("underlay route through a nexthop");
    let report = ns.enter(move || {
        runtime().block_on(async move {
            let h = netlink::connect().unwrap();
            let o = observe::observe(&h, &d).await.unwrap();
            let p = plan::cleanup_plan(&d, &o);
            assert!(
                p.to_string()
                    .contains(&format!("- nexthop {id} via 192.0.2.254 dev ul0")),
                "{p}"
            );
            apply::apply(&h, &p, &o).await
        })
    });
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    let left: Vec<Value> = nexthops(&ns);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["id"], 9);
    assert!(
        ns.ip_json(&["route", "show", "proto", "199"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn underlay_rebuild_brings_nexthops_back_under_the_same_ids() {
    let ns = node("nh-rebuild");
    let d = desired(NexthopMode::Auto, 4, false);
    assert_converged(&converge(&ns, &d));
    let before: Vec<(Value, Value)> = routes(&ns, "-4", VX4)
        .iter()
        .map(|r| (r["dst"].clone(), r["nhid"].clone()))
        .collect();
    // The kernel deletes the VXLAN (bound to ul0), its nexthops and routes.
    ns.ip(&["link", "del", "ul0"]);
    assert!(nexthops(&ns).is_empty());
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "ul0"]);
    ns.ip(&["link", "set", "ul0", "up"]);
    assert_converged(&converge(&ns, &d));
    let after: Vec<(Value, Value)> = routes(&ns, "-4", VX4)
        .iter()
        .map(|r| (r["dst"].clone(), r["nhid"].clone()))
        .collect();
    assert_eq!(after, before);
    assert_through_nexthops(&ns, "-4", VX4, 3);
}

#[test]
fn observe_reports_kernel_support_and_resolves_routes() {
    let ns = node("nh-observe");
    let d = desired(NexthopMode::Auto, 2, false);
    assert_converged(&converge(&ns, &d));
    // With compat mode off the kernel reports only `nhid` on routes:
    // observe fills gateway/device/onlink in from the nexthop.
    ns.exec(&["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"]);
    let o = {
        let d = d.clone();
        ns.enter(move || {
            runtime().block_on(async move {
                let h = netlink::connect().unwrap();
                observe::observe(&h, &d).await.unwrap()
            })
        })
    };
    assert!(o.nexthop_objects);
    let r = o
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "198.18.2.0/24")
        .unwrap();
    assert_eq!(r.nhid, Some(NH as u32));
    assert_eq!(r.via, Some("198.18.2.0".parse::<IpAddr>().unwrap()));
    assert_eq!((r.dev.as_deref(), r.onlink), (Some(VX4), true));
    let n = o.nexthops.iter().find(|n| u64::from(n.id) == NH).unwrap();
    assert_eq!(
        (n.protocol, n.dev.as_deref(), n.onlink),
        (199, Some(VX4), true)
    );
    assert!(check(&ns, &d).in_sync());
}

/// The daemon notices a nexthop deleted by hand (the kernel drops its IPv4
/// route without any route notification) through nexthop events, not the
/// resync timer, and the CLI agrees afterwards.
#[test]
fn daemon_restores_a_deleted_nexthop_and_its_route_from_events() {
    use common::daemon::{Daemon, eventually};
    use std::time::Duration;

    let ns = node("nh-daemon");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = String::from(
        "node_name = \"nh-daemon\"\n\n[engine]\nnexthops = \"on\"\n\n\
         [daemon]\nresync_secs = 3600\ndebounce_ms = 10\n\n\
         [[vxlan]]\nname = \"nc.4\"\nvni = 4\nunderlay = \"ul0\"\n\n\
         [[address]]\ndev = \"nc.4\"\ncidr = \"198.18.1.0/32\"\n",
    );
    for i in 2..=4 {
        cfg += &format!(
            "\n[[peer]]\ndev = \"nc.4\"\nsubnet = \"198.18.{i}.0/24\"\nvtep_ip = \"192.0.2.{i}\"\nvtep_mac = \"02:00:00:00:00:{i:02x}\"\n"
        );
    }
    let path = dir.path().join("netconverge.toml");
    std::fs::write(&path, cfg).unwrap();

    let mut d = Daemon::start(&ns, &path, &[]);
    d.wait_notify("READY=1", Duration::from_secs(20));
    assert_through_nexthops(&ns, "-4", VX4, 3);
    let id = ns.ip_json(&["route", "show", "198.18.3.0/24"])[0]["nhid"]
        .as_u64()
        .unwrap();
    ns.ip(&["nexthop", "del", "id", &id.to_string()]);
    let took = eventually(
        "route through its nexthop restored",
        Duration::from_secs(5),
        || {
            ns.ip_json(&["route", "show", "198.18.3.0/24"])
                .as_array()
                .unwrap()
                .first()
                .is_some_and(|r| r["nhid"] == id)
        },
    );
    assert!(took < Duration::from_secs(5));
    assert_through_nexthops(&ns, "-4", VX4, 3);
    assert_eq!(d.stop(), 0);

    let out = ns.netconverge(&path, &["converge", "--check"]);
    assert_eq!(
        common::code(&out),
        0,
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
}
