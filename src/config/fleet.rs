//! `[fleet]`: one file, byte-identical on every node, declares the whole
//! cluster; each node picks itself out of it and expands the rest into the
//! objects a hand-written file would declare.
//!
//! Invariant: the fleet is checked cluster-wide first (every error at once,
//! each at its file:line:col); only a clean fleet is expanded, into the same
//! raw values the file could have spelled out — this node's entry into
//! `[[vxlan]]`/`[[address]]` and the `[lease]` (and, through it, `[nat]`)
//! networks, every other entry into a `[[peer]]` whose VTEP MAC is derived
//! from *that* node's name ([`Mac::derive`]), so no MAC is ever copied between
//! nodes. The ordinary validation then checks the expansion together with
//! whatever else the file declares. Everything here is O(n log n) in the
//! number of nodes: maps and one sort per family, never pairwise scans.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use toml_span::Span;
use toml_span::value::ValueInner;

use super::Diags;
use super::schema::{
    Bad, Field, Keys, Raw, RawAddress, RawFamily, RawLease, RawPeer, RawVxlan, Section, Sp,
    fam_name, family_keys, family_net, ifname, mac_unicast, suggest, type_name, unicast_ip,
};
use crate::model::{Family, LeaseMode, Mac};

pub(crate) const FLEET_KEYS: Keys = &[
    ("network", "network = \"198.18.0.0/16\""),
    ("ipv6_network", "ipv6_network = \"fd00:42::/48\""),
    ("vni", "vni = 1"),
    ("port", "port = 8472"),
    ("device", "device = \"flannel.1\""),
    ("ipv6_device", "ipv6_device = \"flannel-v6.1\""),
    ("underlay", "underlay = \"eth0\""),
    ("node", "[[fleet.node]]"),
    ("source", "source = \"kubernetes\""),
    ("kubernetes", "[fleet.kubernetes]"),
];

const NODE_KEYS: Keys = &[
    ("name", "name = \"node-a\""),
    ("address", "address = \"192.0.2.11\""),
    ("ipv6_address", "ipv6_address = \"2001:db8::11\""),
    ("subnet", "subnet = \"198.18.1.0/24\""),
    ("ipv6_subnet", "ipv6_subnet = \"fd00:42:0:1::/64\""),
    ("mac", "mac = \"02:42:c6:12:01:00\""),
];

const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

/// flannel's device names (`flannel.<VNI>`, `flannel-v6.<VNI>`) for VNI 1.
const DEFAULT_DEVICE: &str = "flannel.1";
const DEFAULT_IPV6_DEVICE: &str = "flannel-v6.1";

/// Where this node's name comes from, strongest first: `--node`, then
/// `NETCONVERGE_NODE`, then `node_name` in the file, then the hostname.
/// Filled by the caller, so parsing stays free of I/O.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSelect {
    /// `--node NAME`.
    pub flag: Option<String>,
    /// `NETCONVERGE_NODE`.
    pub env: Option<String>,
    /// The UTS hostname.
    pub hostname: Option<String>,
}

impl NodeSelect {
    /// `flag`, plus `NETCONVERGE_NODE` and the UTS hostname of this host.
    pub fn from_system(flag: Option<String>) -> NodeSelect {
        let clean = |s: String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        NodeSelect {
            flag: flag.and_then(clean),
            env: std::env::var("NETCONVERGE_NODE").ok().and_then(clean),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(clean),
        }
    }
}

// -------------------------------------------------------------- raw model --

#[derive(Debug)]
pub(crate) struct RawNode {
    header: Span,
    name: Option<Sp<String>>,
    address: Field<IpAddr>,
    ipv6_address: Field<IpAddr>,
    subnet: Field<IpNet>,
    ipv6_subnet: Field<IpNet>,
    mac: Field<Mac>,
    /// The IPv6 device's MAC when it differs from `mac` (only Nodes from
    /// the Kubernetes API: flannel publishes one VtepMAC per family).
    ipv6_mac: Field<Mac>,
}

impl RawNode {
    fn address(&self, f: Family) -> &Field<IpAddr> {
        match f {
            Family::Ipv4 => &self.address,
            Family::Ipv6 => &self.ipv6_address,
        }
    }

    fn subnet(&self, f: Family) -> &Field<IpNet> {
        match f {
            Family::Ipv4 => &self.subnet,
            Family::Ipv6 => &self.ipv6_subnet,
        }
    }

    fn name(&self) -> &str {
        self.name.as_ref().map_or("", |n| n.v.as_str())
    }
}

#[derive(Debug)]
pub(crate) struct RawFleet {
    header: Span,
    network: Field<IpNet>,
    ipv6_network: Field<IpNet>,
    vni: Option<Sp<u32>>,
    port: Option<Sp<u16>>,
    device: Option<Sp<String>>,
    ipv6_device: Option<Sp<String>>,
    underlay: Field<String>,
    nodes: Vec<RawNode>,
    /// `source = "kubernetes"`: the nodes come from the API (issue 15).
    pub(crate) kubernetes: Option<super::kube_schema::RawKube>,
    /// No error inside [fleet] while reading it.
    ok: bool,
}

impl RawFleet {
    fn network(&self, f: Family) -> &Field<IpNet> {
        match f {
            Family::Ipv4 => &self.network,
            Family::Ipv6 => &self.ipv6_network,
        }
    }

    fn device(&self, f: Family) -> Option<&Sp<String>> {
        match f {
            Family::Ipv4 => self.device.as_ref(),
            Family::Ipv6 => self.ipv6_device.as_ref(),
        }
    }

    /// The families the cluster runs (its networks), when valid.
    fn families(&self) -> impl Iterator<Item = (Family, &Sp<IpNet>)> {
        FAMILIES
            .into_iter()
            .filter_map(|f| self.network(f).given().map(|n| (f, n)))
    }
}

impl RawFleet {
    /// Where the [fleet] table starts.
    pub(crate) fn header_span(&self) -> Span {
        self.header
    }

