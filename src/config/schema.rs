//! Reads the TOML tree into typed, spanned raw values.
//!
//! Invariant: every key of the file is consumed exactly once, either by a
//! reader or as an "unknown key" error; every value that is present but wrong
//! produces exactly one error here, and is then `Invalid`/`None`, so the
//! semantic layer never reports consequences of an error already shown.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use toml_span::Span;
use toml_span::value::{Table, Value, ValueInner};

use super::Diags;
use crate::model::{
    DaemonSpec, EngineSpec, Family, IptablesMode, LeaseMode, Mac, NatBackendKind, NexthopMode,
    NmMode, ReadyPolicy,
};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sp<T> {
    pub(crate) v: T,
    pub(crate) span: Span,
}

/// An optional key as read.
#[derive(Debug, Clone)]
pub(crate) enum Field<T> {
    Absent,
    /// Present but wrong; already reported.
    Invalid,
    Given(Sp<T>),
}

impl<T> Field<T> {
    pub(crate) fn given(&self) -> Option<&Sp<T>> {
        match self {
            Field::Given(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// The value, or `default` (positioned at `at`) when the key is absent;
    /// `None` when it was invalid.
    pub(crate) fn or_default(self, default: T, at: Span) -> Option<Sp<T>> {
        match self {
            Field::Absent => Some(Sp {
                v: default,
                span: at,
            }),
            Field::Invalid => None,
            Field::Given(s) => Some(s),
        }
    }

    /// For the final mapping: `Err` when invalid.
    pub(crate) fn value(&self) -> Result<Option<T>, ()>
    where
        T: Clone,
    {
        match self {
            Field::Absent => Ok(None),
            Field::Invalid => Err(()),
            Field::Given(s) => Ok(Some(s.v.clone())),
        }
    }
}

/// Why a string value was rejected.
pub(crate) struct Bad {
    pub(crate) message: String,
    pub(crate) help: String,
}

fn bad(message: impl Into<String>, help: impl Into<String>) -> Bad {
    Bad {
        message: message.into(),
        help: help.into(),
    }
}

/// Why a value was rejected: wrong TOML type, or wrong content.
enum ConvErr {
    Type {
        expected: &'static str,
        found: &'static str,
    },
    Value(Bad),
}

fn wrong_type(expected: &'static str, found: &ValueInner<'_>) -> ConvErr {
    ConvErr::Type {
        expected,
        found: type_name(found),
    }
}

pub(crate) fn type_name(v: &ValueInner<'_>) -> &'static str {
    match v {
        ValueInner::String(_) => "a string",
        ValueInner::Integer(_) => "an integer",
        ValueInner::Float(_) => "a float",
        ValueInner::Boolean(_) => "a boolean",
        ValueInner::Array(_) => "an array",
        ValueInner::Table(_) => "a table",
    }
}

// ---------------------------------------------------------------- section --

/// One table of the file being read: `[nat]`, one `[[vxlan]]`, or the top level.
pub(crate) struct Section<'de> {
    /// Shared by every entry of an array (one allocation, not 10 000).
    label: std::rc::Rc<str>,
    /// Where missing-key errors point: the table header.
    pub(crate) header: Span,
    table: Table<'de>,
    /// Valid keys with an example line each (used in help texts).
    keys: &'static [(&'static str, &'static str)],
}

impl<'de> Section<'de> {
    pub(crate) fn new(
        label: impl Into<std::rc::Rc<str>>,
        header: Span,
        table: Table<'de>,
        keys: &'static [(&'static str, &'static str)],
    ) -> Self {
        Section {
            label: label.into(),
            header,
            table,
            keys,
        }
    }

    fn example(&self, key: &str) -> &'static str {
        self.keys
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, e)| e)
    }

    /// Reads `key` with `conv`, reporting a wrong type or content.
    fn get<T>(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
        conv: impl FnOnce(ValueInner<'de>) -> Result<T, ConvErr>,
    ) -> Field<T> {
        let Some(mut val) = self.table.remove(key) else {
            return Field::Absent;
        };
        let span = val.span;
        match conv(val.take()) {
            Ok(v) => Field::Given(Sp { v, span }),
            Err(ConvErr::Type { expected, found }) => {
                d.error(
                    span,
                    format!("`{key}` must be {expected}, found {found}"),
                    format!("write it like `{}`", self.example(key)),
                );
                Field::Invalid
            }
            Err(ConvErr::Value(b)) => {
                d.error(span, b.message, b.help);
                Field::Invalid
            }
        }
    }

    pub(crate) fn parsed<T>(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
        f: impl FnOnce(&str) -> Result<T, Bad>,
    ) -> Field<T> {
        self.get(d, key, |v| match v {
            ValueInner::String(s) => f(&s).map_err(ConvErr::Value),
            other => Err(wrong_type("a string", &other)),
        })
    }

    pub(crate) fn int<T: TryFrom<i64>>(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
        lo: i64,
        hi: i64,
    ) -> Field<T> {
        self.int_h(d, key, lo, hi, &format!("use a value from {lo} to {hi}"))
    }

    pub(crate) fn int_h<T: TryFrom<i64>>(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
        lo: i64,
        hi: i64,
        help: &str,
    ) -> Field<T> {
        self.get(d, key, |v| match v {
            ValueInner::Integer(i) if (lo..=hi).contains(&i) => T::try_from(i)
                .map_err(|_| ConvErr::Value(bad(format!("`{key}` is out of range"), help))),
            ValueInner::Integer(i) => Err(ConvErr::Value(bad(
                format!("`{key}` must be between {lo} and {hi}, found {i}"),
                help,
            ))),
            other => Err(wrong_type("an integer", &other)),
        })
    }

    pub(crate) fn bool(&mut self, d: &mut Diags<'_>, key: &'static str) -> Field<bool> {
        self.get(d, key, |v| match v {
            ValueInner::Boolean(b) => Ok(b),
            other => Err(wrong_type("a boolean (true or false)", &other)),
        })
    }

    pub(crate) fn choice<T: Copy>(
        &mut self,
        d: &mut Diags<'_>,
        key: &'static str,
        options: &[(&'static str, T)],
    ) -> Field<T> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.parsed(d, key, |s| {
            options
                .iter()
                .find(|(n, _)| *n == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let list = names
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let help = match suggest(s, names.iter().copied()) {
                        Some(n) => format!("did you mean \"{n}\"? (valid: {list})"),
                        None => format!("use one of {list}"),
                    };
                    bad(
                        format!("`{key}` must be one of {list}, found \"{s}\""),
                        help,
                    )
                })
        })
    }

    /// Turns an absent required key into an error at the table header.
    pub(crate) fn req<T>(
        &self,
        d: &mut Diags<'_>,
        key: &'static str,
        f: Field<T>,
    ) -> Option<Sp<T>> {
        match f {
            Field::Given(s) => Some(s),
            Field::Invalid => None,
            Field::Absent => {
                d.error(
                    self.header,
                    format!("missing key `{key}` in {}", self.label),
                    format!("add `{}`", self.example(key)),
                );
                None
            }
        }
    }

    /// Removes `key` as written, for readers of nested tables ([[fleet.node]]).
    pub(crate) fn take(&mut self, key: &str) -> Option<Value<'de>> {
        self.table.remove(key)
    }

