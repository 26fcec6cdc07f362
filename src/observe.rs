//! Kernel → [`Observed`] through rtnetlink dumps (links, addresses, nexthop
//! objects, routes, neighbours, bridge-family FDB).
//!
//! Invariant: read-only; one dump per object kind (and address family where
//! the kernel needs one) per pass, run one after another (the kernel serves
//! one dump per socket at a time), each a consistent snapshot (a dump the
//! kernel marks as interrupted by concurrent changes is run again); the
//! result is filtered to what the desired state can own or depends on.
//! Message → model conversions are pure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHopFlags, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::model::{
    AddressState, Desired, FdbState, LinkState, Mac, NeighborState, NexthopState, Observed,
    RouteState, VxlanAttrs,
};
use crate::netlink::Handle;
use crate::netlink::bulk::BulkError;
use crate::netlink::nexthop::{self, NexthopMessage, NexthopNetlinkMessage};

/// Kernel `RT_TABLE_LOCAL`: local/broadcast addresses, never ours.
pub const LOCAL_TABLE: u32 = 255;

/// `NUD_PERMANENT`.
const NUD_PERMANENT: u16 = 0x80;
/// `NUD_NOARP`: multicast/broadcast resolutions the kernel makes itself.
const NUD_NOARP: u16 = 0x40;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("netlink dump of {what} failed: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: BulkError,
    },
    #[error(transparent)]
    Nat(#[from] crate::nat::NatError),
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
}

/// A kernel message that has no model counterpart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("link #{0} has no name")]
    LinkWithoutName(u32),
}

/// ifindex → name, built once per pass so every dumped entry resolves its
/// device in O(1).
pub type LinkNames = HashMap<u32, String>;

pub fn link_names(links: &BTreeMap<String, LinkState>) -> LinkNames {
    links.values().map(|l| (l.index, l.name.clone())).collect()
}

/// Read the kernel state relevant to `desired`. NAT and lease state are left
/// at their defaults (the engine fills them).
pub async fn observe(handle: &Handle, desired: &Desired) -> Result<Observed, ObserveError> {
    observe_owning(handle, desired, &std::collections::BTreeSet::new()).await
}

/// [`observe`], also keeping the routes of `past_protocols` (route
/// protocols netconverge used before, from its record): they are its own
/// and must be swept.
pub async fn observe_owning(
    handle: &Handle,
    desired: &Desired,
    past_protocols: &std::collections::BTreeSet<u8>,
) -> Result<Observed, ObserveError> {
    let links = dump_links(handle).await?;
    let names = link_names(&links);
    let addresses = dump_addresses(handle, &names).await?;
    let nexthops = dump_nexthops(handle, &names).await?;
    let routes = dump_routes(
        handle,
        &names,
        nexthops.as_deref().unwrap_or_default(),
        &RouteFilter::from_desired(desired).with_protocols(past_protocols),
    )
    .await?;

    // Declared devices, and every device carrying netconverge's mark (a
    // renamed or no longer declared one is still ours to move or remove).
    let mut vxlans: HashSet<&str> = desired.owned_devices().collect();
    vxlans.extend(
        links
            .values()
            .filter(|l| l.marked())
            .map(|l| l.name.as_str()),
    );
    let mut neighbor_devs = vxlans.clone();
    neighbor_devs.extend(desired.neighbors.iter().map(|n| n.dev.as_str()));
    let neighbors = dump_neighbors(handle, &names, |dev| neighbor_devs.contains(dev)).await?;
    let fdb = dump_fdb(handle, &names, |dev| vxlans.contains(dev)).await?;

    Ok(Observed {
        links,
        addresses,
        routes,
        nexthop_objects: nexthops.is_some(),
        nexthops: nexthops.unwrap_or_default(),
        neighbors,
        fdb,
        past_protocols: past_protocols.clone(),
        ..Observed::default()
    })
}

