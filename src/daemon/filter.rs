//! Which netlink notifications concern the desired state.
//!
//! Invariant: a notification is relevant only if it touches a declared VXLAN
//! device, an underlay (or any device the desired state places objects on;
//! an underlay found by address is followed under the name the last pass
//! resolved, and a global address equal to such a device's `local` is
//! relevant wherever it appears: it is how that underlay is found),
//! a route or nexthop object carrying our protocol marker (or a nexthop id
//! we own), or a declared route destination. A node with hundreds of pod
//! veths churning triggers no converge pass.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};

use crate::model::{Desired, LinkState, NexthopState};
use crate::nexthop::NexthopMessage;

const RTPROT_KERNEL: u8 = 2;
const RTPROT_RA: u8 = 9;

#[derive(Debug, Default)]
pub struct Interest {
    /// Every device name the desired state names itself (no placeholder of
    /// an underlay found by address).
    declared: BTreeSet<String>,
    /// `declared` plus the underlays found by address in the last pass.
    names: BTreeSet<String>,
    /// The `local` addresses of devices whose underlay is found by address.
    by_local: HashSet<IpAddr>,
    /// Declared VXLAN devices (their whole content is ours).
    managed: BTreeSet<String>,
    /// Current ifindex → name for the names above.
    index: HashMap<u32, String>,
    proto: u8,
    route_dsts: HashSet<IpNet>,
    neighbor_ips: HashSet<IpAddr>,
    /// Ids of the nexthop objects we own (as of the last pass).
    nexthop_ids: HashSet<u32>,
}

impl Interest {
    pub fn new(desired: &Desired) -> Interest {
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut by_local = HashSet::new();
        for v in &desired.vxlans {
            names.insert(v.name.clone());
            if desired.underlay_by_local.contains(&v.name) {
                // a placeholder: no interface has that name
                by_local.extend(v.local);
            } else {
                names.insert(v.underlay.clone());
            }
        }
        names.extend(desired.addresses.iter().map(|a| a.dev.clone()));
        names.extend(desired.neighbors.iter().map(|n| n.dev.clone()));
        names.extend(desired.routes.iter().filter_map(|r| r.dev.clone()));
        Interest {
            declared: names.clone(),
            names,
            by_local,
            managed: desired.vxlans.iter().map(|v| v.name.clone()).collect(),
            index: HashMap::new(),
            proto: desired.engine.route_protocol,
            route_dsts: desired.routes.iter().map(|r| r.dst).collect(),
            neighbor_ips: desired.neighbors.iter().map(|n| n.ip).collect(),
            nexthop_ids: HashSet::new(),
        }
    }

    /// Follow the underlays `resolved` (the desired state with every
    /// underlay found by address resolved by the last pass, see
    /// [`Desired::resolve_underlays`]) names: their link and address events
    /// become relevant. Call before [`Interest::learn_links`].
    pub fn learn_underlays(&mut self, resolved: &Desired) {
        let mut names = self.declared.clone();
        names.extend(resolved.vxlans.iter().map(|v| v.underlay.clone()));
        self.names = names;
    }

    /// Refresh the ids of our nexthop objects (after every pass).
    pub fn learn_nexthops(&mut self, nexthops: &[NexthopState]) {
        self.nexthop_ids = nexthops
            .iter()
            .filter(|n| n.protocol == self.proto)
            .map(|n| n.id)
            .collect();
    }

    /// Does this nexthop notification concern us? Ours by marker, or one of
    /// our ids replaced by someone else. (Deleting a nexthop deletes its
    /// IPv4 routes without any route notification: this is the only sign.)
    pub fn nexthop(&self, msg: &NexthopMessage) -> bool {
        msg.header.protocol == self.proto
            || msg.id().is_some_and(|id| self.nexthop_ids.contains(&id))
    }

    /// Refresh the ifindex map from a link dump (after every pass).
    pub fn learn_links(&mut self, links: &BTreeMap<String, LinkState>) {
        self.index = links
            .values()
            .filter(|l| self.names.contains(&l.name))
            .map(|l| (l.index, l.name.clone()))
            .collect();
    }

    fn is_managed_index(&self, index: u32) -> bool {
        self.index
            .get(&index)
            .is_some_and(|n| self.managed.contains(n))
    }

    /// Short description of a notification for debug logs.
    pub fn describe(msg: &RouteNetlinkMessage) -> String {
        match msg {
            RouteNetlinkMessage::NewLink(l) => format!("new link #{}", l.header.index),
            RouteNetlinkMessage::DelLink(l) => format!("del link #{}", l.header.index),
            RouteNetlinkMessage::NewAddress(a) => format!("new address on #{}", a.header.index),
            RouteNetlinkMessage::DelAddress(a) => format!("del address on #{}", a.header.index),
            RouteNetlinkMessage::NewRoute(r) => {
                format!("new route proto {}", u8::from(r.header.protocol))
            }
            RouteNetlinkMessage::DelRoute(r) => {
                format!("del route proto {}", u8::from(r.header.protocol))
            }
            RouteNetlinkMessage::NewNeighbour(n) => {
                format!("new neighbour on #{}", n.header.ifindex)
            }
            RouteNetlinkMessage::DelNeighbour(n) => {
                format!("del neighbour on #{}", n.header.ifindex)
            }
            _ => "other".to_string(),
        }
    }