    /// Reports every key nobody asked for.
    pub(crate) fn finish(self, d: &mut Diags<'_>) {
        for (key, _) in self.table {
            let name = key.name.as_ref();
            // Top-level keys written after a [table] header land in that table.
            let top_scalar = TOP_KEYS
                .iter()
                .filter(|(_, e)| !e.starts_with('['))
                .map(|(k, _)| *k);
            let help = if TOP_KEYS.iter().any(|(k, _)| *k == name) {
                format!("`{name}` is a top-level key: move it above the first [table] header")
            } else {
                match (
                    suggest(name, self.keys.iter().map(|(k, _)| *k)),
                    suggest(name, top_scalar),
                ) {
                    (Some(k), _) => format!("did you mean `{k}`?"),
                    (None, Some(k)) => format!(
                        "did you mean the top-level key `{k}`? It belongs above the first [table] header"
                    ),
                    (None, None) => format!(
                        "valid keys in {}: {}",
                        self.label,
                        self.keys
                            .iter()
                            .map(|(k, _)| *k)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            };
            d.error(
                key.span,
                format!("unknown key `{name}` in {}", self.label),
                help,
            );
        }
    }
}

/// The closest candidate, when it is close enough to be a typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(dist, c)| *dist <= (c.chars().count() / 3).max(1))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, c)| c)
}

// ----------------------------------------------------------- value rules --

/// Linux `dev_valid_name`, plus `%` (a name template, never a real device).
/// The kernel checks bytes with its own `isspace`, which is Latin-1: besides
/// ASCII whitespace it rejects 0xA0, a byte inside many UTF-8 characters
/// (`à` is C3 A0), so the check is on the encoded bytes.
pub(crate) fn ifname(s: &str) -> Result<String, Bad> {
    const HELP: &str =
        "interface names are 1-15 bytes without '/', ':', '%' or whitespace, e.g. \"flannel.1\"";
    if s.is_empty() {
        return Err(bad("interface name is empty", HELP));
    }
    if s.len() > 15 {
        return Err(bad(
            format!(
                "interface name `{s}` is {} bytes, the kernel allows at most 15 (IFNAMSIZ)",
                s.len()
            ),
            "use a shorter name",
        ));
    }
    if s == "." || s == ".." {
        return Err(bad(format!("`{s}` is not a valid interface name"), HELP));
    }
    let mut buf = [0u8; 4];
    for c in s.chars() {
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        if c.is_ascii() {
            if matches!(c, '/' | ':' | '%' | '\0') || bytes.iter().copied().any(kernel_isspace) {
                return Err(bad(
                    format!("interface name `{}` contains {c:?}", s.escape_debug()),
                    HELP,
                ));
            }
        } else if let Some(b) = bytes.iter().copied().find(|b| kernel_isspace(*b)) {
            return Err(bad(
                format!(
                    "interface name `{}` contains {c:?}, whose UTF-8 encoding holds byte {b:#04X}, which the kernel treats as whitespace",
                    s.escape_debug()
                ),
                "use ASCII letters, digits, '.', '-' and '_' only, e.g. \"flannel.1\"",
            ));
        }
    }
    Ok(s.to_string())
}

/// The kernel's `isspace` (lib/ctype.c, Latin-1): \t \n \v \f \r, space and 0xA0.
fn kernel_isspace(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ' | 0xA0)
}

pub(crate) fn fam_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

pub(crate) fn fam_of(ip: &IpAddr) -> &'static str {
    fam_name(Family::of(ip))
}

pub(crate) fn ip(s: &str) -> Result<IpAddr, Bad> {
    s.parse().map_err(|_| {
        let help = if s.contains('/') {
            "write the address without a prefix length".to_string()
        } else {
            "write an IPv4 address like 192.0.2.1 or an IPv6 address like 2001:db8::1".to_string()
        };
        bad(format!("`{s}` is not an IP address"), help)
    })
}

/// A host address usable as a source/destination of unicast traffic.
pub(crate) fn unicast_ip(s: &str) -> Result<IpAddr, Bad> {
    let a = ip(s)?;
    if a.is_unspecified() || a.is_multicast() {
        let what = if a.is_multicast() {
            "multicast"
        } else {
            "unspecified"
        };
        return Err(bad(
            format!("`{s}` is a {what} address"),
            "use a unicast address of a host",
        ));
    }
    Ok(a)
}

/// An address with its prefix length, host bits allowed (`198.18.1.0/32`).
pub(crate) fn cidr(s: &str) -> Result<IpNet, Bad> {
    match s.parse::<IpNet>() {
        Ok(n) => Ok(n),
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => {
                let full = if a.is_ipv4() { 32 } else { 128 };
                Err(bad(
                    format!("`{s}` has no prefix length"),
                    format!("write the address with its prefix, e.g. \"{s}/{full}\""),
                ))
            }
            Err(_) => Err(bad(
                format!("`{s}` is not an address with prefix length"),
                "write it like \"198.18.1.0/32\" or \"fd00:42:0:1::/128\"",
            )),
        },
    }
}