/// One dump through the bulk socket into a fresh `A`: every reply, parsed,
/// to `each`. A dump interrupted by concurrent changes is run again from
/// scratch ([`crate::netlink::bulk::BulkSocket::dump`]), so `A` is a consistent
/// snapshot.
async fn dump<A: Default>(
    handle: &Handle,
    what: &'static str,
    request: RouteNetlinkMessage,
    each: impl FnMut(&mut A, RouteNetlinkMessage),
) -> Result<A, ObserveError> {
    handle
        .bulk()
        .dump(&request, each)
        .await
        .map_err(|source| ObserveError::Netlink { what, source })
}

/// Every link, by name (names are unique within a namespace).
pub async fn dump_links(handle: &Handle) -> Result<BTreeMap<String, LinkState>, ObserveError> {
    let req = RouteNetlinkMessage::GetLink(LinkMessage::default());
    dump(handle, "links", req, |links: &mut BTreeMap<_, _>, msg| {
        if let RouteNetlinkMessage::NewLink(m) = msg {
            match LinkState::try_from(&m) {
                Ok(l) => {
                    links.insert(l.name.clone(), l);
                }
                Err(e) => tracing::debug!("skipping link: {e}"),
            }
        }
    })
    .await
}

/// Every IPv4 and IPv6 address, in kernel order.
pub async fn dump_addresses(
    handle: &Handle,
    names: &LinkNames,
) -> Result<Vec<AddressState>, ObserveError> {
    let req = RouteNetlinkMessage::GetAddress(AddressMessage::default());
    dump(handle, "addresses", req, |out: &mut Vec<_>, msg| {
        if let RouteNetlinkMessage::NewAddress(m) = msg {
            out.extend(address_from_message(&m, names));
        }
    })
    .await
}

/// Every nexthop object; `None` when the kernel has none (before Linux 5.3).
pub async fn dump_nexthops(
    handle: &Handle,
    names: &LinkNames,
) -> Result<Option<Vec<NexthopState>>, ObserveError> {
    let req = NexthopNetlinkMessage::Get(NexthopMessage::default());
    let result = handle
        .bulk()
        .dump(&req, |out: &mut Vec<_>, msg| {
            if let NexthopNetlinkMessage::New(m) = msg {
                out.extend(nexthop_from_message(&m, names));
            }
        })
        .await;
    match result {
        Ok(out) => Ok(Some(out)),
        Err(BulkError::Nack(code)) if nexthop::unsupported(code) => {
            tracing::debug!("no nexthop objects in this kernel: {code}");
            Ok(None)
        }
        Err(source) => Err(ObserveError::Netlink {
            what: "nexthop objects",
            source,
        }),
    }
}

/// Routes through a nexthop object carry its gateway, device and onlink
/// flag only when `net.ipv4.nexthop_compat_mode` is on; fill them in from
/// the nexthop either way, so such a route reads like the classic one.
pub fn resolve_nexthop(r: &mut RouteState, nexthops: &HashMap<u32, &NexthopState>) {
    if let Some(n) = r.nhid.and_then(|id| nexthops.get(&id)) {
        r.via = r.via.or(n.via);
        if r.dev.is_none() {
            r.dev.clone_from(&n.dev);
        }
        r.onlink |= n.onlink;
    }
}

/// Which routes an observation keeps: those netconverge could own or must
/// compare with a desired route.
#[derive(Debug, Clone, Default)]
pub struct RouteFilter {
    /// Devices declared as `[[vxlan]]`: every route through them is kept.
    pub owned_devices: HashSet<String>,
    /// netconverge's route protocol marker.
    pub protocol: u8,
    /// Protocols netconverge used before (its record): its routes too.
    pub past_protocols: std::collections::BTreeSet<u8>,
    /// (table, dst) of every desired route.
    pub desired: HashSet<(u32, IpNet)>,
}