    /// The Kubernetes source's settings, when `source = "kubernetes"` and
    /// the fleet's keys read cleanly. This node's name is chosen as for a
    /// file fleet (`--node`, `NETCONVERGE_NODE`, `node_name`, hostname).
    pub(crate) fn kube_spec(
        &self,
        node_name: Option<&Sp<String>>,
        sel: &NodeSelect,
    ) -> Option<super::kube::KubeSpec> {
        let k = self.kubernetes.as_ref()?;
        if !self.ok {
            return None;
        }
        let name = sel
            .flag
            .clone()
            .or_else(|| sel.env.clone())
            .or_else(|| node_name.map(|n| n.v.clone()))
            .or_else(|| sel.hostname.clone())?;
        let families = self
            .families()
            .filter_map(|(f, net)| {
                self.device(f).map(|dev| super::kube::KubeFamily {
                    family: f,
                    network: net.v,
                    device: dev.v.clone(),
                })
            })
            .collect();
        Some(super::kube::KubeSpec {
            kubeconfig: k.kubeconfig.given().map(|p| p.v.clone()),
            annotation_prefix: k
                .annotation_prefix
                .as_ref()
                .map_or_else(|| super::kube::DEFAULT_PREFIX.to_string(), |p| p.v.clone()),
            publish: k.publish.as_ref().is_none_or(|p| p.v),
            node_name: name,
            vni: self.vni.as_ref().map_or(1, |v| v.v),
            families,
        })
    }
}

fn addr_keys(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "address",
        Family::Ipv6 => "ipv6_address",
    }
}

// ---------------------------------------------------------------- reading --

fn node_name(s: &str) -> Result<String, Bad> {
    if s.trim().is_empty() || s.trim() != s {
        return Err(Bad {
            message: format!("node name `{s}` is empty or has surrounding whitespace"),
            help: "write the node's name as its hostname, e.g. \"node-a\"".into(),
        });
    }
    Ok(s.to_string())
}

fn family_ip(s: &str, fam: Family, key: &str, other_key: &str) -> Result<IpAddr, Bad> {
    let a = unicast_ip(s)?;
    if Family::of(&a) != fam {
        return Err(Bad {
            message: format!(
                "`{key}` must be an {} address, found {} `{s}`",
                fam_name(fam),
                fam_name(Family::of(&a))
            ),
            help: format!(
                "put {} addresses in `{other_key}`",
                fam_name(Family::of(&a))
            ),
        });
    }
    Ok(a)
}

/// Reads `[fleet]` and its `[[fleet.node]]` entries; every problem goes to `d`.
pub(crate) fn read(mut s: Section<'_>, d: &mut Diags<'_>) -> RawFleet {
    let before = d.len();
    let h = s.header;
    let network = s.parsed(d, "network", |x| {
        family_net(x, Family::Ipv4, "network", "ipv6_network")
    });
    let ipv6_network = s.parsed(d, "ipv6_network", |x| {
        family_net(x, Family::Ipv6, "ipv6_network", "network")
    });
    let vni = s.int(d, "vni", 1, 16_777_215).or_default(1, h);
    let port = s.int(d, "port", 1, 65_535).or_default(8472, h);
    let device = s
        .parsed(d, "device", ifname)
        .or_default(DEFAULT_DEVICE.to_string(), h);
    let ipv6_device = s
        .parsed(d, "ipv6_device", ifname)
        .or_default(DEFAULT_IPV6_DEVICE.to_string(), h);
    let underlay = s.parsed(d, "underlay", ifname);
    let nodes = match s.take("node") {
        None => Vec::new(),
        Some(mut val) => {
            let span = val.span;
            match val.take() {
                ValueInner::Array(items) => items
                    .into_iter()
                    .filter_map(|mut item| {
                        let span = item.span;
                        match item.take() {
                            ValueInner::Table(t) => Some(read_node(
                                Section::new("[[fleet.node]]", span, t, NODE_KEYS),
                                d,
                            )),
                            other => {
                                d.error(
                                    span,
                                    format!(
                                        "each [[fleet.node]] entry must be a table, found {}",
                                        type_name(&other)
                                    ),
                                    "write each node as a [[fleet.node]] header followed by its keys",
                                );
                                None
                            }
                        }
                    })
                    .collect(),
                other => {
                    d.error(
                        span,
                        format!(
                            "`node` in [fleet] must be a list of tables, found {}",
                            type_name(&other)
                        ),
                        "write each node as a [[fleet.node]] header (double brackets) followed by its keys",
                    );
                    Vec::new()
                }
            }
        }
    };
    let kubernetes = super::kube_schema::read(&mut s, h, !nodes.is_empty(), d);
    s.finish(d);
    RawFleet {
        header: h,
        network,
        ipv6_network,
        vni,
        port,
        device,
        ipv6_device,
        underlay,
        nodes,
        kubernetes,
        ok: d.len() == before,
    }
}

fn read_node(mut s: Section<'_>, d: &mut Diags<'_>) -> RawNode {
    let header = s.header;
    let f = s.parsed(d, "name", node_name);
    let name = s.req(d, "name", f);
    let address = s.parsed(d, "address", |x| {
        family_ip(x, Family::Ipv4, "address", "ipv6_address")
    });
    let ipv6_address = s.parsed(d, "ipv6_address", |x| {
        family_ip(x, Family::Ipv6, "ipv6_address", "address")
    });
    let subnet = s.parsed(d, "subnet", |x| {
        family_net(x, Family::Ipv4, "subnet", "ipv6_subnet")
    });
    let ipv6_subnet = s.parsed(d, "ipv6_subnet", |x| {
        family_net(x, Family::Ipv6, "ipv6_subnet", "subnet")
    });
    let mac = s.parsed(d, "mac", mac_unicast);
    s.finish(d);
    RawNode {
        header,
        name,
        address,
        ipv6_address,
        subnet,
        ipv6_subnet,
        mac,
        ipv6_mac: Field::Absent,
    }
}

// ----------------------------------------------------------------- checks --

/// The VTEP MAC of `n` on `device`: its own `mac`, else derived from its name
/// exactly as that node derives it for itself.
fn vtep_mac(n: &RawNode, fam: Family, device: &str) -> Option<Sp<Mac>> {
    if let (Family::Ipv6, Field::Given(m)) = (fam, &n.ipv6_mac) {
        return Some(m.clone());
    }
    match (&n.mac, &n.name) {
        (Field::Given(m), _) => Some(m.clone()),
        (Field::Absent, Some(name)) => Some(Sp {
            v: Mac::derive(&name.v, device),
            span: name.span,
        }),
        _ => None,
    }
}

/// First and last address of a network, as numbers (for the overlap sweep).
fn bounds(n: &IpNet) -> (u128, u128) {
    let num = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    (num(n.network()), num(n.broadcast()))
}

/// One node's subnet of one family, for the overlap sweep.
struct Block<'f> {
    start: u128,
    end: u128,
    net: IpNet,
    span: Span,
    node: &'f str,
}