/// A network: prefix with all host bits zero (`198.18.1.0/24`).
pub(crate) fn net(s: &str) -> Result<IpNet, Bad> {
    let n = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) if s.parse::<IpAddr>().is_ok() => {
            return Err(bad(
                format!("`{s}` has no prefix length"),
                "write the network with its prefix length, e.g. \"198.18.1.0/24\"",
            ));
        }
        Err(_) => {
            return Err(bad(
                format!("`{s}` is not a network"),
                "write it like \"198.18.0.0/16\" or \"fd00:42::/56\"",
            ));
        }
    };
    if n.trunc() != n {
        return Err(bad(
            format!("`{s}` has host bits set"),
            format!("write the network address: \"{}\"", n.trunc()),
        ));
    }
    Ok(n)
}

/// A network of one family, for keys split by family (`network`/`ipv6_network`).
pub(crate) fn family_net(s: &str, fam: Family, key: &str, other_key: &str) -> Result<IpNet, Bad> {
    let n = net(s)?;
    if Family::of_net(&n) != fam {
        return Err(bad(
            format!(
                "`{key}` must be an {} network, found {} `{s}`",
                fam_name(fam),
                fam_name(Family::of_net(&n))
            ),
            format!(
                "put {} networks in `{other_key}`",
                fam_name(Family::of_net(&n))
            ),
        ));
    }
    Ok(n)
}

pub(crate) fn mac_unicast(s: &str) -> Result<Mac, Bad> {
    let m = mac_any(s)?;
    if m.is_zero() {
        return Err(bad(
            "MAC address is all zeros",
            "use the device's unicast MAC, e.g. \"02:42:c6:12:01:00\"",
        ));
    }
    Ok(m)
}

/// Zero allowed (the FDB's default BUM destination), multicast not.
pub(crate) fn mac_any(s: &str) -> Result<Mac, Bad> {
    let m: Mac = s.parse().map_err(|_| {
        bad(
            format!("`{s}` is not a MAC address"),
            "write six hex pairs separated by ':', e.g. \"02:42:c6:12:01:00\"",
        )
    })?;
    if m.is_multicast() {
        return Err(bad(
            format!("`{s}` is a multicast MAC address (lowest bit of the first byte set)"),
            "use a unicast MAC: the first byte must be even, e.g. 02:…",
        ));
    }
    Ok(m)
}

pub(crate) fn abs_path(s: &str) -> Result<PathBuf, Bad> {
    if !s.starts_with('/') {
        return Err(bad(
            format!("path `{s}` is not absolute"),
            "write the full path starting with /",
        ));
    }
    if s.contains('\0') {
        return Err(bad("path contains a NUL byte", "remove it"));
    }
    Ok(PathBuf::from(s))
}

pub(crate) fn file_path(s: &str) -> Result<PathBuf, Bad> {
    let p = abs_path(s)?;
    // `/.` and `/..` name a directory too: the atomic write needs a file
    // name to put its temp file next to.
    if s.ends_with('/') || s.ends_with("/.") || s.ends_with("/..") {
        return Err(bad(
            format!("path `{s}` names a directory"),
            "name the file, e.g. \"/run/flannel/subnet.env\"",
        ));
    }
    Ok(p)
}

fn mark_part(s: &str) -> Option<u32> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// `value/mask` (hex or decimal); a bare value means mask 0xffffffff.
pub(crate) fn mark(s: &str) -> Result<(u32, u32), Bad> {
    const HELP: &str = "write it as value/mask, e.g. \"0x4000/0x4000\" (kube-proxy's default)";
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (mark_part(v), mark_part(m)),
        None => (mark_part(s), Some(u32::MAX)),
    };
    let (Some(v), Some(m)) = (v, m) else {
        return Err(bad(format!("`{s}` is not a firewall mark"), HELP));
    };
    if m == 0 {
        return Err(bad("mark mask is zero: it would match every packet", HELP));
    }
    if v & !m != 0 {
        return Err(bad(
            format!("mark value {v:#x} has bits outside the mask {m:#x}: it can never match"),
            format!("use \"{:#x}/{m:#x}\"", v & m),
        ));
    }
    Ok((v, m))
}

pub(crate) fn nft_table(s: &str) -> Result<String, Bad> {
    const HELP: &str =
        "use letters, digits, '_', '-' or '.', starting with a letter, e.g. \"netconverge\"";
    let ok_start = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let ok_rest = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok_start || !ok_rest || s.len() > 255 {
        return Err(bad(
            format!("`{s}` is not a valid nftables table name"),
            HELP,
        ));
    }
    // netconverge flushes and rewrites its table: never one that iptables-nft
    // or kube-proxy keep their own rules in.
    if matches!(
        s,
        "nat" | "filter" | "mangle" | "raw" | "security" | "kube-proxy"
    ) {
        return Err(bad(
            format!("nftables table `{s}` belongs to iptables-nft or kube-proxy"),
            "netconverge owns its table entirely: choose a name of its own, e.g. \"netconverge\"",
        ));
    }
    Ok(s.to_string())
}

pub(crate) fn iptables_chain(s: &str) -> Result<String, Bad> {
    if s.is_empty() || s.len() > 28 {
        return Err(bad(
            format!("iptables chain name `{s}` must be 1-28 characters"),
            "use a short name such as \"NETCONVERGE-POSTRTG\"",
        ));
    }
    if s.starts_with(['-', '!']) || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad(
            format!("`{s}` is not a valid iptables chain name"),
            "use letters, digits, '-' and '_', not starting with '-' or '!'",
        ));
    }
    // netconverge flushes its chain: never a built-in chain or target.
    if matches!(
        s,
        "PREROUTING"
            | "POSTROUTING"
            | "INPUT"
            | "OUTPUT"
            | "FORWARD"
            | "ACCEPT"
            | "DROP"
            | "RETURN"
            | "QUEUE"
            | "MASQUERADE"
    ) {
        return Err(bad(
            format!("`{s}` is a built-in iptables chain or target"),
            "netconverge owns its chain entirely: use a name of its own, e.g. \"NETCONVERGE-POSTRTG\"",
        ));
    }
    Ok(s.to_string())
}