impl RouteFilter {
    pub fn from_desired(desired: &Desired) -> RouteFilter {
        RouteFilter {
            owned_devices: desired.owned_devices().map(str::to_owned).collect(),
            protocol: desired.engine.route_protocol,
            past_protocols: std::collections::BTreeSet::new(),
            desired: desired
                .routes
                .iter()
                .map(|r| (r.table, r.dst.trunc()))
                .collect(),
        }
    }

    /// Also keep the routes of `past` (see [`Observed::past_protocols`]).
    pub fn with_protocols(mut self, past: &std::collections::BTreeSet<u8>) -> RouteFilter {
        self.past_protocols.clone_from(past);
        self
    }

    pub fn keeps(&self, r: &RouteState) -> bool {
        r.dev
            .as_ref()
            .is_some_and(|d| self.owned_devices.contains(d))
            || r.protocol == self.protocol
            || self.past_protocols.contains(&r.protocol)
            || self.desired.contains(&(r.table, r.dst))
    }
}

/// IPv4 and IPv6 routes of every table except `local`, those through one of
/// `nexthops` resolved ([`resolve_nexthop`]), filtered by `filter`.
pub async fn dump_routes(
    handle: &Handle,
    names: &LinkNames,
    nexthops: &[NexthopState],
    filter: &RouteFilter,
) -> Result<Vec<RouteState>, ObserveError> {
    let nexthops: HashMap<u32, &NexthopState> = nexthops.iter().map(|n| (n.id, n)).collect();
    let mut out = Vec::new();
    for (what, family) in [
        ("IPv4 routes", AddressFamily::Inet),
        ("IPv6 routes", AddressFamily::Inet6),
    ] {
        // All-zero header fields: no filtering (every table, protocol, type).
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let family: Vec<_> = dump(
            handle,
            what,
            RouteNetlinkMessage::GetRoute(req),
            |out: &mut Vec<_>, msg| {
                if let RouteNetlinkMessage::NewRoute(m) = msg
                    && let Some(mut r) = route_from_message(&m, names)
                {
                    resolve_nexthop(&mut r, &nexthops);
                    if filter.keeps(&r) {
                        out.push(r);
                    }
                }
            },
        )
        .await?;
        out.extend(family);
    }
    Ok(out)
}

/// ARP and NDP entries on devices for which `wanted(dev)` holds.
pub async fn dump_neighbors(
    handle: &Handle,
    names: &LinkNames,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<NeighborState>, ObserveError> {
    let req = RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default());
    dump(handle, "neighbours", req, |out: &mut Vec<_>, msg| {
        if let RouteNetlinkMessage::NewNeighbour(m) = msg
            && let Some(n) = neighbor_from_message(&m, names).filter(|n| wanted(&n.dev))
        {
            out.push(n);
        }
    })
    .await
}

/// Bridge-family FDB entries of devices for which `wanted(dev)` holds.
pub async fn dump_fdb(
    handle: &Handle,
    names: &LinkNames,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<FdbState>, ObserveError> {
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Bridge;
    dump(
        handle,
        "fdb",
        RouteNetlinkMessage::GetNeighbour(req),
        |out: &mut Vec<_>, msg| {
            if let RouteNetlinkMessage::NewNeighbour(m) = msg
                && let Some(f) = fdb_from_message(&m, names).filter(|f| wanted(&f.dev))
            {
                out.push(f);
            }
        },
    )
    .await
}

// ------------------------------------------------------------ conversions --

fn mac_from_bytes(b: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(b).ok().map(Mac)
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else {
        <[u8; 16]>::try_from(b)
            .ok()
            .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
    }
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        RouteAddress::Other(b) => ip_from_bytes(b),
        _ => None,
    }
}

impl TryFrom<&LinkMessage> for LinkState {
    type Error = ConvertError;

