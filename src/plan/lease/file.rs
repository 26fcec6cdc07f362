//! subnet.env as text: rendering, parsing, and naming the keys two files differ in.
//!
//! Invariant: pure. [`render`] is byte-identical to what flannel writes and
//! always passes [`parse`]; [`parse`] accepts what the flannel CNI plugin
//! accepts (lines split on the first `=`), never less.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{Family, LeaseFamily, LeaseSpec};

pub const KEY_NETWORK: &str = "FLANNEL_NETWORK";
pub const KEY_SUBNET: &str = "FLANNEL_SUBNET";
pub const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
pub const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
pub const KEY_MTU: &str = "FLANNEL_MTU";
pub const KEY_IPMASQ: &str = "FLANNEL_IPMASQ";

/// What [`LeaseParseError::Missing`] names when no family is present at all.
const KEY_ANY_NETWORK: &str = "FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK";

/// The address the CNI plugin hands out as the pod gateway: the subnet's
/// first usable address (network + 1). /31, /32 (/127, /128) have no spare
/// network address, so their first address is used as is.
pub fn first_usable(subnet: &IpNet) -> IpAddr {
    match subnet.trunc() {
        IpNet::V4(n) if n.prefix_len() < 31 => {
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).saturating_add(1)))
        }
        IpNet::V6(n) if n.prefix_len() < 127 => {
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).saturating_add(1)))
        }
        other => other.network(),
    }
}

/// The file flannel would write for `spec` with `mtu`: families IPv4 then
/// IPv6, each only when configured, then MTU and IPMASQ, newline-terminated.
pub fn render(spec: &LeaseSpec, mtu: u32) -> String {
    let mut out = String::new();
    if let Some(f) = &spec.ipv4 {
        render_family(&mut out, KEY_NETWORK, KEY_SUBNET, f);
    }
    if let Some(f) = &spec.ipv6 {
        render_family(&mut out, KEY_IPV6_NETWORK, KEY_IPV6_SUBNET, f);
    }
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{KEY_MTU}={mtu}");
    let _ = writeln!(out, "{KEY_IPMASQ}={}", spec.ipmasq);
    out
}

fn render_family(out: &mut String, key_net: &str, key_sub: &str, f: &LeaseFamily) {
    let subnet = f.subnet.trunc();
    let _ = writeln!(out, "{key_net}={}", f.network.trunc());
    let _ = writeln!(
        out,
        "{key_sub}={}/{}",
        first_usable(&subnet),
        subnet.prefix_len()
    );
}

/// One family as found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseFileFamily {
    pub network: IpNet,
    /// As written: the gateway address with the subnet's prefix length
    /// (`10.42.1.1/24`); `.trunc()` gives the subnet.
    pub subnet: IpNet,
}

/// A subnet.env the CNI plugin would accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseFile {
    pub ipv4: Option<LeaseFileFamily>,
    pub ipv6: Option<LeaseFileFamily>,
    pub mtu: u32,
    /// `true` only for the exact value `true`, as the CNI plugin reads it.
    pub ipmasq: bool,
    /// Keys the CNI plugin ignores, in file order.
    pub unknown_keys: Vec<String>,
    /// Keys set more than once (the last value wins), in file order.
    pub duplicate_keys: Vec<String>,
    /// 1-based numbers of non-blank lines without `=` (ignored by the plugin).
    pub malformed_lines: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseParseError {
    #[error("{key}={value:?}: {why}")]
    BadValue {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{0} missing")]
    Missing(&'static str),
}

/// Lines as the CNI plugin splits them; never fails.
pub(crate) struct RawLines<'a> {
    pub entries: Vec<(&'a str, &'a str)>,
    pub malformed: Vec<usize>,
}

pub(crate) fn raw_lines(text: &str) -> RawLines<'_> {
    let mut raw = RawLines {
        entries: Vec::new(),
        malformed: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        match line.split_once('=') {
            Some(kv) => raw.entries.push(kv),
            None if line.trim().is_empty() => {}
            None => raw.malformed.push(i + 1),
        }
    }
    raw
}