fn node_name(s: &str) -> Result<String, Bad> {
    if s.trim().is_empty() {
        return Err(bad(
            "`node_name` is empty",
            "set it to this node's name (it seeds the VTEP MACs), or remove it to use /etc/machine-id",
        ));
    }
    Ok(s.to_string())
}

// -------------------------------------------------------------- raw model --

#[derive(Debug)]
pub(crate) struct RawVxlan {
    pub(crate) name: Option<Sp<String>>,
    pub(crate) vni: Option<Sp<u32>>,
    pub(crate) port: Option<Sp<u16>>,
    pub(crate) underlay: Option<Sp<String>>,
    /// Effective family (explicit, else `local`'s, else IPv4).
    pub(crate) family: Option<Sp<Family>>,
    pub(crate) family_explicit: bool,
    pub(crate) local: Field<IpAddr>,
    pub(crate) mac: Field<Mac>,
    pub(crate) mtu: Field<u32>,
    pub(crate) learning: Option<Sp<bool>>,
    pub(crate) gbp: Option<Sp<bool>>,
    /// Take over an existing device of this name netconverge did not create.
    pub(crate) adopt: Option<Sp<bool>>,
}

#[derive(Debug)]
pub(crate) struct RawAddress {
    pub(crate) dev: Option<Sp<String>>,
    pub(crate) cidr: Option<Sp<IpNet>>,
}

#[derive(Debug)]
pub(crate) struct RawRoute {
    pub(crate) header: Span,
    pub(crate) dst: Option<Sp<IpNet>>,
    pub(crate) via: Field<IpAddr>,
    pub(crate) dev: Field<String>,
    pub(crate) onlink: Option<Sp<bool>>,
    pub(crate) src: Field<IpAddr>,
    pub(crate) metric: Field<u32>,
    pub(crate) table: Option<Sp<u32>>,
    /// Take over a route netconverge did not create holding this place.
    pub(crate) adopt: Option<Sp<bool>>,
}

#[derive(Debug)]
pub(crate) struct RawNeighbor {
    pub(crate) dev: Option<Sp<String>>,
    pub(crate) ip: Option<Sp<IpAddr>>,
    pub(crate) mac: Option<Sp<Mac>>,
}

#[derive(Debug)]
pub(crate) struct RawFdb {
    pub(crate) dev: Option<Sp<String>>,
    pub(crate) mac: Option<Sp<Mac>>,
    pub(crate) dst: Option<Sp<IpAddr>>,
}

#[derive(Debug)]
pub(crate) struct RawPeer {
    pub(crate) dev: Option<Sp<String>>,
    pub(crate) subnet: Option<Sp<IpNet>>,
    pub(crate) vtep_ip: Option<Sp<IpAddr>>,
    pub(crate) vtep_mac: Option<Sp<Mac>>,
    /// Take over a route netconverge did not create at the peer's route.
    pub(crate) adopt: Option<Sp<bool>>,
}

/// `network` + `subnet` (or `ipv6_network` + `ipv6_subnet`) as written.
#[derive(Debug)]
pub(crate) struct RawFamily {
    pub(crate) network: Field<IpNet>,
    pub(crate) subnet: Field<IpNet>,
}

/// The key names of one family's network and subnet.
pub(crate) fn family_keys(f: Family) -> (&'static str, &'static str) {
    match f {
        Family::Ipv4 => ("network", "subnet"),
        Family::Ipv6 => ("ipv6_network", "ipv6_subnet"),
    }
}

#[derive(Debug)]
pub(crate) struct RawNat {
    pub(crate) header: Span,
    pub(crate) backend: Option<Sp<NatBackendKind>>,
    pub(crate) masquerade: Option<Sp<bool>>,
    pub(crate) random_fully: Option<Sp<bool>>,
    pub(crate) mark: Option<Sp<(u32, u32)>>,
    pub(crate) table: Option<Sp<String>>,
    pub(crate) chain: Option<Sp<String>>,
    pub(crate) iptables: Option<Sp<IptablesMode>>,
    pub(crate) adopt: Option<Sp<bool>>,
    pub(crate) v4: RawFamily,
    pub(crate) v6: RawFamily,
}

#[derive(Debug)]
pub(crate) struct RawLease {
    pub(crate) header: Span,
    pub(crate) mode: Option<Sp<LeaseMode>>,
    pub(crate) v4: RawFamily,
    pub(crate) v6: RawFamily,
    pub(crate) mtu: Field<u32>,
    pub(crate) ipmasq: Field<bool>,
    pub(crate) path: Option<Sp<PathBuf>>,
    pub(crate) state_dir: Option<Sp<PathBuf>>,
}

impl RawNat {
    pub(crate) fn family(&self, f: Family) -> &RawFamily {
        match f {
            Family::Ipv4 => &self.v4,
            Family::Ipv6 => &self.v6,
        }
    }
}

impl RawLease {
    pub(crate) fn family(&self, f: Family) -> &RawFamily {
        match f {
            Family::Ipv4 => &self.v4,
            Family::Ipv6 => &self.v6,
        }
    }
}

/// The whole file, typed but not cross-checked. Array entries keep file
/// order; an entry's index + 1 is its `#N` in origins.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    pub(crate) node_name: Option<Sp<String>>,
    /// Top-level `state_dir`: where netconverge keeps its record.
    pub(crate) state_dir: Option<Sp<PathBuf>>,
    pub(crate) vxlans: Vec<RawVxlan>,
    pub(crate) addresses: Vec<RawAddress>,
    pub(crate) routes: Vec<RawRoute>,
    pub(crate) neighbors: Vec<RawNeighbor>,
    pub(crate) fdb: Vec<RawFdb>,
    pub(crate) peers: Vec<RawPeer>,
    pub(crate) nat: Option<RawNat>,
    pub(crate) lease: Option<RawLease>,
    pub(crate) cni: Option<super::cni::RawCni>,
    /// `[fleet]`, expanded into the fields above by [`super::fleet::expand`].
    pub(crate) fleet: Option<super::fleet::RawFleet>,
    pub(crate) daemon: DaemonSpec,
    pub(crate) engine: EngineSpec,
    /// `false` when [daemon]/[engine] had an error (their fields are then defaults).
    pub(crate) settings_ok: bool,
}