    fn try_from(msg: &LinkMessage) -> Result<Self, Self::Error> {
        let mut name = None;
        let mut kind = String::new();
        let mut mtu = 0;
        let mut mac = None;
        let mut vxlan = None;
        let mut alias = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::IfAlias(a) if !a.is_empty() => alias = Some(a.clone()),
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::Address(a) => mac = mac_from_bytes(a),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = k.to_string(),
                            LinkInfo::Data(InfoData::Vxlan(v)) => vxlan = Some(vxlan_attrs(v)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(LinkState {
            name: name.ok_or(ConvertError::LinkWithoutName(msg.header.index))?,
            index: msg.header.index,
            kind,
            mtu,
            mac,
            up: msg.header.flags.contains(LinkFlags::Up),
            vxlan,
            alias,
        })
    }
}

fn vxlan_attrs(info: &[InfoVxlan]) -> VxlanAttrs {
    let mut v = VxlanAttrs {
        vni: 0,
        port: 0,
        local: None,
        underlay_index: None,
        learning: false,
        gbp: false,
    };
    for i in info {
        match i {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Local(a) => v.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) => v.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Link(l) => v.underlay_index = Some(*l).filter(|l| *l != 0),
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Gbp => v.gbp = true,
            _ => {}
        }
    }
    v
}

/// An address as the model sees it; `None` for families other than IPv4/6
/// or a device missing from `names`.
pub fn address_from_message(msg: &AddressMessage, names: &LinkNames) -> Option<AddressState> {
    let dev = names.get(&msg.header.index)?;
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 often sends only IFA_ADDRESS.
    let mut local = None;
    let mut address = None;
    let mut protocol = 0;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Protocol(p) => protocol = u8::from(*p),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let cidr = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some(AddressState {
        dev: dev.clone(),
        cidr,
        global: msg.header.scope == AddressScope::Universe,
        protocol,
    })
}

/// The routing table of a route message (`RTA_TABLE` carries ids > 255).
pub fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// A route as the model sees it; `None` for routes netconverge never
/// considers (table `local`, multicast/broadcast/local types, cloned cache
/// entries, non-IP families).
pub fn route_from_message(msg: &RouteMessage, names: &LinkNames) -> Option<RouteState> {
    let h = &msg.header;
    let table = route_table(msg);
    if table == LOCAL_TABLE
        || matches!(
            h.kind,
            RouteType::Multicast | RouteType::Broadcast | RouteType::Local
        )
        || h.flags.contains(RouteFlags::Cloned)
    {
        return None;
    }
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = unspecified;
    let mut via = None;
    let mut oif = None;
    let mut src = None;
    let mut metric = None;
    let mut nhid = None;
    let mut onlink = h.flags.contains(RouteFlags::Onlink);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_address(a)?,
            RouteAttribute::Gateway(a) => via = route_address(a),
            RouteAttribute::Via(RouteVia::Inet(a)) => via = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => via = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(a) => src = route_address(a),
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::NhId(id) => nhid = Some(*id),
            // Multipath: the model has one next hop; report the first.
            RouteAttribute::MultiPath(hops) => {
                if let Some(nh) = hops.first() {
                    oif = oif.or(Some(nh.interface_index));
                    onlink |= nh.flags.contains(RouteNextHopFlags::Onlink);
                    via = via.or_else(|| {
                        nh.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => route_address(g),
                            _ => None,
                        })
                    });
                }
            }
            _ => {}
        }
    }
    let dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
    Some(RouteState {
        table,
        dst,
        via,
        dev: oif.and_then(|i| names.get(&i).cloned()),
        onlink,
        src,
        metric,
        protocol: h.protocol.into(),
        nhid,
    })
}

/// A nexthop object as the model sees it; `None` without an id.
pub fn nexthop_from_message(msg: &NexthopMessage, names: &LinkNames) -> Option<NexthopState> {
    Some(NexthopState {
        id: msg.id()?,
        via: msg.gateway_addr(),
        dev: msg.oif().and_then(|i| names.get(&i).cloned()),
        onlink: msg.onlink(),
        protocol: msg.header.protocol,
    })
}

fn neighbour_dst(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => ip_from_bytes(b),
        _ => None,
    }
}