/// Reports every pair of overlapping subnets in O(n log n): sorted by first
/// address, a block overlaps an earlier one iff it starts before the largest
/// end seen so far. Reported at the entry written later in the file.
fn overlaps(mut blocks: Vec<Block<'_>>, d: &mut Diags<'_>) {
    blocks.sort_by_key(|b| (b.start, std::cmp::Reverse(b.end), b.span.start));
    let mut widest: Option<&Block<'_>> = None;
    for b in &blocks {
        if let Some(w) = widest {
            if b.start <= w.end {
                let (later, first) = if b.span.start >= w.span.start {
                    (b, w)
                } else {
                    (w, b)
                };
                let how = if later.net == first.net {
                    "is the same as"
                } else {
                    "overlaps"
                };
                d.error(
                    later.span,
                    format!(
                        "subnet {} of node `{}` {how} subnet {} of node `{}` (line {})",
                        later.net,
                        later.node,
                        first.net,
                        first.node,
                        d.line(first.span)
                    ),
                    "each node has a pod subnet of its own: give one of them a free subnet",
                );
            }
            if b.end > w.end {
                widest = Some(b);
            }
        } else {
            widest = Some(b);
        }
    }
}

/// Cluster-wide checks; every problem goes to `d`.
fn check(f: &RawFleet, d: &mut Diags<'_>) {
    check_fleet_keys(f, d);
    let mut ix = NodeIndex {
        names: HashMap::with_capacity(f.nodes.len()),
        addrs: HashMap::with_capacity(f.nodes.len()),
        macs: HashMap::with_capacity(f.nodes.len()),
        blocks: [Vec::new(), Vec::new()],
    };
    for n in &f.nodes {
        check_node(f, n, &mut ix, d);
    }
    for list in ix.blocks {
        overlaps(list, d);
    }
}

/// The [fleet] table's own keys: a network, distinct devices per family,
/// an underlay that is not one of them.
fn check_fleet_keys(f: &RawFleet, d: &mut Diags<'_>) {
    if f.network.is_absent() && f.ipv6_network.is_absent() {
        d.error(
            f.header,
            "[fleet] declares no cluster network",
            "set `network = \"198.18.0.0/16\"` (IPv4) and/or `ipv6_network = \"fd00:42::/48\"`",
        );
    }
    let dual = f.families().count() == 2;
    if let (true, Some(a), Some(b)) = (dual, &f.device, &f.ipv6_device) {
        if a.v == b.v {
            d.error(
                b.span,
                format!("`ipv6_device` `{}` is also the IPv4 `device`", b.v),
                "a dual-stack fleet needs one VXLAN device per family, e.g. \"flannel.1\" and \"flannel-v6.1\"",
            );
        }
    }
    if let Some(u) = f.underlay.given() {
        if f.families()
            .any(|(fam, _)| f.device(fam).is_some_and(|dv| dv.v == u.v))
        {
            d.error(
                u.span,
                format!("`underlay` `{}` is one of the fleet's VXLAN devices", u.v),
                "the underlay is the interface that carries the encapsulated packets, e.g. \"eth0\"; remove it to use the interface holding each node's address",
            );
        }
    }
}

/// What each [[fleet.node]] must not share with another, built up over the
/// nodes in file order (a clash is reported at the later one).
struct NodeIndex<'f> {
    names: HashMap<&'f str, Span>,
    addrs: HashMap<IpAddr, (&'f str, Span)>,
    macs: HashMap<(&'f str, Mac), (&'f str, Span)>,
    /// Pod subnets per family (IPv4, IPv6), for the overlap sweep.
    blocks: [Vec<Block<'f>>; 2],
}

fn check_node<'f>(f: &'f RawFleet, n: &'f RawNode, ix: &mut NodeIndex<'f>, d: &mut Diags<'_>) {
    if let Some(name) = &n.name {
        match ix.names.get(name.v.as_str()) {
            Some(first) => d.error(
                name.span,
                format!("duplicate [[fleet.node]] name `{}`", name.v),
                format!(
                    "first declared at line {}; each node needs a name of its own",
                    d.line(*first)
                ),
            ),
            None => {
                ix.names.insert(&name.v, name.span);
            }
        }
    }
    // One device for both families is reported above: check its MAC once.
    let mut mac_devs: Vec<&str> = Vec::with_capacity(2);
    for (i, fam) in FAMILIES.into_iter().enumerate() {
        let addr = n.address(fam);
        match f.network(fam) {
            Field::Given(net) => {
                node_in_network(n, fam, net, i, ix, d);
                node_mac(f, n, fam, &mut mac_devs, ix, d);
            }
            Field::Absent => node_without_network(n, fam, d),
            Field::Invalid => {}
        }
        if let Some(a) = addr.given() {
            match ix.addrs.get(&a.v) {
                Some((other, at)) => d.error(
                    a.span,
                    format!(
                        "address {} of node `{}` is also node `{other}`'s (line {})",
                        a.v,
                        n.name(),
                        d.line(*at)
                    ),
                    "each node has an underlay address of its own",
                ),
                None => {
                    ix.addrs.insert(a.v, (n.name(), a.span));
                }
            }
        }
    }
}

/// A node in a fleet running `fam` (on `net`): it has both keys of the
/// family, and its pod subnet lies inside `net` (then swept for overlaps
/// as family `i`'s block).
fn node_in_network<'f>(
    n: &'f RawNode,
    fam: Family,
    net: &Sp<IpNet>,
    i: usize,
    ix: &mut NodeIndex<'f>,
    d: &mut Diags<'_>,
) {
    let (nk, sk) = family_keys(fam);
    let ak = addr_keys(fam);
    let (addr, sub) = (n.address(fam), n.subnet(fam));
    for (key, absent, what) in [
        (ak, addr.is_absent(), "underlay address"),
        (sk, sub.is_absent(), "pod subnet"),
    ] {
        if absent {
            d.error(
                n.header,
                format!("node `{}` has no `{key}`", n.name()),
                format!(
                    "the fleet runs {} (`{nk}` = {}): add its {} {what}, like `{}`",
                    fam_name(fam),
                    net.v,
                    fam_name(fam),
                    NODE_KEYS
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or("", |(_, e)| *e)
                ),
            );
        }
    }
    let Some(s) = sub.given() else { return };
    if net.v.contains(&s.v) {
        let (start, end) = bounds(&s.v);
        if let Some(list) = ix.blocks.get_mut(i) {
            list.push(Block {
                start,
                end,
                net: s.v,
                span: s.span,
                node: n.name(),
            });
        }
    } else {
        d.error(
            s.span,
            format!(
                "subnet {} of node `{}` is outside the fleet's `{nk}` {}",
                s.v,
                n.name(),
                net.v
            ),
            format!(
                "every pod subnet is part of the cluster network: pick a free subnet inside {}",
                net.v
            ),
        );
    }
}