// ------------------------------------------------------------------ keys --

pub(crate) type Keys = &'static [(&'static str, &'static str)];

const TOP_KEYS: Keys = &[
    ("node_name", "node_name = \"node-a\""),
    ("state_dir", "state_dir = \"/var/lib/netconverge\""),
    ("vxlan", "[[vxlan]]"),
    ("address", "[[address]]"),
    ("route", "[[route]]"),
    ("neighbor", "[[neighbor]]"),
    ("fdb", "[[fdb]]"),
    ("peer", "[[peer]]"),
    ("nat", "[nat]"),
    ("lease", "[lease]"),
    ("cni", "[cni]"),
    ("fleet", "[fleet]"),
    ("daemon", "[daemon]"),
    ("engine", "[engine]"),
];

const VXLAN_KEYS: Keys = &[
    ("name", "name = \"flannel.1\""),
    ("vni", "vni = 1"),
    ("port", "port = 8472"),
    ("underlay", "underlay = \"eth0\""),
    ("family", "family = \"ipv4\""),
    ("local", "local = \"192.0.2.10\""),
    ("mac", "mac = \"02:42:c6:12:01:00\""),
    ("mtu", "mtu = 1450"),
    ("learning", "learning = false"),
    ("gbp", "gbp = false"),
    ("adopt", "adopt = true"),
];

const ADDRESS_KEYS: Keys = &[
    ("dev", "dev = \"flannel.1\""),
    ("cidr", "cidr = \"198.18.1.0/32\""),
];

const ROUTE_KEYS: Keys = &[
    ("dst", "dst = \"198.18.2.0/24\""),
    ("via", "via = \"198.18.2.0\""),
    ("dev", "dev = \"flannel.1\""),
    ("onlink", "onlink = true"),
    ("src", "src = \"198.18.1.0\""),
    ("metric", "metric = 100"),
    ("table", "table = \"main\""),
    ("adopt", "adopt = true"),
];

const NEIGHBOR_KEYS: Keys = &[
    ("dev", "dev = \"flannel.1\""),
    ("ip", "ip = \"198.18.2.0\""),
    ("mac", "mac = \"02:42:c6:12:02:00\""),
];

const FDB_KEYS: Keys = &[
    ("dev", "dev = \"flannel.1\""),
    ("mac", "mac = \"02:42:c6:12:02:00\""),
    ("dst", "dst = \"192.0.2.20\""),
];

const PEER_KEYS: Keys = &[
    ("dev", "dev = \"flannel.1\""),
    ("subnet", "subnet = \"198.18.2.0/24\""),
    ("vtep_ip", "vtep_ip = \"192.0.2.20\""),
    ("vtep_mac", "vtep_mac = \"02:42:c6:12:02:00\""),
    ("adopt", "adopt = true"),
];

const NAT_KEYS: Keys = &[
    ("backend", "backend = \"nftables\""),
    ("masquerade", "masquerade = true"),
    ("random_fully", "random_fully = true"),
    ("mark", "mark = \"0x4000/0x4000\""),
    ("table", "table = \"netconverge\""),
    ("chain", "chain = \"NETCONVERGE-POSTRTG\""),
    ("iptables", "iptables = \"auto\""),
    ("adopt", "adopt = false"),
    ("network", "network = \"198.18.0.0/16\""),
    ("subnet", "subnet = \"198.18.1.0/24\""),
    ("ipv6_network", "ipv6_network = \"fd00:42::/56\""),
    ("ipv6_subnet", "ipv6_subnet = \"fd00:42:0:1::/64\""),
];

const LEASE_KEYS: Keys = &[
    ("mode", "mode = \"write\""),
    ("network", "network = \"198.18.0.0/16\""),
    ("subnet", "subnet = \"198.18.1.0/24\""),
    ("ipv6_network", "ipv6_network = \"fd00:42::/56\""),
    ("ipv6_subnet", "ipv6_subnet = \"fd00:42:0:1::/64\""),
    ("mtu", "mtu = 1450"),
    ("ipmasq", "ipmasq = true"),
    ("path", "path = \"/run/flannel/subnet.env\""),
    ("state_dir", "state_dir = \"/var/lib/netconverge\""),
];

const DAEMON_KEYS: Keys = &[
    ("resync_secs", "resync_secs = 60"),
    ("debounce_ms", "debounce_ms = 20"),
    ("ready", "ready = \"converged\""),
    ("networkmanager", "networkmanager = \"auto\""),
    ("backoff_max_secs", "backoff_max_secs = 30"),
    ("metrics", "metrics = \"127.0.0.1:9474\""),
];

const ENGINE_KEYS: Keys = &[
    ("route_protocol", "route_protocol = 199"),
    ("nexthops", "nexthops = \"off\""),
];

const FAMILIES: &[(&str, Family)] = &[("ipv4", Family::Ipv4), ("ipv6", Family::Ipv6)];

// ---------------------------------------------------------------- reading --

/// Reads the whole document; every problem goes to `d`.
pub(crate) fn read(root: &mut Value<'_>, d: &mut Diags<'_>) -> Raw {
    let mut raw = Raw {
        settings_ok: true,
        ..Raw::default()
    };
    let table = match root.take() {
        ValueInner::Table(t) => t,
        // The parser always returns a table at the root.
        _ => return raw,
    };
    let mut top = Section::new("the top level", Span::new(0, 0), table, TOP_KEYS);

    raw.node_name = top.parsed(d, "node_name", node_name).given().cloned();
    raw.state_dir = top.parsed(d, "state_dir", abs_path).given().cloned();

    for s in array(&mut top, d, "vxlan", VXLAN_KEYS) {
        raw.vxlans.push(read_vxlan(s, d));
    }
    for s in array(&mut top, d, "address", ADDRESS_KEYS) {
        raw.addresses.push(read_address(s, d));
    }
    for s in array(&mut top, d, "route", ROUTE_KEYS) {
        raw.routes.push(read_route(s, d));
    }
    for s in array(&mut top, d, "neighbor", NEIGHBOR_KEYS) {
        raw.neighbors.push(read_neighbor(s, d));
    }
    for s in array(&mut top, d, "fdb", FDB_KEYS) {
        raw.fdb.push(read_fdb(s, d));
    }
    for s in array(&mut top, d, "peer", PEER_KEYS) {
        raw.peers.push(read_peer(s, d));
    }
    raw.nat = single(&mut top, d, "nat", NAT_KEYS).map(|s| read_nat(s, d));
    raw.lease = single(&mut top, d, "lease", LEASE_KEYS).map(|s| read_lease(s, d));
    raw.cni = single(&mut top, d, "cni", super::cni::CNI_KEYS).map(|s| super::cni::read(s, d));
    raw.fleet =
        single(&mut top, d, "fleet", super::fleet::FLEET_KEYS).map(|s| super::fleet::read(s, d));
    if let Some(s) = single(&mut top, d, "daemon", DAEMON_KEYS) {
        let before = d.len();
        raw.daemon = read_daemon(s, d);
        raw.settings_ok &= d.len() == before;
    }
    if let Some(s) = single(&mut top, d, "engine", ENGINE_KEYS) {
        let before = d.len();
        raw.engine = read_engine(s, d);
        raw.settings_ok &= d.len() == before;
    }

    unknown_top_level(top, d);
    raw
}

