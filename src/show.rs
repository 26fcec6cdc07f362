//! `netconverge show`: the live state of everything the desired state
//! manages, in the same vocabulary as the config file.
//!
//! Invariant: pure conversion from (desired, observed); only objects the
//! config declares, depends on (underlays) or owns are shown. Whether a
//! declared file (the CNI conflist) is in sync is the planner's judgement,
//! never a second copy of its rules.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::lease::FileContent;
use crate::model::{
    AddressState, Desired, FdbState, Mac, NeighborState, Observed, RTPROT_KERNEL, RTPROT_RA,
    RouteState,
};
use crate::plan::ChangeKind;

#[derive(Debug, Clone, Serialize)]
pub struct ShowVxlan {
    pub name: String,
    pub ifindex: u32,
    pub vni: u32,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    pub learning: bool,
    pub gbp: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShowUnderlay {
    pub name: String,
    pub ifindex: u32,
    pub kind: String,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShowAddress {
    pub dev: String,
    pub cidr: IpNet,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShowRoute {
    pub dst: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    pub onlink: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    /// The nexthop object the route goes through (`via`/`dev` are its).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nhid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShowNeighbor {
    pub dev: String,
    pub ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    pub permanent: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShowFdb {
    pub dev: String,
    pub mac: Mac,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

/// How the conflist `[cni]` declares compares with the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    InSync,
    /// A regular file whose contents differ (or that is not usable).
    Drift,
    Missing,
    /// Cannot be written now (not a regular file, unreadable, MTU unknown).
    Blocked,
}

/// The CNI conflist `[cni]` declares, as found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct ShowCni {
    pub path: PathBuf,
    pub status: FileStatus,
    /// What drifted, or why it is blocked (the plan's reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The file itself, as for the lease.
    pub file: FileContent,
    /// CNI config files that sort before it (containerd loads only the first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<String>,
}

/// The document `show` prints (TOML or JSON).
#[derive(Debug, Clone, Serialize)]
pub struct ShowDoc {
    pub vxlan: Vec<ShowVxlan>,
    pub underlay: Vec<ShowUnderlay>,
    pub address: Vec<ShowAddress>,
    pub neighbor: Vec<ShowNeighbor>,
    pub fdb: Vec<ShowFdb>,
    pub route: Vec<ShowRoute>,
    pub nat: serde_json::Value,
    pub lease: serde_json::Value,
    /// Only with `[cni]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni: Option<ShowCni>,
}

pub fn show(desired: &Desired, observed: &Observed) -> ShowDoc {
    let mut doc = unsorted(desired, observed);
    // kernel dump order is not meaningful: print in a stable, readable order
    doc.address
        .sort_by(|a, b| (&a.dev, a.cidr).cmp(&(&b.dev, b.cidr)));
    doc.neighbor
        .sort_by(|a, b| (&a.dev, a.ip).cmp(&(&b.dev, b.ip)));
    doc.fdb
        .sort_by(|a, b| (&a.dev, a.mac, a.dst).cmp(&(&b.dev, b.mac, b.dst)));
    doc.route.sort_by_key(|r| (r.table, r.dst, r.metric));
    doc
}

fn unsorted(desired: &Desired, observed: &Observed) -> ShowDoc {
    let declared: BTreeSet<&str> = desired.owned_devices().collect();
    let on_declared = |dev: &str| declared.contains(dev);
    ShowDoc {
        vxlan: vxlans(desired, observed),
        underlay: underlays(desired, observed),
        address: observed
            .addresses
            .iter()
            .filter(|a| on_declared(&a.dev) && a.global)
            .map(ShowAddress::from)
            .collect(),
        neighbor: observed
            .neighbors
            .iter()
            .filter(|n| on_declared(&n.dev))
            .map(ShowNeighbor::from)
            .collect(),
        fdb: observed
            .fdb
            .iter()
            .filter(|f| on_declared(&f.dev))
            .map(ShowFdb::from)
            .collect(),
        route: observed
            .routes
            .iter()
            // connected and RA routes are the kernel's, not managed state
            .filter(|r| r.protocol != RTPROT_KERNEL && r.protocol != RTPROT_RA)
            .map(ShowRoute::from)
            .collect(),
        nat: serde_json::to_value(&observed.nat).unwrap_or(serde_json::Value::Null),
        lease: serde_json::to_value(&observed.lease).unwrap_or(serde_json::Value::Null),
        cni: cni(desired, observed),
    }
}

/// The declared conflist with its status: the planner's verdict on it (a
/// write to plan means missing or drift; a block says why not).
fn cni(desired: &Desired, observed: &Observed) -> Option<ShowCni> {
    let spec = desired.cni.as_ref()?;
    let plan = crate::plan::plan(desired, observed);
    let object = crate::plan::cni::object(&spec.path);
    let (status, reason) = if let Some(b) = plan.blocked.iter().find(|b| b.object == object) {
        (FileStatus::Blocked, Some(b.reason.clone()))
    } else if let Some(c) = plan.changes.iter().find(|c| c.object == object) {
        match c.kind {
            ChangeKind::Add => (FileStatus::Missing, None),
            _ => (FileStatus::Drift, Some(c.reason.clone())),
        }
    } else {
        (FileStatus::InSync, None)
    };
    Some(ShowCni {
        path: spec.path.clone(),
        status,
        reason,
        file: observed.cni.file.clone(),
        earlier: observed.cni.earlier.clone(),
    })
}

/// The declared VXLAN devices the kernel has, in declaration order.
fn vxlans(desired: &Desired, observed: &Observed) -> Vec<ShowVxlan> {
    desired
        .vxlans
        .iter()
        .filter_map(|v| observed.links.get(&v.name))
        .map(|l| {
            let a = l.vxlan.as_ref();
            ShowVxlan {
                name: l.name.clone(),
                ifindex: l.index,
                vni: a.map_or(0, |a| a.vni),
                port: a.map_or(0, |a| a.port),
                underlay: a
                    .and_then(|a| a.underlay_index)
                    .and_then(|i| observed.link_by_index(i))
                    .map(|u| u.name.clone()),
                local: a.and_then(|a| a.local),
                mac: l.mac,
                mtu: l.mtu,
                up: l.up,
                learning: a.is_some_and(|a| a.learning),
                gbp: a.is_some_and(|a| a.gbp),
            }
        })
        .collect()
}

/// The underlays the declared devices name, with their global addresses.
fn underlays(desired: &Desired, observed: &Observed) -> Vec<ShowUnderlay> {
    let names: BTreeSet<&str> = desired.vxlans.iter().map(|v| v.underlay.as_str()).collect();
    names
        .iter()
        .filter_map(|u| observed.links.get(*u))
        .map(|l| ShowUnderlay {
            name: l.name.clone(),
            ifindex: l.index,
            kind: l.kind.clone(),
            mtu: l.mtu,
            up: l.up,
            addresses: observed
                .addresses
                .iter()
                .filter(|a| a.dev == l.name && a.global)
                .map(|a| a.cidr)
                .collect(),
        })
        .collect()
}

// Observed objects in the config file's vocabulary.

impl From<&AddressState> for ShowAddress {
    fn from(a: &AddressState) -> Self {
        ShowAddress {
            dev: a.dev.clone(),
            cidr: a.cidr,
        }
    }
}

impl From<&NeighborState> for ShowNeighbor {
    fn from(n: &NeighborState) -> Self {
        ShowNeighbor {
            dev: n.dev.clone(),
            ip: n.ip,
            mac: n.mac,
            permanent: n.permanent,
        }
    }
}

impl From<&FdbState> for ShowFdb {
    fn from(f: &FdbState) -> Self {
        ShowFdb {
            dev: f.dev.clone(),
            mac: f.mac,
            dst: f.dst,
            permanent: f.permanent,
        }
    }
}

impl From<&RouteState> for ShowRoute {
    fn from(r: &RouteState) -> Self {
        ShowRoute {
            dst: r.dst,
            via: r.via,
            dev: r.dev.clone(),
            onlink: r.onlink,
            src: r.src,
            metric: r.metric,
            table: r.table,
            protocol: r.protocol,
            nhid: r.nhid,
        }
    }
}

/// Render as TOML. JSON values that TOML cannot hold (null) are dropped.
pub fn to_toml(doc: &ShowDoc) -> Result<String, toml::ser::Error> {
    let mut doc = doc.clone();
    strip_nulls(&mut doc.nat);
    strip_nulls(&mut doc.lease);
    toml::to_string_pretty(&doc)
}

/// TOML has no null: drop null members and elements; a null root becomes `{}`.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Null => *v = serde_json::Value::Object(serde_json::Map::new()),
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => {
            a.retain(|x| !x.is_null());
            a.iter_mut().for_each(strip_nulls);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::{
        AddressSpec, CniPlugin, CniSpec, Family, LeaseFamily, LinkState, VxlanSpec,
    };

    fn link(name: &str, index: u32) -> LinkState {
        LinkState {
            name: name.into(),
            index,
            kind: "veth".into(),
            mtu: 1500,
            mac: None,
            up: true,
            vxlan: None,
            alias: None,
        }
    }

    /// flannel.1 on eth0 (MTU 1450 once created) and a `[cni]` bridge
    /// conflist for 198.18.1.0/24.
    fn node() -> (Desired, Observed) {
        let d = Desired {
            mac_seed: Some("node-a".into()),
            vxlans: vec![VxlanSpec {
                name: "flannel.1".into(),
                vni: 1,
                port: 8472,
                underlay: "eth0".into(),
                family: Family::Ipv4,
                local: None,
                mac: None,
                mtu: None,
                learning: false,
                gbp: false,
            }],
            addresses: vec![AddressSpec {
                dev: "flannel.1".into(),
                cidr: "198.18.1.0/32".parse().unwrap(),
                origin: "address #1".into(),
            }],
            cni: Some(CniSpec {
                path: PathBuf::from("/etc/cni/net.d/10-netconverge.conflist"),
                plugin: CniPlugin::Bridge,
                name: "cbr0".into(),
                bridge: "cni0".into(),
                mtu: None,
                hairpin: true,
                ip_masq: false,
                portmap: true,
                bandwidth: false,
                ipv4: Some(LeaseFamily {
                    network: "198.18.0.0/16".parse().unwrap(),
                    subnet: "198.18.1.0/24".parse().unwrap(),
                }),
                ipv6: None,
                subnet_file: None,
            }),
            ..Desired::default()
        };
        let mut o = Observed::default();
        o.links.insert("eth0".into(), link("eth0", 2));
        o.addresses.push(AddressState {
            dev: "eth0".into(),
            cidr: "192.0.2.1/24".parse().unwrap(),
            global: true,
            protocol: 0,
        });
        (d, o)
    }

    fn rendered(d: &Desired, mtu: u32) -> String {
        crate::plan::cni::render(d.cni.as_ref().unwrap(), mtu)
    }

    #[test]
    fn cni_conflist_states() {
        let (d, o) = node();
        let mut out = String::new();
        let states = [
            ("missing", FileContent::Missing),
            ("in sync", FileContent::Text(rendered(&d, 1450))),
            ("drift", FileContent::Text(rendered(&d, 1500))),
            ("a directory", FileContent::NotAFile("a directory".into())),
        ];
        for (what, file) in states {
            let mut o = o.clone();
            o.cni.file = file;
            let cni = show(&d, &o).cni.unwrap();
            let mut v = serde_json::to_value(&cni).unwrap();
            // The file's text is the renderer's (snapshotted there).
            if let Some(detail) = v.pointer_mut("/file/detail").filter(|x| x.is_string()) {
                if matches!(cni.file, FileContent::Text(_)) {
                    *detail = serde_json::Value::String("…".into());
                }
            }
            out.push_str(&format!("{what}: {v}\n"));
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn cni_conflist_in_toml_and_absent_without_cni() {
        let (d, mut o) = node();
        o.cni.file = FileContent::Text(rendered(&d, 1450));
        o.cni.earlier = vec!["05-other.conflist".into()];
        let toml = to_toml(&show(&d, &o)).unwrap();
        let cni = &toml[toml.find("[cni]").unwrap()..];
        insta::assert_snapshot!(cni);
        let no_cni = Desired {
            cni: None,
            ..d.clone()
        };
        let doc = show(&no_cni, &o);
        assert!(doc.cni.is_none());
        assert!(!to_toml(&doc).unwrap().contains("[cni"));
        assert!(
            !serde_json::to_string(&doc).unwrap().contains("\"cni\""),
            "no cni key without [cni]"
        );
    }
}