/// The node's VTEP MAC on the family's device is its own (once per device:
/// `mac_devs` holds the devices already checked for this node).
fn node_mac<'f>(
    f: &'f RawFleet,
    n: &'f RawNode,
    fam: Family,
    mac_devs: &mut Vec<&'f str>,
    ix: &mut NodeIndex<'f>,
    d: &mut Diags<'_>,
) {
    let Some((dev, mac)) = f
        .device(fam)
        .filter(|dev| !mac_devs.contains(&dev.v.as_str()))
        .and_then(|dev| vtep_mac(n, fam, &dev.v).map(|m| (dev, m)))
    else {
        return;
    };
    mac_devs.push(&dev.v);
    let explicit = n.mac.given().is_some();
    match ix.macs.get(&(dev.v.as_str(), mac.v)) {
        Some((other, at)) => d.error(
            mac.span,
            format!(
                "VTEP MAC {} of node `{}` on `{}` is also node `{other}`'s (line {})",
                mac.v,
                n.name(),
                dev.v,
                d.line(*at)
            ),
            if explicit {
                "each node's VTEP has its own MAC: remove `mac` to derive it from the node's name"
                    .to_string()
            } else {
                "set a distinct `mac` on one of the two nodes".to_string()
            },
        ),
        None => {
            ix.macs.insert((&dev.v, mac.v), (n.name(), mac.span));
        }
    }
}

/// A node giving keys of a family the fleet does not run.
fn node_without_network(n: &RawNode, fam: Family, d: &mut Diags<'_>) {
    let (nk, sk) = family_keys(fam);
    for (key, given) in [
        (addr_keys(fam), n.address(fam).given().map(|x| x.span)),
        (sk, n.subnet(fam).given().map(|x| x.span)),
    ] {
        if let Some(span) = given {
            d.error(
                span,
                format!("node `{}` has `{key}` but [fleet] has no `{nk}`", n.name()),
                format!(
                    "add `{nk}` to [fleet] to run {} on the overlay, or remove `{key}`",
                    fam_name(fam)
                ),
            );
        }
    }
}

/// The entry of this node, reporting when it cannot be told or is absent.
fn select<'f>(
    f: &'f RawFleet,
    node_name: Option<&Sp<String>>,
    sel: &NodeSelect,
    d: &mut Diags<'_>,
) -> Option<&'f RawNode> {
    let (name, from, span) = if let Some(n) = &sel.flag {
        (n.as_str(), "--node", f.header)
    } else if let Some(n) = &sel.env {
        (n.as_str(), "NETCONVERGE_NODE", f.header)
    } else if let Some(n) = node_name {
        (n.v.as_str(), "`node_name`", n.span)
    } else if let Some(n) = &sel.hostname {
        (n.as_str(), "the hostname", f.header)
    } else {
        d.error(
            f.header,
            "cannot tell which [[fleet.node]] this node is",
            "pass --node NAME, set NETCONVERGE_NODE, or set `node_name` at the top of the file",
        );
        return None;
    };
    if let Some(me) = f.nodes.iter().find(|n| n.name() == name) {
        return Some(me);
    }
    let help = match suggest(name, f.nodes.iter().map(RawNode::name)) {
        Some(s) => {
            format!("did you mean `{s}`? Otherwise add a [[fleet.node]] with name = \"{name}\"")
        }
        None if f.nodes.is_empty() => {
            format!("the fleet has no node yet: add a [[fleet.node]] with name = \"{name}\"")
        }
        None => {
            let mut known: Vec<&str> = f.nodes.iter().map(RawNode::name).take(6).collect();
            if f.nodes.len() > 5 {
                known.truncate(5);
                known.push("…");
            }
            format!(
                "add a [[fleet.node]] with name = \"{name}\", or choose one of: {}",
                known.join(", ")
            )
        }
    };
    d.error(
        span,
        format!("this node, `{name}` (from {from}), is not in the fleet"),
        help,
    );
    None
}

// -------------------------------------------------------------- expansion --

/// [lease] as `read_lease` defaults it, for a fleet file without one: the
/// fleet node's subnets go to flannel's subnet.env.
fn default_lease(header: Span) -> RawLease {
    RawLease {
        header,
        mode: Some(Sp {
            v: LeaseMode::Write,
            span: header,
        }),
        v4: RawFamily {
            network: Field::Absent,
            subnet: Field::Absent,
        },
        v6: RawFamily {
            network: Field::Absent,
            subnet: Field::Absent,
        },
        mtu: Field::Absent,
        ipmasq: Field::Absent,
        path: Some(Sp {
            v: PathBuf::from("/run/flannel/subnet.env"),
            span: header,
        }),
        state_dir: Some(Sp {
            v: PathBuf::from("/var/lib/netconverge"),
            span: header,
        }),
    }
}

fn family_mut<'r>(v4: &'r mut RawFamily, v6: &'r mut RawFamily, f: Family) -> &'r mut RawFamily {
    match f {
        Family::Ipv4 => v4,
        Family::Ipv6 => v6,
    }
}

/// Takes an unset network/subnet from the fleet; one written by hand must
/// agree with it (then reported once here, and `Invalid` afterwards).
fn fill(
    field: &mut Field<IpNet>,
    from: &Sp<IpNet>,
    section: &str,
    key: &str,
    what: &str,
    d: &mut Diags<'_>,
) {
    match field {
        Field::Absent => *field = Field::Given(from.clone()),
        Field::Given(g) if g.v != from.v => {
            d.error(
                g.span,
                format!("{section} `{key}` {} differs from {what} {}", g.v, from.v),
                format!("remove `{key}` from {section}: it is taken from [fleet]"),
            );
            *field = Field::Invalid;
        }
        _ => {}
    }
}

/// Marks what the fleet would have supplied as already reported, so a broken
/// fleet does not also show as an incomplete [lease]/[nat].
fn poison(raw: &mut Raw) {
    let mark = |f: &mut Field<IpNet>| {
        if f.is_absent() {
            *f = Field::Invalid;
        }
    };
    if let Some(l) = raw.lease.as_mut() {
        for fam in [&mut l.v4, &mut l.v6] {
            mark(&mut fam.network);
            mark(&mut fam.subnet);
        }
    }
    if let Some(n) = raw.nat.as_mut() {
        for fam in [&mut n.v4, &mut n.v6] {
            mark(&mut fam.network);
            mark(&mut fam.subnet);
        }
    }
}