/// Leftover top-level entries: unknown tables are named as tables.
fn unknown_top_level(top: Section<'_>, d: &mut Diags<'_>) {
    for (key, val) in top.table {
        let name = key.name.as_ref();
        let is_table = val.as_table().is_some();
        let is_array_of_tables = val
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|v| v.as_table().is_some()));
        let shown = |n: &str, tbl: bool, arr: bool| {
            if arr {
                format!("[[{n}]]")
            } else if tbl {
                format!("[{n}]")
            } else {
                format!("`{n}`")
            }
        };
        let what = if is_table || is_array_of_tables {
            format!(
                "unknown table {}",
                shown(name, is_table, is_array_of_tables)
            )
        } else {
            format!("unknown top-level key `{name}`")
        };
        let help = match suggest(name, TOP_KEYS.iter().map(|(k, _)| *k)) {
            Some(k) => {
                let (_, example) = TOP_KEYS
                    .iter()
                    .find(|(n, _)| *n == k)
                    .copied()
                    .unwrap_or((k, k));
                let spelled = if example.starts_with('[') {
                    example.to_string()
                } else {
                    format!("`{k}`")
                };
                format!("did you mean {spelled}?")
            }
            None => format!(
                "valid top-level names: {}",
                TOP_KEYS
                    .iter()
                    .map(|(k, e)| if e.starts_with('[') { *e } else { *k })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        d.error(key.span, what, help);
    }
}

/// An array of tables such as `[[vxlan]]`.
fn array<'de>(
    top: &mut Section<'de>,
    d: &mut Diags<'_>,
    key: &'static str,
    keys: Keys,
) -> Vec<Section<'de>> {
    let label: std::rc::Rc<str> = format!("[[{key}]]").into();
    let Some(mut val) = top.table.remove(key) else {
        return Vec::new();
    };
    let span = val.span;
    match val.take() {
        ValueInner::Array(items) => {
            let mut out = Vec::new();
            for mut item in items {
                let span = item.span;
                match item.take() {
                    ValueInner::Table(t) => out.push(Section::new(label.clone(), span, t, keys)),
                    other => d.error(
                        span,
                        format!(
                            "each {label} entry must be a table, found {}",
                            type_name(&other)
                        ),
                        format!("write each entry as a {label} header followed by its keys"),
                    ),
                }
            }
            out
        }
        ValueInner::Table(_) => {
            d.error(
                span,
                format!("`{key}` is a list: write [[{key}]], not [{key}]"),
                format!("use double brackets: [[{key}]] (one header per entry)"),
            );
            Vec::new()
        }
        other => {
            d.error(
                span,
                format!(
                    "`{key}` must be a list of tables, found {}",
                    type_name(&other)
                ),
                format!("write each entry as a [[{key}]] header followed by its keys"),
            );
            Vec::new()
        }
    }
}

/// A single table such as `[nat]`.
fn single<'de>(
    top: &mut Section<'de>,
    d: &mut Diags<'_>,
    key: &'static str,
    keys: Keys,
) -> Option<Section<'de>> {
    let mut val = top.table.remove(key)?;
    let span = val.span;
    match val.take() {
        ValueInner::Table(t) => Some(Section::new(format!("[{key}]"), span, t, keys)),
        ValueInner::Array(_) => {
            d.error(
                span,
                format!("[{key}] may appear only once"),
                format!("use single brackets: [{key}], and only one such table"),
            );
            None
        }
        other => {
            d.error(
                span,
                format!("`{key}` must be a table, found {}", type_name(&other)),
                format!("write it as a [{key}] header followed by its keys"),
            );
            None
        }
    }
}

fn read_vxlan(mut s: Section<'_>, d: &mut Diags<'_>) -> RawVxlan {
    let h = s.header;
    let f = s.parsed(d, "name", ifname);
    let name = s.req(d, "name", f);
    let f = s.int(d, "vni", 1, 16_777_215);
    let vni = s.req(d, "vni", f);
    let port = s.int(d, "port", 1, 65_535).or_default(8472, h);
    let f = s.parsed(d, "underlay", ifname);
    let underlay = s.req(d, "underlay", f);
    let fam = s.choice(d, "family", FAMILIES);
    let local = s.parsed(d, "local", unicast_ip);
    let mac = s.parsed(d, "mac", mac_unicast);
    let mtu = s.int(d, "mtu", 68, 65_535);
    let learning = s.bool(d, "learning").or_default(false, h);
    let gbp = s.bool(d, "gbp").or_default(false, h);
    let adopt = s.bool(d, "adopt").or_default(false, h);
    let family_explicit = !fam.is_absent();
    let family = match (fam, &local) {
        (Field::Given(f), _) => Some(f),
        (Field::Invalid, _) => None,
        (Field::Absent, Field::Given(ip)) => Some(Sp {
            v: Family::of(&ip.v),
            span: ip.span,
        }),
        (Field::Absent, Field::Invalid) => None,
        (Field::Absent, Field::Absent) => Some(Sp {
            v: Family::Ipv4,
            span: h,
        }),
    };
    s.finish(d);
    RawVxlan {
        name,
        vni,
        port,
        underlay,
        family,
        family_explicit,
        local,
        mac,
        mtu,
        learning,
        gbp,
        adopt,
    }
}

