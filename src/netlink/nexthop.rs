//! Kernel nexthop objects (`ip nexthop`, Linux ≥ 5.3) over netlink: the
//! typed `RTM_{NEW,DEL,GET}NEXTHOP` messages that netlink-packet-route 0.34
//! lacks, built on netlink-packet-core. Dumps, creations and deletions go
//! through the bulk socket ([`crate::netlink::bulk`]) with every other object;
//! notifications through their own netlink-proto connection ([`monitor`]).
//!
//! Invariant: only what netconverge uses is typed (id, gateway, device,
//! onlink flag, protocol); every other attribute survives a parse as
//! [`NexthopAttribute::Other`], so dumps of foreign nexthops (groups,
//! blackholes, FDB nexthops) never fail. Encoding and decoding never panic.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkSerializable, Nla, NlaBuffer, NlasIterator, Parseable, emit_u32, parse_ip, parse_u32,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, SocketAddr};

use super::Errno;

pub const RTM_NEWNEXTHOP: u16 = 104;
pub const RTM_DELNEXTHOP: u16 = 105;
pub const RTM_GETNEXTHOP: u16 = 106;
/// Multicast group of nexthop notifications (`RTNLGRP_NEXTHOP`).
pub const RTNLGRP_NEXTHOP: u32 = 32;

const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;

/// `RTNH_F_ONLINK`: the gateway is on the link even without a covering prefix.
pub const RTNH_F_ONLINK: u32 = 4;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `struct nhmsg`: family, scope, protocol, reserved byte, flags.
const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NexthopHeader {
    pub family: u8,
    pub scope: u8,
    pub protocol: u8,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NexthopAttribute {
    Id(u32),
    Oif(u32),
    Gateway(IpAddr),
    Other(DefaultNla),
}

impl Nla for NexthopAttribute {
    fn value_len(&self) -> usize {
        match self {
            NexthopAttribute::Id(_) | NexthopAttribute::Oif(_) => 4,
            NexthopAttribute::Gateway(IpAddr::V4(_)) => 4,
            NexthopAttribute::Gateway(IpAddr::V6(_)) => 16,
            NexthopAttribute::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            NexthopAttribute::Id(_) => NHA_ID,
            NexthopAttribute::Oif(_) => NHA_OIF,
            NexthopAttribute::Gateway(_) => NHA_GATEWAY,
            NexthopAttribute::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        // `buffer` is exactly `value_len()` long (netlink-packet-core's contract).
        match self {
            NexthopAttribute::Id(v) | NexthopAttribute::Oif(v) => {
                let _ = emit_u32(buffer, *v);
            }
            NexthopAttribute::Gateway(IpAddr::V4(a)) => copy_into(buffer, &a.octets()),
            NexthopAttribute::Gateway(IpAddr::V6(a)) => copy_into(buffer, &a.octets()),
            NexthopAttribute::Other(nla) => nla.emit_value(buffer),
        }
    }
}

fn copy_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NexthopAttribute {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match buf.kind() {
            NHA_ID => NexthopAttribute::Id(parse_u32(value)?),
            NHA_OIF => NexthopAttribute::Oif(parse_u32(value)?),
            NHA_GATEWAY => NexthopAttribute::Gateway(parse_ip(value)?),
            _ => NexthopAttribute::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One nexthop object (request or dump entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NexthopMessage {
    pub header: NexthopHeader,
    pub attributes: Vec<NexthopAttribute>,
}

impl NexthopMessage {
    /// `ip nexthop add id ID via VIA dev OIF [onlink] proto PROTOCOL`.
    pub fn gateway(id: u32, via: IpAddr, oif: u32, onlink: bool, protocol: u8) -> Self {
        NexthopMessage {
            header: NexthopHeader {
                family: family_of(via),
                scope: 0,
                protocol,
                flags: if onlink { RTNH_F_ONLINK } else { 0 },
            },
            attributes: vec![
                NexthopAttribute::Id(id),
                NexthopAttribute::Gateway(via),
                NexthopAttribute::Oif(oif),
            ],
        }
    }

    /// The key of `ip nexthop del id ID` (the kernel wants nothing else).
    pub fn id_only(id: u32) -> Self {
        NexthopMessage {
            header: NexthopHeader::default(),
            attributes: vec![NexthopAttribute::Id(id)],
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Id(v) => Some(*v),
            _ => None,
        })
    }

    pub fn oif(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Oif(v) => Some(*v),
            _ => None,
        })
    }

    pub fn gateway_addr(&self) -> Option<IpAddr> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Gateway(v) => Some(*v),
            _ => None,
        })
    }

    pub fn onlink(&self) -> bool {
        self.header.flags & RTNH_F_ONLINK != 0
    }

    fn emit_into(&self, buffer: &mut [u8]) {
        let h = &self.header;
        let flags = h.flags.to_ne_bytes();
        let header = [
            h.family, h.scope, h.protocol, 0, flags[0], flags[1], flags[2], flags[3],
        ];
        copy_into(buffer, &header);
        if let Some(rest) = buffer.get_mut(HEADER_LEN..) {
            self.attributes.as_slice().emit(rest);
        }
    }

    fn parse_bytes(buf: &[u8]) -> Result<Self, DecodeError> {
        let (Some(header), Some(rest)) = (buf.get(..HEADER_LEN), buf.get(HEADER_LEN..)) else {
            return Err(DecodeError::from(format!(
                "nexthop message of {} bytes, header needs {HEADER_LEN}",
                buf.len()
            )));
        };
        let mut flags = [0u8; 4];
        copy_into(&mut flags, header.get(4..).unwrap_or_default());
        let h = NexthopHeader {
            family: header.first().copied().unwrap_or_default(),
            scope: header.get(1).copied().unwrap_or_default(),
            protocol: header.get(2).copied().unwrap_or_default(),
            flags: u32::from_ne_bytes(flags),
        };
        let mut attributes = Vec::new();
        for nla in NlasIterator::new(rest) {
            attributes.push(NexthopAttribute::parse(&nla?)?);
        }
        Ok(NexthopMessage {
            header: h,
            attributes,
        })
    }
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// The netlink payload of the nexthop family of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NexthopNetlinkMessage {
    New(NexthopMessage),
    Del(NexthopMessage),
    Get(NexthopMessage),
}