/// Checks `raw.fleet` and expands it into `raw` for the node `sel` picks.
/// Returns the VXLAN devices whose underlay is the interface holding their
/// `local` address (see [`crate::model::Desired::underlay_by_local`]).
pub(crate) fn expand(
    raw: &mut Raw,
    sel: &NodeSelect,
    cluster: Option<&super::kube::Selection>,
    d: &mut Diags<'_>,
) -> BTreeSet<String> {
    let mut by_local = BTreeSet::new();
    let Some(mut fleet) = raw.fleet.take() else {
        return by_local;
    };
    if fleet.kubernetes.is_some() {
        // The nodes come from the API: without them (validate, cleanup)
        // only the file itself is checked.
        let Some(c) = cluster.filter(|_| fleet.ok) else {
            poison(raw);
            return by_local;
        };
        if let Some(problem) = &c.me_problem {
            d.error(
                fleet.header,
                format!("this node cannot join the fleet from the Kubernetes API: {problem}"),
                "check `node_name` (or --node) against `kubectl get nodes`; a new Node needs its podCIDR (kube-controller-manager --allocate-node-cidrs) and an InternalIP",
            );
            poison(raw);
            return by_local;
        }
        fleet.nodes = c.nodes.iter().map(|n| api_node(n, fleet.header)).collect();
    }
    let before = d.len();
    check(&fleet, d);
    let me = select(&fleet, raw.node_name.as_ref(), sel, d);
    let (true, true, Some(me), Some(my_name)) = (
        fleet.ok,
        d.len() == before,
        me,
        me.and_then(|m| m.name.clone()),
    ) else {
        poison(raw);
        return by_local;
    };
    // The node's identity seeds its own derived MACs: the name every other
    // node derives this node's MACs from.
    raw.node_name = Some(my_name.clone());
    let (Some(vni), Some(port)) = (fleet.vni.clone(), fleet.port.clone()) else {
        return by_local;
    };
    let mut vxlan_at = 0;
    for (fam, net) in fleet.families() {
        let (Some(dev), Some(addr), Some(subnet)) = (
            fleet.device(fam),
            me.address(fam).given(),
            me.subnet(fam).given(),
        ) else {
            continue;
        };
        let underlay = match fleet.underlay.given() {
            Some(u) => u.clone(),
            None => {
                by_local.insert(dev.v.clone());
                Sp {
                    v: format!("(interface with {})", addr.v),
                    span: addr.span,
                }
            }
        };
        // Before the hand-written ones: a clash is then reported at the
        // hand-written entry, and the fleet's devices come first.
        let v = node_vxlan(&fleet, me, fam, dev, addr, (&vni, &port), underlay);
        raw.vxlans.insert(vxlan_at, v);
        vxlan_at += 1;
        // flannel's VTEP address: the subnet's network address as a host.
        let full = match fam {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        };
        if let Ok(vtep) = IpNet::new(subnet.v.network(), full) {
            raw.addresses.push(RawAddress {
                dev: Some(dev.clone()),
                cidr: Some(Sp {
                    v: vtep,
                    span: subnet.span,
                }),
            });
        }
        fill_lease_and_nat(raw, fleet.header, fam, net, subnet, d);
    }
    let mut peers = fleet_peers(&fleet, &my_name.v);
    // Before the hand-written ones, like the devices.
    peers.append(&mut raw.peers);
    raw.peers = peers;
    by_local
}

/// A Node from the Kubernetes API as a [[fleet.node]] entry, positioned at
/// the [fleet] header (it was written nowhere in the file).
fn api_node(n: &super::kube::FleetNode, header: Span) -> RawNode {
    fn field<T: Copy>(
        f: Family,
        m: &std::collections::BTreeMap<Family, T>,
        span: Span,
    ) -> Field<T> {
        m.get(&f)
            .copied()
            .map_or(Field::Absent, |v| Field::Given(Sp { v, span }))
    }
    RawNode {
        header,
        name: Some(Sp {
            v: n.name.clone(),
            span: header,
        }),
        address: field(Family::Ipv4, &n.address, header),
        ipv6_address: field(Family::Ipv6, &n.address, header),
        subnet: field(Family::Ipv4, &n.subnet, header),
        ipv6_subnet: field(Family::Ipv6, &n.subnet, header),
        mac: field(Family::Ipv4, &n.mac, header),
        ipv6_mac: field(Family::Ipv6, &n.mac, header),
    }
}

/// This node's VXLAN device of family `fam`, as if written in the file.
fn node_vxlan(
    fleet: &RawFleet,
    me: &RawNode,
    fam: Family,
    dev: &Sp<String>,
    addr: &Sp<IpAddr>,
    (vni, port): (&Sp<u32>, &Sp<u16>),
    underlay: Sp<String>,
) -> RawVxlan {
    RawVxlan {
        name: Some(dev.clone()),
        vni: Some(vni.clone()),
        port: Some(port.clone()),
        underlay: Some(underlay),
        family: Some(Sp {
            v: fam,
            span: addr.span,
        }),
        family_explicit: true,
        local: Field::Given(addr.clone()),
        mac: match (fam, &me.ipv6_mac) {
            (Family::Ipv6, Field::Given(m)) => Field::Given(m.clone()),
            _ => me.mac.clone(),
        },
        // `[fleet.kubernetes] adopt`: take over flannel's device in place
        adopt: fleet.kubernetes.as_ref().and_then(|k| k.adopt.clone()),
        mtu: Field::Absent,
        learning: Some(Sp {
            v: false,
            span: fleet.header,
        }),
        gbp: Some(Sp {
            v: false,
            span: fleet.header,
        }),
    }
}