fn read_address(mut s: Section<'_>, d: &mut Diags<'_>) -> RawAddress {
    let f = s.parsed(d, "dev", ifname);
    let dev = s.req(d, "dev", f);
    let f = s.parsed(d, "cidr", cidr);
    let cidr = s.req(d, "cidr", f);
    s.finish(d);
    RawAddress { dev, cidr }
}

fn route_table(v: ValueInner<'_>) -> Result<u32, ConvErr> {
    const HELP: &str =
        "use \"main\" or a table id from 1 to 4294967295 other than 253 (default) and 255 (local)";
    match v {
        ValueInner::String(s) if s == "main" => Ok(crate::model::MAIN_TABLE),
        ValueInner::String(s) => Err(ConvErr::Value(bad(
            format!("unknown routing table \"{s}\""),
            HELP,
        ))),
        ValueInner::Integer(i) => match (i, u32::try_from(i)) {
            (0, _) => Err(ConvErr::Value(bad("table 0 is not a routing table", HELP))),
            (253, _) => Err(ConvErr::Value(bad(
                "table 253 is the kernel's `default` table",
                HELP,
            ))),
            (255, _) => Err(ConvErr::Value(bad(
                "table 255 is the kernel's `local` table",
                HELP,
            ))),
            (_, Ok(t)) => Ok(t),
            (_, Err(_)) => Err(ConvErr::Value(bad(
                format!("table {i} is out of range"),
                HELP,
            ))),
        },
        other => Err(wrong_type("\"main\" or a table id", &other)),
    }
}

fn read_route(mut s: Section<'_>, d: &mut Diags<'_>) -> RawRoute {
    let h = s.header;
    let f = s.parsed(d, "dst", net);
    let dst = s.req(d, "dst", f);
    let via = s.parsed(d, "via", unicast_ip);
    let dev = s.parsed(d, "dev", ifname);
    let onlink = s.bool(d, "onlink").or_default(false, h);
    let src = s.parsed(d, "src", unicast_ip);
    let metric = s.int(d, "metric", 0, i64::from(u32::MAX));
    let table = s
        .get(d, "table", route_table)
        .or_default(crate::model::MAIN_TABLE, h);
    let adopt = s.bool(d, "adopt").or_default(false, h);
    s.finish(d);
    RawRoute {
        header: h,
        dst,
        via,
        dev,
        onlink,
        src,
        metric,
        table,
        adopt,
    }
}

fn read_neighbor(mut s: Section<'_>, d: &mut Diags<'_>) -> RawNeighbor {
    let f = s.parsed(d, "dev", ifname);
    let dev = s.req(d, "dev", f);
    let f = s.parsed(d, "ip", unicast_ip);
    let ip = s.req(d, "ip", f);
    let f = s.parsed(d, "mac", mac_unicast);
    let mac = s.req(d, "mac", f);
    s.finish(d);
    RawNeighbor { dev, ip, mac }
}

fn read_fdb(mut s: Section<'_>, d: &mut Diags<'_>) -> RawFdb {
    let f = s.parsed(d, "dev", ifname);
    let dev = s.req(d, "dev", f);
    let f = s.parsed(d, "mac", mac_any);
    let mac = s.req(d, "mac", f);
    let f = s.parsed(d, "dst", |x| {
        let a = ip(x)?;
        if a.is_unspecified() {
            return Err(bad(
                format!("`{x}` is the unspecified address"),
                "use the remote VTEP's underlay address",
            ));
        }
        Ok(a)
    });
    let dst = s.req(d, "dst", f);
    s.finish(d);
    RawFdb { dev, mac, dst }
}

fn read_peer(mut s: Section<'_>, d: &mut Diags<'_>) -> RawPeer {
    let f = s.parsed(d, "dev", ifname);
    let dev = s.req(d, "dev", f);
    let f = s.parsed(d, "subnet", net);
    let subnet = s.req(d, "subnet", f);
    let f = s.parsed(d, "vtep_ip", unicast_ip);
    let vtep_ip = s.req(d, "vtep_ip", f);
    let f = s.parsed(d, "vtep_mac", mac_unicast);
    let vtep_mac = s.req(d, "vtep_mac", f);
    let adopt = s.bool(d, "adopt").or_default(false, s.header);
    s.finish(d);
    RawPeer {
        dev,
        subnet,
        vtep_ip,
        vtep_mac,
        adopt,
    }
}

pub(crate) fn read_families(s: &mut Section<'_>, d: &mut Diags<'_>) -> (RawFamily, RawFamily) {
    let v4 = RawFamily {
        network: s.parsed(d, "network", |x| {
            family_net(x, Family::Ipv4, "network", "ipv6_network")
        }),
        subnet: s.parsed(d, "subnet", |x| {
            family_net(x, Family::Ipv4, "subnet", "ipv6_subnet")
        }),
    };
    let v6 = RawFamily {
        network: s.parsed(d, "ipv6_network", |x| {
            family_net(x, Family::Ipv6, "ipv6_network", "network")
        }),
        subnet: s.parsed(d, "ipv6_subnet", |x| {
            family_net(x, Family::Ipv6, "ipv6_subnet", "subnet")
        }),
    };
    (v4, v6)
}

fn read_nat(mut s: Section<'_>, d: &mut Diags<'_>) -> RawNat {
    let h = s.header;
    let backend = s
        .choice(
            d,
            "backend",
            &[
                ("nftables", NatBackendKind::Nftables),
                ("iptables", NatBackendKind::Iptables),
            ],
        )
        .or_default(NatBackendKind::Nftables, h);
    let masquerade = s.bool(d, "masquerade").or_default(true, h);
    let random_fully = s.bool(d, "random_fully").or_default(true, h);
    let mark = s.parsed(d, "mark", mark).or_default((0x4000, 0x4000), h);
    let table = s
        .parsed(d, "table", nft_table)
        .or_default("netconverge".to_string(), h);
    let chain = s
        .parsed(d, "chain", iptables_chain)
        .or_default("NETCONVERGE-POSTRTG".to_string(), h);
    let iptables = s
        .choice(
            d,
            "iptables",
            &[
                ("auto", IptablesMode::Auto),
                ("nft", IptablesMode::Nft),
                ("legacy", IptablesMode::Legacy),
            ],
        )
        .or_default(IptablesMode::Auto, h);
    let adopt = s.bool(d, "adopt").or_default(false, h);
    let (v4, v6) = read_families(&mut s, d);
    s.finish(d);
    RawNat {
        header: h,
        backend,
        masquerade,
        random_fully,
        mark,
        table,
        chain,
        iptables,
        adopt,
        v4,
        v6,
    }
}