/// Parse with the CNI plugin's rules: `KEY=VALUE` split on the first `=`,
/// CIDRs as Go's `net.ParseCIDR` reads them (host bits allowed), MTU an
/// integer, IPMASQ true only for `true`; at least one complete family, MTU
/// and IPMASQ required. Unknown, duplicate and malformed lines are tolerated
/// and reported.
pub fn parse(text: &str) -> Result<LeaseFile, LeaseParseError> {
    let raw = raw_lines(text);
    let (mut net4, mut sub4, mut net6, mut sub6) = (None, None, None, None);
    let (mut mtu, mut ipmasq) = (None, None);
    let mut unknown_keys = Vec::new();
    let mut duplicate_keys = Vec::new();
    let (mut seen, mut duplicated) = (BTreeSet::new(), BTreeSet::new());
    for (key, value) in &raw.entries {
        let seen_before = !seen.insert(*key);
        if seen_before && duplicated.insert(*key) {
            duplicate_keys.push((*key).to_string());
        }
        match *key {
            KEY_NETWORK => net4 = Some(cidr(KEY_NETWORK, value, Family::Ipv4)?),
            KEY_SUBNET => sub4 = Some(cidr(KEY_SUBNET, value, Family::Ipv4)?),
            KEY_IPV6_NETWORK => net6 = Some(cidr(KEY_IPV6_NETWORK, value, Family::Ipv6)?),
            KEY_IPV6_SUBNET => sub6 = Some(cidr(KEY_IPV6_SUBNET, value, Family::Ipv6)?),
            KEY_MTU => mtu = Some(parse_mtu(value)?),
            KEY_IPMASQ => ipmasq = Some(*value == "true"),
            _ if !seen_before => unknown_keys.push((*key).to_string()),
            _ => {}
        }
    }
    let ipv4 = pair(net4, sub4, KEY_NETWORK, KEY_SUBNET)?;
    let ipv6 = pair(net6, sub6, KEY_IPV6_NETWORK, KEY_IPV6_SUBNET)?;
    if ipv4.is_none() && ipv6.is_none() {
        return Err(LeaseParseError::Missing(KEY_ANY_NETWORK));
    }
    Ok(LeaseFile {
        ipv4,
        ipv6,
        mtu: mtu.ok_or(LeaseParseError::Missing(KEY_MTU))?,
        ipmasq: ipmasq.ok_or(LeaseParseError::Missing(KEY_IPMASQ))?,
        unknown_keys,
        duplicate_keys,
        malformed_lines: raw.malformed,
    })
}

fn pair(
    network: Option<IpNet>,
    subnet: Option<IpNet>,
    key_net: &'static str,
    key_sub: &'static str,
) -> Result<Option<LeaseFileFamily>, LeaseParseError> {
    match (network, subnet) {
        (Some(network), Some(subnet)) => Ok(Some(LeaseFileFamily { network, subnet })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(LeaseParseError::Missing(key_sub)),
        (None, Some(_)) => Err(LeaseParseError::Missing(key_net)),
    }
}

/// `address/prefix` the way Go's `net.ParseCIDR` accepts it: no spaces, a
/// decimal prefix within the family's width, host bits allowed. ipnet's own
/// parser is not used because it accepts IPv4 octets with leading zeros,
/// which Go rejects.
fn cidr(key: &'static str, value: &str, family: Family) -> Result<IpNet, LeaseParseError> {
    let bad = |why| LeaseParseError::BadValue {
        key,
        value: value.to_string(),
        why,
    };
    let (addr, prefix) = value
        .split_once('/')
        .ok_or_else(|| bad("not address/prefix"))?;
    let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    if Family::of(&addr) != family {
        return Err(bad(match family {
            Family::Ipv4 => "not an IPv4 network",
            Family::Ipv6 => "not an IPv6 network",
        }));
    }
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("prefix length is not a decimal number"));
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad("prefix length too long"))?;
    IpNet::new(addr, prefix).map_err(|_| bad("prefix length too long"))
}

fn parse_mtu(value: &str) -> Result<u32, LeaseParseError> {
    match value.parse::<u32>() {
        Ok(mtu) if mtu > 0 => Ok(mtu),
        _ => Err(LeaseParseError::BadValue {
            key: KEY_MTU,
            value: value.to_string(),
            why: "not a positive integer",
        }),
    }
}

/// Names what makes `observed` differ from `desired`, in `desired`'s key
/// order, e.g. `FLANNEL_MTU 1500 → 1450; FLANNEL_IPMASQ missing`. Values are
/// compared as raw strings: the CNI plugin reads `1450 ` and `1450`
/// differently, so must we.
pub(crate) fn describe_drift(observed: &str, desired: &str) -> String {
    let obs = raw_lines(observed);
    let want = raw_lines(desired);
    let mut items = Vec::new();
    for (key, want_value) in &want.entries {
        let values: Vec<&str> = obs
            .entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .collect();
        match values.last() {
            None => items.push(format!("{key} missing")),
            Some(v) if v != want_value => {
                items.push(format!("{key} {} → {}", show(v), show(want_value)));
            }
            Some(_) => {}
        }
        if values.len() > 1 {
            items.push(format!("{key} duplicated"));
        }
    }
    let wanted: BTreeSet<&str> = want.entries.iter().map(|(k, _)| *k).collect();
    let mut extra = BTreeSet::new();
    for (key, _) in &obs.entries {
        if !wanted.contains(key) && extra.insert(*key) {
            items.push(format!("{} unexpected", show(key)));
        }
    }
    items.extend(obs.malformed.iter().map(|n| format!("line {n} malformed")));
    if !items.is_empty() {
        items.join("; ")
    } else if observed == desired {
        String::new()
    } else if format!("{observed}\n") == desired {
        "final newline missing".to_string()
    } else {
        "layout differs (key order, blank lines or line endings)".to_string()
    }
}

/// A value fit for a one-line reason: quoted when empty or when it holds
/// whitespace/control characters, shortened when long.
fn show(s: &str) -> String {
    const MAX: usize = 48;
    let short: String = s.chars().take(MAX).collect();
    let cut = if short.len() < s.len() { "…" } else { "" };
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        format!("{short:?}{cut}")
    } else {
        format!("{short}{cut}")
    }
}