/// The node's fleet network and subnet of `fam` fill the [lease] (created
/// if absent) and the unset [nat] values; set ones must agree.
fn fill_lease_and_nat(
    raw: &mut Raw,
    header: Span,
    fam: Family,
    net: &Sp<IpNet>,
    subnet: &Sp<IpNet>,
    d: &mut Diags<'_>,
) {
    let (nk, sk) = family_keys(fam);
    let l = raw.lease.get_or_insert_with(|| default_lease(header));
    let lf = family_mut(&mut l.v4, &mut l.v6, fam);
    fill(
        &mut lf.network,
        net,
        "[lease]",
        nk,
        "the fleet's network",
        d,
    );
    fill(
        &mut lf.subnet,
        subnet,
        "[lease]",
        sk,
        "this node's fleet subnet",
        d,
    );
    if let Some(n) = raw.nat.as_mut() {
        // Unset [nat] values come from [lease] (now filled); set ones must agree.
        let nf = family_mut(&mut n.v4, &mut n.v6, fam);
        if nf.network.given().is_some() {
            fill(&mut nf.network, net, "[nat]", nk, "the fleet's network", d);
        }
        if nf.subnet.given().is_some() {
            fill(
                &mut nf.subnet,
                subnet,
                "[nat]",
                sk,
                "this node's fleet subnet",
                d,
            );
        }
    }
}