fn read_lease(mut s: Section<'_>, d: &mut Diags<'_>) -> RawLease {
    let h = s.header;
    let mode = s
        .choice(
            d,
            "mode",
            &[
                ("write", LeaseMode::Write),
                ("preserve", LeaseMode::Preserve),
            ],
        )
        .or_default(LeaseMode::Write, h);
    let (v4, v6) = read_families(&mut s, d);
    let mtu = s.int(d, "mtu", 68, 65_535);
    let ipmasq = s.bool(d, "ipmasq");
    let path = s
        .parsed(d, "path", file_path)
        .or_default(PathBuf::from("/run/flannel/subnet.env"), h);
    let state_dir = s
        .parsed(d, "state_dir", abs_path)
        .or_default(PathBuf::from("/var/lib/netconverge"), h);
    s.finish(d);
    RawLease {
        header: h,
        mode,
        v4,
        v6,
        mtu,
        ipmasq,
        path,
        state_dir,
    }
}

fn read_daemon(mut s: Section<'_>, d: &mut Diags<'_>) -> DaemonSpec {
    let def = DaemonSpec::default();
    // Upper bounds keep timer arithmetic far from overflow.
    let resync_secs = s.int(d, "resync_secs", 1, 86_400).value();
    let debounce_ms = s.int(d, "debounce_ms", 0, 10_000).value();
    let ready = s
        .choice(
            d,
            "ready",
            &[
                ("converged", ReadyPolicy::Converged),
                ("applied", ReadyPolicy::Applied),
            ],
        )
        .value();
    let networkmanager = s
        .choice(
            d,
            "networkmanager",
            &[("auto", NmMode::Auto), ("off", NmMode::Off)],
        )
        .value();
    let backoff_max_secs = s.int(d, "backoff_max_secs", 1, 86_400).value();
    let metrics = s.parsed(d, "metrics", listen_addr).value();
    s.finish(d);
    DaemonSpec {
        resync_secs: resync_secs.ok().flatten().unwrap_or(def.resync_secs),
        debounce_ms: debounce_ms.ok().flatten().unwrap_or(def.debounce_ms),
        ready: ready.ok().flatten().unwrap_or(def.ready),
        networkmanager: networkmanager.ok().flatten().unwrap_or(def.networkmanager),
        backoff_max_secs: backoff_max_secs
            .ok()
            .flatten()
            .unwrap_or(def.backoff_max_secs),
        metrics: metrics.ok().flatten().or(def.metrics),
    }
}

/// `[daemon] metrics`: an IP address and a fixed, non-zero port to listen
/// on (a scraper needs to know the port; a host name would make the bind
/// depend on a resolver at boot).
pub(crate) fn listen_addr(s: &str) -> Result<std::net::SocketAddr, Bad> {
    const HELP: &str = "write an IP address and a port, e.g. \"127.0.0.1:9474\" or \"[::1]:9474\"";
    let addr: std::net::SocketAddr = match s.parse() {
        Ok(a) => a,
        Err(_) if s.parse::<IpAddr>().is_ok() => {
            let with_port = if s.contains(':') {
                format!("[{s}]:9474")
            } else {
                format!("{s}:9474")
            };
            return Err(bad(
                format!("`metrics` = \"{s}\" has no port"),
                format!("add the port to listen on, e.g. \"{with_port}\""),
            ));
        }
        Err(_)
            if s.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && p.parse::<u16>().is_ok() && h.parse::<IpAddr>().is_err()
            }) =>
        {
            return Err(bad(
                format!(
                    "`metrics` = \"{s}\" is not an IP address and port (host names are not resolved)"
                ),
                "use an IP address, e.g. \"127.0.0.1:9474\" for this host only",
            ));
        }
        Err(_)
            if s.rsplit_once(':').is_some_and(|(_, p)| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_err()
            }) =>
        {
            return Err(bad(
                format!("`metrics` = \"{s}\": the port is out of range"),
                "use a port from 1 to 65535, e.g. \"127.0.0.1:9474\"",
            ));
        }
        Err(_) => {
            return Err(bad(
                format!("`metrics` = \"{s}\" is not an IP address and port"),
                HELP,
            ));
        }
    };
    if addr.port() == 0 {
        return Err(bad(
            format!("`metrics` = \"{s}\" has port 0 (a random port no scraper could find)"),
            "choose a fixed port, e.g. \"127.0.0.1:9474\"",
        ));
    }
    if addr.ip().is_multicast() {
        return Err(bad(
            format!("`metrics` = \"{s}\" is a multicast address"),
            "listen on an address of this host, e.g. \"127.0.0.1:9474\"",
        ));
    }
    Ok(addr)
}

fn read_engine(mut s: Section<'_>, d: &mut Diags<'_>) -> EngineSpec {
    let def = EngineSpec::default();
    let route_protocol = s
        .int_h(
            d,
            "route_protocol",
            5,
            255,
            "protocols 0-4 are the kernel's own (unspec, redirect, kernel, boot, static): use 5-255, default 199",
        )
        .value();
    let nexthops = s
        .choice(
            d,
            "nexthops",
            &[
                ("auto", NexthopMode::Auto),
                ("on", NexthopMode::On),
                ("off", NexthopMode::Off),
            ],
        )
        .value();
    s.finish(d);
    EngineSpec {
        route_protocol: route_protocol.ok().flatten().unwrap_or(def.route_protocol),
        nexthops: nexthops.ok().flatten().unwrap_or(def.nexthops),
    }
}