impl NexthopNetlinkMessage {
    pub fn message(&self) -> &NexthopMessage {
        match self {
            NexthopNetlinkMessage::New(m)
            | NexthopNetlinkMessage::Del(m)
            | NexthopNetlinkMessage::Get(m) => m,
        }
    }
}

impl NetlinkSerializable for NexthopNetlinkMessage {
    fn message_type(&self) -> u16 {
        match self {
            NexthopNetlinkMessage::New(_) => RTM_NEWNEXTHOP,
            NexthopNetlinkMessage::Del(_) => RTM_DELNEXTHOP,
            NexthopNetlinkMessage::Get(_) => RTM_GETNEXTHOP,
        }
    }

    fn buffer_len(&self) -> usize {
        HEADER_LEN + self.message().attributes.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        self.message().emit_into(buffer);
    }
}

/// A message of another type on a nexthop socket (a notification socket
/// also sees nothing else, but the type must be total).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("netlink message type {0} is not a nexthop message")]
    NotNexthop(u16),
    #[error("malformed nexthop message: {0}")]
    Decode(#[from] DecodeError),
}

impl NetlinkDeserializable for NexthopNetlinkMessage {
    type Error = ParseError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        let wrap = match header.message_type {
            RTM_NEWNEXTHOP => NexthopNetlinkMessage::New,
            RTM_DELNEXTHOP => NexthopNetlinkMessage::Del,
            RTM_GETNEXTHOP => NexthopNetlinkMessage::Get,
            other => return Err(ParseError::NotNexthop(other)),
        };
        Ok(wrap(NexthopMessage::parse_bytes(payload)?))
    }
}

/// The kernel has no nexthop objects: before Linux 5.3 the message type is
/// unknown (EOPNOTSUPP); some builds reject it (EINVAL).
pub fn unsupported(errno: Errno) -> bool {
    matches!(errno, Errno::EOPNOTSUPP | Errno::EINVAL)
}

/// Nexthop notifications (`ip monitor nexthop`) of the calling thread's
/// network namespace; an overrun arrives as `NetlinkPayload::Overrun`.
/// Fails on kernels without nexthop objects (no such multicast group).
pub fn monitor(
    rx_buffer: usize,
) -> io::Result<
    futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<NexthopNetlinkMessage>, SocketAddr)>,