/// Every other node of the fleet as a [[peer]] per family it runs.
fn fleet_peers(fleet: &RawFleet, my_name: &str) -> Vec<RawPeer> {
    let mut peers = Vec::with_capacity(2 * fleet.nodes.len());
    for n in &fleet.nodes {
        if n.name() == my_name {
            continue;
        }
        for (fam, _) in fleet.families() {
            let (Some(dev), Some(subnet), Some(ip)) = (
                fleet.device(fam),
                n.subnet(fam).given(),
                n.address(fam).given(),
            ) else {
                continue;
            };
            peers.push(RawPeer {
                dev: Some(dev.clone()),
                subnet: Some(subnet.clone()),
                vtep_ip: Some(ip.clone()),
                vtep_mac: vtep_mac(n, fam, &dev.v),
                adopt: None,
            });
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigErrors, parse_as};
    use super::*;
    use crate::model::{AddressState, Desired, Observed};

    const FLEET: &str = r#"
[fleet]
network = "198.18.0.0/16"
ipv6_network = "fd00:42::/48"

[[fleet.node]]
name = "node-a"
address = "192.0.2.11"
ipv6_address = "2001:db8::11"
subnet = "198.18.1.0/24"
ipv6_subnet = "fd00:42:0:1::/64"

[[fleet.node]]
name = "node-b"
address = "192.0.2.12"
ipv6_address = "2001:db8::12"
subnet = "198.18.2.0/24"
ipv6_subnet = "fd00:42:0:2::/64"

[[fleet.node]]
name = "node-c"
address = "192.0.2.13"
ipv6_address = "2001:db8::13"
subnet = "198.18.3.0/24"
ipv6_subnet = "fd00:42:0:3::/64"
mac = "02:42:c6:12:03:00"

[nat]
backend = "nftables"
"#;

    fn node(name: &str) -> NodeSelect {
        NodeSelect {
            flag: Some(name.into()),
            ..NodeSelect::default()
        }
    }

    fn as_node(src: &str, sel: &NodeSelect) -> Result<Desired, ConfigErrors> {
        parse_as(src, "fleet.toml", sel)
    }

    fn ok(src: &str, name: &str) -> Desired {
        match as_node(src, &node(name)) {
            Ok(d) => d,
            Err(e) => panic!("expected success, got:\n{e}"),
        }
    }

    fn errs(src: &str, sel: &NodeSelect) -> String {
        match as_node(src, sel) {
            Ok(d) => panic!("expected errors, got {d:#?}"),
            Err(e) => e.to_string(),
        }
    }

    macro_rules! snap_errs {
        ($name:expr, $src:expr, $sel:expr) => {{
            let src: &str = $src;
            insta::with_settings!({ description => src, omit_expression => true }, {
                insta::assert_snapshot!($name, errs(src, $sel));
            });
        }};
    }

    /// The MAC rule is a wire contract between nodes (each derives every
    /// other's VTEP MAC): these outputs must never change.
    #[test]
    fn mac_rule_golden_vectors() {
        let cases = [
            ("node-a", "flannel.1", "06:bb:51:cc:76:02"),
            ("node-b", "flannel.1", "aa:c3:55:b1:c3:25"),
            ("node-a", "flannel-v6.1", "6e:68:9e:46:c4:df"),
            ("node-b", "flannel-v6.1", "76:ed:88:1d:46:64"),
            ("node-c", "flannel.1", "f6:83:1c:6a:81:df"),
            ("node-c", "flannel-v6.1", "46:e1:88:68:7c:3d"),
            // the seed is trimmed (a machine-id file ends in a newline)
            (" node-a\n", "flannel.1", "06:bb:51:cc:76:02"),
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|(seed, dev, _)| format!("{seed:?} {dev} {}", Mac::derive(seed, dev)))
            .collect();
        let want: Vec<String> = cases
            .iter()
            .map(|(seed, dev, mac)| format!("{seed:?} {dev} {mac}"))
            .collect();
        assert_eq!(got, want);
    }

    /// The shipped examples spell out node-b's VTEP MAC for a hand-written
    /// [[peer]]: it must be what node-b derives for itself, or the overlay
    /// drops every frame (they once said 02:5e:10:00:00:02).
    #[test]
    fn shipped_examples_carry_node_bs_derived_mac() {
        let mac = Mac::derive("node-b", DEFAULT_DEVICE).to_string();
        // examples/nixos/{k3s-node,fleet,fleet-cluster}.nix use the fleet:
        // no MAC is written there at all.
        for f in [
            "examples/nixos/k3s-node.nix",
            "examples/nixos/fleet.nix",
            "examples/nixos/fleet-cluster.nix",
        ] {
            let text =
                std::fs::read_to_string(format!("{}/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            assert!(!text.split('"').any(|w| w.parse::<Mac>().is_ok()), "{f}");
        }
        for f in ["nix/example-settings.nix", "docs/packaging.md"] {
            let path = format!("{}/{f}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let macs: Vec<&str> = text
                .split('"')
                .filter(|w| w.len() == 17 && w.parse::<Mac>().is_ok())
                .collect();
            assert_eq!(macs, [mac.as_str()], "{f}");
        }
    }

    fn snapshot_of(name: &str) -> Desired {
        ok(FLEET, name)
    }

    #[test]
    fn three_node_fleet_from_node_a() {
        insta::assert_json_snapshot!("fleet_node_a", snapshot_of("node-a"));
    }

    #[test]
    fn three_node_fleet_from_node_b() {
        insta::assert_json_snapshot!("fleet_node_b", snapshot_of("node-b"));
    }

    #[test]
    fn three_node_fleet_from_node_c() {
        insta::assert_json_snapshot!("fleet_node_c", snapshot_of("node-c"));
    }

    /// What one node installs for another is exactly what that other node
    /// has: its own VTEP MAC (derived from its name, or its `mac`), its
    /// underlay address as `local`, its subnet's network address on the VXLAN.
    #[test]
    fn every_node_sees_every_other_as_it_sees_itself() {
        let names = ["node-a", "node-b", "node-c"];
        let all: Vec<Desired> = names.iter().map(|n| ok(FLEET, n)).collect();
        for (i, me) in all.iter().enumerate() {
            assert_eq!(me.mac_seed.as_deref(), names.get(i).copied());
            assert_eq!(me.peers.len(), 4, "two families × two other nodes");
            for (j, other) in all.iter().enumerate() {
                if i == j {
                    continue;
                }
                for v in &other.vxlans {
                    let addr = other.addresses.iter().find(|a| a.dev == v.name).unwrap();
                    let p = me
                        .peers
                        .iter()
                        .find(|p| p.dev == v.name && p.subnet.network() == addr.cidr.addr())
                        .unwrap();
                    assert_eq!(
                        Some(p.vtep_mac),
                        other.vxlan_mac(v),
                        "{} on {}",
                        v.name,
                        names[j]
                    );
                    assert_eq!(Some(p.vtep_ip), v.local);
                }
            }
        }
        // node-c's `mac` is used on its devices and by its peers
        let c: Mac = "02:42:c6:12:03:00".parse().unwrap();
        assert!(all[2].vxlans.iter().all(|v| v.mac == Some(c)));
    }

    #[test]
    fn node_selection_order_flag_env_node_name_hostname() {
        let with_name = format!("node_name = \"node-b\"\n{FLEET}");
        let all = NodeSelect {
            flag: Some("node-a".into()),
            env: Some("node-c".into()),
            hostname: Some("node-b".into()),
        };
        let seed = |src: &str, sel: &NodeSelect| as_node(src, sel).unwrap().mac_seed.unwrap();
        assert_eq!(seed(&with_name, &all), "node-a");
        let no_flag = NodeSelect {
            flag: None,
            ..all.clone()
        };
        assert_eq!(seed(&with_name, &no_flag), "node-c");
        let hostname_only = NodeSelect {
            hostname: Some("node-c".into()),
            ..NodeSelect::default()
        };
        assert_eq!(seed(&with_name, &hostname_only), "node-b");
        assert_eq!(seed(FLEET, &hostname_only), "node-c");
    }

    #[test]
    fn node_not_in_the_fleet() {
        snap_errs!("fleet_node_absent_flag", FLEET, &node("node-d"));
        snap_errs!(
            "fleet_node_absent_node_name",
            &format!("node_name = \"nod-a\"\n{FLEET}"),
            &NodeSelect::default()
        );
        snap_errs!("fleet_node_unknown", FLEET, &NodeSelect::default());
    }

    #[test]
    fn cluster_wide_errors_all_at_once() {
        let src = r#"
[fleet]
network = "198.18.0.0/16"
ipv6_network = "fd00:42::/48"
ipv6_device = "flannel.1"
underlay = "flannel.1"

[[fleet.node]]
name = "node-a"
address = "192.0.2.11"
ipv6_address = "2001:db8::11"
subnet = "198.18.1.0/24"
ipv6_subnet = "fd00:42:0:1::/64"
mac = "02:42:c6:12:01:00"

[[fleet.node]]
name = "node-a"
address = "192.0.2.11"
ipv6_address = "2001:db8::12"
subnet = "198.18.0.0/23"
ipv6_subnet = "fd00:43:0:2::/64"
mac = "02:42:c6:12:01:00"

[[fleet.node]]
name = "node-c"
subnet = "198.18.3.0/24"

[[fleet.node]]
name = "node-d"
address = "192.0.2.14"
ipv6_address = "2001:db8::14"
subnet = "198.18.4.0/24"
ipv6_subnet = "fd00:42:0:4::/64"
mac = "aa:c3:55:b1:c3:25"

[[fleet.node]]
name = "node-b"
address = "192.0.2.15"
ipv6_address = "2001:db8::15"
subnet = "198.18.4.0/24"
ipv6_subnet = "fd00:42:0:5::/64"
"#;
        snap_errs!("fleet_cluster_errors", src, &node("node-a"));
    }

    #[test]
    fn family_errors_and_schema_errors() {
        let src = r#"
[lease]
mode = "write"

[nat]
backend = "nftables"

[fleet]
network = "198.18.0.0/16"
vni = 0
devise = "flannel.1"

[[fleet.node]]
name = "node-a"
address = "2001:db8::11"
subnet = "198.18.1.0/24"
ipv6_subnet = "fd00:42:0:1::/64"

[[fleet.node]]
address = "192.0.2.12"
subnet = "198.18.2.0/24"
"#;
        snap_errs!("fleet_family_and_schema_errors", src, &node("node-a"));
        snap_errs!(
            "fleet_without_network",
            "[fleet]\n[[fleet.node]]\nname = \"a\"\n",
            &node("a")
        );
        snap_errs!(
            "fleet_node_not_a_list",
            "[fleet]\nnetwork = \"198.18.0.0/16\"\nnode = 3\n",
            &node("a")
        );
    }

    #[test]
    fn hand_written_values_must_agree_with_the_fleet() {
        let src =
            format!("{FLEET}network = \"198.18.0.0/15\"\n\n[lease]\nsubnet = \"198.18.9.0/24\"\n");
        snap_errs!("fleet_conflicting_nat_and_lease", &src, &node("node-a"));
    }

    #[test]
    fn coexists_with_hand_written_peers_and_vxlans() {
        let src = format!(
            r#"{FLEET}
[[vxlan]]
name = "legacy.7"
vni = 7
underlay = "eth1"

[[peer]]
dev = "flannel.1"
subnet = "198.18.200.0/24"
vtep_ip = "192.0.2.200"
vtep_mac = "02:42:c6:12:c8:00"

[[peer]]
dev = "legacy.7"
subnet = "10.7.0.0/24"
vtep_ip = "192.0.2.201"
vtep_mac = "02:42:c6:12:c9:00"
"#
        );
        let d = ok(&src, "node-a");
        assert_eq!(d.vxlans.len(), 3);
        assert_eq!(d.peers.len(), 6);
        assert!(d.underlay_by_local.contains("flannel.1"));
        assert!(!d.underlay_by_local.contains("legacy.7"));
        // a hand-written peer that collides with a fleet node is an error
        let clash = format!(
            "{FLEET}\n[[peer]]\ndev = \"flannel.1\"\nsubnet = \"198.18.2.0/24\"\nvtep_ip = \"192.0.2.99\"\nvtep_mac = \"02:42:c6:12:63:00\"\n"
        );
        snap_errs!("fleet_hand_peer_clash", &clash, &node("node-a"));
    }

    #[test]
    fn ipv4_only_fleet_with_named_underlay_and_own_devices() {
        let src = r#"
[fleet]
network = "198.18.0.0/16"
vni = 42
port = 4789
device = "vx42"
underlay = "eth0"

[[fleet.node]]
name = "a"
address = "192.0.2.1"
subnet = "198.18.1.0/24"

[[fleet.node]]
name = "b"
address = "192.0.2.2"
subnet = "198.18.2.0/24"
"#;
        let d = ok(src, "a");
        let v = d.vxlans.first().unwrap();
        assert_eq!((v.name.as_str(), v.vni, v.port), ("vx42", 42, 4789));
        assert_eq!(v.underlay, "eth0");
        assert!(d.underlay_by_local.is_empty());
        assert_eq!(d.vxlans.len(), 1);
        let p = d.peers.first().unwrap();
        assert_eq!(p.vtep_mac, Mac::derive("b", "vx42"));
        let lease = d.lease.unwrap();
        assert!(lease.ipv6.is_none());
        assert_eq!(lease.ipv4.unwrap().subnet.to_string(), "198.18.1.0/24");
    }

    #[test]
    fn underlay_is_the_interface_holding_the_address() {
        let d = ok(FLEET, "node-a");
        let addr = |dev: &str, cidr: &str| AddressState {
            dev: dev.into(),
            cidr: cidr.parse().unwrap(),
            global: true,
            protocol: 0,
        };
        let mut o = Observed::default();
        let unresolved = d.resolve_underlays(&o);
        let v4 = |d: &Desired| d.vxlan("flannel.1").unwrap().underlay.clone();
        assert_eq!(v4(&unresolved), "(interface with 192.0.2.11)");
        o.addresses = vec![
            addr("flannel.1", "198.18.1.0/32"),
            addr("wlan0", "192.0.2.99/24"),
            addr("enp1s0", "192.0.2.11/24"),
            addr("enp1s0", "2001:db8::11/64"),
        ];
        let r = d.resolve_underlays(&o);
        assert_eq!(v4(&r), "enp1s0");
        assert_eq!(r.vxlan("flannel-v6.1").unwrap().underlay, "enp1s0");
        // a config without fleet is borrowed untouched
        let plain = crate::config::parse(
            "[[vxlan]]\nname = \"v\"\nvni = 1\nunderlay = \"eth0\"\n",
            "p.toml",
        )
        .unwrap();
        assert!(matches!(
            plain.resolve_underlays(&o),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// 1 000 nodes, dual-stack: every node's expansion holds 999 peers per
    /// family (no timing assertion; the checks are maps and sorts).
    #[test]
    fn thousand_node_fleet() {
        let mut src =
            String::from("[fleet]\nnetwork = \"198.18.0.0/15\"\nipv6_network = \"fd00:42::/48\"\n");
        let subnet = |i: u32| {
            format!(
                "198.{}.{}.{}/25",
                18 + i / 512,
                (i % 512) / 2,
                (i % 2) * 128
            )
        };
        for i in 0..1000u32 {
            src.push_str(&format!(
                "[[fleet.node]]\nname = \"n{i}\"\naddress = \"192.0.{}.{}\"\nipv6_address = \"2001:db8::{i:x}\"\nsubnet = \"{}\"\nipv6_subnet = \"fd00:42:0:{i:x}::/64\"\n",
                2 + i / 250,
                1 + i % 250,
                subnet(i)
            ));
        }
        let d = ok(&src, "n500");
        assert_eq!(d.peers.len(), 2 * 999);
        assert_eq!(d.routes.len(), 2 * 999);
        assert_eq!(d.fdb.len(), 2 * 999);
        // one collision among 1 000 is found and placed
        let dup = src.replacen(&subnet(900), &subnet(7), 1);
        let e = errs(&dup, &node("n1"));
        let want = format!(
            "subnet {} of node `n900` is the same as subnet {} of node `n7`",
            subnet(7),
            subnet(7)
        );
        assert!(e.contains(&want), "{e}");
        assert_eq!(e.matches("error:").count(), 1, "{e}");
    }

    /// The `[fleet]` example in docs/config.md is a valid fleet.
    #[test]
    fn docs_fleet_example_parses() {
        let doc = include_str!("../../docs/config.md");
        let body = doc
            .split("## `[fleet]`")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .unwrap();
        let d = ok(body, "node-a");
        assert_eq!(d.vxlans.len(), 2);
        assert!(d.peers.is_empty());
    }

    /// The pure path the engine takes: resolve, then plan. The VXLAN is
    /// created on the interface holding the node's address (MTU from it);
    /// unresolved, the planner blocks it and says why.
    #[test]
    fn planner_creates_the_vxlan_on_the_interface_holding_the_address() {
        use crate::model::LinkState;
        use crate::plan::{Op, plan};
        let d = ok(FLEET, "node-b");
        let mut o = Observed::default();
        let blocked = plan(&d.resolve_underlays(&o), &o);
        assert!(
            blocked
                .blocked
                .iter()
                .any(|b| b.reason == "underlay (interface with 192.0.2.12) absent"),
            "{blocked}"
        );
        o.links.insert(
            "ens3".into(),
            LinkState {
                name: "ens3".into(),
                index: 2,
                kind: String::new(),
                mtu: 9000,
                mac: None,
                up: true,
                vxlan: None,
                alias: None,
            },
        );
        o.addresses = vec![
            AddressState {
                dev: "ens3".into(),
                cidr: "192.0.2.12/24".parse().unwrap(),
                global: true,
                protocol: 0,
            },
            AddressState {
                dev: "ens3".into(),
                cidr: "2001:db8::12/64".parse().unwrap(),
                global: true,
                protocol: 0,
            },
        ];
        let p = plan(&d.resolve_underlays(&o), &o);
        let created: Vec<(String, String, u32)> = p
            .changes
            .iter()
            .filter_map(|c| match &c.op {
                Op::CreateVxlan(v) => Some((v.name.clone(), v.underlay.clone(), v.mtu)),
                _ => None,
            })
            .collect();
        assert_eq!(
            created,
            [
                ("flannel.1".to_string(), "ens3".to_string(), 8950),
                ("flannel-v6.1".to_string(), "ens3".to_string(), 8930),
            ]
        );
    }
}