/// An ARP/NDP entry; `None` for other families, NOARP entries (multicast
/// resolutions the kernel makes itself) and unknown devices.
pub fn neighbor_from_message(msg: &NeighbourMessage, names: &LinkNames) -> Option<NeighborState> {
    if !matches!(
        msg.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
        return None;
    }
    let state = u16::from(msg.header.state);
    if state & NUD_NOARP != 0 {
        return None;
    }
    let dev = names.get(&msg.header.ifindex)?;
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neighbour_dst(a),
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from_bytes(b),
            _ => {}
        }
    }
    Some(NeighborState {
        dev: dev.clone(),
        ip: ip?,
        mac,
        permanent: state & NUD_PERMANENT != 0,
    })
}

/// A bridge-family FDB entry of the device itself (`self`); `None` for
/// entries a bridge master reports about its port, other families and
/// unknown devices.
pub fn fdb_from_message(msg: &NeighbourMessage, names: &LinkNames) -> Option<FdbState> {
    if msg.header.family != AddressFamily::Bridge
        || msg.header.flags.contains(NeighbourFlags::Controller)
    {
        return None;
    }
    let dev = names.get(&msg.header.ifindex)?;
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from_bytes(b),
            NeighbourAttribute::Destination(a) => dst = neighbour_dst(a),
            _ => {}
        }
    }
    Some(FdbState {
        dev: dev.clone(),
        mac: mac?,
        dst,
        permanent: u16::from(msg.header.state) & NUD_PERMANENT != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::address::AddressScope;
    use rtnetlink::packet_route::link::InfoKind;
    use rtnetlink::packet_route::neighbour::NeighbourState;
    use rtnetlink::packet_route::route::RouteProtocol;

    fn names() -> LinkNames {
        [(2, "eth0".to_string()), (7, "flannel.1".to_string())]
            .into_iter()
            .collect()
    }

    #[test]
    fn link_message_to_state_reads_vxlan_attributes() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("flannel.1".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(1),
                    InfoVxlan::Link(2),
                    InfoVxlan::Local6("2001:db8::1".parse().unwrap()),
                    InfoVxlan::Learning(false),
                    InfoVxlan::Port(8472),
                    InfoVxlan::Gbp,
                ])),
            ]),
        ];
        let l = LinkState::try_from(&msg).unwrap();
        assert_eq!(l.name, "flannel.1");
        assert_eq!(
            (l.index, l.kind.as_str(), l.mtu, l.up),
            (7, "vxlan", 1450, true)
        );
        assert_eq!(l.mac, Some(Mac([2, 0, 0, 0, 0, 1])));
        assert_eq!(
            l.vxlan,
            Some(VxlanAttrs {
                vni: 1,
                port: 8472,
                local: Some("2001:db8::1".parse().unwrap()),
                underlay_index: Some(2),
                learning: false,
                gbp: true,
            })
        );
        msg.attributes
            .retain(|a| !matches!(a, LinkAttribute::IfName(_)));
        assert_eq!(
            LinkState::try_from(&msg),
            Err(ConvertError::LinkWithoutName(7))
        );
    }

    #[test]
    fn address_prefers_ifa_local_and_maps_scope() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = 2;
        msg.header.prefix_len = 24;
        msg.header.scope = AddressScope::Universe;
        msg.attributes = vec![
            AddressAttribute::Address("192.0.2.9".parse().unwrap()),
            AddressAttribute::Local("192.0.2.1".parse().unwrap()),
        ];
        let a = address_from_message(&msg, &names()).unwrap();
        assert_eq!(
            (a.dev.as_str(), a.cidr.to_string(), a.global),
            ("eth0", "192.0.2.1/24".into(), true)
        );
        msg.header.scope = AddressScope::Link;
        assert!(!address_from_message(&msg, &names()).unwrap().global);
        msg.header.index = 99;
        assert_eq!(address_from_message(&msg, &names()), None);
    }

    fn route(table: u8) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = table;
        msg.header.kind = RouteType::Unicast;
        msg.header.protocol = RouteProtocol::Other(199);
        msg.header.destination_prefix_length = 24;
        msg.header.flags = RouteFlags::Onlink;
        msg.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet("198.18.2.0".parse().unwrap())),
            RouteAttribute::Gateway(RouteAddress::Inet("198.18.2.0".parse().unwrap())),
            RouteAttribute::Oif(7),
            RouteAttribute::Priority(5),
            RouteAttribute::PrefSource(RouteAddress::Inet("198.18.1.0".parse().unwrap())),
        ];
        msg
    }

    #[test]
    fn route_message_to_state() {
        let r = route_from_message(&route(254), &names()).unwrap();
        assert_eq!(
            r,
            RouteState {
                table: 254,
                dst: "198.18.2.0/24".parse().unwrap(),
                via: Some("198.18.2.0".parse().unwrap()),
                dev: Some("flannel.1".into()),
                onlink: true,
                src: Some("198.18.1.0".parse().unwrap()),
                metric: Some(5),
                protocol: 199,
                nhid: None,
            }
        );
        let mut big = route(254);
        big.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(route_from_message(&big, &names()).unwrap().table, 1000);
        assert_eq!(route_from_message(&route(255), &names()), None);
        let mut mc = route(254);
        mc.header.kind = RouteType::Multicast;
        assert_eq!(route_from_message(&mc, &names()), None);
        let mut default = route(254);
        default
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        default.header.destination_prefix_length = 0;
        assert_eq!(
            route_from_message(&default, &names())
                .unwrap()
                .dst
                .to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn route_filter_rules() {
        let f = RouteFilter {
            owned_devices: ["flannel.1".to_string()].into_iter().collect(),
            protocol: 199,
            past_protocols: Default::default(),
            desired: [(254, "10.0.0.0/8".parse().unwrap())].into_iter().collect(),
        };
        let mut r = route_from_message(&route(254), &names()).unwrap();
        assert!(f.keeps(&r));
        r.dev = Some("eth0".into());
        assert!(f.keeps(&r), "protocol marker");
        r.protocol = 4;
        assert!(!f.keeps(&r), "foreign route on a foreign device");
        r.dst = "10.0.0.0/8".parse().unwrap();
        assert!(f.keeps(&r), "same (table, dst) as a desired route");
        r.table = 100;
        assert!(!f.keeps(&r));
    }

    #[test]
    fn neighbour_and_fdb_messages() {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet;
        n.header.ifindex = 7;
        n.header.state = NeighbourState::Permanent;
        n.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet("198.18.2.0".parse().unwrap())),
            NeighbourAttribute::LinkLayerAddress(vec![2, 1, 2, 3, 4, 5]),
        ];
        let s = neighbor_from_message(&n, &names()).unwrap();
        assert_eq!(s.ip.to_string(), "198.18.2.0");
        assert_eq!(s.mac, Some(Mac([2, 1, 2, 3, 4, 5])));
        assert!(s.permanent);
        n.header.state = NeighbourState::Noarp;
        assert_eq!(neighbor_from_message(&n, &names()), None);

        let mut f = NeighbourMessage::default();
        f.header.family = AddressFamily::Bridge;
        f.header.ifindex = 7;
        f.header.flags = NeighbourFlags::Own;
        f.header.state = NeighbourState::Permanent;
        f.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(vec![2, 1, 2, 3, 4, 5]),
            NeighbourAttribute::Destination(NeighbourAddress::Other(
                "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
            )),
        ];
        let e = fdb_from_message(&f, &names()).unwrap();
        assert_eq!(e.dst, Some("2001:db8::2".parse().unwrap()));
        assert!(e.permanent);
        assert_eq!(
            neighbor_from_message(&f, &names()),
            None,
            "bridge family is not ARP/NDP"
        );
        f.header.flags |= NeighbourFlags::Controller;
        assert_eq!(
            fdb_from_message(&f, &names()),
            None,
            "bridge master's view of its port"
        );
    }
}