    /// Does this notification concern anything we converge?
    pub fn relevant(&mut self, msg: &RouteNetlinkMessage) -> bool {
        match msg {
            RouteNetlinkMessage::NewLink(l) => self.link(l, false),
            RouteNetlinkMessage::DelLink(l) => self.link(l, true),
            // Link-local addresses (and their DAD completing) are the kernel's
            // business; the engine only ever uses or manages global ones.
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                a.header.scope == AddressScope::Universe
                    && (self.index.contains_key(&a.header.index) || self.holds_by_local(a))
            }
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => self.route(r),
            RouteNetlinkMessage::NewNeighbour(n) => self.neighbour(n, false),
            RouteNetlinkMessage::DelNeighbour(n) => self.neighbour(n, true),
            _ => false,
        }
    }

    /// Does this address event carry the `local` of a device whose underlay
    /// is found by address (DHCP giving the underlay its address at boot,
    /// the address moving to another interface)?
    fn holds_by_local(&self, a: &AddressMessage) -> bool {
        !self.by_local.is_empty()
            && a.attributes.iter().any(|at| match at {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => {
                    self.by_local.contains(ip)
                }
                _ => false,
            })
    }

    fn link(&mut self, l: &LinkMessage, deleted: bool) -> bool {
        let idx = l.header.index;
        let name = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.as_str()),
            _ => None,
        });
        match name {
            Some(n) if self.names.contains(n) => {
                // a recreated underlay comes back with a new ifindex
                if deleted {
                    self.index.remove(&idx);
                } else {
                    self.index.insert(idx, n.to_string());
                }
                true
            }
            // renamed away from one of our names, or a delete without a name
            _ => {
                if deleted {
                    self.index.remove(&idx).is_some()
                } else {
                    self.index
                        .get(&idx)
                        .is_some_and(|old| Some(old.as_str()) != name)
                }
            }
        }
    }

    fn route(&self, r: &RouteMessage) -> bool {
        let proto = u8::from(r.header.protocol);
        if proto == self.proto {
            return true;
        }
        // connected and RA routes are maintained by the kernel, never by us
        if proto == RTPROT_KERNEL || proto == RTPROT_RA {
            return false;
        }
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif.is_some_and(|i| self.is_managed_index(i)) {
            return true;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        });
        dst.and_then(|d| IpNet::new(d, r.header.destination_prefix_length).ok())
            .is_some_and(|n| self.route_dsts.contains(&n))
    }

    fn neighbour(&self, n: &NeighbourMessage, deleted: bool) -> bool {
        if !self.is_managed_index(n.header.ifindex) {
            return false;
        }
        // Reachability churn of dynamic entries is the kernel's business;
        // permanent entries, deletions and our declared IPs are ours.
        if deleted || n.header.state == NeighbourState::Permanent {
            return true;
        }
        n.attributes.iter().any(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                self.neighbor_ips.contains(&IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                self.neighbor_ips.contains(&IpAddr::V6(*v6))
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(index: u32, ip: &str, scope: AddressScope) -> RouteNetlinkMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a.header.scope = scope;
        a.attributes
            .push(AddressAttribute::Address(ip.parse().unwrap()));
        RouteNetlinkMessage::NewAddress(a)
    }

    fn link(index: u32, name: &str) -> RouteNetlinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        RouteNetlinkMessage::NewLink(l)
    }

    fn by_local() -> Desired {
        Desired {
            vxlans: vec![crate::model::VxlanSpec {
                name: "flannel.1".into(),
                vni: 1,
                port: 8472,
                underlay: "(interface with 192.0.2.11)".into(),
                family: crate::model::Family::Ipv4,
                local: Some("192.0.2.11".parse().unwrap()),
                mac: None,
                mtu: None,
                learning: false,
                gbp: false,
            }],
            underlay_by_local: ["flannel.1".to_string()].into(),
            ..Desired::default()
        }
    }

    #[test]
    fn an_underlay_found_by_address_is_followed_once_resolved() {
        let d = by_local();
        let mut i = Interest::new(&d);
        // before any pass: the address appearing anywhere is the sign
        assert!(i.relevant(&address(7, "192.0.2.11", AddressScope::Universe)));
        assert!(!i.relevant(&address(7, "192.0.2.12", AddressScope::Universe)));
        assert!(!i.relevant(&address(7, "192.0.2.11", AddressScope::Link)));
        assert!(!i.relevant(&link(7, "eth-a")), "eth-a is not known yet");
        // a pass found it on eth-a: its link and address events count
        let mut resolved = d.clone();
        if let Some(v) = resolved.vxlans.first_mut() {
            v.underlay = "eth-a".into();
        }
        i.learn_underlays(&resolved);
        assert!(i.relevant(&link(7, "eth-a")));
        assert!(i.relevant(&address(7, "192.0.2.99", AddressScope::Universe)));
        // and a later pass that no longer finds it there stops following it
        i.learn_underlays(&d);
        i.learn_links(&BTreeMap::new());
        assert!(!i.relevant(&link(8, "eth-a")));
    }

    #[test]
    fn nexthop_events_are_ours_by_marker_or_by_id() {
        let mut i = Interest::new(&Desired::default());
        let ours =
            NexthopMessage::gateway(199_000_001, "198.18.2.0".parse().unwrap(), 5, true, 199);
        let mut foreign = NexthopMessage::gateway(7, "192.0.2.9".parse().unwrap(), 2, false, 4);
        assert!(i.nexthop(&ours));
        assert!(!i.nexthop(&foreign));
        i.learn_nexthops(&[NexthopState {
            id: 7,
            via: None,
            dev: None,
            onlink: false,
            protocol: 199,
        }]);
        assert!(i.nexthop(&foreign), "someone replaced one of our ids");
        foreign.attributes.clear();
        assert!(!i.nexthop(&foreign));
    }
}