> {
    let (mut conn, _handle, messages) =
        netlink_proto::new_connection::<NexthopNetlinkMessage>(NETLINK_ROUTE)?;
    let socket = conn.socket_mut().socket_mut();
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(RTNLGRP_NEXTHOP)?;
    if let Err(e) = super::size_notification_buffer(socket, rx_buffer) {
        tracing::debug!("nexthop monitor receive buffer {rx_buffer}: {e}");
    }
    tokio::spawn(conn);
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: NexthopNetlinkMessage) -> NexthopNetlinkMessage {
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        let mut h = NetlinkHeader::default();
        h.message_type = m.message_type();
        NexthopNetlinkMessage::deserialize(&h, &buf).unwrap()
    }

    #[test]
    fn gateway_nexthop_encodes_like_iproute2() {
        let m = NexthopMessage::gateway(199_000_001, "100.64.1.0".parse().unwrap(), 7, true, 199);
        let wire = NexthopNetlinkMessage::New(m.clone());
        let mut buf = vec![0u8; wire.buffer_len()];
        wire.serialize(&mut buf);
        // nhmsg: AF_INET, scope 0, proto 199, resvd, flags RTNH_F_ONLINK
        assert_eq!(&buf[..8], &[2, 0, 199, 0, 4, 0, 0, 0]);
        // NHA_ID (len 8, type 1), NHA_GATEWAY (len 8, type 6), NHA_OIF (len 8, type 5)
        assert_eq!(&buf[8..12], &[8, 0, 1, 0]);
        assert_eq!(&buf[12..16], &199_000_001u32.to_ne_bytes());
        assert_eq!(&buf[16..24], &[8, 0, 6, 0, 100, 64, 1, 0]);
        assert_eq!(&buf[24..28], &[8, 0, 5, 0]);
        assert_eq!(buf.len(), 32);
        assert_eq!(roundtrip(wire), NexthopNetlinkMessage::New(m.clone()));
        assert_eq!(m.id(), Some(199_000_001));
        assert_eq!(m.oif(), Some(7));
        assert!(m.onlink());
    }

    #[test]
    fn ipv6_gateway_and_unknown_attributes_survive() {
        let mut m = NexthopMessage::gateway(5, "fd00::1".parse().unwrap(), 3, false, 4);
        // NHA_GROUP of one member and NHA_FDB: kept as opaque attributes.
        m.attributes.push(NexthopAttribute::Other(DefaultNla::new(
            2,
            vec![9, 0, 0, 0, 0, 0, 0, 0],
        )));
        m.attributes
            .push(NexthopAttribute::Other(DefaultNla::new(11, vec![])));
        let back = roundtrip(NexthopNetlinkMessage::New(m.clone()));
        assert_eq!(back, NexthopNetlinkMessage::New(m.clone()));
        assert_eq!(back.message().header.family, AF_INET6);
        assert_eq!(
            back.message().gateway_addr(),
            Some("fd00::1".parse().unwrap())
        );
        assert!(!back.message().onlink());
    }

    #[test]
    fn delete_is_id_only_and_garbage_is_an_error() {
        let d = NexthopNetlinkMessage::Del(NexthopMessage::id_only(42));
        assert_eq!(d.message_type(), RTM_DELNEXTHOP);
        let mut buf = vec![0u8; d.buffer_len()];
        d.serialize(&mut buf);
        assert_eq!(&buf[..8], &[0; 8]);
        assert_eq!(roundtrip(d.clone()), d);

        let mut h = NetlinkHeader::default();
        h.message_type = RTM_NEWNEXTHOP;
        assert!(NexthopNetlinkMessage::deserialize(&h, &[2, 0, 199]).is_err());
        h.message_type = 24;
        assert!(matches!(
            NexthopNetlinkMessage::deserialize(&h, &buf),
            Err(ParseError::NotNexthop(24))
        ));
    }

    #[test]
    fn unsupported_kernels_are_recognized() {
        assert!(unsupported(Errno::EOPNOTSUPP));
        assert!(unsupported(Errno::new(-libc::EINVAL)));
        assert!(!unsupported(Errno::EPERM));
    }
}
