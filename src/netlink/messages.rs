//! Builders of the rtnetlink messages `apply` sends (links, addresses,
//! neighbours, FDB entries, routes), from planned ops.
//!
//! Invariant: pure; building a message never talks to the kernel.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::model::Mac;
use crate::plan::{RouteOp, VxlanCreate};

/// `ip link add NAME [address MAC] mtu MTU up type vxlan id VNI dev UNDERLAY
/// local LOCAL dstport PORT [no]learning [gbp]`.
pub(crate) fn vxlan_message(v: &VxlanCreate, underlay: u32) -> LinkMessage {
    let mut b = LinkVxlan::new(&v.name, v.vni)
        .dev(underlay)
        .port(v.port)
        .learning(v.learning);
    b = match v.local {
        IpAddr::V4(a) => b.local(a),
        IpAddr::V6(a) => b.local6(a),
    };
    if v.gbp {
        b = b.gbp();
    }
    if let Some(mac) = v.mac {
        b = b.address(mac.0.to_vec());
    }
    b.mtu(v.mtu).up().build()
}

/// `msg` with netconverge's device mark as its ifalias.
pub(crate) fn mark_message(mut msg: LinkMessage) -> LinkMessage {
    msg.attributes.push(LinkAttribute::IfAlias(
        crate::model::DEVICE_MARK.to_string(),
    ));
    msg
}

/// `ip link set INDEX type vxlan [local L] [dev U] [[no]learning]`: a
/// changelink of only the attributes the kernel changes in place.
pub(crate) fn vxlan_change_message(
    index: u32,
    local: Option<IpAddr>,
    underlay: Option<u32>,
    learning: Option<bool>,
) -> LinkMessage {
    let mut data = Vec::new();
    match local {
        Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
        Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
        None => {}
    }
    if let Some(u) = underlay {
        data.push(InfoVxlan::Link(u));
    }
    if let Some(l) = learning {
        data.push(InfoVxlan::Learning(l));
    }
    let mut msg = LinkUnspec::new_with_index(index).build();
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(data)),
    ]));
    msg
}

/// `ip link set` of only the given fields.
pub(crate) fn set_link_message(
    index: u32,
    mtu: Option<u32>,
    mac: Option<Mac>,
    up: Option<bool>,
) -> LinkMessage {
    let mut b = LinkUnspec::new_with_index(index);
    if let Some(mtu) = mtu {
        b = b.mtu(mtu);
    }
    if let Some(mac) = mac {
        b = b.address(mac.0.to_vec());
    }
    b = match up {
        Some(true) => b.up(),
        Some(false) => b.down(),
        None => b,
    };
    b.build()
}

/// `ip addr add CIDR dev INDEX` (IFA_LOCAL, IFA_ADDRESS, IFA_BROADCAST for
/// IPv4, like iproute2); IPv6 without duplicate address detection: a
/// node-unique /128 on the overlay, which DAD would only delay (and routes
/// using it as `src`).
pub(crate) fn address_add_message(
    index: u32,
    ip: IpAddr,
    prefix_len: u8,
    protocol: u8,
) -> AddressMessage {
    let mut m = match ip {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, prefix_len)
            .build(),
        IpAddr::V6(a) => {
            let mut m = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, prefix_len)
                .build();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m
        }
    };
    // The kernel keeps it (IFA_PROTO): an address netconverge added is
    // recognisable on any device, without the file.
    if protocol != 0 {
        m.attributes
            .push(AddressAttribute::Protocol(protocol.into()));
    }
    m
}

/// A permanent ARP/NDP entry (`ip neigh replace IP lladdr MAC dev INDEX
/// nud permanent`).
pub(crate) fn neighbour_set_message(index: u32, ip: IpAddr, mac: Mac) -> NeighbourMessage {
    let mut msg = neighbour_message(index, ip);
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg
}

/// An address with IFA_LOCAL and IFA_ADDRESS both set (what `ip addr`
/// sends), for deletion.
pub(crate) fn address_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(ip);
    msg.header.index = index;
    msg.header.prefix_len = prefix_len;
    msg.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
    msg
}

pub(crate) fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// An ARP/NDP entry key, for deletion.
pub(crate) fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(ip);
    msg.header.ifindex = index;
    msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::from(ip))];
    msg
}

/// A permanent `self` FDB entry of a VXLAN device (`bridge fdb ... dev D
/// self permanent dst DST`).
pub(crate) fn fdb_message(index: u32, mac: Mac, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes = vec![NeighbourAttribute::LinkLayerAddress(mac.0.to_vec())];
    if let Some(dst) = dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    }
    msg
}

/// Flags of an FDB add. The kernel keeps one destination per unicast MAC
/// and ignores APPEND for it (an existing entry would silently keep its old
/// destination), so unicast entries are replaced; all-zero and multicast
/// MACs (flood lists) get destinations appended, like `bridge fdb append`.
pub(crate) fn fdb_add_flags(mac: &Mac) -> u16 {
    let mode = if mac.is_zero() || mac.is_multicast() {
        NLM_F_APPEND
    } else {
        NLM_F_REPLACE
    };
    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | mode
}

pub(crate) fn invalid(e: impl fmt::Display) -> String {
    e.to_string()
}

/// `ip route replace DST [via VIA] [dev DEV] [onlink] [src SRC] [metric M]
/// table T proto P` (scope link for a direct IPv4 route, like iproute2), or
/// with `nhid N` in place of via/dev/onlink for a route through a nexthop
/// object.
pub(crate) fn route_message(r: &RouteOp, oif: Option<u32>) -> Result<RouteMessage, String> {
    let dst = r.dst.trunc();
    let scope = if r.via.is_none() && r.nhid.is_none() && r.dst.addr().is_ipv4() {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(invalid)?
        .table_id(r.table)
        .protocol(RouteProtocol::from(r.protocol))
        .scope(scope)
        .kind(RouteType::Unicast);
    if r.nhid.is_none() {
        if let Some(via) = r.via {
            b = b.gateway(via).map_err(invalid)?;
        }
        if let Some(oif) = oif {
            b = b.output_interface(oif);
        }
        if r.onlink {
            b = b.onlink();
        }
    }
    if let Some(src) = r.src {
        b = b.pref_source(src).map_err(invalid)?;
    }
    if let Some(metric) = r.metric {
        b = b.priority(metric);
    }
    let mut msg = b.build();
    if let Some(id) = r.nhid {
        msg.attributes.push(RouteAttribute::NhId(id));
    }
    Ok(msg)
}

/// `ip route del DST table T [via VIA] [dev DEV] [metric M]` (or `nhid N`:
/// the kernel matches an IPv4 route through a nexthop object only by its
/// id): protocol, scope and type are wildcards, like iproute2's delete.
pub(crate) fn route_del_message(r: &RouteOp, oif: Option<u32>) -> Result<RouteMessage, String> {
    let dst = r.dst.trunc();
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(invalid)?
        .table_id(r.table)
        .protocol(RouteProtocol::Unspec)
        .scope(RouteScope::NoWhere)
        .kind(RouteType::Unspec);
    if r.nhid.is_none() {
        if let Some(via) = r.via {
            b = b.gateway(via).map_err(invalid)?;
        }
        if let Some(oif) = oif {
            b = b.output_interface(oif);
        }
    }
    if let Some(metric) = r.metric {
        b = b.priority(metric);
    }
    let mut msg = b.build();
    if let Some(id) = r.nhid {
        msg.attributes.push(RouteAttribute::NhId(id));
    }
    Ok(msg)
}
